//! Delivery to subscribers: the node's hub of tail tasks, subscriptions with their
//! bounded queues, and the transport-neutral subscriber session (WebSocket and SSE both
//! use it). Nothing here knows a wire format.

pub mod event;
pub mod presence;
pub mod queue;
pub mod resume;
pub mod session;
pub mod subscription;
mod tail;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::FanoutConfig;
use crate::store::hints::Hints;
use crate::store::Store;
use crate::topic::Topic;
use subscription::Subscription;
use tail::{TailCommand, TailTask};

/// Commands a tail can hold before senders wait (joins and leaves of its subscribers).
const TAIL_COMMAND_QUEUE: usize = 256;
/// Presence and ephemeral events a tail can hold before the hint listener drops them.
const TAIL_EVENT_QUEUE: usize = 1024;

/// Sends commands to one topic's tail task.
#[derive(Clone)]
pub struct TailHandle {
    tx: mpsc::Sender<TailCommand>,
}

impl TailHandle {
    /// Asks to join live delivery; false means "read further on your own first".
    pub async fn join(&self, sub: Arc<Subscription>) -> bool {
        let (answer, answered) = oneshot::channel();
        if self.tx.send(TailCommand::Join(sub, answer)).await.is_err() {
            return false;
        }
        answered.await.unwrap_or(false)
    }

    pub async fn leave(&self, sub: Arc<Subscription>) {
        let _ = self.tx.send(TailCommand::Leave(sub)).await;
    }
}

struct TailEntry {
    handle: TailHandle,
    /// Subscriptions on this node that hold the tail.
    refs: usize,
    stop: CancellationToken,
}

/// The node's registry of tail tasks: exactly one per topic with local subscribers.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    store: Store,
    hints: Hints,
    presence: presence::Presence,
    config: FanoutConfig,
    tails: Mutex<HashMap<Topic, TailEntry>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Hub {
    pub fn new(
        store: Store,
        hints: Hints,
        presence: presence::Presence,
        config: FanoutConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Hub {
        let tails = Mutex::new(HashMap::new());
        Hub { inner: Arc::new(HubInner { store, hints, presence, config, tails, shutdown, tasks }) }
    }

    /// The node's presence tracker.
    pub fn presence(&self) -> &presence::Presence {
        &self.inner.presence
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The node's tracker of delivery tasks (the node's shutdown waits for them).
    fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    pub fn config(&self) -> &FanoutConfig {
        &self.inner.config
    }

    /// The topic's tail, started if this is its first local subscription.
    pub fn acquire(&self, topic: &Topic) -> TailHandle {
        let mut tails = self.inner.tails.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = tails.get_mut(topic) {
            entry.refs += 1;
            return entry.handle.clone();
        }
        let (tx, commands) = mpsc::channel(TAIL_COMMAND_QUEUE);
        let (events_tx, events) = mpsc::channel(TAIL_EVENT_QUEUE);
        let stop = self.inner.shutdown.child_token();
        let task = TailTask {
            topic: topic.clone(),
            store: self.inner.store.clone(),
            hints: self.inner.hints.clone(),
            commands,
            events,
            events_tx,
            presence: self.inner.presence.tracks(topic),
            last_event: String::new(),
            wake: Arc::new(Notify::new()),
            stop: stop.clone(),
            page: self.inner.config.tail_page,
            direct_writes: self.inner.config.direct_writes_per_message,
            check_every: Duration::from_millis(self.inner.config.position_check_ms),
            epoch: "".into(),
            last: 0,
            live: Vec::new(),
        };
        self.inner.tasks.spawn(task.run());
        let handle = TailHandle { tx };
        tails.insert(topic.clone(), TailEntry { handle: handle.clone(), refs: 1, stop });
        handle
    }

    /// Drops one hold on the topic's tail; the last one stops it.
    pub fn release(&self, topic: &Topic) {
        let mut tails = self.inner.tails.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = tails.get_mut(topic) {
            entry.refs -= 1;
            if entry.refs == 0 {
                entry.stop.cancel();
                tails.remove(topic);
            }
        }
    }

    /// Tail tasks running on this node.
    pub fn tail_count(&self) -> usize {
        self.inner.tails.lock().map(|t| t.len()).unwrap_or(0)
    }
}
