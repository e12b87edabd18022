//! The Rust handler target: a program that embeds streamhub registers a handler for a
//! group declared with `target = "handler"`; the node's worker calls it for every
//! delivery, with the same retries, dead letters, leases and TTL handling as a webhook.
//!
//! ```no_run
//! use std::sync::Arc;
//! use streamhub::groups::handler::{handler_fn, Handlers};
//! use streamhub::groups::webhook::Outcome;
//! # async fn run(config: streamhub::Config) -> Result<(), Box<dyn std::error::Error>> {
//! let mut handlers = Handlers::new();
//! handlers.insert("orders", "billing", handler_fn(|d| async move {
//!     println!("seq {} attempt {}", d.seq, d.attempt);
//!     Outcome::Ack
//! }));
//! let server = streamhub::Server::start_with_handlers(config, handlers).await?;
//! # server.stop().await; Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::webhook::Outcome;
use crate::store::groups::GroupDelivery;

/// A future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Processes one delivery; `Outcome::Ack` acknowledges it, `Retry` schedules the next
/// attempt (after the group's backoff or the given delay), `Permanent` dead-letters it.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, delivery: GroupDelivery) -> HandlerFuture;
}

struct FnHandler<F>(F);

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(GroupDelivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn handle(&self, delivery: GroupDelivery) -> HandlerFuture {
        Box::pin((self.0)(delivery))
    }
}

/// A handler from an async closure.
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn Handler>
where
    F: Fn(GroupDelivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

/// Handlers by (topic, group).
#[derive(Default, Clone)]
pub struct Handlers {
    by_group: HashMap<(String, String), Arc<dyn Handler>>,
}

impl Handlers {
    pub fn new() -> Handlers {
        Handlers::default()
    }

    pub fn insert(&mut self, topic: &str, group: &str, handler: Arc<dyn Handler>) -> &mut Handlers {
        self.by_group.insert((topic.to_string(), group.to_string()), handler);
        self
    }

    pub fn get(&self, topic: &str, group: &str) -> Option<Arc<dyn Handler>> {
        self.by_group.get(&(topic.to_string(), group.to_string())).cloned()
    }
}
