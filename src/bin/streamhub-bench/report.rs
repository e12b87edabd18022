//! Results: one row per measurement, printed as a table or JSON.

use hdrhistogram::Histogram;
use serde::Serialize;

/// One measured figure set.
#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    /// Operations (messages, deliveries, commands) completed.
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    /// Latency percentiles in microseconds (p50, p90, p99, p99.9), when measured.
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    /// The correctness check of the scenario passed (no loss, no duplicate, in order).
    pub correct: bool,
    pub note: String,
}

impl Row {
    pub fn new(
        scenario: impl Into<String>,
        ops: u64,
        seconds: f64,
        latency: Option<&Histogram<u64>>,
        correct: bool,
        note: impl Into<String>,
    ) -> Row {
        let q = |p: f64| latency.filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(p));
        Row {
            scenario: scenario.into(),
            ops,
            seconds,
            ops_per_sec: if seconds > 0.0 { ops as f64 / seconds } else { 0.0 },
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            correct,
            note: note.into(),
        }
    }
}

pub fn print(rows: &[Row], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(rows).unwrap_or_default());
        return;
    }
    let us = |v: Option<u64>| v.map(|v| format!("{:.2}", v as f64 / 1000.0)).unwrap_or_else(|| "-".into());
    println!(
        "{:<34} {:>10} {:>8} {:>12} {:>9} {:>9} {:>9} {:>9}  {:<7} note",
        "scenario", "ops", "secs", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "correct"
    );
    for r in rows {
        println!(
            "{:<34} {:>10} {:>8.2} {:>12.0} {:>9} {:>9} {:>9} {:>9}  {:<7} {}",
            r.scenario,
            r.ops,
            r.seconds,
            r.ops_per_sec,
            us(r.p50_us),
            us(r.p90_us),
            us(r.p99_us),
            us(r.p999_us),
            if r.correct { "yes" } else { "NO" },
            r.note
        );
    }
}
