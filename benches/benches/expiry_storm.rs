//! Verify latency while a million challenges expire at once.
//!
//! One thread verifies (right codes, from a pool of pending challenges) and
//! records every call's latency in an HDR histogram; the sweeper thread runs as
//! in production. After a quiet second, the clock moves past the deadline of
//! 1,000,000 other challenges, and the sweeper expires them all. The report
//! gives verify p50/p99/p99.9/max in the quiet window and in the storm, for the
//! sliced sweep (production default `sweep_slice` = 8, and 32 and 256) and, as the baseline, for a
//! sweep that takes each shard's whole backlog under one lock.
//!
//! Target: p99.9 under 10 µs during the storm.
//! Run: `cargo bench -p watchword-benches --bench expiry_storm`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use watchword_benches::{BenchClock, destination, env_list, huge_pages_off, spec, subject};
use watchword_engine::table::{ChallengeTable, Sweeper, TableConfig};
use watchword_engine::{NullSink, TenantId};

const STORM: u64 = 1_000_000;
const POOL: u64 = 3_000_000;
/// How often the main thread checks whether the storm is over.
const POLL: Duration = Duration::from_millis(20);

fn run(sweep_slice: usize) {
    huge_pages_off();
    let clock = BenchClock::new();
    let config = TableConfig {
        sweep_slice,
        sweep_interval_ms: 10,
        ..TableConfig::default()
    };
    let table =
        Arc::new(ChallengeTable::new(config, clock.clone(), Arc::new(NullSink)).expect("config"));
    for i in 0..STORM {
        table
            .issue(&spec(&subject(i), &destination(i), 30))
            .expect("issue");
    }
    let pool: Vec<_> = (STORM..STORM + POOL)
        .map(|i| {
            let c = table
                .issue(&spec(&subject(i), &destination(i), 3600))
                .expect("issue");
            let (d, n) = c.code.digits();
            (c.id, d, n)
        })
        .collect();
    let sweeper = Sweeper::spawn(table.clone()).expect("sweeper");
    let storm_on = AtomicBool::new(false);
    let storm_over = AtomicBool::new(false);
    let verified = AtomicU64::new(0);
    let (quiet, storm) = std::thread::scope(|s| {
        let verifier = s.spawn(|| {
            let mut quiet = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).expect("bounds");
            let mut storm = quiet.clone();
            for (id, d, n) in &pool {
                let on = storm_on.load(Ordering::Relaxed);
                let start = Instant::now();
                std::hint::black_box(table.verify(TenantId(0), *id, &d[..*n]));
                let ns = start.elapsed().as_nanos() as u64;
                verified.fetch_add(1, Ordering::Relaxed);
                if on {
                    storm.saturating_record(ns);
                    if storm_over.load(Ordering::Relaxed) {
                        break;
                    }
                } else {
                    quiet.saturating_record(ns);
                }
            }
            (quiet, storm)
        });
        std::thread::sleep(Duration::from_millis(300));
        storm_on.store(true, Ordering::Relaxed);
        clock.advance_ms(31_000);
        let t = Instant::now();
        // Storm challenges still pending = pending - unverified pool entries
        // (the lock-free count lags by at most 64 per shard).
        let slack = 64 * table.shard_count() as u64;
        let storm_left = || {
            (table.pending_approx() as u64 + verified.load(Ordering::Relaxed)).saturating_sub(POOL)
        };
        while storm_left() > slack && t.elapsed() < Duration::from_secs(30) {
            if verifier.is_finished() {
                break;
            }
            // Look rarely: on two cores this thread's wake-ups preempt the
            // verifier (or the sweeper inside a slice) and land in the very
            // tail being measured. 1 ms polling put ~300 preemptions into a
            // storm of ~300k verifies, right at the p99.9.
            std::thread::sleep(POLL);
        }
        let swept_in = t.elapsed();
        storm_over.store(true, Ordering::Relaxed);
        let r: (Histogram<u64>, Histogram<u64>) = verifier.join().expect("verifier");
        // A closed-loop verifier stalled behind a long lock records one slow
        // sample per stall: the verify rate during the storm shows the rest.
        println!(
            "  slice {sweep_slice}: {STORM} expiries swept in {swept_in:?}; {:.0} verifies/s during the storm",
            r.1.len() as f64 / swept_in.as_secs_f64()
        );
        r
    });
    sweeper.stop();
    let show = |name: &str, h: &Histogram<u64>| {
        println!(
            "  slice {:>9} {:<6} verifies {:>8}  p50 {:>6} ns  p99 {:>6} ns  p99.9 {:>7} ns  max {:>9} ns",
            sweep_slice,
            name,
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    };
    show("quiet", &quiet);
    show("storm", &storm);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("expiry_storm: verify latency while {STORM} challenges expire at once");
    // WATCHWORD_BENCH_SLICES=8,32 runs only those slice lengths (and no baseline).
    let chosen = env_list::<usize>("WATCHWORD_BENCH_SLICES");
    let baseline = chosen.is_none();
    for slice in chosen.unwrap_or_else(|| vec![8, 32, 256]) {
        run(slice);
    }
    if baseline {
        println!("baseline: one lock per shard for the whole backlog");
        run(usize::MAX);
    }
}
