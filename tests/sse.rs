//! SSE: `id: <epoch>:<seq>` on every message event, and `Last-Event-ID` resumes exactly.

mod common;

use common::{publish_many, TestApp, TestRedis};
use serde_json::{json, Value};

/// A minimal SSE reader over a reqwest response.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

#[derive(Debug, Default)]
struct Event {
    id: Option<String>,
    event: String,
    data: String,
}

impl Events {
    async fn open(app: &TestApp, path: &str, last_event_id: Option<&str>) -> Events {
        let mut request = app.http.get(app.url(path)).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("sse");
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().expect("ct").starts_with("text/event-stream"));
        Events { response, buffer: String::new() }
    }

    async fn next(&mut self) -> Event {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.trim_start());
                    }
                }
                if event.event.is_empty() && event.data.is_empty() {
                    continue; // keep-alive comment
                }
                return event;
            }
            let chunk = tokio::time::timeout(common::FRAME_TIMEOUT, self.response.chunk())
                .await
                .expect("an event within the timeout")
                .expect("stream")
                .expect("open stream");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn messages(&mut self, n: usize) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        while out.len() < n {
            let e = self.next().await;
            assert_eq!(e.event, "message", "{e:?}");
            out.push((e.id.expect("message events carry an id"), serde_json::from_str(&e.data).expect("json")));
        }
        out
    }
}

#[tokio::test]
async fn last_event_id_resumes_exactly() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    publish_many(&app, "s", 5, 5).await;
    let mut events = Events::open(&app, "/v1/topics/s/events?since=earliest", None).await;
    let first = events.next().await;
    assert_eq!(first.event, "subscribed");
    let subscribed: Value = serde_json::from_str(&first.data).expect("json");
    assert_eq!(subscribed["recovered"], json!(true));
    let got = events.messages(5).await;
    let epoch = subscribed["epoch"].as_str().expect("epoch").to_string();
    let ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, (1..=5).map(|s| format!("{epoch}:{s}")).collect::<Vec<_>>());
    assert_eq!(got[2].1["data"], json!({ "i": 2 }));
    drop(events);

    // Messages published while disconnected arrive after Last-Event-ID, exactly.
    publish_many(&app, "s", 7, 7).await;
    let mut resumed = Events::open(&app, "/v1/topics/s/events", Some(&ids[2])).await;
    let e = resumed.next().await;
    let subscribed: Value = serde_json::from_str(&e.data).expect("json");
    assert_eq!((e.event.as_str(), subscribed["recovered"].clone()), ("subscribed", json!(true)));
    let seqs: Vec<u64> = resumed.messages(9).await.iter().map(|(_, m)| m["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (4..=12).collect::<Vec<u64>>());
    // Live messages follow.
    publish_many(&app, "s", 1, 1).await;
    assert_eq!(resumed.messages(1).await[0].1["seq"], json!(13));

    // A Last-Event-ID from another epoch is reported, not silently resumed.
    let mut stale = Events::open(&app, "/v1/topics/s/events", Some("0000000000000000:3")).await;
    let e = stale.next().await;
    let subscribed: Value = serde_json::from_str(&e.data).expect("json");
    assert_eq!((subscribed["recovered"].clone(), subscribed["reason"].clone()), (json!(false), json!("epoch_changed")));
    app.stop().await;
}

#[tokio::test]
async fn bad_sse_requests_get_json_errors() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let (status, body) = app.get("/v1/topics/a%7Bb/events").await;
    assert_eq!((status.as_u16(), common::code(&body)), (400, "invalid_topic"));
    let (status, body) = app.get("/v1/topics/ok/events?since=soon").await;
    assert_eq!((status.as_u16(), common::code(&body)), (400, "invalid_request"));
    app.stop().await;
}
