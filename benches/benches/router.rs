//! Router benchmarks: messages per second routed through zero-latency simulated
//! carriers on a 2-worker runtime (issue 18 target: >= 1,000,000/s), the cost
//! of admission (five keyed limits), and the cost of one phone number parse.
//!
//! Nothing here may make the router look faster than it is: every message goes
//! the whole way (intake permit, carrier choice, the carrier's queue and lane,
//! sender rotation, the pending check, template, carrier, receipt, ledger
//! updates), and a measurement ends only when the last message of the batch
//! is delivered.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use watchword_benches::huge_pages_off;
use watchword_engine::delivery::{
    CarrierConfig, CarrierSlot, ChallengeLedger, DeliveryJob, Destination, Limit, Router,
    RouterConfig, SimulatedConfig, SlotHint, TenantDelivery, normalize,
};
use watchword_engine::{ChallengeId, Channel, Code, DeliveryState, SystemClock, TenantId};

/// A ledger that allows everything and records nothing.
struct NoLedger;

impl ChallengeLedger for NoLedger {
    fn deliverable(&self, _id: ChallengeId, _hint: SlotHint) -> bool {
        true
    }
    fn delivery_update(
        &self,
        _id: ChallengeId,
        _hint: SlotHint,
        _state: DeliveryState,
        _carrier: CarrierSlot,
        _carrier_name: &str,
        _reason: Option<&str>,
    ) {
    }
}

fn zero_latency_config() -> RouterConfig {
    let sim = SimulatedConfig {
        latency_min_ms: 0,
        latency_max_ms: 0,
        receipt_delay_ms: 0,
        ..SimulatedConfig::default()
    };
    let carrier = |name: &str| CarrierConfig {
        name: name.into(),
        simulated: sim.clone(),
        max_in_flight: 1 << 20,
        queue_capacity: 1 << 22,
        ..CarrierConfig::default()
    };
    let mut cfg = RouterConfig {
        carriers: vec![carrier("sim-a"), carrier("sim-b")],
        queue_capacity: 1 << 22,
        ..RouterConfig::default()
    };
    for p in &mut cfg.senders.pools {
        p.rate_per_s = 0;
    }
    cfg
}

/// Process CPU time (user + system) from /proc/self/stat, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of the full line are 12 and 13 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Routes `iters` messages from two producer tasks, keeping at most ~16k in
/// the router (steady state, as from a gateway), and returns the wall time
/// until the last one is delivered.
async fn batch(router: Router, dest: Destination, iters: u64) -> Duration {
    let target = router.stats().delivered + iters;
    let start = Instant::now();
    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            let router = router.clone();
            let dest = dest.clone();
            let n = iters / 2 + if p == 0 { iters % 2 } else { 0 };
            tokio::spawn(async move {
                for i in 0..n {
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&i.to_le_bytes());
                    id[8] = p as u8;
                    let permit = router.try_reserve().expect("queue sized for the batch");
                    permit.send(DeliveryJob {
                        tenant: TenantId(0),
                        id: ChallengeId(id),
                        slot_hint: SlotHint::NONE,
                        channel: Channel::Sms,
                        destination: dest.clone(),
                        code: Code::from_parts(123456, 6).unwrap(),
                        expires_at_ms: u64::MAX,
                        locale: String::new(),
                        service_name: "Acme".into(),
                        avoid_carrier: CarrierSlot::NONE,
                        operator_assistance: false,
                        purpose: watchword_engine::delivery::MessagePurpose::Code,
                    });
                    while router.queue_depth() > 16_384 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    while router.stats().delivered < target {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    start.elapsed()
}

fn route(c: &mut Criterion) {
    huge_pages_off();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let router = rt
        .block_on(async {
            Router::start(
                zero_latency_config(),
                Arc::new(NoLedger),
                SystemClock::shared(),
            )
        })
        .unwrap();
    let t = TenantDelivery::default();
    let dest = normalize(Channel::Sms, "+1 425 555 1234", &t).unwrap();
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(1));
    // Figures independent of other load on the machine: messages per second
    // of process CPU time (user + system), besides the wall-clock rate.
    {
        let n = 1_000_000;
        let cpu0 = cpu_seconds();
        let wall = rt.block_on(batch(router.clone(), dest.clone(), n));
        let cpu = cpu_seconds() - cpu0;
        println!(
            "router/route_zero_latency_2_threads: {n} messages in {:.3} s wall = {:.0} msg/s; \
             {cpu:.2} s CPU = {:.0} msg per CPU-second (x2 cores = {:.0} msg/s if unshared)",
            wall.as_secs_f64(),
            n as f64 / wall.as_secs_f64(),
            n as f64 / cpu,
            2.0 * n as f64 / cpu
        );
    }
    g.bench_function("route_zero_latency_2_threads", |b| {
        b.iter_custom(|iters| rt.block_on(batch(router.clone(), dest.clone(), iters)))
    });
    g.finish();
}

fn admit(c: &mut Criterion) {
    huge_pages_off();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = zero_latency_config();
    cfg.limits.destination = Limit::new(5, 300_000);
    cfg.limits.country = Limit::new(1_000_000_000, 1_000);
    cfg.limits.tenant = Limit::new(1_000_000_000, 1_000);
    let router = rt
        .block_on(async { Router::start(cfg, Arc::new(NoLedger), SystemClock::shared()) })
        .unwrap();
    let t = TenantDelivery::default();
    let dests: Vec<_> = (0..100_000u32)
        .map(|i| {
            normalize(
                Channel::Sms,
                &format!("+1 425 {:03} {:04}", 200 + i / 10_000, i % 10_000),
                &t,
            )
            .unwrap()
        })
        .collect();
    let mut i = 0usize;
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(1));
    g.bench_function("admit_five_keyed_limits", |b| {
        b.iter(|| {
            i = (i + 1) % dests.len();
            let _ = black_box(router.admit(TenantId(0), "demo", "alice", Channel::Sms, &dests[i]));
        })
    });
    g.finish();
}

fn parse(c: &mut Criterion) {
    let us = TenantDelivery::default();
    let mut g = c.benchmark_group("phone_parse");
    g.throughput(Throughput::Elements(1));
    // Distinct numbers, more than the parse cache holds: every call pays the
    // phone metadata library (the cost of a first-seen number).
    let fresh: Vec<String> = (0..200_000u32)
        .map(|i| {
            format!(
                "({:03}) {:03}-{:04}",
                201 + i % 700,
                200 + i / 700 % 700,
                i % 10_000
            )
        })
        .collect();
    let mut i = 0usize;
    g.bench_function("uncached_us_national", |b| {
        b.iter(|| {
            i = (i + 1) % fresh.len();
            let _ = black_box(normalize(Channel::Sms, &fresh[i], &us));
        })
    });
    let intl: Vec<String> = (0..200_000u32)
        .map(|i| {
            format!(
                "0033 6 {:02} {:02} {:02} {:02}",
                i % 100,
                i / 100 % 100,
                i / 10_000 % 100,
                i % 97
            )
        })
        .collect();
    g.bench_function("uncached_fr_00_prefix", |b| {
        b.iter(|| {
            i = (i + 1) % intl.len();
            let _ = black_box(normalize(Channel::Sms, &intl[i], &us));
        })
    });
    // The same number again (a resend, a retry, a returning user): cache hit.
    for (name, raw) in [
        ("cached_e164", "+14255551234"),
        ("cached_us_national", "(425) 555-1234"),
        ("cached_with_operator_extension", "+1 425-555-1234 x@5678"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| normalize(Channel::Sms, black_box(raw), &us).unwrap())
        });
    }
    g.bench_function("email", |b| {
        b.iter(|| normalize(Channel::Email, black_box("jane.doe@example.com"), &us).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = route, admit, parse
}
criterion_main!(benches);
