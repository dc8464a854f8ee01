//! The report of one run: per operation the counts, errors by status, outcomes,
//! target and achieved rate, late sends and the response-time and service-time
//! spectra; flow end-to-end and code-delivery latency. Renders as text, JSON
//! and `.hgrm` files.
//!
//! This module must never compute a number the runner did not measure (no
//! interpolation, no coordinated-omission correction) and never hide errors.

use crate::hist::{Hist, Percentiles, fmt_us};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One operation (one kind of request, e.g. `flow:issue` or `ping`).
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    /// Label: the scenario and the request, e.g. `flow:verify`, or the op alone.
    pub name: String,
    /// Measured requests completed (errors included).
    pub count: u64,
    /// Of those, answered without error.
    pub ok: u64,
    /// Errors by status or kind (`RATE_LIMITED`, `timeout`, `closed`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Verify outcomes (`approved`, `rejected`, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// The rate this op was offered (open loop), requests/s.
    pub target_rate: Option<f64>,
    /// Completed requests per second over the measured window.
    pub achieved_rate: f64,
    /// Requests sent later than the late threshold after their intended start.
    pub late_sends: u64,
    /// Latency from the intended start (what a user waits).
    pub response: Percentiles,
    /// Latency from the actual send (what the server took).
    pub service: Percentiles,
    /// Full response-time histogram (not serialised).
    #[serde(skip)]
    pub response_hist: Hist,
    /// Full service-time histogram (not serialised).
    #[serde(skip)]
    pub service_hist: Hist,
}

/// The flow scenario's own numbers.
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    /// Flows started in the measured window.
    pub started: u64,
    /// Flows whose verify came back APPROVED.
    pub approved: u64,
    /// Failed flows by reason (`code_timeout`, `issue:RATE_LIMITED`, `verify:rejected`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Intended start of the issue to the verify's reply.
    pub end_to_end: Percentiles,
    /// Issue reply to the code reaching the simulated phone (outbox targets only).
    pub delivery: Percentiles,
    /// Full end-to-end histogram (not serialised).
    #[serde(skip)]
    pub end_to_end_hist: Hist,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The target URL.
    pub target: String,
    /// What the run should know about the target before reading its
    /// figures (e.g. an offered SMS rate over the gateway's sender capacity).
    pub warnings: Vec<String>,
    /// The scenario mix, e.g. `flow=80,wrong=10,resend=5,unknown=5`.
    pub scenario: String,
    /// `open` or `closed`.
    pub mode: String,
    /// Connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Measured duration, seconds.
    pub duration_s: f64,
    /// Warm-up excluded from the results, seconds.
    pub warmup_s: f64,
    /// Offered rate of scenario starts (open loop), per second.
    pub target_rate: Option<f64>,
    /// Completed scenario starts per second over the measured window.
    pub achieved_rate: f64,
    /// Completed requests (all ops) per second over the measured window.
    pub requests_rate: f64,
    /// Requests (all ops) answered without error per second: the throughput
    /// that counts (fast failures do not).
    pub ok_rate: f64,
    /// Scenario starts in the measured window.
    pub started: u64,
    /// Scenario starts that completed.
    pub completed: u64,
    /// Sends later than `late_threshold_us` after their intended start.
    pub late_sends: u64,
    /// The late-send threshold, µs.
    pub late_threshold_us: u64,
    /// Failed requests, all ops.
    pub errors: u64,
    /// Per operation.
    pub ops: Vec<OpReport>,
    /// The flow scenario, when the mix has one.
    pub flow: Option<FlowReport>,
    /// Codes the outbox delivered that the router had to drop (map full).
    pub outbox_dropped: u64,
    /// Codes the outbox delivered (all of them, pool and resends included).
    pub outbox_received: u64,
    /// The generator's own CPU time (all its threads) per request sent
    /// while the run lasted, warm-up included, µs: when it nears the
    /// server's, the generator may be what limits the run.
    pub generator_cpu_us_per_request: f64,
    /// The generator's CPU time over the run's wall time: cores it kept busy.
    pub generator_cores: f64,
    /// All ops' response times together.
    pub response: Percentiles,
    /// All ops' service times together.
    pub service: Percentiles,
    /// Full all-ops response-time histogram (not serialised).
    #[serde(skip)]
    pub response_hist: Hist,
    /// Full all-ops service-time histogram (not serialised).
    #[serde(skip)]
    pub service_hist: Hist,
}

fn errs(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn spectrum_row(out: &mut String, label: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "    {label:<9} p50 {:>9}  p90 {:>9}  p99 {:>9}  p99.9 {:>9}  p99.99 {:>9}  max {:>9}",
        fmt_us(p.p50_us),
        fmt_us(p.p90_us),
        fmt_us(p.p99_us),
        fmt_us(p.p999_us),
        fmt_us(p.p9999_us),
        fmt_us(p.max_us)
    );
}

impl RunReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "target {}  scenario {}  mode {}  connections {}  depth {}",
            self.target, self.scenario, self.mode, self.connections, self.depth
        );
        let _ = writeln!(
            o,
            "duration {:.1}s (warm-up {:.1}s excluded)  target rate {}  achieved {:.0}/s  requests {:.0}/s (ok {:.0}/s)",
            self.duration_s,
            self.warmup_s,
            self.target_rate
                .map(|r| format!("{r:.0}/s"))
                .unwrap_or_else(|| "max (closed loop)".into()),
            self.achieved_rate,
            self.requests_rate,
            self.ok_rate
        );
        let _ = writeln!(
            o,
            "started {}  completed {}  late sends {} (> {})  errors {}",
            self.started,
            self.completed,
            self.late_sends,
            fmt_us(self.late_threshold_us),
            self.errors
        );
        let _ = writeln!(
            o,
            "generator: {:.1} us CPU per request, {:.2} cores busy (its own threads; warm-up included)",
            self.generator_cpu_us_per_request, self.generator_cores
        );
        for w in &self.warnings {
            let _ = writeln!(o, "warning: {w}");
        }
        for op in &self.ops {
            let _ = writeln!(
                o,
                "  {:<16} count {:>9}  ok {:>9}  target {:>9}  achieved {:>9.0}/s  late {:>7}",
                op.name,
                op.count,
                op.ok,
                op.target_rate
                    .map(|r| format!("{r:.0}/s"))
                    .unwrap_or_else(|| "-".into()),
                op.achieved_rate,
                op.late_sends
            );
            let _ = writeln!(o, "    errors    {}", errs(&op.errors));
            if !op.outcomes.is_empty() {
                let _ = writeln!(o, "    outcomes  {}", errs(&op.outcomes));
            }
            spectrum_row(&mut o, "response", &op.response);
            spectrum_row(&mut o, "service", &op.service);
        }
        if let Some(f) = &self.flow {
            let _ = writeln!(
                o,
                "  flow             started {}  approved {}  failed {}",
                f.started,
                f.approved,
                errs(&f.errors)
            );
            spectrum_row(&mut o, "e2e", &f.end_to_end);
            if f.delivery.count > 0 {
                spectrum_row(&mut o, "delivery", &f.delivery);
            }
        }
        if self.flow.is_some() {
            let _ = writeln!(o, "  outbox codes received: {}", self.outbox_received);
        }
        if self.outbox_dropped > 0 {
            let _ = writeln!(
                o,
                "  outbox codes dropped (router full): {}",
                self.outbox_dropped
            );
        }
        o
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// Writes one `.hgrm` file per op and kind (`<op>.response.hgrm`,
    /// `<op>.service.hgrm`), plus `all.*` and `flow.e2e.hgrm`.
    pub fn write_hgrm(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let w = |name: &str, h: &Hist| std::fs::write(dir.join(name), h.to_hgrm());
        w("all.response.hgrm", &self.response_hist)?;
        w("all.service.hgrm", &self.service_hist)?;
        for op in &self.ops {
            let n = op.name.replace(':', "_");
            w(&format!("{n}.response.hgrm"), &op.response_hist)?;
            w(&format!("{n}.service.hgrm"), &op.service_hist)?;
        }
        if let Some(f) = &self.flow {
            w("flow.e2e.hgrm", &f.end_to_end_hist)?;
        }
        Ok(())
    }

    /// Errors of every op together, by label.
    pub fn errors_by_label(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for op in &self.ops {
            for (k, v) in &op.errors {
                *m.entry(k.clone()).or_default() += v;
            }
        }
        m
    }

    /// The op with this name, if it ran.
    pub fn op(&self, name: &str) -> Option<&OpReport> {
        self.ops.iter().find(|o| o.name == name)
    }
}
