//! What every WebSocket transport shares, whatever protocol it speaks: admission (origin,
//! per-IP session slot, the node's session limit, the upgrade's buffer and frame limits)
//! and a session's life (the delivery session and its catch-up reader, the writer task,
//! and an orderly end: writer drained, close handshake, subscriptions and presence ended).
//! A protocol brings its reader loop and its `Encoder`; everything else is here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::extract::session_caller;
use super::ws_direct::{DirectWriter, EncodeMessage};
use super::ws_socket::{Reader, Socket, Upgrade};
use super::ws_write::{write, Encoder, Outgoing, Owner, Pace, Replies};
use super::AppState;
use crate::delivery::queue;
use crate::delivery::session::Session;
use crate::error::{Code, Error};
use crate::metrics;
use crate::ops::access::{Caller, IpSlot};

/// How long a closing session waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Replies a reader may queue before it waits for the writer.
const REPLY_QUEUE: usize = 64;

/// A session admitted to this node: who (from the upgrade's credentials, if any), and the
/// slots it holds until it ends.
pub(super) struct Admitted {
    pub caller: Caller,
    pub ip_slot: IpSlot,
    pub permit: OwnedSemaphorePermit,
}

/// Admits a WebSocket session: the request is a WebSocket upgrade, its `Origin` is
/// allowed, its credentials (header or `?token=`) verify, its client address
/// (`client_addr`) has a free slot and the node has room (`ws.max_connections`).
pub(super) fn admit(
    state: &AppState,
    client: std::net::IpAddr,
    headers: &HeaderMap,
    query: Option<&str>,
    ws: Result<Upgrade, Error>,
) -> Result<(Upgrade, Admitted), Error> {
    let ws = ws?;
    let access = state.ops.access();
    access.check_origin(headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("")))?;
    let mut caller = session_caller(state, headers, query, client)?;
    let ip_slot = access.open_session(client)?;
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return Err(Error::new(
            Code::TooManyConnections,
            format!("this node serves at most {} sessions (ws.max_connections)", state.ops.config().ws.max_connections),
        ));
    };
    caller.budget = access.connection_budget();
    Ok((ws, Admitted { caller, ip_slot, permit }))
}

/// The node's limits on inbound frames and the read buffer (`ws.*`). The reader never
/// writes (`ws_socket::Inbound`): what tungstenite would answer by itself is not buffered.
pub(super) fn socket_config(state: &AppState) -> WebSocketConfig {
    let c = &state.ops.config().ws;
    WebSocketConfig::default()
        .max_message_size(Some(c.max_frame_bytes))
        .max_frame_size(Some(c.max_frame_bytes))
        .read_buffer_size(c.read_buffer_bytes)
        .write_buffer_size(0)
}

/// A running session: its delivery session, the reader's queue to the writer, and what
/// `finish` waits for.
pub(super) struct Link<R> {
    pub session: Arc<Session>,
    pub replies: Replies<R>,
    /// Cancelled when the session ends, by either side.
    pub stop: CancellationToken,
    writer: JoinHandle<()>,
    /// (`transport`, `protocol`) of the session metrics.
    kind: (&'static str, &'static str),
    _admitted: (OwnedSemaphorePermit, IpSlot),
}

impl<R: Send + 'static> Link<R> {
    /// Starts the session's writer on `socket`; returns the link and
    /// the socket's reading half.
    pub fn open<E: Encoder<Reply = R>>(
        Socket { reader, writer, shared }: Socket,
        state: &Arc<AppState>,
        encoder: E,
        permit: OwnedSemaphorePermit,
        ip_slot: IpSlot,
    ) -> (Link<R>, Reader) {
        metrics::session(E::TRANSPORT, E::PROTOCOL, 1.0);
        let config = &state.ops.config().ws;
        let stop = CancellationToken::new();
        let (session, deliveries) = Session::new(state.hub.clone(), config, stop.clone());
        let (replies, replies_rx) = queue::bounded(REPLY_QUEUE);
        let pace = Pace {
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            batch_bytes: config.write_buffer_bytes,
        };
        let owner = Owner { stop: stop.clone(), span: tracing::Span::current() };
        let encoder = Arc::new(encoder);
        // The tails write live messages to a TCP connection themselves when its writer
        // has nothing to do (`ws_direct`).
        let direct = shared.map(|socket| {
            let encode: EncodeMessage = Box::new({
                let encoder = encoder.clone();
                move |message| encoder.message(message)
            });
            let meter = metrics::DeliveryMeter::new(E::TRANSPORT, E::PROTOCOL);
            Arc::new(DirectWriter::new(socket, encode, replies.probe(), meter))
        });
        if let Some(direct) = &direct {
            session.set_direct(Box::new(direct.clone()));
        }
        let writer = tokio::spawn(write(writer, replies_rx, deliveries, encoder, pace, owner, direct));
        let link =
            Link { session, replies, stop, writer, kind: (E::TRANSPORT, E::PROTOCOL), _admitted: (permit, ip_slot) };
        (link, reader)
    }

    /// Ends the session once its reader stopped (every other sender of replies must be
    /// gone): the writer drains and closes, the peer gets a moment to answer the close
    /// frame, then subscriptions and presence end.
    pub async fn finish(self, mut stream: Reader) {
        let Link { session, replies, stop, writer, kind, _admitted } = self;
        drop(replies);
        let _ = writer.await;
        // Closing handshake: the peer reads the close code instead of a reset connection.
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break,
                }
            }
            // The frame parser stopped before the peer's close frame (an inbound message
            // over ws.max_frame_bytes whose rest is still arriving, a protocol error): what
            // the peer still sends is read and dropped. Closing a socket with unread data
            // resets the connection, and the peer would lose our close frame with it.
            let _ = tokio::io::copy(stream.get_mut(), &mut tokio::io::sink()).await;
        })
        .await;
        stop.cancel();
        session.catchup_ended().await;
        Box::pin(session.close()).await;
        metrics::session(kind.0, kind.1, -1.0);
    }
}

/// The session's keep-alive and the node's shutdown, watched by the reader (its wait is
/// already a `select!` over its deadlines and the socket) and handed to the writer through
/// the reply queue (`Outgoing::Ping`, `Outgoing::Shutdown`): the writer then waits on its
/// two queues alone, and a wake-up for a delivery polls no timer and no token.
pub(super) struct Beat {
    every: Duration,
    next: Instant,
    /// The node's shutdown, until it has been told to the writer: one wait for the whole
    /// session, registered with the token once, not once per inbound frame (the reader's
    /// wait and `during` both poll it).
    shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl Beat {
    /// Pings every `every`, the first one an interval from now.
    pub fn new(every: Duration, shutdown: CancellationToken) -> Beat {
        Beat { every, next: Instant::now() + every, shutdown: Some(Box::pin(shutdown.cancelled_owned())) }
    }

    /// When the next ping is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Tells the writer what is due: the ping (the next one an interval later; none is
    /// made up for a reader that was late) or the node's shutdown (the writer closes the
    /// session once what is queued is written). Neither is the peer's traffic: the
    /// reader's idle or silence timer runs on.
    pub async fn tell<R>(&mut self, replies: &Replies<R>, tick: Tick) {
        match tick {
            Tick::Ping => {
                self.next = Instant::now() + self.every;
                let _ = replies.send(Outgoing::Ping).await;
            }
            Tick::Shutdown => self.shut(replies).await,
        }
    }

    /// What the reader handles of what its wait returned: a beat is told to the writer here
    /// (`tell`), and the reader then waits again (None).
    pub async fn take<I, R>(&mut self, replies: &Replies<R>, woke: Woke<I>) -> Option<I> {
        match woke {
            Woke::Beat(tick) => {
                self.tell(replies, tick).await;
                None
            }
            Woke::Inbound(inbound) => Some(inbound),
        }
    }

    /// Resolves when the node starts shutting down (once: never again after `shut`).
    pub async fn shutting_down(&mut self) {
        std::future::poll_fn(|cx| match &mut self.shutdown {
            Some(wait) => wait.as_mut().poll(cx),
            None => Poll::Pending,
        })
        .await
    }

    async fn shut<R>(&mut self, replies: &Replies<R>) {
        self.shutdown = None;
        let _ = replies.send(Outgoing::Shutdown).await;
    }

    /// Awaits `op` (the handling of an inbound frame, which may wait on Redis); a
    /// shutdown that comes meanwhile is told to the writer at once, not after the op.
    pub async fn during<R, T>(&mut self, replies: &Replies<R>, op: impl Future<Output = T>) -> T {
        let mut op = std::pin::pin!(op);
        if self.shutdown.is_some() {
            tokio::select! {
                biased;
                out = &mut op => return out,
                _ = self.shutting_down() => {}
            }
            self.shut(replies).await;
        }
        op.await
    }
}

/// What a reader's `Beat` has due.
pub(super) enum Tick {
    Ping,
    Shutdown,
}

/// What a protocol reader's wait returned: a beat, which the loop tells the writer
/// (`Beat::tell`), or what the protocol handles (its deadlines and the socket's next
/// message), which therefore never holds a beat.
pub(super) enum Woke<I> {
    Beat(Tick),
    Inbound(I),
}

/// What the socket's reading half returned.
pub(super) type Read = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

/// An inbound message as a protocol's reader sees it.
pub(super) enum Heard {
    /// A data message: its bytes, and whether it came as a binary frame (else text,
    /// valid UTF-8).
    Data(Bytes, bool),
    /// A ping (answered: the writer sends the pong) or a pong: the peer is there.
    Control,
    /// The peer closed (its close frame answered) or the connection ended.
    Closed,
    /// An inbound message over `ws.max_frame_bytes`: the protocol closes with its code.
    TooBig,
}

/// Classifies what the reader read, for either protocol, and answers the peer's control
/// frames: a ping with a pong carrying its payload, a close frame with the close reply
/// (its code echoed). The socket's reading half never writes (`ws_socket::Inbound`): the
/// answers go through the session's writer, in order with everything else it writes.
pub(super) async fn heard<R>(replies: &Replies<R>, read: Read) -> Heard {
    match read {
        None => Heard::Closed,
        Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => Heard::TooBig,
        Some(Err(_)) => Heard::Closed,
        Some(Ok(Message::Text(text))) => Heard::Data(text.into(), false),
        Some(Ok(Message::Binary(bytes))) => Heard::Data(bytes, true),
        Some(Ok(Message::Ping(payload))) => {
            let _ = replies.send(Outgoing::Pong(Box::new(payload))).await;
            Heard::Control
        }
        Some(Ok(Message::Pong(_) | Message::Frame(_))) => Heard::Control,
        Some(Ok(Message::Close(frame))) => {
            let _ = replies.send(Outgoing::CloseReply(frame.map(|f| u16::from(f.code)))).await;
            Heard::Closed
        }
    }
}

/// The size of the future in `never` (a value never made: only its type is used), for the
/// tests that bound what an idle session keeps.
#[cfg(test)]
pub(super) fn future_size<F>(_never: &Option<F>) -> usize {
    std::mem::size_of::<F>()
}
