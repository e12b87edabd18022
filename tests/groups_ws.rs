//! The WebSocket consumer target: consume / ack / nack on one connection, and a
//! disconnect that hands in-flight messages to another consumer at once.

mod common;

use std::collections::BTreeSet;

use common::{eventually, publish_many, pull_group, TestApp, TestRedis, WsClient, READY_TIMEOUT};
use serde_json::{json, Value};

async fn deliveries(ws: &mut WsClient, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = ws.next_frame().await;
        assert_eq!(frame["type"], json!("delivery"), "{frame}");
        out.push(frame);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_consumer_hands_its_in_flight_messages_to_another_at_once() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        let mut g = pull_group("wsq", "w");
        g.ack_wait_ms = 600_000; // only the hand-back can bring them back during this test
        c.group.push(g);
    })
    .await;
    eventually("the group", READY_TIMEOUT, async || {
        let (_, body) = app.get("/v1/topics/wsq/groups").await;
        body["groups"][0]["exists"] == json!(true)
    })
    .await;
    publish_many(&app, "wsq", 10, 10).await;

    let mut a = WsClient::connect(&app.base).await;
    // Ten messages wait: the `consuming` reply still comes before the first delivery.
    a.send(&json!({ "op": "consume", "id": 1, "topic": "wsq", "group": "w", "prefetch": 5 })).await;
    let reply = a.next_frame().await;
    assert_eq!(reply["type"], json!("consuming"), "the reply precedes every delivery: {reply}");
    let held = deliveries(&mut a, 5).await;
    assert!(held.iter().all(|d| d["attempt"] == json!(1)));

    let mut b = WsClient::connect(&app.base).await;
    let reply = b.request(json!({ "op": "consume", "topic": "wsq", "group": "w", "prefetch": 20 })).await;
    assert_eq!(reply["type"], json!("consuming"));
    let mut got = deliveries(&mut b, 5).await;
    a.close().await; // five messages in flight on A
    got.extend(deliveries(&mut b, 5).await);

    let seqs: BTreeSet<u64> = got.iter().map(|d| d["message"]["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (1..=10).collect());
    let handed_back: BTreeSet<u64> = held.iter().map(|d| d["message"]["seq"].as_u64().expect("seq")).collect();
    for d in &got {
        let seq = d["message"]["seq"].as_u64().expect("seq");
        let expected = if handed_back.contains(&seq) { 2 } else { 1 };
        assert_eq!(d["attempt"], json!(expected), "{d}");
    }
    let tokens: Vec<Value> = got.iter().map(|d| d["token"].clone()).collect();
    let settled = b.request(json!({ "op": "ack", "topic": "wsq", "group": "w", "tokens": tokens })).await;
    assert_eq!(settled["type"], json!("settled"));
    assert!(settled["results"].as_array().expect("results").iter().all(|r| r["status"] == json!("acked")), "{settled}");

    // nack: the message comes back (here at once) with attempt 2.
    publish_many(&app, "wsq", 1, 1).await;
    let d = deliveries(&mut b, 1).await;
    let nacked = b
        .request(json!({ "op": "nack", "topic": "wsq", "group": "w", "tokens": [d[0]["token"]], "retry_after_ms": 0, "error": "later" }))
        .await;
    assert_eq!(nacked["results"][0]["status"], json!("scheduled"));
    let again = deliveries(&mut b, 1).await;
    assert_eq!((again[0]["attempt"].clone(), again[0]["last_error"].clone()), (json!(2), json!("later")));

    let errors = b.request(json!({ "op": "ack", "topic": "wsq", "group": "nope", "tokens": ["x"] })).await;
    assert_eq!(errors["code"], json!("not_consuming"));
    let errors = b.request(json!({ "op": "consume", "topic": "wsq", "group": "nope" })).await;
    assert_eq!(errors["code"], json!("group_not_found"));
    app.stop().await;
}

/// The Redis consumers of group `w` of topic `t` (both streams), by name.
fn consumers(redis: &TestRedis, prefix: &str, topic: &str) -> Vec<String> {
    let mut names = Vec::new();
    for key in [format!("{prefix}:{{{topic}}}:s"), format!("{prefix}:{{{topic}}}:g:w:r")] {
        let out = redis.cli(&["XINFO", "CONSUMERS", &key, "w"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            if pair[0] == "name" {
                names.push(pair[1].to_string());
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_consume_session_leaves_no_consumer_behind() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| c.group.push(pull_group("wsc", "w"))).await;
    eventually("the group", READY_TIMEOUT, async || {
        let (_, body) = app.get("/v1/topics/wsc/groups").await;
        body["groups"][0]["exists"] == json!(true)
    })
    .await;
    publish_many(&app, "wsc", 10, 10).await;
    for i in 0..20 {
        let mut ws = WsClient::connect(&app.base).await;
        let reply = ws.request(json!({ "op": "consume", "topic": "wsc", "group": "w", "prefetch": 1 })).await;
        assert_eq!(reply["type"], json!("consuming"), "{reply}");
        if i < 10 {
            // Half of them hold a delivery when they go: it is handed back first.
            deliveries(&mut ws, 1).await;
        }
        ws.close().await;
    }
    eventually("every session's consumer to be removed", READY_TIMEOUT, async || {
        !consumers(&redis, app.prefix(), "wsc").iter().any(|name| name.contains("-ws-"))
    })
    .await;
    // Nothing was lost on the way: all ten messages are still there for the group (a
    // fetch answers with what its first fruitful round found, so it may take several).
    let mut seqs = BTreeSet::new();
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    while seqs.len() < 10 && std::time::Instant::now() < deadline {
        let (_, fetched) = app.post_json("/v1/topics/wsc/groups/w:fetch", &json!({ "max": 20, "wait_ms": 3000 })).await;
        seqs.extend(
            fetched["deliveries"].as_array().expect("d").iter().map(|d| d["message"]["seq"].as_u64().expect("seq")),
        );
    }
    assert_eq!(seqs, (1..=10).collect());
    app.stop().await;
}
