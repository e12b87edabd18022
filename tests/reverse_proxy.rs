//! Behind a real reverse proxy (nginx, started by the test on loopback) in front of two
//! nodes: WebSocket upgrades and SSE streams pass through (SSE unbuffered), per-IP limits
//! key the real client (`proxies.trusted`, X-Forwarded-For), and a forwarding header from
//! a peer that is not a trusted proxy is ignored.
//!
//! Distinct client addresses on one machine: every 127.x.y.z is loopback, so a client
//! socket bound to 127.0.0.2 or 127.0.0.3 reaches nginx (and streamhub) from that address.
//! nginx itself connects to the nodes from 127.0.0.1, the one trusted proxy.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::nginx::Nginx;
use common::{seq, RedisServer, TestApp, WsClient};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// Two nodes on one Redis, nginx (127.0.0.1) their trusted proxy, `tweak` on both.
async fn two_nodes_behind_nginx(redis: &RedisServer, tweak: impl Fn(&mut streamhub::config::Config)) -> [TestApp; 2] {
    let a = TestApp::start_with(redis, |c| {
        c.proxies.trusted = vec!["127.0.0.1".to_string().try_into().expect("net")];
        tweak(c);
    })
    .await;
    let b = TestApp::start_with(redis, |c| {
        c.redis.prefix = a.prefix().to_string();
        c.proxies.trusted = a.config.proxies.trusted.clone();
        tweak(c);
    })
    .await;
    [a, b]
}

/// An HTTP client whose connections come from `from`, without credentials (anonymous).
fn http_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip(from)).build().expect("http client")
}

/// A WebSocket session from `from` to `site`, with extra request headers.
async fn ws_from(from: &str, site: SocketAddr, headers: &[(&str, &str)]) -> Result<WsClient, WsError> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(ip(from), 0)).expect("bind the client address");
    let stream = socket.connect(site).await.expect("connect");
    let mut request = format!("ws://{site}/v1/ws").into_client_request().expect("request");
    for (name, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        request.headers_mut().insert(name, value.parse().expect("header value"));
    }
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(WsClient::from_stream(ws))
}

/// The status and error code of a refused upgrade.
fn refusal(result: Result<WsClient, WsError>) -> (u16, String) {
    match result {
        Ok(_) => panic!("the session was admitted"),
        Err(WsError::Http(response)) => {
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap_or_default();
            (response.status().as_u16(), common::code(&body).to_string())
        }
        Err(e) => panic!("not an HTTP refusal: {e}"),
    }
}

/// A minimal SSE reader.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(http: &reqwest::Client, url: &str) -> Result<Events, (u16, String)> {
        // nginx buffering an event stream holds even its headers back: bounded.
        let response = tokio::time::timeout(PROMPTLY, http.get(url).header("accept", "text/event-stream").send())
            .await
            .expect("the stream's headers within the time allowed (is the proxy buffering?)")
            .expect("sse");
        if response.status() != 200 {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            return Err((status, common::code(&body).to_string()));
        }
        Ok(Events { response, buffer: String::new() })
    }

    /// The next event's (type, data), waiting at most `timeout`.
    async fn next_within(&mut self, timeout: Duration) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let event = block.lines().find_map(|l| l.strip_prefix("event:")).map(|e| e.trim().to_string());
                let data: String = block.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                match event {
                    Some(event) => return (event, serde_json::from_str(&data).unwrap_or(Value::Null)),
                    None => continue, // a keep-alive comment
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("an SSE event within the time allowed (is the proxy buffering?)")
                .expect("stream")
                .expect("open stream");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// How long an event published after an SSE stream opened may take to arrive through the
/// proxy. Far below the keep-alive period (`ws.ping_interval_ms` = 60 s here), so no
/// keep-alive can push a buffered event out; nginx's buffering would hold it for good.
const PROMPTLY: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_and_sse_pass_through_nginx_to_both_nodes_unbuffered() {
    let redis = RedisServer::start();
    let [a, b] = two_nodes_behind_nginx(&redis, |c| {
        c.ws.ping_interval_ms = 60_000;
        c.ws.idle_timeout_ms = 120_000;
    })
    .await;
    let nginx = Nginx::start(&[&a.base, &b.base]);
    let http = http_from("127.0.0.2");

    // Two of each session through the round-robin site: one of each lands on each node.
    let mut sockets = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut ws = ws_from("127.0.0.2", nginx.all, &[]).await.expect("the upgrade passes through nginx");
        ws.subscribe("room", None).await;
        sockets.push(ws);
        let url = Nginx::url(nginx.all, "/v1/topics/room/events");
        let mut events = Events::open(&http, &url).await.expect("SSE through nginx");
        assert_eq!(events.next_within(PROMPTLY).await.0, "subscribed", "{}", nginx.error_log());
        streams.push(events);
    }

    // Published through the proxy after every stream opened: it arrives on every session
    // of both nodes, and on SSE promptly although nginx buffers responses by default.
    for i in 1..=2 {
        let url = Nginx::url(nginx.all, "/v1/topics/room/messages");
        let response = http.post(url).json(&json!({ "data": i })).send().await.expect("publish");
        assert_eq!(response.status(), 201);
        for events in &mut streams {
            let (event, data) = events.next_within(PROMPTLY).await;
            assert_eq!((event.as_str(), data["seq"].clone(), data["data"].clone()), ("message", json!(i), json!(i)));
        }
    }
    for ws in &mut sockets {
        let got: Vec<u64> = ws.messages(2).await.iter().map(seq).collect();
        assert_eq!(got, vec![1, 2]);
    }
    drop(streams);
    for ws in sockets {
        ws.close().await;
    }
    drop(nginx);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_ip_limits_key_the_client_behind_nginx_and_ignore_untrusted_headers() {
    let redis = RedisServer::start();
    let [a, b] = two_nodes_behind_nginx(&redis, |c| {
        c.http.max_connections_per_ip = 1;
        c.http.publish_rate_per_sec = 1;
    })
    .await;
    let nginx = Nginx::start(&[&a.base, &b.base]);
    let events = |site: SocketAddr| Nginx::url(site, "/v1/topics/t/events");

    // 127.0.0.2 holds its one session on the first node, through the proxy.
    let _held = ws_from("127.0.0.2", nginx.first, &[]).await.expect("the first session of 127.0.0.2");
    // Its second is refused, over either transport: the slot is the client's, not nginx's.
    let second = ws_from("127.0.0.2", nginx.first, &[]).await;
    assert_eq!(refusal(second), (429, "too_many_connections".into()));
    let sse = Events::open(&http_from("127.0.0.2"), &events(nginx.first)).await.map(|_| ());
    assert_eq!(sse, Err((429, "too_many_connections".into())));

    // Another client behind the same proxy has its own slot.
    let _other = ws_from("127.0.0.3", nginx.first, &[]).await.expect("127.0.0.3 is another client");
    let _other_sse = Events::open(&http_from("127.0.0.4"), &events(nginx.first)).await.expect("127.0.0.4 too");

    // A client naming another address through the proxy: nginx appends the real one,
    // the rightmost untrusted hop, so 127.0.0.5 claiming to be 127.0.0.2 is admitted as
    // itself, and 127.0.0.2 claiming to be someone else is still 127.0.0.2.
    let spoof = [("x-forwarded-for", "127.0.0.2")];
    let _fifth = ws_from("127.0.0.5", nginx.first, &spoof).await.expect("127.0.0.5 is not 127.0.0.2");
    let disguised = ws_from("127.0.0.2", nginx.first, &[("x-forwarded-for", "127.0.0.99")]).await;
    assert_eq!(refusal(disguised), (429, "too_many_connections".into()));

    // Straight to the node from a peer that is not a trusted proxy: the header is ignored.
    let direct: SocketAddr = a.base.trim_start_matches("http://").parse().expect("node address");
    let disguised = ws_from("127.0.0.2", direct, &[("x-forwarded-for", "127.0.0.98")]).await;
    assert_eq!(refusal(disguised), (429, "too_many_connections".into()), "a spoofed header from 127.0.0.2");
    let _sixth = ws_from("127.0.0.6", direct, &spoof).await.expect("127.0.0.6 is not 127.0.0.2");

    // Anonymous publishes over the HTTP API are budgeted per client address too
    // (`http.publish_rate_per_sec` = 1): a burst from 127.0.0.2 through the proxy runs
    // out, 127.0.0.3's first publish right after passes.
    let url = Nginx::url(nginx.first, "/v1/topics/t/messages");
    let from_2 = http_from("127.0.0.2");
    let burst = futures::future::join_all((0..3).map(|i| from_2.post(&url).json(&json!({ "data": i })).send())).await;
    let statuses: Vec<u16> = burst.into_iter().map(|r| r.expect("publish").status().as_u16()).collect();
    assert!(statuses.contains(&201) && statuses.contains(&429), "{statuses:?}");
    let response = http_from("127.0.0.3").post(&url).json(&json!({ "data": "x" })).send().await.expect("publish");
    assert_eq!(response.status(), 201, "127.0.0.3 has its own budget");

    drop(nginx);
    b.stop().await;
    a.stop().await;
}
