//! The node's poller of the state that lives in Redis and changes with every consumer on
//! every node, so no node can count it: every `server.metrics_poll_interval_ms` it PINGs
//! Redis (`streamhub_redis_up`) and reads the pending, lag, scheduled-retry and
//! dead-letter counts of every group this node knows — one `group_info` per group per
//! period, never per request.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Groups;
use crate::store::Store;

pub async fn poll(store: Store, groups: Arc<Groups>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let up = store.ping().await.is_ok();
        crate::metrics::redis_up(up);
        if !up {
            continue;
        }
        let mut seen = HashSet::new();
        for g in groups.all() {
            match store.group_info(&g.topic, &g.spec.name).await {
                Ok(info) => {
                    if !known.contains(&g.label) {
                        crate::metrics::group_registered(&g.label);
                    }
                    let lag = info.lag.unwrap_or(0);
                    crate::metrics::group_gauges(&g.label, info.pending, lag, info.scheduled, info.dead_letters);
                }
                // Keeps its last values (not zeroed as if deleted) until the next poll.
                Err(e) => tracing::debug!(group = %g.label, error = %e, "reading the group's gauges failed"),
            }
            seen.insert(g.label.clone());
        }
        // A deleted group's gauges read 0 rather than its last values.
        for gone in known.difference(&seen) {
            crate::metrics::group_gauges(gone, 0, 0, 0, 0);
        }
        known.extend(seen);
    }
}
