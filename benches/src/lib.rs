//! Shared fixtures for Watchword's benchmarks: a table built the way the
//! gateway builds it, a clock the benchmark can move forward without sleeping,
//! realistic subjects and destinations, and the baseline entry of the same size.
//!
//! Nothing here may make Watchword look faster than it is: the bench clock
//! reads the real monotonic clock on every call (plus an offset), exactly what
//! the production clock costs.
//!
//! Every benchmark binary links this library, so they all run on the
//! allocator declared here, the one the `watchword` binary runs with, for
//! Watchword and the baselines alike.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use watchword_engine::table::{ChallengeTable, IssueSpec, TableConfig};
use watchword_engine::{Channel, Clock, NullSink, SystemClock, TenantId};

/// The real clock plus an offset the benchmark can advance, to expire or
/// forget entries between measured batches without sleeping.
#[derive(Debug, Default)]
pub struct BenchClock {
    real: SystemClock,
    offset_ms: AtomicU64,
}

impl BenchClock {
    /// A new clock at the current time.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Moves the clock forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for BenchClock {
    fn now_ms(&self) -> u64 {
        self.real.now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }
}

/// Turns transparent huge pages off for this process, as the gateway does by
/// default (`server.transparent_huge_pages = false`). The baselines run in the
/// same process, so they run without them too.
pub fn huge_pages_off() {
    // A kernel that refuses leaves the bench as the OS set it up.
    let _ = watchword_engine::memory::transparent_huge_pages_off();
}

/// A table with the default shard count and capacity, a null event sink, and
/// the given tombstone grace; huge pages off first ([`huge_pages_off`]).
pub fn bench_table(clock: Arc<BenchClock>, tombstone_grace_s: u32) -> Arc<ChallengeTable> {
    huge_pages_off();
    // WATCHWORD_BENCH_SHARDS overrides the shard count (0 or unset: the default).
    let shards = std::env::var("WATCHWORD_BENCH_SHARDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let config = TableConfig {
        tombstone_grace_s,
        capacity: 50_000_000,
        shards,
        ..TableConfig::default()
    };
    Arc::new(ChallengeTable::new(config, clock, Arc::new(NullSink)).expect("valid bench config"))
}

/// A realistic subject (12 bytes) for user `i`.
pub fn subject(i: u64) -> String {
    format!("user-{i:07}")
}

/// A realistic E.164 destination (12 bytes) for user `i`.
pub fn destination(i: u64) -> String {
    format!("+1425{:07}", i % 10_000_000)
}

/// The issue request the benchmarks use.
pub fn spec<'a>(subject: &'a str, destination: &'a str, ttl_s: u16) -> IssueSpec<'a> {
    IssueSpec {
        tenant: TenantId(0),
        subject,
        channel: Channel::Sms,
        destination,
        code_len: 6,
        ttl_s,
        max_attempts: 5,
        client_ip: "",
    }
}

/// Fills `table` with `n` pending challenges valid for an hour; returns nothing
/// (the benchmark never touches them again, they are the background load).
pub fn prefill(table: &ChallengeTable, n: u64) {
    for i in 0..n {
        let s = subject(i);
        let d = destination(i);
        table.issue(&spec(&s, &d, 3600)).expect("prefill fits");
    }
}

/// The baseline's value: the same bytes as a Watchword entry (72-byte record
/// with the 16-byte id as key, and a heap copy of subject + destination).
#[derive(Clone, Debug)]
pub struct BaselineValue {
    /// The fixed part of the record, minus the key.
    pub record: [u8; 56],
    /// Subject and destination, on the heap like Watchword's.
    pub text: Box<[u8]>,
}

impl BaselineValue {
    /// A value for user `i`.
    pub fn new(i: u64) -> Self {
        let mut text = Vec::with_capacity(24);
        text.extend_from_slice(subject(i).as_bytes());
        text.extend_from_slice(destination(i).as_bytes());
        Self {
            record: [i as u8; 56],
            text: text.into_boxed_slice(),
        }
    }
}

/// The comma-separated list in environment variable `name` (entries that do
/// not parse are skipped); `None` when the variable is not set.
pub fn env_list<T: std::str::FromStr>(name: &str) -> Option<Vec<T>> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect(),
    )
}

/// Resident set size of this process, in bytes (Linux `/proc/self/statm`).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
