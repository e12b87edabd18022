//! The writer task of a WebSocket session, for either protocol: replies first, then
//! deliveries, then pings, with frames that are ready together written with one flush,
//! and every write bounded by `ws.write_timeout_ms` (a peer that stops reading is
//! dropped). What the frames look like is the protocol's `Encoder`.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::SinkExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frames::{Encoding, ServerFrame, CLOSE_GOING_AWAY};
use crate::delivery::subscription::{Item, Queued};
use crate::metrics;

/// What the reader hands the writer: a reply (in the protocol's form) or the end.
pub(super) enum Outgoing<R> {
    Frame(R),
    Close(u16, &'static str),
}

/// How one protocol writes: its replies, the session's deliveries and its ping.
pub(super) trait Encoder: Send + 'static {
    type Reply: Send + 'static;
    /// The `transport` and `protocol` labels of the session metrics.
    const TRANSPORT: &'static str = "ws";
    const PROTOCOL: &'static str;
    /// The close frame of a node shutting down.
    const SHUTDOWN: (u16, &'static str);
    fn reply(&self, reply: Self::Reply) -> Message;
    /// The frame of one delivery; None when there is nothing to write for it.
    fn delivery(&self, queued: &Queued) -> Option<Message>;
    fn ping(&self) -> Message;
}

/// The native protocol (docs/PROTOCOL.md §2) in its negotiated encoding.
pub(super) struct Native(pub Encoding);

impl Encoder for Native {
    type Reply = Box<ServerFrame>;
    const PROTOCOL: &'static str = "streamhub";
    const SHUTDOWN: (u16, &'static str) = (CLOSE_GOING_AWAY, "server shutting down");

    fn reply(&self, frame: Box<ServerFrame>) -> Message {
        encoded(self.0, frame.encode(self.0))
    }

    fn delivery(&self, q: &Queued) -> Option<Message> {
        let encoding = self.0;
        Some(match &q.item {
            // Expired while it waited in the queue: the notice goes in its place.
            Item::Message(d) if d.has_ttl() && d.is_expired(crate::clock::now_ms()) => {
                metrics::expired_skipped("subscription", 1);
                encoded(encoding, ServerFrame::expired_message(d).encode(encoding))
            }
            Item::Expired(run) => encoded(encoding, ServerFrame::expired(run).encode(encoding)),
            Item::Event(event) => encoded(encoding, ServerFrame::event(event).encode(encoding)),
            Item::Message(d) => {
                metrics::delivered(Self::TRANSPORT, Self::PROTOCOL, d.published_ms());
                // Encoded once per message and encoding on this node, shared by its sessions.
                let bytes = d.frames[encoding.slot()].get_or_init(|| ServerFrame::message(d).encode(encoding).into());
                shared(encoding == Encoding::Json, bytes)
            }
            Item::Reset(r) => encoded(encoding, ServerFrame::reset(r).encode(encoding)),
        })
    }

    fn ping(&self) -> Message {
        Message::Ping(Default::default())
    }
}

/// The writer's clock: how often it pings, and how long one write may take.
pub(super) struct Pace {
    pub ping_every: Duration,
    pub write_timeout: Duration,
}

/// Most frames, and bytes, written with one flush: frames that are ready together go out
/// in one system call (TCP_NODELAY is on, so a lone frame leaves at once).
const WRITE_BATCH_FRAMES: usize = 64;
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// What the writer does with one input.
enum Step {
    Send(Message),
    /// Nothing to write (an item of a closed subscription, or one the protocol skips).
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

/// A frame encoded once and shared by many sessions: text (valid UTF-8, written by a JSON
/// encoder) or binary.
pub(super) fn shared(text: bool, bytes: &bytes::Bytes) -> Message {
    if text {
        Message::Text(axum::extract::ws::Utf8Bytes::try_from(bytes.clone()).unwrap_or_default())
    } else {
        Message::Binary(bytes.clone())
    }
}

fn reply_step<E: Encoder>(encoder: &E, reply: Option<Outgoing<E::Reply>>) -> Step {
    match reply {
        Some(Outgoing::Frame(f)) => Step::Send(encoder.reply(f)),
        Some(Outgoing::Close(code, reason)) => Step::Close(code, reason),
        None => Step::End,
    }
}

fn delivery_step<E: Encoder>(encoder: &E, queued: Option<Queued>) -> Step {
    let Some(q) = queued else { return Step::End };
    if q.sub.is_closed() {
        return Step::Skip;
    }
    encoder.delivery(&q).map_or(Step::Skip, Step::Send)
}

fn size(message: &Message) -> usize {
    match message {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 16,
    }
}

pub(super) async fn write<E: Encoder>(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut replies: mpsc::Receiver<Outgoing<E::Reply>>,
    mut deliveries: mpsc::Receiver<Queued>,
    encoder: E,
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
            _ = server_shutdown.cancelled() => Step::Close(E::SHUTDOWN.0, E::SHUTDOWN.1),
            _ = stop.cancelled() => break,
            reply = replies.recv() => reply_step(&encoder, reply),
            queued = deliveries.recv() => delivery_step(&encoder, queued),
            _ = ping.tick() => Step::Send(encoder.ping()),
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
                    ::metrics::counter!(metrics::SESSIONS_CLOSED, "code" => code.to_string(), "protocol" => E::PROTOCOL)
                        .increment(1);
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
                Ok(reply) => reply_step(&encoder, Some(reply)),
                Err(TryRecvError::Disconnected) => Step::End,
                Err(TryRecvError::Empty) => match deliveries.try_recv() {
                    Ok(queued) => delivery_step(&encoder, Some(queued)),
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
                    ::metrics::counter!(
                        metrics::SLOW_SESSIONS_CLOSED,
                        "transport" => E::TRANSPORT,
                        "protocol" => E::PROTOCOL
                    )
                    .increment(1);
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
