//! How the process's memory is backed: the one switch the engine's callers
//! (the gateway, the benchmarks) share, so that the benchmarks measure the
//! table as the gateway runs it. It must never allocate or fail loudly: a
//! kernel that refuses leaves the process as it was.

/// Turns transparent huge pages off for the whole process (Linux,
/// `prctl(PR_SET_THP_DISABLE)`; faults from then on use 4 KiB pages).
/// The allocator asks for huge pages on its arenas, and the kernel zeroes a
/// 2 MiB page at its first touch inside whichever thread touched it: on this
/// project's VM that stalled a worker 7 to 14 ms per fault. Elsewhere it does
/// nothing and succeeds.
pub fn transparent_huge_pages_off() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}
