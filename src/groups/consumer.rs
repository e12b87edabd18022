//! A consumer attached to a session (the WebSocket `consume` op): it fetches up to
//! `prefetch` deliveries at a time for its session, and when the session ends, hands
//! every delivery still in flight back at once (a retry due now) instead of letting
//! them wait for `ack_wait`, then removes its Redis consumer from the group.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::fetch::{Fetcher, ReclaimClock};
use super::settle::{self, Nack, Settled};
use super::Group;
use crate::error::Error;
use crate::store::groups::{Failure, GroupDelivery, Lease};
use crate::store::Store;

/// Longest pause between two polls of an idle consumer.
const POLL_MAX: Duration = Duration::from_millis(200);

pub struct SessionConsumer {
    pub group: Arc<Group>,
    store: Store,
    /// The Redis consumer this session reads as (`<node>-ws-<uuid>`).
    name: String,
    /// Most tokens one ack or nack may carry (`groups.max_fetch`).
    max_tokens: usize,
    /// Deliveries read for the session and not yet settled, by token, with their share
    /// of the prefetch (none for those read while the session was closing).
    in_flight: Mutex<HashMap<String, (Lease, Option<OwnedSemaphorePermit>)>>,
    stop: CancellationToken,
    /// The fetch loop, awaited by `close` so that whatever it read is handed back.
    fetching: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SessionConsumer {
    /// Starts fetching for a session; deliveries go to `out` (at most `prefetch` unsettled).
    pub fn start(
        group: Arc<Group>,
        store: Store,
        name: String,
        prefetch: usize,
        sweep: Duration,
        max_tokens: usize,
        out: mpsc::Sender<GroupDelivery>,
    ) -> Arc<SessionConsumer> {
        let consumer = Arc::new(SessionConsumer {
            group: group.clone(),
            store: store.clone(),
            name: name.clone(),
            max_tokens,
            in_flight: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            fetching: Mutex::new(None),
        });
        let fetcher = Fetcher::new(group, store.clone(), name, store.pool_client(), ReclaimClock::Own(None), sweep);
        let task = tokio::spawn(consumer.clone().fetch_loop(fetcher, Arc::new(Semaphore::new(prefetch)), sweep, out));
        *consumer.fetching.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        consumer
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Lease, Option<OwnedSemaphorePermit>)>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn fetch_loop(
        self: Arc<Self>,
        mut fetcher: Fetcher,
        permits: Arc<Semaphore>,
        sweep: Duration,
        out: mpsc::Sender<GroupDelivery>,
    ) {
        let mut pause = Duration::from_millis(10);
        loop {
            if self.group.is_paused() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(sweep) => continue,
                }
            }
            let first = tokio::select! {
                _ = self.stop.cancelled() => return,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            // An ack releases many slots one after another: let it finish, so that one
            // read fills them all.
            tokio::task::yield_now().await;
            let free = 1 + permits.available_permits() as u64;
            // Not cancelled half-way: what a round read is pending for this consumer in
            // Redis, so it is recorded (and handed back if the session is closing).
            let round = fetcher.round(free, None).await;
            let (batch, failed) = match round {
                Ok(batch) => (batch, false),
                Err(e) => {
                    tracing::debug!(group = %self.group.label, error = %e, "consumer fetch failed");
                    (Vec::new(), true)
                }
            };
            if batch.is_empty() {
                drop(first);
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = if failed { POLL_MAX } else { (pause * 2).min(POLL_MAX) };
                continue;
            }
            pause = Duration::from_millis(10);
            let mut first = Some(first);
            let mut batch = batch.into_iter();
            while let Some(d) = batch.next() {
                let permit = match first.take() {
                    Some(p) => Some(p),
                    None => tokio::select! {
                        _ = self.stop.cancelled() => None,
                        p = permits.clone().acquire_owned() => p.ok(),
                    },
                };
                let Some(permit) = permit else {
                    // Closing: the rest is recorded, to be handed back with the others.
                    let mut in_flight = self.in_flight();
                    for d in std::iter::once(d).chain(batch.by_ref()) {
                        in_flight.insert(d.lease.token(), (d.lease.clone(), None));
                    }
                    return;
                };
                self.in_flight().insert(d.lease.token(), (d.lease.clone(), Some(permit)));
                tokio::select! {
                    _ = self.stop.cancelled() => {}
                    sent = out.send(d) => if sent.is_err() { return },
                }
            }
            if self.stop.is_cancelled() {
                return;
            }
        }
    }

    /// Forgets settled tokens (freeing prefetch room).
    fn release(&self, tokens: &[String]) {
        let mut in_flight = self.in_flight();
        for t in tokens {
            in_flight.remove(t);
        }
    }

    pub async fn ack(&self, tokens: Vec<String>) -> Result<Vec<Settled>, Error> {
        let settled = settle::ack(&self.store, &self.group, tokens.clone(), self.max_tokens).await?;
        self.release(&tokens);
        Ok(settled)
    }

    pub async fn nack(&self, tokens: Vec<String>, nack: &Nack) -> Result<Vec<Settled>, Error> {
        let settled = settle::nack(&self.store, &self.group, tokens.clone(), nack, self.max_tokens).await?;
        self.release(&tokens);
        Ok(settled)
    }

    /// Stops fetching, hands back what is still in flight (due at once, attempt + 1) and
    /// removes this consumer from the group. If Redis cannot be reached, the deliveries
    /// come back after `ack_wait` instead, and the consumer is pruned later.
    pub async fn close(&self) {
        self.stop.cancel();
        let fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = fetching {
            // A round in progress ends within the command timeout; what it read is recorded.
            let _ = task.await;
        }
        let g = &self.group;
        let leases: Vec<Lease> = self.in_flight().drain().map(|(_, (lease, _))| lease).collect();
        for lease in leases {
            let failure = Failure::Retry(Some(Duration::ZERO));
            let handed_back = self
                .store
                .group_fail(&g.topic, &g.spec.name, &lease, failure, &g.policy, "consumer disconnected")
                .await;
            if let Ok(failed) = handed_back {
                crate::metrics::group_outcome(&g.label, failed.status.as_str(), 1);
            }
        }
        if let Err(e) = self.store.group_delete_consumer(&g.topic, &g.spec.name, &self.name).await {
            tracing::debug!(group = %g.label, consumer = %self.name, error = %e, "cannot remove the consumer yet");
        }
    }
}
