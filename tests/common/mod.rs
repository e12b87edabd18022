//! Test harness: a private redis-server per test (killable, restartable), a unique key
//! prefix per test, and streamhub started in-process on 127.0.0.1:0. Cluster and
//! Sentinel topologies live in `topology`.
#![allow(dead_code)]

pub mod shared;
pub mod topology;

#[allow(unused_imports)]
pub use shared::{skip_unless_standalone, topology, RedisTarget, TestRedis, Topology};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use streamhub::config::{Config, Scope, SpawnPolicy};
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
    // +PONG, or -NOAUTH from a server that requires a user: either way it is up.
    matches!(stream.read(&mut buf), Ok(n) if n > 0 && (buf.starts_with(b"+PONG") || buf.starts_with(b"-NOAUTH")))
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

    /// A server speaking only TLS on its port, with the test certificates of tests/keys.
    pub fn start_tls() -> RedisServer {
        let keys = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let file = |name: &str| keys.join(name).display().to_string();
        let extra_args = vec![
            "--port".to_string(),
            "0".to_string(),
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".to_string(),
            file("redis_server.crt"),
            "--tls-key-file".to_string(),
            file("redis_server.key"),
            "--tls-ca-cert-file".to_string(),
            file("redis_ca.crt"),
            "--tls-auth-clients".to_string(),
            "no".to_string(),
        ];
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(&extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let server = RedisServer { child: Some(child), port, dir, extra_args };
        let ca = file("redis_ca.crt");
        wait_until("the TLS redis-server to answer", READY_TIMEOUT, || {
            Command::new("redis-cli")
                .args(["--tls", "--cacert", &ca, "-p", &port.to_string(), "PING"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
        });
        server
    }

    fn spawn(&mut self) {
        self.launch();
        let addr = self.addr();
        wait_until("redis-server to answer PING", READY_TIMEOUT, || redis_answers(addr));
    }

    /// A server started without waiting for it (callers starting several wait for all
    /// of them at once with `wait_answering`).
    pub(crate) fn launch_with_args(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra_args = extra.iter().map(|a| a.to_string()).collect();
        let mut server = RedisServer { child: None, port: free_port(), dir, extra_args };
        server.launch();
        server
    }

    /// Waits until every server of `servers` answers PING.
    pub(crate) fn wait_answering(servers: &[&RedisServer]) {
        wait_until("redis-servers to answer PING", READY_TIMEOUT, || servers.iter().all(|s| redis_answers(s.addr())));
    }

    /// The process id, while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the server process has not been killed by `kill`.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn launch(&mut self) {
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

    /// SIGSTOP: the server stops answering but keeps its connections (a hung Redis).
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
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
pub fn test_config(redis: &(impl RedisTarget + ?Sized)) -> Config {
    let mut config = Config::defaults();
    config.redis.url = redis.redis_url();
    config.redis.prefix = unique_prefix();
    config.redis.spawn = SpawnPolicy::Never;
    config.redis.command_timeout_ms = 1000;
    config.redis.connect_timeout_ms = 1000;
    config.redis.reconnect_min_ms = 50;
    config.redis.reconnect_max_ms = 200;
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.server.metrics_listen = "127.0.0.1:0".parse().expect("addr");
    config.server.shutdown_grace_ms = 2000;
    // Every test client comes from 127.0.0.1: per-IP and per-credential limits are lifted
    // (the tests about limits set their own).
    config.http.connection_rate_per_ip = 1_000_000;
    config.http.max_connections_per_ip = 1_000_000;
    config.http.publish_rate_per_sec = 1_000_000;
    // Tests that are not about access control run with everything open to anyone, and
    // an admin key the test HTTP client sends by default.
    config.auth.anonymous.push(streamhub::config::AnonymousRule {
        topics: vec!["*".into()],
        scopes: vec![Scope::Subscribe, Scope::Publish, Scope::Consume, Scope::Presence],
    });
    config.auth.api_key.push(streamhub::config::ApiKeySpec {
        name: "test-admin".into(),
        sha256: streamhub::auth::hash_api_key(ADMIN_KEY),
        scopes: vec![Scope::Subscribe, Scope::Publish, Scope::Consume, Scope::Presence, Scope::Admin],
        topics: vec!["*".into()],
    });
    config
}

/// The admin API key of `test_config`.
pub const ADMIN_KEY: &str = "test-admin-key";

/// streamhub running in this process, with an HTTP client for it.
pub struct TestApp {
    pub server: Server,
    pub base: String,
    pub http: reqwest::Client,
    pub config: Config,
    /// On a shared topology: no app with another function library runs meanwhile.
    _library: Option<shared::LibraryGuard>,
}

impl TestApp {
    pub async fn start(redis: &(impl RedisTarget + ?Sized)) -> TestApp {
        Self::start_with(redis, |_| {}).await
    }

    pub async fn start_with(redis: &(impl RedisTarget + ?Sized), tweak: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config(redis);
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let library = redis.shared().then(|| shared::LibraryGuard::acquire(streamhub::store::library::render(&config)));
        let server = Server::start(config.clone()).await.expect("streamhub starts");
        let base = format!("http://{}", server.http_addr());
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {ADMIN_KEY}").parse().expect("header"));
        let http = reqwest::Client::builder().default_headers(headers).build().expect("http client");
        TestApp { server, base, http, config, _library: library }
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

/// A WebSocket client speaking the streamhub protocol (JSON or MessagePack frames).
pub struct WsClient {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
    pub msgpack: bool,
    /// Frames read while looking for a reply, in arrival order.
    pending: std::collections::VecDeque<Value>,
}

/// How long a test waits for one expected frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

impl WsClient {
    pub async fn connect(base: &str) -> WsClient {
        Self::connect_with(base, None).await.expect("websocket connects")
    }

    pub async fn connect_with(
        base: &str,
        protocol: Option<&str>,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        // `base` may carry a query (e.g. `?token=`): it goes after the path.
        let (base, query) = base.split_once('?').map(|(b, q)| (b, format!("?{q}"))).unwrap_or((base, String::new()));
        let url = format!("{}/v1/ws{query}", base.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().expect("request");
        if let Some(p) = protocol {
            request.headers_mut().insert("sec-websocket-protocol", p.parse().expect("header"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(WsClient { ws, next_id: 1, msgpack: protocol == Some("streamhub.v1.msgpack"), pending: Default::default() })
    }

    /// Wraps an already connected stream (JSON frames).
    pub fn from_stream(
        ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ) -> WsClient {
        WsClient { ws, next_id: 1, msgpack: false, pending: Default::default() }
    }

    pub async fn send_raw(&mut self, message: tokio_tungstenite::tungstenite::Message) {
        use futures::SinkExt;
        self.ws.send(message).await.expect("send");
    }

    pub async fn send(&mut self, frame: &Value) {
        let message = if self.msgpack {
            tokio_tungstenite::tungstenite::Message::Binary(rmp_serde::to_vec_named(frame).expect("msgpack").into())
        } else {
            tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into())
        };
        self.send_raw(message).await;
    }

    /// The next frame from the socket (pings are answered by the library), or None when
    /// the connection closed; panics after FRAME_TIMEOUT.
    async fn read_frame(&mut self) -> Option<Value> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let next = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next()).await.expect("a frame within the timeout");
            match next? {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).expect("json frame")),
                Ok(Message::Binary(b)) => return Some(rmp_serde::from_slice(&b).expect("msgpack frame")),
                Ok(Message::Close(frame)) => {
                    return Some(serde_json::json!({ "type": "close", "code": frame.map(|f| u16::from(f.code)) }))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next frame, pending ones first.
    pub async fn next_frame(&mut self) -> Value {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        self.read_frame().await.expect("connection open")
    }

    /// Sends `frame` with a fresh id and returns the frame that answers it; frames read
    /// meanwhile stay pending.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = serde_json::json!(id);
        self.send(&frame).await;
        loop {
            let reply = self.read_frame().await.expect("connection open");
            if reply["id"] == serde_json::json!(id) {
                return reply;
            }
            self.pending.push_back(reply);
        }
    }

    pub async fn subscribe(&mut self, topic: &str, since: Option<Value>) -> Value {
        let mut frame = serde_json::json!({ "op": "subscribe", "topic": topic });
        if let Some(since) = since {
            frame["since"] = since;
        }
        let reply = self.request(frame).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        reply
    }

    /// The next `n` message frames (other frames are returned in `others`).
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let frame = self.next_frame().await;
            if frame["type"] == "message" {
                out.push(frame);
            } else {
                panic!("expected a message, got {frame}");
            }
        }
        out
    }

    /// Reads until the server closes; returns the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let frame = match self.pending.pop_front() {
                Some(f) => Some(f),
                None => self.read_frame().await,
            };
            match frame {
                None => return None,
                Some(f) if f["type"] == "close" => return f["code"].as_u64().map(|c| c as u16),
                Some(_) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The seq of a message frame.
pub fn seq(frame: &Value) -> u64 {
    frame["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {frame}"))
}

/// Publishes `n` messages to `topic` in batches (fast setup for delivery tests).
pub async fn publish_many(app: &TestApp, topic: &str, n: usize, batch: usize) {
    let mut sent = 0;
    while sent < n {
        let k = batch.min(n - sent);
        let messages: Vec<Value> = (sent..sent + k).map(|i| serde_json::json!({ "data": { "i": i } })).collect();
        let (status, body) = app
            .post_json(&format!("/v1/topics/{topic}/messages:batch"), &serde_json::json!({ "messages": messages }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        sent += k;
    }
}

/// Reads an `INFO commandstats` counter, e.g. `fcall_ro` → calls so far.
pub fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let info = redis.info("commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A pull group declaration for tests.
pub fn pull_group(topic: &str, name: &str) -> streamhub::config::GroupSpec {
    let mut spec: streamhub::config::GroupSpec =
        toml::from_str(&format!("topic = \"{topic}\"\nname = \"{name}\"\ntarget = \"pull\"\nstart = \"earliest\"\n"))
            .expect("group spec");
    spec.ack_wait_ms = 30_000;
    spec
}

/// A webhook group declaration for tests.
pub fn webhook_group(topic: &str, name: &str, url: &str) -> streamhub::config::GroupSpec {
    let mut spec = pull_group(topic, name);
    spec.target = streamhub::config::TargetKind::Webhook;
    spec.url = Some(url.to_string());
    spec
}

/// Waits (polling a readiness condition) until `ready` holds.
pub async fn eventually(what: &str, timeout: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One request a webhook receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The status the receiver answered.
    pub status: u16,
    pub seq: u64,
    pub attempt: u64,
    pub headers: axum::http::HeaderMap,
    pub body: axum::body::Bytes,
}

/// A local webhook receiver: records every request and answers with `respond(&hook)`.
pub struct Receiver {
    pub url: String,
    pub hooks: std::sync::Arc<std::sync::Mutex<Vec<Hook>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(respond: impl Fn(&Hook) -> u16 + Send + Sync + 'static) -> Receiver {
        use axum::extract::State;
        let hooks: std::sync::Arc<std::sync::Mutex<Vec<Hook>>> = Default::default();
        type Shared = (std::sync::Arc<std::sync::Mutex<Vec<Hook>>>, std::sync::Arc<dyn Fn(&Hook) -> u16 + Send + Sync>);
        let state: Shared = (hooks.clone(), std::sync::Arc::new(respond));
        async fn handle(
            State((hooks, respond)): State<Shared>,
            headers: axum::http::HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::http::StatusCode {
            let num =
                |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut hook = Hook {
                status: 0,
                seq: num("x-streamhub-seq"),
                attempt: num("x-streamhub-attempt"),
                headers: headers.clone(),
                body,
            };
            let status = respond(&hook);
            hook.status = status;
            hooks.lock().expect("hooks").push(hook);
            axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
        }
        let app = axum::Router::new().route("/hook", axum::routing::post(handle)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, hooks, _task: task }
    }

    /// Seqs answered with 2xx, deduplicated.
    pub fn acked_seqs(&self) -> std::collections::BTreeSet<u64> {
        self.hooks.lock().expect("hooks").iter().filter(|h| (200..300).contains(&h.status)).map(|h| h.seq).collect()
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().expect("hooks").clone()
    }

    pub fn count(&self) -> usize {
        self.hooks.lock().expect("hooks").len()
    }
}
