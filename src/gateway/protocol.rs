//! HTTP request bodies and queries: pure serde, no I/O. Documented in docs/PROTOCOL.md;
//! the answers' shapes, shared with the other transports, are in `crate::wire`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Body of `POST /v1/topics/{topic}/messages` (JSON) and each item of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// Any JSON value; stored as its JSON text with content type `application/json`.
    pub data: serde_json::Value,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub ttl_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    /// Deliver to the topic's current subscribers only (Pub/Sub, at most once); never
    /// stored, no seq. Not allowed in a batch.
    #[serde(default)]
    pub ephemeral: bool,
}

impl PublishBody {
    /// The message this body asks to publish: its `data` as JSON text.
    pub fn into_message(self) -> crate::message::NewMessage {
        crate::message::NewMessage {
            // Serializing a serde_json::Value cannot fail.
            payload: serde_json::to_vec(&self.data).unwrap_or_default(),
            content_type: "application/json".to_string(),
            headers: self.headers,
            ttl_ms: self.ttl_ms,
            idempotency_key: self.idempotency_key,
        }
    }
}

/// Body of `POST /v1/topics/{topic}/messages:batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub messages: Vec<PublishBody>,
}

/// Query of `GET /v1/topics/{topic}/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Return messages with seq > since (default 0: from the beginning).
    #[serde(default)]
    pub since: u64,
    /// At most this many (default 100, capped at limits.max_history_limit).
    pub limit: Option<usize>,
    /// The epoch the reader's `since` belongs to; a mismatch sets `epoch_changed`.
    pub epoch: Option<String>,
}
