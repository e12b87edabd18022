//! One Centrifugo client connection: its reader loop and its commands, each mapped onto
//! the same operations as the native protocol's ops (`crate::ops`), with the same
//! session, limits and access rules. Replies and pushes are written by the shared writer
//! with the `Centrifugo` encoder (encode.rs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::codec::{is_pong, Format, SUBPROTOCOL_PROTOBUF};
use super::codes::{self, reply_error};
use super::encode::{client_info, Centrifugo};
use super::history::{history, Refused};
use super::proto::{self, Command, Reply};
use crate::auth::{Principal, PrincipalKind};
use crate::delivery::session::{Session, Since};
use crate::error::{Code, Error};
use crate::gateway::extract::ClientAddr;
use crate::gateway::ws_session::{admit, heard, socket_config, Admitted, Beat, Heard, Link, Read, Tick, Woke};
use crate::gateway::ws_socket::{Reader, Socket, Upgrade};
use crate::gateway::ws_write::{Outgoing, Replies};
use crate::gateway::AppState;
use crate::message::NewMessage;
use crate::ops::access::{Caller, PresenceRead, Publish, Subscribe};
use crate::ops::SubscribeRequest;
use crate::topic::Topic;

/// The JSON subprotocol name some clients ask for (JSON is also the default without one).
const SUBPROTOCOL_JSON: &str = "centrifuge-json";

pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<Upgrade, Error>,
) -> Response {
    let (ws, admitted) = match admit(&state, client, &headers, uri.query(), ws) {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    // `?format=protobuf` / `?cf_protocol=protobuf` pick Protobuf for clients that cannot
    // ask for a subprotocol.
    let query_protobuf = uri.query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| (k == "format" || k == "cf_protocol") && v == "protobuf")
    });
    // Boxed until the upgrade completes: the upgrade's task keeps what its callback
    // captures for the session's whole life (ARCHITECTURE §6).
    let admitted = Box::new((state, admitted));
    // A subprotocol is echoed only when the client asked for it (strict clients fail on
    // an answer they did not ask for).
    let protocol = ws.protocol(&[SUBPROTOCOL_PROTOBUF, SUBPROTOCOL_JSON]);
    let format = match protocol {
        Some(SUBPROTOCOL_PROTOBUF) => Format::Protobuf,
        Some(_) => Format::Json,
        None if query_protobuf => Format::Protobuf,
        None => Format::Json,
    };
    let config = socket_config(&admitted.0);
    ws.accept(protocol, config, move |socket| {
        let (state, admitted) = *admitted;
        let span = tracing::Span::current();
        let tasks = state.tasks.clone();
        tasks.track_future(run(socket, state, format, admitted).instrument(span))
    })
}

/// Opens the session on its socket and returns its life (frames read and answered until
/// it ends, then the link finished): set up outside the session's future, which keeps
/// only what the reader needs (as the native protocol's `run`, ARCHITECTURE §6).
fn run(
    socket: Socket,
    state: Arc<AppState>,
    format: Format,
    Admitted { caller, ip_slot, permit }: Admitted,
) -> impl std::future::Future<Output = ()> + Send {
    let (link, mut stream) = Link::open(socket, &state, Centrifugo(format), permit, ip_slot);
    let session = link.session.clone();
    let caller = Caller { client: Some(session.client().into()), ..caller };
    let mut conn = Conn {
        state,
        caller,
        session,
        replies: link.replies.clone(),
        format,
        connected: false,
        conn_info: None,
        expires: None,
        sub_expiry: HashMap::new(),
        violations: 0,
    };
    async move {
        conn.read(&mut stream, link.stop.clone()).await;
        drop(conn);
        Box::pin(link.finish(stream)).await;
    }
}

struct Conn {
    state: Arc<AppState>,
    /// The principal: from the upgrade's credentials (or anonymous) until `connect`
    /// names one with its token; replaced by `refresh`.
    caller: Caller,
    session: Arc<Session>,
    replies: Replies<Box<Reply>>,
    format: Format,
    connected: bool,
    /// The `data` of `connect`: shown as this client's info in presence.
    conn_info: Option<serde_json::Value>,
    /// When the connection's credentials expire (their `exp` + `auth.leeway_secs`).
    expires: Option<Instant>,
    /// Subscriptions made with a subscription token, and when that token expires.
    sub_expiry: HashMap<Topic, Instant>,
    violations: u32,
}

/// What a command leads to.
enum Flow {
    /// A reply, and the topic whose delivery may start once it is queued.
    Reply(Box<Reply>, Option<Topic>),
    /// Nothing to write (a pong, a `send`).
    Nothing,
    /// The connection ends with this close code.
    Close((u16, &'static str)),
}

/// What the reader handles (a beat is the loop's: `Woke`).
enum Inbound {
    /// A deadline passed.
    Deadline(Deadline),
    /// The socket's next message (None: it closed).
    Frame(Read),
}

/// Whether the reader reads on.
enum ReadOn {
    Yes { heard: bool },
    No,
}

/// What the reader does when its earliest deadline passes.
enum Due {
    Deadline(Deadline),
    /// The keep-alive is due (told to the writer by the loop).
    Ping,
}

/// A deadline the reader handles.
enum Deadline {
    Close((u16, &'static str)),
    SubscriptionExpiry,
}

/// Seconds from now until `exp` (Unix seconds), at least 1.
fn ttl(exp: u64) -> u32 {
    exp.saturating_sub(crate::clock::now_ms() / 1000).clamp(1, u64::from(u32::MAX)) as u32
}

impl Conn {
    async fn read(&mut self, stream: &mut Reader, stop: CancellationToken) {
        let c = &self.state.ops.config();
        // A pong answers each ping; silence for a ping interval plus the pong timeout
        // means the client is gone.
        let silence = Duration::from_millis(c.centrifugo.ping_interval_ms + c.centrifugo.pong_timeout_ms);
        let stale_at = Instant::now() + Duration::from_millis(c.auth.auth_timeout_ms);
        let max_violations = c.ws.max_violations;
        let mut beat = Beat::new(Duration::from_millis(c.centrifugo.ping_interval_ms), self.state.shutdown.clone());
        // The reader's own handle on the writer's queue, for what `beat` tells it while a
        // command holds the connection.
        let replies = self.replies.clone();
        let mut quiet_until = Instant::now() + silence;
        loop {
            // One timer for the earliest of the connection's deadlines (a timer per
            // deadline would be registered and dropped again for every inbound frame).
            let next_sub_expiry = self.sub_expiry.values().min().copied();
            let (at, due) = [
                ((!self.connected).then_some(stale_at), Due::Deadline(Deadline::Close(codes::STALE))),
                (self.expires, Due::Deadline(Deadline::Close(codes::CONNECTION_EXPIRED))),
                (next_sub_expiry, Due::Deadline(Deadline::SubscriptionExpiry)),
                (Some(beat.due()), Due::Ping),
            ]
            .into_iter()
            .filter_map(|(at, due)| Some((at?, due)))
            .fold((quiet_until, Due::Deadline(Deadline::Close(codes::NO_PONG))), |earliest, next| {
                if next.0 < earliest.0 {
                    next
                } else {
                    earliest
                }
            });
            let woke = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(at) => match due {
                    Due::Ping => Woke::Beat(Tick::Ping),
                    Due::Deadline(deadline) => Woke::Inbound(Inbound::Deadline(deadline)),
                },
                _ = beat.shutting_down() => Woke::Beat(Tick::Shutdown),
                inbound = stream.next() => Woke::Inbound(Inbound::Frame(inbound)),
            };
            let Some(inbound) = beat.take(&replies, woke).await else { continue };
            // Boxed: handling lives only while it runs; only the wait above is kept in
            // every idle session's future.
            // Silence counts from the frame's arrival, not from the end of its handling.
            let arrived = Instant::now();
            match Box::pin(beat.during(&replies, self.inbound(inbound, max_violations))).await {
                ReadOn::Yes { heard } => {
                    if heard {
                        quiet_until = arrived + silence;
                    }
                }
                ReadOn::No => return,
            }
        }
    }

    /// Handles what the reader's wait returned; says whether to read on, and whether the
    /// client was heard from (which restarts its silence timer).
    async fn inbound(&mut self, inbound: Inbound, max_violations: u32) -> ReadOn {
        let bytes = match inbound {
            Inbound::Deadline(Deadline::Close(code)) => return self.close(code).await,
            Inbound::Deadline(Deadline::SubscriptionExpiry) => {
                self.expire_subscriptions().await;
                return ReadOn::Yes { heard: false };
            }
            Inbound::Frame(read) => match heard(&self.replies, read).await {
                // The format is the session's, whichever kind of frame brought it.
                Heard::Data(bytes, _) => bytes,
                Heard::Control => return ReadOn::Yes { heard: true },
                Heard::Closed => return ReadOn::No,
                Heard::TooBig => return self.close(codes::TOO_BIG).await,
            },
        };
        let commands = match self.format.decode(&bytes) {
            Ok(commands) => commands,
            Err(e) => {
                tracing::debug!(error = %e, "undecodable Centrifugo frame");
                return self.close(codes::BAD_REQUEST).await;
            }
        };
        // In order: a client sends `connect` and its subscribes in one frame.
        for command in commands {
            match Box::pin(self.command(command)).await {
                Flow::Nothing => {}
                Flow::Close(code) => return self.close(code).await,
                Flow::Reply(reply, starts) => {
                    if self.replies.send(Outgoing::Frame(reply)).await.is_err() {
                        return ReadOn::No;
                    }
                    if let Some(topic) = starts {
                        // Only now, with the reply queued ahead of them, may its
                        // publications flow.
                        self.session.start(&topic);
                    }
                    if self.violations >= max_violations {
                        return self.close(codes::TOO_MANY_ERRORS).await;
                    }
                }
            }
        }
        ReadOn::Yes { heard: true }
    }

    /// Queues the close frame; the session ends.
    async fn close(&mut self, (code, reason): (u16, &'static str)) -> ReadOn {
        let _ = self.replies.send(Outgoing::close(code, reason)).await;
        ReadOn::No
    }

    /// Answers one command.
    async fn command(&mut self, command: Command) -> Flow {
        if is_pong(&command) {
            return Flow::Nothing;
        }
        let id = command.id;
        if let Some(request) = command.connect {
            if self.connected {
                return Flow::Close(codes::BAD_REQUEST);
            }
            return self.connect(id, request).await;
        }
        if !self.connected {
            // Nothing before `connect`.
            return Flow::Close(codes::BAD_REQUEST);
        }
        if command.send.is_some() {
            // Asynchronous messages to the server have no meaning in streamhub; a `send`
            // gets no reply by definition.
            return Flow::Nothing;
        }
        if id == 0 {
            return Flow::Close(codes::BAD_REQUEST);
        }
        if let Some(request) = command.refresh {
            return self.refresh(id, request).await;
        }
        let result = if let Some(r) = command.subscribe {
            match self.subscribe(id, r).await {
                Ok((reply, topic)) => return Flow::Reply(Box::new(reply), Some(topic)),
                Err(refused) => Err(refused),
            }
        } else if let Some(r) = command.unsubscribe {
            self.unsubscribe(id, r).await
        } else if let Some(r) = command.publish {
            self.publish(id, r).await
        } else if let Some(r) = command.presence {
            self.presence(id, r).await
        } else if let Some(r) = command.presence_stats {
            self.presence_stats(id, r).await
        } else if let Some(r) = command.history {
            history(&self.state.ops, &self.caller, self.format, &r.channel, r.limit, r.since, r.reverse)
                .await
                .map(|h| Reply { id, history: Some(h), ..Default::default() })
        } else if let Some(r) = command.sub_refresh {
            self.sub_refresh(id, r).await
        } else if command.rpc.is_some() {
            Err(Refused::protocol(codes::METHOD_NOT_FOUND, "method not found: streamhub has no RPC handlers"))
        } else {
            // `ping` (unused in protocol v2: pings are empty frames), or a method of a newer
            // protocol version.
            Err(Refused::protocol(codes::NOT_AVAILABLE, "not available"))
        };
        Flow::Reply(
            Box::new(result.unwrap_or_else(|refused| {
                if refused.client_fault {
                    self.violations += 1;
                }
                Reply { id, error: Some(refused.error), ..Default::default() }
            })),
            None,
        )
    }

    /// Verifies the connection's token (an empty one: the upgrade's credentials, or
    /// anonymous access where anonymous rules grant something).
    async fn connect(&mut self, id: u32, request: proto::ConnectRequest) -> Flow {
        let access = self.state.ops.access();
        let principal = if request.token.is_empty() {
            self.caller.principal.clone()
        } else {
            match access.principal(Some(&request.token)) {
                Ok(p) => p,
                // The client fetches a fresh token and reconnects.
                Err(e) if e.code == Code::TokenExpired => return Flow::Reply(Box::new(self.refusal(id, &e)), None),
                Err(e) => {
                    tracing::debug!(error = %e, "Centrifugo connect with an invalid token");
                    return Flow::Close(codes::INVALID_TOKEN);
                }
            }
        };
        if principal.kind == PrincipalKind::Anonymous && !access.auth().anonymous_allowed() {
            let e = Error::new(Code::Unauthorized, "credentials required: connect with a token");
            return Flow::Reply(Box::new(self.refusal(id, &e)), None);
        }
        if !request.data.is_empty() {
            let limit = self.state.ops.config().presence.max_info_bytes;
            if request.data.len() > limit {
                let e = Error::new(
                    Code::InvalidRequest,
                    format!("connect data is {} bytes, limit {limit} (presence.max_info_bytes)", request.data.len()),
                );
                return Flow::Reply(Box::new(self.refusal(id, &e)), None);
            }
            self.conn_info = serde_json::from_slice(&request.data).ok();
        }
        if principal.kind != PrincipalKind::Anonymous {
            self.session.set_user(&principal.subject).await;
        }
        let result = self.authenticated(principal);
        self.connected = true;
        let ping = (self.state.ops.config().centrifugo.ping_interval_ms / 1000) as u32;
        Flow::Reply(
            Box::new(Reply {
                id,
                connect: Some(proto::ConnectResult {
                    client: self.session.client().to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    expires: result.0,
                    ttl: result.1,
                    ping,
                    pong: true,
                    time: crate::clock::now_ms() as i64,
                }),
                ..Default::default()
            }),
            None,
        )
    }

    /// Makes `principal` the connection's; returns (expires, ttl) for the reply. The
    /// connection is closed `centrifugo.refresh_grace_ms` after the token's expiry unless
    /// a `refresh` comes (the SDKs send it when the `ttl` runs out).
    fn authenticated(&mut self, principal: Principal) -> (bool, u32) {
        let leeway = self.state.ops.access().auth().leeway_secs;
        let grace = Duration::from_millis(self.state.ops.config().centrifugo.refresh_grace_ms);
        let expiry = principal.expires_at.map(|exp| {
            let secs = exp.saturating_add(leeway).saturating_sub(crate::clock::now_ms() / 1000);
            (Instant::now().checked_add(Duration::from_secs(secs) + grace), ttl(exp))
        });
        self.expires = expiry.and_then(|(at, _)| at);
        self.caller.principal = principal;
        expiry.map_or((false, 0), |(_, ttl)| (true, ttl))
    }

    /// A fresh token for the connection (same subject); an expired or invalid one ends it.
    async fn refresh(&mut self, id: u32, request: proto::RefreshRequest) -> Flow {
        if request.token.is_empty() {
            return Flow::Close(codes::BAD_REQUEST);
        }
        let refreshed = self.state.ops.reauthenticate(&self.session, &self.caller.principal, &request.token).await;
        match refreshed {
            Ok(principal) => {
                let (expires, ttl) = self.authenticated(principal);
                let result = proto::RefreshResult {
                    client: self.session.client().to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    expires,
                    ttl,
                };
                Flow::Reply(Box::new(Reply { id, refresh: Some(result), ..Default::default() }), None)
            }
            Err(e) if e.code == Code::TokenExpired => Flow::Close(codes::CONNECTION_EXPIRED),
            Err(e) => {
                tracing::debug!(error = %e, "Centrifugo refresh refused");
                Flow::Close(codes::INVALID_TOKEN)
            }
        }
    }

    fn refusal(&mut self, id: u32, e: &Error) -> Reply {
        if e.code.is_client_fault() {
            self.violations += 1;
        }
        Reply { id, error: Some(reply_error(e)), ..Default::default() }
    }

    /// Who a command acts as: the connection, or — for a subscription made with a
    /// subscription token — that token's principal (same subject).
    fn acting(&self, token: &str) -> Result<(Caller, Option<u64>), Refused> {
        if token.is_empty() {
            return Ok((self.caller.clone(), None));
        }
        let principal = self.state.ops.access().principal(Some(token))?;
        let current = &self.caller.principal;
        if current.kind != PrincipalKind::Anonymous && current.subject != principal.subject {
            return Err(Error::new(Code::Forbidden, "the subscription token is for another subject").into());
        }
        let exp = principal.expires_at;
        Ok((Caller { principal, ..self.caller.clone() }, exp))
    }

    async fn subscribe(&mut self, id: u32, r: proto::SubscribeRequest) -> Result<(Reply, Topic), Refused> {
        let (caller, exp) = self.acting(&r.token)?;
        let ops = &self.state.ops;
        let grant = ops.access().grant::<Subscribe>(&caller, &r.channel)?;
        let topic = grant.topic().clone();
        let since = if r.recover { Since::After { epoch: r.epoch.clone(), seq: r.offset } } else { Since::Now };
        let request = SubscribeRequest { join_leave: r.join_leave, info: self.conn_info.clone() };
        let s = ops.subscribe(&caller, &self.session, &grant, since, request).await?;
        // Flag 2 (reject unrecovered): the client wants an error rather than a new position.
        if r.recover && !s.recovered && r.flag & 2 != 0 {
            self.session.unsubscribe(&topic).await;
            return Err(Refused::protocol(codes::UNRECOVERABLE_POSITION, "unrecoverable position"));
        }
        match exp {
            Some(exp) => {
                let secs = exp.saturating_sub(crate::clock::now_ms() / 1000);
                if let Some(at) = Instant::now().checked_add(Duration::from_secs(secs)) {
                    self.sub_expiry.insert(topic.clone(), at);
                }
            }
            None => {
                self.sub_expiry.remove(&topic);
            }
        }
        let result = proto::SubscribeResult {
            expires: exp.is_some(),
            ttl: exp.map_or(0, ttl),
            recoverable: true,
            positioned: true,
            epoch: s.epoch,
            // What the client has: the requested position when recovered, else where the
            // publications that follow start. Never ahead of what it was given.
            offset: s.from,
            recovered: r.recover && s.recovered,
            was_recovering: r.recover,
            publications: Vec::new(),
        };
        Ok((Reply { id, subscribe: Some(result), ..Default::default() }, topic))
    }

    async fn sub_refresh(&mut self, id: u32, r: proto::SubRefreshRequest) -> Result<Reply, Refused> {
        let topic = self.state.ops.access().topic(&r.channel)?;
        if !self.sub_expiry.contains_key(&topic) {
            return Err(
                Error::new(Code::NotSubscribed, format!("no subscription with a token to {}", r.channel)).into()
            );
        }
        if r.token.is_empty() {
            return Err(Error::new(Code::InvalidRequest, "sub_refresh needs a token").into());
        }
        let (caller, exp) = self.acting(&r.token)?;
        self.state.ops.access().grant::<Subscribe>(&caller, &r.channel)?;
        let exp = exp.ok_or_else(|| Error::new(Code::InvalidRequest, "a subscription token must expire"))?;
        let secs = exp.saturating_sub(crate::clock::now_ms() / 1000);
        if let Some(at) = Instant::now().checked_add(Duration::from_secs(secs)) {
            self.sub_expiry.insert(topic, at);
        }
        let result = proto::SubRefreshResult { expires: true, ttl: ttl(exp) };
        Ok(Reply { id, sub_refresh: Some(result), ..Default::default() })
    }

    /// Ends the subscriptions whose token expired without a `sub_refresh`: the client is
    /// told to resubscribe (with a fresh token).
    async fn expire_subscriptions(&mut self) {
        let now = Instant::now();
        let expired: Vec<Topic> =
            self.sub_expiry.iter().filter(|(_, at)| **at <= now).map(|(t, _)| t.clone()).collect();
        for topic in expired {
            self.sub_expiry.remove(&topic);
            self.session.unsubscribe(&topic).await;
            let (code, reason) = codes::SUBSCRIPTION_EXPIRED;
            let push = proto::Push {
                channel: topic.as_str().to_string(),
                unsubscribe: Some(proto::Unsubscribe { code, reason: reason.into() }),
                ..Default::default()
            };
            let _ =
                self.replies.send(Outgoing::Frame(Box::new(Reply { push: Some(push), ..Default::default() }))).await;
        }
    }

    async fn unsubscribe(&mut self, id: u32, r: proto::UnsubscribeRequest) -> Result<Reply, Refused> {
        let topic = self.state.ops.access().topic(&r.channel)?;
        self.sub_expiry.remove(&topic);
        // Answered alike whether or not it was subscribed (as Centrifugo does).
        self.session.unsubscribe(&topic).await;
        Ok(Reply { id, unsubscribe: Some(proto::Empty {}), ..Default::default() })
    }

    async fn publish(&mut self, id: u32, r: proto::PublishRequest) -> Result<Reply, Refused> {
        let ops = &self.state.ops;
        let grant = ops.access().grant::<Publish>(&self.caller, &r.channel)?;
        let content_type = match self.format {
            // Raw JSON by construction of the frame.
            Format::Json => "application/json",
            Format::Protobuf if serde_json::from_slice::<serde::de::IgnoredAny>(&r.data).is_ok() => "application/json",
            Format::Protobuf => "application/octet-stream",
        };
        let message = NewMessage { payload: r.data, content_type: content_type.into(), ..Default::default() };
        ops.publish(&self.caller, &grant, message).await?;
        Ok(Reply { id, publish: Some(proto::Empty {}), ..Default::default() })
    }

    async fn presence(&mut self, id: u32, r: proto::PresenceRequest) -> Result<Reply, Refused> {
        let ops = &self.state.ops;
        let grant = ops.access().grant::<PresenceRead>(&self.caller, &r.channel)?;
        let list = ops.presence(&grant).await?;
        let presence = list.members.iter().map(|m| (m.client.clone(), client_info(m))).collect();
        Ok(Reply { id, presence: Some(proto::PresenceResult { presence }), ..Default::default() })
    }

    async fn presence_stats(&mut self, id: u32, r: proto::PresenceStatsRequest) -> Result<Reply, Refused> {
        let ops = &self.state.ops;
        let grant = ops.access().grant::<PresenceRead>(&self.caller, &r.channel)?;
        let (clients, users) = ops.presence_stats(&grant).await?;
        let stats = proto::PresenceStatsResult {
            num_clients: clients.min(u64::from(u32::MAX)) as u32,
            num_users: users.min(u64::from(u32::MAX)) as u32,
        };
        Ok(Reply { id, presence_stats: Some(stats), ..Default::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::ws_session::future_size as size;

    /// What an idle session keeps in its task: the wait for the next frame, the
    /// connection's state and its link (as the native protocol's, `ws::tests`).
    #[test]
    #[allow(unreachable_code, unused_variables, clippy::diverging_sub_expression)]
    fn an_idle_sessions_future_stays_small() {
        let never = std::hint::black_box(false);
        let session =
            if never { Some(run(unreachable!(), unreachable!(), Format::Json, unreachable!())) } else { None };
        let read = if never {
            let conn: &mut Conn = unreachable!();
            Some(conn.read(unreachable!(), unreachable!()))
        } else {
            None
        };
        let (session, read) = (size(&session), size(&read));
        // It also watches the keep-alive and the node's shutdown (`ws_session::Beat`),
        // which the writer no longer keeps.
        assert!(read <= 576, "the reader's future is {read} bytes");
        assert!(session <= 1024, "the session's future is {session} bytes");
    }
}
