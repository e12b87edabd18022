//! The `streamhub` command line: `serve`, `dev`, `publish`, `history`, `topics`, `tail`,
//! `groups`, `presence`, `stats`, `dlq`, `hash-key`, `check-config`.
//!
//! `publish`, `history`, `topics`, `groups`, `presence` and `dlq` call the same operations as the
//! server (`crate::ops`), on Redis directly, as the operator (whoever can reach Redis
//! bypasses access control anyway); `tail` and `stats` are clients of a running node.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Overrides};
use crate::message::NewMessage;
use crate::ops::access::{Access, Admin, Grant, PresenceRead, Publish, Subscribe};
use crate::ops::dlq::Selection;
use crate::ops::topics::HistoryRequest;
use crate::ops::{self, Ops};
use crate::server::Server;
use crate::store::Store;
use crate::topic::Topic;
use crate::wire::{DeadLetterOut, HistoryResponse, PublishResult, TopicResponse};

#[derive(Debug, Parser)]
#[command(name = "streamhub", version, about = "A reliable real-time message broker on Redis Streams")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML) laid over the built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Redis URL (overrides redis.url).
    #[arg(long, global = true, value_name = "URL")]
    pub redis_url: Option<String>,
    /// HTTP listen address (overrides server.listen).
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Metrics listen address (overrides server.metrics_listen).
    #[arg(long, global = true, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Redis key prefix (overrides redis.prefix).
    #[arg(long, global = true, value_name = "PREFIX")]
    pub prefix: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker until SIGTERM or Ctrl-C.
    Serve,
    /// A local broker to try streamhub: open to anyone on this machine (it listens on
    /// loopback only), its own redis-server on a free port with its data in --data-dir,
    /// the console, and a generated admin key. Not for production: use `serve`.
    Dev {
        /// Where its Redis data (AOF) and admin key are kept, across runs.
        #[arg(long, value_name = "DIR", default_value = "data/dev")]
        data_dir: PathBuf,
        /// Keep nothing: data in a new temporary directory, removed on exit.
        #[arg(long)]
        temp: bool,
    },
    /// Publish one message to a topic and print its (epoch, seq).
    Publish {
        topic: String,
        /// The payload: literal text, @FILE to read a file, or - to read standard input.
        data: String,
        /// Content type; default: application/json when the data parses as JSON,
        /// text/plain when it is UTF-8 text, application/octet-stream otherwise.
        #[arg(long)]
        content_type: Option<String>,
        /// A message header, NAME=VALUE (repeatable).
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// Time to live in milliseconds.
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// Idempotency key: a repeat within idempotency.window_ms is not stored twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Print a topic's messages after a seq, as JSON (the HTTP history shape).
    History {
        topic: String,
        /// Print messages with seq greater than this.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// List topics (with their position).
    Topics {
        /// At most this many topics.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Follow a topic over the WebSocket API, printing messages as JSON lines;
    /// reconnects with backoff and resumes without a gap.
    Tail {
        topic: String,
        /// Start after this seq (needs --epoch), or "earliest"; default: new messages only.
        #[arg(long)]
        since: Option<String>,
        /// The epoch --since refers to.
        #[arg(long)]
        epoch: Option<String>,
        /// WebSocket URL; default: ws://<server.listen>/v1/ws.
        #[arg(long)]
        url: Option<String>,
        /// Exit after printing this many messages.
        #[arg(long)]
        max_messages: Option<u64>,
        /// Credentials (a JWT or an API key), sent as `?token=`.
        #[arg(long, env = "STREAMHUB_TOKEN")]
        token: Option<String>,
    },
    /// Show a topic's consumer groups: lag, pending, scheduled retries, dead letters.
    Groups { topic: String },
    /// Show who is present on a topic (presence.topics): clients, users, and the members.
    Presence { topic: String },
    /// Print a running node's topics, publish rates, consumer groups, lag and dead
    /// letters as tables, read from its admin API twice, --interval-ms apart.
    Stats {
        /// Base URL of the node's HTTP API; default: http://<server.listen>.
        #[arg(long)]
        url: Option<String>,
        /// An admin API key, sent as `Authorization: Bearer`.
        #[arg(long, env = "STREAMHUB_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Time between the two readings the rates are computed from.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// At most this many topics.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and act on a group's dead-letter queue.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Print the SHA-256 of an API key, for `[[auth.api_key]] sha256` (the key itself is
    /// never stored). Reads the key from standard input when it is "-".
    HashKey { key: String },
    /// Validate the configuration and print it (secrets masked).
    CheckConfig,
    /// Print a JWT signed with an `[[auth.hs256]]` key of the configuration: for
    /// development and tests (the example chat, a client against a dev node). Production
    /// tokens come from your application's login.
    Token {
        /// The subject (`sub`): the user.
        #[arg(long)]
        sub: String,
        /// A topic pattern the token may subscribe to (repeatable).
        #[arg(long)]
        subscribe: Vec<String>,
        /// A topic pattern it may publish to (repeatable).
        #[arg(long)]
        publish: Vec<String>,
        /// A topic pattern it may consume from (repeatable).
        #[arg(long)]
        consume: Vec<String>,
        /// A topic pattern (or `@<user>` pattern) whose presence it may see (repeatable).
        #[arg(long)]
        presence: Vec<String>,
        /// Seconds until it expires.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// The key's kid (when several HS256 keys are configured).
        #[arg(long)]
        kid: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters (oldest first), as JSON lines.
    Ls {
        topic: String,
        group: String,
        /// Start after this dead-letter id.
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Show one dead letter.
    Show { topic: String, group: String, id: String },
    /// Send dead letters back into the group's retry path (fresh attempts).
    Replay {
        #[command(flatten)]
        selection: DlqSelection,
    },
    /// Delete dead letters.
    Purge {
        #[command(flatten)]
        selection: DlqSelection,
    },
}

/// Which dead letters a replay or purge acts on.
#[derive(Debug, Args)]
pub struct DlqSelection {
    topic: String,
    group: String,
    /// Dead-letter ids; none with --all.
    ids: Vec<String>,
    /// Every dead letter (optionally only those whose error contains --error-contains).
    #[arg(long)]
    all: bool,
    #[arg(long)]
    error_contains: Option<String>,
}

/// Parses the command line, runs the command, and turns its outcome into an exit code:
/// 0 success, 1 runtime failure, 2 invalid configuration or usage.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        redis_url: cli.global.redis_url.clone(),
        listen: cli.global.listen,
        metrics_listen: cli.global.metrics_listen,
        prefix: cli.global.prefix.clone(),
    };
    let config = match Config::load(cli.global.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("streamhub: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::HashKey { key } = &cli.command {
        let key = if key == "-" {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("streamhub: cannot read the key from standard input");
                return ExitCode::from(2);
            }
            line.trim_end_matches(['\r', '\n']).to_string()
        } else {
            key.clone()
        };
        println!("{}", crate::auth::hash_api_key(&key));
        return ExitCode::SUCCESS;
    }
    if let Command::CheckConfig = cli.command {
        print!("{}", config.to_masked_toml());
        return ExitCode::SUCCESS;
    }
    if let Command::Token { sub, subscribe, publish, consume, presence, ttl_secs, kid } = &cli.command {
        let grants = crate::auth::jwt::Grants {
            subscribe: subscribe.clone(),
            publish: publish.clone(),
            consume: consume.clone(),
            presence: presence.clone(),
        };
        let exp = crate::clock::now_ms() / 1000 + ttl_secs;
        return match crate::auth::jwt::sign_hs256(&config.auth, kid.as_deref(), sub, &grants, exp) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("streamhub token: {e}");
                ExitCode::from(2)
            }
        };
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("streamhub: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = match cli.command {
        Command::Dev { data_dir, temp } => {
            let dev = DevArgs { data_dir, temp, redis_url: cli.global.redis_url.clone() };
            return match runtime.block_on(dev::run(dev, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(dev::DevError::Usage(e)) => {
                    eprintln!("streamhub dev: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("streamhub dev: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        command => command,
    };
    match runtime.block_on(run(command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streamhub: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter(&config.log.level)));
    // Colour codes only for a person at a terminal, never in files, pipes or CI logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.log.format {
        crate::config::LogFormat::Text => builder.try_init(),
        // Span fields (request_id, conn_id) flattened into every line's `spans` list.
        crate::config::LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
    };
}

/// `log.level`, quieting the Redis client's per-connection warning that it "broadcasts"
/// a closed connection: it fires for every pooled connection when streamhub itself closes
/// them at shutdown (a burst that reports nothing wrong). A lost connection still shows in
/// the failing calls' errors, `/readyz` and `streamhub_redis_up`. Set `log.level` (or
/// `RUST_LOG`) with a `fred` directive to see them.
fn default_filter(level: &str) -> String {
    if level.contains("fred") {
        level.to_string()
    } else {
        format!("{level},fred::router::responses=error")
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// This node's API address as a client reaches it (an unspecified listen address means
/// loopback).
fn local_api(config: &Config) -> SocketAddr {
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// The operations of an offline node: the store (connecting, not waited for), access
/// control, the configured groups (not started). The CLI acts as the operator.
fn offline_ops(config: &Config) -> Result<Ops, Box<dyn std::error::Error>> {
    let store = Store::connect(config)?;
    let auth = crate::auth::Auth::new(&config.auth)?;
    let access = Arc::new(Access::new(auth, &config.http, config.limits.max_topic_bytes));
    let groups = Arc::new(crate::groups::Groups::new(config));
    Ok(Ops::new(store, Arc::new(config.clone()), access, groups, CancellationToken::new()))
}

/// Waits for Redis (at most the connect or command timeout, whichever is longer).
async fn ready(ops: &Ops) -> Result<(), Box<dyn std::error::Error>> {
    let redis = &ops.config().redis;
    let timeout = Duration::from_millis(redis.connect_timeout_ms.max(redis.command_timeout_ms));
    Ok(ops.store().wait_ready(timeout).await?)
}

fn print_json(value: &impl serde::Serialize) -> CliResult {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

async fn run(command: Command, config: Config) -> CliResult {
    match command {
        Command::Serve => serve(config).await,
        Command::Dev { .. } => Ok(()),
        Command::Publish { topic, data, content_type, headers, ttl_ms, idempotency_key } => {
            let ops = offline_ops(&config)?;
            let operator = ops.access().operator();
            let grant = ops.access().grant::<Publish>(&operator, &topic)?;
            let payload = read_data(&data)?;
            let content_type = content_type.unwrap_or_else(|| guess_content_type(&payload).to_string());
            let message =
                NewMessage { payload, content_type, headers: parse_headers(&headers)?, ttl_ms, idempotency_key };
            ready(&ops).await?;
            let published = ops.publish(&operator, &grant, message).await?;
            print_json(&PublishResult::from(published))?;
            ops.store().close().await;
            Ok(())
        }
        Command::History { topic, since, limit } => {
            let ops = offline_ops(&config)?;
            let grant = ops.access().grant::<Subscribe>(&ops.access().operator(), &topic)?;
            ready(&ops).await?;
            let h = ops.history(&grant, &HistoryRequest { since, limit: Some(limit) }).await?;
            let response = HistoryResponse::new(h.page, since, None, h.expired, h.next_since);
            println!("{}", serde_json::to_string_pretty(&response)?);
            ops.store().close().await;
            Ok(())
        }
        Command::Topics { limit } => {
            let ops = offline_ops(&config)?;
            let operator = ops.access().operator();
            ready(&ops).await?;
            for name in ops.list_topics(&operator, Some(limit)).await?.topics {
                let grant = ops.access().grant::<Subscribe>(&operator, &name)?;
                let t = ops.topic_info(&grant).await?;
                print_json(&TopicResponse::new(name, t.info, t.retention, crate::clock::now_ms()))?;
            }
            ops.store().close().await;
            Ok(())
        }
        Command::Tail { topic, since, epoch, url, max_messages, token } => {
            Topic::parse(&topic, config.limits.max_topic_bytes)?;
            let start = match (since.as_deref(), epoch) {
                (None, _) => crate::tail::Start::Now,
                (Some("earliest"), _) => crate::tail::Start::Earliest,
                (Some(seq), Some(epoch)) => crate::tail::Start::After { epoch, seq: seq.parse()? },
                (Some(_), None) => return Err("--since <seq> needs --epoch (or use --since earliest)".into()),
            };
            let url = url.unwrap_or_else(|| format!("ws://{}/v1/ws", local_api(&config)));
            let url = match token {
                Some(t) => {
                    let encoded: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
                    format!("{url}{}token={encoded}", if url.contains('?') { '&' } else { '?' })
                }
                None => url,
            };
            tokio::select! {
                result = crate::tail::follow(&url, &topic, start, max_messages) => result.map_err(Into::into),
                _ = wait_for_signal() => Ok(()),
            }
        }
        Command::Groups { topic } => {
            let ops = offline_ops(&config)?;
            let grant = ops.access().grant::<Admin>(&ops.access().operator(), &topic)?;
            ready(&ops).await?;
            for (name, info) in ops.recorded_groups(&grant).await? {
                let mut line = serde_json::to_value(&info)?;
                line["group"] = serde_json::Value::String(name);
                print_json(&line)?;
            }
            ops.store().close().await;
            Ok(())
        }
        Command::Presence { topic } => {
            let ops = offline_ops(&config)?;
            let grant = ops.access().grant::<PresenceRead>(&ops.access().operator(), &topic)?;
            ready(&ops).await?;
            let p = ops.presence(&grant).await?;
            print_json(&serde_json::json!({
                "topic": topic, "clients": p.clients, "users": p.users, "members": p.members,
            }))?;
            ops.store().close().await;
            Ok(())
        }
        Command::Stats { url, token, interval_ms, limit, json } => {
            let url = url.unwrap_or_else(|| format!("http://{}", local_api(&config)));
            let text = crate::stats::run(&url, token, Duration::from_millis(interval_ms), limit, json).await?;
            println!("{}", text.trim_end());
            Ok(())
        }
        Command::Dlq { action } => dlq(action, &config).await,
        Command::CheckConfig | Command::HashKey { .. } | Command::Token { .. } => Ok(()),
    }
}

/// A progress bar on stderr for a replay or purge.
fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

async fn dlq(action: DlqAction, config: &Config) -> CliResult {
    let ops = offline_ops(config)?;
    let operator = ops.access().operator();
    let (topic, group) = match &action {
        DlqAction::Ls { topic, group, .. } | DlqAction::Show { topic, group, .. } => (topic, group),
        DlqAction::Replay { selection } | DlqAction::Purge { selection } => (&selection.topic, &selection.group),
    };
    let grant = ops.access().grant::<Admin>(&operator, topic)?;
    let group = group.clone();
    ready(&ops).await?;
    match action {
        DlqAction::Ls { after, limit, .. } => {
            for d in ops.dlq_list(&grant, &group, after.as_deref(), Some(limit)).await?.letters {
                print_json(&DeadLetterOut::from(d))?;
            }
        }
        DlqAction::Show { id, .. } => {
            let d = ops.dlq_show(&grant, &group, &id).await?;
            println!("{}", serde_json::to_string_pretty(&DeadLetterOut::from(d))?);
        }
        DlqAction::Replay { selection } => {
            dlq_apply(&ops, &grant, &group, selection, ops::dlq::DlqAction::Replay, "replaying", "replayed").await?
        }
        DlqAction::Purge { selection } => {
            dlq_apply(&ops, &grant, &group, selection, ops::dlq::DlqAction::Purge, "purging", "purged").await?
        }
    }
    ops.store().close().await;
    Ok(())
}

async fn dlq_apply(
    ops: &Ops,
    grant: &Grant<Admin>,
    group: &str,
    selection: DlqSelection,
    action: ops::dlq::DlqAction,
    what: &str,
    key: &str,
) -> CliResult {
    let DlqSelection { ids, all, error_contains, .. } = selection;
    let selection = if ids.is_empty() && all { Selection::All { error_contains } } else { Selection::Ids(ids) };
    let bar = progress_bar(what);
    let done = ops
        .dlq_apply(grant, group, &selection, action, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .await?;
    bar.finish_and_clear();
    print_json(&serde_json::json!({ key: done }))
}

async fn serve(config: Config) -> CliResult {
    let signal = shutdown_signal();
    let server = Server::start(config).await?;
    signal.await;
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives while the node is
/// still starting (or printing its banner) is not lost to the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, interrupt) {
                (Some(mut term), Some(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn wait_for_signal() {
    shutdown_signal().await
}

fn read_data(data: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    if data == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        Ok(buf)
    } else if let Some(path) = data.strip_prefix('@') {
        std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}").into())
    } else {
        Ok(data.as_bytes().to_vec())
    }
}

fn guess_content_type(payload: &[u8]) -> &'static str {
    if serde_json::from_slice::<serde_json::Value>(payload).is_ok() {
        "application/json"
    } else if std::str::from_utf8(payload).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

fn parse_headers(pairs: &[String]) -> Result<BTreeMap<String, String>, ConfigError> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| ConfigError::Parse(format!("--header {pair:?}: expected NAME=VALUE")))
        })
        .collect()
}

/// The arguments of `streamhub dev`.
struct DevArgs {
    data_dir: PathBuf,
    temp: bool,
    /// `--redis-url`, when given: use that Redis instead of starting one.
    redis_url: Option<String>,
}

mod dev;
