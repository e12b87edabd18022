//! Shard isolation on Redis Cluster: kill -9 of one primary under publish load to topics
//! on all three shards. The healthy shards keep acknowledging publishes while the dead
//! one fails over; nothing acknowledged is lost anywhere; every failure a client sees is
//! a documented 503, never a 500. Consumer groups on topics of healthy shards — a webhook
//! group (the worker's blocking reads on a connection of its own) and a pull group (HTTP
//! fetches and acks) — keep delivering meanwhile and get every message. The stall of
//! each shard is measured and printed; the groups' longest pause between deliveries is
//! asserted to stay far below the failover time (a stall behind the dead primary would
//! last until its replica is promoted, seconds).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::topology::{topic_slot, ClusterOptions, RedisCluster};
use common::{code, Receiver, TestApp, WsClient};
use serde_json::json;
use streamhub::config::Durability;

/// One publish attempt as a client saw it.
#[derive(Debug, Clone)]
struct Attempt {
    /// Index of the message (retried with the same idempotency key until acknowledged).
    i: u64,
    at: Instant,
    status: u16,
    code: String,
}

/// Publishes 0, 1, 2 … to `topic`, each retried with its idempotency key until it is
/// acknowledged, until `stop` (or `MAX_MESSAGES`); records every attempt.
async fn publisher(app: Arc<TestApp>, topic: String, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Attempt>>>) -> u64 {
    const MAX_MESSAGES: u64 = 20_000;
    let mut i = 0;
    while i < MAX_MESSAGES && !stop.load(Ordering::Relaxed) {
        let body = json!({ "data": i, "idempotency_key": format!("m{i}") });
        let (status, reply) = app.post_json(&format!("/v1/topics/{topic}/messages"), &body).await;
        log.lock().expect("log").push(Attempt {
            i,
            at: Instant::now(),
            status: status.as_u16(),
            code: code(&reply).into(),
        });
        if status.is_success() {
            i += 1;
        }
    }
    i
}

/// When each seq was delivered to a group (every delivery, redeliveries included).
type Deliveries = Arc<Mutex<Vec<(u64, Instant)>>>;

/// A pull consumer: fetches (long poll) and acks until `stop`, recording every delivery
/// and every failed fetch or ack (status, code).
async fn puller(
    app: Arc<TestApp>,
    topic: String,
    group: String,
    stop: Arc<AtomicBool>,
    got: Deliveries,
    failures: Arc<Mutex<Vec<(Instant, u16, String)>>>,
) {
    let fetch = format!("/v1/topics/{topic}/groups/{group}:fetch");
    let ack = format!("/v1/topics/{topic}/groups/{group}:ack");
    while !stop.load(Ordering::Relaxed) {
        let (status, body) = app.post_json(&fetch, &json!({ "max": 100, "wait_ms": 200 })).await;
        if !status.is_success() {
            failures.lock().expect("failures").push((Instant::now(), status.as_u16(), code(&body).into()));
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let now = Instant::now();
        let deliveries = body["deliveries"].as_array().cloned().unwrap_or_default();
        let mut tokens = Vec::new();
        for d in &deliveries {
            got.lock().expect("got").push((d["message"]["seq"].as_u64().expect("seq"), now));
            tokens.push(d["token"].clone());
        }
        if tokens.is_empty() {
            continue;
        }
        let (status, body) = app.post_json(&ack, &json!({ "tokens": tokens })).await;
        if !status.is_success() {
            failures.lock().expect("failures").push((Instant::now(), status.as_u16(), code(&body).into()));
        }
    }
}

/// A WebSocket subscriber of `topic` from now on, recording every message until it got
/// the seq that the returned cell is set to.
async fn subscribe(app: &TestApp, topic: &str) -> (Deliveries, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let got: Deliveries = Default::default();
    let last_seq = Arc::new(AtomicU64::new(u64::MAX));
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe(topic, None).await;
    let (record, last) = (got.clone(), last_seq.clone());
    let task = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let seen = record.lock().expect("got").last().map(|(s, _)| *s);
            if seen.is_some_and(|s| s >= last.load(Ordering::Relaxed)) || Instant::now() > deadline {
                return;
            }
            let Ok(frame) = tokio::time::timeout(Duration::from_millis(100), ws.next_frame()).await else {
                continue;
            };
            assert_eq!(frame["type"], "message", "{frame}");
            record.lock().expect("got").push((common::seq(&frame), Instant::now()));
        }
    });
    (got, last_seq, task)
}

/// The longest time between two consecutive deliveries among those around `from..to`.
fn longest_gap(deliveries: &Deliveries, from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = deliveries.lock().expect("deliveries").iter().map(|(_, t)| *t).collect();
    times.sort();
    times.windows(2).filter(|w| w[1] > from && w[0] < to).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_dead_primary_stalls_only_its_own_shard_and_loses_nothing_acknowledged() {
    // The cause of any error answered with a 500 is logged (and would fail the test).
    let _ = tracing_subscriber::fmt().with_env_filter("streamhub=error").with_test_writer().try_init();
    let mut cluster = RedisCluster::start_with(ClusterOptions::fast_failover());
    let shards = cluster.topics_on_every_shard("iso", 2);
    // Consumer groups on topics of the two shards that stay healthy.
    let (hook_topic, pull_topic) = (shards[1][0].clone(), shards[2][0].clone());
    let hooked: Deliveries = Default::default();
    let record = hooked.clone();
    let receiver = Receiver::start(move |hook| {
        record.lock().expect("hooked").push((hook.seq, Instant::now()));
        200
    })
    .await;
    let app = Arc::new(
        TestApp::start_with(&cluster, |c| {
            // Acknowledged only once a replica has it: a kill -9 then loses nothing.
            c.publish.durability = Durability::Replicated;
            c.publish.replicas = 1;
            c.publish.replication_timeout_ms = 500;
            c.redis.command_timeout_ms = 2000;
            c.group.push(common::webhook_group(&hook_topic, "hook", &receiver.url));
            c.group.push(common::pull_group(&pull_topic, "pull"));
            // Subscribers must be woken by hints: the periodic position check, which
            // would mask a stalled hint listener, comes too late to matter here.
            c.fanout.position_check_ms = 30_000;
        })
        .await,
    );
    // WebSocket subscribers, reading all along: on a topic of a healthy shard, and on one
    // of the shard whose primary dies (its hints must follow the slot to the promoted
    // replica).
    let watched_topic = shards[2][1].clone();
    let (watched, last_seq, subscriber) = subscribe(&app, &watched_topic).await;
    let dead_topic = shards[0][1].clone();
    let (dead_watched, dead_last_seq, dead_subscriber) = subscribe(&app, &dead_topic).await;
    let pulled: Deliveries = Default::default();
    let pull_failures: Arc<Mutex<Vec<(Instant, u16, String)>>> = Default::default();
    let stop_pulling = Arc::new(AtomicBool::new(false));
    let pulling = tokio::spawn(puller(
        app.clone(),
        pull_topic.clone(),
        "pull".into(),
        stop_pulling.clone(),
        pulled.clone(),
        pull_failures.clone(),
    ));
    let primaries = cluster.primaries();
    let stop = Arc::new(AtomicBool::new(false));
    let mut runs = Vec::new();
    for (shard, topics) in shards.iter().enumerate() {
        for topic in topics {
            let log = Arc::new(Mutex::new(Vec::new()));
            let task = tokio::spawn(publisher(app.clone(), topic.clone(), stop.clone(), log.clone()));
            runs.push((shard, topic.clone(), log, task));
        }
    }
    let acked = |log: &Arc<Mutex<Vec<Attempt>>>| log.lock().expect("log").iter().filter(|a| a.status < 300).count();
    common::eventually("publishes flowing on every topic", Duration::from_secs(30), async || {
        runs.iter().all(|(_, _, log, _)| acked(log) >= 20)
    })
    .await;
    common::eventually("both groups and the subscriber delivering", Duration::from_secs(30), async || {
        hooked.lock().expect("hooked").len() >= 20
            && pulled.lock().expect("pulled").len() >= 20
            && watched.lock().expect("watched").len() >= 20
            && dead_watched.lock().expect("watched").len() >= 20
    })
    .await;

    // Kill shard 0's primary; wait (off the runtime) until its replica took over.
    let dead = primaries[0];
    let slot = topic_slot(&shards[0][0]);
    let killed = Instant::now();
    cluster.kill(dead);
    // A new subscriber, during the failover, to a topic of a healthy shard that this node
    // did not watch yet: how long until it is subscribed and gets a message.
    let late_topic = shards[1][1].clone();
    let late = {
        let base = app.base.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let asked = Instant::now();
            let mut ws = WsClient::connect(&base).await;
            ws.subscribe(&late_topic, None).await;
            let subscribed = asked.elapsed();
            let frame = ws.next_frame().await;
            assert_eq!(frame["type"], "message", "{frame}");
            (subscribed, asked.elapsed())
        })
    };
    let (cluster, promoted) = tokio::task::spawn_blocking(move || {
        cluster.wait_failover(slot, dead);
        let promoted = killed.elapsed();
        // The promoted replica has no replica of its own until the dead node comes back
        // (as its replica): with durability = "replicated" its shard cannot acknowledge
        // before that.
        cluster.restart(dead);
        cluster.wait_healthy();
        (cluster, promoted)
    })
    .await
    .expect("failover wait");
    let rejoined = killed.elapsed();
    // Then until every topic of the dead shard acknowledged 20 more after the promotion.
    let after = Instant::now();
    let acked_since = |log: &Arc<Mutex<Vec<Attempt>>>, t: Instant| {
        log.lock().expect("log").iter().filter(|a| a.status < 300 && a.at > t).count()
    };
    common::eventually("publishes again on the failed-over shard", Duration::from_secs(60), async || {
        runs.iter().all(|(_, _, log, _)| acked_since(log, after) >= 20)
    })
    .await;
    stop.store(true, Ordering::Relaxed);

    println!("cluster promoted a replica {promoted:?} after the kill; the killed node rejoined as its replica after {rejoined:?}");
    let (subscribed, first) = late.await.expect("late subscriber");
    println!("a subscriber to healthy {} 300 ms after the kill: subscribed after {subscribed:?}, first message after {first:?}", shards[1][1]);
    let mut acknowledged = std::collections::HashMap::new();
    let mut stalls = std::collections::HashMap::new();
    for (shard, topic, log, task) in runs {
        let sent = task.await.expect("publisher");
        let log = log.lock().expect("log").clone();
        // Every failure is a documented 503.
        for a in &log {
            assert!(
                a.status < 300 || (a.status == 503 && (a.code == "redis_unavailable" || a.code == "not_replicated")),
                "{topic}: message {} answered {} {}",
                a.i,
                a.status,
                a.code
            );
        }
        // The stall: the longest time without an acknowledgement around the kill, and
        // the failures after it.
        let acks: Vec<Instant> = log.iter().filter(|a| a.status < 300).map(|a| a.at).collect();
        let stall = acks
            .windows(2)
            .filter(|w| w[1] > killed && w[0] < killed + promoted + Duration::from_secs(5))
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        let failed = log.iter().filter(|a| a.status >= 300 && a.at > killed).count();
        let mut codes = std::collections::BTreeMap::new();
        for a in log.iter().filter(|a| a.status >= 300) {
            *codes.entry(a.code.clone()).or_insert(0) += 1;
        }
        println!("{topic}: failures by code {codes:?}");
        let during = acks.iter().filter(|&&t| t > killed && t < killed + promoted).count();
        println!(
            "shard {shard} ({}) {topic}: {sent} acknowledged, longest gap between acks {stall:?}, {failed} \
             failed attempts after the kill, {during} acknowledged during the failover",
            if shard == 0 { "killed" } else { "healthy" }
        );
        if shard != 0 {
            assert!(during > 0, "{topic} is on a healthy shard: its publishes must go on while shard 0 fails over");
        }
        // Nothing acknowledged is lost, nothing is stored twice: the topic holds exactly
        // 0..sent, in order, with consecutive seqs.
        let history = app.history_all(&topic, 0).await;
        let data: Vec<u64> = history.iter().map(|m| m["data"].as_u64().expect("data")).collect();
        assert_eq!(data, (0..sent).collect::<Vec<_>>(), "{topic}: history is exactly what was acknowledged");
        let seqs: Vec<u64> = history.iter().map(common::seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{topic}: consecutive seqs");
        acknowledged.insert(topic.clone(), seqs);
        stalls.insert(topic, stall);
    }

    // The subscriber on a healthy shard: every seq in order, never paused for long (a
    // stalled hint listener would leave it waiting for the promotion).
    last_seq.store(acknowledged[&watched_topic].last().copied().unwrap_or(0), Ordering::Relaxed);
    subscriber.await.expect("subscriber");
    let seqs: Vec<u64> = watched.lock().expect("watched").iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, acknowledged[&watched_topic], "{watched_topic}: the subscriber got every seq in order");
    let gap = longest_gap(&watched, killed, killed + promoted + Duration::from_secs(5));
    println!("subscriber on healthy {watched_topic}: longest gap between messages {gap:?}");
    assert!(gap < Duration::from_secs(1), "the subscriber of {watched_topic} paused {gap:?} while shard 0 failed over");
    // The subscriber on the failed-over shard: every seq in order, and no longer paused
    // than the publishes (its hints moved to the promoted replica; the position check
    // alone would take 30 s).
    dead_last_seq.store(acknowledged[&dead_topic].last().copied().unwrap_or(0), Ordering::Relaxed);
    dead_subscriber.await.expect("subscriber");
    let seqs: Vec<u64> = dead_watched.lock().expect("watched").iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, acknowledged[&dead_topic], "{dead_topic}: the subscriber got every seq in order");
    let gap = longest_gap(&dead_watched, killed, killed + promoted + Duration::from_secs(5));
    println!(
        "subscriber on failed-over {dead_topic}: longest gap between messages {gap:?} (publishes: {:?})",
        stalls[&dead_topic]
    );
    assert!(
        gap < stalls[&dead_topic] + Duration::from_secs(1),
        "the subscriber of {dead_topic} paused {gap:?}, its publishes {:?}",
        stalls[&dead_topic]
    );

    // The groups on the healthy shards: every acknowledged message delivered (and acked)…
    let seqs_of = |d: &Deliveries| d.lock().expect("deliveries").iter().map(|(s, _)| *s).collect::<Vec<u64>>();
    for (name, topic, got) in [("webhook", &hook_topic, &hooked), ("pull", &pull_topic, &pulled)] {
        let want: std::collections::BTreeSet<u64> = acknowledged[topic].iter().copied().collect();
        common::eventually(&format!("the {name} group to get every message"), Duration::from_secs(60), async || {
            let got: std::collections::BTreeSet<u64> = seqs_of(got).into_iter().collect();
            want.is_subset(&got)
        })
        .await;
        // …and never paused for long while the other shard failed over: a read waiting
        // behind the dead primary would stall until the promotion (seconds).
        let gap = longest_gap(got, killed, killed + promoted + Duration::from_secs(5));
        let during =
            got.lock().expect("deliveries").iter().filter(|(_, t)| *t > killed && *t < killed + promoted).count();
        let redelivered = seqs_of(got).len() - want.len();
        println!(
            "{name} group on healthy {topic}: {} messages, longest gap between deliveries {gap:?}, {during} \
             delivered during the failover, {redelivered} redelivered",
            want.len()
        );
        assert!(during > 0, "the {name} group on {topic} must keep delivering while shard 0 fails over");
        assert!(gap < Duration::from_secs(2), "the {name} group on {topic} paused {gap:?} while shard 0 failed over");
    }
    stop_pulling.store(true, Ordering::Relaxed);
    pulling.await.expect("puller");
    let failures = pull_failures.lock().expect("failures").clone();
    println!(
        "pull group: {} failed fetches or acks {:?}",
        failures.len(),
        failures.iter().map(|f| (f.1, &f.2)).collect::<Vec<_>>()
    );
    for (_, status, code) in &failures {
        assert!(
            *status == 503 && (code == "redis_unavailable" || code == "group_not_ready"),
            "a pull fetch or ack answered {status} {code}"
        );
    }
    drop(cluster);
}
