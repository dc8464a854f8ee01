//! Service-level objectives for `--find-capacity`: `p99=1ms,p999=5ms` means
//! "the response-time p99 is at most 1 ms and p99.9 at most 5 ms".
//!
//! This module must never accept an SLO it cannot check exactly: only the
//! percentiles that the report carries (p50, p90, p99, p99.9, p99.99, max).

use crate::hist::Percentiles;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One objective: a percentile and its limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Objective {
    /// The quantile (0.99 for p99); 1.0 means max.
    pub quantile: f64,
    /// The name as given (`p99`, `p999`, ...), normalised.
    pub name: &'static str,
    /// The largest acceptable value.
    pub limit: Duration,
}

/// A set of objectives that must all hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Slo(pub Vec<Objective>);

/// Why an SLO string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SloError {
    /// Not `NAME=DURATION`.
    #[error("bad objective `{0}` (expected e.g. p99=1ms)")]
    Syntax(String),
    /// A percentile the report does not carry.
    #[error("unknown percentile `{0}` (use p50, p90, p99, p999, p9999 or max)")]
    Percentile(String),
    /// A duration that does not parse.
    #[error("bad duration `{0}` (use e.g. 500us, 1ms, 1.5ms, 2s)")]
    Duration(String),
    /// Nothing given.
    #[error("empty SLO")]
    Empty,
}

/// Parses `500us`, `1ms`, `1.5ms`, `2s` (also `µs`), and `0`.
pub fn parse_duration(s: &str) -> Result<Duration, SloError> {
    let s = s.trim();
    let err = || SloError::Duration(s.to_string());
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, mult) = if let Some(n) = s.strip_suffix("us").or_else(|| s.strip_suffix("µs")) {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(err());
    };
    let v: f64 = num.trim().parse().map_err(|_| err())?;
    if !v.is_finite() || v < 0.0 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(v * mult))
}

fn percentile(name: &str) -> Option<(&'static str, f64)> {
    Some(match name {
        "p50" => ("p50", 0.50),
        "p90" => ("p90", 0.90),
        "p99" => ("p99", 0.99),
        "p999" | "p99.9" => ("p99.9", 0.999),
        "p9999" | "p99.99" => ("p99.99", 0.9999),
        "max" | "p100" => ("max", 1.0),
        _ => return None,
    })
}

impl FromStr for Slo {
    type Err = SloError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut v = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (n, d) = part
                .split_once('=')
                .ok_or_else(|| SloError::Syntax(part.to_string()))?;
            let n = n.trim().to_ascii_lowercase();
            let (name, quantile) = percentile(&n).ok_or_else(|| SloError::Percentile(n.clone()))?;
            v.push(Objective {
                quantile,
                name,
                limit: parse_duration(d)?,
            });
        }
        if v.is_empty() {
            return Err(SloError::Empty);
        }
        Ok(Slo(v))
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, o) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(
                f,
                "{}<={}",
                o.name,
                crate::hist::fmt_us(o.limit.as_micros() as u64)
            )?;
        }
        Ok(())
    }
}

impl Slo {
    /// True when every objective holds for these response-time percentiles.
    pub fn met_by(&self, p: &Percentiles) -> bool {
        self.0
            .iter()
            .all(|o| p.at(o.quantile) as u128 <= o.limit.as_micros())
    }
}
