//! Retention by age (`retention.max_age_ms`) and per-topic retention settings: old entries
//! are trimmed under publish load, an idle topic's stream expires, a lagging consumer group
//! keeps what it needs unless the hard cap forces a trim, and `[[retention.topics]]` rules
//! apply to the topics they match (first match wins), shown by topic info.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, pull_group, TestApp, TestRedis, READY_TIMEOUT};
use reqwest::StatusCode;
use serde_json::{json, Value};
use streamhub::config::RetentionRule;

/// Publishes `batches` batches of 64 messages, `every` apart (a bounded, paced load).
async fn load(app: &TestApp, topic: &str, batches: usize, every: Duration) -> u64 {
    let mut sent = 0;
    for _ in 0..batches {
        common::publish_many(app, topic, 64, 64).await;
        sent += 64;
        tokio::time::sleep(every).await;
    }
    sent
}

async fn info(app: &TestApp, topic: &str) -> Value {
    let (status, body) = app.get(&format!("/v1/topics/{topic}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn stream_key(app: &TestApp, topic: &str) -> String {
    format!("{}:{{{topic}}}:s", app.prefix())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_entries_are_trimmed_under_load_and_an_idle_stream_expires() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.retention.max_len = 0; // only age counts here
        c.retention.max_age_ms = 400;
    })
    .await;
    let started = Instant::now();
    let sent = load(&app, "aged", 20, Duration::from_millis(100)).await;
    let elapsed = started.elapsed();
    let now = info(&app, "aged").await;
    assert_eq!(now["seq"], json!(sent), "numbering is untouched by trimming");
    assert_eq!(now["retention"]["max_age_ms"], json!(400));
    let length = now["length"].as_u64().expect("length");
    assert!(length < sent / 2, "{length} of {sent} kept after {elapsed:?}: old entries were not trimmed");
    // Trimming is approximate (every 64 publishes, whole stream nodes): a bounded excess.
    let age = now["oldest_age_ms"].as_u64().expect("oldest age");
    assert!(age < 400 + 1_500, "the oldest entry is {age} ms old");
    let metrics = app.metrics().await;
    let trimmed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("streamhub_retention_trimmed_total{reason=\"age\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(trimmed, sent - length, "every entry removed is counted as an age trim");

    // Idle: the whole stream goes once its newest entry is max_age old; the meta stays.
    let key = stream_key(&app, "aged");
    eventually("the idle stream to expire", READY_TIMEOUT, async || {
        String::from_utf8_lossy(&redis.cli(&["EXISTS", &key]).stdout).trim() == "0"
    })
    .await;
    let after = info(&app, "aged").await;
    assert_eq!(
        (after["seq"].clone(), after["length"].clone(), after["epoch"].clone()),
        (json!(sent), json!(0), now["epoch"].clone())
    );
    let (_, page) = app.get("/v1/topics/aged/messages?since=3").await;
    assert_eq!((page["truncated"].clone(), page["messages"].clone()), (json!(true), json!([])));
    // And numbering continues in the same epoch.
    let (_, published) = app.publish("aged", json!("again")).await;
    assert_eq!((published["seq"].clone(), published["epoch"].clone()), (json!(sent + 1), now["epoch"].clone()));
    let ttl = |app: &TestApp| -> i64 {
        String::from_utf8_lossy(&redis.cli(&["PTTL", &stream_key(app, "aged")]).stdout).trim().parse().unwrap_or(-3)
    };
    assert!((1..=400).contains(&ttl(&app)), "the stream expires max_age after its newest entry");
    // A consumer group created on the topic takes the expiry away: the group lives in the stream.
    let response = app.http.put(app.url("/v1/topics/aged/groups/late")).json(&json!({ "target": "pull" })).send();
    assert_eq!(response.await.expect("put").status(), StatusCode::CREATED);
    assert_eq!(ttl(&app), -1, "no expiry once the topic has a group");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_group_keeps_what_it_needs_until_the_hard_cap() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.retention.max_age_ms = 200;
        c.retention.hard_max_len = 0;
        c.group.push(pull_group("kept", "slow"));
    })
    .await;
    eventually("the group", READY_TIMEOUT, async || {
        let (_, body) = app.get("/v1/topics/kept/groups").await;
        body["groups"][0]["exists"] == json!(true)
    })
    .await;
    let sent = load(&app, "kept", 12, Duration::from_millis(100)).await;
    let now = info(&app, "kept").await;
    assert_eq!(now["length"], json!(sent), "nothing the group has not been delivered is trimmed by age");
    let ttl = String::from_utf8_lossy(&redis.cli(&["PTTL", &stream_key(&app, "kept")]).stdout).trim().to_string();
    assert_eq!(ttl, "-1", "a stream with consumer groups never expires as a whole");
    // The group reads everything: the whole history is still there for it.
    let (_, fetched) = app.post_json("/v1/topics/kept/groups/slow:fetch", &json!({ "max": 1000 })).await;
    assert_eq!(fetched["deliveries"].as_array().map(Vec::len), Some(sent as usize));
    app.stop().await;

    // With a hard cap, age retention goes past what the group needs, and says so.
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.retention.max_age_ms = 200;
        c.retention.hard_max_len = 300;
        c.group.push(pull_group("capped", "slow"));
    })
    .await;
    eventually("the group", READY_TIMEOUT, async || {
        let (_, body) = app.get("/v1/topics/capped/groups").await;
        body["groups"][0]["exists"] == json!(true)
    })
    .await;
    let sent = load(&app, "capped", 12, Duration::from_millis(100)).await;
    let length = info(&app, "capped").await["length"].as_u64().expect("length");
    assert!(length < sent && length <= 300 + 64 + 100, "{length} of {sent} kept under a hard cap of 300");
    let forced = redis.cli(&["HGET", &format!("{}:{{capped}}:m", app.prefix()), "forced_trimmed"]);
    assert!(String::from_utf8_lossy(&forced.stdout).trim().parse::<u64>().is_ok_and(|n| n > 0), "counted");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_pattern_settings_apply_to_the_topics_they_match() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.retention.max_len = 100_000;
        c.retention.topics = vec![
            RetentionRule { pattern: "prices.*".into(), max_len: None, max_age_ms: None, default_ttl_ms: Some(30_000) },
            RetentionRule { pattern: "prices.eu".into(), max_len: Some(1), max_age_ms: None, default_ttl_ms: None },
            RetentionRule {
                pattern: "audit.*".into(),
                max_len: Some(100),
                max_age_ms: Some(3_600_000),
                default_ttl_ms: None,
            },
        ];
    })
    .await;
    common::publish_many(&app, "audit.x", 640, 64).await;
    common::publish_many(&app, "orders", 640, 64).await;
    app.publish("prices.eu", json!(1.25)).await;
    let (_, explicit) = app.post_json("/v1/topics/prices.eu/messages", &json!({ "data": 1.26, "ttl_ms": 5000 })).await;
    assert_eq!(explicit["seq"], json!(2));

    let audit = info(&app, "audit.x").await;
    assert_eq!(audit["retention"], json!({ "max_len": 100, "max_age_ms": 3_600_000, "default_ttl_ms": 0 }));
    let kept = audit["length"].as_u64().expect("length");
    assert!((100..=300).contains(&kept), "audit.x keeps about 100: {kept}");
    let orders = info(&app, "orders").await;
    assert_eq!(orders["length"], json!(640), "no rule: the default max_len");
    assert_eq!(orders["retention"], json!({ "max_len": 100_000, "max_age_ms": 0, "default_ttl_ms": 0 }));
    // prices.eu matches "prices.*" first: its default TTL, and the later rule's max_len never.
    let prices = info(&app, "prices.eu").await;
    assert_eq!(prices["retention"], json!({ "max_len": 100_000, "max_age_ms": 0, "default_ttl_ms": 30_000 }));
    let (_, page) = app.get("/v1/topics/prices.eu/messages?since=0").await;
    assert_eq!(page["messages"][0]["ttl_ms"], json!(30_000), "the topic's default TTL");
    assert_eq!(page["messages"][1]["ttl_ms"], json!(5000), "a TTL given by the publisher wins");
    let (_, page) = app.get("/v1/topics/orders/messages?since=0&limit=1").await;
    assert_eq!(page["messages"][0].get("ttl_ms"), None);

    // Publishes through Redis follow the same rules (rendered into the function library).
    let p = app.prefix();
    let out = redis.cli(&[
        "FCALL",
        "sh_publish_raw_v1",
        "3",
        &format!("{p}:{{prices.us}}:m"),
        &format!("{p}:{{prices.us}}:s"),
        &format!("{p}:{{prices.us}}:h"),
        "9.99",
        "application/json",
    ]);
    assert!(out.status.success());
    let (_, page) = app.get("/v1/topics/prices.us/messages?since=0").await;
    assert_eq!(page["messages"][0]["ttl_ms"], json!(30_000), "{page}");
    app.stop().await;
}
