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
pub mod publish;
pub mod topics;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::session::{Session, Since, SubscribeError, Subscribed};
use crate::error::{Code, Error, Result};
use crate::groups::Groups;
use crate::store::Store;
use access::{Access, Grant, Subscribe};

/// The operations of one node; cheap to clone.
#[derive(Clone)]
pub struct Ops {
    pub(crate) store: Store,
    pub(crate) config: Arc<Config>,
    pub(crate) access: Arc<Access>,
    pub(crate) groups: Arc<Groups>,
    /// Cancelled on shutdown: waiting operations (long polls) answer at once.
    pub(crate) shutdown: CancellationToken,
}

impl Ops {
    pub fn new(
        store: Store,
        config: Arc<Config>,
        access: Arc<Access>,
        groups: Arc<Groups>,
        shutdown: CancellationToken,
    ) -> Ops {
        Ops { store, config, access, groups, shutdown }
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

    /// Subscribes `session` to the granted topic from `since` (PROTOCOL.md §2.4). Nothing
    /// is delivered until the transport calls `Session::start`, after queueing its reply.
    pub async fn subscribe(&self, session: &Session, grant: &Grant<Subscribe>, since: Since) -> Result<Subscribed> {
        session.subscribe(grant.topic().clone(), since).await.map_err(|e| match e {
            e @ SubscribeError::AlreadySubscribed(_) => Error::new(Code::AlreadySubscribed, e.to_string()),
            e @ SubscribeError::TooMany(_) => Error::new(Code::TooManySubscriptions, e.to_string()),
            SubscribeError::Store(e) => e.into(),
        })
    }
}
