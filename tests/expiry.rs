//! Messages that expire: history, WebSocket and SSE subscriptions (live, catch-up and
//! resume) never hand out a message past its TTL, positions stay exact, and the client is
//! told which seqs expired (`expired` count and `next_since` in history, `expired` frames
//! and events in order with the messages).
//!
//! Time is moved, not waited for: this test binary shifts its nodes' clock one minute
//! ahead (`clock::shift_for_tests`), while messages published through Redis
//! (`FCALL sh_publish_raw_v1`) carry Redis's own, unshifted time — so to the nodes they
//! are a minute old. Every test here uses the same shift, so they may run in parallel.

mod common;

use common::{RedisServer, TestApp, WsClient};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SHIFT_MS: u64 = 60_000;

async fn start(redis: &RedisServer) -> TestApp {
    streamhub::clock::shift_for_tests(SHIFT_MS);
    TestApp::start(redis).await
}

/// Publishes through Redis (time = Redis TIME, a minute "ago" for the node) with `ttl_ms`.
fn raw(redis: &RedisServer, app: &TestApp, topic: &str, payload: &str, ttl_ms: u64) -> u64 {
    let p = app.prefix();
    let out = redis.cli(&[
        "FCALL",
        "sh_publish_raw_v1",
        "3",
        &format!("{p}:{{{topic}}}:m"),
        &format!("{p}:{{{topic}}}:s"),
        &format!("{p}:{{{topic}}}:h"),
        payload,
        "text/plain",
        &ttl_ms.to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("raw publish: {text}"))
}

/// Publishes over HTTP (time = the node's shifted clock), optionally with a TTL.
async fn live(app: &TestApp, topic: &str, data: &str, ttl_ms: Option<u64>) -> u64 {
    let mut body = json!({ "data": data });
    if let Some(ttl) = ttl_ms {
        body["ttl_ms"] = json!(ttl);
    }
    let (status, reply) = app.post_json(&format!("/v1/topics/{topic}/messages"), &body).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    reply["seq"].as_u64().expect("seq")
}

/// What a subscriber was given, in order: `m<seq>` for a message, `x<from>-<to>` for an
/// `expired` notice.
fn outline(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f["type"].as_str() {
            Some("message") => format!("m{}", f["seq"]),
            Some("expired") => format!("x{}-{}", f["from"], f["to"]),
            _ => format!("?{f}"),
        })
        .collect()
}

/// Reads frames until `n` seqs are accounted for (messages and expired ranges).
async fn until_seq(ws: &mut WsClient, last: u64) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = ws.next_frame().await;
        let reached = match frame["type"].as_str() {
            Some("message") => frame["seq"].as_u64() == Some(last),
            Some("expired") => frame["to"].as_u64() == Some(last),
            _ => panic!("unexpected frame {frame}"),
        };
        frames.push(frame);
        if reached {
            return frames;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_leaves_out_expired_messages_and_says_where_to_go_on() {
    let redis = RedisServer::start();
    let app = start(&redis).await;
    assert_eq!(live(&app, "h", "one", None).await, 1);
    assert_eq!(raw(&redis, &app, "h", "two", 30_000), 2); // a minute old, 30 s TTL: expired
    assert_eq!(live(&app, "h", "three", Some(120_000)).await, 3); // fresh, 2 min TTL
    assert_eq!(raw(&redis, &app, "h", "four", 100_000), 4); // a minute old, 100 s TTL: valid
    assert_eq!(raw(&redis, &app, "h", "five", 1), 5); // expired
    assert_eq!(live(&app, "h", "six", None).await, 6);

    let (status, page) = app.get("/v1/topics/h/messages?since=0").await;
    assert_eq!(status, StatusCode::OK);
    let seqs: Vec<u64> = page["messages"].as_array().expect("messages").iter().map(common::seq).collect();
    assert_eq!(seqs, vec![1, 3, 4, 6]);
    assert_eq!((page["expired"].clone(), page["next_since"].clone()), (json!(2), json!(6)));
    assert_eq!(page["truncated"], json!(false), "expired messages are not a trimmed history");

    // A page of nothing but an expired message still moves the reader on.
    let (_, page) = app.get("/v1/topics/h/messages?since=1&limit=1").await;
    assert_eq!(page["messages"], json!([]));
    assert_eq!((page["expired"].clone(), page["next_since"].clone()), (json!(1), json!(2)));
    let (_, page) = app.get("/v1/topics/h/messages?since=2&limit=1").await;
    assert_eq!((page["messages"][0]["seq"].clone(), page["expired"].clone()), (json!(3), json!(0)));
    // At the top: nothing covered, next_since is since.
    let (_, page) = app.get("/v1/topics/h/messages?since=6").await;
    assert_eq!((page["messages"].clone(), page["next_since"].clone()), (json!([]), json!(6)));

    let metrics = app.metrics().await;
    assert!(metrics.contains("streamhub_expired_skipped_total{path=\"history\"} 3"), "{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_are_told_which_seqs_expired_in_order_with_the_messages() {
    let redis = RedisServer::start();
    let app = start(&redis).await;
    live(&app, "s", "1", None).await;
    raw(&redis, &app, "s", "2", 5_000);
    raw(&redis, &app, "s", "3", 5_000);
    live(&app, "s", "4", Some(1_000)).await;
    raw(&redis, &app, "s", "5", 5_000);
    live(&app, "s", "6", None).await;

    // Catch-up from the start: expired runs are told, not skipped silently.
    let mut ws = WsClient::connect(&app.base).await;
    let reply = ws.subscribe("s", Some(json!("earliest"))).await;
    assert_eq!(reply["recovered"], json!(true));
    let frames = until_seq(&mut ws, 6).await;
    assert_eq!(outline(&frames), vec!["m1", "x2-3", "m4", "x5-5", "m6"]);
    assert!(frames.iter().all(|f| f["epoch"] == reply["epoch"]), "{frames:?}");

    // Live delivery through the topic's tail: the same.
    raw(&redis, &app, "s", "7", 5_000);
    raw(&redis, &app, "s", "8", 5_000);
    live(&app, "s", "9", None).await;
    raw(&redis, &app, "s", "10", 5_000);
    let frames = until_seq(&mut ws, 10).await;
    let seen = outline(&frames);
    // The tail may read the publishes in one page or several: the runs may be split, never
    // reordered, and every seq is accounted for once.
    assert!(seen == vec!["x7-8", "m9", "x10-10"] || seen == vec!["x7-7", "x8-8", "m9", "x10-10"], "{seen:?}");

    // SSE: `expired` events whose id moves Last-Event-ID past the run.
    let mut response =
        reqwest::Client::new().get(app.url("/v1/topics/s/events?since=earliest")).send().await.expect("sse");
    let mut body = String::new();
    while !body.contains("\"seq\":9") || !body.contains("\"to\":10") {
        let chunk = tokio::time::timeout(common::FRAME_TIMEOUT, response.chunk()).await.expect("an event");
        body.push_str(&String::from_utf8_lossy(&chunk.expect("read").expect("stream open")));
    }
    let epoch = reply["epoch"].as_str().expect("epoch");
    assert!(body.contains(&format!("id: {epoch}:3\nevent: expired\n")), "{body}");
    assert!(body.contains(&format!("id: {epoch}:10\nevent: expired\n")), "{body}");
    assert!(!body.contains("\"data\":\"2\""), "an expired message is never sent: {body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_across_a_run_of_expired_messages_is_exact_and_recovered() {
    let redis = RedisServer::start();
    let app = start(&redis).await;
    live(&app, "r", "1", None).await;
    for i in 2..=11 {
        raw(&redis, &app, "r", &i.to_string(), 10_000);
    }
    live(&app, "r", "12", None).await;
    let (_, info) = app.get("/v1/topics/r").await;
    let epoch = info["epoch"].clone();

    let mut ws = WsClient::connect(&app.base).await;
    let reply = ws.subscribe("r", Some(json!({ "epoch": epoch, "seq": 1 }))).await;
    // The only messages missing were never due: the resume is still exact.
    assert_eq!((reply["recovered"].clone(), reply.get("reason")), (json!(true), None));
    let frames = until_seq(&mut ws, 12).await;
    assert_eq!(outline(&frames), vec!["x2-11", "m12"]);
    // And from inside the run.
    let mut again = WsClient::connect(&app.base).await;
    again.subscribe("r", Some(json!({ "epoch": epoch, "seq": 5 }))).await;
    assert_eq!(outline(&until_seq(&mut again, 12).await), vec!["x6-11", "m12"]);
    app.stop().await;
}
