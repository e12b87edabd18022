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
use axum::http::{header, HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::error::{query_error, ApiResult};
use super::extract::{session_caller, ClientAddr};
use super::frames::{Encoding, ServerFrame};
use super::AppState;
use crate::delivery::session::{Session, Since};
use crate::delivery::subscription::{Deliveries, Item, Queued};
use crate::error::{Code, Error};
use crate::metrics;
use crate::ops::access::{IpSlot, Subscribe};
use crate::ops::SubscribeRequest;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    since: Option<String>,
    epoch: Option<String>,
    /// Deliver join and leave events (`?join_leave=true`; needs the `presence` scope).
    #[serde(default)]
    join_leave: bool,
    /// Credentials for browsers (EventSource cannot set headers): accepted here so the
    /// query parses; read from the raw query with the caller (`extract::session_caller`).
    #[allow(dead_code)]
    token: Option<String>,
}

/// Parses where to start: `Last-Event-ID` wins over `?since=`.
fn since(headers: &HeaderMap, query: &EventsQuery, current_epoch: impl FnOnce() -> String) -> Result<Since, Error> {
    let bad =
        |what: &str| Error::new(Code::InvalidRequest, format!("{what}: expected <epoch>:<seq>, <seq> or earliest"));
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
    _ip_slot: IpSlot,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.cancel();
        let session = self.session.clone();
        tokio::spawn(async move { session.close().await });
        metrics::session("sse", "streamhub", -1.0);
    }
}

/// The slot of a message's SSE data in its frame cache (`Delivered::frame`), after the
/// WebSocket protocols' four.
const SSE_SLOT: usize = 4;

fn json(frame: &ServerFrame) -> String {
    String::from_utf8(frame.encode(Encoding::Json)).unwrap_or_default()
}

fn event(queued: Queued, meter: &metrics::DeliveryMeter) -> Event {
    match &queued.item {
        // Expired while it waited in the queue: the notice goes in its place.
        Item::Message(d) if d.has_ttl() && d.is_expired(crate::clock::now_ms()) => {
            metrics::expired_skipped("subscription", 1);
            Event::default()
                .id(format!("{}:{}", d.epoch, d.seq()))
                .event("expired")
                .data(json(&ServerFrame::expired_message(d)))
        }
        // Events carry no id: they are no position, and are not replayed on reconnection.
        Item::Event(event) => {
            let frame = ServerFrame::event(event);
            let name = match &frame {
                ServerFrame::Join { .. } => "join",
                ServerFrame::Leave { .. } => "leave",
                _ => "ephemeral",
            };
            Event::default().event(name).data(json(&frame))
        }
        // The id moves Last-Event-ID past the expired messages.
        Item::Expired(run) => Event::default()
            .id(format!("{}:{}", run.epoch, run.to))
            .event("expired")
            .data(json(&ServerFrame::expired(run))),
        Item::Message(d) => {
            meter.delivered(d.published_ms(), crate::clock::now_ms());
            let data: Arc<str> = d.frame(SSE_SLOT, || json(&ServerFrame::message(d)).into());
            Event::default().id(format!("{}:{}", d.epoch, d.seq())).event("message").data(&*data)
        }
        // The notice's id moves Last-Event-ID past the jump, so a reconnect resumes after it.
        Item::Reset(r) => {
            Event::default().id(format!("{}:{}", r.epoch, r.seq)).event("subscribed").data(json(&ServerFrame::reset(r)))
        }
    }
}

pub(super) async fn events(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<([(header::HeaderName, &'static str); 1], Sse<impl Stream<Item = Result<Event, Infallible>>>)> {
    let ops = &state.ops;
    ops.access().check_origin(headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("")))?;
    let caller = session_caller(&state, &headers, uri.query(), client)?;
    let grant = ops.access().grant::<Subscribe>(&caller, &name)?;
    let Query(query) = query.map_err(query_error)?;
    let ip_slot = ops.access().open_session(client)?;
    let permit = state.connections.clone().try_acquire_owned().map_err(|_| {
        Error::new(Code::TooManyConnections, "this node's session limit (ws.max_connections) is reached")
    })?;
    let current = if query.epoch.is_none() {
        ops.store()
            .read_since(grant.topic(), u64::MAX, 0)
            .await
            .map_err(Error::from)?
            .position
            .epoch
            .unwrap_or_default()
    } else {
        String::new()
    };
    let since = since(&headers, &query, || current)?;
    let stop = CancellationToken::new();
    let (session, deliveries) = Session::new(state.hub.clone(), &ops.config().ws, stop.clone());
    let request = SubscribeRequest { join_leave: query.join_leave, info: None };
    let subscribed = ops.subscribe(&caller, &session, &grant, since, request).await?;
    metrics::session("sse", "streamhub", 1.0);
    session.start(grant.topic());
    let first = Event::default().event("subscribed").data(json(&ServerFrame::subscribed(None, &name, &subscribed)));
    let guard = Guard { session, stop: stop.clone(), _permit: permit, _ip_slot: ip_slot };
    let shutdown = state.shutdown.clone();
    let stream = futures::stream::once(async move { Ok(first) }).chain_with(deliveries, guard, shutdown);
    let ping = Duration::from_millis(ops.config().ws.ping_interval_ms);
    // Reverse proxies that buffer responses (nginx by default) pass this one on as it
    // comes: `X-Accel-Buffering: no` turns nginx's buffering off for it.
    let unbuffered = [(header::HeaderName::from_static("x-accel-buffering"), "no")];
    Ok((unbuffered, Sse::new(stream).keep_alive(KeepAlive::new().interval(ping))))
}

/// Appends the session's deliveries to the first event; ends on shutdown or disconnect.
trait ChainDeliveries: Stream<Item = Result<Event, Infallible>> + Sized {
    fn chain_with(
        self,
        deliveries: Deliveries,
        guard: Guard,
        shutdown: CancellationToken,
    ) -> impl Stream<Item = Result<Event, Infallible>> {
        use futures::StreamExt;
        let meter = metrics::DeliveryMeter::new("sse", "streamhub");
        let state = (deliveries, guard, shutdown, meter);
        let rest = futures::stream::unfold(state, |(mut rx, guard, shutdown, meter)| async move {
            loop {
                let queued = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = guard.stop.cancelled() => return None,
                    queued = rx.next() => queued?,
                };
                if queued.sub.is_closed() {
                    continue;
                }
                return Some((Ok(event(queued, &meter)), (rx, guard, shutdown, meter)));
            }
        });
        self.chain(rest)
    }
}

impl<S: Stream<Item = Result<Event, Infallible>>> ChainDeliveries for S {}
