//! Configuration: the embedded `config/default.toml`, then a file, then
//! `STREAMHUB__SECTION__KEY` environment variables, then CLI flags; validated once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::topic::Topic;

pub use crate::auth::config::{AnonymousRule, ApiKeySpec, AuthConfig, HsKey, PublicKey};
pub use crate::auth::Scope;

/// The built-in defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub redis: RedisConfig,
    pub publish: PublishConfig,
    pub retention: RetentionConfig,
    pub idempotency: IdempotencyConfig,
    pub limits: Limits,
    pub fanout: FanoutConfig,
    pub ws: WsConfig,
    pub groups: GroupsConfig,
    pub presence: PresenceConfig,
    pub centrifugo: CentrifugoConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    /// The reverse proxies whose forwarding headers name the client (`[proxies]`).
    pub proxies: ProxiesConfig,
    /// Consumer groups declared in configuration (`[[group]]` tables).
    #[serde(default)]
    pub group: Vec<GroupSpec>,
    pub log: LogConfig,
}

/// Browser-facing HTTP settings and per-client limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins allowed by CORS for the HTTP API (["*"] = any; [] = no CORS headers).
    pub cors_origins: Vec<String>,
    /// Origins allowed to open WebSocket and SSE sessions ([] = any). Requests without an
    /// Origin header (not from a browser) are not affected.
    pub ws_origins: Vec<String>,
    /// Publishes per second (burst the same) per WebSocket connection, and per credential
    /// (API key or token subject) over HTTP.
    pub publish_rate_per_sec: u32,
    /// New WebSocket/SSE sessions per second (burst the same) per client IP.
    pub connection_rate_per_ip: u32,
    /// Open WebSocket/SSE sessions per client IP.
    pub max_connections_per_ip: usize,
    /// An HTTP request (other than SSE and WebSocket) taking longer is answered 503
    /// `request_timeout`.
    pub request_timeout_ms: u64,
    /// Serve the web console at `/console` (static files; it acts only through the API,
    /// with the credentials typed into it).
    pub console: bool,
    /// Serve the example chat (examples/chat/) at `/chat` (static files, like the console).
    pub chat: bool,
}

/// Presence: who is subscribed to a topic, join and leave events, user status.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// Topic patterns whose subscribers are tracked ([] = none).
    pub topics: Vec<String>,
    /// An entry its node has not refreshed for this long is gone (a dead node's entries).
    pub ttl_ms: u64,
    /// How often each node refreshes its own entries (below `ttl_ms`).
    pub refresh_ms: u64,
    /// A user whose last client left stays present this long; coming back within it
    /// produces neither a leave nor a join.
    pub grace_ms: u64,
    /// Largest connection info a client may share in presence (JSON, bytes).
    pub max_info_bytes: usize,
    /// Most clients one presence list returns.
    pub max_list: usize,
    /// Track user status (online while any session, last seen, a status text).
    pub users: bool,
    /// Largest status text a user may set (bytes).
    pub max_status_bytes: usize,
}

/// The Centrifugo client protocol and server API (docs/CENTRIFUGO.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentrifugoConfig {
    /// Path of the client protocol's WebSocket endpoint ("" = off).
    pub path: String,
    /// Prefix of the server API, `POST <prefix>/<method>` ("" = off).
    pub api_prefix: String,
    /// The server's ping period (whole seconds, in ms); clients answer each with a pong.
    pub ping_interval_ms: u64,
    /// A connection silent for a ping period plus this long is closed (3012).
    pub pong_timeout_ms: u64,
    /// How long after its token's `exp` (+ `auth.leeway_secs`) a connection may still
    /// `refresh` before it is closed (3005): the SDKs refresh when the token expires.
    pub refresh_grace_ms: u64,
}

impl PresenceConfig {
    /// Whether subscribers of `topic` are tracked.
    pub fn tracks(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| crate::auth::pattern::matches(p, topic))
    }
}

/// Node-wide settings of the consumer-group machinery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsConfig {
    /// How often due retries are moved to retry streams and expired leases reclaimed.
    pub sweep_interval_ms: u64,
    /// Longest `wait_ms` a pull fetch may ask for.
    pub max_fetch_wait_ms: u64,
    /// Most deliveries one pull fetch returns.
    pub max_fetch: usize,
    /// Approximate bound of each group's dead-letter stream (0 = unbounded).
    pub dlq_max_len: u64,
    /// The bound within which every node starts (stops) a group created (deleted) through
    /// the admin API on any node: one registry bucket is read every 1/17 of it.
    pub discover_interval_ms: u64,
}

/// Where a group starts reading its topic: `"new"`, `"earliest"` or a seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStart {
    /// Messages published after the group was created.
    New,
    /// Everything still retained.
    Earliest,
    /// Messages after this seq.
    After(u64),
}

impl Serialize for GroupStart {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GroupStart::New => s.serialize_str("new"),
            GroupStart::Earliest => s.serialize_str("earliest"),
            GroupStart::After(seq) => s.serialize_u64(*seq),
        }
    }
}

impl<'de> Deserialize<'de> for GroupStart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<GroupStart, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Seq(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Name(n) if n == "new" => Ok(GroupStart::New),
            Raw::Name(n) if n == "earliest" => Ok(GroupStart::Earliest),
            Raw::Seq(seq) => Ok(GroupStart::After(seq)),
            Raw::Name(other) => {
                Err(serde::de::Error::custom(format!("start: \"new\", \"earliest\" or a seq, not {other:?}")))
            }
        }
    }
}

/// What a webhook request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookBody {
    /// The message as a JSON document (topic, group, epoch, attempt, message).
    Json,
    /// The payload bytes with the message's content type.
    Raw,
}

/// What a webhook 4xx answer (other than 408 and 429) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum On4xx {
    /// A permanent failure: dead-lettered.
    Dlq,
    /// Retried like a 5xx.
    Retry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The broker POSTs each message to `url`.
    Webhook,
    /// Consumers fetch over HTTP (or WebSocket) and ack; no background worker.
    Pull,
    /// A Rust handler registered by the program that embeds streamhub.
    Handler,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExpiry {
    Drop,
    Dlq,
}

/// One consumer group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub topic: Topic,
    pub name: String,
    #[serde(default = "default_start")]
    pub start: GroupStart,
    pub target: TargetKind,
    /// Webhook URL (target = "webhook").
    #[serde(default)]
    pub url: Option<String>,
    /// HMAC-SHA256 key for webhook signatures.
    #[serde(default)]
    pub secret: Option<String>,
    /// Webhook body: "json" (the message as JSON) or "raw" (the payload bytes).
    #[serde(default = "default_body")]
    pub body: WebhookBody,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff_base")]
    pub backoff_base_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    #[serde(default = "default_multiplier")]
    pub backoff_multiplier: f64,
    /// Fraction of each delay that is random (0 to 1).
    #[serde(default = "default_jitter")]
    pub backoff_jitter: f64,
    /// Lease of one delivery: unacknowledged longer than this, it is delivered again.
    #[serde(default = "default_ack_wait")]
    pub ack_wait_ms: u64,
    /// Deliveries in flight at once per node (webhook).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Webhook request timeout.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_on_expiry")]
    pub on_expiry: OnExpiry,
    /// A webhook 4xx other than 408/429: "dlq" (permanent failure) or "retry".
    #[serde(default = "default_on_4xx")]
    pub on_4xx: On4xx,
}

fn default_start() -> GroupStart {
    GroupStart::New
}
fn default_body() -> WebhookBody {
    WebhookBody::Json
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_base() -> u64 {
    1000
}
fn default_backoff_max() -> u64 {
    300_000
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_jitter() -> f64 {
    0.2
}
fn default_ack_wait() -> u64 {
    30_000
}
fn default_concurrency() -> usize {
    16
}
fn default_timeout() -> u64 {
    10_000
}
fn default_on_expiry() -> OnExpiry {
    OnExpiry::Drop
}
fn default_on_4xx() -> On4xx {
    On4xx::Dlq
}

/// Group names: what may appear in one (it becomes part of Redis keys).
pub fn valid_group_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl GroupSpec {
    pub fn validate(&self, limits: &Limits) -> Result<(), String> {
        Topic::parse(self.topic.as_str(), limits.max_topic_bytes).map_err(|e| e.to_string())?;
        if !valid_group_name(&self.name) {
            return Err("name: 1 to 64 ASCII letters, digits, '.', '_' or '-'".into());
        }
        if self.target == TargetKind::Webhook {
            match &self.url {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                    reqwest::Url::parse(u).map_err(|e| format!("url: {e}"))?;
                }
                _ => return Err("url: a webhook group needs an http:// or https:// url".into()),
            }
        }
        if self.max_attempts == 0 || self.max_attempts > 1000 {
            return Err("max_attempts: 1 to 1000".into());
        }
        if self.backoff_base_ms == 0 || self.backoff_max_ms < self.backoff_base_ms {
            return Err("backoff: 0 < backoff_base_ms <= backoff_max_ms".into());
        }
        if !(1.0..=10.0).contains(&self.backoff_multiplier) || !(0.0..=1.0).contains(&self.backoff_jitter) {
            return Err("backoff: multiplier 1 to 10, jitter 0 to 1".into());
        }
        if self.ack_wait_ms < 100 || self.concurrency == 0 || self.concurrency > 10_000 || self.timeout_ms == 0 {
            return Err("ack_wait_ms >= 100, concurrency 1 to 10000, timeout_ms > 0".into());
        }
        Ok(())
    }
}

/// The per-node, per-topic tail tasks that read topics for local subscribers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanoutConfig {
    /// A tail re-reads its topic this often even without hints (catches dropped hints).
    pub position_check_ms: u64,
    /// Messages per read of a tail task.
    pub tail_page: usize,
    /// Messages per read when a subscriber resumes or catches up on its own.
    pub catchup_page: usize,
    /// Most idle sessions a tail writes one message to itself (0: none); the rest are
    /// written by their sessions' writers, in parallel.
    pub direct_writes_per_message: usize,
}

/// WebSocket and SSE sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsConfig {
    pub max_connections: usize,
    pub max_subscriptions: usize,
    pub max_frame_bytes: usize,
    pub outbound_queue_messages: usize,
    pub outbound_queue_bytes: usize,
    pub ping_interval_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_violations: u32,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    pub write_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Public HTTP API.
    pub listen: SocketAddr,
    /// Prometheus `/metrics`, on its own listener so it is never public by accident.
    pub metrics_listen: SocketAddr,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace_ms: u64,
    /// Period of the Redis poll behind the per-group gauges and `streamhub_redis_up`.
    pub metrics_poll_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpawnPolicy {
    /// Start a private redis-server when the URL is the built-in default
    /// ([`DEFAULT_REDIS_URL`]) and nothing answers there.
    Auto,
    /// Start one when the URL is any plain `redis://` URL on a loopback address and
    /// nothing answers there.
    Always,
    /// Never start one.
    Never,
}

/// The built-in `redis.url`: the only URL `spawn = "auto"` starts a Redis for, so a
/// mistyped URL is an error, never a new empty Redis.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Prefix of every key; lets deployments and tests share one Redis.
    pub prefix: String,
    pub spawn: SpawnPolicy,
    pub data_dir: PathBuf,
    pub pool_size: usize,
    /// Upper bound of every command, so a dead Redis is an error, never a hang.
    pub command_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub reconnect_min_ms: u32,
    pub reconnect_max_ms: u32,
    /// For `rediss://` URLs: a PEM file of CA certificates to trust besides the system's.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

/// When a publish is acknowledged (G1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Once the entry is in the primary's stream.
    Stored,
    /// Also once `replicas` replicas confirmed it (Redis WAIT).
    Replicated,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    pub durability: Durability,
    /// Replicas that must confirm a publish when durability = "replicated".
    pub replicas: u32,
    /// Longest wait for those confirmations.
    pub replication_timeout_ms: u64,
    /// Most seqs of one topic that may wait in its staging stream for their replicas
    /// (durability = "replicated"); a publish beyond it answers 503.
    pub max_staged: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Approximate number of messages kept per topic (0 = unbounded).
    pub max_len: u64,
    /// With consumer groups, retention keeps what a group still needs unless the stream
    /// would exceed this many entries (0 = no hard cap).
    pub hard_max_len: u64,
    /// Entries older than this (by their publish time) are trimmed (0 = no age limit).
    pub max_age_ms: u64,
    /// The TTL of a message published without one (0 = none).
    pub default_ttl_ms: u64,
    /// Settings for the topics matching a pattern; the first matching rule wins, and a key
    /// it does not set falls back to the value above.
    #[serde(default)]
    pub topics: Vec<RetentionRule>,
}

/// Retention settings for the topics matching `pattern` (`[[retention.topics]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// A topic pattern: `*` any run of characters, `?` one character.
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ttl_ms: Option<u64>,
}

/// The retention that applies to one topic: its first matching rule over the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TopicRetention {
    pub max_len: u64,
    pub hard_max_len: u64,
    pub max_age_ms: u64,
    pub default_ttl_ms: u64,
}

impl RetentionConfig {
    /// The retention of `topic` (first matching `[[retention.topics]]` rule wins).
    pub fn for_topic(&self, topic: &str) -> TopicRetention {
        let rule = self.topics.iter().find(|r| crate::auth::pattern::matches(&r.pattern, topic));
        TopicRetention {
            max_len: rule.and_then(|r| r.max_len).unwrap_or(self.max_len),
            hard_max_len: self.hard_max_len,
            max_age_ms: rule.and_then(|r| r.max_age_ms).unwrap_or(self.max_age_ms),
            default_ttl_ms: rule.and_then(|r| r.default_ttl_ms).unwrap_or(self.default_ttl_ms),
        }
    }
}

/// A retention pattern: what a topic name may hold, plus `*` and `?`.
fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= crate::topic::MAX_TOPIC_BYTES
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || crate::topic::TOPIC_PUNCTUATION.contains(&b) || b"*?".contains(&b))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    pub window_ms: u64,
}

/// Every size bound of the input, each with a documented outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_body_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_topic_bytes: usize,
    pub max_idempotency_key_bytes: usize,
    pub max_batch_messages: usize,
    pub max_history_limit: usize,
    pub max_topics_listed: usize,
}

/// The reverse proxies (load balancers) in front of this node: only from these peers is
/// the client's address taken from a forwarding header (`gateway::client_addr`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxiesConfig {
    /// Addresses and networks of trusted proxies ([] = none: the TCP peer is the client).
    pub trusted: Vec<ProxyNet>,
    /// The header the trusted proxies append the client's address to.
    pub header: ForwardedHeader,
}

/// Which forwarding header the trusted proxies maintain. Only that one is read: a header
/// the proxy passes through untouched is whatever the client wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: <client>, <proxy1>, …` (nginx, HAProxy, most load balancers).
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=<client>, for=<proxy1>, …`.
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// A trusted proxy's network: an address (`10.0.0.7`, `::1`) or a CIDR (`10.0.0.0/8`,
/// `fd00::/8`) without host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProxyNet(pub ipnet::IpNet);

impl ProxyNet {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl TryFrom<String> for ProxyNet {
    type Error = String;

    fn try_from(text: String) -> Result<ProxyNet, String> {
        let text = text.trim();
        if let Ok(ip) = text.parse::<std::net::IpAddr>() {
            return Ok(ProxyNet(ipnet::IpNet::from(ip.to_canonical())));
        }
        let net: ipnet::IpNet = text.parse().map_err(|_| {
            format!("proxies.trusted: {text:?} is neither an IP address nor a CIDR such as 10.0.0.0/8 or fd00::/8")
        })?;
        if net.trunc() != net {
            return Err(format!("proxies.trusted: {text:?} has host bits set; did you mean {}?", net.trunc()));
        }
        Ok(ProxyNet(net))
    }
}

impl From<ProxyNet> for String {
    fn from(net: ProxyNet) -> String {
        net.0.to_string()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Values given on the command line; they override every other source.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub redis_url: Option<String>,
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub prefix: Option<String>,
}

impl Config {
    /// Defaults, then `file`, then the process environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with_env(file, overrides, Env::prefixed("STREAMHUB__").split("__"))
    }

    fn load_with_env(file: Option<&Path>, overrides: &Overrides, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(env);
        if let Some(url) = &overrides.redis_url {
            figment = figment.merge(Serialized::default("redis.url", url));
        }
        if let Some(addr) = overrides.listen {
            figment = figment.merge(Serialized::default("server.listen", addr.to_string()));
        }
        if let Some(addr) = overrides.metrics_listen {
            figment = figment.merge(Serialized::default("server.metrics_listen", addr.to_string()));
        }
        if let Some(prefix) = &overrides.prefix {
            figment = figment.merge(Serialized::default("redis.prefix", prefix));
        }
        let config: Config = figment.extract().map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The built-in defaults alone (what tests and embedders start from).
    pub fn defaults() -> Config {
        Self::load_with_env(None, &Overrides::default(), Env::prefixed("STREAMHUB_UNUSED_NEVER_SET__"))
            .expect("the embedded default configuration is valid")
    }

    /// Checks every value a type cannot express; the first violation is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| Err(ConfigError::Invalid { key, message: message.to_string() });
        let p = &self.redis.prefix;
        if p.is_empty() || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b)) {
            return invalid("redis.prefix", "1 to 64 bytes of letters, digits, '.', '_', '-' or ':'");
        }
        if ![
            "redis://",
            "rediss://",
            "redis-cluster://",
            "rediss-cluster://",
            "redis-sentinel://",
            "rediss-sentinel://",
            "redis+unix://",
        ]
        .iter()
        .any(|scheme| self.redis.url.starts_with(scheme))
        {
            return invalid(
                "redis.url",
                "must start with redis://, rediss://, redis-cluster://, redis-sentinel:// or redis+unix://",
            );
        }
        if let Err(e) = fred::types::config::Config::from_url(&self.redis.url) {
            return invalid("redis.url", &e.to_string());
        }
        if self.server.metrics_poll_interval_ms < 100 {
            return invalid("server.metrics_poll_interval_ms", "must be >= 100");
        }
        if self.ws.write_timeout_ms == 0 {
            return invalid("ws.write_timeout_ms", "must be > 0 (a write must never wait forever)");
        }
        if self.redis.pool_size == 0 || self.redis.pool_size > 64 {
            return invalid("redis.pool_size", "must be between 1 and 64");
        }
        if self.redis.command_timeout_ms == 0 {
            return invalid("redis.command_timeout_ms", "must be > 0 (a command must never wait forever)");
        }
        if self.redis.connect_timeout_ms == 0 {
            return invalid("redis.connect_timeout_ms", "must be > 0");
        }
        if self.redis.reconnect_min_ms == 0 || self.redis.reconnect_min_ms > self.redis.reconnect_max_ms {
            return invalid("redis.reconnect_min_ms", "must be > 0 and <= reconnect_max_ms");
        }
        if self.publish.max_staged == 0 {
            return invalid("publish.max_staged", "must be >= 1");
        }
        if self.publish.replicas == 0 {
            return invalid("publish.replicas", "must be >= 1");
        }
        if self.publish.durability == Durability::Replicated
            && (self.publish.replication_timeout_ms == 0
                || self.publish.replication_timeout_ms >= self.redis.command_timeout_ms)
        {
            return invalid(
                "publish.replication_timeout_ms",
                "must be > 0 and < redis.command_timeout_ms (WAIT runs inside the command timeout)",
            );
        }
        if self.idempotency.window_ms == 0 {
            return invalid("idempotency.window_ms", "must be > 0");
        }
        for rule in &self.retention.topics {
            if !valid_pattern(&rule.pattern) {
                return invalid(
                    "retention.topics",
                    &format!("pattern {:?}: topic characters, * and ? only (1 to 1024 bytes)", rule.pattern),
                );
            }
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.max_payload_bytes", l.max_payload_bytes),
            ("limits.max_body_bytes", l.max_body_bytes),
            ("limits.max_header_bytes", l.max_header_bytes),
            ("limits.max_idempotency_key_bytes", l.max_idempotency_key_bytes),
            ("limits.max_history_limit", l.max_history_limit),
            ("limits.max_topics_listed", l.max_topics_listed),
        ] {
            if value == 0 {
                return invalid(key, "must be > 0");
            }
        }
        if l.max_topic_bytes == 0 || l.max_topic_bytes > 1024 {
            return invalid("limits.max_topic_bytes", "must be between 1 and 1024");
        }
        if l.max_batch_messages == 0 || l.max_batch_messages > 10_000 {
            return invalid("limits.max_batch_messages", "must be between 1 and 10000");
        }
        if l.max_body_bytes < l.max_payload_bytes {
            return invalid("limits.max_body_bytes", "must be >= limits.max_payload_bytes");
        }
        let f = &self.fanout;
        if f.position_check_ms == 0 {
            return invalid("fanout.position_check_ms", "must be > 0");
        }
        if f.tail_page == 0 || f.tail_page > 10_000 || f.catchup_page == 0 || f.catchup_page > 10_000 {
            return invalid("fanout.tail_page", "tail_page and catchup_page must be between 1 and 10000");
        }
        let w = &self.ws;
        for (key, value) in [
            ("ws.max_connections", w.max_connections),
            ("ws.max_subscriptions", w.max_subscriptions),
            ("ws.outbound_queue_messages", w.outbound_queue_messages),
            ("ws.read_buffer_bytes", w.read_buffer_bytes),
            ("ws.write_buffer_bytes", w.write_buffer_bytes),
        ] {
            if value == 0 {
                return invalid(key, "must be > 0");
            }
        }
        if w.max_frame_bytes < 1024 {
            return invalid("ws.max_frame_bytes", "must be >= 1024");
        }
        if w.outbound_queue_bytes < l.max_payload_bytes {
            return invalid("ws.outbound_queue_bytes", "must be >= limits.max_payload_bytes (one message must fit)");
        }
        if w.outbound_queue_bytes > u32::MAX as usize {
            return invalid("ws.outbound_queue_bytes", "must be < 4 GiB");
        }
        if w.ping_interval_ms == 0 || w.idle_timeout_ms <= w.ping_interval_ms {
            return invalid("ws.idle_timeout_ms", "must be > ws.ping_interval_ms > 0");
        }
        if w.max_violations == 0 {
            return invalid("ws.max_violations", "must be > 0");
        }
        let pr = &self.presence;
        if let Some(bad) = pr.topics.iter().find(|p| !valid_pattern(p)) {
            return invalid("presence.topics", &format!("pattern {bad:?}: topic characters, * and ? only"));
        }
        if pr.refresh_ms == 0 || pr.refresh_ms >= pr.ttl_ms {
            return invalid("presence.refresh_ms", "must be > 0 and < presence.ttl_ms");
        }
        if pr.max_info_bytes == 0 || pr.max_list == 0 || pr.max_status_bytes == 0 {
            return invalid("presence", "max_info_bytes, max_list and max_status_bytes must be > 0");
        }
        let cf = &self.centrifugo;
        for (key, path) in [("centrifugo.path", &cf.path), ("centrifugo.api_prefix", &cf.api_prefix)] {
            let reserved = ["/v1", "/console", "/chat", "/healthz", "/readyz", "/metrics"]
                .iter()
                .any(|r| path == r || path.starts_with(&format!("{r}/")));
            if !path.is_empty()
                && (!path.starts_with('/')
                    || path.len() < 2
                    || path.ends_with('/')
                    || path.contains(['{', '}', '*'])
                    || reserved)
            {
                return invalid(key, "\"\" (off) or a path like /connection/websocket, outside streamhub's own routes");
            }
        }
        if !cf.path.is_empty() && cf.path == cf.api_prefix {
            return invalid("centrifugo.api_prefix", "must differ from centrifugo.path");
        }
        if cf.ping_interval_ms < 1000 || cf.ping_interval_ms % 1000 != 0 {
            return invalid(
                "centrifugo.ping_interval_ms",
                "whole seconds, at least 1000 (clients learn it in seconds)",
            );
        }
        if cf.pong_timeout_ms == 0 {
            return invalid("centrifugo.pong_timeout_ms", "must be > 0");
        }
        let g = &self.groups;
        if g.sweep_interval_ms == 0 || g.discover_interval_ms == 0 || g.max_fetch == 0 || g.max_fetch > 10_000 {
            return invalid("groups.sweep_interval_ms", "sweep_interval_ms > 0 and max_fetch 1 to 10000");
        }
        let h = &self.http;
        if h.publish_rate_per_sec == 0
            || h.connection_rate_per_ip == 0
            || h.max_connections_per_ip == 0
            || h.request_timeout_ms == 0
        {
            return invalid("http", "publish_rate_per_sec, connection_rate_per_ip, max_connections_per_ip and request_timeout_ms must be > 0");
        }
        if self.auth.auth_timeout_ms == 0 {
            return invalid("auth.auth_timeout_ms", "must be > 0");
        }
        if let Err(message) = crate::auth::Auth::new(&self.auth) {
            return Err(ConfigError::Invalid { key: "auth", message });
        }
        let mut seen = std::collections::HashSet::new();
        for spec in &self.group {
            if let Err(message) = spec.validate(&self.limits) {
                return Err(ConfigError::Invalid {
                    key: "group",
                    message: format!("{}/{}: {message}", spec.topic, spec.name),
                });
            }
            if !seen.insert((spec.topic.clone(), spec.name.clone())) {
                return invalid("group", &format!("{}/{} is declared twice", spec.topic, spec.name));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid("log.level", "not a valid tracing filter");
        }
        Ok(())
    }

    /// The effective configuration as TOML, with passwords in URLs masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.redis.url = mask_url_password(&shown.redis.url);
        for g in &mut shown.group {
            if g.secret.is_some() {
                g.secret = Some("***".into());
            }
        }
        for k in &mut shown.auth.hs256 {
            k.secret = "***".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    let masked = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_string() };
    format!("{}{}{}", &url[..scheme_end + 3], masked, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::defaults();
        assert_eq!(c.redis.prefix, "sh");
        assert_eq!(c.limits.max_payload_bytes, 1 << 20);
    }

    #[test]
    fn a_webhook_url_is_checked_when_the_group_is_declared() {
        let spec = |url: &str| -> GroupSpec {
            toml::from_str(&format!("topic = \"orders\"\nname = \"g\"\ntarget = \"webhook\"\nurl = \"{url}\"\n"))
                .expect("a group spec")
        };
        let limits = Config::defaults().limits;
        assert!(spec("http://127.0.0.1:8080/hook").validate(&limits).is_ok());
        let err = spec("http://exa mple.com/hook").validate(&limits).expect_err("a space in the host");
        assert!(err.starts_with("url: "), "{err}");
        let err = spec("http://[::1/hook").validate(&limits).expect_err("an unclosed IPv6 host");
        assert!(err.starts_with("url: "), "{err}");
        let err = spec("ftp://example.com/").validate(&limits).expect_err("not http");
        assert!(err.contains("http:// or https://"), "{err}");
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(mask_url_password("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(mask_url_password("redis://pw@h:1"), "redis://***@h:1");
        assert_eq!(mask_url_password("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn replication_wait_must_fit_inside_the_command_timeout() {
        let mut c = Config::defaults();
        c.publish.durability = Durability::Replicated;
        c.publish.replication_timeout_ms = c.redis.command_timeout_ms;
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { key: "publish.replication_timeout_ms", .. })));
        c.publish.replication_timeout_ms = c.redis.command_timeout_ms - 1;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_first_matching_retention_rule_wins_over_the_defaults() {
        let mut c = Config::defaults();
        c.retention.max_len = 100;
        c.retention.max_age_ms = 0;
        c.retention.default_ttl_ms = 0;
        c.retention.topics = vec![
            RetentionRule {
                pattern: "prices.*".into(),
                max_len: None,
                max_age_ms: Some(60_000),
                default_ttl_ms: Some(30_000),
            },
            RetentionRule { pattern: "prices.eu".into(), max_len: Some(5), max_age_ms: None, default_ttl_ms: None },
            RetentionRule { pattern: "audit?".into(), max_len: Some(0), max_age_ms: None, default_ttl_ms: None },
        ];
        assert!(c.validate().is_ok());
        let r = c.retention.for_topic("prices.eu");
        assert_eq!((r.max_len, r.max_age_ms, r.default_ttl_ms), (100, 60_000, 30_000), "the first rule wins");
        let r = c.retention.for_topic("audit1");
        assert_eq!((r.max_len, r.max_age_ms, r.default_ttl_ms), (0, 0, 0));
        let r = c.retention.for_topic("orders");
        assert_eq!((r.max_len, r.max_age_ms, r.default_ttl_ms), (100, 0, 0), "no rule: the defaults");
        c.retention.topics.push(RetentionRule {
            pattern: "a b".into(),
            max_len: None,
            max_age_ms: None,
            default_ttl_ms: None,
        });
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { key: "retention.topics", .. })));
    }

    #[test]
    fn rejects_bad_prefix() {
        let mut c = Config::defaults();
        c.redis.prefix = "a{b}".into();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { key: "redis.prefix", .. })));
    }
}
