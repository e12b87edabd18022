//! The envelope: a message exactly as stored in a topic's stream entry (field `e`).
//!
//! MessagePack map with short string keys, so any language can read a stream directly
//! (layout in docs/PROTOCOL.md, "The stored envelope"):
//!
//! | key   | type           | meaning                                   |
//! |-------|----------------|-------------------------------------------|
//! | `v`   | uint           | layout version, 1                         |
//! | `id`  | str            | message id, UUID v7 text                  |
//! | `ts`  | uint           | publish time, ms since the Unix epoch     |
//! | `ttl` | uint, optional | time to live in ms                        |
//! | `ct`  | str            | content type of the payload               |
//! | `h`   | map str→str, optional (absent = none) | headers            |
//! | `p`   | bin            | payload bytes, opaque to the broker       |
//! | `from`| map, optional  | who published it: `u` user, `c` client id |
//!
//! Readers ignore keys they do not know, so later versions can add fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Current layout version (`v`).
pub const ENVELOPE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "v")]
    pub version: u8,
    pub id: String,
    #[serde(rename = "ts")]
    pub published_ms: u64,
    #[serde(rename = "ttl", default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(rename = "ct")]
    pub content_type: String,
    #[serde(rename = "h", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(rename = "p", with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Who published it, as streamhub authenticated them (absent for the CLI, raw
    /// publishes from Redis, and anonymous HTTP publishes).
    #[serde(rename = "from", default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Publisher>,
}

/// The publisher of a message: set by streamhub from the verified credentials, never
/// taken from the client's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publisher {
    /// The principal's subject (a token's `sub`, an API key's name); "" when anonymous.
    #[serde(rename = "u")]
    pub user: String,
    /// The publishing session's client id (WebSocket); "" for HTTP.
    #[serde(rename = "c", default, skip_serializing_if = "String::is_empty")]
    pub client: String,
}

/// A stream entry that is not a valid envelope (written by something else, or corrupt).
#[derive(Debug, thiserror::Error)]
#[error("undecodable envelope: {0}")]
pub struct DecodeError(String);

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        // Sized once: field names and markers take < 64 bytes beyond the variable parts.
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
        let from = self.from.as_ref().map_or(0, |p| p.user.len() + p.client.len() + 16);
        let mut out =
            Vec::with_capacity(64 + self.id.len() + self.content_type.len() + self.payload.len() + headers + from);
        // Serializing plain strings, integers, a map and bytes into a Vec cannot fail.
        match rmp_serde::encode::write_named(&mut out, self) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError(e.to_string()))
    }

    /// Whether the message has expired at `now_ms`: it has a TTL and `ts + ttl < now`.
    /// At exactly `ts + ttl` it is still valid. The one rule of expiry, for history,
    /// subscribers and consumer groups alike.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.ttl_ms.is_some_and(|ttl| self.published_ms.saturating_add(ttl) < now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn envelope() -> impl Strategy<Value = Envelope> {
        (
            any::<u8>(),
            "[0-9a-f-]{0,40}",
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            ".{0,40}",
            proptest::collection::btree_map(".{0,12}", ".{0,24}", 0..20),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::option::of((".{0,12}", "[0-9a-f-]{0,36}")),
        )
            .prop_map(|(version, id, published_ms, ttl_ms, content_type, headers, payload, from)| Envelope {
                version,
                id,
                published_ms,
                ttl_ms,
                content_type,
                headers,
                payload,
                from: from.map(|(user, client)| Publisher { user, client }),
            })
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(e in envelope()) {
            prop_assert_eq!(Envelope::decode(&e.encode()).expect("decodes"), e);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn decoding_mutated_envelopes_never_panics(e in envelope(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = e.encode();
            for (at, value) in flips {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] = value;
                }
            }
            let _ = Envelope::decode(&bytes);
        }
    }

    #[test]
    fn a_message_expires_strictly_after_its_ttl() {
        let mut e = Envelope::decode(
            &Envelope {
                version: 1,
                id: "x".into(),
                published_ms: 1_000,
                ttl_ms: Some(500),
                content_type: "text/plain".into(),
                headers: BTreeMap::new(),
                payload: vec![],
                from: None,
            }
            .encode(),
        )
        .expect("decodes");
        assert!(!e.is_expired(1_000));
        assert!(!e.is_expired(1_500), "at exactly ts + ttl it is still valid");
        assert!(e.is_expired(1_501));
        e.ttl_ms = None;
        assert!(!e.is_expired(u64::MAX), "no TTL: never expires");
        e.ttl_ms = Some(u64::MAX);
        assert!(!e.is_expired(u64::MAX), "no overflow");
    }

    #[test]
    fn layout_uses_the_documented_keys() {
        let e = Envelope {
            version: 1,
            id: "x".into(),
            published_ms: 5,
            ttl_ms: None,
            content_type: "text/plain".into(),
            headers: BTreeMap::new(),
            payload: b"hi".to_vec(),
            from: None,
        };
        // fixmap of 5: v=1, id="x", ts=5, ct="text/plain", p=bin "hi"
        let mut expected =
            vec![0x85, 0xa1, b'v', 1, 0xa2, b'i', b'd', 0xa1, b'x', 0xa2, b't', b's', 5, 0xa2, b'c', b't', 0xaa];
        expected.extend_from_slice(b"text/plain");
        expected.extend_from_slice(&[0xa1, b'p', 0xc4, 2, b'h', b'i']);
        assert_eq!(e.encode(), expected);

        // The publisher comes last: `from` → {u: "al", c: "c1"}; an HTTP publisher has no `c`.
        let with_from = Envelope { from: Some(Publisher { user: "al".into(), client: "c1".into() }), ..e.clone() };
        let mut tail = vec![0xa4, b'f', b'r', b'o', b'm', 0x82, 0xa1, b'u', 0xa2, b'a', b'l', 0xa1, b'c', 0xa2];
        tail.extend_from_slice(b"c1");
        let mut full = expected.clone();
        full[0] = 0x86;
        full.extend_from_slice(&tail);
        assert_eq!(with_from.encode(), full);
        let http = Envelope { from: Some(Publisher { user: "al".into(), client: String::new() }), ..e };
        assert_eq!(http.encode()[expected.len()..], [0xa4, b'f', b'r', b'o', b'm', 0x81, 0xa1, b'u', 0xa2, b'a', b'l']);
    }
}
