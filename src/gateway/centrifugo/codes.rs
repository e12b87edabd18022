//! streamhub's errors in the Centrifugo protocol's terms: reply error codes (100–112),
//! disconnect codes (close frames; 3000–3499 reconnect, 3500–3999 do not) and unsubscribe
//! codes (2000–2499 final, 2500+ resubscribe). docs/CENTRIFUGO.md lists them.

use super::proto;
use crate::error::{Code, Error};

/// A reply error: the protocol's code and message, and whether retrying may succeed.
pub fn reply_error(e: &Error) -> proto::Error {
    let (code, temporary) = match e.code {
        Code::Internal
        | Code::RedisUnavailable
        | Code::RequestTimeout
        | Code::NotReplicated
        | Code::StagingFull
        | Code::GroupNotReady => (100, true),
        Code::Unauthorized => (101, false),
        Code::InvalidTopic => (102, false),
        Code::Forbidden | Code::OriginNotAllowed | Code::SubjectChanged => (103, false),
        Code::UnknownOp | Code::MethodNotAllowed | Code::NotFound => (104, false),
        Code::AlreadySubscribed | Code::AlreadyConsuming => (105, false),
        Code::TooManySubscriptions | Code::TooManyConnections | Code::TooManyConnectionsPerIp => (106, false),
        Code::InvalidJson
        | Code::InvalidRequest
        | Code::UnsupportedWebSocketVersion
        | Code::InvalidQuery
        | Code::InvalidGroup
        | Code::InvalidHeader
        | Code::TooManyHeaders
        | Code::HeadersTooLarge
        | Code::InvalidIdempotencyKey
        | Code::PayloadTooLarge
        | Code::BatchTooLarge
        | Code::UnsupportedMediaType
        | Code::InvalidFrame
        | Code::NotSubscribed
        | Code::NotConsuming
        | Code::InvalidKeys => (107, false),
        Code::NotEnabled
        | Code::TopicNotFound
        | Code::GroupNotFound
        | Code::DeadLetterNotFound
        | Code::NotAPullGroup
        | Code::DeclaredInConfig => (108, false),
        Code::TokenExpired => (109, false),
        Code::RateLimited => (111, true),
    };
    proto::Error { code, message: e.message.clone(), temporary }
}

/// The protocol's own errors (not from an operation).
pub const METHOD_NOT_FOUND: u32 = 104;
pub const NOT_AVAILABLE: u32 = 108;
pub const UNRECOVERABLE_POSITION: u32 = 112;

/// Close codes the client reconnects after.
pub const SHUTDOWN: (u16, &str) = (3001, "shutdown");
pub const CONNECTION_EXPIRED: (u16, &str) = (3005, "connection expired");
pub const NO_PONG: (u16, &str) = (3012, "no pong");
/// Close codes the client does not reconnect after.
pub const INVALID_TOKEN: (u16, &str) = (3500, "invalid token");
pub const BAD_REQUEST: (u16, &str) = (3501, "bad request");
pub const STALE: (u16, &str) = (3502, "stale");
pub const TOO_MANY_ERRORS: (u16, &str) = (3509, "too many errors");
/// An inbound message over `ws.max_frame_bytes` (WebSocket's own code: centrifuge-js
/// reports "message size limit exceeded" and does not reconnect).
pub const TOO_BIG: (u16, &str) = (1009, "message too big");

/// Unsubscribe pushes: the position jumped (the client resubscribes and learns how).
pub const INSUFFICIENT_STATE: (u32, &str) = (2500, "insufficient state");
/// A subscription token expired without a `sub_refresh` (the client resubscribes with a
/// fresh token).
pub const SUBSCRIPTION_EXPIRED: (u32, &str) = (2501, "subscription expired");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_into_the_protocol_range_and_transient_ones_are_temporary() {
        for code in Code::ALL {
            let e = reply_error(&Error::new(code, "x"));
            assert!((100..=112).contains(&e.code), "{code:?} → {}", e.code);
            assert_eq!(e.temporary, matches!(e.code, 100 | 111), "{code:?}");
        }
        assert_eq!(reply_error(&Error::new(Code::TokenExpired, "x")).code, 109);
        assert_eq!(reply_error(&Error::new(Code::Forbidden, "x")).code, 103);
        assert_eq!(reply_error(&Error::new(Code::NotEnabled, "x")).code, 108);
    }
}
