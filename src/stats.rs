//! `streamhub stats`: topics, publish rates, consumer groups, lag and dead letters of a
//! running node, read from its admin API (`GET /v1/topics`, `GET /v1/topics/{topic}`,
//! `GET /v1/topics/{topic}/groups`) twice, `interval` apart, and printed as tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

/// What `stats` reads of one topic.
#[derive(Debug, Clone, Deserialize)]
struct TopicRow {
    topic: String,
    epoch: String,
    seq: u64,
    length: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct GroupRow {
    name: String,
    target: String,
    paused: bool,
    exists: bool,
    lag: Option<u64>,
    pending: u64,
    scheduled: u64,
    dead_letters: u64,
    consumers: u64,
    #[serde(default)]
    counters: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
struct TopicsList {
    topics: Vec<String>,
    truncated: bool,
}

#[derive(Debug, Deserialize)]
struct GroupsList {
    groups: Vec<GroupRow>,
}

/// One reading of the node.
struct Sample {
    at: Instant,
    topics: Vec<(TopicRow, Vec<GroupRow>)>,
    truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("invalid --url {0}")]
    Url(String),
    #[error("GET {path}: {source}")]
    Http { path: String, source: reqwest::Error },
    #[error("GET {path}: HTTP {status}: {body}")]
    Status { path: String, status: u16, body: String },
}

struct Admin {
    client: reqwest::Client,
    base: reqwest::Url,
    token: Option<String>,
}

impl Admin {
    /// GET of `segments` under the base URL (each segment percent-encoded).
    async fn get<T: serde::de::DeserializeOwned>(&self, segments: &[&str]) -> Result<T, StatsError> {
        let mut url = self.base.clone();
        url.path_segments_mut().map_err(|_| StatsError::Url(self.base.to_string()))?.pop_if_empty().extend(segments);
        let path = url.path().to_string();
        let mut request = self.client.get(url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let http = |source| StatsError::Http { path: path.clone(), source };
        let response = request.send().await.map_err(http)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(StatsError::Status { path, status: status.as_u16(), body: body.chars().take(300).collect() });
        }
        response.json::<T>().await.map_err(http)
    }

    async fn sample(&self, limit: usize) -> Result<Sample, StatsError> {
        let list: TopicsList = self.get(&["v1", "topics"]).await?;
        let truncated = list.truncated || list.topics.len() > limit;
        let mut topics = Vec::new();
        for name in list.topics.iter().take(limit) {
            let topic: TopicRow = self.get(&["v1", "topics", name]).await?;
            let groups: GroupsList = self.get(&["v1", "topics", name, "groups"]).await?;
            topics.push((topic, groups.groups));
        }
        Ok(Sample { at: Instant::now(), topics, truncated })
    }
}

/// Reads the node twice, `interval` apart, and returns the tables (or JSON).
pub async fn run(
    url: &str,
    token: Option<String>,
    interval: Duration,
    limit: usize,
    json: bool,
) -> Result<String, StatsError> {
    let base = reqwest::Url::parse(url).map_err(|_| StatsError::Url(url.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(StatsError::Url(url.to_string()));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|source| StatsError::Http { path: String::new(), source })?;
    let admin = Admin { client, base, token };
    let before = admin.sample(limit).await?;
    tokio::time::sleep(interval).await;
    let after = admin.sample(limit).await?;
    Ok(if json { to_json(&before, &after) } else { render(&before, &after) })
}

/// Messages per second between two readings of a topic (None across an epoch change).
fn publish_rate(before: Option<&TopicRow>, after: &TopicRow, secs: f64) -> Option<f64> {
    let b = before?;
    (b.epoch == after.epoch && secs > 0.0).then(|| after.seq.saturating_sub(b.seq) as f64 / secs)
}

fn counter_rate(before: Option<&GroupRow>, after: &GroupRow, name: &str, secs: f64) -> Option<f64> {
    let b = before?.counters.get(name).copied().unwrap_or(0);
    let a = after.counters.get(name).copied().unwrap_or(0);
    (secs > 0.0).then(|| a.saturating_sub(b) as f64 / secs)
}

struct Rates<'a> {
    topic: &'a TopicRow,
    publish: Option<f64>,
    groups: Vec<(&'a GroupRow, Option<f64>, Option<f64>)>,
}

fn rates<'a>(before: &'a Sample, after: &'a Sample) -> Vec<Rates<'a>> {
    let secs = after.at.duration_since(before.at).as_secs_f64();
    after
        .topics
        .iter()
        .map(|(topic, groups)| {
            let prior = before.topics.iter().find(|(t, _)| t.topic == topic.topic);
            let groups = groups
                .iter()
                .map(|g| {
                    let was = prior.and_then(|(_, gs)| gs.iter().find(|p| p.name == g.name));
                    (g, counter_rate(was, g, "acked", secs), counter_rate(was, g, "retried", secs))
                })
                .collect();
            Rates { topic, publish: publish_rate(prior.map(|(t, _)| t), topic, secs), groups }
        })
        .collect()
}

fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_string(), |r| format!("{r:.1}"))
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn render(before: &Sample, after: &Sample) -> String {
    let secs = after.at.duration_since(before.at).as_secs_f64();
    let all = rates(before, after);
    let mut out = String::new();
    let topic_rows: Vec<Vec<String>> = all
        .iter()
        .map(|r| {
            vec![
                r.topic.topic.clone(),
                r.topic.seq.to_string(),
                r.topic.length.to_string(),
                rate_text(r.publish),
                r.groups.len().to_string(),
            ]
        })
        .collect();
    let _ = writeln!(out, "topics (rates over {secs:.1} s)");
    out.push_str(&table(&["TOPIC", "SEQ", "LENGTH", "PUBLISH/S", "GROUPS"], &topic_rows));
    if after.truncated {
        let _ = writeln!(out, "(more topics exist; raise --limit or limits.max_topics_listed)");
    }
    let group_rows: Vec<Vec<String>> = all
        .iter()
        .flat_map(|r| {
            r.groups.iter().map(|(g, acked, retried)| {
                let state = match (g.exists, g.paused) {
                    (false, _) => "not created",
                    (true, true) => "paused",
                    (true, false) => "running",
                };
                vec![
                    format!("{}/{}", r.topic.topic, g.name),
                    g.target.clone(),
                    state.to_string(),
                    g.lag.map_or_else(|| "?".to_string(), |l| l.to_string()),
                    g.pending.to_string(),
                    g.scheduled.to_string(),
                    g.dead_letters.to_string(),
                    g.consumers.to_string(),
                    rate_text(*acked),
                    rate_text(*retried),
                ]
            })
        })
        .collect();
    out.push('\n');
    if group_rows.is_empty() {
        out.push_str("no consumer groups\n");
    } else {
        out.push_str("consumer groups\n");
        out.push_str(&table(
            &["GROUP", "TARGET", "STATE", "LAG", "PENDING", "SCHEDULED", "DLQ", "CONSUMERS", "ACKED/S", "RETRIED/S"],
            &group_rows,
        ));
    }
    out
}

fn to_json(before: &Sample, after: &Sample) -> String {
    let secs = after.at.duration_since(before.at).as_secs_f64();
    let topics: Vec<Value> = rates(before, after)
        .iter()
        .map(|r| {
            let groups: Vec<Value> = r
                .groups
                .iter()
                .map(|(g, acked, retried)| {
                    serde_json::json!({
                        "group": g.name, "target": g.target, "exists": g.exists, "paused": g.paused,
                        "lag": g.lag, "pending": g.pending, "scheduled": g.scheduled,
                        "dead_letters": g.dead_letters, "consumers": g.consumers,
                        "acked_per_sec": acked, "retried_per_sec": retried,
                    })
                })
                .collect();
            serde_json::json!({
                "topic": r.topic.topic, "epoch": r.topic.epoch, "seq": r.topic.seq, "length": r.topic.length,
                "publish_per_sec": r.publish, "groups": groups,
            })
        })
        .collect();
    serde_json::json!({ "interval_secs": secs, "truncated": after.truncated, "topics": topics }).to_string()
}
