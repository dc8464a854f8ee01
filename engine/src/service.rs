//! The engine facade the gateway calls: one method per protocol operation,
//! joining the challenge table and the delivery router under each tenant's
//! policy.
//!
//! Order of checks on ISSUE and RESEND: the request's own fields first, then
//! the destination, the route, the rate limits, a slot in the delivery queue,
//! and only then the table. So a refused request stores nothing, and a stored
//! challenge always has its message queued. Every method here is synchronous
//! and non-blocking except [`Engine::drain`]; none holds a lock across an
//! `.await`. Nothing here returns or logs a code or a full destination.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use parking_lot::Mutex;

use crate::calls::{CallBook, SubscriberGuard};
use crate::check::PendingConfirmation;
use crate::clock::Clock;
use crate::code::{MAX_CODE_LEN, MIN_CODE_LEN};
use crate::delivery::{
    CarrierSlot, ChallengeLedger, DeliveryJob, DeliveryPermit, Destination, Handsets,
    MessagePurpose, OutboxMessage, RateGate, Router, RouterConfig, TenantDelivery, normalize,
};
use crate::directory::{Directory, DirectoryError, MethodId};
use crate::events::EventSink;
use crate::mask::{MaskedDestination, mask_destination};
use crate::secret::MasterKey;
use crate::snapshot;
use crate::table::{
    ChallengeTable, IssueError, IssueSpec, MAX_SUBJECT_LEN, MAX_TTL_S, MIN_TTL_S, Sweeper,
    TableConfig,
};
use crate::types::{ChallengeId, ChallengeState, Channel, DeliveryState, TenantId, VerifyOutcome};

/// One tenant's defaults and delivery settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantPolicy {
    /// The tenant's name, as sent in HELLO.
    pub name: String,
    /// Digits in a code when the request says 0 (4..=12).
    pub code_len: u8,
    /// Validity in seconds when the request says 0 (30..=3600).
    pub ttl_s: u16,
    /// Wrong codes allowed before a challenge locks.
    pub max_attempts: u8,
    /// ISO 3166 alpha-2 country for phone numbers written in national format.
    pub default_country: String,
    /// Voice extensions go through an operator instead of being dialled as tones.
    pub operator_assistance: bool,
    /// Message language when the request gives none (BCP 47).
    pub locale: String,
    /// The service name written in messages.
    pub service_name: String,
    /// Hours after its confirmation before an added or changed phone number
    /// or address counts for help-desk caller verification (seed 000: 48).
    pub contact_hold_hours: u32,
    /// How OATH tokens verify (window, look-ahead, lockout).
    #[serde(skip)]
    pub tokens: crate::directory::TokenPolicy,
    /// Where users type their PIN.
    #[serde(skip)]
    pub pin_mode: PinMode,
    /// Digits of the PINs made from now on (4..=12; existing PINs keep
    /// theirs).
    pub pin_length: u8,
    /// The contacts a help-desk code goes to, first active one first
    /// (empty: e-mail, then SMS, then voice).
    #[serde(skip)]
    pub helpdesk_order: Vec<crate::directory::MethodType>,
    /// VERIFY and VERIFY_SUBJECT attempts per second for the whole tenant
    /// (a burst of one second's worth); beyond it RATE_LIMITED. 0: no limit.
    pub verify_per_s: u32,
    /// CHECKs per second for the whole tenant; 0: no limit.
    pub check_per_s: u32,
    /// Per challenge, the least time between a wrong code and the next try
    /// (VERIFY, VERIFY_SUBJECT, a CHECK's code); sooner is RATE_LIMITED and
    /// counts no attempt. 0: none.
    pub verify_gap_ms: u32,
}

/// Where a tenant's users type their PIN (DOMAIN.md §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PinMode {
    /// PINs are not asked for.
    #[default]
    None,
    /// The answer is the PIN followed by the one-time code, checked
    /// together: a wrong PIN counts as a wrong code, and the caller cannot
    /// tell which was wrong.
    Prefix,
    /// A confirmation call is answered with the PIN then `#`; a wrong PIN
    /// declines the call and counts towards the PIN's lockout.
    Call,
}

impl PinMode {
    /// Its configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Prefix => "prefix",
            Self::Call => "call",
        }
    }

    /// The mode a configuration name means.
    pub fn parse(s: &str) -> Option<PinMode> {
        Some(match s {
            "none" => Self::None,
            "prefix" => Self::Prefix,
            "call" => Self::Call,
            _ => return None,
        })
    }
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            name: "demo".into(),
            code_len: 6,
            ttl_s: 300,
            max_attempts: 5,
            default_country: "US".into(),
            operator_assistance: false,
            locale: "en".into(),
            service_name: "Watchword".into(),
            contact_hold_hours: 48,
            pin_mode: PinMode::None,
            pin_length: crate::directory::DEFAULT_PIN_LEN,
            helpdesk_order: crate::helpdesk::DEFAULT_ORDER.to_vec(),
            tokens: crate::directory::TokenPolicy::default(),
            verify_per_s: 0,
            check_per_s: 0,
            verify_gap_ms: 0,
        }
    }
}

impl TenantPolicy {
    fn validate(&self, at: &str) -> Result<(), String> {
        if self.name.is_empty() {
            return Err(format!("{at}.name: must not be empty"));
        }
        if !(MIN_CODE_LEN..=MAX_CODE_LEN).contains(&self.code_len) {
            return Err(format!(
                "{at}.code_len: must be between {MIN_CODE_LEN} and {MAX_CODE_LEN}, got {}",
                self.code_len
            ));
        }
        if !(MIN_TTL_S..=MAX_TTL_S).contains(&self.ttl_s) {
            return Err(format!(
                "{at}.ttl_s: must be between {MIN_TTL_S} and {MAX_TTL_S} seconds, got {}",
                self.ttl_s
            ));
        }
        if self.max_attempts == 0 {
            return Err(format!("{at}.max_attempts: must be at least 1"));
        }
        if self.default_country.len() != 2
            || !self.default_country.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(format!(
                "{at}.default_country: must be an ISO 3166 alpha-2 code such as \"US\", got {:?}",
                self.default_country
            ));
        }
        Ok(())
    }

    fn delivery(&self) -> TenantDelivery {
        TenantDelivery {
            default_country: self.default_country.clone(),
            operator_assistance: self.operator_assistance,
            service_name: self.service_name.clone(),
            default_locale: self.locale.clone(),
        }
    }
}

/// Everything the engine needs: table sizing, tenants, and the router.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// The challenge table.
    pub table: TableConfig,
    /// The tenants, in the order that gives their [`TenantId`]s.
    pub tenants: Vec<TenantPolicy>,
    /// Carriers, sender pools, rate limits.
    pub router: RouterConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            table: TableConfig::default(),
            tenants: vec![TenantPolicy::default()],
            router: RouterConfig::default(),
        }
    }
}

/// One ISSUE request as the gateway decoded it.
#[derive(Clone, Copy, Debug)]
pub struct IssueParams<'a> {
    /// The upstream user id (1..=256 bytes).
    pub subject: &'a str,
    /// How to deliver the code.
    pub channel: Channel,
    /// The destination in any common notation.
    pub destination: &'a str,
    /// 0 for the tenant default, else 4..=12.
    pub code_len: u8,
    /// 0 for the tenant default, else 30..=3600.
    pub ttl_s: u16,
    /// BCP 47 tag for the message text; empty for the tenant default.
    pub locale: &'a str,
    /// The end user's address as seen upstream; for the audit log only.
    pub client_ip: &'a str,
}

/// A successful ISSUE.
#[derive(Clone, Copy, Debug)]
pub struct Issued {
    /// The new challenge.
    pub id: ChallengeId,
    /// When it stops verifying, Unix milliseconds.
    pub expires_at_ms: u64,
    /// The destination as it may be shown.
    pub masked_destination: MaskedDestination,
}

/// A successful RESEND.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resent {
    /// Sends the destination may still receive in its current window.
    pub sends_left: u8,
    /// When the challenge expires, Unix milliseconds.
    pub expires_at_ms: u64,
}

/// A successful STATUS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusView {
    /// Where the challenge's life cycle stands.
    pub state: ChallengeState,
    /// Wrong codes still allowed.
    pub attempts_left: u8,
    /// Where its latest message stands.
    pub delivery: DeliveryState,
    /// The carrier of the latest message ("" if none yet).
    pub carrier: String,
    /// When it expires (or expired), Unix milliseconds.
    pub expires_at_ms: u64,
}

/// Why an operation was refused; each maps to one protocol status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A field's value is not acceptable (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// A rate limit was hit (RATE_LIMITED).
    #[error("{message}")]
    RateLimited {
        /// When to try again.
        retry_after_ms: u32,
        /// Which limit.
        message: String,
    },
    /// The table or the delivery queue is full; nothing was stored (CAPACITY).
    #[error("{message}")]
    Capacity {
        /// A hint for when to try again (0 if none).
        retry_after_ms: u32,
        /// What is full.
        message: String,
    },
    /// No carrier serves this channel and destination (NO_ROUTE).
    #[error("{0}")]
    NoRoute(String),
    /// No such challenge for this tenant (NOT_FOUND).
    #[error("no such challenge")]
    NotFound,
    /// The engine is draining (SHUTTING_DOWN).
    #[error("the server is shutting down; retry on another node")]
    ShuttingDown,
    /// An unexpected fault (INTERNAL).
    #[error("{0}")]
    Internal(String),
    /// A directory operation was refused (no such user or method, a
    /// conflict, a bad field, or the store cannot take writes).
    #[error("{0}")]
    Directory(#[from] DirectoryError),
}

impl From<IssueError> for EngineError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::InvalidArgument { .. } => Self::InvalidArgument(e.to_string()),
            IssueError::Capacity { .. } => Self::Capacity {
                retry_after_ms: 1000,
                message: e.to_string(),
            },
        }
    }
}

pub(crate) struct TenantRuntime {
    pub(crate) policy: TenantPolicy,
    pub(crate) delivery: TenantDelivery,
    /// The tenant's VERIFY rate (`verify_per_s`), if limited.
    pub(crate) verify_gate: Option<RateGate>,
    /// The tenant's CHECK rate (`check_per_s`), if limited.
    pub(crate) check_gate: Option<RateGate>,
}

/// What a guess-limit refusal was about, for its error and its metric.
#[derive(Clone, Copy)]
pub(crate) enum GuessLimit {
    /// The tenant's VERIFY rate.
    TenantVerify = 0,
    /// The tenant's CHECK rate.
    TenantCheck = 1,
    /// The challenge's gap after a wrong code.
    Challenge = 2,
}

impl GuessLimit {
    fn scope(self) -> &'static str {
        match self {
            Self::TenantVerify => "tenant_verify",
            Self::TenantCheck => "tenant_check",
            Self::Challenge => "challenge",
        }
    }
}

/// Calls in progress at most (each also holds a challenge in the table).
const MAX_CALLS: usize = 100_000;

pub(crate) struct Inner {
    pub(crate) table: Arc<ChallengeTable>,
    router: Router,
    tenants: Vec<TenantRuntime>,
    by_name: HashMap<String, TenantId>,
    shutting_down: AtomicBool,
    pub(crate) directory: Arc<Directory>,
    pub(crate) calls: Arc<CallBook>,
    /// Pending registrations of sms and e-mail methods: the challenge whose
    /// code confirms each. Bounded by the table's capacity; purged with the
    /// challenges' expiry.
    pub(crate) confirmations: Mutex<HashMap<(TenantId, MethodId), PendingConfirmation>>,
    pub(crate) sink: Arc<dyn EventSink>,
    /// `watchword_checks_total{result, reason}`: accept, challenge, then one
    /// per reject reason in wire order.
    pub(crate) check_counters: [metrics::Counter; 9],
    /// Seals and opens CHECK states.
    pub(crate) state_seal: crate::check::StateSeal,
    /// `watchword_rate_limited_total{scope}` for the guess limits, in
    /// [`GuessLimit`] order.
    guess_refusals: [metrics::Counter; 3],
    clock: Arc<dyn Clock>,
    /// The hash seeds and keys a restart snapshot keeps.
    seeds: snapshot::EngineSeeds,
    _sweeper: Sweeper,
}

/// What a restart put back from its snapshot.
#[derive(Clone, Debug, Default)]
pub struct RestoreReport {
    /// When the snapshot was written, Unix ms.
    pub written_at_ms: u64,
    /// The challenges: restored, expired meanwhile, dropped.
    pub challenges: crate::table::RestoreCounts,
    /// Limiter keys whose windows were restored.
    pub limiter_keys: u64,
    /// Limiters whose windows were not restored (gone, changed kind, or
    /// keyed by tenant positions that moved).
    pub limiters_set_aside: Vec<String>,
    /// Method registrations still waiting for their code.
    pub registrations: u64,
    /// The snapshot's shard count, when it differs from the configured one
    /// (used for this run).
    pub shards_from_snapshot: Option<usize>,
}

/// A sealed restart snapshot, ready to write.
#[derive(Debug)]
pub struct SnapshotFile {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Challenges in it (pending and tombstones).
    pub challenges: u64,
    /// Limiter keys in it.
    pub limiter_keys: u64,
}

/// The engine: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("tenants", &self.inner.tenants.len())
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the table, starts the router's tasks and the sweeper thread.
    /// Must be called inside a tokio runtime. The error says which field is
    /// wrong and why.
    pub fn start(
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn EventSink>,
    ) -> Result<Engine, String> {
        let names = config.tenants.iter().map(|t| t.name.clone()).collect();
        Self::start_with_directory(config, clock, sink, Directory::in_memory(names))
    }

    /// Like [`Engine::start`], with the users and methods of `directory`
    /// (loaded from its store, which takes every write). Its tenants must be
    /// the configuration's, in the same order.
    pub fn start_with_directory(
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn EventSink>,
        directory: Directory,
    ) -> Result<Engine, String> {
        Self::start_restoring(config, clock, sink, directory, None).map(|(engine, _)| engine)
    }

    /// Like [`Engine::start_with_directory`], first putting back what a
    /// restart snapshot kept (see [`crate::snapshot`]): its pending
    /// challenges and tombstones, limiter windows and registrations, under
    /// the seeds and shard count it was written with (the configured
    /// `table.shards` yields to the snapshot's for this run).
    pub fn start_restoring(
        mut config: EngineConfig,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn EventSink>,
        directory: Directory,
        snapshot: Option<snapshot::Reader>,
    ) -> Result<(Engine, Option<RestoreReport>), String> {
        let configured_shards = config.table.resolved_shards();
        let seeds = match &snapshot {
            Some(r) => {
                config.table.shards = r.seeds.shards as usize;
                r.seeds.clone()
            }
            None => snapshot::EngineSeeds::random(configured_shards as u32),
        };
        let engine = Self::start_seeded(config, clock, sink, directory, seeds)?;
        let Some(reader) = snapshot else {
            return Ok((engine, None));
        };
        let mut report = engine
            .restore(reader)
            .map_err(|e| format!("restart snapshot: {e}"))?;
        let used = engine.inner.seeds.shards as usize;
        report.shards_from_snapshot = (used != configured_shards).then_some(used);
        Ok((engine, Some(report)))
    }

    /// Puts a snapshot's content into this freshly started engine.
    fn restore(&self, mut r: snapshot::Reader) -> Result<RestoreReport, snapshot::SnapshotError> {
        let tenants: Vec<Option<TenantId>> = r.tenants.iter().map(|n| self.tenant_id(n)).collect();
        let names = self.inner.router.carrier_names();
        let carriers: Vec<CarrierSlot> = r
            .carriers
            .iter()
            .map(|n| {
                names
                    .iter()
                    .position(|m| m == n)
                    .map_or(CarrierSlot::NONE, |i| CarrierSlot(i as u8))
            })
            .collect();
        let tenant_keys_hold = r.tenants.len() == self.inner.tenants.len()
            && r.tenants
                .iter()
                .zip(&self.inner.tenants)
                .all(|(a, b)| *a == b.policy.name);
        let written_at_ms = r.header.written_at_ms;
        let challenges = self.inner.table.restore(&mut r, &tenants, &carriers)?;
        let (limiters, confirmations) = r.finish()?;
        let (limiter_keys, limiters_set_aside) = self
            .inner
            .router
            .restore_limiter_windows(&limiters, tenant_keys_hold);
        let now = self.now_ms();
        let mut pending = self.inner.confirmations.lock();
        let before = pending.len();
        for c in confirmations.into_iter().filter(|c| c.expires_at_ms > now) {
            if let Some(Some(t)) = tenants.get(usize::from(c.tenant)) {
                pending.insert(
                    (*t, MethodId(c.method)),
                    PendingConfirmation {
                        challenge: c.challenge,
                        subject: c.subject.into(),
                        expires_at_ms: c.expires_at_ms,
                    },
                );
            }
        }
        let registrations = (pending.len() - before) as u64;
        Ok(RestoreReport {
            written_at_ms,
            challenges,
            limiter_keys,
            limiters_set_aside,
            registrations,
            shards_from_snapshot: None,
        })
    }

    /// The restart snapshot of this engine, sealed under `key`: call it at
    /// shutdown, once no request is being served (a challenge changed while
    /// it runs is written as it was when its shard was read).
    pub fn snapshot(&self, key: &MasterKey) -> SnapshotFile {
        let inner = &self.inner;
        let tenants: Vec<String> = inner
            .tenants
            .iter()
            .map(|t| t.policy.name.clone())
            .collect();
        let mut w = snapshot::Writer::new(
            &inner.seeds,
            &tenants,
            &inner.router.carrier_names(),
            inner.table.len() * 80,
        );
        inner.table.export(&mut w);
        let limiters = inner.router.limiter_windows();
        let confirmations: Vec<snapshot::ConfirmationRecord> = inner
            .confirmations
            .lock()
            .iter()
            .map(|((t, m), c)| snapshot::ConfirmationRecord {
                tenant: t.0,
                method: m.0,
                challenge: c.challenge,
                subject: c.subject.to_string(),
                expires_at_ms: c.expires_at_ms,
            })
            .collect();
        let challenges = u64::from(w.entries());
        let limiter_keys = limiters
            .iter()
            .map(|l| match &l.windows {
                snapshot::Windows::Exact(v) => v.len() as u64,
                snapshot::Windows::Gcra(v) => v.len() as u64,
            })
            .sum();
        let bytes = w.seal(&limiters, &confirmations, self.now_ms(), key);
        SnapshotFile {
            bytes,
            challenges,
            limiter_keys,
        }
    }

    fn start_seeded(
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn EventSink>,
        directory: Directory,
        seeds: snapshot::EngineSeeds,
    ) -> Result<Engine, String> {
        if config.tenants.is_empty() {
            return Err("tenants: at least one tenant is required".into());
        }
        if config.tenants.len() > usize::from(u16::MAX) {
            return Err(format!("tenants: at most {} tenants", u16::MAX));
        }
        let mut by_name = HashMap::new();
        let mut tenants = Vec::with_capacity(config.tenants.len());
        for (i, policy) in config.tenants.into_iter().enumerate() {
            policy.validate(&format!("tenants[{i}]"))?;
            if by_name
                .insert(policy.name.clone(), TenantId(i as u16))
                .is_some()
            {
                return Err(format!(
                    "tenants[{i}].name: {:?} is used by another tenant",
                    policy.name
                ));
            }
            tenants.push(TenantRuntime {
                delivery: policy.delivery(),
                verify_gate: RateGate::per_second(policy.verify_per_s),
                check_gate: RateGate::per_second(policy.check_per_s),
                policy,
            });
        }
        let table = Arc::new(
            ChallengeTable::with_seeds(config.table, clock.clone(), sink.clone(), seeds.table)
                .map_err(|e| e.to_string())?,
        );
        let ledger: Arc<dyn ChallengeLedger> = table.clone();
        let router = Router::start_seeded(
            config.router,
            ledger,
            clock.clone(),
            Vec::new(),
            seeds.limits,
        )
        .map_err(|e| e.to_string())?;
        let directory = Arc::new(directory);
        let gate_rules: Vec<Option<u32>> = tenants
            .iter()
            .map(|t| (t.policy.pin_mode == PinMode::Call).then_some(t.policy.tokens.max_failures))
            .collect();
        let gate_dir = Arc::clone(&directory);
        let (gate_sink, gate_clock) = (Arc::clone(&sink), Arc::clone(&clock));
        let calls = Arc::new(
            CallBook::new(table.clone(), tenants.len(), MAX_CALLS).with_pin_gate(Box::new(
                move |tenant, subject, pin| match gate_rules.get(usize::from(tenant.0)) {
                    Some(Some(max_failures)) => {
                        let (right, locked) =
                            gate_dir.check_call_pin(tenant, subject, pin, *max_failures);
                        if locked {
                            gate_sink.record_other(&crate::events::Record {
                                at_ms: gate_clock.now_ms(),
                                tenant,
                                event: "pin_locked",
                                result: "failure",
                                subject,
                                method: Some("call"),
                                destination: None,
                                challenge: None,
                                reason: Some("too_many_wrong_pins"),
                                client_ip: None,
                                agent: None,
                            });
                        }
                        right
                    }
                    _ => true,
                },
            )),
        );
        let handsets: Arc<dyn Handsets> = calls.clone();
        router.attach_handsets(Arc::downgrade(&handsets));
        let sweeper = Sweeper::spawn(table.clone())
            .map_err(|e| format!("cannot start the sweeper thread: {e}"))?;
        let engine = Engine {
            inner: Arc::new(Inner {
                table,
                router,
                tenants,
                by_name,
                shutting_down: AtomicBool::new(false),
                directory,
                calls,
                confirmations: Mutex::default(),
                check_counters: crate::check::check_counters(),
                state_seal: crate::check::StateSeal::with_key(&seeds.state_seal),
                guess_refusals: [
                    GuessLimit::TenantVerify,
                    GuessLimit::TenantCheck,
                    GuessLimit::Challenge,
                ]
                .map(|l| metrics::counter!("watchword_rate_limited_total", "scope" => l.scope())),
                seeds,
                sink,
                clock,
                _sweeper: sweeper,
            }),
        };
        tokio::spawn(janitor(Arc::downgrade(&engine.inner)));
        Ok(engine)
    }

    /// Now, by the engine's clock (Unix ms).
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// The directory of users and methods.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.inner.directory
    }

    /// Confirmation calls in progress.
    pub fn calls(&self) -> &Arc<CallBook> {
        &self.inner.calls
    }

    /// The id of the tenant called `name`.
    pub fn tenant_id(&self, name: &str) -> Option<TenantId> {
        self.inner.by_name.get(name).copied()
    }

    /// The policy of a tenant.
    pub fn tenant_policy(&self, tenant: TenantId) -> Option<&TenantPolicy> {
        self.inner
            .tenants
            .get(usize::from(tenant.0))
            .map(|t| &t.policy)
    }

    /// The challenge table (for gauges and tools).
    pub fn table(&self) -> &Arc<ChallengeTable> {
        &self.inner.table
    }

    /// The delivery router (for tools and tests).
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    pub(crate) fn tenant(&self, tenant: TenantId) -> Result<&TenantRuntime, EngineError> {
        self.inner
            .tenants
            .get(usize::from(tenant.0))
            .ok_or_else(|| EngineError::Internal(format!("unknown tenant index {}", tenant.0)))
    }

    /// The checks every send goes through, in order: a carrier serves the
    /// route, the delivery queue has a slot (which the returned permit
    /// holds), and every keyed limit allows one more send (and counts it).
    /// The queue comes before the limits so that a send refused because
    /// delivery cannot keep up (CAPACITY, at once, with a retry hint) costs
    /// the person none of their five sends; a limit's refusal gives the slot
    /// back.
    fn admit_send(
        &self,
        tenant: TenantId,
        t: &TenantRuntime,
        subject: &str,
        channel: Channel,
        destination: &Destination,
    ) -> Result<DeliveryPermit, EngineError> {
        let router = &self.inner.router;
        if !router.has_route(channel, destination) {
            return Err(no_route(channel, destination));
        }
        let permit = router.try_reserve().map_err(|q| EngineError::Capacity {
            retry_after_ms: q.retry_after_ms,
            message: "the delivery queue is full".into(),
        })?;
        router
            .admit(tenant, &t.policy.name, subject, channel, destination)
            .map_err(|r| EngineError::RateLimited {
                retry_after_ms: r.retry_after_ms,
                message: format!("rate limit per {} reached", r.scope),
            })?;
        Ok(permit)
    }

    /// Creates a challenge and queues its message.
    pub fn issue(&self, tenant: TenantId, req: &IssueParams<'_>) -> Result<Issued, EngineError> {
        self.issue_for(tenant, req, MessagePurpose::Code)
    }

    /// [`Engine::issue`] for a code, or for a confirmation call (voice only),
    /// which the call book records before it rings.
    pub(crate) fn issue_for(
        &self,
        tenant: TenantId,
        req: &IssueParams<'_>,
        purpose: MessagePurpose,
    ) -> Result<Issued, EngineError> {
        self.issue_carrying(tenant, req, purpose, None)
    }

    /// [`Engine::issue_for`] whose message carries `carried` instead of the
    /// challenge's code (a PIN notice: the challenge only tracks the
    /// delivery, limits and audit, and expires unanswered).
    pub(crate) fn issue_carrying(
        &self,
        tenant: TenantId,
        req: &IssueParams<'_>,
        purpose: MessagePurpose,
        carried: Option<crate::code::Code>,
    ) -> Result<Issued, EngineError> {
        if purpose == MessagePurpose::CallConfirmation && req.channel != Channel::Voice {
            return Err(EngineError::Internal(
                "a confirmation call goes by voice".into(),
            ));
        }
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(EngineError::ShuttingDown);
        }
        let t = self.tenant(tenant)?;
        let code_len = if req.code_len == 0 {
            t.policy.code_len
        } else {
            req.code_len
        };
        let ttl_s = if req.ttl_s == 0 {
            t.policy.ttl_s
        } else {
            req.ttl_s
        };
        let destination = normalize(req.channel, req.destination, &t.delivery)
            .map_err(|e| EngineError::InvalidArgument(format!("destination: {e}")))?;
        let spec = IssueSpec {
            tenant,
            subject: req.subject,
            channel: req.channel,
            destination: destination.as_str(),
            code_len,
            ttl_s,
            max_attempts: t.policy.max_attempts,
            client_ip: req.client_ip,
        };
        ChallengeTable::validate(&spec)?;
        let permit = self.admit_send(tenant, t, req.subject, req.channel, &destination)?;
        let issued = self.inner.table.issue(&spec)?;
        if purpose == MessagePurpose::CallConfirmation
            && let Err(e) = self.inner.calls.register(
                tenant,
                issued.id,
                req.subject,
                issued.code,
                issued.expires_at_ms,
            )
        {
            self.inner.table.cancel(tenant, issued.id);
            return Err(EngineError::Capacity {
                retry_after_ms: 1000,
                message: e.to_string(),
            });
        }
        let masked_destination = mask_destination(destination.as_str());
        permit.send(DeliveryJob {
            tenant,
            id: issued.id,
            slot_hint: issued.slot_hint,
            channel: req.channel,
            destination,
            code: carried.unwrap_or(issued.code),
            expires_at_ms: issued.expires_at_ms,
            locale: if req.locale.is_empty() {
                t.policy.locale.clone()
            } else {
                req.locale.to_owned()
            },
            service_name: t.policy.service_name.clone(),
            avoid_carrier: CarrierSlot::NONE,
            operator_assistance: t.policy.operator_assistance,
            purpose,
        });
        Ok(Issued {
            id: issued.id,
            expires_at_ms: issued.expires_at_ms,
            masked_destination,
        })
    }

    /// Checks a code against a challenge, within the tenant's VERIFY rate
    /// and the challenge's gap after a wrong code (RATE_LIMITED beyond them,
    /// no attempt counted).
    pub fn verify(
        &self,
        tenant: TenantId,
        id: ChallengeId,
        code: &[u8],
    ) -> Result<VerifyOutcome, EngineError> {
        let t = self.tenant(tenant)?;
        self.admit_guess(t.verify_gate.as_ref(), GuessLimit::TenantVerify)?;
        self.inner
            .table
            .verify_spaced(tenant, id, code, t.policy.verify_gap_ms)
            .map_err(|wait| self.guess_refused(GuessLimit::Challenge, u64::from(wait)))
    }

    /// Lets one guess through `gate` (none: no limit) or refuses it.
    pub(crate) fn admit_guess(
        &self,
        gate: Option<&RateGate>,
        limit: GuessLimit,
    ) -> Result<(), EngineError> {
        match gate.map(|g| g.acquire(self.now_ms())) {
            Some(Err(wait)) => Err(self.guess_refused(limit, wait)),
            _ => Ok(()),
        }
    }

    /// The RATE_LIMITED answer to a guess refused by `limit`, counted.
    pub(crate) fn guess_refused(&self, limit: GuessLimit, wait_ms: u64) -> EngineError {
        self.inner.guess_refusals[limit as usize].increment(1);
        let message = match limit {
            GuessLimit::TenantVerify => "rate limit of VERIFY attempts per tenant reached",
            GuessLimit::TenantCheck => "rate limit of CHECKs per tenant reached",
            GuessLimit::Challenge => "too soon after a wrong code for this challenge",
        };
        EngineError::RateLimited {
            retry_after_ms: wait_ms.clamp(1, u64::from(u32::MAX)) as u32,
            message: message.into(),
        }
    }

    /// Checks a code against the subject's newest pending challenge.
    pub fn verify_subject(
        &self,
        tenant: TenantId,
        subject: &str,
        code: &[u8],
    ) -> Result<VerifyOutcome, EngineError> {
        if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN {
            return Err(EngineError::InvalidArgument(format!(
                "subject: must be 1 to {MAX_SUBJECT_LEN} bytes, got {}",
                subject.len()
            )));
        }
        let t = self.tenant(tenant)?;
        self.admit_guess(t.verify_gate.as_ref(), GuessLimit::TenantVerify)?;
        self.inner
            .table
            .verify_subject_spaced(tenant, subject, code, t.policy.verify_gap_ms)
            .map_err(|wait| self.guess_refused(GuessLimit::Challenge, u64::from(wait)))
    }

    /// Sends the same code again, preferring another carrier than the last.
    pub fn resend(&self, tenant: TenantId, id: ChallengeId) -> Result<Resent, EngineError> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(EngineError::ShuttingDown);
        }
        let t = self.tenant(tenant)?;
        let table = &self.inner.table;
        let router = &self.inner.router;
        let peek = table
            .peek_pending(tenant, id)
            .ok_or(EngineError::NotFound)?;
        let destination = normalize(peek.channel, &peek.destination, &t.delivery).map_err(|e| {
            EngineError::Internal(format!("stored destination no longer parses: {e}"))
        })?;
        let permit = self.admit_send(tenant, t, &peek.subject, peek.channel, &destination)?;
        let ticket = table.resend(tenant, id).ok_or(EngineError::NotFound)?;
        let sends_left = router.sends_left(&destination);
        permit.send(DeliveryJob {
            tenant,
            id,
            slot_hint: ticket.slot_hint,
            channel: ticket.channel,
            destination,
            code: ticket.code,
            expires_at_ms: ticket.expires_at_ms,
            locale: t.policy.locale.clone(),
            service_name: t.policy.service_name.clone(),
            avoid_carrier: ticket.last_carrier,
            operator_assistance: t.policy.operator_assistance,
            purpose: if self.inner.calls.watch(tenant, id).is_some() {
                MessagePurpose::CallConfirmation
            } else {
                MessagePurpose::Code
            },
        });
        Ok(Resent {
            sends_left,
            expires_at_ms: ticket.expires_at_ms,
        })
    }

    /// Ends a pending challenge.
    pub fn cancel(&self, tenant: TenantId, id: ChallengeId) -> Result<(), EngineError> {
        if self.inner.table.cancel(tenant, id) {
            Ok(())
        } else {
            Err(EngineError::NotFound)
        }
    }

    /// Where a challenge stands (pending, or finished within the grace period).
    pub fn status(&self, tenant: TenantId, id: ChallengeId) -> Result<StatusView, EngineError> {
        let s = self
            .inner
            .table
            .status(tenant, id)
            .ok_or(EngineError::NotFound)?;
        Ok(StatusView {
            state: s.state,
            attempts_left: s.attempts_left,
            delivery: s.delivery,
            carrier: self.inner.router.carrier_name(s.carrier).to_owned(),
            expires_at_ms: s.expires_at_ms,
        })
    }

    /// A feed of every message the simulated carriers deliver (all tenants;
    /// the caller filters), and the guard that counts `tenant` as holding
    /// its handsets while it lives (simulated carriers do not answer calls by
    /// themselves then). `None` when no simulated carrier is configured.
    pub fn outbox_subscribe(
        &self,
        tenant: TenantId,
    ) -> Option<(
        tokio::sync::broadcast::Receiver<Arc<OutboxMessage>>,
        SubscriberGuard,
    )> {
        let rx = self.inner.router.outbox_subscribe()?;
        Some((rx, self.inner.calls.subscriber(tenant)))
    }

    /// From now on ISSUE and RESEND answer [`EngineError::ShuttingDown`].
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Whether [`Engine::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Relaxed)
    }

    /// Waits for queued deliveries to finish, up to `deadline`.
    pub async fn drain(&self, deadline: Duration) {
        self.inner.router.drain(deadline).await;
    }
}

/// Every 5 s: forgets calls whose challenge ended more than a minute ago,
/// and writes `failed` to registrations whose confirmation expired. Ends
/// with the engine.
async fn janitor(inner: std::sync::Weak<Inner>) {
    const GRACE_MS: u64 = 60_000;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = inner.clock.now_ms();
        inner.calls.purge(now, GRACE_MS);
        // Writes to the directory: it must not hold the engine up, but it
        // never waits on the disk (the store's queue is non-blocking).
        Engine { inner }.fail_expired_registrations(now);
    }
}

fn no_route(channel: Channel, destination: &Destination) -> EngineError {
    let country = destination.country().unwrap_or("this destination");
    EngineError::NoRoute(format!("no carrier serves {} to {country}", channel.name()))
}
