//! `/v1/ws`: one native WebSocket session. The socket is split into a reader (this task:
//! frames in, replies out, the keep-alive and the node's shutdown told to the writer;
//! each op is one small function in `ws_ops.rs`) and a writer task (`ws_write.rs`:
//! replies first, then deliveries); subscriptions,
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

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::extract::{credential, ClientAddr};
use super::frames::{
    decode_client, ClientFrame, Encoding, FrameError, ServerFrame, CLOSE_EXPIRED, CLOSE_IDLE, CLOSE_TOO_BIG,
    CLOSE_UNAUTHORIZED, CLOSE_VIOLATIONS, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK,
};
use super::ws_session::{admit, heard, socket_config, Admitted, Beat, Heard, Link, Read, Tick, Woke};
use super::ws_socket::{Reader, Socket, Upgrade};
use super::ws_write::{Native, Outgoing, Replies};
use super::AppState;
use crate::delivery::session::Session;
use crate::error::Code;
use crate::groups::consumer::SessionConsumer;
use crate::ops::access::Caller;
use crate::topic::Topic;

pub(super) async fn upgrade(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<Upgrade, crate::error::Error>,
) -> Response {
    let (ws, admitted) = match admit(&state, client, &headers, uri.query(), ws) {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    let protocol = ws.protocol(&[SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK]);
    let encoding = match protocol {
        Some(SUBPROTOCOL_MSGPACK) => Encoding::Msgpack,
        _ => Encoding::Json,
    };
    let config = socket_config(&state);
    let identified = credential(&headers, None).ok().flatten().is_some() || uri.query().is_some_and(has_token);
    // Boxed until the upgrade completes: the upgrade's task keeps what its callback
    // captures for the session's whole life (ARCHITECTURE §6).
    let admitted = Box::new((state, admitted));
    ws.accept(protocol, config, move |socket| {
        let (state, admitted) = *admitted;
        // The session's lines carry its upgrade request's id (the connection id).
        let span = tracing::Span::current();
        // Without credentials and without anonymous grants, an `auth` frame must come soon.
        let auth_deadline = (!identified && !state.ops.access().auth().anonymous_allowed())
            .then(|| Instant::now() + Duration::from_millis(state.ops.config().auth.auth_timeout_ms));
        let tasks = state.tasks.clone();
        tasks.track_future(run(socket, encoding, state, admitted, auth_deadline).instrument(span))
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
    pub replies: Replies<Box<ServerFrame>>,
}

/// What a reply announces, and may only begin once the reply is queued ahead of it.
pub(super) enum Starts {
    /// The messages of a new subscription (`Session::start`).
    Subscription(Topic),
    /// The `delivery` frames of a new consumer: its forwarder waits for this signal.
    Consumer(oneshot::Sender<()>),
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

/// Opens the session on its socket and returns its life: its user online, frames read
/// and answered until it ends, then its consumers closed and the link finished. The setup
/// is not itself async, and the life is an `async` block rather than an `async fn`: what
/// only the setup needs (the socket, the admission) is not kept in the session's future,
/// nor are the parameters copied into it twice (ARCHITECTURE §6).
fn run(
    socket: Socket,
    encoding: Encoding,
    state: Arc<AppState>,
    Admitted { caller, ip_slot, permit }: Admitted,
    auth_deadline: Option<Instant>,
) -> impl std::future::Future<Output = ()> + Send {
    let (link, mut stream) = Link::open(socket, &state, Native(encoding), permit, ip_slot);
    let user =
        (caller.principal.kind != crate::auth::PrincipalKind::Anonymous).then(|| caller.principal.subject.clone());
    let session = link.session.clone();
    let caller = Caller { client: Some(session.client().into()), ..caller };
    let mut conn =
        Conn { state, caller, auth_deadline, session, consumers: HashMap::new(), replies: link.replies.clone() };
    let mut beat =
        Beat::new(Duration::from_millis(conn.state.ops.config().ws.ping_interval_ms), conn.state.shutdown.clone());
    async move {
        if let Some(user) = user {
            Box::pin(beat.during(&conn.replies, conn.session.set_user(&user))).await;
        }
        read(&mut stream, &mut conn, link.stop.clone(), beat).await;
        // In-flight group deliveries go back at once; their forwarders end with them.
        for consumer in std::mem::take(&mut conn.consumers).into_values() {
            Box::pin(consumer.close()).await;
        }
        drop(conn);
        Box::pin(link.finish(stream)).await;
    }
}

/// Reads frames until the session ends, answering each. Only the wait for the next
/// frame is kept in the session's future; a frame's handling is boxed (it lives only
/// while it runs).
async fn read(stream: &mut Reader, conn: &mut Conn, stop: CancellationToken, mut beat: Beat) {
    let idle = Duration::from_millis(conn.state.ops.config().ws.idle_timeout_ms);
    // The reader's own handle on the writer's queue, for what `beat` tells it while an op
    // holds the connection.
    let replies = conn.replies.clone();
    let mut deadline = Instant::now() + idle;
    let mut violations = 0u32;
    loop {
        // One timer for the earliest of the session's deadlines (a timer per deadline
        // would be registered and dropped again for every inbound frame).
        let (at, due) = [
            (conn.auth_deadline, Due::Close((CLOSE_UNAUTHORIZED, "authentication required"))),
            (conn.expiry(), Due::Close((CLOSE_EXPIRED, "token expired"))),
            (Some(beat.due()), Due::Ping),
        ]
        .into_iter()
        .filter_map(|(at, due)| Some((at?, due)))
        .fold((deadline, Due::Close((CLOSE_IDLE, "idle timeout"))), |earliest, next| {
            if next.0 < earliest.0 {
                next
            } else {
                earliest
            }
        });
        let woke = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(at) => match due {
                Due::Close(close) => Woke::Inbound(Inbound::Deadline(close)),
                Due::Ping => Woke::Beat(Tick::Ping),
            },
            _ = beat.shutting_down() => Woke::Beat(Tick::Shutdown),
            inbound = stream.next() => Woke::Inbound(Inbound::Frame(inbound)),
        };
        let Some(inbound) = beat.take(&replies, woke).await else { continue };
        // The idle timeout counts from the frame's arrival, not from the end of its handling.
        let arrived = Instant::now();
        match Box::pin(beat.during(&replies, conn.inbound(inbound, &mut violations))).await {
            Flow::Continue => deadline = arrived + idle,
            Flow::End => return,
        }
    }
}

/// What the reader does when its earliest deadline passes.
enum Due {
    Close((u16, &'static str)),
    Ping,
}

/// What the reader handles (a beat is the loop's: `Woke`).
enum Inbound {
    /// A deadline passed: the session closes with this code and reason.
    Deadline((u16, &'static str)),
    /// The socket's next message (None: it closed).
    Frame(Read),
}

/// Whether the session reads on.
enum Flow {
    Continue,
    End,
}

impl Conn {
    /// Handles what the reader's wait returned: a frame is answered (its reply queued to
    /// the writer), anything else ends the session, with a close frame where it says why.
    async fn inbound(&mut self, inbound: Inbound, violations: &mut u32) -> Flow {
        let read = match inbound {
            Inbound::Deadline((code, reason)) => return self.close(code, reason).await,
            Inbound::Frame(read) => read,
        };
        let (bytes, encoding) = match heard(&self.replies, read).await {
            Heard::Data(bytes, false) => (bytes, Encoding::Json),
            Heard::Data(bytes, true) => (bytes, Encoding::Msgpack),
            Heard::Control => return Flow::Continue,
            Heard::Closed => return Flow::End,
            Heard::TooBig => return self.close(CLOSE_TOO_BIG, "message over ws.max_frame_bytes").await,
        };
        let decoded = decode_client(&bytes, encoding);
        let is_auth = matches!(decoded, Ok(ClientFrame::Auth { .. }));
        let reply = match decoded {
            Ok(frame) => self.apply(frame).await,
            Err(e) => Err(e),
        };
        let (frame, starts) = match reply {
            Ok(reply) => reply,
            Err(FrameError { id, error }) => {
                if is_auth && error.code != Code::SubjectChanged {
                    // Bad credentials end the session; a refresh for another subject only fails.
                    let _ = self.replies.send(Outgoing::Frame(Box::new(ServerFrame::error(id, error)))).await;
                    return self.close(CLOSE_UNAUTHORIZED, "unauthorized").await;
                }
                if error.code.is_client_fault() {
                    *violations += 1;
                }
                (ServerFrame::error(id, error), None)
            }
        };
        if self.replies.send(Outgoing::Frame(Box::new(frame))).await.is_err() {
            return Flow::End;
        }
        // Only now, with the reply queued ahead of them, may its messages or deliveries flow.
        match starts {
            Some(Starts::Subscription(topic)) => self.session.start(&topic),
            Some(Starts::Consumer(go)) => {
                let _ = go.send(());
            }
            None => {}
        }
        if *violations >= self.state.ops.config().ws.max_violations {
            return self.close(CLOSE_VIOLATIONS, "too many protocol violations").await;
        }
        Flow::Continue
    }

    /// Queues the close frame; the session ends.
    async fn close(&mut self, code: u16, reason: &'static str) -> Flow {
        let _ = self.replies.send(Outgoing::close(code, reason)).await;
        Flow::End
    }
}

#[cfg(test)]
mod tests {
    use super::super::ws_session::future_size as size;
    use super::*;

    /// What an idle session keeps in its task: the wait for the next frame, the
    /// connection's state and its link. A frame's handling and the end of the session
    /// are boxed; were they inline, every idle session would reserve their size.
    #[test]
    #[allow(unreachable_code, unused_variables, clippy::diverging_sub_expression)]
    fn an_idle_sessions_future_stays_small() {
        let never = std::hint::black_box(false);
        let session =
            if never { Some(run(unreachable!(), Encoding::Json, unreachable!(), unreachable!(), None)) } else { None };
        let read =
            if never { Some(read(unreachable!(), unreachable!(), unreachable!(), unreachable!())) } else { None };
        let (session, read) = (size(&session), size(&read));
        // It also watches the keep-alive and the node's shutdown (`ws_session::Beat`),
        // which the writer no longer keeps.
        assert!(read <= 576, "the reader's future is {read} bytes");
        assert!(session <= 1024, "the session's future is {session} bytes");
    }
}
