//! Fan-out tests that read the node's process-wide figures (`streamhub_runtime_tasks`, the
//! delivery counters): they run one at a time, in a test binary of their own, so that no
//! other test's sessions or deliveries are counted with theirs.

mod common;

use common::{publish_many, seq, TestApp, TestRedis, WsClient};
use serde_json::json;

/// Held by each test for its whole run: the figures it reads are the process's.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An idle subscribed WebSocket session keeps two tasks, its reader and its writer: the
/// catch-up reader runs only while a subscription lags (here: each session starts from
/// the topic's first message) and ends once the subscription is live.
#[tokio::test]
async fn an_idle_subscribed_session_keeps_two_tasks() {
    let _alone = ALONE.lock().await;
    const SESSIONS: usize = 20;
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    app.publish("idle", json!("first")).await;
    let tasks = |text: String| {
        text.lines()
            .find_map(|l| l.strip_prefix("streamhub_runtime_tasks "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("streamhub_runtime_tasks")
    };
    // The topic's tail and the scrape's connection exist before the measured sessions.
    let mut warm = WsClient::connect(&app.url("")).await;
    warm.request(json!({ "op": "subscribe", "topic": "idle" })).await;
    let before = tasks(app.metrics().await);
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let mut ws = WsClient::connect(&app.url("")).await;
        let reply = ws.request(json!({ "op": "subscribe", "topic": "idle", "since": "earliest" })).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        let caught_up = ws.next_frame().await;
        assert_eq!(caught_up["data"], "first", "{caught_up}");
        sessions.push(ws);
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut added = f64::MAX;
    while tokio::time::Instant::now() < deadline {
        added = tasks(app.metrics().await) - before;
        if added <= (2 * SESSIONS) as f64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Two per session (three before the catch-up reader ended when idle); a background
    // task of the node may come or go meanwhile.
    let expected = (2 * SESSIONS) as f64;
    assert!((expected - 2.0..=expected + 1.0).contains(&added), "{added} tasks added by {SESSIONS} idle sessions");
    // Live delivery still reaches every one of them.
    app.publish("idle", json!("second")).await;
    for ws in &mut sessions {
        assert_eq!(ws.next_frame().await["data"], "second");
    }
}

/// A message much larger than the socket's buffers, written to an idle session by its
/// topic's tail (a direct write), goes out in part; the session's writer finishes it
/// before anything else, so a client that reads late gets every message whole and in
/// order, and the session is idle and written directly again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_begun_by_the_tail_is_finished_whole_before_the_next() {
    let _alone = ALONE.lock().await;
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let mut late = WsClient::connect(&app.base).await;
    late.subscribe("large", None).await;
    publish_many(&app, "large", 1, 1).await;
    assert_eq!(seq(&late.messages(1).await[0]), 1, "subscribed and live");
    // One at a time, so that each is its tail's only message (the direct-write case);
    // 6 × 900 KB is far more than the loopback socket's buffers while the client does
    // not read.
    let blob = |n: u64| format!("{n}:{}", "y".repeat(900_000));
    for n in 2..=7u64 {
        let (status, body) = app.publish("large", json!({ "blob": blob(n) })).await;
        assert_eq!(status, 201, "{body}");
    }
    for (n, frame) in (2..=7u64).zip(late.messages(6).await) {
        assert_eq!(seq(&frame), n);
        assert!(frame["data"]["blob"] == json!(blob(n)), "message {n} arrived whole");
    }
    app.publish("large", json!({ "after": true })).await;
    let next = late.messages(1).await;
    assert_eq!((seq(&next[0]), next[0]["data"]["after"].clone()), (8, json!(true)));
    // Each of these messages was its tail's only one, to a session that was mostly
    // idle: some were written by the tail itself (counted apart, of the deliveries).
    let (_, direct) = deliveries(&app).await;
    assert!(direct >= 1, "no direct write");
    app.stop().await;
}

/// The node's WebSocket deliveries so far: all of them, and those a tail wrote itself.
async fn deliveries(app: &TestApp) -> (u64, u64) {
    let metrics = app.metrics().await;
    let counter = |name: &str| {
        let line = format!("{name}{{transport=\"ws\",protocol=\"streamhub\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    (counter("streamhub_messages_delivered_total"), counter("streamhub_messages_delivered_direct_total"))
}

/// The seqs of the next `n` messages each client gets.
async fn receive_all(clients: &mut [WsClient], n: usize) -> Vec<Vec<u64>> {
    futures::future::join_all(
        clients.iter_mut().map(|ws| async move { ws.messages(n).await.iter().map(seq).collect() }),
    )
    .await
}

/// `fanout.direct_writes_per_message` bounds the sessions a tail writes one message to
/// itself (the others are queued for their writers, and every session still gets every
/// message in order), and a tail whose read brings several messages writes none of them
/// itself: it has fallen behind, and the writers write each session's share at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_writes_to_at_most_its_budget_of_sessions_and_only_while_it_keeps_up() {
    let _alone = ALONE.lock().await;
    const SESSIONS: usize = 5;
    const BUDGET: u64 = 2;
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| c.fanout.direct_writes_per_message = BUDGET as usize).await;
    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        let mut ws = WsClient::connect(&app.base).await;
        ws.subscribe("budget", None).await;
        clients.push(ws);
    }
    // One message at a time: each is its tail's only one, to idle sessions.
    let before = deliveries(&app).await;
    for n in 1..=10u64 {
        let (status, body) = app.publish("budget", json!(n)).await;
        assert_eq!(status, 201, "{body}");
        assert!(receive_all(&mut clients, 1).await.iter().all(|got| *got == [n]), "every session got seq {n}");
    }
    let after = deliveries(&app).await;
    assert_eq!(after.0 - before.0, 10 * SESSIONS as u64, "every delivery is counted");
    let direct = after.1 - before.1;
    assert!((1..=10 * BUDGET).contains(&direct), "{direct} direct writes for 10 messages with a budget of {BUDGET}");

    // Twenty messages stored by one call: the tail reads them together, and queues them.
    publish_many(&app, "budget", 20, 20).await;
    let want: Vec<u64> = (11..=30).collect();
    assert!(receive_all(&mut clients, 20).await.iter().all(|got| *got == want), "the batch, whole and in order");
    let last = deliveries(&app).await;
    assert_eq!(last.0 - after.0, 20 * SESSIONS as u64);
    assert_eq!(last.1, after.1, "no direct write of a read that brought several messages");
    app.stop().await;
}
