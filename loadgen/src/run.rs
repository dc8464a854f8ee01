//! The runner: opens the connections, issues the pre-run pool, paces requests
//! (open loop: the i-th intended start is `t0 + i/R`, computed, never `now()`
//! after waking; closed loop: back to back), runs the scenarios, records
//! response time (from the intended start) and service time (from the actual
//! send) into per-shard histograms, prints progress and builds the report.
//!
//! Pacing runs on its own OS thread with `std::thread::sleep` (tens of µs of
//! slack) instead of the tokio timer (1 ms granularity), so that the generator
//! does not add a millisecond to every response time. This module must never
//! hold a sync lock across an `.await`, never queue without a bound, and never
//! correct latencies a second time (no `record_correct`).

use crate::hist::{Hist, fmt_us};
use crate::mix::{Mix, Scenario};
use crate::report::{FlowReport, OpReport, RunReport};
use crate::router::{CodeRouter, Wait};
use crate::target::{Backend, ErrLabel, Key, OutcomeLabel, WRONG_CODE, unknown_id};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::task::TaskTracker;

/// Open or closed loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Fixed arrival rate (scenario starts per second), independent of replies.
    Open {
        /// Scenario starts per second.
        rate: f64,
    },
    /// Every in-flight slot sends its next request as soon as the last returns.
    Closed,
}

/// Everything a run needs besides the target.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Open or closed loop.
    pub mode: Mode,
    /// Connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Measured duration.
    pub duration: Duration,
    /// Warm-up before the measured window (excluded).
    pub warmup: Duration,
    /// The scenario mix.
    pub mix: Mix,
    /// Challenges issued before the run for `wrong`, `resend`, `verify`.
    pub pool_size: usize,
    /// How long a flow waits for its code.
    pub flow_timeout: Duration,
    /// How long one request may take before it counts as a `timeout` error.
    pub request_timeout: Duration,
    /// A send this much later than its intended start counts as late.
    pub late_threshold: Duration,
    /// Flows waiting for codes at most (also bounds the code router).
    pub max_pending_flows: usize,
    /// Print a progress line per second on stderr.
    pub progress: bool,
    /// Added to every destination number, so runs against the same server use
    /// fresh destinations; `None` picks a random one.
    pub salt: Option<u64>,
    /// How the open loop keeps its schedule.
    pub pacing: Pacing,
}

/// How the open loop keeps its schedule. Either way the i-th start is
/// intended at `t0 + i/R` (connection `i mod C`) and response time counts
/// from that instant, so any lateness of the generator is in the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Pacing {
    /// Each connection's task keeps its own share of the schedule, as wrk2
    /// does: it sends whatever is due, then sleeps on the runtime's timer
    /// (1 ms ticks) until the next start or an answer; all connections run
    /// on one thread. No thread wakes per request; a start may leave up to
    /// about a millisecond late, which the response time shows.
    #[default]
    Connection,
    /// One pacing thread sleeps to each intended start (tens of µs of slack)
    /// and hands the start to its connection's task: exact starts, but two
    /// thread wake-ups per request.
    Thread,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Open { rate: 1_000.0 },
            connections: 4,
            depth: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            mix: Mix::single(Scenario::Ping),
            pool_size: 10_000,
            flow_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            late_threshold: Duration::from_millis(1),
            max_pending_flows: 100_000,
            progress: false,
            salt: None,
            pacing: Pacing::default(),
        }
    }
}

/// One scheduled scenario start.
#[derive(Clone, Copy, Debug)]
struct Ticket {
    seq: u64,
    intended: Instant,
    measured: bool,
}

#[derive(Default)]
struct OpRec {
    scenario: Option<Scenario>,
    count: u64,
    ok: u64,
    late: u64,
    errors: BTreeMap<&'static str, u64>,
    outcomes: BTreeMap<&'static str, u64>,
    response: Hist,
    service: Hist,
}

#[derive(Default)]
struct FlowRec {
    approved: u64,
    errors: BTreeMap<String, u64>,
    e2e: Hist,
    delivery: Hist,
}

/// One shard of results; lanes of one connection share a shard.
#[derive(Default)]
struct Shard {
    ops: BTreeMap<&'static str, OpRec>,
    flow: Option<FlowRec>,
    interval: Hist,
    started: u64,
    completed: u64,
    late: u64,
    last_done: Option<Instant>,
}

struct Ctx<B: Backend> {
    cfg: RunConfig,
    pool: Vec<Key>,
    router: Option<Arc<CodeRouter>>,
    shards: Vec<Mutex<Shard>>,
    flow_sem: Arc<Semaphore>,
    tracker: TaskTracker,
    salt: u64,
    warm_end: Instant,
    // Progress counters (all requests, measured or not).
    reqs: AtomicU64,
    errs: AtomicU64,
    late: AtomicU64,
    _b: std::marker::PhantomData<fn() -> B>,
}

type Res = Result<Option<OutcomeLabel>, ErrLabel>;

impl<B: Backend> Ctx<B> {
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        shard: usize,
        op: &'static str,
        sc: Scenario,
        measured: bool,
        intended: Instant,
        sent: Instant,
        done: Instant,
        res: Res,
        late: bool,
    ) {
        let response = done.saturating_duration_since(intended);
        let service = done.saturating_duration_since(sent);
        self.reqs.fetch_add(1, Ordering::Relaxed);
        if res.is_err() {
            self.errs.fetch_add(1, Ordering::Relaxed);
        }
        let mut s = self.shards[shard].lock();
        s.interval.record(response);
        if !measured {
            return;
        }
        let r = s.ops.entry(op).or_default();
        r.scenario = Some(sc);
        r.count += 1;
        if late {
            r.late += 1;
        }
        match res {
            Ok(out) => {
                r.ok += 1;
                if let Some(o) = out {
                    *r.outcomes.entry(o).or_default() += 1;
                }
            }
            Err(e) => *r.errors.entry(e).or_default() += 1,
        }
        r.response.record(response);
        r.service.record(service);
    }

    fn ticket_done(&self, shard: usize, t: &Ticket, done: Instant) {
        if !t.measured {
            return;
        }
        let mut s = self.shards[shard].lock();
        s.completed += 1;
        if s.last_done.is_none_or(|l| done > l) {
            s.last_done = Some(done);
        }
    }

    fn flow_end(
        &self,
        shard: usize,
        t: &Ticket,
        e2e: Option<Duration>,
        delivery: Option<Duration>,
        err: Option<String>,
    ) {
        if !t.measured {
            return;
        }
        let mut s = self.shards[shard].lock();
        let f = s.flow.get_or_insert_with(FlowRec::default);
        match err {
            None => f.approved += 1,
            Some(e) => *f.errors.entry(e).or_default() += 1,
        }
        if let Some(d) = e2e {
            f.e2e.record(d);
        }
        if let Some(d) = delivery {
            f.delivery.record(d);
        }
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, ErrLabel>>,
    ) -> Result<T, ErrLabel> {
        match tokio::time::timeout(self.cfg.request_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err("timeout"),
        }
    }
}

/// Runs one scenario start on `conn`. Returns when the lane may take the next
/// ticket (a flow's wait for its code continues in a tracked task).
async fn exec<B: Backend>(ctx: &Arc<Ctx<B>>, conn: &B::Conn, shard: usize, t: Ticket) {
    let sc = ctx.cfg.mix.pick(t.seq);
    let n = ctx.salt.wrapping_add(t.seq);
    if t.measured {
        ctx.shards[shard].lock().started += 1;
    }
    let sent = Instant::now();
    // Closed loop has no schedule to fall behind.
    let late = matches!(ctx.cfg.mode, Mode::Open { .. })
        && sent.saturating_duration_since(t.intended) > ctx.cfg.late_threshold;
    if late {
        ctx.late.fetch_add(1, Ordering::Relaxed);
        if t.measured {
            ctx.shards[shard].lock().late += 1;
        }
    }
    let pool_id = |salt: u64| {
        ctx.pool[(crate::mix::splitmix64(t.seq ^ salt) % ctx.pool.len() as u64) as usize]
    };
    let (op, res): (&'static str, Res) = match sc {
        Scenario::Ping => ("ping", ctx.timed(B::ping(conn)).await.map(|_| None)),
        Scenario::Issue => ("issue", ctx.timed(B::issue(conn, n)).await.map(|_| None)),
        Scenario::Check => ("check", ctx.timed(B::check(conn, n)).await.map(Some)),
        Scenario::Totp => ("totp", ctx.timed(B::totp(conn, n, t.seq)).await.map(Some)),
        Scenario::Pap => ("pap", ctx.timed(B::pap(conn, n)).await.map(Some)),
        Scenario::Verify => (
            "verify",
            ctx.timed(B::verify(conn, pool_id(1), WRONG_CODE))
                .await
                .map(Some),
        ),
        Scenario::Wrong => (
            "wrong:verify",
            ctx.timed(B::verify(conn, pool_id(2), WRONG_CODE))
                .await
                .map(Some),
        ),
        Scenario::Unknown => (
            "unknown:verify",
            ctx.timed(B::verify(conn, unknown_id(n), WRONG_CODE))
                .await
                .map(Some),
        ),
        Scenario::Resend => (
            "resend",
            ctx.timed(B::resend(conn, pool_id(3))).await.map(|_| None),
        ),
        Scenario::Flow => {
            let r = ctx.timed(B::issue(conn, n)).await;
            let done = Instant::now();
            ctx.record(
                shard,
                "flow:issue",
                sc,
                t.measured,
                t.intended,
                sent,
                done,
                r.as_ref().map(|_| None).map_err(|e| *e),
                late,
            );
            match r {
                Err(e) => {
                    ctx.flow_end(shard, &t, None, None, Some(format!("issue:{e}")));
                    ctx.ticket_done(shard, &t, done);
                }
                Ok(issued) if ctx.cfg.mode == Mode::Closed => {
                    // Closed loop: the lane owns the whole flow, so the loop
                    // measures complete flows, not issues racing ahead of delivery.
                    flow_rest(ctx, conn, shard, t, issued.id, issued.code, done).await;
                }
                Ok(issued) => {
                    // Bounded: a lane waits here when too many flows wait for codes.
                    let permit = ctx.flow_sem.clone().acquire_owned().await.ok();
                    let ctx2 = ctx.clone();
                    let conn2 = conn.clone();
                    ctx.tracker.spawn(async move {
                        flow_rest(&ctx2, &conn2, shard, t, issued.id, issued.code, done).await;
                        drop(permit);
                    });
                }
            }
            return;
        }
    };
    let done = Instant::now();
    ctx.record(shard, op, sc, t.measured, t.intended, sent, done, res, late);
    ctx.ticket_done(shard, &t, done);
}

/// The second half of a flow: wait for the code, verify it.
async fn flow_rest<B: Backend>(
    ctx: &Arc<Ctx<B>>,
    conn: &B::Conn,
    shard: usize,
    t: Ticket,
    id: Key,
    code: Option<String>,
    issued_at: Instant,
) {
    let mut delivery = None;
    let (code, arrived) = match code {
        Some(c) => (c, issued_at),
        None => {
            let Some(router) = &ctx.router else {
                ctx.flow_end(shard, &t, None, None, Some("no_outbox".into()));
                ctx.ticket_done(shard, &t, Instant::now());
                return;
            };
            let got = match router.wait(id) {
                Wait::Ready(c, at) => Some((c, at)),
                Wait::Full => None,
                Wait::Pending(rx) => match tokio::time::timeout(ctx.cfg.flow_timeout, rx).await {
                    Ok(Ok(v)) => Some(v),
                    _ => {
                        router.cancel(&id);
                        None
                    }
                },
            };
            match got {
                Some((c, at)) => {
                    delivery = Some(at.saturating_duration_since(issued_at));
                    (c, at.max(issued_at))
                }
                None => {
                    ctx.flow_end(shard, &t, None, None, Some("code_timeout".into()));
                    ctx.ticket_done(shard, &t, Instant::now());
                    return;
                }
            }
        }
    };
    let sent = Instant::now();
    let r = ctx.timed(B::verify(conn, id, &code)).await;
    let done = Instant::now();
    ctx.record(
        shard,
        "flow:verify",
        Scenario::Flow,
        t.measured,
        arrived,
        sent,
        done,
        r.map(Some),
        false,
    );
    let err = match r {
        Ok("approved") => None,
        Ok(o) => Some(format!("verify:{o}")),
        Err(e) => Some(format!("verify:{e}")),
    };
    ctx.flow_end(
        shard,
        &t,
        Some(done.saturating_duration_since(t.intended)),
        delivery,
        err,
    );
    ctx.ticket_done(shard, &t, done);
}

/// The intended start of ticket `i` at `rate` per second, as an offset from t0.
/// Computed from `i`, so a late wake-up never shifts the schedule.
pub fn intended_offset(i: u64, rate: f64) -> Duration {
    Duration::from_nanos((i as f64 * 1e9 / rate) as u64)
}

/// How many tickets an open-loop run of `span` at `rate` schedules
/// (every `i` with `i / rate < span`).
pub fn scheduled_count(span: Duration, rate: f64) -> u64 {
    let n = (span.as_secs_f64() * rate).ceil() as u64;
    // Guard the float edge: keep exactly the i whose offset is below span.
    let mut n = n.saturating_add(1);
    while n > 0 && intended_offset(n - 1, rate) >= span {
        n -= 1;
    }
    n
}

/// Issues the pool used by `wrong`, `resend` and `verify`, with `c × depth`
/// concurrent callers. Not measured.
async fn issue_pool<B: Backend>(
    conns: &[B::Conn],
    depth: usize,
    size: usize,
    salt: u64,
) -> anyhow::Result<Vec<Key>> {
    let next = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(Vec::with_capacity(size)));
    let errors = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for c in conns {
        for _ in 0..depth {
            let (c, next, out, errors) = (c.clone(), next.clone(), out.clone(), errors.clone());
            set.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= size as u64 {
                        break;
                    }
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        B::issue(&c, salt.wrapping_add(i)),
                    )
                    .await
                    {
                        Ok(Ok(is)) => out.lock().push(is.id),
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    }
    while set.join_next().await.is_some() {}
    let v = std::mem::take(&mut *out.lock());
    if v.is_empty() {
        anyhow::bail!(
            "could not issue any challenge for the pool ({} errors)",
            errors.load(Ordering::Relaxed)
        );
    }
    Ok(v)
}

/// Runs one measurement against `backend` and returns its report. An open
/// loop paced per connection runs on a single-threaded runtime of its own
/// (a dedicated thread); the other runs use the caller's runtime.
pub async fn run<B: Backend>(backend: Arc<B>, cfg: RunConfig) -> anyhow::Result<RunReport> {
    if matches!(cfg.mode, Mode::Open { .. }) && cfg.pacing == Pacing::Connection {
        // The open loop runs on one thread of its own, as wrk2's do: with
        // two workers every answer that arrived while both slept woke a
        // second one to steal work, and the generator used 14 us of CPU per
        // request at a quarter of Redis's maximum against 9 us here (and
        // 8 us closed loop, which keeps the multi-threaded runtime).
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("loadgen-open-loop".into())
            .spawn(move || {
                let report = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(run_here(backend, cfg)));
                let _ = tx.send(report);
            })?;
        return rx
            .await
            .map_err(|_| anyhow::anyhow!("the open-loop thread ended without a report"))?;
    }
    run_here(backend, cfg).await
}

async fn run_here<B: Backend>(backend: Arc<B>, cfg: RunConfig) -> anyhow::Result<RunReport> {
    anyhow::ensure!(
        cfg.connections > 0 && cfg.depth > 0,
        "connections and depth must be positive"
    );
    if let Mode::Open { rate } = cfg.mode {
        anyhow::ensure!(rate.is_finite() && rate > 0.0, "rate must be positive");
    }
    let mut conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        conns.push(backend.connect().await?);
    }
    let salt = cfg.salt.unwrap_or_else(|| rand::random::<u64>() >> 8);
    let router = if cfg.mix.has_flow() {
        match backend.outbox().await? {
            Some(rx) => {
                let r = Arc::new(CodeRouter::new(cfg.max_pending_flows.saturating_mul(2)));
                tokio::spawn(r.clone().run(rx));
                Some(r)
            }
            None => None,
        }
    } else {
        None
    };
    let pool = if cfg.mix.needs_pool() {
        issue_pool::<B>(&conns, cfg.depth, cfg.pool_size.max(1), salt ^ (1 << 62)).await?
    } else {
        Vec::new()
    };

    let nshards = cfg.connections.min(16);
    let t0 = Instant::now() + Duration::from_millis(20);
    let warm_end = t0 + cfg.warmup;
    let end = warm_end + cfg.duration;
    let ctx = Arc::new(Ctx::<B> {
        flow_sem: Arc::new(Semaphore::new(cfg.max_pending_flows.max(1))),
        cfg: cfg.clone(),
        pool,
        router: router.clone(),
        shards: (0..nshards).map(|_| Mutex::new(Shard::default())).collect(),
        tracker: TaskTracker::new(),
        salt,
        warm_end,
        reqs: AtomicU64::new(0),
        errs: AtomicU64::new(0),
        late: AtomicU64::new(0),
        _b: std::marker::PhantomData,
    });

    let stop = Arc::new(AtomicBool::new(false));
    let progress = if cfg.progress {
        Some(tokio::spawn(progress_loop(ctx.clone(), t0, stop.clone())))
    } else {
        None
    };

    let cpu = CpuClock::start();
    let mut lanes = tokio::task::JoinSet::new();
    let mut pacer = None;
    match cfg.mode {
        Mode::Open { rate } if cfg.pacing == Pacing::Connection => {
            let total = scheduled_count(end - t0, rate);
            let c = conns.len() as u64;
            for (ci, conn) in conns.iter().enumerate() {
                let (ctx, conn) = (ctx.clone(), conn.clone());
                let depth = cfg.depth;
                lanes.spawn(async move {
                    paced_connection(&ctx, &conn, ci, c, depth, total, rate, t0).await;
                });
            }
        }
        Mode::Open { rate } => {
            let cap = ((rate / cfg.connections as f64) as usize).clamp(1024, 65_536);
            let mut txs = Vec::with_capacity(cfg.connections);
            for (ci, conn) in conns.iter().enumerate() {
                let (tx, rx) = mpsc::channel::<Ticket>(cap);
                txs.push(tx);
                let rx = Arc::new(tokio::sync::Mutex::new(rx));
                for _ in 0..cfg.depth {
                    let (ctx, conn, rx) = (ctx.clone(), conn.clone(), rx.clone());
                    lanes.spawn(async move {
                        loop {
                            let t = { rx.lock().await.recv().await };
                            let Some(t) = t else { break };
                            exec(&ctx, &conn, ci % nshards, t).await;
                        }
                    });
                }
            }
            let span = end - t0;
            let total = scheduled_count(span, rate);
            pacer = Some(std::thread::spawn(move || {
                let c = txs.len() as u64;
                for i in 0..total {
                    let intended = t0 + intended_offset(i, rate);
                    let now = Instant::now();
                    if intended > now {
                        std::thread::sleep(intended - now);
                    }
                    let t = Ticket {
                        seq: i,
                        intended,
                        measured: intended >= warm_end,
                    };
                    if txs[(i % c) as usize].blocking_send(t).is_err() {
                        break;
                    }
                }
            }));
        }
        Mode::Closed => {
            let next = Arc::new(AtomicU64::new(0));
            tokio::time::sleep_until(t0.into()).await;
            for (ci, conn) in conns.iter().enumerate() {
                for _ in 0..cfg.depth {
                    let (ctx, conn, next) = (ctx.clone(), conn.clone(), next.clone());
                    lanes.spawn(async move {
                        loop {
                            let now = Instant::now();
                            if now >= end {
                                break;
                            }
                            let t = Ticket {
                                seq: next.fetch_add(1, Ordering::Relaxed),
                                intended: now,
                                measured: now >= ctx.warm_end,
                            };
                            exec(&ctx, &conn, ci % nshards, t).await;
                        }
                    });
                }
            }
        }
    }
    while lanes.join_next().await.is_some() {}
    if let Some(p) = pacer {
        let _ = tokio::task::spawn_blocking(move || p.join()).await;
    }
    ctx.tracker.close();
    ctx.tracker.wait().await;
    let (cpu_us, wall_us) = cpu.elapsed_us();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let mut report = build_report(&ctx, &*backend, end);
    let sent = ctx.reqs.load(Ordering::Relaxed).max(1);
    report.generator_cpu_us_per_request = cpu_us / sent as f64;
    report.generator_cores = cpu_us / wall_us.max(1.0);
    Ok(report)
}

/// One connection's share of the open-loop schedule (starts `ci`, `ci + c`,
/// `ci + 2c`, ... of `total`), up to `depth` at once, paced on the runtime's
/// timer: everything due is sent at once, then the task sleeps until the next
/// start is due or an answer frees a slot.
#[allow(clippy::too_many_arguments)]
async fn paced_connection<B: Backend>(
    ctx: &Arc<Ctx<B>>,
    conn: &B::Conn,
    ci: usize,
    c: u64,
    depth: usize,
    total: u64,
    rate: f64,
    t0: Instant,
) {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    let shard = ci % ctx.shards.len();
    let mut inflight = FuturesUnordered::new();
    // One timer entry for the task's life, moved to each next start.
    let sleep = tokio::time::sleep_until(t0.into());
    tokio::pin!(sleep);
    let mut i = ci as u64;
    while i < total {
        let intended = t0 + intended_offset(i, rate);
        if inflight.len() >= depth {
            inflight.next().await;
            continue;
        }
        if intended > Instant::now() {
            sleep.as_mut().reset(intended.into());
            tokio::select! {
                () = &mut sleep => {}
                Some(()) = inflight.next(), if !inflight.is_empty() => continue,
            }
        }
        let t = Ticket {
            seq: i,
            intended,
            measured: intended >= ctx.warm_end,
        };
        inflight.push(exec(ctx, conn, shard, t));
        i += c;
    }
    while inflight.next().await.is_some() {}
}

/// The process's CPU time and the wall time since a start.
struct CpuClock {
    cpu: Duration,
    wall: Instant,
}

impl CpuClock {
    fn process_cpu() -> Duration {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    fn start() -> CpuClock {
        CpuClock {
            cpu: Self::process_cpu(),
            wall: Instant::now(),
        }
    }

    /// CPU µs used by every thread of the process, and wall µs, since the start.
    fn elapsed_us(&self) -> (f64, f64) {
        let cpu = Self::process_cpu().saturating_sub(self.cpu);
        (
            cpu.as_secs_f64() * 1e6,
            self.wall.elapsed().as_secs_f64() * 1e6,
        )
    }
}

async fn progress_loop<B: Backend>(ctx: Arc<Ctx<B>>, t0: Instant, stop: Arc<AtomicBool>) {
    let mut tick =
        tokio::time::interval_at((t0 + Duration::from_secs(1)).into(), Duration::from_secs(1));
    let (mut last_reqs, mut last_errs, mut last_late) = (0, 0, 0);
    let mut hist = Hist::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        hist.reset();
        for s in &ctx.shards {
            let mut s = s.lock();
            hist.merge(&s.interval);
            s.interval.reset();
        }
        let (r, e, l) = (
            ctx.reqs.load(Ordering::Relaxed),
            ctx.errs.load(Ordering::Relaxed),
            ctx.late.load(Ordering::Relaxed),
        );
        let phase = if Instant::now() < ctx.warm_end {
            " (warm-up)"
        } else {
            ""
        };
        eprintln!(
            "[{:>4.0}s] {:>8} req/s  errors {:>6}  late {:>6}  p99 {:>9}{}",
            t0.elapsed().as_secs_f64(),
            r - last_reqs,
            e - last_errs,
            l - last_late,
            fmt_us(hist.quantile_us(0.99)),
            phase
        );
        (last_reqs, last_errs, last_late) = (r, e, l);
    }
}

fn build_report<B: Backend>(ctx: &Ctx<B>, backend: &B, end: Instant) -> RunReport {
    let cfg = &ctx.cfg;
    let mut ops: BTreeMap<&'static str, OpRec> = BTreeMap::new();
    let mut flow: Option<FlowRec> = None;
    let (mut started, mut completed, mut late) = (0, 0, 0);
    let mut last_done = end;
    for s in &ctx.shards {
        let s = s.lock();
        started += s.started;
        completed += s.completed;
        late += s.late;
        if let Some(l) = s.last_done {
            last_done = last_done.max(l);
        }
        for (k, r) in &s.ops {
            let m = ops.entry(k).or_default();
            m.scenario = r.scenario;
            m.count += r.count;
            m.ok += r.ok;
            m.late += r.late;
            for (e, n) in &r.errors {
                *m.errors.entry(e).or_default() += n;
            }
            for (e, n) in &r.outcomes {
                *m.outcomes.entry(e).or_default() += n;
            }
            m.response.merge(&r.response);
            m.service.merge(&r.service);
        }
        if let Some(f) = &s.flow {
            let m = flow.get_or_insert_with(FlowRec::default);
            m.approved += f.approved;
            for (e, n) in &f.errors {
                *m.errors.entry(e.clone()).or_default() += n;
            }
            m.e2e.merge(&f.e2e);
            m.delivery.merge(&f.delivery);
        }
    }
    // The window: the measured duration, or longer if replies trailed past it.
    let window = cfg.duration.as_secs_f64().max(
        last_done
            .saturating_duration_since(ctx.warm_end)
            .as_secs_f64(),
    );
    let window = window.max(1e-9);
    let total_w: u64 = cfg.mix.entries().iter().map(|(_, w)| u64::from(*w)).sum();
    let target = match cfg.mode {
        Mode::Open { rate } => Some(rate),
        Mode::Closed => None,
    };
    let mut all_resp = Hist::new();
    let mut all_serv = Hist::new();
    let mut errors = 0;
    let mut total_reqs = 0;
    let mut total_ok = 0;
    let op_reports = ops
        .into_iter()
        .map(|(name, r)| {
            all_resp.merge(&r.response);
            all_serv.merge(&r.service);
            errors += r.count - r.ok;
            total_reqs += r.count;
            total_ok += r.ok;
            let share = r.scenario.map_or(0, |sc| {
                cfg.mix
                    .entries()
                    .iter()
                    .find(|(s, _)| *s == sc)
                    .map_or(0, |(_, w)| u64::from(*w))
            });
            OpReport {
                name: name.to_string(),
                count: r.count,
                ok: r.ok,
                errors: r.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                outcomes: r
                    .outcomes
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                target_rate: target.map(|t| t * share as f64 / total_w.max(1) as f64),
                achieved_rate: r.count as f64 / window,
                late_sends: r.late,
                response: r.response.summary(),
                service: r.service.summary(),
                response_hist: r.response,
                service_hist: r.service,
            }
        })
        .collect();
    let flow = flow.map(|f| {
        let flow_started = f.approved + f.errors.values().sum::<u64>();
        FlowReport {
            started: flow_started,
            approved: f.approved,
            errors: f.errors,
            end_to_end: f.e2e.summary(),
            delivery: f.delivery.summary(),
            end_to_end_hist: f.e2e,
        }
    });
    RunReport {
        target: backend.describe(),
        warnings: Vec::new(),
        scenario: cfg.mix.to_string(),
        mode: match cfg.mode {
            Mode::Open { .. } => "open".into(),
            Mode::Closed => "closed".into(),
        },
        connections: cfg.connections,
        depth: cfg.depth,
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        target_rate: target,
        achieved_rate: completed as f64 / window,
        requests_rate: total_reqs as f64 / window,
        ok_rate: total_ok as f64 / window,
        started,
        completed,
        late_sends: late,
        late_threshold_us: cfg.late_threshold.as_micros() as u64,
        errors,
        ops: op_reports,
        flow,
        outbox_dropped: ctx
            .router
            .as_ref()
            .map_or(0, |r| r.dropped.load(Ordering::Relaxed)),
        outbox_received: ctx
            .router
            .as_ref()
            .map_or(0, |r| r.received.load(Ordering::Relaxed)),
        generator_cpu_us_per_request: 0.0,
        generator_cores: 0.0,
        response: all_resp.summary(),
        service: all_serv.summary(),
        response_hist: all_resp,
        service_hist: all_serv,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_computed_not_measured() {
        assert_eq!(scheduled_count(Duration::from_secs(10), 1_000.0), 10_000);
        assert_eq!(scheduled_count(Duration::from_millis(1500), 3.0), 5);
        assert_eq!(intended_offset(1_000, 1_000.0), Duration::from_secs(1));
        assert_eq!(intended_offset(3, 2.0), Duration::from_millis(1500));
    }
}
