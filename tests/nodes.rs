//! Several streamhub nodes on one Redis: a message published on A reaches subscribers on
//! B, and a subscriber that moves from A to B mid-stream resumes with no gap.

mod common;

use common::{seq, TestApp, TestRedis, WsClient};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_on_a_receive_on_b_and_move_from_a_to_b_without_a_gap() {
    let redis = TestRedis::start();
    let a = TestApp::start(&redis).await;
    let b = TestApp::start_with(&redis, |c| c.redis.prefix = a.prefix().to_string()).await;

    let mut on_b = WsClient::connect(&b.base).await;
    on_b.subscribe("x", None).await;
    let (status, ack) = a.publish("x", json!("from a")).await;
    assert_eq!(status, 201);
    let m = on_b.messages(1).await;
    assert_eq!((seq(&m[0]), m[0]["data"].clone()), (1, json!("from a")));
    assert_eq!(m[0]["epoch"], ack["epoch"]);

    // A subscriber on A while messages flow; it moves to B halfway.
    let mut mover = WsClient::connect(&a.base).await;
    mover.subscribe("x", None).await;
    let publisher = {
        let (http, url) = (a.http.clone(), a.url("/v1/topics/x/messages"));
        tokio::spawn(async move {
            for i in 0..2000 {
                let r = http.post(&url).json(&json!({ "data": i })).send().await.expect("publish");
                assert_eq!(r.status(), 201);
            }
        })
    };
    let mut got: Vec<u64> = mover.messages(700).await.iter().map(seq).collect();
    let epoch = ack["epoch"].clone();
    mover.close().await;
    let mut moved = WsClient::connect(&b.base).await;
    let reply = moved.subscribe("x", Some(json!({ "epoch": epoch, "seq": got.last().copied().expect("some") }))).await;
    assert_eq!(reply["recovered"], json!(true));
    publisher.await.expect("publisher");
    let remaining = 2001 - got.last().copied().expect("some");
    got.extend(moved.messages(remaining as usize).await.iter().map(seq));
    assert_eq!(got, (2..=2001).collect::<Vec<u64>>(), "no gap, no duplicate across the move");

    // The subscriber that stayed on B saw everything too.
    let all: Vec<u64> = on_b.messages(2000).await.iter().map(seq).collect();
    assert_eq!(all, (2..=2001).collect::<Vec<u64>>());
    b.stop().await;
    a.stop().await;
}
