//! Reading topics: history after a position, a topic's info, and the topic listing.

use super::access::{Caller, Grant, Subscribe};
use super::Ops;
use crate::config::TopicRetention;
use crate::error::{Code, Error, Result};
use crate::store::{HistoryPage, TopicInfo};

/// Messages per history page when the request names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// A history request: messages with seq > `since`, at most `limit` (capped at
/// `limits.max_history_limit`).
#[derive(Debug, Clone, Default)]
pub struct HistoryRequest {
    pub since: u64,
    pub limit: Option<usize>,
}

/// A page of history: the messages after `since` that have not expired, and how the
/// reader goes on.
#[derive(Debug, Clone)]
pub struct History {
    /// The position snapshot and the messages (expired ones left out).
    pub page: HistoryPage,
    /// Messages of this page left out because they had expired (never a gap: their seqs
    /// were simply not due any more).
    pub expired: u64,
    /// The seq the next page starts after: the last seq this page covered, expired or
    /// not (`since` when it covered none).
    pub next_since: u64,
}

/// A topic's state and the retention that applies to it.
#[derive(Debug, Clone)]
pub struct TopicState {
    pub info: TopicInfo,
    pub retention: TopicRetention,
}

/// The listing of topics (an admin operation).
#[derive(Debug, Clone)]
pub struct TopicList {
    /// Sorted names, at most `limits.max_topics_listed`.
    pub topics: Vec<String>,
    /// More topics exist; the list is a sorted subset.
    pub truncated: bool,
}

impl Ops {
    /// One page of history and the topic's position, from one snapshot.
    /// `404 topic_not_found` for a topic with neither an epoch nor retained entries.
    /// Expired messages are left out (counted in `expired`); `next_since` says where the
    /// next page starts, so a page of nothing but expired messages still moves the reader on.
    pub async fn history(&self, grant: &Grant<Subscribe>, request: &HistoryRequest) -> Result<History> {
        let limit = request.limit.unwrap_or(DEFAULT_HISTORY_LIMIT).min(self.config.limits.max_history_limit);
        let mut page = self.store.read_since(grant.topic(), request.since, limit).await?;
        if page.position.epoch.is_none() && page.position.first_retained == 0 {
            return Err(Error::new(Code::TopicNotFound, format!("topic {} has no messages", grant.topic())));
        }
        crate::metrics::history_read(page.truncated(request.since));
        let next_since = page.messages.last().map_or(request.since, |m| m.seq);
        let now = crate::clock::now_ms();
        let before = page.messages.len();
        page.messages.retain(|m| !m.envelope.as_ref().is_ok_and(|e| e.is_expired(now)));
        let expired = (before - page.messages.len()) as u64;
        crate::metrics::expired_skipped("history", expired);
        Ok(History { page, expired, next_since })
    }

    /// A topic's position, length, creation time and groups. `404 topic_not_found` for a
    /// topic with no epoch, no retained entries and no consumer group.
    pub async fn topic_info(&self, grant: &Grant<Subscribe>) -> Result<TopicState> {
        let info = self.store.topic_info(grant.topic()).await?;
        if info.position.epoch.is_none() && info.length == 0 && info.groups.is_empty() {
            return Err(Error::new(Code::TopicNotFound, format!("topic {} has no messages", grant.topic())));
        }
        Ok(TopicState { info, retention: self.config.retention.for_topic(grant.topic().as_str()) })
    }

    /// Names of topics (admin): a sorted subset of at most `limit` (and of at most
    /// `limits.max_topics_listed`), flagged when there are more.
    pub async fn list_topics(&self, caller: &Caller, limit: Option<usize>) -> Result<TopicList> {
        self.access.require_admin(caller)?;
        let limit = limit.unwrap_or(usize::MAX).min(self.config.limits.max_topics_listed);
        let mut topics = self.store.list_topics(limit.saturating_add(1)).await?;
        let truncated = topics.len() > limit;
        topics.truncate(limit);
        Ok(TopicList { topics, truncated })
    }
}
