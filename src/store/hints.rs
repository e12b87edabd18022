//! Hints: the sharded Pub/Sub notices (`<prefix>:{topic}:h`, payload "<epoch> <seq>") that
//! every publish sends, turned into wake-ups of the local tail tasks.
//!
//! Hints are only hints. A tail re-reads its topic on every wake-up, whatever the hint
//! said, and also periodically; when the Pub/Sub connection is re-established or its
//! notices overflowed, every watched topic is woken, so a lost hint delays a message but
//! never loses it. One dedicated connection per node; SSUBSCRIBE/SUNSUBSCRIBE are issued
//! by one task in command order, so watch/unwatch races cannot leave a topic unwatched.

use std::collections::HashMap;
use std::sync::Arc;

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::{connect, Result};
use crate::config::RedisConfig;
use crate::keys::Keys;
use crate::topic::Topic;

/// An event published on a topic's hint channel besides the "new seq" hints: presence
/// changes (`P <epoch> <after seq> join|leave <entry JSON>`, from `lua/presence.lua`) and
/// ephemeral events (`E <body JSON>`). At most once, like every Pub/Sub message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HintEvent {
    Presence {
        /// The topic's epoch when the event happened ("" when it had none).
        epoch: String,
        /// The topic's top seq then: the event belongs after that message.
        after: u64,
        join: bool,
        /// `{"client","user","info"}` as streamhub wrote it.
        entry: String,
    },
    Ephemeral {
        body: String,
    },
}

impl HintEvent {
    /// The event a hint channel message carries; None for a plain hint (or garbage).
    pub fn parse(payload: &str) -> Option<HintEvent> {
        if let Some(body) = payload.strip_prefix("E ") {
            return Some(HintEvent::Ephemeral { body: body.to_string() });
        }
        let rest = payload.strip_prefix("P ")?;
        let mut parts = rest.splitn(4, ' ');
        let epoch = parts.next()?;
        let after = parts.next()?.parse().ok()?;
        let join = match parts.next()? {
            "join" => true,
            "leave" => false,
            _ => return None,
        };
        let entry = parts.next()?.to_string();
        Some(HintEvent::Presence {
            epoch: if epoch == "-" { String::new() } else { epoch.to_string() },
            after,
            join,
            entry,
        })
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
    /// Starts the listener task on its own connection; it ends with `shutdown`.
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
                Ok(message) => {
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

#[cfg(test)]
mod tests {
    use super::HintEvent;

    #[test]
    fn events_are_told_from_hints() {
        assert_eq!(HintEvent::parse("f750a640062c60ca 17"), None, "a plain hint");
        assert_eq!(
            HintEvent::parse(r#"P f750a640062c60ca 17 join {"client":"c1","user":"alice","info":null}"#),
            Some(HintEvent::Presence {
                epoch: "f750a640062c60ca".into(),
                after: 17,
                join: true,
                entry: r#"{"client":"c1","user":"alice","info":null}"#.into()
            })
        );
        assert!(
            matches!(HintEvent::parse("P - 0 leave {}"), Some(HintEvent::Presence { epoch, join: false, .. }) if epoch.is_empty())
        );
        assert_eq!(HintEvent::parse(r#"E {"data":1}"#), Some(HintEvent::Ephemeral { body: r#"{"data":1}"#.into() }));
        for junk in ["P x y join {}", "P e 1 wave {}", "P e 1", "E", ""] {
            assert_eq!(HintEvent::parse(junk), None, "{junk}");
        }
    }
}
