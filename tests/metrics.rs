//! `/metrics`: parses as Prometheus text format, and every `streamhub_` metric it exports
//! is documented in docs/METRICS.md (and only those).

mod common;

use std::collections::BTreeSet;

use common::{publish_many, pull_group, RedisServer, TestApp, WsClient};
use serde_json::json;

/// The value of one series (`name{labels}` exactly as exported).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/METRICS.md"))
        .expect("docs/METRICS.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.starts_with("streamhub_"))
        .map(str::to_string)
        .collect()
}

/// Checks the text format line by line; returns the metric family names.
fn families(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("a name after # TYPE");
            let kind = parts.next().expect("a type after the name");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            names.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        // <name>{labels} <value>
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "bad value in {line:?}");
        let name = series.split('{').next().unwrap_or("");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels in {line:?}");
        }
    }
    names
}

#[tokio::test]
async fn every_exported_metric_is_documented_and_the_output_parses() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| {
        c.server.metrics_poll_interval_ms = 100;
        c.group.push(pull_group("m", "w"));
    })
    .await;
    // A small workload touching publish, history, delivery, groups and errors.
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("m", None).await;
    publish_many(&app, "m", 3, 3).await;
    app.publish("m", json!(1)).await;
    ws.messages(4).await;
    let _ = app.get("/v1/topics/m/messages?since=0").await;
    let _ = app.post_json("/v1/topics/m/messages", &json!({ "nope": 1 })).await;
    common::eventually("the group", common::READY_TIMEOUT, async || {
        let (_, body) = app.get("/v1/topics/m/groups").await;
        body["groups"][0]["exists"] == json!(true)
    })
    .await;
    let (_, fetched) = app.post_json("/v1/topics/m/groups/w:fetch", &json!({ "max": 10 })).await;
    let tokens: Vec<_> = fetched["deliveries"].as_array().into_iter().flatten().map(|d| d["token"].clone()).collect();
    app.post_json("/v1/topics/m/groups/w:ack", &json!({ "tokens": tokens })).await;

    // The per-group gauges come from the periodic poll.
    common::eventually("the polled gauges", common::READY_TIMEOUT, async || {
        let text = app.metrics().await;
        sample(&text, "streamhub_group_pending{group=\"m/w\"}").is_some()
            && sample(&text, "streamhub_redis_up") == Some(1.0)
    })
    .await;
    let text = app.metrics().await;
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(value("streamhub_messages_published_total{outcome=\"stored\"}"), 4.0);
    let stored: usize = app.history_all("m", 0).await.iter().map(|m| m["data"].to_string().len()).sum();
    assert_eq!(value("streamhub_published_bytes_total{outcome=\"stored\"}"), stored as f64, "payload bytes");
    assert_eq!(value("streamhub_delivery_lag_seconds_count{transport=\"ws\",protocol=\"streamhub\"}"), 4.0);
    assert_eq!(value("streamhub_subscriptions"), 1.0);
    assert_eq!(value("streamhub_group_delivered_total{group=\"m/w\"}"), 4.0);
    assert_eq!(value("streamhub_group_outcomes_total{group=\"m/w\",outcome=\"acked\"}"), 4.0);
    assert!(value("streamhub_redis_command_duration_seconds_count{command=\"sh_publish_v4\"}") >= 2.0);
    assert!(
        value("streamhub_http_request_duration_seconds_count{route=\"/v1/topics/{topic}/messages\",method=\"POST\"}")
            >= 2.0
    );
    assert!(value("streamhub_process_resident_memory_bytes") > 1e6);
    assert!(value("streamhub_process_open_fds") >= 3.0);
    assert!(value("streamhub_uptime_seconds") > 0.0);
    assert_eq!(value(&format!("streamhub_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);
    let exported: BTreeSet<String> = families(&text).into_iter().filter(|n| n.starts_with("streamhub_")).collect();
    let documented = documented();
    assert!(exported.len() >= 8, "the workload produced metrics: {exported:?}");
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(undocumented.is_empty(), "exported but not in docs/METRICS.md: {undocumented:?}");
    // Every documented name is declared in src/metrics.rs (nothing stale in the doc).
    let source =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs")).expect("src");
    for name in &documented {
        assert!(source.contains(&format!("\"{name}\"")), "{name} is documented but not declared in src/metrics.rs");
    }
    app.stop().await;
}
