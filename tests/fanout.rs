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
