//! Wire types shared by every transport and by the webhook target: pure serde, no I/O.
//! The shapes of a message (history, subscriptions, consumer deliveries, webhooks) and of
//! the publish, history and topic answers. Documented in docs/PROTOCOL.md.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::config::TopicRetention;
use crate::envelope::Envelope;
use crate::store::groups::{DeadLetter, GroupDelivery};
use crate::store::{HistoryPage, Published, TopicInfo};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublishResult {
    pub epoch: String,
    pub seq: u64,
    pub id: String,
    pub duplicate: bool,
}

impl From<Published> for PublishResult {
    fn from(p: Published) -> Self {
        PublishResult { epoch: p.epoch, seq: p.seq, id: p.id, duplicate: p.duplicate }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BatchResult {
    pub results: Vec<PublishResult>,
}

impl PublishResult {
    /// Appends this result's JSON to `out`, byte for byte what its `Serialize` writes
    /// (keys in order, no spaces), with each string escaped only if a byte of it needs
    /// it. The epoch (16 hex digits) and the id (a UUID) need none: escaping them byte by
    /// byte through serde_json cost more than the rest of a batch's answer
    /// (docs/BENCHMARKS.md, "Session 11").
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"epoch\":");
        json_string(out, &self.epoch);
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        out.extend_from_slice(b",\"id\":");
        json_string(out, &self.id);
        out.extend_from_slice(if self.duplicate { b",\"duplicate\":true}" } else { b",\"duplicate\":false}" });
    }
}

impl BatchResult {
    /// This answer's JSON, as `PublishResult::write_json` writes each result.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 120 * self.results.len());
        out.extend_from_slice(b"{\"results\":[");
        for (i, result) in self.results.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            result.write_json(&mut out);
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// `s` as a JSON string: as it is between quotes when no byte needs escaping (printable
/// ASCII other than `"` and `\\`), else as serde_json escapes it.
fn json_string(out: &mut Vec<u8>, s: &str) {
    // A fold, not `all`: without the early exit the look is vectorised.
    let plain = s.bytes().fold(true, |plain, b| plain & ((0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')));
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(out, s);
    }
}

/// One message as returned by history, delivered to subscribers and to consumers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageOut {
    pub seq: u64,
    pub id: String,
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ttl_ms: Option<u64>,
    pub content_type: String,
    pub headers: BTreeMap<String, String>,
    /// The payload: a JSON value for `application/json`, a string for UTF-8 `text/*`.
    /// (A JSON `null` payload is `Some(Null)`: present, unlike an absent `data`.)
    #[serde(skip_serializing_if = "Option::is_none", default, deserialize_with = "present")]
    pub data: Option<serde_json::Value>,
    /// The payload in base64 when it is neither of the above.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data_base64: Option<String>,
    /// Who published it, as streamhub authenticated them (PROTOCOL 1.3).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from: Option<FromOut>,
}

/// The publisher of a message: the principal's subject, and the client id of the
/// WebSocket session that published it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FromOut {
    pub user: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub client: String,
}

/// A field that is present is `Some`, even when it is `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// Content type reported for a stream entry that is not a valid envelope.
pub const UNDECODABLE: &str = "application/x-streamhub-undecodable";

pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

impl MessageOut {
    /// The message with seq `seq`, from its envelope (or the raw bytes of an entry that
    /// is not one: marked, never skipped, so a reader never loses track of a seq).
    pub fn new(seq: u64, envelope: Result<Envelope, Vec<u8>>) -> MessageOut {
        let b64 = |bytes: &[u8]| Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        match envelope {
            Ok(e) => {
                let (data, data_base64) = if is_json(&e.content_type) {
                    match serde_json::from_slice(&e.payload) {
                        Ok(v) => (Some(v), None),
                        Err(_) => (None, b64(&e.payload)),
                    }
                } else if e.content_type.get(..5).is_some_and(|t| t.eq_ignore_ascii_case("text/")) {
                    match String::from_utf8(e.payload) {
                        Ok(s) => (Some(serde_json::Value::String(s)), None),
                        Err(err) => (None, b64(err.as_bytes())),
                    }
                } else {
                    (None, b64(&e.payload))
                };
                MessageOut {
                    seq,
                    id: e.id,
                    ts: e.published_ms,
                    ttl_ms: e.ttl_ms,
                    content_type: e.content_type,
                    headers: e.headers,
                    data,
                    data_base64,
                    from: e.from.map(|p| FromOut { user: p.user, client: p.client }),
                }
            }
            Err(raw) => MessageOut {
                seq,
                id: String::new(),
                ts: 0,
                ttl_ms: None,
                content_type: UNDECODABLE.to_string(),
                headers: BTreeMap::new(),
                data: None,
                data_base64: b64(&raw),
                from: None,
            },
        }
    }
}

/// One delivery of a fetch (and of a WebSocket `delivery` frame's fields).
#[derive(Debug, Serialize)]
pub struct DeliveryOut {
    token: String,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    message: MessageOut,
}

impl From<GroupDelivery> for DeliveryOut {
    fn from(d: GroupDelivery) -> DeliveryOut {
        DeliveryOut {
            token: d.lease.token(),
            attempt: d.attempt,
            last_error: d.last_error,
            message: MessageOut::new(d.seq, d.envelope),
        }
    }
}

/// One dead letter as the API shows it.
#[derive(Debug, Serialize)]
pub struct DeadLetterOut {
    id: String,
    seq: u64,
    attempts: u32,
    error: String,
    dead_ms: u64,
    reason: String,
    message: MessageOut,
}

impl From<DeadLetter> for DeadLetterOut {
    fn from(d: DeadLetter) -> Self {
        DeadLetterOut {
            message: MessageOut::new(d.seq, d.envelope),
            id: d.id,
            seq: d.seq,
            attempts: d.attempts,
            error: d.error,
            dead_ms: d.dead_ms,
            reason: d.reason,
        }
    }
}

/// Answer of `GET /v1/topics/{topic}/messages`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryResponse {
    /// The topic's current epoch.
    pub epoch: String,
    /// The topic's top seq.
    pub seq: u64,
    /// Lowest retained seq (0 when nothing is retained).
    pub first_seq: u64,
    pub messages: Vec<MessageOut>,
    /// History after `since` was already trimmed: some messages are gone (G3).
    pub truncated: bool,
    /// Present when the request named an epoch: true when it is not the current one,
    /// so `since` does not refer to this history.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub epoch_changed: Option<bool>,
    /// Messages of this page left out because their TTL had passed (not lost: expired).
    #[serde(default)]
    pub expired: u64,
    /// Where the next page starts (`since=`): the last seq this page covered, expired
    /// messages included (`since` when it covered none).
    #[serde(default)]
    pub next_since: u64,
}

impl HistoryResponse {
    /// The answer for `page` (expired messages already left out, `expired` of them, the
    /// page covering seqs up to `next_since`), read after `since`.
    pub fn new(
        page: HistoryPage,
        since: u64,
        asked_epoch: Option<&str>,
        expired: u64,
        next_since: u64,
    ) -> HistoryResponse {
        let truncated = page.truncated(since);
        let epoch = page.position.epoch.clone().unwrap_or_default();
        HistoryResponse {
            epoch_changed: asked_epoch.map(|asked| asked != epoch && !page.position.carries_over(asked, since)),
            epoch,
            seq: page.position.top,
            first_seq: page.position.first_retained,
            messages: page.messages.into_iter().map(|m| MessageOut::new(m.seq, m.envelope)).collect(),
            truncated,
            expired,
            next_since,
        }
    }
}

/// Answer of `GET /v1/topics/{topic}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TopicResponse {
    pub topic: String,
    /// Names of the topic's consumer groups.
    pub groups: Vec<String>,
    pub epoch: String,
    pub seq: u64,
    pub first_seq: u64,
    pub length: u64,
    pub created_ms: u64,
    /// Publish time (ms) of the oldest retained message; absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub oldest_ms: Option<u64>,
    /// Its age when the answer was made (ms).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub oldest_age_ms: Option<u64>,
    /// The retention that applies to the topic (its `[[retention.topics]]` rule or the
    /// defaults).
    pub retention: RetentionOut,
}

/// The retention of a topic, as shown by topic info.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetentionOut {
    pub max_len: u64,
    pub max_age_ms: u64,
    pub default_ttl_ms: u64,
}

impl TopicResponse {
    pub fn new(topic: String, info: TopicInfo, retention: TopicRetention, now_ms: u64) -> TopicResponse {
        let oldest_ms = (info.oldest_ms > 0).then_some(info.oldest_ms);
        TopicResponse {
            topic,
            groups: info.groups,
            epoch: info.position.epoch.unwrap_or_default(),
            seq: info.position.top,
            first_seq: info.position.first_retained,
            length: info.length,
            created_ms: info.created_ms,
            oldest_ms,
            oldest_age_ms: oldest_ms.map(|t| now_ms.saturating_sub(t)),
            retention: RetentionOut {
                max_len: retention.max_len,
                max_age_ms: retention.max_age_ms,
                default_ttl_ms: retention.default_ttl_ms,
            },
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TopicsResponse {
    pub topics: Vec<String>,
    /// More topics exist than `limits.max_topics_listed`; the list is a sorted subset.
    pub truncated: bool,
}

/// `{"error": {"code": "...", "message": "...", "index": n?}}`
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// For a batch: the position of the offending message.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub index: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_answer_is_written_as_serde_writes_it() {
        let result = |epoch: &str, seq: u64, id: &str, duplicate: bool| PublishResult {
            epoch: epoch.into(),
            seq,
            id: id.into(),
            duplicate,
        };
        let results = vec![
            result("0193a5b2-7c1d-7000-8000-0123456789ab", 1, "0193a5b2-7c1d-7000-8000-0123456789ac", false),
            result("e", u64::MAX, "a \"quoted\" \\ id", true),
            result("", 0, "\u{1}\t\n é \u{7f} 😀 </script>", false),
        ];
        for r in &results {
            let mut ours = Vec::new();
            r.write_json(&mut ours);
            assert_eq!(String::from_utf8(ours).expect("utf8"), serde_json::to_string(r).expect("json"));
        }
        for n in [0, 1, results.len()] {
            let batch = BatchResult {
                results: results.iter().take(n).map(|r| result(&r.epoch, r.seq, &r.id, r.duplicate)).collect(),
            };
            assert_eq!(String::from_utf8(batch.to_json()).expect("utf8"), serde_json::to_string(&batch).expect("json"));
        }
    }
}
