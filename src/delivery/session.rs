//! A subscriber session, independent of its transport: its subscriptions, its bounded
//! outbound queue, where each subscription starts (resume rules, G3), and the catch-up
//! reader that brings lagging or resuming subscriptions up to live.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use backon::BackoffBuilder;
use futures::FutureExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::event::Member;
pub use super::resume::Since;
use super::resume::{self, Reader, ResetReason, Step};
use super::subscription::{CatchUpWake, Delivered, Deliveries, Expired, Item, Outbound, Position, Reset, Subscription};
use super::{Hub, TailHandle};
use crate::config::WsConfig;
use crate::metrics;
use crate::store::StoreError;
use crate::topic::Topic;

/// The answer to a subscribe: messages after `seq` of `epoch` follow, unless
/// `recovered` says the requested resume was exact (then every message after the
/// requested seq follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub epoch: String,
    /// The topic's top seq when the subscription took effect.
    pub seq: u64,
    /// Where delivery starts: the messages after this seq of `epoch` follow.
    pub from: u64,
    pub recovered: bool,
    pub reason: Option<ResetReason>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("already subscribed to {0}")]
    AlreadySubscribed(Topic),
    #[error("at most {0} subscriptions per session (ws.max_subscriptions)")]
    TooMany(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Entry {
    sub: Arc<Subscription>,
    tail: TailHandle,
    /// The subscription has a presence entry (the topic is tracked).
    present: bool,
}

/// How a subscription takes part in presence.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Deliver the topic's join and leave events to this subscription.
    pub join_leave: bool,
    /// The subscriber as presence shows it, on a tracked topic (None: not tracked).
    pub member: Option<Member>,
}

pub struct Session {
    hub: Hub,
    outbound: Outbound,
    subs: Mutex<HashMap<Topic, Entry>>,
    catchup: CatchUp,
    max_subscriptions: usize,
    /// This session's client id: in presence entries, and the id a transport reports.
    client: String,
    /// The identified user whose status this session keeps online (`presence.users`).
    user: Mutex<Option<String>>,
}

/// The session's catch-up reader: a task that runs only while some started subscription
/// lags, started by the wake-up that finds none running and ended when a pass finds
/// nothing more to do. An idle session keeps no task for it (ARCHITECTURE §6).
struct CatchUp {
    /// The session, for the task a wake-up starts (weak: the session owns this).
    session: Weak<Session>,
    /// Asks a running task for another pass.
    again: Notify,
    /// A task runs, or is being started.
    running: AtomicBool,
    /// The session ended: the task stops, and no other starts.
    stop: CancellationToken,
    /// Its task, awaited when the session ends (a tracker rather than a `JoinHandle`: a
    /// handle would keep each finished task's memory until the session ends).
    task: TaskTracker,
    /// The session's span, which the task's lines carry.
    span: tracing::Span,
}

impl CatchUpWake for Session {
    fn wake_catchup(&self) {
        let catchup = &self.catchup;
        catchup.again.notify_one();
        if catchup.stop.is_cancelled() || catchup.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (Some(session), Ok(runtime)) = (catchup.session.upgrade(), tokio::runtime::Handle::try_current()) else {
            catchup.running.store(false, Ordering::Release);
            return;
        };
        let run = catchup.task.track_future(session.run_catchup().instrument(catchup.span.clone()));
        runtime.spawn(self.hub.tasks().track_future(run));
    }
}

impl Session {
    /// A session and the receiving end of its outbound queue (for the transport's writer).
    /// `stop` ends its catch-up reader (the transport cancels it when the session ends).
    pub fn new(hub: Hub, config: &WsConfig, stop: CancellationToken) -> (Arc<Session>, Deliveries) {
        let (outbound, rx) = Outbound::new(config.outbound_queue_messages, config.outbound_queue_bytes);
        let session = Arc::new_cyclic(|me| Session {
            hub,
            outbound,
            subs: Mutex::new(HashMap::new()),
            catchup: CatchUp {
                session: me.clone(),
                again: Notify::new(),
                running: AtomicBool::new(false),
                stop,
                task: TaskTracker::new(),
                span: tracing::Span::current(),
            },
            max_subscriptions: config.max_subscriptions,
            client: uuid::Uuid::now_v7().simple().to_string(),
            user: Mutex::new(None),
        });
        (session, rx)
    }

    /// Lets the tails write this session's live messages through `direct` when nothing
    /// is queued (`subscription::DirectWrite`).
    pub fn set_direct(&self, direct: Box<dyn super::subscription::DirectWrite>) {
        self.outbound.set_direct(direct);
    }

    /// Stops the catch-up reader (`stop` must be cancelled) and waits for it to end.
    pub async fn catchup_ended(&self) {
        self.catchup.task.close();
        self.catchup.task.wait().await;
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, Entry>> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscription_count(&self) -> usize {
        self.subs().len()
    }

    /// This session's client id.
    pub fn client(&self) -> &str {
        &self.client
    }

    /// The session now acts for `user` (an identified principal): its status is online
    /// while the session lasts (when `presence.users` is on). Once set, it stays.
    pub async fn set_user(&self, user: &str) {
        let first = {
            let mut current = self.user.lock().unwrap_or_else(|e| e.into_inner());
            if current.is_some() {
                false
            } else {
                *current = Some(user.to_string());
                true
            }
        };
        if first {
            self.hub.presence().user_online(user, &self.client).await;
        }
    }

    /// Decides where the subscription starts and registers it. Nothing is delivered
    /// until `start` is called, so the transport can first queue its reply.
    pub async fn subscribe(
        &self,
        topic: Topic,
        since: Since,
        options: SubscribeOptions,
    ) -> Result<Subscribed, SubscribeError> {
        // A subscription its transport closed (a protocol that ends a subscription whose
        // position jumped) gives way to the new one.
        let closed = self.subs().get(&topic).is_some_and(|e| e.sub.is_closed());
        if closed {
            // With the grace period: the same client comes right back (no leave, no join).
            self.end(&topic, self.hub.presence().config().grace_ms).await;
        }
        {
            let subs = self.subs();
            if subs.contains_key(&topic) {
                return Err(SubscribeError::AlreadySubscribed(topic));
            }
            if subs.len() >= self.max_subscriptions {
                return Err(SubscribeError::TooMany(self.max_subscriptions));
            }
        }
        let resuming = matches!(since, Since::After { .. });
        let since_seq = match &since {
            Since::After { seq, .. } => *seq,
            _ => u64::MAX,
        };
        let page = self.hub.store().read_since(&topic, since_seq, 0).await?;
        let p = &page.position;
        let epoch = p.epoch.clone().unwrap_or_default();
        let resume::Start { last, recovered, reason } = resume::start(p, &since);
        if let Some(reason) = reason {
            metrics::reset(reason.as_str());
        }
        if resuming {
            metrics::resumed(reason.map_or("recovered", ResetReason::as_str));
        }
        {
            let mut subs = self.subs();
            if subs.contains_key(&topic) {
                return Err(SubscribeError::AlreadySubscribed(topic));
            }
            let sub = Subscription::new(
                topic.clone(),
                self.outbound.clone(),
                Position { epoch: epoch.clone(), last },
                self.catchup.session.clone(),
                options.join_leave,
            );
            let tail = self.hub.acquire(&topic);
            subs.insert(topic.clone(), Entry { sub, tail, present: options.member.is_some() });
        }
        metrics::subscriptions(1.0);
        if let Some(member) = &options.member {
            self.hub.presence().join(&topic, member).await;
        }
        Ok(Subscribed { epoch, seq: p.top, from: last, recovered, reason })
    }

    /// Starts delivery of a registered subscription (its catch-up, then live). The
    /// catch-up reader ignores a subscription until this is called, so the transport's
    /// reply, queued before, always precedes the subscription's messages.
    pub fn start(&self, topic: &Topic) {
        if let Some(entry) = self.subs().get(topic) {
            entry.sub.mark_started();
        }
        self.wake_catchup();
    }

    /// Ends a subscription (the client asked: its presence entry goes, and its user's
    /// leave is not delayed); false when there was none.
    pub async fn unsubscribe(&self, topic: &Topic) -> bool {
        self.end(topic, 0).await
    }

    async fn end(&self, topic: &Topic, grace_ms: u64) -> bool {
        let entry = self.subs().remove(topic);
        match entry {
            Some(entry) => {
                metrics::subscriptions(-1.0);
                entry.sub.close();
                entry.tail.leave(entry.sub).await;
                self.hub.release(topic);
                if entry.present {
                    self.hub.presence().leave(topic, &self.client, grace_ms, true).await;
                }
                true
            }
            None => false,
        }
    }

    /// Ends every subscription (the transport closed). Presence entries go at once; each
    /// user's leave follows after `presence.grace_ms`, unless the user comes back.
    pub async fn close(&self) {
        let grace_ms = self.hub.presence().config().grace_ms;
        let topics: Vec<Topic> = self.subs().keys().cloned().collect();
        for topic in topics {
            self.end(&topic, grace_ms).await;
        }
        let user = self.user.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(user) = user {
            self.hub.presence().user_offline(&user, &self.client).await;
        }
    }

    /// The catch-up reader's task: passes over the lagging subscriptions, bringing each
    /// up to its tail by reading the stream at the client's pace, until a pass ends with
    /// no wake-up since (then the task ends; the next wake-up starts another) or the
    /// session's `stop`.
    async fn run_catchup(self: Arc<Self>) {
        let shutdown = self.catchup.stop.clone();
        // The wake-up that started this task asked for the first pass, which follows.
        let _ = self.catchup.again.notified().now_or_never();
        loop {
            // A wake-up may have started this task just as the session ended.
            if shutdown.is_cancelled() {
                return;
            }
            let lagging: Vec<(Arc<Subscription>, TailHandle)> = self
                .subs()
                .values()
                .filter(|e| e.sub.is_lagging() && e.sub.is_started() && !e.sub.is_closed())
                .map(|e| (e.sub.clone(), e.tail.clone()))
                .collect();
            for (sub, tail) in lagging {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    // Boxed: the catch-up future is large and only alive while it reads.
                    _ = Box::pin(self.catch_up(&sub, &tail, &shutdown)) => {}
                }
            }
            // Another pass if woken meanwhile; else end. A wake-up between the check and
            // `running` cleared saw the task still running and started none: look again.
            if self.catchup.again.notified().now_or_never().is_some() {
                continue;
            }
            self.catchup.running.store(false, Ordering::Release);
            let woken = self.catchup.again.notified().now_or_never().is_some();
            if !woken || self.catchup.running.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    async fn catch_up(&self, sub: &Arc<Subscription>, tail: &TailHandle, shutdown: &CancellationToken) {
        let store = self.hub.store();
        let page_size = self.hub.config().catchup_page;
        let mut backoff = retry_delays();
        // The next page, read while the current one is queued (after a full page).
        let mut ahead: Option<(u64, tokio::task::JoinHandle<crate::store::Result<crate::store::HistoryPage>>)> = None;
        while !sub.is_closed() {
            let at = sub.position();
            let read = match ahead.take() {
                Some((from, next)) if from == at.last => next.await.unwrap_or_else(|e| {
                    Err(crate::store::StoreError::Unavailable(format!("catch-up read task failed: {e}")))
                }),
                _ => store.read_since(&sub.topic, at.last, page_size).await,
            };
            let mut page = match read {
                Ok(page) => page,
                Err(e) => {
                    let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(5));
                    tracing::debug!(topic = %sub.topic, error = %e, ?delay, "catch-up read failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            let current = page.position.epoch.clone().unwrap_or_default();
            match resume::step(&page.position, &at.epoch, at.last, Reader::CatchUp) {
                Step::Deliver => {}
                // Nothing to read yet: an empty page, which joins the tail below.
                Step::Idle => page.messages.clear(),
                Step::Wait => {
                    // The meta was lost and not yet recreated: wait for the new epoch
                    // (the next publish creates it) without delivering anything.
                    let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(5));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
                Step::Adopt { epoch, last } => {
                    sub.set_position(&epoch, last);
                    continue;
                }
                Step::Jump { reason, epoch, last } => {
                    metrics::reset(reason.as_str());
                    let reset = Reset { topic: sub.topic.clone(), epoch: epoch.clone(), seq: last, reason };
                    if sub.push(Item::Reset(Box::new(reset))).await.is_err() {
                        return;
                    }
                    sub.set_position(&epoch, last);
                    continue;
                }
            }
            let count = page.messages.len();
            if count == page_size {
                if let Some(last) = page.messages.last().map(|m| m.seq) {
                    let (store, topic) = (store.clone(), sub.topic.clone());
                    ahead = Some((last, tokio::spawn(async move { store.read_since(&topic, last, page_size).await })));
                }
            }
            let epoch: Arc<str> = current.as_str().into();
            let now = crate::clock::now_ms();
            let mut expired: Option<Expired> = None;
            for message in page.messages {
                let seq = message.seq;
                let delivered = Arc::new(Delivered::new(sub.topic.clone(), epoch.clone(), message));
                if delivered.is_expired(now) {
                    // Not delivered: the run of expired seqs is told instead, in order.
                    Expired::extend(&mut expired, &sub.topic, &epoch, seq);
                    continue;
                }
                if let Some(run) = expired.take() {
                    if !push_expired(sub, run).await {
                        return;
                    }
                }
                if sub.push(Item::Message(delivered)).await.is_err() {
                    return;
                }
                sub.set_position(&current, seq);
            }
            if let Some(run) = expired.take() {
                if !push_expired(sub, run).await {
                    return;
                }
            }
            metrics::caught_up(count);
            if count < page_size {
                if tail.join(sub.clone()).await {
                    return;
                }
                if count == 0 {
                    // Refused with nothing new to read: the tail is catching up itself;
                    // pause instead of spinning.
                    let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(5));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
            backoff = retry_delays();
        }
    }
}

/// Queues a run of expired seqs for a catch-up reader's subscription and moves its
/// position past them; false when the session is gone.
async fn push_expired(sub: &Arc<Subscription>, run: Expired) -> bool {
    metrics::expired_skipped("subscription", run.to - run.from + 1);
    let (epoch, to) = (run.epoch.clone(), run.to);
    if sub.push(Item::Expired(Box::new(run))).await.is_err() {
        return false;
    }
    sub.set_position(&epoch, to);
    true
}

/// Delays between failed catch-up reads: exponential from 50 ms to 5 s, forever.
fn retry_delays() -> impl Iterator<Item = std::time::Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(50))
        .with_max_delay(std::time::Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}
