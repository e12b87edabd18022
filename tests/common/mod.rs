//! Test harness: a private redis-server per test (killable, restartable), a unique key
//! prefix per test, and streamhub started in-process on 127.0.0.1:0.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use streamhub::config::{Config, SpawnPolicy};
use streamhub::Server;

/// How long a started process may take to become ready before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// True when something at `addr` answers a Redis PING.
pub fn redis_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"+PONG"))
}

/// Polls `ready` (a readiness signal) until it holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A redis-server child on a free port, data in a temp dir, no persistence.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with_args(&[])
    }

    /// A server with extra redis-server arguments (e.g. `--replicaof 127.0.0.1 <port>`).
    pub fn start_with_args(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra_args = extra.iter().map(|a| a.to_string()).collect();
        let mut server = RedisServer { child: None, port: free_port(), dir, extra_args };
        server.spawn();
        server
    }

    /// A replica of `primary`, returned once its replication link is up.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let replica = Self::start_with_args(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        wait_until("the replica's link to its primary", READY_TIMEOUT, || {
            replica.info("replication").contains("master_link_status:up")
        });
        replica
    }

    /// `INFO <section>` as text.
    pub fn info(&self, section: &str) -> String {
        String::from_utf8_lossy(&self.cli(&["INFO", section]).stdout).to_string()
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let addr = self.addr();
        wait_until("redis-server to answer PING", READY_TIMEOUT, || redis_answers(addr));
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the server dies at once, losing everything (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `redis-cli -p <port> <args>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli must be installed")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A key prefix no other test in this process uses.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("t{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The test configuration: defaults, pointed at `redis`, ephemeral ports, short timeouts.
pub fn test_config(redis: &RedisServer) -> Config {
    let mut config = Config::defaults();
    config.redis.url = redis.url();
    config.redis.prefix = unique_prefix();
    config.redis.spawn = SpawnPolicy::Never;
    config.redis.command_timeout_ms = 1000;
    config.redis.connect_timeout_ms = 1000;
    config.redis.reconnect_min_ms = 50;
    config.redis.reconnect_max_ms = 200;
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.server.metrics_listen = "127.0.0.1:0".parse().expect("addr");
    config.server.shutdown_grace_ms = 2000;
    config
}

/// streamhub running in this process, with an HTTP client for it.
pub struct TestApp {
    pub server: Server,
    pub base: String,
    pub http: reqwest::Client,
    pub config: Config,
}

impl TestApp {
    pub async fn start(redis: &RedisServer) -> TestApp {
        Self::start_with(redis, |_| {}).await
    }

    pub async fn start_with(redis: &RedisServer, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config(redis);
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let server = Server::start(config.clone()).await.expect("streamhub starts");
        let base = format!("http://{}", server.http_addr());
        TestApp { server, base, http: reqwest::Client::new(), config }
    }

    pub fn prefix(&self) -> &str {
        &self.config.redis.prefix
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        decode(response).await
    }

    /// POST a JSON body to `path`.
    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self.http.post(self.url(path)).json(body).send().await.expect("POST");
        decode(response).await
    }

    /// Publish `{"data": data}` to `topic`.
    pub async fn publish(&self, topic: &str, data: Value) -> (StatusCode, Value) {
        self.post_json(&format!("/v1/topics/{topic}/messages"), &serde_json::json!({ "data": data })).await
    }

    /// Every message of `topic` after `since`, following pages to the top.
    pub async fn history_all(&self, topic: &str, since: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut since = since;
        loop {
            let (status, page) = self.get(&format!("/v1/topics/{topic}/messages?since={since}&limit=1000")).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let messages = page["messages"].as_array().expect("messages").clone();
            let Some(last) = messages.last() else { break };
            since = last["seq"].as_u64().expect("seq");
            out.extend(messages);
        }
        out
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.server.metrics_addr());
        self.http.get(url).send().await.expect("scrape").text().await.expect("metrics text")
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

pub async fn decode(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// The `error.code` of an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// Path of the streamhub binary built for these tests.
pub fn streamhub_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_streamhub"))
}
