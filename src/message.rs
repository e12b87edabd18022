//! A message a client asks to publish, checked against the configured limits and
//! turned into an [`Envelope`]. Transport-neutral: HTTP, WebSocket and the CLI all
//! publish through this.

use std::collections::BTreeMap;

pub use crate::clock::now_ms;
use crate::config::Limits;
use crate::envelope::{Envelope, ENVELOPE_VERSION};
use crate::error::{Code, Error};

/// A message before it is stored.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub payload: Vec<u8>,
    pub content_type: String,
    pub headers: BTreeMap<String, String>,
    pub ttl_ms: Option<u64>,
    pub idempotency_key: Option<String>,
}

/// A checked message, ready for the publish function.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub envelope: Envelope,
    pub idempotency_key: Option<String>,
}

/// Why a message was refused; each variant has a stable error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    #[error("payload is {len} bytes, limit {max} (limits.max_payload_bytes)")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("{count} headers, limit {max} (limits.max_headers)")]
    TooManyHeaders { count: usize, max: usize },
    #[error("headers take {len} bytes, limit {max} (limits.max_header_bytes)")]
    HeadersTooLarge { len: usize, max: usize },
    #[error("invalid header name {0:?}: 1 to 64 bytes of ASCII letters, digits, '-', '_' or '.'")]
    InvalidHeaderName(String),
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
    #[error("ttl_ms must be at least 1")]
    InvalidTtl,
    #[error("invalid content type {0:?}")]
    InvalidContentType(String),
}

impl InvalidMessage {
    /// The stable error code (docs/PROTOCOL.md, "Error codes").
    pub fn code(&self) -> Code {
        match self {
            InvalidMessage::PayloadTooLarge { .. } => Code::PayloadTooLarge,
            InvalidMessage::TooManyHeaders { .. } => Code::TooManyHeaders,
            InvalidMessage::HeadersTooLarge { .. } => Code::HeadersTooLarge,
            InvalidMessage::InvalidHeaderName(_) => Code::InvalidHeader,
            InvalidMessage::InvalidIdempotencyKey(_) => Code::InvalidIdempotencyKey,
            InvalidMessage::InvalidTtl => Code::InvalidRequest,
            InvalidMessage::InvalidContentType(_) => Code::InvalidRequest,
        }
    }
}

impl From<InvalidMessage> for Error {
    fn from(e: InvalidMessage) -> Error {
        Error::new(e.code(), e.to_string())
    }
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl NewMessage {
    /// Checks every limit; on success mints the message id (UUID v7) and publish time.
    pub fn check(self, limits: &Limits) -> Result<OutgoingMessage, InvalidMessage> {
        if self.payload.len() > limits.max_payload_bytes {
            return Err(InvalidMessage::PayloadTooLarge { len: self.payload.len(), max: limits.max_payload_bytes });
        }
        if self.headers.len() > limits.max_headers {
            return Err(InvalidMessage::TooManyHeaders { count: self.headers.len(), max: limits.max_headers });
        }
        if let Some(name) = self.headers.keys().find(|n| !valid_header_name(n)) {
            return Err(InvalidMessage::InvalidHeaderName(name.clone()));
        }
        let header_bytes: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if header_bytes > limits.max_header_bytes {
            return Err(InvalidMessage::HeadersTooLarge { len: header_bytes, max: limits.max_header_bytes });
        }
        if self.ttl_ms == Some(0) {
            return Err(InvalidMessage::InvalidTtl);
        }
        if self.content_type.is_empty()
            || self.content_type.len() > 255
            || !self.content_type.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err(InvalidMessage::InvalidContentType(self.content_type));
        }
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() || key.len() > limits.max_idempotency_key_bytes {
                return Err(InvalidMessage::InvalidIdempotencyKey(format!(
                    "must be 1 to {} bytes (limits.max_idempotency_key_bytes)",
                    limits.max_idempotency_key_bytes
                )));
            }
            // `{` and `}` would let a key imitate another key's hash tag or suffix.
            if !key.bytes().all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}') {
                return Err(InvalidMessage::InvalidIdempotencyKey(
                    "only visible ASCII characters other than { and }, no spaces".into(),
                ));
            }
        }
        Ok(OutgoingMessage {
            envelope: Envelope {
                version: ENVELOPE_VERSION,
                id: uuid::Uuid::now_v7().hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned(),
                published_ms: now_ms(),
                ttl_ms: self.ttl_ms,
                content_type: self.content_type,
                headers: self.headers,
                payload: self.payload,
                from: None,
            },
            idempotency_key: self.idempotency_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn msg(payload: usize) -> NewMessage {
        NewMessage { payload: vec![b'x'; payload], content_type: "text/plain".into(), ..Default::default() }
    }

    #[test]
    fn payload_limit_edge() {
        let limits = Config::defaults().limits;
        assert!(msg(limits.max_payload_bytes).check(&limits).is_ok());
        assert_eq!(msg(limits.max_payload_bytes + 1).check(&limits).unwrap_err().code(), Code::PayloadTooLarge);
    }

    #[test]
    fn header_limits_edge() {
        let limits = Config::defaults().limits;
        let mut m = msg(1);
        for i in 0..limits.max_headers {
            m.headers.insert(format!("h{i}"), "v".into());
        }
        assert!(m.clone().check(&limits).is_ok());
        m.headers.insert("one-more".into(), "v".into());
        assert_eq!(m.check(&limits).unwrap_err().code(), Code::TooManyHeaders);

        let mut m = msg(1);
        m.headers.insert("big".into(), "v".repeat(limits.max_header_bytes - 3));
        assert!(m.clone().check(&limits).is_ok());
        m.headers.insert("big".into(), "v".repeat(limits.max_header_bytes - 2));
        assert_eq!(m.check(&limits).unwrap_err().code(), Code::HeadersTooLarge);

        let mut m = msg(1);
        m.headers.insert("bad name".into(), "v".into());
        assert_eq!(m.check(&limits).unwrap_err().code(), Code::InvalidHeader);
    }

    #[test]
    fn idempotency_key_edge() {
        let limits = Config::defaults().limits;
        let mut m = msg(1);
        m.idempotency_key = Some("k".repeat(limits.max_idempotency_key_bytes));
        assert!(m.clone().check(&limits).is_ok());
        m.idempotency_key = Some("k".repeat(limits.max_idempotency_key_bytes + 1));
        assert_eq!(m.clone().check(&limits).unwrap_err().code(), Code::InvalidIdempotencyKey);
        m.idempotency_key = Some("a b".into());
        assert_eq!(m.clone().check(&limits).unwrap_err().code(), Code::InvalidIdempotencyKey);
        m.idempotency_key = Some("k}:m".into());
        assert_eq!(m.check(&limits).unwrap_err().code(), Code::InvalidIdempotencyKey);
    }
}
