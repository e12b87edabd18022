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
//!
//! For a topic with presence the tail reads the topic's join and leave events in the same
//! snapshot as the messages (`Store::tail_read`) and delivers each after the message that
//! was the topic's top when it happened: every node's subscribers see the same order.
//! Ephemeral events come from the hint listener and go straight to the live subscriptions.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use std::collections::VecDeque;

use super::event::TopicEvent;
use super::resume::{self, Reader, ResetReason, Step};
use super::subscription::{Delivered, Expired, Offered, Reset, Subscription};
use crate::metrics;
use crate::store::hints::{HintEvent, Hints, Watcher};
use crate::store::presence::{PresenceRecord, TailPage};
use crate::store::Store;
use crate::topic::Topic;

/// Direct writes of one message look for a newer message's hint this often.
const HINT_CHECK_EVERY: usize = 32;

/// Whether a hint is waiting on `wake`, taken if so (the caller then reads again).
fn took_hint(wake: &Notify) -> bool {
    let hint = wake.notified();
    tokio::pin!(hint);
    // A notification that comes while the check is registered is passed on when the
    // check is dropped (tokio's `Notified`): none is lost.
    hint.as_mut().enable()
}

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
    /// The topic's ephemeral events, from the hint listener.
    pub events: mpsc::Receiver<HintEvent>,
    pub events_tx: mpsc::Sender<HintEvent>,
    /// Whether the topic has presence: then the tail reads its join and leave events too.
    pub presence: bool,
    /// The id of the last join/leave event read ("" before the first read).
    pub last_event: String,
    pub wake: Arc<Notify>,
    pub stop: CancellationToken,
    pub page: usize,
    /// Most live sessions a message is written to by this task itself
    /// (`fanout.direct_writes_per_message`), when its read brought that message alone; the
    /// rest are queued for their writers.
    pub direct_writes: usize,
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
        // Start at the top: subscriptions bring themselves up to here before joining (and
        // after the newest join/leave event: older ones are not theirs).
        match self.read(u64::MAX, 0).await {
            Ok(start) => {
                self.epoch = start.page.position.epoch.unwrap_or_default().into();
                self.last = start.page.position.top;
                self.last_event = start.last_event_id;
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

    /// An ephemeral event: delivered now to the live subscriptions.
    fn on_event(&mut self, event: HintEvent) {
        if let Some(event) = TopicEvent::from_hint(&self.topic, event) {
            self.deliver_event(&Arc::new(event));
        }
    }

    fn deliver_event(&self, event: &Arc<TopicEvent>) {
        let dropped = self.live.iter().filter(|sub| !sub.offer_event(event)).count();
        metrics::topic_events_dropped(dropped as u64);
    }

    /// Delivers the join/leave events at the front of `events` that come before message
    /// `before` (all of them with `u64::MAX`): those of the current epoch placed after an
    /// earlier message, and those of another epoch (their place is gone).
    fn deliver_records(&self, events: &mut VecDeque<PresenceRecord>, before: u64) {
        while let Some(record) = events.front() {
            if record.epoch == *self.epoch && record.after >= before {
                break;
            }
            if let Some(event) = events.pop_front().and_then(|r| TopicEvent::from_record(&self.topic, &r)) {
                self.deliver_event(&Arc::new(event));
            }
        }
    }

    /// A page after `since` (with the topic's join/leave events when it has presence).
    async fn read(&self, since: u64, limit: usize) -> crate::store::Result<TailPage> {
        if self.presence {
            self.store.tail_read(&self.topic, since, limit, &self.last_event).await
        } else {
            let page = self.store.read_since(&self.topic, since, limit).await?;
            Ok(TailPage { page, events: Vec::new(), last_event_id: String::new() })
        }
    }

    fn reset_all(&mut self, reason: ResetReason, epoch: &str, seq: u64) {
        metrics::reset(reason.as_str());
        let reset = Reset { topic: self.topic.clone(), epoch: epoch.to_string(), seq, reason };
        self.live.retain(|sub| sub.offer_reset(reset.clone()) == Offered::Queued);
    }

    /// Reads everything after `last` and offers it to the live subscriptions, with the
    /// join and leave events in their places.
    async fn read_on(&mut self) {
        loop {
            metrics::tail_read();
            let TailPage { page, events, last_event_id } = match self.read(self.last, self.page).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::debug!(topic = %self.topic, error = %e, "tail read failed; retrying on the next wake-up");
                    return;
                }
            };
            let mut events = VecDeque::from(events);
            match resume::step(&page.position, &self.epoch, self.last, Reader::Tail) {
                Step::Deliver => {}
                // No history (yet, or lost and not recreated): no message, only events.
                Step::Idle | Step::Wait => {
                    self.deliver_records(&mut events, u64::MAX);
                    self.last_event = last_event_id;
                    return;
                }
                // The position moves: the events of this read are read again from there.
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
            self.last_event = last_event_id;
            let count = page.messages.len();
            // Direct writes only while this tail keeps up (its read brought one message):
            // one that falls behind reads several, queues them, and the sessions' writers
            // write each session's share with one vectored write, in parallel.
            let direct_writes = if count == 1 { self.direct_writes } else { 0 };
            // Set when a hint that came during direct writes was taken: read again.
            let mut hinted = false;
            let epoch: Arc<str> = self.epoch.clone();
            let now = crate::clock::now_ms();
            let mut expired: Option<Expired> = None;
            for message in page.messages {
                let delivered = Arc::new(Delivered::new(self.topic.clone(), epoch.clone(), message));
                let seq = delivered.seq();
                if events.front().is_some_and(|r| r.epoch != *self.epoch || r.after < seq) {
                    self.offer_expired(expired.take());
                    self.deliver_records(&mut events, seq);
                }
                if delivered.is_expired(now) {
                    // Never delivered: the run is told to the live subscriptions instead.
                    Expired::extend(&mut expired, &self.topic, &epoch, seq);
                    self.last = seq;
                    continue;
                }
                self.offer_expired(expired.take());
                self.last = seq;
                // The sessions past the direct budget are queued first: their writers run
                // on the other workers while this task writes to the rest itself.
                let queued_first = self.live.len().saturating_sub(direct_writes);
                let (mut direct, mut offered) = (direct_writes, 0usize);
                let wake = self.wake.clone();
                self.offer_all(
                    |sub| {
                        offered += 1;
                        if offered <= queued_first {
                            return sub.offer_live(&delivered, &mut 0);
                        }
                        // A newer message waits (its hint came): the rest of this one is
                        // queued, so that the next is not held up behind serial writes.
                        if direct > 0 && offered % HINT_CHECK_EVERY == 0 && took_hint(&wake) {
                            (direct, hinted) = (0, true);
                        }
                        sub.offer_live(&delivered, &mut direct)
                    },
                    0,
                );
            }
            self.offer_expired(expired.take());
            self.deliver_records(&mut events, u64::MAX);
            if count < self.page && !hinted {
                return;
            }
        }
    }

    fn offer_expired(&mut self, run: Option<Expired>) {
        if let Some(run) = run {
            self.offer_all(|sub| sub.offer_expired(&run), run.to - run.from + 1);
        }
    }

    /// Offers one item to every live subscription; those that cannot take it lag and
    /// leave the live set. `expired` counts the expired messages the item stands for.
    fn offer_all(&mut self, mut offer: impl FnMut(&Arc<Subscription>) -> Offered, expired: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// A waiting hint is taken (the tail then reads again); without one, the check
    /// leaves nothing behind, and a later hint still wakes the tail's wait.
    #[test]
    fn a_hint_check_takes_a_waiting_hint_and_loses_none() {
        let wake = Notify::new();
        assert!(!took_hint(&wake), "no hint yet");
        wake.notify_one();
        assert!(took_hint(&wake), "the hint is taken");
        assert!(!took_hint(&wake), "and only once");
        wake.notify_one();
        assert!(wake.notified().now_or_never().is_some(), "a hint after a check still wakes the wait");
    }
}
