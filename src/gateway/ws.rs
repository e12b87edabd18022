//! `/v1/ws`: one native WebSocket session. The socket is split into a reader (this task:
//! frames in, replies out; each op is one small function in `ws_ops.rs`) and a writer
//! task (`ws_write.rs`: replies first, then deliveries, then pings); subscriptions,
//! resume and slow-consumer handling live in `delivery::session`.
//!
//! Close codes (docs/PROTOCOL.md): 1001 server shutting down, 1009 inbound message over
//! `ws.max_frame_bytes`, 4000 too many protocol violations,
//! 4001 idle timeout (nothing received for `ws.idle_timeout_ms`), 4002 unauthorized (bad
//! credentials in an `auth` frame, or none within `auth.auth_timeout_ms`), 4003 the
//! session's token expired (send `auth` with a fresh token before `exp` to stay).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::extract::{credential, ClientAddr};
use super::frames::{
    decode_client, ClientFrame, Encoding, FrameError, ServerFrame, CLOSE_EXPIRED, CLOSE_IDLE, CLOSE_TOO_BIG,
    CLOSE_UNAUTHORIZED, CLOSE_VIOLATIONS, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK,
};
use super::ws_session::{admit, is_too_big, Admitted, Link};
use super::ws_write::{Native, Outgoing};
use super::AppState;
use crate::delivery::session::Session;
use crate::error::Code;
use crate::groups::consumer::SessionConsumer;
use crate::ops::access::{Caller, IpSlot};

pub(super) async fn upgrade(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let (ws, Admitted { caller, ip_slot, permit }) = match admit(&state, client, &headers, uri.query(), ws) {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    let identified = credential(&headers, None).ok().flatten().is_some() || uri.query().is_some_and(has_token);
    let tasks = state.tasks.clone();
    ws.protocols([SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK]).on_upgrade(move |socket| {
        // The session's lines carry its upgrade request's id (the connection id).
        let span = tracing::Span::current();
        // Without credentials and without anonymous grants, an `auth` frame must come soon.
        let auth_deadline = (!identified && !state.ops.access().auth().anonymous_allowed())
            .then(|| Instant::now() + Duration::from_millis(state.ops.config().auth.auth_timeout_ms));
        tasks.track_future(run(socket, state, permit, caller, auth_deadline, ip_slot).instrument(span))
    })
}

fn has_token(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(name, _)| name == "token")
}

/// A connection's identity, limits, subscriptions and group consumers: what its ops act on.
pub(super) struct Conn {
    pub state: Arc<AppState>,
    /// The principal (replaced by a successful `auth`), the client's address, and the
    /// connection's own publish budget.
    pub caller: Caller,
    /// Set while the session must still authenticate (close 4002 when it passes).
    pub auth_deadline: Option<Instant>,
    pub session: Arc<Session>,
    /// The session's group consumers (the `consume` op), by (topic, group).
    pub consumers: HashMap<(String, String), Arc<SessionConsumer>>,
    /// The reader's queue to the writer (deliveries of consumers are forwarded into it).
    pub replies: mpsc::Sender<Outgoing<Box<ServerFrame>>>,
}

/// A point in time `secs` from now, or None when it is too far to be represented (a
/// token whose `exp` is near 2⁶⁴): then the session simply never expires by it.
fn after_secs(secs: u64) -> Option<Instant> {
    Instant::now().checked_add(Duration::from_secs(secs))
}

impl Conn {
    /// When the session's credentials expire: `exp` + the leeway they were accepted with.
    fn expiry(&self) -> Option<Instant> {
        let leeway = self.state.ops.access().auth().leeway_secs;
        let at = self.caller.principal.expires_at?.saturating_add(leeway);
        after_secs(at.saturating_sub(crate::clock::now_ms() / 1000))
    }
}

async fn run(
    socket: WebSocket,
    state: Arc<AppState>,
    permit: OwnedSemaphorePermit,
    caller: Caller,
    auth_deadline: Option<Instant>,
    ip_slot: IpSlot,
) {
    let encoding = match socket.protocol().and_then(|p| p.to_str().ok()) {
        Some(SUBPROTOCOL_MSGPACK) => Encoding::Msgpack,
        _ => Encoding::Json,
    };
    let ping_every = Duration::from_millis(state.ops.config().ws.ping_interval_ms);
    let (link, mut stream) = Link::open(socket, &state, Native(encoding), ping_every, permit, ip_slot);
    let session = link.session.clone();
    if caller.principal.kind != crate::auth::PrincipalKind::Anonymous {
        session.set_user(&caller.principal.subject).await;
    }
    let caller = Caller { client: Some(session.client().into()), ..caller };
    let mut conn = Conn {
        state: state.clone(),
        caller,
        auth_deadline,
        session,
        consumers: HashMap::new(),
        replies: link.replies.clone(),
    };
    read(&mut stream, &mut conn, link.stop.clone()).await;
    // In-flight group deliveries go back at once; their forwarders end with them.
    for consumer in std::mem::take(&mut conn.consumers).into_values() {
        Box::pin(consumer.close()).await;
    }
    drop(conn);
    link.finish(stream).await;
}

/// Reads frames until the session ends, answering each.
async fn read(stream: &mut futures::stream::SplitStream<WebSocket>, conn: &mut Conn, stop: CancellationToken) {
    let config = conn.state.ops.config().ws.clone();
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let mut deadline = Instant::now() + idle;
    let mut violations = 0u32;
    loop {
        // One timer for the earliest of the session's deadlines (a timer per deadline
        // would be registered and dropped again for every inbound frame).
        let (at, close) = [
            (conn.auth_deadline, (CLOSE_UNAUTHORIZED, "authentication required")),
            (conn.expiry(), (CLOSE_EXPIRED, "token expired")),
        ]
        .into_iter()
        .filter_map(|(at, close)| Some((at?, close)))
        .fold(
            (deadline, (CLOSE_IDLE, "idle timeout")),
            |earliest, next| if next.0 < earliest.0 { next } else { earliest },
        );
        let inbound = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(at) => {
                let _ = conn.replies.send(Outgoing::close(close.0, close.1)).await;
                return;
            }
            inbound = stream.next() => inbound,
        };
        let (bytes, encoding) = match inbound {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Err(e)) => {
                if is_too_big(e) {
                    let _ = conn.replies.send(Outgoing::close(CLOSE_TOO_BIG, "message over ws.max_frame_bytes")).await;
                }
                return;
            }
            Some(Ok(Message::Text(text))) => (text.as_str().as_bytes().to_vec(), Encoding::Json),
            Some(Ok(Message::Binary(bytes))) => (bytes.to_vec(), Encoding::Msgpack),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                deadline = Instant::now() + idle;
                continue;
            }
        };
        deadline = Instant::now() + idle;
        let decoded = decode_client(&bytes, encoding);
        let is_auth = matches!(decoded, Ok(ClientFrame::Auth { .. }));
        let reply = match decoded {
            // Boxed: a frame's handling is a large future that lives only while it runs;
            // inline, it would sit in every idle session's reader (ARCHITECTURE §6).
            Ok(frame) => Box::pin(conn.apply(frame)).await,
            Err(e) => Err(e),
        };
        let (frame, starts) = match reply {
            Ok(reply) => reply,
            Err(FrameError { id, error }) => {
                if is_auth && error.code != Code::SubjectChanged {
                    // Bad credentials end the session; a refresh for another subject only fails.
                    let _ = conn.replies.send(Outgoing::Frame(Box::new(ServerFrame::error(id, error)))).await;
                    let _ = conn.replies.send(Outgoing::close(CLOSE_UNAUTHORIZED, "unauthorized")).await;
                    return;
                }
                if error.code.is_client_fault() {
                    violations += 1;
                }
                (ServerFrame::error(id, error), None)
            }
        };
        if conn.replies.send(Outgoing::Frame(Box::new(frame))).await.is_err() {
            return;
        }
        if let Some(topic) = starts {
            // Only now, with the reply queued ahead of them, may its messages flow.
            conn.session.start(&topic);
        }
        if violations >= config.max_violations {
            let _ = conn.replies.send(Outgoing::close(CLOSE_VIOLATIONS, "too many protocol violations")).await;
            return;
        }
    }
}
