//! Prints the memory cost per pending challenge: fills a table with N
//! challenges (default 10,000,000; realistic 12-byte subjects and E.164
//! destinations) and reports the resident-set growth per challenge, and the
//! table's own accounting of what it reserves, beside Redis's 167 bytes.
//! It also times every issue of the fill, which is where a table grows: the
//! slowest show what growing costs a request that happens to trigger it.
//!
//! Run: `cargo run --release -p watchword-benches --bin memory [-- N]`

use std::time::Instant;

use hdrhistogram::Histogram;
use watchword_benches::{BenchClock, bench_table, destination, rss_bytes, spec, subject};
use watchword_engine::table::Sweeper;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(10_000_000);
    let before = rss_bytes().unwrap_or(0);
    let table = bench_table(BenchClock::new(), 60);
    // The sweeper runs as in production: it also prepares index growth.
    let sweeper = Sweeper::spawn(table.clone()).expect("sweeper");
    let mut latency = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
    for i in 0..n {
        let (s, d) = (subject(i), destination(i));
        let start = Instant::now();
        table.issue(&spec(&s, &d, 3600)).expect("the fill fits");
        latency.saturating_record(start.elapsed().as_nanos() as u64);
    }
    let after = rss_bytes().unwrap_or(0);
    sweeper.stop();
    let reserved = table.reserved_bytes();
    println!("pending challenges:       {n}");
    println!("shards:                   {}", table.shard_count());
    println!(
        "RSS growth per challenge: {:.1} bytes (allocator overhead and all indexes included)",
        (after.saturating_sub(before)) as f64 / n as f64
    );
    println!(
        "table-reserved per chall: {:.1} bytes (slab + id/subject indexes + wheel + text)",
        reserved as f64 / n as f64
    );
    println!(
        "baseline (Redis hash per challenge, shared/baselines): ~167 bytes; target <= 200, aim < 100"
    );
    let over = |ns: u64| latency.count_between(ns, u64::MAX);
    println!(
        "issue during the fill:    p50 {} ns  p99.9 {} ns  p99.999 {} ns  max {:.2} ms; {} over 1 ms, {} over 10 ms",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.999),
        latency.value_at_quantile(0.99999),
        latency.max() as f64 / 1e6,
        over(1_000_000),
        over(10_000_000),
    );
}
