//! `watchword-loadgen compare`: drives a running gateway and a running
//! redis-server back to back with the same scenario, connections and depth,
//! and prints issue and verify throughput for both, the ratio, and p99 at an
//! equal offered rate. With several rounds the closed-loop runs alternate the
//! targets and the table shows medians and the range of the rounds' ratios.
//! ISSUE is compared with both Redis scripts: the store-only `issue.lua` and
//! `issue_queue.lua`, which also queues the message for delivery workers
//! (what Watchword's delivered ISSUE does in one step).
//!
//! It must never start or stop a server (the caller does) and never compare
//! runs made with different connections, depth, duration or scenario.

use crate::hist::fmt_us;
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
    /// ISSUE only: Redis's closed-loop throughput with `issue_queue.lua`
    /// (median over the rounds).
    pub redis_queue_max: Option<f64>,
    /// ISSUE only: Watchword / Redis `issue_queue.lua`, the median of the
    /// rounds' ratios, and their range.
    pub queue_ratio: Option<(f64, (f64, f64))>,
    /// Closed-loop rounds (one run of each target per round).
    pub rounds: usize,
    /// The open-loop comparisons at equal offered rates.
    pub latency: Vec<LatencyPoint>,
    /// The generator's CPU per request in the closed-loop runs (median),
    /// driving Watchword and Redis, µs.
    pub generator_cpu_us: (f64, f64),
    /// Errors in Watchword's runs.
    pub watchword_errors: u64,
    /// Errors in Redis' runs (both scripts).
    pub redis_errors: u64,
}

/// Both targets at one equal offered rate (open loop), over alternated
/// rounds: p99 of response time (from the intended start: what a user
/// waits) and of service time (from the actual send: what the server took).
#[derive(Clone, Debug, Serialize)]
pub struct LatencyPoint {
    /// The rate as a fraction of Redis's closed-loop maximum (0 when given
    /// as a rate).
    pub fraction: f64,
    /// Requests offered per second, to each target.
    pub rate: f64,
    /// Watchword's response-time p99 (median of the rounds), µs.
    pub watchword_response_p99_us: u64,
    /// Watchword's service-time p99 (median of the rounds), µs.
    pub watchword_service_p99_us: u64,
    /// Redis's response-time p99 (median of the rounds), µs.
    pub redis_response_p99_us: u64,
    /// Redis's service-time p99 (median of the rounds), µs.
    pub redis_service_p99_us: u64,
    /// Watchword / Redis response p99: the median of the rounds' ratios
    /// (at most 1 meets the target).
    pub response_ratio: f64,
    /// The same for service time.
    pub service_ratio: f64,
    /// The generator's CPU per request driving each side (median), µs.
    pub generator_cpu_us: (f64, f64),
    /// Rounds (one run of each target per round, the order alternating).
    pub rounds: usize,
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
    /// An equal offered rate for the open-loop comparison; `None`: the
    /// `fractions` of Redis's closed-loop maximum.
    pub equal_rate: Option<f64>,
    /// Fractions of Redis's closed-loop maximum offered to both in open loop.
    pub fractions: Vec<f64>,
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
        "  {:<28} {:<6} depth {:>2} {:<6} answered {:>7.0}/s  ok {:>7.0}/s  p99 {:>9}  service p99 {:>9}  generator {:>5.1} us/req  errors {}",
        r.target,
        op.name(),
        depth,
        r.mode,
        r.requests_rate,
        r.ok_rate,
        fmt_us(r.response.p99_us),
        fmt_us(r.service.p99_us),
        r.generator_cpu_us_per_request,
        if errs.is_empty() {
            "0".to_string()
        } else {
            errs.join(" ")
        }
    );
    Ok(r)
}

/// The medians of paired open-loop runs (run `i` of each side is round `i`).
fn latency_point(
    fraction: f64,
    rate: f64,
    w: &[crate::report::RunReport],
    r: &[crate::report::RunReport],
) -> LatencyPoint {
    let p99 = |v: &[crate::report::RunReport], service: bool| -> Vec<f64> {
        v.iter()
            .map(|x| {
                if service {
                    x.service.p99_us as f64
                } else {
                    x.response.p99_us as f64
                }
            })
            .collect()
    };
    let ratio = |service: bool| {
        let ratios: Vec<f64> = p99(w, service)
            .iter()
            .zip(p99(r, service))
            .map(|(&a, b)| ratio_of(a, b))
            .collect();
        median(&ratios)
    };
    let cpu = |v: &[crate::report::RunReport]| {
        median(
            &v.iter()
                .map(|x| x.generator_cpu_us_per_request)
                .collect::<Vec<_>>(),
        )
    };
    LatencyPoint {
        fraction,
        rate,
        watchword_response_p99_us: median(&p99(w, false)) as u64,
        watchword_service_p99_us: median(&p99(w, true)) as u64,
        redis_response_p99_us: median(&p99(r, false)) as u64,
        redis_service_p99_us: median(&p99(r, true)) as u64,
        response_ratio: ratio(false),
        service_ratio: ratio(true),
        generator_cpu_us: (cpu(w), cpu(r)),
        rounds: w.len().min(r.len()),
    }
}

/// Runs the comparison; progress goes to stderr, the rows come back.
///
/// `redis` issues with the store-only script; ISSUE rows also run
/// `redis_queue` (the same server with `issue_queue.lua`) in every round.
pub async fn compare(
    ww: WatchwordBackend,
    redis: RedisBackend,
    redis_queue: RedisBackend,
    cfg: &CompareConfig,
) -> anyhow::Result<Vec<CompareRow>> {
    let (ww, redis, redis_queue) = (Arc::new(ww), Arc::new(redis), Arc::new(redis_queue));
    let mut rows = Vec::new();
    let settle = || tokio::time::sleep(cfg.settle);
    for &depth in &cfg.depths {
        for &op in &cfg.ops {
            let (mut w_max, mut r_max, mut q_max) = (Vec::new(), Vec::new(), Vec::new());
            let (mut w_cpu, mut r_cpu) = (Vec::new(), Vec::new());
            let (mut w_errors, mut r_errors) = (0, 0);
            for _ in 0..cfg.rounds.max(1) {
                // Every run but the very first follows another.
                if !(rows.is_empty() && w_max.is_empty()) {
                    settle().await;
                }
                let w = one(&ww, &cfg.base, op, depth, Mode::Closed).await?;
                settle().await;
                let r = one(&redis, &cfg.base, op, depth, Mode::Closed).await?;
                if op == Scenario::Issue {
                    settle().await;
                    let q = one(&redis_queue, &cfg.base, op, depth, Mode::Closed).await?;
                    q_max.push(q.ok_rate);
                    r_errors += q.errors;
                }
                w_max.push(w.ok_rate);
                r_max.push(r.ok_rate);
                w_cpu.push(w.generator_cpu_us_per_request);
                r_cpu.push(r.generator_cpu_us_per_request);
                w_errors += w.errors;
                r_errors += r.errors;
            }
            let (watchword_max, redis_max, ratio, ratio_range) = summarize(&w_max, &r_max);
            let (redis_queue_max, queue_ratio) = if q_max.is_empty() {
                (None, None)
            } else {
                let (_, q, ratio, range) = summarize(&w_max, &q_max);
                (Some(q), Some((ratio, range)))
            };
            let points: Vec<(f64, f64)> = match cfg.equal_rate {
                Some(rate) => vec![(0.0, rate)],
                None => cfg
                    .fractions
                    .iter()
                    .map(|&f| (f, (redis_max * f).max(1.0)))
                    .collect(),
            };
            let mut latency = Vec::new();
            for (fraction, rate) in points {
                let mut runs: [Vec<crate::report::RunReport>; 2] = [Vec::new(), Vec::new()];
                for round in 0..cfg.rounds.max(1) {
                    // Alternate who goes first: a machine that slows down
                    // during a round does not always hurt the same side.
                    for side in [round % 2, 1 - round % 2] {
                        settle().await;
                        let mode = Mode::Open { rate };
                        let r = if side == 0 {
                            one(&ww, &cfg.base, op, depth, mode).await?
                        } else {
                            one(&redis, &cfg.base, op, depth, mode).await?
                        };
                        if side == 0 {
                            w_errors += r.errors;
                        } else {
                            r_errors += r.errors;
                        }
                        runs[side].push(r);
                    }
                }
                latency.push(latency_point(fraction, rate, &runs[0], &runs[1]));
            }
            rows.push(CompareRow {
                op: op.name().into(),
                connections: cfg.base.connections,
                depth,
                watchword_max,
                redis_max,
                ratio,
                ratio_range,
                redis_queue_max,
                queue_ratio,
                rounds: w_max.len(),
                latency,
                generator_cpu_us: (median(&w_cpu), median(&r_cpu)),
                watchword_errors: w_errors,
                redis_errors: r_errors,
            });
        }
    }
    Ok(rows)
}

/// The comparison as Markdown: the closed-loop maxima, then the open-loop
/// p99s at equal offered rates.
pub fn table(rows: &[CompareRow]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| op | conns | depth | Watchword ok/s (closed) | Redis ok/s (closed) | ratio | Redis issue_queue.lua ok/s | ratio to issue_queue.lua | generator CPU/request (W/R) | errors (W/R) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (queue_max, queue_ratio) = match (r.redis_queue_max, r.queue_ratio) {
            (Some(q), Some((ratio, range))) => {
                (format!("{q:.0}"), ratio_text(ratio, range, r.rounds))
            }
            _ => ("-".to_string(), "-".to_string()),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.0} | {:.0} | {} | {queue_max} | {queue_ratio} | {:.1} / {:.1} us | {}/{} |",
            r.op,
            r.connections,
            r.depth,
            r.watchword_max,
            r.redis_max,
            ratio_text(r.ratio, r.ratio_range, r.rounds),
            r.generator_cpu_us.0,
            r.generator_cpu_us.1,
            r.watchword_errors,
            r.redis_errors
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| op | depth | offered rate/s | Watchword p99 response (service) | Redis p99 response (service) | p99 ratio W/R response (service) | generator CPU/request (W/R) | rounds |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        for p in &r.latency {
            let share = if p.fraction > 0.0 {
                format!(" ({:.0}% of Redis max)", p.fraction * 100.0)
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {:.0}{share} | {} ({}) | {} ({}) | {:.2}x ({:.2}x) | {:.1} / {:.1} us | {} |",
                r.op,
                r.depth,
                p.rate,
                fmt_us(p.watchword_response_p99_us),
                fmt_us(p.watchword_service_p99_us),
                fmt_us(p.redis_response_p99_us),
                fmt_us(p.redis_service_p99_us),
                p.response_ratio,
                p.service_ratio,
                p.generator_cpu_us.0,
                p.generator_cpu_us.1,
                p.rounds
            );
        }
    }
    o
}

/// A ratio, with the rounds' range when there was more than one.
fn ratio_text(ratio: f64, range: (f64, f64), rounds: usize) -> String {
    if rounds > 1 {
        format!(
            "{ratio:.2}× ({:.2}–{:.2}, {rounds} rounds)",
            range.0, range.1
        )
    } else {
        format!("{ratio:.2}×")
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
