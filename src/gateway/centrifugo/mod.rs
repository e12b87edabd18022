//! The Centrifugo client protocol (v2) and server API, so Centrifugo's client SDKs
//! (centrifuge-js, -go, -python, -swift, -java, -dart) and server libraries (`cent`) work
//! against streamhub: a second WebSocket protocol over the same operations, sessions and
//! limits as the native one (`ws_session.rs`), and a second publish API over the same
//! operations as `/v1`. The mapping, and what is not supported, is docs/CENTRIFUGO.md.

mod api;
pub mod codec;
mod codes;
mod conn;
mod encode;
mod history;
pub mod proto;

use axum::routing::{get, post};

use super::request::{Lifetime, Routes};
use crate::config::CentrifugoConfig;

/// `routes` with the client endpoint (`centrifugo.path`, long-lived) and the server API
/// (`centrifugo.api_prefix`), each absent when its setting is "".
pub(super) fn routes(mut routes: Routes, c: &CentrifugoConfig) -> Routes {
    if !c.path.is_empty() {
        routes = routes.route_with(&c.path, get(conn::upgrade), Lifetime::LongLived);
    }
    if !c.api_prefix.is_empty() {
        routes = routes.route(&format!("{}/{{method}}", c.api_prefix), post(api::api));
    }
    routes
}
