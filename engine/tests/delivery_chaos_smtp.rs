//! Fault ("chaos") tests of the real SMTP carrier through the router: the
//! primary carrier is the real [`SmtpCarrier`] (priority 0) sending to
//! `tests/smtp/server.py` (Python's aiosmtpd, started by each test on
//! 127.0.0.1), the backup a simulated e-mail carrier (priority 1); both are
//! wrapped in the recording carrier of `delivery_support.rs`. Each test sends
//! a steady stream of codes, some with a short lifetime, through one fault:
//!
//! - 30% transient errors (451 at RCPT, at random) on the server, and 30% of
//!   failures on the backup: retried within the budget;
//! - throttling (421 4.7.0 and 451 4.7.1): the primary is left alone for its
//!   Retry-After, its breaker stays closed, traffic comes back after;
//! - slow answers: every DATA reply held within the carrier's timeout
//!   (delivered), some held beyond it (timed out, failed over, or expired);
//! - the server killed mid-run: failover to the backup, expiries while it
//!   is down, then the server started again on the same port and, once the
//!   breaker's open period has passed, traffic back on the primary.
//!
//! Each checks that every accepted message ended delivered or failed
//! (accepted = delivered + failed, nothing queued or awaiting a receipt),
//! that nothing was handed to a carrier once its challenge had expired, that
//! the server stored no message for a challenge that had expired before the
//! send could have begun (by the recipient address, one per challenge), that
//! no challenge got more than five tries, and that what the server stored is
//! exactly what the ledger says the primary delivered (at least that, when
//! the server was killed in the middle of a transaction).
//!
//! Real time, with short timeouts and a short breaker cooldown. It must
//! never assert on how long something took, never leave the loopback
//! address, and never leave a server running: each is killed by its pid when
//! its test ends, also on panic (a Drop guard). A test that needs aiosmtpd
//! and does not find it says so and passes, except in CI (`CI` set), where
//! that is a failure.

#[path = "smtp_support.rs"]
mod smtp_support;
#[path = "delivery_support.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smtp_support::{SmtpServer, aiosmtpd_present};
use support::{Recording, TestLedger, tries_per_id};
use watchword_engine::delivery::smtp::THROTTLE_RETRY_AFTER;
use watchword_engine::delivery::{
    BreakerState, CarrierConfig, CarrierKind, CarrierSlot, DeliveryJob, Limit, MessagePurpose,
    Router, RouterConfig, SimulatedCarrier, SimulatedConfig, SlotHint, SmtpCarrier, SmtpConfig,
    SmtpTls, TenantDelivery, normalize,
};
use watchword_engine::{ChallengeId, Channel, Code, DeliveryState, ManualClock, TenantId};

const PRIMARY: &str = "mail";
const BACKUP: &str = "backup";
/// `smtp.timeout_ms`: connecting and each message's whole SMTP exchange.
const SMTP_TIMEOUT_MS: u64 = 1_000;
/// The router's answer timeout for either carrier; a send waiting for one of
/// the pool's connections is inside it (and not inside `SMTP_TIMEOUT_MS`).
const CARRIER_TIMEOUT_MS: u64 = 2_000;
const LONG_TTL: Duration = Duration::from_secs(300);
/// What the ledger's failure reason says of a challenge that expired.
const EXPIRED: &str = "no longer pending";

// ---------------------------------------------------------------- the rig

/// Seconds since the Unix epoch (the server dates what it stores so).
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One challenge sent.
struct Sent {
    id: ChallengeId,
    /// When its challenge expires, Unix seconds (read just before the
    /// ledger's own deadline was set, so never later than it).
    expires_at: f64,
}

/// The real SMTP carrier as primary, a simulated backup, a ledger, and the
/// server; the router sees only `PRIMARY` and `BACKUP`.
struct Rig {
    router: Router,
    ledger: Arc<TestLedger>,
    primary: Arc<Recording>,
    backup: Arc<Recording>,
    /// By challenge number `n` (its id is `support::id(n)`).
    sent: HashMap<u64, Sent>,
    next: u64,
    /// Dropped (killed) after the router.
    server: SmtpServer,
}

/// The configuration every test starts from: retries with short back-offs,
/// a short breaker cooldown, no keyed limits.
fn config(port: u16) -> RouterConfig {
    let breaker = watchword_engine::delivery::config::BreakerConfig {
        failure_threshold: 5,
        cooldown_ms: 500,
        max_cooldown_ms: 1_000,
    };
    let primary = CarrierConfig {
        name: PRIMARY.into(),
        kind: CarrierKind::Smtp,
        channels: vec![Channel::Email],
        priority: 0,
        timeout_ms: CARRIER_TIMEOUT_MS,
        breaker: breaker.clone(),
        smtp: SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::None,
            from: "Watchword <codes@watchword.test>".into(),
            helo_name: "watchword.test".into(),
            pool_size: 16,
            timeout_ms: SMTP_TIMEOUT_MS,
            ..SmtpConfig::default()
        },
        ..CarrierConfig::default()
    };
    let backup = CarrierConfig {
        name: BACKUP.into(),
        kind: CarrierKind::Simulated,
        channels: vec![Channel::Email],
        priority: 1,
        timeout_ms: CARRIER_TIMEOUT_MS,
        breaker,
        senders: vec!["codes@watchword.test".into()],
        simulated: SimulatedConfig {
            latency_min_ms: 2,
            latency_max_ms: 10,
            receipt_delay_ms: 20,
            ..SimulatedConfig::default()
        },
        ..CarrierConfig::default()
    };
    let mut cfg = RouterConfig {
        carriers: vec![primary, backup],
        ..RouterConfig::default()
    };
    cfg.limits.destination = Limit::new(0, 1);
    cfg.limits.subject = Limit::new(0, 1);
    cfg.retry.max_tries = 5;
    cfg.retry.base_backoff_ms = 50;
    cfg.retry.max_backoff_ms = 400;
    cfg
}

impl Rig {
    /// Starts `server.py` with `args`, then the router configured by
    /// [`config`] and `tweak` (carriers[0] is the primary, [1] the backup).
    fn start(args: &[&str], tweak: impl FnOnce(&mut RouterConfig)) -> Self {
        let server = SmtpServer::start(args);
        let ledger = TestLedger::new();
        let mut cfg = config(server.port);
        tweak(&mut cfg);
        let smtp = SmtpCarrier::new(&cfg.carriers[0].smtp).unwrap();
        let primary = Recording::new(Arc::new(smtp), Arc::clone(&ledger));
        let sim = SimulatedCarrier::new(BACKUP, cfg.carriers[1].simulated.clone(), None);
        let backup = Recording::new(Arc::new(Arc::new(sim)), Arc::clone(&ledger));
        let router = Router::start_with_carriers(
            cfg,
            ledger.clone(),
            ManualClock::new(0),
            vec![
                (PRIMARY.into(), primary.clone()),
                (BACKUP.into(), backup.clone()),
            ],
        )
        .unwrap();
        Self {
            router,
            ledger,
            primary,
            backup,
            sent: HashMap::new(),
            next: 0,
            server,
        }
    }

    /// Sends a code to `{local}+{n}@example.com` for a new challenge `n`
    /// that expires after `ttl` (the server answers by `local`).
    fn send(&mut self, local: &str, ttl: Duration) -> u64 {
        self.next += 1;
        let n = self.next;
        let expires_at = unix_now() + ttl.as_secs_f64();
        let id = self.ledger.add(n, ttl);
        let address = format!("{local}+{n}@example.com");
        let destination = normalize(Channel::Email, &address, &TenantDelivery::default()).unwrap();
        self.router.try_reserve().unwrap().send(DeliveryJob {
            tenant: TenantId(0),
            id,
            slot_hint: SlotHint::NONE,
            channel: Channel::Email,
            destination,
            code: Code::from_parts(918_273, 6).unwrap(),
            // The engine clock stays at 0: the ledger alone says when it expires.
            expires_at_ms: 300_000,
            locale: "en-US".into(),
            service_name: "Acme".into(),
            avoid_carrier: CarrierSlot::NONE,
            operator_assistance: false,
            purpose: MessagePurpose::Code,
        });
        self.sent.insert(n, Sent { id, expires_at });
        n
    }

    /// Sends `count` codes, one every `every`; `pick(i)` gives the i-th its
    /// local part and lifetime. Returns their numbers.
    async fn stream(
        &mut self,
        count: usize,
        every: Duration,
        pick: impl Fn(usize) -> (&'static str, Duration),
    ) -> Vec<u64> {
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let (local, ttl) = pick(i);
            out.push(self.send(local, ttl));
            tokio::time::sleep(every).await;
        }
        out
    }

    /// Waits until nothing is queued, in flight, backing off or awaiting a
    /// receipt (or 30 s, after which [`Rig::check`] fails).
    async fn settle(&self) {
        for _ in 0..600 {
            if self.router.queue_depth() == 0 && self.router.stats().awaiting_receipt == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Challenge `n`'s last state so far: (state, carrier, reason); `None`
    /// before its first try.
    fn state(&self, n: u64) -> Option<(DeliveryState, String, String)> {
        let (state, carrier, reason) = self.ledger.last(self.sent[&n].id)?;
        Some((state, carrier, reason.unwrap_or_default()))
    }

    /// How challenge `n` ended (after [`Rig::settle`]).
    fn outcome(&self, n: u64) -> (DeliveryState, String, String) {
        self.state(n)
            .unwrap_or_else(|| panic!("challenge {n} was never tried"))
    }

    fn delivered_by(&self, n: u64, carrier: &str) -> bool {
        self.state(n)
            .is_some_and(|(state, by, _)| state == DeliveryState::Delivered && by == carrier)
    }

    fn expired(&self, n: u64) -> bool {
        self.state(n).is_some_and(|(state, _, reason)| {
            state == DeliveryState::Failed && reason.contains(EXPIRED)
        })
    }

    /// Tries per challenge number, both carriers together.
    fn tries(&self) -> HashMap<u64, usize> {
        let by_id: HashMap<ChallengeId, u64> = self.sent.iter().map(|(n, s)| (s.id, *n)).collect();
        tries_per_id(&[&self.primary, &self.backup])
            .into_iter()
            .map(|(id, (tries, _, _))| (by_id[&id], tries))
            .collect()
    }

    /// The challenges the primary was handed, by number.
    fn handed_to_primary(&self) -> HashSet<u64> {
        let by_id: HashMap<ChallengeId, u64> = self.sent.iter().map(|(n, s)| (s.id, *n)).collect();
        self.primary
            .seen
            .lock()
            .iter()
            .map(|s| by_id[&s.id])
            .collect()
    }

    /// What the server stored, by challenge number (from the recipient
    /// `local+n@example.com`): when each copy's DATA arrived.
    fn stored(&self) -> HashMap<u64, Vec<f64>> {
        let mut out: HashMap<u64, Vec<f64>> = HashMap::new();
        for m in self.server.messages() {
            let rcpts = m["rcpt_tos"].as_array().unwrap();
            assert_eq!(rcpts.len(), 1, "one recipient per message: {rcpts:?}");
            let rcpt = rcpts[0].as_str().unwrap();
            let n = rcpt
                .split_once('@')
                .and_then(|(local, _)| local.split_once('+'))
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("a recipient the test did not send to: {rcpt}"));
            let at = m["received_at"].as_f64().unwrap();
            out.entry(n).or_default().push(at);
        }
        out
    }

    /// The invariants every fault run keeps, after [`Rig::settle`].
    fn check(&self) {
        let (delivered, failed, unfinished) = self.ledger.tally();
        let s = self.router.stats();
        assert_eq!(s.accepted, self.next, "every code sent was accepted");
        assert_eq!(
            unfinished, 0,
            "every accepted message ends delivered or failed"
        );
        assert_eq!(
            s.accepted as usize,
            delivered + failed,
            "accepted = delivered + failed"
        );
        assert_eq!(
            (s.delivered as usize, s.failed as usize),
            (delivered, failed)
        );
        assert_eq!(s.awaiting_receipt, 0, "no receipt is still awaited");
        assert_eq!(self.router.queue_depth(), 0, "nothing is left queued");
        assert_eq!(
            self.ledger.regressions(),
            0,
            "no state went backwards or ended twice"
        );
        for (name, r) in [(PRIMARY, &self.primary), (BACKUP, &self.backup)] {
            assert_eq!(
                r.violations(),
                0,
                "{name} was handed a code after its challenge had expired"
            );
        }
        for (n, tries) in self.tries() {
            assert!(tries <= 5, "challenge {n} got {tries} tries");
        }
        assert_eq!(
            s.tries,
            self.primary.count() + self.backup.count(),
            "every try reached a carrier"
        );

        // The server's side, by recipient: only what the primary was handed,
        // nothing for a challenge that had expired before its send could have
        // begun (a send starts before the deadline and may take up to the
        // carrier's timeout), and everything the primary delivered.
        let stored = self.stored();
        let handed = self.handed_to_primary();
        for (n, copies) in &stored {
            let sent = self
                .sent
                .get(n)
                .unwrap_or_else(|| panic!("stored a message for challenge {n}, never sent"));
            assert!(
                handed.contains(n),
                "challenge {n} was stored but never handed to the primary"
            );
            let latest = sent.expires_at + CARRIER_TIMEOUT_MS as f64 / 1e3;
            for at in copies {
                assert!(
                    *at <= latest,
                    "challenge {n} was received {:.3} s after it expired",
                    at - sent.expires_at
                );
            }
        }
        for n in self.sent.keys() {
            if self.delivered_by(*n, PRIMARY) {
                assert!(
                    stored.contains_key(n),
                    "challenge {n} is delivered by the primary but not stored"
                );
            }
        }
    }

    /// With no transaction cut short: the server stored each message the
    /// primary delivered exactly once, and nothing else.
    fn check_stored_exactly(&self) {
        let stored = self.stored();
        for (n, copies) in &stored {
            assert_eq!(
                copies.len(),
                1,
                "challenge {n} was stored {} times",
                copies.len()
            );
            assert!(
                self.delivered_by(*n, PRIMARY),
                "challenge {n} was stored, but ended {:?}",
                self.outcome(*n).0
            );
        }
    }

    /// Sends one code every 100 ms until one is delivered by the primary
    /// (and stored), for at most `bound`. Returns how many it sent.
    async fn until_primary_delivers(&mut self, bound: Duration) -> usize {
        let start = tokio::time::Instant::now();
        let mut mine = Vec::new();
        loop {
            mine.push(self.send("user", LONG_TTL));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stored = self.stored();
            if mine
                .iter()
                .any(|n| self.delivered_by(*n, PRIMARY) && stored.contains_key(n))
            {
                return mine.len();
            }
            assert!(
                start.elapsed() < bound,
                "traffic never came back to the primary: breaker {:?}",
                self.router.breaker_state(PRIMARY)
            );
        }
    }

    /// Sends `count` codes at once, and checks that the primary delivered
    /// every one at its first try and the server stored it.
    async fn all_through_the_primary(&mut self, count: usize) {
        let batch: Vec<u64> = (0..count).map(|_| self.send("user", LONG_TTL)).collect();
        self.settle().await;
        let stored = self.stored();
        let tries = self.tries();
        for n in &batch {
            assert!(
                self.delivered_by(*n, PRIMARY),
                "challenge {n} did not go through the primary: {:?}",
                self.outcome(*n)
            );
            assert_eq!(tries[n], 1, "challenge {n} needed a retry");
            assert_eq!(stored.get(n).map(Vec::len), Some(1), "challenge {n}");
        }
        assert_eq!(
            self.router.breaker_state(PRIMARY),
            Some(BreakerState::Closed)
        );
    }
}

/// Runs blocking work (starting server.py) off the runtime's workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

// ---------------------------------------------------------------- the faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_transient_errors_are_retried_within_the_budget() {
    if !aiosmtpd_present() {
        return;
    }
    let mut rig = blocking(|| {
        Rig::start(&["--transient-rate", "0.3"], |c| {
            // The backup fails as often; the breakers stay out of it (this
            // run is about retries and failover).
            c.carriers[1].simulated.failure_rate = 0.3;
            for k in &mut c.carriers {
                k.breaker.failure_threshold = 1_000;
            }
        })
    });
    let count = 150;
    rig.stream(count, Duration::from_millis(10), |i| {
        let ttl = if i % 5 == 0 {
            Duration::from_secs(2)
        } else {
            LONG_TTL
        };
        ("user", ttl)
    })
    .await;
    rig.settle().await;
    rig.check();
    rig.check_stored_exactly();

    // Five failures in a row on both carriers is 0.3^5 = 0.24% a challenge:
    // about one of 150 may fail, after its fifth try.
    let (delivered, failed, _) = rig.ledger.tally();
    assert!(failed <= 5, "delivered {delivered}, failed {failed}");
    for n in 1..=rig.next {
        let (state, _, reason) = rig.outcome(n);
        if state == DeliveryState::Failed {
            assert!(
                reason.contains("all 5 tries failed") || reason.contains(EXPIRED),
                "challenge {n}: {reason}"
            );
        }
    }
    // About 30% of the primary's tries were answered 451 (each one not
    // stored), and their retries went to the backup first.
    let primary_tries = rig.primary.count() as usize;
    let primary_failed = primary_tries - rig.stored().len();
    assert!(
        primary_failed * 10 >= primary_tries && primary_failed * 100 <= primary_tries * 55,
        "{primary_failed} of {primary_tries} primary tries failed"
    );
    assert!(rig.backup.count() > 10, "backup got {}", rig.backup.count());
    assert!(rig.router.stats().tries > count as u64);
    assert!(
        rig.tries().values().any(|t| *t >= 3),
        "some challenge needed a third try"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_leaves_the_primary_alone_then_traffic_returns() {
    if !aiosmtpd_present() {
        return;
    }
    let mut rig = blocking(|| Rig::start(&[], |_| {}));
    // 421 4.7.0 "too many" and 451 4.7.1 "rate limit" on every tenth
    // recipient, the first one included; every fourth code is short-lived.
    let count = 60;
    let sent = rig
        .stream(count, Duration::from_millis(20), |i| {
            let local = match i % 20 {
                0 => "rate421",
                10 => "rate451",
                _ => "user",
            };
            let ttl = if i % 4 == 1 {
                Duration::from_secs(2)
            } else {
                LONG_TTL
            };
            (local, ttl)
        })
        .await;
    rig.settle().await;
    rig.check();
    rig.check_stored_exactly();
    assert_eq!(
        rig.ledger.tally(),
        (count, 0, 0),
        "throttling fails nothing over"
    );
    // Throttling is not a failure: the breaker stayed closed, and the
    // primary was left alone for its Retry-After (10 s, longer than the
    // stream): only the sends before its first answer reached it.
    assert_eq!(
        rig.router.breaker_state(PRIMARY),
        Some(BreakerState::Closed)
    );
    let primary_tries = rig.primary.count();
    assert!(
        (1..count as u64 / 2).contains(&primary_tries),
        "the throttled primary got {primary_tries} of {count}"
    );
    for (i, n) in sent.iter().enumerate() {
        if i % 10 == 0 {
            assert!(
                rig.delivered_by(*n, BACKUP),
                "throttled challenge {n}: {:?}",
                rig.outcome(*n)
            );
        }
    }

    // After the Retry-After, traffic is back on the primary.
    tokio::time::sleep(THROTTLE_RETRY_AFTER).await;
    rig.until_primary_delivers(Duration::from_secs(20)).await;
    rig.all_through_the_primary(20).await;
    rig.settle().await;
    rig.check();
    rig.check_stored_exactly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_deliver_within_the_timeout_and_fail_over_beyond_it() {
    if !aiosmtpd_present() {
        return;
    }
    // Every DATA reply is held 200 ms (within the 1 s SMTP timeout); `slow`
    // recipients' replies are held 60 s (beyond it).
    let mut rig = blocking(|| {
        Rig::start(&["--data-delay-ms", "200"], |c| {
            c.carriers[0].breaker.failure_threshold = 1_000;
            // Room for every held transaction at once: no send waits for a
            // connection.
            c.carriers[0].smtp.pool_size = 32;
        })
    });
    let smtp_timeout = Duration::from_millis(SMTP_TIMEOUT_MS);
    let count = 64;
    let sent = rig
        .stream(count, Duration::from_millis(40), |i| match i % 8 {
            // Timed out, then retried on the backup.
            3 => ("slow", LONG_TTL),
            // Expired by the time its timeout ends the try: never retried.
            7 => ("slow", smtp_timeout),
            1 | 5 => ("user", Duration::from_secs(2)),
            _ => ("user", LONG_TTL),
        })
        .await;
    rig.settle().await;
    rig.check();
    rig.check_stored_exactly();
    let tries = rig.tries();
    for (i, n) in sent.iter().enumerate() {
        let outcome = rig.outcome(*n);
        match i % 8 {
            3 => {
                assert!(rig.delivered_by(*n, BACKUP), "challenge {n}: {outcome:?}");
                assert_eq!(tries[n], 2, "challenge {n}: the primary, then the backup");
            }
            7 => {
                assert!(rig.expired(*n), "challenge {n}: {outcome:?}");
                assert_eq!(tries[n], 1, "challenge {n} was tried after it expired");
            }
            _ => assert!(
                rig.delivered_by(*n, PRIMARY),
                "challenge {n} (held within the timeout): {outcome:?}"
            ),
        }
    }
    // The timed-out sends left nothing behind: the pool still delivers.
    rig.all_through_the_primary(20).await;
    rig.check();
    rig.check_stored_exactly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_fails_over_and_traffic_returns_after_restart() {
    if !aiosmtpd_present() {
        return;
    }
    // Every DATA reply is held 100 ms, so that the kill cuts transactions.
    let mut rig = blocking(|| {
        Rig::start(&["--data-delay-ms", "100"], |c| {
            // A backup that takes 8 codes a second: while the primary is
            // down a backlog builds up there, and short-lived codes expire
            // in it.
            c.carriers[1].throughput_per_s = 8;
        })
    });
    let short = Duration::from_secs(1);
    let pick = move |i: usize| ("user", if i % 3 == 0 { short } else { LONG_TTL });

    // The server up.
    let up = rig.stream(30, Duration::from_millis(40), pick).await;
    let port = rig.server.port;

    // Killed mid-run: the stream's last transactions are in their held
    // DATA, and one more whose DATA reply would take a minute surely is.
    let cut = rig.send("slow", LONG_TTL);
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.server.kill();
    // Down for 40 more codes.
    let primary_before = rig.primary.count();
    let down = rig.stream(40, Duration::from_millis(40), pick).await;
    assert_ne!(
        rig.router.breaker_state(PRIMARY),
        Some(BreakerState::Closed),
        "failures opened the primary's breaker"
    );
    let primary_tries_while_down = rig.primary.count() - primary_before;
    assert!(
        primary_tries_while_down < down.len() as u64,
        "the open breaker kept traffic off the primary: {primary_tries_while_down} tries"
    );
    let stored_before_restart = rig.stored().len();

    // Back on the same port: after the breaker's open period a probe goes
    // through and closes it, and new codes reach the primary again.
    blocking(|| rig.server.restart());
    assert_eq!(rig.server.port, port, "started again on the same port");
    rig.until_primary_delivers(Duration::from_secs(20)).await;
    rig.all_through_the_primary(20).await;
    rig.settle().await;
    rig.check();

    // Before the kill: delivered (those in flight at the kill by the
    // backup), or, short-lived, expired in its backlog.
    for (i, n) in up.iter().enumerate() {
        let (state, _, reason) = rig.outcome(*n);
        assert!(
            state == DeliveryState::Delivered || (i % 3 == 0 && rig.expired(*n)),
            "challenge {n} sent before the kill: {state:?} {reason}"
        );
    }
    // The transaction cut by the kill failed over, and was not stored.
    assert!(
        rig.delivered_by(cut, BACKUP),
        "the transaction cut by the kill: {:?}",
        rig.outcome(cut)
    );
    assert_eq!(rig.tries()[&cut], 2, "the primary, then the backup");
    assert!(!rig.stored().contains_key(&cut));
    // The server stores again since its restart. The codes sent while it
    // was down: the backup carried every one that did not expire, and
    // short-lived ones expired (in the backup's backlog) rather than being
    // sent late.
    assert!(rig.stored().len() > stored_before_restart);
    let mut expired = 0;
    for (i, n) in down.iter().enumerate() {
        let (state, by, reason) = rig.outcome(*n);
        if rig.expired(*n) {
            assert_eq!(i % 3, 0, "a long-lived code expired: {reason}");
            expired += 1;
        } else {
            assert_eq!(
                (state, by.as_str()),
                (DeliveryState::Delivered, BACKUP),
                "challenge {n} while the server was down: {reason}"
            );
        }
    }
    assert!(expired > 0, "no short-lived code expired during the outage");
}
