//! G1 and G2 with durability = "replicated": a publish is acknowledged only after a
//! replica confirmed it (WAIT), and readable only then (it is staged until its replicas
//! confirm it); without the replica it is refused with `not_replicated`, stays unreadable,
//! and its retry with the same idempotency key commits it once a replica is back.

mod common;

use common::{code, wait_until, RedisServer, TestApp, READY_TIMEOUT};
use reqwest::StatusCode;
use serde_json::json;
use streamhub::config::Durability;

#[tokio::test]
async fn replicated_publishes_wait_for_the_replica_and_are_refused_without_it() {
    let primary = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(&primary);
    let app = TestApp::start_with(&primary, |c| {
        c.publish.durability = Durability::Replicated;
        c.publish.replicas = 1;
        // Generous for a loaded CI machine: the refusals below wait this long (inside the
        // command timeout).
        c.publish.replication_timeout_ms = 1000;
        c.redis.command_timeout_ms = 3000;
    })
    .await;
    let stream = format!("{}:{{d}}:s", app.prefix());

    let staging = format!("{}:{{d}}:x", app.prefix());
    let (status, body) = app.publish("d", json!(1)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // WAIT returned: the replica already holds the entry when the client gets its ack
    // (staged, or already committed there too).
    let xlen = |key: &str| String::from_utf8_lossy(&replica.cli(&["XLEN", key]).stdout).trim().parse::<u64>();
    assert_eq!(xlen(&stream).unwrap_or(0) + xlen(&staging).unwrap_or(0), 1);

    replica.kill();
    wait_until("the primary to notice the replica is gone", READY_TIMEOUT, || {
        primary.info("replication").contains("connected_slaves:0")
    });
    let keyed = json!({ "data": 2, "idempotency_key": "pay-1" });
    let (status, body) = app.post_json("/v1/topics/d/messages", &keyed).await;
    assert_eq!((status, code(&body)), (StatusCode::SERVICE_UNAVAILABLE, "not_replicated"), "{body}");
    // The message is staged on the primary, readable by nobody; a retry with the same key
    // adds nothing.
    let (status, _) = app.post_json("/v1/topics/d/messages", &keyed).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let history = app.history_all("d", 0).await;
    assert_eq!(history.len(), 1, "the unconfirmed message is not readable: {history:?}");
    let (_, topic) = app.get("/v1/topics/d").await;
    assert_eq!(topic["seq"], json!(1), "{topic}");

    // With a replica back, the retry with the same key is confirmed and commits it.
    let _replica = RedisServer::start_replica_of(&primary);
    let (status, body) = app.post_json("/v1/topics/d/messages", &keyed).await;
    assert_eq!((status, body["seq"].clone()), (StatusCode::OK, json!(2)), "{body}");
    let history = app.history_all("d", 0).await;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[1]["data"], json!(2));

    // durability = "stored" does not wait for replicas.
    let stored = TestApp::start_with(&primary, |c| c.redis.prefix = app.prefix().to_string()).await;
    let (status, body) = stored.publish("d", json!(3)).await;
    assert_eq!((status, body["seq"].clone()), (StatusCode::CREATED, json!(3)));
    stored.stop().await;
    app.stop().await;
}

/// `publish.max_staged` at its edge: with no replica to confirm, a topic holds exactly
/// that many staged seqs; the next publish is refused (503 staging_full, with Retry-After,
/// naming `publish.max_staged`) and nothing staged becomes readable.
#[tokio::test]
async fn staging_holds_at_most_max_staged_seqs_per_topic() {
    let primary = RedisServer::start();
    let app = TestApp::start_with(&primary, |c| {
        c.publish.durability = Durability::Replicated;
        c.publish.replicas = 1;
        c.publish.replication_timeout_ms = 50;
        c.publish.max_staged = 2;
    })
    .await;
    for i in 0..2 {
        let (status, body) = app.publish("s", json!(i)).await;
        assert_eq!((status, code(&body)), (StatusCode::SERVICE_UNAVAILABLE, "not_replicated"), "{body}");
    }
    let refused =
        app.http.post(app.url("/v1/topics/s/messages")).json(&json!({ "data": 2 })).send().await.expect("POST");
    let retry_after = refused.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (status, body) = common::decode(refused).await;
    assert_eq!((status, code(&body)), (StatusCode::SERVICE_UNAVAILABLE, "staging_full"), "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"), "a staging_full answer says when to retry");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("publish.max_staged"), "the message names the limit: {message}");
    let staging = format!("{}:{{s}}:x", app.prefix());
    let xlen = String::from_utf8_lossy(&primary.cli(&["XLEN", &staging]).stdout).trim().to_string();
    assert_eq!(xlen, "2", "exactly max_staged seqs wait in the staging stream");
    assert!(app.history_all("s", 0).await.is_empty(), "nothing staged is readable");
    app.stop().await;
}
