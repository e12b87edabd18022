//! Framing of the Centrifugo client protocol: one WebSocket message holds one or more
//! commands (client) or replies (server).
//!
//! - JSON (text messages): objects separated by `\n` (a trailing one allowed); no object
//!   may hold a raw newline, so payloads embedded as raw JSON are written compactly.
//! - Protobuf (binary messages, subprotocol `centrifuge-protobuf`): each message prefixed
//!   by its length as a varint.
//!
//! An empty command (`{}`, or a zero-length Protobuf message) is the client's pong; an
//! empty reply is the server's ping.

use bytes::Buf;
use prost::Message as _;
use serde_json::value::RawValue;

use super::proto::{Command, Reply};

/// The subprotocol of the Protobuf format.
pub const SUBPROTOCOL_PROTOBUF: &str = "centrifuge-protobuf";

/// The two formats of the protocol, chosen at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Protobuf,
}

/// Why a frame could not be read: the connection is then closed with 3501 (bad request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl Format {
    /// The commands of one WebSocket message, in order.
    pub fn decode(self, frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
        match self {
            Format::Json => {
                let text = std::str::from_utf8(frame).map_err(|_| DecodeError("frame is not UTF-8".into()))?;
                let commands = text
                    .split('\n')
                    .filter(|line| !line.trim().is_empty())
                    .map(|line| {
                        // An object, not the array form serde would also take for a struct.
                        if !line.trim_start().starts_with('{') {
                            return Err(DecodeError("a command is a JSON object".into()));
                        }
                        serde_json::from_str::<Command>(line).map_err(|e| DecodeError(format!("command: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if commands.is_empty() {
                    return Err(DecodeError("empty frame".into()));
                }
                Ok(commands)
            }
            Format::Protobuf => {
                let mut buf = frame;
                let mut commands = Vec::new();
                if buf.is_empty() {
                    return Err(DecodeError("empty frame".into()));
                }
                while buf.has_remaining() {
                    let command =
                        Command::decode_length_delimited(&mut buf).map_err(|e| DecodeError(format!("command: {e}")))?;
                    commands.push(command);
                }
                Ok(commands)
            }
        }
    }

    /// One reply as a WebSocket message body.
    pub fn encode(self, reply: &Reply) -> Vec<u8> {
        match self {
            // Serialising these structs cannot fail: raw fields hold valid JSON (see `data`).
            Format::Json => serde_json::to_vec(reply).unwrap_or_else(|_| b"{}".to_vec()),
            Format::Protobuf => {
                let mut out = Vec::with_capacity(reply.encoded_len() + 5);
                // Writing into a Vec cannot run out of room.
                let _ = reply.encode_length_delimited(&mut out);
                out
            }
        }
    }

    /// A payload as the format carries it: Protobuf, the bytes as they are; JSON, a raw
    /// JSON value on one line — the payload itself when it is JSON, else a JSON string of
    /// its text (`text` — or base64 when the bytes are not UTF-8; `tags` say which).
    pub fn data(self, payload: &[u8], is_json: bool) -> (Vec<u8>, Option<&'static str>) {
        match self {
            Format::Protobuf => (payload.to_vec(), None),
            Format::Json => {
                if is_json {
                    if let Ok(raw) = serde_json::from_slice::<&RawValue>(payload) {
                        if !raw.get().contains(['\n', '\r']) {
                            return (raw.get().as_bytes().to_vec(), None);
                        }
                        // Pretty-printed: rewritten on one line, value unchanged.
                        if let Ok(value) = serde_json::from_str::<serde_json::Value>(raw.get()) {
                            return (serde_json::to_vec(&value).unwrap_or_default(), None);
                        }
                    }
                }
                match std::str::from_utf8(payload) {
                    Ok(text) => (serde_json::to_vec(text).unwrap_or_default(), Some("text")),
                    Err(_) => {
                        use base64::Engine;
                        let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
                        (serde_json::to_vec(&b64).unwrap_or_default(), Some("base64"))
                    }
                }
            }
        }
    }
}

/// The server's ping: an empty reply.
pub fn ping(format: Format) -> Vec<u8> {
    match format {
        Format::Json => b"{}".to_vec(),
        Format::Protobuf => vec![0],
    }
}

/// Whether a command is the client's pong (an empty command).
pub fn is_pong(command: &Command) -> bool {
    *command == Command::default()
}

#[cfg(test)]
mod tests {
    use super::super::proto::*;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_arbitrary_frames_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for format in [Format::Json, Format::Protobuf] {
                if let Ok(commands) = format.decode(&bytes) {
                    for c in commands {
                        let _ = format.encode(&Reply { id: c.id, ..Default::default() });
                    }
                }
                let _ = format.data(&bytes, true);
            }
        }

        #[test]
        fn any_command_survives_protobuf_round_trip(id in any::<u32>(), channel in ".{0,40}", offset in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let c = Command {
                id,
                subscribe: Some(SubscribeRequest { channel: channel.clone(), offset, recover: true, ..Default::default() }),
                publish: Some(PublishRequest { channel, data }),
                ..Default::default()
            };
            let mut frame = Vec::new();
            c.encode_length_delimited(&mut frame).expect("encode");
            prop_assert_eq!(Format::Protobuf.decode(&frame).expect("decode"), vec![c]);
        }
    }

    #[test]
    fn json_frames_hold_commands_separated_by_newlines() {
        let frame = br#"{"connect":{"token":"t","name":"js"},"id":1}
{"subscribe":{"channel":"news","recover":true,"offset":5,"epoch":"e1","flag":1,"tf":{"op":"x"}},"id":2}
"#;
        let commands = Format::Json.decode(frame).expect("decodes");
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0].connect.as_ref().map(|c| c.token.as_str()), Some("t"));
        let sub = commands[1].subscribe.as_ref().expect("subscribe");
        assert_eq!(
            (sub.channel.as_str(), sub.recover, sub.offset, sub.epoch.as_str(), sub.flag),
            ("news", true, 5, "e1", 1)
        );
        assert!(is_pong(&Format::Json.decode(b"{}").expect("pong")[0]));
        for bad in [&b""[..], b"\n\n", b"{", b"[1]", b"{\"id\":-1}", b"\xff"] {
            assert!(Format::Json.decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_replies_embed_data_raw_and_keep_the_fields_the_protocol_always_writes() {
        let reply = Reply {
            id: 4,
            history: Some(HistoryResult { publications: vec![], epoch: String::new(), offset: 0 }),
            ..Default::default()
        };
        assert_eq!(Format::Json.encode(&reply), br#"{"id":4,"history":{"publications":[],"epoch":"","offset":0}}"#);
        let push = Reply {
            push: Some(Push {
                channel: "news".into(),
                publication: Some(Publication { data: br#"{"n":7}"#.to_vec(), offset: 7, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(Format::Json.encode(&push), br#"{"push":{"channel":"news","pub":{"data":{"n":7},"offset":7}}}"#);
        let ok = Reply { id: 3, publish: Some(Empty {}), ..Default::default() };
        assert_eq!(Format::Json.encode(&ok), br#"{"id":3,"publish":{}}"#, "an empty result is still written");
        let info = ClientInfo { user: String::new(), client: "c".into(), ..Default::default() };
        assert_eq!(serde_json::to_string(&info).expect("json"), r#"{"user":"","client":"c"}"#);
    }

    #[test]
    fn json_data_is_one_line_and_says_what_is_not_json() {
        assert_eq!(Format::Json.data(b"{\n  \"a\": 1\n}", true), (br#"{"a":1}"#.to_vec(), None));
        assert_eq!(Format::Json.data(b"[1, 2]", true), (b"[1, 2]".to_vec(), None));
        assert_eq!(Format::Json.data(b"hi\nthere", false), (br#""hi\nthere""#.to_vec(), Some("text")));
        assert_eq!(Format::Json.data(b"not json", true), (br#""not json""#.to_vec(), Some("text")));
        assert_eq!(Format::Json.data(&[0xff, 0x00], false), (br#""/wA=""#.to_vec(), Some("base64")));
        assert_eq!(Format::Protobuf.data(&[0xff], false), (vec![0xff], None));
    }

    #[test]
    fn protobuf_frames_are_varint_delimited() {
        // Reply{id:1, connect:{client:"a"}} = 08 01 2a 03 0a 01 61, prefixed by its length.
        let reply = Reply {
            id: 1,
            connect: Some(ConnectResult { client: "a".into(), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(Format::Protobuf.encode(&reply), vec![0x07, 0x08, 0x01, 0x2a, 0x03, 0x0a, 0x01, 0x61]);
        assert_eq!(Format::Protobuf.encode(&Reply::default()), vec![0x00], "the ping");
        let ok = Reply { id: 2, publish: Some(Empty {}), ..Default::default() };
        assert_eq!(Format::Protobuf.encode(&ok), vec![0x04, 0x08, 0x02, 0x42, 0x00], "an empty result is present");
        let mut frame = Vec::new();
        for c in [Command { id: 1, connect: Some(ConnectRequest::default()), ..Default::default() }, Command::default()]
        {
            c.encode_length_delimited(&mut frame).expect("encode");
        }
        let commands = Format::Protobuf.decode(&frame).expect("decodes");
        assert_eq!(commands.len(), 2);
        assert!(commands[0].connect.is_some() && is_pong(&commands[1]));
        for bad in [&[][..], &[0x05, 0x08][..], &[0xff; 11][..]] {
            assert!(Format::Protobuf.decode(bad).is_err(), "{bad:?}");
        }
    }
}
