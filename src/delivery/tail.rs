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

use super::resume::{self, Reader, ResetReason, Step};
use super::subscription::{Delivered, Expired, Offered, Reset, Subscription};
use crate::metrics;
use crate::store::hints::Hints;
use crate::store::Store;
use crate::topic::Topic;

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
        self.hints.watch(&self.topic, self.wake.clone()).await;
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
                }
                self.last = delivered.seq();
                self.offer_all(|sub| sub.offer_live(&delivered), 0);
            }
            if let Some(run) = expired.take() {
                self.offer_all(|sub| sub.offer_expired(&run), run.to - run.from + 1);
            }
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
