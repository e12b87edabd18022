//! Metric names (declared once, here) and the Prometheus recorder behind `/metrics`.
//!
//! Labels are bounded: `outcome` and `code` take values from fixed lists, `route` is the
//! matched route template (never the raw path), `status` the HTTP status code.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Messages handled by publish, by `outcome` = `stored` | `duplicate`.
pub const MESSAGES_PUBLISHED: &str = "streamhub_messages_published_total";
/// Publish requests refused, by error `code`.
pub const PUBLISH_REJECTED: &str = "streamhub_publish_rejected_total";
/// Time of one publish call to Redis (single or batch), seconds.
pub const PUBLISH_DURATION: &str = "streamhub_publish_duration_seconds";
/// History pages read; `truncated` = `true` | `false`.
pub const HISTORY_READS: &str = "streamhub_history_reads_total";
/// HTTP requests by `route` template, `method` and `status`.
pub const HTTP_REQUESTS: &str = "streamhub_http_requests_total";
/// Redis calls that failed, by `kind` = `unavailable` | `not_replicated` | `refused` |
/// `protocol` | `other`.
pub const REDIS_ERRORS: &str = "streamhub_redis_errors_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use (several servers in one process,
/// as in tests, share it).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
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

/// Tail tasks running on this node (one per topic with local subscribers).
pub const TAIL_TASKS: &str = "streamhub_tail_tasks";
/// Reads of topics by tail tasks (one per wake-up and page, not per subscriber).
pub const TAIL_READS: &str = "streamhub_tail_reads_total";
/// Subscriptions that fell behind (queue full) and switched to their own catch-up.
pub const SUBSCRIBERS_LAGGED: &str = "streamhub_subscribers_lagged_total";
/// Messages delivered by catch-up readers (resume and lagging subscribers).
pub const CAUGHT_UP_MESSAGES: &str = "streamhub_caught_up_messages_total";
/// Position jumps told to subscribers (`recovered: false`), by `reason`.
pub const RESETS: &str = "streamhub_subscription_resets_total";
/// Bursts of hints that overflowed the listener (every tail is then woken).
pub const HINTS_LOST: &str = "streamhub_hints_lost_total";
/// Open WebSocket and SSE sessions, by `transport`.
pub const SESSIONS: &str = "streamhub_sessions";
/// Messages written to subscribers, by `transport`.
pub const MESSAGES_DELIVERED: &str = "streamhub_messages_delivered_total";
/// Sessions closed by the server, by close `code`.
pub const SESSIONS_CLOSED: &str = "streamhub_sessions_closed_total";

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

pub fn reset(reason: crate::delivery::subscription::ResetReason) {
    metrics::counter!(RESETS, "reason" => reason.as_str()).increment(1);
}

pub fn hints_lost() {
    metrics::counter!(HINTS_LOST).increment(1);
}

/// Settled group deliveries by `group` (`<topic>/<name>`, from configuration) and
/// `outcome` = acked | scheduled | dead | expired | deleted | lease_expired | unknown |
/// ack_failed | fail_failed.
pub const GROUP_OUTCOMES: &str = "streamhub_group_outcomes_total";
