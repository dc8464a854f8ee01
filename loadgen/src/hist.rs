//! Latency histograms: bounded HDR histograms in microseconds, filled with
//! `saturating_record`, merged per worker at the end, summarised as the
//! percentile spectrum and written in HdrHistogram's `.hgrm` text format.
//!
//! This module must never panic on an out-of-range value (it saturates at the
//! upper bound) and never apply coordinated-omission correction: the runner
//! already measures response time from the intended start.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// Lowest trackable value: 1 µs.
pub const LOWEST_US: u64 = 1;
/// Highest trackable value: 60 s in µs; larger values saturate to it.
pub const HIGHEST_US: u64 = 60_000_000;
/// Significant decimal digits kept.
pub const SIGFIG: u8 = 3;

/// A bounded latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    /// An empty histogram covering 1 µs ..= 60 s at 3 significant digits.
    pub fn new() -> Self {
        Self(
            Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG)
                .expect("static histogram bounds are valid"),
        )
    }

    /// Records a duration, rounded to µs, clamped into the trackable range.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.record_us(us);
    }

    /// Records a value in µs; 0 counts as 1 µs, values above the bound saturate.
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
    }

    /// Adds every count of `other` (same bounds, so it cannot fail).
    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides: `add` only fails on a range mismatch.
        let _ = self.0.add(&other.0);
    }

    /// Number of recorded values.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value at quantile `q` (0.0 ..= 1.0) in µs; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    /// The largest recorded value in µs (0 when empty).
    pub fn max_us(&self) -> u64 {
        if self.0.is_empty() { 0 } else { self.0.max() }
    }

    /// Empties the histogram, keeping its allocation.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// The standard spectrum: p50, p90, p99, p99.9, p99.99 and max.
    pub fn summary(&self) -> Percentiles {
        Percentiles {
            count: self.len(),
            p50_us: self.quantile_us(0.50),
            p90_us: self.quantile_us(0.90),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            p9999_us: self.quantile_us(0.9999),
            max_us: self.max_us(),
            mean_us: if self.is_empty() { 0.0 } else { self.0.mean() },
        }
    }

    /// The HdrHistogram percentile distribution (`.hgrm` text, values in ms,
    /// 5 ticks per half distance), readable by HdrHistogram's plotter.
    pub fn to_hgrm(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        if self.0.is_empty() {
            return out;
        }
        for v in self.0.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let value_ms = v.value_iterated_to() as f64 / 1000.0;
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{:>12.3} {:>14.12} {:>10} {:>14.2}",
                    value_ms,
                    q,
                    v.count_since_last_iteration(),
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(
                    out,
                    "{:>12.3} {:>14.12} {:>10}",
                    value_ms,
                    q,
                    v.count_since_last_iteration()
                );
            }
        }
        let _ = writeln!(
            out,
            "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
            self.0.mean() / 1000.0,
            self.0.stdev() / 1000.0
        );
        let _ = writeln!(
            out,
            "#[Max     = {:>12.3}, Total count    = {:>12}]",
            self.0.max() as f64 / 1000.0,
            self.0.len()
        );
        let _ = writeln!(
            out,
            "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
            self.0.buckets(),
            self.0.distinct_values()
        );
        out
    }

    /// Points `(quantile, value_us)` of the percentile spectrum, for charts.
    pub fn spectrum(&self) -> Vec<(f64, u64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        self.0
            .iter_quantiles(5)
            .map(|v| (v.quantile_iterated_to(), v.value_iterated_to()))
            .collect()
    }
}

/// The percentile spectrum of one histogram, in µs.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Number of recorded values.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// 99.99th percentile.
    pub p9999_us: u64,
    /// Largest value.
    pub max_us: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

impl Percentiles {
    /// The value at a named percentile (as parsed by [`crate::slo`]), in µs.
    pub fn at(&self, q: f64) -> u64 {
        // The standard points are exact; anything else falls back to the
        // nearest one above it (never flattering).
        if q <= 0.50 {
            self.p50_us
        } else if q <= 0.90 {
            self.p90_us
        } else if q <= 0.99 {
            self.p99_us
        } else if q <= 0.999 {
            self.p999_us
        } else if q <= 0.9999 {
            self.p9999_us
        } else {
            self.max_us
        }
    }
}

/// Formats microseconds for humans: `850µs`, `1.25ms`, `2.001s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.3}s", us as f64 / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_failing() {
        let mut h = Hist::new();
        h.record(Duration::from_secs(3_600));
        h.record_us(0);
        h.record_us(u64::MAX);
        assert_eq!(h.len(), 3);
        assert!(h.max_us() >= HIGHEST_US && h.max_us() <= HIGHEST_US + HIGHEST_US / 1000);
        assert!(h.quantile_us(0.0) <= 1);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Hist::new();
        let mut b = Hist::new();
        for i in 1..=100 {
            a.record_us(i);
            b.record_us(1_000 + i);
        }
        a.merge(&b);
        assert_eq!(a.len(), 200);
        assert!(a.quantile_us(0.99) >= 1_000);
        assert!(a.to_hgrm().contains("Total count"));
    }
}
