//! Errors of the Redis boundary, and the one place where Redis and Lua error replies
//! are mapped to them.

use fred::error::{Error as RedisError, ErrorKind};

use crate::error::{Code, Error};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer in time, the connection is down, or it is loading.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// A streamhub function refused its input (`SH <code> <message>` error replies), or
    /// Redis answered `NOGROUP` (code `group_not_found`).
    #[error("{code}: {message}")]
    Refused { code: Code, message: String },
    /// Staged on the primary (readable by nobody yet), but fewer replicas than required
    /// confirmed it in time.
    #[error("staged, but only {acked} of {wanted} replicas confirmed it in time")]
    NotReplicated { acked: u64, wanted: u32 },
    /// A reply that does not have the documented shape.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// Any other error Redis returned.
    #[error("redis error: {0}")]
    Redis(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// The metric label of this error (`streamhub_redis_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Refused { .. } => "refused",
            StoreError::NotReplicated { .. } => "not_replicated",
            StoreError::Protocol(_) => "protocol",
            StoreError::Redis(_) => "other",
        }
    }

    /// True for "the function library is not loaded" (Redis restarted without
    /// persistence, or FUNCTION FLUSH): the caller loads it and retries once.
    pub fn is_function_missing(err: &RedisError) -> bool {
        err.details().contains("Function not found")
    }
}

impl From<RedisError> for StoreError {
    fn from(err: RedisError) -> StoreError {
        let details = err.details();
        if let Some(rest) = details.strip_prefix("SH ").or_else(|| details.find(" SH ").map(|i| &details[i + 4..])) {
            let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
            // A failover between staging and commit: Redis is not in a state to take the
            // publish now (lua/publish.lua). (`staging_full`, staging that cannot keep
            // up, is a code of its own: `503 staging_full`.)
            if matches!(code, "failover" | "rolled_back") {
                return StoreError::Unavailable(format!("{code}: {message}"));
            }
            return match Code::parse(code) {
                Some(code) => StoreError::Refused { code, message: message.to_string() },
                None => StoreError::Redis(details.to_string()),
            };
        }
        if details.contains("NOGROUP") {
            return StoreError::Refused { code: Code::GroupNotFound, message: details.to_string() };
        }
        match err.kind() {
            ErrorKind::Timeout
            | ErrorKind::IO
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Routing
            | ErrorKind::Cluster
            | ErrorKind::Sentinel => StoreError::Unavailable(err.to_string()),
            _ if is_transient(details) => StoreError::Unavailable(details.to_string()),
            ErrorKind::Parse | ErrorKind::Protocol => StoreError::Protocol(err.to_string()),
            _ => StoreError::Redis(err.to_string()),
        }
    }
}

/// Redis error replies that mean "not now, here" — the command did not run and may
/// succeed later or elsewhere — and the messages of fred's own routing and reconnection
/// errors that it reports with `ErrorKind::Unknown`. Every one of them is met during a
/// failover or a resharding, and the client is told `redis_unavailable` (retry), never
/// `internal`.
const TRANSIENT: [&str; 17] = [
    // Redis: loading a dataset, primary link down, cluster state fail, a key whose slot
    // is migrating (multi-key), a write to a node that was demoted to a replica, fewer
    // good replicas than min-replicas-to-write, a blocked command unblocked by a role
    // change, a redirection fred did not follow, a script running past its time limit.
    "LOADING",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "READONLY",
    "NOREPLICAS",
    "UNBLOCKED",
    "MOVED",
    "ASK",
    "BUSY",
    // fred (10): no connection for the command's node while it reconnects, a closed
    // connection, redirection loops, and reconnection that gave up.
    "Failed to route command",
    "Connection Closed",
    "Too many redirections",
    "Unable to route command or reconnect",
    "Max attempts reached",
    "Too many failed write attempts",
    "Failed connecting to any cluster node",
];

fn is_transient(details: &str) -> bool {
    TRANSIENT.iter().any(|prefix| details.starts_with(prefix))
}

impl From<StoreError> for Error {
    /// What a client is told when Redis failed: never the Redis error itself (logged here).
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "redis unavailable");
                Error::new(Code::RedisUnavailable, "the message store is unavailable; retry later")
            }
            e @ StoreError::NotReplicated { .. } => {
                tracing::warn!(error = %e, "publish not confirmed by replicas");
                Error::new(
                    Code::NotReplicated,
                    format!("{e}; retry with the same idempotency key to avoid a duplicate"),
                )
            }
            StoreError::Refused { code: Code::StagingFull, message } => {
                tracing::warn!(%message, "publish refused: the topic's staging stream is full");
                Error::new(
                    Code::StagingFull,
                    "publish.max_staged seqs of this topic already wait for replica confirmation (the replicas \
                     are not keeping up); nothing was stored, retry later",
                )
                .retry_after(1)
            }
            StoreError::Refused { code: Code::GroupNotFound, .. } => Error::new(
                Code::GroupNotReady,
                "the group does not exist in Redis yet (it is being created); retry shortly",
            ),
            StoreError::Refused { code, message } => {
                tracing::warn!(%code, %message, "redis function refused a request streamhub had validated");
                Error::new(Code::InvalidRequest, message)
            }
            other => Error::internal(format_args!("redis call failed: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_function_refusals_to_their_code() {
        let err = RedisError::new(ErrorKind::Unknown, "SH invalid_topic topic may only hold letters");
        match StoreError::from(err) {
            StoreError::Refused { code, message } => {
                assert_eq!(code, Code::InvalidTopic);
                assert_eq!(message, "topic may only hold letters");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_full_staging_stream_is_its_own_retryable_503() {
        let err = RedisError::new(
            ErrorKind::Unknown,
            "SH staging_full 2 seqs of this topic wait for replicas (publish.max_staged 2)",
        );
        let mapped = StoreError::from(err);
        assert!(matches!(mapped, StoreError::Refused { code: Code::StagingFull, .. }), "{mapped:?}");
        let client = Error::from(mapped);
        assert_eq!((client.code, client.code.status(), client.retry_after), (Code::StagingFull, Some(503), Some(1)));
        assert!(client.message.contains("publish.max_staged"), "{}", client.message);
    }

    #[test]
    fn maps_timeouts_and_io_to_unavailable() {
        for kind in [ErrorKind::Timeout, ErrorKind::IO, ErrorKind::Canceled] {
            assert!(matches!(StoreError::from(RedisError::new(kind, "x")), StoreError::Unavailable(_)));
        }
        let loading = RedisError::new(ErrorKind::Unknown, "LOADING Redis is loading the dataset in memory");
        assert!(matches!(StoreError::from(loading), StoreError::Unavailable(_)));
    }

    #[test]
    fn failover_and_resharding_errors_are_unavailable_never_internal() {
        let cases = [
            (ErrorKind::Unknown, "Failed to route command."),
            (ErrorKind::Routing, "Failed to route command."),
            (ErrorKind::Routing, "Too many redirections."),
            (ErrorKind::Routing, "Unable to route command or reconnect."),
            (ErrorKind::Routing, "Max attempts reached."),
            (ErrorKind::Unknown, "Too many failed write attempts."),
            (ErrorKind::Cluster, "Failed connecting to any cluster node."),
            (ErrorKind::Cluster, "Missing cluster routing state."),
            (ErrorKind::Cluster, "MOVED 3999 127.0.0.1:7002"),
            (ErrorKind::Cluster, "ASK 3999 127.0.0.1:7002"),
            (ErrorKind::Cluster, "CLUSTERDOWN The cluster is down"),
            (ErrorKind::Sentinel, "Failed to read sentinel node port."),
            (ErrorKind::IO, "Connection Closed"),
            (ErrorKind::Unknown, "Connection Closed"),
            (ErrorKind::Unknown, "TRYAGAIN Multiple keys request during rehashing of slot"),
            (ErrorKind::Unknown, "READONLY You can't write against a read only replica."),
            (ErrorKind::Unknown, "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
            (ErrorKind::Unknown, "NOREPLICAS Not enough good replicas to write."),
            (ErrorKind::Unknown, "UNBLOCKED force unblock from blocking operation, instance state changed"),
            (ErrorKind::Unknown, "BUSY Redis is busy running a script."),
        ];
        for (kind, text) in cases {
            let mapped = StoreError::from(RedisError::new(kind.clone(), text));
            assert!(matches!(mapped, StoreError::Unavailable(_)), "{kind:?} {text} → {mapped:?}");
            let client = Error::from(mapped);
            assert_eq!(client.code, Code::RedisUnavailable, "{text}");
        }
        // A genuine error stays one.
        let other = StoreError::from(RedisError::new(ErrorKind::Unknown, "ERR unknown command 'FOO'"));
        assert!(matches!(other, StoreError::Redis(_)));
    }

    #[test]
    fn recognises_a_missing_library() {
        assert!(StoreError::is_function_missing(&RedisError::new(ErrorKind::Unknown, "ERR Function not found")));
        assert!(!StoreError::is_function_missing(&RedisError::new(ErrorKind::Unknown, "ERR other")));
    }
}
