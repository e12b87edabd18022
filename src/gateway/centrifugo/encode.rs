//! What a Centrifugo session writes: its replies, and its deliveries as pushes —
//! messages as publications (`offset` = seq), joins and leaves, ephemeral events as
//! publications without an offset, and a jump of the position as an unsubscribe push that
//! makes the client resubscribe from where it really is.

use super::codec::{self, Format};
use super::codes;
use super::proto::{ClientInfo, JoinLeave, Publication, Push, Reply, Unsubscribe};
use crate::delivery::event::{EventKind, Member, TopicEvent};
use crate::delivery::subscription::{Delivered, Item, Queued};
use crate::envelope::Envelope;
use crate::gateway::ws_socket::Frame;
use crate::gateway::ws_write::Encoder;

/// Tags that say how a JSON session got a payload that is not JSON (docs/CENTRIFUGO.md).
pub const TAG_CONTENT_TYPE: &str = "content-type";
pub const TAG_ENCODING: &str = "encoding";

pub struct Centrifugo(pub Format);

impl Centrifugo {
    /// The cache slot of a message's encoded push (after the native protocol's two).
    fn slot(&self) -> usize {
        match self.0 {
            Format::Json => 2,
            Format::Protobuf => 3,
        }
    }

    fn frame(&self, body: Vec<u8>) -> Frame {
        match self.0 {
            Format::Json => Frame::text(body),
            Format::Protobuf => Frame::binary(body),
        }
    }

    fn push(&self, push: Push) -> Frame {
        self.frame(self.0.encode(&Reply { push: Some(push), ..Default::default() }))
    }
}

impl Encoder for Centrifugo {
    type Reply = Box<Reply>;
    const PROTOCOL: &'static str = "centrifugo";
    const SHUTDOWN: (u16, &'static str) = codes::SHUTDOWN;

    fn reply(&self, reply: Box<Reply>) -> Frame {
        self.frame(self.0.encode(&reply))
    }

    fn message(&self, d: &Delivered) -> Frame {
        let format = self.0;
        d.frame(self.slot(), || {
            let push = Push {
                channel: d.topic.as_str().to_string(),
                publication: Some(publication(format, d)),
                ..Default::default()
            };
            self.push(push)
        })
    }

    /// The protocol has no notice for it: the client's position moves on with the next
    /// publication.
    fn expired_message(&self, _: &Delivered) -> Option<Frame> {
        None
    }

    fn notice(&self, q: &Queued) -> Option<Frame> {
        match &q.item {
            Item::Message(d) => Some(self.message(d)),
            // Not told in this protocol (see `expired_message`).
            Item::Expired(_) => None,
            Item::Event(event) => Some(self.push(event_push(self.0, event))),
            Item::Reset(r) => {
                // The position jumped: this subscription ends here, and the client, told to
                // resubscribe, learns from the new subscribe reply where it now stands
                // (`recovered: false`). Nothing more of it is written meanwhile.
                q.sub.close();
                let (code, reason) = codes::INSUFFICIENT_STATE;
                Some(self.push(Push {
                    channel: r.topic.as_str().to_string(),
                    unsubscribe: Some(Unsubscribe { code, reason: reason.into() }),
                    ..Default::default()
                }))
            }
        }
    }

    fn ping(&self) -> Frame {
        self.frame(codec::ping(self.0))
    }
}

/// A stored message as a publication: payload, offset = seq, time, headers as tags, and
/// its publisher as `info`.
pub fn publication(format: Format, d: &Delivered) -> Publication {
    envelope_publication(format, d.seq(), &d.message.envelope)
}

pub fn envelope_publication(format: Format, seq: u64, envelope: &Result<Envelope, Vec<u8>>) -> Publication {
    match envelope {
        Ok(e) => {
            let is_json = crate::wire::is_json(&e.content_type);
            let (data, how) = format.data(&e.payload, is_json);
            let mut tags: std::collections::HashMap<String, String> =
                e.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            if let Some(how) = how {
                tags.insert(TAG_CONTENT_TYPE.into(), e.content_type.clone());
                tags.insert(TAG_ENCODING.into(), how.into());
            }
            Publication {
                data,
                info: e.from.as_ref().map(|p| ClientInfo {
                    user: p.user.clone(),
                    client: p.client.clone(),
                    ..Default::default()
                }),
                offset: seq,
                tags,
                time: e.published_ms as i64,
            }
        }
        Err(raw) => {
            let (data, how) = format.data(raw, false);
            let mut tags = std::collections::HashMap::new();
            tags.insert(TAG_CONTENT_TYPE.into(), crate::wire::UNDECODABLE.into());
            if let Some(how) = how {
                tags.insert(TAG_ENCODING.into(), how.into());
            }
            Publication { data, offset: seq, tags, ..Default::default() }
        }
    }
}

/// A presence member as the protocol's `ClientInfo` (its info as `conn_info`).
pub fn client_info(member: &Member) -> ClientInfo {
    ClientInfo {
        user: member.user.clone(),
        client: member.client.clone(),
        conn_info: member.info.as_ref().map(|v| serde_json::to_vec(v).unwrap_or_default()).unwrap_or_default(),
        chan_info: Vec::new(),
    }
}

fn event_push(format: Format, event: &TopicEvent) -> Push {
    let channel = event.topic.as_str().to_string();
    match &event.kind {
        EventKind::Join(m) => {
            Push { channel, join: Some(JoinLeave { info: Some(client_info(m)) }), ..Default::default() }
        }
        EventKind::Leave(m) => {
            Push { channel, leave: Some(JoinLeave { info: Some(client_info(m)) }), ..Default::default() }
        }
        // An ephemeral event is a publication without an offset: the client's position
        // does not move, and it is never part of a recovery.
        EventKind::Ephemeral(e) => {
            let json = serde_json::to_vec(&e.data).unwrap_or_default();
            let (data, _) = format.data(&json, true);
            let publication = Publication {
                data,
                info: Some(ClientInfo { user: e.user.clone(), client: e.client.clone(), ..Default::default() }),
                tags: e.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                ..Default::default()
            };
            Push { channel, publication: Some(publication), ..Default::default() }
        }
    }
}
