//! Prints the memory cost per pending challenge: fills a table with N
//! challenges (default 10,000,000; realistic 12-byte subjects and E.164
//! destinations) and reports the resident-set growth per challenge, and the
//! table's own accounting of what it reserves, beside Redis's 167 bytes.
//!
//! Run: `cargo run --release -p watchword-benches --bin memory [-- N]`

// The allocator the `watchword` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use watchword_benches::{BenchClock, bench_table, prefill, rss_bytes};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(10_000_000);
    let before = rss_bytes().unwrap_or(0);
    let table = bench_table(BenchClock::new(), 60);
    prefill(&table, n);
    let after = rss_bytes().unwrap_or(0);
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
}
