//! The embedded default: `streamhub serve` with nothing answering at a loopback Redis URL
//! starts its own redis-server (AOF on, data under redis.data_dir) and stops it on SIGTERM.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, redis_answers, streamhub_bin, wait_until, READY_TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

struct Serve {
    child: Child,
    http: u16,
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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start streamhub serve");
    Serve { child, http }
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
async fn serve_starts_its_own_redis_and_stops_it_on_sigterm() {
    let data = tempfile::tempdir().expect("temp dir");
    let redis_port = free_port();
    let redis_addr = std::net::SocketAddr::from(([127, 0, 0, 1], redis_port));
    assert!(!redis_answers(redis_addr), "nothing listens on the chosen port");
    let mut node = serve(redis_port, &data.path().join("redis"), "auto");
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
