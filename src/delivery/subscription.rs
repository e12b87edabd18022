//! One subscription of one session to one topic, and the session's bounded outbound
//! queue that tails and catch-up readers feed.
//!
//! Ownership of a subscription's position (`epoch`, `last`) passes between two writers,
//! never both at once: while `lagging` the session's catch-up reader advances it; after a
//! successful join the topic's tail task does. The join runs inside the tail task, so
//! the hand-over is atomic with respect to delivery: no gap, no duplicate.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use futures::channel::mpsc;
use tokio::sync::{Semaphore, TryAcquireError};

use super::event::TopicEvent;
pub use super::resume::ResetReason;
use crate::store::StoredMessage;
use crate::topic::Topic;

/// A message read by a tail or catch-up reader, shared by every local subscriber.
#[derive(Debug)]
pub struct Delivered {
    pub topic: Topic,
    pub epoch: Arc<str>,
    pub message: StoredMessage,
    /// Encoded frames, built once per wire format by the first session that writes it, in
    /// whatever form that transport writes (the gateway numbers its formats: `FRAME_SLOTS`
    /// of them). Kept ready to write, so a delivery is a clone of a shared buffer.
    frames: [OnceLock<Box<dyn Any + Send + Sync>>; FRAME_SLOTS],
}

/// How many wire formats a message's encoded frame is cached for: the native protocol's
/// JSON and MessagePack, the Centrifugo protocol's JSON and Protobuf, and SSE.
pub const FRAME_SLOTS: usize = 5;

impl Delivered {
    pub fn new(topic: Topic, epoch: Arc<str>, message: StoredMessage) -> Delivered {
        Delivered { topic, epoch, message, frames: Default::default() }
    }

    pub fn seq(&self) -> u64 {
        self.message.seq
    }

    /// The message's frame in format `slot`, encoded by `encode` for the first session
    /// that asks and shared by the rest. A slot holds one type of frame: a caller that
    /// asks for another type (or a slot past `FRAME_SLOTS`) gets a frame of its own.
    pub fn frame<F: Any + Clone + Send + Sync>(&self, slot: usize, encode: impl Fn() -> F) -> F {
        let Some(cell) = self.frames.get(slot) else { return encode() };
        match cell.get_or_init(|| Box::new(encode())).downcast_ref::<F>() {
            Some(frame) => frame.clone(),
            None => encode(),
        }
    }

    /// When it was published (0 for an entry whose envelope does not decode).
    pub fn published_ms(&self) -> u64 {
        self.message.envelope.as_ref().map_or(0, |e| e.published_ms)
    }

    /// Whether the message has expired at `now_ms` (`Envelope::is_expired`); an entry that
    /// is not an envelope has no TTL.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.message.envelope.as_ref().is_ok_and(|e| e.is_expired(now_ms))
    }

    /// Whether the message carries a TTL at all (only those need a clock to check).
    pub fn has_ttl(&self) -> bool {
        self.message.envelope.as_ref().is_ok_and(|e| e.ttl_ms.is_some())
    }

    /// Bytes this message counts against a session's byte bound.
    pub fn size(&self) -> usize {
        match &self.message.envelope {
            Ok(e) => e.payload.len() + e.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(),
            Err(raw) => raw.len(),
        }
    }
}

/// "From here on, messages of `topic` continue after `seq` in `epoch`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    pub topic: Topic,
    pub epoch: String,
    pub seq: u64,
    pub reason: ResetReason,
}

/// "Messages `from..=to` of `topic` in `epoch` expired before they could be delivered":
/// the subscriber's position moves past them, and it is told why they do not come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub topic: Topic,
    pub epoch: Arc<str>,
    pub from: u64,
    pub to: u64,
}

impl Expired {
    /// Adds `seq` to the run of expired seqs being collected in `run` (starting one).
    pub fn extend(run: &mut Option<Expired>, topic: &Topic, epoch: &Arc<str>, seq: u64) {
        run.get_or_insert_with(|| Expired { topic: topic.clone(), epoch: epoch.clone(), from: seq, to: seq }).to = seq;
    }
}

#[derive(Debug)]
pub enum Item {
    Message(Arc<Delivered>),
    // Boxed: rare, and every queued item is allocated at the size of the largest, so the
    // item is kept two words wide.
    Reset(Box<Reset>),
    Expired(Box<Expired>),
    /// A presence change or an ephemeral event (at most once; never makes a
    /// subscription lag).
    Event(Arc<TopicEvent>),
}

/// An item in a session's outbound queue. Holding it holds its slot and its share of the
/// byte bound (given back when it is dropped: written, skipped or never queued).
pub struct Queued {
    pub sub: Arc<Subscription>,
    pub item: Item,
}

impl Drop for Queued {
    fn drop(&mut self) {
        // Taken from this subscription's queue (`Outbound::offer`/`push`), and the same
        // item counts the same.
        let outbound = &self.sub.outbound;
        outbound.bounds.slots.add_permits(1);
        outbound.bounds.bytes.add_permits(outbound.permits(&self.item) as usize);
    }
}

/// Why an item could not be queued without waiting.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Message or byte bound reached: the subscriber is behind.
    Full,
    /// The session is gone.
    Closed,
}

/// The receiving end of a session's outbound queue (its transport's writer reads it).
pub type Deliveries = mpsc::UnboundedReceiver<Queued>;

/// A session's outbound queue: at most `max_messages` items and `max_bytes` payload bytes.
///
/// The bounds are two semaphores (a slot per item, a permit per payload byte) in front of
/// an unbounded list: a tokio bounded channel would reserve a block of 32 slots and two
/// cache-line-padded halves, ≈ 1 KiB, in every session, idle or not (ARCHITECTURE §6).
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<Queued>,
    bounds: Arc<Bounds>,
}

struct Bounds {
    slots: Semaphore,
    bytes: Semaphore,
    max_bytes: u32,
}

impl Outbound {
    pub fn new(max_messages: usize, max_bytes: usize) -> (Outbound, Deliveries) {
        let (tx, rx) = mpsc::unbounded();
        let max_bytes = max_bytes.min(u32::MAX as usize) as u32;
        let bounds = Bounds {
            slots: Semaphore::new(max_messages.min(Semaphore::MAX_PERMITS)),
            bytes: Semaphore::new(max_bytes as usize),
            max_bytes,
        };
        (Outbound { tx, bounds: Arc::new(bounds) }, rx)
    }

    fn permits(&self, item: &Item) -> u32 {
        match item {
            Item::Message(m) => (m.size().min(self.bounds.max_bytes as usize)) as u32,
            Item::Reset(_) | Item::Expired(_) => 0,
            Item::Event(_) => 0,
        }
    }

    /// Queues without waiting, or says why it cannot. `sub` is the subscription this
    /// queue belongs to (its `Queued` gives the slot and bytes back to it).
    fn offer(&self, sub: &Arc<Subscription>, item: Item) -> Result<(), Refused> {
        let refused = |e| match e {
            TryAcquireError::NoPermits => Refused::Full,
            TryAcquireError::Closed => Refused::Closed,
        };
        // Held by the `Queued` from here on (its drop gives them back).
        self.bounds.slots.try_acquire().map_err(refused)?.forget();
        match self.bounds.bytes.try_acquire_many(self.permits(&item)) {
            Ok(permit) => permit.forget(),
            Err(e) => {
                self.bounds.slots.add_permits(1);
                return Err(refused(e));
            }
        }
        // Refused only when the session is gone (the item's drop gives its share back).
        self.tx.unbounded_send(Queued { sub: sub.clone(), item }).map_err(|_| Refused::Closed)
    }

    /// Queues, waiting for room (the catch-up reader's pace is the client's pace). The
    /// permits are held, not yet given to the item, while it waits: a cancelled push
    /// gives them back.
    async fn push(&self, sub: &Arc<Subscription>, item: Item) -> Result<(), Refused> {
        let slot = self.bounds.slots.acquire().await.map_err(|_| Refused::Closed)?;
        let bytes = self.bounds.bytes.acquire_many(self.permits(&item)).await.map_err(|_| Refused::Closed)?;
        // Held by the `Queued` from here on (its drop gives them back).
        slot.forget();
        bytes.forget();
        self.tx.unbounded_send(Queued { sub: sub.clone(), item }).map_err(|_| Refused::Closed)
    }
}

/// Where a subscription stands: messages with seq > `last` in `epoch` come next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// "" while the topic has no epoch yet (never published to).
    pub epoch: String,
    pub last: u64,
}

pub struct Subscription {
    pub topic: Topic,
    outbound: Outbound,
    position: Mutex<Position>,
    /// True while the session's catch-up reader, not the tail, feeds this subscription.
    lagging: AtomicBool,
    /// Set on unsubscribe; queued items of a closed subscription are not written.
    closed: AtomicBool,
    /// Set once the transport queued its reply: only then may delivery begin.
    started: AtomicBool,
    /// The session's catch-up reader, woken when this subscription falls behind.
    wake: Weak<dyn CatchUpWake>,
    /// The subscriber asked for join and leave events.
    join_leave: bool,
}

/// What a subscription that falls behind wakes: its session's catch-up reader.
pub trait CatchUpWake: Send + Sync {
    fn wake_catchup(&self);
}

/// What happened to a live offer.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    Queued,
    /// Already delivered (seq <= last): nothing done.
    Skipped,
    /// The queue was full: the subscription is now lagging and must leave the live set.
    Lagging,
    Closed,
}

impl Subscription {
    pub fn new(
        topic: Topic,
        outbound: Outbound,
        start: Position,
        wake: Weak<dyn CatchUpWake>,
        join_leave: bool,
    ) -> Arc<Subscription> {
        Arc::new(Subscription {
            topic,
            outbound,
            position: Mutex::new(start),
            lagging: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            started: AtomicBool::new(false),
            wake,
            join_leave,
        })
    }

    pub fn position(&self) -> Position {
        self.position.lock().map(|p| p.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The seq of `position()` alone (no copy of the epoch: the tail asks per message).
    fn last(&self) -> u64 {
        self.position.lock().map(|p| p.last).unwrap_or_else(|e| e.into_inner().last)
    }

    pub fn set_position(&self, epoch: &str, last: u64) {
        let mut p = self.position.lock().unwrap_or_else(|e| e.into_inner());
        if p.epoch != epoch {
            p.epoch = epoch.to_string();
        }
        p.last = last;
    }

    pub fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire)
    }

    pub fn set_live(&self) {
        self.lagging.store(false, Ordering::Release);
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn fall_behind(&self) {
        self.lagging.store(true, Ordering::Release);
        if let Some(session) = self.wake.upgrade() {
            session.wake_catchup();
        }
    }

    /// Called by the tail for each message it reads, in seq order.
    pub fn offer_live(self: &Arc<Self>, delivered: &Arc<Delivered>) -> Offered {
        if self.is_closed() {
            return Offered::Closed;
        }
        // One lock for the check and the move (the tail offers every message to every
        // live subscription; the catch-up reader does not hold it meanwhile).
        let mut position = self.position.lock().unwrap_or_else(|e| e.into_inner());
        if delivered.seq() <= position.last {
            return Offered::Skipped;
        }
        match self.outbound.offer(self, Item::Message(delivered.clone())) {
            Ok(()) => {
                if position.epoch != *delivered.epoch {
                    position.epoch = delivered.epoch.to_string();
                }
                position.last = delivered.seq();
                Offered::Queued
            }
            Err(Refused::Full) => {
                self.fall_behind();
                Offered::Lagging
            }
            Err(Refused::Closed) => Offered::Closed,
        }
    }

    /// Called by the tail for a run of expired messages, in seq order with the messages:
    /// the part of the run after the subscription's position is queued as one notice.
    pub fn offer_expired(self: &Arc<Self>, run: &Expired) -> Offered {
        if self.is_closed() {
            return Offered::Closed;
        }
        let last = self.last();
        if run.to <= last {
            return Offered::Skipped;
        }
        let notice = Expired { from: run.from.max(last + 1), ..run.clone() };
        match self.outbound.offer(self, Item::Expired(Box::new(notice))) {
            Ok(()) => {
                self.set_position(&run.epoch, run.to);
                Offered::Queued
            }
            Err(Refused::Full) => {
                self.fall_behind();
                Offered::Lagging
            }
            Err(Refused::Closed) => Offered::Closed,
        }
    }

    /// Called by the tail for an event of the topic: queued without waiting when there is
    /// room and the subscription wants it; otherwise dropped (events are at most once, and
    /// a full queue makes no subscription lag for them). False when dropped for lack of room.
    pub fn offer_event(self: &Arc<Self>, event: &Arc<TopicEvent>) -> bool {
        if self.is_closed() || (event.is_presence() && !self.join_leave) {
            return true;
        }
        !matches!(self.outbound.offer(self, Item::Event(event.clone())), Err(Refused::Full))
    }

    /// Called by the tail when the topic's position jumped. A full queue makes the
    /// subscription lag; its catch-up reader then finds the jump itself and says so.
    pub fn offer_reset(self: &Arc<Self>, reset: Reset) -> Offered {
        if self.is_closed() {
            return Offered::Closed;
        }
        let (epoch, seq) = (reset.epoch.clone(), reset.seq);
        match self.outbound.offer(self, Item::Reset(Box::new(reset))) {
            Ok(()) => {
                self.set_position(&epoch, seq);
                Offered::Queued
            }
            Err(Refused::Full) => {
                crate::metrics::subscriber_lagged();
                self.fall_behind();
                Offered::Lagging
            }
            Err(Refused::Closed) => Offered::Closed,
        }
    }

    /// Queues for the catch-up reader, waiting for room.
    pub async fn push(self: &Arc<Self>, item: Item) -> Result<(), Refused> {
        self.outbound.push(self, item).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every queued item is one allocation of the largest item's size.
    #[test]
    fn a_queued_item_stays_small() {
        assert_eq!(std::mem::size_of::<Item>(), 16);
        assert!(std::mem::size_of::<Queued>() <= 24, "Queued is {} bytes", std::mem::size_of::<Queued>());
    }
}
