//! What every HTTP request passes through, once, around the whole router: an id, the
//! client's address, a span carrying both, the request timeout, and the HTTP metrics.
//!
//! It wraps the router as one service rather than being added with `Router::layer`:
//! axum applies such a layer to every route separately, and a request then clones the
//! boxed stack of each layer it passes (about 20 heap allocations per request for four
//! layers, see docs/BENCHMARKS.md). Outside the router, the route a request will take is
//! not known yet, so [`Routes`] registers every route twice: with axum's router, and in
//! a [`RouteTable`] (the same path syntax, the same matcher crate) that names the route
//! for the span and the metrics and says whether it is long-lived.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use dashmap::DashMap;
use tower::Service;
use tracing::Instrument;

use super::client_addr::{client_addr, ClientAddr};
use super::AppState;
use crate::error::{Code, Error};
use crate::metrics;

/// The header carrying a request's id: taken from the client when it is 1 to 64 visible
/// ASCII characters, else minted (UUID v7); echoed on the response.
pub const REQUEST_ID: &str = "x-request-id";

/// The label of requests no route matched (404s).
const UNMATCHED: &str = "unmatched";

/// How a route's requests are bounded in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lifetime {
    /// By `http.request_timeout_ms`.
    Bounded,
    /// Carries its own bounds (WebSocket, SSE).
    LongLived,
    /// Long-lived when the path ends with this suffix (a group's `:fetch` long-polls).
    LongLivedWhen(&'static str),
}

/// The API's routes, built into axum's router and into the [`RouteTable`] at once, so
/// the two cannot disagree.
pub(super) struct Routes {
    router: Router<Arc<AppState>>,
    table: RouteTable,
}

impl Routes {
    pub fn new() -> Routes {
        Routes { router: Router::new(), table: RouteTable::default() }
    }

    /// A route whose requests end within `http.request_timeout_ms`.
    pub fn route(self, path: &str, methods: MethodRouter<Arc<AppState>>) -> Routes {
        self.route_with(path, methods, Lifetime::Bounded)
    }

    pub fn route_with(mut self, path: &str, methods: MethodRouter<Arc<AppState>>, lifetime: Lifetime) -> Routes {
        self.router = self.router.route(path, methods);
        self.table.insert(path, lifetime);
        self
    }

    /// The router with `state`, and the table of its routes.
    pub fn finish(
        self,
        configure: impl FnOnce(Router<Arc<AppState>>) -> Router<Arc<AppState>>,
        state: Arc<AppState>,
    ) -> (Router, RouteTable) {
        (configure(self.router).with_state(state), self.table)
    }
}

/// The route templates, matched the way axum's router matches them.
#[derive(Default)]
pub(super) struct RouteTable {
    matcher: matchit::Router<usize>,
    routes: Vec<(Arc<str>, Lifetime)>,
}

impl RouteTable {
    fn insert(&mut self, path: &str, lifetime: Lifetime) {
        // A path registered again (more methods on it) keeps its entry, and must not change
        // its lifetime; axum itself refuses a template it cannot match, before this.
        if self.matcher.insert(path, self.routes.len()).is_ok() {
            self.routes.push((Arc::from(path), lifetime));
        } else {
            debug_assert!(
                self.find(path).is_some_and(|i| &*self.routes[i].0 == path && self.routes[i].1 == lifetime),
                "{path} registered twice with different lifetimes"
            );
        }
    }

    /// The index of the route `path` takes, if any.
    fn find(&self, path: &str) -> Option<usize> {
        self.matcher.at(path).ok().map(|m| *m.value)
    }
}

/// The router wrapped in the per-request work (see the module's documentation).
#[derive(Clone)]
pub struct Gateway {
    router: Router,
    shared: Arc<Shared>,
}

struct Shared {
    state: Arc<AppState>,
    table: RouteTable,
    /// The metric handles of each (route, method, status) seen, looked up once.
    meters: DashMap<(usize, &'static str, u16), Meter>,
}

struct Meter {
    requests: ::metrics::Counter,
    duration: ::metrics::Histogram,
}

impl Gateway {
    pub(super) fn new(router: Router, table: RouteTable, state: Arc<AppState>) -> Gateway {
        Gateway { router, shared: Arc::new(Shared { state, table, meters: DashMap::new() }) }
    }
}

impl Service<Request> for Gateway {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (router, shared) = (self.router.clone(), self.shared.clone());
        Box::pin(async move { Ok(shared.serve(router, request).await) })
    }
}

impl Shared {
    async fn serve(&self, mut router: Router, mut request: Request) -> Response {
        let started = Instant::now();
        let id = RequestId::of(&request);
        let peer = request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        let client = client_addr(
            &self.state.ops.config().proxies,
            peer.unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
            request.headers(),
        );
        request.extensions_mut().insert(ClientAddr(client));
        let route = self.table.find(request.uri().path());
        let (label, lifetime) = match route {
            Some(i) => (&*self.table.routes[i].0, self.table.routes[i].1),
            None => (UNMATCHED, Lifetime::Bounded),
        };
        let long_lived = match lifetime {
            Lifetime::Bounded => false,
            Lifetime::LongLived => true,
            Lifetime::LongLivedWhen(suffix) => ends_with_decoded(request.uri().path(), suffix),
        };
        let method = method_label(request.method());
        let span = tracing::info_span!("request", request_id = %id.as_str(), client = %client, method, route = %label);
        let answer = async {
            let response = router.call(request);
            if long_lived {
                return response.await.unwrap_or_else(|never| match never {});
            }
            let limit = Duration::from_millis(self.state.ops.config().http.request_timeout_ms);
            match tokio::time::timeout(limit, response).await {
                Ok(response) => response.unwrap_or_else(|never| match never {}),
                Err(_) => Error::new(Code::RequestTimeout, "the request took longer than http.request_timeout_ms")
                    .into_response(),
            }
        };
        let mut response = answer.instrument(span).await;
        response.headers_mut().insert(REQUEST_ID, id.header);
        let status = response.status().as_u16();
        let key = (route.unwrap_or(usize::MAX), method, status);
        let meter = match self.meters.get(&key) {
            Some(meter) => meter,
            None => self.meters.entry(key).or_insert_with(|| Meter::new(label, method, status)).downgrade(),
        };
        meter.duration.record(started.elapsed().as_secs_f64());
        meter.requests.increment(1);
        response
    }
}

impl Meter {
    fn new(route: &str, method: &'static str, status: u16) -> Meter {
        let route = route.to_string();
        Meter {
            requests: ::metrics::counter!(metrics::HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status.to_string()),
            duration: ::metrics::histogram!(metrics::HTTP_REQUEST_DURATION, "route" => route, "method" => method),
        }
    }
}

/// Whether `path` ends with `suffix` once percent-decoded (`g%3Afetch` is the route's
/// `g:fetch`: the path extractor decodes it).
fn ends_with_decoded(path: &str, suffix: &str) -> bool {
    let tail = &path[path.rfind('/').map_or(0, |i| i + 1)..];
    if !tail.contains('%') {
        return tail.ends_with(suffix);
    }
    percent_encoding::percent_decode_str(tail).decode_utf8().is_ok_and(|t| t.ends_with(suffix))
}

/// The method as a metric label (a bounded set).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A request's id, as the response header it is echoed in.
struct RequestId {
    header: HeaderValue,
}

impl RequestId {
    fn of(request: &Request) -> RequestId {
        let given = request
            .headers()
            .get(REQUEST_ID)
            .filter(|v| (1..=64).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic));
        let header = match given {
            Some(value) => value.clone(),
            None => {
                let mut minted = [0u8; uuid::fmt::Simple::LENGTH];
                let minted = uuid::Uuid::now_v7().simple().encode_lower(&mut minted);
                HeaderValue::from_str(minted).unwrap_or_else(|_| HeaderValue::from_static("-"))
            }
        };
        RequestId { header }
    }

    fn as_str(&self) -> &str {
        // Visible ASCII by construction.
        self.header.to_str().unwrap_or("-")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mut table = RouteTable::default();
        table.insert("/v1/topics/{topic}/messages", Lifetime::Bounded);
        table.insert("/v1/topics/{topic}/messages:batch", Lifetime::Bounded);
        table.insert("/v1/topics/{topic}/events", Lifetime::LongLived);
        table.insert("/v1/topics/{topic}/groups/{action}", Lifetime::LongLivedWhen(":fetch"));
        table.insert("/v1/topics/{topic}/messages", Lifetime::Bounded);
        table
    }

    #[test]
    fn the_table_names_the_route_axum_takes() {
        let table = table();
        let name = |path: &str| table.find(path).map(|i| (&*table.routes[i].0, table.routes[i].1));
        assert_eq!(name("/v1/topics/a/messages"), Some(("/v1/topics/{topic}/messages", Lifetime::Bounded)));
        assert_eq!(name("/v1/topics/a/messages:batch").map(|n| n.0), Some("/v1/topics/{topic}/messages:batch"));
        assert_eq!(name("/v1/topics/a%2Fb/events").map(|n| n.1), Some(Lifetime::LongLived));
        assert_eq!(name("/v1/topics/a/groups/g:fetch").map(|n| n.1), Some(Lifetime::LongLivedWhen(":fetch")));
        assert_eq!(name("/v1/topics/a/b/messages"), None);
        assert_eq!(name("/v1/topics/a/messages/"), None);
        assert_eq!(table.routes.len(), 4, "a path registered twice keeps one entry");
    }

    #[test]
    fn a_suffix_is_matched_after_percent_decoding() {
        assert!(ends_with_decoded("/v1/topics/t/groups/g:fetch", ":fetch"));
        assert!(ends_with_decoded("/v1/topics/t/groups/g%3Afetch", ":fetch"));
        assert!(ends_with_decoded("/v1/topics/t/groups/g%3afetch", ":fetch"));
        assert!(!ends_with_decoded("/v1/topics/t/groups/g:ack", ":fetch"));
        assert!(!ends_with_decoded("/v1/topics/t/groups/g%3Aack%ZZ", ":fetch"));
    }

    #[test]
    fn a_given_request_id_is_kept_when_it_is_visible_ascii_of_at_most_64_bytes() {
        let with = |id: &str| {
            let request = Request::builder().header(REQUEST_ID, id).body(axum::body::Body::empty()).expect("request");
            RequestId::of(&request).as_str().to_string()
        };
        assert_eq!(with("req-17"), "req-17");
        assert_eq!(with(&"x".repeat(64)), "x".repeat(64));
        let minted = with(&"x".repeat(65));
        assert_eq!(minted.len(), 32);
        assert!(minted.bytes().all(|b| b.is_ascii_hexdigit()), "{minted}");
        assert_eq!(with("a b").len(), 32, "a space is not visible");
    }
}
