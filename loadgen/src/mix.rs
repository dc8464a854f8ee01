//! Scenarios: the weighted mix (`flow=80,wrong=10,resend=5,unknown=5`) and the
//! single-op modes (`issue`, `verify`, `ping`), and the deterministic choice of
//! a scenario for the i-th request.
//!
//! This module must never use wall-clock time or a shared RNG: the choice for
//! request `i` depends only on `i`, so runs are reproducible and lock-free.

use std::fmt;
use std::str::FromStr;

/// One unit of work the runner can start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Issue, wait for the code through the outbox (the simulated phone), verify it.
    Flow,
    /// Verify a wrong code against a pre-issued challenge.
    Wrong,
    /// Resend a pre-issued challenge.
    Resend,
    /// Verify an id that was never issued.
    Unknown,
    /// A single ISSUE (micro-measurement).
    Issue,
    /// A single VERIFY of a pre-issued challenge with a wrong code (micro-measurement).
    Verify,
    /// A single PING (micro-measurement of the transport).
    Ping,
    /// A single CHECK with no answer for a provisioned user: the decision
    /// starts an e-mail challenge (Watchword only; users made before the run
    /// through the HTTP API, see `--users`).
    Check,
    /// A CHECK answered with the current TOTP code of a provisioned user's
    /// token (Watchword only; users and tokens imported before the run
    /// through the HTTP API, see `--users`): each accept moves the token's
    /// last step, durably, so a code is never accepted twice.
    Totp,
    /// A RADIUS Access-Request with a provisioned user's static password
    /// (`--radius-password`): the FreeRADIUS PAP baseline of `totp`.
    Pap,
}

impl Scenario {
    /// Every scenario, in a stable order.
    pub const ALL: [Scenario; 10] = [
        Self::Flow,
        Self::Wrong,
        Self::Resend,
        Self::Unknown,
        Self::Issue,
        Self::Verify,
        Self::Ping,
        Self::Check,
        Self::Totp,
        Self::Pap,
    ];

    /// Lower-case name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flow => "flow",
            Self::Wrong => "wrong",
            Self::Resend => "resend",
            Self::Unknown => "unknown",
            Self::Issue => "issue",
            Self::Verify => "verify",
            Self::Ping => "ping",
            Self::Check => "check",
            Self::Totp => "totp",
            Self::Pap => "pap",
        }
    }

    /// True when the scenario needs a pool of challenges issued before the run.
    pub fn needs_pool(self) -> bool {
        matches!(self, Self::Wrong | Self::Resend | Self::Verify)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = MixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|sc| sc.name() == s.trim())
            .ok_or_else(|| MixError::UnknownScenario(s.trim().to_string()))
    }
}

/// Why a `--mix` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    /// A name that is not a scenario.
    #[error(
        "unknown scenario `{0}` (expected flow, wrong, resend, unknown, issue, verify or ping)"
    )]
    UnknownScenario(String),
    /// A weight that is not a non-negative integer.
    #[error("bad weight in `{0}` (expected NAME=INTEGER)")]
    BadWeight(String),
    /// The same scenario twice.
    #[error("scenario `{0}` given twice")]
    Duplicate(String),
    /// Every weight is zero, or nothing was given.
    #[error("the mix is empty (all weights zero)")]
    Empty,
}

/// A weighted mix of scenarios.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    /// `(scenario, weight)` with weight > 0, in the order given.
    entries: Vec<(Scenario, u32)>,
    /// Sum of the weights.
    total: u64,
}

impl Mix {
    /// A mix of one scenario.
    pub fn single(s: Scenario) -> Self {
        Self {
            entries: vec![(s, 1)],
            total: 1,
        }
    }

    /// The entries `(scenario, weight)` with positive weights.
    pub fn entries(&self) -> &[(Scenario, u32)] {
        &self.entries
    }

    /// True when any entry needs the pre-issued pool.
    pub fn needs_pool(&self) -> bool {
        self.entries.iter().any(|(s, _)| s.needs_pool())
    }

    /// True when any entry is a flow (and so needs the outbox).
    pub fn has_flow(&self) -> bool {
        self.entries.iter().any(|(s, _)| *s == Scenario::Flow)
    }

    /// The scenario of request `seq`: a fixed hash of `seq` picks by weight.
    pub fn pick(&self, seq: u64) -> Scenario {
        if self.entries.len() == 1 {
            return self.entries[0].0;
        }
        let mut r = splitmix64(seq) % self.total;
        for &(s, w) in &self.entries {
            if r < u64::from(w) {
                return s;
            }
            r -= u64::from(w);
        }
        self.entries[self.entries.len() - 1].0
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(s, 1)] = self.entries[..] {
            return f.write_str(s.name());
        }
        for (i, (s, w)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{s}={w}")?;
        }
        Ok(())
    }
}

impl FromStr for Mix {
    type Err = MixError;

    /// Parses `NAME=WEIGHT[,NAME=WEIGHT...]`; a bare `NAME` means weight 1.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut entries: Vec<(Scenario, u32)> = Vec::new();
        let mut seen = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((n, w)) => (
                    n,
                    w.trim()
                        .parse::<u32>()
                        .map_err(|_| MixError::BadWeight(part.to_string()))?,
                ),
                None => (part, 1),
            };
            let sc: Scenario = name.parse()?;
            if seen.contains(&sc) {
                return Err(MixError::Duplicate(sc.name().to_string()));
            }
            seen.push(sc);
            if weight > 0 {
                entries.push((sc, weight));
            }
        }
        let total: u64 = entries.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return Err(MixError::Empty);
        }
        Ok(Self { entries, total })
    }
}

/// SplitMix64: a fixed, well-mixed hash of a counter.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
