//! `watchword-loadgen`: an open-loop, coordinated-omission-correct load
//! generator for Watchword and for the Redis OTP baseline, with capacity search
//! and the Watchword-vs-Redis comparison.
//!
//! All logic lives here so it can be tested; `main.rs` only parses flags. The
//! library must never start servers, never retry requests, and never report a
//! latency it did not measure.

pub mod capacity;
pub mod cli;
pub mod compare;
pub mod hist;
pub mod http;
pub mod mix;
pub mod radius;
pub mod report;
pub mod resp;
pub mod router;
pub mod run;
pub mod senders;
pub mod slo;
pub mod svg;
pub mod target;
pub mod users;
pub mod watchword;

pub use hist::{Hist, Percentiles};
pub use mix::{Mix, Scenario};
pub use report::RunReport;
pub use run::{Mode, Pacing, RunConfig, run};
pub use slo::Slo;
pub use target::{Backend, DestPlan, RedisBackend, TargetAddr};
pub use watchword::WatchwordBackend;
