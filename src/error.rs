//! The catalogue of errors a client can be told: one [`Code`] per documented error code
//! (docs/PROTOCOL.md §4), its HTTP status, and the [`Error`] every operation returns.
//!
//! HTTP answers, WebSocket `error` frames, CLI messages and the refusals of the Redis
//! functions (`SH <code> …`) all use these codes; the string of a code is the documented
//! one, and its HTTP status comes from the one table in [`Code::status`].
//! `tests/protocol_doc.rs` checks the table of PROTOCOL.md §4 against [`Code::ALL`].

use std::fmt;

/// A stable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    InvalidTopic,
    InvalidJson,
    InvalidRequest,
    InvalidQuery,
    InvalidGroup,
    InvalidHeader,
    TooManyHeaders,
    HeadersTooLarge,
    InvalidIdempotencyKey,
    PayloadTooLarge,
    BatchTooLarge,
    Unauthorized,
    TokenExpired,
    Forbidden,
    OriginNotAllowed,
    RateLimited,
    UnsupportedMediaType,
    TopicNotFound,
    GroupNotFound,
    DeadLetterNotFound,
    NotAPullGroup,
    DeclaredInConfig,
    NotFound,
    /// A feature this node runs without (presence of an untracked topic, user status
    /// while `presence.users` is off).
    NotEnabled,
    MethodNotAllowed,
    /// A WebSocket upgrade without `Sec-WebSocket-Version: 13` (426, with that header:
    /// RFC 6455 §4.4).
    UnsupportedWebSocketVersion,
    /// This client IP has `http.max_connections_per_ip` sessions open (429).
    TooManyConnectionsPerIp,
    /// The node has `ws.max_connections` sessions open (503).
    TooManyConnections,
    RequestTimeout,
    GroupNotReady,
    NotReplicated,
    /// `publish.max_staged` seqs of the topic already wait for replica confirmation (503).
    StagingFull,
    RedisUnavailable,
    Internal,
    // ---- WebSocket only (error frames; never an HTTP status) ----
    InvalidFrame,
    UnknownOp,
    AlreadySubscribed,
    TooManySubscriptions,
    NotSubscribed,
    AlreadyConsuming,
    NotConsuming,
    SubjectChanged,
    // ---- Redis functions only (`SH invalid_keys`, PROTOCOL.md §9) ----
    InvalidKeys,
}

impl Code {
    /// Every code, in the order of PROTOCOL.md §4.
    pub const ALL: [Code; 43] = [
        Code::InvalidTopic,
        Code::InvalidJson,
        Code::InvalidRequest,
        Code::InvalidQuery,
        Code::InvalidGroup,
        Code::InvalidHeader,
        Code::TooManyHeaders,
        Code::HeadersTooLarge,
        Code::InvalidIdempotencyKey,
        Code::PayloadTooLarge,
        Code::BatchTooLarge,
        Code::Unauthorized,
        Code::TokenExpired,
        Code::Forbidden,
        Code::OriginNotAllowed,
        Code::RateLimited,
        Code::UnsupportedMediaType,
        Code::TopicNotFound,
        Code::GroupNotFound,
        Code::DeadLetterNotFound,
        Code::NotAPullGroup,
        Code::DeclaredInConfig,
        Code::NotFound,
        Code::NotEnabled,
        Code::MethodNotAllowed,
        Code::UnsupportedWebSocketVersion,
        Code::TooManyConnectionsPerIp,
        Code::TooManyConnections,
        Code::RequestTimeout,
        Code::GroupNotReady,
        Code::NotReplicated,
        Code::StagingFull,
        Code::RedisUnavailable,
        Code::Internal,
        Code::InvalidFrame,
        Code::UnknownOp,
        Code::AlreadySubscribed,
        Code::TooManySubscriptions,
        Code::NotSubscribed,
        Code::AlreadyConsuming,
        Code::NotConsuming,
        Code::SubjectChanged,
        Code::InvalidKeys,
    ];

    /// The documented code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::InvalidTopic => "invalid_topic",
            Code::InvalidJson => "invalid_json",
            Code::InvalidRequest => "invalid_request",
            Code::InvalidQuery => "invalid_query",
            Code::InvalidGroup => "invalid_group",
            Code::InvalidHeader => "invalid_header",
            Code::TooManyHeaders => "too_many_headers",
            Code::HeadersTooLarge => "headers_too_large",
            Code::InvalidIdempotencyKey => "invalid_idempotency_key",
            Code::PayloadTooLarge => "payload_too_large",
            Code::BatchTooLarge => "batch_too_large",
            Code::Unauthorized => "unauthorized",
            Code::TokenExpired => "token_expired",
            Code::Forbidden => "forbidden",
            Code::OriginNotAllowed => "origin_not_allowed",
            Code::RateLimited => "rate_limited",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::TopicNotFound => "topic_not_found",
            Code::GroupNotFound => "group_not_found",
            Code::DeadLetterNotFound => "dead_letter_not_found",
            Code::NotAPullGroup => "not_a_pull_group",
            Code::DeclaredInConfig => "declared_in_config",
            Code::NotFound => "not_found",
            Code::NotEnabled => "not_enabled",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::UnsupportedWebSocketVersion => "unsupported_websocket_version",
            Code::TooManyConnectionsPerIp | Code::TooManyConnections => "too_many_connections",
            Code::RequestTimeout => "request_timeout",
            Code::GroupNotReady => "group_not_ready",
            Code::NotReplicated => "not_replicated",
            Code::StagingFull => "staging_full",
            Code::RedisUnavailable => "redis_unavailable",
            Code::Internal => "internal",
            Code::InvalidFrame => "invalid_frame",
            Code::UnknownOp => "unknown_op",
            Code::AlreadySubscribed => "already_subscribed",
            Code::TooManySubscriptions => "too_many_subscriptions",
            Code::NotSubscribed => "not_subscribed",
            Code::AlreadyConsuming => "already_consuming",
            Code::NotConsuming => "not_consuming",
            Code::SubjectChanged => "subject_changed",
            Code::InvalidKeys => "invalid_keys",
        }
    }

    /// The HTTP status of an answer with this code; `None` for codes that only appear in
    /// WebSocket `error` frames or Redis function refusals.
    pub const fn status(self) -> Option<u16> {
        Some(match self {
            Code::InvalidTopic
            | Code::InvalidJson
            | Code::InvalidRequest
            | Code::InvalidQuery
            | Code::InvalidGroup
            | Code::InvalidHeader
            | Code::TooManyHeaders
            | Code::HeadersTooLarge
            | Code::InvalidIdempotencyKey => 400,
            Code::PayloadTooLarge | Code::BatchTooLarge => 413,
            Code::Unauthorized | Code::TokenExpired => 401,
            Code::Forbidden | Code::OriginNotAllowed => 403,
            Code::RateLimited | Code::TooManyConnectionsPerIp => 429,
            Code::UnsupportedMediaType => 415,
            Code::TopicNotFound
            | Code::GroupNotFound
            | Code::DeadLetterNotFound
            | Code::NotFound
            | Code::NotEnabled => 404,
            Code::NotAPullGroup | Code::DeclaredInConfig => 409,
            Code::MethodNotAllowed => 405,
            Code::UnsupportedWebSocketVersion => 426,
            Code::TooManyConnections
            | Code::RequestTimeout
            | Code::GroupNotReady
            | Code::NotReplicated
            | Code::StagingFull
            | Code::RedisUnavailable => 503,
            Code::Internal => 500,
            Code::InvalidFrame
            | Code::UnknownOp
            | Code::AlreadySubscribed
            | Code::TooManySubscriptions
            | Code::NotSubscribed
            | Code::AlreadyConsuming
            | Code::NotConsuming
            | Code::SubjectChanged
            | Code::InvalidKeys => return None,
        })
    }

    /// The status for HTTP: codes without one never reach HTTP, 400 if one did.
    pub const fn http_status(self) -> u16 {
        match self.status() {
            Some(s) => s,
            None => 400,
        }
    }

    /// True when the client caused the error (it counts towards `ws.max_violations`);
    /// false for the server's own trouble, which the client cannot help.
    pub const fn is_client_fault(self) -> bool {
        !matches!(
            self,
            Code::RedisUnavailable | Code::NotReplicated | Code::StagingFull | Code::Internal | Code::GroupNotReady
        )
    }

    /// The code named by a string (the refusals of the Redis functions). Where two codes
    /// share a string, the per-IP one is never named by Redis; the node-wide one is.
    pub fn parse(name: &str) -> Option<Code> {
        Code::ALL.into_iter().filter(|c| *c != Code::TooManyConnectionsPerIp).find(|c| c.as_str() == name)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a client is told: a code and a message that never leaks internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: Code,
    pub message: String,
    /// For a batch: the position of the refused message.
    pub index: Option<usize>,
    /// Seconds the client should wait before retrying (429 answers, `503 staging_full`).
    pub retry_after: Option<u64>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error { code, message: message.into(), index: None, retry_after: None }
    }

    /// The refused message of a batch.
    pub fn at(mut self, index: usize) -> Error {
        self.index = Some(index);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Error {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// `500 internal`: the details are logged here, never returned.
    pub fn internal(detail: impl fmt::Display) -> Error {
        tracing::error!(error = %detail, "internal error");
        Error::new(Code::Internal, "internal error")
    }
}

impl From<Code> for Error {
    /// An error with the code's own name as its message.
    fn from(code: Code) -> Error {
        Error::new(code, code.as_str().replace('_', " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_unique_name_but_the_two_connection_limits() {
        let mut names: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before - names.len(), 1, "only too_many_connections is shared (429 per IP, 503 per node)");
    }

    #[test]
    fn names_parse_back_and_statuses_follow_the_table() {
        for code in Code::ALL {
            let parsed = Code::parse(code.as_str()).expect("parses");
            assert_eq!(parsed.as_str(), code.as_str());
        }
        assert_eq!(Code::parse("too_many_connections"), Some(Code::TooManyConnections));
        assert_eq!(Code::parse("no_such_code"), None);
        assert_eq!(Code::TooManyConnectionsPerIp.status(), Some(429));
        assert_eq!(Code::TooManyConnections.status(), Some(503));
        assert_eq!(Code::InvalidFrame.status(), None);
        assert!(!Code::RedisUnavailable.is_client_fault() && Code::InvalidTopic.is_client_fault());
        assert_eq!(Code::StagingFull.status(), Some(503));
        assert!(!Code::StagingFull.is_client_fault());
    }
}
