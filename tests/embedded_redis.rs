//! Embedded Redis only when asked for: `streamhub serve` starts its own redis-server (AOF
//! on, data under redis.data_dir) for the default URL (`spawn = "auto"`) or any loopback
//! URL (`"always"`) when nothing answers there, announces it, and stops it on SIGTERM —
//! quietly. Any other unreachable URL is an error naming the URL and the cause, in `serve`
//! and in the CLI; logs carry no colour codes when not written to a terminal.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, redis_answers, streamhub_bin, wait_until, READY_TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

struct Serve {
    child: Child,
    http: u16,
    /// The node's standard error, written to a file.
    log: std::path::PathBuf,
}

impl Serve {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(redis_port: u16, data_dir: &std::path::Path, spawn: &str) -> Serve {
    let http = free_port();
    // Anonymous publishing, so the test can publish without credentials.
    let config = data_dir.with_extension("toml");
    let log = data_dir.with_extension("log");
    std::fs::write(&config, "[[auth.anonymous]]\ntopics = [\"*\"]\nscopes = [\"publish\"]\n").expect("config");
    let child = Command::new(streamhub_bin())
        .args(["--config", config.to_str().expect("utf8")])
        .arg("serve")
        .args(["--redis-url", &format!("redis://127.0.0.1:{redis_port}")])
        .args(["--listen", &format!("127.0.0.1:{http}")])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("STREAMHUB__REDIS__DATA_DIR", data_dir)
        .env("STREAMHUB__REDIS__SPAWN", spawn)
        .env("STREAMHUB__REDIS__CONNECT_TIMEOUT_MS", "500")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start streamhub serve");
    Serve { child, http, log }
}

async fn http_status(port: u16, path: &str) -> Option<u16> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.ok()?;
    Some(response.status().as_u16())
}

/// Polls until `path` answers `status` (a readiness signal), failing after READY_TIMEOUT.
async fn wait_for_status(port: u16, path: &str, status: u16) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while http_status(port, path).await != Some(status) {
        assert!(Instant::now() < deadline, "{path} never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn spawn_always_starts_its_own_redis_announces_it_and_stops_it_quietly_on_sigterm() {
    let data = tempfile::tempdir().expect("temp dir");
    let redis_port = free_port();
    let redis_addr = std::net::SocketAddr::from(([127, 0, 0, 1], redis_port));
    assert!(!redis_answers(redis_addr), "nothing listens on the chosen port");
    let mut node = serve(redis_port, &data.path().join("redis"), "always");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", node.http);
    wait_for_status(node.http, "/readyz", 200).await;
    assert!(redis_answers(redis_addr), "the embedded redis-server answers on the configured port");
    let response = client
        .post(format!("{base}/v1/topics/emb/messages"))
        .json(&serde_json::json!({ "data": "kept" }))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 201);
    assert!(data.path().join("redis").join("appendonlydir").is_dir(), "AOF is on, under redis.data_dir");

    kill(Pid::from_raw(node.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + READY_TIMEOUT;
    let status = loop {
        if let Some(status) = node.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "streamhub did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "clean exit: {status:?}");
    wait_until("the embedded redis-server to stop", READY_TIMEOUT, || !redis_answers(redis_addr));
    let log = node.log();
    let announced = log.lines().find(|l| l.contains("started its own redis-server")).unwrap_or_default();
    assert!(announced.contains(" WARN "), "announced loudly: {log}");
    let dir = data.path().join("redis").canonicalize().expect("data dir");
    assert!(announced.contains(&dir.display().to_string()), "with its data directory: {announced}");
    assert!(announced.contains("pid="), "and its pid: {announced}");
    let shutdown = log.split("shutting down").nth(1).expect("the shutdown is logged");
    assert!(
        !shutdown.contains(" WARN ") && !shutdown.contains(" ERROR "),
        "a clean shutdown prints no warnings: {shutdown}"
    );
    assert!(!log.contains('\u{1b}'), "no colour codes in a log that is not a terminal: {log:?}");
}

#[tokio::test]
async fn auto_starts_nothing_for_another_url_and_says_why_it_is_unreachable() {
    let data = tempfile::tempdir().expect("temp dir");
    let redis_port = free_port();
    let redis_addr = std::net::SocketAddr::from(([127, 0, 0, 1], redis_port));
    let node = serve(redis_port, &data.path().join("redis"), "auto");
    wait_for_status(node.http, "/healthz", 200).await;
    assert_eq!(http_status(node.http, "/readyz").await, Some(503));
    assert!(!redis_answers(redis_addr), "no redis-server was started for a URL that is not the default");
    assert!(!data.path().join("redis").exists(), "no data directory was created");
    let url = format!("redis://127.0.0.1:{redis_port}");
    let log = node.log();
    let error = log.lines().find(|l| l.contains(" ERROR ")).unwrap_or_else(|| panic!("an error is logged: {log}"));
    assert!(error.contains(&format!("{url} does not answer: connection refused")), "URL and cause: {error}");
}

#[test]
fn cli_commands_against_an_unreachable_redis_name_the_url_and_the_cause() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    for args in [vec!["topics"], vec!["history", "orders"], vec!["publish", "orders", "x"], vec!["groups", "orders"]] {
        let out = std::process::Command::new(streamhub_bin())
            .args(["--redis-url", &url])
            .args(&args)
            .env("STREAMHUB__REDIS__CONNECT_TIMEOUT_MS", "300")
            .env("STREAMHUB__REDIS__COMMAND_TIMEOUT_MS", "300")
            .output()
            .expect("run streamhub");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{url} does not answer: connection refused")), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn spawn_never_leaves_redis_alone_and_reports_not_ready() {
    let data = tempfile::tempdir().expect("temp dir");
    let redis_port = free_port();
    let node = serve(redis_port, &data.path().join("redis"), "never");
    wait_for_status(node.http, "/healthz", 200).await;
    assert_eq!(http_status(node.http, "/readyz").await, Some(503));
    assert!(!redis_answers(std::net::SocketAddr::from(([127, 0, 0, 1], redis_port))));
    assert!(!data.path().join("redis").exists(), "no data directory was created");
}
