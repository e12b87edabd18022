//! Building the fred connection pool from `[redis]`: timeouts, reconnection, topology.

use std::time::Duration;

use fred::clients::{Client, Pool};
use fred::interfaces::ClientLike;
use fred::types::config::{Config as FredConfig, ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use fred::types::Builder;

use super::{Result, StoreError};
use crate::config::RedisConfig;

/// A pool of `pool_size` multiplexed connections. Standalone, Sentinel and Cluster URLs
/// are all accepted (fred picks the topology from the URL scheme).
///
/// * every command is bounded by `command_timeout_ms` (fred's default command timeout),
///   so a dead Redis yields an error, never a hang;
/// * a lost connection is re-established forever with exponential backoff between
///   `reconnect_min_ms` and `reconnect_max_ms`; the first connection is retried the same
///   way (`fail_fast = false`), so streamhub can start before Redis.
pub(super) fn pool(config: &RedisConfig) -> Result<Pool> {
    let pool = builder(config)?.build_pool(config.pool_size).map_err(|e| StoreError::Redis(e.to_string()))?;
    for client in pool.clients() {
        count_reconnects(client, "pool");
    }
    pool.connect();
    Ok(pool)
}

/// One dedicated connection (Pub/Sub hints, blocking reads), configured like the pool;
/// `connection` labels its reconnects.
pub(super) fn client(config: &RedisConfig, connection: &'static str) -> Result<Client> {
    let client = unconnected(config, connection)?;
    client.connect();
    Ok(client)
}

/// A dedicated client not yet connected: its owner subscribes to its events first (a
/// notice sent before anyone listens is lost), then calls `connect`.
pub(super) fn unconnected(config: &RedisConfig, connection: &'static str) -> Result<Client> {
    let client = builder(config)?.build().map_err(|e| StoreError::Redis(e.to_string()))?;
    count_reconnects(&client, connection);
    Ok(client)
}

/// Counts `client`'s reconnections in `streamhub_redis_reconnects_total`. Called before
/// `connect`, so the first notice (fred sends one on the first connection too) is skipped.
fn count_reconnects(client: &Client, connection: &'static str) {
    use fred::interfaces::EventInterface;
    let mut notices = client.reconnect_rx();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let mut first = true;
            loop {
                match notices.recv().await {
                    Ok(_) if first => first = false,
                    Ok(_) => crate::metrics::redis_reconnected(connection),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

/// A rustls connector trusting the system's CA certificates and those in `ca_file`.
fn tls_with_ca(ca_file: &std::path::Path) -> Result<fred::types::config::TlsConnector> {
    use fred::rustls::pki_types::pem::PemObject;
    use fred::rustls::pki_types::CertificateDer;
    use fred::rustls::{ClientConfig, RootCertStore};
    let bad = |e: String| StoreError::Redis(format!("redis.tls_ca_file {}: {e}", ca_file.display()));
    let mut roots = RootCertStore::empty();
    // The system's roots are best effort; the configured file must load.
    for cert in fred::rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let mut loaded = 0;
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(e.to_string()))? {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
        loaded += 1;
    }
    if loaded == 0 {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(ClientConfig::builder().with_root_certificates(roots).with_no_client_auth().into())
}

/// One connection to the cluster node `server` alone (centralized: fred follows no
/// redirection and reconnects only to it), configured like the pool; see `shards.rs`.
/// `connection` labels its reconnects.
pub(super) fn node_client(
    config: &RedisConfig,
    server: &fred::types::config::Server,
    connection: &'static str,
) -> Result<Client> {
    let client = node_unconnected(config, server, connection)?;
    client.connect();
    Ok(client)
}

/// `node_client`, not yet connected (see `unconnected`).
pub(super) fn node_unconnected(
    config: &RedisConfig,
    server: &fred::types::config::Server,
    connection: &'static str,
) -> Result<Client> {
    let mut fred_config = fred_config(config)?;
    fred_config.server = fred::types::config::ServerConfig::Centralized { server: server.clone() };
    let client = builder_from(config, fred_config)?.build().map_err(|e| StoreError::Redis(e.to_string()))?;
    count_reconnects(&client, connection);
    Ok(client)
}

fn fred_config(config: &RedisConfig) -> Result<FredConfig> {
    let mut fred_config =
        FredConfig::from_url(&config.url).map_err(|e| StoreError::Redis(format!("redis.url: {e}")))?;
    fred_config.fail_fast = false;
    if let Some(ca_file) = &config.tls_ca_file {
        if fred_config.tls.is_some() {
            fred_config.tls = Some(tls_with_ca(ca_file)?.into());
        }
    }
    Ok(fred_config)
}

fn builder(config: &RedisConfig) -> Result<Builder> {
    builder_from(config, fred_config(config)?)
}

fn builder_from(config: &RedisConfig, fred_config: FredConfig) -> Result<Builder> {
    let timeout = Duration::from_millis(config.command_timeout_ms);
    let connection = ConnectionConfig {
        connection_timeout: Duration::from_millis(config.connect_timeout_ms),
        internal_command_timeout: timeout,
        // A command whose connection dropped is not resent: a publish that may already
        // have run must not run twice. The caller gets an error (HTTP 503) and retries,
        // ideally with an idempotency key.
        max_command_attempts: 1,
        // Commands are small writes pipelined on few connections: Nagle's algorithm would
        // hold one behind the acknowledgement of the previous (up to a delayed-ACK timer).
        tcp: fred::types::config::TcpConfig { nodelay: Some(true), ..Default::default() },
        ..ConnectionConfig::default()
    };
    // Pub/Sub notices are drained by one task; a burst larger than this is reported as
    // lagged and handled by re-reading every watched topic.
    let performance = PerformanceConfig {
        default_command_timeout: timeout,
        broadcast_channel_capacity: 4096,
        ..PerformanceConfig::default()
    };
    let mut builder = Builder::from_config(fred_config);
    builder
        .set_connection_config(connection)
        .set_performance_config(performance)
        .set_policy(ReconnectPolicy::new_exponential(0, config.reconnect_min_ms, config.reconnect_max_ms, 2));
    Ok(builder)
}

/// What a plain TCP connection to the configured Redis found.
pub(super) enum Diagnosis {
    /// It could not connect: why ("connection refused (127.0.0.1:1)", a name that does
    /// not resolve, no answer in time).
    Refused(String),
    /// It connects, so Redis itself did not answer: a guess at why.
    Accepts(String),
}

/// Why nothing answers at the configured Redis: what a plain TCP connection to its
/// (first) host answers, for error messages. Never the password.
pub(super) async fn diagnose(config: &RedisConfig, timeout: Duration) -> Diagnosis {
    let Ok(fred_config) = FredConfig::from_url(&config.url) else {
        return Diagnosis::Refused("the URL does not parse".into());
    };
    let Some(server) = fred_config.server.hosts().into_iter().next() else {
        return Diagnosis::Refused("the URL names no host".into());
    };
    let target = format!("{}:{}", server.host, server.port);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&target)).await {
        Err(_) => Diagnosis::Refused(format!("no answer from {target} within {timeout:?} (a firewall, or no route)")),
        Ok(Err(e)) => {
            let text = e.to_string();
            let text = text.split(" (os error").next().unwrap_or(&text).to_lowercase();
            Diagnosis::Refused(format!("{text} ({target})"))
        }
        Ok(Ok(_)) => Diagnosis::Accepts(format!(
            "{target} accepts connections but did not answer as Redis in time (a password, TLS (rediss://), or a \
             server still loading?)"
        )),
    }
}
