//! Hints: the sharded Pub/Sub notices (`<prefix>:{topic}:h`, payload "<epoch> <seq>") that
//! every publish sends, turned into wake-ups of the local tail tasks.
//!
//! Hints are only hints. A tail re-reads its topic on every wake-up, whatever the hint
//! said, and also periodically; when the Pub/Sub connection is re-established or its
//! notices overflowed, every watched topic is woken, so a lost hint delays a message but
//! never loses it. One dedicated connection per node; SSUBSCRIBE/SUNSUBSCRIBE are issued
//! by one task in command order, so watch/unwatch races cannot leave a topic unwatched.
//!
//! On Redis Cluster, one dedicated connection per primary instead, opened as soon as the
//! slot map is known (fred's cluster client reconnects as a whole, see shards.rs: while
//! one primary is down, the hints of every shard could stall). Each channel is subscribed on the primary that the slot map names
//! for it, and moved (subscribed there, its tail woken) when the map names another one;
//! each primary's connection has a task that issues its commands in order and forwards
//! its notices. A primary's connection re-established re-subscribes its channels and
//! wakes their tails.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::Server;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::shards::Shards;
use super::{connect, Result};
use crate::config::RedisConfig;
use crate::keys::Keys;
use crate::topic::Topic;

/// An event published on a topic's hint channel besides the "new seq" hints: an
/// ephemeral event (`E <body JSON>`). At most once, like every Pub/Sub message. (Join and
/// leave events are not here: they are read with the messages, `Store::tail_read`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HintEvent {
    Ephemeral { body: String },
}

impl HintEvent {
    /// The event a hint channel message carries; None for a plain hint.
    pub fn parse(payload: &str) -> Option<HintEvent> {
        payload.strip_prefix("E ").map(|body| HintEvent::Ephemeral { body: body.to_string() })
    }
}

/// Where a watched topic's hints and events go: its tail task.
#[derive(Clone)]
pub struct Watcher {
    /// Woken by every plain hint (and on reconnection / overflow).
    pub wake: Arc<Notify>,
    /// Receives the topic's events; a full queue drops them (they are at most once).
    pub events: mpsc::Sender<HintEvent>,
}

enum Command {
    Watch { channel: String, watcher: Watcher, done: oneshot::Sender<()> },
    Unwatch { channel: String, wake: Arc<Notify> },
}

/// Handle to the node's hint listener; cheap to clone.
#[derive(Clone)]
pub struct Hints {
    keys: Keys,
    tx: mpsc::UnboundedSender<Command>,
}

impl Hints {
    /// Starts the listener task: on Cluster (`shards`) with one connection per primary,
    /// else as `start`; it ends with `shutdown`.
    pub(super) fn start_routed(
        config: &RedisConfig,
        keys: Keys,
        shards: Option<Arc<Shards>>,
        shutdown: CancellationToken,
    ) -> Result<(Hints, tokio::task::JoinHandle<()>)> {
        match shards {
            Some(shards) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let task = tokio::spawn(run_sharded(shards, rx, shutdown));
                Ok((Hints { keys, tx }, task))
            }
            None => Hints::start(config, keys, shutdown),
        }
    }

    /// Starts the listener task on one connection of its own (on Cluster, fred's cluster
    /// client: `Store::start_hints` routes per primary instead); it ends with `shutdown`.
    pub fn start(
        config: &RedisConfig,
        keys: Keys,
        shutdown: CancellationToken,
    ) -> Result<(Hints, tokio::task::JoinHandle<()>)> {
        let client = connect::unconnected(config, "hints")?;
        // The listener takes the client's notices before it connects: the notice of the
        // first connection is what re-subscribes the topics watched before it (a SSUBSCRIBE
        // sent while the connection is not up yet is lost).
        let messages = client.message_rx();
        let reconnects = client.reconnect_rx();
        client.connect();
        // The command channel is unbounded but holds at most one watch and one unwatch
        // per tail task start/stop, and tails are bounded by subscribed topics.
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(client, messages, reconnects, rx, shutdown));
        Ok((Hints { keys, tx }, task))
    }

    /// Wakes `watcher` on every hint of `topic` and hands it the topic's events. Returns
    /// once SSUBSCRIBE was answered (or failed: the periodic position check then covers
    /// the topic until reconnection).
    pub async fn watch(&self, topic: &Topic, watcher: Watcher) {
        let (done, answered) = oneshot::channel();
        let channel = self.keys.topic(topic).hint;
        if self.tx.send(Command::Watch { channel, watcher, done }).is_ok() {
            let _ = answered.await;
        }
    }

    /// Stops waking `wake` (only if it is still the topic's registered waker).
    pub fn unwatch(&self, topic: &Topic, wake: Arc<Notify>) {
        let channel = self.keys.topic(topic).hint;
        let _ = self.tx.send(Command::Unwatch { channel, wake });
    }
}

fn wake_all(watched: &HashMap<String, Watcher>) {
    for w in watched.values() {
        w.wake.notify_one();
    }
}

async fn run(
    client: Client,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
) {
    let mut watched: HashMap<String, Watcher> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            command = commands.recv() => match command {
                None => break,
                Some(Command::Watch { channel, watcher, done }) => {
                    watched.insert(channel.clone(), watcher);
                    if let Err(e) = client.ssubscribe(channel.clone()).await {
                        tracing::warn!(%channel, error = %e, "SSUBSCRIBE failed; relying on position checks until reconnection");
                    }
                    let _ = done.send(());
                }
                Some(Command::Unwatch { channel, wake }) => {
                    if watched.get(&channel).is_some_and(|w| Arc::ptr_eq(&w.wake, &wake)) {
                        watched.remove(&channel);
                        if let Err(e) = client.sunsubscribe(channel.clone()).await {
                            tracing::debug!(%channel, error = %e, "SUNSUBSCRIBE failed");
                        }
                    }
                }
            },
            message = messages.recv() => match message {
                Ok(message) => dispatch(&watched, &message),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "hint notices overflowed; waking every tail");
                    crate::metrics::hint_gaps_repaired("overflow");
                    wake_all(&watched);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            reconnect = reconnects.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = reconnect {
                    break;
                }
                // Subscriptions do not survive a new connection: subscribe again, then
                // wake every tail to repair whatever was published meanwhile.
                for channel in watched.keys() {
                    if let Err(e) = client.ssubscribe(channel.clone()).await {
                        tracing::warn!(%channel, error = %e, "re-SSUBSCRIBE failed");
                    }
                }
                if !watched.is_empty() {
                    tracing::info!(topics = watched.len(), "hint connection re-established; repairing every tail");
                    crate::metrics::hint_gaps_repaired("reconnect");
                }
                wake_all(&watched);
            }
        }
    }
    let _ = client.quit().await;
}

/// Hands a hint channel's message to its watcher.
fn dispatch(watched: &HashMap<String, Watcher>, message: &fred::types::Message) {
    if let Some(w) = watched.get(&*message.channel) {
        match message.value.as_str().and_then(|p| HintEvent::parse(p.as_ref())) {
            None => w.wake.notify_one(),
            Some(event) => {
                if w.events.try_send(event).is_err() {
                    crate::metrics::topic_events_dropped(1);
                }
            }
        }
    }
}

/// How often the Cluster listener looks whether the slot map changed.
const REROUTE_CHECK: Duration = Duration::from_millis(100);

/// What a primary's connection task tells the Cluster listener.
enum NodeEvent {
    Message(fred::types::Message),
    /// The notices overflowed: some hints may be lost.
    Lagged(u64),
    /// The connection to this primary was established (`first`) or re-established: its
    /// subscriptions are gone (or were asked before it was up).
    Connected {
        server: Server,
        first: bool,
    },
}

/// What the Cluster listener asks a primary's connection task, in order.
enum NodeCommand {
    /// SSUBSCRIBE; then answer `done` (at once when the connection is not up: its
    /// connection notice subscribes the channel again) and wake `wake` (a tail that may
    /// have missed hints until then).
    Subscribe {
        channel: String,
        done: Option<oneshot::Sender<()>>,
        wake: Option<Arc<Notify>>,
    },
    Unsubscribe(String),
}

/// One primary's hint connection: its task and the way to it.
struct Node {
    commands: mpsc::UnboundedSender<NodeCommand>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    fn open(shards: &Shards, server: &Server, events: &mpsc::Sender<NodeEvent>) -> Result<Node> {
        let client = connect::node_unconnected(shards.config(), server, "hints")?;
        // Taken before connecting: the notice of the first connection subscribes what was
        // asked before it.
        let messages = client.message_rx();
        let reconnects = client.reconnect_rx();
        client.connect();
        let (commands, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(node_task(client, server.clone(), messages, reconnects, rx, events.clone(), stop.clone()));
        Ok(Node { commands, stop, task })
    }
}

/// One primary's connection: issues the listener's commands in order, forwards notices.
async fn node_task(
    client: Client,
    server: Server,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    mut reconnects: tokio::sync::broadcast::Receiver<Server>,
    mut commands: mpsc::UnboundedReceiver<NodeCommand>,
    events: mpsc::Sender<NodeEvent>,
    stop: CancellationToken,
) {
    let mut first = true;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            command = commands.recv() => {
                match command {
                    None => break,
                    Some(NodeCommand::Subscribe { channel, mut done, wake }) => {
                        if !client.is_connected() {
                            // Not up (yet): the watch need not wait for the connection.
                            if let Some(done) = done.take() {
                                let _ = done.send(());
                            }
                        }
                        if let Err(e) = client.ssubscribe(channel.clone()).await {
                            tracing::warn!(%channel, %server, error = %e, "SSUBSCRIBE failed; relying on position checks until reconnection");
                        }
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        if let Some(wake) = wake {
                            wake.notify_one();
                        }
                    }
                    Some(NodeCommand::Unsubscribe(channel)) => {
                        if let Err(e) = client.sunsubscribe(channel.clone()).await {
                            tracing::debug!(%channel, %server, error = %e, "SUNSUBSCRIBE failed");
                        }
                    }
                }
                continue;
            }
            message = messages.recv() => match message {
                Ok(message) => NodeEvent::Message(message),
                Err(RecvError::Lagged(missed)) => NodeEvent::Lagged(missed),
                Err(RecvError::Closed) => break,
            },
            reconnect = reconnects.recv() => match reconnect {
                Err(RecvError::Closed) => break,
                _ => NodeEvent::Connected { server: server.clone(), first: std::mem::take(&mut first) },
            },
        };
        if events.send(event).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
}

/// The Cluster listener: routes each watched channel to the connection of its slot's
/// primary, and moves it when the slot map changes.
async fn run_sharded(shards: Arc<Shards>, mut commands: mpsc::UnboundedReceiver<Command>, shutdown: CancellationToken) {
    let (events_tx, mut events) = mpsc::channel::<NodeEvent>(4096);
    let mut watched: HashMap<String, Watcher> = HashMap::new();
    // The primary each watched channel is subscribed on.
    let mut assigned: HashMap<String, Server> = HashMap::new();
    let mut nodes: HashMap<Server, Node> = HashMap::new();
    // Not yet seen: the first check opens the connections.
    let mut generation = u64::MAX;
    let mut check = tokio::time::interval(REROUTE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The connection of `server`, opened if needed.
    let node = |nodes: &mut HashMap<Server, Node>, server: &Server| -> Option<mpsc::UnboundedSender<NodeCommand>> {
        if let Some(node) = nodes.get(server) {
            return Some(node.commands.clone());
        }
        match Node::open(&shards, server, &events_tx) {
            Ok(node) => {
                let commands = node.commands.clone();
                nodes.insert(server.clone(), node);
                Some(commands)
            }
            Err(e) => {
                tracing::warn!(%server, error = %e, "cannot open a hint connection");
                None
            }
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            command = commands.recv() => match command {
                None => break,
                Some(Command::Watch { channel, watcher, done }) => {
                    let wake = watcher.wake.clone();
                    watched.insert(channel.clone(), watcher);
                    // No slot map yet: the next check subscribes it (position checks meanwhile).
                    let Some(server) = shards.server_for(&channel) else {
                        let _ = done.send(());
                        continue;
                    };
                    if let Some(former) = assigned.insert(channel.clone(), server.clone()) {
                        if former != server {
                            if let Some(node) = nodes.get(&former) {
                                let _ = node.commands.send(NodeCommand::Unsubscribe(channel.clone()));
                            }
                        }
                    }
                    match node(&mut nodes, &server) {
                        Some(commands) => {
                            // `done` answers once SSUBSCRIBE was (dropped: the watch returns).
                            // And the tail is woken then: the watch may have returned first.
                            let _ = commands.send(NodeCommand::Subscribe { channel, done: Some(done), wake: Some(wake) });
                        }
                        None => {
                            assigned.remove(&channel);
                            let _ = done.send(());
                        }
                    }
                }
                Some(Command::Unwatch { channel, wake }) => {
                    if watched.get(&channel).is_some_and(|w| Arc::ptr_eq(&w.wake, &wake)) {
                        watched.remove(&channel);
                        if let Some(node) = assigned.remove(&channel).and_then(|server| nodes.get(&server)) {
                            let _ = node.commands.send(NodeCommand::Unsubscribe(channel));
                        }
                    }
                }
            },
            event = events.recv() => match event {
                None => break,
                Some(NodeEvent::Message(message)) => dispatch(&watched, &message),
                Some(NodeEvent::Lagged(missed)) => {
                    tracing::debug!(missed, "hint notices overflowed; waking every tail");
                    crate::metrics::hint_gaps_repaired("overflow");
                    wake_all(&watched);
                }
                Some(NodeEvent::Connected { server, first }) => {
                    // Subscriptions do not survive a new connection (and one asked before
                    // the first was up may be lost): subscribe again, then wake the tails
                    // to repair whatever was published meanwhile.
                    let Some(node) = nodes.get(&server) else { continue };
                    let mut repaired = 0;
                    for (channel, _) in assigned.iter().filter(|(_, s)| **s == server) {
                        let wake = watched.get(channel).map(|w| w.wake.clone());
                        if let Some(wake) = &wake {
                            wake.notify_one();
                        }
                        let _ = node.commands.send(NodeCommand::Subscribe { channel: channel.clone(), done: None, wake });
                        repaired += 1;
                    }
                    if repaired > 0 && !first {
                        tracing::info!(topics = repaired, %server, "hint connection re-established; repairing its tails");
                        crate::metrics::hint_gaps_repaired("reconnect");
                    }
                }
            },
            _ = check.tick() => {
                let now = shards.generation();
                if now == generation {
                    continue;
                }
                generation = now;
                // Channels whose slot has another primary now (a failover, a resharding),
                // or had none: subscribed there, their tails woken for what was missed.
                let mut moved = 0;
                for (channel, watcher) in &watched {
                    let Some(server) = shards.server_for(channel) else { continue };
                    if assigned.get(channel) == Some(&server) {
                        continue;
                    }
                    if let Some(node) = assigned.get(channel).and_then(|former| nodes.get(former)) {
                        let _ = node.commands.send(NodeCommand::Unsubscribe(channel.clone()));
                    }
                    if let Some(commands) = node(&mut nodes, &server) {
                        let wake = Some(watcher.wake.clone());
                        let _ = commands.send(NodeCommand::Subscribe { channel: channel.clone(), done: None, wake });
                        assigned.insert(channel.clone(), server);
                    } else {
                        assigned.remove(channel);
                    }
                    watcher.wake.notify_one();
                    moved += 1;
                }
                if moved > 0 {
                    tracing::info!(topics = moved, "hint subscriptions moved with the cluster's slot map");
                }
                // A connection to every primary, open before a topic of its slots is
                // watched (a first subscription need not wait for it); those of former
                // primaries are closed once no watched channel is on them.
                let primaries = shards.primaries();
                for server in &primaries {
                    node(&mut nodes, server);
                }
                let mut used: HashSet<&Server> = assigned.values().collect();
                used.extend(primaries.iter());
                let idle: Vec<Server> = nodes.keys().filter(|s| !used.contains(s)).cloned().collect();
                for server in idle {
                    if let Some(node) = nodes.remove(&server) {
                        node.stop.cancel();
                    }
                }
            }
        }
    }
    for node in nodes.values() {
        node.stop.cancel();
    }
    for (_, node) in nodes {
        let _ = node.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::HintEvent;

    #[test]
    fn events_are_told_from_hints() {
        assert_eq!(HintEvent::parse("f750a640062c60ca 17"), None, "a plain hint");
        assert_eq!(HintEvent::parse("- 0"), None, "a plain hint of a topic without epoch");
        assert_eq!(HintEvent::parse(r#"E {"data":1}"#), Some(HintEvent::Ephemeral { body: r#"{"data":1}"#.into() }));
        assert_eq!(HintEvent::parse("E"), None);
    }
}
