//! The scenarios. Each starts what it needs on loopback, runs a bounded load, checks
//! correctness by seq, and returns result rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scan::Scanner;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use streamhub::config::{AnonymousRule, Config, Scope, SpawnPolicy};
use streamhub::Server;
use tokio_tungstenite::tungstenite::Message;

use crate::report::Row;

pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Result<T> = std::result::Result<T, Error>;

/// The bounds every scenario respects.
pub struct Limits {
    pub redis_url: String,
    pub concurrency: usize,
    pub payload: usize,
    pub count: u64,
    pub deadline: Duration,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn micros_since_epoch() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:28} {bar:40} {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// A streamhub node in this process, open to anonymous clients, on a fresh key prefix.
struct Node {
    server: Server,
    base: String,
    prefix: String,
    redis_url: String,
}

impl Node {
    async fn start(limits: &Limits) -> Result<Node> {
        Self::start_with(limits, |_| {}, streamhub::groups::handler::Handlers::new()).await
    }

    async fn start_with(
        limits: &Limits,
        tweak: impl FnOnce(&mut Config),
        handlers: streamhub::groups::handler::Handlers,
    ) -> Result<Node> {
        let mut config = Config::defaults();
        config.redis.url = limits.redis_url.clone();
        config.redis.spawn = SpawnPolicy::Never;
        let random = uuid::Uuid::now_v7().simple().to_string();
        config.redis.prefix = format!("bench-{}", &random[random.len() - 8..]);
        config.server.listen = "127.0.0.1:0".parse()?;
        config.server.metrics_listen = "127.0.0.1:0".parse()?;
        config.retention.max_len = limits.count.saturating_mul(2).max(100_000);
        config.ws.max_connections = 50_000;
        config.ws.max_subscriptions = 1000;
        config.http.publish_rate_per_sec = u32::MAX;
        config.http.connection_rate_per_ip = u32::MAX;
        config.http.max_connections_per_ip = 1_000_000;
        config.log.level = "warn".into();
        config.auth.anonymous.push(AnonymousRule {
            topics: vec!["*".into()],
            scopes: vec![Scope::Subscribe, Scope::Publish, Scope::Consume, Scope::Presence],
        });
        tweak(&mut config);
        let prefix = config.redis.prefix.clone();
        let server = Server::start_with_handlers(config, handlers).await?;
        server.store().wait_ready(Duration::from_secs(5)).await?;
        let base = format!("http://{}", server.http_addr());
        Ok(Node { server, base, prefix, redis_url: limits.redis_url.clone() })
    }

    /// Stops the node and deletes every key it wrote.
    async fn finish(self) -> Result<()> {
        self.server.stop().await;
        delete_prefix(&self.redis_url, &format!("{}:*", self.prefix)).await
    }
}

pub(crate) async fn redis(url: &str) -> Result<Client> {
    let client = Builder::from_config(fred::types::config::Config::from_url(url)?).build()?;
    client.init().await?;
    Ok(client)
}

async fn delete_prefix(url: &str, pattern: &str) -> Result<()> {
    let client = redis(url).await?;
    let mut keys: Vec<Key> = Vec::new();
    if client.is_clustered() {
        // Every primary's keys; deleted one by one (a multi-key DEL must stay in one slot).
        let mut scan = client.scan_cluster(pattern, Some(1000), None);
        while let Some(page) = scan.next().await {
            keys.extend(page?.take_results().unwrap_or_default());
        }
        for key in keys {
            let _: i64 = client.del(key).await?;
        }
    } else {
        let mut scan = client.scan(pattern, Some(1000), None);
        while let Some(page) = scan.next().await {
            keys.extend(page?.take_results().unwrap_or_default());
        }
        for chunk in keys.chunks(500) {
            let _: i64 = client.del(chunk.to_vec()).await?;
        }
    }
    client.quit().await?;
    Ok(())
}

fn payload(size: usize) -> String {
    "x".repeat(size)
}

/// Runs `concurrency` workers that each take units from a shared budget of `total` and
/// call `unit(worker, n)` with the number taken (at most `chunk`), until the budget or
/// the deadline runs out. Returns the per-worker histograms merged and the elapsed time.
async fn drive<F, Fut>(
    limits: &Limits,
    total: u64,
    chunk: u64,
    bar: &ProgressBar,
    unit: F,
) -> Result<(Histogram<u64>, Duration)>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let remaining = Arc::new(AtomicU64::new(total));
    let unit = Arc::new(unit);
    let deadline = Instant::now() + limits.deadline;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..limits.concurrency {
        let (remaining, unit, bar) = (remaining.clone(), unit.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            while Instant::now() < deadline {
                let took = remaining
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                        r.checked_sub(chunk.min(r).max(1)).filter(|_| r > 0)
                    })
                    .ok();
                let Some(before) = took else { break };
                let n = chunk.min(before);
                let t = Instant::now();
                unit(worker, n).await?;
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                bar.inc(n);
            }
            Ok::<_, Error>(h)
        }));
    }
    let mut merged = histogram();
    for task in tasks {
        merged.add(task.await??)?;
    }
    Ok((merged, started.elapsed()))
}

/// The seqs acknowledged must be exactly 1..=n.
fn exact(mut seqs: Vec<u64>, n: u64) -> bool {
    seqs.sort_unstable();
    seqs.len() as u64 == n && seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1)
}

/// A row of `publish-http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishRow {
    Single,
    Batch,
}

/// The shape of a `publish-http` run.
pub struct PublishHow {
    /// Messages per batch request.
    pub batch: usize,
    /// streamhub as a child process (its own CPU is then measured).
    pub child: bool,
    pub nodes: usize,
    pub only: Option<PublishRow>,
    /// HTTP/2 without TLS (prior knowledge) instead of keep-alive HTTP/1.1.
    pub h2c: bool,
}

pub async fn publish_http(limits: &Limits, how: PublishHow) -> Result<Vec<Row>> {
    let PublishHow { batch, child, nodes, only, h2c } = how;
    let node = BenchNode::start(limits, child, nodes, "\"publish\"").await?;
    let builder = reqwest::Client::builder().pool_max_idle_per_host(limits.concurrency);
    let http = if h2c { builder.http2_prior_knowledge() } else { builder }.build()?;
    let data = payload(limits.payload);
    let mut rows = Vec::new();
    let all =
        [(PublishRow::Single, "publish-http single", 1u64), (PublishRow::Batch, "publish-http batch", batch as u64)];
    for (_, name, per_request) in all.into_iter().filter(|(row, ..)| only.is_none_or(|o| o == *row)) {
        let topic = format!("http-{per_request}");
        let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
        let bar = bar(limits.count, name);
        // Worker w publishes through node w (round robin).
        let urls: Vec<(String, String)> = (0..node.count())
            .map(|i| {
                let base = node.base_of(i);
                (format!("{base}/v1/topics/{topic}/messages"), format!("{base}/v1/topics/{topic}/messages:batch"))
            })
            .collect();
        let cpu_before = node.cpu();
        let (h, elapsed) = {
            let (http, data, acked) = (http.clone(), data.clone(), acked.clone());
            drive(limits, limits.count, per_request, &bar, move |worker, n| {
                let (url_one, url_batch) = urls[worker % urls.len()].clone();
                let (http, data, acked) = (http.clone(), data.clone(), acked.clone());
                async move {
                    if per_request == 1 {
                        let r: Value = http
                            .post(&url_one)
                            .json(&json!({ "data": data }))
                            .send()
                            .await?
                            .error_for_status()?
                            .json()
                            .await?;
                        acked.lock().map_err(|_| "poisoned")?.push(r["seq"].as_u64().unwrap_or(0));
                    } else {
                        let messages: Vec<Value> = (0..n).map(|_| json!({ "data": data })).collect();
                        let r: Value = http
                            .post(&url_batch)
                            .json(&json!({ "messages": messages }))
                            .send()
                            .await?
                            .error_for_status()?
                            .json()
                            .await?;
                        let mut acked = acked.lock().map_err(|_| "poisoned")?;
                        for result in r["results"].as_array().into_iter().flatten() {
                            acked.push(result["seq"].as_u64().unwrap_or(0));
                        }
                    }
                    Ok(())
                }
            })
            .await?
        };
        let cpu = cpu_note(cpu_before, node.cpu(), acked.lock().map_err(|_| "poisoned")?.len() as u64, "message");
        bar.finish_and_clear();
        let acked = acked.lock().map_err(|_| "poisoned")?.clone();
        let n = acked.len() as u64;
        let note = format!(
            "C={} payload={}B per request={per_request}{}{}; latency per request{cpu}",
            limits.concurrency,
            limits.payload,
            if h2c { ", h2c" } else { "" },
            if node.count() > 1 { format!(", {} nodes", node.count()) } else { String::new() },
        );
        rows.push(Row::new(name, n, elapsed.as_secs_f64(), Some(&h), exact(acked, n), note));
    }
    node.finish().await?;
    Ok(rows)
}

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn ws_connect(base: &str) -> Result<Ws> {
    // Nagle off, as browsers and WebSocket libraries have it.
    let url = format!("{}/v1/ws", base.replacen("http://", "ws://", 1));
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    Ok(ws)
}

/// The fields of a server frame the hot client loops look at; the rest (the payload) is
/// skipped without being built, so the client spends its CPU on the protocol, not on
/// allocating JSON trees.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

/// A message's data: the fanout publisher's `{"t": <publish time, µs>}`, or anything else.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Data {
    Stamp { t: u64 },
    Other(serde::de::IgnoredAny),
}

async fn next_head(ws: &mut Ws) -> Result<Head> {
    loop {
        match ws.next().await.ok_or("connection closed")?? {
            Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
            Message::Close(_) => return Err("connection closed".into()),
            _ => continue,
        }
    }
}

pub(crate) async fn next_json(ws: &mut Ws) -> Result<Value> {
    loop {
        match ws.next().await.ok_or("connection closed")?? {
            Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
            Message::Close(_) => return Err("connection closed".into()),
            _ => continue,
        }
    }
}

pub async fn publish_ws(limits: &Limits) -> Result<Vec<Row>> {
    let node = Node::start(limits).await?;
    let mut sockets = Vec::new();
    for _ in 0..limits.concurrency {
        sockets.push(Arc::new(tokio::sync::Mutex::new(ws_connect(&node.base).await?)));
    }
    let data = payload(limits.payload);
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let bar = bar(limits.count, "publish-ws");
    let (h, elapsed) = {
        let (sockets, acked) = (sockets.clone(), acked.clone());
        drive(limits, limits.count, 1, &bar, move |worker, _| {
            let (socket, data, acked) = (sockets[worker].clone(), data.clone(), acked.clone());
            async move {
                let mut ws = socket.lock().await;
                ws.send(Message::Text(
                    json!({ "op": "publish", "id": 1, "topic": "ws", "data": data }).to_string().into(),
                ))
                .await?;
                let reply = next_json(&mut ws).await?;
                if reply["type"] != "published" {
                    return Err(format!("publish refused: {reply}").into());
                }
                acked.lock().map_err(|_| "poisoned")?.push(reply["seq"].as_u64().unwrap_or(0));
                Ok(())
            }
        })
        .await?
    };
    bar.finish_and_clear();
    let acked = acked.lock().map_err(|_| "poisoned")?.clone();
    let n = acked.len() as u64;
    let note = format!("C={} connections, payload={}B, each awaiting its ack", limits.concurrency, limits.payload);
    let rows = vec![Row::new("publish-ws", n, elapsed.as_secs_f64(), Some(&h), exact(acked, n), note)];
    node.finish().await?;
    Ok(rows)
}

/// Where the server runs: in this process, or as `nodes` child processes sharing one key
/// prefix (so that the clients' and the servers' file descriptors count against separate
/// limits, and each server's CPU is its own).
enum BenchNode {
    InProcess(Box<Node>),
    Children(Vec<ChildNode>),
}

impl BenchNode {
    async fn start(limits: &Limits, child: bool, nodes: usize, scopes: &str) -> Result<BenchNode> {
        if !child {
            if nodes > 1 {
                return Err("--nodes above 1 needs --child (each node is a `streamhub serve` process)".into());
            }
            return Ok(BenchNode::InProcess(Box::new(Node::start(limits).await?)));
        }
        let first = ChildNode::start(limits, scopes).await?;
        let prefix = first.prefix.clone();
        let mut children = vec![first];
        for _ in 1..nodes.max(1) {
            children.push(ChildNode::start_in(limits, scopes, "", Some(&prefix)).await?);
        }
        Ok(BenchNode::Children(children))
    }

    /// The servers' CPU time so far (all nodes together), when they run as processes.
    fn cpu(&self) -> Option<(Duration, Duration)> {
        match self {
            BenchNode::InProcess(_) => None,
            BenchNode::Children(nodes) => nodes.iter().try_fold((Duration::ZERO, Duration::ZERO), |(u, s), n| {
                cpu_time(n.pid).map(|(nu, ns)| (u + nu, s + ns))
            }),
        }
    }

    /// The base URL of node `i` (round robin over the nodes).
    fn base_of(&self, i: usize) -> &str {
        match self {
            BenchNode::InProcess(n) => &n.base,
            BenchNode::Children(nodes) => &nodes[i % nodes.len()].base,
        }
    }

    fn count(&self) -> usize {
        match self {
            BenchNode::InProcess(_) => 1,
            BenchNode::Children(nodes) => nodes.len(),
        }
    }

    async fn finish(self) -> Result<()> {
        match self {
            BenchNode::InProcess(n) => n.finish().await,
            BenchNode::Children(nodes) => {
                for n in nodes {
                    n.finish().await?;
                }
                Ok(())
            }
        }
    }
}

/// A subscriber of `topic` on its own connection, in the native protocol or in
/// Centrifugo's (JSON): the connection once the subscription is confirmed.
async fn subscriber(base: &str, topic: &str, centrifugo: bool) -> Result<Ws> {
    if !centrifugo {
        let mut ws = ws_connect(base).await?;
        ws.send(Message::Text(json!({ "op": "subscribe", "id": 1, "topic": topic }).to_string().into())).await?;
        let reply = next_json(&mut ws).await?;
        if reply["type"] != "subscribed" {
            return Err(format!("subscribe refused: {reply}").into());
        }
        return Ok(ws);
    }
    let url = format!("{}/connection/websocket", base.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    let frame =
        format!("{}\n{}", json!({ "id": 1, "connect": {} }), json!({ "id": 2, "subscribe": { "channel": topic } }));
    ws.send(Message::Text(frame.into())).await?;
    loop {
        let reply = next_json(&mut ws).await?;
        if reply.get("error").is_some() {
            return Err(format!("Centrifugo refused: {reply}").into());
        }
        if reply["id"] == 2 {
            return Ok(ws);
        }
    }
}

/// A Centrifugo push as the bench reads it: the publication's offset and stamp.
#[derive(serde::Deserialize)]
struct CfFrame {
    #[serde(default)]
    push: Option<CfPush>,
}
#[derive(serde::Deserialize)]
struct CfPush {
    #[serde(default, rename = "pub")]
    publication: Option<CfPublication>,
}
#[derive(serde::Deserialize)]
struct CfPublication {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    data: Option<Data>,
}

/// The next message a subscriber gets: (seq, when it was sent in µs since the epoch).
/// Centrifugo's pings are answered on the way.
async fn next_delivery(ws: &mut Ws, centrifugo: bool) -> Result<(u64, u64)> {
    let stamp = |d: Option<Data>| match d {
        Some(Data::Stamp { t }) => t,
        _ => 0,
    };
    loop {
        if !centrifugo {
            let frame = next_head(ws).await?;
            if frame.kind == "message" {
                return Ok((frame.seq, stamp(frame.data)));
            }
            continue;
        }
        match ws.next().await.ok_or("connection closed")?? {
            Message::Text(t) if t.as_str() == "{}" => ws.send(Message::Text("{}".into())).await?,
            Message::Text(t) => {
                let frame: CfFrame = serde_json::from_str(t.as_str())?;
                if let Some(p) = frame.push.and_then(|p| p.publication) {
                    return Ok((p.offset, stamp(p.data)));
                }
            }
            Message::Close(_) => return Err("connection closed".into()),
            _ => {}
        }
    }
}

/// The shape of a fan-out run: S subscribers over T topics, R messages/s for D seconds.
pub struct Shape {
    pub subscribers: usize,
    pub topics: usize,
    pub rate: u64,
    pub seconds: u64,
}

pub async fn fanout(
    limits: &Limits,
    Shape { subscribers, topics, rate, seconds }: Shape,
    child: bool,
    nodes: usize,
    centrifugo: bool,
) -> Result<Vec<Row>> {
    let node = BenchNode::start(limits, child, nodes, "\"subscribe\", \"publish\"").await?;
    let total = rate * seconds;
    let per_topic: Vec<u64> = (0..topics).map(|t| (total + (topics - 1 - t) as u64) / topics as u64).collect();
    let expected: u64 = (0..subscribers).map(|i| per_topic[i % topics]).sum();
    let bar = bar(expected, "fanout deliveries");
    // Subscribers first, each on its own connection.
    let mut readers = Vec::new();
    let latency: Arc<Mutex<Histogram<u64>>> = Arc::new(Mutex::new(histogram()));
    let problems = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + limits.deadline;
    // Readers start their 5-second silence timeout only once publishing starts (connecting
    // thousands of subscribers takes longer than that).
    let (go, started_rx) = tokio::sync::watch::channel(false);
    for i in 0..subscribers {
        let mut ws = subscriber(node.base_of(i), &format!("fan-{}", i % topics), centrifugo).await?;
        let want = per_topic[i % topics];
        let (latency, problems, delivered, bar) = (latency.clone(), problems.clone(), delivered.clone(), bar.clone());
        let mut started_rx = started_rx.clone();
        readers.push(tokio::spawn(async move {
            let _ = started_rx.wait_for(|go| *go).await;
            let mut h = histogram();
            let mut last = 0u64;
            while last < want && Instant::now() < deadline {
                let Ok(Ok((seq, sent))) =
                    tokio::time::timeout(Duration::from_secs(5), next_delivery(&mut ws, centrifugo)).await
                else {
                    break;
                };
                if seq != last + 1 {
                    problems.fetch_add(1, Ordering::Relaxed);
                }
                last = seq;
                let _ = h.record(micros_since_epoch().saturating_sub(sent).max(1));
                delivered.fetch_add(1, Ordering::Relaxed);
                bar.inc(1);
            }
            if last != want {
                problems.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut all) = latency.lock() {
                let _ = all.add(&h);
            }
        }));
    }
    // The publisher: `rate` messages per second, round robin over the topics.
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let _ = go.send(true);
    let per_tick = rate as f64 / 100.0;
    let cpu_before = node.cpu();
    let mut sent = 0u64;
    let mut owed = 0.0;
    while sent < total && Instant::now() < deadline {
        tick.tick().await;
        owed += per_tick;
        let mut posts = Vec::new();
        while owed >= 1.0 && sent < total {
            // Round robin over the nodes, offset from the topics' so that every node
            // publishes to every topic.
            let url =
                format!("{}/v1/topics/fan-{}/messages", node.base_of(sent as usize / topics), sent as usize % topics);
            let body = json!({ "data": { "t": micros_since_epoch(), "pad": payload(limits.payload) } });
            posts.push(http.post(url).json(&body).send());
            owed -= 1.0;
            sent += 1;
        }
        for r in futures::future::join_all(posts).await {
            r?.error_for_status()?;
        }
    }
    for r in readers {
        let _ = r.await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_note(cpu_before, node.cpu(), delivered.load(Ordering::Relaxed), "delivery");
    bar.finish_and_clear();
    let h = latency.lock().map_err(|_| "poisoned")?.clone();
    let n = delivered.load(Ordering::Relaxed);
    let correct = problems.load(Ordering::Relaxed) == 0 && n == expected;
    let note = format!(
        "S={subscribers} T={topics} R={rate}/s for {seconds}s{}; latency publish→receive; {expected} expected{cpu}",
        if node.count() > 1 { format!(", {} nodes", node.count()) } else { String::new() }
    );
    let name = if centrifugo { "fanout deliveries (Centrifugo protocol)" } else { "fanout deliveries" };
    let rows = vec![Row::new(name, n, elapsed.as_secs_f64(), Some(&h), correct, note)];
    node.finish().await?;
    Ok(rows)
}

pub async fn resume(limits: &Limits) -> Result<Vec<Row>> {
    let node = Node::start(limits).await?;
    let http = reqwest::Client::new();
    let data = payload(limits.payload);
    let mut published = 0;
    let mut epoch = String::new();
    while published < limits.count {
        let n = 500.min(limits.count - published);
        let messages: Vec<Value> = (0..n).map(|_| json!({ "data": data })).collect();
        let r: Value = http
            .post(format!("{}/v1/topics/behind/messages:batch", node.base))
            .json(&json!({ "messages": messages }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        epoch = r["results"][0]["epoch"].as_str().unwrap_or_default().to_string();
        published += n;
    }
    let bar = bar(limits.count, "resume catch-up");
    let mut ws = ws_connect(&node.base).await?;
    let started = Instant::now();
    ws.send(Message::Text(
        json!({ "op": "subscribe", "id": 1, "topic": "behind", "since": { "epoch": epoch, "seq": 0 } })
            .to_string()
            .into(),
    ))
    .await?;
    let mut last = 0u64;
    let mut in_order = true;
    let deadline = Instant::now() + limits.deadline;
    while last < limits.count && Instant::now() < deadline {
        let frame = next_head(&mut ws).await?;
        if frame.kind == "message" {
            let seq = frame.seq;
            in_order &= seq == last + 1;
            last = seq;
            bar.inc(1);
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let note = format!("one subscriber {} messages behind, payload={}B", limits.count, limits.payload);
    let rows =
        vec![Row::new("resume catch-up", last, elapsed.as_secs_f64(), None, in_order && last == limits.count, note)];
    node.finish().await?;
    Ok(rows)
}

pub async fn raw(limits: &Limits) -> Result<Vec<Row>> {
    let pool = Builder::from_config(fred::types::config::Config::from_url(&limits.redis_url)?).build_pool(4)?;
    pool.init().await?;
    let random = uuid::Uuid::now_v7().simple().to_string();
    let key = format!("bench-raw-{}", &random[random.len() - 8..]);
    let data = payload(limits.payload);
    let mut rows = Vec::new();
    for (name, depth) in [("raw XADD", 1u64), ("raw XADD pipelined x16", 16u64)] {
        let stream = format!("{key}:{depth}");
        let bar = bar(limits.count, name);
        let (pool2, data2, stream2) = (pool.clone(), data.clone(), stream.clone());
        let (h, elapsed) = drive(limits, limits.count, depth, &bar, move |_, n| {
            let (pool, data, stream) = (pool2.clone(), data2.clone(), stream2.clone());
            async move {
                let client = pool.next();
                if n == 1 {
                    let _: String = client.xadd(&stream, false, None, "*", ("e", data.as_str())).await?;
                } else {
                    let pipeline = client.pipeline();
                    for _ in 0..n {
                        let _: () = pipeline.xadd(&stream, false, None, "*", ("e", data.as_str())).await?;
                    }
                    let _: Vec<String> = pipeline.all().await?;
                }
                Ok(())
            }
        })
        .await?;
        bar.finish_and_clear();
        let len: u64 = pool.next().xlen(&stream).await?;
        let note =
            format!("C={} payload={}B depth={depth}; latency per round trip", limits.concurrency, limits.payload);
        rows.push(Row::new(name, len, elapsed.as_secs_f64(), Some(&h), len == limits.count, note));
    }
    // XRANGE the first stream back in pages of 256.
    let stream = format!("{key}:1");
    let started = Instant::now();
    let mut read = 0u64;
    let mut start = "-".to_string();
    loop {
        let page: Vec<(String, HashMap<String, String>)> =
            pool.next().xrange(&stream, start.as_str(), "+", Some(256)).await?;
        let Some((last, _)) = page.last() else { break };
        read += page.len() as u64;
        start = format!("({last}");
        if page.len() < 256 {
            break;
        }
    }
    rows.push(Row::new(
        "raw XRANGE pages of 256",
        read,
        started.elapsed().as_secs_f64(),
        None,
        read == limits.count,
        "sequential reads",
    ));
    let _: i64 = pool.next().del(vec![format!("{key}:1"), format!("{key}:16")]).await?;
    pool.quit().await?;
    Ok(rows)
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmRSS")?;
    Ok(kb * 1024)
}

/// CPU time a process has used so far: (user, system), from `/proc/<pid>/stat` (fields
/// 14 and 15, in USER_HZ ticks: 100 per second on Linux, whatever the kernel's HZ).
fn cpu_time(pid: u32) -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after its closing paren.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let tick = |t: &str| t.parse::<u64>().ok().map(|t| Duration::from_millis(t * 10));
    Some((tick(fields.next()?)?, tick(fields.next()?)?))
}

/// The server's CPU per operation between two `cpu_time` readings, for a row's note.
fn cpu_note(before: Option<(Duration, Duration)>, after: Option<(Duration, Duration)>, ops: u64, what: &str) -> String {
    match (before, after) {
        (Some((u0, s0)), Some((u1, s1))) if ops > 0 => {
            let per = |d: Duration| d.as_secs_f64() * 1e6 / ops as f64;
            let (user, sys) = (per(u1.saturating_sub(u0)), per(s1.saturating_sub(s0)));
            format!("; server CPU {:.1} µs per {what} (user {user:.1}, sys {sys:.1})", user + sys)
        }
        _ => String::new(),
    }
}

/// `streamhub serve` as a child process (its memory and file descriptors are its own),
/// open to anonymous clients with `scopes`, on a fresh key prefix.
pub(crate) struct ChildNode {
    /// None once `finish` has waited for it.
    child: Option<std::process::Child>,
    pub pid: u32,
    pub base: String,
    dir: std::path::PathBuf,
    pub prefix: String,
    redis_url: String,
}

impl ChildNode {
    pub async fn start(limits: &Limits, scopes: &str) -> Result<ChildNode> {
        Self::start_with(limits, scopes, "").await
    }

    /// As `start`, with more configuration (TOML tables) appended.
    pub async fn start_with(limits: &Limits, scopes: &str, extra: &str) -> Result<ChildNode> {
        Self::start_in(limits, scopes, extra, None).await
    }

    /// As `start_with`, on the key prefix of another node (None: a fresh one), so that
    /// several nodes serve the same topics.
    pub async fn start_in(limits: &Limits, scopes: &str, extra: &str, prefix: Option<&str>) -> Result<ChildNode> {
        let binary = std::env::current_exe()?.with_file_name("streamhub");
        if !binary.exists() {
            return Err(format!("{} not found: build it (cargo build --release)", binary.display()).into());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("streamhub-bench-{port}"));
        std::fs::create_dir_all(&dir)?;
        let random = uuid::Uuid::now_v7().simple().to_string();
        let prefix = prefix.map_or_else(|| format!("bench-{}", &random[random.len() - 8..]), str::to_string);
        let config = dir.join("bench.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:0\"\n\
                 [redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\nspawn = \"never\"\n\
                 [ws]\nmax_connections = 100000\n\
                 [http]\nconnection_rate_per_ip = 1000000\nmax_connections_per_ip = 1000000\npublish_rate_per_sec = 1000000\n\
                 [log]\nlevel = \"warn\"\n[[auth.anonymous]]\ntopics = [\"*\"]\nscopes = [{scopes}]\n{extra}",
                limits.redis_url
            ),
        )?;
        let child = std::process::Command::new(&binary)
            .args(["--config", &config.display().to_string(), "serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let node = ChildNode {
            pid: child.id(),
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            dir,
            prefix,
            redis_url: limits.redis_url.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if reqwest::get(format!("{}/healthz", node.base)).await.is_ok_and(|r| r.status().is_success()) {
                return Ok(node);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("streamhub did not start".into())
    }

    /// SIGTERM, wait, delete its keys and files.
    pub async fn finish(mut self) -> Result<()> {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), nix::sys::signal::Signal::SIGTERM);
        if let Some(mut child) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        delete_prefix(&self.redis_url, &format!("{}:*", self.prefix)).await
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn connections(limits: &Limits) -> Result<Vec<Row>> {
    // The server runs as a child process so that its memory is measured alone.
    let node = ChildNode::start(limits, "\"subscribe\"").await?;
    let (base, pid) = (node.base.clone(), node.pid);
    let result = async {
        // Warm up (first connection, first subscription), then measure.
        let mut warm = ws_connect(&base).await?;
        warm.send(Message::Text(json!({ "op": "subscribe", "id": 1, "topic": "idle" }).to_string().into())).await?;
        next_json(&mut warm).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_bytes(pid)?;
        let bar = bar(limits.count, "idle connections");
        let started = Instant::now();
        let mut sockets = Vec::with_capacity(limits.count as usize);
        let deadline = Instant::now() + limits.deadline;
        while (sockets.len() as u64) < limits.count && Instant::now() < deadline {
            let mut ws = ws_connect(&base).await?;
            ws.send(Message::Text(json!({ "op": "subscribe", "id": 1, "topic": "idle" }).to_string().into())).await?;
            next_json(&mut ws).await?;
            sockets.push(ws);
            bar.inc(1);
        }
        let elapsed = started.elapsed();
        bar.finish_and_clear();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_bytes(pid)?;
        let n = sockets.len() as u64;
        let per = after.saturating_sub(before) / n.max(1);
        let note = format!(
            "server RSS {} MiB → {} MiB: {} bytes ({:.1} KiB) per idle subscribed connection",
            before >> 20,
            after >> 20,
            per,
            per as f64 / 1024.0
        );
        Ok::<_, Error>(vec![Row::new(
            "connections (idle, subscribed)",
            n,
            elapsed.as_secs_f64(),
            None,
            n == limits.count,
            note,
        )])
    }
    .await;
    node.finish().await?;
    result
}

fn group(
    topic: &str,
    name: &str,
    target: &str,
    url: Option<&str>,
    concurrency: usize,
) -> Result<streamhub::config::GroupSpec> {
    let mut text = format!("topic = \"{topic}\"\nname = \"{name}\"\ntarget = \"{target}\"\nstart = \"earliest\"\n");
    if let Some(url) = url {
        text.push_str(&format!("url = \"{url}\"\n"));
    }
    let mut spec: streamhub::config::GroupSpec = toml::from_str(&text)?;
    spec.concurrency = concurrency;
    Ok(spec)
}

/// Publishes `n` messages to `topic` through the node's store, in batches.
async fn preload(node: &Node, topic: &str, n: u64, payload_size: usize) -> Result<()> {
    let topic = streamhub::Topic::parse(topic, 200)?;
    let limits = Config::defaults().limits;
    let mut done = 0;
    while done < n {
        let k = 500.min(n - done);
        let messages = (0..k)
            .map(|_| {
                streamhub::message::NewMessage {
                    payload: payload(payload_size).into_bytes(),
                    content_type: "text/plain".into(),
                    ..Default::default()
                }
                .check(&limits)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        node.server.store().publish(&topic, messages).await?;
        done += k;
    }
    Ok(())
}

/// Waits until `count()` reaches `n` (or the deadline); returns the elapsed time.
async fn until(n: u64, deadline: Instant, bar: &ProgressBar, count: impl Fn() -> u64) -> Duration {
    let started = Instant::now();
    while count() < n && Instant::now() < deadline {
        bar.set_position(count());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bar.finish_and_clear();
    started.elapsed()
}

pub async fn consume(limits: &Limits) -> Result<Vec<Row>> {
    let n = limits.count;
    let workers = limits.concurrency;
    let mut rows = Vec::new();

    // In-process handler and webhook: the node's own workers deliver.
    let handled = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let received = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let received = received.clone();
                async move {
                    received.fetch_add(1, Ordering::Relaxed);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    };
    let mut handlers = streamhub::groups::handler::Handlers::new();
    let counter = handled.clone();
    handlers.insert(
        "work-handler",
        "g",
        streamhub::groups::handler::handler_fn(move |_| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                streamhub::groups::webhook::Outcome::Ack
            }
        }),
    );
    // Retries: every message fails its first attempt and succeeds on its second (what the
    // peer harness's BullMQ retry scenario does: attempts 2, exponential backoff 10 ms).
    let retried = Arc::new(AtomicU64::new(0));
    let counter = retried.clone();
    handlers.insert(
        "work-retry",
        "g",
        streamhub::groups::handler::handler_fn(move |d| {
            let counter = counter.clone();
            async move {
                if d.attempt <= 1 {
                    return streamhub::groups::webhook::Outcome::Retry {
                        error: "first attempt fails".into(),
                        after: None,
                    };
                }
                counter.fetch_add(1, Ordering::Relaxed);
                streamhub::groups::webhook::Outcome::Ack
            }
        }),
    );
    // Preload with a node that has no groups; then each push target gets a node of its
    // own on the same keys (its group starts at "earliest"), timed from that node's start.
    let loader = Node::start(limits).await?;
    for topic in ["work-handler", "work-webhook", "work-pull", "work-ws", "work-retry"] {
        preload(&loader, topic, n, limits.payload).await?;
    }
    let prefix = loader.prefix.clone();
    loader.server.stop().await;
    let deadline = Instant::now() + limits.deadline;
    for (name, topic, target, url, counter) in [
        ("consume handler", "work-handler", "handler", None, handled.clone()),
        ("consume webhook", "work-webhook", "webhook", Some(receiver.as_str()), received.clone()),
        ("consume handler, retry once", "work-retry", "handler", None, retried.clone()),
    ] {
        let mut spec = group(topic, "g", target, url, workers)?;
        spec.max_attempts = 2;
        spec.backoff_base_ms = 10;
        let prefix = prefix.clone();
        let bar = bar(n, name);
        let started = Instant::now();
        let node = Node::start_with(
            limits,
            move |c| {
                c.redis.prefix = prefix;
                c.groups.sweep_interval_ms = 50;
                c.group.push(spec);
            },
            handlers.clone(),
        )
        .await?;
        // Timed from the first delivery to the last, as the peer harness times BullMQ's
        // worker; the node's start and the group's creation are in the note.
        let _ = until(1, deadline, &ProgressBar::hidden(), || counter.load(Ordering::Relaxed)).await;
        let to_first = started.elapsed();
        let elapsed = until(n, deadline, &bar, || counter.load(Ordering::Relaxed)).await;
        node.server.stop().await;
        let done = counter.load(Ordering::Relaxed);
        rows.push(Row::new(
            name,
            done,
            elapsed.as_secs_f64(),
            None,
            done >= n,
            if topic == "work-retry" {
                format!(
                    "concurrency={workers}; first to last delivery; each message fails once (backoff 10 ms), then acked: {} attempts",
                    2 * done
                )
            } else {
                format!(
                    "concurrency={workers}; first to last delivery (node start to first: {} ms)",
                    to_first.as_millis()
                )
            },
        ));
    }
    let pull_groups =
        vec![group("work-pull", "g", "pull", None, workers)?, group("work-ws", "g", "pull", None, workers)?];
    let node = Node::start_with(
        limits,
        {
            let prefix = prefix.clone();
            move |c| {
                c.redis.prefix = prefix;
                c.group.extend(pull_groups);
            }
        },
        streamhub::groups::handler::Handlers::new(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(600)).await; // the groups' first sweep creates them

    // HTTP pull: W workers fetch 100 and ack them.
    let http = reqwest::Client::new();
    let acked = Arc::new(AtomicU64::new(0));
    let bar_pull = bar(n, "consume http pull");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (http, acked, base) = (http.clone(), acked.clone(), node.base.clone());
        tasks.push(tokio::spawn(async move {
            while acked.load(Ordering::Relaxed) < n && Instant::now() < deadline {
                let r: Value = http
                    .post(format!("{base}/v1/topics/work-pull/groups/g:fetch"))
                    .json(&json!({ "max": 100, "wait_ms": 200 }))
                    .send()
                    .await?
                    .json()
                    .await?;
                let tokens: Vec<Value> =
                    r["deliveries"].as_array().into_iter().flatten().map(|d| d["token"].clone()).collect();
                if tokens.is_empty() {
                    continue;
                }
                let k = tokens.len() as u64;
                http.post(format!("{base}/v1/topics/work-pull/groups/g:ack"))
                    .json(&json!({ "tokens": tokens }))
                    .send()
                    .await?
                    .error_for_status()?;
                acked.fetch_add(k, Ordering::Relaxed);
            }
            Ok::<_, Error>(())
        }));
    }
    let progress = until(n, deadline, &bar_pull, || acked.load(Ordering::Relaxed));
    let _ = progress.await;
    rows.push(
        acked_row("consume http pull", tasks, &acked, n, started, format!("{workers} workers, fetch 100 + ack"))
            .await?,
    );

    // WebSocket consumers: prefetch 100, ack each batch of 100 received.
    let acked = Arc::new(AtomicU64::new(0));
    let bar_ws = bar(n, "consume websocket");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (acked, base) = (acked.clone(), node.base.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = ws_connect(&base).await?;
            ws.send(Message::Text(json!({ "op": "consume", "id": 1, "topic": "work-ws", "group": "g", "prefetch": 100 }).to_string().into())).await?;
            let mut tokens = Vec::new();
            while acked.load(Ordering::Relaxed) < n && Instant::now() < deadline {
                let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), next_head(&mut ws)).await else {
                    if !tokens.is_empty() {
                        let k = tokens.len() as u64;
                        ws.send(Message::Text(json!({ "op": "ack", "id": 2, "topic": "work-ws", "group": "g", "tokens": std::mem::take(&mut tokens) }).to_string().into())).await?;
                        acked.fetch_add(k, Ordering::Relaxed);
                    }
                    continue;
                };
                let frame = frame?;
                if frame.kind == "delivery" {
                    tokens.extend(frame.token);
                    if tokens.len() >= 50 {
                        let k = tokens.len() as u64;
                        ws.send(Message::Text(json!({ "op": "ack", "id": 2, "topic": "work-ws", "group": "g", "tokens": std::mem::take(&mut tokens) }).to_string().into())).await?;
                        acked.fetch_add(k, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, Error>(())
        }));
    }
    let _ = until(n, deadline, &bar_ws, || acked.load(Ordering::Relaxed)).await;
    let note = format!("{workers} connections, prefetch 100, acks of 50");
    rows.push(acked_row("consume websocket", tasks, &acked, n, started, note).await?);
    node.finish().await?;

    // Raw: XREADGROUP + XACK by W workers, reading 100 entries per call (1,600 in flight
    // with 16 workers), and reading one (as many in flight as a group with concurrency W).
    for per_read in [100, 1] {
        rows.push(raw_consume(limits, per_read, deadline).await?);
    }
    Ok(rows)
}

/// The entry ids of an XREADGROUP reply for one stream (RESP2 array or RESP3 map).
fn entry_ids(reply: &fred::types::Value) -> Vec<String> {
    use fred::types::Value as V;
    let entries = match reply {
        V::Array(streams) => streams.first().and_then(|s| match s {
            V::Array(pair) => pair.get(1).cloned(),
            _ => None,
        }),
        V::Map(map) => map.clone().inner().into_values().next(),
        _ => None,
    };
    match entries {
        Some(V::Array(entries)) => entries
            .iter()
            .filter_map(|e| match e {
                V::Array(pair) => pair.first().and_then(|id| id.as_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// W workers each doing XREADGROUP COUNT `per_read` then XACK of what they read, until
/// --count preloaded entries are acknowledged.
async fn raw_consume(limits: &Limits, per_read: u64, deadline: Instant) -> Result<Row> {
    let (n, workers) = (limits.count, limits.concurrency);
    let pool = Builder::from_config(fred::types::config::Config::from_url(&limits.redis_url)?).build_pool(4)?;
    pool.init().await?;
    let random = uuid::Uuid::now_v7().simple().to_string();
    let stream = format!("bench-raw-consume-{}", &random[random.len() - 8..]);
    let data = payload(limits.payload);
    for chunk in 0..n.div_ceil(500) {
        let pipeline = pool.next().pipeline();
        for _ in 0..500.min(n - chunk * 500) {
            let _: () = pipeline.xadd(&stream, false, None, "*", ("e", data.as_str())).await?;
        }
        let _: Vec<String> = pipeline.all().await?;
    }
    let _: () = pool.next().xgroup_create(&stream, "g", "0", false).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (pool, acked, stream) = (pool.clone(), acked.clone(), stream.clone());
        tasks.push(tokio::spawn(async move {
            let consumer = format!("c{w}");
            while acked.load(Ordering::Relaxed) < n && Instant::now() < deadline {
                let reply: fred::types::Value = pool
                    .next()
                    .xreadgroup("g", consumer.as_str(), Some(per_read), None, false, stream.as_str(), ">")
                    .await?;
                let ids = entry_ids(&reply);
                if ids.is_empty() {
                    break;
                }
                let k = ids.len() as u64;
                let _: i64 = pool.next().xack(stream.as_str(), "g", ids).await?;
                acked.fetch_add(k, Ordering::Relaxed);
            }
            Ok::<_, Error>(())
        }));
    }
    let note = format!("{workers} workers, {} in flight", workers as u64 * per_read);
    let row = acked_row(format!("raw XREADGROUP {per_read} + XACK"), tasks, &acked, n, started, note).await?;
    let _: i64 = pool.next().del(stream.as_str()).await?;
    pool.quit().await?;
    Ok(row)
}

/// Waits for the consumer tasks, then the row: `acked` of `n` acknowledged since `started`.
async fn acked_row(
    name: impl Into<String>,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
    acked: &AtomicU64,
    n: u64,
    started: Instant,
    note: String,
) -> Result<Row> {
    for t in tasks {
        t.await??;
    }
    let done = acked.load(Ordering::Relaxed);
    Ok(Row::new(name, done, started.elapsed().as_secs_f64(), None, done == n, note))
}
