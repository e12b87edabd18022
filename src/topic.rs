//! Topic names: what may appear in one, and why.
//!
//! A topic name becomes part of Redis keys (`<prefix>:{topic}:s`) and their cluster hash
//! tag, and of URL paths. It is therefore limited to ASCII letters, digits and
//! `. _ - : @ = +` — no `{`, `}`, `*`, `/`, whitespace or control characters — and to
//! `limits.max_topic_bytes` bytes.

use std::fmt;

use crate::error::{Code, Error};

/// A validated topic name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

/// Why a topic name was refused (error code `invalid_topic`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTopic {
    #[error("topic name is empty")]
    Empty,
    #[error("topic name is {len} bytes, limit {max}")]
    TooLong { len: usize, max: usize },
    #[error("topic name contains {0:?}; allowed: ASCII letters, digits and . _ - : @ = +")]
    BadChar(char),
}

/// Bytes allowed in a topic name besides ASCII letters and digits.
pub const TOPIC_PUNCTUATION: &[u8] = b"._-:@=+";

/// The longest topic name any configuration allows (`limits.max_topic_bytes` is at most
/// this): names read back from Redis or a stored definition are checked against it.
pub const MAX_TOPIC_BYTES: usize = 1024;

impl Topic {
    pub fn parse(name: &str, max_bytes: usize) -> Result<Topic, InvalidTopic> {
        if name.is_empty() {
            return Err(InvalidTopic::Empty);
        }
        if name.len() > max_bytes {
            return Err(InvalidTopic::TooLong { len: name.len(), max: max_bytes });
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || (c.is_ascii() && TOPIC_PUNCTUATION.contains(&(*c as u8)))))
        {
            return Err(InvalidTopic::BadChar(c));
        }
        Ok(Topic(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<InvalidTopic> for Error {
    fn from(e: InvalidTopic) -> Error {
        Error::new(Code::InvalidTopic, e.to_string())
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Topic {
    /// Checked against [`MAX_TOPIC_BYTES`]; the configured limit is checked where the
    /// configuration is validated.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Topic, D::Error> {
        let name = String::deserialize(d)?;
        Topic::parse(&name, MAX_TOPIC_BYTES).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_charset() {
        for name in ["a", "room.42", "user:7", "orders_eu-west", "x@y=z+1", "A9"] {
            assert!(Topic::parse(name, 200).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_names_that_break_keys() {
        for (name, expected) in [
            ("", InvalidTopic::Empty),
            ("a{b", InvalidTopic::BadChar('{')),
            ("a}b", InvalidTopic::BadChar('}')),
            ("a*", InvalidTopic::BadChar('*')),
            ("a b", InvalidTopic::BadChar(' ')),
            ("a\nb", InvalidTopic::BadChar('\n')),
            ("a/b", InvalidTopic::BadChar('/')),
            ("é", InvalidTopic::BadChar('é')),
        ] {
            assert_eq!(Topic::parse(name, 200), Err(expected), "{name:?}");
        }
        assert_eq!(Topic::parse(&"a".repeat(201), 200), Err(InvalidTopic::TooLong { len: 201, max: 200 }));
        assert!(Topic::parse(&"a".repeat(200), 200).is_ok());
    }
}
