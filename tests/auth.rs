//! Access control: every kind of bad token is refused with the documented answer, grants
//! mean exactly what they say, limits have their documented outcomes, admin endpoints
//! need an admin key, and WebSocket sessions authenticate, refresh and expire.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{code, RedisServer, TestApp, WsClient};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use streamhub::config::{AnonymousRule, ApiKeySpec, Config, HsKey, PublicKey, Scope};

const SECRET: &str = "0123456789abcdef0123456789abcdef-hs256";

fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(name)
}

fn now() -> u64 {
    streamhub::message::now_ms() / 1000
}

/// Locked-down configuration: no anonymous access, three JWT keys, two API keys.
fn secure(c: &mut Config) {
    c.auth.anonymous.clear();
    c.auth.api_key.retain(|k| k.name == "test-admin");
    c.auth.hs256.push(HsKey { kid: "hs".into(), secret: SECRET.into() });
    for (kid, algorithm, file) in
        [("rsa", "RS256", "rsa_public.pem"), ("ec", "ES256", "ec_public.pem"), ("ed", "EdDSA", "ed_public.pem")]
    {
        c.auth.public_key.push(PublicKey { kid: kid.into(), algorithm: algorithm.into(), pem_file: key_file(file) });
    }
    c.auth.audience = "streamhub-tests".into();
    c.auth.personal_topics = vec!["user.{sub}".into()];
    for (name, key) in [("svc-a", "key-a"), ("svc-b", "key-b")] {
        c.auth.api_key.push(ApiKeySpec {
            name: name.into(),
            sha256: streamhub::auth::hash_api_key(key),
            scopes: vec![Scope::Publish, Scope::Subscribe],
            topics: vec!["svc.*".into()],
        });
    }
}

fn claims(sub: &str, exp: i64, extra: Value) -> Value {
    let mut c = json!({ "sub": sub, "exp": exp, "aud": "streamhub-tests", "streamhub": { "subscribe": ["chat.*"], "publish": ["chat.*"] } });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn hs(claims: &Value, kid: &str, secret: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    encode(&header, claims, &EncodingKey::from_secret(secret).expect("hmac key")).expect("sign")
}

fn signed(alg: Algorithm, kid: &str, private: &str, claims: &Value) -> String {
    let pem = std::fs::read(key_file(private)).expect("key");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .expect("private key");
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, claims, &key).expect("sign")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn get_as(app: &TestApp, path: &str, credential: Option<&str>) -> (StatusCode, Value) {
    let client = reqwest::Client::new(); // no default admin key
    let mut request = client.get(app.url(path));
    if let Some(c) = credential {
        request = request.bearer_auth(c);
    }
    common::decode(request.send().await.expect("request")).await
}

async fn publish_as(app: &TestApp, topic: &str, credential: Option<&str>) -> (StatusCode, Value, Option<String>) {
    let client = reqwest::Client::new();
    let mut request = client.post(app.url(&format!("/v1/topics/{topic}/messages"))).json(&json!({ "data": 1 }));
    if let Some(c) = credential {
        request = request.bearer_auth(c);
    }
    let response = request.send().await.expect("request");
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (status, body) = common::decode(response).await;
    (status, body, retry_after)
}

#[tokio::test]
async fn every_bad_token_is_refused_with_the_documented_answer() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, secure).await;
    app.publish("chat.x", json!("seed")).await; // the admin key may publish anywhere
    let t = now() as i64;
    let good = claims("alice", t + 600, json!({}));
    let rsa_public = std::fs::read(key_file("rsa_public.pem")).expect("pem");
    let none_token = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(good.to_string().as_bytes()));
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", hs(&claims("alice", t - 120, json!({})), "hs", SECRET.as_bytes()), "token_expired"),
        (
            "not yet valid",
            hs(&claims("alice", t + 600, json!({ "nbf": t + 300 })), "hs", SECRET.as_bytes()),
            "unauthorized",
        ),
        ("wrong signature", hs(&good, "hs", b"another-secret-another-secret-xx"), "unauthorized"),
        ("unknown kid", hs(&good, "nope", SECRET.as_bytes()), "unauthorized"),
        ("alg none", none_token, "unauthorized"),
        ("HS256 signed with the RSA public key", hs(&good, "rsa", &rsa_public), "unauthorized"),
        (
            "wrong audience",
            hs(&claims("alice", t + 600, json!({ "aud": "someone-else" })), "hs", SECRET.as_bytes()),
            "unauthorized",
        ),
        ("no exp", hs(&json!({ "sub": "alice", "aud": "streamhub-tests" }), "hs", SECRET.as_bytes()), "unauthorized"),
        ("malformed", "not.a.jwt".into(), "unauthorized"),
        ("unknown api key", "no-such-key".into(), "unauthorized"),
    ];
    for (what, token, expected) in &cases {
        let (status, body) = get_as(&app, "/v1/topics/chat.x/messages", Some(token)).await;
        assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, *expected), "HTTP: {what}");
        // WebSocket: refused at the upgrade …
        let url = format!("{}?token={token}", app.base);
        match WsClient::connect_with(&url, None).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "WS upgrade: {what}")
            }
            other => panic!("WS upgrade with {what} was not refused: {:?}", other.is_ok()),
        }
        // … or closed with 4002 when it comes in an auth frame.
        let mut ws = WsClient::connect(&app.base).await;
        ws.send(&json!({ "op": "auth", "id": 1, "token": token })).await;
        let reply = ws.next_frame().await;
        assert_eq!(
            (reply["type"].clone(), reply["code"].clone()),
            (json!("error"), json!(expected)),
            "WS auth: {what}"
        );
        assert_eq!(ws.close_code().await, Some(4002), "WS auth: {what}");
    }
    // The same claims, correctly signed with each kind of key, are accepted.
    for token in [
        hs(&good, "hs", SECRET.as_bytes()),
        signed(Algorithm::RS256, "rsa", "rsa_private.pem", &good),
        signed(Algorithm::ES256, "ec", "ec_private.pem", &good),
        signed(Algorithm::EdDSA, "ed", "ed_private.pem", &good),
    ] {
        let (status, body) = get_as(&app, "/v1/topics/chat.x/messages", Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn grants_mean_exactly_what_they_say() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, secure).await;
    let t = now() as i64;
    let alice = hs(&claims("alice", t + 600, json!({})), "hs", SECRET.as_bytes());
    let bob = hs(&claims("bob", t + 600, json!({})), "hs", SECRET.as_bytes());
    // Personal topics: own yes, other's no — both directions.
    assert_eq!(publish_as(&app, "user.alice", Some(&alice)).await.0, StatusCode::CREATED);
    assert_eq!(publish_as(&app, "user.bob", Some(&bob)).await.0, StatusCode::CREATED);
    let (status, body, _) = publish_as(&app, "user.bob", Some(&alice)).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
    let (status, _) = get_as(&app, "/v1/topics/user.alice/messages", Some(&bob)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(get_as(&app, "/v1/topics/user.alice/messages", Some(&alice)).await.0, StatusCode::OK);
    // Patterns: chat.* grants chat.x, not chatx; nothing grants consume.
    assert_eq!(publish_as(&app, "chat.x", Some(&alice)).await.0, StatusCode::CREATED);
    assert_eq!(publish_as(&app, "chatx", Some(&alice)).await.0, StatusCode::FORBIDDEN);
    // API keys: their topics only.
    assert_eq!(publish_as(&app, "svc.orders", Some("key-a")).await.0, StatusCode::CREATED);
    assert_eq!(publish_as(&app, "chat.x", Some("key-a")).await.0, StatusCode::FORBIDDEN);
    // Anonymous: nothing by default, and told to authenticate.
    let (status, body, _) = publish_as(&app, "chat.x", None).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    // WebSocket: the same grants, resume included.
    let url = format!("{}?token={alice}", app.base);
    let mut ws = WsClient::connect_with(&url, None).await.expect("connect");
    assert_eq!(ws.subscribe("user.alice", None).await["type"], json!("subscribed"));
    let denied = ws.request(json!({ "op": "subscribe", "topic": "user.bob", "since": "earliest" })).await;
    assert_eq!(denied["code"], json!("forbidden"));
    let denied = ws.request(json!({ "op": "publish", "topic": "user.bob", "data": 1 })).await;
    assert_eq!(denied["code"], json!("forbidden"));
    app.stop().await;
}

#[tokio::test]
async fn admin_endpoints_need_an_admin_key() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, secure).await;
    for path in ["/v1/topics", "/v1/topics/x/groups", "/v1/topics/x/groups/g/dlq"] {
        let (status, body) = get_as(&app, path, None).await;
        assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{path}");
        let (status, body) = get_as(&app, path, Some("key-a")).await;
        assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"), "{path}");
    }
    assert_eq!(get_as(&app, "/v1/topics", Some(common::ADMIN_KEY)).await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn rate_limits_refuse_the_n_plus_first_and_spare_others() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| {
        secure(c);
        c.http.publish_rate_per_sec = 3;
        c.http.max_connections_per_ip = 2;
        c.auth
            .anonymous
            .push(AnonymousRule { topics: vec!["open.*".into()], scopes: vec![Scope::Publish, Scope::Subscribe] });
    })
    .await;
    for _ in 0..3 {
        assert_eq!(publish_as(&app, "svc.a", Some("key-a")).await.0, StatusCode::CREATED);
    }
    let (status, body, retry_after) = publish_as(&app, "svc.a", Some("key-a")).await;
    assert_eq!((status, code(&body)), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)), "Retry-After is given");
    // Another credential is not affected.
    assert_eq!(publish_as(&app, "svc.a", Some("key-b")).await.0, StatusCode::CREATED);
    // Nor is a token whose subject is the spent key's name: a key's budget and a
    // subject's are two budgets.
    let token = hs(&claims("svc-a", now() as i64 + 600, json!({})), "hs", SECRET.as_bytes());
    assert_eq!(publish_as(&app, "chat.limits", Some(&token)).await.0, StatusCode::CREATED);

    // Sessions per IP: the third from 127.0.0.1 is refused, 127.0.0.2 is still served.
    let from = |ip: &str| {
        reqwest::Client::builder().local_address(ip.parse::<std::net::IpAddr>().expect("ip")).build().expect("client")
    };
    let events = app.url("/v1/topics/open.x/events");
    let first = from("127.0.0.1").get(&events).send().await.expect("sse");
    let second = from("127.0.0.1").get(&events).send().await.expect("sse");
    assert_eq!((first.status(), second.status()), (StatusCode::OK, StatusCode::OK));
    let third = common::decode(from("127.0.0.1").get(&events).send().await.expect("sse")).await;
    assert_eq!((third.0, code(&third.1)), (StatusCode::TOO_MANY_REQUESTS, "too_many_connections"));
    let other_ip = from("127.0.0.2").get(&events).send().await.expect("sse");
    assert_eq!(other_ip.status(), StatusCode::OK);

    // Anonymous publishes are limited per IP: one abusive IP does not stop another.
    let publish_from = |ip: &'static str| {
        let client = from(ip);
        let url = app.url("/v1/topics/open.x/messages");
        async move { client.post(url).json(&json!({ "data": 1 })).send().await.expect("publish").status() }
    };
    for _ in 0..3 {
        assert_eq!(publish_from("127.0.0.3").await, StatusCode::CREATED);
    }
    assert_eq!(publish_from("127.0.0.3").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(publish_from("127.0.0.4").await, StatusCode::CREATED);
    drop((first, second, other_ip));
    app.stop().await;
}

#[tokio::test]
async fn websocket_sessions_authenticate_refresh_and_expire() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| {
        secure(c);
        c.auth.auth_timeout_ms = 300;
        c.http.ws_origins = vec!["https://app.example".into()];
    })
    .await;
    // Origins outside the allow-list are refused before the upgrade.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("{}/v1/ws", app.base.replacen("http", "ws", 1)).into_client_request().expect("req");
    request.headers_mut().insert("origin", "https://evil.example".parse().expect("h"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a foreign origin was accepted: {}", other.is_ok()),
    }
    let connect = async || {
        let mut request = format!("{}/v1/ws", app.base.replacen("http", "ws", 1)).into_client_request().expect("req");
        request.headers_mut().insert("origin", "https://app.example".parse().expect("h"));
        tokio_tungstenite::connect_async(request).await.expect("connect").0
    };
    // Without credentials and without anonymous grants: authenticate in time or be closed.
    let silent = connect().await;
    let mut silent = common::WsClient::from_stream(silent);
    assert_eq!(silent.close_code().await, Some(4002));

    let t = now() as i64;
    let short = hs(&claims("carol", t + 3, json!({})), "hs", SECRET.as_bytes());
    let long = hs(&claims("carol", t + 600, json!({})), "hs", SECRET.as_bytes());
    let other = hs(&claims("mallory", t + 600, json!({})), "hs", SECRET.as_bytes());
    let mut refreshed = common::WsClient::from_stream(connect().await);
    let mut lapsing = common::WsClient::from_stream(connect().await);
    for ws in [&mut refreshed, &mut lapsing] {
        let reply = ws.request(json!({ "op": "auth", "token": short })).await;
        assert_eq!(
            (reply["type"].clone(), reply["subject"].clone()),
            (json!("authenticated"), json!("carol")),
            "{reply}"
        );
    }
    let reply = refreshed.request(json!({ "op": "auth", "token": other })).await;
    assert_eq!(reply["code"], json!("subject_changed"));
    let reply = refreshed.request(json!({ "op": "auth", "token": long })).await;
    assert_eq!(reply["type"], json!("authenticated"));
    // The un-refreshed session is closed when its token expires; the refreshed one stays.
    assert_eq!(lapsing.close_code().await, Some(4003));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(refreshed.request(json!({ "op": "ping" })).await["type"], json!("pong"));
    app.stop().await;
}

#[tokio::test]
async fn jwks_keys_cors_and_redis_acl_users_work() {
    // A Redis that requires an ACL user.
    let redis = RedisServer::start_with_args(&[
        "--user",
        "default",
        "off",
        "--user",
        "broker",
        "on",
        ">s3cret-pass",
        "~*",
        "&*",
        "+@all",
    ]);
    let app = TestApp::start_with(&redis, |c| {
        secure(c);
        c.redis.url = format!("redis://broker:s3cret-pass@127.0.0.1:{}", redis.port);
        c.auth.jwks_file = Some(key_file("jwks.json"));
        c.http.cors_origins = vec!["https://app.example".into()];
    })
    .await;
    // A token signed with the RSA key published in the JWKS (kid jwks-rsa).
    let t = now() as i64;
    let token = signed(Algorithm::RS256, "jwks-rsa", "rsa_private.pem", &claims("dave", t + 600, json!({})));
    assert_eq!(publish_as(&app, "chat.jwks", Some(&token)).await.0, StatusCode::CREATED, "JWKS key and ACL user work");
    // The same key under another algorithm is refused.
    let confused = hs(&claims("dave", t + 600, json!({})), "jwks-rsa", b"whatever-whatever-whatever-whatev");
    assert_eq!(get_as(&app, "/v1/topics/chat.jwks/messages", Some(&confused)).await.0, StatusCode::UNAUTHORIZED);
    // CORS: the allowed origin gets the header, others do not.
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, app.url("/v1/topics/chat.jwks/messages"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = preflight("https://app.example").await.expect("preflight");
    assert_eq!(
        allowed.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap_or("")),
        Some("https://app.example")
    );
    let vary = allowed.headers().get("vary").map(|v| v.to_str().unwrap_or("").to_string());
    assert!(vary.as_deref().is_some_and(|v| v.contains("origin")), "with CORS on, answers vary by Origin: {vary:?}");
    let refused = preflight("https://evil.example").await.expect("preflight");
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

/// POST `path` as `credential` (none: anonymous) with an empty JSON body.
async fn post_as(app: &TestApp, path: &str, credential: Option<&str>) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let mut request = client.post(app.url(path)).json(&json!({}));
    if let Some(c) = credential {
        request = request.bearer_auth(c);
    }
    common::decode(request.send().await.expect("request")).await
}

#[tokio::test]
async fn every_route_checks_credentials_then_the_grant_then_the_topic_name() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, secure).await;
    let token = hs(&claims("dora", now() as i64 + 600, json!({})), "hs", SECRET.as_bytes());
    let garbage = "not-a-key";
    // A bad topic name with no credentials is 401 (credentials may help), with credentials
    // that lack the scope 403, with credentials that do not verify 401 — never 400 first.
    for path in [
        "/v1/topics/bad%20topic/groups/g1:pause",
        "/v1/topics/bad%20topic/groups/g1:resume",
        "/v1/topics/bad%20topic/groups/g1:fetch",
        "/v1/topics/bad%20topic/groups/g1:ack",
        "/v1/topics/bad%20topic/groups/g1:nack",
        "/v1/topics/bad%20topic/groups/g1/dlq:replay",
        "/v1/topics/bad%20topic/messages",
        "/v1/topics/bad%20topic/messages:batch",
    ] {
        let (status, body) = post_as(&app, path, None).await;
        assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{path} anonymous: {body}");
        let (status, body) = post_as(&app, path, Some(&token)).await;
        assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"), "{path} without the scope: {body}");
        let (status, body) = post_as(&app, path, Some(garbage)).await;
        assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{path} bad key: {body}");
        // With the grant (the admin key has every scope), the name is what is wrong.
        let (status, body) = post_as(&app, path, Some(common::ADMIN_KEY)).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_topic"), "{path} admin: {body}");
    }
    for path in [
        "/v1/topics/bad%20topic",
        "/v1/topics/bad%20topic/messages",
        "/v1/topics/bad%20topic/events",
        "/v1/topics/bad%20topic/groups",
        "/v1/topics/bad%20topic/groups/g1/dlq",
    ] {
        let (status, body) = get_as(&app, path, None).await;
        assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "GET {path}: {body}");
        let (status, body) = get_as(&app, path, Some(common::ADMIN_KEY)).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_topic"), "GET {path} admin: {body}");
    }
    // Over WebSocket: a token without the scope on a bad name is `forbidden`, not `invalid_topic`.
    let mut ws = WsClient::connect(&format!("{}?token={token}", app.base)).await;
    for op in [
        json!({ "op": "subscribe", "topic": "bad topic" }),
        json!({ "op": "publish", "topic": "bad topic", "data": 1 }),
    ] {
        let reply = ws.request(op).await;
        assert_eq!((reply["type"].clone(), reply["code"].clone()), (json!("error"), json!("forbidden")), "{reply}");
    }
    ws.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_that_expires_near_the_end_of_time_keeps_its_session() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, secure).await;
    // A validly signed token with `exp` near 2⁶⁴: the session's expiry cannot be
    // represented; the session must not panic, and simply never expires by it.
    let far = json!({ "sub": "methuselah", "exp": u64::MAX - 1, "aud": "streamhub-tests",
        "streamhub": { "subscribe": ["chat.*"], "publish": ["chat.*"] } });
    let token = hs(&far, "hs", SECRET.as_bytes());
    let mut ws = WsClient::connect(&format!("{}?token={token}", app.base)).await;
    let reply = ws.subscribe("chat.far", None).await;
    assert_eq!(reply["recovered"], json!(true));
    let published = ws.request(json!({ "op": "publish", "topic": "chat.far", "data": "still here" })).await;
    assert_eq!(published["type"], json!("published"), "{published}");
    let message = ws.messages(1).await;
    assert_eq!(message[0]["data"], json!("still here"));
    let refreshed = ws.request(json!({ "op": "auth", "token": token })).await;
    assert_eq!(refreshed["type"], json!("authenticated"), "{refreshed}");
    assert_eq!(ws.request(json!({ "op": "ping" })).await["type"], json!("pong"));
    app.stop().await;
    // The node's shutdown closes the session with its close frame (the session task is alive).
    assert_eq!(ws.close_code().await, Some(1001));
}

#[tokio::test]
async fn a_configured_issuer_is_required_and_slow_requests_time_out() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| {
        secure(c);
        c.auth.issuer = "https://issuer.example".into();
        c.http.request_timeout_ms = 300;
        c.redis.command_timeout_ms = 5000;
    })
    .await;
    let t = now() as i64;
    let without = hs(&claims("erin", t + 600, json!({})), "hs", SECRET.as_bytes());
    let wrong = hs(&claims("erin", t + 600, json!({ "iss": "https://other.example" })), "hs", SECRET.as_bytes());
    let right = hs(&claims("erin", t + 600, json!({ "iss": "https://issuer.example" })), "hs", SECRET.as_bytes());
    assert_eq!(publish_as(&app, "chat.iss", Some(&without)).await.0, StatusCode::UNAUTHORIZED, "iss is required");
    assert_eq!(publish_as(&app, "chat.iss", Some(&wrong)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(publish_as(&app, "chat.iss", Some(&right)).await.0, StatusCode::CREATED);
    // `iss` must equal auth.issuer: an array holding it (which the JWT library would take
    // as a set) is a claim of the wrong type, hence malformed.
    let array = hs(
        &claims("erin", t + 600, json!({ "iss": ["https://issuer.example", "https://other.example"] })),
        "hs",
        SECRET.as_bytes(),
    );
    let (status, body, _) = publish_as(&app, "chat.iss", Some(&array)).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("iss")), "{body}");
    // A hung Redis (SIGSTOP): the request is answered at http.request_timeout_ms.
    redis.pause();
    let (status, body, _) = publish_as(&app, "chat.iss", Some(&right)).await;
    redis.resume();
    assert_eq!((status, code(&body)), (StatusCode::SERVICE_UNAVAILABLE, "request_timeout"));
    app.stop().await;
}

/// The request layer wraps the whole router once: it must still know each route (here, not
/// in tests/observability.rs: that binary asserts exact session gauges, and the metrics
/// recorder is shared by the tests of one process). With
/// `http.request_timeout_ms` at 300 ms, the long-lived routes (SSE, WebSocket, a `:fetch`
/// long poll) outlive it while ordinary requests are bounded by it, and the request
/// metrics name the route template (`unmatched` for a 404).
#[tokio::test]
async fn long_lived_routes_outlive_the_request_timeout_and_metrics_name_each_route() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| {
        c.http.request_timeout_ms = 300;
        c.group.push(common::pull_group("ll", "g"));
    })
    .await;
    common::eventually("the group", common::READY_TIMEOUT, async || {
        app.get("/v1/topics/ll/groups").await.1["groups"][0]["exists"] == json!(true)
    })
    .await;
    let mut sse = app.http.get(app.url("/v1/topics/ll/events")).send().await.expect("sse");
    assert_eq!(sse.status(), reqwest::StatusCode::OK);
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("ll", None).await;

    // A long poll of 800 ms on an empty group answers 200 with nothing, not 503.
    let started = std::time::Instant::now();
    let (status, fetched) = app.post_json("/v1/topics/ll/groups/g:fetch", &json!({ "max": 1, "wait_ms": 800 })).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{fetched}");
    assert!(started.elapsed() >= Duration::from_millis(700), "the fetch waited: {:?}", started.elapsed());
    assert_eq!(fetched["deliveries"], json!([]));

    // The SSE stream and the WebSocket session are still open after it: both get the message.
    assert_eq!(app.publish("ll", json!("after")).await.0, reqwest::StatusCode::CREATED);
    assert_eq!(ws.messages(1).await[0]["data"], json!("after"));
    let mut text = String::new();
    while !text.contains("\"after\"") {
        let chunk = tokio::time::timeout(common::READY_TIMEOUT, sse.chunk()).await.expect("an SSE chunk in time");
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream is open").expect("not ended")));
    }

    assert_eq!(app.get("/v1/no/such/route").await.0, reqwest::StatusCode::NOT_FOUND);
    let text = app.metrics().await;
    let count = |labels: &str| {
        let series = format!("streamhub_http_requests_total{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    assert!(count(r#"route="/v1/topics/{topic}/groups/{action}",method="POST",status="200""#) >= 1.0, "{text}");
    assert!(count(r#"route="/v1/topics/{topic}/events",method="GET",status="200""#) >= 1.0, "{text}");
    assert!(count(r#"route="/v1/ws",method="GET",status="101""#) >= 1.0, "{text}");
    assert!(count(r#"route="unmatched",method="GET",status="404""#) >= 1.0, "{text}");
    app.stop().await;
}
