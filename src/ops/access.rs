//! Access control, once for every transport: who the caller is, whether they may act on
//! a topic (and the topic name is valid — in that order), and the per-credential and
//! per-IP limits with their answers (401, 403, 429 + Retry-After).
//!
//! An operation on a topic takes a [`Grant`], which only [`Access::grant`] makes: the
//! caller's scope on the topic name as given, then the name itself. So every route and
//! frame answers a doubly wrong request the same way: bad credentials (401) before a
//! missing grant (401 anonymous / 403 identified) before a bad topic name (400).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::{Auth, AuthError, Principal, PrincipalKind, Scope};
use crate::config::HttpConfig;
use crate::error::{Code, Error, Result};
use crate::topic::Topic;

/// Whose publish budget a caller spends.
#[derive(Clone)]
pub enum Budget {
    /// The credential's (HTTP): per API key, per token subject, per IP for anonymous callers.
    Credential,
    /// One WebSocket connection's own limiter (the same quota).
    Connection(Arc<DefaultDirectRateLimiter>),
    /// The operator's CLI: no limit.
    Unlimited,
}

/// Who asks: the verified principal, the client's address and its publish budget.
#[derive(Clone)]
pub struct Caller {
    pub principal: Principal,
    pub ip: IpAddr,
    pub budget: Budget,
    /// The session's client id when the caller is a WebSocket session (it names the
    /// publisher of its messages and events, and its presence entries).
    pub client: Option<Arc<str>>,
}

impl Caller {
    /// Who a message published by this caller is from: the verified subject, and the
    /// session's client id. None for the operator (CLI) and for anonymous HTTP callers.
    pub fn publisher(&self) -> Option<crate::envelope::Publisher> {
        let client = self.client.as_deref().unwrap_or("").to_string();
        match self.principal.kind {
            PrincipalKind::Operator => None,
            PrincipalKind::Anonymous if client.is_empty() => None,
            PrincipalKind::Anonymous => Some(crate::envelope::Publisher { user: String::new(), client }),
            _ => Some(crate::envelope::Publisher { user: self.principal.subject.clone(), client }),
        }
    }
}

/// What a grant is for (the marker types below).
pub trait Needs {
    const SCOPE: Scope;
}

/// Marker: the `subscribe` scope (history, topic info, subscriptions).
pub struct Subscribe;
/// Marker: the `publish` scope.
pub struct Publish;
/// Marker: the `consume` scope (pull fetch, ack, nack, WebSocket consumers).
pub struct Consume;
/// Marker: the `presence` scope (who is present, join/leave events).
pub struct PresenceRead;
/// Marker: an API key with the `admin` scope (group and dead-letter administration).
pub struct Admin;

impl Needs for Subscribe {
    const SCOPE: Scope = Scope::Subscribe;
}
impl Needs for Publish {
    const SCOPE: Scope = Scope::Publish;
}
impl Needs for Consume {
    const SCOPE: Scope = Scope::Consume;
}
impl Needs for PresenceRead {
    const SCOPE: Scope = Scope::Presence;
}
impl Needs for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// Proof that a caller may act with scope `S` on a valid topic.
pub struct Grant<S> {
    topic: Topic,
    _scope: PhantomData<S>,
}

impl<S> Grant<S> {
    pub fn topic(&self) -> &Topic {
        &self.topic
    }
}

/// The node's access control: the credential verifier and the limiters.
pub struct Access {
    auth: Auth,
    limiters: Arc<Limiters>,
    http: HttpConfig,
    max_topic_bytes: usize,
}

impl Access {
    pub fn new(auth: Auth, http: &HttpConfig, max_topic_bytes: usize) -> Access {
        Access { auth, limiters: Arc::new(Limiters::new(http)), http: http.clone(), max_topic_bytes }
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The principal of a credential (a JWT or an API key); anonymous without one.
    pub fn principal(&self, credential: Option<&str>) -> Result<Principal> {
        match credential {
            None => Ok(self.auth.anonymous()),
            Some(c) => self.auth.authenticate(c).map_err(Error::from),
        }
    }

    /// A caller whose `Authorization` header is not `Bearer <credential>`: refused, never
    /// anonymous (a client that meant to authenticate learns that it did not).
    pub fn malformed_authorization() -> Error {
        AuthError::Malformed("only `Authorization: Bearer <token or key>` is understood".into()).into()
    }

    /// The CLI's caller: the operator, from this machine, without limits.
    pub fn operator(&self) -> Caller {
        Caller {
            principal: self.auth.operator(),
            ip: IpAddr::from([127, 0, 0, 1]),
            budget: Budget::Unlimited,
            client: None,
        }
    }

    /// A WebSocket connection's own publish budget.
    pub fn connection_budget(&self) -> Budget {
        Budget::Connection(Arc::new(RateLimiter::direct(per_second(self.http.publish_rate_per_sec))))
    }

    /// The caller's scope `S` on `topic` as given, then the topic name: the one
    /// authorisation step of every operation on a topic.
    pub fn grant<S: Needs>(&self, caller: &Caller, topic: &str) -> Result<Grant<S>> {
        let checked = self.allow(caller, S::SCOPE, topic).and_then(|()| Ok(Topic::parse(topic, self.max_topic_bytes)?));
        match checked {
            Ok(topic) => Ok(Grant { topic, _scope: PhantomData }),
            Err(e) => {
                if S::SCOPE == Scope::Publish {
                    crate::metrics::publish_rejected(e.code.as_str());
                }
                Err(e)
            }
        }
    }

    /// A topic name, for the ops that need no scope (unsubscribe).
    pub fn topic(&self, name: &str) -> Result<Topic> {
        Ok(Topic::parse(name, self.max_topic_bytes)?)
    }

    fn allow(&self, caller: &Caller, scope: Scope, topic: &str) -> Result<()> {
        if self.auth.allows(&caller.principal, scope, topic) {
            return Ok(());
        }
        Err(match scope {
            Scope::Admin => {
                denied(&caller.principal, "use admin endpoints (an API key with the admin scope is needed)")
            }
            _ => denied(&caller.principal, &format!("{} on {topic}", scope.as_str())),
        })
    }

    /// Whether the caller has `scope` on `name` (a topic, or `@<user>` for user status),
    /// answered like a grant: Ok, or the 401/403 refusal.
    pub fn check(&self, caller: &Caller, scope: Scope, name: &str) -> Result<()> {
        self.allow(caller, scope, name)
    }

    /// The admin scope, for admin operations that name no topic.
    pub fn require_admin(&self, caller: &Caller) -> Result<()> {
        self.allow(caller, Scope::Admin, "")
    }

    /// Takes `n` publishes from the caller's budget. A batch larger than the burst could
    /// never pass: `413 batch_too_large`, not a 429 that no waiting would cure.
    pub fn spend_publish(&self, caller: &Caller, n: u32) -> Result<()> {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let outcome = match &caller.budget {
            Budget::Unlimited => return Ok(()),
            Budget::Connection(limiter) => limiter.check_n(n),
            Budget::Credential => {
                let key = match caller.principal.kind {
                    PrincipalKind::Anonymous => PublishBudget::Ip(caller.ip),
                    PrincipalKind::ApiKey => PublishBudget::Key(caller.principal.subject.clone()),
                    PrincipalKind::Token => PublishBudget::Subject(caller.principal.subject.clone()),
                    PrincipalKind::Operator => return Ok(()),
                };
                self.limiters.publish.check_key_n(&key, n)
            }
        };
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(rate_limited(
                not_until.wait_time_from(DefaultClock::default().now()),
                "publish rate (http.publish_rate_per_sec) exceeded",
            )),
            Err(_) => Err(Error::new(
                Code::BatchTooLarge,
                "a batch larger than http.publish_rate_per_sec can never pass the rate limit",
            )),
        }
    }

    /// Admits a new session (WebSocket, SSE) from `ip`: within the per-IP rate and the
    /// per-IP open count. The slot is given back when the returned guard is dropped.
    pub fn open_session(&self, ip: IpAddr) -> Result<IpSlot> {
        self.limiters.open_session(ip)
    }

    /// Checks the `Origin` of a browser session against `http.ws_origins`.
    pub fn check_origin(&self, origin: Option<&str>) -> Result<()> {
        if self.http.ws_origins.is_empty() {
            return Ok(());
        }
        // Browsers always send Origin with WebSocket and EventSource requests; a client
        // without one (a service, `streamhub tail`) is not a browser page and passes.
        let Some(origin) = origin else { return Ok(()) };
        if self.http.ws_origins.iter().any(|o| o == origin) {
            Ok(())
        } else {
            Err(Error::new(Code::OriginNotAllowed, format!("origin {origin:?} is not in http.ws_origins")))
        }
    }

    /// Forgets idle keys so the limiters' memory stays bounded (every 30 s).
    pub fn maintain(&self) {
        self.limiters.maintain();
    }
}

/// 401 for an anonymous caller lacking a grant (credentials may help), 403 for an
/// identified one (they will not).
fn denied(principal: &Principal, what: &str) -> Error {
    if principal.kind == PrincipalKind::Anonymous {
        Error::new(Code::Unauthorized, format!("credentials required for {what}"))
    } else {
        Error::new(Code::Forbidden, format!("{} may not {what}", principal.subject))
    }
}

fn per_second(n: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn rate_limited(wait: Duration, what: &str) -> Error {
    Error::new(Code::RateLimited, format!("{what}; retry later")).retry_after(wait.as_secs())
}

/// Whose publish budget a request spends: an anonymous caller's IP, an API key's name or
/// a token's subject (a typed key: formatting one into a string cost more than the rest
/// of the check).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PublishBudget {
    Ip(IpAddr),
    Key(String),
    Subject(String),
}

/// Per-credential publish rates, per-IP session rates and open sessions per IP.
struct Limiters {
    publish: DefaultKeyedRateLimiter<PublishBudget>,
    connect: DefaultKeyedRateLimiter<IpAddr>,
    open: Mutex<HashMap<IpAddr, usize>>,
    max_open_per_ip: usize,
}

/// One open session of an IP; dropping it frees the slot.
pub struct IpSlot {
    limiters: Arc<Limiters>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.limiters.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Limiters {
    fn new(config: &HttpConfig) -> Limiters {
        Limiters {
            publish: RateLimiter::keyed(per_second(config.publish_rate_per_sec)),
            connect: RateLimiter::keyed(per_second(config.connection_rate_per_ip)),
            open: Mutex::new(HashMap::new()),
            max_open_per_ip: config.max_connections_per_ip,
        }
    }

    fn open_session(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot> {
        if let Err(not_until) = self.connect.check_key(&ip) {
            return Err(rate_limited(
                not_until.wait_time_from(DefaultClock::default().now()),
                "new sessions per IP (http.connection_rate_per_ip) exceeded",
            ));
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max_open_per_ip {
            return Err(Error::new(
                Code::TooManyConnectionsPerIp,
                format!("at most {} sessions per client IP (http.max_connections_per_ip)", self.max_open_per_ip),
            )
            .retry_after(1));
        }
        *n += 1;
        Ok(IpSlot { limiters: self.clone(), ip })
    }

    fn maintain(&self) {
        self.publish.retain_recent();
        self.connect.retain_recent();
        self.publish.shrink_to_fit();
        self.connect.shrink_to_fit();
    }
}
