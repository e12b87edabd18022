//! Consumer-group operations: finding a group this node serves, the pull fetch (a long
//! poll), ack and nack by token, WebSocket consumers, and group administration (state,
//! create, delete, pause, resume).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::access::{Admin, Consume, Grant};
use super::Ops;
use crate::config::{GroupSpec, TargetKind};
use crate::error::{Code, Error, Result};
use crate::groups::consumer::SessionConsumer;
use crate::groups::fetch::{Fetcher, ReclaimClock};
use crate::groups::settle::{self, Nack, Settled};
use crate::groups::Group;
use crate::store::groups::{GroupDelivery, GroupInfo};

/// Longest pause between two polls of a waiting fetch.
const FETCH_POLL_MAX: Duration = Duration::from_millis(200);

/// Deliveries a fetch or a WebSocket consumer asks for when it names no number.
pub const DEFAULT_FETCH: usize = 10;

/// A pull fetch: up to `max` deliveries, waiting up to `wait` for some.
#[derive(Debug, Clone, Default)]
pub struct FetchRequest {
    pub max: Option<usize>,
    pub wait: Option<Duration>,
}

/// The answer to a fetch.
#[derive(Debug)]
pub enum Fetched {
    /// The group is paused: nothing is handed out.
    Paused,
    Deliveries(Vec<GroupDelivery>),
}

/// A group's state, for operators: what this node knows of it, and what Redis holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupState {
    pub name: String,
    pub target: TargetKind,
    /// Declared in configuration (else created through the admin API).
    pub declared: bool,
    pub paused: bool,
    #[serde(flatten)]
    pub info: GroupInfo,
}

impl Ops {
    /// The group `name` of the granted topic, if this node serves it (`404
    /// group_not_found` otherwise).
    pub fn group<S>(&self, grant: &Grant<S>, name: &str) -> Result<Arc<Group>> {
        let topic = grant.topic();
        self.groups
            .get(topic.as_str(), name)
            .ok_or_else(|| Error::new(Code::GroupNotFound, format!("no group {name} is declared on topic {topic}")))
    }

    /// Takes up to `max` deliveries for HTTP clients (all of a node's fetches act as one
    /// Redis consumer, `<node>-pull`), polling until some arrive or `wait` has passed.
    pub async fn fetch(&self, _grant: &Grant<Consume>, g: &Arc<Group>, request: FetchRequest) -> Result<Fetched> {
        if g.is_paused() {
            return Ok(Fetched::Paused);
        }
        pull_only(g)?;
        let limits = &self.config.groups;
        let max = request.max.unwrap_or(DEFAULT_FETCH).clamp(1, limits.max_fetch) as u64;
        let wait = request.wait.unwrap_or_default().min(Duration::from_millis(limits.max_fetch_wait_ms));
        let deadline = Instant::now() + wait;
        let every = Duration::from_millis(limits.sweep_interval_ms);
        let client = self.store.pool_client();
        let mut fetcher = Fetcher::new(
            g.clone(),
            self.store.clone(),
            self.groups.consumer("pull"),
            client,
            ReclaimClock::Shared,
            every,
        );
        let mut pause = Duration::from_millis(10);
        loop {
            let batch = fetcher.round(max, None).await?;
            if !batch.is_empty() || Instant::now() >= deadline {
                return Ok(Fetched::Deliveries(batch));
            }
            // Long poll: check again soon (the pause grows to FETCH_POLL_MAX), until `wait`.
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(Fetched::Deliveries(Vec::new())),
                _ = tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))) => {}
            }
            pause = (pause * 2).min(FETCH_POLL_MAX);
        }
    }

    /// Acknowledges deliveries by token (any target, paused or not).
    pub async fn ack(&self, _grant: &Grant<Consume>, g: &Group, tokens: Vec<String>) -> Result<Vec<Settled>> {
        settle::ack(&self.store, g, tokens, self.config.groups.max_fetch).await
    }

    /// Fails deliveries by token: retried after the backoff (or `retry_after`), or
    /// dead-lettered (`permanent`, or attempts used up).
    pub async fn nack(
        &self,
        _grant: &Grant<Consume>,
        g: &Group,
        tokens: Vec<String>,
        nack: &Nack,
    ) -> Result<Vec<Settled>> {
        settle::nack(&self.store, g, tokens, nack, self.config.groups.max_fetch).await
    }

    /// The pull group `name` of the granted topic (`404 group_not_found`, `409
    /// not_a_pull_group`): what a WebSocket consumer may attach to.
    pub fn pull_group(&self, grant: &Grant<Consume>, name: &str) -> Result<Arc<Group>> {
        let g = self.group(grant, name)?;
        pull_only(&g)?;
        Ok(g)
    }

    /// Starts a WebSocket consumer of a pull group (from `pull_group`): deliveries go to
    /// the sender `out` makes for the prefetch, at most `prefetch` unsettled (default 10,
    /// at most `groups.max_fetch`).
    pub fn consume(
        &self,
        _grant: &Grant<Consume>,
        g: &Arc<Group>,
        prefetch: Option<u32>,
        out: impl FnOnce(usize) -> mpsc::Sender<GroupDelivery>,
    ) -> Arc<SessionConsumer> {
        let limits = &self.config.groups;
        let prefetch = prefetch.map_or(DEFAULT_FETCH, |p| p as usize).clamp(1, limits.max_fetch);
        let name = self.groups.consumer(&format!("ws-{}", uuid::Uuid::now_v7().simple()));
        let sweep = Duration::from_millis(limits.sweep_interval_ms);
        SessionConsumer::start(g.clone(), self.store.clone(), name, prefetch, sweep, limits.max_fetch, out(prefetch))
    }

    /// Pauses or resumes a group on every node (each follows within a sweep interval).
    pub async fn set_paused(&self, _grant: &Grant<Admin>, g: &Group, paused: bool) -> Result<()> {
        self.store.group_set_paused(&g.topic, &g.spec.name, paused).await?;
        g.set_paused(paused);
        Ok(())
    }

    /// The state of every group of the topic this node serves, sorted by name.
    pub async fn group_states(&self, grant: &Grant<Admin>) -> Result<Vec<GroupState>> {
        let mut states = Vec::new();
        for g in self.groups.of_topic(grant.topic().as_str()) {
            let info = self.store.group_info(grant.topic(), &g.spec.name).await?;
            let paused = info.counters.get("paused") == Some(&1);
            states.push(GroupState {
                name: g.spec.name.clone(),
                target: g.spec.target,
                declared: g.declared,
                paused,
                info,
            });
        }
        Ok(states)
    }

    /// Every group recorded in Redis for the topic (whatever this node serves), with its
    /// state: what `streamhub groups` shows.
    pub async fn recorded_groups(&self, grant: &Grant<Admin>) -> Result<Vec<(String, GroupInfo)>> {
        let mut out = Vec::new();
        for name in self.store.topic_groups(grant.topic()).await? {
            let info = self.store.group_info(grant.topic(), &name).await?;
            out.push((name, info));
        }
        Ok(out)
    }

    /// Creates or replaces a group from its settings (the `[[group]]` keys other than
    /// `topic` and `name`, as JSON); true when this node did not serve it before.
    pub async fn put_group(&self, grant: &Grant<Admin>, name: &str, settings: serde_json::Value) -> Result<bool> {
        let serde_json::Value::Object(mut fields) = settings else {
            return Err(Error::new(Code::InvalidGroup, "the body is a JSON object of group settings"));
        };
        fields.insert("topic".into(), grant.topic().as_str().into());
        fields.insert("name".into(), name.into());
        let spec: GroupSpec = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| Error::new(Code::InvalidGroup, e.to_string()))?;
        let existed = self.groups.get(grant.topic().as_str(), name).is_some();
        self.groups.create(spec).await?;
        Ok(!existed)
    }

    /// Deletes a group created through the admin API, with everything it holds.
    pub async fn delete_group(&self, grant: &Grant<Admin>, name: &str) -> Result<()> {
        self.groups.delete(grant.topic(), name).await
    }
}

fn pull_only(g: &Group) -> Result<()> {
    if g.spec.target == TargetKind::Pull {
        Ok(())
    } else {
        Err(Error::new(Code::NotAPullGroup, "this group is delivered by its webhook or handler; it cannot be fetched"))
    }
}
