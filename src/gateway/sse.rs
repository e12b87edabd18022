//! `GET /v1/topics/{topic}/events`: Server-Sent Events, one topic per connection, with
//! the same resume exactness as the WebSocket.
//!
//! Each message event has `id: <epoch>:<seq>`. A reconnecting EventSource sends it back as
//! `Last-Event-ID`, so an epoch change is detected on resume (a bare seq could not be:
//! that would be a silent gap, G3). `Last-Event-ID` may also be a bare `<seq>` (taken to
//! be in the epoch given by `?epoch=`, else the current one); first connections may use
//! `?since=<seq>&epoch=<epoch>` or `?since=earliest`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::access;
use super::error::{ApiError, ApiResult};
use super::frames::{Encoding, ServerFrame};
use super::AppState;
use crate::delivery::session::{Session, Since, SubscribeError};
use crate::delivery::subscription::{Item, Queued};
use crate::metrics;
use crate::topic::Topic;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    since: Option<String>,
    epoch: Option<String>,
    /// Credentials for browsers (EventSource cannot set headers).
    token: Option<String>,
}

/// Parses where to start: `Last-Event-ID` wins over `?since=`.
fn since(headers: &HeaderMap, query: &EventsQuery, current_epoch: impl FnOnce() -> String) -> Result<Since, ApiError> {
    let bad = |what: &str| {
        ApiError::bad_request("invalid_request", format!("{what}: expected <epoch>:<seq>, <seq> or earliest"))
    };
    let raw = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().map_err(|_| bad("Last-Event-ID"))?.to_string()),
        None => query.since.clone(),
    };
    let Some(raw) = raw else { return Ok(Since::Now) };
    if raw == "earliest" {
        return Ok(Since::Earliest);
    }
    let (epoch, seq) = match raw.split_once(':') {
        Some((epoch, seq)) => (epoch.to_string(), seq),
        None => (query.epoch.clone().unwrap_or_else(current_epoch), raw.as_str()),
    };
    let seq = seq.parse::<u64>().map_err(|_| bad("since"))?;
    Ok(Since::After { epoch, seq })
}

/// Ends the session when the client goes away (the stream is dropped).
struct Guard {
    session: Arc<Session>,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
    _ip_slot: access::IpSlot,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.cancel();
        let session = self.session.clone();
        tokio::spawn(async move { session.close().await });
        ::metrics::gauge!(metrics::SESSIONS, "transport" => "sse").decrement(1.0);
    }
}

fn json(frame: &ServerFrame) -> String {
    String::from_utf8(frame.encode(Encoding::Json)).unwrap_or_default()
}

fn event(queued: Queued) -> Event {
    match &queued.item {
        Item::Message(d) => {
            metrics::delivered("sse", d.published_ms());
            let data =
                d.frames[Encoding::Json.slot()].get_or_init(|| ServerFrame::message(d).encode(Encoding::Json).into());
            Event::default().id(format!("{}:{}", d.epoch, d.seq())).event("message").data(String::from_utf8_lossy(data))
        }
        // The notice's id moves Last-Event-ID past the jump, so a reconnect resumes after it.
        Item::Reset(r) => {
            Event::default().id(format!("{}:{}", r.epoch, r.seq)).event("subscribed").data(json(&ServerFrame::reset(r)))
        }
    }
}

pub(super) async fn events(
    State(state): State<Arc<AppState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let topic = Topic::parse(&name, state.config.limits.max_topic_bytes)?;
    let Query(query) = query.map_err(|r| ApiError::bad_request("invalid_query", r.body_text()))?;
    access::check_origin(&state.config.http, &headers)?;
    let principal = access::principal(&state, &headers, query.token.as_deref())?;
    access::require(&state, &principal, crate::config::Scope::Subscribe, topic.as_str())?;
    let ip_slot = state.limiters.open_session(peer.ip())?;
    let permit = state.connections.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this node's session limit (ws.max_connections) is reached",
        )
    })?;
    let needs_epoch = query.epoch.is_none();
    let current = if needs_epoch {
        state.store.read_since(&topic, u64::MAX, 0).await?.position.epoch.unwrap_or_default()
    } else {
        String::new()
    };
    let since = since(&headers, &query, || current)?;
    let (session, deliveries) = Session::new(state.hub.clone(), &state.config.ws);
    let subscribed = session.subscribe(topic.clone(), since).await.map_err(|e| match e {
        SubscribeError::Store(e) => ApiError::from(e),
        other => ApiError::bad_request("invalid_request", other.to_string()),
    })?;
    ::metrics::gauge!(metrics::SESSIONS, "transport" => "sse").increment(1.0);
    let stop = CancellationToken::new();
    state.tasks.spawn(tracing::Instrument::in_current_span(session.clone().run_catchup(stop.clone())));
    session.start(&topic);
    let first = Event::default().event("subscribed").data(json(&ServerFrame::subscribed(None, &name, &subscribed)));
    let guard = Guard { session, stop: stop.clone(), _permit: permit, _ip_slot: ip_slot };
    let shutdown = state.shutdown.clone();
    let stream = futures::stream::once(async move { Ok(first) }).chain_with(deliveries, guard, shutdown);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_millis(state.config.ws.ping_interval_ms))))
}

/// Appends the session's deliveries to the first event; ends on shutdown or disconnect.
trait ChainDeliveries: Stream<Item = Result<Event, Infallible>> + Sized {
    fn chain_with(
        self,
        deliveries: mpsc::Receiver<Queued>,
        guard: Guard,
        shutdown: CancellationToken,
    ) -> impl Stream<Item = Result<Event, Infallible>> {
        use futures::StreamExt;
        let rest = futures::stream::unfold((deliveries, guard, shutdown), |(mut rx, guard, shutdown)| async move {
            loop {
                let queued = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = guard.stop.cancelled() => return None,
                    queued = rx.recv() => queued?,
                };
                if queued.sub.is_closed() {
                    continue;
                }
                return Some((Ok(event(queued)), (rx, guard, shutdown)));
            }
        });
        self.chain(rest)
    }
}

impl<S: Stream<Item = Result<Event, Infallible>>> ChainDeliveries for S {}
