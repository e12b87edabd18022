//! The ops of the native WebSocket protocol, one small function each: decode the frame's
//! fields, call the operation, encode the reply (docs/PROTOCOL.md §2.2, §2.8, §10.7).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::frames::{ClientFrame, FrameError, ServerFrame, SinceFrame, TokenStatus};
use super::ws::{Conn, Starts};
use super::ws_write::{Outgoing, Replies};
use crate::delivery::session::Since;
use crate::error::{Code, Error};
use crate::groups::consumer::SessionConsumer;
use crate::groups::settle::{Nack, Settled};
use crate::message::NewMessage;
use crate::ops::access::{Consume, PresenceRead, Publish, Subscribe};
use crate::ops::SubscribeRequest;
use crate::store::groups::GroupDelivery;
use crate::wire::MessageOut;

/// A reply, and what may start once the reply is queued.
type Reply = (ServerFrame, Option<Starts>);

impl Conn {
    /// Answers one client frame.
    pub(super) async fn apply(&mut self, frame: ClientFrame) -> Result<Reply, FrameError> {
        let id = frame.id();
        if self.auth_deadline.is_some() && !matches!(frame, ClientFrame::Auth { .. } | ClientFrame::Ping { .. }) {
            return Err(FrameError::new(id, Code::Unauthorized, "authenticate first (auth frame)"));
        }
        let reply = match frame {
            ClientFrame::Subscribe { id, topic, since, join_leave, info } => {
                self.subscribe(id, &topic, since, SubscribeRequest { join_leave, info }).await
            }
            ClientFrame::Unsubscribe { id, topic } => self.unsubscribe(id, topic).await.map(|f| (f, None)),
            ClientFrame::Publish { id, topic, data, headers, ephemeral: true, .. } => {
                self.publish_ephemeral(id, topic, data, headers).await.map(|f| (f, None))
            }
            ClientFrame::Publish { id, topic, data, headers, ttl_ms, idempotency_key, .. } => {
                let message = NewMessage {
                    payload: serde_json::to_vec(&data).unwrap_or_default(),
                    content_type: "application/json".into(),
                    headers,
                    ttl_ms,
                    idempotency_key,
                };
                self.publish(id, topic, message).await.map(|f| (f, None))
            }
            ClientFrame::Ping { id } => Ok((ServerFrame::Pong { id }, None)),
            ClientFrame::Presence { id, topic } => self.presence(id, topic).await.map(|f| (f, None)),
            ClientFrame::PresenceStats { id, topic } => self.presence_stats(id, topic).await.map(|f| (f, None)),
            ClientFrame::UserStatus { id, user } => self.user_status(id, user).await.map(|f| (f, None)),
            ClientFrame::SetStatus { id, status } => {
                self.state.ops.set_status(&self.caller, &status).await.map(|()| (ServerFrame::StatusSet { id }, None))
            }
            ClientFrame::Auth { id, token } => self.auth(id, &token).await.map(|f| (f, None)),
            ClientFrame::Consume { id, topic, group, prefetch } => self.consume(id, topic, group, prefetch),
            ClientFrame::Ack { id, topic, group, tokens } => self.ack(id, &topic, &group, tokens).await,
            ClientFrame::Nack { id, topic, group, tokens, error, retry_after_ms, permanent } => {
                let nack = Nack { error, retry_after: retry_after_ms.map(Duration::from_millis), permanent };
                self.nack(id, &topic, &group, tokens, &nack).await
            }
        };
        reply.map_err(|error| FrameError { id, error })
    }

    async fn subscribe(
        &mut self,
        id: u64,
        name: &str,
        since: Option<SinceFrame>,
        request: SubscribeRequest,
    ) -> Result<Reply, Error> {
        // Checked at every subscribe, resumes included.
        let grant = self.state.ops.access().grant::<Subscribe>(&self.caller, name)?;
        let since = since.as_ref().map_or(Ok(Since::Now), SinceFrame::to_since)?;
        let subscribed = self.state.ops.subscribe(&self.caller, &self.session, &grant, since, request).await?;
        Ok((ServerFrame::subscribed(Some(id), name, &subscribed), Some(Starts::Subscription(grant.topic().clone()))))
    }

    async fn unsubscribe(&mut self, id: u64, name: String) -> Result<ServerFrame, Error> {
        let topic = self.state.ops.access().topic(&name)?;
        if self.session.unsubscribe(&topic).await {
            Ok(ServerFrame::Unsubscribed { id, topic: name })
        } else {
            Err(Error::new(Code::NotSubscribed, format!("not subscribed to {name}")))
        }
    }

    async fn publish(&mut self, id: u64, name: String, message: NewMessage) -> Result<ServerFrame, Error> {
        let grant = self.state.ops.access().grant::<Publish>(&self.caller, &name)?;
        let p = self.state.ops.publish(&self.caller, &grant, message).await?;
        Ok(ServerFrame::Published {
            id,
            topic: name,
            epoch: p.epoch,
            seq: p.seq,
            message_id: p.id,
            duplicate: p.duplicate,
        })
    }

    async fn publish_ephemeral(
        &mut self,
        id: u64,
        name: String,
        data: serde_json::Value,
        headers: std::collections::BTreeMap<String, String>,
    ) -> Result<ServerFrame, Error> {
        let grant = self.state.ops.access().grant::<Publish>(&self.caller, &name)?;
        self.state.ops.publish_ephemeral(&self.caller, &grant, data, headers).await?;
        Ok(ServerFrame::Sent { id, topic: name })
    }

    async fn presence(&self, id: u64, name: String) -> Result<ServerFrame, Error> {
        let grant = self.state.ops.access().grant::<PresenceRead>(&self.caller, &name)?;
        let p = self.state.ops.presence(&grant).await?;
        Ok(ServerFrame::Presence { id, topic: name, clients: p.clients, users: p.users, members: p.members })
    }

    async fn presence_stats(&self, id: u64, name: String) -> Result<ServerFrame, Error> {
        let grant = self.state.ops.access().grant::<PresenceRead>(&self.caller, &name)?;
        let (clients, users) = self.state.ops.presence_stats(&grant).await?;
        Ok(ServerFrame::PresenceStats { id, topic: name, clients, users })
    }

    async fn user_status(&self, id: u64, user: String) -> Result<ServerFrame, Error> {
        let s = self.state.ops.user_status(&self.caller, &user).await?;
        Ok(ServerFrame::UserStatus {
            id,
            user,
            online: s.online,
            last_seen_ms: (s.last_seen_ms > 0).then_some(s.last_seen_ms),
            status: (!s.status.is_empty()).then_some(s.status),
        })
    }

    /// Authenticates the session, or refreshes its token (`Ops::reauthenticate`).
    async fn auth(&mut self, id: u64, token: &str) -> Result<ServerFrame, Error> {
        let principal = self.state.ops.reauthenticate(&self.session, &self.caller.principal, token).await?;
        let frame =
            ServerFrame::Authenticated { id, subject: principal.subject.clone(), expires_at: principal.expires_at };
        self.caller.principal = principal;
        self.auth_deadline = None;
        Ok(frame)
    }

    fn consume(&mut self, id: u64, topic: String, group: String, prefetch: Option<u32>) -> Result<Reply, Error> {
        let ops = &self.state.ops;
        let grant = ops.access().grant::<Consume>(&self.caller, &topic)?;
        let g = ops.pull_group(&grant, &group)?;
        let key = (topic.clone(), group.clone());
        if self.consumers.contains_key(&key) {
            return Err(Error::new(Code::AlreadyConsuming, format!("already consuming {topic}/{group}")));
        }
        let max = ops.config().ws.max_subscriptions;
        if self.consumers.len() + self.session.subscription_count() >= max {
            return Err(Error::new(
                Code::TooManySubscriptions,
                format!("at most {max} subscriptions and consumers per session (ws.max_subscriptions)"),
            ));
        }
        let (replies, (t, gname)) = (self.replies.clone(), key.clone());
        let (go, queued) = oneshot::channel();
        let consumer = ops.consume(&grant, &g, prefetch, |prefetch| {
            let (tx, rx) = mpsc::channel::<GroupDelivery>(prefetch);
            // Deliveries become frames behind the `consuming` reply, once it is queued.
            tokio::spawn(forward(queued, rx, replies, t, gname));
            tx
        });
        self.consumers.insert(key, consumer);
        Ok((ServerFrame::Consuming { id, topic, group }, Some(Starts::Consumer(go))))
    }

    async fn ack(&self, id: u64, topic: &str, group: &str, tokens: Vec<String>) -> Result<Reply, Error> {
        let settled_tokens = self.consumer_of(topic, group)?.ack(tokens).await?;
        Ok((settled(id, settled_tokens), None))
    }

    async fn nack(&self, id: u64, topic: &str, group: &str, tokens: Vec<String>, nack: &Nack) -> Result<Reply, Error> {
        let settled_tokens = self.consumer_of(topic, group)?.nack(tokens, nack).await?;
        Ok((settled(id, settled_tokens), None))
    }

    fn consumer_of(&self, topic: &str, group: &str) -> Result<Arc<SessionConsumer>, Error> {
        let ops = &self.state.ops;
        ops.access().grant::<Consume>(&self.caller, topic)?;
        self.consumers
            .get(&(topic.to_string(), group.to_string()))
            .cloned()
            .ok_or_else(|| Error::new(Code::NotConsuming, format!("this session does not consume {topic}/{group}")))
    }
}

/// Forwards a consumer's deliveries to the session's writer, as `delivery` frames.
async fn forward(
    queued: oneshot::Receiver<()>,
    mut rx: mpsc::Receiver<GroupDelivery>,
    replies: Replies<Box<ServerFrame>>,
    topic: String,
    group: String,
) {
    // The `consuming` reply comes first (PROTOCOL §10.7); its sender dropped: the session ended.
    if queued.await.is_err() {
        return;
    }
    while let Some(d) = rx.recv().await {
        let frame = ServerFrame::Delivery {
            topic: topic.clone(),
            group: group.clone(),
            token: d.lease.token(),
            attempt: d.attempt,
            last_error: d.last_error,
            message: MessageOut::new(d.seq, d.envelope),
        };
        if replies.send(Outgoing::Frame(Box::new(frame))).await.is_err() {
            return;
        }
    }
}

fn settled(id: u64, results: Vec<Settled>) -> ServerFrame {
    let results = results
        .into_iter()
        .map(|s| TokenStatus { token: s.token, status: s.status.to_string(), attempt: s.attempt, due_ms: s.due_ms })
        .collect();
    ServerFrame::Settled { id, results }
}
