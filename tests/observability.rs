//! Operating streamhub: JSON logs carrying the request id, `streamhub stats`, and the
//! close of sessions whose peer stopped reading (counted for the slow-session alert).

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, pull_group, streamhub_bin, RedisServer, TestApp, WsClient, ADMIN_KEY, READY_TIMEOUT};
use serde_json::{json, Value};

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test]
async fn json_logs_carry_the_request_id_given_by_the_client() {
    let redis = RedisServer::start();
    let http_port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[[auth.anonymous]]\ntopics = [\"*\"]\nscopes = [\"publish\"]\n").expect("config");
    let child = Command::new(streamhub_bin())
        .args(["--config", config.to_str().expect("utf8")])
        .arg("serve")
        .args(["--redis-url", &redis.url(), "--listen", &format!("127.0.0.1:{http_port}")])
        .args(["--metrics-listen", "127.0.0.1:0", "--prefix", &common::unique_prefix()])
        .env("STREAMHUB__LOG__FORMAT", "json")
        .env("STREAMHUB__LOG__LEVEL", "info")
        .env("STREAMHUB__REDIS__SPAWN", "never")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start streamhub serve");
    let mut child = KillOnDrop(child);
    let stderr = child.0.stderr.take().expect("stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http_port}");
    common::eventually("serve is ready", READY_TIMEOUT, async || {
        http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    // Redis loses the function library: the publish reloads it and logs that, inside
    // the request's span.
    let flushed = redis.cli(&["FUNCTION", "FLUSH"]);
    assert!(flushed.status.success());
    let response = http
        .post(format!("{base}/v1/topics/logs/messages"))
        .header("x-request-id", "req-obs-17")
        .json(&json!({ "data": 1 }))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    assert_eq!(response.headers()["x-request-id"], "req-obs-17", "the id is echoed");
    // An id that is not visible ASCII (or too long) is replaced by a minted one.
    let minted = http.get(format!("{base}/healthz")).header("x-request-id", "x".repeat(65)).send().await.expect("GET");
    let id = minted.headers()["x-request-id"].to_str().expect("ascii").to_string();
    assert_eq!(id.len(), 32, "a UUID v7 in simple form: {id}");

    let mut seen = Vec::new();
    let found = loop {
        let line = lines.recv_timeout(READY_TIMEOUT).expect("the reload is logged");
        let parsed: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        seen.push(line);
        if parsed["fields"]["message"].as_str().is_some_and(|m| m.contains("function library missing")) {
            break parsed;
        }
    };
    assert_eq!(found["span"]["request_id"], "req-obs-17", "{found}");
    assert_eq!(found["span"]["route"], "/v1/topics/{topic}/messages", "{found}");
    assert!(seen.iter().any(|l| l.contains("\"level\":\"INFO\"")), "{seen:?}");
}

/// A child process that is killed however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn stats_prints_topics_rates_groups_and_dead_letters() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| c.group.push(pull_group("st", "g"))).await;
    common::publish_many(&app, "st", 5, 5).await;
    common::eventually("the group", READY_TIMEOUT, async || {
        app.get("/v1/topics/st/groups").await.1["groups"][0]["exists"] == json!(true)
    })
    .await;
    let (_, fetched) = app.post_json("/v1/topics/st/groups/g:fetch", &json!({ "max": 1 })).await;
    let token = fetched["deliveries"][0]["token"].clone();
    app.post_json("/v1/topics/st/groups/g:nack", &json!({ "tokens": [token], "permanent": true })).await;

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(streamhub_bin()).arg("stats").args(args).env_remove("STREAMHUB_TOKEN").output().expect("stats")
        })
    };
    let base = app.base.clone();
    let args = |extra: &[&str]| {
        let mut a = vec!["--url".to_string(), base.clone(), "--token".into(), ADMIN_KEY.into()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    let out = run(args(&["--interval-ms", "200"])).await.expect("join");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let topic_line = text.lines().find(|l| l.starts_with("st ")).unwrap_or_else(|| panic!("no topic row:\n{text}"));
    let cols: Vec<&str> = topic_line.split_whitespace().collect();
    assert_eq!(cols[1..3], ["5", "5"], "seq and length:\n{text}");
    let group_line = text.lines().find(|l| l.starts_with("st/g ")).unwrap_or_else(|| panic!("no group row:\n{text}"));
    let cols: Vec<&str> = group_line.split_whitespace().collect();
    // GROUP TARGET STATE LAG PENDING SCHEDULED DLQ …: 4 of 5 not yet fetched, 1 dead letter.
    assert_eq!(cols[..7], ["st/g", "pull", "running", "4", "0", "0", "1"], "{text}");

    // Rates: publishing while stats reads twice gives a positive publish rate.
    let stats = run(args(&["--interval-ms", "1000", "--json"]));
    let publishing = async {
        let mut i = 0;
        while i < 2000 {
            app.publish("st", json!(i)).await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let out = tokio::select! {
        out = stats => out.expect("join"),
        _ = publishing => panic!("stats did not finish"),
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    let topic = &report["topics"][0];
    assert_eq!(topic["topic"], "st");
    assert!(topic["publish_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    assert_eq!(topic["groups"][0]["dead_letters"], 1, "{report}");

    // Without the admin key: a clear error and exit status 1.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(streamhub_bin()).args(["stats", "--url", &base]).env_remove("STREAMHUB_TOKEN").output()
    })
    .await
    .expect("join")
    .expect("stats");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/v1/topics") && err.contains("401"), "{err}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_dropped_without_hurting_others() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| c.ws.write_timeout_ms = 1000).await;
    // A client with a tiny receive buffer that subscribes and then never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let addr = app.server.http_addr();
    let stream = socket.connect(addr).await.expect("connect");
    let (ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws"), tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .expect("upgrade");
    let mut stuck = WsClient::from_stream(ws);
    stuck.subscribe("slow", None).await;
    let mut healthy = WsClient::connect(&app.base).await;
    healthy.subscribe("slow", None).await;
    let before = app.metrics().await;
    assert_eq!(sample(&before, "streamhub_sessions{transport=\"ws\",protocol=\"streamhub\"}"), Some(2.0));

    // The reading subscriber reads all along (a reader that waited for the publishes to
    // end would be a stalled peer too).
    let reader = tokio::spawn(async move {
        let got = healthy.messages(160).await;
        (healthy, got)
    });
    // ~10 MB: more than the kernel buffers between the server and the stuck peer.
    let big = "x".repeat(64 * 1024);
    for _ in 0..20 {
        let batch: Vec<Value> = (0..8).map(|_| json!({ "data": big })).collect();
        let (status, body) = app.post_json("/v1/topics/slow/messages:batch", &json!({ "messages": batch })).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    }
    let (healthy, got) = reader.await.expect("reader");
    let seqs: Vec<u64> = got.iter().map(common::seq).collect();
    assert_eq!(seqs, (1..=160).collect::<Vec<_>>(), "the reading subscriber got everything, in order");

    common::eventually("the stuck session is dropped", READY_TIMEOUT, async || {
        let text = app.metrics().await;
        sample(&text, "streamhub_slow_sessions_closed_total{transport=\"ws\",protocol=\"streamhub\"}") == Some(1.0)
            && sample(&text, "streamhub_sessions{transport=\"ws\",protocol=\"streamhub\"}") == Some(1.0)
    })
    .await;
    healthy.close().await;
    drop(stuck);
    app.stop().await;
}
