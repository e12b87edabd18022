//! Publishing: gap-free numbering under concurrency (G2), idempotency, batches, raw bodies.

mod common;

use std::collections::HashSet;

use common::{code, TestApp, TestRedis};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_publishers_get_seqs_1_to_16000_without_gap_or_duplicate() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let mut tasks = Vec::new();
    for publisher in 0..16u64 {
        let http = app.http.clone();
        let url = app.url("/v1/topics/load/messages");
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(1000);
            for i in 0..1000u64 {
                let response = http
                    .post(&url)
                    .json(&json!({ "data": { "publisher": publisher, "i": i } }))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(response.status(), StatusCode::CREATED);
                let body: serde_json::Value = response.json().await.expect("json");
                seqs.push(body["seq"].as_u64().expect("seq"));
            }
            seqs
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("publisher task"));
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=16000).collect::<Vec<u64>>(), "acknowledged seqs are 1..16000");

    let history = app.history_all("load", 0).await;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (1..=16000).collect::<Vec<u64>>(), "history holds 1..16000 in order");
    let payloads: HashSet<(u64, u64)> = history
        .iter()
        .map(|m| (m["data"]["publisher"].as_u64().expect("p"), m["data"]["i"].as_u64().expect("i")))
        .collect();
    assert_eq!(payloads.len(), 16000, "every published message is stored exactly once");
    let ids: HashSet<&str> = history.iter().map(|m| m["id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), 16000, "message ids are unique");
    app.stop().await;
}

#[tokio::test]
async fn an_idempotent_repeat_returns_the_same_seq_and_adds_nothing() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let body = json!({ "data": "once", "idempotency_key": "order-17" });
    let (status, first) = app.post_json("/v1/topics/orders/messages", &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first["duplicate"], json!(false));
    let (status, again) = app.post_json("/v1/topics/orders/messages", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["duplicate"], json!(true));
    assert_eq!((&again["epoch"], &again["seq"], &again["id"]), (&first["epoch"], &first["seq"], &first["id"]));

    // The same key as an HTTP header on a raw publish is recognised too.
    let response = app
        .http
        .post(app.url("/v1/topics/orders/messages"))
        .header("content-type", "text/plain")
        .header("idempotency-key", "order-17")
        .body("different body, same key")
        .send()
        .await
        .expect("raw publish");
    assert_eq!(response.status(), StatusCode::OK);
    // The answer is JSON; with CORS off (the default), no CORS header and no `Vary`.
    let headers = response.headers();
    assert_eq!(headers.get("content-type").map(|v| v.as_bytes()), Some(&b"application/json"[..]));
    assert!(headers.get("vary").is_none() && headers.get("access-control-allow-origin").is_none(), "{headers:?}");

    // Another key is a new message.
    let (status, other) =
        app.post_json("/v1/topics/orders/messages", &json!({ "data": 2, "idempotency_key": "order-18" })).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(other["seq"], json!(2));

    // In a batch: a repeat of an earlier key, a new key twice, and a message without one.
    let batch = json!({ "messages": [
        { "data": "a", "idempotency_key": "order-17" },
        { "data": "b", "idempotency_key": "order-19" },
        { "data": "c" },
        { "data": "d", "idempotency_key": "order-19" },
    ] });
    let (status, answer) = app.post_json("/v1/topics/orders/messages:batch", &batch).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["results"].as_array().expect("results");
    let shape: Vec<(bool, u64)> =
        results.iter().map(|r| (r["duplicate"].as_bool().expect("bool"), r["seq"].as_u64().expect("seq"))).collect();
    assert_eq!(shape, vec![(true, 1), (false, 3), (false, 4), (true, 3)], "{answer}");
    assert_eq!(results[0]["id"], first["id"], "a repeat answers the first message's id");
    assert_eq!(results[3]["id"], results[1]["id"]);
    assert_ne!(results[2]["id"], results[1]["id"]);
    assert!(results.iter().all(|r| r["epoch"] == first["epoch"]), "{answer}");

    let history = app.history_all("orders", 0).await;
    assert_eq!(history.len(), 4, "the repeats added nothing: {history:?}");
    assert_eq!(history[0]["data"], json!("once"));
    assert_eq!(history[2]["id"], results[1]["id"]);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_is_stored_atomically_with_consecutive_seqs_in_order() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    app.publish("b", json!("before")).await;
    let batch = json!({ "messages": [
        { "data": 1 },
        { "data": 2, "idempotency_key": "k" },
        { "data": 3, "headers": { "kind": "x" }, "ttl_ms": 5000 },
        { "data": "dup", "idempotency_key": "k" },
    ]});
    let (status, body) = app.post_json("/v1/topics/b/messages:batch", &batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    let seqs: Vec<u64> = results.iter().map(|r| r["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, vec![2, 3, 4, 3], "consecutive seqs; the in-batch duplicate answers the earlier one");
    assert_eq!(results[3]["duplicate"], json!(true));
    assert_eq!(results[3]["id"], results[1]["id"]);

    let history = app.history_all("b", 1).await;
    assert_eq!(history.len(), 3);
    assert_eq!(history[2]["headers"]["kind"], json!("x"));
    assert_eq!(history[2]["ttl_ms"], json!(5000));

    // One invalid message refuses the whole batch and names it; nothing is stored.
    let bad = json!({ "messages": [ { "data": 1 }, { "data": 2, "headers": { "bad name": "v" } } ] });
    let (status, body) = app.post_json("/v1/topics/b/messages:batch", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "invalid_header");
    assert_eq!(body["error"]["index"], json!(1));
    let (_, topic) = app.get("/v1/topics/b").await;
    assert_eq!(topic["seq"], json!(4));
    app.stop().await;
}

#[tokio::test]
async fn a_raw_body_keeps_its_bytes_content_type_and_headers() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let bytes: Vec<u8> = (0..=255u8).collect();
    let response = app
        .http
        .post(app.url("/v1/topics/raw/messages"))
        .header("content-type", "application/octet-stream")
        .header("x-streamhub-header-trace", "abc")
        .header("x-streamhub-ttl-ms", "60000")
        .body(bytes.clone())
        .send()
        .await
        .expect("raw publish");
    assert_eq!(response.status(), StatusCode::CREATED);
    let history = app.history_all("raw", 0).await;
    let m = &history[0];
    assert_eq!(m["content_type"], json!("application/octet-stream"));
    assert_eq!(m["headers"]["trace"], json!("abc"));
    assert_eq!(m["ttl_ms"], json!(60000));
    use base64::Engine;
    let stored =
        base64::engine::general_purpose::STANDARD.decode(m["data_base64"].as_str().expect("b64")).expect("base64");
    assert_eq!(stored, bytes);
    app.stop().await;
}

/// Every message names its publisher as streamhub authenticated it (PROTOCOL 1.3 `from`):
/// the credential's subject, plus the client id for a WebSocket session; nothing for an
/// anonymous HTTP publish; and a client cannot claim to be someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_name_their_publisher_as_authenticated() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    // 1: HTTP with the admin key; 2: anonymous HTTP.
    let (status, _) = app.publish("who", json!("key")).await;
    assert_eq!(status, StatusCode::CREATED);
    let anonymous = reqwest::Client::new();
    let response = anonymous.post(app.url("/v1/topics/who/messages")).json(&json!({ "data": "anon" })).send().await;
    assert_eq!(response.expect("publish").status(), StatusCode::CREATED);
    // 3: a WebSocket session with the key; 4: an anonymous one.
    let mut keyed = common::WsClient::connect(&format!("{}?token={}", app.base, common::ADMIN_KEY)).await;
    let published = keyed.request(json!({ "op": "publish", "topic": "who", "data": "ws" })).await;
    assert_eq!(published["type"], json!("published"), "{published}");
    let mut anon_ws = common::WsClient::connect(&app.base).await;
    anon_ws.request(json!({ "op": "publish", "topic": "who", "data": "ws-anon" })).await;
    // A request naming its own publisher is refused, not believed.
    let (status, body) =
        app.post_json("/v1/topics/who/messages", &json!({ "data": 1, "from": { "user": "root" } })).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");
    let spoof = keyed.request(json!({ "op": "publish", "topic": "who", "data": 1, "from": { "user": "root" } })).await;

    let history = app.history_all("who", 0).await;
    let from: Vec<Value> = history.iter().map(|m| m["from"].clone()).collect();
    assert_eq!(from[0], json!({ "user": "test-admin" }), "HTTP: the key's name, no client");
    assert_eq!(from[1], Value::Null, "anonymous HTTP: no publisher");
    let client = from[2]["client"].as_str().expect("a WebSocket publish names its client").to_string();
    assert_eq!(from[2]["user"], json!("test-admin"));
    assert_eq!(from[3]["user"], json!(""), "an anonymous session: no user, its client id");
    assert_ne!(from[3]["client"].as_str().unwrap_or(""), client, "each session has its own id");
    // A WebSocket frame's unknown fields are ignored (2.2): the message is the key's.
    assert_eq!(spoof["type"], json!("published"), "{spoof}");
    assert_eq!(history.len(), 5);
    assert_eq!(from[4]["user"], json!("test-admin"), "never the claimed publisher");
    // Live delivery carries it too.
    keyed.subscribe("who", Some(json!("earliest"))).await;
    let first = keyed.messages(1).await;
    assert_eq!(first[0]["from"], json!({ "user": "test-admin" }));
    app.stop().await;
}

/// Node's own HTTP/2 client (a third-party implementation): one h2c session (prior
/// knowledge, no TLS) that publishes to `topic` and then reads its history on the same
/// connection; prints one JSON line with both answers and the session's stream count.
const NODE_H2C: &str = r#"
const http2 = require('node:http2');
const [base, topic] = process.argv.slice(1);
const session = http2.connect(base);
session.on('error', (e) => { console.error(String(e)); process.exit(1); });
function call(method, path, body) {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':method': method, ':path': path, 'content-type': 'application/json' });
    let data = '';
    req.setEncoding('utf8');
    req.on('response', (h) => { req.status = h[':status']; });
    req.on('data', (c) => { data += c; });
    req.on('end', () => resolve({ status: req.status, body: JSON.parse(data) }));
    req.on('error', reject);
    req.end(body);
  });
}
(async () => {
  const published = await call('POST', `/v1/topics/${topic}/messages`, JSON.stringify({ data: 'over h2c' }));
  const history = await call('GET', `/v1/topics/${topic}/messages?since=0`);
  console.log(JSON.stringify({ published, history, alpn: session.alpnProtocol }));
  session.close();
})().catch((e) => { console.error(String(e)); process.exit(1); });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_http2_without_tls_and_keeps_http1_connections_alive() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let base = app.base.clone();
    let history = app.url("/v1/topics/h2/messages?since=0");
    let (h2, h1) = tokio::task::spawn_blocking(move || {
        let h2 = std::process::Command::new("node").args(["-e", NODE_H2C, &base, "h2"]).output().expect("run node");
        assert!(h2.status.success(), "node's h2c client: {}", String::from_utf8_lossy(&h2.stderr));
        // HTTP/1.1 (curl): two requests, the second on the first one's connection.
        let h1 = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--http1.1", "-o", "/dev/null", "-o", "/dev/null"])
            .args(["-w", "%{http_version} %{response_code} %{num_connects}\n", &history, &history])
            .output()
            .expect("run curl");
        assert!(h1.status.success(), "curl: {}", String::from_utf8_lossy(&h1.stderr));
        (String::from_utf8_lossy(&h2.stdout).into_owned(), String::from_utf8_lossy(&h1.stdout).into_owned())
    })
    .await
    .expect("client task");
    let h2: Value = serde_json::from_str(h2.trim()).expect("node printed JSON");
    assert_eq!(h2["alpn"], "h2c", "the session is HTTP/2 without TLS");
    assert_eq!(h2["published"]["status"], 201, "{h2}");
    let seq = h2["published"]["body"]["seq"].as_u64().expect("seq");
    assert_eq!(h2["history"]["status"], 200, "{h2}");
    let messages = h2["history"]["body"]["messages"].as_array().expect("messages");
    assert_eq!(
        (messages.len(), messages[0]["seq"].as_u64(), messages[0]["data"].as_str()),
        (1, Some(seq), Some("over h2c"))
    );
    assert_eq!(h1.lines().collect::<Vec<_>>(), vec!["1.1 200 1", "1.1 200 0"], "HTTP/1.1 keeps the connection alive");
}

/// JSON data is stored as the compact text of what was sent: whitespace between tokens
/// dropped, key order, number forms and escapes kept (no parse into a tree and back).
#[tokio::test]
async fn json_data_is_stored_as_the_compact_text_sent() {
    let redis = common::RedisServer::start();
    let app = TestApp::start(&redis).await;
    let body = "{ \"data\" : { \"b\" : 1 , \"a\" : [ 1e2 , \"two  words\", \"\\u00e9\", 12345678901234567890123 ] } }";
    let response = app
        .http
        .post(app.url("/v1/topics/compact/messages"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    // The stored envelope holds the payload's bytes verbatim (history re-encodes `data`).
    let entries = redis.cli(&["XRANGE", &format!("{}:{{compact}}:s", app.prefix()), "-", "+"]).stdout;
    let stored = r#"{"b":1,"a":[1e2,"two  words","\u00e9",12345678901234567890123]}"#;
    assert!(entries.windows(stored.len()).any(|w| w == stored.as_bytes()), "{}", String::from_utf8_lossy(&entries));
    app.stop().await;
}
