//! HTTP request bodies and queries: pure serde, no I/O. Documented in docs/PROTOCOL.md;
//! the answers' shapes, shared with the other transports, are in `crate::wire`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Body of `POST /v1/topics/{topic}/messages` (JSON) and each item of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// Any JSON value; stored as the JSON text the client sent (validated, not
    /// re-encoded: no parse into a tree and back) with content type `application/json`.
    pub data: Box<serde_json::value::RawValue>,
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
            payload: compact_json(String::from(Box::<str>::from(self.data)).into_bytes()),
            content_type: "application/json".to_string(),
            headers: self.headers,
            ttl_ms: self.ttl_ms,
            idempotency_key: self.idempotency_key,
        }
    }
}

/// Valid JSON text without its insignificant whitespace (between tokens), in place:
/// what a parse into a `serde_json::Value` and back would store, less the work (key
/// order, number forms and escapes stay as sent).
fn compact_json(mut text: Vec<u8>) -> Vec<u8> {
    let (mut in_string, mut escaped) = (false, false);
    text.retain(|&b| {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            true
        } else if b == b'"' {
            in_string = true;
            true
        } else {
            !matches!(b, b' ' | b'\t' | b'\n' | b'\r')
        }
    });
    text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_drops_whitespace_between_tokens_only() {
        let cases = [
            r#"{ "a" : 1 , "b" : [ 1 , 2 , { "c" : null } ] }"#,
            "\n\t{\r\n  \"text\": \"two  spaces, a \\\" quote and a \\\\ backslash \",\n  \"n\": -1.5e3 }\n",
            r#""just a string with spaces""#,
            r#"[ "é", "\u00e9", true, false ]"#,
            r#"{"already":"compact","x":[1,2]}"#,
            r#" "\\" "#,
        ];
        for text in cases {
            let compacted = compact_json(text.as_bytes().to_vec());
            let compacted = std::str::from_utf8(&compacted).expect("utf8");
            let original: serde_json::Value = serde_json::from_str(text).expect("valid");
            assert_eq!(serde_json::from_str::<serde_json::Value>(compacted).expect("still valid"), original, "{text}");
            // Pretty-printed and compacted equals serde_json's compact form.
            let pretty = serde_json::to_string_pretty(&original).expect("pretty");
            let again = compact_json(pretty.into_bytes());
            assert_eq!(std::str::from_utf8(&again).expect("utf8"), serde_json::to_string(&original).expect("json"));
        }
        assert_eq!(compact_json(br#"{ "k" : "a b" }"#.to_vec()), br#"{"k":"a b"}"#.to_vec());
    }
}
