//! The operations: everything a client can ask of streamhub, each written once, under
//! every transport (HTTP, the WebSocket protocols, SSE, the CLI, the console).
//!
//! An operation takes typed input — a [`Grant`](access::Grant) that proves the caller's
//! scope on a valid topic (made by [`Access::grant`](access::Access::grant), the one
//! authorisation step), and decoded arguments — applies it through the layers below
//! (store, delivery, groups), and returns a typed result or an [`Error`](crate::error::Error)
//! with a documented code. A transport decodes its wire format, calls the operation, and
//! encodes the answer; it holds no rule of its own.

pub mod access;
pub mod dlq;
pub mod groups;
pub mod node;
pub mod presence;
pub mod publish;
pub mod topics;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::event::Member;
use crate::delivery::session::{Session, Since, SubscribeError, SubscribeOptions, Subscribed};
use crate::error::{Code, Error, Result};
use crate::groups::Groups;
use crate::store::Store;
use access::{Access, Caller, Grant, Subscribe};

/// What a subscriber asks for besides the position.
#[derive(Debug, Clone, Default)]
pub struct SubscribeRequest {
    /// Join and leave events of the topic (needs the `presence` scope).
    pub join_leave: bool,
    /// The info shown with this subscriber in the topic's presence (JSON, at most
    /// `presence.max_info_bytes`).
    pub info: Option<serde_json::Value>,
}

/// The operations of one node; cheap to clone.
#[derive(Clone)]
pub struct Ops {
    pub(crate) store: Store,
    pub(crate) config: Arc<Config>,
    pub(crate) access: Arc<Access>,
    pub(crate) groups: Arc<Groups>,
    /// Cancelled on shutdown: waiting operations (long polls) answer at once.
    pub(crate) shutdown: CancellationToken,
    /// The publish path's metric handles (taken when the node starts, after the
    /// process's recorder is installed).
    pub(crate) publish_meter: crate::metrics::PublishMeter,
}

impl Ops {
    pub fn new(
        store: Store,
        config: Arc<Config>,
        access: Arc<Access>,
        groups: Arc<Groups>,
        shutdown: CancellationToken,
    ) -> Ops {
        Ops { store, config, access, groups, shutdown, publish_meter: crate::metrics::PublishMeter::new() }
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A session's new credentials (an authentication after connecting, or a token
    /// refresh): verified like any, and a refresh must keep the subject — only an
    /// anonymous session may become someone. The session acts for the new principal's
    /// user from now on.
    pub async fn reauthenticate(
        &self,
        session: &Session,
        current: &crate::auth::Principal,
        token: &str,
    ) -> Result<crate::auth::Principal> {
        let principal = self.access.principal(Some(token))?;
        if current.kind != crate::auth::PrincipalKind::Anonymous && current.subject != principal.subject {
            return Err(Error::new(Code::SubjectChanged, "a refresh must keep the same subject"));
        }
        if principal.kind != crate::auth::PrincipalKind::Anonymous {
            session.set_user(&principal.subject).await;
        }
        Ok(principal)
    }

    /// Subscribes `session` to the granted topic from `since` (PROTOCOL.md §2.4). Nothing
    /// is delivered until the transport calls `Session::start`, after queueing its reply.
    /// On a topic whose presence is tracked, the subscriber joins it (with `info`); join
    /// and leave events need the `presence` scope.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        session: &Session,
        grant: &Grant<Subscribe>,
        since: Since,
        request: SubscribeRequest,
    ) -> Result<Subscribed> {
        let topic = grant.topic();
        if request.join_leave {
            self.access.check(caller, crate::auth::Scope::Presence, topic.as_str())?;
        }
        let info_limit = self.config.presence.max_info_bytes;
        if let Some(info) = &request.info {
            let len = serde_json::to_vec(info).map_or(0, |b| b.len());
            if len > info_limit {
                return Err(Error::new(
                    Code::InvalidRequest,
                    format!("info is {len} bytes, limit {info_limit} (presence.max_info_bytes)"),
                ));
            }
        }
        let member = self.config.presence.tracks(topic.as_str()).then(|| Member {
            client: session.client().to_string(),
            user: presence::presence_user(caller),
            info: request.info,
        });
        let options = SubscribeOptions { join_leave: request.join_leave, member };
        session.subscribe(topic.clone(), since, options).await.map_err(|e| match e {
            e @ SubscribeError::AlreadySubscribed(_) => Error::new(Code::AlreadySubscribed, e.to_string()),
            e @ SubscribeError::TooMany(_) => Error::new(Code::TooManySubscriptions, e.to_string()),
            SubscribeError::Store(e) => e.into(),
        })
    }
}
