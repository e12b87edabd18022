//! WebSocket (and SSE) frames: pure serde types and their two encodings, no I/O.
//! JSON text frames by default; MessagePack binary frames (maps with the same field
//! names) with the `streamhub.v1.msgpack` subprotocol. Documented in docs/PROTOCOL.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::delivery::event::{Ephemeral, EventKind, Member, TopicEvent};
use crate::delivery::session::{Since, Subscribed};
use crate::delivery::subscription::{Delivered, Expired, Reset};
use crate::error::{Code, Error};
use crate::wire::MessageOut;

/// Subprotocol for JSON text frames (also the default when none is offered).
pub const SUBPROTOCOL_JSON: &str = "streamhub.v1.json";
/// Subprotocol for MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "streamhub.v1.msgpack";

/// Close codes of a native WebSocket session (PROTOCOL.md §2.7).
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_VIOLATIONS: u16 = 4000;
pub const CLOSE_IDLE: u16 = 4001;
pub const CLOSE_UNAUTHORIZED: u16 = 4002;
pub const CLOSE_EXPIRED: u16 = 4003;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Msgpack,
}

impl Encoding {
    /// Index into a `Delivered`'s frame cache.
    pub fn slot(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::Msgpack => 1,
        }
    }
}

/// `since` of a subscribe: a position, or the string "earliest".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SinceFrame {
    Position { epoch: String, seq: u64 },
    Named(String),
}

/// Frames a client sends; each carries an `id` its reply echoes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientFrame {
    Subscribe {
        id: u64,
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<SinceFrame>,
        /// Deliver the topic's join and leave events (needs the `presence` scope).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        join_leave: bool,
        /// Shown with this subscriber in the topic's presence (JSON).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<serde_json::Value>,
    },
    Unsubscribe {
        id: u64,
        topic: String,
    },
    Publish {
        id: u64,
        topic: String,
        data: serde_json::Value,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// Deliver to the current subscribers only (Pub/Sub, at most once), never store.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ephemeral: bool,
    },
    Ping {
        id: u64,
    },
    /// Authenticate, or refresh the session's token before it expires.
    Auth {
        id: u64,
        token: String,
    },
    /// Become a consumer of a group (pull-style, pushed over this connection).
    Consume {
        id: u64,
        topic: String,
        group: String,
        /// Deliveries in flight (unsettled) at most; default 10.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefetch: Option<u32>,
    },
    Ack {
        id: u64,
        topic: String,
        group: String,
        tokens: Vec<String>,
    },
    Nack {
        id: u64,
        topic: String,
        group: String,
        tokens: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        permanent: bool,
    },
    /// Who is present on a topic.
    Presence {
        id: u64,
        topic: String,
    },
    /// How many clients and users are present on a topic.
    PresenceStats {
        id: u64,
        topic: String,
    },
    /// A user's status (online, last seen, status text).
    UserStatus {
        id: u64,
        user: String,
    },
    /// Sets the session's user's status text ("" clears it).
    SetStatus {
        id: u64,
        status: String,
    },
}

/// The ops a client may send.
pub const OPS: [&str; 12] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "auth",
    "consume",
    "ack",
    "nack",
    "presence",
    "presence_stats",
    "user_status",
    "set_status",
];

impl ClientFrame {
    pub fn id(&self) -> Option<u64> {
        Some(match self {
            ClientFrame::Subscribe { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::PresenceStats { id, .. }
            | ClientFrame::UserStatus { id, .. }
            | ClientFrame::SetStatus { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Ping { id }
            | ClientFrame::Auth { id, .. }
            | ClientFrame::Consume { id, .. }
            | ClientFrame::Ack { id, .. }
            | ClientFrame::Nack { id, .. } => *id,
        })
    }
}

/// The outcome of one token of an ack or nack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStatus {
    pub token: String,
    pub status: String,
    /// nack: the number of the delivery that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// nack with status `scheduled`: when the retry is due (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Reply to subscribe — or, without `id`, notice that the topic's position jumped.
    Subscribed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        topic: String,
        epoch: String,
        seq: u64,
        recovered: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Unsubscribed {
        id: u64,
        topic: String,
    },
    /// A message of a subscribed topic.
    Message {
        topic: String,
        epoch: String,
        #[serde(flatten)]
        message: MessageOut,
    },
    /// Messages `from..=to` of a subscribed topic expired (their TTL passed) before they
    /// could be delivered: they will not come, and the subscription's position is past them.
    Expired {
        topic: String,
        epoch: String,
        from: u64,
        to: u64,
    },
    /// A user joined a topic this subscription asked join/leave events of.
    Join {
        topic: String,
        #[serde(flatten)]
        member: Member,
    },
    /// A user left it (its last client went, and the grace period passed).
    Leave {
        topic: String,
        #[serde(flatten)]
        member: Member,
    },
    /// An ephemeral event of a subscribed topic (no seq: never stored, at most once).
    Ephemeral {
        topic: String,
        #[serde(flatten)]
        event: Ephemeral,
    },
    /// Reply to an ephemeral publish: handed to the subscribers present.
    Sent {
        id: u64,
        topic: String,
    },
    /// Reply to presence.
    Presence {
        id: u64,
        topic: String,
        clients: u64,
        users: u64,
        members: Vec<Member>,
    },
    /// Reply to presence_stats.
    PresenceStats {
        id: u64,
        topic: String,
        clients: u64,
        users: u64,
    },
    /// Reply to user_status.
    UserStatus {
        id: u64,
        user: String,
        online: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
    },
    /// Reply to set_status.
    StatusSet {
        id: u64,
    },
    /// Reply to publish: the message is stored (G1).
    Published {
        id: u64,
        topic: String,
        epoch: String,
        seq: u64,
        message_id: String,
        duplicate: bool,
    },
    Pong {
        id: u64,
    },
    /// Reply to auth: who the session now acts as, and until when (Unix seconds).
    Authenticated {
        id: u64,
        subject: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// Reply to consume: deliveries follow as `delivery` frames.
    Consuming {
        id: u64,
        topic: String,
        group: String,
    },
    /// A message for this consumer; settle it with ack or nack and its token.
    Delivery {
        topic: String,
        group: String,
        token: String,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_error: Option<String>,
        message: MessageOut,
    },
    /// Reply to ack or nack: one status per token.
    Settled {
        id: u64,
        results: Vec<TokenStatus>,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: String,
        message: String,
    },
}

impl ServerFrame {
    pub fn subscribed(id: Option<u64>, topic: &str, s: &Subscribed) -> ServerFrame {
        ServerFrame::Subscribed {
            id,
            topic: topic.to_string(),
            epoch: s.epoch.clone(),
            seq: s.seq,
            recovered: s.recovered,
            reason: s.reason.map(|r| r.as_str().to_string()),
        }
    }

    pub fn reset(reset: &Reset) -> ServerFrame {
        ServerFrame::Subscribed {
            id: None,
            topic: reset.topic.to_string(),
            epoch: reset.epoch.clone(),
            seq: reset.seq,
            recovered: false,
            reason: Some(reset.reason.as_str().to_string()),
        }
    }

    pub fn message(delivered: &Delivered) -> ServerFrame {
        ServerFrame::Message {
            topic: delivered.topic.to_string(),
            epoch: delivered.epoch.to_string(),
            message: MessageOut::new(delivered.message.seq, delivered.message.envelope.clone()),
        }
    }

    /// The frame of a topic event.
    pub fn event(event: &TopicEvent) -> ServerFrame {
        let topic = event.topic.to_string();
        match &event.kind {
            EventKind::Join(member) => ServerFrame::Join { topic, member: member.clone() },
            EventKind::Leave(member) => ServerFrame::Leave { topic, member: member.clone() },
            EventKind::Ephemeral(e) => ServerFrame::Ephemeral { topic, event: e.clone() },
        }
    }

    pub fn expired(run: &Expired) -> ServerFrame {
        ServerFrame::Expired { topic: run.topic.to_string(), epoch: run.epoch.to_string(), from: run.from, to: run.to }
    }

    /// The `expired` notice that replaces a queued message found expired when written.
    pub fn expired_message(d: &Delivered) -> ServerFrame {
        ServerFrame::Expired { topic: d.topic.to_string(), epoch: d.epoch.to_string(), from: d.seq(), to: d.seq() }
    }

    pub fn error(id: Option<u64>, error: Error) -> ServerFrame {
        ServerFrame::Error { id, code: error.code.as_str().to_string(), message: error.message }
    }

    pub fn encode(&self, encoding: Encoding) -> Vec<u8> {
        // Serializing these plain structures cannot fail.
        match encoding {
            Encoding::Json => serde_json::to_vec(self).unwrap_or_default(),
            Encoding::Msgpack => rmp_serde::to_vec_named(self).unwrap_or_default(),
        }
    }
}

/// Why a client frame was refused: the frame's `id` when one could be read (so the
/// client can match the error), and the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub id: Option<u64>,
    pub error: Error,
}

impl FrameError {
    pub fn new(id: Option<u64>, code: Code, message: impl Into<String>) -> FrameError {
        FrameError { id, error: Error::new(code, message) }
    }
}

/// Decodes a client frame: JSON text or MessagePack bytes. Never panics.
pub fn decode_client(bytes: &[u8], encoding: Encoding) -> Result<ClientFrame, FrameError> {
    let value: serde_json::Value = match encoding {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Encoding::Msgpack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    }
    .map_err(|e| FrameError::new(None, Code::InvalidFrame, format!("not a valid frame: {e}")))?;
    let id = value.get("id").and_then(serde_json::Value::as_u64);
    let Some(op) = value.get("op").and_then(serde_json::Value::as_str) else {
        return Err(FrameError::new(id, Code::InvalidFrame, "a frame is an object with a string field \"op\""));
    };
    if !OPS.contains(&op) {
        return Err(FrameError::new(id, Code::UnknownOp, format!("unknown op {op:?}; known: {}", OPS.join(", "))));
    }
    serde_json::from_value(value).map_err(|e| FrameError::new(id, Code::InvalidRequest, e.to_string()))
}

impl SinceFrame {
    pub fn to_since(&self) -> Result<Since, Error> {
        match self {
            SinceFrame::Position { epoch, seq } => Ok(Since::After { epoch: epoch.clone(), seq: *seq }),
            SinceFrame::Named(name) if name == "earliest" => Ok(Since::Earliest),
            SinceFrame::Named(other) => Err(Error::new(
                Code::InvalidRequest,
                format!("since is {{\"epoch\", \"seq\"}} or \"earliest\", not {other:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            ".{0,20}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn client_frame() -> impl Strategy<Value = ClientFrame> {
        prop_oneof![
            (
                any::<u64>(),
                "[a-z.]{1,20}",
                proptest::option::of(prop_oneof![
                    ("[0-9a-f]{16}", any::<u64>()).prop_map(|(epoch, seq)| SinceFrame::Position { epoch, seq }),
                    Just(SinceFrame::Named("earliest".into())),
                ])
            )
                .prop_map(|(id, topic, since)| ClientFrame::Subscribe {
                    id,
                    topic,
                    since,
                    join_leave: false,
                    info: None
                }),
            (any::<u64>(), "[a-z.]{1,20}").prop_map(|(id, topic)| ClientFrame::Unsubscribe { id, topic }),
            (
                any::<u64>(),
                "[a-z.]{1,20}",
                json_value(),
                proptest::collection::btree_map("[a-z]{1,8}", ".{0,12}", 0..4),
                proptest::option::of(1..u64::MAX),
                proptest::option::of("[a-z0-9]{1,12}"),
            )
                .prop_map(|(id, topic, data, headers, ttl_ms, idempotency_key)| ClientFrame::Publish {
                    id,
                    topic,
                    data,
                    headers,
                    ttl_ms,
                    idempotency_key,
                    ephemeral: false,
                }),
            any::<u64>().prop_map(|id| ClientFrame::Ping { id }),
            (any::<u64>(), "[a-z]{1,8}", "[a-z]{1,8}", proptest::option::of(any::<u32>()))
                .prop_map(|(id, topic, group, prefetch)| ClientFrame::Consume { id, topic, group, prefetch }),
            (
                any::<u64>(),
                proptest::collection::vec("m:[0-9]{1,5}-0:[1-9]", 0..4),
                any::<bool>(),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(id, tokens, permanent, retry_after_ms)| ClientFrame::Nack {
                    id,
                    topic: "t".into(),
                    group: "g".into(),
                    tokens,
                    error: None,
                    retry_after_ms,
                    permanent,
                }),
        ]
    }

    proptest! {
        #[test]
        fn json_and_msgpack_client_frames_decode_to_the_same_frame(frame in client_frame()) {
            let json = serde_json::to_vec(&frame).expect("json");
            let msgpack = rmp_serde::to_vec_named(&frame).expect("msgpack");
            let from_json = decode_client(&json, Encoding::Json).expect("decodes json");
            let from_msgpack = decode_client(&msgpack, Encoding::Msgpack).expect("decodes msgpack");
            prop_assert_eq!(&from_json, &frame);
            prop_assert_eq!(&from_msgpack, &frame);
        }

        #[test]
        fn json_and_msgpack_server_frames_decode_to_the_same_frame(
            id in any::<u64>(), seq in any::<u64>(), data in json_value(), topic in "[a-z]{1,10}",
            headers in proptest::collection::btree_map("[a-z]{1,8}", ".{0,12}", 0..4),
        ) {
            let frames = vec![
                ServerFrame::Subscribed { id: Some(id), topic: topic.clone(), epoch: "e".into(), seq, recovered: false, reason: Some("trimmed".into()) },
                ServerFrame::Message { topic: topic.clone(), epoch: "e".into(), message: MessageOut {
                    seq, id: "m".into(), ts: 1, ttl_ms: None, content_type: "application/json".into(), headers, data: Some(data), data_base64: None,
                }},
                ServerFrame::Published { id, topic: topic.clone(), epoch: "e".into(), seq, message_id: "m".into(), duplicate: true },
                ServerFrame::Expired { topic, epoch: "e".into(), from: seq / 2, to: seq },
                ServerFrame::Error { id: None, code: "c".into(), message: "m".into() },
            ];
            for frame in frames {
                let from_json: ServerFrame = serde_json::from_slice(&frame.encode(Encoding::Json)).expect("json");
                let from_msgpack: ServerFrame = rmp_serde::from_slice(&frame.encode(Encoding::Msgpack)).expect("msgpack");
                prop_assert_eq!(&from_json, &frame);
                prop_assert_eq!(&from_msgpack, &frame);
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_client(&bytes, Encoding::Json);
            let _ = decode_client(&bytes, Encoding::Msgpack);
        }
    }

    #[test]
    fn errors_name_the_problem_and_echo_the_id() {
        let e = decode_client(br#"{"op":"fly","id":7}"#, Encoding::Json).unwrap_err();
        assert_eq!((e.error.code, e.id), (Code::UnknownOp, Some(7)));
        let e = decode_client(br#"{"op":"subscribe","id":8}"#, Encoding::Json).unwrap_err();
        assert_eq!((e.error.code, e.id), (Code::InvalidRequest, Some(8)));
        let e = decode_client(b"{nope", Encoding::Json).unwrap_err();
        assert_eq!((e.error.code, e.id), (Code::InvalidFrame, None));
        let e = decode_client(br#"[1,2]"#, Encoding::Json).unwrap_err();
        assert_eq!(e.error.code, Code::InvalidFrame);
    }
}
