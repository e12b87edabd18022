//! A dead Redis gives 503 within the configured timeout, never a hang; when Redis comes
//! back, streamhub serves again without a restart.

mod common;

use std::time::{Duration, Instant};

use common::{code, RedisServer, TestApp};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_gives_503_within_the_timeout_and_recovers_after_restart() {
    let mut redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| c.redis.command_timeout_ms = 500).await;
    let (status, _) = app.publish("o", json!(1)).await;
    assert_eq!(status, StatusCode::CREATED);

    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = app.publish("o", json!("while down")).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(code(&body), "redis_unavailable");
        // The bound is what the issue asks for (an answer, not a hang), with slack for
        // a loaded CI machine; it is not a speed assertion.
        assert!(took < Duration::from_millis(500) + Duration::from_secs(5), "answered after {took:?}");
    }
    let (status, body) = app.get("/readyz").await;
    assert_eq!((status, code(&body)), (StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable"));
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "the process itself is healthy");

    redis.restart();
    let deadline = Instant::now() + common::READY_TIMEOUT;
    loop {
        let (status, _) = app.get("/readyz").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "streamhub never became ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = app.publish("o", json!("after restart")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let metrics = app.metrics().await;
    assert!(metrics.contains("streamhub_redis_errors_total{kind=\"unavailable\"}"), "{metrics}");
    app.stop().await;
}
