//! Presence: the same list on every node, join and leave events in order with the
//! messages, a killed node's entries gone within the configured bound, no flapping on a
//! reconnect within the grace period, thousands of sessions that leave nothing behind,
//! user status, and ephemeral events that never enter the durable sequence.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_port, streamhub_bin, RedisServer, TestApp, WsClient, READY_TIMEOUT};
use reqwest::StatusCode;
use serde_json::{json, Value};
use streamhub::config::{ApiKeySpec, Config, Scope};

const TTL_MS: u64 = 1500;
const REFRESH_MS: u64 = 300;
const GRACE_MS: u64 = 800;

/// Presence on for `room.*`, short timings, and one API key per user name.
fn presence(c: &mut Config) {
    c.presence.topics = vec!["room.*".into()];
    c.presence.ttl_ms = TTL_MS;
    c.presence.refresh_ms = REFRESH_MS;
    c.presence.grace_ms = GRACE_MS;
    c.presence.users = true;
    for user in ["alice", "bob", "carol", "dave"] {
        c.auth.api_key.push(ApiKeySpec {
            name: user.into(),
            sha256: streamhub::auth::hash_api_key(&format!("key-{user}")),
            scopes: vec![Scope::Subscribe, Scope::Publish, Scope::Presence],
            topics: vec!["*".into()],
        });
    }
}

async fn node(redis: &RedisServer, prefix: Option<&str>) -> TestApp {
    TestApp::start_with(redis, |c| {
        presence(c);
        if let Some(p) = prefix {
            c.redis.prefix = p.to_string();
        }
    })
    .await
}

async fn connect_as(app: &TestApp, user: &str) -> WsClient {
    WsClient::connect(&format!("{}?token=key-{user}", app.base)).await
}

async fn subscribe(ws: &mut WsClient, topic: &str, join_leave: bool, info: Value) -> Value {
    let reply = ws.request(json!({ "op": "subscribe", "topic": topic, "join_leave": join_leave, "info": info })).await;
    assert_eq!(reply["type"], json!("subscribed"), "{reply}");
    reply
}

/// The users of a topic's presence, as one node lists them.
async fn members(app: &TestApp, topic: &str) -> Value {
    let (status, body) = app.get(&format!("/v1/topics/{topic}/presence")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn users(list: &Value) -> BTreeSet<String> {
    list["members"].as_array().expect("members").iter().map(|m| m["user"].as_str().unwrap_or("").to_string()).collect()
}

/// Waits until a node listens to the topic's hint channel (its tail is up): only then do
/// the topic's events reach that node's subscribers (they are at most once).
async fn listening(redis: &RedisServer, app: &TestApp, topic: &str) {
    let channel = format!("{}:{{{topic}}}:h", app.prefix());
    eventually("a node to listen to the topic", READY_TIMEOUT, async || {
        let out = redis.cli(&["PUBSUB", "SHARDNUMSUB", &channel]);
        String::from_utf8_lossy(&out.stdout).lines().nth(1).is_some_and(|n| n.trim() != "0")
    })
    .await;
}

/// Frames until one satisfies `done`, returned in order.
async fn until(ws: &mut WsClient, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let frame = ws.next_frame().await;
        let stop = done(&frame);
        out.push(frame);
        if stop {
            return out;
        }
    }
}

fn outline(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f["type"].as_str().unwrap_or("") {
            "message" => format!("m:{}", f["data"].as_str().unwrap_or("")),
            "join" | "leave" => format!("{}:{}", f["type"].as_str().unwrap_or(""), f["user"].as_str().unwrap_or("")),
            other => other.to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_agree_and_join_and_leave_come_in_order_with_the_messages() {
    let redis = RedisServer::start();
    let n1 = node(&redis, None).await;
    let n2 = node(&redis, Some(n1.prefix())).await;
    let n3 = node(&redis, Some(n1.prefix())).await;

    let mut alice = connect_as(&n1, "alice").await;
    subscribe(&mut alice, "room.1", true, json!({ "name": "Alice" })).await;
    listening(&redis, &n1, "room.1").await;
    let mut bob = connect_as(&n2, "bob").await;
    subscribe(&mut bob, "room.1", false, json!({ "name": "Bob" })).await;
    let mut carol = connect_as(&n3, "carol").await;
    subscribe(&mut carol, "room.1", false, json!(null)).await;
    let expected: BTreeSet<String> = ["alice", "bob", "carol"].iter().map(|s| s.to_string()).collect();
    for n in [&n1, &n2, &n3] {
        let list = members(n, "room.1").await;
        assert_eq!(users(&list), expected, "{list}");
        assert_eq!((list["clients"].clone(), list["users"].clone()), (json!(3), json!(3)));
        let bob_entry = list["members"].as_array().expect("members").iter().find(|m| m["user"] == "bob").cloned();
        assert_eq!(bob_entry.expect("bob")["info"], json!({ "name": "Bob" }));
    }
    let (_, stats) = n2.get("/v1/topics/room.1/presence/stats").await;
    assert_eq!(stats, json!({ "topic": "room.1", "clients": 3, "users": 3 }));
    // Alice saw Bob and Carol join (her own join may come before she is live: at most once).
    let joined = until(&mut alice, |f| f["type"] == "join" && f["user"] == "carol").await;
    assert!(outline(&joined).contains(&"join:bob".to_string()), "{joined:?}");

    // Order: m1, then Dave joins (on node 2), m2, Dave unsubscribes, m3.
    bob.request(json!({ "op": "publish", "topic": "room.1", "data": "m1" })).await;
    let mut dave = connect_as(&n2, "dave").await;
    subscribe(&mut dave, "room.1", false, json!(null)).await;
    bob.request(json!({ "op": "publish", "topic": "room.1", "data": "m2" })).await;
    dave.request(json!({ "op": "unsubscribe", "topic": "room.1" })).await;
    bob.request(json!({ "op": "publish", "topic": "room.1", "data": "m3" })).await;
    let seen = until(&mut alice, |f| f["data"] == "m3").await;
    assert_eq!(outline(&seen), vec!["m:m1", "join:dave", "m:m2", "leave:dave", "m:m3"]);
    assert_eq!(users(&members(&n3, "room.1").await), expected, "Dave is gone everywhere");

    // A topic that presence does not track says so.
    let (status, body) = n1.get("/v1/topics/other/presence").await;
    assert_eq!((status, common::code(&body)), (StatusCode::NOT_FOUND, "not_enabled"));
    for n in [n1, n2, n3] {
        n.stop().await;
    }
}

struct ChildNode(Child);

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_leaves_within_the_bound_and_a_reconnect_within_grace_does_not_flap() {
    let redis = RedisServer::start();
    let watcher_node = node(&redis, None).await;
    let prefix = watcher_node.prefix().to_string();
    let mut alice = connect_as(&watcher_node, "alice").await;
    subscribe(&mut alice, "room.k", true, json!(null)).await;
    listening(&redis, &watcher_node, "room.k").await;

    // Bob on a node in its own process, killed with SIGKILL.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        format!(
            "[presence]\ntopics = [\"room.*\"]\nttl_ms = {TTL_MS}\nrefresh_ms = {REFRESH_MS}\ngrace_ms = {GRACE_MS}\n\n\
             [[auth.anonymous]]\ntopics = [\"*\"]\nscopes = [\"subscribe\", \"publish\", \"presence\"]\n\n\
             [[auth.api_key]]\nname = \"bob\"\nsha256 = \"{}\"\nscopes = [\"subscribe\", \"presence\"]\n",
            streamhub::auth::hash_api_key("key-bob")
        ),
    )
    .expect("config");
    let port = free_port();
    let child = Command::new(streamhub_bin())
        .args(["--config", file.to_str().expect("utf8"), "--redis-url", &redis.url(), "--prefix", &prefix])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", "127.0.0.1:0", "serve"])
        .env("STREAMHUB__REDIS__SPAWN", "never")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("streamhub serve");
    let mut doomed = ChildNode(child);
    let base = format!("http://127.0.0.1:{port}");
    eventually("the child node", READY_TIMEOUT, async || {
        reqwest::get(format!("{base}/readyz")).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let mut bob = WsClient::connect(&format!("{base}?token=key-bob")).await;
    subscribe(&mut bob, "room.k", false, json!(null)).await;
    until(&mut alice, |f| f["type"] == "join" && f["user"] == "bob").await;

    let killed = Instant::now();
    let _ = doomed.0.kill();
    let _ = doomed.0.wait();
    eventually("bob's entry to expire", READY_TIMEOUT, async || members(&watcher_node, "room.k").await["clients"] == 1)
        .await;
    let gone = killed.elapsed();
    // Bound: ttl since the last refresh, plus one refresh of a live node to purge it.
    assert!(gone <= Duration::from_millis(TTL_MS + 2 * REFRESH_MS + 500), "{gone:?}");
    let left = until(&mut alice, |f| f["type"] == "leave").await;
    assert_eq!(left.last().map(|f| f["user"].clone()), Some(json!("bob")));

    // Carol reconnects within the grace period: neither a leave nor a join.
    let mut carol = connect_as(&watcher_node, "carol").await;
    subscribe(&mut carol, "room.k", false, json!(null)).await;
    until(&mut alice, |f| f["type"] == "join" && f["user"] == "carol").await;
    carol.close().await;
    // Within the grace period carol is still listed (her leave is not published yet),
    // though she has no connection.
    let list = members(&watcher_node, "room.k").await;
    assert!(users(&list).contains("carol"), "{list}");
    let mut carol = connect_as(&watcher_node, "carol").await;
    subscribe(&mut carol, "room.k", false, json!(null)).await;
    // Past the grace period and a refresh: then a message, which must be the next frame.
    tokio::time::sleep(Duration::from_millis(GRACE_MS + 2 * REFRESH_MS)).await;
    carol.request(json!({ "op": "publish", "topic": "room.k", "data": "still here" })).await;
    let next = until(&mut alice, |f| f["type"] == "message").await;
    assert_eq!(outline(&next), vec!["m:still here"], "no leave and no join for a reconnect within grace");
    // Gone for good: the leave comes after the grace period.
    let closed = Instant::now();
    carol.close().await;
    until(&mut alice, |f| f["type"] == "leave" && f["user"] == "carol").await;
    assert!(closed.elapsed() >= Duration::from_millis(GRACE_MS), "the leave waited for the grace period");
    watcher_node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_thousand_sessions_join_and_leave_and_leave_nothing_behind() {
    use streamhub::delivery::event::Member;
    use streamhub::delivery::session::{Session, Since, SubscribeOptions};
    use streamhub::delivery::Hub;
    use tokio_util::sync::CancellationToken;

    let redis = RedisServer::start();
    let mut config = common::test_config(&redis);
    presence(&mut config);
    let store = streamhub::Store::connect(&config).expect("store");
    store.wait_ready(READY_TIMEOUT).await.expect("redis");
    let shutdown = CancellationToken::new();
    let keys = store.keys().clone();
    let (hints, _task) =
        streamhub::store::hints::Hints::start(&config.redis, keys.clone(), shutdown.clone()).expect("hints");
    let tracker =
        streamhub::delivery::presence::Presence::start(store.clone(), config.presence.clone(), shutdown.clone());
    let tasks = tokio_util::task::TaskTracker::new();
    let hub = Hub::new(store.clone(), hints, tracker, config.fanout.clone(), shutdown.clone(), tasks);
    let topic = streamhub::Topic::parse("room.big", 200).expect("topic");
    let used_memory = || -> u64 {
        redis
            .info("memory")
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = used_memory();

    const N: usize = 5000;
    let mut sessions = Vec::with_capacity(N);
    for i in 0..N {
        let (session, _queue) = Session::new(hub.clone(), &config.ws, shutdown.clone());
        sessions.push((session, _queue));
        let member =
            Member { client: sessions[i].0.client().to_string(), user: format!("user{}", i % 2500), info: None };
        let options = SubscribeOptions { join_leave: false, member: Some(member) };
        sessions[i].0.subscribe(topic.clone(), Since::Now, options).await.expect("subscribe");
    }
    let snapshot = store.presence_list(&topic, streamhub::clock::now_ms(), GRACE_MS, 0).await.expect("list");
    assert_eq!((snapshot.clients, snapshot.users), (N as u64, 2500), "every session, and distinct users");
    let per_entry = used_memory().saturating_sub(before) / N as u64;
    assert!(per_entry < 1024, "{per_entry} bytes of Redis memory per presence entry");

    for (session, _) in &sessions {
        session.close().await;
    }
    // Every entry went at once; the users stay counted for the grace period, then their
    // leaves are published and nothing is left in Redis.
    let snapshot = store.presence_list(&topic, streamhub::clock::now_ms(), GRACE_MS, 0).await.expect("list");
    assert_eq!(snapshot.clients, 0, "no connection");
    assert!(snapshot.users <= 2500, "at most every user, while within its grace: {}", snapshot.users);
    tokio::time::sleep(Duration::from_millis(GRACE_MS + 50)).await;
    // Leaves are purged 1,000 per call: a few calls empty the topic.
    for _ in 0..4 {
        store.presence_list(&topic, streamhub::clock::now_ms(), GRACE_MS, 0).await.expect("list");
    }
    let snapshot = store.presence_list(&topic, streamhub::clock::now_ms(), GRACE_MS, 0).await.expect("list");
    assert_eq!((snapshot.clients, snapshot.users), (0, 0), "every leave published");
    let p = keys.presence(&topic);
    for key in [p.clients, p.expiry, p.users, p.leaving, p.leaving_entries] {
        let exists = String::from_utf8_lossy(&redis.cli(&["EXISTS", &key]).stdout).trim().to_string();
        assert_eq!(exists, "0", "{key} is gone");
    }
    // Only the events stream remains, for the tails to read the leaves, and it expires.
    let left = String::from_utf8_lossy(&redis.cli(&["KEYS", "*"]).stdout).trim().to_string();
    assert_eq!(left, p.events, "no other key is left behind");
    let pttl: i64 = String::from_utf8_lossy(&redis.cli(&["PTTL", &p.events]).stdout).trim().parse().expect("pttl");
    assert!(pttl > 0 && pttl <= 60_000, "the events stream expires within a minute: {pttl}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_events_reach_live_subscribers_and_are_never_stored() {
    let redis = RedisServer::start();
    let app = node(&redis, None).await;
    let mut alice = connect_as(&app, "alice").await;
    let first = subscribe(&mut alice, "room.e", false, json!(null)).await;
    let mut bob = connect_as(&app, "bob").await;
    subscribe(&mut bob, "room.e", false, json!(null)).await;
    listening(&redis, &app, "room.e").await;
    let sent =
        bob.request(json!({ "op": "publish", "topic": "room.e", "data": { "typing": true }, "ephemeral": true })).await;
    assert_eq!(sent["type"], json!("sent"), "{sent}");
    let got = until(&mut alice, |f| f["type"] == "ephemeral").await;
    let event = got.last().expect("event");
    assert_eq!((event["data"].clone(), event["user"].clone()), (json!({ "typing": true }), json!("bob")));
    assert!(event.get("seq").is_none() && event.get("epoch").is_none(), "no position: {event}");
    // Over HTTP too (202: handed over, nothing stored).
    let (status, body) =
        app.post_json("/v1/topics/room.e/messages", &json!({ "data": "cursor", "ephemeral": true })).await;
    assert_eq!((status, body), (StatusCode::ACCEPTED, json!({ "ephemeral": true })));
    until(&mut alice, |f| f["type"] == "ephemeral" && f["data"] == "cursor").await;
    // A stored message after them: seq 1 — the ephemeral events took no seq.
    let _ = &first;
    let (_, stored) = app.publish("room.e", json!("durable")).await;
    assert_eq!(stored["seq"], json!(1));
    let (_, page) = app.get("/v1/topics/room.e/messages?since=0").await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1), "{page}");
    // A resume from before them gets the message only.
    let mut late = connect_as(&app, "carol").await;
    late.subscribe("room.e", Some(json!({ "epoch": first["epoch"], "seq": 0 }))).await;
    let frames = until(&mut late, |f| f["type"] == "message").await;
    assert_eq!(outline(&frames), vec!["m:durable"]);
    // Rejected like a publish: an ephemeral event in a batch.
    let (status, body) = app
        .post_json("/v1/topics/room.e/messages:batch", &json!({ "messages": [{ "data": 1, "ephemeral": true }] }))
        .await;
    assert_eq!((status, common::code(&body)), (StatusCode::BAD_REQUEST, "invalid_request"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_status_is_online_while_a_session_lives_and_remembers_when_it_was_last_seen() {
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| {
        presence(c);
        c.auth.anonymous.clear(); // anonymous callers see nobody's status
    })
    .await;
    let status_as = async |user: &str, of: &str| {
        let response = reqwest::Client::new()
            .get(app.url(&format!("/v1/users/{of}/status")))
            .bearer_auth(format!("key-{user}"))
            .send()
            .await
            .expect("status");
        common::decode(response).await
    };
    let (_, before) = status_as("alice", "bob").await;
    assert_eq!(before["online"], json!(false), "{before}");
    let mut bob = connect_as(&app, "bob").await;
    eventually("bob online", READY_TIMEOUT, async || status_as("alice", "bob").await.1["online"] == json!(true)).await;
    let set = bob.request(json!({ "op": "set_status", "status": "away" })).await;
    assert_eq!(set["type"], json!("status_set"), "{set}");
    let own = bob.request(json!({ "op": "user_status", "user": "bob" })).await;
    assert_eq!((own["online"].clone(), own["status"].clone()), (json!(true), json!("away")));
    // Nobody else may set it; anonymous callers may not read it.
    let response = reqwest::Client::new()
        .put(app.url("/v1/users/bob/status"))
        .bearer_auth("key-alice")
        .json(&json!({ "status": "gone" }))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let (status, _) = common::decode(reqwest::get(app.url("/v1/users/bob/status")).await.expect("get")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let closed = streamhub::clock::now_ms();
    bob.close().await;
    eventually("bob offline after the grace period", READY_TIMEOUT, async || {
        status_as("alice", "bob").await.1["online"] == json!(false)
    })
    .await;
    let (_, after) = status_as("alice", "bob").await;
    let seen = after["last_seen_ms"].as_u64().expect("last seen");
    assert!(seen >= closed.saturating_sub(50) && seen <= streamhub::clock::now_ms(), "{after}");
    assert_eq!(after["status"], json!("away"), "the status text stays");
    app.stop().await;
}

/// A list longer than Lua can unpack at once (~8,000 values) is read in chunks: with
/// `presence.max_list` at 9,000, all 8,500 present clients are listed. The entries are
/// written straight into Redis (as the upsert function writes them), not by 8,500 sessions.
#[tokio::test]
async fn a_list_of_more_than_eight_thousand_members_is_read_whole() {
    const N: usize = 8_500;
    let redis = RedisServer::start();
    let app = TestApp::start_with(&redis, |c| {
        presence(c);
        c.presence.max_list = 9_000;
    })
    .await;
    let key = |suffix: &str| format!("{}:{{room.big}}:{suffix}", app.prefix());
    let fill = "local exp = tonumber(ARGV[2]) \
        for i = 1, tonumber(ARGV[1]) do \
          local c = 'c' .. i; local ukey = 'c:' .. c \
          redis.call('ZADD', KEYS[1], exp, c) \
          redis.call('HSET', KEYS[2], c, #ukey .. ':' .. ukey .. '{\"client\":\"' .. c .. '\",\"user\":\"\"}') \
          redis.call('HSET', KEYS[3], ukey, 1) \
        end return 1";
    let expires = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis()
        + 3_600_000)
        .to_string();
    let (pz, pc, pu) = (key("pz"), key("pc"), key("pu"));
    let out = redis.cli(&["EVAL", fill, "3", &pz, &pc, &pu, &N.to_string(), &expires]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{}", String::from_utf8_lossy(&out.stderr));

    let list = members(&app, "room.big").await;
    assert_eq!(list["clients"], json!(N), "{}", list["clients"]);
    let listed: BTreeSet<&str> =
        list["members"].as_array().expect("members").iter().filter_map(|m| m["client"].as_str()).collect();
    assert_eq!(listed.len(), N);
    assert!(listed.contains("c1") && listed.contains("c8500"));
    app.stop().await;
}
