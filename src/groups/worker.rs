//! The delivery worker of a push (webhook or Rust handler) group on one node: reads with XREADGROUP on its
//! own connection (on Redis Cluster, one to the primary of the group's slot, so another
//! primary's failure does not stall it: store/shards.rs), keeps at most `concurrency` deliveries in flight, and settles each one
//! with one atomic call (ack, or retry schedule / dead letter). It never sleeps to retry:
//! a failure is scheduled in Redis and comes back through the group's retry stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::fetch::{Fetcher, ReclaimClock};
use super::handler::Handler;
use super::webhook::{Outcome, Webhook};
use super::Group;
use crate::store::groups::{AckStatus, Failure, GroupDelivery, Lease};
use crate::store::Store;

/// Longest blocking read; shutdown is noticed within it.
const BLOCK: Duration = Duration::from_millis(1000);

/// Where a push group's deliveries go.
pub(super) enum Target {
    Webhook(Webhook),
    Handler(Arc<dyn Handler>),
}

impl Target {
    async fn deliver(&self, topic: &str, group: &str, epoch: &str, d: GroupDelivery, timeout: Duration) -> Outcome {
        match self {
            // Boxed: an HTTP request's future is large, and inline it would be moved into
            // (and reserved by) the task of every delivery, the handler's too.
            Target::Webhook(w) => Box::pin(w.deliver(topic, group, epoch, &d)).await,
            Target::Handler(h) => {
                // A panicking or hanging handler is a failed attempt, not a dead worker: the
                // panic is caught, and a call past its timeout is dropped (cancelled).
                use futures::FutureExt;
                let call = std::panic::AssertUnwindSafe(h.handle(d)).catch_unwind();
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(panic)) => {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a non-string payload".into());
                        Outcome::Retry { error: format!("handler panicked: {message}"), after: None }
                    }
                    Err(_) => Outcome::Retry { error: format!("handler took longer than {timeout:?}"), after: None },
                }
            }
        }
    }
}

pub(super) struct Worker {
    group: Arc<Group>,
    store: Store,
    target: Target,
    consumer: String,
    sweep: Duration,
    grace: Duration,
    /// One permit per delivery in flight (`concurrency`).
    permits: Arc<Semaphore>,
    /// The deliveries being handled, and acknowledgements on their way (tokens).
    in_flight: TaskTracker,
    /// Set by `run`: the batcher that settles finished deliveries together.
    acks: std::sync::OnceLock<Acks>,
    /// The topic's epoch, for the X-Streamhub-Epoch header (read every sweep interval).
    epoch: std::sync::Mutex<Arc<str>>,
    /// When the read loop last read (and reclaimed, when due); see [`Worker::may_refill`].
    last_round: std::sync::Mutex<Instant>,
    target_duration: metrics::Histogram,
}

/// Most acknowledgements sent in one call.
const ACK_BATCH: usize = 256;

/// A delivery its target answered, on its way to be settled (acknowledged, or failed:
/// `failure` with its error text): its in-flight slot is held until the settle is stored —
/// then passed on to a delivery read in the same round trip, or freed — and the token
/// keeps a shutdown waiting for it.
struct Finished {
    lease: Lease,
    failure: Option<(Failure, String)>,
    permit: OwnedSemaphorePermit,
    _token: TaskTrackerToken,
}

/// Settles the deliveries that finished at about the same time in one round trip — one
/// ack call for all the acknowledged, one fail call for all the failed — which also reads as many
/// new deliveries (`Store::group_settle_read`): each new one takes over the slot of a
/// settled one, so a busy worker's slots cost one round trip per cycle, not a settle's
/// and then a read's. The in-flight bound (and with it the duplicates a crash can cause)
/// is unchanged: a slot is released or passed on only once its settle is stored.
struct Acks {
    tx: tokio::sync::mpsc::UnboundedSender<Finished>,
}

/// Ack round trips a worker keeps in flight at once: while one is on its way, the
/// deliveries that finish gather for the next, so Redis and the worker work at the same
/// time instead of taking turns.
const ACK_DEPTH: usize = 2;

impl Acks {
    fn start(worker: &Arc<Worker>, shutdown: CancellationToken) -> Acks {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
        // The batcher holds the worker weakly: it ends when the worker is gone (its
        // sender with it), and needs the worker only to hand out what it read.
        let weak = Arc::downgrade(worker);
        let depth = Arc::new(Semaphore::new(ACK_DEPTH));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Deliveries handed out together tend to finish together: let the other
                // settles that are ready run first, so that one call takes them all.
                tokio::task::yield_now().await;
                let Ok(turn) = depth.clone().acquire_owned().await else { break };
                let mut batch = vec![first];
                while batch.len() < ACK_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (weak, shutdown) = (weak.clone(), shutdown.clone());
                tokio::spawn(Box::pin(async move {
                    acknowledge(weak, &shutdown, batch).await;
                    drop(turn);
                }));
            }
        });
        Acks { tx }
    }
}

/// One round trip for `batch`: its settles, and as many new deliveries read after them
/// when the worker may refill (`Worker::may_refill`), handed out with the slots.
async fn acknowledge(weak: std::sync::Weak<Worker>, shutdown: &CancellationToken, batch: Vec<Finished>) {
    let Some(worker) = weak.upgrade() else {
        // Gone: only at the very end of a shutdown; the leases stay pending and are
        // reclaimed after ack_wait.
        return;
    };
    let (store, group) = (&worker.store, &worker.group);
    let count = if worker.may_refill(shutdown) { batch.len() as u64 } else { 0 };
    let mut acks = Vec::new();
    let mut fails = Vec::new();
    for f in &batch {
        match &f.failure {
            None => acks.push(f.lease.clone()),
            Some((failure, error)) => fails.push((f.lease.clone(), *failure, error.clone())),
        }
    }
    let (topic, name) = (&group.topic, group.spec.name.as_str());
    let read = match store.group_settle_read(topic, name, &worker.consumer, &acks, &fails, &group.policy, count).await {
        Ok(settled) => {
            count_acks(&group.label, &settled.acks);
            for failed in &settled.fails {
                crate::metrics::group_outcome(&group.label, failed.status.as_str(), 1);
            }
            settled.read
        }
        Err(e) => {
            tracing::warn!(group = %group.label, error = %e, settles = batch.len(), "settling failed; the messages will be redelivered");
            if !acks.is_empty() {
                crate::metrics::group_outcome(&group.label, "ack_failed", acks.len() as u64);
            }
            if !fails.is_empty() {
                crate::metrics::group_outcome(&group.label, "fail_failed", fails.len() as u64);
            }
            Vec::new()
        }
    };
    if read.is_empty() {
        return;
    }
    // Screened like every read (past TTL, attempts used up); what the screen cannot
    // settle stays pending and is reclaimed after ack_wait.
    let read = match super::fetch::screen(store, group, read).await {
        Ok(read) => read,
        Err(e) => {
            tracing::warn!(group = %group.label, error = %e, "screening a read failed");
            Vec::new()
        }
    };
    let epoch = worker.epoch();
    let mut slots = batch.into_iter().map(|f| f.permit);
    for delivery in read {
        let (w, epoch, slot) = (worker.clone(), epoch.clone(), slots.next());
        // Boxed: the delivery's future is large, and a task's future is moved several
        // times as the task is made (a pointer is moved instead).
        worker.in_flight.spawn(Box::pin(async move {
            // A read of both streams may return more than it acknowledged (up to as many
            // again of due retries): those wait for a slot.
            let permit = match slot {
                Some(p) => p,
                None => match w.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            w.settle(delivery, &epoch, permit).await
        }));
    }
}

/// Counts an ack call's outcomes, one counter update per status.
fn count_acks(label: &str, statuses: &[AckStatus]) {
    for status in [AckStatus::Acked, AckStatus::LeaseExpired, AckStatus::Unknown] {
        let n = statuses.iter().filter(|s| **s == status).count() as u64;
        if n > 0 {
            crate::metrics::group_outcome(label, status.as_str(), n);
        }
    }
}

impl Worker {
    pub fn new(
        group: Arc<Group>,
        store: Store,
        target: Target,
        consumer: String,
        sweep: Duration,
        grace: Duration,
    ) -> Worker {
        let target_duration =
            metrics::histogram!(crate::metrics::GROUP_TARGET_DURATION, "group" => group.label.clone());
        Worker {
            permits: Arc::new(Semaphore::new(group.spec.concurrency)),
            group,
            store,
            target,
            consumer,
            sweep,
            grace,
            in_flight: TaskTracker::new(),
            acks: std::sync::OnceLock::new(),
            epoch: std::sync::Mutex::new(Arc::from("")),
            last_round: std::sync::Mutex::new(Instant::now()),
            target_duration,
        }
    }

    fn epoch(&self) -> Arc<str> {
        self.epoch.lock().map(|e| e.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Whether the ack batcher may read new deliveries into the slots it frees. Not when
    /// stopping or paused, and not when the read loop has not read for a sweep interval:
    /// a worker whose batcher refilled every slot would otherwise never reclaim expired
    /// leases or refresh the epoch; the slots freed then wake the read loop instead.
    fn may_refill(&self, shutdown: &CancellationToken) -> bool {
        let fresh = self.last_round.lock().map(|t| t.elapsed() < self.sweep).unwrap_or(false);
        fresh && !shutdown.is_cancelled() && !self.group.is_paused()
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let worker = Arc::new(self);
        let _ = worker.acks.set(Acks::start(&worker, shutdown.clone()));
        let g = worker.group.clone();
        let reader = match worker.store.blocking_reader() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(group = %g.label, error = %e, "worker cannot open its connection");
                return;
            }
        };
        let mut fetcher = Fetcher::new(
            g.clone(),
            worker.store.clone(),
            worker.consumer.clone(),
            reader,
            ReclaimClock::Own(None),
            worker.sweep,
        );
        let permits = worker.permits.clone();
        let mut epoch_read: Option<Instant> = None;
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            if g.is_paused() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(worker.sweep) => continue,
                }
            }
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            // Settles that finished together (one ack batch) release their slots one after
            // another as their tasks run: let them, so that one read fills all of them.
            tokio::task::yield_now().await;
            let free = 1 + permits.available_permits() as u64;
            if epoch_read.is_none_or(|t| t.elapsed() >= worker.sweep) {
                epoch_read = Some(Instant::now());
                if let Ok(info) = worker.store.topic_info(&g.topic).await {
                    let epoch: Arc<str> = Arc::from(info.position.epoch.unwrap_or_default());
                    if let Ok(mut e) = worker.epoch.lock() {
                        *e = epoch;
                    }
                }
            }
            if let Ok(mut t) = worker.last_round.lock() {
                *t = Instant::now();
            }
            let round = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = fetcher.round(free, Some(BLOCK)) => r,
            };
            let batch = match round {
                Ok(batch) => {
                    failures = 0;
                    batch
                }
                Err(e) => {
                    failures += 1;
                    let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                    tracing::debug!(group = %g.label, error = %e, ?delay, "group read failed");
                    drop(first);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            let mut first = Some(first);
            let epoch = worker.epoch();
            for delivery in batch {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let (w, epoch) = (worker.clone(), epoch.clone());
                worker.in_flight.spawn(Box::pin(async move { w.settle(delivery, &epoch, permit).await }));
            }
        }
        // Shutdown: fetch nothing more; in-flight deliveries (and acks on their way) get
        // the grace period. What is not settled stays pending and is reclaimed by another
        // consumer after ack_wait.
        worker.in_flight.close();
        if tokio::time::timeout(worker.grace, worker.in_flight.wait()).await.is_err() {
            tracing::warn!(group = %g.label, "in-flight deliveries left pending at shutdown");
        }
        fetcher.close().await;
    }

    /// One call of the target, timed.
    async fn call_target(&self, d: GroupDelivery, epoch: &str) -> Outcome {
        let g = &self.group;
        let started = Instant::now();
        let timeout = Duration::from_millis(g.spec.timeout_ms);
        let outcome = self.target.deliver(g.topic.as_str(), &g.spec.name, epoch, d, timeout).await;
        self.target_duration.record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Delivers one (screened) message and hands the outcome, with the delivery's slot, to
    /// the batcher that settles it.
    async fn settle(&self, d: GroupDelivery, epoch: &str, permit: OwnedSemaphorePermit) {
        let lease = d.lease.clone();
        let failure = match self.call_target(d, epoch).await {
            Outcome::Ack => None,
            Outcome::Retry { error, after } => Some((Failure::Retry(after), error)),
            Outcome::Permanent { error } => Some((Failure::Permanent, error)),
        };
        let finished = Finished { lease, failure, permit, _token: self.in_flight.token() };
        let unsent = match self.acks.get() {
            Some(acks) => acks.tx.send(finished).err().map(|e| e.0),
            None => Some(finished),
        };
        if let Some(finished) = unsent {
            // No batcher (only while stopping): settle alone (boxed, as rare as it is).
            Box::pin(self.settle_alone(finished)).await;
        }
    }

    /// Settles one delivery with its own call.
    async fn settle_alone(&self, finished: Finished) {
        let g = &self.group;
        let (topic, name) = (&g.topic, g.spec.name.as_str());
        let outcome = match &finished.failure {
            None => match self.store.group_ack(topic, name, std::slice::from_ref(&finished.lease)).await.as_deref() {
                Ok([status]) => status.as_str(),
                _ => "ack_failed",
            },
            Some((failure, error)) => {
                match self.store.group_fail(topic, name, &finished.lease, *failure, &g.policy, error).await {
                    Ok(failed) => failed.status.as_str(),
                    Err(_) => "fail_failed",
                }
            }
        };
        crate::metrics::group_outcome(&g.label, outcome, 1);
    }
}
