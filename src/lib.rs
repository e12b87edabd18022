//! streamhub — a reliable real-time message broker on Redis Streams.
//!
//! Layers, from the wire inwards:
//! - [`gateway`]: HTTP routes, wire types (`gateway::protocol`), the API error type.
//! - [`message`], [`envelope`], [`topic`]: what a message is and what input is valid.
//! - [`store`]: everything kept in Redis, one Redis Function call per atomic operation
//!   (`lua/*.lua`), key names from [`keys`], the embedded redis-server.
//! - [`delivery`]: tail tasks, subscriptions, bounded session queues, resume.
//! - [`groups`]: consumer groups at run time (sweepers, webhook workers).
//! - [`server`]: starts and stops the parts; [`cli`]: the `streamhub` command;
//!   [`tail`]: its WebSocket follower.
//! - [`auth`]: credentials (JWT, API keys), permissions by topic pattern.
//! - [`config`]: layered configuration; [`metrics`]: metric names and `/metrics`.

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod envelope;
pub mod error;
pub mod gateway;
pub mod groups;
pub mod keys;
pub mod message;
pub mod metrics;
pub mod ops;
pub mod server;
pub mod stats;
pub mod store;
pub mod tail;
pub mod topic;
pub mod wire;

pub use config::Config;
pub use envelope::Envelope;
pub use server::Server;
pub use store::Store;
pub use topic::Topic;
