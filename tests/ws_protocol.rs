//! The WebSocket protocol: ops and replies, both encodings, and every documented error
//! and close code — with other clients unaffected (G7).

mod common;

use common::{seq, TestApp, TestRedis, WsClient};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn ping_publish_subscribe_unsubscribe_round_trip() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let mut ws = WsClient::connect(&app.base).await;
    assert_eq!(ws.request(json!({ "op": "ping" })).await["type"], json!("pong"));

    let sub = ws.subscribe("chat", None).await;
    assert_eq!((sub["recovered"].clone(), sub["seq"].clone()), (json!(true), json!(0)));
    let ack = ws
        .request(json!({ "op": "publish", "topic": "chat", "data": { "text": "hi" }, "headers": { "k": "v" }, "idempotency_key": "m1" }))
        .await;
    assert_eq!(ack["type"], json!("published"), "{ack}");
    assert_eq!((ack["seq"].clone(), ack["duplicate"].clone()), (json!(1), json!(false)));
    // G1: acknowledged means stored.
    let history = app.history_all("chat", 0).await;
    assert_eq!(history[0]["id"], ack["message_id"]);

    let m = ws.messages(1).await;
    assert_eq!(m[0]["data"], json!({ "text": "hi" }));
    assert_eq!(m[0]["headers"], json!({ "k": "v" }));
    assert_eq!(
        (m[0]["topic"].clone(), m[0]["epoch"].clone(), m[0]["id"].clone()),
        (json!("chat"), ack["epoch"].clone(), ack["message_id"].clone())
    );

    let dup = ws.request(json!({ "op": "publish", "topic": "chat", "data": "again", "idempotency_key": "m1" })).await;
    assert_eq!((dup["seq"].clone(), dup["duplicate"].clone()), (json!(1), json!(true)));

    let unsub = ws.request(json!({ "op": "unsubscribe", "topic": "chat" })).await;
    assert_eq!(unsub["type"], json!("unsubscribed"));
    let again = ws.request(json!({ "op": "unsubscribe", "topic": "chat" })).await;
    assert_eq!(again["code"], json!("not_subscribed"));
    // Many topics per connection.
    for t in ["a", "b", "c"] {
        ws.subscribe(t, None).await;
    }
    app.publish("b", json!("to b")).await;
    let m = ws.messages(1).await;
    assert_eq!(m[0]["topic"], json!("b"));
    app.stop().await;
}

#[tokio::test]
async fn msgpack_subprotocol_speaks_the_same_frames() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let mut ws = WsClient::connect_with(&app.base, Some("streamhub.v1.msgpack")).await.expect("connect");
    let sub = ws.subscribe("bin", None).await;
    assert_eq!(sub["epoch"], json!(""));
    let ack = ws.request(json!({ "op": "publish", "topic": "bin", "data": [1, 2, 3] })).await;
    assert_eq!(ack["seq"], json!(1));
    let m = ws.messages(1).await;
    assert_eq!((m[0]["data"].clone(), seq(&m[0])), (json!([1, 2, 3]), 1));
    app.stop().await;
}

#[tokio::test]
async fn bad_frames_get_error_codes_and_the_connection_stays_usable() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let mut other = WsClient::connect(&app.base).await;
    other.subscribe("calm", None).await;

    let mut ws = WsClient::connect(&app.base).await;
    ws.send_raw(Message::Text("{not json".into())).await;
    assert_eq!(ws.next_frame().await["code"], json!("invalid_frame"));
    let cases = [
        (json!({ "op": "dance" }), "unknown_op"),
        (json!({ "op": "subscribe" }), "invalid_request"),
        (json!({ "op": "subscribe", "topic": "a{b" }), "invalid_topic"),
        (json!({ "op": "subscribe", "topic": "x", "since": "yesterday" }), "invalid_request"),
        (json!({ "op": "publish", "topic": "x", "data": 1, "ttl_ms": 0 }), "invalid_request"),
        (json!({ "op": "publish", "topic": "x", "data": 1, "headers": { "bad name": "v" } }), "invalid_header"),
    ];
    for (frame, code) in cases {
        let reply = ws.request(frame.clone()).await;
        assert_eq!((reply["type"].clone(), reply["code"].clone()), (json!("error"), json!(code)), "{frame}");
    }
    // Still usable, and the other client never noticed.
    assert_eq!(ws.request(json!({ "op": "ping" })).await["type"], json!("pong"));
    app.publish("calm", json!("fine")).await;
    assert_eq!(seq(&other.messages(1).await[0]), 1);
    app.stop().await;
}

#[tokio::test]
async fn limits_have_their_documented_outcomes() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.ws.max_subscriptions = 2;
        c.ws.max_violations = 3;
        c.ws.max_frame_bytes = 4096;
        c.ws.max_connections = 3;
    })
    .await;
    // Too many subscriptions: an error, the connection stays.
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("s1", None).await;
    ws.subscribe("s2", None).await;
    let reply = ws.request(json!({ "op": "subscribe", "topic": "s3" })).await;
    assert_eq!(reply["code"], json!("too_many_subscriptions"));
    let reply = ws.request(json!({ "op": "subscribe", "topic": "s1" })).await;
    assert_eq!(reply["code"], json!("already_subscribed"));

    // A frame far larger than the read buffer (ws.read_buffer_bytes, 1 KiB by default) and
    // just under ws.max_frame_bytes is read in several calls and handled whole.
    assert_eq!(app.config.ws.read_buffer_bytes, 1024);
    let data = "z".repeat(3900);
    let reply = ws.request(json!({ "op": "publish", "topic": "s1", "data": data })).await;
    assert_eq!(reply["type"], json!("published"), "{reply}");
    let delivered = ws.messages(1).await;
    assert_eq!(delivered[0]["data"], json!(data));

    // Oversized inbound message: close 1009.
    let mut big = WsClient::connect(&app.base).await;
    big.send_raw(Message::Text(json!({ "op": "publish", "topic": "x", "data": "y".repeat(5000) }).to_string().into()))
        .await;
    assert_eq!(big.close_code().await, Some(1009));

    // Repeated violations: close 4000.
    let mut rude = WsClient::connect(&app.base).await;
    for _ in 0..3 {
        rude.send_raw(Message::Text("nope".into())).await;
    }
    assert_eq!(rude.close_code().await, Some(4000));
    // Completing the closing handshake frees their sessions at once.
    big.close().await;
    rude.close().await;

    // Connection limit: ws (1) + 2 closed ones freed their permits; fill up to 3, then 503.
    let deadline = std::time::Instant::now() + common::READY_TIMEOUT;
    while app.server.session_count() != 1 {
        assert!(std::time::Instant::now() < deadline, "closed sessions never released their permits");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _b = WsClient::connect(&app.base).await;
    let _c = WsClient::connect(&app.base).await;
    let refused = WsClient::connect_with(&app.base, None).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a fourth session was accepted"),
    }
    assert_eq!(ws.request(json!({ "op": "ping" })).await["type"], json!("pong"), "existing sessions unaffected");
    app.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_with_4001_and_shutdown_sends_1001() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| {
        c.ws.ping_interval_ms = 100;
        c.ws.idle_timeout_ms = 400;
    })
    .await;
    // This client does not read, so it never answers the server's pings.
    let mut silent = WsClient::connect(&app.base).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(silent.close_code().await, Some(4001));

    // A reading client answers pings and stays open until the server shuts down.
    let mut alive = WsClient::connect(&app.base).await;
    alive.subscribe("x", None).await;
    let reader = tokio::spawn(async move { alive.close_code().await });
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(!reader.is_finished(), "a responsive client is not closed");
    app.stop().await;
    assert_eq!(reader.await.expect("reader"), Some(1001));
}

/// The socket's edge (`gateway/ws_socket.rs`): the client's ping is answered with a pong
/// carrying its payload, in order with the replies; its close frame is answered with the
/// same code, and the connection ends; upgrades that are not valid are refused with what is
/// missing; the subprotocol is the server's first choice among those offered.
#[tokio::test]
async fn pings_and_closes_are_answered_and_bad_upgrades_say_why() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let url = format!("{}/v1/ws", app.base.replacen("http://", "ws://", 1));
    let mut request = url.as_str().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "other, streamhub.v1.msgpack, streamhub.v1.json".parse().expect("header"));
    let (mut ws, answer) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
    assert_eq!(answer.headers()["sec-websocket-protocol"], "streamhub.v1.json");
    ws.send(Message::Text(json!({ "op": "subscribe", "topic": "edge", "id": 1 }).to_string().into()))
        .await
        .expect("send");
    ws.send(Message::Ping(b"probe".to_vec().into())).await.expect("ping");
    ws.send(Message::Text(json!({ "op": "ping", "id": 2 }).to_string().into())).await.expect("send");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match next(&mut ws).await {
            Some(Ok(Message::Text(t))) => {
                seen.push(serde_json::from_str::<serde_json::Value>(&t).expect("json")["type"].clone())
            }
            Some(Ok(Message::Pong(p))) => seen.push(json!(String::from_utf8(p.to_vec()).expect("utf-8"))),
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec![json!("subscribed"), json!("probe"), json!("pong")]);
    // Messages keep flowing until the client closes; the close is answered with its code.
    app.publish("edge", json!("before the close")).await;
    match next(&mut ws).await {
        Some(Ok(Message::Text(t))) => assert!(t.contains("before the close"), "{t}"),
        other => panic!("unexpected {other:?}"),
    }
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::from(4321), reason: "bye".into() })))
        .await
        .expect("close");
    match next(&mut ws).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4321),
        other => panic!("no close reply: {other:?}"),
    }
    assert!(matches!(next(&mut ws).await, None | Some(Err(_))), "nothing after the close reply");

    // Upgrades that are not valid.
    let client = reqwest::Client::new();
    let head = client.head(app.url("/v1/ws")).header("connection", "upgrade").header("upgrade", "websocket");
    assert_eq!(head.send().await.expect("answer").status().as_u16(), 405);
    // (request headers, status, code, what the message names)
    type Case<'a> = (&'a [(&'a str, &'a str)], u16, &'a str, &'a str);
    let cases: [Case; 5] = [
        (&[], 400, "invalid_request", "Connection"),
        (
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            426,
            "unsupported_websocket_version",
            "Sec-WebSocket-Version",
        ),
        (
            &[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket"), ("sec-websocket-version", "12")],
            426,
            "unsupported_websocket_version",
            "Sec-WebSocket-Version",
        ),
        (
            &[("connection", "upgrade"), ("upgrade", "websocket"), ("sec-websocket-version", "13")],
            400,
            "invalid_request",
            "Sec-WebSocket-Key",
        ),
        (
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "c2hvcnQ="),
            ],
            400,
            "invalid_request",
            "Sec-WebSocket-Key",
        ),
    ];
    for (headers, want_status, want_code, names) in cases {
        let mut request = client.get(app.url("/v1/ws"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let answer = request.send().await.expect("answer");
        // A version refusal names the version this server speaks (RFC 6455 §4.4).
        let version = answer.headers().get("sec-websocket-version").map(|v| v.as_bytes().to_vec());
        assert_eq!(version.as_deref(), (want_status == 426).then_some(&b"13"[..]), "{headers:?}");
        let (status, body) = common::decode(answer).await;
        assert_eq!((status.as_u16(), common::code(&body)), (want_status, want_code), "{headers:?}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(names)), "{headers:?}: {body}");
    }
    app.stop().await;
}

type Raw = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next message of a raw client (pongs and closes included), within the frame timeout.
async fn next(ws: &mut Raw) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    use futures::StreamExt;
    tokio::time::timeout(common::FRAME_TIMEOUT, ws.next()).await.expect("a frame in time")
}

/// A session whose reader is in the middle of an op (a publish waiting on a Redis that
/// does not answer) still closes with 1001 as soon as the node shuts down: the reader
/// tells its writer at once, before the op's reply (`ws_session::Beat::during`).
#[tokio::test]
async fn a_shutdown_closes_a_session_whose_op_waits_on_redis() {
    if common::skip_unless_standalone("pauses its own Redis") {
        return;
    }
    let redis = common::RedisServer::start();
    let app = TestApp::start(&redis).await;
    let mut busy = WsClient::connect(&app.base).await;
    assert_eq!(busy.request(json!({ "op": "ping" })).await["type"], json!("pong"));
    redis.pause();
    busy.send(&json!({ "op": "publish", "topic": "stuck", "data": "waits", "id": 99 })).await;
    // No signal tells that the server has read the frame: give it a moment on loopback
    // (the op then waits up to redis.command_timeout_ms, 1 s here).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stopping = tokio::spawn(app.stop());
    let first = busy.next_frame().await;
    assert_eq!((first["type"].clone(), first["code"].clone()), (json!("close"), json!(1001)), "{first}");
    redis.resume();
    stopping.await.expect("the node stops");
}

/// A message far over `ws.max_frame_bytes` still gets its close code 1009 while most of
/// it is on its way: the server reads and drops the rest while it waits for the close
/// handshake (`Link::finish`), so the client is not reset before it reads the close frame.
#[tokio::test]
async fn a_message_far_over_the_limit_still_gets_1009() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| c.ws.max_frame_bytes = 4096).await;
    for kind in [Message::Binary(vec![0x91; 4 << 20].into()), Message::Text("x".repeat(4 << 20).into())] {
        let mut huge = WsClient::connect(&app.base).await;
        huge.send_raw(kind).await;
        assert_eq!(huge.close_code().await, Some(1009));
        huge.close().await;
    }
    app.stop().await;
}
