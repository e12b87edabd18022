//! The Rust handler target: the same retries and dead letters as a webhook, a panicking
//! handler is a failed attempt, and a handler group without a handler refuses to start.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, pull_group, TestRedis};
use serde_json::json;
use streamhub::config::TargetKind;
use streamhub::groups::handler::{handler_fn, Handlers};
use streamhub::groups::webhook::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_group_retries_dead_letters_and_survives_panics() {
    let redis = TestRedis::start();
    let mut config = common::test_config(&redis);
    config.groups.sweep_interval_ms = 20;
    let mut spec = pull_group("h", "rust");
    spec.target = TargetKind::Handler;
    spec.max_attempts = 3;
    spec.backoff_base_ms = 20;
    spec.backoff_jitter = 0.0;
    config.group.push(spec);

    let seen: Arc<Mutex<Vec<(u64, u32)>>> = Default::default();
    let record = seen.clone();
    let mut handlers = Handlers::new();
    handlers.insert(
        "h",
        "rust",
        handler_fn(move |d| {
            let record = record.clone();
            async move {
                record.lock().expect("lock").push((d.seq, d.attempt));
                let text = d.envelope.map(|e| String::from_utf8_lossy(&e.payload).to_string()).unwrap_or_default();
                match (text.as_str(), d.attempt) {
                    ("\"panic\"", _) => panic!("handler bug"),
                    ("\"flaky\"", 1) => Outcome::Retry { error: "not yet".into(), after: None },
                    _ => Outcome::Ack,
                }
            }
        }),
    );
    // Without its handler, the node refuses to start.
    let refused = streamhub::Server::start(config.clone()).await;
    assert!(matches!(refused, Err(streamhub::server::StartError::MissingHandlers(_))));

    let server = streamhub::Server::start_with_handlers(config.clone(), handlers).await.expect("start");
    let app_base = format!("http://{}", server.http_addr());
    let mut admin = reqwest::header::HeaderMap::new();
    admin.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", common::ADMIN_KEY).parse().expect("header"));
    let http = reqwest::Client::builder().default_headers(admin).build().expect("client");
    eventually("the group", common::READY_TIMEOUT, async || {
        let body: serde_json::Value =
            http.get(format!("{app_base}/v1/topics/h/groups")).send().await.expect("get").json().await.expect("json");
        body["groups"][0]["exists"] == json!(true)
    })
    .await;
    for data in ["ok", "flaky", "panic"] {
        let r = http
            .post(format!("{app_base}/v1/topics/h/messages"))
            .json(&json!({ "data": data }))
            .send()
            .await
            .expect("publish");
        assert_eq!(r.status(), 201);
    }
    eventually("settled", Duration::from_secs(30), async || {
        let body: serde_json::Value =
            http.get(format!("{app_base}/v1/topics/h/groups")).send().await.expect("get").json().await.expect("json");
        body["groups"][0]["counters"]["acked"] == json!(2) && body["groups"][0]["dead_letters"] == json!(1)
    })
    .await;
    let mut seen = seen.lock().expect("lock").clone();
    seen.sort();
    assert_eq!(seen, vec![(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3)]);
    let dlq: serde_json::Value = http
        .get(format!("{app_base}/v1/topics/h/groups/rust/dlq"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(dlq["dead_letters"][0]["error"].as_str().is_some_and(|e| e.contains("panicked")), "{dlq}");
    server.stop().await;
}

/// A store on `redis` whose topic `name` holds `payloads` (seqs 1, 2, …), read by group
/// "g" from the earliest.
async fn store_with_group(
    redis: &TestRedis,
    name: &str,
    payloads: impl IntoIterator<Item = Vec<u8>>,
) -> (streamhub::config::Config, streamhub::Store, streamhub::Topic) {
    let config = common::test_config(redis);
    let store = streamhub::Store::connect(&config).expect("store");
    store.wait_ready(common::READY_TIMEOUT).await.expect("redis ready");
    let topic = streamhub::Topic::parse(name, 200).expect("topic");
    let messages: Vec<_> = payloads
        .into_iter()
        .map(|payload| {
            let message = streamhub::message::NewMessage {
                payload,
                content_type: "application/json".into(),
                ..Default::default()
            };
            message.check(&config.limits).expect("valid")
        })
        .collect();
    for batch in messages.chunks(1000) {
        store.publish(&topic, batch.to_vec()).await.expect("publish");
    }
    let start = streamhub::config::GroupStart::Earliest;
    assert!(store.group_ensure(&topic, "g", &start).await.expect("ensure"));
    (config, store, topic)
}

/// `Store::group_settle_read`, the round trip a busy worker makes: it acknowledges by
/// lease (a stale or repeated lease changes nothing), records failures, and then reads into
/// the freed slots, due retries first, at most `count` from each of the group's streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_and_read_in_one_round_trip_checks_leases_and_reads_retries_first() {
    use streamhub::store::groups::{AckStatus, FailStatus, Failure, Lease, RetryPolicy, Source};

    let redis = TestRedis::start();
    let (config, store, topic) = store_with_group(&redis, "ar", (1..=6).map(|n| format!("{n}").into_bytes())).await;
    let policy = RetryPolicy {
        max_attempts: 5,
        base_ms: 60_000,
        max_ms: 60_000,
        multiplier: 2.0,
        jitter: 0.0,
        dlq_max_len: 100,
    };

    // Nothing to settle: a plain read of 3.
    let settled = store.group_settle_read(&topic, "g", "c1", &[], &[], &policy, 3).await.expect("read");
    assert!(settled.acks.is_empty() && settled.fails.is_empty());
    let seqs: Vec<u64> = settled.read.iter().map(|d| d.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let leases: Vec<Lease> = settled.read.iter().map(|d| d.lease.clone()).collect();

    // A due retry waits in the retry stream (as the sweeper leaves it).
    let p = &config.redis.prefix;
    let (stream, retry, schedule) = (format!("{p}:{{ar}}:s"), format!("{p}:{{ar}}:g:g:r"), format!("{p}:{{ar}}:g:g:z"));
    let out = redis.cli(&["XADD", &retry, "*", "seq", "9", "a", "2", "err", "boom"]);
    assert!(out.status.success());

    // seq 1 acknowledged once (the repeat is unknown); seq 2 with a stale delivery count is
    // not acknowledged; seq 3 failed: scheduled for its second attempt. A count of 2: the
    // retry first, then seqs 4 and 5 — not 6.
    let stale = Lease { count: leases[1].count + 1, ..leases[1].clone() };
    let fails = vec![(leases[2].clone(), Failure::Retry(None), "no".to_string())];
    let acks = [leases[0].clone(), leases[0].clone(), stale];
    let settled = store.group_settle_read(&topic, "g", "c1", &acks, &fails, &policy, 2).await.expect("settle+read");
    assert_eq!(settled.acks, vec![AckStatus::Acked, AckStatus::Unknown, AckStatus::LeaseExpired]);
    assert_eq!(settled.fails.len(), 1);
    assert_eq!((settled.fails[0].status, settled.fails[0].attempt), (FailStatus::Scheduled, 1));
    let got: Vec<(Source, u64, u32)> = settled.read.iter().map(|d| (d.lease.source, d.seq, d.attempt)).collect();
    assert_eq!(got, vec![(Source::Retry, 9, 2), (Source::Main, 4, 1), (Source::Main, 5, 1)]);
    assert_eq!(settled.read[0].last_error.as_deref(), Some("boom"));
    let out = redis.cli(&["ZCARD", &schedule]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "seq 3's retry is scheduled");

    // Pending on the topic stream: 2 (still leased), 4 and 5 — not 1, 3 or 6.
    let out = redis.cli(&["XPENDING", &stream, "g"]);
    let summary = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
    assert_eq!(summary, "3", "pending count");

    // Count 0: only settle; a retry entry is acknowledged.
    let acks = [leases[1].clone(), settled.read[0].lease.clone()];
    let last = store.group_settle_read(&topic, "g", "c1", &acks, &[], &policy, 0).await.expect("ack");
    assert_eq!(last.acks, vec![AckStatus::Acked, AckStatus::Acked]);
    assert!(last.read.is_empty());
    let out = redis.cli(&["XPENDING", &retry, "g"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().next(), Some("0"));
}

/// The functions read a batch over the span from its first id to its last, which is
/// exact because streamhub passes each stream's ids lowest first. A caller of an earlier
/// release passes them in any order: every answer must still be exact. Here the ids go
/// to Redis reversed and interleaved with a repeat, an id never delivered and a stale
/// count; the failures' entries are read whole.
#[tokio::test]
async fn a_batch_named_in_any_order_is_settled_exactly() {
    use streamhub::store::groups::{RetryPolicy, Source};

    let redis = TestRedis::start();
    let (config, store, topic) = store_with_group(&redis, "any", (1..=12).map(|n| format!("{n}").into_bytes())).await;
    let policy = RetryPolicy { max_attempts: 5, base_ms: 0, max_ms: 0, multiplier: 2.0, jitter: 0.0, dlq_max_len: 0 };
    let read = store.group_settle_read(&topic, "g", "c1", &[], &[], &policy, 10).await.expect("read").read;
    let ids: Vec<String> = read.iter().map(|d| d.lease.id.clone()).collect();
    assert_eq!(ids.len(), 10);
    let p = &config.redis.prefix;
    let key = |suffix: &str| format!("{p}:{{any}}:{suffix}");
    let (s, r, z, pay, d, m) = (key("s"), key("g:g:r"), key("g:g:z"), key("g:g:p"), key("g:g:d"), key("g:g:m"));
    let lines = |out: std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    };

    // Acks of seqs 5, 4, 3, 2, 1 (reversed), seq 5 again, seq 11 (never delivered), seq 1
    // with a stale count.
    let mut args: Vec<String> = ["FCALL", "sh_group_ack_v1", "3", &s, &r, &m, "g"].map(String::from).to_vec();
    for id in ids[..5].iter().rev().chain([&ids[4]]) {
        args.extend(["m".to_string(), id.clone(), "1".to_string()]);
    }
    args.extend(["m", "11-0", "1", "m", &ids[0], "2"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = lines(redis.cli(&argv));
    let want = ["acked", "acked", "acked", "acked", "acked", "unknown", "unknown", "unknown"];
    assert_eq!(got, want, "seq 1's stale lease is unknown once seq 1 is acked in the same call");

    // Failures of seqs 10, 8, 6 (reversed, with gaps): each scheduled, its entry read whole.
    let now = streamhub::clock::now_ms().to_string();
    let mut args: Vec<String> = ["FCALL", "sh_group_fail_v2", "6", &s, &r, &z, &pay, &d, &m]
        .into_iter()
        .chain(["g", "5", "0", "0", "2", "0", &now, "0"])
        .map(String::from)
        .collect();
    for id in [&ids[9], &ids[7], &ids[5]] {
        args.extend(["m", id, "1", "retry", "0", "boom"].map(String::from));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = lines(redis.cli(&argv));
    assert_eq!(got.iter().filter(|l| *l == "scheduled").count(), 3, "{got:?}");
    store.group_promote(&topic, "g", streamhub::clock::now_ms() + 1, 1000).await.expect("promote");
    let retries = store.group_settle_read(&topic, "g", "c1", &[], &[], &policy, 10).await.expect("read").read;
    let mut got: Vec<(Source, u64, Vec<u8>)> = retries
        .iter()
        .map(|d| (d.lease.source, d.seq, d.envelope.as_ref().map(|e| e.payload.to_vec()).unwrap_or_default()))
        .collect();
    got.sort_by_key(|g| g.1);
    let want: Vec<(Source, u64, Vec<u8>)> =
        [6u64, 8, 10].iter().map(|&n| (Source::Retry, n, n.to_string().into_bytes())).collect();
    assert_eq!(got.into_iter().filter(|g| g.0 == Source::Retry).collect::<Vec<_>>(), want);
}

/// Acknowledged retries leave the retry stream by trimming, not one by one: an entry
/// still pending (here held by a slow consumer, and older than all the others) is kept
/// with its data however many after it are acknowledged, and once nothing is pending the
/// stream is trimmed to its last node, so acknowledged retries do not pile up.
#[tokio::test]
async fn acknowledged_retries_are_trimmed_but_a_pending_one_is_kept_whole() {
    use streamhub::store::groups::{AckStatus, FailStatus, Failure, Lease, RetryPolicy, Source};

    const N: usize = 300;
    let redis = TestRedis::start();
    let (config, store, topic) = store_with_group(&redis, "trim", (1..=N).map(|n| format!("{n}").into_bytes())).await;
    let policy = RetryPolicy { max_attempts: 5, base_ms: 0, max_ms: 0, multiplier: 2.0, jitter: 0.0, dlq_max_len: 0 };
    let p = &config.redis.prefix;
    let retry = format!("{p}:{{trim}}:g:g:r");
    let cli = |args: &[&str]| String::from_utf8_lossy(&redis.cli(args).stdout).trim().to_string();

    // Every message fails once and its retry is promoted: N entries on the retry stream.
    let read = store.group_settle_read(&topic, "g", "c1", &[], &[], &policy, N as u64).await.expect("read").read;
    let fails: Vec<_> = read.iter().map(|d| (d.lease.clone(), Failure::Retry(None), "once".to_string())).collect();
    let settled = store.group_settle_read(&topic, "g", "c1", &[], &fails, &policy, 0).await.expect("fail");
    assert!(settled.fails.iter().all(|f| f.status == FailStatus::Scheduled));
    let (moved, _) = store.group_promote(&topic, "g", streamhub::clock::now_ms() + 1, 1000).await.expect("promote");
    assert_eq!(moved, N as u64);

    // A slow consumer takes the oldest retry; the others are read and acknowledged in
    // batches of 16, as a worker settles them.
    let slow = store.group_settle_read(&topic, "g", "slow", &[], &[], &policy, 1).await.expect("read").read;
    assert_eq!((slow.len(), slow[0].lease.source), (1, Source::Retry));
    let rest = store.group_settle_read(&topic, "g", "c1", &[], &[], &policy, N as u64).await.expect("read").read;
    assert_eq!(rest.len(), N - 1);
    let leases: Vec<Lease> = rest.iter().map(|d| d.lease.clone()).collect();
    for batch in leases.chunks(16) {
        let settled = store.group_settle_read(&topic, "g", "c1", batch, &[], &policy, 0).await.expect("ack");
        assert!(settled.acks.iter().all(|a| *a == AckStatus::Acked));
    }
    assert_eq!(cli(&["XLEN", &retry]), N.to_string(), "nothing from the pending entry on is trimmed");

    // The slow consumer's retry is whole: failed again, it is scheduled with its payload.
    let fails = [(slow[0].lease.clone(), Failure::Retry(None), "slow".to_string())];
    let settled = store.group_settle_read(&topic, "g", "slow", &[], &fails, &policy, 0).await.expect("fail");
    assert_eq!((settled.fails[0].status, settled.fails[0].attempt), (FailStatus::Scheduled, 2));
    store.group_promote(&topic, "g", streamhub::clock::now_ms() + 1, 1000).await.expect("promote");
    let again = store.group_settle_read(&topic, "g", "slow", &[], &[], &policy, 10).await.expect("read").read;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].seq, again[0].attempt, again[0].last_error.as_deref()), (slow[0].seq, 3, Some("slow")));
    let payload = again[0].envelope.as_ref().ok().map(|e| e.payload.to_vec());
    assert_eq!(payload, Some(slow[0].seq.to_string().into_bytes()));

    // Nothing pending once it is acknowledged: the stream keeps at most its last node.
    let settled = store.group_settle_read(&topic, "g", "slow", &[again[0].lease.clone()], &[], &policy, 0).await;
    assert_eq!(settled.expect("ack").acks, vec![AckStatus::Acked]);
    assert_eq!(cli(&["XPENDING", &retry, "g"]).lines().next(), Some("0"));
    let left: usize = cli(&["XLEN", &retry]).parse().expect("XLEN");
    assert!(left < 100, "{left} acknowledged retries left on the retry stream");
    assert_eq!(cli(&["HGET", &format!("{p}:{{trim}}:g:g:m"), "acked"]), N.to_string());
}

/// A worker's failures are settled in one call: each lease checked (a stale one and a
/// repeat change nothing), retries scheduled with their whole data in the schedule (an
/// error with colons, an empty one), a permanent failure dead-lettered; the promote then
/// restores each retry intact, and still promotes one scheduled by an earlier release
/// (its envelope and error in the payload hash).
#[tokio::test]
async fn failures_of_one_batch_are_scheduled_in_one_call_and_promoted_whole() {
    use streamhub::store::groups::{FailStatus, Failure, Lease, RetryPolicy, Source};

    let redis = TestRedis::start();
    let payloads = (1..=5).map(|n| format!("{{\"n\":{n}}}").into_bytes());
    let (config, store, topic) = store_with_group(&redis, "fb", payloads).await;
    let policy = RetryPolicy { max_attempts: 5, base_ms: 0, max_ms: 0, multiplier: 2.0, jitter: 0.0, dlq_max_len: 100 };
    let read = store.group_settle_read(&topic, "g", "c1", &[], &[], &policy, 5).await.expect("read").read;
    let leases: Vec<Lease> = read.iter().map(|d| d.lease.clone()).collect();
    assert_eq!(leases.len(), 5);

    let stale = Lease { count: leases[3].count + 1, ..leases[3].clone() };
    let fails = vec![
        (leases[0].clone(), Failure::Retry(None), "timeout: upstream: 504".to_string()),
        (leases[1].clone(), Failure::Permanent, "bad".to_string()),
        (leases[2].clone(), Failure::Retry(None), String::new()),
        (leases[2].clone(), Failure::Retry(None), "again".to_string()),
        (stale, Failure::Retry(None), "stale".to_string()),
    ];
    let settled = store.group_settle_read(&topic, "g", "c1", &[], &fails, &policy, 0).await.expect("fail");
    let got: Vec<(FailStatus, u32)> = settled.fails.iter().map(|f| (f.status, f.attempt)).collect();
    assert_eq!(
        got,
        vec![
            (FailStatus::Scheduled, 1),
            (FailStatus::Dead, 1),
            (FailStatus::Scheduled, 1),
            (FailStatus::Unknown, 0),
            (FailStatus::LeaseExpired, 0)
        ]
    );
    let p = &config.redis.prefix;
    let key = |suffix: &str| format!("{p}:{{fb}}:{suffix}");
    let cli = |args: &[&str]| String::from_utf8_lossy(&redis.cli(args).stdout).trim().to_string();
    assert_eq!(cli(&["ZCARD", &key("g:g:z")]), "2", "two retries scheduled");
    assert_eq!(cli(&["EXISTS", &key("g:g:p")]), "0", "nothing written beside the schedule");
    assert_eq!(cli(&["XLEN", &key("g:g:d")]), "1", "one dead letter");
    assert_eq!(cli(&["HGET", &key("g:g:m"), "retried"]), "2");
    assert_eq!(cli(&["HGET", &key("g:g:m"), "dead"]), "1");
    // Still pending: seq 4 (its lease was not the stale one) and seq 5 (not settled).
    assert_eq!(cli(&["XPENDING", &key("s"), "g"]).lines().next(), Some("2"));

    // A retry scheduled by an earlier release: "<seq>:<attempt>" in the zset, its data in
    // the hash (seq 5's envelope, copied inside Redis: it is binary).
    let legacy = "local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1][2] \
        redis.call('HSET', KEYS[2], '7:2|e', e[2], '7:2|err', 'old') \
        return redis.call('ZADD', KEYS[3], 0, '7:2')";
    assert_eq!(cli(&["EVAL", legacy, "3", &key("s"), &key("g:g:p"), &key("g:g:z"), "5-0"]), "1");

    let (moved, next) = store.group_promote(&topic, "g", streamhub::clock::now_ms() + 1, 1000).await.expect("promote");
    assert_eq!((moved, next), (3, 0));
    assert_eq!(cli(&["ZCARD", &key("g:g:z")]), "0");
    assert_eq!(cli(&["EXISTS", &key("g:g:p")]), "0", "the legacy retry's data left the hash");
    let retries = store.group_settle_read(&topic, "g", "c1", &[], &[], &policy, 10).await.expect("read").read;
    // (source, seq, attempt, last error, payload) of each delivery.
    type Got = (Source, u64, u32, Option<String>, Vec<u8>);
    let mut got: Vec<Got> = retries
        .iter()
        .map(|d| {
            let payload = d.envelope.as_ref().map(|e| e.payload.to_vec()).unwrap_or_default();
            (d.lease.source, d.seq, d.attempt, d.last_error.clone(), payload)
        })
        .collect();
    got.sort_by_key(|g| g.1);
    let retry = |seq: u64, error: Option<&str>, n: u64| {
        (Source::Retry, seq, 2, error.map(str::to_string), format!("{{\"n\":{n}}}").into_bytes())
    };
    assert_eq!(got, vec![retry(1, Some("timeout: upstream: 504"), 1), retry(3, None, 3), retry(7, Some("old"), 5)]);

    // A node of an earlier release loads its library (the last loader wins): it lacks the
    // v2 functions, so this node's next calls find them missing and load its own again.
    // (Only on a private Redis: other tests share a Cluster or Sentinel set's library.)
    if redis.is_shared() {
        return;
    }
    let earlier =
        "#!lua name=streamhub\nredis.register_function('sh_group_promote_v1', function() return { 0, 0 } end)";
    assert_eq!(cli(&["FUNCTION", "LOAD", "REPLACE", earlier]), "streamhub");
    let again = retries.iter().find(|d| d.seq == 1).expect("seq 1's retry").lease.clone();
    let fails = [(again, Failure::Retry(None), "once more".to_string())];
    let settled = store.group_settle_read(&topic, "g", "c1", &[], &fails, &policy, 0).await.expect("fail again");
    assert_eq!((settled.fails[0].status, settled.fails[0].attempt), (FailStatus::Scheduled, 2));
    let (moved, _) = store.group_promote(&topic, "g", streamhub::clock::now_ms() + 1, 1000).await.expect("promote");
    assert_eq!(moved, 1);
}

/// Settling thousands of deliveries in one call (an ack of `groups.max_fetch` tokens may
/// name 10,000): the functions write them in chunks, since Lua cannot pass that many
/// values to one command.
#[tokio::test]
async fn thousands_of_acks_and_failures_settle_in_one_call() {
    use streamhub::store::groups::{AckStatus, FailStatus, Failure, Lease, RetryPolicy};

    const ACKS: usize = 8_500;
    const FAILS: usize = 1_500;
    let redis = TestRedis::start();
    let payloads = std::iter::repeat_n(b"1".to_vec(), ACKS + FAILS);
    let (config, store, topic) = store_with_group(&redis, "many", payloads).await;
    let policy =
        RetryPolicy { max_attempts: 5, base_ms: 60_000, max_ms: 60_000, multiplier: 2.0, jitter: 0.0, dlq_max_len: 0 };
    let read = store.group_settle_read(&topic, "g", "c", &[], &[], &policy, (ACKS + FAILS) as u64).await;
    let leases: Vec<Lease> = read.expect("read").read.into_iter().map(|d| d.lease).collect();
    assert_eq!(leases.len(), ACKS + FAILS);
    let (acks, failed) = leases.split_at(ACKS);
    let fails: Vec<_> = failed.iter().map(|l| (l.clone(), Failure::Retry(None), "later".to_string())).collect();
    let settled = store.group_settle_read(&topic, "g", "c", acks, &fails, &policy, 0).await.expect("settle");
    assert!(settled.acks.iter().all(|a| *a == AckStatus::Acked) && settled.acks.len() == ACKS);
    assert!(settled.fails.iter().all(|f| f.status == FailStatus::Scheduled) && settled.fails.len() == FAILS);
    let p = &config.redis.prefix;
    let cli = |args: &[&str]| String::from_utf8_lossy(&redis.cli(args).stdout).trim().to_string();
    assert_eq!(cli(&["XPENDING", &format!("{p}:{{many}}:s"), "g"]).lines().next(), Some("0"));
    assert_eq!(cli(&["ZCARD", &format!("{p}:{{many}}:g:g:z")]), FAILS.to_string());
}

/// A busy handler group keeps its in-flight bound while its ack batcher reads into the
/// slots it frees: never more than `concurrency` handler calls at once, never more than
/// `concurrency` entries pending, every message handled once and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_keeps_its_in_flight_bound_and_handles_each_message_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    const N: u64 = 300;
    const CONCURRENCY: usize = 4;
    let redis = TestRedis::start();
    let mut config = common::test_config(&redis);
    let mut spec = pull_group("busy", "rust");
    spec.target = TargetKind::Handler;
    spec.concurrency = CONCURRENCY;
    config.group.push(spec);
    // Published before the node starts: the worker finds a backlog at once.
    {
        let store = streamhub::Store::connect(&config).expect("store");
        store.wait_ready(common::READY_TIMEOUT).await.expect("redis ready");
        let topic = streamhub::Topic::parse("busy", 200).expect("topic");
        let messages: Vec<_> = (0..N)
            .map(|n| {
                streamhub::message::NewMessage {
                    payload: format!("{n}").into_bytes(),
                    content_type: "application/json".into(),
                    ..Default::default()
                }
                .check(&config.limits)
                .expect("valid")
            })
            .collect();
        store.publish(&topic, messages).await.expect("publish");
    }

    let seen: Arc<Mutex<Vec<u64>>> = Default::default();
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut handlers = Handlers::new();
    let (record, current, peak) = (seen.clone(), now.clone(), most.clone());
    handlers.insert(
        "busy",
        "rust",
        handler_fn(move |d| {
            let (record, current, peak) = (record.clone(), current.clone(), peak.clone());
            async move {
                let inside = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(inside, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                record.lock().expect("lock").push(d.seq);
                current.fetch_sub(1, Ordering::SeqCst);
                Outcome::Ack
            }
        }),
    );
    let server = streamhub::Server::start_with_handlers(config.clone(), handlers).await.expect("start");
    // Sample the group's pending count while it works.
    let stream = format!("{}:{{busy}}:s", config.redis.prefix);
    let mut most_pending = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (seen.lock().expect("lock").len() as u64) < N {
        assert!(std::time::Instant::now() < deadline, "timed out: {} handled", seen.lock().expect("lock").len());
        let out = redis.cli(&["XPENDING", &stream, "rust"]);
        let pending = String::from_utf8_lossy(&out.stdout).lines().next().and_then(|l| l.parse().ok()).unwrap_or(0);
        most_pending = most_pending.max(pending);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually("all acknowledged", Duration::from_secs(10), async || {
        let out = redis.cli(&["XPENDING", &stream, "rust"]);
        String::from_utf8_lossy(&out.stdout).lines().next() == Some("0")
    })
    .await;
    server.stop().await;
    let mut seen = seen.lock().expect("lock").clone();
    seen.sort();
    assert_eq!(seen, (1..=N).collect::<Vec<_>>(), "each message handled once");
    let peak = most.load(Ordering::SeqCst);
    assert!((1..=CONCURRENCY).contains(&peak), "handler calls at once: {peak}");
    assert!(most_pending <= CONCURRENCY as u64, "pending entries at once: {most_pending}");
    assert!(most_pending >= 1, "the sampler saw the group at work");
}

/// Departed consumers are removed only when they hold nothing, checked in the same call
/// as the removal (a consumer removed with an entry pending would take the entry out of
/// the pending list: delivered, never acknowledged, never delivered again). The idle
/// pruning keeps this node's consumers; removing a session's consumer by name keeps it
/// while it holds something.
#[tokio::test]
async fn consumers_are_removed_only_when_they_hold_nothing() {
    use streamhub::store::groups::RetryPolicy;

    let redis = TestRedis::start();
    let (config, store, topic) = store_with_group(&redis, "drop", (1..=4).map(|n| format!("{n}").into_bytes())).await;
    let policy =
        RetryPolicy { max_attempts: 5, base_ms: 60_000, max_ms: 60_000, multiplier: 2.0, jitter: 0.0, dlq_max_len: 0 };
    // One message each; "gone" and "node-a:2" acknowledge theirs.
    for consumer in ["node-a:1", "gone", "holder", "node-a:2"] {
        let read = store.group_settle_read(&topic, "g", consumer, &[], &[], &policy, 1).await.expect("read").read;
        assert_eq!(read.len(), 1, "{consumer}");
        if consumer == "gone" || consumer == "node-a:2" {
            let lease = [read[0].lease.clone()];
            store.group_settle_read(&topic, "g", consumer, &lease, &[], &policy, 0).await.expect("ack");
        }
    }
    let stream = format!("{}:{{drop}}:s", config.redis.prefix);
    // (name, pending, idle ms) of each consumer of the topic's stream.
    let consumers = || -> Vec<(String, u64, u64)> {
        let out = redis.cli(&["XINFO", "CONSUMERS", &stream, "g"]);
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
        // Field and value lines, each consumer's starting with "name" (Redis 7.2 adds fields).
        let starts: Vec<usize> = (0..lines.len()).step_by(2).filter(|&i| lines[i] == "name").collect();
        starts
            .iter()
            .enumerate()
            .map(|(k, &at)| {
                let c = &lines[at..starts.get(k + 1).copied().unwrap_or(lines.len())];
                let value = |field: &str| c.chunks(2).find(|p| p[0] == field).and_then(|p| p.get(1)).cloned();
                let number = |field: &str| value(field).and_then(|v| v.parse().ok()).unwrap_or(0);
                (value("name").unwrap_or_default(), number("pending"), number("idle"))
            })
            .collect()
    };
    let names = || -> Vec<String> { consumers().into_iter().map(|c| c.0).collect() };
    assert_eq!(names(), ["gone", "holder", "node-a:1", "node-a:2"]);

    // Pruning whatever has been idle at all: only "gone" (nothing pending, not this node's).
    common::wait_until("an idle millisecond", common::READY_TIMEOUT, || consumers().iter().all(|c| c.2 > 0));
    let removed = store.group_prune_consumers(&topic, "g", Duration::ZERO, "node-a").await.expect("prune");
    assert_eq!(removed, 1);
    assert_eq!(names(), ["holder", "node-a:1", "node-a:2"]);

    // By name: kept while it holds something, removed once it does not.
    store.group_delete_consumer(&topic, "g", "holder").await.expect("delete");
    store.group_delete_consumer(&topic, "g", "node-a:2").await.expect("delete");
    assert_eq!(names(), ["holder", "node-a:1"]);
    let out = redis.cli(&["XPENDING", &stream, "g"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().next(), Some("2"), "nothing left the pending list");
}
