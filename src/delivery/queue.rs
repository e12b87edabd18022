//! The queues between a session's producers (the topic tails, the catch-up reader, the
//! reader's replies) and its writer task: many senders, one receiver that takes
//! everything queued with one lock per wake-up.
//!
//! A `Mutex<VecDeque>` and one waker. Sending is a lock, a push and a wake (a wake that
//! finds the writer already woken costs one atomic operation); the receiver swaps the
//! whole queue into its own buffer and serves items from there, so a writer that wakes
//! for a burst of deliveries locks once for all of them and registers its waker once per
//! wait. An idle queue allocates nothing: `futures::channel::mpsc` allocates a node per
//! item and keeps a stub; tokio's bounded channel reserves a block of 32 slots
//! (ARCHITECTURE §6).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;
use futures::Stream;
use tokio::sync::Notify;

/// A receiver's buffer keeps at most this much capacity once empty (a burst's worth is
/// given back, so an idle session holds no large buffer).
const KEEP_CAPACITY: usize = 64;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// `QUEUED` while `state.items` is not empty, `ENDED` once every sender is gone: set
    /// and cleared under the lock, read without it, so a receiver that finds nothing
    /// takes no lock.
    flags: AtomicU8,
    /// The receiver's task, woken by every send (and by the last sender leaving).
    writer: AtomicWaker,
    /// Senders waiting for room in a bounded queue.
    room: Notify,
    /// Items the queue holds before `send` waits (`usize::MAX`: unbounded).
    bound: usize,
}

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver: bool,
}

const QUEUED: u8 = 1;
const ENDED: u8 = 2;

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a send did not queue its item (which it gives back).
#[derive(Debug, PartialEq, Eq)]
pub enum SendError<T> {
    /// The queue holds its bound (only from `try_send` of a bounded queue).
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// Why `try_recv` has no item.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    /// Every sender is gone and nothing is left.
    Closed,
}

/// A queue that never makes a sender wait (its bounds, if any, are its senders' own).
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    bounded(usize::MAX)
}

/// A queue of at most `bound` items waiting (besides those the receiver has taken):
/// `send` waits for room beyond it.
pub fn bounded<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { items: VecDeque::new(), senders: 1, receiver: true }),
        flags: AtomicU8::new(0),
        writer: AtomicWaker::new(),
        room: Notify::new(),
        bound: bound.max(1),
    });
    (Sender { shared: shared.clone() }, Receiver { shared, taken: VecDeque::new() })
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item` unless the receiver is gone or a bounded queue is full.
    pub fn try_send(&self, item: T) -> Result<(), SendError<T>> {
        {
            let mut state = self.shared.state();
            if !state.receiver {
                return Err(SendError::Closed(item));
            }
            if state.items.len() >= self.shared.bound {
                return Err(SendError::Full(item));
            }
            state.items.push_back(item);
            if state.items.len() == 1 {
                self.shared.flags.fetch_or(QUEUED, Ordering::Release);
            }
        }
        self.shared.writer.wake();
        Ok(())
    }

    /// Wakes the receiver's task with nothing queued (it looks at its queues again).
    pub fn wake(&self) {
        self.shared.writer.wake();
    }

    /// A view of whether anything is queued, which does not hold the queue open.
    pub fn probe(&self) -> Probe<T> {
        Probe { shared: self.shared.clone() }
    }

    /// Queues `item`, waiting for room in a bounded queue; gives it back when the
    /// receiver is gone.
    pub async fn send(&self, mut item: T) -> Result<(), SendError<T>> {
        match self.try_send(item) {
            Err(SendError::Full(back)) => item = back,
            done => return done,
        }
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            // Registered before the check: room made after it wakes this wait.
            room.as_mut().enable();
            match self.try_send(item) {
                Err(SendError::Full(back)) => item = back,
                done => return done,
            }
            room.await;
        }
    }
}

/// Whether a queue holds items not yet taken by its receiver (`Sender::probe`); unlike
/// a sender, it does not keep the queue open.
pub struct Probe<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Probe<T> {
    /// Nothing is queued (the receiver may still hold items it took).
    pub fn is_empty(&self) -> bool {
        self.shared.flags.load(Ordering::SeqCst) & QUEUED == 0
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.state().senders += 1;
        Sender { shared: self.shared.clone() }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.state();
            state.senders -= 1;
            if state.senders == 0 {
                self.shared.flags.fetch_or(ENDED, Ordering::Release);
            }
            state.senders == 0
        };
        if last {
            self.shared.writer.wake();
        }
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Items taken from the queue in one lock, served one by one.
    taken: VecDeque<T>,
}

impl<T> Receiver<T> {
    /// The next item: from what was taken, else everything queued is taken at once.
    /// Inlined: the writer looks at its queues several times per wake-up and mostly finds
    /// them empty, which costs a few instructions here (a call and its frame were ~40).
    #[inline]
    fn take(&mut self) -> Result<T, TryRecvError> {
        if let Some(item) = self.taken.pop_front() {
            return Ok(item);
        }
        if self.taken.capacity() > KEEP_CAPACITY {
            self.taken = VecDeque::new();
        }
        let flags = self.shared.flags.load(Ordering::Acquire);
        if flags & QUEUED == 0 {
            return Err(if flags & ENDED == 0 { TryRecvError::Empty } else { TryRecvError::Closed });
        }
        self.take_queued()
    }

    /// Takes everything queued (QUEUED was set) with one lock.
    #[inline(never)]
    fn take_queued(&mut self) -> Result<T, TryRecvError> {
        let was_full = {
            let mut state = self.shared.state();
            let was_full = state.items.len() >= self.shared.bound;
            std::mem::swap(&mut state.items, &mut self.taken);
            self.shared.flags.fetch_and(!QUEUED, Ordering::Release);
            was_full
        };
        if was_full {
            self.shared.room.notify_waiters();
        }
        // Not empty: QUEUED was set, and only this receiver takes.
        self.taken.pop_front().ok_or(TryRecvError::Empty)
    }

    /// The next item without waiting.
    #[inline]
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.take()
    }

    /// Wakes `waker` at the next send (or when the last sender goes); a caller that then
    /// looks again misses nothing sent in between.
    pub fn register(&self, waker: &Waker) {
        self.shared.writer.register(waker);
    }

    /// The next item; `Ready(None)` once every sender is gone and nothing is left.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self.take() {
            Ok(item) => return Poll::Ready(Some(item)),
            Err(TryRecvError::Closed) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        // Registered, then looked again: a send in between wakes this task.
        self.shared.writer.register(cx.waker());
        match self.take() {
            Ok(item) => Poll::Ready(Some(item)),
            Err(TryRecvError::Closed) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }

    /// Waits for the next item; None once every sender is gone and nothing is left.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<T> Stream for Receiver<T> {
    type Item = T;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.get_mut().poll_recv(cx)
    }
}

// The items are only ever moved, never pinned.
impl<T> Unpin for Receiver<T> {}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let left = {
            let mut state = self.shared.state();
            state.receiver = false;
            std::mem::take(&mut state.items)
        };
        self.shared.room.notify_waiters();
        // Dropped outside the lock: an item's drop may reach a sender.
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn items_come_in_order_and_the_end_after_the_last_sender() {
        let (tx, mut rx) = unbounded();
        let tx2 = tx.clone();
        for i in 0..5 {
            tx.try_send(i).expect("queued");
        }
        tx2.try_send(5).expect("queued");
        assert_eq!(rx.try_recv(), Ok(0));
        tx.try_send(6).expect("queued");
        let got: Vec<i32> = (0..6).map(|_| rx.try_recv().expect("item")).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "one sender is left");
        tx2.try_send(7).expect("queued");
        drop(tx2);
        assert_eq!(rx.recv().await, Some(7), "what was sent before the end still comes");
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let (tx, mut rx) = unbounded::<u32>();
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send(42).expect("queued");
        assert_eq!(waiting.await.expect("joined"), Some(42));
    }

    #[tokio::test]
    async fn a_bounded_send_waits_for_room_and_fails_once_the_receiver_is_gone() {
        let (tx, mut rx) = bounded::<u32>(2);
        tx.send(1).await.expect("room");
        tx.send(2).await.expect("room");
        assert_eq!(tx.try_send(3), Err(SendError::Full(3)));
        let mut third = Box::pin(tx.send(3));
        assert!(third.as_mut().now_or_never().is_none(), "waits while the queue holds its bound");
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(third.await, Ok(()), "taking the queue made room");
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(3));
        tx.send(4).await.expect("room");
        tx.send(5).await.expect("room");
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(6).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(blocked.await.expect("joined"), Err(SendError::Closed(6)));
        assert_eq!(tx.try_send(7), Err(SendError::Closed(7)));
    }

    #[test]
    fn a_drained_buffer_gives_back_a_bursts_capacity() {
        let (tx, mut rx) = unbounded();
        for i in 0..1000 {
            tx.try_send(i).expect("queued");
        }
        for _ in 0..1000 {
            rx.try_recv().expect("item");
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert!(rx.taken.capacity() <= KEEP_CAPACITY, "kept {}", rx.taken.capacity());
    }
}
