//! The tail task: per node, per topic with local subscribers, the one reader of the topic.
//!
//! It keeps `(epoch, last)`, the position it has read up to, and on every wake-up (a
//! hint, a Pub/Sub reconnection, or the periodic position check) reads everything after
//! `last` in pages and offers each message, in order, to every live subscription. So
//! Redis reads per message per node do not depend on the number of subscribers, and a
//! hint that never arrives delays a message by at most `fanout.position_check_ms`.
//!
//! Joins are commands processed between reads, so a subscription moves from its own
//! catch-up to live delivery with no gap and no duplicate.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::event::TopicEvent;
use super::resume::{self, Reader, ResetReason, Step};
use super::subscription::{Delivered, Expired, Offered, Reset, Subscription};
use crate::metrics;
use crate::store::hints::{HintEvent, Hints, Watcher};
use crate::store::Store;
use crate::topic::Topic;

/// Presence changes a tail holds back until it has delivered their message.
const PENDING_EVENTS: usize = 1024;

pub(super) enum TailCommand {
    /// Join live delivery; answered true when joined, false when the subscription must
    /// read further on its own first.
    Join(Arc<Subscription>, oneshot::Sender<bool>),
    Leave(Arc<Subscription>),
}

pub(super) struct TailTask {
    pub topic: Topic,
    pub store: Store,
    pub hints: Hints,
    pub commands: mpsc::Receiver<TailCommand>,
    /// The topic's presence and ephemeral events, from the hint listener.
    pub events: mpsc::Receiver<HintEvent>,
    pub events_tx: mpsc::Sender<HintEvent>,
    /// Presence changes that belong after a message this tail has not read yet, with
    /// that message's seq (at most `PENDING_EVENTS`).
    pub pending: std::collections::VecDeque<(u64, Arc<TopicEvent>)>,
    pub wake: Arc<Notify>,
    pub stop: CancellationToken,
    pub page: usize,
    pub check_every: Duration,
    /// "" until the topic has an epoch.
    pub epoch: Arc<str>,
    pub last: u64,
    pub live: Vec<Arc<Subscription>>,
}

impl TailTask {
    pub async fn run(mut self) {
        metrics::tail_started();
        let watcher = Watcher { wake: self.wake.clone(), events: self.events_tx.clone() };
        self.hints.watch(&self.topic, watcher).await;
        // Start at the top: subscriptions bring themselves up to here before joining.
        match self.store.read_since(&self.topic, u64::MAX, 0).await {
            Ok(page) => {
                self.epoch = page.position.epoch.unwrap_or_default().into();
                self.last = page.position.top;
            }
            Err(e) => tracing::warn!(topic = %self.topic, error = %e, "tail could not read its start position"),
        }
        let mut check = tokio::time::interval(self.check_every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                command = self.commands.recv() => match command {
                    None => break,
                    Some(TailCommand::Join(sub, answer)) => {
                        let joined = self.join(sub).await;
                        let _ = answer.send(joined);
                    }
                    Some(TailCommand::Leave(sub)) => self.live.retain(|s| !Arc::ptr_eq(s, &sub)),
                },
                _ = self.wake.notified() => self.read_on().await,
                event = self.events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                _ = check.tick() => self.read_on().await,
            }
        }
        self.hints.unwatch(&self.topic, self.wake.clone());
        metrics::tail_stopped();
    }

    async fn join(&mut self, sub: Arc<Subscription>) -> bool {
        let at = sub.position();
        if at.epoch.as_str() != &*self.epoch || at.last > self.last {
            // The subscription saw more than this tail: read up to the top first.
            self.read_on().await;
        }
        if at.epoch.as_str() == &*self.epoch && at.last >= self.last {
            sub.set_live();
            self.live.push(sub);
            true
        } else {
            false
        }
    }

    /// A presence or ephemeral event: delivered now, or — a presence change that belongs
    /// after a message this tail has not read yet — once that message was delivered, so
    /// subscribers see it in order with the messages.
    fn on_event(&mut self, event: HintEvent) {
        let Some((event, place)) = TopicEvent::from_hint(&self.topic, event) else { return };
        let event = Arc::new(event);
        match place {
            Some((epoch, after)) if epoch == *self.epoch && after > self.last => {
                if self.pending.len() >= PENDING_EVENTS {
                    self.pending.pop_front();
                    metrics::topic_events_dropped(1);
                }
                self.pending.push_back((after, event));
            }
            _ => self.deliver_event(&event),
        }
    }

    fn deliver_event(&self, event: &Arc<TopicEvent>) {
        let dropped = self.live.iter().filter(|sub| !sub.offer_event(event)).count();
        metrics::topic_events_dropped(dropped as u64);
    }

    /// Delivers the pending presence changes whose message has now been delivered (all of
    /// them when the epoch changed: their place is gone).
    fn flush_pending(&mut self, epoch_changed: bool) {
        while let Some((after, _)) = self.pending.front() {
            if !epoch_changed && *after > self.last {
                break;
            }
            if let Some((_, event)) = self.pending.pop_front() {
                self.deliver_event(&event);
            }
        }
    }

    fn reset_all(&mut self, reason: ResetReason, epoch: &str, seq: u64) {
        metrics::reset(reason.as_str());
        let reset = Reset { topic: self.topic.clone(), epoch: epoch.to_string(), seq, reason };
        self.live.retain(|sub| sub.offer_reset(reset.clone()) == Offered::Queued);
    }

    /// Reads everything after `last` and offers it to the live subscriptions.
    async fn read_on(&mut self) {
        loop {
            metrics::tail_read();
            let page = match self.store.read_since(&self.topic, self.last, self.page).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::debug!(topic = %self.topic, error = %e, "tail read failed; retrying on the next wake-up");
                    return;
                }
            };
            match resume::step(&page.position, &self.epoch, self.last, Reader::Tail) {
                Step::Deliver => {}
                // No history (yet, or lost and not recreated): nothing to deliver.
                Step::Idle | Step::Wait => return,
                Step::Adopt { epoch, last } => {
                    self.epoch = epoch.into();
                    self.last = last;
                    continue;
                }
                Step::Jump { reason, epoch, last } => {
                    self.epoch = epoch.as_str().into();
                    self.last = last;
                    self.reset_all(reason, &epoch, last);
                    self.flush_pending(reason == ResetReason::EpochChanged);
                    continue;
                }
            }
            let count = page.messages.len();
            let epoch: Arc<str> = self.epoch.clone();
            let now = crate::clock::now_ms();
            let mut expired: Option<Expired> = None;
            for message in page.messages {
                let delivered = Arc::new(Delivered::new(self.topic.clone(), epoch.clone(), message));
                if delivered.is_expired(now) {
                    // Never delivered: the run is told to the live subscriptions instead.
                    let seq = delivered.seq();
                    let run = expired.get_or_insert(Expired {
                        topic: self.topic.clone(),
                        epoch: epoch.clone(),
                        from: seq,
                        to: seq,
                    });
                    run.to = seq;
                    self.last = seq;
                    continue;
                }
                if let Some(run) = expired.take() {
                    self.offer_all(|sub| sub.offer_expired(&run), run.to - run.from + 1);
                    self.flush_pending(false);
                }
                self.last = delivered.seq();
                self.offer_all(|sub| sub.offer_live(&delivered), 0);
                self.flush_pending(false);
            }
            if let Some(run) = expired.take() {
                self.offer_all(|sub| sub.offer_expired(&run), run.to - run.from + 1);
            }
            self.flush_pending(false);
            if count < self.page {
                return;
            }
        }
    }

    /// Offers one item to every live subscription; those that cannot take it lag and
    /// leave the live set. `expired` counts the expired messages the item stands for.
    fn offer_all(&mut self, offer: impl Fn(&Arc<Subscription>) -> Offered, expired: u64) {
        metrics::expired_skipped("subscription", expired);
        self.live.retain(|sub| match offer(sub) {
            Offered::Queued | Offered::Skipped => true,
            Offered::Lagging => {
                metrics::subscriber_lagged();
                false
            }
            Offered::Closed => false,
        });
    }
}
