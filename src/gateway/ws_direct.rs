//! Direct writes: the tail task that read a message writes its frame to an idle
//! WebSocket session's socket itself, instead of queueing it and waking the session's
//! writer task to write it (ARCHITECTURE §6, "Direct writes").
//!
//! The socket has one writer at a time, whoever holds `state`: the session's writer task
//! from the moment it looks at its queues until it has written what it took and found
//! nothing more (it holds it across a write that waits for room), or a tail for one
//! non-blocking write. A tail writes only when the session has nothing queued and no
//! reply unread, so nothing queued before its message is overtaken; when the socket
//! takes a part of the frame, the rest is left here and the writer writes it before
//! anything else. Once the writer ends, no tail writes.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::tcp::OwnedWriteHalf;

use super::ws_socket::{self, Frame};
use crate::delivery::queue::Probe;
use crate::delivery::subscription::{Delivered, Direct, DirectWrite};
use crate::metrics::DeliveryMeter;

/// Nobody writes.
const IDLE: u8 = 0;
/// The session's writer task writes, or is about to.
const WRITER: u8 = 1;
/// A tail writes one frame.
const TAIL: u8 = 2;
/// A tail wrote part of a frame: its rest waits for the writer, and nobody else writes.
const REST: u8 = 3;
/// The writer ended: nobody writes again.
const CLOSED: u8 = 4;

/// A message's frame in the session's protocol (its `Encoder::message`).
pub(super) type EncodeMessage = Box<dyn Fn(&Delivered) -> Frame + Send + Sync>;

/// One session's socket as its writer task and the tails share it; `R` is the type of
/// the session's replies.
pub(super) struct DirectWriter<R> {
    state: AtomicU8,
    /// Touched only by whoever holds `state`, so never waited for.
    held: Mutex<Held>,
    encode: EncodeMessage,
    /// The session's replies not yet taken by its writer.
    replies: Probe<R>,
    meter: DeliveryMeter,
}

struct Held {
    /// Dropped when the writer ends (the socket's write side closes with the writer's).
    socket: Option<Arc<OwnedWriteHalf>>,
    rest: Option<Frame>,
}

impl<R> DirectWriter<R> {
    pub fn new(socket: Arc<OwnedWriteHalf>, encode: EncodeMessage, replies: Probe<R>, meter: DeliveryMeter) -> Self {
        DirectWriter {
            state: AtomicU8::new(IDLE),
            held: Mutex::new(Held { socket: Some(socket), rest: None }),
            encode,
            replies,
            meter,
        }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer takes the socket (waiting out a tail's write, which does not block);
    /// returns the rest of a frame a tail began, to be written before anything else.
    pub fn hold(&self) -> Option<Frame> {
        let mut spins = 0u32;
        loop {
            match self.state.compare_exchange(IDLE, WRITER, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return None,
                Err(REST) => {
                    if self.state.compare_exchange(REST, WRITER, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        return self.held().rest.take();
                    }
                }
                // Only the writer closes, and it holds the socket until then.
                Err(CLOSED) | Err(WRITER) => return None,
                Err(_) => {
                    // A tail's one write: a few microseconds, unless its thread is
                    // preempted, so spin a little, then yield.
                    spins += 1;
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }

    /// The writer found nothing more to write: the tails may write.
    pub fn let_go(&self) {
        let _ = self.state.compare_exchange(WRITER, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The writer ends: no tail writes again, and the socket is released.
    pub fn close(&self) {
        let _ = self.hold();
        self.state.store(CLOSED, Ordering::Release);
        let mut held = self.held();
        held.socket = None;
        held.rest = None;
    }

    /// The tail's write of `frame` (`message`'s), with the socket held.
    fn write_held(&self, message: &Delivered, frame: &Frame, nothing_queued: &dyn Fn() -> bool) -> Direct {
        if !nothing_queued() || !self.replies.is_empty() {
            return Direct::No;
        }
        // Expiry is judged when a message is written (PROTOCOL "Expired messages"): an
        // expired one is queued, and the writer writes its notice in its place.
        let now = crate::clock::now_ms();
        if message.has_ttl() && message.is_expired(now) {
            return Direct::No;
        }
        let mut held = self.held();
        let Some(socket) = &held.socket else { return Direct::No };
        // Nothing written (no room, or an error the writer will meet): the queue's way.
        let written = match ws_socket::try_write(socket, frame) {
            Ok(n) if n > 0 => n,
            _ => return Direct::No,
        };
        self.meter.delivered_direct(message.published_ms(), now);
        if written == frame.len() {
            return Direct::Written;
        }
        held.rest = Some(frame.after(written));
        Direct::Started
    }
}

impl<R: Send + 'static> DirectWrite for Arc<DirectWriter<R>> {
    fn write_now(&self, message: &Delivered, nothing_queued: &dyn Fn() -> bool) -> Direct {
        // Encoded first (once per message and protocol on this node, shared), so that the
        // socket is held for the checks and one write only.
        let frame = (self.encode)(message);
        if self.state.compare_exchange(IDLE, TAIL, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Direct::No;
        }
        // Given back however the write ends (a panic too: a writer would wait forever).
        struct Release<'a>(&'a AtomicU8, u8);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(self.1, Ordering::Release);
            }
        }
        let mut release = Release(&self.state, IDLE);
        let done = self.write_held(message, &frame, nothing_queued);
        if done == Direct::Started {
            release.1 = REST;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::queue;
    use crate::store::StoredMessage;
    use tokio::io::AsyncReadExt;

    /// A message of `bytes` raw bytes (an entry that is not an envelope: its frame
    /// carries them in base64).
    fn message(seq: u64, bytes: usize) -> Delivered {
        let topic = crate::topic::Topic::parse("t", 200).expect("a topic");
        Delivered::new(topic, "e".into(), StoredMessage { seq, envelope: Err(vec![b'x'; bytes]) })
    }

    async fn write_rest(socket: &OwnedWriteHalf, rest: &Frame) {
        let mut written = 0;
        while written < rest.len() {
            socket.writable().await.expect("writable");
            match try_write_part(socket, rest, written) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn try_write_part(socket: &OwnedWriteHalf, frame: &Frame, from: usize) -> std::io::Result<usize> {
        ws_socket::try_write(socket, &frame.after(from))
    }

    /// A tail writes only to an idle session with nothing queued and no reply unread;
    /// a frame the socket takes only a part of is finished by the writer before anything
    /// else, and no tail writes in between; after the writer's end, no tail writes.
    #[tokio::test]
    async fn a_tail_writes_an_idle_session_only_and_the_writer_finishes_what_it_began() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_send_buffer_size(4096).expect("sndbuf");
        let stream = socket.connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (mut peer, _) = listener.accept().await.expect("accept");
        let (_read, write) = stream.into_split();
        let write = Arc::new(write);
        // Replies of any type: only whether one is unread matters here.
        let (replies_tx, mut replies_rx) = queue::bounded::<&'static str>(8);
        // A frame that names its message and is as large as its payload.
        let frame_of = |m: &Delivered| {
            let size = m.size();
            Frame::binary([m.seq().to_be_bytes().to_vec(), vec![b'f'; size]].concat())
        };
        let encode: EncodeMessage = Box::new(frame_of);
        let meter = DeliveryMeter::new("ws", "streamhub");
        let direct = Arc::new(DirectWriter::new(write.clone(), encode, replies_tx.probe(), meter));
        let (first, big, last) = (message(1, 10), message(2, 1 << 20), message(3, 10));
        let expected: Vec<u8> = [&first, &big, &last].iter().flat_map(|m| frame_of(m).wire().to_vec()).collect();

        assert_eq!(direct.write_now(&first, &|| false), Direct::No, "something is queued");
        let expired = {
            let envelope = crate::envelope::Envelope {
                version: 1,
                id: "x".into(),
                published_ms: 1,
                ttl_ms: Some(1),
                content_type: "text/plain".into(),
                headers: Default::default(),
                payload: b"x".to_vec(),
                from: None,
            };
            let topic = crate::topic::Topic::parse("t", 200).expect("a topic");
            Delivered::new(topic, "e".into(), StoredMessage { seq: 1, envelope: Ok(envelope) })
        };
        assert_eq!(direct.write_now(&expired, &|| true), Direct::No, "expired: its notice is the writer's");
        assert!(replies_tx.try_send("pong").is_ok());
        assert_eq!(direct.write_now(&first, &|| true), Direct::No, "a reply is unread");
        assert!(replies_rx.try_recv().is_ok());
        assert!(direct.hold().is_none());
        assert_eq!(direct.write_now(&first, &|| true), Direct::No, "the writer holds the socket");
        direct.let_go();
        assert_eq!(direct.write_now(&first, &|| true), Direct::Written);

        // The peer does not read yet: the socket takes only a part of 1 MiB.
        assert_eq!(direct.write_now(&big, &|| true), Direct::Started);
        assert_eq!(direct.write_now(&last, &|| true), Direct::No, "the rest goes first");
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.expect("read");
            got
        });
        let rest = direct.hold().expect("the rest of the frame");
        assert!(rest.len() < frame_of(&big).len());
        write_rest(&write, &rest).await;
        direct.let_go();
        // Once the socket has room again (the peer reads), the idle session is written:
        // whole, or started and finished by the writer.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match direct.write_now(&last, &|| true) {
                Direct::Written => break,
                Direct::Started => {
                    write_rest(&write, &direct.hold().expect("the rest")).await;
                    direct.let_go();
                    break;
                }
                Direct::No => {
                    assert!(tokio::time::Instant::now() < deadline, "never written");
                    tokio::time::timeout_at(deadline, write.writable()).await.expect("room").expect("writable");
                    tokio::task::yield_now().await;
                }
            }
        }
        direct.close();
        assert_eq!(direct.write_now(&first, &|| true), Direct::No, "the writer ended");
        // The last holder of the half closes the write side: the peer reads to its end.
        drop((write, direct));
        let got = reading.await.expect("joined");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the frames arrive whole and in order");
    }
}
