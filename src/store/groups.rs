//! Consumer groups in Redis: reading with leases, ack, fail (retry schedule or dead
//! letter), promotion of due retries, reclaiming expired leases, and the dead-letter
//! stream. The atomic steps are functions in `lua/group_*.lua`.
//!
//! A delivery is identified by its lease: the stream it came from (`m` the topic's
//! stream, `r` the group's retry stream), the entry id and the entry's delivery count in
//! the group's pending list. Its text form, the token, is `m:<id>:<count>`. Because the
//! count grows on every redelivery, an ack or nack carrying an old lease never touches a
//! newer delivery of the same entry.

use std::collections::HashMap;
use std::time::Duration;

use fred::clients::Client;
use fred::error::{Error as RedisError, ErrorKind as RedisErrorKind};
use fred::interfaces::{
    ClientLike, FunctionInterface, HashesInterface, KeysInterface, SetsInterface, SortedSetsInterface, StreamsInterface,
};
use fred::types::config::Options;
use fred::types::Value;

use super::{connect, library, shards, Result, Store, StoreError};
use crate::config::GroupStart;
use crate::envelope::Envelope;
use crate::keys::{group_registry_bucket, GroupKeys};
use crate::topic::Topic;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Main,
    Retry,
}

/// One delivery's claim on an entry (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub source: Source,
    pub id: String,
    pub count: u64,
}

impl Lease {
    pub fn token(&self) -> String {
        let s = match self.source {
            Source::Main => "m",
            Source::Retry => "r",
        };
        format!("{s}:{}:{}", self.id, self.count)
    }

    pub fn parse(token: &str) -> Option<Lease> {
        let mut parts = token.splitn(3, ':');
        let source = match parts.next()? {
            "m" => Source::Main,
            "r" => Source::Retry,
            _ => return None,
        };
        let id = parts.next()?;
        let (ms, n) = id.split_once('-')?;
        if ms.parse::<u64>().is_err() || n.parse::<u64>().is_err() {
            return None;
        }
        let count = parts.next()?.parse().ok()?;
        Some(Lease { source, id: id.to_string(), count })
    }

    fn source_arg(&self) -> &'static str {
        match self.source {
            Source::Main => "m",
            Source::Retry => "r",
        }
    }
}

/// A message handed to a member of a group.
#[derive(Debug, Clone)]
pub struct GroupDelivery {
    pub lease: Lease,
    /// The message's seq in its topic.
    pub seq: u64,
    /// Which delivery this is (1 = first), counting retries and redeliveries.
    pub attempt: u32,
    /// The error of the previous attempt, for retries.
    pub last_error: Option<String>,
    pub envelope: std::result::Result<Envelope, Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    Acked,
    /// The entry was delivered again since this lease: the ack changed nothing.
    LeaseExpired,
    /// Not pending (already acked, dead-lettered, or never delivered).
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailStatus {
    Scheduled,
    Dead,
    Expired,
    /// The entry was gone from its stream; acked and counted.
    Deleted,
    LeaseExpired,
    Unknown,
}

impl AckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Acked => "acked",
            AckStatus::LeaseExpired => "lease_expired",
            AckStatus::Unknown => "unknown",
        }
    }
}

impl FailStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FailStatus::Scheduled => "scheduled",
            FailStatus::Dead => "dead",
            FailStatus::Expired => "expired",
            FailStatus::Deleted => "deleted",
            FailStatus::LeaseExpired => "lease_expired",
            FailStatus::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Result<FailStatus> {
        Ok(match s {
            "scheduled" => FailStatus::Scheduled,
            "dead" => FailStatus::Dead,
            "expired" => FailStatus::Expired,
            "deleted" => FailStatus::Deleted,
            "lease_expired" => FailStatus::LeaseExpired,
            "unknown" => FailStatus::Unknown,
            other => return Err(StoreError::Protocol(format!("fail answered {other:?}"))),
        })
    }
}

/// What a failed delivery becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    /// Retry after this delay, or after the group's backoff when None; dead-letter when
    /// the attempts are used up.
    Retry(Option<Duration>),
    /// Dead-letter now.
    Permanent,
    /// Past its TTL: acked and counted; kept in the dead letters when `to_dlq`.
    Expired { to_dlq: bool },
}

/// A group's retry policy, applied inside Redis (where the attempt count lives).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_ms: u64,
    pub max_ms: u64,
    pub multiplier: f64,
    /// Fraction (0 to 1) of each delay that is random.
    pub jitter: f64,
    pub dlq_max_len: u64,
}

/// The outcome of `group_fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    pub status: FailStatus,
    /// The number of the delivery that failed (1 = first).
    pub attempt: u32,
    /// When the retry is due (ms), for `Scheduled`.
    pub due_ms: u64,
}

/// What [`Store::group_settle_read`] answers.
#[derive(Debug, Default)]
pub struct Settles {
    /// One status per acknowledged lease, in order.
    pub acks: Vec<AckStatus>,
    /// One outcome per failure, in order.
    pub fails: Vec<Failed>,
    /// The deliveries read after the settles.
    pub read: Vec<GroupDelivery>,
}

/// One entry of a group's dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub seq: u64,
    pub attempts: u32,
    pub error: String,
    pub dead_ms: u64,
    /// "failed" or "expired".
    pub reason: String,
    pub envelope: std::result::Result<Envelope, Vec<u8>>,
}

/// A group's state, for operators.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GroupInfo {
    pub exists: bool,
    /// Messages of the topic not yet delivered to the group.
    pub lag: Option<u64>,
    /// Deliveries in flight (main stream and retry stream).
    pub pending: u64,
    /// Retries waiting for their due time.
    pub scheduled: u64,
    /// Due retries not yet delivered.
    pub retry_ready: u64,
    pub dead_letters: u64,
    pub consumers: u64,
    pub counters: HashMap<String, u64>,
}

fn fields(list: &Value) -> Fields<'_> {
    match list {
        Value::Array(items) => Fields(items),
        _ => Fields(&[]),
    }
}

/// The fields of a stream entry or an `XINFO` record (`[name, value, …]`), looked up by a
/// scan: they are few, and a map per entry cost more than the scans (a key string, a
/// hash and a cloned value per field: ≈ 1,700 instructions per delivery read).
struct Fields<'a>(&'a [Value]);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.chunks_exact(2).find(|pair| pair[0].as_bytes() == Some(name.as_bytes())).map(|pair| &pair[1])
    }
}

fn seq_of(id: &str) -> u64 {
    id.split('-').next().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Where a group member's reads go: see [`Store::group_read`]. A pooled connection's
/// (`From<Client>`) are for reads that do not block; [`Store::blocking_reader`]'s have a
/// connection of their own.
pub struct GroupReader(Reader);

enum Reader {
    /// A pooled connection, for reads that do not block. On Cluster they go to the
    /// per-primary connections instead (shards.rs); this one serves while no slot map is
    /// known.
    Pooled(Client),
    /// A connection of its own (standalone, Sentinel).
    Own(Client),
    /// On Cluster: a connection of its own to the primary of the group's slot.
    Shard(shards::Dedicated),
}

impl From<Client> for GroupReader {
    fn from(client: Client) -> GroupReader {
        GroupReader(Reader::Pooled(client))
    }
}

impl GroupReader {
    /// Closes the reader's own connection, if it has one (bounded).
    pub async fn close(self) {
        match self.0 {
            Reader::Pooled(_) => {}
            Reader::Own(client) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
            }
            Reader::Shard(dedicated) => dedicated.close().await,
        }
    }
}

/// How long a blocking read that had to read without blocking (the slot is migrating)
/// waits when it found nothing, so that its caller does not ask again at once.
const MIGRATING_PAUSE: Duration = Duration::from_millis(50);

/// One `XREADGROUP … STREAMS <retry> <stream> > >` on `client`, bounded by `timeout`;
/// with `asking`, `ASKING` goes first on the same connection (an `ASK` redirection).
#[allow(clippy::too_many_arguments)]
async fn xreadgroup(
    client: Client,
    asking: bool,
    timeout: Duration,
    group: &str,
    consumer: &str,
    count: u64,
    block: Option<Duration>,
    keys: &[String; 2],
) -> std::result::Result<Value, RedisError> {
    let block_ms = block.map(|b| b.as_millis() as u64);
    let keys = keys.to_vec();
    if !asking {
        let options = Options { timeout: Some(timeout), ..Options::default() };
        return client
            .with_options(&options)
            .xreadgroup(group, consumer, Some(count), block_ms, false, keys, vec![">", ">"])
            .await;
    }
    let pipeline = client.pipeline();
    let asking_cmd = fred::types::CustomCommand::new_static("ASKING", fred::types::ClusterHash::Random, false);
    let _: () = pipeline.custom(asking_cmd, Vec::<Value>::new()).await?;
    let _: () = pipeline.xreadgroup(group, consumer, Some(count), block_ms, false, keys, vec![">", ">"]).await?;
    let mut replies = pipeline.try_all::<Value>().await;
    replies.pop().unwrap_or(Ok(Value::Null))
}

/// Builds a delivery from an entry of the main or retry stream.
fn delivery(source: Source, id: String, count: u64, entry_fields: &Value) -> GroupDelivery {
    let f = fields(entry_fields);
    let bytes = f.get("e").and_then(|v| v.as_bytes()).unwrap_or_default();
    // Decoded from the reply in place; the bytes are copied only when they are not an envelope.
    let envelope = Envelope::decode(bytes).map_err(|_| bytes.to_vec());
    let (seq, attempt, last_error) = match source {
        Source::Main => (seq_of(&id), count as u32, None),
        Source::Retry => {
            let seq = f.get("seq").and_then(|v| v.as_u64()).unwrap_or(0);
            let base = f.get("a").and_then(|v| v.as_u64()).unwrap_or(1);
            let err = f.get("err").and_then(|v| v.as_string()).filter(|e| !e.is_empty());
            (seq, (base + count.saturating_sub(1)) as u32, err)
        }
    };
    GroupDelivery { lease: Lease { source, id, count }, seq, attempt, last_error, envelope }
}

/// Entries of one XREADGROUP/XRANGE stream reply: `[[id, [f, v, …]], …]`, taken apart
/// (the fields are moved out, not copied).
fn entries(reply: Value) -> Vec<(String, Value)> {
    let Value::Array(items) = reply else { return Vec::new() };
    items
        .into_iter()
        .filter_map(|item| match item {
            Value::Array(pair) => {
                let mut pair = pair.into_iter();
                let id = pair.next()?.as_string()?;
                Some((id, pair.next()?))
            }
            _ => None,
        })
        .collect()
}

/// The deliveries of an `XREADGROUP … STREAMS <retry> <stream> > >` reply (RESP2 or 3).
fn deliveries(reply: Value, retry_key: &str) -> Vec<GroupDelivery> {
    let mut out = Vec::new();
    let streams: Vec<(String, Value)> = match reply {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let body = pair.pop()?;
                    Some((pair.pop()?.as_string()?, body))
                }
                _ => None,
            })
            .collect(),
        Value::Map(map) => {
            map.inner().into_iter().filter_map(|(key, body)| Some((key.as_str()?.to_string(), body))).collect()
        }
        _ => Vec::new(),
    };
    for (key, body) in streams {
        let source = if key == retry_key { Source::Retry } else { Source::Main };
        for (id, f) in entries(body) {
            out.push(delivery(source, id, 1, &f));
        }
    }
    out
}

/// The keys of `sh_group_fail_v1`.
fn fail_keys(k: &GroupKeys) -> Vec<String> {
    vec![k.stream.clone(), k.retry.clone(), k.schedule.clone(), k.payloads.clone(), k.dlq.clone(), k.counters.clone()]
}

/// The arguments of `sh_group_fail_v2`: the group's policy, then each failure.
fn fail_args<'a>(
    group: &str,
    policy: &RetryPolicy,
    failures: impl ExactSizeIterator<Item = (&'a Lease, Failure, &'a str)>,
) -> Vec<Value> {
    let mut args: Vec<Value> = Vec::with_capacity(8 + 6 * failures.len());
    args.extend([
        group.into(),
        (policy.max_attempts as i64).into(),
        (policy.base_ms as i64).into(),
        (policy.max_ms as i64).into(),
        policy.multiplier.to_string().into(),
        policy.jitter.to_string().into(),
        (crate::message::now_ms() as i64).into(),
        (policy.dlq_max_len as i64).into(),
    ]);
    for (lease, failure, error) in failures {
        let (outcome, delay) = match failure {
            Failure::Retry(delay) => ("retry", delay.map(|d| d.as_millis() as i64).unwrap_or(-1)),
            Failure::Permanent => ("permanent", -1),
            Failure::Expired { to_dlq: true } => ("expired-dlq", -1),
            Failure::Expired { to_dlq: false } => ("expired-drop", -1),
        };
        args.extend([
            lease.source_arg().into(),
            lease.id.clone().into(),
            (lease.count as i64).into(),
            outcome.into(),
            delay.into(),
            error.into(),
        ]);
    }
    args
}

/// What `sh_group_fail_v2` answers: one outcome per failure, in order.
fn failed(reply: Value, expected: usize) -> Result<Vec<Failed>> {
    let outcomes: Vec<Failed> = reply
        .into_array()
        .into_iter()
        .map(|one| {
            let one = one.into_array();
            Ok(Failed {
                status: FailStatus::parse(&one.first().and_then(|v| v.as_string()).unwrap_or_default())?,
                attempt: one.get(1).and_then(|v| v.as_u64()).unwrap_or(0) as u32,
                due_ms: one.get(2).and_then(|v| v.as_u64()).unwrap_or(0),
            })
        })
        .collect::<Result<_>>()?;
    if outcomes.len() != expected {
        return Err(StoreError::Protocol(format!("fail answered {} outcomes for {expected}", outcomes.len())));
    }
    Ok(outcomes)
}

/// The order in which a batch's leases go to the group functions: by stream, and each
/// stream's ids lowest first, so that a function reads the batch's leases and entries
/// over the span from its first id to its last (lua/prelude.lua, `pending_counts`). The
/// sort is stable: the same delivery named twice keeps its first place, which is the one
/// settled. The answers come back in this order (`in_caller_order`).
fn lease_order<'a>(leases: impl Iterator<Item = &'a Lease>) -> Vec<usize> {
    let keys: Vec<(&str, u64, u64)> = leases
        .map(|l| {
            // Ids are "<u64>-<u64>" (`Lease::parse`, or read from Redis).
            let (a, b) = l.id.split_once('-').unwrap_or((&l.id, ""));
            (l.source_arg(), a.parse().unwrap_or(u64::MAX), b.parse().unwrap_or(u64::MAX))
        })
        .collect();
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| keys[i]);
    order
}

/// A function's answers (one per lease, in `order`) in the caller's order of the leases.
fn in_caller_order<T>(answers: Vec<T>, order: &[usize]) -> Result<Vec<T>> {
    if answers.len() != order.len() {
        return Err(StoreError::Protocol(format!("{} answers for {} leases", answers.len(), order.len())));
    }
    let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None).take(order.len()).collect();
    for (answer, &i) in answers.into_iter().zip(order) {
        slots[i] = Some(answer);
    }
    Ok(slots.into_iter().flatten().collect())
}

/// A function call's per-lease arguments: source, entry id, delivery count, in `order`.
fn push_leases(args: &mut Vec<Value>, leases: &[Lease], order: &[usize]) {
    for l in order.iter().map(|&i| &leases[i]) {
        args.push(l.source_arg().into());
        args.push(l.id.clone().into());
        args.push((l.count as i64).into());
    }
}

/// The statuses an acknowledgement answers, one per lease.
fn ack_statuses(reply: Value) -> Result<Vec<AckStatus>> {
    reply
        .into_array()
        .into_iter()
        .map(|v| match v.as_string().as_deref() {
            Some("acked") => Ok(AckStatus::Acked),
            Some("lease_expired") => Ok(AckStatus::LeaseExpired),
            Some("unknown") => Ok(AckStatus::Unknown),
            _ => Err(StoreError::Protocol("ack answered something else".into())),
        })
        .collect()
}

impl Store {
    fn group_keys(&self, topic: &Topic, group: &str) -> GroupKeys {
        self.keys.topic(topic).group(group)
    }

    /// A reader with a connection of its own, for blocking reads, so they never hold
    /// the shared pool: on Redis Cluster a connection to the primary of the group's slot
    /// (opened at the first read, moved when the slot map names another primary:
    /// shards.rs), so a dead primary stalls only the groups of its own slots.
    pub fn blocking_reader(&self) -> Result<GroupReader> {
        Ok(GroupReader(match &self.shards {
            Some(shards) => Reader::Shard(shards::Dedicated::new(shards.clone(), "blocking")),
            None => Reader::Own(connect::client(&self.redis_config, "blocking")?),
        }))
    }

    /// `XREADGROUP` of the group's retry stream and topic stream (`keys`) on `reader`'s
    /// connection. On Cluster: a non-blocking read goes to the shared connection of the
    /// slot's primary (`Shards::run`, which follows `MOVED`, `ASK` and `TRYAGAIN`); a
    /// blocking one to the reader's own connection to that primary, and while the slot is
    /// migrating (`ASK`, `TRYAGAIN`, which a blocking read cannot follow there) it reads
    /// without blocking through `Shards::run` instead.
    #[allow(clippy::too_many_arguments)]
    async fn xreadgroup_routed(
        &self,
        reader: &mut GroupReader,
        keys: &[String; 2],
        group: &str,
        consumer: &str,
        count: u64,
        block: Option<Duration>,
    ) -> std::result::Result<Value, RedisError> {
        let timeout = block.unwrap_or_default() + self.command_timeout;
        let read = |client: Client, asking: bool, block: Option<Duration>| {
            xreadgroup(client, asking, timeout, group, consumer, count, block, keys)
        };
        // Every key of a topic carries its hash tag: both keys are in one slot.
        let key = &keys[1];
        match (&mut reader.0, &self.shards) {
            (Reader::Shard(dedicated), Some(shards)) => {
                if block.is_some() {
                    match dedicated.run(key, |client| read(client, false, block)).await {
                        Some(Err(e)) if shards::migrating(&e) => {}
                        Some(reply) => return reply,
                        None => {}
                    }
                }
                // No slot map yet, or the slot is migrating: one read without blocking.
                let reply = shards
                    .run(key, |client, asking| read(client, asking, None))
                    .await
                    .unwrap_or_else(|| Err(RedisError::new(RedisErrorKind::Routing, "cluster slot map not known yet")));
                if let (Some(block), Ok(Value::Null)) = (block, &reply) {
                    // Nothing there: wait a little as a blocking read would have, rather
                    // than ask again at once.
                    tokio::time::sleep(block.min(MIGRATING_PAUSE)).await;
                }
                reply
            }
            (Reader::Pooled(client), Some(shards)) if block.is_none() => {
                match shards.run(key, |client, asking| read(client, asking, None)).await {
                    Some(reply) => reply,
                    None => read(client.clone(), false, None).await,
                }
            }
            (Reader::Pooled(client) | Reader::Own(client), _) => read(client.clone(), false, block).await,
            (Reader::Shard(_), None) => {
                Err(RedisError::new(RedisErrorKind::Routing, "a cluster reader without a cluster connection"))
            }
        }
    }

    /// Creates the group (idempotent); true when it was created now.
    pub async fn group_ensure(&self, topic: &Topic, group: &str, start: &GroupStart) -> Result<bool> {
        let k = self.group_keys(topic, group);
        let start = match start {
            GroupStart::Earliest => "0".to_string(),
            GroupStart::New => "$".to_string(),
            GroupStart::After(seq) => format!("{seq}-0"),
        };
        let reply = self
            .call(library::GROUP_ENSURE, vec![k.stream, k.retry, k.meta], vec![group.into(), start.into()], false)
            .await?;
        Ok(reply.as_u64() == Some(1))
    }

    /// New deliveries for `consumer`: due retries first, then new messages of the topic.
    /// With `block`, waits up to that long on `client` (use a dedicated connection).
    pub async fn group_read(
        &self,
        reader: &mut GroupReader,
        topic: &Topic,
        group: &str,
        consumer: &str,
        count: u64,
        block: Option<Duration>,
    ) -> Result<Vec<GroupDelivery>> {
        let k = self.group_keys(topic, group);
        let keys = [k.retry.clone(), k.stream.clone()];
        let started = std::time::Instant::now();
        let reply: Result<Value> =
            self.xreadgroup_routed(reader, &keys, group, consumer, count, block).await.map_err(|e| {
                if e.details().contains("NOGROUP") {
                    StoreError::Refused {
                        code: crate::error::Code::GroupNotFound,
                        message: format!("no group {group} on {topic}"),
                    }
                } else {
                    e.into()
                }
            });
        if block.is_none() {
            // A blocking read's time is mostly waiting; only immediate reads are timed.
            crate::metrics::redis_call("xreadgroup", started, reply.as_ref().err().map(StoreError::kind));
        }
        Ok(deliveries(reply?, &k.retry))
    }

    pub async fn group_ack(&self, topic: &Topic, group: &str, leases: &[Lease]) -> Result<Vec<AckStatus>> {
        let k = self.group_keys(topic, group);
        let mut args: Vec<Value> = Vec::with_capacity(1 + 3 * leases.len());
        args.push(group.into());
        let order = lease_order(leases.iter());
        push_leases(&mut args, leases, &order);
        let reply = self.call(library::GROUP_ACK, vec![k.stream, k.retry, k.counters], args, false).await?;
        in_caller_order(ack_statuses(reply)?, &order)
    }

    /// Settles a worker's finished deliveries and then reads up to `count` new ones for
    /// `consumer` from each of the group's streams (due retries first, then new messages of
    /// the topic): one `sh_group_ack_v1` call for `acks`, one `sh_group_fail_v2` call for
    /// `fails`, and a non-blocking `XREADGROUP`, written back to back on one connection
    /// (one pipeline; on Cluster, to the primary owning the topic's slot). One round trip
    /// does it all, and the read comes after the settles: what a worker does with the
    /// in-flight slots the settled deliveries held. A call the pipeline could not make
    /// (library not loaded, slot moved, connection lost) is made again on its own; a
    /// failed read only reads nothing.
    #[allow(clippy::too_many_arguments)]
    pub async fn group_settle_read(
        &self,
        topic: &Topic,
        group: &str,
        consumer: &str,
        acks: &[Lease],
        fails: &[(Lease, Failure, String)],
        policy: &RetryPolicy,
        count: u64,
    ) -> Result<Settles> {
        let k = self.group_keys(topic, group);
        let ack_keys = || vec![k.stream.clone(), k.retry.clone(), k.counters.clone()];
        let ack_order = lease_order(acks.iter());
        let ack_args = || {
            let mut args: Vec<Value> = Vec::with_capacity(1 + 3 * acks.len());
            args.push(group.into());
            push_leases(&mut args, acks, &ack_order);
            args
        };
        // All failures in one call (one schedule write, one release and one counter
        // update per call, whatever their number).
        let fail_order = lease_order(fails.iter().map(|(lease, _, _)| lease));
        let fail_args = || {
            let ordered = fail_order.iter().map(|&i| &fails[i]);
            fail_args(group, policy, ordered.map(|(lease, failure, error)| (lease, *failure, error.as_str())))
        };
        let writer = self.writer_for(&k.stream);
        let client = writer.as_ref().unwrap_or_else(|| self.pool.next());
        let started = std::time::Instant::now();
        let pipeline = client.pipeline();
        // The arguments are built again only for a call that must be sent again, alone.
        if !acks.is_empty() {
            let _: () = pipeline.fcall(library::GROUP_ACK, ack_keys(), ack_args()).await?;
        }
        if !fails.is_empty() {
            let _: () = pipeline.fcall(library::GROUP_FAIL, fail_keys(&k), fail_args()).await?;
        }
        if count > 0 {
            let streams = vec![k.retry.clone(), k.stream.clone()];
            let _: () = pipeline.xreadgroup(group, consumer, Some(count), None, false, streams, vec![">", ">"]).await?;
        }
        let replies = pipeline.try_all::<Value>().await;
        // Timed as one call; failed when any of its commands failed.
        let error = replies.iter().find_map(|r| r.as_ref().err()).map(|e| StoreError::from(e.clone()).kind());
        crate::metrics::redis_call("settle_read", started, error);
        let mut replies = replies.into_iter();
        let mut out = Settles::default();
        if !acks.is_empty() {
            let statuses = match replies.next() {
                Some(Ok(reply)) => ack_statuses(reply)?,
                _ => ack_statuses(self.call(library::GROUP_ACK, ack_keys(), ack_args(), false).await?)?,
            };
            out.acks = in_caller_order(statuses, &ack_order)?;
        }
        if !fails.is_empty() {
            let outcomes = match replies.next() {
                Some(Ok(reply)) => failed(reply, fails.len())?,
                _ => failed(self.call(library::GROUP_FAIL, fail_keys(&k), fail_args(), false).await?, fails.len())?,
            };
            out.fails = in_caller_order(outcomes, &fail_order)?;
        }
        // What the pipeline read is this consumer's now, whatever became of the rest.
        if let Some(Ok(reply)) = replies.next() {
            out.read = deliveries(reply, &k.retry);
        }
        Ok(out)
    }

    /// Records a failed (or expired) delivery: schedules its retry, or dead-letters it
    /// when its attempts are used up or the failure is permanent. One atomic call.
    pub async fn group_fail(
        &self,
        topic: &Topic,
        group: &str,
        lease: &Lease,
        failure: Failure,
        policy: &RetryPolicy,
        error: &str,
    ) -> Result<Failed> {
        let k = self.group_keys(topic, group);
        let args = fail_args(group, policy, std::iter::once((lease, failure, error)));
        let reply = self.call(library::GROUP_FAIL, fail_keys(&k), args, false).await?;
        failed(reply, 1)?.pop().ok_or_else(|| StoreError::Protocol("fail answered nothing".into()))
    }

    /// Moves retries due by `now_ms` (at most `limit`) to the retry stream; returns how
    /// many moved and the next due time (0 when nothing is scheduled).
    pub async fn group_promote(&self, topic: &Topic, group: &str, now_ms: u64, limit: u64) -> Result<(u64, u64)> {
        let k = self.group_keys(topic, group);
        let args: Vec<Value> = vec![(now_ms as i64).into(), (limit as i64).into()];
        let reply =
            self.call(library::GROUP_PROMOTE, vec![k.schedule, k.payloads, k.retry], args, false).await?.into_array();
        Ok((reply.first().and_then(|v| v.as_u64()).unwrap_or(0), reply.get(1).and_then(|v| v.as_u64()).unwrap_or(0)))
    }

    /// Takes over deliveries idle longer than `min_idle` for `consumer`; returns how many
    /// pending entries had been deleted from their stream (acked and counted) and the
    /// reclaimed deliveries (with their new lease).
    pub async fn group_reclaim(
        &self,
        topic: &Topic,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: u64,
    ) -> Result<(u64, Vec<GroupDelivery>)> {
        let k = self.group_keys(topic, group);
        let args: Vec<Value> =
            vec![group.into(), consumer.into(), (min_idle.as_millis() as i64).into(), (count as i64).into()];
        let reply =
            self.call(library::GROUP_RECLAIM, vec![k.stream, k.retry, k.counters], args, false).await?.into_array();
        let mut it = reply.into_iter();
        let deleted = it.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let mut out = Vec::new();
        while let (Some(src), Some(id), Some(count), Some(f)) = (it.next(), it.next(), it.next(), it.next()) {
            let source = if src.as_str().as_deref() == Some("r") { Source::Retry } else { Source::Main };
            out.push(delivery(source, id.as_string().unwrap_or_default(), count.as_u64().unwrap_or(1), &f));
        }
        Ok((deleted, out))
    }

    /// Dead letters after `after` (an entry id; None = from the oldest), at most `limit`.
    pub async fn dlq_list(
        &self,
        topic: &Topic,
        group: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<DeadLetter>> {
        let k = self.group_keys(topic, group);
        let start = after.map(|a| format!("({a}")).unwrap_or_else(|| "-".into());
        let reply: Value = self.pool.next().xrange(k.dlq, start, "+", Some(limit)).await?;
        Ok(entries(reply)
            .into_iter()
            .map(|(id, f)| {
                let f = fields(&f);
                let bytes = f.get("e").and_then(|v| v.as_bytes().map(<[u8]>::to_vec)).unwrap_or_default();
                DeadLetter {
                    id,
                    seq: f.get("seq").and_then(|v| v.as_u64()).unwrap_or(0),
                    attempts: f.get("attempts").and_then(|v| v.as_u64()).unwrap_or(0) as u32,
                    error: f.get("err").and_then(|v| v.as_string()).unwrap_or_default(),
                    dead_ms: f.get("ts").and_then(|v| v.as_u64()).unwrap_or(0),
                    reason: f.get("reason").and_then(|v| v.as_string()).unwrap_or_default(),
                    envelope: Envelope::decode(&bytes).map_err(|_| bytes),
                }
            })
            .collect())
    }

    /// Moves the given dead letters back into the group's retry path; returns how many.
    pub async fn dlq_replay(&self, topic: &Topic, group: &str, ids: &[String]) -> Result<u64> {
        let k = self.group_keys(topic, group);
        let args: Vec<Value> = ids.iter().map(|id| Value::from(id.clone())).collect();
        Ok(self.call(library::GROUP_REPLAY, vec![k.dlq, k.retry], args, false).await?.as_u64().unwrap_or(0))
    }

    /// Deletes the given dead letters; returns how many existed.
    pub async fn dlq_purge(&self, topic: &Topic, group: &str, ids: &[String]) -> Result<u64> {
        let k = self.group_keys(topic, group);
        Ok(self.pool.next().xdel(k.dlq, ids.to_vec()).await?)
    }

    pub async fn group_info(&self, topic: &Topic, group: &str) -> Result<GroupInfo> {
        let k = self.group_keys(topic, group);
        let client = self.pool.next();
        let mut info = GroupInfo::default();
        let groups: Value = client.xinfo_groups(k.stream.clone()).await.unwrap_or(Value::Null);
        for g in groups.into_array() {
            let f = fields(&g);
            if f.get("name").and_then(|v| v.as_string()).as_deref() == Some(group) {
                info.exists = true;
                let delivered = f.get("last-delivered-id").and_then(|v| v.as_string());
                let last: Value = client.xrevrange(k.stream.clone(), "+", "-", Some(1)).await.unwrap_or(Value::Null);
                let last_id = last.into_array().into_iter().next().and_then(|e| e.into_array().into_iter().next());
                let length: u64 = client.xlen(k.stream.clone()).await.unwrap_or(0);
                info.lag = group_lag(
                    f.get("lag").and_then(|v| v.as_u64()),
                    delivered.as_deref(),
                    last_id.and_then(|v| v.as_string()).as_deref(),
                    length,
                );
                info.pending += f.get("pending").and_then(|v| v.as_u64()).unwrap_or(0);
                info.consumers = f.get("consumers").and_then(|v| v.as_u64()).unwrap_or(0);
            }
        }
        let retry_groups: Value = client.xinfo_groups(k.retry.clone()).await.unwrap_or(Value::Null);
        for g in retry_groups.into_array() {
            let f = fields(&g);
            if f.get("name").and_then(|v| v.as_string()).as_deref() == Some(group) {
                info.pending += f.get("pending").and_then(|v| v.as_u64()).unwrap_or(0);
                info.retry_ready = f.get("lag").and_then(|v| v.as_u64()).unwrap_or(0);
            }
        }
        info.scheduled = client.zcard(k.schedule).await?;
        info.dead_letters = client.xlen(k.dlq).await?;
        let counters: HashMap<String, u64> = client.hgetall(k.counters).await?;
        info.counters = counters;
        let exists: u64 = client.exists(k.retry).await?;
        info.exists = info.exists && exists == 1;
        Ok(info)
    }
}

/// A group's lag: how many entries of the stream it has not been handed yet.
///
/// Redis's own `lag` (entries added − the group's `entries-read`) is used when it is
/// known, bounded by what the IDs allow: entries after `last-delivered-id` up to the last
/// entry, at most the stream's length. The bound matters after a failover on Redis 7.0:
/// XREADGROUP propagates its reads to replicas as XCLAIM, which carries no
/// `entries-read`, so a replica's count goes stale (fixed by redis/redis#12898, which
/// propagates `XGROUP SETID … ENTRIESREAD` with every read: Redis 7.2.4 and later), and
/// on the promoted replica Redis reports a lag above zero for good although the group
/// has everything. Entry IDs are `<seq>-0`, so the IDs
/// after the group's position count at most `last seq − delivered seq` entries, and none
/// when it has the last entry.
pub(crate) fn group_lag(
    redis_lag: Option<u64>,
    last_delivered: Option<&str>,
    last_entry: Option<&str>,
    length: u64,
) -> Option<u64> {
    let id = |s: &str| -> Option<(u64, u64)> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some((ms.parse().ok()?, seq.parse().ok()?))
    };
    let Some(last) = last_entry.and_then(id) else {
        return Some(0); // an empty stream: nothing to hand out
    };
    let Some(delivered) = last_delivered.and_then(id) else {
        return redis_lag;
    };
    if delivered >= last {
        return Some(0);
    }
    // With IDs `<seq>-0` the entries after `delivered` are at most the seq difference.
    let by_ids = if delivered.1 == 0 && last.1 == 0 { last.0 - delivered.0 } else { length };
    let bound = by_ids.min(length);
    Some(redis_lag.map_or(bound, |lag| lag.min(bound)))
}

#[cfg(test)]
mod lag_tests {
    use super::group_lag;

    #[test]
    fn lag_is_bounded_by_the_ids_and_zero_when_the_group_has_the_last_entry() {
        // (redis lag, last delivered, last entry, length) → lag
        let cases = [
            (Some(3), Some("7-0"), Some("10-0"), 10, Some(3)),
            // Redis 7.0 after a promotion: entries-read stale, lag stuck above zero.
            (Some(5), Some("10-0"), Some("10-0"), 10, Some(0)),
            (Some(50), Some("8-0"), Some("10-0"), 10, Some(2)),
            // Unknown to Redis (deleted entries): the bound.
            (None, Some("8-0"), Some("10-0"), 10, Some(2)),
            (None, Some("0-0"), Some("1000-0"), 10, Some(10)),
            (Some(4), None, Some("10-0"), 10, Some(4)),
            (Some(9), Some("3-0"), None, 0, Some(0)),
            (Some(2), Some("5-1"), Some("5-3"), 3, Some(2)),
        ];
        for (redis, delivered, last, length, expected) in cases {
            assert_eq!(
                group_lag(redis, delivered, last, length),
                expected,
                "{redis:?} {delivered:?} {last:?} {length}"
            );
        }
    }
}

impl Store {
    /// Stores the definition of a group created through the admin API (JSON of its spec)
    /// and registers it in its registry bucket, so every node starts serving it.
    pub async fn group_define(&self, topic: &Topic, group: &str, definition: &str) -> Result<()> {
        let k = self.group_keys(topic, group);
        let client = self.pool.next();
        let _: Value = client.set(k.definition, definition, None, None, false).await?;
        let member = format!("{topic}/{group}");
        let _: Value = client.sadd(self.keys.group_registry(group_registry_bucket(&member)), member).await?;
        Ok(())
    }

    /// Whether the group was created through the admin API (has a stored definition).
    pub async fn group_defined(&self, topic: &Topic, group: &str) -> Result<bool> {
        let exists: u64 = self.pool.next().exists(self.group_keys(topic, group).definition).await?;
        Ok(exists == 1)
    }

    /// The definitions of the groups registered in registry bucket `bucket` (a member
    /// whose definition is gone — deleted meanwhile — is left out).
    pub async fn group_definitions(&self, bucket: usize) -> Result<Vec<String>> {
        let members: Vec<String> = self.pool.next().smembers(self.keys.group_registry(bucket)).await?;
        self.definitions_of(members).await
    }

    /// Moves the registrations of the one-key registry of earlier versions into their
    /// buckets (each added to its bucket before it leaves the old key, so a crash
    /// in between leaves it in both, never in neither), and returns their definitions.
    /// The old key disappears once empty. Earlier nodes still running (a rolling
    /// upgrade) keep adding there; every node moves them on (`groups::discover`).
    pub async fn group_registry_migrate(&self) -> Result<Vec<String>> {
        let client = self.pool.next();
        let legacy = self.keys.group_registry_legacy();
        let members: Vec<String> = client.smembers(&legacy).await?;
        for member in &members {
            let _: Value =
                client.sadd(self.keys.group_registry(group_registry_bucket(member)), member.as_str()).await?;
            let _: Value = client.srem(&legacy, member.as_str()).await?;
        }
        self.definitions_of(members).await
    }

    async fn definitions_of(&self, members: Vec<String>) -> Result<Vec<String>> {
        let client = self.pool.next();
        let mut out = Vec::new();
        for member in members {
            let Some((topic, group)) = member.split_once('/') else { continue };
            let Ok(topic) = Topic::parse(topic, crate::topic::MAX_TOPIC_BYTES) else { continue };
            let definition: Option<String> = client.get(self.group_keys(&topic, group).definition).await?;
            if let Some(d) = definition {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Deletes a group with everything it holds (one atomic call) and unregisters it (from
    /// its bucket, and from the registry of earlier versions should it still be there).
    pub async fn group_delete(&self, topic: &Topic, group: &str) -> Result<bool> {
        let k = self.group_keys(topic, group);
        let keys = vec![k.stream, k.retry, k.schedule, k.payloads, k.dlq, k.counters, k.meta, k.definition];
        let existed = self.call(library::GROUP_DELETE, keys, vec![group.into()], false).await?;
        let member = format!("{topic}/{group}");
        let client = self.pool.next();
        let _: Value = client.srem(self.keys.group_registry(group_registry_bucket(&member)), member.as_str()).await?;
        let _: Value = client.srem(self.keys.group_registry_legacy(), member.as_str()).await?;
        Ok(existed.as_u64() == Some(1))
    }

    /// Pauses (true) or resumes a group: paused, no node hands out its messages.
    pub async fn group_set_paused(&self, topic: &Topic, group: &str, paused: bool) -> Result<()> {
        let k = self.group_keys(topic, group);
        let _: Value = self.pool.next().hset(k.counters, ("paused", if paused { 1 } else { 0 })).await?;
        Ok(())
    }

    /// Whether a group is paused.
    pub async fn group_paused(&self, topic: &Topic, group: &str) -> Result<bool> {
        let k = self.group_keys(topic, group);
        let v: Option<u64> = self.pool.next().hget(k.counters, "paused").await?;
        Ok(v == Some(1))
    }

    /// The names of a topic's groups (as created, whatever this node's configuration says).
    pub async fn topic_groups(&self, topic: &Topic) -> Result<Vec<String>> {
        let meta = self.keys.topic(topic).meta;
        let names: Option<String> = self.pool.next().hget(meta, "groups").await?;
        Ok(names.unwrap_or_default().split_whitespace().map(str::to_string).collect())
    }

    /// Removes one consumer from the group (both streams): a session's consumer when the
    /// session ends, after its deliveries were handed back. A consumer that still holds
    /// pending entries (the hand-back failed) is kept, so nothing it holds is lost: its
    /// entries are reclaimed after `ack_wait_ms` and the idle pruning removes it later.
    /// The check and the removal are one atomic call (`sh_group_drop_consumers_v1`).
    pub async fn group_delete_consumer(&self, topic: &Topic, group: &str, consumer: &str) -> Result<()> {
        self.group_drop_consumers(topic, group, consumer, -1, "").await.map(|_| ())
    }

    /// Removes consumers (other than this node's, whose names start with `keep`) idle
    /// longer than `idle` and holding nothing pending, on both of the group's streams; one
    /// atomic call, so a consumer that reads meanwhile is not removed with what it read.
    /// Returns how many were removed (one removed from both streams counts twice).
    pub async fn group_prune_consumers(&self, topic: &Topic, group: &str, idle: Duration, keep: &str) -> Result<u64> {
        self.group_drop_consumers(topic, group, "", idle.as_millis() as i64, keep).await
    }

    async fn group_drop_consumers(
        &self,
        topic: &Topic,
        group: &str,
        only: &str,
        idle_ms: i64,
        keep: &str,
    ) -> Result<u64> {
        let k = self.group_keys(topic, group);
        let args: Vec<Value> = vec![group.into(), only.into(), idle_ms.into(), keep.into()];
        let reply = self.call(library::GROUP_DROP_CONSUMERS, vec![k.stream, k.retry], args, false).await?;
        Ok(reply.as_u64().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_go_by_stream_then_id_and_answers_come_back_in_the_callers_order() {
        let lease = |source, id: &str, count| Lease { source, id: id.to_string(), count };
        let leases = [
            lease(Source::Main, "10-0", 1),
            lease(Source::Retry, "1700000000000-2", 1),
            lease(Source::Main, "9-0", 1),
            lease(Source::Main, "10-0", 2),
            lease(Source::Retry, "1700000000000-10", 1),
            lease(Source::Main, "100-0", 1),
        ];
        let order = lease_order(leases.iter());
        let sorted: Vec<(&str, u64)> = order.iter().map(|&i| (leases[i].id.as_str(), leases[i].count)).collect();
        // Numbers, not text ("9" before "10"); the same id keeps its caller's order.
        assert_eq!(
            sorted,
            vec![("9-0", 1), ("10-0", 1), ("10-0", 2), ("100-0", 1), ("1700000000000-2", 1), ("1700000000000-10", 1)]
        );
        let answers: Vec<String> = order.iter().map(|&i| format!("answer {i}")).collect();
        let back = in_caller_order(answers, &order).expect("one answer each");
        assert_eq!(back, (0..leases.len()).map(|i| format!("answer {i}")).collect::<Vec<_>>());
        assert!(in_caller_order(vec!["one"], &order).is_err(), "an answer missing is an error");
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let lease = Lease { source: Source::Retry, id: "1700000000000-3".into(), count: 4 };
        assert_eq!(lease.token(), "r:1700000000000-3:4");
        assert_eq!(Lease::parse(&lease.token()), Some(lease));
        for bad in ["", "x:1-0:1", "m:1-0", "m:1:1", "m:a-0:1", "m:1-0:z"] {
            assert_eq!(Lease::parse(bad), None, "{bad}");
        }
    }
}
