//! The Rust handler target: the same retries and dead letters as a webhook, a panicking
//! handler is a failed attempt, and a handler group without a handler refuses to start.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, pull_group, TestRedis};
use serde_json::json;
use streamhub::config::TargetKind;
use streamhub::groups::handler::{handler_fn, Handlers};
use streamhub::groups::webhook::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_group_retries_dead_letters_and_survives_panics() {
    let redis = TestRedis::start();
    let mut config = common::test_config(&redis);
    config.groups.sweep_interval_ms = 20;
    let mut spec = pull_group("h", "rust");
    spec.target = TargetKind::Handler;
    spec.max_attempts = 3;
    spec.backoff_base_ms = 20;
    spec.backoff_jitter = 0.0;
    config.group.push(spec);

    let seen: Arc<Mutex<Vec<(u64, u32)>>> = Default::default();
    let record = seen.clone();
    let mut handlers = Handlers::new();
    handlers.insert(
        "h",
        "rust",
        handler_fn(move |d| {
            let record = record.clone();
            async move {
                record.lock().expect("lock").push((d.seq, d.attempt));
                let text = d.envelope.map(|e| String::from_utf8_lossy(&e.payload).to_string()).unwrap_or_default();
                match (text.as_str(), d.attempt) {
                    ("\"panic\"", _) => panic!("handler bug"),
                    ("\"flaky\"", 1) => Outcome::Retry { error: "not yet".into(), after: None },
                    _ => Outcome::Ack,
                }
            }
        }),
    );
    // Without its handler, the node refuses to start.
    let refused = streamhub::Server::start(config.clone()).await;
    assert!(matches!(refused, Err(streamhub::server::StartError::MissingHandlers(_))));

    let server = streamhub::Server::start_with_handlers(config.clone(), handlers).await.expect("start");
    let app_base = format!("http://{}", server.http_addr());
    let mut admin = reqwest::header::HeaderMap::new();
    admin.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", common::ADMIN_KEY).parse().expect("header"));
    let http = reqwest::Client::builder().default_headers(admin).build().expect("client");
    eventually("the group", common::READY_TIMEOUT, async || {
        let body: serde_json::Value =
            http.get(format!("{app_base}/v1/topics/h/groups")).send().await.expect("get").json().await.expect("json");
        body["groups"][0]["exists"] == json!(true)
    })
    .await;
    for data in ["ok", "flaky", "panic"] {
        let r = http
            .post(format!("{app_base}/v1/topics/h/messages"))
            .json(&json!({ "data": data }))
            .send()
            .await
            .expect("publish");
        assert_eq!(r.status(), 201);
    }
    eventually("settled", Duration::from_secs(30), async || {
        let body: serde_json::Value =
            http.get(format!("{app_base}/v1/topics/h/groups")).send().await.expect("get").json().await.expect("json");
        body["groups"][0]["counters"]["acked"] == json!(2) && body["groups"][0]["dead_letters"] == json!(1)
    })
    .await;
    let mut seen = seen.lock().expect("lock").clone();
    seen.sort();
    assert_eq!(seen, vec![(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3)]);
    let dlq: serde_json::Value = http
        .get(format!("{app_base}/v1/topics/h/groups/rust/dlq"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(dlq["dead_letters"][0]["error"].as_str().is_some_and(|e| e.contains("panicked")), "{dlq}");
    server.stop().await;
}
