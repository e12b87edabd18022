//! Presence in Redis: the entries of a topic's subscribers (`lua/presence.lua`), users'
//! status, and ephemeral events. One function call per atomic step, in the topic's (or
//! the user's) slot.

use fred::interfaces::PubsubInterface;
use fred::types::Value;

use super::{library, Result, Store, StoreError};
use crate::topic::Topic;

/// A topic's presence, read in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceSnapshot {
    /// Clients present.
    pub clients: u64,
    /// Distinct users present.
    pub users: u64,
    /// Entries (JSON `{"client","user","info"}` as written), at most the limit asked for.
    pub entries: Vec<String>,
}

/// One client to add or refresh: its id, its user key and its entry JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    pub client: String,
    pub user_key: String,
    pub json: String,
}

/// A join or leave event of a topic, as its tail reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRecord {
    /// The topic's epoch when it happened ("" when it had none).
    pub epoch: String,
    /// The topic's top seq then: the event belongs after that message.
    pub after: u64,
    pub join: bool,
    /// `{"client","user","info"}`.
    pub entry: String,
}

/// What a tail of a topic with presence reads: a page of messages and the join and leave
/// events that belong within it, from one snapshot.
#[derive(Debug, Clone)]
pub struct TailPage {
    pub page: super::HistoryPage,
    pub events: Vec<PresenceRecord>,
    /// The id of the last event read (or, for a first read, of the newest one); "" when
    /// the topic has none.
    pub last_event_id: String,
}

/// A user's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserStatus {
    pub online: bool,
    pub sessions: u64,
    /// When the user was last seen (ms); 0 when never recorded.
    pub last_seen_ms: u64,
    /// The status text it set; "" when none.
    pub status: String,
}

/// A count or time as a function argument (Redis integers are signed).
fn int(v: u64) -> Value {
    Value::from(v.min(i64::MAX as u64) as i64)
}

fn two(reply: Value) -> Result<(u64, u64)> {
    let values = reply.into_array();
    match (values.first().and_then(Value::as_u64), values.get(1).and_then(Value::as_u64)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(StoreError::Protocol("presence reply is not two integers".into())),
    }
}

impl Store {
    fn presence_keys(&self, topic: &Topic) -> Vec<String> {
        let k = self.keys.presence(topic);
        vec![k.meta, k.hint, k.clients, k.expiry, k.users, k.leaving, k.leaving_entries, k.events]
    }

    /// Adds or refreshes clients of a topic; returns (added, expired entries purged).
    pub async fn presence_upsert(
        &self,
        topic: &Topic,
        now_ms: u64,
        ttl_ms: u64,
        grace_ms: u64,
        entries: &[PresenceEntry],
    ) -> Result<(u64, u64)> {
        let mut args: Vec<Value> = vec![int(now_ms), int(now_ms.saturating_add(ttl_ms)), int(grace_ms)];
        for e in entries {
            args.extend([e.client.clone().into(), e.user_key.clone().into(), e.json.clone().into()]);
        }
        two(self.call(library::PRESENCE_UPSERT, self.presence_keys(topic), args, false).await?)
    }

    /// Removes clients of a topic (their users' leaves follow after `grace_ms`); returns
    /// (removed, expired entries purged).
    pub async fn presence_leave(
        &self,
        topic: &Topic,
        now_ms: u64,
        grace_ms: u64,
        clients: &[String],
    ) -> Result<(u64, u64)> {
        let mut args: Vec<Value> = vec![int(now_ms), int(grace_ms)];
        args.extend(clients.iter().map(|c| Value::from(c.clone())));
        two(self.call(library::PRESENCE_LEAVE, self.presence_keys(topic), args, false).await?)
    }

    /// Who is present on a topic: counts and up to `limit` entries.
    pub async fn presence_list(
        &self,
        topic: &Topic,
        now_ms: u64,
        grace_ms: u64,
        limit: usize,
    ) -> Result<PresenceSnapshot> {
        let args: Vec<Value> = vec![int(now_ms), int(grace_ms), int(limit as u64)];
        let mut reply =
            self.call(library::PRESENCE_LIST, self.presence_keys(topic), args, false).await?.into_array().into_iter();
        let (clients, users) = match (reply.next().and_then(|v| v.as_u64()), reply.next().and_then(|v| v.as_u64())) {
            (Some(c), Some(u)) => (c, u),
            _ => return Err(StoreError::Protocol("presence list reply has no counts".into())),
        };
        Ok(PresenceSnapshot { clients, users, entries: reply.filter_map(|v| v.as_string()).collect() })
    }

    /// Adds or refreshes sessions of a user; returns its sessions.
    pub async fn user_upsert(&self, user: &str, deadline_ms: u64, sessions: &[String]) -> Result<u64> {
        let k = self.keys.user(user);
        let mut args: Vec<Value> = vec![user.into(), int(deadline_ms)];
        args.extend(sessions.iter().map(|s| Value::from(s.clone())));
        let reply = self.call(library::USER_UPSERT, vec![k.sessions, k.info], args, false).await?;
        reply.as_u64().ok_or_else(|| StoreError::Protocol("user upsert reply".into()))
    }

    /// Sessions of a user ended; returns the sessions left.
    pub async fn user_remove(&self, user: &str, now_ms: u64, sessions: &[String]) -> Result<u64> {
        let k = self.keys.user(user);
        let mut args: Vec<Value> = vec![int(now_ms)];
        args.extend(sessions.iter().map(|s| Value::from(s.clone())));
        let reply = self.call(library::USER_REMOVE, vec![k.sessions, k.info], args, false).await?;
        reply.as_u64().ok_or_else(|| StoreError::Protocol("user remove reply".into()))
    }

    pub async fn user_status(&self, user: &str, now_ms: u64, ttl_ms: u64, grace_ms: u64) -> Result<UserStatus> {
        let k = self.keys.user(user);
        let args: Vec<Value> = vec![int(now_ms), int(ttl_ms), int(grace_ms)];
        let reply = self.call(library::USER_STATUS, vec![k.sessions, k.info], args, false).await?.into_array();
        let num = |i: usize| reply.get(i).and_then(Value::as_u64).unwrap_or(0);
        Ok(UserStatus {
            online: num(0) == 1,
            sessions: num(1),
            last_seen_ms: num(2),
            status: reply.get(3).and_then(Value::as_string).unwrap_or_default(),
        })
    }

    pub async fn user_set_status(&self, user: &str, status: &str) -> Result<()> {
        let k = self.keys.user(user);
        let args: Vec<Value> = vec![user.into(), status.into()];
        self.call(library::USER_SET_STATUS, vec![k.sessions, k.info], args, false).await?;
        Ok(())
    }

    /// The messages after `since` (at most `limit`) and the join/leave events after
    /// `events_after` that belong within them, from one snapshot (`sh_tail_read_v2`). With
    /// `events_after` empty, no event, only the id of the newest.
    pub async fn tail_read(&self, topic: &Topic, since: u64, limit: usize, events_after: &str) -> Result<TailPage> {
        let tk = self.keys.topic(topic);
        let events = self.keys.presence(topic).events;
        let args: Vec<Value> = vec![since.to_string().into(), int(limit as u64), events_after.into()];
        let reply = self.call(library::TAIL_READ, vec![tk.meta, tk.stream, events], args, true).await?;
        let mut reply = reply.into_array().into_iter();
        let position = super::parse_position(&mut reply, true)?;
        let last_event_id = reply.next().and_then(|v| v.as_string()).unwrap_or_default();
        let n = reply.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let mut records = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let (epoch, after, kind, entry) = (reply.next(), reply.next(), reply.next(), reply.next());
            records.push(PresenceRecord {
                epoch: epoch.and_then(|v| v.as_string()).unwrap_or_default(),
                after: after.and_then(|v| v.as_u64()).unwrap_or(0),
                join: kind.and_then(|v| v.as_string()).as_deref() == Some("join"),
                entry: entry.and_then(|v| v.as_string()).unwrap_or_default(),
            });
        }
        let messages = super::parse_messages(reply)?;
        Ok(TailPage { page: super::HistoryPage { position, messages }, events: records, last_event_id })
    }

    /// Publishes an event on the topic's hint channel, for the subscribers of every node
    /// (`E <body>`: ephemeral events). At most once; nothing is stored.
    pub async fn publish_event(&self, topic: &Topic, body: &str) -> Result<()> {
        let started = std::time::Instant::now();
        let channel = self.keys.topic(topic).hint;
        // Boxed: fred's command future is several KiB, which the publish handler's future
        // would otherwise carry for every publish (see `fcall`).
        let call = Box::pin(self.pool.next().spublish::<Value, _, _>(channel, format!("E {body}")));
        let result: Result<Value> = call.await.map_err(StoreError::from);
        crate::metrics::redis_call("spublish", started, result.as_ref().err().map(StoreError::kind));
        result.map(drop)
    }
}
