//! A group's dead-letter queue: list, show, and replay or purge a selection. The HTTP
//! admin routes (for a group this node serves) and the CLI (any group, straight from
//! Redis) both act here.

use super::access::{Admin, Grant};
use super::Ops;
use crate::error::{Code, Error, Result};
use crate::store::groups::DeadLetter;

/// Dead letters acted on by one replay or purge call.
const CHUNK: usize = 500;

/// Dead letters listed per page when the request names no `limit`.
pub const DEFAULT_DLQ_LIMIT: u64 = 100;

/// One page of dead letters, oldest first.
#[derive(Debug)]
pub struct DlqPage {
    pub letters: Vec<DeadLetter>,
    /// The id to pass as `after` for the next page; None on the last page.
    pub next: Option<String>,
}

/// Which dead letters a replay or purge acts on.
#[derive(Debug, Clone)]
pub enum Selection {
    Ids(Vec<String>),
    /// Every dead letter, or only those whose error contains this text.
    All {
        error_contains: Option<String>,
    },
}

/// What to do with the selected dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqAction {
    /// Back into the group's retry path with fresh attempts.
    Replay,
    /// Deleted.
    Purge,
}

/// `<ms>-<n>`, as Redis stream ids are.
pub fn valid_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
}

fn invalid_id(id: &str) -> Error {
    Error::new(Code::InvalidRequest, format!("{id:?} is not a dead-letter id (like 1700000000000-0)"))
}

impl Ops {
    /// Dead letters after `after` (an id; None = from the oldest), at most `limit`
    /// (1 to `limits.max_history_limit`, default 100).
    pub async fn dlq_list(
        &self,
        grant: &Grant<Admin>,
        group: &str,
        after: Option<&str>,
        limit: Option<u64>,
    ) -> Result<DlqPage> {
        if let Some(after) = after.filter(|a| !valid_entry_id(a)) {
            return Err(Error::new(Code::InvalidQuery, format!("after: {}", invalid_id(after).message)));
        }
        let limit = limit.unwrap_or(DEFAULT_DLQ_LIMIT).clamp(1, self.config.limits.max_history_limit as u64);
        let letters = self.store.dlq_list(grant.topic(), group, after, limit).await?;
        let next = if letters.len() as u64 == limit { letters.last().map(|d| d.id.clone()) } else { None };
        Ok(DlqPage { letters, next })
    }

    /// One dead letter by id (`404 dead_letter_not_found`).
    pub async fn dlq_show(&self, grant: &Grant<Admin>, group: &str, id: &str) -> Result<DeadLetter> {
        let (ms, n) = id
            .split_once('-')
            .and_then(|(ms, n)| Some((ms.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
            .ok_or_else(|| invalid_id(id))?;
        // The entry right after the id just before it is the id itself, if it exists.
        let before = match n {
            0 => format!("{}-{}", ms.saturating_sub(1), u64::MAX),
            n => format!("{ms}-{}", n - 1),
        };
        let page = self.store.dlq_list(grant.topic(), group, Some(&before), 1).await?;
        page.into_iter()
            .find(|d| d.id == id)
            .ok_or_else(|| Error::new(Code::DeadLetterNotFound, format!("no dead letter {id}")))
    }

    /// The ids a selection names, walking the dead letters in pages for `All`.
    async fn dlq_select(&self, grant: &Grant<Admin>, group: &str, selection: &Selection) -> Result<Vec<String>> {
        let error_contains = match selection {
            Selection::Ids(ids) if ids.is_empty() => {
                return Err(Error::new(Code::InvalidRequest, "give dead-letter ids, or select all"))
            }
            Selection::Ids(ids) => {
                if let Some(bad) = ids.iter().find(|id| !valid_entry_id(id)) {
                    return Err(invalid_id(bad));
                }
                return Ok(ids.clone());
            }
            Selection::All { error_contains } => error_contains.as_deref(),
        };
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.dlq_list(grant.topic(), group, after.as_deref(), 1000).await?;
            let Some(last) = page.last().map(|d| d.id.clone()) else { break };
            ids.extend(
                page.into_iter().filter(|d| error_contains.is_none_or(|needle| d.error.contains(needle))).map(|d| d.id),
            );
            after = Some(last);
        }
        Ok(ids)
    }

    /// Replays or purges the selected dead letters in chunks, calling `progress(done,
    /// total)` after each; returns how many were replayed or purged.
    pub async fn dlq_apply(
        &self,
        grant: &Grant<Admin>,
        group: &str,
        selection: &Selection,
        action: DlqAction,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<u64> {
        let ids = self.dlq_select(grant, group, selection).await?;
        let (mut acted, mut seen) = (0, 0);
        for chunk in ids.chunks(CHUNK) {
            acted += match action {
                DlqAction::Replay => self.store.dlq_replay(grant.topic(), group, chunk).await?,
                DlqAction::Purge => self.store.dlq_purge(grant.topic(), group, chunk).await?,
            };
            seen += chunk.len();
            progress(seen, ids.len());
        }
        Ok(acted)
    }
}
