//! Bad input gets the documented code and loses nothing; the server keeps serving (G7).

mod common;

use common::{code, RedisServer, TestApp};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn invalid_topics_are_refused_with_invalid_topic() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis).await;
    let long = "a".repeat(10_000);
    for topic in ["a%7Bb", "a%7Db", "a*", "a%0Ab", "a%20b", "caf%C3%A9", long.as_str(), "a%2Fb"] {
        let (status, body) = app.publish(topic, json!(1)).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_topic"), "{topic}");
        let (status, body) = app.get(&format!("/v1/topics/{topic}/messages")).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_topic"), "{topic}");
    }
    // An empty topic segment.
    let (status, body) = app.publish("", json!(1)).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_topic"));
    // Exactly max_topic_bytes is fine.
    let edge = "t".repeat(app.config.limits.max_topic_bytes);
    let (status, _) = app.publish(&edge, json!(1)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app.publish(&format!("{edge}t"), json!(1)).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_topic"));
    app.stop().await;
}

async fn post_raw(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let mut request = app.http.post(app.url(path)).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    common::decode(request.send().await.expect("POST")).await
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_their_codes_and_store_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| {
        c.limits.max_payload_bytes = 1000;
        c.limits.max_body_bytes = 4000;
        c.limits.max_batch_messages = 3;
        c.limits.max_header_bytes = 100;
    })
    .await;
    let path = "/v1/topics/bad/messages";
    let cases: Vec<(Option<&str>, Vec<u8>, StatusCode, &str)> = vec![
        (Some("application/json"), b"{\"data\": ".to_vec(), StatusCode::BAD_REQUEST, "invalid_json"),
        (Some("application/json"), b"not json".to_vec(), StatusCode::BAD_REQUEST, "invalid_json"),
        (Some("application/json"), b"{\"headers\": {}}".to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        (Some("application/json"), b"{\"data\": 1, \"extra\": 2}".to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            Some("application/json"),
            b"{\"data\": 1, \"ttl_ms\": 0}".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("application/json"),
            b"{\"data\": 1, \"idempotency_key\": \"a b\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        ),
        // Well-formed text that no reader could parse back into a value.
        (Some("application/json"), br#"{"data": "\ud800"}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_json"),
        (Some("application/json"), br#"{"data": [1e400]}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_json"),
        // A body that is not UTF-8 text (a byte 0xff inside a string).
        (Some("application/json"), b"{\"data\": \"\xff\"}".to_vec(), StatusCode::BAD_REQUEST, "invalid_json"),
        (None, b"raw".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        // data over max_payload_bytes once JSON-encoded ("x"*999 plus quotes = 1001 bytes)
        (
            Some("application/json"),
            serde_json::to_vec(&json!({ "data": "x".repeat(999) })).expect("json"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (Some("text/plain"), vec![b'x'; 1001], StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        // body over max_body_bytes
        (Some("text/plain"), vec![b'x'; 4001], StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
    ];
    for (ct, body, status, expected) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).to_string();
        let (got, reply) = post_raw(&app, path, ct, body).await;
        assert_eq!((got, code(&reply)), (status, expected), "{ct:?} {shown}");
        assert!(reply["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The payload edge itself is accepted.
    let (status, _) = post_raw(&app, path, Some("text/plain"), vec![b'x'; 1000]).await;
    assert_eq!(status, StatusCode::CREATED);
    // JSON data counts as compact text: the whitespace sent between its tokens is not stored.
    let spaced = |n: usize| format!("{{\"data\": [ \"{}\" ] }}", "x".repeat(n)).into_bytes();
    let (status, _) = post_raw(&app, path, Some("application/json"), spaced(996)).await;
    assert_eq!(status, StatusCode::CREATED, "[\"x…\"] is 1,000 bytes");
    let (status, reply) = post_raw(&app, path, Some("application/json"), spaced(997)).await;
    assert_eq!((status, code(&reply)), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));

    let batch = |n: usize| json!({ "messages": (0..n).map(|i| json!({ "data": i })).collect::<Vec<_>>() });
    let (status, _) = app.post_json("/v1/topics/bad/messages:batch", &batch(3)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.post_json("/v1/topics/bad/messages:batch", &batch(4)).await;
    assert_eq!((status, code(&body)), (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large"));
    let (status, body) = app.post_json("/v1/topics/bad/messages:batch", &json!({ "messages": [] })).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_request"));
    let (status, body) = post_raw(&app, "/v1/topics/bad/messages:batch", Some("text/plain"), b"x".to_vec()).await;
    assert_eq!((status, code(&body)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let not_utf8 = b"{\"messages\": [{\"data\": 1}, {\"data\": \"\xc3\"}]}".to_vec();
    let (status, body) = post_raw(&app, "/v1/topics/bad/messages:batch", Some("application/json"), not_utf8).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_json"), "{body}");

    // Too many headers, too many header bytes.
    let headers: serde_json::Map<String, serde_json::Value> =
        (0..=app.config.limits.max_headers).map(|i| (format!("h{i}"), json!("v"))).collect();
    let (status, body) = app.post_json(path, &json!({ "data": 1, "headers": headers })).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "too_many_headers"));
    let big = "v".repeat(app.config.limits.max_header_bytes);
    let (status, body) = app.post_json(path, &json!({ "data": 1, "headers": { "h": big } })).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "headers_too_large"));

    // Only the three good publishes and the good batch were stored.
    let (_, topic) = app.get("/v1/topics/bad").await;
    assert_eq!(topic["seq"], json!(5), "{topic}");
    let metrics = app.metrics().await;
    assert!(metrics.contains("streamhub_publish_rejected_total{code=\"invalid_json\"} 6"), "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_methods_and_queries_get_json_errors_and_service_continues() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis).await;
    let (status, body) = app.get("/v2/nothing").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let response = app.http.delete(app.url("/v1/topics/x/messages")).send().await.expect("DELETE");
    let (status, body) = common::decode(response).await;
    assert_eq!((status, code(&body)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    app.publish("q", json!(1)).await;
    for query in ["since=abc", "limit=-1", "since=1&bogus=2"] {
        let (status, body) = app.get(&format!("/v1/topics/q/messages?{query}")).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_query"), "{query}");
    }
    let (status, _) = app.publish("q", json!(2)).await;
    assert_eq!(status, StatusCode::CREATED, "still serving after bad requests");
    app.stop().await;
}
