//! streamhub — a reliable real-time message broker on Redis Streams.
//!
//! The map, from the wire inwards (each layer uses only the layers below it:
//! docs/ARCHITECTURE.md §1, checked by `tests/layers.rs`):
//! - [`cli`]: the `streamhub` command; [`server`]: starts and stops the parts.
//! - [`gateway`]: the HTTP, WebSocket (`ws`, `ws_ops`, `ws_write`, `frames`) and SSE
//!   transports; [`stats`], [`tail`]: clients of a running node.
//! - [`ops`]: **the operations**, each written once for every transport — publish,
//!   history, topics, subscribe, group fetch/ack/nack/consume, DLQ, group admin — and
//!   access control (`ops::access`: callers, grants, limits).
//! - [`groups`]: consumer groups at run time (sweepers, workers, fetching, settling,
//!   WebSocket consumers, gauges).
//! - [`delivery`]: tail tasks, subscriptions, bounded session queues, the resume decision.
//! - [`wire`]: the JSON shapes shared by every transport and the webhook target.
//! - [`store`]: everything kept in Redis, one Redis Function call per atomic operation
//!   (`lua/*.lua`), the hint listener, the embedded redis-server.
//! - [`message`]: a message to publish, checked against the limits.
//! - [`config`]: layered configuration.
//! - [`auth`]: credentials (JWT, API keys), permissions by topic pattern; [`keys`]: every
//!   Redis key name.
//! - [`topic`], [`envelope`], [`metrics`]: topic names, the stored layout, metric names.
//! - [`error`]: the catalogue of error codes; [`clock`]: the wall clock.

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
