//! The `presence` scenario: a join storm and a leave storm of N WebSocket sessions on one
//! topic with presence (a streamhub child process on the Redis of `--redis-url`), with
//! what each costs Redis: commands per join and per leave (INFO commandstats), the time
//! until every node's count is right (presence stats polled over HTTP), and the Redis
//! memory per entry (MEMORY USAGE of the topic's presence keys).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fred::prelude::*;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::report::Row;
use crate::scenarios::{bar, next_json, redis, ws_connect, ChildNode, Limits, Result, Ws};

const TOPIC: &str = "storm";

/// `INFO commandstats` as command → calls.
async fn command_calls(client: &Client) -> Result<HashMap<String, u64>> {
    let info: String = client.info(Some(fred::types::InfoKind::CommandStats)).await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_string(), calls))
        })
        .collect())
}

/// Commands called between two readings, without the readings' own INFO.
fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> (u64, u64) {
    let total = |m: &HashMap<String, u64>| m.iter().filter(|(k, _)| *k != "info").map(|(_, v)| v).sum::<u64>();
    let fcalls = after.get("fcall").copied().unwrap_or(0) - before.get("fcall").copied().unwrap_or(0);
    (total(after) - total(before), fcalls)
}

async fn stats(http: &reqwest::Client, base: &str) -> Result<(u64, u64)> {
    let body: Value = http.get(format!("{base}/v1/topics/{TOPIC}/presence/stats")).send().await?.json().await?;
    Ok((body["clients"].as_u64().unwrap_or(0), body["users"].as_u64().unwrap_or(0)))
}

/// Polls the stats until `done`, every 5 ms, within `deadline`; returns when it held.
async fn until_stats(
    http: &reqwest::Client,
    base: &str,
    deadline: Instant,
    done: impl Fn(u64, u64) -> bool,
) -> Result<Instant> {
    loop {
        let (clients, users) = stats(http, base).await?;
        if done(clients, users) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("presence stats stuck at {clients} clients, {users} users").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn presence(limits: &Limits, sessions: usize, grace_ms: u64) -> Result<Vec<Row>> {
    let extra = format!("[presence]\ntopics = [\"{TOPIC}\"]\ngrace_ms = {grace_ms}\n");
    let node = ChildNode::start_with(limits, "\"subscribe\", \"presence\"", &extra).await?;
    let result = storm(limits, &node, sessions, grace_ms).await;
    node.finish().await?;
    result
}

async fn storm(limits: &Limits, node: &ChildNode, sessions: usize, grace_ms: u64) -> Result<Vec<Row>> {
    let redis = redis(&limits.redis_url).await?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + limits.deadline;
    let memory_before: u64 = redis_used_memory(&redis).await?;
    let calls_before = command_calls(&redis).await?;

    // Join storm: `concurrency` connections at a time, each subscribing with a little info.
    let bar = bar(sessions as u64, "join storm");
    let started = Instant::now();
    let mut sockets: Vec<Ws> = Vec::with_capacity(sessions);
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut next = 0usize;
    use futures::StreamExt;
    while sockets.len() < sessions && Instant::now() < deadline {
        while next < sessions && pending.len() < limits.concurrency.max(1) {
            let base = node.base.clone();
            let n = next;
            pending.push(async move {
                let mut ws = ws_connect(&base).await?;
                let frame = json!({ "op": "subscribe", "id": 1, "topic": TOPIC, "info": { "n": n } });
                ws.send(Message::Text(frame.to_string().into())).await?;
                let reply = next_json(&mut ws).await?;
                if reply["type"] != "subscribed" {
                    return Err(format!("subscribe refused: {reply}").into());
                }
                Ok::<Ws, crate::scenarios::Error>(ws)
            });
            next += 1;
        }
        match pending.next().await {
            Some(ws) => {
                sockets.push(ws?);
                bar.inc(1);
            }
            None => break,
        }
    }
    bar.finish_and_clear();
    let joined = started.elapsed();
    let consistent =
        until_stats(&http, &node.base, deadline, |c, u| c == sessions as u64 && u == sessions as u64).await?;
    let join_consistent = consistent.duration_since(started);
    let calls_joined = command_calls(&redis).await?;
    let (join_commands, join_fcalls) = delta(&calls_before, &calls_joined);

    // Memory per entry: the topic's presence keys, and Redis as a whole.
    let prefix = node.prefix.clone();
    let mut key_bytes = 0u64;
    for suffix in ["pc", "pz", "pu"] {
        let key = format!("{prefix}:{{{TOPIC}}}:{suffix}");
        let bytes: Option<u64> =
            redis.custom(fred::cmd!("MEMORY"), vec!["USAGE".to_string(), key, "SAMPLES".into(), "0".into()]).await?;
        key_bytes += bytes.unwrap_or(0);
    }
    let memory_joined = redis_used_memory(&redis).await?;

    // Leave storm: every session closes; clients go at once, users after the grace period.
    let started = Instant::now();
    for ws in &mut sockets {
        let _ = ws.close(None).await;
    }
    drop(sockets);
    let clients_gone = until_stats(&http, &node.base, deadline, |c, _| c == 0).await?.duration_since(started);
    let users_gone = until_stats(&http, &node.base, deadline, |_, u| u == 0).await?.duration_since(started);
    let calls_left = command_calls(&redis).await?;
    let (leave_commands, leave_fcalls) = delta(&calls_joined, &calls_left);
    redis.quit().await?;

    let n = sessions as f64;
    Ok(vec![
        Row::new(
            "presence join storm",
            sessions as u64,
            joined.as_secs_f64(),
            None,
            true,
            format!(
                "count right on every node {:.0} ms after the first connect; {:.1} Redis commands ({:.2} FCALL) per join; {:.0} B of presence keys per entry ({:.0} B of Redis used_memory)",
                join_consistent.as_secs_f64() * 1000.0,
                join_commands as f64 / n,
                join_fcalls as f64 / n,
                key_bytes as f64 / n,
                memory_joined.saturating_sub(memory_before) as f64 / n,
            ),
        ),
        Row::new(
            "presence leave storm",
            sessions as u64,
            clients_gone.as_secs_f64(),
            None,
            true,
            format!(
                "clients 0 after {:.0} ms, users 0 after {:.0} ms (grace {grace_ms} ms); {:.1} Redis commands ({:.2} FCALL) per leave",
                clients_gone.as_secs_f64() * 1000.0,
                users_gone.as_secs_f64() * 1000.0,
                leave_commands as f64 / n,
                leave_fcalls as f64 / n,
            ),
        ),
    ])
}

async fn redis_used_memory(client: &Client) -> Result<u64> {
    let info: String = client.info(Some(fred::types::InfoKind::Memory)).await?;
    Ok(info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}
