//! Groups created, paused, resumed and deleted through the admin API, seen by every node.

mod common;

use std::time::Duration;

use common::{code, eventually, publish_many, pull_group, Receiver, TestApp, TestRedis};
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn send(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = app.http.request(method, app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    common::decode(request.send().await.expect("request")).await
}

async fn fetch(app: &TestApp, topic: &str, group: &str) -> (StatusCode, Value) {
    app.post_json(&format!("/v1/topics/{topic}/groups/{group}:fetch"), &json!({ "max": 100 })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_created_through_the_api_run_on_every_node_and_can_be_paused_and_deleted() {
    let redis = TestRedis::start();
    let fast = |c: &mut streamhub::Config| {
        c.groups.discover_interval_ms = 100;
        c.groups.sweep_interval_ms = 50;
        c.group.push(pull_group("fixed", "declared"));
    };
    let a = TestApp::start_with(&redis, fast).await;
    let prefix = a.prefix().to_string();
    let b = TestApp::start_with(&redis, |c| {
        fast(c);
        c.redis.prefix = prefix.clone();
    })
    .await;

    let (status, body) = send(
        &a,
        reqwest::Method::PUT,
        "/v1/topics/api/groups/w",
        Some(json!({ "target": "pull", "start": "earliest", "max_attempts": 3 })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = send(
        &a,
        reqwest::Method::PUT,
        "/v1/topics/api/groups/w",
        Some(json!({ "target": "pull", "start": "earliest", "max_attempts": 4, "ack_wait_ms": 300 })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "replacing a definition");
    publish_many(&a, "api", 4, 4).await;
    // Node B discovers the group.
    eventually("B to serve the new group", WAIT, async || fetch(&b, "api", "w").await.0 == StatusCode::OK).await;
    let (_, list) = b.get("/v1/topics/api/groups").await;
    assert_eq!(
        (list["groups"][0]["declared"].clone(), list["groups"][0]["exists"].clone()),
        (json!(false), json!(true))
    );

    // Paused on A: no node hands anything out (B learns it within a sweep; what it
    // fetched before comes back after ack_wait).
    let (status, body) = a.post_json("/v1/topics/api/groups/w:pause", &json!({})).await;
    assert_eq!((status, body["paused"].clone()), (StatusCode::OK, json!(true)));
    publish_many(&a, "api", 2, 2).await;
    eventually("B to see the pause", WAIT, async || fetch(&b, "api", "w").await.1["paused"] == json!(true)).await;
    assert_eq!(fetch(&a, "api", "w").await.1["deliveries"], json!([]));
    let (status, _) = a.post_json("/v1/topics/api/groups/w:resume", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let mut seqs = std::collections::BTreeSet::new();
    eventually("deliveries after resume", WAIT, async || {
        for node in [&a, &b] {
            let (_, body) = fetch(node, "api", "w").await;
            for d in body["deliveries"].as_array().into_iter().flatten() {
                seqs.insert(d["message"]["seq"].as_u64().expect("seq"));
            }
        }
        seqs.len() >= 2
    })
    .await;

    // Deleted on A: gone everywhere, with its keys.
    let (status, _) = send(&a, reqwest::Method::DELETE, "/v1/topics/api/groups/w", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually("B to stop serving it", WAIT, async || fetch(&b, "api", "w").await.0 == StatusCode::NOT_FOUND).await;
    let exists = redis.cli(&["EXISTS", &format!("{prefix}:{{api}}:g:w:r")]);
    assert_eq!(String::from_utf8_lossy(&exists.stdout).trim(), "0");
    let (status, body) = send(&a, reqwest::Method::DELETE, "/v1/topics/api/groups/w", None).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "group_not_found"));

    // Declared groups belong to the configuration; bad definitions are refused.
    let (status, body) = send(&a, reqwest::Method::DELETE, "/v1/topics/fixed/groups/declared", None).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "declared_in_config"));
    let (status, body) =
        send(&a, reqwest::Method::PUT, "/v1/topics/api/groups/x", Some(json!({ "target": "webhook" }))).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_group"));
    let (status, body) =
        send(&a, reqwest::Method::PUT, "/v1/topics/api/groups/x", Some(json!({ "target": "pull", "bogus": 1 }))).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_group"));
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_group_created_through_the_api_delivers() {
    let receiver = Receiver::start(|_| 200).await;
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    publish_many(&app, "later", 3, 3).await;
    let (status, body) = send(
        &app,
        reqwest::Method::PUT,
        "/v1/topics/later/groups/hook",
        Some(json!({ "target": "webhook", "url": receiver.url, "start": "earliest" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    eventually("three deliveries", WAIT, async || receiver.acked_seqs().len() == 3).await;
    app.stop().await;
}
