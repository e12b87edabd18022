//! Per node and group, the sweeper: creates the group in Redis (and again if Redis lost
//! it), promotes due retries every `groups.sweep_interval_ms` (O(due) per call), follows
//! the group's `paused` flag, and now and then removes consumers that left.

use std::sync::Arc;
use std::time::Duration;

use super::Group;
use crate::clock::now_ms;
use crate::store::Store;

/// Creates the group (retrying until Redis answers), then every `sweep` promotes due
/// retries (O(due) per call) and now and then removes consumers that left.
pub(super) async fn sweeper(group: Arc<Group>, store: Store, sweep: Duration, node: String) {
    let shutdown = group.stop.clone();
    let mut tick = tokio::time::interval(sweep);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ensured = false;
    let mut sweeps: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !ensured {
            match store.group_ensure(&group.topic, &group.spec.name, &group.spec.start).await {
                Ok(created) => {
                    ensured = true;
                    if created {
                        tracing::info!(group = %group.label, "consumer group created");
                    }
                }
                Err(e) => {
                    tracing::debug!(group = %group.label, error = %e, "cannot create the group yet");
                    continue;
                }
            }
        }
        if let Ok(paused) = store.group_paused(&group.topic, &group.spec.name).await {
            group.set_paused(paused);
        }
        loop {
            match store.group_promote(&group.topic, &group.spec.name, now_ms(), PROMOTE_BATCH).await {
                Ok((moved, _)) if moved == PROMOTE_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(group = %group.label, error = %e, "promote failed");
                    // The group may be gone after a Redis restart without persistence.
                    ensured = false;
                    break;
                }
            }
        }
        sweeps += 1;
        if sweeps % ENSURE_EVERY == 0 {
            // Re-create the group if Redis lost it (restart without persistence).
            ensured = false;
        }
        if sweeps % PRUNE_EVERY == 0 {
            let idle = group.ack_wait().max(Duration::from_secs(600));
            if let Err(e) = store.group_prune_consumers(&group.topic, &group.spec.name, idle, &node).await {
                tracing::debug!(group = %group.label, error = %e, "consumer pruning failed");
            }
        }
    }
}

/// Retries promoted per call of the promote function.
const PROMOTE_BATCH: u64 = 1000;
/// Sweeps between two checks that the group still exists in Redis.
const ENSURE_EVERY: u64 = 40;
/// Sweeps between two prunings of departed consumers.
const PRUNE_EVERY: u64 = 240;
