//! G4 under crashes: `kill -9` of a worker process mid-run, and a Redis restart (AOF)
//! during processing — nothing is lost.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    eventually, free_port, publish_many, pull_group, streamhub_bin, Receiver, RedisServer, TestApp, TestRedis,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(config: &std::path::Path, redis: &impl common::RedisTarget, prefix: &str) -> Node {
    let child = Command::new(streamhub_bin())
        .args(["--config", config.to_str().expect("utf8")])
        .args(["--redis-url", &redis.redis_url(), "--prefix", prefix])
        .args(["--listen", &format!("127.0.0.1:{}", free_port()), "--metrics-listen", "127.0.0.1:0"])
        .arg("serve")
        .env("STREAMHUB__REDIS__SPAWN", "never")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start streamhub");
    Node(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_worker_loses_nothing_and_duplicates_stay_within_the_in_flight_bound() {
    // A receiver slow enough that the kill lands mid-run.
    let receiver = Receiver::start(|_| {
        std::thread::sleep(Duration::from_millis(1));
        200
    })
    .await;
    let redis = TestRedis::start();
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("node.toml");
    let concurrency = 8;
    std::fs::write(
        &config,
        format!(
            "[groups]\nsweep_interval_ms = 100\n\n[[group]]\ntopic = \"crash\"\nname = \"hooks\"\ntarget = \"webhook\"\n\
             start = \"earliest\"\nurl = \"{}\"\nack_wait_ms = 1000\nconcurrency = {concurrency}\n",
            receiver.url
        ),
    )
    .expect("config");
    // The test publishes through its own in-process node (no group workers there).
    let publisher = TestApp::start(&redis).await;
    let prefix = publisher.prefix().to_string();
    publish_many(&publisher, "crash", 5000, 500).await;

    let mut first = node(&config, &redis, &prefix);
    eventually("the first worker to be mid-run", WAIT, async || receiver.count() >= 1000).await;
    first.0.kill().expect("kill -9");
    first.0.wait().expect("reaped");
    let delivered_by_first = receiver.count();
    assert!(delivered_by_first < 5000, "the kill landed mid-run");

    let _second = node(&config, &redis, &prefix);
    eventually("every message delivered", WAIT, async || receiver.acked_seqs().len() == 5000).await;
    let hooks = receiver.hooks();
    let duplicates = hooks.len() - receiver.acked_seqs().len();
    assert!(
        duplicates <= concurrency,
        "{duplicates} duplicates, more than the {concurrency} deliveries that can be in flight"
    );
    assert_eq!(receiver.acked_seqs(), (1..=5000).collect());
    publisher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_aof_during_processing_loses_nothing() {
    if common::skip_unless_standalone("restarts its Redis") {
        return;
    }
    let mut redis = RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let app = TestApp::start_with(&redis, |c| {
        let mut g = pull_group("aof", "w");
        g.ack_wait_ms = 300;
        c.group.push(g);
    })
    .await;
    eventually("the group", WAIT, async || {
        let (_, body) = app.get("/v1/topics/aof/groups").await;
        body["groups"][0]["exists"] == json!(true)
    })
    .await;
    publish_many(&app, "aof", 100, 50).await;
    let fetch = async |max: u64| -> Vec<serde_json::Value> {
        let (status, body) =
            app.post_json("/v1/topics/aof/groups/w:fetch", &json!({ "max": max, "wait_ms": 2000 })).await;
        if status != 200 {
            return Vec::new(); // Redis is still coming back
        }
        body["deliveries"].as_array().cloned().unwrap_or_default()
    };
    let first = fetch(30).await;
    assert_eq!(first.len(), 30);
    let tokens: Vec<_> = first[..10].iter().map(|d| d["token"].clone()).collect();
    app.post_json("/v1/topics/aof/groups/w:ack", &json!({ "tokens": tokens })).await;

    redis.restart(); // SIGKILL, then the same data directory: the AOF is replayed
    let mut acked = std::collections::BTreeSet::new();
    for d in &first[..10] {
        acked.insert(d["message"]["seq"].as_u64().expect("seq"));
    }
    eventually("all 100 messages acked", WAIT, async || {
        let batch = fetch(50).await;
        let tokens: Vec<_> = batch.iter().map(|d| d["token"].clone()).collect();
        if !tokens.is_empty() {
            let (status, reply) = app.post_json("/v1/topics/aof/groups/w:ack", &json!({ "tokens": tokens })).await;
            if status == 200 {
                for (d, r) in batch.iter().zip(reply["results"].as_array().into_iter().flatten()) {
                    if r["status"] == json!("acked") {
                        acked.insert(d["message"]["seq"].as_u64().expect("seq"));
                    }
                }
            }
        }
        acked.len() == 100
    })
    .await;
    assert_eq!(acked, (1..=100).collect());
    app.stop().await;
}
