//! The writer task of a native WebSocket session: replies first, then deliveries, then
//! pings, with frames that are ready together written with one flush, and every write
//! bounded by `ws.write_timeout_ms` (a peer that stops reading is dropped).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::SinkExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frames::{Encoding, ServerFrame, CLOSE_GOING_AWAY};
use crate::delivery::subscription::{Item, Queued};
use crate::metrics;

/// What the reader hands the writer.
pub(super) enum Outgoing {
    Frame(Box<ServerFrame>),
    Close(u16, &'static str),
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
        // Expired while it waited in the queue: the notice goes in its place.
        Item::Message(d) if d.has_ttl() && d.is_expired(crate::clock::now_ms()) => {
            metrics::expired_skipped("subscription", 1);
            Step::Send(encoded(encoding, ServerFrame::expired_message(d).encode(encoding)))
        }
        Item::Expired(run) => Step::Send(encoded(encoding, ServerFrame::expired(run).encode(encoding))),
        Item::Event(event) => Step::Send(encoded(encoding, ServerFrame::event(event).encode(encoding))),
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

pub(super) async fn write(
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
