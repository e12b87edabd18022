//! How every member of a group takes deliveries — the webhook/handler worker, the HTTP
//! pull fetch and the WebSocket consumer alike: reclaim expired leases (at most once per
//! sweep interval), read due retries and new messages, and screen out what must not be
//! handed out (past its TTL, attempts used up). One round is one call of [`Fetcher::round`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Group;
use crate::clock::now_ms;
use crate::store::groups::{Failure, GroupDelivery, GroupReader};
use crate::store::{Store, StoreError};

/// Whose clock decides when a member reclaims expired leases.
#[derive(Debug)]
pub enum ReclaimClock {
    /// The group's clock on this node, shared by every HTTP pull fetch: at most one of
    /// them reclaims per interval (a reclaim per fetch would cost each fetch a round trip).
    Shared,
    /// The member's own: a worker or a WebSocket consumer reclaims for itself.
    Own(Option<Instant>),
}

/// One member's way of taking deliveries from its group.
pub struct Fetcher {
    group: Arc<Group>,
    store: Store,
    /// The Redis consumer name this member reads as.
    consumer: String,
    /// A pooled connection (non-blocking reads) or one of its own (blocking reads; on
    /// Redis Cluster, to the primary of the group's slot).
    reader: GroupReader,
    reclaim: ReclaimClock,
    /// The reclaim interval (`groups.sweep_interval_ms`).
    every: Duration,
}

impl Fetcher {
    pub fn new(
        group: Arc<Group>,
        store: Store,
        consumer: String,
        reader: impl Into<GroupReader>,
        reclaim: ReclaimClock,
        every: Duration,
    ) -> Fetcher {
        Fetcher { group, store, consumer, reader: reader.into(), reclaim, every }
    }

    /// Closes the member's own connection, if it has one.
    pub async fn close(self) {
        self.reader.close().await;
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    fn reclaim_due(&mut self) -> bool {
        match &mut self.reclaim {
            ReclaimClock::Shared => self.group.fetch_reclaim_due(self.every),
            ReclaimClock::Own(last) => {
                let due = last.is_none_or(|t| t.elapsed() >= self.every);
                if due {
                    *last = Some(Instant::now());
                }
                due
            }
        }
    }

    /// Up to `want` deliveries (the read's count applies to each of the group's two
    /// streams, so a round may return more): reclaimed ones first, then new ones read
    /// with `block` when nothing was reclaimed; screened.
    pub async fn round(&mut self, want: u64, block: Option<Duration>) -> Result<Vec<GroupDelivery>, StoreError> {
        let g = self.group.clone();
        let mut batch = Vec::new();
        if self.reclaim_due() {
            let (deleted, reclaimed) =
                self.store.group_reclaim(&g.topic, &g.spec.name, &self.consumer, g.ack_wait(), want).await?;
            if deleted > 0 {
                tracing::warn!(group = %g.label, deleted, "pending entries were deleted from the stream; acked");
                crate::metrics::group_outcome(&g.label, "deleted", deleted);
            }
            crate::metrics::group_reclaimed(&g.label, reclaimed.len());
            batch = reclaimed;
        }
        if (batch.len() as u64) < want {
            let block = if batch.is_empty() { block } else { None };
            let more = want - batch.len() as u64;
            batch.extend(
                self.store.group_read(&mut self.reader, &g.topic, &g.spec.name, &self.consumer, more, block).await?,
            );
        }
        screen(&self.store, &g, batch).await
    }
}

/// Why a delivery must not be handed out, if it must not.
fn refusal(g: &Group, d: &GroupDelivery, now: u64) -> Option<(Failure, String)> {
    match &d.envelope {
        Ok(e) if e.is_expired(now) => {
            Some((Failure::Expired { to_dlq: g.expired_to_dlq() }, "expired before delivery".to_string()))
        }
        _ if d.attempt > g.policy.max_attempts => Some((
            Failure::Permanent,
            d.last_error.clone().unwrap_or_else(|| format!("delivered {} times without an ack", d.attempt - 1)),
        )),
        _ => None,
    }
}

/// Settles, instead of handing out, deliveries that must not reach a consumer: past their
/// TTL (expired: dropped or dead-lettered per `on_expiry`), or already delivered
/// `max_attempts` times (a lease that keeps expiring: dead-lettered). Returns the rest,
/// counted as delivered.
pub async fn screen(store: &Store, g: &Group, batch: Vec<GroupDelivery>) -> Result<Vec<GroupDelivery>, StoreError> {
    let now = now_ms();
    let mut keep = Vec::with_capacity(batch.len());
    for d in batch {
        match refusal(g, &d, now) {
            Some((failure, error)) => {
                let failed = store.group_fail(&g.topic, &g.spec.name, &d.lease, failure, &g.policy, &error).await?;
                crate::metrics::group_outcome(&g.label, failed.status.as_str(), 1);
            }
            None => keep.push(d),
        }
    }
    crate::metrics::group_delivered(&g.label, keep.len());
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GroupSpec;
    use crate::envelope::Envelope;
    use crate::store::groups::{Lease, Source};

    fn group(max_attempts: u32, on_expiry: &str) -> Group {
        let spec: GroupSpec = toml::from_str(&format!(
            "topic = \"t\"\nname = \"g\"\ntarget = \"pull\"\nmax_attempts = {max_attempts}\non_expiry = \"{on_expiry}\"\n"
        ))
        .expect("spec");
        super::super::build(spec, true, 0)
    }

    fn delivery(attempt: u32, published_ms: u64, ttl_ms: Option<u64>) -> GroupDelivery {
        let envelope = Envelope {
            version: 1,
            id: "m".into(),
            published_ms,
            ttl_ms,
            content_type: "text/plain".into(),
            headers: Default::default(),
            payload: b"x".to_vec(),
            from: None,
        };
        GroupDelivery {
            lease: Lease { source: Source::Main, id: "1-0".into(), count: attempt as u64 },
            seq: 1,
            attempt,
            last_error: (attempt > 1).then(|| "boom".to_string()),
            envelope: Ok(envelope),
        }
    }

    #[test]
    fn screening_refuses_expired_and_used_up_deliveries_and_passes_the_rest() {
        let g = group(3, "dlq");
        let now = 10_000;
        // Live: no TTL, within the TTL, exactly at its end (expired only once past it).
        assert_eq!(refusal(&g, &delivery(1, 9_000, None), now), None);
        assert_eq!(refusal(&g, &delivery(1, 9_000, Some(5_000)), now), None);
        assert_eq!(refusal(&g, &delivery(1, 9_000, Some(1_000)), now), None, "ts + ttl == now is not past");
        // Past its TTL: expired, dead-lettered because on_expiry = "dlq".
        let (failure, _) = refusal(&g, &delivery(1, 9_000, Some(999)), now).expect("expired");
        assert_eq!(failure, Failure::Expired { to_dlq: true });
        assert_eq!(
            refusal(&group(3, "drop"), &delivery(1, 0, Some(1)), now).map(|r| r.0),
            Some(Failure::Expired { to_dlq: false })
        );
        // The last allowed attempt is handed out; one more is dead-lettered with the last error.
        assert_eq!(refusal(&g, &delivery(3, now, None), now), None);
        let (failure, error) = refusal(&g, &delivery(4, now, None), now).expect("used up");
        assert_eq!((failure, error.as_str()), (Failure::Permanent, "boom"));
        // Expiry wins over used-up attempts.
        assert_eq!(refusal(&g, &delivery(9, 0, Some(1)), now).map(|r| r.0), Some(Failure::Expired { to_dlq: true }));
        // An entry that is not an envelope has no TTL: only its attempts count.
        let mut raw = delivery(1, 0, None);
        raw.envelope = Err(b"junk".to_vec());
        assert_eq!(refusal(&g, &raw, now), None);
    }
}
