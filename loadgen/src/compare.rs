//! `watchword-loadgen compare`: drives a running gateway and a running
//! redis-server back to back with the same scenario, connections and depth,
//! and prints issue and verify throughput for both, the ratio, and p99 at an
//! equal offered rate.
//!
//! It must never start or stop a server (the caller does) and never compare
//! runs made with different connections, depth, duration or scenario.

use crate::hist::{Percentiles, fmt_us};
use crate::mix::{Mix, Scenario};
use crate::run::{Mode, RunConfig, run};
use crate::target::{Backend, RedisBackend};
use crate::watchword::WatchwordBackend;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::Arc;

/// One row: one op at one depth, both targets.
#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    /// `issue` or `verify`.
    pub op: String,
    /// Connections.
    pub connections: usize,
    /// Depth per connection.
    pub depth: usize,
    /// Watchword closed-loop throughput (answered without error), per second.
    pub watchword_max: f64,
    /// Redis closed-loop throughput (answered without error), per second.
    pub redis_max: f64,
    /// Watchword / Redis.
    pub ratio: f64,
    /// The equal offered rate of the open-loop runs.
    pub equal_rate: f64,
    /// Watchword's response time at that rate.
    pub watchword_at_rate: Percentiles,
    /// Redis' response time at that rate.
    pub redis_at_rate: Percentiles,
    /// Errors in Watchword's runs.
    pub watchword_errors: u64,
    /// Errors in Redis' runs.
    pub redis_errors: u64,
}

/// Settings of a comparison.
#[derive(Clone, Debug)]
pub struct CompareConfig {
    /// The common run settings (mode and mix are overridden per run).
    pub base: RunConfig,
    /// Depths to measure.
    pub depths: Vec<usize>,
    /// Ops to measure (`issue`, `verify`, `ping`).
    pub ops: Vec<Scenario>,
    /// The equal offered rate; `None` = half the lower of the two maxima.
    pub equal_rate: Option<f64>,
    /// Pause before every run but the first. A closed-loop ISSUE run leaves
    /// Watchword delivering its backlog for a few seconds after the last
    /// answer; without the pause the next run measured that backlog (p99 of
    /// 400 ms at half the maximum rate, where a run on an idle gateway gave 5 ms).
    pub settle: std::time::Duration,
}

async fn one<B: Backend>(
    b: &Arc<B>,
    base: &RunConfig,
    op: Scenario,
    depth: usize,
    mode: Mode,
) -> anyhow::Result<crate::report::RunReport> {
    let cfg = RunConfig {
        mode,
        depth,
        mix: Mix::single(op),
        progress: false,
        salt: None,
        ..base.clone()
    };
    let r = run(b.clone(), cfg).await?;
    let errs: Vec<String> = r
        .errors_by_label()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    eprintln!(
        "  {:<28} {:<6} depth {:>2} {:<6} answered {:>7.0}/s  ok {:>7.0}/s  p99 {:>9}  service p99 {:>9}  errors {}",
        r.target,
        op.name(),
        depth,
        r.mode,
        r.requests_rate,
        r.ok_rate,
        fmt_us(r.response.p99_us),
        fmt_us(r.service.p99_us),
        if errs.is_empty() {
            "0".to_string()
        } else {
            errs.join(" ")
        }
    );
    Ok(r)
}

/// Runs the comparison; progress goes to stderr, the rows come back.
pub async fn compare(
    ww: WatchwordBackend,
    redis: RedisBackend,
    cfg: &CompareConfig,
) -> anyhow::Result<Vec<CompareRow>> {
    let (ww, redis) = (Arc::new(ww), Arc::new(redis));
    let mut rows = Vec::new();
    let settle = || tokio::time::sleep(cfg.settle);
    for &depth in &cfg.depths {
        for &op in &cfg.ops {
            // Every run but the very first follows another.
            if !rows.is_empty() {
                settle().await;
            }
            let w = one(&ww, &cfg.base, op, depth, Mode::Closed).await?;
            settle().await;
            let r = one(&redis, &cfg.base, op, depth, Mode::Closed).await?;
            let rate = cfg
                .equal_rate
                .unwrap_or_else(|| (w.ok_rate.min(r.ok_rate) / 2.0).max(1.0));
            settle().await;
            let wo = one(&ww, &cfg.base, op, depth, Mode::Open { rate }).await?;
            settle().await;
            let ro = one(&redis, &cfg.base, op, depth, Mode::Open { rate }).await?;
            rows.push(CompareRow {
                op: op.name().into(),
                connections: cfg.base.connections,
                depth,
                watchword_max: w.ok_rate,
                redis_max: r.ok_rate,
                ratio: if r.ok_rate > 0.0 {
                    w.ok_rate / r.ok_rate
                } else {
                    f64::INFINITY
                },
                equal_rate: rate,
                watchword_at_rate: wo.response,
                redis_at_rate: ro.response,
                watchword_errors: w.errors + wo.errors,
                redis_errors: r.errors + ro.errors,
            });
        }
    }
    Ok(rows)
}

/// The comparison as a Markdown table.
pub fn table(rows: &[CompareRow]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| op | conns | depth | Watchword ok/s (closed) | Redis ok/s (closed) | ratio | equal offered rate/s | Watchword p99 | Redis p99 | errors (W/R) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.0} | {:.0} | {:.2}× | {:.0} | {} | {} | {}/{} |",
            r.op,
            r.connections,
            r.depth,
            r.watchword_max,
            r.redis_max,
            r.ratio,
            r.equal_rate,
            fmt_us(r.watchword_at_rate.p99_us),
            fmt_us(r.redis_at_rate.p99_us),
            r.watchword_errors,
            r.redis_errors
        );
    }
    o
}
