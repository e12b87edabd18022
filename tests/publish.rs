//! Publishing: gap-free numbering under concurrency (G2), idempotency, batches, raw bodies.

mod common;

use std::collections::HashSet;

use common::{code, RedisServer, TestApp};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_publishers_get_seqs_1_to_16000_without_gap_or_duplicate() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis).await;
    let mut tasks = Vec::new();
    for publisher in 0..16u64 {
        let http = app.http.clone();
        let url = app.url("/v1/topics/load/messages");
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(1000);
            for i in 0..1000u64 {
                let response = http
                    .post(&url)
                    .json(&json!({ "data": { "publisher": publisher, "i": i } }))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(response.status(), StatusCode::CREATED);
                let body: serde_json::Value = response.json().await.expect("json");
                seqs.push(body["seq"].as_u64().expect("seq"));
            }
            seqs
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("publisher task"));
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=16000).collect::<Vec<u64>>(), "acknowledged seqs are 1..16000");

    let history = app.history_all("load", 0).await;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (1..=16000).collect::<Vec<u64>>(), "history holds 1..16000 in order");
    let payloads: HashSet<(u64, u64)> = history
        .iter()
        .map(|m| (m["data"]["publisher"].as_u64().expect("p"), m["data"]["i"].as_u64().expect("i")))
        .collect();
    assert_eq!(payloads.len(), 16000, "every published message is stored exactly once");
    let ids: HashSet<&str> = history.iter().map(|m| m["id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), 16000, "message ids are unique");
    app.stop().await;
}

#[tokio::test]
async fn an_idempotent_repeat_returns_the_same_seq_and_adds_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis).await;
    let body = json!({ "data": "once", "idempotency_key": "order-17" });
    let (status, first) = app.post_json("/v1/topics/orders/messages", &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first["duplicate"], json!(false));
    let (status, again) = app.post_json("/v1/topics/orders/messages", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["duplicate"], json!(true));
    assert_eq!((&again["epoch"], &again["seq"], &again["id"]), (&first["epoch"], &first["seq"], &first["id"]));

    // The same key as an HTTP header on a raw publish is recognised too.
    let response = app
        .http
        .post(app.url("/v1/topics/orders/messages"))
        .header("content-type", "text/plain")
        .header("idempotency-key", "order-17")
        .body("different body, same key")
        .send()
        .await
        .expect("raw publish");
    assert_eq!(response.status(), StatusCode::OK);

    // Another key is a new message.
    let (status, other) =
        app.post_json("/v1/topics/orders/messages", &json!({ "data": 2, "idempotency_key": "order-18" })).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(other["seq"], json!(2));

    let history = app.history_all("orders", 0).await;
    assert_eq!(history.len(), 2, "the repeats added nothing: {history:?}");
    assert_eq!(history[0]["data"], json!("once"));
    app.stop().await;
}

#[tokio::test]
async fn a_batch_is_stored_atomically_with_consecutive_seqs_in_order() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis).await;
    app.publish("b", json!("before")).await;
    let batch = json!({ "messages": [
        { "data": 1 },
        { "data": 2, "idempotency_key": "k" },
        { "data": 3, "headers": { "kind": "x" }, "ttl_ms": 5000 },
        { "data": "dup", "idempotency_key": "k" },
    ]});
    let (status, body) = app.post_json("/v1/topics/b/messages:batch", &batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    let seqs: Vec<u64> = results.iter().map(|r| r["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, vec![2, 3, 4, 3], "consecutive seqs; the in-batch duplicate answers the earlier one");
    assert_eq!(results[3]["duplicate"], json!(true));
    assert_eq!(results[3]["id"], results[1]["id"]);

    let history = app.history_all("b", 1).await;
    assert_eq!(history.len(), 3);
    assert_eq!(history[2]["headers"]["kind"], json!("x"));
    assert_eq!(history[2]["ttl_ms"], json!(5000));

    // One invalid message refuses the whole batch and names it; nothing is stored.
    let bad = json!({ "messages": [ { "data": 1 }, { "data": 2, "headers": { "bad name": "v" } } ] });
    let (status, body) = app.post_json("/v1/topics/b/messages:batch", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "invalid_header");
    assert_eq!(body["error"]["index"], json!(1));
    let (_, topic) = app.get("/v1/topics/b").await;
    assert_eq!(topic["seq"], json!(4));
    app.stop().await;
}

#[tokio::test]
async fn a_raw_body_keeps_its_bytes_content_type_and_headers() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis).await;
    let bytes: Vec<u8> = (0..=255u8).collect();
    let response = app
        .http
        .post(app.url("/v1/topics/raw/messages"))
        .header("content-type", "application/octet-stream")
        .header("x-streamhub-header-trace", "abc")
        .header("x-streamhub-ttl-ms", "60000")
        .body(bytes.clone())
        .send()
        .await
        .expect("raw publish");
    assert_eq!(response.status(), StatusCode::CREATED);
    let history = app.history_all("raw", 0).await;
    let m = &history[0];
    assert_eq!(m["content_type"], json!("application/octet-stream"));
    assert_eq!(m["headers"]["trace"], json!("abc"));
    assert_eq!(m["ttl_ms"], json!(60000));
    use base64::Engine;
    let stored =
        base64::engine::general_purpose::STANDARD.decode(m["data_base64"].as_str().expect("b64")).expect("base64");
    assert_eq!(stored, bytes);
    app.stop().await;
}
