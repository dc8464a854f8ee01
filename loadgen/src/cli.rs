//! The command line: flags, and what each command does with them. `main.rs`
//! only parses and calls [`execute`].
//!
//! This module must never start or stop servers, and never print a code.

use crate::capacity::{Probe, ProbeResult, find_capacity};
use crate::compare::{CompareConfig, compare, table};
use crate::mix::{Mix, Scenario};
use crate::radius::RadiusBackend;
use crate::run::{Mode, Pacing, RunConfig, run};
use crate::slo::{Slo, parse_duration};
use crate::target::{Backend, DestPlan, RedisBackend, TargetAddr};
use crate::watchword::WatchwordBackend;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use watchword_gateway::client::{ClientConfig, ClientTls};

fn pacing(s: &str) -> Result<Pacing, String> {
    match s {
        "connection" => Ok(Pacing::Connection),
        "thread" => Ok(Pacing::Thread),
        _ => Err(format!("expected connection or thread, got {s:?}")),
    }
}

fn dur(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// `watchword-loadgen`: open-loop load generator for Watchword and the Redis OTP baseline.
#[derive(Parser, Debug)]
#[command(
    name = "watchword-loadgen",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// `compare`, or nothing for a single run.
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    /// Flags of a single run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Drive a running gateway and a running redis-server back to back and print a table.
    Compare(Box<CompareArgs>),
    /// Durable upserts: closed-loop PUT /v1/users through the HTTP API.
    Users(UsersArgs),
}

/// Flags of `users`.
#[derive(Args, Debug, Clone)]
pub struct UsersArgs {
    /// The gateway's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:9401")]
    pub http: String,
    /// An admin key of the HTTP API.
    #[arg(long, default_value = "demo-admin-key")]
    pub http_key: String,
    /// Connections (each one request at a time).
    #[arg(short = 'c', long, default_value_t = 50)]
    pub connections: usize,
    /// Measured duration.
    #[arg(long, default_value = "10s", value_parser = dur)]
    pub duration: Duration,
    /// Warm-up, excluded from the results.
    #[arg(long, default_value = "1s", value_parser = dur)]
    pub warmup: Duration,
    /// Distinct users each connection writes (then updates again).
    #[arg(long, default_value_t = 100_000)]
    pub users_per_connection: u64,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Flags shared by runs and comparisons.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Watchword tenant.
    #[arg(long, default_value = "demo")]
    pub tenant: String,
    /// Watchword tenant key.
    #[arg(long, default_value = "demo-key")]
    pub key: String,
    /// Tenant with the simulator role, for the outbox (defaults to --tenant).
    #[arg(long)]
    pub sim_tenant: Option<String>,
    /// Its key (defaults to --key).
    #[arg(long)]
    pub sim_key: Option<String>,
    /// Connect to Watchword over TLS.
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA to trust with --tls.
    #[arg(long, default_value = "ca.pem")]
    pub tls_ca: PathBuf,
    /// Server name to expect with --tls.
    #[arg(long, default_value = "localhost")]
    pub tls_server_name: String,
    /// Connections.
    #[arg(short = 'c', long, default_value_t = 50)]
    pub connections: usize,
    /// Measured duration (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = dur)]
    pub duration: Duration,
    /// Warm-up, excluded from the results.
    #[arg(long, default_value = "1s", value_parser = dur)]
    pub warmup: Duration,
    /// Challenges issued before the run for wrong, resend and verify. Their
    /// codes are delivered too: a large pool delays the flows' codes on a
    /// gateway whose simulated carriers are slower than the issue rate.
    #[arg(long, default_value_t = 1_000)]
    pub pool: usize,
    /// How long a flow waits for its code before it counts as failed.
    #[arg(long, default_value = "5s", value_parser = dur)]
    pub flow_timeout: Duration,
    /// How long one request may take before it counts as a timeout.
    #[arg(long, default_value = "10s", value_parser = dur)]
    pub timeout: Duration,
    /// Sends this much later than intended count as late.
    #[arg(long, default_value = "1ms", value_parser = dur)]
    pub late_threshold: Duration,
    /// How the open loop keeps its schedule: `connection` (each connection's
    /// task paces itself on the runtime's 1 ms timer, as wrk2 does: little
    /// CPU, starts up to ~1 ms late) or `thread` (a pacing thread wakes for
    /// each start: exact starts, two thread wake-ups per request). Response
    /// time counts from the intended start either way.
    #[arg(long, default_value = "connection", value_parser = pacing)]
    pub pacing: Pacing,
    /// Use e-mail destinations instead of phone numbers.
    #[arg(long)]
    pub email: bool,
    /// Distinct destinations (0 = a fresh one per request; set it small to
    /// measure the per-destination limit).
    #[arg(long, default_value_t = 0)]
    pub destinations: u64,
    /// Most flows waiting for codes at once.
    #[arg(long, default_value_t = 100_000)]
    pub max_pending_flows: usize,
    /// Users the `check` and `totp` scenarios spread over; made before the
    /// run through the HTTP API unless they exist already (`check`: each
    /// with an e-mail method confirmed from the outbox; `totp`: each with a
    /// TOTP token imported from CSV, good for 3 accepts a run).
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// The gateway's HTTP API, for provisioning `check` users.
    #[arg(long, default_value = "http://127.0.0.1:9401")]
    pub http: String,
    /// An admin key of the HTTP API.
    #[arg(long, default_value = "demo-admin-key")]
    pub http_key: String,
    /// The shared secret of a radius:// target.
    #[arg(long, default_value = "demo-radius-secret")]
    pub radius_secret: String,
    /// The static password of the `pap` scenario (radius:// targets).
    #[arg(long, default_value = "lg-password")]
    pub radius_password: String,
    /// With a radius:// target: the Watchword gateway (binary protocol)
    /// whose simulated outbox the `flow` scenario reads, and whose users
    /// are provisioned; `none` for a RADIUS server that is not Watchword.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub radius_gateway: String,
    /// Accept RADIUS replies without a Message-Authenticator (their
    /// Response Authenticator is still checked): FreeRADIUS before 3.2.5.
    #[arg(long)]
    pub radius_unsigned_replies: bool,
}

/// Flags of a single run (and of --find-capacity).
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// watchword://HOST:PORT, redis://HOST:PORT or radius://HOST:PORT.
    #[arg(long, default_value = "watchword://127.0.0.1:7400")]
    pub target: TargetAddr,
    /// Offered rate, scenario starts per second (open loop).
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Closed loop: as fast as replies allow.
    #[arg(long)]
    pub closed: bool,
    /// With a redis:// target: issue with the baseline's `issue_queue.lua`
    /// (store the challenge and queue its message on a capped stream for
    /// delivery workers) instead of the store-only `issue.lua`.
    #[arg(long)]
    pub redis_queue: bool,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// What each request does: a weighted mix `NAME=WEIGHT,...` or one
    /// name. `flow`: ISSUE, read the code from the simulated outbox, VERIFY
    /// it (over radius://: CHECK with an empty password, then the code with
    /// the State). `wrong`: VERIFY a wrong code on a pre-issued challenge.
    /// `resend`: RESEND a pre-issued challenge. `unknown`: VERIFY an id never
    /// issued. `issue`, `verify`, `ping`: that one request alone. `check`:
    /// CHECK starting an e-mail challenge for one of --users users. `totp`:
    /// CHECK answered with a fresh TOTP code of one of --users tokens
    /// (imported first). `pap`: a RADIUS request with --radius-password (the
    /// FreeRADIUS baseline). `check` and `totp` make their users through
    /// the HTTP API (--http, --http-key) and need Watchword.
    #[arg(long, default_value = "flow=80,wrong=10,resend=5,unknown=5")]
    pub mix: Mix,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write HdrHistogram percentile distributions (.hgrm) into this directory.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Write the percentile spectrum (or, with --find-capacity, the capacity chart) as SVG.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Find the sustainable throughput under --slo.
    #[arg(long)]
    pub find_capacity: bool,
    /// Objectives for --find-capacity, e.g. p99=1ms,p999=5ms.
    #[arg(long, default_value = "p99=1ms")]
    pub slo: Slo,
    /// Rates swept by --find-capacity (10 = 10%, 20%, ... 100%).
    #[arg(long, default_value_t = 10)]
    pub steps: u32,
    /// No progress lines.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// The gateway's metrics endpoint, read before an open-loop run against
    /// watchword:// for its SMS sender capacity
    /// (`watchword_sender_capacity_per_second`): a run offering more SMS to
    /// its phone numbers than the senders carry is warned on stderr and in
    /// the report. Default: http://HOST:9400/metrics of --target's host;
    /// `none` skips the check.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
}

impl RunArgs {
    /// The metrics URL to read the sender capacity from, if any.
    fn metrics_url(&self, addr: &str) -> Option<String> {
        match self.metrics.as_deref() {
            Some("none") => None,
            Some(url) => Some(url.to_owned()),
            None => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                Some(format!("http://{host}:9400/metrics"))
            }
        }
    }
}

/// Before an open-loop run against a gateway: reads its SMS sender capacity
/// and says (on stderr, and returns for the report) when the run offers
/// more SMS to its phone numbers than the senders carry. An unreadable
/// endpoint is said once, and the run goes on.
async fn sender_capacity_check(a: &RunArgs, addr: &str) -> Vec<String> {
    if a.closed {
        return Vec::new();
    }
    let rate = a.rate;
    let Some((country, prefix)) = a.common.plan().phone_country() else {
        return Vec::new();
    };
    let offered = crate::senders::sms_offered(&a.mix, rate);
    let Some(url) = a.metrics_url(addr).filter(|_| !offered.is_empty()) else {
        return Vec::new();
    };
    let sets = match crate::senders::read(&url).await {
        Ok(sets) if sets.is_empty() => {
            eprintln!(
                "note: {url} shows no SMS sender capacity (watchword_sender_capacity_per_second); the run goes on without the capacity check"
            );
            return Vec::new();
        }
        Ok(sets) => sets,
        Err(e) => {
            eprintln!(
                "note: cannot read the gateway's SMS sender capacity from {url} ({e}); the run goes on without the capacity check (--metrics URL, or --metrics none)"
            );
            return Vec::new();
        }
    };
    let pool = if a.mix.needs_pool() { a.common.pool } else { 0 };
    let warnings = crate::senders::warnings(&sets, country, prefix, &offered, pool);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    warnings
}

/// Flags of `compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The running gateway, watchword://HOST:PORT.
    #[arg(long, default_value = "watchword://127.0.0.1:7400")]
    pub watchword: TargetAddr,
    /// The running redis-server, redis://HOST:PORT.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: TargetAddr,
    /// Depths to measure, comma-separated.
    #[arg(long, default_value = "1,16", value_delimiter = ',')]
    pub depth: Vec<usize>,
    /// Ops to compare, comma-separated (issue, verify, ping).
    #[arg(long, default_value = "issue,verify", value_delimiter = ',')]
    pub ops: Vec<Scenario>,
    /// One equal offered rate for the open-loop p99 comparison, instead of
    /// `--at`.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Offered rates of the open-loop p99 comparison, as fractions of Redis's
    /// closed-loop maximum, comma-separated; each is run `--rounds` times per
    /// side, the order alternating.
    #[arg(long, default_value = "0.25,0.5", value_delimiter = ',')]
    pub at: Vec<f64>,
    /// Pause before each run, so that a server still working off the previous
    /// run (Watchword delivers every ISSUE after answering it) starts idle.
    #[arg(long, default_value = "5s", value_parser = dur)]
    pub settle: Duration,
    /// Closed-loop rounds per row, alternating Watchword and Redis: the table
    /// shows the medians and the median (and range) of the rounds' ratios. On
    /// a shared machine one run of either side moves by 10% or more.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Write the rows as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
}

impl Common {
    fn run_config(&self, mode: Mode, depth: usize, mix: Mix, progress: bool) -> RunConfig {
        RunConfig {
            mode,
            connections: self.connections,
            depth,
            duration: self.duration,
            warmup: self.warmup,
            mix,
            pool_size: self.pool,
            flow_timeout: self.flow_timeout,
            request_timeout: self.timeout,
            late_threshold: self.late_threshold,
            max_pending_flows: self.max_pending_flows,
            progress,
            salt: None,
            pacing: self.pacing,
        }
    }

    fn plan(&self) -> DestPlan {
        DestPlan {
            distinct: self.destinations,
            email: self.email,
        }
    }

    fn watchword(&self, addr: &str, depth: usize) -> WatchwordBackend {
        WatchwordBackend {
            addr: addr.to_string(),
            tenant: self.tenant.clone(),
            key: self.key.clone(),
            sim_tenant: self
                .sim_tenant
                .clone()
                .unwrap_or_else(|| self.tenant.clone()),
            sim_key: self.sim_key.clone().unwrap_or_else(|| self.key.clone()),
            tls: self.tls.then(|| ClientTls {
                server_name: self.tls_server_name.clone(),
                ca_cert_pem: self.tls_ca.clone(),
            }),
            dest: self.plan(),
            max_in_flight: depth.max(1) * 2 + 16,
            users: self.users,
        }
    }

    /// The Redis baseline; `queue` issues with `issue_queue.lua` to this
    /// run's destinations.
    fn redis(&self, addr: &str, queue: bool) -> RedisBackend {
        RedisBackend {
            addr: addr.to_string(),
            ttl_s: 300,
            attempts: 5,
            queue: queue.then(|| self.plan()),
        }
    }
}

struct RunProbe<B: Backend> {
    backend: Arc<B>,
    base: RunConfig,
}

impl<B: Backend> Probe for RunProbe<B> {
    async fn closed_max(&mut self) -> anyhow::Result<f64> {
        let cfg = RunConfig {
            mode: Mode::Closed,
            ..self.base.clone()
        };
        let r = run(self.backend.clone(), cfg).await?;
        eprintln!(
            "closed loop: {:.0}/s answered, {:.0}/s ok (errors {})",
            r.requests_rate, r.ok_rate, r.errors
        );
        // Fast failures are not capacity: the sweep scales scenario starts by
        // the share of requests answered without error.
        Ok(r.achieved_rate * r.ok_rate / r.requests_rate.max(1e-9))
    }

    async fn open(&mut self, rate: f64) -> anyhow::Result<ProbeResult> {
        let cfg = RunConfig {
            mode: Mode::Open { rate },
            ..self.base.clone()
        };
        let r = run(self.backend.clone(), cfg).await?;
        eprintln!(
            "open {rate:>9.0}/s: achieved {:.0}/s p99 {} errors {}",
            r.achieved_rate,
            crate::hist::fmt_us(r.response.p99_us),
            r.errors
        );
        Ok(ProbeResult {
            offered: rate,
            achieved: r.achieved_rate,
            response: r.response,
            requests: r.ops.iter().map(|o| o.count).sum(),
            errors: r.errors,
        })
    }
}

async fn single<B: Backend>(backend: B, a: &RunArgs, warnings: Vec<String>) -> anyhow::Result<()> {
    let backend = Arc::new(backend);
    let mode = if a.closed {
        Mode::Closed
    } else {
        Mode::Open { rate: a.rate }
    };
    if a.find_capacity {
        let base = a.common.run_config(mode, a.depth, a.mix.clone(), false);
        let mut p = RunProbe { backend, base };
        let rep = find_capacity(&mut p, &a.slo, a.steps).await?;
        print!("{}", rep.to_text());
        if let Some(f) = &a.json {
            std::fs::write(f, serde_json::to_vec_pretty(&rep)?)?;
        }
        if let Some(f) = &a.svg {
            let title = format!("{} {} latency vs offered rate", a.target, a.mix);
            std::fs::write(f, crate::svg::capacity_svg(&title, &rep, &a.slo))?;
        }
        return Ok(());
    }
    let cfg = a.common.run_config(mode, a.depth, a.mix.clone(), !a.quiet);
    let mut rep = run(backend, cfg).await?;
    rep.warnings = warnings;
    print!("{}", rep.to_text());
    if let Some(f) = &a.json {
        rep.write_json(f)?;
    }
    if let Some(d) = &a.hgrm {
        rep.write_hgrm(d)?;
    }
    if let Some(f) = &a.svg {
        let title = format!("{} {} ({})", rep.target, rep.scenario, rep.mode);
        std::fs::write(
            f,
            crate::svg::spectrum_svg(
                &title,
                &[
                    ("response time", &rep.response_hist),
                    ("service time", &rep.service_hist),
                ],
            ),
        )?;
    }
    Ok(())
}

/// Makes the users a `check`, `flow` over RADIUS, or `totp` run needs,
/// through the gateway's HTTP API (and its outbox, for confirmations).
async fn provision_for(a: &RunArgs, g: &WatchwordBackend, radius: bool) -> anyhow::Result<()> {
    if a.mix.entries().iter().any(|(s, _)| *s == Scenario::Totp) {
        let c = &a.common;
        let t0 = std::time::Instant::now();
        let made = crate::users::provision_tokens(&c.http, &c.http_key, c.users).await?;
        eprintln!(
            "totp: {} users with a token ({} imported now) in {:.1} s; each token \
             accepts 3 codes a run (reruns within 90 s find its steps spent)",
            c.users,
            made,
            t0.elapsed().as_secs_f64()
        );
    }
    let users_challenged = a
        .mix
        .entries()
        .iter()
        .any(|(s, _)| *s == Scenario::Check || (radius && *s == Scenario::Flow));
    if users_challenged {
        let c = &a.common;
        let t0 = std::time::Instant::now();
        let sim = ClientConfig {
            addr: g.addr.clone(),
            tenant: g.sim_tenant.clone(),
            key: g.sim_key.clone(),
            ..ClientConfig::default()
        };
        let made =
            crate::users::provision(&c.http, &c.http_key, sim, c.users, c.connections).await?;
        eprintln!(
            "check: {} users ready ({} confirmed now) in {:.1} s",
            c.users,
            made,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Runs what the command line asked for.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Some(Cmd::Compare(c)) => {
            let (TargetAddr::Watchword(w), TargetAddr::Redis(r)) = (&c.watchword, &c.redis) else {
                anyhow::bail!("compare needs --watchword watchword://.. and --redis redis://..");
            };
            anyhow::ensure!(
                c.at.iter().all(|f| f.is_finite() && *f > 0.0 && *f <= 2.0),
                "--at: fractions of Redis's maximum must be above 0 and at most 2, got {:?}",
                c.at
            );
            let depth_max = c.depth.iter().copied().max().unwrap_or(1);
            let cfg = CompareConfig {
                base: c
                    .common
                    .run_config(Mode::Closed, 1, Mix::single(Scenario::Issue), false),
                depths: c.depth.clone(),
                ops: c.ops.clone(),
                equal_rate: c.rate,
                fractions: c.at.clone(),
                settle: c.settle,
                rounds: c.rounds as usize,
            };
            eprintln!(
                "compare: {} connections, depths {:?}, {:?} measured + {:?} warm-up per run, {:?} pause before each, {} round(s) per row (closed loop, and open loop at each rate)",
                c.common.connections,
                c.depth,
                c.common.duration,
                c.common.warmup,
                c.settle,
                c.rounds
            );
            let rows = compare(
                c.common.watchword(w, depth_max),
                c.common.redis(r, false),
                c.common.redis(r, true),
                &cfg,
            )
            .await?;
            print!("{}", table(&rows));
            if let Some(f) = &c.json {
                std::fs::write(f, serde_json::to_vec_pretty(&rows)?)?;
            }
            Ok(())
        }
        Some(Cmd::Users(u)) => {
            let rep = crate::users::upserts(
                &u.http,
                &u.http_key,
                u.connections,
                u.warmup,
                u.duration,
                u.users_per_connection,
            )
            .await?;
            print!("{}", rep.to_text());
            if let Some(f) = &u.json {
                std::fs::write(f, serde_json::to_vec_pretty(&rep)?)?;
            }
            Ok(())
        }
        None => {
            let a = &cli.run;
            match &a.target {
                TargetAddr::Watchword(addr) => {
                    let backend = a.common.watchword(addr, a.depth);
                    provision_for(a, &backend, false).await?;
                    let warnings = if a.find_capacity {
                        Vec::new()
                    } else {
                        sender_capacity_check(a, addr).await
                    };
                    single(backend, a, warnings).await
                }
                TargetAddr::Redis(addr) => {
                    single(a.common.redis(addr, a.redis_queue), a, Vec::new()).await
                }
                TargetAddr::Radius(addr) => {
                    let c = &a.common;
                    let gateway = (c.radius_gateway != "none")
                        .then(|| c.watchword(&c.radius_gateway, a.depth));
                    if let Some(g) = &gateway {
                        provision_for(a, g, true).await?;
                    }
                    let backend = RadiusBackend {
                        addr: addr.clone(),
                        secret: c.radius_secret.clone(),
                        password: c.radius_password.clone(),
                        require_signed_replies: !c.radius_unsigned_replies,
                        users: c.users,
                        outbox: gateway,
                    };
                    single(backend, a, Vec::new()).await
                }
            }
        }
    }
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    #[test]
    fn every_scenario_is_described_in_the_help() {
        let help = super::Cli::command().render_long_help().to_string();
        for sc in crate::mix::Scenario::ALL {
            assert!(
                help.contains(&format!("`{}`", sc.name())),
                "{} is not described",
                sc.name()
            );
        }
    }
}
