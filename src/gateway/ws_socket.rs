//! The WebSocket's edge, below both protocols: the upgrade handshake (RFC 6455 §4.2), the
//! connection split into two halves that share no lock, and frames encoded whole.
//!
//! The reader half parses inbound frames with tungstenite; it never writes (what the
//! library would answer by itself, a pong or the close reply, the session hands to its
//! writer). The writer half belongs to the session's writer task, which writes frames that
//! were encoded once, header and payload together (`Frame`): a message's frame is shared
//! by every session that delivers it, and the frames that are ready together go out in one
//! vectored write, without being copied (ARCHITECTURE §6).

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::Response;
use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame as WireFrame};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::error::{Code, Error};

/// A WebSocket upgrade request that passed the handshake's checks: HTTP/1.1 `GET` with
/// `Connection: upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a
/// `Sec-WebSocket-Key` of 16 bytes in base64. Refused otherwise with `invalid_request` and
/// what is missing, or (another version) `426 unsupported_websocket_version`.
pub(super) struct Upgrade {
    key: HeaderValue,
    /// The subprotocols the client asked for, in its order.
    requested: Vec<HeaderValue>,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        let refuse = |why: &str| Error::new(Code::InvalidRequest, why.to_string());
        if parts.version > Version::HTTP_11 {
            return Err(refuse("a WebSocket session is opened with an HTTP/1.1 upgrade"));
        }
        if parts.method != Method::GET {
            // HEAD reaches a GET route too.
            return Err(Error::new(Code::MethodNotAllowed, "a WebSocket upgrade's method must be GET".to_string()));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(refuse("the Connection header does not include 'upgrade'"));
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(refuse("the Upgrade header does not include 'websocket'"));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
            return Err(Error::new(
                Code::UnsupportedWebSocketVersion,
                "this server speaks WebSocket version 13 only (Sec-WebSocket-Version: 13)".to_string(),
            ));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(refuse("the Sec-WebSocket-Key header is missing"));
        };
        if !valid_key(key.as_bytes()) {
            return Err(refuse("the Sec-WebSocket-Key header is not 16 bytes in base64"));
        }
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(refuse("this connection cannot be upgraded"));
        };
        let requested = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|p| HeaderValue::from_bytes(p.trim_ascii()).ok())
            .collect();
        Ok(Upgrade { key, requested, on_upgrade })
    }
}

/// Whether a `Sec-WebSocket-Key` is what RFC 6455 §4.1 requires: a nonce of 16 bytes in
/// base64 (24 characters, padding included).
fn valid_key(key: &[u8]) -> bool {
    use base64::Engine;
    key.len() == 24 && base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|nonce| nonce.len() == 16)
}

/// Whether a header's comma-separated tokens include `token` (ASCII case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

impl Upgrade {
    /// The first of `offered` (the server's order of preference) that the client asked
    /// for; None when it asked for none of them (a subprotocol is only echoed when asked
    /// for: strict clients fail on one they did not ask for).
    pub fn protocol(&self, offered: &[&'static str]) -> Option<&'static str> {
        offered.iter().copied().find(|p| self.requested.iter().any(|r| r.as_bytes() == p.as_bytes()))
    }

    /// Answers `101 Switching Protocols` (with `protocol`, if any); once the connection
    /// is switched, `session` runs on its socket, in a task of its own.
    pub fn accept<F, Fut>(self, protocol: Option<&'static str>, config: WebSocketConfig, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Upgrade { key, on_upgrade, .. } = self;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => session(Socket::open(upgraded, config).await).await,
                Err(e) => tracing::debug!(error = %e, "the WebSocket upgrade did not complete"),
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        response
    }
}

/// An upgraded connection's two halves.
pub(super) struct Socket {
    pub reader: Reader,
    pub writer: Writer,
    /// The writing half, shared with the tails' direct writes (`ws_direct`): a TCP
    /// connection's only (the writer writes through `Shared` then).
    pub shared: Option<Arc<OwnedWriteHalf>>,
}

/// The reading half: inbound messages (tungstenite's `Stream` of `Message`s). Boxed: the
/// parser's state (≈ 0.4 KiB) is kept for the session's life, outside the session's future
/// (ARCHITECTURE §6).
pub(super) type Reader = Box<WebSocketStream<Inbound>>;

/// The writing half: only the session's writer task writes, and only whole `Frame`s.
pub(super) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

impl Socket {
    async fn open(upgraded: hyper::upgrade::Upgraded, config: WebSocketConfig) -> Socket {
        // The server's connections are TCP streams (`server.rs`): split into owned halves,
        // which share no lock. Anything else is split behind tokio's lock.
        let (read, writer, shared, part): (Box<dyn AsyncRead + Send + Unpin>, Writer, _, Bytes) =
            match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(upgraded) {
                Ok(parts) => {
                    let (read, write) = parts.io.into_inner().into_split();
                    let write = Arc::new(write);
                    (Box::new(read), Box::new(Shared(write.clone())), Some(write), parts.read_buf)
                }
                Err(upgraded) => {
                    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                    (Box::new(read), Box::new(write), None, Bytes::new())
                }
            };
        let reader =
            WebSocketStream::from_partially_read(Inbound(read), part.to_vec(), Role::Server, Some(config)).await;
        Socket { reader: Box::new(reader), writer, shared }
    }
}

/// The writing half of a TCP connection, shared with the tails' direct writes: written
/// through `&TcpStream` (its readiness and non-blocking writes), as tokio's own half does.
/// The write side closes when the last holder drops the half.
struct Shared(Arc<OwnedWriteHalf>);

impl Shared {
    /// `write` once the socket is ready for it, again while it would block.
    fn poll_when_ready(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> std::io::Result<usize>,
    ) -> Poll<std::io::Result<usize>> {
        let stream: &TcpStream = (*self.0).as_ref();
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            match write(stream) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.poll_when_ready(cx, |stream| stream.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_when_ready(cx, |stream| stream.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The write side closes when the half is dropped (by its last holder).
        Poll::Ready(Ok(()))
    }
}

/// One non-blocking write of `frame` (a direct write): the bytes the socket took.
pub(super) fn try_write(socket: &OwnedWriteHalf, frame: &Frame) -> std::io::Result<usize> {
    socket.try_write(&frame.0)
}

/// The reading half as tungstenite sees it. Its writes go nowhere: tungstenite queues a
/// pong for every ping and a close frame in reply to the peer's, and writes them on its
/// next read; here the session's reader hands those to its writer instead
/// (`Outgoing::Pong`, `Outgoing::CloseReply`), so that only one task writes to the socket
/// and frames never interleave.
pub(super) struct Inbound(Box<dyn AsyncRead + Send + Unpin>);

impl AsyncRead for Inbound {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Inbound {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One WebSocket frame as it goes on the wire, header and payload (a server's frames are
/// not masked), encoded once and shared: writing it copies nothing.
#[derive(Clone, Debug)]
pub(crate) struct Frame(Bytes);

impl Frame {
    fn encode(frame: WireFrame) -> Frame {
        let mut out = Vec::with_capacity(frame.len());
        // Writing into a Vec cannot fail.
        let _ = frame.format(&mut out);
        Frame(out.into())
    }

    /// A text frame (the payload is UTF-8: JSON as serde_json writes it).
    pub fn text(payload: Vec<u8>) -> Frame {
        debug_assert!(std::str::from_utf8(&payload).is_ok());
        Frame::encode(WireFrame::message(payload, OpCode::Data(Data::Text), true))
    }

    pub fn binary(payload: Vec<u8>) -> Frame {
        Frame::encode(WireFrame::message(payload, OpCode::Data(Data::Binary), true))
    }

    pub fn ping() -> Frame {
        Frame::encode(WireFrame::ping(Bytes::new()))
    }

    pub fn pong(payload: Bytes) -> Frame {
        Frame::encode(WireFrame::pong(payload))
    }

    /// A close frame with `code` and `reason`, or with no code at all.
    pub fn close(close: Option<(u16, &'static str)>) -> Frame {
        Frame::encode(WireFrame::close(
            close.map(|(code, reason)| CloseFrame { code: CloseCode::from(code), reason: reason.into() }),
        ))
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// What is left to write of this frame once its first `written` bytes are written.
    pub fn after(&self, written: usize) -> Frame {
        Frame(self.0.slice(written.min(self.0.len())..))
    }

    /// The bytes on the wire.
    #[cfg(test)]
    pub fn wire(&self) -> &[u8] {
        &self.0
    }

    /// The payload (after the 2-, 4- or 10-byte header).
    #[cfg(test)]
    pub fn payload(&self) -> &[u8] {
        let header = match self.0.get(1).map(|b| b & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        self.0.get(header..).unwrap_or_default()
    }
}

/// Most frames one vectored write takes (the writer's batches are at most this long).
pub(super) const MAX_SLICES: usize = 64;

/// Writes `frames` whole, in order, with as few system calls as the socket allows (one
/// when it has room for them all), and empties it.
pub(super) async fn write_all(writer: &mut Writer, frames: &mut Vec<Frame>) -> std::io::Result<()> {
    let mut first = 0;
    while first < frames.len() {
        let written = std::future::poll_fn(|cx| {
            // Most writes are one frame (a delivery to an otherwise idle session).
            if let [frame] = &frames[first..] {
                return Pin::new(&mut *writer).poll_write(cx, &frame.0);
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for (slot, frame) in slices.iter_mut().zip(&frames[first..]) {
                *slot = IoSlice::new(&frame.0);
                n += 1;
            }
            Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..n])
        })
        .await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // Past what was written: whole frames, then a part of the next.
        let mut left = written;
        while left > 0 {
            let frame = &mut frames[first].0;
            let step = left.min(frame.len());
            frame.advance(step);
            left -= step;
            if frame.is_empty() {
                first += 1;
            }
        }
    }
    frames.clear();
    std::future::poll_fn(|cx| Pin::new(&mut *writer).poll_flush(cx)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_16_bytes_in_base64() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ==")); // RFC 6455 §1.3's example
        assert!(valid_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(!valid_key(b""));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ")); // unpadded
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZSE=")); // 17 bytes
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25j")); // 15 bytes
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZ!==")); // not base64
        assert!(!valid_key(b"not a key at all, but 24"));
    }

    #[test]
    fn frames_have_the_rfc_6455_header() {
        let text = Frame::text(b"{}".to_vec());
        assert_eq!(&text.0[..], b"\x81\x02{}");
        assert_eq!(text.payload(), b"{}");
        let long = Frame::binary(vec![7; 300]);
        assert_eq!(&long.0[..4], &[0x82, 126, 1, 44]);
        assert_eq!(long.payload().len(), 300);
        let huge = Frame::binary(vec![0; 70_000]);
        assert_eq!(&huge.0[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(huge.payload().len(), 70_000);
        assert_eq!(&Frame::ping().0[..], &[0x89, 0]);
        assert_eq!(&Frame::pong(Bytes::from_static(b"hi")).0[..], b"\x8a\x02hi");
        assert_eq!(&Frame::close(Some((4001, "idle"))).0[..], b"\x88\x06\x0f\xa1idle");
        assert_eq!(&Frame::close(None).0[..], &[0x88, 0]);
    }

    /// A socket that takes at most `room` bytes per call, so that frames are split
    /// across writes.
    struct Trickle {
        got: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        room: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.room);
            self.got.lock().expect("lock").extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn short_writes_still_write_every_frame_whole_and_in_order() {
        let frames: Vec<Frame> = (0..100).map(|i| Frame::text(format!("{{\"n\":{i}}}").into_bytes())).collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.0.to_vec()).collect();
        for room in [1, 3, 7, 64, 10_000] {
            let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut writer: Writer = Box::new(Trickle { got: got.clone(), room });
            let mut batch = frames.clone();
            write_all(&mut writer, &mut batch).await.expect("written");
            assert!(batch.is_empty());
            assert_eq!(*got.lock().expect("lock"), expected, "room {room}");
        }
    }
}
