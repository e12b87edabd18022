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
    /// Checks `data` as a parse into a `serde_json::Value` would: a raw value is only
    /// checked for syntax, and would let through what the readers cannot parse back (a
    /// lone surrogate escape, a number out of range, nesting deeper than 128). Builds
    /// nothing.
    fn check_data(&self) -> Result<(), serde_json::Error> {
        serde_json::from_str::<AnyJson>(self.data.get()).map(drop)
    }

    /// The message this body asks to publish: its `data` as compact JSON text, once
    /// checked (`check_data`).
    pub fn into_message(self) -> Result<crate::message::NewMessage, serde_json::Error> {
        self.check_data()?;
        Ok(crate::message::NewMessage {
            payload: compact_json(String::from(Box::<str>::from(self.data)).into_bytes()),
            content_type: "application/json".to_string(),
            headers: self.headers,
            ttl_ms: self.ttl_ms,
            idempotency_key: self.idempotency_key,
        })
    }
}

/// Any JSON value, visited and dropped (see `PublishBody::check_data`).
struct AnyJson;

impl<'de> Deserialize<'de> for AnyJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AnyJson, D::Error> {
        d.deserialize_any(AnyJson)
    }
}

impl<'de> serde::de::Visitor<'de> for AnyJson {
    type Value = AnyJson;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_i64<E>(self, _: i64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_u64<E>(self, _: u64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_f64<E>(self, _: f64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_str<E>(self, _: &str) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_unit<E>(self) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<AnyJson, A::Error> {
        while seq.next_element::<AnyJson>()?.is_some() {}
        Ok(AnyJson)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<AnyJson, A::Error> {
        while map.next_entry::<AnyJson, AnyJson>()?.is_some() {}
        Ok(AnyJson)
    }
}

/// Valid JSON text without its insignificant whitespace (between tokens), in place:
/// what a parse into a `serde_json::Value` and back would store, less the work (key
/// order, number forms and escapes stay as sent).
///
/// Most of a document's bytes are inside strings, which are copied whole: the end of a
/// string is found by `memchr2` over its quotes and backslashes (a backslash escapes the
/// byte after it), not byte by byte. Outside strings, the bytes are looked at one by one.
/// Nothing moves until the first whitespace is dropped.
fn compact_json(mut text: Vec<u8>) -> Vec<u8> {
    let (mut read, mut write) = (0, 0);
    while read < text.len() {
        let byte = text[read];
        if byte == b'"' {
            let start = read;
            read += 1;
            loop {
                match text.get(read..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
                    Some(at) if text[read + at] == b'"' => {
                        read += at + 1;
                        break;
                    }
                    // A backslash and the byte it escapes.
                    Some(at) => read += at + 2,
                    // Unterminated (never in checked text): the rest is the string's.
                    None => {
                        read = text.len();
                        break;
                    }
                }
            }
            // A trailing backslash steps one past the end.
            let end = read.min(text.len());
            if write != start {
                text.copy_within(start..end, write);
            }
            write += end - start;
            read = end;
        } else {
            read += 1;
            if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                text[write] = byte;
                write += 1;
            }
        }
    }
    text.truncate(write);
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

    /// What `compact_json` does, one byte at a time (its first form).
    fn byte_by_byte(mut text: Vec<u8>) -> Vec<u8> {
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

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        // Strings with spaces, quotes, backslashes, controls and non-ASCII in them.
        let text = "[ a\"\\\\\t\n\u{e9}\u{1F600}b]{0,12}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            text.prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(text, inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any document, pretty-printed (whitespace between every token) and compacted,
        /// is serde_json's compact form of it; a compact one is left as it is.
        #[test]
        fn compacting_pretty_text_gives_the_compact_form(value in json_value()) {
            let compact = serde_json::to_string(&value).expect("json");
            let pretty = serde_json::to_string_pretty(&value).expect("pretty");
            let compacted = compact_json(pretty.into_bytes());
            proptest::prop_assert_eq!(std::str::from_utf8(&compacted).expect("utf8"), compact.as_str());
            proptest::prop_assert_eq!(compact_json(compact.clone().into_bytes()), compact.into_bytes());
        }

        /// Any text, JSON or not (the callers compact checked text only), comes out as
        /// the byte-by-byte definition makes it: whitespace dropped outside strings only,
        /// an unterminated string kept whole; and nothing panics.
        #[test]
        fn compacting_any_text_drops_what_the_definition_drops(text in "[ \"\\\\\ta\n\u{e9}{:]{0,24}") {
            proptest::prop_assert_eq!(compact_json(text.clone().into_bytes()), byte_by_byte(text.into_bytes()));
        }

        #[test]
        fn compacting_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = compact_json(bytes);
        }
    }

    #[test]
    fn data_is_checked_as_strictly_as_a_parse_into_a_value() {
        let body = |data: &str| -> PublishBody {
            serde_json::from_str(&format!("{{\"data\": {data}}}")).expect("syntactically valid")
        };
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for bad in [r#""\ud800""#, "1e400", "-1e400", deep.as_str()] {
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err(), "a Value refuses {bad:.20}");
            let error = body(bad).check_data().expect_err(bad);
            assert_eq!(error.classify(), serde_json::error::Category::Syntax, "{bad:.20}: {error}");
        }
        for good in [r#""\ud83d\ude00""#, "1e300", "12345678901234567890123", r#"{"a":[null,true,{"b":"c"}]}"#] {
            body(good).check_data().expect(good);
        }
    }
}
