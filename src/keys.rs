//! Every Redis key name streamhub uses, built from one configured prefix.
//!
//! All keys of a topic share the hash tag `{topic}`, so every function call touches one
//! cluster slot. Topic names cannot contain `{` or `}` (see `topic.rs`), so the tag is
//! always exactly the topic.

use crate::topic::Topic;

/// How many buckets the registry of API-created groups is spread over. Part of the data
/// layout (every node must agree, so it is not configurable): a registration's bucket is
/// [`group_registry_bucket`] of its "<topic>/<group>".
pub const GROUP_REGISTRY_BUCKETS: usize = 16;

/// The registry bucket of "<topic>/<group>": the first two bytes of its SHA-256, modulo
/// [`GROUP_REGISTRY_BUCKETS`] (stable across nodes, versions and platforms).
pub fn group_registry_bucket(member: &str) -> usize {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(member.as_bytes());
    usize::from(u16::from_be_bytes([digest[0], digest[1]])) % GROUP_REGISTRY_BUCKETS
}

/// Builds key names under one prefix (`redis.prefix`, default `sh`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// The keys of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicKeys {
    /// Hash: `epoch`, top `seq`, `staged`, `created_ms`, `base`, `prev`, `rid`, `groups`,
    /// `forced_trimmed`.
    pub meta: String,
    /// Stream of envelopes; entry id `<seq>-0`.
    pub stream: String,
    /// Stream of staged envelopes (durability = "replicated"): seqs waiting for their
    /// replicas before they move to `stream` (lua/publish.lua).
    pub staging: String,
    /// Pub/Sub channel (sharded) carrying the "new seq" hint, and the topic's presence
    /// and ephemeral events.
    pub hint: String,
    idem_base: String,
}

/// The presence keys of one topic (all in the topic's slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceKeys {
    /// The topic's meta (its top seq orders join/leave events) and hint channel.
    pub meta: String,
    pub hint: String,
    /// Hash: client id → the client's entry (user, grouping key, info).
    pub clients: String,
    /// Zset: client id → the time its entry expires unless its node refreshes it.
    pub expiry: String,
    /// Hash: user key → how many of its clients are present.
    pub users: String,
    /// Zset: user key → when its pending leave is due (the grace period).
    pub leaving: String,
    /// Hash: user key → the entry of its last client, for the leave event.
    pub leaving_entries: String,
    /// Stream of join and leave events, read by every node's tail with the messages.
    pub events: String,
}

/// The status keys of one user (one slot per user, tagged by a hash of the name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeys {
    /// Zset: the user's session ids → when each expires unless refreshed.
    pub sessions: String,
    /// Hash: `user`, `last_seen`, `status`.
    pub info: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Keys {
        Keys { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Built on every publish and read: plain concatenation, no formatting machinery.
    pub fn topic(&self, topic: &Topic) -> TopicKeys {
        let base = [self.prefix.as_str(), ":{", topic.as_str(), "}"].concat();
        TopicKeys {
            meta: [base.as_str(), ":m"].concat(),
            stream: [base.as_str(), ":s"].concat(),
            staging: [base.as_str(), ":x"].concat(),
            hint: [base.as_str(), ":h"].concat(),
            idem_base: base + ":i:",
        }
    }

    /// The presence keys of a topic.
    pub fn presence(&self, topic: &Topic) -> PresenceKeys {
        let base = format!("{}:{{{}}}", self.prefix, topic.as_str());
        PresenceKeys {
            meta: format!("{base}:m"),
            hint: format!("{base}:h"),
            clients: format!("{base}:pc"),
            expiry: format!("{base}:pz"),
            users: format!("{base}:pu"),
            leaving: format!("{base}:pl"),
            leaving_entries: format!("{base}:pd"),
            events: format!("{base}:pe"),
        }
    }

    /// The status keys of a user. User names are free text (a JWT `sub`), so the hash tag
    /// is the first 16 hex digits of the name's SHA-256, never the name itself.
    pub fn user(&self, user: &str) -> UserKeys {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(user.as_bytes());
        let tag: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let base = format!("{}:{{u:{tag}}}", self.prefix);
        UserKeys { sessions: format!("{base}:us"), info: format!("{base}:ui") }
    }

    /// Bucket `bucket` (< [`GROUP_REGISTRY_BUCKETS`]) of the registry of groups created
    /// through the admin API: a set of "<topic>/<group>", each bucket on its own hash tag
    /// (`{groups/<n>}`; a topic name cannot contain `/`), so the registry spreads over the
    /// slots of a Cluster and each node reads one bucket per discovery step.
    pub fn group_registry(&self, bucket: usize) -> String {
        format!("{}:{{groups/{bucket}}}", self.prefix)
    }

    /// The one-key registry of versions before the buckets (a set of "<topic>/<group>"):
    /// read only to move what it holds into the buckets.
    pub fn group_registry_legacy(&self) -> String {
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
    /// Zset of scheduled retries scored by due ms; a member is the whole retry:
    /// "<seq>:<attempt>:<error length>:<error><envelope>".
    pub schedule: String,
    /// Hash of the envelopes and last errors of retries scheduled by earlier releases
    /// (members "<seq>:<attempt>"): read and emptied by the promote, no longer written.
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
        // Concatenated, not formatted: these are built for every settle and read call.
        let base = [self.idem_base.trim_end_matches("i:"), "g:", group].concat();
        let key = |suffix: &str| [base.as_str(), suffix].concat();
        GroupKeys {
            stream: self.stream.clone(),
            meta: self.meta.clone(),
            retry: key(":r"),
            schedule: key(":z"),
            payloads: key(":p"),
            dlq: key(":d"),
            counters: key(":m"),
            definition: key(":def"),
        }
    }

    /// String holding `epoch seq id` of the publish that used this idempotency key.
    pub fn idempotency(&self, key: &str) -> String {
        [self.idem_base.as_str(), key].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_buckets_are_fixed_and_on_their_own_hash_tags() {
        let keys = Keys::new("sh");
        assert_eq!(keys.group_registry(7), "sh:{groups/7}");
        assert_eq!(keys.group_registry_legacy(), "sh:groups");
        // The placement is part of the data layout: these values must never change.
        // (Computed independently: first two bytes of the SHA-256, big-endian, mod 16.)
        let known: Vec<usize> = ["a/b", "orders/billing", "x/y"].iter().map(|m| group_registry_bucket(m)).collect();
        assert_eq!(known, vec![12, 8, 12]);
        assert!((0..1000).all(|i| group_registry_bucket(&format!("t{i}/g")) < GROUP_REGISTRY_BUCKETS));
    }

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
        let p = keys.presence(&topic);
        assert_eq!((p.clients.as_str(), p.leaving.as_str()), ("sh:{room.42}:pc", "sh:{room.42}:pl"));
        let u = keys.user("alice}{");
        assert!(u.sessions.starts_with("sh:{u:") && u.sessions.ends_with("}:us") && !u.sessions.contains("alice"));
        assert_eq!(u.info.len(), u.sessions.len());
    }
}
