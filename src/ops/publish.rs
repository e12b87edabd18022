//! Publish, single and batch: every message checked against the limits before any is
//! sent, the caller's publish budget spent only by a valid request, one atomic store
//! call, the outcome counted. HTTP, WebSocket `publish` frames and the CLI publish here.

use std::time::Instant;

use super::access::{Caller, Grant, Publish};
use super::Ops;
use crate::error::{Code, Error, Result};
use crate::message::{NewMessage, OutgoingMessage};
use crate::metrics;
use crate::store::Published;

impl Ops {
    /// Stores one message; acknowledged (Ok) only once it is in the topic's stream (and,
    /// with `durability = "replicated"`, confirmed by the replicas).
    pub async fn publish(&self, caller: &Caller, grant: &Grant<Publish>, message: NewMessage) -> Result<Published> {
        let checked = self.with_default_ttl(grant, message).check(&self.config.limits).map_err(Error::from);
        let mut checked = counted(checked.and_then(|m| self.access.spend_publish(caller, 1).map(|()| m)))?;
        checked.envelope.from = caller.publisher();
        let mut published = self.store_messages(grant, vec![checked]).await?;
        published.pop().ok_or_else(|| Error::internal("publish answered no result"))
    }

    /// Stores a batch atomically, with consecutive seqs. An invalid message refuses the
    /// whole batch (the error's `index` names it); nothing is stored then.
    pub async fn publish_batch(
        &self,
        caller: &Caller,
        grant: &Grant<Publish>,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Published>> {
        let limits = &self.config.limits;
        let checked = (|| {
            if messages.is_empty() {
                return Err(Error::new(Code::InvalidRequest, "a batch holds at least one message"));
            }
            if messages.len() > limits.max_batch_messages {
                return Err(Error::new(
                    Code::BatchTooLarge,
                    format!(
                        "{} messages, limit {} (limits.max_batch_messages)",
                        messages.len(),
                        limits.max_batch_messages
                    ),
                ));
            }
            let checked = messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| self.with_default_ttl(grant, m).check(limits).map_err(|e| Error::from(e).at(i)))
                .map(|m| {
                    m.map(|mut m| {
                        m.envelope.from = caller.publisher();
                        m
                    })
                })
                .collect::<Result<Vec<OutgoingMessage>>>()?;
            self.access.spend_publish(caller, checked.len() as u32)?;
            Ok(checked)
        })();
        let checked = counted(checked)?;
        self.store_messages(grant, checked).await
    }

    /// A message without a TTL gets its topic's default one (`retention.default_ttl_ms`,
    /// per topic pattern), if any.
    fn with_default_ttl(&self, grant: &Grant<Publish>, mut message: NewMessage) -> NewMessage {
        if message.ttl_ms.is_none() {
            let ttl = self.config.retention.for_topic(grant.topic().as_str()).default_ttl_ms;
            message.ttl_ms = (ttl > 0).then_some(ttl);
        }
        message
    }

    async fn store_messages(&self, grant: &Grant<Publish>, messages: Vec<OutgoingMessage>) -> Result<Vec<Published>> {
        let sizes: Vec<usize> = messages.iter().map(|m| m.envelope.payload.len()).collect();
        let started = Instant::now();
        let (results, aged_out) =
            counted(self.store.publish_counted(grant.topic(), messages).await.map_err(Error::from))?;
        let seconds = started.elapsed().as_secs_f64();
        metrics::retention_trimmed("age", aged_out);
        let (mut stored, mut duplicate) = ((0u64, 0u64), (0u64, 0u64));
        for (result, size) in results.iter().zip(sizes) {
            let slot = if result.duplicate { &mut duplicate } else { &mut stored };
            slot.0 += 1;
            slot.1 += size as u64;
        }
        self.publish_meter.published(seconds, stored, duplicate);
        Ok(results)
    }
}

/// Counts a refused publish by its code.
fn counted<T>(result: Result<T>) -> Result<T> {
    if let Err(e) = &result {
        metrics::publish_rejected(e.code.as_str());
    }
    result
}

/// A publish refused by its transport before it reached the operation (a body that does
/// not decode, a missing content type): counted like the operation's own refusals.
pub fn refused(e: Error) -> Error {
    metrics::publish_rejected(e.code.as_str());
    e
}
