//! One subscription of one session to one topic, and the session's bounded outbound
//! queue that tails and catch-up readers feed.
//!
//! Ownership of a subscription's position (`epoch`, `last`) passes between two writers,
//! never both at once: while `lagging` the session's catch-up reader advances it; after a
//! successful join the topic's tail task does. The join runs inside the tail task, so
//! the hand-over is atomic with respect to delivery: no gap, no duplicate.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::Notify;

use super::event::TopicEvent;
use super::queue;
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
    // Boxed: rare, and every slot of the queue is the size of the largest item, so the
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
        outbound.bounds.give_back(outbound.bounds.bytes_of(&self.item));
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
pub type Deliveries = queue::Receiver<Queued>;

/// A session's outbound queue: at most `max_messages` items and `max_bytes` payload bytes.
///
/// The bounds are one atomic word (items and bytes queued) in front of an unbounded
/// queue (`delivery::queue`): taking a share is one compare-and-swap, giving it back one
/// subtraction; only the catch-up reader, which waits for room, is ever woken by it.
#[derive(Clone)]
pub struct Outbound {
    tx: queue::Sender<Queued>,
    bounds: Arc<Bounds>,
    /// The transport's direct write, if it has one (set once, when its session starts).
    direct: Arc<OnceLock<Box<dyn DirectWrite>>>,
}

/// A transport that can write a live message itself, at once, from the tail that read
/// it: when its session has nothing queued and its writer is idle, a delivery then costs
/// no queueing and no wake-up of the writer's task (ARCHITECTURE §6, "Direct writes").
pub trait DirectWrite: Send + Sync {
    /// Writes `message`'s frame now, or nothing. `nothing_queued` tells whether the
    /// session's queue is empty (and the subscription still open): asked once the writer
    /// is kept out, so that nothing queued before is overtaken (what the writer took and
    /// has not written is covered by the writer holding the socket until it has).
    fn write_now(&self, message: &Delivered, nothing_queued: &dyn Fn() -> bool) -> Direct;
}

/// What a direct write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// Nothing: queue the message.
    No,
    /// The frame is written whole.
    Written,
    /// The socket took a part of the frame: the transport's writer writes the rest before
    /// anything else, once woken.
    Started,
}

/// Items queued in the high half of `used`, their bytes in the low half.
struct Bounds {
    used: AtomicU64,
    max_items: u64,
    max_bytes: u32,
    /// A catch-up reader waits for room (`push`).
    waiting: AtomicU32,
    room: Notify,
}

const ONE_ITEM: u64 = 1 << 32;

impl Bounds {
    fn bytes_of(&self, item: &Item) -> u32 {
        match item {
            // A message larger than the byte bound counts as the whole bound: alone, it fits.
            Item::Message(m) => m.size().min(self.max_bytes as usize) as u32,
            Item::Reset(_) | Item::Expired(_) | Item::Event(_) => 0,
        }
    }

    /// Takes one item's share, unless a bound would pass.
    fn try_take(&self, bytes: u32) -> bool {
        let (max_items, max_bytes) = (self.max_items, u64::from(self.max_bytes));
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                let fits = (used >> 32) < max_items && (used & 0xffff_ffff) + u64::from(bytes) <= max_bytes;
                fits.then_some(used + ONE_ITEM + u64::from(bytes))
            })
            .is_ok()
    }

    /// A live offer's share: refused while the catch-up reader waits for room, so the
    /// room that the writer gives back goes to the waiting push, not to the next offer (as
    /// a semaphore serves its waiters first). The offered subscription lags instead, and
    /// the catch-up reader serves it in turn.
    fn offer_take(&self, bytes: u32) -> bool {
        self.waiting.load(Ordering::SeqCst) == 0 && self.try_take(bytes)
    }

    /// Takes one item's share, waiting for room.
    async fn take(&self, bytes: u32) {
        if self.try_take(bytes) {
            return;
        }
        /// Counts a waiter while it lives (a cancelled wait stops counting too).
        struct Waiting<'a>(&'a AtomicU32);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        // Counted before the next check: a share given back after a failed check sees it.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.try_take(bytes) {
                return;
            }
            room.await;
        }
    }

    fn give_back(&self, bytes: u32) {
        self.used.fetch_sub(ONE_ITEM + u64::from(bytes), Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }
}

impl Outbound {
    pub fn new(max_messages: usize, max_bytes: usize) -> (Outbound, Deliveries) {
        let (tx, rx) = queue::unbounded();
        let bounds = Bounds {
            used: AtomicU64::new(0),
            max_items: max_messages.clamp(1, u32::MAX as usize) as u64,
            max_bytes: max_bytes.min(u32::MAX as usize) as u32,
            waiting: AtomicU32::new(0),
            room: Notify::new(),
        };
        (Outbound { tx, bounds: Arc::new(bounds), direct: Arc::new(OnceLock::new()) }, rx)
    }

    /// Gives the session's transport a direct write (once; a second is ignored).
    pub fn set_direct(&self, direct: Box<dyn DirectWrite>) {
        let _ = self.direct.set(direct);
    }

    /// A live message: written by the transport at once when it can (and `budget`, the
    /// direct writes the tail has left for this message, allows), else queued.
    fn offer_message(
        &self,
        sub: &Arc<Subscription>,
        delivered: &Arc<Delivered>,
        budget: &mut usize,
    ) -> Result<(), Refused> {
        if *budget > 0 && self.bounds.used.load(Ordering::SeqCst) == 0 {
            if let Some(direct) = self.direct.get() {
                let bounds = &self.bounds;
                // Asked again once the writer is kept out: an item queued meanwhile, or a
                // notice that closed the subscription (Centrifugo's reset), is not overtaken.
                let nothing_queued = || !sub.is_closed() && bounds.used.load(Ordering::SeqCst) == 0;
                match direct.write_now(delivered, &nothing_queued) {
                    Direct::No => {}
                    Direct::Written => {
                        *budget -= 1;
                        return Ok(());
                    }
                    Direct::Started => {
                        *budget -= 1;
                        self.tx.wake();
                        return Ok(());
                    }
                }
            }
        }
        self.offer(sub, Item::Message(delivered.clone()))
    }

    /// Queues without waiting, or says why it cannot. `sub` is the subscription this
    /// queue belongs to (its `Queued` gives the share back to it).
    fn offer(&self, sub: &Arc<Subscription>, item: Item) -> Result<(), Refused> {
        if !self.bounds.offer_take(self.bounds.bytes_of(&item)) {
            return Err(Refused::Full);
        }
        // Refused only when the session is gone (the item's drop gives its share back).
        self.tx.try_send(Queued { sub: sub.clone(), item }).map_err(|_| Refused::Closed)
    }

    /// Queues, waiting for room (the catch-up reader's pace is the client's pace). The
    /// share is taken only once there is room and goes to the item at once, with no wait
    /// in between: a cancelled push holds nothing.
    async fn push(&self, sub: &Arc<Subscription>, item: Item) -> Result<(), Refused> {
        self.bounds.take(self.bounds.bytes_of(&item)).await;
        self.tx.try_send(Queued { sub: sub.clone(), item }).map_err(|_| Refused::Closed)
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

    /// Called by the tail for each message it reads, in seq order; `direct` is what is
    /// left of the message's budget of direct writes (`fanout.direct_writes_per_message`).
    pub fn offer_live(self: &Arc<Self>, delivered: &Arc<Delivered>, direct: &mut usize) -> Offered {
        if self.is_closed() {
            return Offered::Closed;
        }
        // One lock for the check and the move (the tail offers every message to every
        // live subscription; the catch-up reader does not hold it meanwhile).
        let mut position = self.position.lock().unwrap_or_else(|e| e.into_inner());
        if delivered.seq() <= position.last {
            return Offered::Skipped;
        }
        match self.outbound.offer_message(self, delivered, direct) {
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

    fn bounds(max_messages: usize, max_bytes: usize) -> Arc<Bounds> {
        Outbound::new(max_messages, max_bytes).0.bounds
    }

    /// A transport that writes whenever it is asked with nothing queued, and counts.
    struct Writes(std::sync::atomic::AtomicUsize);
    impl DirectWrite for Arc<Writes> {
        fn write_now(&self, _: &Delivered, nothing_queued: &dyn Fn() -> bool) -> Direct {
            if !nothing_queued() {
                return Direct::No;
            }
            self.0.fetch_add(1, Ordering::SeqCst);
            Direct::Written
        }
    }

    struct NoCatchUp;
    impl CatchUpWake for NoCatchUp {
        fn wake_catchup(&self) {}
    }

    /// A live message goes to an idle session's transport directly while the message's
    /// budget lasts and nothing is queued; otherwise, or once its subscription is closed,
    /// it is queued (and a closed subscription's writer skips it).
    #[test]
    fn direct_writes_keep_to_the_budget_and_never_overtake_the_queue() {
        let topic = Topic::parse("t", 200).expect("a topic");
        let message = |seq| {
            Arc::new(Delivered::new(topic.clone(), "e".into(), StoredMessage { seq, envelope: Err(b"x".to_vec()) }))
        };
        let wake: Weak<dyn CatchUpWake> = Weak::<NoCatchUp>::new();
        let sessions: Vec<_> = (0..3)
            .map(|_| {
                let (outbound, deliveries) = Outbound::new(16, 1 << 20);
                let writes = Arc::new(Writes(std::sync::atomic::AtomicUsize::new(0)));
                outbound.set_direct(Box::new(writes.clone()));
                let start = Position { epoch: "e".into(), last: 0 };
                (Subscription::new(topic.clone(), outbound, start, wake.clone(), false), deliveries, writes)
            })
            .collect();
        let written = |i: usize| sessions[i].2 .0.load(Ordering::SeqCst);
        // A budget of 2 for message 1: two sessions directly, the third queued.
        let mut budget = 2;
        for (sub, _, _) in &sessions {
            assert_eq!(sub.offer_live(&message(1), &mut budget), Offered::Queued);
        }
        assert_eq!((written(0), written(1), written(2), budget), (1, 1, 0, 0));
        // Message 2: the third session's queue holds message 1, so 2 is queued behind it.
        let mut budget = 3;
        for (sub, _, _) in &sessions {
            assert_eq!(sub.offer_live(&message(2), &mut budget), Offered::Queued);
        }
        assert_eq!((written(0), written(1), written(2), budget), (2, 2, 0, 1));
        // A budget of 0 (`fanout.direct_writes_per_message = 0`): direct writes are off.
        let mut budget = 0;
        assert_eq!(sessions[0].0.offer_live(&message(3), &mut budget), Offered::Queued);
        assert_eq!(written(0), 2, "queued, not written");
        let mut deliveries = sessions.into_iter().nth(2).map(|s| s.1).expect("the third session");
        let seqs: Vec<u64> = std::iter::from_fn(|| deliveries.try_recv().ok())
            .map(|q| match &q.item {
                Item::Message(m) => m.seq(),
                _ => 0,
            })
            .collect();
        assert_eq!(seqs, vec![1, 2]);
    }

    /// Asked once the transport holds its socket, the check says no for a subscription
    /// closed meanwhile (a notice closed it), and the message is queued, not written.
    #[test]
    fn a_closed_subscription_is_not_written_directly() {
        let topic = Topic::parse("t", 200).expect("a topic");
        let wake: Weak<dyn CatchUpWake> = Weak::<NoCatchUp>::new();
        let (outbound, _deliveries) = Outbound::new(16, 1 << 20);
        let writes = Arc::new(Writes(std::sync::atomic::AtomicUsize::new(0)));
        outbound.set_direct(Box::new(writes.clone()));
        let sub =
            Subscription::new(topic.clone(), outbound.clone(), Position { epoch: "e".into(), last: 0 }, wake, false);
        sub.close();
        let m = Arc::new(Delivered::new(topic, "e".into(), StoredMessage { seq: 1, envelope: Err(b"x".to_vec()) }));
        let mut budget = 1;
        assert!(outbound.offer_message(&sub, &m, &mut budget).is_ok());
        assert_eq!((writes.0.load(Ordering::SeqCst), budget), (0, 1), "queued, not written");
    }

    /// `ws.outbound_queue_messages` and `ws.outbound_queue_bytes` at their edges.
    #[test]
    fn the_queue_bounds_hold_at_their_edges() {
        let b = bounds(3, 100);
        assert!(b.try_take(40) && b.try_take(60), "exactly the byte bound fits");
        assert!(!b.try_take(1), "one byte more does not");
        assert!(b.try_take(0), "an item without bytes still fits while items are left");
        assert!(!b.try_take(0), "the item bound is reached");
        b.give_back(60);
        assert!(!b.try_take(61) && b.try_take(60), "room comes back with the share");
        let b = bounds(2, 100);
        assert!(b.try_take(100), "a message counted as the whole byte bound fits an empty queue");
        assert!(b.try_take(0) && !b.try_take(0));
    }

    #[tokio::test]
    async fn a_push_waits_for_room_and_a_cancelled_wait_holds_nothing() {
        use futures::FutureExt;
        let b = bounds(1, 10);
        assert!(b.try_take(10));
        let mut waiting = Box::pin(b.take(5));
        assert!(waiting.as_mut().now_or_never().is_none(), "waits while the queue is full");
        b.give_back(10);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("woken by the room made");
        assert!(!b.try_take(0), "the waiter took the room");
        let cancelled = Box::pin(b.take(5));
        assert!(cancelled.now_or_never().is_none());
        assert_eq!(b.waiting.load(Ordering::SeqCst), 0, "a dropped wait stops counting");
        b.give_back(5);
        assert!(b.try_take(10), "nothing was held by the cancelled wait");
    }

    /// A waiting push is served before live offers (which would otherwise take every
    /// share given back, and starve a push that needs more room than one share).
    #[tokio::test]
    async fn room_given_back_goes_to_a_waiting_push_before_live_offers() {
        use futures::FutureExt;
        let b = bounds(4, 100);
        assert!(b.offer_take(10) && b.offer_take(10) && b.offer_take(10));
        assert!(b.try_take(60), "the bytes are full");
        let mut push = Box::pin(b.take(50));
        assert!(push.as_mut().now_or_never().is_none(), "the push waits for 50 bytes");
        b.give_back(10);
        assert!(!b.offer_take(1), "an offer is refused while the push waits, though 1 byte would fit");
        b.give_back(60);
        tokio::time::timeout(std::time::Duration::from_secs(5), push).await.expect("the push got its room");
        assert_eq!(b.waiting.load(Ordering::SeqCst), 0);
        assert!(b.offer_take(0), "offers go on once no push waits");
    }

    /// Every slot of the outbound queue is the size of its largest item.
    #[test]
    fn a_queued_item_stays_small() {
        assert_eq!(std::mem::size_of::<Item>(), 16);
        assert!(std::mem::size_of::<Queued>() <= 24, "Queued is {} bytes", std::mem::size_of::<Queued>());
    }
}
