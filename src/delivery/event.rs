//! Events of a topic besides its messages: presence changes (a user joined or left) and
//! ephemeral events (typing indicators, cursors). Neither carries a seq, and both reach
//! only the live subscriptions of every node, at most once. Joins and leaves are kept a
//! short while in the topic's events stream and read by each tail with the messages, in
//! the same snapshot, so they arrive in order with them (`store::presence::TailPage`);
//! ephemeral events travel through Pub/Sub only (the topic's hint channel,
//! `store::hints::HintEvent`) and are never stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::hints::HintEvent;
use crate::store::presence::PresenceRecord;
use crate::topic::Topic;

/// A subscriber as presence shows it: its client (connection) id, its user (the
/// principal's subject; "" for anonymous clients) and the info it chose to share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub client: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// An ephemeral event: delivered to the subscribers present when it is published, never
/// stored, without seq or epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ephemeral {
    /// Who sent it (client id and user, as in presence).
    pub client: String,
    pub user: String,
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Join(Member),
    Leave(Member),
    Ephemeral(Ephemeral),
}

/// One event of a topic, shared by every local subscription that gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicEvent {
    pub topic: Topic,
    pub kind: EventKind,
}

impl TopicEvent {
    /// True for join and leave (only subscriptions that asked for them get them).
    pub fn is_presence(&self) -> bool {
        matches!(self.kind, EventKind::Join(_) | EventKind::Leave(_))
    }

    /// The ephemeral event a hint channel carried; None when its body does not parse.
    pub fn from_hint(topic: &Topic, event: HintEvent) -> Option<TopicEvent> {
        let HintEvent::Ephemeral { body } = event;
        let ephemeral: Ephemeral = serde_json::from_str(&body).ok()?;
        Some(TopicEvent { topic: topic.clone(), kind: EventKind::Ephemeral(ephemeral) })
    }

    /// The join or leave a tail read; None when its entry does not parse.
    pub fn from_record(topic: &Topic, record: &PresenceRecord) -> Option<TopicEvent> {
        let member: Member = serde_json::from_str(&record.entry).ok()?;
        let kind = if record.join { EventKind::Join(member) } else { EventKind::Leave(member) };
        Some(TopicEvent { topic: topic.clone(), kind })
    }
}
