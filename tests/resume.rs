//! G3 over WebSocket: a subscriber that resumes with (epoch, seq) gets exactly every
//! retained message after seq, in order — or is told why it cannot.

mod common;

use common::{publish_many, seq, TestApp, TestRedis, WsClient};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_messages_across_a_disconnect_arrive_exactly_once_in_order() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let mut ws = WsClient::connect(&app.base).await;
    let subscribed = ws.subscribe("r", None).await;
    assert_eq!(subscribed["seq"], json!(0));

    let publisher = {
        let (http, url) = (app.http.clone(), app.url("/v1/topics/r/messages:batch"));
        tokio::spawn(async move {
            for b in 0..200 {
                let messages: Vec<_> = (0..50).map(|i| json!({ "data": b * 50 + i })).collect();
                let response = http.post(&url).json(&json!({ "messages": messages })).send().await.expect("publish");
                assert_eq!(response.status(), 200);
            }
        })
    };

    let mut received: Vec<u64> = Vec::new();
    let first = ws.messages(3000).await;
    received.extend(first.iter().map(seq));
    let epoch = first[0]["epoch"].as_str().expect("epoch").to_string();
    ws.close().await; // disconnected while publishing goes on

    let mut ws = WsClient::connect(&app.base).await;
    let last = *received.last().expect("received some");
    let resumed = ws.subscribe("r", Some(json!({ "epoch": epoch, "seq": last }))).await;
    assert_eq!(resumed["recovered"], json!(true), "{resumed}");
    assert!(resumed.get("reason").is_none());
    let rest = ws.messages(10_000 - received.len()).await;
    received.extend(rest.iter().map(seq));
    publisher.await.expect("publisher");

    assert_eq!(received, (1..=10_000).collect::<Vec<u64>>(), "every seq exactly once, in order");
    for m in &rest {
        assert_eq!(m["data"], json!(seq(m) - 1), "payload matches its seq");
        assert_eq!(m["topic"], json!("r"));
        assert_eq!(m["epoch"], json!(epoch));
    }
    app.stop().await;
}

#[tokio::test]
async fn resume_after_an_epoch_change_says_epoch_changed() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    publish_many(&app, "e", 5, 5).await;
    let (_, topic) = app.get("/v1/topics/e").await;
    let old_epoch = topic["epoch"].as_str().expect("epoch").to_string();
    app.server.store().delete_topic_keys(&streamhub::Topic::parse("e", 200).expect("topic")).await.expect("delete");
    publish_many(&app, "e", 2, 2).await;

    let mut ws = WsClient::connect(&app.base).await;
    let reply = ws.subscribe("e", Some(json!({ "epoch": old_epoch, "seq": 3 }))).await;
    assert_eq!(reply["recovered"], json!(false));
    assert_eq!(reply["reason"], json!("epoch_changed"));
    assert_ne!(reply["epoch"], json!(old_epoch));
    assert_eq!(reply["seq"], json!(2), "continues from the current top");
    // Live messages follow from the top.
    publish_many(&app, "e", 1, 1).await;
    let m = ws.messages(1).await;
    assert_eq!(seq(&m[0]), 3);
    app.stop().await;
}

#[tokio::test]
async fn resume_into_trimmed_history_says_trimmed_and_never_hands_a_gap() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| c.retention.max_len = 10).await;
    publish_many(&app, "t", 1000, 100).await;
    let (_, topic) = app.get("/v1/topics/t").await;
    let epoch = topic["epoch"].as_str().expect("epoch").to_string();

    let mut ws = WsClient::connect(&app.base).await;
    let reply = ws.subscribe("t", Some(json!({ "epoch": epoch, "seq": 1 }))).await;
    assert_eq!((reply["recovered"].clone(), reply["reason"].clone()), (json!(false), json!("trimmed")));
    assert_eq!(reply["seq"], json!(1000));
    publish_many(&app, "t", 1, 1).await;
    assert_eq!(seq(&ws.messages(1).await[0]), 1001, "live continues from the top");

    // Resuming from inside the retained range is exact.
    let first = topic["first_seq"].as_u64().expect("first");
    let mut ws2 = WsClient::connect(&app.base).await;
    let reply = ws2.subscribe("t", Some(json!({ "epoch": epoch, "seq": first - 1 }))).await;
    assert_eq!(reply["recovered"], json!(true));
    let got: Vec<u64> = ws2.messages((1001 - first + 1) as usize).await.iter().map(seq).collect();
    assert_eq!(got, (first..=1001).collect::<Vec<u64>>());

    // since: "earliest" delivers everything retained.
    let mut ws3 = WsClient::connect(&app.base).await;
    let reply = ws3.subscribe("t", Some(json!("earliest"))).await;
    assert_eq!(reply["recovered"], json!(true));
    assert_eq!(seq(&ws3.messages(1).await[0]), first);
    app.stop().await;
}

#[tokio::test]
async fn a_position_beyond_the_top_says_ahead() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    publish_many(&app, "a", 3, 3).await;
    let (_, topic) = app.get("/v1/topics/a").await;
    let mut ws = WsClient::connect(&app.base).await;
    let reply = ws.subscribe("a", Some(json!({ "epoch": topic["epoch"], "seq": 50 }))).await;
    assert_eq!((reply["recovered"].clone(), reply["reason"].clone()), (json!(false), json!("ahead")));
    assert_eq!(reply["seq"], json!(3));
    app.stop().await;
}

#[tokio::test]
async fn a_live_subscriber_is_told_when_the_epoch_changes_under_it() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| c.fanout.position_check_ms = 100).await;
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("live", None).await;
    publish_many(&app, "live", 2, 2).await;
    let first = ws.messages(2).await;
    app.server.store().delete_topic_keys(&streamhub::Topic::parse("live", 200).expect("topic")).await.expect("delete");
    publish_many(&app, "live", 1, 1).await;
    let notice = ws.next_frame().await;
    assert_eq!(notice["type"], json!("subscribed"), "{notice}");
    assert!(notice.get("id").is_none(), "an unsolicited notice has no id");
    assert_eq!((notice["recovered"].clone(), notice["reason"].clone()), (json!(false), json!("epoch_changed")));
    assert_eq!(notice["seq"], json!(0), "the new epoch is delivered from its start");
    let m = ws.messages(1).await;
    assert_eq!(seq(&m[0]), 1);
    assert_ne!(m[0]["epoch"], first[0]["epoch"]);
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_saw_the_topic_before_its_first_message_misses_nothing() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let mut ws = WsClient::connect(&app.base).await;
    let before = ws.subscribe("fresh", None).await;
    assert_eq!((before["epoch"].clone(), before["seq"].clone()), (json!(""), json!(0)));
    ws.close().await;
    publish_many(&app, "fresh", 3, 3).await;
    let mut ws = WsClient::connect(&app.base).await;
    let reply = ws.subscribe("fresh", Some(json!({ "epoch": "", "seq": 0 }))).await;
    assert_eq!(reply["recovered"], json!(true), "{reply}");
    let got: Vec<u64> = ws.messages(3).await.iter().map(seq).collect();
    assert_eq!(got, vec![1, 2, 3]);
    app.stop().await;
}
