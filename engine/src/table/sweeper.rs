//! The background sweeper: a dedicated thread that frees what is due in
//! bounded slices and publishes the table's gauges.
//!
//! It must never hold a shard lock for more than one slice, and never run on
//! an async runtime's worker threads (the table API is synchronous).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ChallengeTable;

/// Runs [`ChallengeTable::sweep`] on its own thread until stopped or dropped.
#[derive(Debug)]
pub struct Sweeper {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts sweeping `table` every `table.config().sweep_interval_ms`.
    pub fn spawn(table: Arc<ChallengeTable>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let interval = Duration::from_millis(table.config().sweep_interval_ms);
        let handle = std::thread::Builder::new()
            .name("watchword-sweeper".into())
            .spawn(move || {
                let mut last_gauges = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(interval);
                    table.sweep();
                    if last_gauges.elapsed() >= Duration::from_secs(1) {
                        table.publish_gauges();
                        last_gauges = Instant::now();
                    }
                }
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it (at most one sweep pass).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.shutdown();
    }
}
