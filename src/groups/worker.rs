//! The delivery worker of a push (webhook or Rust handler) group on one node: reads with XREADGROUP on its
//! own connection (on Redis Cluster, one to the primary of the group's slot, so another
//! primary's failure does not stall it: store/shards.rs), keeps at most `concurrency` deliveries in flight, and settles each one
//! with one atomic call (ack, or retry schedule / dead letter). It never sleeps to retry:
//! a failure is scheduled in Redis and comes back through the group's retry stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
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
    async fn deliver(&self, topic: &str, group: &str, epoch: &str, d: &GroupDelivery, timeout: Duration) -> Outcome {
        match self {
            Target::Webhook(w) => w.deliver(topic, group, epoch, d).await,
            Target::Handler(h) => {
                // A panicking or hanging handler is a failed attempt, not a dead worker: the
                // panic is caught, and a call past its timeout is dropped (cancelled).
                use futures::FutureExt;
                let call = std::panic::AssertUnwindSafe(h.handle(d.clone())).catch_unwind();
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
    pub group: Arc<Group>,
    pub store: Store,
    pub target: Target,
    pub consumer: String,
    pub sweep: Duration,
    pub grace: Duration,
    /// Set by `run`: the batcher that acknowledges settled deliveries together.
    pub acks: std::sync::OnceLock<Acks>,
}

/// Most acknowledgements sent in one call.
const ACK_BATCH: usize = 256;

type AckReply = tokio::sync::oneshot::Sender<Result<AckStatus, crate::store::StoreError>>;

/// Acknowledges the deliveries that finished at about the same time in one function call.
/// Each settle waits for its own answer before releasing its in-flight slot, so the
/// in-flight bound (and with it the duplicates a crash can cause) is unchanged.
pub(super) struct Acks {
    tx: tokio::sync::mpsc::Sender<(Lease, AckReply)>,
}

impl Acks {
    fn start(store: Store, group: Arc<Group>, capacity: usize) -> Acks {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Lease, AckReply)>(capacity.max(1));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < ACK_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let leases: Vec<Lease> = batch.iter().map(|(l, _)| l.clone()).collect();
                match store.group_ack(&group.topic, &group.spec.name, &leases).await {
                    Ok(statuses) => {
                        for ((_, reply), status) in batch.into_iter().zip(statuses) {
                            let _ = reply.send(Ok(status));
                        }
                    }
                    Err(e) => {
                        for (_, reply) in batch {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Acks { tx }
    }

    async fn ack(&self, lease: Lease) -> Result<AckStatus, crate::store::StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send((lease, reply))
            .await
            .map_err(|_| crate::store::StoreError::Unavailable("ack batcher stopped".into()))?;
        answer.await.map_err(|_| crate::store::StoreError::Unavailable("ack batcher stopped".into()))?
    }
}

impl Worker {
    pub async fn run(self, shutdown: CancellationToken) {
        let _ = self.acks.set(Acks::start(self.store.clone(), self.group.clone(), self.group.spec.concurrency));
        let worker = Arc::new(self);
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
        let permits = Arc::new(Semaphore::new(g.spec.concurrency));
        let in_flight = TaskTracker::new();
        let mut epoch_read: Option<Instant> = None;
        let mut epoch = String::new();
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
                // The topic's epoch, for the X-Streamhub-Epoch header.
                epoch_read = Some(Instant::now());
                if let Ok(info) = worker.store.topic_info(&g.topic).await {
                    epoch = info.position.epoch.unwrap_or_default();
                }
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
            for delivery in batch {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let (worker, epoch) = (worker.clone(), epoch.clone());
                in_flight.spawn(async move { worker.settle(delivery, &epoch, permit).await });
            }
        }
        // Shutdown: fetch nothing more; in-flight deliveries get the grace period. What is
        // not settled stays pending and is reclaimed by another consumer after ack_wait.
        in_flight.close();
        if tokio::time::timeout(worker.grace, in_flight.wait()).await.is_err() {
            tracing::warn!(group = %g.label, "in-flight deliveries left pending at shutdown");
        }
        fetcher.close().await;
    }

    async fn ack(&self, lease: Lease) -> Result<AckStatus, crate::store::StoreError> {
        match self.acks.get() {
            Some(acks) => acks.ack(lease).await,
            None => Ok(self
                .store
                .group_ack(&self.group.topic, &self.group.spec.name, &[lease])
                .await?
                .into_iter()
                .next()
                .unwrap_or(AckStatus::Unknown)),
        }
    }

    /// One call of the target, timed.
    async fn call_target(&self, d: &GroupDelivery, epoch: &str) -> Outcome {
        let g = &self.group;
        let started = Instant::now();
        let timeout = Duration::from_millis(g.spec.timeout_ms);
        let outcome = self.target.deliver(g.topic.as_str(), &g.spec.name, epoch, d, timeout).await;
        metrics::histogram!(crate::metrics::GROUP_TARGET_DURATION, "group" => g.label.clone())
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Delivers one (screened) message and records the outcome in one atomic call.
    async fn settle(&self, d: GroupDelivery, epoch: &str, _permit: OwnedSemaphorePermit) {
        let g = &self.group;
        let (failure, error) = match self.call_target(&d, epoch).await {
            Outcome::Ack => (None, String::new()),
            Outcome::Retry { error, after } => (Some(Failure::Retry(after)), error),
            Outcome::Permanent { error } => (Some(Failure::Permanent), error),
        };
        let outcome = match failure {
            None => match self.ack(d.lease.clone()).await {
                Ok(status) => status.as_str(),
                Err(e) => {
                    tracing::warn!(group = %g.label, seq = d.seq, error = %e, "ack failed; the message will be redelivered");
                    "ack_failed"
                }
            },
            Some(failure) => {
                match self.store.group_fail(&g.topic, &g.spec.name, &d.lease, failure, &g.policy, &error).await {
                    Ok(failed) => failed.status.as_str(),
                    Err(e) => {
                        tracing::warn!(group = %g.label, seq = d.seq, error = %e, "recording a failure failed; it will be redelivered");
                        "fail_failed"
                    }
                }
            }
        };
        crate::metrics::group_outcome(&g.label, outcome, 1);
    }
}
