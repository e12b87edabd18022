//! Publishing from any Redis client with the documented call (`FCALL sh_publish_raw_v1`),
//! here `redis-cli`, with the same guarantees as the HTTP API.

mod common;

use common::{TestApp, TestRedis};
use serde_json::json;

fn lines(out: &std::process::Output) -> Vec<String> {
    assert!(out.status.success(), "redis-cli failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[tokio::test]
async fn redis_cli_publish_is_visible_in_history_with_the_next_seq() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let (_, first) = app.publish("fx", json!({ "via": "http" })).await;
    let p = app.prefix().to_string();
    let (m, s, h) = (format!("{p}:{{fx}}:m"), format!("{p}:{{fx}}:s"), format!("{p}:{{fx}}:h"));
    let idem = format!("{p}:{{fx}}:i:job-1");

    let out = lines(&redis.cli(&[
        "FCALL",
        "sh_publish_raw_v1",
        "4",
        &m,
        &s,
        &h,
        &idem,
        "{\"via\":\"redis\"}",
        "application/json",
        "0",
        "source",
        "cli",
    ]));
    assert_eq!(out[0], first["epoch"].as_str().expect("epoch"), "same epoch");
    assert_eq!(out[1], "2", "next seq");
    assert_eq!(out[2], "0", "not a duplicate");
    let id = out[3].clone();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(&id[14..15], "7", "version 7: {id}");

    // The same idempotency key: same answer, nothing added.
    let again = lines(&redis.cli(&["FCALL", "sh_publish_raw_v1", "4", &m, &s, &h, &idem, "other", "text/plain"]));
    assert_eq!(again, vec![out[0].clone(), "2".to_string(), "1".to_string(), id.clone()]);

    // Minimal call: payload only.
    let minimal = lines(&redis.cli(&["FCALL", "sh_publish_raw_v1", "3", &m, &s, &h, "bytes"]));
    assert_eq!(minimal[1], "3");

    let history = app.history_all("fx", 1).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["seq"], json!(2));
    assert_eq!(history[0]["id"], json!(id));
    assert_eq!(history[0]["data"], json!({ "via": "redis" }));
    assert_eq!(history[0]["headers"], json!({ "source": "cli" }));
    assert_eq!(history[0]["content_type"], json!("application/json"));
    assert_eq!(history[1]["content_type"], json!("application/octet-stream"));
    use base64::Engine;
    assert_eq!(history[1]["data_base64"], json!(base64::engine::general_purpose::STANDARD.encode("bytes")));

    // And HTTP continues the same numbering.
    let (_, next) = app.publish("fx", json!(4)).await;
    assert_eq!(next["seq"], json!(4));
    app.stop().await;
}

#[tokio::test]
async fn a_new_topic_can_be_created_from_redis_and_bad_calls_are_refused_with_codes() {
    let redis = TestRedis::start();
    let app = TestApp::start_with(&redis, |c| c.limits.max_payload_bytes = 10).await;
    let p = app.prefix().to_string();
    let key = |topic: &str, suffix: &str| format!("{p}:{{{topic}}}:{suffix}");
    let created = lines(&redis.cli(&[
        "FCALL",
        "sh_publish_raw_v1",
        "3",
        &key("new", "m"),
        &key("new", "s"),
        &key("new", "h"),
        "hi",
        "text/plain",
        "1500",
    ]));
    assert_eq!(created[1], "1");
    let (_, topic) = app.get("/v1/topics/new").await;
    assert_eq!(topic["epoch"], json!(created[0]));
    let history = app.history_all("new", 0).await;
    assert_eq!(history[0]["ttl_ms"], json!(1500));
    assert_eq!(history[0]["data"], json!("hi"));

    let refused = |args: &[&str], expected: &str| {
        let out = redis.cli(args);
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(&format!("SH {expected}")), "{args:?} → {text}");
    };
    let (m, s, h) = (key("new", "m"), key("new", "s"), key("new", "h"));
    refused(&["FCALL", "sh_publish_raw_v1", "3", &m, &s, &h, "this payload is too long"], "payload_too_large");
    if common::topology() == common::Topology::Cluster {
        // Redis Cluster refuses keys of two slots before the function runs.
        let out = redis.cli(&["FCALL", "sh_publish_raw_v1", "3", &m, &key("other", "s"), &h, "x"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("CROSSSLOT"), "{out:?}");
    } else {
        refused(&["FCALL", "sh_publish_raw_v1", "3", &m, &key("other", "s"), &h, "x"], "invalid_keys");
    }
    refused(
        &["FCALL", "sh_publish_raw_v1", "3", &key("a b", "m"), &key("a b", "s"), &key("a b", "h"), "x"],
        "invalid_topic",
    );
    refused(&["FCALL", "sh_publish_raw_v1", "3", &m, &s, &h, "x", "text/plain", "-5"], "invalid_request");
    refused(&["FCALL", "sh_publish_raw_v1", "3", &m, &s, &h, "x", "text/plain", "0", "lonely"], "invalid_header");
    refused(
        &["FCALL", "sh_publish_raw_v1", "3", &m, &s, &h, "x", "text/plain", "0", "bad name", "v"],
        "invalid_header",
    );
    refused(&["FCALL", "sh_publish_raw_v1", "0", "x"], "invalid_keys");
    refused(&["FCALL", "sh_publish_raw_v1", "3", &m, &s, "other:{new}:h", "x"], "invalid_keys");
    let bad_idem = format!("{p}:{{new}}:i:a{{b");
    refused(&["FCALL", "sh_publish_raw_v1", "4", &m, &s, &h, &bad_idem, "x"], "invalid_idempotency_key");
    // A header value that is not UTF-8 would make an envelope no reader can decode.
    let out = std::process::Command::new("redis-cli")
        .args(redis.cli_flags())
        .args(["FCALL", "sh_publish_raw_v1", "3", &m, &s, &h, "x", "text/plain", "0", "h"])
        .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff\xfe"))
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SH invalid_header"), "{text}");
    let long = "t".repeat(201);
    refused(
        &["FCALL", "sh_publish_raw_v1", "3", &key(&long, "m"), &key(&long, "s"), &key(&long, "h"), "x"],
        "invalid_topic",
    );
    let (_, after) = app.get("/v1/topics/new").await;
    assert_eq!(after["seq"], json!(1), "refused calls wrote nothing");
    app.stop().await;
}
