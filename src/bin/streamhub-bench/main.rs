//! `streamhub-bench`: measures streamhub on this machine next to raw Redis doing the same
//! work. It starts its own streamhub node in-process (loopback only, open access, a
//! unique key prefix) against `--redis-url` (default 127.0.0.1:6379), shows a progress
//! bar while it runs, and prints a results table (or `--json`). Every load loop is bounded
//! by a count and a deadline. Correctness is asserted (no loss, no duplicate by seq);
//! speed is reported, never asserted.

mod presence;
mod report;
mod scenarios;

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "streamhub-bench", about = "Load generator for streamhub (loopback only)")]
struct Cli {
    /// Redis to use (must be on this machine).
    #[arg(long, global = true, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Print the results as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Concurrent clients.
    #[arg(long, global = true, default_value_t = 16)]
    concurrency: usize,
    /// Payload size in bytes.
    #[arg(long, global = true, default_value_t = 128)]
    payload: usize,
    /// Messages (or operations) in total.
    #[arg(long, global = true, default_value_t = 20_000)]
    count: u64,
    /// Upper bound of the run, in seconds.
    #[arg(long, global = true, default_value_t = 120)]
    max_seconds: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// HTTP publishes: one message per request, and batches of --batch.
    PublishHttp {
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Run streamhub as a child process (`streamhub serve`, next to this binary): the
        /// rows then tell the server's own CPU per message, apart from this client's.
        #[arg(long)]
        child: bool,
        /// Child nodes serving the same topics (with --child); client worker w publishes
        /// through node w mod N.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Only the single or only the batch row (a longer batch row in the same time).
        #[arg(long, value_enum)]
        only: Option<scenarios::PublishRow>,
        /// Publish over HTTP/2 without TLS (h2c, prior knowledge): the workers' requests
        /// are streams of one connection per node, instead of a keep-alive HTTP/1.1
        /// connection each.
        #[arg(long)]
        h2c: bool,
    },
    /// WebSocket publishes, each awaiting its ack.
    PublishWs,
    /// S WebSocket subscribers over T topics, a publisher at R messages/s for D seconds:
    /// deliveries/s, publish→receive latency, loss and duplicate check.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 10)]
        topics: usize,
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Run streamhub as a child process (`streamhub serve`, next to this binary) rather
        /// than in this process: needed beyond ~9,000 subscribers under a 20,000 open-files
        /// limit, since in-process both ends of every connection count against it. The row
        /// then tells the server's own CPU per delivery.
        #[arg(long)]
        child: bool,
        /// Child nodes serving the same topics (with --child): subscriber i connects to
        /// node i mod N, publishes go round robin; CPU is all nodes' together.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Subscribe over Centrifugo's client protocol (JSON, /connection/websocket)
        /// instead of the native one (docs/CENTRIFUGO.md).
        #[arg(long)]
        centrifugo: bool,
    },
    /// --count preloaded messages consumed and acked by --concurrency workers, per target
    /// (in-process handler, HTTP pull, WebSocket consumer, webhook to a local receiver),
    /// next to raw XREADGROUP + XACK.
    Consume,
    /// A subscriber --count messages behind: catch-up rate.
    Resume,
    /// --count idle WebSocket connections (each subscribed to one topic) to a streamhub
    /// child process: its resident memory per connection.
    Connections,
    /// Raw Redis: XADD un-pipelined and pipelined 16 deep, XRANGE pages.
    Raw,
    /// A join storm and a leave storm of --sessions WebSocket sessions on one topic with
    /// presence (a streamhub child process, --concurrency connecting at a time): Redis
    /// commands per join and leave, time to a consistent count, Redis memory per entry.
    Presence {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// presence.grace_ms of the node (the leave of a user waits this long).
        #[arg(long, default_value_t = 1000)]
        grace_ms: u64,
    },
}

/// mimalloc, not the C library's allocator: see ARCHITECTURE.md §19.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("streamhub-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let limits = scenarios::Limits {
        redis_url: cli.redis_url.clone(),
        concurrency: cli.concurrency.max(1),
        payload: cli.payload,
        count: cli.count.max(1),
        deadline: Duration::from_secs(cli.max_seconds.max(1)),
    };
    let result = runtime.block_on(async {
        match cli.scenario {
            Scenario::PublishHttp { batch, child, nodes, only, h2c } => {
                let how = scenarios::PublishHow { batch: batch.max(1), child, nodes: nodes.max(1), only, h2c };
                scenarios::publish_http(&limits, how).await
            }
            Scenario::PublishWs => scenarios::publish_ws(&limits).await,
            Scenario::Fanout { subscribers, topics, rate, seconds, child, nodes, centrifugo } => {
                let shape = scenarios::Shape {
                    subscribers: subscribers.max(1),
                    topics: topics.max(1),
                    rate: rate.max(1),
                    seconds: seconds.max(1),
                };
                scenarios::fanout(&limits, shape, child, nodes.max(1), centrifugo).await
            }
            Scenario::Resume => scenarios::resume(&limits).await,
            Scenario::Consume => scenarios::consume(&limits).await,
            Scenario::Connections => scenarios::connections(&limits).await,
            Scenario::Raw => scenarios::raw(&limits).await,
            Scenario::Presence { sessions, grace_ms } => presence::presence(&limits, sessions.max(1), grace_ms).await,
        }
    });
    match result {
        Ok(rows) => {
            report::print(&rows, cli.json);
            if rows.iter().any(|r| !r.correct) {
                eprintln!("streamhub-bench: correctness check FAILED (see the table)");
                return std::process::ExitCode::FAILURE;
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("streamhub-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
