//! Reading history: exact paging after `since`, `truncated` when retention trimmed (G3),
//! and epochs that change when a topic's history was lost (G2).

mod common;

use common::{code, TestApp, TestRedis};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn since_paging_returns_exactly_the_messages_after_since() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    for i in 1..=25 {
        app.publish("p", json!(i)).await;
    }
    for since in [0u64, 1, 7, 24, 25, 30] {
        let (status, page) = app.get(&format!("/v1/topics/p/messages?since={since}&limit=10")).await;
        assert_eq!(status, StatusCode::OK);
        let seqs: Vec<u64> =
            page["messages"].as_array().expect("messages").iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
        let expected: Vec<u64> = (since + 1..=25).take(10).collect();
        assert_eq!(seqs, expected, "since={since}");
        assert_eq!(page["seq"], json!(25));
        assert_eq!(page["truncated"], json!(false));
        let data: Vec<u64> =
            page["messages"].as_array().expect("messages").iter().map(|m| m["data"].as_u64().expect("data")).collect();
        assert_eq!(data, expected, "payloads match their seqs");
    }
    // Walking pages reaches every message once.
    let all = app.history_all("p", 0).await;
    assert_eq!(all.len(), 25);

    // limit is capped at limits.max_history_limit.
    let capped = TestApp::start_with(&redis, |c| {
        c.redis.prefix = app.prefix().to_string();
        c.limits.max_history_limit = 4;
    })
    .await;
    let (_, page) = capped.get("/v1/topics/p/messages?since=0&limit=1000").await;
    assert_eq!(page["messages"].as_array().expect("messages").len(), 4);
    capped.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn truncated_is_true_exactly_when_retention_trimmed_the_range() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| c.retention.max_len = 10).await;
    let batch = json!({ "messages": (0..100).map(|i| json!({ "data": i })).collect::<Vec<_>>() });
    for _ in 0..10 {
        let (status, _) = app.post_json("/v1/topics/trim/messages:batch", &batch).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, topic) = app.get("/v1/topics/trim").await;
    let first = topic["first_seq"].as_u64().expect("first_seq");
    assert_eq!(topic["seq"], json!(1000));
    assert!(first > 1, "retention trimmed the oldest entries (first retained {first})");
    assert!(topic["length"].as_u64().expect("length") >= 10, "at least max_len entries stay");

    // Asking for history that is gone: truncated, and the page starts at the oldest kept.
    let (_, page) = app.get("/v1/topics/trim/messages?since=0&limit=5").await;
    assert_eq!(page["truncated"], json!(true));
    assert_eq!(page["messages"][0]["seq"].as_u64(), Some(first));
    let (_, page) = app.get(&format!("/v1/topics/trim/messages?since={}&limit=5", first - 2)).await;
    assert_eq!(page["truncated"], json!(true), "one message before the first retained is gone");
    // Asking from just before the oldest retained entry: nothing is missing.
    let (_, page) = app.get(&format!("/v1/topics/trim/messages?since={}&limit=5", first - 1)).await;
    assert_eq!(page["truncated"], json!(false));
    assert_eq!(page["messages"][0]["seq"].as_u64(), Some(first));
    // Caught up: nothing after since, nothing missing.
    let (_, page) = app.get("/v1/topics/trim/messages?since=1000").await;
    assert_eq!(page["truncated"], json!(false));
    assert_eq!(page["messages"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_topic_is_404_topic_not_found() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let (status, body) = app.get("/v1/topics/never/messages").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "topic_not_found"));
    let (status, body) = app.get("/v1/topics/never").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "topic_not_found"));
    app.stop().await;
}

#[tokio::test]
async fn the_epoch_changes_when_the_topic_meta_is_lost_and_an_old_epoch_reader_can_tell() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    for i in 0..3 {
        app.publish("e", json!(i)).await;
    }
    let (_, before) = app.get("/v1/topics/e").await;
    let old_epoch = before["epoch"].as_str().expect("epoch").to_string();

    // Keys deleted: the topic starts over in a new epoch.
    let topic = streamhub::Topic::parse("e", 200).expect("topic");
    app.server.store().delete_topic_keys(&topic).await.expect("delete");
    let (status, after) = app.publish("e", json!("new")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(after["seq"], json!(1));
    assert_ne!(after["epoch"].as_str(), Some(old_epoch.as_str()));

    let (_, page) = app.get(&format!("/v1/topics/e/messages?since=3&epoch={old_epoch}")).await;
    assert_eq!(page["epoch_changed"], json!(true), "{page}");
    let new_epoch = after["epoch"].as_str().expect("epoch");
    let (_, page) = app.get(&format!("/v1/topics/e/messages?since=0&epoch={new_epoch}")).await;
    assert_eq!(page["epoch_changed"], json!(false));
    assert_eq!(page["messages"][0]["data"], json!("new"));
    app.stop().await;
}

#[tokio::test]
async fn a_redis_restart_without_persistence_changes_the_epoch() {
    if common::skip_unless_standalone("restarts its Redis") {
        return;
    }
    let mut redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let (_, first) = app.publish("r", json!(1)).await;
    redis.server().restart();
    // Redis lost everything, including the function library: the next publish reloads it.
    let mut next = None;
    for _ in 0..100 {
        let (status, body) = app.publish("r", json!(2)).await;
        if status == StatusCode::CREATED {
            next = Some(body);
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let next = next.expect("publishing works again after the restart");
    assert_eq!(next["seq"], json!(1));
    assert_ne!(next["epoch"], first["epoch"]);
    let (_, page) =
        app.get(&format!("/v1/topics/r/messages?since=1&epoch={}", first["epoch"].as_str().expect("e"))).await;
    assert_eq!(page["epoch_changed"], json!(true));
    app.stop().await;
}

#[tokio::test]
async fn when_only_the_meta_is_lost_numbering_continues_after_the_stream_in_a_new_epoch() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    for i in 0..5 {
        app.publish("m", json!(i)).await;
    }
    let (_, before) = app.get("/v1/topics/m").await;
    let meta = format!("{}:{{m}}:m", app.prefix());
    let out = redis.cli(&["DEL", &meta]);
    assert!(out.status.success());
    let (status, after) = app.publish("m", json!("after")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(after["seq"], json!(6), "an entry id is never reused");
    assert_ne!(after["epoch"], before["epoch"]);
    app.stop().await;
}

#[tokio::test]
async fn topic_listing_is_bounded_and_says_when_it_is_cut() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| c.limits.max_topics_listed = 2).await;
    for t in ["l1", "l2", "l3"] {
        app.publish(t, json!(1)).await;
    }
    // An idempotency key cannot imitate a meta key and list a bogus topic.
    let (status, _) = app.post_json("/v1/topics/l1/messages", &json!({ "data": 1, "idempotency_key": "k}:m" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = app.get("/v1/topics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["topics"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["truncated"], json!(true));
    let exact = TestApp::start_with(&redis, |c| c.redis.prefix = app.prefix().to_string()).await;
    let (_, body) = exact.get("/v1/topics").await;
    assert_eq!((body["topics"].clone(), body["truncated"].clone()), (json!(["l1", "l2", "l3"]), json!(false)));
    exact.stop().await;
    app.stop().await;
}
