//! `watchword-loadgen compare`: drives a running gateway and a running
//! redis-server back to back with the same scenario, connections and depth,
//! and prints issue and verify throughput for both, the ratio, and p99 at an
//! equal offered rate. With several rounds the closed-loop runs alternate the
//! targets and the table shows medians and the range of the rounds' ratios.
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
    /// Watchword closed-loop throughput (answered without error), per
    /// second: the median over the rounds.
    pub watchword_max: f64,
    /// Redis closed-loop throughput, the same way.
    pub redis_max: f64,
    /// Watchword / Redis: the median of the rounds' ratios (each round's two
    /// runs are back to back, so a round's ratio sees one state of the machine).
    pub ratio: f64,
    /// The lowest and highest round's ratio.
    pub ratio_range: (f64, f64),
    /// Closed-loop rounds (one run of each target per round).
    pub rounds: usize,
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
    /// Closed-loop rounds per row, alternating the targets (at least 1).
    pub rounds: usize,
}

/// The middle value (the mean of the two middle ones for an even count); 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Watchword / Redis for one round; infinite when Redis answered nothing.
fn ratio_of(watchword: f64, redis: f64) -> f64 {
    if redis > 0.0 {
        watchword / redis
    } else {
        f64::INFINITY
    }
}

/// The medians of both sides' maxima, and the median and range of the
/// per-round ratios (round `i` pairs `watchword[i]` with `redis[i]`).
fn summarize(watchword: &[f64], redis: &[f64]) -> (f64, f64, f64, (f64, f64)) {
    let ratios: Vec<f64> = watchword
        .iter()
        .zip(redis)
        .map(|(&w, &r)| ratio_of(w, r))
        .collect();
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (
        median(watchword),
        median(redis),
        median(&ratios),
        (low, high),
    )
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
            let (mut w_max, mut r_max) = (Vec::new(), Vec::new());
            let (mut w_errors, mut r_errors) = (0, 0);
            for _ in 0..cfg.rounds.max(1) {
                // Every run but the very first follows another.
                if !(rows.is_empty() && w_max.is_empty()) {
                    settle().await;
                }
                let w = one(&ww, &cfg.base, op, depth, Mode::Closed).await?;
                settle().await;
                let r = one(&redis, &cfg.base, op, depth, Mode::Closed).await?;
                w_max.push(w.ok_rate);
                r_max.push(r.ok_rate);
                w_errors += w.errors;
                r_errors += r.errors;
            }
            let (watchword_max, redis_max, ratio, ratio_range) = summarize(&w_max, &r_max);
            let rate = cfg
                .equal_rate
                .unwrap_or_else(|| (watchword_max.min(redis_max) / 2.0).max(1.0));
            settle().await;
            let wo = one(&ww, &cfg.base, op, depth, Mode::Open { rate }).await?;
            settle().await;
            let ro = one(&redis, &cfg.base, op, depth, Mode::Open { rate }).await?;
            rows.push(CompareRow {
                op: op.name().into(),
                connections: cfg.base.connections,
                depth,
                watchword_max,
                redis_max,
                ratio,
                ratio_range,
                rounds: w_max.len(),
                equal_rate: rate,
                watchword_at_rate: wo.response,
                redis_at_rate: ro.response,
                watchword_errors: w_errors + wo.errors,
                redis_errors: r_errors + ro.errors,
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
            "| {} | {} | {} | {:.0} | {:.0} | {} | {:.0} | {} | {} | {}/{} |",
            r.op,
            r.connections,
            r.depth,
            r.watchword_max,
            r.redis_max,
            ratio_cell(r),
            r.equal_rate,
            fmt_us(r.watchword_at_rate.p99_us),
            fmt_us(r.redis_at_rate.p99_us),
            r.watchword_errors,
            r.redis_errors
        );
    }
    o
}

/// The ratio, with the rounds' range when there was more than one.
fn ratio_cell(r: &CompareRow) -> String {
    if r.rounds > 1 {
        format!(
            "{:.2}× ({:.2}–{:.2}, {} rounds)",
            r.ratio, r.ratio_range.0, r.ratio_range.1, r.rounds
        )
    } else {
        format!("{:.2}×", r.ratio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_empty_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn the_ratio_is_the_median_of_paired_rounds_not_of_medians() {
        // Round 2 caught the machine slow for both: its pair still says 1.0x.
        let (w, r, ratio, range) = summarize(&[100.0, 50.0, 110.0], &[90.0, 50.0, 100.0]);
        assert_eq!((w, r), (100.0, 90.0));
        assert!((ratio - 1.1).abs() < 1e-9, "{ratio}");
        assert!((range.0 - 1.0).abs() < 1e-9 && (range.1 - 1.111_111).abs() < 1e-5);
        // Redis answering nothing is an infinite ratio, not a division panic.
        let (_, _, ratio, _) = summarize(&[10.0], &[0.0]);
        assert!(ratio.is_infinite());
    }
}
