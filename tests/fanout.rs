//! Fan-out: one tail per topic per node, reads independent of the number of subscribers,
//! no dependence on hints, and slow subscribers that never hold back the others.

mod common;

use std::time::{Duration, Instant};

use common::{command_calls, publish_many, seq, TestApp, TestRedis, WsClient, READY_TIMEOUT};
use serde_json::json;

async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_subscribers_cost_one_read_per_message_not_five_hundred() {
    if common::skip_unless_standalone("counts the commands of its own Redis") {
        return;
    }
    let mut redis = TestRedis::start();
    // No periodic checks during the measurement: every read is caused by a hint.
    let app = TestApp::start_with(&redis, |c| c.fanout.position_check_ms = 600_000).await;
    let mut clients = Vec::new();
    for _ in 0..500 {
        let mut ws = WsClient::connect(&app.base).await;
        ws.subscribe("wide", None).await;
        clients.push(ws);
    }
    assert_eq!(app.server.tail_count(), 1, "exactly one tail task for the topic");

    let reads_before = command_calls(redis.server(), "fcall_ro");
    let messages = 20u64;
    for n in 1..=messages {
        let (status, _) = app.publish("wide", json!(n)).await;
        assert_eq!(status, 201);
        let receipts =
            futures::future::join_all(clients.iter_mut().map(|ws| async move { seq(&ws.messages(1).await[0]) })).await;
        assert!(receipts.iter().all(|s| *s == n), "every subscriber got seq {n}");
    }
    let reads = command_calls(redis.server(), "fcall_ro") - reads_before;
    assert!(reads <= 2 * messages, "{reads} reads for {messages} messages to 500 subscribers");

    for ws in clients {
        ws.close().await;
    }
    let server = &app.server;
    wait_for("the tail to stop after the last subscriber left", || server.tail_count() == 0).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_delivered_even_when_its_hint_never_arrives() {
    if common::skip_unless_standalone("kills every Pub/Sub client of its Redis") {
        return;
    }
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| c.fanout.position_check_ms = 300).await;
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("quiet", None).await;
    publish_many(&app, "quiet", 1, 1).await;
    assert_eq!(seq(&ws.messages(1).await[0]), 1);

    // Kill the node's Pub/Sub connection, then publish at once: the hint goes nowhere.
    // (Wait for it to exist first: on a busy machine it may still be connecting.)
    wait_for("the node's Pub/Sub connection", || {
        !String::from_utf8_lossy(&redis.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]).stdout).trim().is_empty()
    })
    .await;
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(String::from_utf8_lossy(&killed.stdout).trim() != "0", "a pubsub connection was killed");
    publish_many(&app, "quiet", 3, 3).await;
    let got: Vec<u64> = ws.messages(3).await.iter().map(seq).collect();
    assert_eq!(got, vec![2, 3, 4]);

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_position_check_alone_delivers_when_no_hint_ever_arrives() {
    use streamhub::delivery::session::{Session, Since};
    use streamhub::delivery::subscription::Item;
    use streamhub::delivery::Hub;
    use tokio_util::sync::CancellationToken;

    let redis = TestRedis::start();
    let mut config = common::test_config(&redis);
    config.fanout.position_check_ms = 100;
    let store = streamhub::Store::connect(&config).expect("store");
    store.wait_ready(READY_TIMEOUT).await.expect("redis ready");
    // A hint listener for another prefix: it never hears this prefix's hints.
    let shutdown = CancellationToken::new();
    let deaf = streamhub::keys::Keys::new("someone-else");
    let (hints, _task) = streamhub::store::hints::Hints::start(&config.redis, deaf, shutdown.clone()).expect("hints");
    let presence =
        streamhub::delivery::presence::Presence::start(store.clone(), config.presence.clone(), shutdown.clone());
    let tasks = tokio_util::task::TaskTracker::new();
    let hub = Hub::new(store.clone(), hints, presence, config.fanout.clone(), shutdown.clone(), tasks);
    // The session's catch-up reader starts with `start` and ends with `shutdown`.
    let (session, mut queue) = Session::new(hub, &config.ws, shutdown.clone());
    let topic = streamhub::Topic::parse("silent", 200).expect("topic");
    session.subscribe(topic.clone(), Since::Now, Default::default()).await.expect("subscribe");
    session.start(&topic);

    for n in 1..=3u64 {
        let message = streamhub::message::NewMessage {
            payload: b"1".to_vec(),
            content_type: "application/json".into(),
            ..Default::default()
        }
        .check(&config.limits)
        .expect("valid");
        store.publish(&topic, vec![message]).await.expect("publish");
        let queued = tokio::time::timeout(common::FRAME_TIMEOUT, queue.recv()).await.expect("delivered").expect("open");
        match &queued.item {
            Item::Message(m) => assert_eq!(m.seq(), n),
            other => panic!("unexpected {other:?}"),
        }
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_does_not_stop_the_others_and_catches_up_exactly() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.ws.outbound_queue_messages = 32;
        c.ws.outbound_queue_bytes = 1 << 20;
        c.fanout.position_check_ms = 200;
    })
    .await;
    let mut stalled = WsClient::connect(&app.base).await;
    stalled.subscribe("busy", None).await;
    let mut reader = WsClient::connect(&app.base).await;
    reader.subscribe("busy", None).await;
    // A first message read by both: each subscription has caught up and joins the tail
    // right after (on a loaded machine a join can come late, and a subscription that is
    // still catching up when the flood comes is served by its catch-up reader instead).
    publish_many(&app, "busy", 1, 1).await;
    assert_eq!(seq(&stalled.messages(1).await[0]), 1);
    assert_eq!(seq(&reader.messages(1).await[0]), 1);

    // 1500 messages of 16 KiB: far more than the kernel's socket buffers hold, so the
    // stalled client's queue fills and it must lag.
    let blob = "x".repeat(16 * 1024);
    let total = 1501u64;
    let publisher = {
        let (http, url, blob) = (app.http.clone(), app.url("/v1/topics/busy/messages:batch"), blob.clone());
        tokio::spawn(async move {
            for b in 0..((total - 1) / 50) {
                let messages: Vec<_> = (0..50).map(|i| json!({ "data": { "n": b * 50 + i, "blob": blob } })).collect();
                let r = http.post(&url).json(&json!({ "messages": messages })).send().await.expect("publish");
                assert_eq!(r.status(), 200);
            }
        })
    };
    let got: Vec<u64> = reader.messages(total as usize - 1).await.iter().map(seq).collect();
    assert_eq!(got, (2..=total).collect::<Vec<u64>>(), "the reading client got everything, in order");
    publisher.await.expect("publisher");
    let metrics = app.metrics().await;
    let figure = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Its queue did not grow past its bound: the live subscription lagged (or, had its join
    // come after the flood began, its catch-up reader waited for room at every message).
    let (lagged, caught_up) =
        (figure("streamhub_subscribers_lagged_total"), figure("streamhub_caught_up_messages_total"));
    assert!(
        lagged >= 1.0 || caught_up >= (total - 1) as f64,
        "the stalled subscriber lagged instead of growing its queue:\n{metrics}"
    );

    // The stalled client now reads: it catches up from the stream, exactly.
    let got: Vec<u64> = stalled.messages(total as usize - 1).await.iter().map(seq).collect();
    assert_eq!(got, (2..=total).collect::<Vec<u64>>(), "the stalled client lost nothing");
    // …and is live again afterwards.
    publish_many(&app, "busy", 1, 1).await;
    assert_eq!(seq(&stalled.messages(1).await[0]), total + 1);
    assert_eq!(seq(&reader.messages(1).await[0]), total + 1);
    app.stop().await;
}

/// An idle subscribed WebSocket session keeps two tasks, its reader and its writer: the
/// catch-up reader runs only while a subscription lags (here: each session starts from
/// the topic's first message) and ends once the subscription is live.
#[tokio::test]
async fn an_idle_subscribed_session_keeps_two_tasks() {
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

/// `ws.write_buffer_bytes` at its edges: at 1 byte every write holds one frame, and far
/// above a burst's size a write is bounded by its 64 frames; either way two subscribers
/// get a burst of batches whole and in order. (0 is refused by the configuration:
/// tests/cli.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_arrives_whole_and_in_order_at_both_edges_of_the_write_batch() {
    const N: usize = 600;
    let redis = TestRedis::start();
    for bytes in [1, 64 << 20] {
        let app = TestApp::start_with(&redis, |c| c.ws.write_buffer_bytes = bytes).await;
        let mut a = WsClient::connect(&app.base).await;
        a.subscribe("burst", None).await;
        let mut b = WsClient::connect(&app.base).await;
        b.subscribe("burst", None).await;
        publish_many(&app, "burst", N, 200).await;
        let want: Vec<u64> = (1..=N as u64).collect();
        assert_eq!(a.messages(N).await.iter().map(seq).collect::<Vec<u64>>(), want, "write_buffer_bytes {bytes}");
        assert_eq!(b.messages(N).await.iter().map(seq).collect::<Vec<u64>>(), want, "write_buffer_bytes {bytes}");
        app.stop().await;
    }
}

/// A message much larger than the socket's buffers, written to an idle session by its
/// topic's tail (a direct write), goes out in part; the session's writer finishes it
/// before anything else, so a client that reads late gets every message whole and in
/// order, and the session is idle and written directly again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_begun_by_the_tail_is_finished_whole_before_the_next() {
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
