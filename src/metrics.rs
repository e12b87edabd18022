//! Every metric streamhub exports: names (declared once, here, and documented in
//! docs/METRICS.md), the recorders' helpers, the Prometheus recorder behind `/metrics`,
//! and the process gauges refreshed at every scrape. A leaf: it imports nothing of
//! streamhub but the clock; what polls Redis for gauges lives with what it polls
//! (`groups::gauges`).
//!
//! Labels are bounded: `outcome`, `code`, `kind`, `reason`, `cause`, `transport`,
//! `connection` and `command` take values from fixed lists, `route` is the matched route
//! template (never the raw path), `status` the HTTP status code, and `group` a consumer
//! group (`<topic>/<name>`) from the configuration or the admin API. Nothing is labelled
//! by topic, subject or client.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

// ---- publish ----
/// Messages handled by publish, by `outcome` = `stored` | `duplicate`.
pub const MESSAGES_PUBLISHED: &str = "streamhub_messages_published_total";
/// Payload bytes handled by publish, by `outcome` = `stored` | `duplicate`.
pub const PUBLISHED_BYTES: &str = "streamhub_published_bytes_total";
/// Publish requests refused, by error `code`.
pub const PUBLISH_REJECTED: &str = "streamhub_publish_rejected_total";
/// Time of one publish call to Redis (single or batch), seconds.
pub const PUBLISH_DURATION: &str = "streamhub_publish_duration_seconds";
/// History pages read; `truncated` = `true` | `false`.
pub const HISTORY_READS: &str = "streamhub_history_reads_total";
/// Messages not returned or delivered because they had expired (their TTL passed), by
/// `path` = `history` | `subscription`.
pub const EXPIRED_SKIPPED: &str = "streamhub_expired_skipped_total";
/// Stream entries removed by retention, by `reason` = `age`.
pub const RETENTION_TRIMMED: &str = "streamhub_retention_trimmed_total";

// ---- fan-out ----
/// Open WebSocket and SSE sessions, by `transport`.
pub const SESSIONS: &str = "streamhub_sessions";
/// Active topic subscriptions of this node's sessions.
pub const SUBSCRIPTIONS: &str = "streamhub_subscriptions";
/// Messages written to subscribers, by `transport`.
pub const MESSAGES_DELIVERED: &str = "streamhub_messages_delivered_total";
/// Of `MESSAGES_DELIVERED`, those written by the topic's tail itself (direct writes).
pub const MESSAGES_DELIVERED_DIRECT: &str = "streamhub_messages_delivered_direct_total";
/// Publish time (envelope) to the write to a subscriber, by `transport`, seconds.
pub const DELIVERY_LAG: &str = "streamhub_delivery_lag_seconds";
/// Subscriptions with a `since` position, by `outcome` = `recovered` | `epoch_changed` |
/// `trimmed` | `ahead`.
pub const RESUMES: &str = "streamhub_resumes_total";
/// Position jumps told to subscribers (`recovered: false`), by `reason`.
pub const RESETS: &str = "streamhub_subscription_resets_total";
/// Subscriptions that fell behind (queue full) and switched to their own catch-up.
pub const SUBSCRIBERS_LAGGED: &str = "streamhub_subscribers_lagged_total";
/// Messages delivered by catch-up readers (resume and lagging subscribers).
pub const CAUGHT_UP_MESSAGES: &str = "streamhub_caught_up_messages_total";
/// Sessions closed because a write to the peer did not complete within
/// `ws.write_timeout_ms`, by `transport`.
pub const SLOW_SESSIONS_CLOSED: &str = "streamhub_slow_sessions_closed_total";
/// Sessions closed by the server, by close `code`.
pub const SESSIONS_CLOSED: &str = "streamhub_sessions_closed_total";
/// Tail tasks running on this node (one per topic with local subscribers).
pub const TAIL_TASKS: &str = "streamhub_tail_tasks";
/// Reads of topics by tail tasks (one per wake-up and page, not per subscriber).
pub const TAIL_READS: &str = "streamhub_tail_reads_total";
/// Presence entries of this node's subscriptions (what it refreshes).
pub const PRESENCE_ENTRIES: &str = "streamhub_presence_entries";
/// Presence entries changed by this node's calls, by `change` = `added` | `removed` |
/// `expired` (entries of any node that were not refreshed in time, purged by this node).
pub const PRESENCE_CHANGES: &str = "streamhub_presence_changes_total";
/// Presence and ephemeral events dropped on this node because a queue was full (the
/// tail's event queue, or a subscriber's outbound queue): they are at most once.
pub const TOPIC_EVENTS_DROPPED: &str = "streamhub_topic_events_dropped_total";
/// Times every tail was woken to repair possibly missed hints, by `cause` =
/// `overflow` | `reconnect`.
pub const HINT_GAPS_REPAIRED: &str = "streamhub_hint_gaps_repaired_total";

// ---- consumer groups ----
/// Deliveries handed to consumers (targets, pull fetches, WebSocket consumers), by `group`.
pub const GROUP_DELIVERED: &str = "streamhub_group_delivered_total";
/// Settled group deliveries by `group` and `outcome` = acked | scheduled | dead | expired |
/// deleted | lease_expired | unknown | invalid_token | ack_failed | fail_failed.
pub const GROUP_OUTCOMES: &str = "streamhub_group_outcomes_total";
/// Deliveries taken over after their lease expired, by `group`.
pub const GROUP_RECLAIMED: &str = "streamhub_group_reclaimed_total";
/// Time of one call of a push group's target (handler or webhook), by `group`, seconds.
pub const GROUP_TARGET_DURATION: &str = "streamhub_group_target_duration_seconds";
/// Deliveries handed out and not yet settled (main and retry streams), by `group`.
pub const GROUP_PENDING: &str = "streamhub_group_pending";
/// Messages of the topic not yet delivered to the group, by `group`.
pub const GROUP_LAG: &str = "streamhub_group_lag";
/// Retries waiting for their backoff to elapse, by `group`.
pub const GROUP_SCHEDULED_RETRIES: &str = "streamhub_group_scheduled_retries";
/// Entries of the group's dead-letter stream, by `group`.
pub const GROUP_DEAD_LETTERS: &str = "streamhub_group_dead_letters";

// ---- Redis ----
/// Time of one Redis call made by streamhub, by `command`, seconds.
pub const REDIS_COMMAND_DURATION: &str = "streamhub_redis_command_duration_seconds";
/// Redis calls that failed, by `kind` = unavailable | not_replicated | refused |
/// protocol | other.
pub const REDIS_ERRORS: &str = "streamhub_redis_errors_total";
/// Connections to Redis re-established, by `connection` = pool | hints | blocking | shard
/// (shard: the per-primary connections on Redis Cluster, see store/shards.rs).
pub const REDIS_RECONNECTS: &str = "streamhub_redis_reconnects_total";
/// 1 when the last periodic PING was answered, else 0.
pub const REDIS_UP: &str = "streamhub_redis_up";

// ---- HTTP ----
/// HTTP requests by `route` template, `method` and `status`.
pub const HTTP_REQUESTS: &str = "streamhub_http_requests_total";
/// Time to answer an HTTP request (to the response head), by `route` and `method`, seconds.
pub const HTTP_REQUEST_DURATION: &str = "streamhub_http_request_duration_seconds";

// ---- process ----
/// Always 1; `version` = the crate version.
pub const BUILD_INFO: &str = "streamhub_build_info";
/// Unix time the process started, seconds.
pub const START_TIME: &str = "streamhub_process_start_time_seconds";
/// Seconds since the process started.
pub const UPTIME: &str = "streamhub_uptime_seconds";
/// Resident memory of the process, bytes.
pub const RESIDENT_MEMORY: &str = "streamhub_process_resident_memory_bytes";
/// Open file descriptors of the process (connections included).
pub const OPEN_FDS: &str = "streamhub_process_open_fds";
/// The process's soft limit of open file descriptors (RLIMIT_NOFILE).
pub const MAX_FDS: &str = "streamhub_process_max_fds";
/// Tasks alive in the process's runtime (a connection's tasks, tails, workers, …).
pub const RUNTIME_TASKS: &str = "streamhub_runtime_tasks";
/// CPU time used by the process (user and system), seconds.
pub const CPU_SECONDS: &str = "streamhub_process_cpu_seconds_total";

const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Delivery lag spans more: a resumed subscriber receives old messages.
const LAG_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static STARTED: OnceLock<(Instant, f64)> = OnceLock::new();

/// The process-wide recorder, installed on first use (several servers in one process,
/// as in tests, share it).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(DELIVERY_LAG.to_string()), LAG_BUCKETS))
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

/// Series that exist from the start (at zero), so that dashboards and alerts see them
/// before the first event.
fn describe() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (_, start) = STARTED.get_or_init(|| (Instant::now(), now.as_secs_f64()));
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!(START_TIME).set(*start);
    for (transport, protocol) in SESSION_KINDS {
        metrics::gauge!(SESSIONS, "transport" => transport, "protocol" => protocol).increment(0.0);
        metrics::counter!(SLOW_SESSIONS_CLOSED, "transport" => transport, "protocol" => protocol).increment(0);
    }
    metrics::gauge!(SUBSCRIPTIONS).increment(0.0);
    metrics::gauge!(TAIL_TASKS).increment(0.0);
    for outcome in ["stored", "duplicate", "ephemeral"] {
        metrics::counter!(MESSAGES_PUBLISHED, "outcome" => outcome).increment(0);
        metrics::counter!(PUBLISHED_BYTES, "outcome" => outcome).increment(0);
    }
    metrics::counter!(SUBSCRIBERS_LAGGED).increment(0);
    metrics::counter!(TOPIC_EVENTS_DROPPED).increment(0);
    metrics::gauge!(PRESENCE_ENTRIES).set(0.0);
    for change in ["added", "removed", "expired"] {
        metrics::counter!(PRESENCE_CHANGES, "change" => change).increment(0);
    }
    for path in ["history", "subscription"] {
        metrics::counter!(EXPIRED_SKIPPED, "path" => path).increment(0);
    }
    metrics::counter!(RETENTION_TRIMMED, "reason" => "age").increment(0);
    metrics::counter!(CAUGHT_UP_MESSAGES).increment(0);
    for cause in ["overflow", "reconnect"] {
        metrics::counter!(HINT_GAPS_REPAIRED, "cause" => cause).increment(0);
    }
    for connection in ["pool", "hints", "blocking", "shard"] {
        metrics::counter!(REDIS_RECONNECTS, "connection" => connection).increment(0);
    }
    for kind in ["unavailable", "not_replicated", "refused", "protocol", "other"] {
        metrics::counter!(REDIS_ERRORS, "kind" => kind).increment(0);
    }
    let _ = refresh_process();
}

/// The process's own figures, read from /proc (Linux); None where unavailable.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcessFigures {
    pub uptime_seconds: f64,
    /// Unix time the process started, seconds.
    pub start_time_seconds: f64,
    pub resident_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    /// CPU time used (user and system), seconds.
    pub cpu_seconds: Option<f64>,
}

/// Reads the process figures.
pub fn process() -> ProcessFigures {
    let mut figures = ProcessFigures::default();
    if let Some((started, start)) = STARTED.get() {
        figures.uptime_seconds = started.elapsed().as_secs_f64();
        figures.start_time_seconds = *start;
    }
    // /proc/self/stat: fields after the command name; utime and stime are fields 14 and
    // 15, in clock ticks (USER_HZ, which Linux fixes at 100 for this interface).
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            if let (Some(utime), Some(stime)) = (field(14), field(15)) {
                figures.cpu_seconds = Some((utime + stime) as f64 / 100.0);
            }
        }
    }
    // "VmRSS:     12345 kB"
    figures.resident_memory_bytes = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    figures.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|dir| dir.count() as u64);
    // "Max open files            1024                 1048576              files"
    figures.max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
        limits.lines().find_map(|l| l.strip_prefix("Max open files")?.split_whitespace().next()?.parse::<u64>().ok())
    });
    figures
}

/// Sets the process gauges (called before every render); returns the CPU seconds used,
/// which the metrics crate's integer counters cannot carry (see `render`).
fn refresh_process() -> Option<f64> {
    let figures = process();
    if STARTED.get().is_some() {
        metrics::gauge!(UPTIME).set(figures.uptime_seconds);
    }
    if let Some(bytes) = figures.resident_memory_bytes {
        metrics::gauge!(RESIDENT_MEMORY).set(bytes as f64);
    }
    if let Some(n) = figures.open_fds {
        metrics::gauge!(OPEN_FDS).set(n as f64);
    }
    if let Some(soft) = figures.max_fds {
        metrics::gauge!(MAX_FDS).set(soft as f64);
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        metrics::gauge!(RUNTIME_TASKS).set(runtime.metrics().num_alive_tasks() as f64);
    }
    figures.cpu_seconds
}

/// The `/metrics` text: process gauges refreshed, then everything rendered.
pub fn render(handle: &PrometheusHandle) -> String {
    let cpu = refresh_process();
    let mut text = handle.render();
    render_deliveries(&mut text);
    if let Some(seconds) = cpu {
        // Written here: a fractional counter (the recorder's counters are integers).
        text.push_str(&format!("# TYPE {CPU_SECONDS} counter\n{CPU_SECONDS} {seconds}\n"));
    }
    text
}

/// Drains histogram buckets periodically so memory stays bounded between scrapes.
pub async fn run_upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// A publish request refused, by its error code.
pub fn publish_rejected(code: &'static str) {
    FIGURES.rejected.fetch_add(1, Relaxed);
    metrics::counter!(PUBLISH_REJECTED, "code" => code).increment(1);
}

/// Messages handled by publish, by `outcome` (`stored` or `duplicate`), and their bytes.
pub fn published(outcome: &'static str, count: u64, bytes: u64) {
    if count == 0 {
        return;
    }
    let total = if outcome == "duplicate" { &FIGURES.duplicates } else { &FIGURES.stored };
    total.fetch_add(count, Relaxed);
    metrics::counter!(MESSAGES_PUBLISHED, "outcome" => outcome).increment(count);
    metrics::counter!(PUBLISHED_BYTES, "outcome" => outcome).increment(bytes);
}

/// The handles of the publish path's series, looked up once (by `Ops`) rather than per
/// publish: `published` for stored and duplicate messages, and `PUBLISH_DURATION`.
#[derive(Clone)]
pub struct PublishMeter {
    stored: (metrics::Counter, metrics::Counter),
    duplicate: (metrics::Counter, metrics::Counter),
    duration: metrics::Histogram,
}

impl PublishMeter {
    pub fn new() -> PublishMeter {
        let pair = |outcome: &'static str| {
            (
                metrics::counter!(MESSAGES_PUBLISHED, "outcome" => outcome),
                metrics::counter!(PUBLISHED_BYTES, "outcome" => outcome),
            )
        };
        PublishMeter {
            stored: pair("stored"),
            duplicate: pair("duplicate"),
            duration: metrics::histogram!(PUBLISH_DURATION),
        }
    }

    /// One publish call answered after `seconds`: `stored` and `duplicate` are
    /// (messages, payload bytes).
    pub fn published(&self, seconds: f64, stored: (u64, u64), duplicate: (u64, u64)) {
        self.duration.record(seconds);
        for (counters, (count, bytes), total) in
            [(&self.stored, stored, &FIGURES.stored), (&self.duplicate, duplicate, &FIGURES.duplicates)]
        {
            if count > 0 {
                total.fetch_add(count, Relaxed);
                counters.0.increment(count);
                counters.1.increment(bytes);
            }
        }
    }
}

impl Default for PublishMeter {
    fn default() -> Self {
        Self::new()
    }
}

/// Messages skipped because they had expired, on `path` (`history`, `subscription`).
pub fn expired_skipped(path: &'static str, count: u64) {
    if count > 0 {
        metrics::counter!(EXPIRED_SKIPPED, "path" => path).increment(count);
    }
}

/// Stream entries removed by retention, by `reason` (`age`).
pub fn retention_trimmed(reason: &'static str, count: u64) {
    if count > 0 {
        metrics::counter!(RETENTION_TRIMMED, "reason" => reason).increment(count);
    }
}

/// A history page read, and whether some of it was trimmed.
pub fn history_read(truncated: bool) {
    metrics::counter!(HISTORY_READS, "truncated" => if truncated { "true" } else { "false" }).increment(1);
}

pub fn presence_entries(n: usize) {
    metrics::gauge!(PRESENCE_ENTRIES).set(n as f64);
}

pub fn presence_changed(change: &'static str, count: u64) {
    if count > 0 {
        metrics::counter!(PRESENCE_CHANGES, "change" => change).increment(count);
    }
}

/// Presence or ephemeral events dropped because a queue was full.
pub fn topic_events_dropped(count: u64) {
    metrics::counter!(TOPIC_EVENTS_DROPPED).increment(count);
}

pub fn tail_started() {
    metrics::gauge!(TAIL_TASKS).increment(1.0);
}

pub fn tail_stopped() {
    metrics::gauge!(TAIL_TASKS).decrement(1.0);
}

pub fn tail_read() {
    metrics::counter!(TAIL_READS).increment(1);
}

pub fn subscriber_lagged() {
    metrics::counter!(SUBSCRIBERS_LAGGED).increment(1);
}

pub fn caught_up(count: usize) {
    metrics::counter!(CAUGHT_UP_MESSAGES).increment(count as u64);
}

/// A position jump told to a subscriber, by its reason (`epoch_changed`, `trimmed`, `ahead`).
pub fn reset(reason: &'static str) {
    metrics::counter!(RESETS, "reason" => reason).increment(1);
}

/// A subscription with a `since` position: `recovered`, or the reason it was not.
pub fn resumed(outcome: &'static str) {
    metrics::counter!(RESUMES, "outcome" => outcome).increment(1);
}

pub fn subscriptions(delta: f64) {
    FIGURES.subscriptions.fetch_add(delta as i64, Relaxed);
    metrics::gauge!(SUBSCRIPTIONS).increment(delta);
}

pub fn hint_gaps_repaired(cause: &'static str) {
    metrics::counter!(HINT_GAPS_REPAIRED, "cause" => cause).increment(1);
}

/// The kinds of subscriber session: (`transport`, `protocol`) label values.
pub const SESSION_KINDS: [(&str, &str); 3] = [("ws", "streamhub"), ("ws", "centrifugo"), ("sse", "streamhub")];

/// Counts the messages one session writes. The counts are the process's own sharded
/// figures (`DELIVERIES`), not the recorder's: a delivery is the hottest event a node
/// counts, and every worker thread adding to the same counter and histogram moves their
/// cache lines from core to core on every delivery (ARCHITECTURE §6).
pub struct DeliveryMeter {
    kind: usize,
}

impl DeliveryMeter {
    /// The meter of a session over `transport` in `protocol` (one of `SESSION_KINDS`).
    pub fn new(transport: &'static str, protocol: &'static str) -> DeliveryMeter {
        let kind = SESSION_KINDS.iter().position(|k| *k == (transport, protocol));
        debug_assert!(kind.is_some(), "({transport}, {protocol}) is not in SESSION_KINDS");
        DeliveryMeter { kind: kind.unwrap_or(0) }
    }

    /// A message published at `published_ms` written at `now_ms`.
    #[inline]
    pub fn delivered(&self, published_ms: u64, now_ms: u64) {
        DELIVERIES[self.kind][shard()].record(now_ms.saturating_sub(published_ms));
    }

    /// The same, written by the topic's tail itself (a direct write).
    pub fn delivered_direct(&self, published_ms: u64, now_ms: u64) {
        let shard = &DELIVERIES[self.kind][shard()];
        shard.record(now_ms.saturating_sub(published_ms));
        shard.direct.fetch_add(1, Relaxed);
    }
}

/// How many shards each kind's delivery figures are spread over: a thread adds to its
/// own (threads beyond this many share, which stays exact, only slower).
const SHARDS: usize = 16;

/// One thread's share of one kind's deliveries: the count, and the lag histogram
/// (`LAG_BUCKETS`, one count per bucket and one above the last, not cumulative; the sum
/// in milliseconds). Aligned to its own cache lines, so that no two threads' shards share
/// one.
#[repr(align(128))]
struct DeliveryShard {
    delivered: AtomicU64,
    /// Of `delivered`, the direct writes.
    direct: AtomicU64,
    lag_sum_ms: AtomicU64,
    lag_buckets: [AtomicU64; LAG_BUCKETS.len() + 1],
}

impl DeliveryShard {
    const fn new() -> DeliveryShard {
        DeliveryShard {
            delivered: AtomicU64::new(0),
            direct: AtomicU64::new(0),
            lag_sum_ms: AtomicU64::new(0),
            lag_buckets: [const { AtomicU64::new(0) }; LAG_BUCKETS.len() + 1],
        }
    }

    #[inline]
    fn record(&self, lag_ms: u64) {
        self.delivered.fetch_add(1, Relaxed);
        self.lag_sum_ms.fetch_add(lag_ms, Relaxed);
        let lag = lag_ms as f64 / 1000.0;
        let bucket = LAG_BUCKETS.iter().position(|le| lag <= *le).unwrap_or(LAG_BUCKETS.len());
        self.lag_buckets[bucket].fetch_add(1, Relaxed);
    }
}

/// Deliveries by kind of session (`SESSION_KINDS`), in shards. Process-wide, like the
/// recorder: several nodes in one process (tests) share them.
static DELIVERIES: [[DeliveryShard; SHARDS]; SESSION_KINDS.len()] =
    [const { [const { DeliveryShard::new() }; SHARDS] }; SESSION_KINDS.len()];

/// This thread's shard: threads take them in turn as they first deliver.
fn shard() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// One kind's deliveries, all shards together: the count, the non-cumulative bucket
/// counts and the lag's sum in milliseconds.
struct DeliveryTotals {
    delivered: u64,
    direct: u64,
    lag_sum_ms: u64,
    lag_buckets: [u64; LAG_BUCKETS.len() + 1],
}

fn delivery_totals(kind: usize) -> DeliveryTotals {
    sum_shards(&DELIVERIES[kind])
}

fn sum_shards(shards: &[DeliveryShard]) -> DeliveryTotals {
    let mut totals = DeliveryTotals { delivered: 0, direct: 0, lag_sum_ms: 0, lag_buckets: [0; LAG_BUCKETS.len() + 1] };
    for shard in shards {
        totals.delivered += shard.delivered.load(Relaxed);
        totals.direct += shard.direct.load(Relaxed);
        totals.lag_sum_ms += shard.lag_sum_ms.load(Relaxed);
        for (total, n) in totals.lag_buckets.iter_mut().zip(&shard.lag_buckets) {
            *total += n.load(Relaxed);
        }
    }
    totals
}

/// `MESSAGES_DELIVERED` and `DELIVERY_LAG` in the text format, as the recorder writes a
/// counter and a histogram (every kind, from zero).
fn render_deliveries(text: &mut String) {
    let totals: Vec<DeliveryTotals> = (0..SESSION_KINDS.len()).map(delivery_totals).collect();
    write_deliveries(text, &totals);
}

/// `totals` is by kind, in the order of `SESSION_KINDS`.
fn write_deliveries(text: &mut String, totals: &[DeliveryTotals]) {
    use std::fmt::Write;
    let _ = writeln!(text, "# TYPE {MESSAGES_DELIVERED} counter");
    for ((transport, protocol), t) in SESSION_KINDS.iter().zip(totals) {
        let _ =
            writeln!(text, "{MESSAGES_DELIVERED}{{transport=\"{transport}\",protocol=\"{protocol}\"}} {}", t.delivered);
    }
    let _ = writeln!(text);
    let _ = writeln!(text, "# TYPE {MESSAGES_DELIVERED_DIRECT} counter");
    for ((transport, protocol), t) in SESSION_KINDS.iter().zip(totals) {
        let _ = writeln!(
            text,
            "{MESSAGES_DELIVERED_DIRECT}{{transport=\"{transport}\",protocol=\"{protocol}\"}} {}",
            t.direct
        );
    }
    let _ = writeln!(text);
    let _ = writeln!(text, "# TYPE {DELIVERY_LAG} histogram");
    for ((transport, protocol), t) in SESSION_KINDS.iter().zip(totals) {
        let labels = format!("transport=\"{transport}\",protocol=\"{protocol}\"");
        let mut cumulative = 0;
        for (i, n) in t.lag_buckets.iter().enumerate() {
            cumulative += n;
            match LAG_BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(text, "{DELIVERY_LAG}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(text, "{DELIVERY_LAG}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(text, "{DELIVERY_LAG}_sum{{{labels}}} {}", t.lag_sum_ms as f64 / 1000.0);
        let _ = writeln!(text, "{DELIVERY_LAG}_count{{{labels}}} {}", t.delivered);
    }
    let _ = writeln!(text);
}

/// A subscriber session opened (+1) or ended (-1).
pub fn session(transport: &'static str, protocol: &'static str, delta: f64) {
    metrics::gauge!(SESSIONS, "transport" => transport, "protocol" => protocol).increment(delta);
}

pub fn group_delivered(group: &str, count: usize) {
    if count > 0 {
        metrics::counter!(GROUP_DELIVERED, "group" => group.to_string()).increment(count as u64);
    }
}

pub fn group_outcome(group: &str, outcome: &'static str, count: u64) {
    metrics::counter!(GROUP_OUTCOMES, "group" => group.to_string(), "outcome" => outcome).increment(count);
}

pub fn redis_reconnected(connection: &'static str) {
    FIGURES.redis_reconnects.fetch_add(1, Relaxed);
    metrics::counter!(REDIS_RECONNECTS, "connection" => connection).increment(1);
}

/// Records one Redis call's duration (by `command`) and, when it failed, its error kind.
pub fn redis_call(command: &'static str, started: Instant, failed: Option<&'static str>) {
    metrics::histogram!(REDIS_COMMAND_DURATION, "command" => command).record(started.elapsed().as_secs_f64());
    if let Some(kind) = failed {
        FIGURES.redis_errors.fetch_add(1, Relaxed);
        metrics::counter!(REDIS_ERRORS, "kind" => kind).increment(1);
    }
}

/// The gauges of one consumer group, read by the node's poller.
pub fn group_gauges(group: &str, pending: u64, lag: u64, scheduled: u64, dead_letters: u64) {
    metrics::gauge!(GROUP_PENDING, "group" => group.to_string()).set(pending as f64);
    metrics::gauge!(GROUP_LAG, "group" => group.to_string()).set(lag as f64);
    metrics::gauge!(GROUP_SCHEDULED_RETRIES, "group" => group.to_string()).set(scheduled as f64);
    metrics::gauge!(GROUP_DEAD_LETTERS, "group" => group.to_string()).set(dead_letters as f64);
}

/// A group's counters at zero, so `increase()` sees its first event.
pub fn group_registered(group: &str) {
    for outcome in ["acked", "scheduled", "dead", "expired", "deleted"] {
        group_outcome(group, outcome, 0);
    }
    metrics::counter!(GROUP_DELIVERED, "group" => group.to_string()).increment(0);
    metrics::counter!(GROUP_RECLAIMED, "group" => group.to_string()).increment(0);
}

/// Deliveries taken over after their lease expired.
pub fn group_reclaimed(group: &str, count: usize) {
    if count > 0 {
        metrics::counter!(GROUP_RECLAIMED, "group" => group.to_string()).increment(count as u64);
    }
}

/// `streamhub_redis_up`.
pub fn redis_up(up: bool) {
    FIGURES.redis_up.store(if up { 1 } else { 2 }, Relaxed);
    metrics::gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

// ---- the node's own figures (GET /v1/node) ----

/// Running totals of the events the series above count, kept as plain atomics so that
/// the node can report them itself (`GET /v1/node`, the console) without a Prometheus
/// (deliveries are `DELIVERIES`, which /metrics renders too).
/// Process-wide, like the recorder: several nodes in one process (tests) share them.
struct Figures {
    stored: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    subscriptions: std::sync::atomic::AtomicI64,
    redis_errors: AtomicU64,
    redis_reconnects: AtomicU64,
    /// 0 not polled yet, 1 the last PING was answered, 2 it was not.
    redis_up: std::sync::atomic::AtomicU8,
}

static FIGURES: Figures = Figures {
    stored: AtomicU64::new(0),
    duplicates: AtomicU64::new(0),
    rejected: AtomicU64::new(0),
    subscriptions: std::sync::atomic::AtomicI64::new(0),
    redis_errors: AtomicU64::new(0),
    redis_reconnects: AtomicU64::new(0),
    redis_up: std::sync::atomic::AtomicU8::new(0),
};

/// One bucket of a histogram: how many observations were at most `le` seconds
/// (cumulative, as in Prometheus; `le` None is +Inf).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bucket {
    pub le: Option<f64>,
    pub count: u64,
}

/// The delivery-lag histogram since the process started.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LagHistogram {
    pub count: u64,
    pub sum_seconds: f64,
    pub buckets: Vec<Bucket>,
}

/// The q-quantile (0..=1) of cumulative buckets, interpolated linearly inside the bucket
/// it falls in (as Prometheus's `histogram_quantile`); None without observations. A
/// quantile in the +Inf bucket is reported as the highest finite bound.
pub fn quantile(buckets: &[Bucket], q: f64) -> Option<f64> {
    let total = buckets.last()?.count;
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let (mut below, mut lower) = (0u64, 0.0);
    for b in buckets {
        if b.count as f64 >= rank && b.count > below {
            let Some(upper) = b.le else { return Some(lower) };
            let inside = (rank - below as f64) / (b.count - below) as f64;
            return Some(lower + (upper - lower) * inside.clamp(0.0, 1.0));
        }
        below = b.count;
        lower = b.le.unwrap_or(lower);
    }
    Some(lower)
}

/// Totals since the process started, for `GET /v1/node`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeFigures {
    pub messages_stored: u64,
    pub messages_duplicate: u64,
    pub publishes_rejected: u64,
    pub subscriptions: u64,
    pub delivered_ws: u64,
    pub delivered_sse: u64,
    pub delivery_lag: LagHistogram,
    pub redis_errors: u64,
    pub redis_reconnects: u64,
    /// The last periodic PING: Some(true) answered, Some(false) not, None not yet polled.
    pub redis_up: Option<bool>,
}

/// Reads the node's figures.
pub fn figures() -> NodeFigures {
    let f = &FIGURES;
    let (mut delivered_ws, mut delivered_sse, mut lag_sum_ms) = (0, 0, 0);
    let mut lag_buckets = [0u64; LAG_BUCKETS.len() + 1];
    for (kind, (transport, _)) in SESSION_KINDS.iter().enumerate() {
        let totals = delivery_totals(kind);
        *(if *transport == "sse" { &mut delivered_sse } else { &mut delivered_ws }) += totals.delivered;
        lag_sum_ms += totals.lag_sum_ms;
        for (sum, n) in lag_buckets.iter_mut().zip(totals.lag_buckets) {
            *sum += n;
        }
    }
    let mut cumulative = 0;
    let buckets = lag_buckets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            cumulative += n;
            Bucket { le: LAG_BUCKETS.get(i).copied(), count: cumulative }
        })
        .collect();
    NodeFigures {
        messages_stored: f.stored.load(Relaxed),
        messages_duplicate: f.duplicates.load(Relaxed),
        publishes_rejected: f.rejected.load(Relaxed),
        subscriptions: f.subscriptions.load(Relaxed).max(0) as u64,
        delivered_ws,
        delivered_sse,
        delivery_lag: LagHistogram { count: cumulative, sum_seconds: lag_sum_ms as f64 / 1000.0, buckets },
        redis_errors: f.redis_errors.load(Relaxed),
        redis_reconnects: f.redis_reconnects.load(Relaxed),
        redis_up: match f.redis_up.load(Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(counts: &[(Option<f64>, u64)]) -> Vec<Bucket> {
        counts.iter().map(|&(le, count)| Bucket { le, count }).collect()
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let b = buckets(&[(Some(0.01), 50), (Some(0.1), 90), (Some(1.0), 100), (None, 100)]);
        assert_eq!(quantile(&b, 0.5), Some(0.01));
        let p90 = quantile(&b, 0.9).expect("p90");
        assert!((p90 - 0.1).abs() < 1e-9, "{p90}");
        let p95 = quantile(&b, 0.95).expect("p95");
        assert!((p95 - 0.55).abs() < 1e-9, "{p95}");
        assert_eq!(quantile(&b, 0.25), Some(0.005));
    }

    #[test]
    fn no_observations_no_quantile_and_inf_reports_the_last_bound() {
        assert_eq!(quantile(&buckets(&[(Some(1.0), 0), (None, 0)]), 0.5), None);
        assert_eq!(quantile(&buckets(&[(Some(1.0), 0), (None, 4)]), 0.99), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn a_delivery_lands_in_the_first_bucket_that_holds_it() {
        let before = figures();
        DeliveryMeter::new("sse", "streamhub").delivered(1_000, 1_030);
        let after = figures();
        assert_eq!(after.delivered_sse, before.delivered_sse + 1);
        // 0.03 s: above 0.025, at most 0.05 (the sixth bound).
        let i = LAG_BUCKETS.iter().position(|le| *le == 0.05).expect("bucket");
        assert_eq!(after.delivery_lag.buckets[i].count, before.delivery_lag.buckets[i].count + 1);
        assert_eq!(after.delivery_lag.buckets[i - 1].count, before.delivery_lag.buckets[i - 1].count);
    }

    /// What /metrics says of deliveries is what the recorder would say of the same
    /// observations through a counter and a histogram (the series dashboards know).
    #[test]
    fn deliveries_render_as_the_recorder_renders_a_counter_and_a_histogram() {
        let lags: [&[u64]; 3] = [&[0, 1, 30, 2_500, 4_000_000, 30], &[], &[7]];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DELIVERY_LAG.to_string()), LAG_BUCKETS)
            .expect("buckets")
            .build_recorder();
        let handle = recorder.handle();
        let mut totals = Vec::new();
        metrics::with_local_recorder(&recorder, || {
            for ((transport, protocol), lags) in SESSION_KINDS.iter().zip(lags) {
                // Two shards, as two threads would fill them.
                let shards = [DeliveryShard::new(), DeliveryShard::new()];
                for (i, lag) in lags.iter().enumerate() {
                    shards[i % 2].record(*lag);
                    metrics::counter!(MESSAGES_DELIVERED, "transport" => *transport, "protocol" => *protocol)
                        .increment(1);
                    metrics::histogram!(DELIVERY_LAG, "transport" => *transport, "protocol" => *protocol)
                        .record(*lag as f64 / 1000.0);
                }
                totals.push(sum_shards(&shards));
            }
        });
        let theirs = handle.render();
        let mut ours = String::new();
        write_deliveries(&mut ours, &totals);
        let family = |l: &&str| l.contains(MESSAGES_DELIVERED) || l.contains(DELIVERY_LAG);
        let theirs: Vec<&str> = theirs.lines().filter(family).collect();
        let ours: Vec<&str> = ours.lines().collect();
        assert!(theirs.len() > 20, "{theirs:?}");
        for line in &theirs {
            match line.split_once("_sum{") {
                // A sum of floats, in whatever order they were added.
                Some(_) => {
                    let (series, value) = line.rsplit_once(' ').expect("a value");
                    let value: f64 = value.parse().expect("a number");
                    let mine = ours.iter().find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok());
                    assert!(mine.is_some_and(|m| (m - value).abs() < 1e-9), "{line} against {mine:?}");
                }
                None => assert!(ours.contains(line), "{line:?} is not in\n{}", ours.join("\n")),
            }
        }
        // The kind that delivered nothing is there too, at zero.
        let idle = "streamhub_messages_delivered_total{transport=\"ws\",protocol=\"centrifugo\"} 0";
        assert!(ours.contains(&idle), "{ours:?}");
    }

    /// Threads count in their own shards; the totals are exact.
    #[test]
    fn deliveries_from_many_threads_add_up() {
        let kind = SESSION_KINDS.iter().position(|k| *k == ("ws", "centrifugo")).expect("a kind");
        let before = delivery_totals(kind);
        std::thread::scope(|scope| {
            for _ in 0..SHARDS + 3 {
                scope.spawn(|| {
                    let meter = DeliveryMeter::new("ws", "centrifugo");
                    for _ in 0..1_000 {
                        meter.delivered(10_000, 10_002);
                        meter.delivered_direct(10_000, 10_002);
                    }
                });
            }
        });
        let after = delivery_totals(kind);
        let n = (SHARDS as u64 + 3) * 1_000;
        assert_eq!(after.direct - before.direct, n, "the direct writes, counted apart");
        let n = 2 * n;
        assert_eq!(after.delivered - before.delivered, n, "and among the deliveries");
        assert_eq!(after.lag_sum_ms - before.lag_sum_ms, 2 * n);
        // 2 ms: above 0.001, at most 0.0025 (the second bucket).
        assert_eq!(after.lag_buckets[1] - before.lag_buckets[1], n);
    }
}
