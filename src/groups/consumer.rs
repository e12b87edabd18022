//! A consumer attached to a session (the WebSocket `consume` op): it fetches up to
//! `prefetch` deliveries at a time for its session, and when the session ends, hands
//! every delivery still in flight back at once (a retry due now) instead of letting
//! them wait for `ack_wait`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{screen, Group};
use crate::store::groups::{Failure, GroupDelivery, Lease};
use crate::store::{Store, StoreError};

/// Longest pause between two polls of an idle consumer.
const POLL_MAX: Duration = Duration::from_millis(200);

pub struct SessionConsumer {
    pub group: Arc<Group>,
    store: Store,
    name: String,
    /// Deliveries handed to the session and not yet settled, by token.
    in_flight: Mutex<HashMap<String, (Lease, OwnedSemaphorePermit)>>,
    stop: CancellationToken,
}

impl SessionConsumer {
    /// Starts fetching for a session; deliveries go to `out` (at most `prefetch` unsettled).
    pub fn start(
        group: Arc<Group>,
        store: Store,
        name: String,
        prefetch: usize,
        sweep: Duration,
        out: mpsc::Sender<GroupDelivery>,
    ) -> Arc<SessionConsumer> {
        let consumer = Arc::new(SessionConsumer {
            group,
            store,
            name,
            in_flight: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        });
        tokio::spawn(consumer.clone().fetch_loop(Arc::new(Semaphore::new(prefetch)), sweep, out));
        consumer
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Lease, OwnedSemaphorePermit)>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn fetch_loop(self: Arc<Self>, permits: Arc<Semaphore>, sweep: Duration, out: mpsc::Sender<GroupDelivery>) {
        let g = self.group.clone();
        let client = self.store.pool_client();
        let mut last_reclaim: Option<Instant> = None;
        let mut pause = Duration::from_millis(10);
        loop {
            if g.is_paused() {
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
            let mut batch = Vec::new();
            let mut failed = false;
            if last_reclaim.is_none_or(|t| t.elapsed() >= sweep) {
                last_reclaim = Some(Instant::now());
                match self.store.group_reclaim(&g.topic, &g.spec.name, &self.name, g.ack_wait(), free).await {
                    Ok((_, reclaimed)) => batch.extend(reclaimed),
                    Err(_) => failed = true,
                }
            }
            if (batch.len() as u64) < free && !failed {
                match self
                    .store
                    .group_read(&client, &g.topic, &g.spec.name, &self.name, free - batch.len() as u64, None)
                    .await
                {
                    Ok(read) => batch.extend(read),
                    Err(_) => failed = true,
                }
            }
            let batch = screen(&self.store, &g, batch).await.unwrap_or_default();
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
            for d in batch {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                self.in_flight().insert(d.lease.token(), (d.lease.clone(), permit));
                if out.send(d).await.is_err() {
                    return;
                }
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

    pub async fn ack(&self, leases: &[Lease]) -> Result<Vec<&'static str>, StoreError> {
        let statuses = self.store.group_ack(&self.group.topic, &self.group.spec.name, leases).await?;
        self.release(&leases.iter().map(Lease::token).collect::<Vec<_>>());
        let statuses: Vec<&'static str> = statuses.into_iter().map(|s| s.as_str()).collect();
        for status in &statuses {
            crate::metrics::group_outcome(&self.group.label, status, 1);
        }
        Ok(statuses)
    }

    pub async fn nack(&self, leases: &[Lease], failure: Failure, error: &str) -> Result<Vec<&'static str>, StoreError> {
        let mut out = Vec::with_capacity(leases.len());
        for lease in leases {
            let failed = self
                .store
                .group_fail(&self.group.topic, &self.group.spec.name, lease, failure, &self.group.policy, error)
                .await?;
            crate::metrics::group_outcome(&self.group.label, failed.status.as_str(), 1);
            out.push(failed.status.as_str());
        }
        self.release(&leases.iter().map(Lease::token).collect::<Vec<_>>());
        Ok(out)
    }

    /// Stops fetching and hands back what is still in flight (due at once, attempt + 1).
    /// If Redis cannot be reached, they come back after `ack_wait` instead.
    pub async fn close(&self) {
        self.stop.cancel();
        let leases: Vec<Lease> = self.in_flight().drain().map(|(_, (lease, _))| lease).collect();
        for lease in leases {
            let g = &self.group;
            let handed_back = self
                .store
                .group_fail(
                    &g.topic,
                    &g.spec.name,
                    &lease,
                    Failure::Retry(Some(Duration::ZERO)),
                    &g.policy,
                    "consumer disconnected",
                )
                .await;
            if let Ok(failed) = handed_back {
                crate::metrics::group_outcome(&g.label, failed.status.as_str(), 1);
            }
        }
    }
}
