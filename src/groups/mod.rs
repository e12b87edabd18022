//! Consumer groups at run time: the groups declared in configuration and those created
//! through the admin API (stored in Redis, discovered by every node), their retry policy,
//! and per node one sweeper per group (creates it, promotes due retries, follows its
//! `paused` flag, prunes departed consumers) and, for webhook and handler groups, one
//! worker (`worker.rs`) that delivers with bounded concurrency. Pull groups have no
//! worker: clients fetch and ack over HTTP or WebSocket.

pub mod consumer;
pub mod fetch;
pub mod gauges;
pub mod handler;
pub mod settle;
mod sweeper;
pub mod webhook;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
use crate::config::{Config, GroupSpec, OnExpiry, TargetKind};
use crate::error::{Code, Error};
use crate::keys::{group_registry_bucket, GROUP_REGISTRY_BUCKETS};
use crate::store::groups::RetryPolicy;
use crate::store::Store;
use crate::topic::Topic;

/// A group, ready to run.
#[derive(Debug)]
pub struct Group {
    pub spec: GroupSpec,
    pub topic: Topic,
    pub policy: RetryPolicy,
    /// Metric label: `<topic>/<group>`. Bounded: groups come from configuration or from
    /// operators through the admin API, never from client traffic.
    pub label: String,
    /// Declared in this node's configuration (cannot be deleted through the API).
    pub declared: bool,
    /// Mirrors the group's `paused` flag in Redis (refreshed every sweep).
    paused: AtomicBool,
    /// Stops this group's tasks on this node (group deleted, or shutdown).
    stop: CancellationToken,
    /// When a pull fetch on this node last reclaimed expired leases (ms since the epoch).
    fetch_reclaimed_ms: std::sync::atomic::AtomicU64,
}

impl Group {
    pub fn expired_to_dlq(&self) -> bool {
        self.spec.on_expiry == OnExpiry::Dlq
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.spec.ack_wait_ms)
    }

    /// Paused: no message of the group is handed out (workers, fetches, WebSocket
    /// consumers), until resumed. Pending deliveries stay pending.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    pub fn stopped(&self) -> &CancellationToken {
        &self.stop
    }

    /// Whether a pull fetch should reclaim expired leases now: true for one caller at most
    /// once per `every` on this node (expired leases wait at most that long; a reclaim per
    /// fetch would cost every fetch a round trip).
    pub fn fetch_reclaim_due(&self, every: Duration) -> bool {
        let now = now_ms();
        let last = self.fetch_reclaimed_ms.load(Ordering::Acquire);
        now.saturating_sub(last) >= every.as_millis() as u64
            && self.fetch_reclaimed_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// What the node needs to run a group's tasks.
struct Runtime {
    store: Store,
    handlers: handler::Handlers,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    sweep: Duration,
    grace: Duration,
    discover: Duration,
    dlq_max_len: u64,
    max_topic_bytes: usize,
}

/// The node's groups and its consumer identity.
pub struct Groups {
    by_name: RwLock<HashMap<(String, String), Arc<Group>>>,
    /// Unique per process and start: `<pid>-<random>`; each group's consumer name adds
    /// its role (`-worker`, `-pull`, `-ws-…`).
    node: String,
    runtime: OnceLock<Runtime>,
}

fn build(spec: GroupSpec, declared: bool, dlq_max_len: u64) -> Group {
    let topic = spec.topic.clone();
    let policy = RetryPolicy {
        max_attempts: spec.max_attempts,
        base_ms: spec.backoff_base_ms,
        max_ms: spec.backoff_max_ms,
        multiplier: spec.backoff_multiplier,
        jitter: spec.backoff_jitter,
        dlq_max_len,
    };
    let label = format!("{}/{}", spec.topic, spec.name);
    Group {
        spec,
        topic,
        policy,
        label,
        declared,
        paused: AtomicBool::new(false),
        stop: CancellationToken::new(),
        fetch_reclaimed_ms: std::sync::atomic::AtomicU64::new(0),
    }
}

fn declared(label: &str) -> Error {
    Error::new(Code::DeclaredInConfig, format!("group {label} is declared in the configuration; change it there"))
}

fn not_found(label: &str) -> Error {
    Error::new(Code::GroupNotFound, format!("no group {label}"))
}

impl Groups {
    pub fn new(config: &Config) -> Groups {
        let mut by_name = HashMap::new();
        for spec in &config.group {
            let group = build(spec.clone(), true, config.groups.dlq_max_len);
            by_name.insert((spec.topic.to_string(), spec.name.clone()), Arc::new(group));
        }
        let random = uuid::Uuid::now_v7().simple().to_string();
        Groups {
            by_name: RwLock::new(by_name),
            node: format!("{}-{}", std::process::id(), &random[random.len() - 8..]),
            runtime: OnceLock::new(),
        }
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(String, String), Arc<Group>>> {
        self.by_name.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every group this node knows (configured and created through the admin API).
    pub fn all(&self) -> Vec<Arc<Group>> {
        self.map().values().cloned().collect()
    }

    pub fn get(&self, topic: &str, name: &str) -> Option<Arc<Group>> {
        self.map().get(&(topic.to_string(), name.to_string())).cloned()
    }

    pub fn of_topic(&self, topic: &str) -> Vec<Arc<Group>> {
        let mut groups: Vec<_> = self.map().values().filter(|g| g.topic.as_str() == topic).cloned().collect();
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
            .map()
            .values()
            .filter(|g| g.spec.target == TargetKind::Handler && handlers.get(g.topic.as_str(), &g.spec.name).is_none())
            .map(|g| g.label.clone())
            .collect();
        missing.sort();
        missing
    }

    /// Starts every declared group's tasks, and the discovery of groups created through
    /// the admin API (by any node).
    pub fn start(
        self: &Arc<Self>,
        store: &Store,
        config: &Config,
        handlers: &handler::Handlers,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) {
        let runtime = Runtime {
            store: store.clone(),
            handlers: handlers.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            sweep: Duration::from_millis(config.groups.sweep_interval_ms),
            grace: Duration::from_millis(config.server.shutdown_grace_ms),
            discover: Duration::from_millis(config.groups.discover_interval_ms),
            dlq_max_len: config.groups.dlq_max_len,
            max_topic_bytes: config.limits.max_topic_bytes,
        };
        if self.runtime.set(runtime).is_err() {
            return; // started already
        }
        let groups: Vec<Arc<Group>> = self.map().values().cloned().collect();
        for group in groups {
            self.launch(group);
        }
        let me = self.clone();
        tasks.spawn(async move { me.discover().await });
    }

    fn launch(&self, group: Arc<Group>) {
        let Some(rt) = self.runtime.get() else { return };
        // The group's tasks end on shutdown or when the group is deleted.
        let stop = group.stop.clone();
        let shutdown = rt.shutdown.clone();
        rt.tasks.spawn(async move {
            shutdown.cancelled().await;
            stop.cancel();
        });
        rt.tasks.spawn(sweeper::sweeper(group.clone(), rt.store.clone(), rt.sweep, self.node.clone()));
        let target = match group.spec.target {
            TargetKind::Pull => return,
            TargetKind::Handler => match rt.handlers.get(group.topic.as_str(), &group.spec.name) {
                Some(h) => worker::Target::Handler(h),
                None => {
                    tracing::error!(group = %group.label, "no handler is registered on this node for this handler group");
                    return;
                }
            },
            TargetKind::Webhook => match webhook::Webhook::new(&group.spec) {
                Ok(w) => worker::Target::Webhook(w),
                Err(e) => {
                    tracing::error!(group = %group.label, error = %e, "cannot build the webhook client");
                    return;
                }
            },
        };
        let worker =
            worker::Worker::new(group.clone(), rt.store.clone(), target, self.consumer("worker"), rt.sweep, rt.grace);
        let span = tracing::info_span!("group", group = %group.label);
        rt.tasks.spawn(tracing::Instrument::instrument(worker.run(group.stop.clone()), span));
    }

    /// Creates (or replaces) a group through the admin API: validates it, stores its
    /// definition in Redis (every node discovers it), creates it, and runs it here.
    pub async fn create(&self, spec: GroupSpec) -> Result<Arc<Group>, Error> {
        let rt = self.runtime()?;
        let limits =
            crate::config::Limits { max_topic_bytes: rt.max_topic_bytes, ..crate::config::Config::defaults().limits };
        spec.validate(&limits).map_err(|m| Error::new(Code::InvalidGroup, m))?;
        if spec.target == TargetKind::Handler {
            return Err(Error::new(
                Code::InvalidGroup,
                "a handler group is declared by the program that embeds streamhub",
            ));
        }
        if self.get(spec.topic.as_str(), &spec.name).is_some_and(|g| g.declared) {
            return Err(declared(&format!("{}/{}", spec.topic, spec.name)));
        }
        let group = Arc::new(build(spec.clone(), false, rt.dlq_max_len));
        rt.store.group_ensure(&group.topic, &spec.name, &spec.start).await?;
        let definition = serde_json::to_string(&spec).map_err(Error::internal)?;
        rt.store.group_define(&group.topic, &spec.name, &definition).await?;
        self.adopt(group.clone());
        Ok(group)
    }

    /// Runs `group` here, replacing (and stopping) a previous definition.
    fn adopt(&self, group: Arc<Group>) {
        let key = (group.topic.to_string(), group.spec.name.clone());
        let previous = self.by_name.write().unwrap_or_else(|e| e.into_inner()).insert(key, group.clone());
        if let Some(previous) = previous {
            previous.stop.cancel();
        }
        self.launch(group);
    }

    /// Deletes a group created through the admin API, with everything it holds.
    pub async fn delete(&self, topic: &Topic, name: &str) -> Result<(), Error> {
        let rt = self.runtime()?;
        let label = format!("{topic}/{name}");
        if let Some(g) = self.get(topic.as_str(), name) {
            if g.declared {
                return Err(declared(&label));
            }
        }
        if !rt.store.group_defined(topic, name).await? {
            // Not created through the API: declared in some node's configuration, or absent.
            let exists = rt.store.group_info(topic, name).await?.exists;
            return Err(if exists { declared(&label) } else { not_found(&label) });
        }
        let existed = rt.store.group_delete(topic, name).await?;
        let removed =
            self.by_name.write().unwrap_or_else(|e| e.into_inner()).remove(&(topic.to_string(), name.to_string()));
        if let Some(g) = &removed {
            g.stop.cancel();
        }
        if !existed && removed.is_none() {
            return Err(not_found(&label));
        }
        Ok(())
    }

    fn runtime(&self) -> Result<&Runtime, Error> {
        self.runtime.get().ok_or_else(|| Error::internal("the consumer groups of this node are not running"))
    }

    /// Starts groups other nodes created and stops deleted ones, reading the registry one
    /// bucket per step (`store::group_definitions`): a full sweep at start, then one step
    /// every `discover / (GROUP_REGISTRY_BUCKETS + 1)`, round robin from a random bucket,
    /// the extra step moving registrations of the one-key registry of earlier versions
    /// into their buckets. Every bucket is read once per `discover` interval, so a group
    /// created or deleted on any node runs or stops here within that interval (plus the
    /// reads); no step reads a key every other node reads at the same time.
    async fn discover(self: Arc<Self>) {
        let Some(rt) = self.runtime.get() else { return };
        let steps = GROUP_REGISTRY_BUCKETS + 1;
        let legacy = GROUP_REGISTRY_BUCKETS;
        let step = (rt.discover / steps as u32).max(Duration::from_millis(1));
        for slot in std::iter::once(legacy).chain(0..GROUP_REGISTRY_BUCKETS) {
            self.discover_step(rt, slot).await;
        }
        let mut slot = (uuid::Uuid::new_v4().as_u128() % steps as u128) as usize;
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = rt.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.discover_step(rt, slot).await;
            slot = (slot + 1) % steps;
        }
    }

    /// One discovery step: registry bucket `slot` (runs what it holds, stops this node's
    /// API-created groups of that bucket that it no longer holds), or, for `slot ==
    /// GROUP_REGISTRY_BUCKETS`, the move of the earlier registry (runs what it held; stops
    /// nothing, as the moved groups are in their buckets now).
    async fn discover_step(&self, rt: &Runtime, slot: usize) {
        // Only groups running before the read may be stopped by it: one created here
        // meanwhile was registered after the read began.
        let candidates: Vec<Arc<Group>> = self
            .map()
            .values()
            .filter(|g| !g.declared && group_registry_bucket(&format!("{}/{}", g.topic, g.spec.name)) == slot)
            .cloned()
            .collect();
        let read = if slot == GROUP_REGISTRY_BUCKETS {
            rt.store.group_registry_migrate().await
        } else {
            rt.store.group_definitions(slot).await
        };
        let Ok(definitions) = read else { return };
        let mut live = std::collections::HashSet::new();
        for definition in definitions {
            let Ok(spec) = serde_json::from_str::<GroupSpec>(&definition) else { continue };
            live.insert((spec.topic.to_string(), spec.name.clone()));
            let current = self.get(spec.topic.as_str(), &spec.name);
            let unchanged = current
                .as_ref()
                .is_some_and(|g| g.declared || serde_json::to_string(&g.spec).ok() == Some(definition.clone()));
            if !unchanged {
                let group = build(spec, false, rt.dlq_max_len);
                tracing::info!(group = %group.label, "running a group created through the admin API");
                self.adopt(Arc::new(group));
            }
        }
        if slot == GROUP_REGISTRY_BUCKETS {
            return;
        }
        for g in candidates {
            let key = (g.topic.to_string(), g.spec.name.clone());
            if live.contains(&key) {
                continue;
            }
            let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
            if map.get(&key).is_some_and(|current| Arc::ptr_eq(current, &g)) {
                map.remove(&key);
                drop(map);
                tracing::info!(group = %g.label, "group deleted; stopping it here");
                g.stop.cancel();
            }
        }
    }
}
