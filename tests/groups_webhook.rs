//! Consumer groups through the webhook target: no head-of-line blocking behind a poison
//! message, eventual delivery through random failures, signatures, permanent 4xx.

mod common;

use std::time::Duration;

use common::{eventually, publish_many, webhook_group, Receiver, TestApp, TestRedis};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

async fn group_state(app: &TestApp, topic: &str) -> Value {
    let (_, body) = app.get(&format!("/v1/topics/{topic}/groups")).await;
    body["groups"][0].clone()
}

fn data(hook: &common::Hook) -> Value {
    let body: Value = serde_json::from_slice(&hook.body).unwrap_or(Value::Null);
    body["message"]["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_poison_message_does_not_hold_back_a_thousand_healthy_ones() {
    let receiver = Receiver::start(|hook| if data(hook) == json!("poison") { 500 } else { 200 }).await;
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.groups.sweep_interval_ms = 20;
        let mut g = webhook_group("work", "hooks", &receiver.url);
        g.max_attempts = 3;
        g.backoff_base_ms = 600_000; // the poison's retry is far away …
        g.backoff_max_ms = 600_000;
        g.backoff_jitter = 0.0;
        c.group.push(g);
    })
    .await;
    eventually("the group to exist", WAIT, async || group_state(&app, "work").await["exists"] == json!(true)).await;
    publish_many(&app, "work", 500, 100).await;
    app.publish("work", json!("poison")).await;
    publish_many(&app, "work", 499, 100).await;

    // … and every healthy message is delivered meanwhile.
    eventually("999 healthy deliveries", WAIT, async || receiver.acked_seqs().len() == 999).await;
    let poison: Vec<_> = receiver.hooks().into_iter().filter(|h| data(h) == json!("poison")).collect();
    assert_eq!(poison.len(), 1, "the poison message was tried once and waits for its retry");
    assert_eq!(poison[0].seq, 501);
    assert!(!receiver.acked_seqs().contains(&501));
    eventually("the poison's retry to be scheduled", WAIT, async || {
        group_state(&app, "work").await["scheduled"] == json!(1)
    })
    .await;
    let state = group_state(&app, "work").await;
    assert_eq!(state["counters"]["acked"], json!(999), "{state}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_percent_random_failures_still_deliver_everything_signed() {
    // A deterministic "random" 30 %: fails depend on (seq, attempt).
    let receiver = Receiver::start(|hook| {
        let x = hook.seq.wrapping_mul(2654435761).wrapping_add(hook.attempt.wrapping_mul(40503)) % 10;
        if x < 3 {
            503
        } else {
            200
        }
    })
    .await;
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.groups.sweep_interval_ms = 20;
        let mut g = webhook_group("flaky", "hooks", &receiver.url);
        g.max_attempts = 20;
        g.backoff_base_ms = 20;
        g.backoff_max_ms = 200;
        g.backoff_multiplier = 1.5;
        g.secret = Some("s3cret".into());
        c.group.push(g);
    })
    .await;
    eventually("the group to exist", WAIT, async || group_state(&app, "flaky").await["exists"] == json!(true)).await;
    publish_many(&app, "flaky", 300, 100).await;
    eventually("every message acked", WAIT, async || receiver.acked_seqs().len() == 300).await;
    let hooks = receiver.hooks();
    assert!(hooks.iter().any(|h| h.status == 503), "failures did happen");
    assert!(hooks.iter().any(|h| h.attempt > 1), "and were retried");
    for hook in &hooks {
        let timestamp = hook.headers["x-streamhub-timestamp"].to_str().expect("ts");
        let expected = streamhub::groups::webhook::signature(b"s3cret", timestamp, &hook.body);
        assert_eq!(hook.headers["x-streamhub-signature"].to_str().expect("sig"), expected);
        assert_eq!(hook.headers["x-streamhub-topic"], "flaky");
        let body: Value = serde_json::from_slice(&hook.body).expect("json body");
        assert_eq!(body["attempt"], json!(hook.attempt));
        assert_eq!(body["message"]["seq"], json!(hook.seq));
    }
    eventually("the counters to settle", WAIT, async || {
        group_state(&app, "flaky").await["counters"]["acked"] == json!(300)
    })
    .await;
    let state = group_state(&app, "flaky").await;
    assert_eq!((state["dead_letters"].clone(), state["pending"].clone()), (json!(0), json!(0)));
    app.stop().await;
}

#[tokio::test]
async fn a_4xx_answer_is_a_permanent_failure() {
    let receiver = Receiver::start(|_| 422).await;
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| c.group.push(webhook_group("bad", "hooks", &receiver.url))).await;
    eventually("the group to exist", WAIT, async || group_state(&app, "bad").await["exists"] == json!(true)).await;
    app.publish("bad", json!({ "x": 1 })).await;
    eventually("a dead letter", WAIT, async || group_state(&app, "bad").await["dead_letters"] == json!(1)).await;
    let (_, dlq) = app.get("/v1/topics/bad/groups/hooks/dlq").await;
    let letter = &dlq["dead_letters"][0];
    assert_eq!(letter["attempts"], json!(1));
    assert!(letter["error"].as_str().is_some_and(|e| e.contains("422")), "{letter}");
    assert_eq!(receiver.count(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_thousand_scheduled_retries_do_not_slow_healthy_deliveries() {
    let receiver = Receiver::start(|_| 200).await;
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.groups.sweep_interval_ms = 20;
        c.group.push(webhook_group("busy", "hooks", &receiver.url));
    })
    .await;
    eventually("the group to exist", WAIT, async || group_state(&app, "busy").await["exists"] == json!(true)).await;
    // The state 100,000 failed messages with long backoffs leave: scheduled an hour ahead.
    let schedule = format!("{}:{{busy}}:g:hooks:z", app.prefix());
    let payloads = format!("{}:{{busy}}:g:hooks:p", app.prefix());
    let script = "local due = tonumber(ARGV[1]) for i = 1, 100000 do \
        redis.call('ZADD', KEYS[1], due + i, i .. ':2') \
        redis.call('HSET', KEYS[2], i .. ':2|e', 'x', i .. ':2|err', 'failed') end return 1";
    let due = (streamhub::message::now_ms() + 3_600_000).to_string();
    let out = redis.cli(&["EVAL", script, "2", &schedule, &payloads, &due]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    publish_many(&app, "busy", 200, 100).await;
    eventually("every healthy message delivered", WAIT, async || receiver.acked_seqs().len() == 200).await;
    // Each promote cycle touched only what was due: nothing of the 100,000.
    let topic = streamhub::Topic::parse("busy", 200).expect("topic");
    let (moved, next_due) =
        app.server.store().group_promote(&topic, "hooks", streamhub::message::now_ms(), 1000).await.expect("promote");
    assert_eq!(moved, 0);
    assert!(next_due > streamhub::message::now_ms());
    assert_eq!(group_state(&app, "busy").await["scheduled"], json!(100_000));
    app.stop().await;
}
