//! Parsing and pure logic: mixes, SLOs, HDR saturation, and the capacity search
//! on a synthetic queueing model.
//!
//! These tests must stay fast (no network, no sleeping).

use std::time::Duration;
use watchword_loadgen::capacity::{Probe, ProbeResult, find_capacity};
use watchword_loadgen::hist::{HIGHEST_US, Hist, Percentiles};
use watchword_loadgen::mix::{Mix, MixError, Scenario};
use watchword_loadgen::slo::{Slo, SloError, parse_duration};

#[test]
fn mix_parsing() {
    let m: Mix = "flow=80,wrong=10,resend=5,unknown=5".parse().unwrap();
    assert_eq!(m.entries().len(), 4);
    assert_eq!(m.to_string(), "flow=80,wrong=10,resend=5,unknown=5");
    assert!(m.has_flow() && m.needs_pool());
    let single: Mix = "ping".parse().unwrap();
    assert_eq!(single, Mix::single(Scenario::Ping));
    assert!(!single.needs_pool());
    let zero: Mix = "flow=1,wrong=0".parse().unwrap();
    assert_eq!(zero.entries(), &[(Scenario::Flow, 1)]);
    assert!(matches!(
        "flow=x".parse::<Mix>(),
        Err(MixError::BadWeight(_))
    ));
    assert!(matches!(
        "fly=1".parse::<Mix>(),
        Err(MixError::UnknownScenario(_))
    ));
    assert!(matches!(
        "flow=1,flow=2".parse::<Mix>(),
        Err(MixError::Duplicate(_))
    ));
    assert_eq!("flow=0".parse::<Mix>(), Err(MixError::Empty));
    assert_eq!("".parse::<Mix>(), Err(MixError::Empty));
    // The pick follows the weights over many requests and depends on seq alone.
    let counts = (0..100_000u64).fold([0u32; 4], |mut c, i| {
        c[match m.pick(i) {
            Scenario::Flow => 0,
            Scenario::Wrong => 1,
            Scenario::Resend => 2,
            _ => 3,
        }] += 1;
        c
    });
    assert!((79_000..81_000).contains(&counts[0]), "{counts:?}");
    assert!((9_500..10_500).contains(&counts[1]), "{counts:?}");
    assert_eq!(m.pick(12_345), m.pick(12_345));
}

#[test]
fn slo_parsing() {
    let s: Slo = "p99=1ms,p999=5ms".parse().unwrap();
    assert_eq!(s.0.len(), 2);
    assert_eq!(s.0[0].quantile, 0.99);
    assert_eq!(s.0[0].limit, Duration::from_millis(1));
    assert_eq!(s.0[1].quantile, 0.999);
    assert_eq!(s.0[1].limit, Duration::from_millis(5));
    let s: Slo = "p50=500us, max=2s, p99.99=1.5ms".parse().unwrap();
    assert_eq!(s.0[0].limit, Duration::from_micros(500));
    assert_eq!(s.0[1].quantile, 1.0);
    assert_eq!(s.0[2].limit, Duration::from_micros(1_500));
    assert!(matches!(
        "p98=1ms".parse::<Slo>(),
        Err(SloError::Percentile(_))
    ));
    assert!(matches!("p99=1".parse::<Slo>(), Err(SloError::Duration(_))));
    assert!(matches!("p99".parse::<Slo>(), Err(SloError::Syntax(_))));
    assert!(matches!(
        "p99=-1ms".parse::<Slo>(),
        Err(SloError::Duration(_))
    ));
    assert_eq!("".parse::<Slo>(), Err(SloError::Empty));
    assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));

    let p = Percentiles {
        p99_us: 900,
        p999_us: 6_000,
        ..Percentiles::default()
    };
    assert!("p99=1ms".parse::<Slo>().unwrap().met_by(&p));
    assert!(!"p99=1ms,p999=5ms".parse::<Slo>().unwrap().met_by(&p));
    assert!(!"p99=899us".parse::<Slo>().unwrap().met_by(&p));
}

#[test]
fn hdr_histograms_saturate_instead_of_failing() {
    let mut h = Hist::new();
    h.record(Duration::from_secs(24 * 3_600));
    h.record_us(u64::MAX);
    h.record(Duration::ZERO);
    h.record(Duration::from_micros(250));
    assert_eq!(h.len(), 4);
    let max = h.max_us();
    assert!(
        (HIGHEST_US..=HIGHEST_US + HIGHEST_US / 500).contains(&max),
        "{max}"
    );
    assert!(h.quantile_us(0.0) <= 1);
    assert_eq!(h.summary().count, 4);
}

/// An M/M/1-like model: p99 = base / (1 - rate / knee), errors never, and the
/// server falls behind above `behind`.
struct Model {
    max: f64,
    knee: f64,
    base_us: f64,
    behind: f64,
    calls: Vec<f64>,
}

impl Probe for Model {
    async fn closed_max(&mut self) -> anyhow::Result<f64> {
        Ok(self.max)
    }
    async fn open(&mut self, rate: f64) -> anyhow::Result<ProbeResult> {
        self.calls.push(rate);
        let p99 = (self.base_us / (1.0 - (rate / self.knee).min(0.999))) as u64;
        Ok(ProbeResult {
            offered: rate,
            achieved: if rate > self.behind {
                self.behind
            } else {
                rate
            },
            response: Percentiles {
                count: 1_000,
                p50_us: p99 / 4,
                p90_us: p99 / 2,
                p99_us: p99,
                p999_us: p99 * 2,
                p9999_us: p99 * 3,
                max_us: p99 * 4,
                mean_us: p99 as f64 / 4.0,
            },
            requests: 1_000,
            errors: 0,
        })
    }
}

#[tokio::test]
async fn capacity_search_on_a_synthetic_model() {
    // p99 <= 1 ms  <=>  1/(1-r/11000) <= 5  <=>  r <= 8800: 8000 is the highest swept rate.
    let mut m = Model {
        max: 10_000.0,
        knee: 11_000.0,
        base_us: 200.0,
        behind: f64::MAX,
        calls: vec![],
    };
    let slo: Slo = "p99=1ms".parse().unwrap();
    let rep = find_capacity(&mut m, &slo, 10).await.unwrap();
    assert_eq!(rep.closed_max, 10_000.0);
    assert_eq!(rep.sustainable, Some(8_000.0));
    assert_eq!(m.calls.len(), 10);
    assert!((m.calls[0] - 1_000.0).abs() < 1e-9);
    assert!(rep.to_text().contains("sustainable throughput: 8000/s"));

    // A second objective on p99.9 (= 2 × p99) tightens it: r <= 6600 -> 6000.
    let mut m2 = Model { calls: vec![], ..m };
    let slo2: Slo = "p99=1ms,p999=1ms".parse().unwrap();
    let rep2 = find_capacity(&mut m2, &slo2, 10).await.unwrap();
    assert_eq!(rep2.sustainable, Some(6_000.0));
    // It stops after two failing rates in a row (7000, 8000).
    assert_eq!(m2.calls.len(), 8);

    // Meeting the latency SLO is not enough: a rate it cannot keep up with fails.
    let mut m3 = Model {
        behind: 5_500.0,
        calls: vec![],
        ..m2
    };
    let rep3 = find_capacity(&mut m3, &slo, 10).await.unwrap();
    assert_eq!(rep3.sustainable, Some(5_000.0));
    assert!(!rep3.points[5].kept_up);

    // Nothing sustainable at all.
    let mut m4 = Model {
        base_us: 5_000.0,
        behind: f64::MAX,
        calls: vec![],
        ..m3
    };
    let rep4 = find_capacity(&mut m4, &slo, 10).await.unwrap();
    assert_eq!(rep4.sustainable, None);
    assert_eq!(m4.calls.len(), 2);
    let svg = watchword_loadgen::svg::capacity_svg("t", &rep, &slo);
    assert!(svg.starts_with("<svg") && svg.contains("SLO p99"));
}
