//! Consumer groups through the HTTP pull target: leases, late acks, retries on the
//! backoff schedule, dead letters, replay, TTL expiry, and retention that keeps what a
//! group still needs (G4, G6).

mod common;

use std::time::Duration;

use common::{code, eventually, publish_many, pull_group, TestApp, TestRedis, READY_TIMEOUT};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn fetch(app: &TestApp, topic: &str, group: &str, max: u64, wait_ms: u64) -> Vec<Value> {
    let (status, body) = app
        .post_json(&format!("/v1/topics/{topic}/groups/{group}:fetch"), &json!({ "max": max, "wait_ms": wait_ms }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["deliveries"].as_array().expect("deliveries").clone()
}

async fn settle(app: &TestApp, topic: &str, group: &str, action: &str, body: Value) -> Vec<Value> {
    let (status, reply) = app.post_json(&format!("/v1/topics/{topic}/groups/{group}:{action}"), &body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply["results"].as_array().expect("results").clone()
}

fn tokens(deliveries: &[Value]) -> Vec<String> {
    deliveries.iter().map(|d| d["token"].as_str().expect("token").to_string()).collect()
}

async fn group_state(app: &TestApp, topic: &str) -> Value {
    let (status, body) = app.get(&format!("/v1/topics/{topic}/groups")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["groups"][0].clone()
}

async fn ready_group(app: &TestApp, topic: &str) {
    eventually("the group to be created", READY_TIMEOUT, async || {
        group_state(app, topic).await["exists"] == json!(true)
    })
    .await;
}

#[tokio::test]
async fn leases_expire_and_a_late_ack_is_reported_not_applied() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        let mut g = pull_group("jobs", "w");
        g.ack_wait_ms = 300;
        c.group.push(g);
    })
    .await;
    ready_group(&app, "jobs").await;
    publish_many(&app, "jobs", 5, 5).await;
    let first = fetch(&app, "jobs", "w", 10, 0).await;
    assert_eq!(first.len(), 5);
    assert!(first.iter().all(|d| d["attempt"] == json!(1)));
    let seqs: Vec<u64> = first.iter().map(|d| d["message"]["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let t = tokens(&first);
    let acked = settle(&app, "jobs", "w", "ack", json!({ "tokens": t[..3] })).await;
    assert!(acked.iter().all(|r| r["status"] == json!("acked")), "{acked:?}");
    // Within the lease nothing comes back.
    assert!(fetch(&app, "jobs", "w", 10, 0).await.is_empty());

    // After ack_wait the two unacked ones are delivered again, attempt 2.
    let again = fetch(&app, "jobs", "w", 10, 5_000).await;
    let seqs: Vec<u64> = again.iter().map(|d| d["message"]["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, vec![4, 5]);
    assert!(again.iter().all(|d| d["attempt"] == json!(2)));
    // The first consumer's late ack no longer applies…
    let late = settle(&app, "jobs", "w", "ack", json!({ "tokens": t[3..] })).await;
    assert!(late.iter().all(|r| r["status"] == json!("lease_expired")), "{late:?}");
    // …the current holder's does, once (a token repeated in one call included).
    let mut repeated = tokens(&again);
    repeated.push(repeated[0].clone());
    let now = settle(&app, "jobs", "w", "ack", json!({ "tokens": repeated })).await;
    let statuses: Vec<&str> = now.iter().map(|r| r["status"].as_str().expect("status")).collect();
    assert_eq!(statuses, ["acked", "acked", "unknown"]);
    let twice = settle(&app, "jobs", "w", "ack", json!({ "tokens": tokens(&again) })).await;
    assert!(twice.iter().all(|r| r["status"] == json!("unknown")));
    let bad = settle(&app, "jobs", "w", "ack", json!({ "tokens": ["nonsense"] })).await;
    assert_eq!(bad[0]["status"], json!("invalid_token"));
    let state = group_state(&app, "jobs").await;
    assert_eq!(state["counters"]["acked"], json!(5));
    assert_eq!(state["pending"], json!(0));
    app.stop().await;
}

#[tokio::test]
async fn a_failing_message_follows_the_backoff_then_lands_in_the_dlq_with_its_last_error() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.groups.sweep_interval_ms = 20;
        let mut g = pull_group("pay", "w");
        g.max_attempts = 4;
        g.backoff_base_ms = 100;
        g.backoff_multiplier = 2.0;
        g.backoff_jitter = 0.0;
        c.group.push(g);
    })
    .await;
    ready_group(&app, "pay").await;
    publish_many(&app, "pay", 1, 1).await;
    let mut delivery = fetch(&app, "pay", "w", 1, 0).await;
    for attempt in 1..=4u64 {
        assert_eq!(delivery.len(), 1);
        assert_eq!(delivery[0]["attempt"], json!(attempt));
        if attempt > 1 {
            assert_eq!(delivery[0]["last_error"], json!(format!("boom {}", attempt - 1)));
        }
        let before = streamhub::message::now_ms();
        let result = settle(
            &app,
            "pay",
            "w",
            "nack",
            json!({ "tokens": tokens(&delivery), "error": format!("boom {attempt}") }),
        )
        .await;
        let after = streamhub::message::now_ms();
        if attempt < 4 {
            assert_eq!(result[0]["status"], json!("scheduled"), "{result:?}");
            // The due time recorded in Redis follows the backoff exactly (no jitter).
            let expected = 100 * 2u64.pow(attempt as u32 - 1);
            let due = result[0]["due_ms"].as_u64().expect("due");
            assert!(
                due >= before + expected && due <= after + expected,
                "attempt {attempt}: due {due}, expected now+{expected}"
            );
            let zset = redis.cli(&["ZRANGE", &format!("{}:{{pay}}:g:w:z", app.prefix()), "0", "-1", "WITHSCORES"]);
            let zset = String::from_utf8_lossy(&zset.stdout).to_string();
            assert!(zset.contains(&format!("1:{}", attempt + 1)) && zset.contains(&due.to_string()), "{zset}");
            delivery = fetch(&app, "pay", "w", 1, 10_000).await;
        } else {
            assert_eq!(result[0]["status"], json!("dead"), "{result:?}");
        }
    }
    assert!(fetch(&app, "pay", "w", 1, 0).await.is_empty());
    let (status, dlq) = app.get("/v1/topics/pay/groups/w/dlq").await;
    assert_eq!(status, StatusCode::OK);
    let letters = dlq["dead_letters"].as_array().expect("letters");
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0]["attempts"].clone(), letters[0]["error"].clone()), (json!(4), json!("boom 4")));
    assert_eq!(letters[0]["message"]["seq"], json!(1));
    let id = letters[0]["id"].as_str().expect("id").to_string();
    let (status, one) = app.get(&format!("/v1/topics/pay/groups/w/dlq/{id}")).await;
    assert_eq!((status, one["seq"].clone()), (StatusCode::OK, json!(1)));

    // Replay: delivered again to this group, with fresh attempts.
    let (status, replayed) = app.post_json("/v1/topics/pay/groups/w/dlq:replay", &json!({ "all": true })).await;
    assert_eq!((status, replayed["replayed"].clone()), (StatusCode::OK, json!(1)));
    let back = fetch(&app, "pay", "w", 1, 5_000).await;
    assert_eq!((back[0]["attempt"].clone(), back[0]["message"]["seq"].clone()), (json!(1), json!(1)));
    settle(&app, "pay", "w", "nack", json!({ "tokens": tokens(&back), "permanent": true, "error": "no" })).await;
    let (_, purged) =
        app.post_json("/v1/topics/pay/groups/w/dlq:purge", &json!({ "all": true, "error_contains": "no" })).await;
    assert_eq!(purged["purged"], json!(1));
    let state = group_state(&app, "pay").await;
    assert_eq!((state["dead_letters"].clone(), state["counters"]["dead"].clone()), (json!(0), json!(2)));
    app.stop().await;
}

#[tokio::test]
async fn expired_messages_are_not_delivered_and_are_counted() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.group.push(pull_group("ttl", "drop"));
        let mut g = pull_group("ttl", "keep");
        g.on_expiry = streamhub::config::OnExpiry::Dlq;
        c.group.push(g);
    })
    .await;
    ready_group(&app, "ttl").await;
    eventually("both groups", READY_TIMEOUT, async || {
        let (_, body) = app.get("/v1/topics/ttl/groups").await;
        body["groups"].as_array().is_some_and(|g| g.iter().all(|g| g["exists"] == json!(true)))
    })
    .await;
    let (status, _) = app.post_json("/v1/topics/ttl/messages", &json!({ "data": "stale", "ttl_ms": 1 })).await;
    assert_eq!(status, StatusCode::CREATED);
    app.publish("ttl", json!("fresh")).await;
    tokio::time::sleep(Duration::from_millis(5)).await; // let the 1 ms TTL pass
    for group in ["drop", "keep"] {
        let got = fetch(&app, "ttl", group, 10, 0).await;
        let data: Vec<Value> = got.iter().map(|d| d["message"]["data"].clone()).collect();
        assert_eq!(data, vec![json!("fresh")], "{group}");
    }
    let (_, body) = app.get("/v1/topics/ttl/groups").await;
    for g in body["groups"].as_array().expect("groups") {
        assert_eq!(g["counters"]["expired"], json!(1), "{g}");
        let letters = if g["name"] == json!("keep") { 1 } else { 0 };
        assert_eq!(g["dead_letters"], json!(letters), "{g}");
    }
    app.stop().await;
}

#[tokio::test]
async fn retention_keeps_what_a_group_has_not_acknowledged_unless_the_hard_cap_forces_it() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.retention.max_len = 10;
        c.retention.hard_max_len = 1000;
        c.group.push(pull_group("keep", "slow"));
    })
    .await;
    ready_group(&app, "keep").await;
    publish_many(&app, "keep", 256, 64).await;
    let (_, topic) = app.get("/v1/topics/keep").await;
    assert_eq!(topic["first_seq"], json!(1), "nothing the group still needs was trimmed: {topic}");
    assert_eq!(topic["length"], json!(256));

    // The group consumes and acks everything; the next trims may now cut.
    loop {
        let batch = fetch(&app, "keep", "slow", 100, 0).await;
        if batch.is_empty() {
            break;
        }
        settle(&app, "keep", "slow", "ack", json!({ "tokens": tokens(&batch) })).await;
    }
    publish_many(&app, "keep", 64, 64).await;
    let (_, topic) = app.get("/v1/topics/keep").await;
    assert!(topic["length"].as_u64().expect("len") < 256, "acknowledged entries were trimmed: {topic}");

    // A stalled group and a stream past the hard cap: trimmed anyway, and counted.
    publish_many(&app, "keep", 1600, 100).await;
    let (_, topic) = app.get("/v1/topics/keep").await;
    assert!(topic["length"].as_u64().expect("len") <= 1100, "{topic}");
    let meta = redis.cli(&["HGET", &format!("{}:{{keep}}:m", app.prefix()), "forced_trimmed"]);
    let forced: u64 = String::from_utf8_lossy(&meta.stdout).trim().parse().unwrap_or(0);
    assert!(forced > 0, "forced trims are counted");
    app.stop().await;
}

#[tokio::test]
async fn unknown_groups_and_bad_requests_get_codes() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| c.group.push(pull_group("g", "w"))).await;
    let (status, body) = app.post_json("/v1/topics/g/groups/nope:fetch", &json!({})).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "group_not_found"));
    let (status, body) = app.post_json("/v1/topics/g/groups/w:ack", &json!({ "tokens": [] })).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_request"));
    let (status, body) = app.post_json("/v1/topics/g/groups/w:fly", &json!({})).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = app.get("/v1/topics/g/groups/w/dlq?after=x").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_query"));
    // A topic that has a group but no message yet exists, with its group.
    ready_group(&app, "g").await;
    let (status, topic) = app.get("/v1/topics/g").await;
    assert_eq!((status, topic["groups"].clone(), topic["seq"].clone()), (StatusCode::OK, json!(["w"]), json!(0)));
    app.stop().await;
}

#[tokio::test]
async fn a_pending_entry_deleted_from_the_stream_is_acked_and_counted_not_retried_forever() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        let mut g = pull_group("del", "w");
        g.ack_wait_ms = 200;
        c.group.push(g);
    })
    .await;
    ready_group(&app, "del").await;
    publish_many(&app, "del", 2, 2).await;
    let got = fetch(&app, "del", "w", 10, 0).await;
    assert_eq!(got.len(), 2);
    // Someone deletes entry 1 while it is pending (XDEL, or a hard-cap trim).
    let out = redis.cli(&["XDEL", &format!("{}:{{del}}:s", app.prefix()), "1-0"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    // After the lease, only entry 2 comes back; entry 1 is acked and counted.
    let again = fetch(&app, "del", "w", 10, 5_000).await;
    let seqs: Vec<u64> = again.iter().map(|d| d["message"]["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, vec![2]);
    let state = group_state(&app, "del").await;
    assert_eq!(state["counters"]["deleted"], json!(1), "{state}");
    settle(&app, "del", "w", "ack", json!({ "tokens": tokens(&again) })).await;
    assert_eq!(group_state(&app, "del").await["pending"], json!(0));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_lost_with_redis_is_created_again() {
    if common::skip_unless_standalone("restarts its Redis") {
        return;
    }
    let mut redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.groups.sweep_interval_ms = 20;
        c.group.push(pull_group("lost", "w"));
    })
    .await;
    ready_group(&app, "lost").await;
    redis.server().restart(); // no persistence: the group, its keys and the function library are gone
    eventually("the group to exist again", READY_TIMEOUT, async || {
        let (status, body) = app.get("/v1/topics/lost/groups").await;
        status == StatusCode::OK && body["groups"][0]["exists"] == json!(true)
    })
    .await;
    publish_many(&app, "lost", 2, 2).await;
    let got = fetch(&app, "lost", "w", 10, 5_000).await;
    assert_eq!(got.len(), 2);
    app.stop().await;
}
