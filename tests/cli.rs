//! The command line: layered configuration, check-config, publish/history/topics.

mod common;

use std::process::{Command, Output};

use common::{streamhub_bin, unique_prefix, RedisServer};
use serde_json::{json, Value};

fn streamhub(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(streamhub_bin());
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.env_remove("RUST_LOG").output().expect("run streamhub")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn check_config_layers_file_env_and_flags_and_masks_secrets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[limits]\nmax_headers = 5\nmax_batch_messages = 7\n[redis]\nprefix = \"fromfile\"\n")
        .expect("write");
    let out = streamhub(
        &[
            "--config",
            file.to_str().expect("utf8"),
            "--prefix",
            "fromflag",
            "--redis-url",
            "redis://user:hunter2@127.0.0.1:7777",
            "check-config",
        ],
        &[("STREAMHUB__LIMITS__MAX_BATCH_MESSAGES", "9"), ("STREAMHUB__REDIS__PREFIX", "fromenv")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    let effective: toml::Value = toml::from_str(&text).expect("check-config prints TOML");
    assert_eq!(effective["limits"]["max_headers"].as_integer(), Some(5), "file overrides defaults");
    assert_eq!(effective["limits"]["max_batch_messages"].as_integer(), Some(9), "env overrides the file");
    assert_eq!(effective["redis"]["prefix"].as_str(), Some("fromflag"), "flags override env");
    assert_eq!(effective["redis"]["url"].as_str(), Some("redis://user:***@127.0.0.1:7777"));
    assert!(!text.contains("hunter2"), "the password is never printed");
    assert_eq!(effective["limits"]["max_payload_bytes"].as_integer(), Some(1 << 20), "defaults fill the rest");
}

#[test]
fn invalid_configuration_exits_2_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[limits]\nmax_payload_bytez = 5\n").expect("write");
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--config".into(), unknown.display().to_string(), "check-config".into()], vec![], "max_payload_bytez"),
        (
            vec!["--config".into(), "/nonexistent/streamhub.toml".into(), "check-config".into()],
            vec![],
            "does not exist",
        ),
        (vec!["--prefix".into(), "bad{prefix}".into(), "check-config".into()], vec![], "redis.prefix"),
        (vec!["check-config".into()], vec![("STREAMHUB__REDIS__COMMAND_TIMEOUT_MS", "0")], "redis.command_timeout_ms"),
        (vec!["check-config".into()], vec![("STREAMHUB__LIMITS__MAX_HEADERS", "many")], "max_headers"),
        (vec!["--redis-url".into(), "http://x".into(), "check-config".into()], vec![], "redis.url"),
        (vec!["check-config".into()], vec![("STREAMHUB__WS__WRITE_TIMEOUT_MS", "0")], "ws.write_timeout_ms"),
        (vec!["check-config".into()], vec![("STREAMHUB__WS__WRITE_BUFFER_BYTES", "0")], "ws.write_buffer_bytes"),
        (
            vec!["check-config".into()],
            vec![("STREAMHUB__SERVER__METRICS_POLL_INTERVAL_MS", "99")],
            "server.metrics_poll_interval_ms",
        ),
        (vec!["check-config".into()], vec![("STREAMHUB__LOG__FORMAT", "xml")], "format"),
        (vec!["check-config".into()], vec![("STREAMHUB__PROXIES__TRUSTED", "[\"10.0.0.1/8\"]")], "proxies.trusted"),
        (vec!["check-config".into()], vec![("STREAMHUB__PROXIES__TRUSTED", "[\"proxy.local\"]")], "proxies.trusted"),
        (vec!["check-config".into()], vec![("STREAMHUB__PROXIES__HEADER", "x-real-ip")], "header"),
    ];
    // The edges that are allowed.
    for (key, value) in [
        ("STREAMHUB__WS__WRITE_TIMEOUT_MS", "1"),
        ("STREAMHUB__WS__WRITE_BUFFER_BYTES", "1"),
        ("STREAMHUB__SERVER__METRICS_POLL_INTERVAL_MS", "100"),
        ("STREAMHUB__PROXIES__TRUSTED", "[\"10.0.0.0/8\", \"::1\", \"127.0.0.1\", \"fd00::/8\"]"),
        ("STREAMHUB__PROXIES__HEADER", "forwarded"),
    ] {
        let out = streamhub(&["check-config"], &[(key, value)]);
        assert!(out.status.success(), "{key}={value}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for (args, env, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = streamhub(&args, &env);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.to_lowercase().contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn help_is_available_on_every_command() {
    for command in
        ["serve", "publish", "history", "topics", "tail", "groups", "stats", "dlq", "hash-key", "check-config"]
    {
        let out = streamhub(&[command, "--help"], &[]);
        assert!(out.status.success(), "{command}");
        assert!(stdout(&out).contains("Usage"), "{command}");
    }
}

#[test]
fn publish_history_and_topics_work_against_redis() {
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    let url = redis.url();
    let base = ["--redis-url", url.as_str(), "--prefix", prefix.as_str()];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = streamhub(&args, &[]);
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        stdout(&out)
    };
    let first: Value = serde_json::from_str(&run(&["publish", "cli.t", "{\"n\":1}", "--header", "k=v"])).expect("json");
    assert_eq!(first["seq"], json!(1));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("payload.txt");
    std::fs::write(&file, "from a file").expect("write");
    let second: Value =
        serde_json::from_str(&run(&["publish", "cli.t", &format!("@{}", file.display()), "--idempotency-key", "x"]))
            .expect("json");
    assert_eq!(second["seq"], json!(2));
    let dup: Value =
        serde_json::from_str(&run(&["publish", "cli.t", "again", "--idempotency-key", "x"])).expect("json");
    assert_eq!((dup["seq"].clone(), dup["duplicate"].clone()), (json!(2), json!(true)));

    let history: Value = serde_json::from_str(&run(&["history", "cli.t", "--since", "0"])).expect("json");
    assert_eq!(history["messages"][0]["data"], json!({ "n": 1 }));
    assert_eq!(history["messages"][0]["headers"], json!({ "k": "v" }));
    assert_eq!(history["messages"][1]["data"], json!("from a file"));
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(2));

    let topics = run(&["topics"]);
    let listed: Vec<Value> = topics.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["topic"], json!("cli.t"));
    assert_eq!(listed[0]["seq"], json!(2));

    // Bad input and a dead Redis: non-zero exit and a message, not a hang.
    let args: Vec<&str> = base.iter().copied().chain(["publish", "bad topic", "x"]).collect();
    let out = streamhub(&args, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("topic"));
    drop(redis);
    let out = streamhub(
        &["--redis-url", &url, "publish", "t", "x"],
        &[("STREAMHUB__REDIS__CONNECT_TIMEOUT_MS", "300"), ("STREAMHUB__REDIS__COMMAND_TIMEOUT_MS", "300")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unavailable"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn groups_and_dlq_commands_show_replay_and_purge() {
    let redis = RedisServer::start();
    let app = common::TestApp::start_with(&redis, |c| c.group.push(common::pull_group("c", "w"))).await;
    common::eventually("the group", common::READY_TIMEOUT, async || {
        let (_, body) = app.get("/v1/topics/c/groups").await;
        body["groups"][0]["exists"] == json!(true)
    })
    .await;
    common::publish_many(&app, "c", 3, 3).await;
    let (_, fetched) = app.post_json("/v1/topics/c/groups/w:fetch", &json!({ "max": 3 })).await;
    let tokens: Vec<Value> = fetched["deliveries"].as_array().expect("d").iter().map(|d| d["token"].clone()).collect();
    app.post_json("/v1/topics/c/groups/w:nack", &json!({ "tokens": tokens, "permanent": true, "error": "bad data" }))
        .await;

    let url = redis.url();
    let prefix = app.prefix().to_string();
    let run = |extra: &[&str]| {
        let args: Vec<&str> =
            ["--redis-url", url.as_str(), "--prefix", prefix.as_str()].iter().chain(extra).copied().collect();
        let out = streamhub(&args, &[]);
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        stdout(&out)
    };
    let groups: Value = serde_json::from_str(run(&["groups", "c"]).trim()).expect("json");
    assert_eq!((groups["group"].clone(), groups["dead_letters"].clone()), (json!("w"), json!(3)));
    let listed: Vec<Value> =
        run(&["dlq", "ls", "c", "w"]).lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["error"], json!("bad data"));
    let id = listed[1]["id"].as_str().expect("id").to_string();
    let shown: Value = serde_json::from_str(&run(&["dlq", "show", "c", "w", &id])).expect("json");
    assert_eq!(shown["seq"], json!(2));
    let replayed: Value = serde_json::from_str(run(&["dlq", "replay", "c", "w", &id]).trim()).expect("json");
    assert_eq!(replayed["replayed"], json!(1));
    let purged: Value = serde_json::from_str(run(&["dlq", "purge", "c", "w", "--all"]).trim()).expect("json");
    assert_eq!(purged["purged"], json!(2));
    let (_, again) = app.post_json("/v1/topics/c/groups/w:fetch", &json!({ "max": 3, "wait_ms": 5000 })).await;
    assert_eq!(again["deliveries"][0]["message"]["seq"], json!(2), "the replayed message is delivered again");
    app.stop().await;
}

#[test]
fn hash_key_prints_the_sha256_the_config_expects() {
    let out = streamhub(&["hash-key", "my-key"], &[]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), streamhub::auth::hash_api_key("my-key"));
    assert_eq!(stdout(&out).trim().len(), 64);
}

/// `streamhub token` signs with the configured HS256 key a token the node accepts, with
/// exactly the grants asked for; without a key it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_prints_a_jwt_the_node_accepts_with_exactly_its_grants() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("auth.toml");
    let secret = "token-command-secret-0123456789abcdef";
    std::fs::write(&file, format!("[[auth.hs256]]\nkid = \"dev\"\nsecret = \"{secret}\"\n")).expect("write");
    let config = file.to_str().expect("path");
    let out = streamhub(
        &[
            "--config",
            config,
            "token",
            "--sub",
            "alice",
            "--subscribe",
            "chat.*",
            "--publish",
            "chat.*",
            "--ttl-secs",
            "600",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = stdout(&out).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");

    let redis = RedisServer::start();
    let app = common::TestApp::start_with(&redis, |c| {
        c.auth.anonymous.clear();
        c.auth.hs256.push(streamhub::config::HsKey { kid: "dev".into(), secret: secret.into() });
    })
    .await;
    let http = reqwest::Client::new();
    let post = |topic: &str| {
        http.post(app.url(&format!("/v1/topics/{topic}/messages")))
            .bearer_auth(&token)
            .json(&json!({ "data": 1 }))
            .send()
    };
    assert_eq!(post("chat.room").await.expect("publish").status(), 201);
    assert_eq!(post("other").await.expect("publish").status(), 403, "only the patterns asked for");
    let history = http.get(app.url("/v1/topics/chat.room/messages")).bearer_auth(&token).send().await.expect("get");
    let body: Value = history.json().await.expect("json");
    assert_eq!(body["messages"][0]["from"]["user"], "alice", "{body}");
    app.stop().await;

    let none = streamhub(&["token", "--sub", "x"], &[]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no [[auth.hs256]] key"), "{none:?}");
}
