//! The registry of groups created through the admin API, spread over buckets on their own
//! hash tags: another node runs a new group, and stops a deleted one, within
//! `groups.discover_interval_ms`; registrations of the one-key registry of earlier
//! versions survive the upgrade (moved into their buckets), also when an earlier node
//! still adds some during a rolling upgrade.

mod common;

use std::time::{Duration, Instant};

use common::{publish_many, RedisServer, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use streamhub::keys::{group_registry_bucket, Keys, GROUP_REGISTRY_BUCKETS};

/// The discovery bound of these tests, and what the test allows on top of it (the reads
/// themselves, a loaded machine).
const DISCOVER_MS: u64 = 1500;
const SLACK: Duration = Duration::from_secs(3);

fn discovery(c: &mut streamhub::Config) {
    c.groups.discover_interval_ms = DISCOVER_MS;
    c.groups.sweep_interval_ms = 50;
}

async fn create(app: &TestApp, topic: &str, group: &str) {
    let url = app.url(&format!("/v1/topics/{topic}/groups/{group}"));
    let body = json!({ "target": "pull", "start": "earliest" });
    let response = app.http.put(url).json(&body).send().await.expect("PUT");
    assert_eq!(response.status(), StatusCode::CREATED);
}

async fn fetch(app: &TestApp, topic: &str, group: &str) -> (StatusCode, Value) {
    app.post_json(&format!("/v1/topics/{topic}/groups/{group}:fetch"), &json!({ "max": 100 })).await
}

/// Polls until `app` answers a fetch of `topic/group` with `status`; returns how long it
/// took and the answer (a fetch hands messages out: they are in it).
async fn until_fetch_answers(app: &TestApp, topic: &str, group: &str, status: StatusCode) -> (Duration, Value) {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(DISCOVER_MS) + SLACK;
    loop {
        let (got, body) = fetch(app, topic, group).await;
        if got == status {
            return (started.elapsed(), body);
        }
        assert!(Instant::now() < deadline, "{topic}/{group} not answered {status} within the discovery bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn smembers(redis: &RedisServer, key: &str) -> Vec<String> {
    let out = redis.cli(&["SMEMBERS", key]);
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

fn exists(redis: &RedisServer, key: &str) -> bool {
    String::from_utf8_lossy(&redis.cli(&["EXISTS", key]).stdout).trim() == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_created_on_one_node_runs_on_another_within_the_bound_and_stops_when_deleted() {
    let redis = RedisServer::start();
    let a = TestApp::start_with(&redis, discovery).await;
    let prefix = a.prefix().to_string();
    let b = TestApp::start_with(&redis, |c| {
        discovery(c);
        c.redis.prefix = prefix.clone();
    })
    .await;
    let keys = Keys::new(prefix.clone());

    create(&a, "reg", "w").await;
    let (took, _) = until_fetch_answers(&b, "reg", "w", StatusCode::OK).await;
    println!("discovered by the other node after {took:?} (bound {DISCOVER_MS} ms)");

    // Registered in its own bucket only; the one-key registry is not used.
    let bucket = group_registry_bucket("reg/w");
    assert_eq!(smembers(&redis, &keys.group_registry(bucket)), vec!["reg/w".to_string()]);
    assert!(!exists(&redis, &keys.group_registry_legacy()));

    // Many groups spread over the buckets, each bucket its own hash tag (Cluster slot).
    for i in 0..24 {
        create(&a, &format!("t{i}"), "g").await;
    }
    let mut used = std::collections::BTreeSet::new();
    for i in 0..24 {
        let member = format!("t{i}/g");
        let bucket = group_registry_bucket(&member);
        assert!(smembers(&redis, &keys.group_registry(bucket)).contains(&member), "{member} in bucket {bucket}");
        used.insert(bucket);
    }
    assert!(used.len() >= GROUP_REGISTRY_BUCKETS / 2, "24 groups in only {} buckets", used.len());
    let tags: std::collections::BTreeSet<String> = (0..GROUP_REGISTRY_BUCKETS)
        .map(|b| {
            let key = keys.group_registry(b);
            key[key.find('{').expect("tag")..=key.find('}').expect("tag")].to_string()
        })
        .collect();
    assert_eq!(tags.len(), GROUP_REGISTRY_BUCKETS, "one hash tag per bucket");
    for i in [0, 23] {
        until_fetch_answers(&b, &format!("t{i}"), "g", StatusCode::OK).await;
    }

    // Deleted on A: B stops serving it within the bound.
    let response = a.http.delete(a.url("/v1/topics/reg/groups/w")).send().await.expect("DELETE");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (took, _) = until_fetch_answers(&b, "reg", "w", StatusCode::NOT_FOUND).await;
    println!("deletion seen by the other node after {took:?}");
    assert!(!smembers(&redis, &keys.group_registry(bucket)).contains(&"reg/w".to_string()));
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_of_the_one_key_registry_survive_the_upgrade() {
    let redis = RedisServer::start();
    let a = TestApp::start_with(&redis, discovery).await;
    let prefix = a.prefix().to_string();
    let keys = Keys::new(prefix.clone());
    create(&a, "legacy", "old").await;
    publish_many(&a, "legacy", 3, 3).await;
    a.stop().await;

    // What an earlier version left: the registration in the one key `<prefix>:groups`.
    let member = "legacy/old";
    let bucket = keys.group_registry(group_registry_bucket(member));
    redis.cli(&["SREM", &bucket, member]);
    redis.cli(&["SADD", &keys.group_registry_legacy(), member]);

    // The upgraded node serves the group (its start-up sweep moves it into its bucket).
    let b = TestApp::start_with(&redis, |c| {
        discovery(c);
        c.redis.prefix = prefix.clone();
    })
    .await;
    let (_, first) = until_fetch_answers(&b, "legacy", "old", StatusCode::OK).await;
    assert_eq!(smembers(&redis, &bucket), vec![member.to_string()]);
    assert!(!exists(&redis, &keys.group_registry_legacy()), "the old key is emptied");
    let seq_of = |d: &Value| d["message"]["seq"].as_u64();
    let mut seqs: Vec<u64> = first["deliveries"].as_array().into_iter().flatten().filter_map(seq_of).collect();
    common::eventually("the group's messages", Duration::from_secs(20), async || {
        let (_, body) = fetch(&b, "legacy", "old").await;
        seqs.extend(body["deliveries"].as_array().into_iter().flatten().filter_map(seq_of));
        seqs.len() >= 3
    })
    .await;
    assert_eq!(seqs, vec![1, 2, 3], "nothing of the group was lost");

    // A rolling upgrade: a node of the earlier version registers a group its way (the
    // definition, then the one key) while upgraded nodes run. They move it and run it.
    let old_def: String = {
        let topic = streamhub::Topic::parse("legacy", 1024).expect("topic");
        let out = redis.cli(&["GET", &keys.topic(&topic).group("old").definition]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut late: Value = serde_json::from_str(&old_def).expect("definition JSON");
    late["name"] = json!("late");
    let topic = streamhub::Topic::parse("legacy", 1024).expect("topic");
    redis.cli(&["SET", &keys.topic(&topic).group("late").definition, &late.to_string()]);
    redis.cli(&["SADD", &keys.group_registry_legacy(), "legacy/late"]);
    let (took, _) = until_fetch_answers(&b, "legacy", "late", StatusCode::OK).await;
    println!("a registration of the earlier kind was served after {took:?}");
    assert!(
        smembers(&redis, &keys.group_registry(group_registry_bucket("legacy/late"))).contains(&"legacy/late".into())
    );
    assert!(!exists(&redis, &keys.group_registry_legacy()));
    // And it stays running: a full round of the buckets later (an absence has no signal
    // to wait for), its bucket's reads have kept it.
    tokio::time::sleep(Duration::from_millis(DISCOVER_MS + 200)).await;
    assert_eq!(fetch(&b, "legacy", "late").await.0, StatusCode::OK);
    b.stop().await;
}
