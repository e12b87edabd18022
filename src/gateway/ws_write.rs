//! The writer task of a WebSocket session, for either protocol: replies first (pings and
//! the node's shutdown come the same way, from the reader), then deliveries, with frames
//! that are ready together written with one vectored write, and every write bounded by
//! `ws.write_timeout_ms` (a peer that stops reading is dropped). What the frames look
//! like is the protocol's `Encoder`.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::frames::{Encoding, ServerFrame, CLOSE_GOING_AWAY};
use super::ws_direct::DirectWriter;
use super::ws_socket::{self, Frame, Writer};
use crate::delivery::queue::{self, TryRecvError};
use crate::delivery::subscription::{Delivered, Deliveries, Item, Queued};
use crate::metrics;

/// What the reader hands the writer: a reply (in the protocol's form), the answer to a
/// control frame of the peer, or the end.
pub(super) enum Outgoing<R> {
    Frame(R),
    /// The session closes with this code and reason (counted by code). Boxed, as rare as
    /// it is: every slot of the reply queue is the largest item's size.
    Close(Box<(u16, &'static str)>),
    /// The answer to the peer's ping (its payload).
    Pong(Box<Bytes>),
    /// The answer to the peer's close frame: its code echoed (none when it gave none),
    /// the last frame written.
    CloseReply(Option<u16>),
    /// The protocol's keep-alive is due (`ws_session::Beat`).
    Ping,
    /// The node is shutting down: the session closes with the protocol's shutdown frame
    /// once what is queued is written.
    Shutdown,
}

/// The reader's queue to the writer (consumers' deliveries are forwarded into it too):
/// bounded, so a reader whose replies are not written waits (`delivery::queue`).
pub(super) type Replies<R> = queue::Sender<Outgoing<R>>;

impl<R> Outgoing<R> {
    pub fn close(code: u16, reason: &'static str) -> Outgoing<R> {
        Outgoing::Close(Box::new((code, reason)))
    }
}

/// How one protocol writes: its replies, the session's deliveries and its ping.
pub(super) trait Encoder: Send + Sync + 'static {
    type Reply: Send + 'static;
    /// The `transport` and `protocol` labels of the session metrics.
    const TRANSPORT: &'static str = "ws";
    const PROTOCOL: &'static str;
    /// The close frame of a node shutting down.
    const SHUTDOWN: (u16, &'static str);
    fn reply(&self, reply: Self::Reply) -> Frame;
    /// The frame of a message (encoded once per message and format on this node, shared
    /// by its sessions: `Delivered::frames`).
    fn message(&self, delivered: &Delivered) -> Frame;
    /// What a message that expired while it waited in the queue becomes; None when the
    /// protocol says nothing of it.
    fn expired_message(&self, delivered: &Delivered) -> Option<Frame>;
    /// The frame of any other item (reset, expired run, event); None when there is
    /// nothing to write for it.
    fn notice(&self, queued: &Queued) -> Option<Frame>;
    fn ping(&self) -> Frame;
}

/// The native protocol (docs/PROTOCOL.md §2) in its negotiated encoding.
pub(super) struct Native(pub Encoding);

impl Encoder for Native {
    type Reply = Box<ServerFrame>;
    const PROTOCOL: &'static str = "streamhub";
    const SHUTDOWN: (u16, &'static str) = (CLOSE_GOING_AWAY, "server shutting down");

    fn reply(&self, frame: Box<ServerFrame>) -> Frame {
        encoded(self.0, frame.encode(self.0))
    }

    fn message(&self, d: &Delivered) -> Frame {
        let encoding = self.0;
        d.frame(encoding.slot(), || encoded(encoding, ServerFrame::message(d).encode(encoding)))
    }

    fn expired_message(&self, d: &Delivered) -> Option<Frame> {
        Some(encoded(self.0, ServerFrame::expired_message(d).encode(self.0)))
    }

    fn notice(&self, q: &Queued) -> Option<Frame> {
        let encoding = self.0;
        Some(match &q.item {
            Item::Message(d) => self.message(d),
            Item::Expired(run) => encoded(encoding, ServerFrame::expired(run).encode(encoding)),
            Item::Event(event) => encoded(encoding, ServerFrame::event(event).encode(encoding)),
            Item::Reset(r) => encoded(encoding, ServerFrame::reset(r).encode(encoding)),
        })
    }

    fn ping(&self) -> Frame {
        Frame::ping()
    }
}

/// How long one write may take, and how much it takes.
pub(super) struct Pace {
    pub write_timeout: Duration,
    /// Frames are gathered into one write until they reach at least this many bytes
    /// (`ws.write_buffer_bytes`).
    pub batch_bytes: usize,
}

/// What a writer belongs to: the session (`stop`, cancelled when the writer ends) and
/// the session's span (the writer is not instrumented: entering a span on every wake-up
/// costs more than its own work per delivery; its one log line names the span).
pub(super) struct Owner {
    pub stop: CancellationToken,
    pub span: tracing::Span,
}

/// Most frames written with one vectored write: frames that are ready together go out in
/// one system call (TCP_NODELAY is on, so a lone frame leaves at once). The bytes of one
/// such write are bounded by `ws.write_buffer_bytes` (`Pace::batch_bytes`).
const WRITE_BATCH_FRAMES: usize = ws_socket::MAX_SLICES;

/// What the writer does with one input.
enum Step {
    Send(Frame),
    /// Nothing to write (an item of a closed subscription, or one the protocol skips).
    Skip,
    Close(u16, &'static str),
    /// The last frame, not counted as a close of the session's own (the close reply).
    Last(Frame),
    /// The node shuts down: close once the queues are empty (or a batch is full).
    Shutdown,
    /// An input closed: the session ends.
    End,
}

fn encoded(encoding: Encoding, bytes: Vec<u8>) -> Frame {
    match encoding {
        Encoding::Json => Frame::text(bytes),
        Encoding::Msgpack => Frame::binary(bytes),
    }
}

fn reply_step<E: Encoder>(encoder: &E, reply: Option<Outgoing<E::Reply>>) -> Step {
    match reply {
        Some(Outgoing::Frame(f)) => Step::Send(encoder.reply(f)),
        Some(Outgoing::Close(close)) => Step::Close(close.0, close.1),
        Some(Outgoing::Pong(payload)) => Step::Send(Frame::pong(*payload)),
        Some(Outgoing::CloseReply(code)) => Step::Last(Frame::close(code.map(|code| (code, "")))),
        Some(Outgoing::Ping) => Step::Send(encoder.ping()),
        Some(Outgoing::Shutdown) => Step::Shutdown,
        None => Step::End,
    }
}

/// One queued item: a message is counted and checked for expiry here, for every
/// protocol; what is written is the protocol's.
fn delivery_step<E: Encoder>(encoder: &E, meter: &metrics::DeliveryMeter, queued: Option<Queued>) -> Step {
    let Some(q) = queued else { return Step::End };
    if q.sub.is_closed() {
        return Step::Skip;
    }
    let Item::Message(d) = &q.item else { return encoder.notice(&q).map_or(Step::Skip, Step::Send) };
    let now = crate::clock::now_ms();
    if d.has_ttl() && d.is_expired(now) {
        // Expired while it waited in the queue: the protocol's notice goes in its place.
        metrics::expired_skipped("subscription", 1);
        return encoder.expired_message(d).map_or(Step::Skip, Step::Send);
    }
    meter.delivered(d.published_ms(), now);
    Step::Send(encoder.message(d))
}

/// The next input that is ready, without waiting (None: nothing is): a reply, else the
/// held or next delivery. A delivery is written only once no reply is unread: a reply
/// queued before the delivery was queued is then seen, and goes first (the delivery is
/// held for the next call).
fn ready_step<E: Encoder>(
    encoder: &E,
    meter: &metrics::DeliveryMeter,
    replies: &mut queue::Receiver<Outgoing<E::Reply>>,
    deliveries: &mut Deliveries,
    held: &mut Option<Queued>,
) -> Option<Step> {
    match replies.try_recv() {
        Ok(reply) => return Some(reply_step(encoder, Some(reply))),
        Err(TryRecvError::Closed) => return Some(Step::End),
        Err(TryRecvError::Empty) => {}
    }
    let queued = match held.take() {
        Some(queued) => queued,
        None => match deliveries.try_recv() {
            Ok(queued) => queued,
            Err(TryRecvError::Closed) => return Some(Step::End),
            Err(TryRecvError::Empty) => return None,
        },
    };
    Some(delivery_after_replies(encoder, meter, replies, queued, held))
}

/// A delivery just taken, unless a reply is now unread: that reply was queued before the
/// delivery, or at the same time, and goes first (the delivery is held).
fn delivery_after_replies<E: Encoder>(
    encoder: &E,
    meter: &metrics::DeliveryMeter,
    replies: &mut queue::Receiver<Outgoing<E::Reply>>,
    queued: Queued,
    held: &mut Option<Queued>,
) -> Step {
    match replies.try_recv() {
        Ok(reply) => {
            *held = Some(queued);
            reply_step(encoder, Some(reply))
        }
        Err(_) => delivery_step(encoder, meter, Some(queued)),
    }
}

/// The writer's task. With `direct`, the tails write live messages to the socket
/// themselves while this task waits (`ws_direct`): it holds the socket from the moment it
/// looks at its queues until it finds nothing more to write.
pub(super) async fn write<E: Encoder>(
    mut sink: Writer,
    mut replies: queue::Receiver<Outgoing<E::Reply>>,
    mut deliveries: Deliveries,
    encoder: Arc<E>,
    Pace { write_timeout, batch_bytes }: Pace,
    Owner { stop, span }: Owner,
    direct: Option<Arc<DirectWriter<Outgoing<E::Reply>>>>,
) {
    let encoder = &*encoder;
    // However the writer ends (a panic too), no tail writes after it, and the socket's
    // write side closes with it.
    struct Close<R: Send + 'static>(Option<Arc<DirectWriter<R>>>);
    impl<R: Send + 'static> Drop for Close<R> {
        fn drop(&mut self) {
            if let Some(direct) = &self.0 {
                direct.close();
            }
        }
    }
    let _close = Close(direct.clone());
    let meter = metrics::DeliveryMeter::new(E::TRANSPORT, E::PROTOCOL);
    // The writer waits on its two queues only: the keep-alive and the node's shutdown
    // reach it through the reply queue (the reader watches them), so a wake-up for a
    // delivery polls no timer and no token. (Nor does it watch `stop`: only the writer
    // itself cancels it while the writer runs.)
    let mut batch = Vec::new();
    // Set by the node's shutdown: the session closes once what is queued is written.
    let mut closing = false;
    // A delivery taken from its queue while a reply queued before it was still unread:
    // it waits for the reply (a `subscribed` reply precedes its subscription's messages,
    // whichever queue the writer looks at first).
    let mut held: Option<Queued> = None;
    // Whether this task holds the socket against the tails' direct writes.
    let mut holding = false;
    loop {
        // Replies first, then deliveries: whatever is ready now, else wait until either
        // queue wakes this task (registered with both, then looked at again: a send in
        // between is seen). One look serves both the wait and the batch below. The rest
        // of a frame a tail began goes before anything else.
        let mut step = std::future::poll_fn(|cx| {
            let hold = |holding: &mut bool, batch: &mut Vec<Frame>| {
                if let (Some(direct), false) = (&direct, *holding) {
                    batch.extend(direct.hold());
                }
                *holding = true;
            };
            hold(&mut holding, &mut batch);
            if let Some(step) = ready_step(encoder, &meter, &mut replies, &mut deliveries, &mut held) {
                return Poll::Ready(step);
            }
            if !batch.is_empty() {
                return Poll::Ready(Step::Skip);
            }
            // Nothing to write: the tails may write while this task waits.
            if let Some(direct) = &direct {
                direct.let_go();
                holding = false;
            }
            replies.register(cx.waker());
            deliveries.register(cx.waker());
            hold(&mut holding, &mut batch);
            match ready_step(encoder, &meter, &mut replies, &mut deliveries, &mut held) {
                Some(step) => Poll::Ready(step),
                None if !batch.is_empty() => Poll::Ready(Step::Skip),
                None => {
                    if let Some(direct) = &direct {
                        direct.let_go();
                        holding = false;
                    }
                    Poll::Pending
                }
            }
        })
        .await;
        // Whatever else is ready goes with it (replies first, as in the wait above), then
        // one write.
        let (mut bytes, mut last) = (0, false);
        loop {
            match step {
                Step::Send(frame) => {
                    bytes += frame.len();
                    batch.push(frame);
                }
                Step::Skip => {}
                Step::Shutdown => closing = true,
                Step::Close(code, reason) => {
                    ::metrics::counter!(metrics::SESSIONS_CLOSED, "code" => code.to_string(), "protocol" => E::PROTOCOL)
                        .increment(1);
                    batch.push(Frame::close(Some((code, reason))));
                    last = true;
                    break;
                }
                Step::Last(frame) => {
                    batch.push(frame);
                    last = true;
                    break;
                }
                Step::End => {
                    last = true;
                    break;
                }
            }
            if batch.len() >= WRITE_BATCH_FRAMES || bytes >= batch_bytes {
                // A queue that never runs empty still closes at a shutdown, after a full batch.
                if closing {
                    step = Step::Close(E::SHUTDOWN.0, E::SHUTDOWN.1);
                    continue;
                }
                break;
            }
            step = match ready_step(encoder, &meter, &mut replies, &mut deliveries, &mut held) {
                Some(step) => step,
                // Everything queued is written: a shutdown closes now.
                None if closing => Step::Close(E::SHUTDOWN.0, E::SHUTDOWN.1),
                None => break,
            };
        }
        if !batch.is_empty() {
            let send = ws_socket::write_all(&mut sink, &mut batch);
            tokio::pin!(send);
            // Most writes finish at once (the socket has room): only one that has to wait
            // gets a timer (`ws.write_timeout_ms` counts from here).
            let sent = match futures::poll!(&mut send) {
                std::task::Poll::Ready(result) => Ok(result),
                std::task::Poll::Pending => tokio::time::timeout(write_timeout, send).await,
            };
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    // The peer stopped reading: its buffers are full, so a close frame
                    // could not be sent either. Drop the connection.
                    tracing::info!(
                        parent: &span,
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

#[cfg(test)]
mod tests {
    use super::*;

    struct NoCatchUp;
    impl crate::delivery::subscription::CatchUpWake for NoCatchUp {
        fn wake_catchup(&self) {}
    }

    fn text(step: Option<Step>) -> String {
        match step {
            Some(Step::Send(frame)) => String::from_utf8(frame.payload().to_vec()).expect("a text frame"),
            _ => panic!("a frame was expected"),
        }
    }

    /// A reply queued before a delivery is written before it, even when the writer took
    /// the delivery first (its `select!` found the reply queue empty a moment before).
    #[test]
    fn a_reply_queued_before_a_delivery_goes_first() {
        use crate::delivery::subscription::{Outbound, Position, Reset, ResetReason, Subscription};
        let (outbound, mut deliveries) = Outbound::new(16, 1 << 20);
        let topic = crate::topic::Topic::parse("t", 200).expect("a topic");
        let wake: std::sync::Weak<dyn crate::delivery::subscription::CatchUpWake> = std::sync::Weak::<NoCatchUp>::new();
        let sub = Subscription::new(topic.clone(), outbound, Position { epoch: "e".into(), last: 0 }, wake, false);
        let (replies_tx, mut replies) = queue::bounded(64);
        let meter = metrics::DeliveryMeter::new("ws", "streamhub");
        let encoder = Native(Encoding::Json);
        let reset = |seq| Reset { topic: topic.clone(), epoch: "e".into(), seq, reason: ResetReason::Trimmed };

        assert!(replies_tx.try_send(Outgoing::Frame(Box::new(ServerFrame::Pong { id: 7 }))).is_ok());
        sub.offer_reset(reset(1));
        // The writer's select took the delivery: the reply still goes first.
        let mut held = None;
        let queued = deliveries.try_recv().expect("the delivery");
        let first = text(Some(delivery_after_replies(&encoder, &meter, &mut replies, queued, &mut held)));
        assert!(held.is_some(), "the delivery waits");
        assert!(first.contains("\"pong\""), "{first}");
        sub.offer_reset(reset(2));
        let second = text(ready_step(&encoder, &meter, &mut replies, &mut deliveries, &mut held));
        assert!(second.contains("\"seq\":1"), "the held delivery, before the next one: {second}");
        let third = text(ready_step(&encoder, &meter, &mut replies, &mut deliveries, &mut held));
        assert!(third.contains("\"seq\":2"), "{third}");
        assert!(ready_step(&encoder, &meter, &mut replies, &mut deliveries, &mut held).is_none());
    }

    /// Every slot of the reply queue is the largest item's size.
    #[test]
    fn a_reply_stays_two_words() {
        assert_eq!(std::mem::size_of::<Outgoing<Box<ServerFrame>>>(), 16);
    }
}
