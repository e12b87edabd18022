//! The store: everything streamhub keeps in Redis, behind typed methods.
//!
//! Each method is one Redis Function call (one round trip, atomic, one cluster slot)
//! unless it says otherwise. Nothing above this module sees a Redis type.

mod connect;
pub mod embedded;
mod error;
pub mod groups;
pub mod hints;
pub mod library;
pub mod presence;
mod shards;

use std::sync::Arc;
use std::time::Duration;

use fred::bytes::Bytes;
use fred::clients::{Client, Pool};
use fred::interfaces::{ClientLike, ClusterInterface, FunctionInterface, KeysInterface, ServerInterface};
use fred::types::scan::{ScanResult, Scanner};
use fred::types::Value;
use futures::stream::{BoxStream, StreamExt};

pub use error::{Result, StoreError};

use crate::config::{Config, Durability};
use crate::envelope::Envelope;
use crate::keys::Keys;
use crate::message::OutgoingMessage;
use crate::topic::Topic;

/// One `FCALL` / `FCALL_RO` on `client`; with `asking`, `ASKING` goes first on the same
/// connection (following an `ASK` redirection to a slot being imported).
fn fcall<'a>(
    client: Client,
    asking: bool,
    function: &'static str,
    keys: &'a [String],
    args: &'a [Value],
    read_only: bool,
) -> futures::future::BoxFuture<'a, std::result::Result<Value, fred::error::Error>> {
    // Boxed: fred's command futures (and the ASKING pipeline's) take several KiB, which
    // every future awaiting them inline would carry and move (the publish handler's
    // future was ~9 KiB, copied twice per request).
    Box::pin(async move {
        if !asking {
            return if read_only {
                client.fcall_ro::<Value, _, _, _>(function, keys.to_vec(), args.to_vec()).await
            } else {
                client.fcall::<Value, _, _, _>(function, keys.to_vec(), args.to_vec()).await
            };
        }
        let pipeline = client.pipeline();
        let asking_cmd = fred::types::CustomCommand::new_static("ASKING", fred::types::ClusterHash::Random, false);
        let _: () = pipeline.custom(asking_cmd, Vec::<Value>::new()).await?;
        let _: () = if read_only {
            pipeline.fcall_ro(function, keys.to_vec(), args.to_vec()).await?
        } else {
            pipeline.fcall(function, keys.to_vec(), args.to_vec()).await?
        };
        let mut replies = pipeline.try_all::<Value>().await;
        replies.pop().unwrap_or_else(|| Ok(Value::Null))
    })
}

/// The outcome of one stored (or recognised duplicate) publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub epoch: String,
    pub seq: u64,
    pub id: String,
    /// True when an earlier publish with the same idempotency key is answered instead.
    pub duplicate: bool,
}

/// One entry of a topic's stream.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: u64,
    /// The decoded envelope, or the raw bytes of an entry that is not one.
    pub envelope: std::result::Result<Envelope, Vec<u8>>,
}

/// Position of a topic: the answer of `topic_info`, and the head of every history page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// None when the topic has never been published to (or its meta was lost).
    pub epoch: Option<String>,
    /// Highest seq assigned in this epoch (0 when none).
    pub top: u64,
    /// Lowest seq still in the stream (0 when the stream is empty).
    pub first_retained: u64,
    /// The seq before the first one of this epoch (0 for a topic numbered from 1).
    pub base: u64,
    /// The epoch this one continues, when a new epoch started because another primary
    /// wrote the topic before (lua/prelude.lua, `load_meta`): its seqs up to `base` are
    /// the same messages in both epochs. None otherwise (and from `topic_info`).
    pub prev: Option<String>,
}

/// Messages after a seq, with the topic's position taken in the same snapshot.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub position: Position,
    pub messages: Vec<StoredMessage>,
}

impl Position {
    /// True when the position `(epoch, seq)` of an earlier epoch names a message that is
    /// also this epoch's `seq` (or before it), so a reader there continues exactly. `prev`
    /// is the meta's chain `<epoch>:<bound>,…` (lua/prelude.lua `link_chain`); an entry
    /// without a bound is bounded by `base`.
    pub fn carries_over(&self, epoch: &str, seq: u64) -> bool {
        !epoch.is_empty()
            && self.prev.as_deref().is_some_and(|links| {
                links.split(',').any(|link| match link.split_once(':') {
                    Some((e, bound)) => e == epoch && bound.parse::<u64>().is_ok_and(|bound| seq <= bound),
                    None => link == epoch && seq <= self.base,
                })
            })
    }

    /// True when some message after `since` (up to the top) is no longer retained: the
    /// reader must be told, never handed a silent gap.
    pub fn truncated(&self, since: u64) -> bool {
        since < self.top && (self.first_retained == 0 || self.first_retained > since + 1)
    }
}

impl HistoryPage {
    /// `Position::truncated` of the page's snapshot.
    pub fn truncated(&self, since: u64) -> bool {
        self.position.truncated(since)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub position: Position,
    pub length: u64,
    pub created_ms: u64,
    /// Names of the topic's consumer groups.
    pub groups: Vec<String>,
    /// Publish time (ms) of the oldest retained message; 0 when there is none.
    pub oldest_ms: u64,
}

/// Handle to Redis; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keys: Keys,
    library: Arc<String>,
    /// Retention by topic pattern (`[retention]`), applied by every publish.
    retention: Arc<crate::config::RetentionConfig>,
    idempotency_window_ms: u64,
    command_timeout: Duration,
    /// For dedicated connections (blocking reads, hints).
    redis_config: crate::config::RedisConfig,
    /// Some((replicas, timeout)) when publishes wait for replica confirmation.
    replication: Option<(u32, Duration)>,
    /// On Redis Cluster: one connection per primary for the function calls, so a dead
    /// primary stalls only its own slots (see shards.rs).
    shards: Option<Arc<shards::Shards>>,
}

impl Store {
    /// Builds the connection pool and starts connecting; does not wait for Redis.
    /// While Redis is unreachable every call fails with `Unavailable` within
    /// `redis.command_timeout_ms`, and the pool keeps reconnecting with backoff.
    pub fn connect(config: &Config) -> Result<Store> {
        let pool = connect::pool(&config.redis)?;
        let shards = pool.next().is_clustered().then(|| shards::Shards::start(&config.redis, pool.next().clone()));
        Ok(Store {
            shards,
            pool,
            keys: Keys::new(config.redis.prefix.clone()),
            library: Arc::new(library::render(config)),
            retention: Arc::new(config.retention.clone()),
            idempotency_window_ms: config.idempotency.window_ms,
            command_timeout: Duration::from_millis(config.redis.command_timeout_ms),
            redis_config: config.redis.clone(),
            replication: (config.publish.durability == Durability::Replicated)
                .then(|| (config.publish.replicas, Duration::from_millis(config.publish.replication_timeout_ms))),
        })
    }

    /// Waits until Redis answers (at most `timeout`), then loads the function library.
    /// When it does not, the error names the URL (password masked) and the cause: the
    /// connection's last error, or what a plain TCP connection to it answers ("connection
    /// refused", a name that does not resolve, …).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        use fred::interfaces::EventInterface;
        let mut errors = self.pool.next().error_rx();
        if tokio::time::timeout(timeout, self.pool.wait_for_connect()).await.is_err() {
            let mut last = None;
            while let Ok((e, _)) = errors.try_recv() {
                last = Some(e.details().to_string());
            }
            let cause = match connect::diagnose(&self.redis_config, timeout).await {
                connect::Diagnosis::Refused(cause) => cause,
                connect::Diagnosis::Accepts(cause) => last.unwrap_or(cause),
            };
            let url = crate::config::mask_url_password(&self.redis_config.url);
            return Err(StoreError::Unavailable(format!("{url} does not answer: {cause}")));
        }
        self.load_library().await
    }

    /// Starts this node's hint listener on its own connection.
    pub fn start_hints(
        &self,
        config: &crate::config::RedisConfig,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(hints::Hints, tokio::task::JoinHandle<()>)> {
        hints::Hints::start_routed(config, self.keys.clone(), self.shards.clone(), shutdown)
    }

    /// A connection of the shared pool (for non-blocking stream reads).
    pub fn pool_client(&self) -> Client {
        self.pool.next().clone()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Loads (or replaces) the function library on every primary.
    pub async fn load_library(&self) -> Result<()> {
        let client = self.pool.next();
        if client.is_clustered() {
            client.function_load_cluster::<(), _>(true, self.library.as_str()).await?;
        } else {
            let _: Value = client.function_load(true, self.library.as_str()).await?;
        }
        Ok(())
    }

    /// One function call on `client`; loads the library and retries once when Redis lost it.
    async fn call_on(
        &self,
        client: &Client,
        function: &'static str,
        keys: Vec<String>,
        args: Vec<Value>,
        read_only: bool,
    ) -> Result<Value> {
        let started = std::time::Instant::now();
        let result = self.call_once_loaded(client, function, keys, args, read_only).await;
        crate::metrics::redis_call(function, started, result.as_ref().err().map(StoreError::kind));
        result
    }

    async fn call_once_loaded(
        &self,
        client: &Client,
        function: &'static str,
        keys: Vec<String>,
        args: Vec<Value>,
        read_only: bool,
    ) -> Result<Value> {
        for attempt in 0..2 {
            let reply = match (&self.shards, keys.first()) {
                (Some(shards), Some(key)) => {
                    let call = |client: Client, asking: bool| fcall(client, asking, function, &keys, &args, read_only);
                    match shards.run(key, call).await {
                        Some(reply) => reply,
                        None => fcall(client.clone(), false, function, &keys, &args, read_only).await,
                    }
                }
                _ => fcall(client.clone(), false, function, &keys, &args, read_only).await,
            };
            match reply {
                Err(e) if attempt == 0 && StoreError::is_function_missing(&e) => {
                    tracing::info!(function, "function library missing in redis; loading it");
                    Box::pin(self.load_library()).await?; // boxed: rare, and several KiB
                }
                other => return Ok(other?),
            }
        }
        Err(StoreError::Redis(format!("{function} still missing after loading the library")))
    }

    /// The connection that `publish` writes `key` on, for `WAIT` on the same connection.
    fn writer_for(&self, key: &str) -> Option<Client> {
        self.shards.as_ref().and_then(|shards| shards.client_for(key))
    }

    async fn call(
        &self,
        function: &'static str,
        keys: Vec<String>,
        args: Vec<Value>,
        read_only: bool,
    ) -> Result<Value> {
        self.call_on(self.pool.next(), function, keys, args, read_only).await
    }

    /// Stores `messages` on `topic` atomically, with consecutive seqs, in one round trip,
    /// under the topic's retention (`RetentionConfig::for_topic`).
    /// Acknowledged (Ok) only once every new entry is in the topic's stream (G1).
    /// With durability = "replicated" the entries are first staged (readable by nobody),
    /// then `WAIT` for the replicas on the same connection, in the same pipeline, then
    /// committed (`sh_commit_v1`): so no reader sees a message its replicas have not
    /// confirmed (G2). Unconfirmed in time: `NotReplicated` (staged on the primary; a retry
    /// with the same idempotency key commits it); the primary changed in between:
    /// `Unavailable`.
    /// Messages whose idempotency key was seen within the window are not stored again;
    /// their result is the earlier publish, with `duplicate = true`.
    pub async fn publish(&self, topic: &Topic, messages: Vec<OutgoingMessage>) -> Result<Vec<Published>> {
        Ok(self.publish_counted(topic, messages).await?.0)
    }

    /// `publish`, also returning how many old entries retention by age removed.
    pub async fn publish_counted(
        &self,
        topic: &Topic,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(Vec<Published>, u64)> {
        let retention = self.retention.for_topic(topic.as_str());
        let mut tk = self.keys.topic(topic);
        let n = messages.len();
        // The four keys move into the call (`tk`'s fields are empty from here on; only
        // `tk.idempotency` is used below, and `keys[..4]` are those keys).
        let take = std::mem::take::<String>;
        let mut keys = vec![take(&mut tk.meta), take(&mut tk.stream), take(&mut tk.hint), take(&mut tk.staging)];
        let mut args: Vec<Value> = Vec::with_capacity(6 + n * 2);
        args.push(Value::from(retention.max_len as i64));
        args.push(Value::from(self.idempotency_window_ms as i64));
        args.push(Value::from(n as i64));
        args.push(Value::from(retention.hard_max_len as i64));
        args.push(Value::from(retention.max_age_ms as i64));
        args.push(Value::from(if self.replication.is_some() { "stage" } else { "direct" }));
        // The message ids, for the results (the function answers a stored message's seq only).
        let mut ids = Vec::with_capacity(n);
        for mut m in messages {
            args.push(Value::Bytes(Bytes::from(m.envelope.encode())));
            let id = std::mem::take(&mut m.envelope.id);
            args.push(Value::from(match &m.idempotency_key {
                Some(k) => {
                    keys.push(tk.idempotency(k));
                    format!("{} {id}", keys.len())
                }
                None => String::new(),
            }));
            ids.push(id);
        }
        let client = self.pool.next();
        let Some((replicas, timeout)) = self.replication else {
            let reply = self.call_on(client, library::PUBLISH, keys, args, false).await?.into_array();
            let (published, aged_out, _) = parse_publish_reply(reply, ids)?;
            return Ok((published, aged_out));
        };
        let started = std::time::Instant::now();
        let commit_keys = keys[..4].to_vec();
        // Boxed: its pipeline future is several KiB, which the direct path need not carry.
        let staged = Box::pin(self.stage_and_wait(client, &commit_keys[1], keys, args, replicas, timeout)).await;
        crate::metrics::redis_call(library::PUBLISH, started, staged.as_ref().err().map(StoreError::kind));
        let (reply, acked) = staged?;
        let (published, mut aged_out, staged) = parse_publish_reply(reply, ids)?;
        if acked < replicas as i64 {
            return Err(StoreError::NotReplicated { acked: acked.max(0) as u64, wanted: replicas });
        }
        let upto = published.iter().map(|p| p.seq).max().unwrap_or(0);
        let args = vec![
            Value::from(staged.epoch),
            Value::from(upto as i64),
            Value::from(staged.replication_id),
            Value::from(retention.max_len as i64),
            Value::from(retention.hard_max_len as i64),
            Value::from(retention.max_age_ms as i64),
        ];
        let reply = self.call_on(client, library::COMMIT, commit_keys, args, false).await?;
        aged_out += reply.into_array().get(1).and_then(|v| v.as_u64()).unwrap_or(0);
        Ok((published, aged_out))
    }

    /// The staging `FCALL` and the `WAIT` for `replicas`, written back to back on one
    /// connection (one pipeline; on Cluster, the node owning `key`'s slot), so the `WAIT`
    /// counts the replicas that have the staged entries: it can never run alone on a
    /// re-established connection that wrote nothing. Returns the staging reply and how
    /// many replicas confirmed.
    async fn stage_and_wait(
        &self,
        client: &Client,
        key: &str,
        keys: Vec<String>,
        args: Vec<Value>,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(Vec<Value>, i64)> {
        for attempt in 0..2 {
            // On Cluster, the connection of the primary that owns the slot (shards.rs).
            let writer = self.writer_for(key);
            let client = writer.as_ref().unwrap_or(client);
            let pipeline = client.pipeline();
            let _: () = pipeline.fcall(library::PUBLISH, keys.clone(), args.clone()).await?;
            if client.is_clustered() {
                // WAIT names no key: send it to the node that owns the topic's slot.
                let slot = fred::util::redis_keyslot(key.as_bytes());
                let server = client
                    .cached_cluster_state()
                    .and_then(|state| state.get_server(slot).cloned())
                    .ok_or_else(|| StoreError::Unavailable("cluster routing table not known yet".into()))?;
                let options = fred::types::config::Options { cluster_node: Some(server), ..Default::default() };
                let _: () = pipeline.with_options(&options).wait(replicas as i64, timeout.as_millis() as i64).await?;
            } else {
                let _: () = pipeline.wait(replicas as i64, timeout.as_millis() as i64).await?;
            }
            let results = pipeline.try_all::<Value>().await;
            let mut results = results.into_iter();
            let (reply, acked) = match (results.next(), results.next()) {
                (Some(reply), Some(acked)) => (reply, acked),
                // The pipeline failed as a whole (a timeout, a dropped connection).
                (Some(Err(e)), None) => return Err(e.into()),
                _ => return Err(StoreError::Protocol("the staging pipeline answered fewer than 2 replies".into())),
            };
            match reply {
                Err(e) if attempt == 0 && StoreError::is_function_missing(&e) => {
                    tracing::info!(function = library::PUBLISH, "function library missing in redis; loading it");
                    Box::pin(self.load_library()).await?;
                }
                Err(e) => return Err(e.into()),
                Ok(reply) => {
                    let acked = acked?.as_i64().unwrap_or(0);
                    return Ok((reply.into_array(), acked));
                }
            }
        }
        Err(StoreError::Redis(format!("{} still missing after loading the library", library::PUBLISH)))
    }

    /// The messages with seq > `since`, at most `limit`, and the topic's position, from
    /// one snapshot.
    pub async fn read_since(&self, topic: &Topic, since: u64, limit: usize) -> Result<HistoryPage> {
        let tk = self.keys.topic(topic);
        let args = vec![Value::from(since.to_string()), Value::from(limit as i64)];
        let mut reply =
            self.call(library::READ_SINCE, vec![tk.meta, tk.stream], args, true).await?.into_array().into_iter();
        let position = parse_position(&mut reply, true)?;
        Ok(HistoryPage { position, messages: parse_messages(reply)? })
    }

    pub async fn topic_info(&self, topic: &Topic) -> Result<TopicInfo> {
        let tk = self.keys.topic(topic);
        let mut reply =
            self.call(library::TOPIC_INFO, vec![tk.meta, tk.stream], vec![], true).await?.into_array().into_iter();
        let position = parse_position(&mut reply, false)?;
        let length = reply.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let created_ms = reply.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let groups = reply.next().and_then(|v| v.as_string()).unwrap_or_default();
        let oldest_ms = reply.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let groups = groups.split_whitespace().map(str::to_string).collect();
        Ok(TopicInfo { position, length, created_ms, groups, oldest_ms })
    }

    /// Names of topics that have a meta hash, at most `limit`, sorted. Walks the key space
    /// with SCAN (every primary on Cluster); meant for operators, not the hot path.
    pub async fn list_topics(&self, limit: usize) -> Result<Vec<String>> {
        let client = self.pool.next();
        let pattern = self.keys.meta_pattern();
        let mut topics = Vec::new();
        let mut scan: BoxStream<'_, std::result::Result<ScanResult, fred::error::Error>> = if client.is_clustered() {
            client.scan_cluster(pattern, Some(500), None).boxed()
        } else {
            client.scan(pattern, Some(500), None).boxed()
        };
        let deadline = tokio::time::Instant::now() + self.command_timeout * 10;
        while topics.len() < limit {
            let page = tokio::time::timeout_at(deadline, scan.next())
                .await
                .map_err(|_| StoreError::Unavailable("topic scan took too long".into()))?;
            let Some(page) = page else { break };
            let mut page = page?;
            if let Some(found) = page.take_results() {
                for key in found {
                    if let Some(name) = key.as_str().and_then(|k| self.keys.topic_of_meta(k).map(str::to_string)) {
                        // SCAN may return a key twice; count each topic once.
                        if !topics.contains(&name) {
                            topics.push(name);
                        }
                    }
                }
            }
            if topics.len() >= limit {
                page.cancel();
                break;
            }
        }
        topics.sort();
        topics.dedup();
        topics.truncate(limit);
        Ok(topics)
    }

    /// PING on one pooled connection, bounded by the command timeout.
    pub async fn ping(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let result = self.pool.next().ping::<Value>(None).await.map(drop).map_err(StoreError::from);
        crate::metrics::redis_call("ping", started, result.as_ref().err().map(StoreError::kind));
        result
    }

    /// `INFO server`, `clients`, `memory` and `replication` of the Redis one pooled connection reaches
    /// (on Cluster: one of the nodes), as `field → value` (one round trip, read only).
    pub async fn server_info(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let started = std::time::Instant::now();
        let reply = self
            .pool
            .next()
            .custom::<String, _>(fred::cmd!("INFO"), vec!["server", "clients", "memory", "replication"])
            .await
            .map_err(StoreError::from);
        crate::metrics::redis_call("info", started, reply.as_ref().err().map(StoreError::kind));
        Ok(reply?
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect())
    }

    /// Sends QUIT on every connection; in-flight commands finish first. Bounded by the
    /// command timeout: with Redis unreachable, QUIT is never answered.
    pub async fn close(&self) {
        if let Some(shards) = &self.shards {
            shards.close().await;
        }
        let _ = tokio::time::timeout(self.command_timeout, self.pool.quit()).await;
    }

    /// Deletes every key of a topic (tests and admin tools; not atomic with publishes).
    pub async fn delete_topic_keys(&self, topic: &Topic) -> Result<()> {
        let tk = self.keys.topic(topic);
        let _: Value = self.pool.del(vec![tk.meta, tk.stream]).await?;
        Ok(())
    }
}

/// `seq1, envelope1, seq2, envelope2, …` of a read function's reply.
fn parse_messages(mut reply: impl Iterator<Item = Value>) -> Result<Vec<StoredMessage>> {
    let mut messages = Vec::new();
    while let Some(seq) = reply.next() {
        let seq = seq.as_u64().ok_or_else(|| StoreError::Protocol("entry seq is not an integer".into()))?;
        let bytes = reply.next().and_then(|v| v.into_owned_bytes()).unwrap_or_default();
        let envelope = Envelope::decode(&bytes).map_err(|_| bytes);
        messages.push(StoredMessage { seq, envelope });
    }
    Ok(messages)
}

/// `epoch, top, first retained, base` (then `prev` when `with_prev`) of a read reply.
fn parse_position(reply: &mut impl Iterator<Item = Value>, with_prev: bool) -> Result<Position> {
    let epoch = reply.next().and_then(|v| v.as_string()).filter(|e| !e.is_empty());
    let top = reply.next().and_then(|v| v.as_u64());
    let first_retained = reply.next().and_then(|v| v.as_u64());
    let base = reply.next().and_then(|v| v.as_u64());
    let prev = if with_prev { reply.next().and_then(|v| v.as_string()).filter(|e| !e.is_empty()) } else { None };
    match (top, first_retained, base) {
        (Some(top), Some(first_retained), Some(base)) => Ok(Position { epoch, top, first_retained, base, prev }),
        _ => Err(StoreError::Protocol("position reply is not (epoch, top, first, base)".into())),
    }
}

/// What `sh_publish_v4` answers after the per-message results: for `sh_commit_v1`.
struct Staged {
    replication_id: String,
    epoch: String,
}

/// The reply of `sh_publish_v4` for the messages of `ids`: the results, the entries
/// retention by age removed, and what `sh_commit_v1` needs.
fn parse_publish_reply(mut reply: Vec<Value>, ids: Vec<String>) -> Result<(Vec<Published>, u64, Staged)> {
    let epoch = reply.pop().and_then(|v| v.as_string());
    let replication_id = reply.pop().and_then(|v| v.as_string());
    let aged_out = reply.pop().and_then(|v| v.as_u64());
    match (epoch, replication_id, aged_out) {
        (Some(epoch), Some(replication_id), Some(aged_out)) => {
            let published = parse_published(reply, ids, &epoch)?;
            Ok((published, aged_out, Staged { replication_id, epoch }))
        }
        _ => Err(StoreError::Protocol("publish reply does not end with (aged, replication id, epoch)".into())),
    }
}

/// One value per message: the seq it was stored at (in `epoch`, under its own id), or
/// the idempotency record `"<epoch> <seq> <id>"` of the message it repeats.
fn parse_published(reply: Vec<Value>, ids: Vec<String>, epoch: &str) -> Result<Vec<Published>> {
    if reply.len() != ids.len() {
        return Err(StoreError::Protocol(format!(
            "publish answered {} values for {} messages",
            reply.len(),
            ids.len()
        )));
    }
    let malformed = || StoreError::Protocol("a publish result is neither a seq nor \"<epoch> <seq> <id>\"".into());
    reply
        .into_iter()
        .zip(ids)
        .map(|(value, id)| match value {
            Value::Integer(seq) if seq > 0 => {
                Ok(Published { epoch: epoch.to_string(), seq: seq as u64, id, duplicate: false })
            }
            other => {
                let record = other.as_string().ok_or_else(malformed)?;
                let mut parts = record.splitn(3, ' ');
                match (parts.next(), parts.next().and_then(|s| s.parse().ok()), parts.next()) {
                    (Some(epoch), Some(seq), Some(id)) => {
                        Ok(Published { epoch: epoch.to_string(), seq, id: id.to_string(), duplicate: true })
                    }
                    _ => Err(malformed()),
                }
            }
        })
        .collect()
}
