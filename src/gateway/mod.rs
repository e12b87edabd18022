//! The HTTP gateway: routes and shared state; the per-request id, span, timeout and
//! metrics are `request.rs`.
//! Every route decodes its request, calls the operation (`crate::ops`), and encodes the
//! answer; the shared opening (caller, grant on `{topic}`) is the extractors of
//! `extract.rs`. Request bodies are in `protocol.rs`, answers in `crate::wire`, WebSocket
//! frames in `frames.rs`.

pub mod centrifugo;
mod client_addr;
pub mod error;
mod extract;
pub mod frames;
mod groups;
mod health;
mod node;
mod pages;
mod presence;
pub mod protocol;
mod publish;
mod request;
mod sse;
mod topics;
pub mod ws;
mod ws_direct;
mod ws_ops;
mod ws_session;
mod ws_socket;
mod ws_write;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery::Hub;
use crate::error::{Code, Error};
use crate::ops::Ops;

pub use publish::{HEADER_PREFIX, IDEMPOTENCY_KEY, TTL_HEADER};
pub use request::REQUEST_ID;
use request::{Gateway, Lifetime, Routes};

/// What every handler can reach.
pub struct AppState {
    /// The operations, and through them the configuration, store and access control.
    pub ops: Ops,
    /// The node's tail tasks, for subscriber sessions.
    pub hub: Hub,
    /// One permit per open WebSocket or SSE session (`ws.max_connections`).
    pub connections: Arc<Semaphore>,
    /// Cancelled on shutdown: sessions close with "going away".
    pub shutdown: CancellationToken,
    /// Session tasks, awaited on shutdown.
    pub tasks: TaskTracker,
}

/// The public API: the routes, wrapped once in the per-request work of `request.rs`
/// (id, client, span, timeout, metrics), the body limit and CORS.
pub fn app(
    state: Arc<AppState>,
) -> impl tower::Service<
    axum::extract::Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    let config = state.ops.config();
    let (body_limit, cors_origins) = (config.limits.max_body_bytes, config.http.cors_origins.clone());
    let routes = Routes::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/node", get(node::node))
        .route("/v1/topics", get(topics::topics))
        .route("/v1/topics/{topic}", get(topics::topic))
        .route("/v1/topics/{topic}/messages", get(topics::history).post(publish::publish_one))
        .route("/v1/topics/{topic}/messages:batch", post(publish::publish_batch))
        .route_with("/v1/topics/{topic}/events", get(sse::events), Lifetime::LongLived)
        .route("/v1/topics/{topic}/presence", get(presence::presence))
        .route("/v1/topics/{topic}/presence/stats", get(presence::stats))
        .route("/v1/users/{user}/status", get(presence::user_status).put(presence::set_status))
        .route_with("/v1/ws", get(ws::upgrade), Lifetime::LongLived)
        .route("/v1/topics/{topic}/groups", get(groups::list))
        .route_with(
            "/v1/topics/{topic}/groups/{action}",
            post(groups::post_action).put(groups::create).delete(groups::delete),
            Lifetime::LongLivedWhen(":fetch"),
        )
        .route("/v1/topics/{topic}/groups/{group}/dlq", get(groups::dlq_list))
        .route("/v1/topics/{topic}/groups/{group}/dlq/{id}", get(groups::dlq_show))
        .route("/v1/topics/{topic}/groups/{group}/{action}", post(groups::dlq_action));
    let routes = pages::routes(routes, &pages::CONSOLE, config.http.console);
    let routes = pages::routes(routes, &pages::CHAT, config.http.chat);
    let routes = centrifugo::routes(routes, &config.centrifugo);
    let (router, table) =
        routes.finish(|r| r.fallback(not_found).method_not_allowed_fallback(method_not_allowed), state.clone());
    tower::ServiceBuilder::new()
        .layer(cors(&cors_origins))
        .layer(DefaultBodyLimit::max(body_limit))
        .service(Gateway::new(router, table, state))
}

/// CORS for the HTTP API from `http.cors_origins`.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        // No CORS headers, and no `Vary` naming the CORS request headers either: nothing
        // varies with them (tower-http builds that header anew for every response).
        return CorsLayer::new().vary::<[header::HeaderName; 0]>([]);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        // Raw publishes carry metadata in X-Streamhub-Header-<name> headers: allow what is asked.
        .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
        .expose_headers([header::RETRY_AFTER])
}

async fn not_found() -> Error {
    Error::new(Code::NotFound, "no such route; see docs/PROTOCOL.md")
}

async fn method_not_allowed() -> Error {
    Error::new(Code::MethodNotAllowed, "method not allowed on this route")
}
