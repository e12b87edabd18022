//! The node's presence tracker: the presence entries of this node's subscriptions and the
//! sessions of its identified users, written to Redis by one task in the order they
//! happen, and refreshed every `presence.refresh_ms` so that they never expire while the
//! node lives — and do expire, within `presence.ttl_ms`, when it dies.
//!
//! One task serialises every change and refresh of the node (so a refresh can never bring
//! back an entry a concurrent leave removed), and commands that arrive together are sent
//! together: consecutive joins (or leaves) of one topic are one function call, so a storm
//! of a thousand joins costs a handful of calls.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::event::Member;
use crate::clock::now_ms;
use crate::config::PresenceConfig;
use crate::store::presence::PresenceEntry;
use crate::store::Store;
use crate::topic::Topic;

/// Commands waiting for the task; senders wait beyond this (back-pressure, not loss).
const QUEUE: usize = 4096;
/// Entries per refresh call.
const REFRESH_CHUNK: usize = 1000;

enum Command {
    Join { topic: Topic, entry: PresenceEntry, done: oneshot::Sender<()> },
    Leave { topic: Topic, client: String, grace_ms: u64, done: Option<oneshot::Sender<()>> },
    UserOn { user: String, session: String },
    UserOff { user: String, session: String },
}

/// Handle to the node's presence tracker; cheap to clone.
#[derive(Clone)]
pub struct Presence {
    tx: mpsc::Sender<Command>,
    config: PresenceConfig,
}

/// The key that groups a user's clients: the subject for identified users, the client
/// itself for anonymous ones (each anonymous connection is its own "user").
fn user_key(member: &Member) -> String {
    if member.user.is_empty() {
        format!("c:{}", member.client)
    } else {
        format!("u:{}", member.user)
    }
}

impl Presence {
    /// Starts the tracker; it ends with `shutdown`.
    pub fn start(store: Store, config: PresenceConfig, shutdown: CancellationToken) -> Presence {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = Tracker { store, config: config.clone(), topics: HashMap::new(), users: HashMap::new() };
        tokio::spawn(task.run(rx, shutdown));
        Presence { tx, config }
    }

    pub fn config(&self) -> &PresenceConfig {
        &self.config
    }

    /// Whether subscribers of `topic` are tracked.
    pub fn tracks(&self, topic: &Topic) -> bool {
        self.config.tracks(topic.as_str())
    }

    /// Adds `member` to the topic's presence; returns once Redis has it (or failed to:
    /// the next refresh adds it then).
    pub async fn join(&self, topic: &Topic, member: &Member) {
        let json = serde_json::to_string(member).unwrap_or_else(|_| "{}".into());
        let entry = PresenceEntry { client: member.client.clone(), user_key: user_key(member), json };
        let (done, answered) = oneshot::channel();
        if self.tx.send(Command::Join { topic: topic.clone(), entry, done }).await.is_ok() {
            let _ = answered.await;
        }
    }

    /// Removes a client from the topic's presence at once; its user's leave follows after
    /// `grace_ms` unless a client of the same user comes back. Waits for Redis when `wait`.
    pub async fn leave(&self, topic: &Topic, client: &str, grace_ms: u64, wait: bool) {
        let (done, answered) = oneshot::channel();
        let command =
            Command::Leave { topic: topic.clone(), client: client.to_string(), grace_ms, done: wait.then_some(done) };
        if self.tx.send(command).await.is_ok() && wait {
            let _ = answered.await;
        }
    }

    /// A session of `user` began (user status, when `presence.users` is on).
    pub async fn user_online(&self, user: &str, session: &str) {
        if self.config.users {
            let _ = self.tx.send(Command::UserOn { user: user.to_string(), session: session.to_string() }).await;
        }
    }

    /// A session of `user` ended.
    pub async fn user_offline(&self, user: &str, session: &str) {
        if self.config.users {
            let _ = self.tx.send(Command::UserOff { user: user.to_string(), session: session.to_string() }).await;
        }
    }
}

struct Tracker {
    store: Store,
    config: PresenceConfig,
    /// This node's entries, by topic and client.
    topics: HashMap<Topic, HashMap<String, PresenceEntry>>,
    /// This node's sessions of identified users.
    users: HashMap<String, HashSet<String>>,
}

impl Tracker {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.refresh_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                command = rx.recv() => {
                    let Some(first) = command else { return };
                    let mut batch = vec![first];
                    while batch.len() < QUEUE {
                        match rx.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    self.apply(batch).await;
                }
                _ = tick.tick() => self.refresh().await,
            }
        }
    }

    /// Applies commands in order, sending runs of the same change to one topic together.
    async fn apply(&mut self, batch: Vec<Command>) {
        let mut commands = batch.into_iter().peekable();
        while let Some(command) = commands.next() {
            match command {
                Command::Join { topic, entry, done } => {
                    let mut entries = vec![entry];
                    let mut dones = vec![done];
                    while let Some(Command::Join { topic: t, .. }) = commands.peek() {
                        if *t != topic {
                            break;
                        }
                        if let Some(Command::Join { entry, done, .. }) = commands.next() {
                            entries.push(entry);
                            dones.push(done);
                        }
                    }
                    let local = self.topics.entry(topic.clone()).or_default();
                    for e in &entries {
                        local.insert(e.client.clone(), e.clone());
                    }
                    self.upsert(&topic, &entries).await;
                    for done in dones {
                        let _ = done.send(());
                    }
                }
                Command::Leave { topic, client, grace_ms, done } => {
                    let mut clients = vec![client];
                    let mut dones = vec![done];
                    while let Some(Command::Leave { topic: t, grace_ms: g, .. }) = commands.peek() {
                        if *t != topic || *g != grace_ms {
                            break;
                        }
                        if let Some(Command::Leave { client, done, .. }) = commands.next() {
                            clients.push(client);
                            dones.push(done);
                        }
                    }
                    if let Some(local) = self.topics.get_mut(&topic) {
                        for c in &clients {
                            local.remove(c);
                        }
                        if local.is_empty() {
                            self.topics.remove(&topic);
                        }
                    }
                    match self.store.presence_leave(&topic, now_ms(), grace_ms, &clients).await {
                        Ok((removed, expired)) => {
                            crate::metrics::presence_changed("removed", removed);
                            crate::metrics::presence_changed("expired", expired);
                        }
                        Err(e) => tracing::debug!(%topic, error = %e, "presence leave failed; the entries expire"),
                    }
                    for done in dones.into_iter().flatten() {
                        let _ = done.send(());
                    }
                }
                Command::UserOn { user, session } => {
                    self.users.entry(user.clone()).or_default().insert(session.clone());
                    let deadline = now_ms().saturating_add(self.config.ttl_ms);
                    if let Err(e) = self.store.user_upsert(&user, deadline, &[session]).await {
                        tracing::debug!(error = %e, "user status update failed; the next refresh retries");
                    }
                }
                Command::UserOff { user, session } => {
                    if let Some(sessions) = self.users.get_mut(&user) {
                        sessions.remove(&session);
                        if sessions.is_empty() {
                            self.users.remove(&user);
                        }
                    }
                    if let Err(e) = self.store.user_remove(&user, now_ms(), &[session]).await {
                        tracing::debug!(error = %e, "user status update failed; the session expires");
                    }
                }
            }
        }
        crate::metrics::presence_entries(self.topics.values().map(HashMap::len).sum());
    }

    async fn upsert(&self, topic: &Topic, entries: &[PresenceEntry]) {
        let c = &self.config;
        match self.store.presence_upsert(topic, now_ms(), c.ttl_ms, c.grace_ms, entries).await {
            Ok((added, expired)) => {
                crate::metrics::presence_changed("added", added);
                crate::metrics::presence_changed("expired", expired);
            }
            Err(e) => tracing::debug!(%topic, error = %e, "presence update failed; the next refresh retries"),
        }
    }

    /// Moves every entry and session of this node past the next refresh, re-adding any
    /// that Redis lost; purges what expired (other nodes' entries included).
    async fn refresh(&self) {
        for (topic, local) in &self.topics {
            let entries: Vec<PresenceEntry> = local.values().cloned().collect();
            for chunk in entries.chunks(REFRESH_CHUNK) {
                self.upsert(topic, chunk).await;
            }
        }
        let deadline = now_ms().saturating_add(self.config.ttl_ms);
        for (user, sessions) in &self.users {
            let sessions: Vec<String> = sessions.iter().cloned().collect();
            if let Err(e) = self.store.user_upsert(user, deadline, &sessions).await {
                tracing::debug!(error = %e, "user status refresh failed");
            }
        }
    }
}
