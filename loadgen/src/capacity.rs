//! Capacity search: find the maximum with a closed-loop run, then sweep
//! open-loop rates from 10% to 100% of it and report the sustainable throughput,
//! the highest offered rate that meets every SLO (and that the target kept up
//! with, with at most 1% errors).
//!
//! The search logic is generic over a [`Probe`] so it can be tested on a
//! synthetic model. It must never call a rate sustainable on the strength of a
//! closed-loop run (closed loops hide queueing) or of a run that fell behind.

use crate::hist::Percentiles;
use crate::slo::Slo;
use serde::Serialize;
use std::future::Future;

/// What one open-loop run at a given rate measured.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    /// Offered rate, per second.
    pub offered: f64,
    /// Achieved rate, per second.
    pub achieved: f64,
    /// Response-time spectrum.
    pub response: Percentiles,
    /// Requests completed.
    pub requests: u64,
    /// Of those, failed.
    pub errors: u64,
}

/// Something the search can measure.
pub trait Probe {
    /// The closed-loop maximum throughput, per second.
    fn closed_max(&mut self) -> impl Future<Output = anyhow::Result<f64>>;
    /// One open-loop run at `rate`.
    fn open(&mut self, rate: f64) -> impl Future<Output = anyhow::Result<ProbeResult>>;
}

/// One point of the sweep.
#[derive(Clone, Debug, Serialize)]
pub struct CapacityPoint {
    /// The measurement.
    #[serde(flatten)]
    pub result: ProbeResult,
    /// Every SLO held.
    pub meets_slo: bool,
    /// Achieved at least 99% of offered.
    pub kept_up: bool,
    /// At most 1% of requests failed.
    pub few_errors: bool,
}

impl CapacityPoint {
    /// True when this rate is sustainable.
    pub fn ok(&self) -> bool {
        self.meets_slo && self.kept_up && self.few_errors
    }
}

/// The result of a capacity search.
#[derive(Clone, Debug, Serialize)]
pub struct CapacityReport {
    /// The SLO, as text.
    pub slo: String,
    /// Closed-loop maximum, per second.
    pub closed_max: f64,
    /// The sweep, in increasing offered rate.
    pub points: Vec<CapacityPoint>,
    /// Highest sustainable offered rate, if any point was.
    pub sustainable: Option<f64>,
    /// When no rate was sustainable: by how much the lowest rate missed,
    /// and what to try.
    pub advice: Option<String>,
}

/// What to say when no swept rate met the SLO: how far the lowest rate
/// missed each objective, whether it fell behind or failed, and what to
/// try (a finer sweep reaching lower rates, or the SLO that rate met).
pub fn advice(lowest: &CapacityPoint, slo: &Slo, closed_max: f64, steps: u32) -> String {
    use crate::hist::fmt_us;
    let r = &lowest.result;
    let mut missed = Vec::new();
    let mut met = Vec::new();
    for o in &slo.0 {
        let got = r.response.at(o.quantile);
        let limit = o.limit.as_micros() as u64;
        if u128::from(got) > o.limit.as_micros() {
            missed.push(format!(
                "{} was {} against {} ({:.1}x)",
                o.name,
                fmt_us(got),
                fmt_us(limit),
                got as f64 / limit.max(1) as f64
            ));
        }
        met.push(format!("{}={}us", o.name, got.max(1)));
    }
    let mut why = missed;
    if !lowest.kept_up {
        why.push(format!(
            "it achieved {:.0}/s of the {:.0}/s offered",
            r.achieved, r.offered
        ));
    }
    if !lowest.few_errors {
        why.push(format!("{} of {} requests failed", r.errors, r.requests));
    }
    format!(
        "no swept rate met the SLO. At the lowest, {:.0}/s ({:.0}% of the closed-loop max): {}.\n\
         Try: --steps {} (the sweep then starts at {:.1}% of the max), or the SLO that rate met: --slo {}",
        r.offered,
        100.0 * r.offered / closed_max.max(1e-9),
        why.join("; "),
        steps.saturating_mul(4),
        100.0 / f64::from(steps.saturating_mul(4).max(1)),
        met.join(",")
    )
}

/// Judges one measurement against the SLO.
pub fn judge(result: ProbeResult, slo: &Slo) -> CapacityPoint {
    CapacityPoint {
        meets_slo: slo.met_by(&result.response),
        kept_up: result.achieved >= 0.99 * result.offered,
        few_errors: result.errors * 100 <= result.requests,
        result,
    }
}

/// Runs the search: the closed-loop max, then `steps` open-loop rates from
/// `max/steps` to `max`, stopping after two failing rates in a row.
pub async fn find_capacity<P: Probe>(
    probe: &mut P,
    slo: &Slo,
    steps: u32,
) -> anyhow::Result<CapacityReport> {
    let steps = steps.max(1);
    let max = probe.closed_max().await?;
    anyhow::ensure!(max > 0.0, "the closed-loop run completed nothing");
    let mut points = Vec::new();
    let mut fails_in_a_row = 0;
    for k in 1..=steps {
        let rate = max * f64::from(k) / f64::from(steps);
        let p = judge(probe.open(rate).await?, slo);
        if p.ok() {
            fails_in_a_row = 0;
        } else {
            fails_in_a_row += 1;
        }
        points.push(p);
        if fails_in_a_row >= 2 {
            break;
        }
    }
    let sustainable = points
        .iter()
        .filter(|p| p.ok())
        .map(|p| p.result.offered)
        .fold(None, |a: Option<f64>, r| Some(a.map_or(r, |a| a.max(r))));
    let advice = match (sustainable, points.first()) {
        (None, Some(lowest)) => Some(advice(lowest, slo, max, steps)),
        _ => None,
    };
    Ok(CapacityReport {
        slo: slo.to_string(),
        closed_max: max,
        points,
        sustainable,
        advice,
    })
}

impl CapacityReport {
    /// A human-readable table.
    pub fn to_text(&self) -> String {
        use crate::hist::fmt_us;
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "closed-loop max {:.0}/s; SLO {}",
            self.closed_max, self.slo
        );
        let _ = writeln!(
            o,
            "{:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  verdict",
            "offered", "achieved", "p50", "p90", "p99", "p99.9", "max", "errors"
        );
        for p in &self.points {
            let r = &p.result;
            let _ = writeln!(
                o,
                "{:>10.0} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  {}",
                r.offered,
                r.achieved,
                fmt_us(r.response.p50_us),
                fmt_us(r.response.p90_us),
                fmt_us(r.response.p99_us),
                fmt_us(r.response.p999_us),
                fmt_us(r.response.max_us),
                r.errors,
                if p.ok() {
                    "ok".to_string()
                } else {
                    let mut why = Vec::new();
                    if !p.meets_slo {
                        why.push("slo");
                    }
                    if !p.kept_up {
                        why.push("fell behind");
                    }
                    if !p.few_errors {
                        why.push("errors");
                    }
                    format!("FAIL ({})", why.join(", "))
                }
            );
        }
        let _ = writeln!(
            o,
            "sustainable throughput: {}",
            self.sustainable
                .map(|s| format!("{s:.0}/s"))
                .unwrap_or_else(|| "none of the swept rates met the SLO".into())
        );
        if let Some(a) = &self.advice {
            let _ = writeln!(o, "{a}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target whose p99 is always 3 ms, whatever the rate.
    struct Slow;

    impl Probe for Slow {
        async fn closed_max(&mut self) -> anyhow::Result<f64> {
            Ok(10_000.0)
        }
        async fn open(&mut self, rate: f64) -> anyhow::Result<ProbeResult> {
            Ok(ProbeResult {
                offered: rate,
                achieved: rate,
                response: Percentiles {
                    count: 100,
                    p50_us: 800,
                    p90_us: 2_000,
                    p99_us: 3_000,
                    p999_us: 4_000,
                    p9999_us: 4_000,
                    max_us: 5_000,
                    mean_us: 900.0,
                },
                requests: 100,
                errors: 0,
            })
        }
    }

    #[tokio::test]
    async fn a_sweep_that_finds_nothing_says_by_how_much_and_what_to_try() {
        let slo: Slo = "p99=1ms".parse().unwrap();
        let rep = find_capacity(&mut Slow, &slo, 10).await.unwrap();
        assert_eq!(rep.sustainable, None);
        let text = rep.to_text();
        assert!(
            text.contains("At the lowest, 1000/s (10% of the closed-loop max)"),
            "{text}"
        );
        assert!(
            text.contains("p99 was 3.00ms against 1.00ms (3.0x)"),
            "{text}"
        );
        assert!(
            text.contains("--steps 40") && text.contains("--slo p99=3000us"),
            "{text}"
        );
        let ok: Slo = "p99=5ms".parse().unwrap();
        assert!(
            find_capacity(&mut Slow, &ok, 10)
                .await
                .unwrap()
                .advice
                .is_none()
        );
    }
}
