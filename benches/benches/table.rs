//! The challenge table against its baselines, in one criterion group.
//!
//! `watchword/{issue,verify,cycle}` at 1 and 2 threads with 1k, 1M and 10M
//! challenges already pending, beside `dashmap` and `scc` doing insert + get +
//! remove of an entry of the same size (a bare cycle: no code, no CSPRNG, no
//! expiry, no indexes). Throughput is in operations (a cycle counts as one).
//! Watchword runs with tombstone grace 0 (a finished challenge is forgotten at
//! once); `watchword-cycle-tombstones` is the cycle with the default 60 s grace.
//!
//! Run: `cargo bench -p watchword-benches --bench table`
//! (`WATCHWORD_BENCH_SIZES=1000,1000000` to skip the 10M runs.)

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use watchword_benches::{
    BaselineValue, BenchClock, bench_table, destination, env_list, prefill, spec, subject,
};
use watchword_engine::table::ChallengeTable;
use watchword_engine::{TenantId, VerifyOutcome};

const THREADS: [u64; 2] = [1, 2];

fn sizes() -> Vec<u64> {
    env_list("WATCHWORD_BENCH_SIZES").unwrap_or_else(|| vec![1_000, 1_000_000, 10_000_000])
}

/// Runs `per_thread(thread_index, iterations)` on `threads` threads and
/// returns the wall time of the slowest.
fn run_threads(
    threads: u64,
    iters: u64,
    per_thread: impl Fn(u64, u64) -> Duration + Sync,
) -> Duration {
    let share = iters.div_ceil(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let f = &per_thread;
                s.spawn(move || f(t, share))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

/// A fresh subject range per call so issues never supersede each other.
fn user_base(counter: &std::sync::atomic::AtomicU64, n: u64) -> u64 {
    counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed)
}

/// A table with `grace_s` of tombstone grace and `pending` challenges
/// already issued, its clock, and the next fresh user number.
fn prefilled(
    pending: u64,
    grace_s: u32,
) -> (
    Arc<BenchClock>,
    Arc<ChallengeTable>,
    std::sync::atomic::AtomicU64,
) {
    let clock = BenchClock::new();
    let table = bench_table(clock.clone(), grace_s);
    prefill(&table, pending);
    (clock, table, std::sync::atomic::AtomicU64::new(100_000_000))
}

fn watchword(c: &mut Criterion, pending: u64) {
    let (_, table, next_user) = prefilled(pending, 0);
    let mut group = c.benchmark_group("table");
    group.throughput(Throughput::Elements(1));
    // Between samples, as the sweeper would: it allocates the index tables a
    // growing shard will need. (Finished challenges are already gone: with
    // grace 0 the table keeps no tombstones.)
    let tidy = |t: &ChallengeTable| {
        t.sweep();
    };

    for threads in THREADS {
        let id = format!("{pending}-pending/{threads}-thread");
        group.bench_function(BenchmarkId::new("watchword-issue", &id), |b| {
            b.iter_custom(|iters| {
                let ids = parking_lot::Mutex::new(Vec::new());
                let took = run_threads(threads, iters, |_, n| {
                    let base = user_base(&next_user, n);
                    let names: Vec<(String, String)> = (base..base + n)
                        .map(|i| (subject(i), destination(i)))
                        .collect();
                    let mut mine = Vec::with_capacity(n as usize);
                    let start = Instant::now();
                    for (s, d) in &names {
                        mine.push(table.issue(&spec(s, d, 300)).expect("issue").id);
                    }
                    let took = start.elapsed();
                    ids.lock().extend(mine);
                    took
                });
                for id in ids.into_inner() {
                    table.cancel(TenantId(0), id);
                }
                tidy(&table);
                took
            })
        });
        group.bench_function(BenchmarkId::new("watchword-verify", &id), |b| {
            b.iter_custom(|iters| {
                let took = run_threads(threads, iters, |_, n| {
                    let base = user_base(&next_user, n);
                    let issued: Vec<_> = (base..base + n)
                        .map(|i| {
                            let c = table
                                .issue(&spec(&subject(i), &destination(i), 300))
                                .expect("issue");
                            let (d, len) = c.code.digits();
                            (c.id, d, len)
                        })
                        .collect();
                    let start = Instant::now();
                    for (id, d, len) in &issued {
                        let r = table.verify(TenantId(0), *id, &d[..*len]);
                        debug_assert_eq!(r, VerifyOutcome::Approved);
                        black_box(r);
                    }
                    start.elapsed()
                });
                tidy(&table);
                took
            })
        });
        group.bench_function(BenchmarkId::new("watchword-cycle", &id), |b| {
            b.iter_custom(|iters| cycles(&table, threads, iters, &next_user, &tidy))
        });
    }
    group.finish();
    drop(table);
}

/// `iters` issue + verify cycles on `threads` threads, then `tidy`.
fn cycles(
    table: &ChallengeTable,
    threads: u64,
    iters: u64,
    next_user: &std::sync::atomic::AtomicU64,
    tidy: &impl Fn(&ChallengeTable),
) -> Duration {
    let took = run_threads(threads, iters, |_, n| {
        let base = user_base(next_user, n);
        let names: Vec<(String, String)> = (base..base + n)
            .map(|i| (subject(i), destination(i)))
            .collect();
        let start = Instant::now();
        for (s, d) in &names {
            let c = table.issue(&spec(s, d, 300)).expect("issue");
            let (digits, len) = c.code.digits();
            black_box(table.verify(TenantId(0), c.id, &digits[..len]));
        }
        start.elapsed()
    });
    tidy(table);
    took
}

/// The cycle with the default tombstone grace (60 s): every approved
/// challenge stays behind as a tombstone for STATUS. Tombstones pile up across
/// samples until they reach half the pending count (at least 100k); then,
/// between samples, the clock moves past the grace and the sweeper forgets
/// them. The main group runs with grace 0, where an approved challenge is
/// forgotten at once, as scc's remove forgets its entry.
///
/// Why not forget them after every sample: criterion sizes samples from the
/// wall time of warm-up calls, setup included. A minute per sample outlives the
/// prefill's hour after 59 samples, and re-issuing a million expired
/// challenges in one call (1.2 s; 10 s at 10M) made criterion pick samples of
/// a few dozen cycles, which timed thread start-up instead of the table
/// (0.4 M/s at 1M pending, against 2 M/s in samples of 100k cycles).
fn watchword_keeping_tombstones(c: &mut Criterion, pending: u64) {
    let (clock, table, next_user) = prefilled(pending, 60);
    let mut group = c.benchmark_group("table");
    group.throughput(Throughput::Elements(1));
    let most_tombstones = (pending / 2).max(100_000) as usize;
    let tidy = |t: &ChallengeTable| {
        if t.len() - t.pending() < most_tombstones {
            return;
        }
        clock.advance_ms(61_000);
        t.sweep();
        // At 1k pending the hour can run out; re-issuing 1k is cheap.
        let missing = pending.saturating_sub(t.pending() as u64);
        let base = user_base(&next_user, missing);
        for i in base..base + missing {
            t.issue(&spec(&subject(i), &destination(i), 3600))
                .expect("top-up fits");
        }
    };
    for threads in THREADS {
        let id = format!("{pending}-pending/{threads}-thread");
        group.bench_function(BenchmarkId::new("watchword-cycle-tombstones", &id), |b| {
            b.iter_custom(|iters| cycles(&table, threads, iters, &next_user, &tidy))
        });
    }
    group.finish();
}

fn baselines(c: &mut Criterion, pending: u64) {
    let dash: Arc<dashmap::DashMap<u128, BaselineValue, ahash::RandomState>> =
        Arc::new(dashmap::DashMap::with_hasher(ahash::RandomState::new()));
    let scc: Arc<scc::HashMap<u128, BaselineValue, ahash::RandomState>> =
        Arc::new(scc::HashMap::with_hasher(ahash::RandomState::new()));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for i in 0..pending {
        dash.insert(rng.random(), BaselineValue::new(i));
        let _ = scc.insert_sync(rng.random(), BaselineValue::new(i));
    }
    let mut group = c.benchmark_group("table");
    group.throughput(Throughput::Elements(1));
    for threads in THREADS {
        let id = format!("{pending}-pending/{threads}-thread");
        group.bench_function(BenchmarkId::new("dashmap-cycle", &id), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, |t, n| {
                    let mut rng = rand::rngs::SmallRng::seed_from_u64(t + 1000);
                    let start = Instant::now();
                    for i in 0..n {
                        let k: u128 = rng.random();
                        dash.insert(k, BaselineValue::new(i));
                        black_box(dash.get(&k).map(|v| v.record[0]));
                        black_box(dash.remove(&k));
                    }
                    start.elapsed()
                })
            })
        });
        group.bench_function(BenchmarkId::new("scc-cycle", &id), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, |t, n| {
                    let mut rng = rand::rngs::SmallRng::seed_from_u64(t + 2000);
                    let start = Instant::now();
                    for i in 0..n {
                        let k: u128 = rng.random();
                        let _ = scc.insert_sync(k, BaselineValue::new(i));
                        black_box(scc.read_sync(&k, |_, v| v.record[0]));
                        black_box(scc.remove_sync(&k));
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn all(c: &mut Criterion) {
    for pending in sizes() {
        watchword(c, pending);
        watchword_keeping_tombstones(c, pending);
        baselines(c, pending);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = all
}
criterion_main!(benches);
