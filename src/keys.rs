//! Every Redis key name streamhub uses, built from one configured prefix.
//!
//! All keys of a topic share the hash tag `{topic}`, so every function call touches one
//! cluster slot. Topic names cannot contain `{` or `}` (see `topic.rs`), so the tag is
//! always exactly the topic.

use crate::topic::Topic;

/// Builds key names under one prefix (`redis.prefix`, default `sh`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// The keys of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicKeys {
    /// Hash: `epoch`, top `seq`, `created_ms`, `base`, `groups`, `forced_trimmed`.
    pub meta: String,
    /// Stream of envelopes; entry id `<seq>-0`.
    pub stream: String,
    /// Pub/Sub channel (sharded) carrying the "new seq" hint.
    pub hint: String,
    idem_base: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Keys {
        Keys { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn topic(&self, topic: &Topic) -> TopicKeys {
        let base = format!("{}:{{{}}}", self.prefix, topic.as_str());
        TopicKeys {
            meta: format!("{base}:m"),
            stream: format!("{base}:s"),
            hint: format!("{base}:h"),
            idem_base: format!("{base}:i:"),
        }
    }

    /// Set of "<topic>/<group>" of the groups created through the admin API.
    pub fn group_registry(&self) -> String {
        format!("{}:groups", self.prefix)
    }

    /// SCAN pattern matching every topic's meta hash.
    pub fn meta_pattern(&self) -> String {
        format!("{}:{{*}}:m", self.prefix)
    }

    /// The topic name inside a meta key found by `meta_pattern`, if it is one.
    pub fn topic_of_meta<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?.strip_suffix("}:m")
    }
}

/// The keys of one consumer group of a topic (all in the topic's slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKeys {
    /// The topic's stream (the group reads it) and meta hash (lists the groups).
    pub stream: String,
    pub meta: String,
    /// Stream of due retries, read by the same group.
    pub retry: String,
    /// Zset of scheduled retries ("<seq>:<attempt>" scored by due ms).
    pub schedule: String,
    /// Hash of scheduled retries' envelopes and last errors.
    pub payloads: String,
    /// Dead-letter stream.
    pub dlq: String,
    /// Hash of the group's counters (and its `paused` flag).
    pub counters: String,
    /// The definition of a group created through the admin API (JSON).
    pub definition: String,
}

impl TopicKeys {
    pub fn group(&self, group: &str) -> GroupKeys {
        let base = format!("{}g:{group}", self.idem_base.trim_end_matches("i:"));
        GroupKeys {
            stream: self.stream.clone(),
            meta: self.meta.clone(),
            retry: format!("{base}:r"),
            schedule: format!("{base}:z"),
            payloads: format!("{base}:p"),
            dlq: format!("{base}:d"),
            counters: format!("{base}:m"),
            definition: format!("{base}:def"),
        }
    }

    /// String holding `epoch seq id` of the publish that used this idempotency key.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}{key}", self.idem_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_topic_hash_tag() {
        let keys = Keys::new("sh");
        let topic = Topic::parse("room.42", 200).expect("valid");
        let k = keys.topic(&topic);
        assert_eq!(k.meta, "sh:{room.42}:m");
        assert_eq!(k.stream, "sh:{room.42}:s");
        assert_eq!(k.hint, "sh:{room.42}:h");
        assert_eq!(k.idempotency("abc"), "sh:{room.42}:i:abc");
        assert_eq!(keys.topic_of_meta(&k.meta), Some("room.42"));
        assert_eq!(keys.topic_of_meta("other:{x}:m"), None);
        let g = k.group("billing");
        assert_eq!(g.retry, "sh:{room.42}:g:billing:r");
        assert_eq!(g.dlq, "sh:{room.42}:g:billing:d");
        assert_eq!(g.counters, "sh:{room.42}:g:billing:m");
    }
}
