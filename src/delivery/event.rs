//! Events of a topic besides its messages: presence changes (a user joined or left) and
//! ephemeral events (typing indicators, cursors). They travel through Pub/Sub only (the
//! topic's hint channel, `store::hints::HintEvent`), at most once, and reach the live
//! subscriptions of every node; they are never stored and carry no seq.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::hints::HintEvent;
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

    /// The event a hint channel carried, with where it belongs (`(epoch, after seq)` for
    /// presence changes); None when its body does not parse.
    pub fn from_hint(topic: &Topic, event: HintEvent) -> Option<(TopicEvent, Option<(String, u64)>)> {
        match event {
            HintEvent::Presence { epoch, after, join, entry } => {
                let member: Member = serde_json::from_str(&entry).ok()?;
                let kind = if join { EventKind::Join(member) } else { EventKind::Leave(member) };
                Some((TopicEvent { topic: topic.clone(), kind }, Some((epoch, after))))
            }
            HintEvent::Ephemeral { body } => {
                let ephemeral: Ephemeral = serde_json::from_str(&body).ok()?;
                Some((TopicEvent { topic: topic.clone(), kind: EventKind::Ephemeral(ephemeral) }, None))
            }
        }
    }
}
