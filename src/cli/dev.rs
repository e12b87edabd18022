//! `streamhub dev`: one command that gives a working local broker — loopback only, its
//! own redis-server on a free port with its data in the dev directory, the console, and a
//! generated admin key, announced in a banner.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{shutdown_signal, DevArgs};
use crate::config::{AnonymousRule, ApiKeySpec, Config, Scope, SpawnPolicy};
use crate::server::Server;
use crate::store::embedded::EmbeddedRedis;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A command line dev refuses (exit status 2).
    #[error("{0}")]
    Usage(String),
    /// The API address is taken (exit status 1), with what to do about it.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Embedded(#[from] crate::store::embedded::EmbeddedError),
    #[error(transparent)]
    Start(#[from] crate::server::StartError),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// The file in the data directory holding the admin key (mode 0600).
const KEY_FILE: &str = "admin-key";
/// The file in the data directory holding the URL of the Redis the node uses.
const URL_FILE: &str = "redis-url";

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DevError + 'a {
    move |source| DevError::Io { what, path: path.to_path_buf(), source }
}

/// Refuses a non-loopback address: dev opens every topic to anyone who can connect.
fn loopback_only(addr: SocketAddr, flag: &str) -> Result<(), DevError> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    Err(DevError::Usage(format!(
        "{flag} {addr} is not a loopback address: dev lets anyone who can connect subscribe, publish and \
         consume every topic, so it listens on 127.0.0.1 or ::1 only (use `streamhub serve` with a \
         configuration for anything else)"
    )))
}

/// The admin key kept in `dir`, or a new one (256 random bits) written there.
fn admin_key(dir: &Path) -> Result<String, DevError> {
    let path = dir.join(KEY_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key = text.trim().to_string();
        if key.len() >= 32 {
            return Ok(key);
        }
    }
    let key = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    write_private(&path, &key)?;
    Ok(key)
}

/// Writes `text` and a newline to `path`, readable by its owner only (mode 0600).
fn write_private(path: &Path, text: &str) -> Result<(), DevError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io("cannot write", path))?;
    writeln!(file, "{text}").map_err(io("cannot write", path))
}

/// Removes the temporary data directory when dev ends, however it ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(args: DevArgs, mut config: Config) -> Result<(), DevError> {
    let signal = shutdown_signal();
    loopback_only(config.server.listen, "--listen")?;
    loopback_only(config.server.metrics_listen, "--metrics-listen")?;
    let (dir, _temp) = if args.temp {
        let dir = std::env::temp_dir().join(format!("streamhub-dev-{}", uuid::Uuid::now_v7().simple()));
        (dir.clone(), Some(TempDir(dir)))
    } else {
        (args.data_dir.clone(), None)
    };
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    let key = admin_key(&dir)?;
    let mut embedded = match &args.redis_url {
        Some(_) => None,
        None => Some(EmbeddedRedis::start_private(&dir.join("redis")).await?),
    };
    if let Some(redis) = &embedded {
        config.redis.url = redis.url();
    }
    // For the CLI's Redis commands (publish, history, groups, dlq …) in other shells; only
    // its owner may read it (a --redis-url may hold a password).
    write_private(&dir.join(URL_FILE), &config.redis.url)?;
    config.redis.spawn = SpawnPolicy::Never;
    config.auth.anonymous.push(AnonymousRule {
        topics: vec!["*".into()],
        scopes: vec![Scope::Subscribe, Scope::Publish, Scope::Consume],
    });
    config.auth.api_key.push(ApiKeySpec {
        name: "dev-admin".into(),
        sha256: crate::auth::hash_api_key(&key),
        scopes: vec![Scope::Subscribe, Scope::Publish, Scope::Consume, Scope::Admin],
        topics: vec!["*".into()],
    });
    let redis_line = match &embedded {
        Some(r) => format!("{}  (its own redis-server; data in {})", r.url(), r.dir().display()),
        None => format!("{}  (--redis-url; nothing started)", crate::config::mask_url_password(&config.redis.url)),
    };
    // The default metrics port is often taken on a developer's machine (a Prometheus, or
    // Debian's prometheus package, listens on 9090): take a free one then, and say so.
    let mut metrics_note = "";
    let default_metrics = Config::defaults().server.metrics_listen;
    if config.server.metrics_listen == default_metrics && std::net::TcpListener::bind(default_metrics).is_err() {
        config.server.metrics_listen.set_port(0);
        metrics_note = " (9090 is taken; --metrics-listen to choose)";
    }
    let listen = config.server.listen;
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            if let Some(redis) = embedded.as_mut() {
                redis.stop().await;
            }
            return Err(match e {
                crate::server::StartError::Bind { addr, source } if addr == listen => DevError::Busy(format!(
                    "cannot listen on {addr}: {source}; another program uses it (a second streamhub dev?): \
                     choose another address with --listen 127.0.0.1:<port>"
                )),
                e => e.into(),
            });
        }
    };
    println!("{}", banner(&server, &key, &dir, args.temp, &redis_line, metrics_note));
    let _ = std::io::stdout().flush();
    signal.await;
    tracing::info!("shutting down");
    server.stop().await;
    if let Some(redis) = embedded.as_mut() {
        redis.stop().await;
    }
    Ok(())
}

fn banner(server: &Server, key: &str, dir: &Path, temp: bool, redis: &str, metrics_note: &str) -> String {
    let api = server.http_addr();
    let key_file = dir.join(KEY_FILE);
    let kept = if temp {
        "a temporary directory, removed on exit".to_string()
    } else {
        format!("{} (kept across runs; --temp for a throwaway)", dir.display())
    };
    let bin = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
    let path_hint = match (bin, std::env::current_dir()) {
        (Some(bin), Ok(cwd)) => match bin.strip_prefix(&cwd) {
            Ok(rel) => format!("export PATH=\"$PWD/{}:$PATH\"", rel.display()),
            Err(_) => format!("export PATH=\"{}:$PATH\"", bin.display()),
        },
        _ => "export".to_string(),
    };
    format!(
        "\nstreamhub dev: a local broker for trying things out. Anyone on this machine may subscribe,\n\
         publish and consume every topic; the admin key can do everything (topics, groups, dead letters).\n\
         \n  API        http://{api}\
         \n  WebSocket  ws://{api}/v1/ws\
         \n  Console    http://{api}/console/#key={key}\
         \n  Metrics    http://{metrics}/metrics{metrics_note}\
         \n  Admin key  {key}\
         \n             (in {key_file})\
         \n  Redis      {redis}\
         \n  Data       {kept}\
         \n\nIn another terminal, for the CLI and the admin API:\
         \n  {path_hint} STREAMHUB_TOKEN=\"$(cat {key_file})\" \\\
         \n         STREAMHUB__REDIS__URL=\"$(cat {url_file})\"\
         \n\nStop with Ctrl-C.\n",
        metrics = server.metrics_addr(),
        key_file = key_file.display(),
        url_file = dir.join(URL_FILE).display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert!(loopback_only("127.0.0.1:8080".parse().expect("addr"), "--listen").is_ok());
        assert!(loopback_only("[::1]:8080".parse().expect("addr"), "--listen").is_ok());
        let refused = loopback_only("0.0.0.0:8080".parse().expect("addr"), "--listen");
        assert!(matches!(refused, Err(DevError::Usage(m)) if m.contains("0.0.0.0:8080 is not a loopback address")));
    }

    #[test]
    fn the_admin_key_is_kept_across_runs() {
        let dir = std::env::temp_dir().join(format!("streamhub-key-test-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let first = admin_key(&dir).expect("key");
        assert_eq!(first.len(), 64);
        assert_eq!(admin_key(&dir).expect("key"), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE)).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "only its owner may read the key");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
