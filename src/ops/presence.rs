//! Presence: who is subscribed to a topic (the list and its counts), users' status, and
//! ephemeral events. Subscriptions join presence through `Ops::subscribe`.

use std::collections::BTreeMap;

use super::access::{Caller, Grant, PresenceRead, Publish};
use super::Ops;
use crate::auth::{PrincipalKind, Scope};
use crate::delivery::event::{Ephemeral, Member};
use crate::error::{Code, Error, Result};
use crate::message::NewMessage;
use crate::store::presence::UserStatus;

/// Who is present on a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceList {
    /// Clients present, and distinct users among them.
    pub clients: u64,
    pub users: u64,
    /// At most `presence.max_list` of them.
    pub members: Vec<Member>,
}

/// The user a presence entry shows for a caller: its subject, "" when anonymous.
pub fn presence_user(caller: &Caller) -> String {
    match caller.principal.kind {
        PrincipalKind::Anonymous => String::new(),
        _ => caller.principal.subject.clone(),
    }
}

impl Ops {
    fn tracked(&self, grant: &Grant<PresenceRead>) -> Result<()> {
        if self.config.presence.tracks(grant.topic().as_str()) {
            Ok(())
        } else {
            Err(Error::new(
                Code::NotEnabled,
                format!("presence is not tracked for {} (presence.topics)", grant.topic()),
            ))
        }
    }

    /// The topic's presence: counts, and up to `presence.max_list` members.
    pub async fn presence(&self, grant: &Grant<PresenceRead>) -> Result<PresenceList> {
        self.tracked(grant)?;
        let c = &self.config.presence;
        let snapshot = self.store.presence_list(grant.topic(), crate::clock::now_ms(), c.grace_ms, c.max_list).await?;
        let members = snapshot.entries.iter().filter_map(|e| serde_json::from_str(e).ok()).collect();
        Ok(PresenceList { clients: snapshot.clients, users: snapshot.users, members })
    }

    /// The topic's presence counts only (cheap enough to poll).
    pub async fn presence_stats(&self, grant: &Grant<PresenceRead>) -> Result<(u64, u64)> {
        self.tracked(grant)?;
        let grace = self.config.presence.grace_ms;
        let snapshot = self.store.presence_list(grant.topic(), crate::clock::now_ms(), grace, 0).await?;
        Ok((snapshot.clients, snapshot.users))
    }

    /// A user's status: readable by the user itself, and by callers whose `presence`
    /// grants match `@<user>`.
    pub async fn user_status(&self, caller: &Caller, user: &str) -> Result<UserStatus> {
        let own = caller.principal.kind != PrincipalKind::Anonymous && caller.principal.subject == user;
        if !own {
            self.access.check(caller, Scope::Presence, &format!("@{user}"))?;
        }
        let c = &self.config.presence;
        if !c.users {
            return Err(Error::new(Code::NotEnabled, "user status is not tracked (presence.users)"));
        }
        Ok(self.store.user_status(user, crate::clock::now_ms(), c.ttl_ms, c.grace_ms).await?)
    }

    /// Sets the caller's own status text ("" clears it).
    pub async fn set_status(&self, caller: &Caller, status: &str) -> Result<()> {
        if caller.principal.kind == PrincipalKind::Anonymous {
            return Err(Error::new(Code::Unauthorized, "credentials required to set a status"));
        }
        let c = &self.config.presence;
        if !c.users {
            return Err(Error::new(Code::NotEnabled, "user status is not tracked (presence.users)"));
        }
        if status.len() > c.max_status_bytes {
            return Err(Error::new(
                Code::InvalidRequest,
                format!("status is {} bytes, limit {} (presence.max_status_bytes)", status.len(), c.max_status_bytes),
            ));
        }
        Ok(self.store.user_set_status(&caller.principal.subject, status).await?)
    }

    /// Publishes an ephemeral event: delivered through Pub/Sub to the topic's current
    /// subscribers on every node, at most once; never stored, no seq. Checked against the
    /// message limits and the caller's publish rate like a publish. `client` is the
    /// sender's session, when it has one.
    pub async fn publish_ephemeral(
        &self,
        caller: &Caller,
        grant: &Grant<Publish>,
        data: serde_json::Value,
        headers: BTreeMap<String, String>,
        client: Option<&str>,
    ) -> Result<()> {
        let payload = serde_json::to_vec(&data).unwrap_or_default();
        let message = NewMessage { payload, content_type: "application/json".into(), headers, ..Default::default() };
        let checked = message.check(&self.config.limits).map_err(Error::from);
        let checked = checked.and_then(|m| self.access.spend_publish(caller, 1).map(|()| m)).inspect_err(|e| {
            crate::metrics::publish_rejected(e.code.as_str());
        })?;
        let event = Ephemeral {
            client: client.unwrap_or("").to_string(),
            user: presence_user(caller),
            data,
            headers: checked.envelope.headers,
        };
        let body = serde_json::to_string(&event).map_err(Error::internal)?;
        self.store.publish_event(grant.topic(), &body).await?;
        crate::metrics::published("ephemeral", 1, checked.envelope.payload.len() as u64);
        Ok(())
    }
}
