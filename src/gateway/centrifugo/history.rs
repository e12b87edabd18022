//! History in the Centrifugo protocol's terms, shared by the client `history` command and
//! the server API's `history` method: `limit` 0 = only the position, -1 = as many as
//! `limits.max_history_limit`, N = at most N; `since` = after that offset (before it when
//! `reverse`); a `since.epoch` other than the topic's = 112 unrecoverable position.

use super::codec::Format;
use super::codes::{self, reply_error};
use super::encode::envelope_publication;
use super::proto::{self, HistoryResult, StreamPosition};
use crate::error::{Code, Error};
use crate::ops::access::{Caller, Subscribe};
use crate::ops::topics::HistoryRequest;
use crate::ops::Ops;

/// A refused command: the protocol's error, and whether it counts as the client's fault
/// (`ws.max_violations`).
#[derive(Debug)]
pub struct Refused {
    pub error: proto::Error,
    pub client_fault: bool,
}

impl Refused {
    pub fn protocol(code: u32, message: &str) -> Refused {
        Refused { error: proto::Error { code, message: message.into(), temporary: false }, client_fault: true }
    }
}

impl From<Error> for Refused {
    fn from(e: Error) -> Refused {
        Refused { error: reply_error(&e), client_fault: e.code.is_client_fault() }
    }
}

pub async fn history(
    ops: &Ops,
    caller: &Caller,
    format: Format,
    channel: &str,
    limit: i32,
    since: Option<StreamPosition>,
    reverse: bool,
) -> Result<HistoryResult, Refused> {
    let grant = ops.access().grant::<Subscribe>(caller, channel)?;
    let max = ops.config().limits.max_history_limit;
    let limit = match limit {
        n if n < 0 => max,
        n => (n as usize).min(max),
    };
    let read = |since: u64, limit: usize| {
        let grant = &grant;
        async move {
            match ops.history(grant, &HistoryRequest { since, limit: Some(limit) }).await {
                Ok(h) => Ok(Some(h)),
                // A topic nobody published to has an empty history.
                Err(e) if e.code == Code::TopicNotFound => Ok(None),
                Err(e) => Err(Refused::from(e)),
            }
        }
    };
    // The position (and, without `since` going forward, the first page) in one read.
    let Some(head) = read(0, if reverse || since.is_some() { 0 } else { limit }).await? else {
        return Ok(HistoryResult { publications: Vec::new(), epoch: String::new(), offset: 0 });
    };
    let epoch = head.page.position.epoch.clone().unwrap_or_default();
    let top = head.page.position.top;
    if let Some(s) = &since {
        if !s.epoch.is_empty() && s.epoch != epoch && !head.page.position.carries_over(&s.epoch, s.offset) {
            return Err(Refused::protocol(codes::UNRECOVERABLE_POSITION, "unrecoverable position: the epoch changed"));
        }
    }
    let messages = match (&since, reverse) {
        _ if limit == 0 => Vec::new(),
        (None, false) => head.page.messages,
        (Some(s), false) => read(s.offset, limit).await?.map(|h| h.page.messages).unwrap_or_default(),
        (since, true) => {
            let before = match since {
                Some(s) if s.offset == 0 => {
                    return Err(Refused::protocol(107, "bad request: reverse history needs since.offset > 0"));
                }
                Some(s) => s.offset,
                None => top.saturating_add(1),
            };
            let from = before.saturating_sub(1).saturating_sub(limit as u64);
            let mut messages = read(from, limit).await?.map(|h| h.page.messages).unwrap_or_default();
            messages.retain(|m| m.seq < before);
            messages.reverse();
            messages
        }
    };
    let publications = messages.iter().map(|m| envelope_publication(format, m.seq, &m.envelope)).collect();
    Ok(HistoryResult { publications, epoch, offset: top })
}
