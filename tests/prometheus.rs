//! The dashboards and alert rules against a real Prometheus: a live node under a small
//! workload is scraped, then every PromQL expression of every dashboard panel must parse
//! and return data, and every alert rule must load and evaluate without error.
//! Needs `prometheus` and `promtool` on PATH (scripts/test.sh installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, publish_many, pull_group, RedisServer, TestApp, WsClient};
use serde_json::{json, Value};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const RULES: &str = "deploy/prometheus/streamhub-alerts.yml";
const DASHBOARDS: &str = "grafana/dashboards";

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("{name} is not on PATH; scripts/test.sh installs it (apt package prometheus)"))
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let out = Command::new(tool("promtool")).args(["check", "rules"]).arg(repo(RULES)).output().expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
}

/// A Prometheus server on a free loopback port, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: streamhub\n    static_configs:\n      - targets: ['{target}']\n",
                rules = repo(RULES).display()
            ),
        )
        .expect("write prometheus.yml");
        let check = Command::new(tool("promtool")).args(["check", "config"]).arg(&config).output().expect("promtool");
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
        let port = free_port();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, base: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    async fn api(&self, http: &reqwest::Client, path: &str, query: &[(&str, &str)]) -> Value {
        let response = http.get(format!("{}{path}", self.base)).query(query).send().await.expect("prometheus API");
        response.json().await.expect("prometheus answers JSON")
    }

    async fn query(&self, http: &reqwest::Client, expr: &str) -> Value {
        self.api(http, "/api/v1/query", &[("query", expr)]).await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Grafana's variables, as the dashboards would have them resolved.
fn resolve(expr: &str) -> String {
    [
        ("$__rate_interval", "1m"),
        ("$__interval", "1m"),
        ("$__range", "5m"),
        ("${instance}", ".*"),
        ("$instance", ".*"),
        ("${group}", ".*"),
        ("$group", ".*"),
    ]
    .iter()
    .fold(expr.to_string(), |e, (var, value)| e.replace(var, value))
}

/// Every (panel title, expr) of a dashboard, nested rows included; checks datasources.
fn panel_exprs(dashboard: &Value, file: &str, out: &mut Vec<(String, String)>) {
    fn walk(panels: &Value, file: &str, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = format!("{file}: {}", panel["title"].as_str().unwrap_or("?"));
            for ds in std::iter::once(&panel["datasource"])
                .chain(panel["targets"].as_array().into_iter().flatten().map(|t| &t["datasource"]))
            {
                if let Some(uid) = ds.get("uid") {
                    assert_eq!(uid, &json!("${datasource}"), "{title}: datasource must be the variable");
                }
            }
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            walk(&panel["panels"], file, out);
        }
    }
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "{file}: needs a `datasource` variable"
    );
    walk(&dashboard["panels"], file, out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_expression_returns_data_and_every_alert_evaluates() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| {
        c.server.metrics_poll_interval_ms = 200;
        let mut group = pull_group("p", "g");
        group.max_attempts = 2;
        c.group.push(group);
    })
    .await;
    let prometheus = Prometheus::start(app.server.metrics_addr());
    let http = reqwest::Client::new();
    common::eventually("prometheus ready", common::READY_TIMEOUT, async || {
        http.get(format!("{}/-/ready", prometheus.base)).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;

    // The workload: publishes (single, batch, a duplicate, a rejected one), a resuming
    // WebSocket subscriber, an SSE subscriber, and a pull group with acks and a message
    // nacked until it was dead-lettered.
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("p", None).await;
    publish_many(&app, "p", 20, 5).await;
    ws.messages(20).await;
    ws.close().await;
    let mut resumed = WsClient::connect(&app.base).await;
    resumed.subscribe("p", Some(json!({ "epoch": app.get("/v1/topics/p").await.1["epoch"], "seq": 10 }))).await;
    resumed.messages(10).await;
    let once = json!({ "data": "once", "idempotency_key": "k1" });
    app.post_json("/v1/topics/p/messages", &once).await;
    app.post_json("/v1/topics/p/messages", &once).await;
    let raw = app.http.post(app.url("/v1/topics/p/messages")).header("content-type", "application/json");
    let rejected = raw.body("{not json").send().await.expect("POST");
    assert_eq!(rejected.status(), reqwest::StatusCode::BAD_REQUEST);
    let mut sse = app.http.get(app.url("/v1/topics/p/events?since=earliest")).send().await.expect("SSE");
    tokio::time::timeout(common::FRAME_TIMEOUT, sse.chunk()).await.expect("an SSE event").expect("chunk");
    common::eventually("the group", common::READY_TIMEOUT, async || {
        app.get("/v1/topics/p/groups").await.1["groups"][0]["exists"] == json!(true)
    })
    .await;
    // Prometheus sees the group's gauges and counters at 0 before anything is dead-lettered.
    common::eventually("the group's series scraped", common::READY_TIMEOUT, async || {
        let v = prometheus
            .query(&http, "streamhub_group_outcomes_total{outcome=\"dead\"} + on(group) streamhub_group_dead_letters")
            .await;
        v["data"]["result"][0]["value"][1] == json!("0")
    })
    .await;
    let (_, fetched) = app.post_json("/v1/topics/p/groups/g:fetch", &json!({ "max": 10 })).await;
    let tokens: Vec<Value> =
        fetched["deliveries"].as_array().expect("deliveries").iter().map(|d| d["token"].clone()).collect();
    assert!(tokens.len() >= 2, "{fetched}");
    app.post_json("/v1/topics/p/groups/g:ack", &json!({ "tokens": tokens[1..] })).await;
    app.post_json("/v1/topics/p/groups/g:nack", &json!({ "tokens": [tokens[0]], "permanent": true, "error": "bad" }))
        .await;

    // Keep publishing while Prometheus scrapes, so rates and histograms have samples in
    // every window; wait for enough scrapes of everything above.
    let scraped = async || {
        let v = prometheus.query(&http, "count_over_time(up{job=\"streamhub\"}[1m])").await;
        v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0)
    };
    let start = scraped().await;
    for i in 0..60 {
        app.publish("p", json!(i)).await;
        resumed.messages(1).await;
        if scraped().await >= start + 6.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    common::eventually("six scrapes", common::READY_TIMEOUT, async || scraped().await >= start + 6.0).await;
    let dead = prometheus.query(&http, "max(streamhub_group_dead_letters)").await;
    assert_eq!(dead["data"]["result"][0]["value"][1], json!("1"), "the polled DLQ gauge reached Prometheus: {dead}");

    // Every dashboard expression parses and returns data.
    let mut exprs = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(repo(DASHBOARDS)).expect("grafana/dashboards") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let dashboard: Value = serde_json::from_str(&text).expect("dashboard is JSON");
            let file = path.file_name().expect("name").to_string_lossy().to_string();
            panel_exprs(&dashboard, &file, &mut exprs);
            files += 1;
        }
    }
    assert!(
        files >= 1 && repo("grafana/dashboards/streamhub-overview.json").is_file(),
        "the overview dashboard exists"
    );
    assert!(exprs.len() >= 20, "the dashboards chart the catalogue: {} expressions", exprs.len());
    let mut failures = Vec::new();
    for (title, expr) in &exprs {
        let resolved = resolve(expr);
        let answer = prometheus.query(&http, &resolved).await;
        if answer["status"] != "success" {
            failures.push(format!("{title}: {resolved}: {}", answer["error"]));
        } else if answer["data"]["result"].as_array().is_some_and(|r| r.is_empty()) {
            failures.push(format!("{title}: {resolved}: no data"));
        }
    }
    assert!(failures.is_empty(), "dashboard expressions failing:\n{}", failures.join("\n"));

    // Every alert rule loaded, evaluated without error, and parses as a query.
    let mut rules = Vec::new();
    common::eventually("every rule evaluated", common::READY_TIMEOUT, async || {
        let answer = prometheus.api(&http, "/api/v1/rules", &[]).await;
        rules = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        !rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")
    })
    .await;
    let names: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    for wanted in ["StreamhubRedisDown", "StreamhubConsumerLagGrowing", "StreamhubDeadLettersGrowing"] {
        assert!(names.contains(&wanted), "alert {wanted} is missing: {names:?}");
    }
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "rule {} failed to evaluate: {}", rule["name"], rule["lastError"]);
        assert!(
            rule["annotations"]["runbook"].as_str().is_some_and(|r| !r.is_empty()),
            "{} has no runbook",
            rule["name"]
        );
        let query = rule["query"].as_str().expect("query");
        let answer = prometheus.query(&http, query).await;
        assert_eq!(answer["status"], "success", "{}: {query}: {}", rule["name"], answer["error"]);
    }
    // The workload dead-lettered a message: the DLQ alert's condition holds (it fires
    // after its `for`), so the rule is not vacuous.
    let dlq = rules.iter().find(|r| r["name"] == "StreamhubDeadLettersGrowing").expect("rule");
    let answer = prometheus.query(&http, dlq["query"].as_str().expect("query")).await;
    assert!(
        answer["data"]["result"].as_array().is_some_and(|r| !r.is_empty()),
        "the DLQ alert's expression matches after a dead letter: {answer}"
    );
    drop(sse);
    resumed.close().await;
    app.stop().await;
}
