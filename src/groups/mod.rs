//! Consumer groups at run time: the groups declared in configuration, their retry policy,
//! and per node one sweeper per group (promotes due retries, prunes departed consumers)
//! and, for webhook groups, one worker (`worker.rs`) that delivers with bounded
//! concurrency. Pull groups have no worker: clients fetch and ack over HTTP.

pub mod consumer;
pub mod handler;
pub mod webhook;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, GroupSpec, OnExpiry, TargetKind};
use crate::message::now_ms;
use crate::store::groups::{Failure, GroupDelivery, RetryPolicy};
use crate::store::{Store, StoreError};
use crate::topic::Topic;

/// A declared group, ready to run.
#[derive(Debug)]
pub struct Group {
    pub spec: GroupSpec,
    pub topic: Topic,
    pub policy: RetryPolicy,
    /// Metric label: `<topic>/<group>` (bounded: groups come from configuration).
    pub label: String,
}

impl Group {
    pub fn expired_to_dlq(&self) -> bool {
        self.spec.on_expiry == OnExpiry::Dlq
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.spec.ack_wait_ms)
    }
}

/// The node's groups and its consumer identity.
pub struct Groups {
    by_name: HashMap<(String, String), Arc<Group>>,
    /// Unique per process and start: `<pid>-<random>`; each group's consumer name adds
    /// its role (`-worker`, `-pull`).
    node: String,
}

impl Groups {
    pub fn new(config: &Config) -> Groups {
        let mut by_name = HashMap::new();
        for spec in &config.group {
            // Validated with the configuration; a spec that fails here is skipped.
            let Ok(topic) = Topic::parse(&spec.topic, usize::MAX) else { continue };
            let policy = RetryPolicy {
                max_attempts: spec.max_attempts,
                base_ms: spec.backoff_base_ms,
                max_ms: spec.backoff_max_ms,
                multiplier: spec.backoff_multiplier,
                jitter: spec.backoff_jitter,
                dlq_max_len: config.groups.dlq_max_len,
            };
            let label = format!("{}/{}", spec.topic, spec.name);
            by_name.insert(
                (spec.topic.clone(), spec.name.clone()),
                Arc::new(Group { spec: spec.clone(), topic, policy, label }),
            );
        }
        let random = uuid::Uuid::now_v7().simple().to_string();
        Groups { by_name, node: format!("{}-{}", std::process::id(), &random[random.len() - 8..]) }
    }

    pub fn get(&self, topic: &str, name: &str) -> Option<Arc<Group>> {
        self.by_name.get(&(topic.to_string(), name.to_string())).cloned()
    }

    pub fn of_topic(&self, topic: &str) -> Vec<Arc<Group>> {
        let mut groups: Vec<_> = self.by_name.values().filter(|g| g.spec.topic == topic).cloned().collect();
        groups.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        groups
    }

    /// This node's consumer name for a role.
    pub fn consumer(&self, role: &str) -> String {
        format!("{}-{role}", self.node)
    }

    /// Groups declared with `target = "handler"` that `handlers` does not serve.
    pub fn missing_handlers(&self, handlers: &handler::Handlers) -> Vec<String> {
        let mut missing: Vec<String> = self
            .by_name
            .values()
            .filter(|g| g.spec.target == TargetKind::Handler && handlers.get(&g.spec.topic, &g.spec.name).is_none())
            .map(|g| g.label.clone())
            .collect();
        missing.sort();
        missing
    }

    /// Starts every group's sweeper and, for webhook and handler groups, its worker.
    pub fn start(
        &self,
        store: &Store,
        config: &Config,
        handlers: &handler::Handlers,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) {
        let sweep = Duration::from_millis(config.groups.sweep_interval_ms);
        let grace = Duration::from_millis(config.server.shutdown_grace_ms);
        for group in self.by_name.values() {
            tasks.spawn(sweeper(group.clone(), store.clone(), sweep, self.node.clone(), shutdown.clone()));
            let target = match group.spec.target {
                TargetKind::Pull => continue,
                TargetKind::Handler => match handlers.get(&group.spec.topic, &group.spec.name) {
                    Some(h) => worker::Target::Handler(h),
                    None => continue, // refused at start (missing_handlers)
                },
                TargetKind::Webhook => match webhook::Webhook::new(&group.spec) {
                    Ok(w) => worker::Target::Webhook(w),
                    Err(e) => {
                        tracing::error!(group = %group.label, error = %e, "cannot build the webhook client");
                        continue;
                    }
                },
            };
            let worker = worker::Worker {
                group: group.clone(),
                store: store.clone(),
                target,
                consumer: self.consumer("worker"),
                sweep,
                grace,
            };
            tasks.spawn(worker.run(shutdown.clone()));
        }
    }
}

/// Creates the group (retrying until Redis answers), then every `sweep` promotes due
/// retries (O(due) per call) and now and then removes consumers that left.
async fn sweeper(group: Arc<Group>, store: Store, sweep: Duration, node: String, shutdown: CancellationToken) {
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
/// Sweeps between two prunings of departed consumers.
const PRUNE_EVERY: u64 = 240;

/// Settles, instead of handing out, deliveries that must not reach a consumer: past their
/// TTL (expired: dropped or dead-lettered per `on_expiry`), or already delivered
/// `max_attempts` times (a lease that keeps expiring: dead-lettered). Returns the rest.
pub async fn screen(store: &Store, g: &Group, batch: Vec<GroupDelivery>) -> Result<Vec<GroupDelivery>, StoreError> {
    let now = now_ms();
    let mut keep = Vec::with_capacity(batch.len());
    for d in batch {
        let failure = match &d.envelope {
            Ok(e) if e.ttl_ms.is_some_and(|ttl| e.published_ms.saturating_add(ttl) < now) => {
                Some((Failure::Expired { to_dlq: g.expired_to_dlq() }, "expired before delivery".to_string()))
            }
            _ if d.attempt > g.policy.max_attempts => Some((
                Failure::Permanent,
                d.last_error.clone().unwrap_or_else(|| format!("delivered {} times without an ack", d.attempt - 1)),
            )),
            _ => None,
        };
        match failure {
            Some((failure, error)) => {
                let failed = store.group_fail(&g.topic, &g.spec.name, &d.lease, failure, &g.policy, &error).await?;
                ::metrics::counter!(crate::metrics::GROUP_OUTCOMES, "group" => g.label.clone(), "outcome" => failed.status.as_str())
                    .increment(1);
            }
            None => keep.push(d),
        }
    }
    Ok(keep)
}
