//! Chaos test of the real HTTP carrier through the router: the primary is an
//! [`HttpCarrier`] posting to an HTTP/1.1 server this test runs on 127.0.0.1,
//! the backup a simulated carrier. One steady stream of messages runs through
//! phases: healthy, 30% random 503s, 429 with Retry-After, answers slower
//! than the carrier's timeout and faster than it, the server killed mid-run
//! (listener and every open connection dropped) while answers are in flight,
//! a total outage (server dead, backup failing) that outlives short-TTL
//! challenges, and the server started again on the same port.
//!
//! After every phase: accepted = delivered + failed with nothing left queued
//! or awaiting a receipt; nothing sent once its challenge had expired (as
//! the recording wrappers saw it, and as the server saw it: the body's `id`
//! is the challenge id, checked against the ledger's expiry); at most five
//! tries per challenge; and, after each fault, traffic back on the primary.
//!
//! Real sockets and real time with short timeouts and a short breaker
//! cooldown; it must never assert on how long something took, never leave
//! anywhere but 127.0.0.1, and never print a message body (it holds a code).
//! Every server task it spawns ends when the test ends.

#[path = "delivery_support.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rand::Rng;
use support::{Recording, TestLedger, tries_per_id};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep};
use watchword_engine::delivery::{
    BreakerConfig, BreakerState, CarrierConfig, CarrierKind, CarrierSlot, DeliveryJob, HttpCarrier,
    HttpConfig, OutageMode, RetryConfig, Router, RouterConfig, SimulatedCarrier, SimulatedConfig,
    SlotHint, TenantDelivery, normalize,
};
use watchword_engine::{ChallengeId, Channel, Code, DeliveryState, ManualClock, TenantId};

/// The primary's answer timeout (generous: a loaded machine must not turn
/// a healthy answer into a timeout).
const TIMEOUT_MS: u64 = 1_000;
/// Breakers: five consecutive failures open them (as by default);
/// cooldowns 300..600 ms.
const BREAKER: BreakerConfig = BreakerConfig {
    failure_threshold: 5,
    cooldown_ms: 300,
    max_cooldown_ms: 600,
};
/// Longer than any breaker cooldown: a probe may go after this.
const PAST_COOLDOWN: Duration = Duration::from_millis(700);
/// The Retry-After the throttling server sends, s.
const RETRY_AFTER_S: u64 = 1;
/// A request sent just before its challenge expired may reach the server
/// just after: the server-side expiry check allows this much transit.
const TRANSIT_GRACE: Duration = Duration::from_millis(250);
/// TTL of the challenges that must outlive every fault.
const LONG_TTL: Duration = Duration::from_secs(120);
/// TTL of the challenges meant to expire during an outage.
const SHORT_TTL: Duration = Duration::from_secs(1);

const NOT_PENDING: &str = "no longer pending";
const TRIES_EXHAUSTED: &str = "all 5 tries failed";

/// How the test's server answers, switched at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// 200 at once.
    Healthy = 0,
    /// 503 on a random 30% of requests, else 200.
    Flaky = 1,
    /// 429 with `Retry-After: RETRY_AFTER_S`.
    Throttling = 2,
    /// 200 after `slow_ms`.
    Slow = 3,
}

/// One request the server read.
#[derive(Clone, Debug)]
struct Received {
    /// The body's `id` (the challenge id, 32 hex digits); empty if absent.
    id: String,
    at: Instant,
    /// The status it was (or was going to be) answered with.
    status: u16,
}

/// What the server's tasks share with the test.
struct Shared {
    mode: AtomicU8,
    slow_ms: AtomicU64,
    received: Mutex<Vec<Received>>,
    /// The ids of the requests read and not answered yet (a killed
    /// connection's until its task is dropped).
    in_progress: Mutex<Vec<String>>,
}

/// Keeps a request's id in [`Shared::in_progress`] until it is answered or
/// dropped.
struct InProgress<'a> {
    all: &'a Mutex<Vec<String>>,
    id: String,
}

impl<'a> InProgress<'a> {
    fn new(all: &'a Mutex<Vec<String>>, id: String) -> Self {
        all.lock().push(id.clone());
        Self { all, id }
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        let mut all = self.all.lock();
        if let Some(i) = all.iter().position(|x| *x == self.id) {
            all.swap_remove(i);
        }
    }
}

impl Shared {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let id = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let mode = self.mode.load(Ordering::Relaxed);
        let status = match mode {
            m if m == Mode::Flaky as u8 && rand::rng().random_bool(0.3) => 503,
            m if m == Mode::Throttling as u8 => 429,
            _ => 200,
        };
        self.received.lock().push(Received {
            id: id.clone(),
            at: Instant::now(),
            status,
        });
        let _busy = InProgress::new(&self.in_progress, id);
        if mode == Mode::Slow as u8 {
            sleep(Duration::from_millis(self.slow_ms.load(Ordering::Relaxed))).await;
        }
        let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        if status == 429 {
            resp.headers_mut()
                .insert("retry-after", RETRY_AFTER_S.to_string().parse().unwrap());
        }
        resp
    }
}

/// The carrier's HTTP API: a loopback HTTP/1.1 server that can be killed
/// (listener and open connections dropped at once) and started again on the
/// same port. Dropping it aborts all its tasks.
struct CarrierServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl CarrierServer {
    async fn start() -> Self {
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Healthy as u8),
            slow_ms: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
            in_progress: Mutex::new(Vec::new()),
        });
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut s = Self {
            addr: listener.local_addr().unwrap(),
            shared,
            accept: None,
            connections: Arc::new(Mutex::new(JoinSet::new())),
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let shared = Arc::clone(&self.shared);
        let connections = Arc::clone(&self.connections);
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = Arc::clone(&shared);
                let mut conns = connections.lock();
                while conns.try_join_next().is_some() {}
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(shared.answer(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }));
    }

    /// Kills the server: the listener and every open connection (requests
    /// being answered included) are gone when this returns.
    async fn kill(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let mut conns = std::mem::take(&mut *self.connections.lock());
        conns.shutdown().await;
        assert!(
            tokio::net::TcpStream::connect(self.addr).await.is_err(),
            "a killed server refuses connections"
        );
    }

    /// Starts the server again on the same address.
    async fn start_again(&mut self) {
        assert!(self.accept.is_none(), "the server is running");
        let mut last = None;
        for _ in 0..50 {
            match listen(self.addr) {
                Ok(l) => return self.serve(l),
                Err(e) => last = Some(e),
            }
            sleep(Duration::from_millis(20)).await;
        }
        panic!("could not bind {} again: {last:?}", self.addr);
    }

    fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::Relaxed);
    }

    fn set_slow(&self, delay: Duration) {
        self.shared
            .slow_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
        self.set(Mode::Slow);
    }

    fn received(&self) -> Vec<Received> {
        self.shared.received.lock().clone()
    }

    fn requests(&self) -> usize {
        self.shared.received.lock().len()
    }

    fn in_progress(&self) -> Vec<String> {
        self.shared.in_progress.lock().clone()
    }
}

impl Drop for CarrierServer {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.connections.lock().abort_all();
    }
}

/// A listener on `addr`, reusing the address (a killed server's
/// connections may linger in TIME_WAIT).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The router with the real HTTP carrier as primary and a simulated backup,
/// both recorded, and the stream's bookkeeping.
struct Rig {
    router: Router,
    ledger: Arc<TestLedger>,
    server: CarrierServer,
    primary: Arc<Recording>,
    backup: Arc<Recording>,
    backup_sim: Arc<SimulatedCarrier>,
    next: u64,
}

/// A snapshot of the counts a phase is measured against.
#[derive(Clone, Copy, Debug)]
struct Mark {
    primary: u64,
    backup: u64,
    requests: usize,
}

impl Rig {
    async fn start() -> Self {
        let server = CarrierServer::start().await;
        let ledger = TestLedger::new();
        let http = HttpConfig {
            url: format!("http://{}/v1/messages", server.addr),
            authorization: "Bearer chaos-test".into(),
            ..HttpConfig::default()
        };
        let carrier = |name: &str, priority: u8, kind: CarrierKind| CarrierConfig {
            name: name.into(),
            kind,
            priority,
            timeout_ms: TIMEOUT_MS,
            breaker: BREAKER,
            // Unpaced senders: this test is about faults, not sender pacing.
            sender_rate_per_s: 0,
            http: if kind == CarrierKind::Http {
                http.clone()
            } else {
                HttpConfig::default()
            },
            ..CarrierConfig::default()
        };
        let mut cfg = RouterConfig {
            carriers: vec![
                carrier("primary", 0, CarrierKind::Http),
                carrier("backup", 1, CarrierKind::Simulated),
            ],
            retry: RetryConfig {
                base_backoff_ms: 20,
                max_backoff_ms: 200,
                ..RetryConfig::default()
            },
            ..RouterConfig::default()
        };
        cfg.senders.pools.clear();
        let sim = SimulatedConfig {
            latency_min_ms: 1,
            latency_max_ms: 3,
            receipt_delay_ms: 10,
            ..SimulatedConfig::default()
        };
        let backup_sim = Arc::new(SimulatedCarrier::new("backup", sim, None));
        let http_carrier = HttpCarrier::new(&http).unwrap().named("primary", &http);
        let primary = Recording::new(Arc::new(http_carrier), Arc::clone(&ledger));
        let backup = Recording::new(Arc::new(Arc::clone(&backup_sim)), Arc::clone(&ledger));
        let router = Router::start_with_carriers(
            cfg,
            ledger.clone(),
            ManualClock::new(0),
            vec![
                ("primary".into(), primary.clone()),
                ("backup".into(), backup.clone()),
            ],
        )
        .unwrap();
        Self {
            router,
            ledger,
            server,
            primary,
            backup,
            backup_sim,
            next: 0,
        }
    }

    fn send(&mut self, ttl: Duration) -> ChallengeId {
        self.next += 1;
        let id = self.ledger.add(self.next, ttl);
        let raw = format!("+1 425 555 {:04}", self.next % 10_000);
        let destination = normalize(Channel::Sms, &raw, &TenantDelivery::default()).unwrap();
        self.router
            .try_reserve()
            .expect("the intake has room")
            .send(DeliveryJob {
                tenant: TenantId(0),
                id,
                slot_hint: SlotHint::NONE,
                channel: Channel::Sms,
                destination,
                code: Code::from_parts(123_456, 6).unwrap(),
                // The ledger's TTL is the expiry that counts.
                expires_at_ms: u64::MAX,
                locale: String::new(),
                service_name: "Acme".into(),
                avoid_carrier: CarrierSlot::NONE,
                operator_assistance: false,
                purpose: watchword_engine::delivery::MessagePurpose::Code,
            });
        id
    }

    /// `n` messages, one every `gap`, each with the TTL `ttl(i)` gives.
    async fn stream(
        &mut self,
        n: usize,
        gap: Duration,
        ttl: impl Fn(usize) -> Duration,
    ) -> Vec<ChallengeId> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.push(self.send(ttl(i)));
            sleep(gap).await;
        }
        ids
    }

    /// Waits until nothing is queued, in flight, backing off or awaiting a
    /// receipt (a liveness cap of 30 s, far above what any phase needs).
    async fn settle(&self, phase: &str) {
        for _ in 0..3_000 {
            if self.router.queue_depth() == 0 && self.router.stats().awaiting_receipt == 0 {
                return;
            }
            sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{phase}: never settled: {} queued, {:?}",
            self.router.queue_depth(),
            self.router.stats()
        );
    }

    fn mark(&self) -> Mark {
        Mark {
            primary: self.primary.count(),
            backup: self.backup.count(),
            requests: self.server.requests(),
        }
    }

    /// The final state of `id` and the carrier it ended on.
    fn outcome(&self, id: ChallengeId) -> (DeliveryState, String, String) {
        let (state, carrier, reason) = self.ledger.last(id).expect("an outcome");
        (state, carrier, reason.unwrap_or_default())
    }

    fn assert_all_delivered(&self, phase: &str, ids: &[ChallengeId], by: Option<&str>) {
        for id in ids {
            let (state, carrier, reason) = self.outcome(*id);
            assert_eq!(
                state,
                DeliveryState::Delivered,
                "{phase}: {id} ended {state:?} ({reason})"
            );
            if let Some(by) = by {
                assert_eq!(carrier, by, "{phase}: {id} delivered by {carrier}");
            }
        }
    }

    /// The invariants every phase must keep (over every message so far).
    fn check(&self, phase: &str) {
        assert_eq!(self.router.queue_depth(), 0, "{phase}: queue empty");
        let s = self.router.stats();
        assert_eq!(s.awaiting_receipt, 0, "{phase}: no receipt awaited");
        let (delivered, failed, unfinished) = self.ledger.tally();
        assert_eq!(
            unfinished, 0,
            "{phase}: every accepted message ends delivered or failed"
        );
        assert_eq!(s.accepted, self.next, "{phase}: every message was accepted");
        assert_eq!(
            s.accepted,
            s.delivered + s.failed,
            "{phase}: accepted = delivered + failed ({s:?})"
        );
        assert_eq!(
            (s.delivered as usize, s.failed as usize),
            (delivered, failed),
            "{phase}: the router's counts match the ledger's"
        );
        assert_eq!(
            self.ledger.regressions(),
            0,
            "{phase}: no state went backwards or ended twice"
        );
        assert_eq!(
            s.tries,
            self.primary.count() + self.backup.count(),
            "{phase}: every try reached a carrier"
        );
        for (name, rec) in [("primary", &self.primary), ("backup", &self.backup)] {
            assert_eq!(
                rec.violations(),
                0,
                "{phase}: {name} was handed a message whose challenge had expired"
            );
        }
        let recs = [&*self.primary, &*self.backup];
        for (id, (tries, _, _)) in tries_per_id(&recs) {
            assert!(tries <= 5, "{phase}: {id} got {tries} tries");
        }
        // The server's own view: every request names a challenge the primary
        // was handed, and none reached it after that challenge had expired.
        let expiry: HashMap<String, Instant> = self
            .ledger
            .recs
            .lock()
            .iter()
            .map(|(id, r)| (id.to_string(), r.expires))
            .collect();
        let handed: HashSet<String> = self
            .primary
            .seen
            .lock()
            .iter()
            .map(|s| s.id.to_string())
            .collect();
        for r in self.server.received() {
            let expires = *expiry
                .get(&r.id)
                .unwrap_or_else(|| panic!("{phase}: the server got an unknown id {:?}", r.id));
            assert!(
                handed.contains(&r.id),
                "{phase}: the server got {} which the primary was never handed",
                r.id
            );
            assert!(
                r.at < expires + TRANSIT_GRACE,
                "{phase}: the server got {} after its challenge expired",
                r.id
            );
        }
    }

    /// After a fault has cleared: once the breaker's cooldown is over, one
    /// message probes the primary and closes its breaker, and then a stream
    /// goes entirely to the primary.
    async fn assert_traffic_back_on_primary(&mut self, phase: &str, n: usize) {
        sleep(PAST_COOLDOWN).await;
        let probe = self.send(LONG_TTL);
        self.settle(phase).await;
        assert_eq!(
            self.router.breaker_state("primary"),
            Some(BreakerState::Closed),
            "{phase}: the probe closed the primary's breaker"
        );
        self.assert_all_delivered(phase, &[probe], Some("primary"));
        let before = self.mark();
        let ids = self.stream(n, Duration::from_millis(5), |_| LONG_TTL).await;
        self.settle(phase).await;
        self.check(phase);
        self.assert_all_delivered(phase, &ids, Some("primary"));
        let after = self.mark();
        assert_eq!(
            (after.primary - before.primary, after.backup - before.backup),
            (n as u64, 0),
            "{phase}: after recovery every send goes to the primary"
        );
        assert_eq!(
            after.requests - before.requests,
            n,
            "{phase}: the server got them all"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_carrier_survives_errors_throttling_slowness_and_a_killed_server() {
    let mut rig = Rig::start().await;
    let gap = Duration::from_millis(5);

    // Healthy: everything goes to the primary and is delivered.
    let phase = "healthy";
    let before = rig.mark();
    let ids = rig.stream(40, gap, |_| LONG_TTL).await;
    rig.settle(phase).await;
    rig.check(phase);
    rig.assert_all_delivered(phase, &ids, Some("primary"));
    let after = rig.mark();
    assert_eq!((after.primary - before.primary, after.backup), (40, 0));
    assert_eq!(after.requests, 40, "{phase}: the server got every message");

    // 30% of requests answered 503: each failed try is retried, on the
    // backup (the carrier not tried yet), so all are delivered within two
    // tries; the breaker may open on a run of 503s.
    let phase = "30% 503";
    rig.server.set(Mode::Flaky);
    let before = rig.mark();
    let ids = rig
        .stream(150, gap, |i| {
            if i % 5 == 0 {
                Duration::from_secs(2)
            } else {
                LONG_TTL
            }
        })
        .await;
    rig.settle(phase).await;
    rig.check(phase);
    rig.assert_all_delivered(phase, &ids, None);
    let got = rig.server.received()[before.requests..].to_vec();
    let unavailable: Vec<&Received> = got.iter().filter(|r| r.status == 503).collect();
    assert!(
        unavailable.len() >= 10,
        "{phase}: only {} of {} requests got a 503",
        unavailable.len(),
        got.len()
    );
    let by_id: HashMap<String, ChallengeId> = ids.iter().map(|id| (id.to_string(), *id)).collect();
    for r in &unavailable {
        let (_, carrier, _) = rig.outcome(by_id[&r.id]);
        assert_eq!(carrier, "backup", "{phase}: a 503'd message went on");
    }
    let recs = [&*rig.primary, &*rig.backup];
    let tries = tries_per_id(&recs);
    for id in &ids {
        assert!(tries[id].0 <= 2, "{phase}: {id} took {} tries", tries[id].0);
    }
    rig.server.set(Mode::Healthy);
    rig.assert_traffic_back_on_primary("after 503s", 30).await;

    // Throttled: a 429 with Retry-After keeps the primary out of use for
    // that long (not counted as a failure), and the stream goes to the
    // backup meanwhile.
    let phase = "429 Retry-After";
    rig.server.set(Mode::Throttling);
    let before = rig.mark();
    let ids = rig
        .stream(30, Duration::from_millis(10), |_| LONG_TTL)
        .await;
    rig.settle(phase).await;
    rig.check(phase);
    rig.assert_all_delivered(phase, &ids, Some("backup"));
    let after = rig.mark();
    let throttled = after.requests - before.requests;
    assert!(
        (1..=10).contains(&throttled),
        "{phase}: the primary got {throttled} of 30 sends inside its Retry-After"
    );
    assert_eq!(after.primary - before.primary, throttled as u64);
    assert_eq!(
        rig.router.breaker_state("primary"),
        Some(BreakerState::Closed),
        "{phase}: throttling is not a failure"
    );
    rig.server.set(Mode::Healthy);
    sleep(Duration::from_secs(RETRY_AFTER_S)).await;
    rig.assert_traffic_back_on_primary("after 429s", 30).await;

    // Slow, within the timeout: waited for, delivered by the primary.
    let phase = "slow under the timeout";
    rig.server.set_slow(Duration::from_millis(TIMEOUT_MS / 5));
    let before = rig.mark();
    let ids = rig
        .stream(30, Duration::from_millis(10), |_| LONG_TTL)
        .await;
    rig.settle(phase).await;
    rig.check(phase);
    rig.assert_all_delivered(phase, &ids, Some("primary"));
    assert_eq!(rig.mark().backup, before.backup, "{phase}: no failover");

    // Slow, past the timeout: every answer is too late; the sends time out,
    // the breaker opens, and the backup delivers everything.
    let phase = "slow past the timeout";
    rig.server.set_slow(Duration::from_millis(TIMEOUT_MS * 2));
    let before = rig.mark();
    let ids = rig
        .stream(30, Duration::from_millis(20), |_| LONG_TTL)
        .await;
    rig.settle(phase).await;
    rig.check(phase);
    rig.assert_all_delivered(phase, &ids, Some("backup"));
    let after = rig.mark();
    assert!(
        after.requests - before.requests >= 3,
        "{phase}: the breaker learnt from timeouts"
    );
    assert_ne!(
        rig.router.breaker_state("primary"),
        Some(BreakerState::Closed),
        "{phase}: timeouts opened the breaker"
    );
    rig.server.set(Mode::Healthy);
    rig.assert_traffic_back_on_primary("after slow answers", 30)
        .await;

    // Killed mid-run: answers take a fifth of the timeout, so requests are
    // in flight when the server dies; they and everything after go to the
    // backup.
    let phase = "server killed";
    rig.server.set_slow(Duration::from_millis(TIMEOUT_MS / 5));
    let before = rig.mark();
    let mut ids = rig
        .stream(20, Duration::from_millis(10), |_| LONG_TTL)
        .await;
    let phase_ids: HashSet<String> = ids.iter().map(ToString::to_string).collect();
    let in_flight = (rig.server.in_progress().iter())
        .filter(|id| phase_ids.contains(*id))
        .count();
    rig.server.kill().await;
    let requests_at_kill = rig.server.requests();
    ids.extend(
        rig.stream(40, Duration::from_millis(10), |_| LONG_TTL)
            .await,
    );
    rig.settle(phase).await;
    rig.check(phase);
    rig.assert_all_delivered(phase, &ids, None);
    assert!(
        in_flight >= 1,
        "{phase}: no request was being answered at the kill"
    );
    assert_eq!(
        rig.server.requests(),
        requests_at_kill,
        "{phase}: a dead server gets nothing"
    );
    let after = rig.mark();
    assert!(
        after.backup - before.backup >= 40,
        "{phase}: the backup carried the outage ({} sends)",
        after.backup - before.backup
    );
    assert_ne!(
        rig.router.breaker_state("primary"),
        Some(BreakerState::Closed),
        "{phase}: refused connections opened the breaker"
    );

    // Total outage: the server still dead and the backup failing too, for
    // longer than the short TTL. Short-TTL challenges expire waiting and
    // must never be sent after; long-TTL ones survive to the restart.
    let phase = "total outage";
    rig.backup_sim.set_outage(Some(OutageMode::Fail));
    let mut short = Vec::new();
    let mut long = Vec::new();
    for i in 0..30 {
        if i % 2 == 0 {
            short.push(rig.send(SHORT_TTL));
        } else {
            long.push(rig.send(LONG_TTL));
        }
        sleep(Duration::from_millis(10)).await;
    }
    sleep(SHORT_TTL + Duration::from_millis(500)).await;
    assert_eq!(
        rig.server.requests(),
        requests_at_kill,
        "{phase}: still dead"
    );
    // Recovery: the server comes back on the same port, the backup too.
    rig.server.set(Mode::Healthy);
    rig.server.start_again().await;
    rig.backup_sim.set_outage(None);
    rig.settle(phase).await;
    rig.check(phase);
    let mut expired = 0;
    for id in &short {
        let (state, _, reason) = rig.outcome(*id);
        assert_eq!(state, DeliveryState::Failed, "{phase}: {id} was delivered");
        assert!(
            reason.contains(NOT_PENDING) || reason.contains(TRIES_EXHAUSTED),
            "{phase}: {id} failed: {reason}"
        );
        expired += usize::from(reason.contains(NOT_PENDING));
    }
    assert!(
        expired >= 1,
        "{phase}: no short-TTL challenge reached its expiry while waiting"
    );
    let short_hex: HashSet<String> = short.iter().map(ToString::to_string).collect();
    assert!(
        !rig.server
            .received()
            .iter()
            .any(|r| short_hex.contains(&r.id)),
        "{phase}: the server got a challenge that expired while it was dead"
    );
    for id in &long {
        let (state, _, reason) = rig.outcome(*id);
        assert!(
            state == DeliveryState::Delivered || reason.contains(TRIES_EXHAUSTED),
            "{phase}: {id} ended {state:?}: {reason}"
        );
    }
    rig.assert_traffic_back_on_primary("after the restart", 40)
        .await;

    let s = rig.router.stats();
    assert_eq!(s.accepted, rig.next);
    assert!(s.accepted >= 400, "a few hundred messages in all");
    rig.server.kill().await;
}
