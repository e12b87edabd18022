//! Shard isolation on Redis Cluster: kill -9 of one primary under publish load to topics
//! on all three shards. The healthy shards keep acknowledging publishes while the dead
//! one fails over; nothing acknowledged is lost anywhere; every failure a client sees is
//! a documented 503, never a 500. The stall of each shard is measured and printed (never
//! asserted: tests do not assert speed).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::topology::{topic_slot, ClusterOptions, RedisCluster};
use common::{code, TestApp};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_dead_primary_stalls_only_its_own_shard_and_loses_nothing_acknowledged() {
    // The cause of any error answered with a 500 is logged (and would fail the test).
    let _ = tracing_subscriber::fmt().with_env_filter("streamhub=error").with_test_writer().try_init();
    let mut cluster = RedisCluster::start_with(ClusterOptions::fast_failover());
    let app = Arc::new(
        TestApp::start_with(&cluster, |c| {
            // Acknowledged only once a replica has it: a kill -9 then loses nothing.
            c.publish.durability = Durability::Replicated;
            c.publish.replicas = 1;
            c.publish.replication_timeout_ms = 500;
            c.redis.command_timeout_ms = 2000;
        })
        .await,
    );
    let shards = cluster.topics_on_every_shard("iso", 2);
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

    // Kill shard 0's primary; wait (off the runtime) until its replica took over.
    let dead = primaries[0];
    let slot = topic_slot(&shards[0][0]);
    let killed = Instant::now();
    cluster.kill(dead);
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
    }
    drop(cluster);
}
