//! The Centrifugo protocol with Centrifugo's own clients, unchanged: centrifuge-js 5.8.0
//! (JSON and Protobuf builds, in Node with the `ws` package) against two streamhub nodes
//! on one Redis, and the Python `cent` package against the server API. The specs are in
//! tests/centrifugo/ (each prints `ok <step>` per step and `N passed, M failed`); this
//! file starts Redis and the nodes, runs them, and checks their steps. Bad input on the
//! endpoint is tested here directly with a raw WebSocket client.
//!
//! scripts/test.sh installs what this needs: Node.js, the pinned npm packages (`npm ci` in
//! tests/centrifugo) and the pinned Python packages (a venv in target/centrifugo-venv).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{RedisServer, TestApp, ADMIN_KEY};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use streamhub::config::{ApiKeySpec, Config, HsKey, RetentionRule, Scope};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "centrifugo-test-secret-0123456789abcdef";
const KID: &str = "cf";
/// A key for `cent`: publish, subscribe and presence on the test channels, no admin.
const PUBLISHER_KEY: &str = "centrifugo-publisher-key";
const SPEC_TIMEOUT: Duration = Duration::from_secs(240);

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/centrifugo")
}

/// A node for the specs: JWTs signed with `SECRET`, presence on `room.*` with a short
/// grace, `trim.*` kept short, pings every second.
fn configure(c: &mut Config, prefix: &str) {
    c.redis.prefix = prefix.to_string();
    c.auth.hs256.push(HsKey { kid: KID.into(), secret: SECRET.into() });
    c.auth.anonymous.clear();
    c.auth.api_key.push(ApiKeySpec {
        name: "cent".into(),
        sha256: streamhub::auth::hash_api_key(PUBLISHER_KEY),
        scopes: vec![Scope::Publish, Scope::Subscribe, Scope::Presence],
        topics: vec!["cf.*".into(), "room.*".into()],
    });
    c.presence.topics = vec!["room.*".into()];
    c.presence.grace_ms = 300;
    c.presence.refresh_ms = 1000;
    c.presence.ttl_ms = 5000;
    c.retention.topics.push(RetentionRule {
        pattern: "trim.*".into(),
        max_len: Some(20),
        max_age_ms: None,
        default_ttl_ms: None,
    });
    c.centrifugo.ping_interval_ms = 1000;
    c.centrifugo.pong_timeout_ms = 3000;
    // Short, so the refresh tests show a connection that was not refreshed would be gone.
    c.centrifugo.refresh_grace_ms = 1000;
}

async fn two_nodes(redis: &RedisServer) -> (TestApp, TestApp, String) {
    let prefix = common::unique_prefix();
    let a = TestApp::start_with(redis, |c| configure(c, &prefix)).await;
    let b = TestApp::start_with(redis, |c| configure(c, &prefix)).await;
    (a, b, prefix)
}

/// Runs a spec program with `env`; asserts every step passed and returns its output.
async fn run_spec(program: &str, args: &[PathBuf], env: &[(&str, String)], steps: usize) -> String {
    let mut command = tokio::process::Command::new(program);
    command.args(args).current_dir(dir()).kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(SPEC_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not finish within {SPEC_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    println!("--- {args:?} ---\n{stdout}--- stderr ---\n{stderr}");
    assert!(output.status.success(), "{args:?} failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(last, format!("{steps} passed, 0 failed"), "{args:?}:\n{stdout}");
    stdout
}

async fn centrifuge_js(format: &str) {
    assert!(
        dir().join("node_modules/centrifuge/package.json").is_file(),
        "centrifuge-js is not installed: run `npm ci` in tests/centrifugo (scripts/test.sh does it)"
    );
    let redis = RedisServer::start();
    let (a, b, prefix) = two_nodes(&redis).await;
    let env = [
        ("FORMAT", format.to_string()),
        ("NODE_A", a.base.clone()),
        ("NODE_B", b.base.clone()),
        ("PREFIX", prefix),
        ("REDIS_PORT", redis.addr().port().to_string()),
        ("ADMIN_KEY", ADMIN_KEY.to_string()),
        ("JWT_SECRET", SECRET.to_string()),
        ("JWT_KID", KID.to_string()),
    ];
    let out = run_spec("node", &[dir().join("client.mjs")], &env, 16).await;
    assert!(out.contains("ok disconnect, 1,000 published, reconnect: recovered and wasRecovering"), "{out}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_json_recovers_exactly_across_two_nodes() {
    centrifuge_js("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_protobuf_recovers_exactly_across_two_nodes() {
    centrifuge_js("protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cent_publishes_through_the_server_api() {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/centrifugo-venv/bin/python");
    assert!(
        python.is_file(),
        "the cent venv is missing: python3 -m venv target/centrifugo-venv && target/centrifugo-venv/bin/pip install -r tests/centrifugo/requirements.txt (scripts/test.sh does it)"
    );
    let redis = RedisServer::start();
    let (a, b, _) = two_nodes(&redis).await;
    let env = [
        ("NODE", a.base.clone()),
        ("API_KEY", PUBLISHER_KEY.to_string()),
        ("ADMIN_KEY", ADMIN_KEY.to_string()),
        ("TOPIC", "cf.cent".to_string()),
    ];
    run_spec(python.to_str().unwrap_or("python3"), &[dir().join("cent_client.py")], &env, 8).await;
    // What cent published is streamhub's history, on the other node too.
    assert_eq!(b.history_all("cf.cent", 0).await.len(), 6);
    a.stop().await;
    b.stop().await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(app: &TestApp) -> Ws {
    let url = format!("{}/connection/websocket", app.base.replacen("http://", "ws://", 1));
    tokio_tungstenite::connect_async(url).await.expect("upgrade").0
}

/// The close code the server ends the connection with (None: closed without one).
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(common::FRAME_TIMEOUT, ws.next()).await.expect("the server closes") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(common::FRAME_TIMEOUT, ws.next()).await.expect("a frame") {
            Some(Ok(Message::Text(t))) if t.as_str() != "{}" => return serde_json::from_str(&t).expect("json"),
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A JWT of `sub` expiring at `exp` (Unix seconds), granting the `cf.*` channels.
fn token_until(sub: &str, exp: u64) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(KID.into());
    let claims = json!({ "sub": sub, "exp": exp, "streamhub": { "subscribe": ["cf.*"], "publish": ["cf.*"] } });
    encode(&header, &claims, &EncodingKey::from_secret(SECRET.as_bytes()).expect("hmac key")).expect("sign")
}

fn token(sub: &str, ttl_secs: u64) -> String {
    token_until(sub, streamhub::clock::now_ms() / 1000 + ttl_secs)
}

/// Bad input gets the protocol's answers — an error reply for a bad command, a close code
/// for a frame that cannot be read or a protocol broken — and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_protocols_errors_and_the_node_keeps_serving() {
    let redis = RedisServer::start();
    let prefix = common::unique_prefix();
    let app = TestApp::start_with(&redis, |c| {
        configure(c, &prefix);
        c.ws.max_violations = 3;
    })
    .await;
    let t = token("alice", 3600);
    // Garbage: 3501 bad request.
    for junk in ["not json", "{\"connect\":{},\"id\":1}\n[", "", "{\"id\":-5}"] {
        let mut ws = raw(&app).await;
        ws.send(Message::Text(junk.into())).await.expect("send");
        assert_eq!(close_code(&mut ws).await, Some(3501), "{junk:?}");
    }
    let mut ws = raw(&app).await;
    ws.send(Message::Binary(vec![0xff, 0xff, 0xff].into())).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(3501), "undecodable binary");
    // A command before connect, and a second connect: 3501.
    let mut ws = raw(&app).await;
    ws.send(Message::Text(r#"{"subscribe":{"channel":"cf.x"},"id":1}"#.into())).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(3501));
    let mut ws = raw(&app).await;
    let connect = json!({ "id": 1, "connect": { "token": t } }).to_string();
    ws.send(Message::Text(format!("{connect}\n{connect}").into())).await.expect("send");
    assert!(next_json(&mut ws).await["connect"]["client"].is_string());
    assert_eq!(close_code(&mut ws).await, Some(3501), "a second connect");
    // An invalid token: 3500 (no reconnect); an expired one: error 109 (refresh and retry).
    let mut ws = raw(&app).await;
    ws.send(Message::Text(r#"{"id":1,"connect":{"token":"a.b.c"}}"#.into())).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(3500));
    let mut ws = raw(&app).await;
    let expired = token_until("alice", streamhub::clock::now_ms() / 1000 - 60);
    ws.send(Message::Text(json!({ "id": 1, "connect": { "token": expired } }).to_string().into())).await.expect("send");
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "id": 1, "error": { "code": 109, "message": "the token has expired" } })
    );
    // No token and no anonymous grants: 101.
    let mut ws = raw(&app).await;
    ws.send(Message::Text(r#"{"id":1,"connect":{}}"#.into())).await.expect("send");
    assert_eq!(next_json(&mut ws).await["error"]["code"], 101);
    // Errors of commands are replies; enough of them end the connection (ws.max_violations).
    let mut ws = raw(&app).await;
    ws.send(Message::Text(json!({ "id": 1, "connect": { "token": t } }).to_string().into())).await.expect("send");
    next_json(&mut ws).await;
    let bad = [
        (json!({ "id": 2, "subscribe": { "channel": "cf.bad name" } }), 102),
        (json!({ "id": 3, "subscribe": { "channel": "secret.x" } }), 103),
        (
            json!({ "id": 4, "publish": { "channel": "cf.x", "data": "x".repeat(app.config.limits.max_payload_bytes) } }),
            107,
        ),
    ];
    for (frame, code) in &bad {
        ws.send(Message::Text(frame.to_string().into())).await.expect("send");
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["error"]["code"], *code, "{reply}");
    }
    assert_eq!(close_code(&mut ws).await, Some(3509), "too many errors");
    // A frame over ws.max_frame_bytes: 1009.
    let mut ws = raw(&app).await;
    ws.send(Message::Text("x".repeat(app.config.ws.max_frame_bytes + 1).into())).await.ok();
    assert_eq!(close_code(&mut ws).await, Some(1009));
    // No connect within auth.auth_timeout_ms: 3502 stale.
    // (Covered by its own config in `a_connection_that_never_connects_is_stale`.)
    // The node still serves: a full round trip.
    let mut ws = raw(&app).await;
    let frame = format!(
        "{}\n{}",
        json!({ "id": 1, "connect": { "token": t } }),
        json!({ "id": 2, "subscribe": { "channel": "cf.ok" } })
    );
    ws.send(Message::Text(frame.into())).await.expect("send");
    assert!(next_json(&mut ws).await["connect"].is_object());
    let subscribed = next_json(&mut ws).await;
    assert_eq!(subscribed["id"], 2);
    assert_eq!(subscribed["subscribe"]["recoverable"], true, "{subscribed}");
    app.publish("cf.ok", json!({ "n": 1 })).await;
    let push = next_json(&mut ws).await;
    assert_eq!(push["push"]["channel"], "cf.ok");
    assert_eq!(push["push"]["pub"]["data"], json!({ "n": 1 }));
    assert_eq!(push["push"]["pub"]["offset"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_connects_is_stale_and_one_that_never_pongs_is_closed() {
    let redis = RedisServer::start();
    let prefix = common::unique_prefix();
    let app = TestApp::start_with(&redis, |c| {
        configure(c, &prefix);
        c.auth.auth_timeout_ms = 300;
        c.centrifugo.pong_timeout_ms = 500;
    })
    .await;
    let mut ws = raw(&app).await;
    assert_eq!(close_code(&mut ws).await, Some(3502), "no connect in time");
    // Connected, then silent: pings come every second; without pongs the server closes.
    let mut ws = raw(&app).await;
    ws.send(Message::Text(json!({ "id": 1, "connect": { "token": token("alice", 3600) } }).to_string().into()))
        .await
        .expect("send");
    let reply = next_json(&mut ws).await;
    assert_eq!((reply["connect"]["ping"].clone(), reply["connect"]["pong"].clone()), (json!(1), json!(true)));
    let mut pings = 0;
    let code = loop {
        match tokio::time::timeout(common::FRAME_TIMEOUT, ws.next()).await.expect("frames") {
            Some(Ok(Message::Text(t))) if t.as_str() == "{}" => pings += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(3012), "no pong");
    assert!(pings >= 1, "pings came first");
    // A token that expires, never refreshed: closed with 3005 once exp + the refresh
    // grace passed (the connection answers its pings meanwhile).
    let mut ws = raw(&app).await;
    let exp = streamhub::clock::now_ms() / 1000 + 1;
    ws.send(Message::Text(json!({ "id": 1, "connect": { "token": token_until("alice", exp) } }).to_string().into()))
        .await
        .expect("send");
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["connect"]["expires"], true, "{reply}");
    let code = loop {
        match tokio::time::timeout(common::FRAME_TIMEOUT, ws.next()).await.expect("frames") {
            Some(Ok(Message::Text(t))) if t.as_str() == "{}" => {
                ws.send(Message::Text("{}".into())).await.expect("pong")
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(3005), "connection expired");
    assert!(streamhub::clock::now_ms() / 1000 > exp, "not before exp + the grace");
    app.stop().await;
}
