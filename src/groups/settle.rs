//! Settling deliveries by their lease tokens — the one rule behind the HTTP `:ack` /
//! `:nack` routes and the WebSocket `ack` / `nack` ops: 1 to `groups.max_fetch` tokens,
//! a token that does not parse is answered `invalid_token` (the request still succeeds),
//! the valid ones are settled (acks in one atomic call, nacks one call each, in order),
//! and every outcome is counted.

use std::time::Duration;

use super::Group;
use crate::error::{Code, Error};
use crate::store::groups::{Failure, Lease};
use crate::store::Store;

/// Longest error text recorded with a nack (longer ones are cut).
pub const MAX_NACK_ERROR_CHARS: usize = 1024;

/// The outcome of one token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Settled {
    pub token: String,
    /// `acked`, `scheduled`, `dead`, `deleted`, `lease_expired`, `unknown` or `invalid_token`.
    pub status: &'static str,
    /// nack: the number of the delivery that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// nack with status `scheduled`: when the retry is due (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
}

/// What a nack asks for.
#[derive(Debug, Clone, Default)]
pub struct Nack {
    /// Recorded with the retry or dead letter (default "nacked by the consumer").
    pub error: Option<String>,
    /// The next attempt's delay instead of the group's backoff.
    pub retry_after: Option<Duration>,
    /// Dead-letter now.
    pub permanent: bool,
}

impl Nack {
    fn failure(&self) -> Failure {
        if self.permanent {
            Failure::Permanent
        } else {
            Failure::Retry(self.retry_after)
        }
    }

    fn error_text(&self) -> String {
        let text = self.error.as_deref().unwrap_or("nacked by the consumer");
        text.chars().take(MAX_NACK_ERROR_CHARS).collect()
    }
}

/// Parses tokens: the request's shape is checked (1 to `max`), each token on its own.
fn parse(tokens: &[String], max: usize) -> Result<Vec<Option<Lease>>, Error> {
    if tokens.is_empty() || tokens.len() > max {
        return Err(Error::new(Code::InvalidRequest, format!("1 to {max} tokens")));
    }
    Ok(tokens.iter().map(|t| Lease::parse(t)).collect())
}

fn invalid(token: String) -> Settled {
    Settled { token, status: "invalid_token", attempt: None, due_ms: None }
}

/// Acknowledges the deliveries named by `tokens` (valid ones in one atomic call).
pub async fn ack(store: &Store, g: &Group, tokens: Vec<String>, max: usize) -> Result<Vec<Settled>, Error> {
    let parsed = parse(&tokens, max)?;
    let valid: Vec<Lease> = parsed.iter().flatten().cloned().collect();
    let mut statuses =
        if valid.is_empty() { Vec::new() } else { store.group_ack(&g.topic, &g.spec.name, &valid).await? }.into_iter();
    let results: Vec<Settled> = tokens
        .into_iter()
        .zip(parsed)
        .map(|(token, lease)| match lease {
            None => invalid(token),
            Some(_) => {
                let status = statuses.next().map_or("unknown", |s| s.as_str());
                Settled { token, status, attempt: None, due_ms: None }
            }
        })
        .collect();
    count(g, &results);
    Ok(results)
}

/// Fails the deliveries named by `tokens`, one atomic call each, in order. If Redis fails
/// part-way the answer is an error; the tokens before the failure are settled.
pub async fn nack(
    store: &Store,
    g: &Group,
    tokens: Vec<String>,
    nack: &Nack,
    max: usize,
) -> Result<Vec<Settled>, Error> {
    let parsed = parse(&tokens, max)?;
    let (failure, error) = (nack.failure(), nack.error_text());
    let mut results = Vec::with_capacity(parsed.len());
    for (token, lease) in tokens.into_iter().zip(parsed) {
        let settled = match lease {
            None => invalid(token),
            Some(lease) => {
                let failed = match store.group_fail(&g.topic, &g.spec.name, &lease, failure, &g.policy, &error).await {
                    Ok(failed) => failed,
                    Err(e) => {
                        count(g, &results);
                        return Err(e.into());
                    }
                };
                let due_ms = (failed.due_ms > 0).then_some(failed.due_ms);
                let attempt = (failed.attempt > 0).then_some(failed.attempt);
                Settled { token, status: failed.status.as_str(), attempt, due_ms }
            }
        };
        results.push(settled);
    }
    count(g, &results);
    Ok(results)
}

fn count(g: &Group, results: &[Settled]) {
    for r in results {
        crate::metrics::group_outcome(&g.label, r.status, 1);
    }
}
