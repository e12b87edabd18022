//! `/v1/ws`: one WebSocket session. The socket is split into a reader (this task: frames
//! in, replies out) and a writer task (replies first, then deliveries, then pings);
//! subscriptions, resume and slow-consumer handling live in `delivery::session`.
//!
//! Close codes (docs/PROTOCOL.md): 1001 server shutting down, 1009 inbound message over
//! `ws.max_frame_bytes`, 4000 too many protocol violations,
//! 4001 idle timeout (nothing received for `ws.idle_timeout_ms`), 4002 unauthorized (bad
//! credentials in an `auth` frame, or none within `auth.auth_timeout_ms`), 4003 the
//! session's token expired (send `auth` with a fresh token before `exp` to stay).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::access;
use super::error::ApiError;
use super::frames::{
    decode_client, ClientFrame, Encoding, FrameError, ServerFrame, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK,
};
use super::AppState;
use crate::config::Scope;
use crate::delivery::session::{Session, Since, SubscribeError};
use crate::delivery::subscription::{Item, Queued};
use crate::gateway::frames::TokenStatus;
use crate::gateway::protocol::MessageOut;
use crate::groups::consumer::SessionConsumer;
use crate::message::NewMessage;
use crate::metrics;
use crate::store::groups::{Failure, GroupDelivery, Lease};
use crate::store::StoredMessage;
use crate::topic::Topic;

pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_VIOLATIONS: u16 = 4000;
pub const CLOSE_IDLE: u16 = 4001;
pub const CLOSE_UNAUTHORIZED: u16 = 4002;
pub const CLOSE_EXPIRED: u16 = 4003;

/// How long a closing session waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Replies the reader may queue before it waits for the writer.
const REPLY_QUEUE: usize = 64;

enum Outgoing {
    Frame(Box<ServerFrame>),
    Close(u16, &'static str),
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct WsQuery {
    token: Option<String>,
}

pub(super) async fn upgrade(
    State(state): State<Arc<AppState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return ApiError::bad_request("invalid_request", rejection.body_text()).into_response(),
    };
    let token = query.ok().and_then(|q| q.0.token);
    let admitted = access::check_origin(&state.config.http, &headers)
        .and_then(|()| access::principal(&state, &headers, token.as_deref()))
        .and_then(|principal| Ok((principal, state.limiters.open_session(peer.ip())?)));
    let (principal, ip_slot) = match admitted {
        Ok(ok) => ok,
        Err(e) => return e.into_response(),
    };
    let identified = access::credential(&headers, token.as_deref()).is_some();
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!("this node serves at most {} sessions (ws.max_connections)", state.config.ws.max_connections),
        )
        .into_response();
    };
    let c = &state.config.ws;
    let tasks = state.tasks.clone();
    ws.protocols([SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK])
        .max_message_size(c.max_frame_bytes)
        .max_frame_size(c.max_frame_bytes)
        .read_buffer_size(c.read_buffer_bytes)
        .write_buffer_size(c.write_buffer_bytes)
        .on_upgrade(move |socket| {
            // The session's lines carry its upgrade request's id (the connection id).
            let span = tracing::Span::current();
            let conn = Conn {
                limiter: state.limiters.connection_publish_limiter(),
                principal,
                // Without credentials and without anonymous grants, an `auth` frame must come soon.
                auth_deadline: (!identified && !state.auth.anonymous_allowed())
                    .then(|| Instant::now() + Duration::from_millis(state.config.auth.auth_timeout_ms)),
                consumers: Consumers::default(),
                _ip_slot: ip_slot,
            };
            tasks.track_future(run(socket, state, permit, conn).instrument(span))
        })
}

/// A connection's identity, limits and group consumers.
struct Conn {
    principal: crate::auth::Principal,
    /// Set while the session must still authenticate (close 4002 when it passes).
    auth_deadline: Option<Instant>,
    limiter: governor::DefaultDirectRateLimiter,
    consumers: Consumers,
    _ip_slot: access::IpSlot,
}

impl Conn {
    /// When the session's credentials expire.
    fn expiry(&self, leeway_secs: u64) -> Option<Instant> {
        let at = self.principal.expires_at?.saturating_add(leeway_secs);
        let now = crate::message::now_ms() / 1000;
        Some(Instant::now() + Duration::from_secs(at.saturating_sub(now)))
    }
}

async fn run(socket: WebSocket, state: Arc<AppState>, permit: OwnedSemaphorePermit, mut conn: Conn) {
    let encoding = match socket.protocol().and_then(|p| p.to_str().ok()) {
        Some(SUBPROTOCOL_MSGPACK) => Encoding::Msgpack,
        _ => Encoding::Json,
    };
    ::metrics::gauge!(metrics::SESSIONS, "transport" => "ws").increment(1.0);
    let (sink, stream) = socket.split();
    let (session, deliveries) = Session::new(state.hub.clone(), &state.config.ws);
    let stop = CancellationToken::new();
    let (replies, replies_rx) = mpsc::channel(REPLY_QUEUE);
    let catchup = tokio::spawn(session.clone().run_catchup(stop.clone()).in_current_span());
    let writer = tokio::spawn(
        write(
            sink,
            replies_rx,
            deliveries,
            encoding,
            Pace {
                ping_every: Duration::from_millis(state.config.ws.ping_interval_ms),
                write_timeout: Duration::from_millis(state.config.ws.write_timeout_ms),
            },
            state.shutdown.clone(),
            stop.clone(),
        )
        .in_current_span(),
    );
    let mut stream = stream;
    read(&mut stream, &session, &replies, &state, &mut conn, stop.clone()).await;
    // In-flight group deliveries go back at once; their forwarders end with them.
    for consumer in std::mem::take(&mut conn.consumers.by_group).into_values() {
        Box::pin(consumer.close()).await;
    }
    drop(replies);
    let _ = writer.await;
    // Closing handshake: give the peer a moment to answer our close frame, so it reads
    // the close code instead of a reset connection.
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    stop.cancel();
    let _ = catchup.await;
    Box::pin(session.close()).await;
    ::metrics::gauge!(metrics::SESSIONS, "transport" => "ws").decrement(1.0);
    drop(permit);
}

/// The writer's clock: how often it pings, and how long one write may take.
struct Pace {
    ping_every: Duration,
    write_timeout: Duration,
}

/// Most frames, and bytes, written with one flush: frames that are ready together go out
/// in one system call (TCP_NODELAY is on, so a lone frame leaves at once).
const WRITE_BATCH_FRAMES: usize = 64;
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// What the writer does with one input.
enum Step {
    Send(Message),
    /// A queued item of a closed subscription: nothing to write.
    Skip,
    Close(u16, &'static str),
    /// An input closed: the session ends.
    End,
}

fn encoded(encoding: Encoding, bytes: Vec<u8>) -> Message {
    match encoding {
        Encoding::Json => Message::Text(String::from_utf8(bytes).unwrap_or_default().into()),
        Encoding::Msgpack => Message::Binary(bytes.into()),
    }
}

fn reply_step(reply: Option<Outgoing>, encoding: Encoding) -> Step {
    match reply {
        Some(Outgoing::Frame(f)) => Step::Send(encoded(encoding, f.encode(encoding))),
        Some(Outgoing::Close(code, reason)) => Step::Close(code, reason),
        None => Step::End,
    }
}

fn delivery_step(queued: Option<Queued>, encoding: Encoding) -> Step {
    let Some(q) = queued else { return Step::End };
    if q.sub.is_closed() {
        return Step::Skip;
    }
    match &q.item {
        Item::Message(d) => {
            metrics::delivered("ws", d.published_ms());
            // Encoded once per message and encoding on this node, shared by its sessions.
            let bytes = d.frames[encoding.slot()].get_or_init(|| ServerFrame::message(d).encode(encoding).into());
            Step::Send(match encoding {
                Encoding::Json => {
                    Message::Text(axum::extract::ws::Utf8Bytes::try_from(bytes.clone()).unwrap_or_default())
                }
                Encoding::Msgpack => Message::Binary(bytes.clone()),
            })
        }
        Item::Reset(r) => Step::Send(encoded(encoding, ServerFrame::reset(r).encode(encoding))),
    }
}

fn size(message: &Message) -> usize {
    match message {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 16,
    }
}

async fn write(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut replies: mpsc::Receiver<Outgoing>,
    mut deliveries: mpsc::Receiver<Queued>,
    encoding: Encoding,
    Pace { ping_every, write_timeout }: Pace,
    server_shutdown: CancellationToken,
    stop: CancellationToken,
) {
    use tokio::sync::mpsc::error::TryRecvError;
    let close = |code: u16, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    loop {
        let mut step = tokio::select! {
            biased;
            _ = server_shutdown.cancelled() => Step::Close(CLOSE_GOING_AWAY, "server shutting down"),
            _ = stop.cancelled() => break,
            reply = replies.recv() => reply_step(reply, encoding),
            queued = deliveries.recv() => delivery_step(queued, encoding),
            _ = ping.tick() => Step::Send(Message::Ping(Default::default())),
        };
        // Whatever else is ready goes with it (replies first, as in the select above),
        // then one flush.
        let (mut batch, mut bytes, mut last) = (Vec::new(), 0, false);
        loop {
            match step {
                Step::Send(m) => {
                    bytes += size(&m);
                    batch.push(m);
                }
                Step::Skip => {}
                Step::Close(code, reason) => {
                    ::metrics::counter!(metrics::SESSIONS_CLOSED, "code" => code.to_string()).increment(1);
                    batch.push(close(code, reason));
                    last = true;
                    break;
                }
                Step::End => {
                    last = true;
                    break;
                }
            }
            if batch.len() >= WRITE_BATCH_FRAMES || bytes >= WRITE_BATCH_BYTES {
                break;
            }
            step = match replies.try_recv() {
                Ok(reply) => reply_step(Some(reply), encoding),
                Err(TryRecvError::Disconnected) => Step::End,
                Err(TryRecvError::Empty) => match deliveries.try_recv() {
                    Ok(queued) => delivery_step(Some(queued), encoding),
                    Err(TryRecvError::Disconnected) => Step::End,
                    Err(TryRecvError::Empty) => break,
                },
            };
        }
        if !batch.is_empty() {
            let sent = tokio::time::timeout(write_timeout, async {
                for message in batch {
                    sink.feed(message).await?;
                }
                sink.flush().await
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    // The peer stopped reading: its buffers are full, so a close frame
                    // could not be sent either. Drop the connection.
                    tracing::info!(
                        timeout_ms = write_timeout.as_millis() as u64,
                        "peer stopped reading; closing the session"
                    );
                    ::metrics::counter!(metrics::SLOW_SESSIONS_CLOSED, "transport" => "ws").increment(1);
                    break;
                }
            }
        }
        if last {
            break;
        }
    }
    // Whatever ended the writer ends the session.
    stop.cancel();
}

fn is_too_big(error: axum::Error) -> bool {
    error
        .into_inner()
        .downcast_ref::<tokio_tungstenite::tungstenite::Error>()
        .is_some_and(|e| matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)))
}

/// The session's group consumers (the `consume` op).
#[derive(Default)]
struct Consumers {
    by_group: std::collections::HashMap<(String, String), Arc<SessionConsumer>>,
}

async fn read(
    stream: &mut futures::stream::SplitStream<WebSocket>,
    session: &Arc<Session>,
    replies: &mpsc::Sender<Outgoing>,
    state: &Arc<AppState>,
    conn: &mut Conn,
    stop: CancellationToken,
) {
    let idle = Duration::from_millis(state.config.ws.idle_timeout_ms);
    let mut deadline = Instant::now() + idle;
    let mut violations = 0u32;
    loop {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let inbound = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => {
                let _ = replies.send(Outgoing::Close(CLOSE_IDLE, "idle timeout")).await;
                return;
            }
            _ = tokio::time::sleep_until(conn.auth_deadline.unwrap_or(far)) => {
                let _ = replies.send(Outgoing::Close(CLOSE_UNAUTHORIZED, "authentication required")).await;
                return;
            }
            _ = tokio::time::sleep_until(conn.expiry(state.auth.leeway_secs).unwrap_or(far)) => {
                let _ = replies.send(Outgoing::Close(CLOSE_EXPIRED, "token expired")).await;
                return;
            }
            inbound = stream.next() => inbound,
        };
        let (bytes, encoding) = match inbound {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Err(e)) => {
                if is_too_big(e) {
                    let _ = replies.send(Outgoing::Close(CLOSE_TOO_BIG, "message over ws.max_frame_bytes")).await;
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
            Ok(frame) => Box::pin(handle(frame, session, state, conn, replies)).await,
            Err(e) => Err(e),
        };
        if is_auth {
            // Bad credentials end the session; a refresh for another subject only fails.
            if let Err(FrameError { id, code, message }) = &reply {
                if *code != "subject_changed" {
                    let error = ServerFrame::error(*id, code, message.clone());
                    let _ = replies.send(Outgoing::Frame(Box::new(error))).await;
                    let _ = replies.send(Outgoing::Close(CLOSE_UNAUTHORIZED, "unauthorized")).await;
                    return;
                }
            }
        }
        let frame = match reply {
            Ok(frame) => frame,
            Err(FrameError { id, code, message }) => {
                if is_violation(code) {
                    violations += 1;
                }
                ServerFrame::error(id, code, message)
            }
        };
        let starts = match &frame {
            ServerFrame::Subscribed { topic, .. } => Topic::parse(topic, usize::MAX).ok(),
            _ => None,
        };
        if replies.send(Outgoing::Frame(Box::new(frame))).await.is_err() {
            return;
        }
        if let Some(topic) = starts {
            // Only now, with the reply queued ahead of them, may its messages flow.
            session.start(&topic);
        }
        if violations >= state.config.ws.max_violations {
            let _ = replies.send(Outgoing::Close(CLOSE_VIOLATIONS, "too many protocol violations")).await;
            return;
        }
    }
}

fn check(
    state: &AppState,
    principal: &crate::auth::Principal,
    scope: Scope,
    topic: &str,
    id: u64,
) -> Result<(), FrameError> {
    if state.auth.allows(principal, scope, topic) {
        return Ok(());
    }
    let code = if principal.kind == crate::auth::PrincipalKind::Anonymous { "unauthorized" } else { "forbidden" };
    Err(FrameError {
        id: Some(id),
        code,
        message: format!("{} may not {} on {topic}", principal.subject, access::scope_name(scope)),
    })
}

fn consumer_of(consumers: &Consumers, id: u64, topic: &str, group: &str) -> Result<Arc<SessionConsumer>, FrameError> {
    consumers.by_group.get(&(topic.to_string(), group.to_string())).cloned().ok_or_else(|| FrameError {
        id: Some(id),
        code: "not_consuming",
        message: format!("this session does not consume {topic}/{group}"),
    })
}

/// Errors caused by the client (they count towards `ws.max_violations`), as opposed to
/// the server's own trouble (`redis_unavailable`, `not_replicated`, `internal`).
fn is_violation(code: &str) -> bool {
    !matches!(code, "redis_unavailable" | "not_replicated" | "internal" | "group_not_ready")
}

fn refused(id: u64, e: ApiError) -> FrameError {
    FrameError { id: Some(id), code: e.code, message: e.message }
}

fn topic(id: u64, name: &str, state: &AppState) -> Result<Topic, FrameError> {
    Topic::parse(name, state.config.limits.max_topic_bytes).map_err(|e| refused(id, e.into()))
}

fn settled(id: u64, tokens: Vec<String>, statuses: Vec<&'static str>) -> ServerFrame {
    let results = tokens
        .into_iter()
        .zip(statuses)
        .map(|(token, status)| TokenStatus { token, status: status.to_string() })
        .collect();
    ServerFrame::Settled { id, results }
}

/// Parses tokens; answers "invalid_token" for the unparsable ones, settles the rest.
async fn settle_tokens(
    id: u64,
    tokens: Vec<String>,
    max: usize,
    settle: impl AsyncFnOnce(Vec<Lease>) -> Result<Vec<&'static str>, crate::store::StoreError>,
) -> Result<ServerFrame, FrameError> {
    if tokens.is_empty() || tokens.len() > max {
        return Err(FrameError { id: Some(id), code: "invalid_request", message: format!("1 to {max} tokens") });
    }
    let parsed: Vec<Option<Lease>> = tokens.iter().map(|t| Lease::parse(t)).collect();
    let valid: Vec<Lease> = parsed.iter().flatten().cloned().collect();
    let mut statuses =
        if valid.is_empty() { Vec::new() } else { settle(valid).await.map_err(|e| refused(id, e.into()))? }.into_iter();
    let all = parsed
        .iter()
        .map(|p| if p.is_some() { statuses.next().unwrap_or("unknown") } else { "invalid_token" })
        .collect();
    Ok(settled(id, tokens, all))
}

async fn handle(
    frame: ClientFrame,
    session: &Arc<Session>,
    state: &Arc<AppState>,
    conn: &mut Conn,
    replies: &mpsc::Sender<Outgoing>,
) -> Result<ServerFrame, FrameError> {
    if conn.auth_deadline.is_some() && !matches!(frame, ClientFrame::Auth { .. } | ClientFrame::Ping { .. }) {
        return Err(FrameError {
            id: frame.id(),
            code: "unauthorized",
            message: "authenticate first (auth frame)".into(),
        });
    }
    let consumers = &mut conn.consumers;
    match frame {
        ClientFrame::Auth { id, token } => {
            let principal = state.auth.authenticate(&token).map_err(|e| FrameError {
                id: Some(id),
                code: e.code(),
                message: e.to_string(),
            })?;
            let current = &conn.principal;
            if current.kind != crate::auth::PrincipalKind::Anonymous && current.subject != principal.subject {
                return Err(FrameError {
                    id: Some(id),
                    code: "subject_changed",
                    message: "a refresh must keep the same subject".into(),
                });
            }
            let frame =
                ServerFrame::Authenticated { id, subject: principal.subject.clone(), expires_at: principal.expires_at };
            conn.principal = principal;
            conn.auth_deadline = None;
            Ok(frame)
        }
        ClientFrame::Consume { id, topic: name, group, prefetch } => {
            topic(id, &name, state)?;
            check(state, &conn.principal, Scope::Consume, &name, id)?;
            let g = state.groups.get(&name, &group).ok_or_else(|| FrameError {
                id: Some(id),
                code: "group_not_found",
                message: format!("no group {group} is declared on topic {name}"),
            })?;
            if g.spec.target != crate::config::TargetKind::Pull {
                return Err(FrameError {
                    id: Some(id),
                    code: "not_a_pull_group",
                    message: "this group is delivered by webhook".into(),
                });
            }
            let key = (name.clone(), group.clone());
            if consumers.by_group.contains_key(&key) {
                return Err(FrameError {
                    id: Some(id),
                    code: "already_consuming",
                    message: format!("already consuming {name}/{group}"),
                });
            }
            if consumers.by_group.len() + session.subscription_count() >= state.config.ws.max_subscriptions {
                return Err(FrameError {
                    id: Some(id),
                    code: "too_many_subscriptions",
                    message: format!(
                        "at most {} subscriptions and consumers per session (ws.max_subscriptions)",
                        state.config.ws.max_subscriptions
                    ),
                });
            }
            let prefetch = prefetch.unwrap_or(10).clamp(1, state.config.groups.max_fetch as u32) as usize;
            let (tx, mut rx) = mpsc::channel::<GroupDelivery>(prefetch);
            let sweep = Duration::from_millis(state.config.groups.sweep_interval_ms);
            let name_for_consumer = state.groups.consumer(&format!("ws-{}", uuid::Uuid::now_v7().simple()));
            let consumer = SessionConsumer::start(g, state.store.clone(), name_for_consumer, prefetch, sweep, tx);
            consumers.by_group.insert(key, consumer);
            // Forward deliveries as frames, behind the `consuming` reply already queued.
            let (forward, t, gname) = (replies.clone(), name.clone(), group.clone());
            tokio::spawn(async move {
                while let Some(d) = rx.recv().await {
                    let frame = ServerFrame::Delivery {
                        topic: t.clone(),
                        group: gname.clone(),
                        token: d.lease.token(),
                        attempt: d.attempt,
                        last_error: d.last_error,
                        message: MessageOut::from(StoredMessage { seq: d.seq, envelope: d.envelope }),
                    };
                    if forward.send(Outgoing::Frame(Box::new(frame))).await.is_err() {
                        return;
                    }
                }
            });
            Ok(ServerFrame::Consuming { id, topic: name, group })
        }
        ClientFrame::Ack { id, topic: name, group, tokens } => {
            check(state, &conn.principal, Scope::Consume, &name, id)?;
            let consumer = consumer_of(consumers, id, &name, &group)?;
            settle_tokens(id, tokens, state.config.groups.max_fetch, async |leases| consumer.ack(&leases).await).await
        }
        ClientFrame::Nack { id, topic: name, group, tokens, error, retry_after_ms, permanent } => {
            check(state, &conn.principal, Scope::Consume, &name, id)?;
            let consumer = consumer_of(consumers, id, &name, &group)?;
            let failure =
                if permanent { Failure::Permanent } else { Failure::Retry(retry_after_ms.map(Duration::from_millis)) };
            let error: String = error.unwrap_or_else(|| "nacked by the consumer".into()).chars().take(1024).collect();
            settle_tokens(id, tokens, state.config.groups.max_fetch, async |leases| {
                consumer.nack(&leases, failure, &error).await
            })
            .await
        }
        ClientFrame::Ping { id } => Ok(ServerFrame::Pong { id }),
        ClientFrame::Subscribe { id, topic: name, since } => {
            let topic = topic(id, &name, state)?;
            // Checked on every subscribe, resumes included.
            check(state, &conn.principal, Scope::Subscribe, &name, id)?;
            let since = match since {
                None => Since::Now,
                Some(s) => {
                    s.to_since().map_err(|message| FrameError { id: Some(id), code: "invalid_request", message })?
                }
            };
            match session.subscribe(topic, since).await {
                Ok(subscribed) => Ok(ServerFrame::subscribed(Some(id), &name, &subscribed)),
                Err(e @ SubscribeError::AlreadySubscribed(_)) => {
                    Err(FrameError { id: Some(id), code: "already_subscribed", message: e.to_string() })
                }
                Err(e @ SubscribeError::TooMany(_)) => {
                    Err(FrameError { id: Some(id), code: "too_many_subscriptions", message: e.to_string() })
                }
                Err(SubscribeError::Store(e)) => Err(refused(id, e.into())),
            }
        }
        ClientFrame::Unsubscribe { id, topic: name } => {
            let topic = topic(id, &name, state)?;
            if session.unsubscribe(&topic).await {
                Ok(ServerFrame::Unsubscribed { id, topic: name })
            } else {
                Err(FrameError { id: Some(id), code: "not_subscribed", message: format!("not subscribed to {name}") })
            }
        }
        ClientFrame::Publish { id, topic: name, data, headers, ttl_ms, idempotency_key } => {
            let topic = topic(id, &name, state)?;
            check(state, &conn.principal, Scope::Publish, &name, id)?;
            if conn.limiter.check().is_err() {
                return Err(FrameError {
                    id: Some(id),
                    code: "rate_limited",
                    message: "publish rate of this connection (http.publish_rate_per_sec) exceeded".into(),
                });
            }
            let message = NewMessage {
                payload: serde_json::to_vec(&data).unwrap_or_default(),
                content_type: "application/json".into(),
                headers,
                ttl_ms,
                idempotency_key,
            }
            .check(&state.config.limits)
            .map_err(|e| refused(id, super::publish::rejected(e.into())))?;
            let published = super::publish::store(state, &topic, vec![message]).await.map_err(|e| refused(id, e))?;
            let p = published.into_iter().next().ok_or_else(|| FrameError {
                id: Some(id),
                code: "internal",
                message: "internal error".into(),
            })?;
            Ok(ServerFrame::Published {
                id,
                topic: name,
                epoch: p.epoch,
                seq: p.seq,
                message_id: p.id,
                duplicate: p.duplicate,
            })
        }
    }
}
