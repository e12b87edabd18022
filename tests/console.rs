//! The web console in a real browser: a streamhub node (in this process) on a real
//! redis-server, and the specs of tests/browser/ driving Debian's headless chromium
//! through playwright-core (`node tests/browser/<spec>.mjs`, with the node's URL and an
//! admin key in the environment). Each spec prints `ok <step>` per step and ends with
//! `N passed, M failed`; screenshots go to target/browser-artifacts/<spec>/.
//!
//! scripts/test.sh installs what this needs: chromium (apt) and playwright-core
//! (`npm ci` in tests/browser).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    eventually, publish_many, pull_group, webhook_group, Receiver, RedisServer, TestApp, WsClient, ADMIN_KEY,
};
use reqwest::StatusCode;
use serde_json::json;

/// Longest run of one spec (chromium start, every step and its waits).
const SPEC_TIMEOUT: Duration = Duration::from_secs(240);

/// One browser at a time: the specs run in parallel test threads, and two chromiums on a
/// two-core machine make every step's timing worse for no gain.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Runs `node tests/browser/<spec>.mjs` against `app`, asserts it passed every step
/// named in `steps`, and returns its output.
async fn run_spec(spec: &str, app: &TestApp, env: &[(&str, String)], steps: &[&str]) -> String {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core/package.json").is_file(),
        "playwright-core is not installed: run `npm ci` in tests/browser (scripts/test.sh does it)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} is missing: install Debian's chromium (scripts/test.sh does it as root)"
    );
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    let _one_at_a_time = BROWSER.lock().await;
    let mut command = tokio::process::Command::new("node");
    command
        .arg(dir.join(format!("{spec}.mjs")))
        .current_dir(&dir)
        .env("STREAMHUB_URL", &app.base)
        .env("STREAMHUB_ADMIN_KEY", ADMIN_KEY)
        .env("ARTIFACTS_DIR", &artifacts)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(SPEC_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{spec}.mjs did not finish within {SPEC_TIMEOUT:?}"))
        .expect("node runs (Node.js >= 18 must be installed)");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    println!("--- {spec}.mjs stdout ---\n{stdout}--- stderr ---\n{stderr}");
    assert!(output.status.success(), "{spec}.mjs failed ({}):\n{stdout}\n{stderr}", output.status);
    for step in steps {
        assert!(stdout.lines().any(|l| l == format!("ok {step}")), "{spec}.mjs did not pass {step:?}:\n{stdout}");
    }
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with("passed, 0 failed"), "{spec}.mjs last line: {last}");
    assert!(stdout.contains("screenshot "), "{spec}.mjs saved no screenshot");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_pages_sign_in_publish_tail_resume_and_page_history() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis).await;
    publish_many(&app, "orders", 30, 30).await;
    publish_many(&app, "audit", 1, 1).await;
    run_spec(
        "topics",
        &app,
        &[("TOPIC", "orders".into())],
        &[
            "a key the node does not accept is refused at sign-in",
            "sign in with the admin key",
            "the topic list shows the topic, its seq and length",
            "the filter narrows the list",
            "the topic page opens a live tail with the latest messages",
            "a message published from the form appears in the live tail",
            "messages published while away arrive exactly once when the page comes back",
            "after a reload the tail resumes after the last message seen",
            "history pages back and forth",
            "a message that expires while away is reported as expired, not as a gap",
            "the key is never shown",
            "without a key the console is read-only and topic pages still work",
        ],
    )
    .await;
    // What the form published is in the topic, once.
    let messages = app.history_all("orders", 30).await;
    let from_form: Vec<_> = messages.iter().filter(|m| m["data"]["from"] == "the console").collect();
    assert_eq!(from_form.len(), 1, "{messages:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_admin_scope_the_console_is_read_only_where_grants_allow() {
    let redis = RedisServer::start();
    const READER: &str = "reader-key-of-the-console-test";
    let app = TestApp::start_with(&redis, |c| {
        c.auth.anonymous.clear();
        c.auth.api_key.push(streamhub::config::ApiKeySpec {
            name: "reader".into(),
            sha256: streamhub::auth::hash_api_key(READER),
            scopes: vec![streamhub::config::Scope::Subscribe],
            topics: vec!["orders".into()],
        });
    })
    .await;
    publish_many(&app, "orders", 3, 3).await;
    run_spec(
        "readonly",
        &app,
        &[("READER_KEY", READER.into())],
        &[
            "sign in with a key without the admin scope",
            "a topic its grants allow opens with its live tail and history",
            "publishing without the grant is refused with the node's reason",
            "a topic outside its grants shows the refusal instead of a tail",
            "the node and group pages need the admin scope",
            "the key is never shown",
            "without a key nothing opens on a node without anonymous rules",
        ],
    )
    .await;
    assert_eq!(app.history_all("orders", 0).await.len(), 3, "the reader published nothing");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_pages_resume_a_group_to_zero_lag_and_replay_and_purge_dead_letters() {
    let redis = RedisServer::start();
    // Fails until told otherwise: its messages are dead-lettered after one attempt.
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let billing = Receiver::start(move |_| if flag.load(Ordering::SeqCst) { 200 } else { 500 }).await;
    let app = TestApp::start_with(&redis, |c| {
        // A pull group: nothing reads it until the spec fetches (after resuming it).
        c.group.push(pull_group("jobs", "mailer"));
        let mut dead_fast = webhook_group("payments", "billing", &billing.url);
        dead_fast.max_attempts = 1;
        c.group.push(dead_fast);
    })
    .await;
    let (status, body) = app.post_json("/v1/topics/jobs/groups/mailer:pause", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    publish_many(&app, "jobs", 25, 25).await;
    publish_many(&app, "payments", 2, 2).await;
    eventually("two dead letters", Duration::from_secs(20), async || {
        let (_, body) = app.get("/v1/topics/payments/groups").await;
        body["groups"][0]["dead_letters"] == 2
    })
    .await;
    eventually("the paused group's lag to read 25", Duration::from_secs(20), async || {
        let (_, body) = app.get("/v1/topics/jobs/groups").await;
        body["groups"][0]["lag"] == 25
    })
    .await;
    healthy.store(true, Ordering::SeqCst);
    run_spec(
        "groups",
        &app,
        &[],
        &[
            "sign in from a link carrying the key, which leaves the address bar",
            "the group list shows the paused group and its lag",
            "the group page shows the paused group with its lag",
            "resuming the group lets consumers fetch again",
            "the lag falls to zero as a consumer fetches and acknowledges",
            "a dead letter's details show its message and error",
            "cancelling the confirmation replays nothing",
            "a replayed dead letter is delivered again and acknowledged",
            "purge all, confirmed, empties the dead-letter queue",
        ],
    )
    .await;
    // The console's view matches the node's: all 25 acknowledged, one replayed and acked.
    let (_, body) = app.get("/v1/topics/jobs/groups").await;
    assert_eq!(body["groups"][0]["counters"]["acked"], 25, "{body}");
    assert_eq!(body["groups"][0]["paused"], false, "{body}");
    let (_, body) = app.get("/v1/topics/payments/groups").await;
    assert_eq!(body["groups"][0]["dead_letters"], 0, "{body}");
    assert_eq!(body["groups"][0]["counters"]["acked"], 1, "{body}");
    assert_eq!(billing.acked_seqs().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_page_shows_live_connections_deliveries_lag_and_redis() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis).await;
    let mut subscriber = WsClient::connect(&app.base).await;
    subscriber.subscribe("ticks", None).await;
    let done = tokio_util::sync::CancellationToken::new();
    let (http, url, stop) = (app.http.clone(), app.url("/v1/topics/ticks/messages"), done.clone());
    let publisher = tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.is_cancelled() {
            n += 1;
            let _ = http.post(&url).json(&json!({ "data": { "tick": n } })).send().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let stop = done.clone();
    let reader = tokio::spawn(async move {
        while !stop.is_cancelled() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = subscriber.next_frame() => {}
            }
        }
    });
    run_spec(
        "node",
        &app,
        &[],
        &[
            "sign in with the admin key",
            "the node page shows open connections and subscriptions",
            "deliveries per second and publishes per second are live",
            "delivery lag percentiles are shown",
            "redis is reported up with its version and round trip",
        ],
    )
    .await;
    done.cancel();
    let _ = publisher.await;
    let _ = reader.await;
    app.stop().await;
}

/// `GET /v1/node` (what the node page reads): admin only, and its figures move.
#[tokio::test]
async fn node_endpoint_reports_this_nodes_figures_to_admins_only() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis).await;
    let anonymous = reqwest::get(app.url("/v1/node")).await.expect("GET");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("beat", None).await;
    let (_, before) = app.get("/v1/node").await;
    app.publish("beat", json!(1)).await;
    assert_eq!(ws.messages(1).await.len(), 1);
    let (status, after) = app.get("/v1/node").await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert!(after["sessions"].as_u64() >= Some(1), "{after}");
    assert!(after["subscriptions"].as_u64() >= Some(1), "{after}");
    assert!(after["tails"].as_u64() >= Some(1), "{after}");
    assert!(after["messages_stored"].as_u64() > before["messages_stored"].as_u64(), "{before} → {after}");
    assert!(after["delivery_lag"]["count"].as_u64() > before["delivery_lag"]["count"].as_u64());
    assert!(after["delivered_ws"].as_u64() > before["delivered_ws"].as_u64());
    assert!(after["delivery_lag_quantiles"]["p50"].is_number(), "{after}");
    let buckets = after["delivery_lag"]["buckets"].as_array().expect("buckets");
    assert!(buckets.last().expect("a bucket")["le"].is_null(), "the last bucket is +Inf");
    assert_eq!(after["redis"]["up"], true, "{after}");
    assert!(after["redis"]["version"].as_str().is_some_and(|v| v.starts_with('7') || v.starts_with('8')));
    assert!(after["redis"]["ping_ms"].is_number());
    assert!(after["process"]["resident_memory_bytes"].as_u64() > Some(0));
    // Redis down: still answered, and says so.
    let mut redis = redis;
    redis.kill();
    let (status, down) = app.get("/v1/node").await;
    assert_eq!(status, StatusCode::OK, "{down}");
    assert_eq!(down["redis"]["up"], false, "{down}");
    assert!(down["redis"]["error"].is_string(), "{down}");
    app.stop().await;
}

/// `/console` serves the compiled-in pages with a strict CSP, and not at all when
/// `http.console = false`.
#[tokio::test]
async fn console_files_are_served_from_the_binary_and_can_be_turned_off() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let redirect = client.get(app.url("/console")).send().await.expect("GET");
    assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
    let index = client.get(app.url("/console/")).send().await.expect("GET");
    assert_eq!(index.status(), StatusCode::OK);
    let csp = index.headers()["content-security-policy"].to_str().expect("csp").to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"), "{csp}");
    let etag = index.headers()["etag"].clone();
    assert!(index.text().await.expect("body").contains("app.js"));
    let again = client.get(app.url("/console/")).header("if-none-match", etag).send().await.expect("GET");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let js = client.get(app.url("/console/app.js")).send().await.expect("GET");
    assert!(js.headers()["content-type"].to_str().expect("type").starts_with("text/javascript"));
    let missing = client.get(app.url("/console/nope.js")).send().await.expect("GET");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    app.stop().await;

    let off = TestApp::start_with(&redis, |c| c.http.console = false).await;
    let (status, body) = off.get("/console/").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    off.stop().await;
}

/// The example chat in the browser: two users in two tabs (tests/browser/chat.mjs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_two_users_join_type_talk_drop_resume_and_leave() {
    let redis = RedisServer::start();
    let key = streamhub::config::HsKey { kid: "chat".into(), secret: "chat-example-secret-0123456789abcdef".into() };
    let app = TestApp::start_with(&redis, |c| {
        c.http.chat = true;
        c.auth.anonymous.clear();
        c.auth.hs256.push(key.clone());
        c.presence.topics = vec!["chat.*".into()];
        c.presence.users = true;
        c.presence.grace_ms = 500;
        c.presence.refresh_ms = 1000;
        c.presence.ttl_ms = 5000;
    })
    .await;
    let grants = streamhub::auth::jwt::Grants {
        subscribe: vec!["chat.*".into()],
        publish: vec!["chat.*".into()],
        consume: vec![],
        presence: vec!["chat.*".into(), "@*".into()],
    };
    let exp = streamhub::clock::now_ms() / 1000 + 3600;
    let token =
        |sub: &str| streamhub::auth::jwt::sign_hs256(&app.config.auth, Some("chat"), sub, &grants, exp).expect("sign");
    run_spec(
        "chat",
        &app,
        &[("TOKEN_ALICE", token("alice")), ("TOKEN_BOB", token("bob"))],
        &[
            "A signs in with a token in the address, which then leaves the address bar",
            "A's message before B arrives is B's history on joining the room",
            "A sees B join, online",
            "B types and A sees the indicator",
            "A sends and B receives",
            "B's network is cut and restored: B gets what it missed exactly once",
            "B leaves and A sees B offline with a last-seen time",
            "what was said is in the topic once, named by its authors",
        ],
    )
    .await;
    app.stop().await;
}
