//! Redis over TLS: a rediss:// URL with a private CA (redis.tls_ca_file) carries
//! publishes, history and live delivery (the hint connection too).

mod common;

use common::{seq, RedisServer, TestApp, WsClient};
use serde_json::json;

#[tokio::test]
async fn publish_history_and_delivery_work_over_tls() {
    let redis = RedisServer::start_tls();
    let ca = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys/redis_ca.crt");
    let app = TestApp::start_with(&redis, |c| {
        c.redis.url = format!("rediss://127.0.0.1:{}", redis.port);
        c.redis.tls_ca_file = Some(ca.clone());
    })
    .await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("secure", None).await;
    let (status, _) = app.publish("secure", json!("over tls")).await;
    assert_eq!(status, 201);
    let m = ws.messages(1).await;
    assert_eq!((seq(&m[0]), m[0]["data"].clone()), (1, json!("over tls")));
    assert_eq!(app.history_all("secure", 0).await.len(), 1);
    app.stop().await;

    // Without the CA the server's certificate is not trusted: not ready, never plaintext.
    let untrusting = TestApp::start_with(&redis, |c| c.redis.url = format!("rediss://127.0.0.1:{}", redis.port)).await;
    let (status, _) = untrusting.get("/readyz").await;
    assert_eq!(status, 503);
    untrusting.stop().await;
}
