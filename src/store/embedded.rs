//! Private `redis-server` children, started only when asked for:
//!
//! * by `streamhub serve` when `redis.spawn = "auto"` and the URL is the built-in default
//!   (`redis://127.0.0.1:6379`), or `"always"` and it is any plain `redis://` URL on a
//!   loopback address — and nothing answers there. Its data lives under
//!   `redis.data_dir` with AOF on (`appendfsync everysec`); it is announced with a
//!   warning naming its pid and data directory;
//! * by `streamhub dev`, on a free loopback port with its data in the dev directory.
//!
//! Either is shut down (SHUTDOWN, which flushes the AOF) when streamhub stops, and killed
//! if it does not exit in time. Where `redis-server` is missing, the error says how to
//! install it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::config::{RedisConfig, SpawnPolicy, DEFAULT_REDIS_URL};

/// How long the child may take to answer PING after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the child may take to exit after SHUTDOWN.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The oldest Redis streamhub works with (Functions, sharded Pub/Sub).
const MIN_MAJOR: u32 = 7;
/// Attempts of `start_private` (a free port may be taken before the child binds it).
const PRIVATE_ATTEMPTS: u32 = 3;

/// What to do when `redis-server` is missing, for every message that says so.
pub const INSTALL_HINT: &str = "install Redis >= 7.0: Debian/Ubuntu `sudo apt-get install redis-server`, \
    Fedora `sudo dnf install redis`, macOS `brew install redis` (scripts/dev.sh installs it with apt when run as \
    root)";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("nothing answers at {addr}, and redis-server is not on PATH to start one there: {INSTALL_HINT}; or set redis.url to a running Redis")]
    NotInstalled { addr: SocketAddr },
    #[error("redis-server is not on PATH: {INSTALL_HINT}; or give --redis-url of a running Redis")]
    Missing,
    #[error("{binary} is Redis {version}; streamhub needs Redis >= 7.0 ({INSTALL_HINT})")]
    TooOld { binary: PathBuf, version: String },
    #[error("{dir} is in use by a running redis-server (pid {pid}; another streamhub dev or serve?): stop that one (or `kill {pid}`), or choose another data directory")]
    InUse { dir: PathBuf, pid: u32 },
    #[error("cannot prepare {dir}: {source}")]
    DataDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot start redis-server: {0}")]
    Spawn(std::io::Error),
    #[error("redis-server started but did not answer PING at {addr} within {timeout:?} (see {log})")]
    NotReady { addr: SocketAddr, timeout: Duration, log: PathBuf },
}

/// A running private redis-server.
pub struct EmbeddedRedis {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

/// The loopback address of a plain `redis://host:port` URL, or None for anything else.
fn loopback_addr(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("redis://")?;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit('@').next()?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 6379),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host == "localhost" { IpAddr::from([127, 0, 0, 1]) } else { host.parse().ok()? };
    ip.is_loopback().then_some(SocketAddr::new(ip, port))
}

/// True when a Redis answers PING at `addr`.
async fn answers_ping(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.ok()?;
        // +PONG, or -NOAUTH / -ERR from a Redis that wants a password: someone answers.
        (n > 0 && (buf[0] == b'+' || buf[0] == b'-')).then_some(())
    };
    tokio::time::timeout(Duration::from_millis(500), attempt).await.ok().flatten().is_some()
}

/// The pid in a redis-server pid file, if that process is alive and is a redis-server
/// (Linux: `/proc/<pid>/comm`; elsewhere the file alone is not trusted). Two servers
/// writing the same AOF directory would corrupt it.
fn running_pid(pidfile: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.starts_with("redis-server").then_some(pid)
}

fn on_path(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(binary)).find(|p| p.is_file()))
}

/// The major version in `redis-server --version` ("Redis server v=7.0.15 sha=…").
fn major_version(output: &str) -> Option<(u32, String)> {
    let version = output.split_whitespace().find_map(|w| w.strip_prefix("v="))?.to_string();
    Some((version.split('.').next()?.parse().ok()?, version))
}

/// `redis-server` from PATH, checked to be Redis >= 7.0.
pub async fn redis_server() -> Result<PathBuf, EmbeddedError> {
    let binary = on_path("redis-server").ok_or(EmbeddedError::Missing)?;
    let output = Command::new(&binary).arg("--version").output().await.map_err(EmbeddedError::Spawn)?;
    if let Some((major, version)) = major_version(&String::from_utf8_lossy(&output.stdout)) {
        if major < MIN_MAJOR {
            return Err(EmbeddedError::TooOld { binary, version });
        }
    }
    Ok(binary)
}

impl EmbeddedRedis {
    /// Starts a private redis-server if the configuration asks for one (`redis.spawn`)
    /// and nothing answers at the configured address; None when one is not needed.
    pub async fn start_if_needed(config: &RedisConfig) -> Result<Option<EmbeddedRedis>, EmbeddedError> {
        let asked = match config.spawn {
            SpawnPolicy::Never => false,
            SpawnPolicy::Auto => config.url == DEFAULT_REDIS_URL,
            SpawnPolicy::Always => true,
        };
        let Some(addr) = loopback_addr(&config.url).filter(|_| asked) else {
            return Ok(None);
        };
        if answers_ping(addr).await {
            return Ok(None);
        }
        let binary = redis_server().await.map_err(|e| match e {
            EmbeddedError::Missing => EmbeddedError::NotInstalled { addr },
            other => other,
        })?;
        let embedded = Self::start(&binary, addr, &config.data_dir).await?;
        tracing::warn!(
            %addr,
            pid = embedded.child.id(),
            data_dir = %embedded.dir.display(),
            "nothing answered at {}, so streamhub started its own redis-server there; its data (AOF) lives in {} and it \
             stops when streamhub stops (redis.spawn = \"never\" turns this off)",
            config.url,
            embedded.dir.display()
        );
        Ok(Some(embedded))
    }

    /// Starts a private redis-server on a free loopback port with its data in `data_dir`
    /// (`streamhub dev`).
    pub async fn start_private(data_dir: &Path) -> Result<EmbeddedRedis, EmbeddedError> {
        let binary = redis_server().await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(EmbeddedError::Spawn)?
                .port();
            match Self::start(&binary, SocketAddr::from(([127, 0, 0, 1], port)), data_dir).await {
                Err(EmbeddedError::NotReady { .. }) if attempt < PRIVATE_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    async fn start(binary: &Path, addr: SocketAddr, data_dir: &Path) -> Result<EmbeddedRedis, EmbeddedError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| EmbeddedError::DataDir { dir: data_dir.to_path_buf(), source })?;
        let dir =
            data_dir.canonicalize().map_err(|source| EmbeddedError::DataDir { dir: data_dir.to_path_buf(), source })?;
        let log = dir.join("redis.log");
        let pidfile = dir.join("redis.pid");
        if let Some(pid) = running_pid(&pidfile) {
            return Err(EmbeddedError::InUse { dir, pid });
        }
        let mut command = Command::new(binary);
        command
            .args(["--port", &addr.port().to_string(), "--bind", &addr.ip().to_string()])
            .arg("--dir")
            .arg(&dir)
            .args(["--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"])
            .arg("--logfile")
            .arg(&log)
            // Written even in the foreground; removed by a clean SHUTDOWN.
            .arg("--pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // Its own process group: a Ctrl-C in the terminal reaches streamhub only, which
        // then stops its clients first and this server last (SHUTDOWN), in order.
        #[cfg(unix)]
        command.process_group(0);
        // And should streamhub die without stopping it (SIGKILL, a crash), the kernel sends
        // it SIGTERM — a clean SHUTDOWN — instead of leaving it running on its data.
        #[cfg(target_os = "linux")]
        // SAFETY: between fork and exec the child only calls prctl(2), which is
        // async-signal-safe, and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().map_err(EmbeddedError::Spawn)?;
        let mut embedded = EmbeddedRedis { child, addr, dir };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while !answers_ping(addr).await {
            if tokio::time::Instant::now() >= deadline || embedded.child.try_wait().ok().flatten().is_some() {
                embedded.stop().await;
                return Err(EmbeddedError::NotReady { addr, timeout: START_TIMEOUT, log });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(%addr, dir = %embedded.dir.display(), pid = embedded.child.id(), "started embedded redis-server (AOF on, appendfsync everysec)");
        Ok(embedded)
    }

    /// Its URL (`redis://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Its data directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks the child to SHUTDOWN (it flushes the AOF), waits, and kills it if it hangs.
    pub async fn stop(&mut self) {
        if let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(self.addr)).await {
            let _ = stream.write_all(b"SHUTDOWN\r\n").await;
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(_) => tracing::info!(addr = %self.addr, "embedded redis-server stopped"),
            Err(_) => {
                tracing::warn!(addr = %self.addr, "embedded redis-server did not stop; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_loopback_urls_qualify() {
        assert_eq!(loopback_addr("redis://127.0.0.1:6379"), Some("127.0.0.1:6379".parse().expect("addr")));
        assert_eq!(loopback_addr("redis://localhost:7000/0"), Some("127.0.0.1:7000".parse().expect("addr")));
        assert_eq!(loopback_addr("redis://u:p@[::1]:7001"), Some("[::1]:7001".parse().expect("addr")));
        assert_eq!(loopback_addr("redis://10.0.0.5:6379"), None);
        assert_eq!(loopback_addr("rediss://127.0.0.1:6379"), None);
        assert_eq!(loopback_addr("redis-cluster://127.0.0.1:6379"), None);
    }

    #[test]
    fn a_pid_file_counts_only_for_a_live_redis_server() {
        let dir = std::env::temp_dir().join(format!("streamhub-pid-test-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("redis.pid");
        assert_eq!(running_pid(&file), None, "no file");
        std::fs::write(&file, format!("{}\n", std::process::id())).expect("write");
        assert_eq!(running_pid(&file), None, "a live process that is not redis-server");
        std::fs::write(&file, "4194304000\n").expect("write");
        assert_eq!(running_pid(&file), None, "no such process");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn versions_are_read_from_redis_server_version() {
        let v7 = "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=1";
        assert_eq!(major_version(v7), Some((7, "7.0.15".into())));
        assert_eq!(major_version("Redis server v=6.2.6 sha=0"), Some((6, "6.2.6".into())));
        assert_eq!(major_version("something else"), None);
    }
}
