//! The HTTP gateway: routes, shared state, and the per-request id, span and metrics layer.
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
mod sse;
mod topics;
pub mod ws;
mod ws_ops;
mod ws_session;
mod ws_write;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery::Hub;
use crate::error::{Code, Error};
use crate::metrics;
use crate::ops::Ops;

pub use publish::{HEADER_PREFIX, IDEMPOTENCY_KEY, TTL_HEADER};

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

/// The public API router.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.ops.config().limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/node", get(node::node))
        .route("/v1/topics", get(topics::topics))
        .route("/v1/topics/{topic}", get(topics::topic))
        .route("/v1/topics/{topic}/messages", get(topics::history).post(publish::publish_one))
        .route("/v1/topics/{topic}/messages:batch", axum::routing::post(publish::publish_batch))
        .route("/v1/topics/{topic}/events", get(sse::events))
        .route("/v1/topics/{topic}/presence", get(presence::presence))
        .route("/v1/topics/{topic}/presence/stats", get(presence::stats))
        .route("/v1/users/{user}/status", get(presence::user_status).put(presence::set_status))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/topics/{topic}/groups", get(groups::list))
        .route(
            "/v1/topics/{topic}/groups/{action}",
            axum::routing::post(groups::post_action).put(groups::create).delete(groups::delete),
        )
        .route("/v1/topics/{topic}/groups/{group}/dlq", get(groups::dlq_list))
        .route("/v1/topics/{topic}/groups/{group}/dlq/{id}", get(groups::dlq_show))
        .route("/v1/topics/{topic}/groups/{group}/{action}", axum::routing::post(groups::dlq_action))
        .merge(pages::routes(&pages::CONSOLE, state.ops.config().http.console))
        .merge(pages::routes(&pages::CHAT, state.ops.config().http.chat))
        .merge(centrifugo::routes(&state.ops.config().centrifugo))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), request_timeout))
        .layer(middleware::from_fn_with_state(state.clone(), observe_requests))
        .layer(cors(&state.ops.config().http.cors_origins))
        .with_state(state)
}

/// CORS for the HTTP API from `http.cors_origins`.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return CorsLayer::new();
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

/// Bounds every request but the long-lived ones (WebSocket, SSE, long-poll fetches carry
/// their own bounds) by `http.request_timeout_ms`.
async fn request_timeout(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let long_lived = route == "/v1/ws"
        || route == state.ops.config().centrifugo.path
        || route == "/v1/topics/{topic}/events"
        || (route == "/v1/topics/{topic}/groups/{action}" && request.uri().path().ends_with(":fetch"));
    if long_lived {
        return next.run(request).await;
    }
    let limit = std::time::Duration::from_millis(state.ops.config().http.request_timeout_ms);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            Error::new(Code::RequestTimeout, "the request took longer than http.request_timeout_ms").into_response()
        }
    }
}

async fn not_found() -> Error {
    Error::new(Code::NotFound, "no such route; see docs/PROTOCOL.md")
}

async fn method_not_allowed() -> Error {
    Error::new(Code::MethodNotAllowed, "method not allowed on this route")
}

/// The header carrying a request's id: taken from the client when it is 1 to 64 visible
/// ASCII characters, else minted (UUID v7); echoed on the response.
pub const REQUEST_ID: &str = "x-request-id";

fn request_id(request: &Request) -> String {
    request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string())
}

/// Per request: an id, the client's address (`client_addr`, kept in the request's
/// extensions for the routes), a span carrying both (every log line of the request, and of
/// the WebSocket/SSE session it opens, has `request_id` and `client`), and the HTTP metrics.
async fn observe_requests(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let id = request_id(&request);
    let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let client = client_addr::client_addr(
        &state.ops.config().proxies,
        peer.unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
        request.headers(),
    );
    request.extensions_mut().insert(client_addr::ClientAddr(client));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let span = tracing::info_span!("request", request_id = %id, client = %client, method, route = %route);
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    ::metrics::histogram!(metrics::HTTP_REQUEST_DURATION, "route" => route.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    ::metrics::counter!(
        metrics::HTTP_REQUESTS,
        "route" => route,
        "method" => method,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}
