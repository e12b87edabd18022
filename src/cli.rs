//! The `streamhub` command line: `serve`, `publish`, `history`, `topics`, `tail`, `groups`,
//! `dlq`, `check-config`.
//!
//! `publish`, `history` and `topics` talk to Redis directly through the store (the same
//! functions the server calls, so the same guarantees); they are operator tools.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError, Overrides};
use crate::gateway::protocol::{HistoryResponse, PublishResult, TopicResponse};
use crate::message::NewMessage;
use crate::server::Server;
use crate::store::Store;
use crate::topic::Topic;

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
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("streamhub: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streamhub: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.log.format {
        crate::config::LogFormat::Text => builder.try_init(),
        // Span fields (request_id, conn_id) flattened into every line's `spans` list.
        crate::config::LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
    };
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

async fn run(command: Command, config: Config) -> CliResult {
    match command {
        Command::Serve => serve(config).await,
        Command::Publish { topic, data, content_type, headers, ttl_ms, idempotency_key } => {
            let topic = Topic::parse(&topic, config.limits.max_topic_bytes)?;
            let payload = read_data(&data)?;
            let content_type = content_type.unwrap_or_else(|| guess_content_type(&payload).to_string());
            let headers = parse_headers(&headers)?;
            let message =
                NewMessage { payload, content_type, headers, ttl_ms, idempotency_key }.check(&config.limits)?;
            let store = ready_store(&config).await?;
            let published = store.publish(&topic, vec![message]).await?;
            for p in published {
                println!("{}", serde_json::to_string(&PublishResult::from(p))?);
            }
            store.close().await;
            Ok(())
        }
        Command::History { topic, since, limit } => {
            let topic = Topic::parse(&topic, config.limits.max_topic_bytes)?;
            let store = ready_store(&config).await?;
            let page = store.read_since(&topic, since, limit.min(config.limits.max_history_limit)).await?;
            println!("{}", serde_json::to_string_pretty(&HistoryResponse::new(page, since, None))?);
            store.close().await;
            Ok(())
        }
        Command::Topics { limit } => {
            let store = ready_store(&config).await?;
            for name in store.list_topics(limit.min(config.limits.max_topics_listed)).await? {
                let topic = Topic::parse(&name, usize::MAX)?;
                let info = store.topic_info(&topic).await?;
                println!("{}", serde_json::to_string(&TopicResponse::new(name, info))?);
            }
            store.close().await;
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
                    // Percent-encode everything but the unreserved characters.
                    let encoded: String = t
                        .bytes()
                        .map(|b| match b {
                            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                                (b as char).to_string()
                            }
                            _ => format!("%{b:02X}"),
                        })
                        .collect();
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
            let topic = Topic::parse(&topic, config.limits.max_topic_bytes)?;
            let store = ready_store(&config).await?;
            for name in store.topic_groups(&topic).await? {
                let i = store.group_info(&topic, &name).await?;
                let line = serde_json::json!({
                    "group": name, "lag": i.lag, "pending": i.pending, "scheduled": i.scheduled,
                    "retry_ready": i.retry_ready, "dead_letters": i.dead_letters, "consumers": i.consumers,
                    "counters": i.counters,
                });
                println!("{line}");
            }
            store.close().await;
            Ok(())
        }
        Command::Stats { url, token, interval_ms, limit, json } => {
            let url = url.unwrap_or_else(|| format!("http://{}", local_api(&config)));
            let text = crate::stats::run(&url, token, Duration::from_millis(interval_ms), limit, json).await?;
            println!("{}", text.trim_end());
            Ok(())
        }
        Command::Dlq { action } => dlq(action, &config).await,
        Command::CheckConfig | Command::HashKey { .. } => Ok(()),
    }
}

fn dead_letter_json(d: crate::store::groups::DeadLetter) -> serde_json::Value {
    let message =
        crate::gateway::protocol::MessageOut::from(crate::store::StoredMessage { seq: d.seq, envelope: d.envelope });
    serde_json::json!({
        "id": d.id, "seq": d.seq, "attempts": d.attempts, "error": d.error, "dead_ms": d.dead_ms,
        "reason": d.reason, "message": message,
    })
}

/// All dead-letter ids of a group, optionally filtered by error text.
async fn all_dead_letters(
    store: &Store,
    topic: &Topic,
    group: &str,
    needle: Option<&str>,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.dlq_list(topic, group, after.as_deref(), 1000).await?;
        let Some(last) = page.last().map(|d| d.id.clone()) else { break };
        ids.extend(page.into_iter().filter(|d| needle.is_none_or(|n| d.error.contains(n))).map(|d| d.id));
        after = Some(last);
    }
    Ok(ids)
}

async fn select_ids(
    store: &Store,
    topic: &Topic,
    group: &str,
    ids: Vec<String>,
    all: bool,
    needle: Option<&str>,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    if !ids.is_empty() {
        Ok(ids)
    } else if all {
        all_dead_letters(store, topic, group, needle).await
    } else {
        Err("give dead-letter ids, or --all".into())
    }
}

/// Runs `act` over `ids` in chunks of 100 with a progress bar on stderr; returns the sum.
async fn in_chunks(
    ids: &[String],
    what: &str,
    act: impl AsyncFn(&[String]) -> crate::store::Result<u64>,
) -> Result<u64, Box<dyn std::error::Error>> {
    let bar = indicatif::ProgressBar::new(ids.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    let mut done = 0;
    for chunk in ids.chunks(100) {
        done += act(chunk).await?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(done)
}

/// The topic, group and dead-letter ids a selection names.
async fn resolve(
    store: &Store,
    config: &Config,
    selection: DlqSelection,
) -> Result<(Topic, String, Vec<String>), Box<dyn std::error::Error>> {
    let DlqSelection { topic, group, ids, all, error_contains } = selection;
    let topic = Topic::parse(&topic, config.limits.max_topic_bytes)?;
    let ids = select_ids(store, &topic, &group, ids, all, error_contains.as_deref()).await?;
    Ok((topic, group, ids))
}

async fn dlq(action: DlqAction, config: &Config) -> CliResult {
    let store = ready_store(config).await?;
    let topic_of = |t: &str| Topic::parse(t, config.limits.max_topic_bytes);
    match action {
        DlqAction::Ls { topic, group, after, limit } => {
            let topic = topic_of(&topic)?;
            for d in store.dlq_list(&topic, &group, after.as_deref(), limit.clamp(1, 10_000)).await? {
                println!("{}", dead_letter_json(d));
            }
        }
        DlqAction::Show { topic, group, id } => {
            let topic = topic_of(&topic)?;
            let (ms, n) = id.split_once('-').ok_or("a dead-letter id looks like 1700000000000-0")?;
            let (ms, n): (u64, u64) = (ms.parse()?, n.parse()?);
            // The entry right after the id just before it is the id itself, if it exists.
            let before =
                if n == 0 { format!("{}-{}", ms.saturating_sub(1), u64::MAX) } else { format!("{ms}-{}", n - 1) };
            let found = store.dlq_list(&topic, &group, Some(&before), 1).await?.into_iter().find(|d| d.id == id);
            let d = found.ok_or_else(|| format!("no dead letter {id}"))?;
            println!("{}", serde_json::to_string_pretty(&dead_letter_json(d))?);
        }
        DlqAction::Replay { selection } => {
            let (topic, group, ids) = resolve(&store, config, selection).await?;
            let done =
                in_chunks(&ids, "replaying", async |chunk| store.dlq_replay(&topic, &group, chunk).await).await?;
            println!("{}", serde_json::json!({ "replayed": done }));
        }
        DlqAction::Purge { selection } => {
            let (topic, group, ids) = resolve(&store, config, selection).await?;
            let done = in_chunks(&ids, "purging", async |chunk| store.dlq_purge(&topic, &group, chunk).await).await?;
            println!("{}", serde_json::json!({ "purged": done }));
        }
    }
    store.close().await;
    Ok(())
}

async fn ready_store(config: &Config) -> Result<Store, Box<dyn std::error::Error>> {
    let store = Store::connect(config)?;
    store
        .wait_ready(Duration::from_millis(config.redis.connect_timeout_ms.max(config.redis.command_timeout_ms)))
        .await?;
    Ok(store)
}

async fn serve(config: Config) -> CliResult {
    let server = Server::start(config).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
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
