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

/// streamhub's own publish call, at the level of its contract (lua/publish.lua):
/// `sh_publish_v4` takes two values per message and answers one; `sh_publish_v3`, which
/// nodes of the previous release call during a rolling upgrade, still takes three and
/// answers four. (The function does not read the envelopes it is given.)
#[tokio::test]
async fn the_publish_function_answers_in_its_form_and_the_previous_one_in_its_own() {
    let redis = TestRedis::start();
    let app = TestApp::start(&redis).await;
    let (_, first) = app.publish("fv", json!(1)).await;
    let epoch = first["epoch"].as_str().expect("epoch").to_string();
    let p = app.prefix().to_string();
    let key = |suffix: &str| format!("{p}:{{fv}}:{suffix}");
    let (m, s, h, x, idem) = (key("m"), key("s"), key("h"), key("x"), key("i:once"));
    let call = |function: &str, idem_key: Option<&str>, per_message: &[&str]| {
        let mut args: Vec<&str> = vec!["FCALL", function, if idem_key.is_some() { "5" } else { "4" }, &m, &s, &h, &x];
        args.extend(idem_key);
        args.extend(["0", "60000", "1", "0", "0", "direct"]);
        args.extend(per_message);
        lines(&redis.cli(&args))
    };

    let v3 = call("sh_publish_v3", None, &["envelope-2", "id-2", "0"]);
    assert_eq!(v3[..4], [epoch.clone(), "2".into(), "0".into(), "id-2".into()], "epoch, seq, duplicate, id");
    assert_eq!((v3.len(), &v3[6]), (7, &epoch), "then aged, replication id, epoch: {v3:?}");

    let v4 = call("sh_publish_v4", None, &["envelope-3", ""]);
    assert_eq!((v4.len(), v4[0].as_str(), &v4[3]), (4, "3", &epoch), "the seq, then aged, replication id, epoch");
    let keyed = call("sh_publish_v4", Some(&idem), &["envelope-4", "5 id-4"]);
    assert_eq!(keyed[0], "4");
    let repeat = call("sh_publish_v4", Some(&idem), &["envelope-5", "5 id-5"]);
    assert_eq!(repeat[0], format!("{epoch} 4 id-4"), "the record of the message it repeats");
    let (_, topic) = app.get("/v1/topics/fv").await;
    assert_eq!(topic["seq"], json!(4), "the repeat added nothing: {topic}");
    app.stop().await;
}
