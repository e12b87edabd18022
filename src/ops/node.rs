//! The node's own figures, for operators (`GET /v1/node`, the console's node page):
//! sessions, subscriptions, deliveries, delivery-lag percentiles, publishes, Redis health
//! and the process — what this node counted itself, plus one PING and one INFO of Redis.

use std::time::Instant;

use serde::Serialize;

use super::access::Caller;
use super::Ops;
use crate::error::Result;
use crate::metrics::{self, NodeFigures, ProcessFigures};

/// What only the transport knows of this node's sessions (it holds the connection
/// semaphore and the tail tasks).
#[derive(Debug, Clone, Copy)]
pub struct Local {
    /// Open WebSocket and SSE sessions.
    pub sessions: usize,
    /// `ws.max_connections`.
    pub max_sessions: usize,
    /// Tail tasks (one per topic with local subscribers).
    pub tails: usize,
}

/// Redis as this node sees it right now.
#[derive(Debug, Clone, Serialize)]
pub struct RedisHealth {
    /// A PING was answered just now.
    pub up: bool,
    /// Its round trip, milliseconds (when answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_ms: Option<f64>,
    /// Why it was not answered (a message fit for operators; never a password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node's Redis URL, password masked.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_clients: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxmemory_bytes: Option<u64>,
}

/// Delivery-lag quantiles since the process started, seconds (None before the first
/// delivery).
#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// The answer of `GET /v1/node`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub version: &'static str,
    /// Server time of this report, ms since the Unix epoch (rates are differences of two
    /// reports divided by the difference of their `now_ms`).
    pub now_ms: u64,
    pub sessions: usize,
    pub max_sessions: usize,
    pub tails: usize,
    #[serde(flatten)]
    pub figures: NodeFigures,
    pub delivery_lag_quantiles: Quantiles,
    pub redis: RedisHealth,
    pub process: ProcessFigures,
}

fn number(info: &std::collections::BTreeMap<String, String>, field: &str) -> Option<u64> {
    info.get(field).and_then(|v| v.parse().ok())
}

impl Ops {
    /// This node's figures (admin). Reads Redis twice (PING, INFO); never fails because
    /// Redis is down — that is part of the report.
    pub async fn node(&self, caller: &Caller, local: Local) -> Result<NodeReport> {
        self.access.require_admin(caller)?;
        let started = Instant::now();
        let ping = self.store.ping().await;
        let ping_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut redis = RedisHealth {
            up: ping.is_ok(),
            ping_ms: ping.is_ok().then_some(ping_ms),
            error: ping.err().map(|e| e.to_string()),
            url: crate::config::mask_url_password(&self.config.redis.url),
            version: None,
            role: None,
            uptime_seconds: None,
            connected_clients: None,
            used_memory_bytes: None,
            maxmemory_bytes: None,
        };
        if redis.up {
            match self.store.server_info().await {
                Ok(info) => {
                    redis.version = info.get("redis_version").cloned();
                    redis.role = info.get("role").cloned();
                    redis.uptime_seconds = number(&info, "uptime_in_seconds");
                    redis.connected_clients = number(&info, "connected_clients");
                    redis.used_memory_bytes = number(&info, "used_memory");
                    redis.maxmemory_bytes = number(&info, "maxmemory");
                }
                Err(e) => redis.error = Some(e.to_string()),
            }
        }
        let figures = metrics::figures();
        let buckets = &figures.delivery_lag.buckets;
        let delivery_lag_quantiles = Quantiles {
            p50: metrics::quantile(buckets, 0.5),
            p90: metrics::quantile(buckets, 0.9),
            p99: metrics::quantile(buckets, 0.99),
        };
        Ok(NodeReport {
            version: env!("CARGO_PKG_VERSION"),
            now_ms: crate::clock::now_ms(),
            sessions: local.sessions,
            max_sessions: local.max_sessions,
            tails: local.tails,
            figures,
            delivery_lag_quantiles,
            redis,
            process: metrics::process(),
        })
    }
}
