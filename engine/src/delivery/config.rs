//! The router's configuration: carriers, sender pools, rate limits, retry
//! policy, and each tenant's delivery settings. Loaded by the gateway from TOML.
//!
//! `Default` is the development profile (simulated carriers only). This module
//! only describes and validates (validation reads the files the configuration
//! names, such as an HTTP carrier's `ca_file`); it must never start tasks or
//! open connections, nor hold secrets beyond what the operator wrote in the
//! file, nor show them in Debug output.

use serde::{Deserialize, Serialize};

use super::limits::{MAX_JANITOR_INTERVAL_MS, MAX_WINDOW_MS};
use super::smpp::SmppConfig;
use crate::types::Channel;

/// Everything the router needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// The carriers, in slot order (at most 64).
    pub carriers: Vec<CarrierConfig>,
    /// SMS sender pools per country.
    pub senders: SenderPoolsConfig,
    /// Keyed admission limits.
    pub limits: LimitsConfig,
    /// Messages accepted and not yet finished (queued, in flight or backing off);
    /// a full queue refuses at once.
    pub queue_capacity: usize,
    /// Messages kept for slow outbox subscribers before they lag.
    pub outbox_capacity: usize,
    /// Tries per message and their time budget.
    pub retry: RetryConfig,
    /// An accepted message without a receipt after this long ends as failed.
    pub receipt_timeout_ms: u64,
    /// How often the janitor reclaims idle limiter keys.
    pub janitor_interval_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        let primary = CarrierConfig {
            name: "sim-primary".into(),
            priority: 0,
            weight: 1,
            ..CarrierConfig::default()
        };
        let backup = CarrierConfig {
            name: "sim-backup".into(),
            priority: 1,
            weight: 1,
            senders: vec!["+15550100002".into(), "Watchword".into()],
            ..CarrierConfig::default()
        };
        Self {
            carriers: vec![primary, backup],
            senders: SenderPoolsConfig::default(),
            limits: LimitsConfig::default(),
            queue_capacity: 100_000,
            outbox_capacity: 65_536,
            retry: RetryConfig::default(),
            receipt_timeout_ms: 120_000,
            janitor_interval_ms: 10_000,
        }
    }
}

impl RouterConfig {
    /// The default carriers with their simulated handsets answering
    /// confirmation calls by themselves (`#` after 2 s) while nobody holds
    /// the tenant's handsets, so the development profile's demo works alone.
    pub fn development() -> Self {
        let mut c = Self::default();
        for carrier in &mut c.carriers {
            carrier.simulated.auto_answer = Some(AutoAnswer::default());
        }
        c
    }
}

/// Which implementation a carrier uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CarrierKind {
    /// In-process simulation delivering into the outbox.
    Simulated,
    /// JSON over HTTP/1.1 (or HTTPS) to `http.url`.
    Http,
    /// SMS over SMPP 3.4 transceiver binds to `smpp.host` (SMS only).
    Smpp,
    /// E-mail over SMTP (STARTTLS, implicit TLS or plain) to `smtp.host`.
    Smtp,
}

/// One carrier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CarrierConfig {
    /// Unique name, used in metrics, logs and STATUS.
    pub name: String,
    /// Which implementation.
    pub kind: CarrierKind,
    /// Channels served.
    pub channels: Vec<Channel>,
    /// ISO 3166 alpha-2 countries served; with `prefixes` both empty, every country.
    pub countries: Vec<String>,
    /// E.164 prefixes served (e.g. "+1", "+4420").
    pub prefixes: Vec<String>,
    /// Lower is preferred.
    pub priority: u8,
    /// Share of traffic among carriers of the same priority.
    pub weight: u32,
    /// Sends per second (0 = unlimited); paced with a burst of two.
    pub throughput_per_s: u32,
    /// Messages waiting for this carrier before it counts as saturated.
    pub queue_capacity: usize,
    /// With a throughput limit: a pacing backlog longer than this, ms, also
    /// counts as saturated (new messages go elsewhere or are refused).
    pub max_queue_delay_ms: u64,
    /// Sends awaiting the carrier's answer at once (like an SMPP window).
    pub max_in_flight: usize,
    /// A send without an answer after this long has failed.
    pub timeout_ms: u64,
    /// The circuit breaker.
    pub breaker: BreakerConfig,
    /// Senders for SMS to countries without a pool, caller id for voice, from for e-mail.
    pub senders: Vec<String>,
    /// Each of `senders`' own rate per second (0 = unlimited; a long number does about 1).
    pub sender_rate_per_s: u32,
    /// Settings of a simulated carrier.
    pub simulated: SimulatedConfig,
    /// Settings of an HTTP carrier.
    pub http: HttpConfig,
    /// Settings of an SMPP carrier.
    pub smpp: SmppConfig,
    /// Settings of an SMTP carrier.
    pub smtp: SmtpConfig,
}

impl Default for CarrierConfig {
    fn default() -> Self {
        Self {
            name: "sim".into(),
            kind: CarrierKind::Simulated,
            channels: Channel::ALL.to_vec(),
            countries: Vec::new(),
            prefixes: Vec::new(),
            priority: 0,
            weight: 1,
            throughput_per_s: 0,
            queue_capacity: 50_000,
            max_queue_delay_ms: 10_000,
            max_in_flight: 10_000,
            timeout_ms: 10_000,
            breaker: BreakerConfig::default(),
            senders: vec!["+15550100001".into(), "Watchword".into()],
            sender_rate_per_s: 1,
            simulated: SimulatedConfig::default(),
            http: HttpConfig::default(),
            smpp: SmppConfig::default(),
            smtp: SmtpConfig::default(),
        }
    }
}

impl CarrierConfig {
    /// Sends the router lets await this carrier's answer at once:
    /// `max_in_flight`, and for an SMPP carrier no more than its binds'
    /// windows together (so a send never waits for a window inside the
    /// carrier's timeout).
    pub fn in_flight_limit(&self) -> usize {
        match self.kind {
            CarrierKind::Smpp => self.max_in_flight.min(self.smpp.total_window().max(1)),
            _ => self.max_in_flight,
        }
    }

    /// Sends per second the router paces this carrier to (0 = unlimited):
    /// `throughput_per_s`, and for an SMPP carrier no more than its binds'
    /// `throughput_per_bind` together.
    pub fn throughput_limit(&self) -> u32 {
        let binds = match self.kind {
            CarrierKind::Smpp if self.smpp.throughput_per_bind > 0 => self
                .smpp
                .throughput_per_bind
                .saturating_mul(self.smpp.binds.max(1)),
            _ => 0,
        };
        match (self.throughput_per_s, binds) {
            (0, b) => b,
            (t, 0) => t,
            (t, b) => t.min(b),
        }
    }
}

/// Circuit breaker settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open it.
    pub failure_threshold: u32,
    /// First cooldown before a half-open probe.
    pub cooldown_ms: u64,
    /// Cooldowns double after each failed probe, up to this.
    pub max_cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown_ms: 5_000,
            max_cooldown_ms: 120_000,
        }
    }
}

/// How a simulated outage behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutageMode {
    /// Every send fails at once.
    Fail,
    /// Sends never get an answer (the router's timeout ends them).
    Hang,
}

/// A scheduled outage, relative to the router's start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageConfig {
    /// Start, in ms after the router started.
    pub start_ms: u64,
    /// Length in ms.
    pub duration_ms: u64,
    /// Fail or hang.
    pub mode: OutageMode,
}

/// Behaviour of a simulated carrier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatedConfig {
    /// Fastest answer, ms.
    pub latency_min_ms: u64,
    /// Slowest answer, ms (uniform between the two).
    pub latency_max_ms: u64,
    /// Probability that a send fails (transient).
    pub failure_rate: f64,
    /// Probability that a send is throttled.
    pub throttle_rate: f64,
    /// The Retry-After given with a throttle, ms.
    pub throttle_retry_after_ms: u64,
    /// Probability that a send is rejected for good.
    pub reject_rate: f64,
    /// Probability that an accepted message is never delivered (no receipt).
    pub lost_rate: f64,
    /// Time from acceptance to the delivery receipt, ms.
    pub receipt_delay_ms: u64,
    /// Scheduled outages.
    pub outages: Vec<OutageConfig>,
    /// A confirmation call nobody answers ends as not answered after this
    /// long, ms.
    pub ring_timeout_ms: u64,
    /// The carrier's handsets answer confirmation calls by themselves, but
    /// only while no connection of the tenant is subscribed to the outbox
    /// (whoever plays the handsets decides). Off unless set.
    pub auto_answer: Option<AutoAnswer>,
}

/// How a simulated handset answers a confirmation call by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoAnswer {
    /// The keys pressed: `#` confirms, `PIN#` confirms with a PIN, other
    /// digits decline, empty hangs up.
    pub digits: String,
    /// Time from the ring to the answer, ms.
    pub delay_ms: u64,
}

impl Default for AutoAnswer {
    fn default() -> Self {
        Self {
            digits: "#".into(),
            delay_ms: 2_000,
        }
    }
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        Self {
            latency_min_ms: 1,
            latency_max_ms: 5,
            failure_rate: 0.0,
            throttle_rate: 0.0,
            throttle_retry_after_ms: 1_000,
            reject_rate: 0.0,
            lost_rate: 0.0,
            receipt_delay_ms: 20,
            outages: Vec::new(),
            ring_timeout_ms: 45_000,
            auto_answer: None,
        }
    }
}

/// Settings of an HTTP carrier.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where to POST each message: `http://` or `https://host[:port]/path`.
    pub url: String,
    /// Optional `Authorization` header value.
    pub authorization: String,
    /// With an `https://` url: a PEM bundle of the CAs to trust instead of
    /// the system's trust store (empty: the system's).
    pub ca_file: String,
    /// Idle keep-alive connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// An idle pooled connection is closed after this long, ms.
    pub pool_idle_timeout_ms: u64,
    /// `false` (default): a 2xx counts as delivered. `true`: a 2xx is only
    /// accepted and the carrier's signed callback (`POST
    /// /v1/carriers/<name>/receipts`) says delivered or failed.
    pub receipts: bool,
    /// The HMAC-SHA256 key the carrier signs its callbacks with (required
    /// with `receipts = true`, at least 16 bytes; never shown).
    pub callback_secret: String,
}

/// Shortest `callback_secret` accepted, bytes.
pub const MIN_CALLBACK_SECRET: usize = 16;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            authorization: String::new(),
            ca_file: String::new(),
            pool_max_idle_per_host: 64,
            pool_idle_timeout_ms: 90_000,
            receipts: false,
            callback_secret: String::new(),
        }
    }
}

/// Shows neither the `Authorization` value nor credentials in the URL.
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match self.url.split_once("://") {
            Some((scheme, rest)) => {
                let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
                    None => self.url.clone(),
                }
            }
            None => self.url.clone(),
        };
        let authorization = if self.authorization.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("HttpConfig")
            .field("url", &url)
            .field("authorization", &authorization)
            .field("ca_file", &self.ca_file)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("pool_idle_timeout_ms", &self.pool_idle_timeout_ms)
            .field("receipts", &self.receipts)
            .field(
                "callback_secret",
                &if self.callback_secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

/// One country's SMS sender pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderPool {
    /// ISO 3166 alpha-2 country.
    pub country: String,
    /// The senders (short codes), used in rotation.
    pub senders: Vec<String>,
    /// Each sender's own rate per second (0 = unlimited).
    pub rate_per_s: u32,
}

impl Default for SenderPool {
    fn default() -> Self {
        Self {
            country: String::new(),
            senders: Vec::new(),
            rate_per_s: 100,
        }
    }
}

/// SMS sender pools per country; countries without one use their carrier's senders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderPoolsConfig {
    /// The pools.
    pub pools: Vec<SenderPool>,
}

impl Default for SenderPoolsConfig {
    fn default() -> Self {
        let pool = |country: &str, codes: &[&str]| SenderPool {
            country: country.into(),
            senders: codes.iter().map(|s| (*s).to_owned()).collect(),
            rate_per_s: 100,
        };
        Self {
            pools: vec![
                pool("US", &["97671", "69829", "51789", "99399"]),
                pool("CA", &["759731", "673801"]),
            ],
        }
    }
}

/// One keyed limit: at most `max` sends per `window_ms` (0 = off).
///
/// Up to 16, it is exact over any sliding window; above, a GCRA with a burst of
/// `max` refilled at `max / window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limit {
    /// Sends allowed (0 = no limit).
    pub max: u32,
    /// The window, ms.
    pub window_ms: u64,
}

impl Default for Limit {
    fn default() -> Self {
        Self {
            max: 0,
            window_ms: 1_000,
        }
    }
}

impl Limit {
    /// `max` sends per `window_ms`.
    pub const fn new(max: u32, window_ms: u64) -> Self {
        Self { max, window_ms }
    }
}

/// A limit on every destination under a number prefix (against SMS pumping).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixLimit {
    /// E.164 prefix, e.g. "+882".
    pub prefix: String,
    /// The limit for all numbers under it together.
    pub limit: Limit,
}

impl Default for PrefixLimit {
    fn default() -> Self {
        Self {
            prefix: "+".into(),
            limit: Limit::default(),
        }
    }
}

/// Keyed admission limits, checked and counted by `Router::admit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Per destination (all tenants): default 5 in any 5 minutes.
    pub destination: Limit,
    /// Per tenant and subject.
    pub subject: Limit,
    /// Per tenant.
    pub tenant: Limit,
    /// Per destination country (all tenants).
    pub country: Limit,
    /// Per number prefix (all tenants); the longest matching prefix applies.
    pub prefixes: Vec<PrefixLimit>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            destination: Limit::new(5, 300_000),
            subject: Limit::new(10, 300_000),
            tenant: Limit::new(200_000, 1_000),
            country: Limit::new(100_000, 1_000),
            prefixes: Vec::new(),
        }
    }
}

/// Tries per message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries per message (1..=5).
    pub max_tries: u32,
    /// Every try starts within this long of the first, ms.
    pub budget_ms: u64,
    /// Back-off before the second try, ms; doubles after, with jitter.
    pub base_backoff_ms: u64,
    /// Longest back-off, ms.
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_tries: 5,
            budget_ms: 300_000,
            base_backoff_ms: 200,
            max_backoff_ms: 30_000,
        }
    }
}

/// A tenant's delivery settings (from the tenant's policy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantDelivery {
    /// ISO 3166 alpha-2 country for numbers in national format, e.g. "US".
    pub default_country: String,
    /// Voice extensions go through the operator who answers.
    pub operator_assistance: bool,
    /// The service name written in messages.
    pub service_name: String,
    /// Message locale when a request gives none.
    pub default_locale: String,
}

impl Default for TenantDelivery {
    fn default() -> Self {
        Self {
            default_country: "US".into(),
            operator_assistance: false,
            service_name: "Watchword".into(),
            default_locale: "en".into(),
        }
    }
}

/// A configuration the router cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("router configuration: {0}")]
pub struct RouterConfigError(pub String);

impl RouterConfig {
    /// Checks the configuration; the error names the offending field.
    pub fn validate(&self) -> Result<(), RouterConfigError> {
        let err = |s: String| Err(RouterConfigError(s));
        if self.carriers.len() > 64 {
            return err(format!("carriers: at most 64, got {}", self.carriers.len()));
        }
        if self.queue_capacity == 0 || self.queue_capacity > (u32::MAX as usize) {
            return err("queue_capacity: must be 1..=4294967295".into());
        }
        if self.outbox_capacity == 0 {
            return err("outbox_capacity: must be at least 1".into());
        }
        if !(1..=5).contains(&self.retry.max_tries) {
            return err("retry.max_tries: must be 1..=5".into());
        }
        if self.retry.budget_ms == 0 || self.retry.budget_ms > 300_000 {
            return err("retry.budget_ms: must be 1..=300000".into());
        }
        if self.receipt_timeout_ms == 0 || self.janitor_interval_ms == 0 {
            return err("receipt_timeout_ms and janitor_interval_ms must be positive".into());
        }
        if self.janitor_interval_ms > MAX_JANITOR_INTERVAL_MS {
            return err(format!(
                "janitor_interval_ms: at most {MAX_JANITOR_INTERVAL_MS} (one day)"
            ));
        }
        for (i, c) in self.carriers.iter().enumerate() {
            let at = format!("carriers[{i}] ({})", c.name);
            if c.name.is_empty() {
                return err(format!("{at}.name: must not be empty"));
            }
            if self.carriers[..i].iter().any(|o| o.name == c.name) {
                return err(format!("{at}.name: duplicate"));
            }
            if c.channels.is_empty() {
                return err(format!("{at}.channels: must not be empty"));
            }
            if c.max_in_flight == 0 || c.queue_capacity == 0 || c.timeout_ms == 0 {
                return err(format!(
                    "{at}: max_in_flight, queue_capacity and timeout_ms must be positive"
                ));
            }
            if c.breaker.failure_threshold == 0 || c.breaker.cooldown_ms == 0 {
                return err(format!(
                    "{at}.breaker: failure_threshold and cooldown_ms must be positive"
                ));
            }
            if c.senders.is_empty() {
                return err(format!("{at}.senders: need at least one sender"));
            }
            if let Some(p) = c.prefixes.iter().find(|p| !valid_prefix(p)) {
                return err(format!("{at}.prefixes: {p:?} is not '+' then digits"));
            }
            let s = &c.simulated;
            for (n, r) in [
                ("failure_rate", s.failure_rate),
                ("throttle_rate", s.throttle_rate),
                ("reject_rate", s.reject_rate),
                ("lost_rate", s.lost_rate),
            ] {
                if !(0.0..=1.0).contains(&r) {
                    return err(format!("{at}.simulated.{n}: must be within 0..=1"));
                }
            }
            if s.latency_min_ms > s.latency_max_ms {
                return err(format!("{at}.simulated: latency_min_ms > latency_max_ms"));
            }
            if c.kind == CarrierKind::Http {
                let h = &c.http;
                let https = h.url.starts_with("https://");
                if !https && !h.url.starts_with("http://") {
                    return err(format!(
                        "{at}.http.url: must start with http:// or https://"
                    ));
                }
                if !h.ca_file.is_empty() {
                    if !https {
                        return err(format!(
                            "{at}.http.ca_file: only with an https:// url (a plain http:// \
                             carrier has no certificate to check)"
                        ));
                    }
                    if let Err(e) = super::http::ca_file_roots(std::path::Path::new(&h.ca_file)) {
                        return err(format!("{at}.http.ca_file: {e}"));
                    }
                }
                if h.receipts && h.callback_secret.len() < MIN_CALLBACK_SECRET {
                    return err(format!(
                        "{at}.http.callback_secret: receipts = true needs a secret of at least \
                         {MIN_CALLBACK_SECRET} bytes to check the carrier's callbacks"
                    ));
                }
                if !h.receipts && !h.callback_secret.is_empty() {
                    return err(format!(
                        "{at}.http.callback_secret: only with receipts = true"
                    ));
                }
            }
            if c.kind == CarrierKind::Smpp {
                if c.channels.iter().any(|ch| *ch != Channel::Sms) {
                    return err(format!(
                        "{at}.channels: an smpp carrier sends SMS only; set channels = [\"sms\"]"
                    ));
                }
                if let Err(e) = c.smpp.validate() {
                    return err(format!("{at}.smpp.{e}"));
                }
            }
            if c.kind == CarrierKind::Smtp {
                validate_smtp(c).map_err(|e| RouterConfigError(format!("{at}.{e}")))?;
            }
        }
        for (i, p) in self.senders.pools.iter().enumerate() {
            if p.country.len() != 2 || p.senders.is_empty() {
                return err(format!(
                    "senders.pools[{i}]: needs a 2-letter country and at least one sender"
                ));
            }
        }
        for (i, p) in self.limits.prefixes.iter().enumerate() {
            if !valid_prefix(&p.prefix) {
                return err(format!("limits.prefixes[{i}].prefix: not '+' then digits"));
            }
        }
        let named = [
            ("destination".to_owned(), self.limits.destination),
            ("subject".to_owned(), self.limits.subject),
            ("tenant".to_owned(), self.limits.tenant),
            ("country".to_owned(), self.limits.country),
        ];
        let prefixed = (self.limits.prefixes.iter().enumerate())
            .map(|(i, p)| (format!("prefixes[{i}].limit"), p.limit));
        for (n, l) in named.into_iter().chain(prefixed) {
            if l.max > 0 && l.window_ms == 0 {
                return err(format!("limits.{n}.window_ms: must be positive"));
            }
            if l.window_ms > MAX_WINDOW_MS {
                return err(format!(
                    "limits.{n}.window_ms: at most {MAX_WINDOW_MS} (7 days)"
                ));
            }
        }
        Ok(())
    }
}

fn valid_prefix(p: &str) -> bool {
    p.strip_prefix('+')
        .is_some_and(|d| d.len() <= 15 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// How an SMTP carrier protects its connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Connect in the clear, then STARTTLS before anything else; a server
    /// that does not offer it fails every send (never a silent downgrade).
    /// The submission port, 587.
    #[default]
    Starttls,
    /// TLS from the first byte (implicit TLS, RFC 8314), usually port 465.
    Tls,
    /// No TLS at all: for a relay on loopback and for tests. The production
    /// profile refuses it off loopback (rule `plaintext`).
    None,
}

impl SmtpTls {
    /// The name written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starttls => "starttls",
            Self::Tls => "tls",
            Self::None => "none",
        }
    }
}

/// Settings of an SMTP carrier (e-mail only).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// The mail server (submission or relay): a host name or an IP address,
    /// without a port. The server's certificate must be valid for it.
    pub host: String,
    /// Its port: 587 (submission, STARTTLS), 465 with `tls = "tls"`.
    pub port: u16,
    /// `starttls`, `tls` (implicit) or `none`.
    pub tls: SmtpTls,
    /// AUTH user name (PLAIN or LOGIN); empty: no AUTH.
    pub username: String,
    /// AUTH password (never shown in Debug output, logs or errors).
    pub password: String,
    /// The sender mailbox (`codes@example.com` or `Example <codes@example.com>`);
    /// empty: the carrier's first `senders` entry.
    pub from: String,
    /// Connections open at once to the server (sends beyond wait for one);
    /// each is kept open for the next send (60 s idle at most).
    pub pool_size: u32,
    /// Connecting, and each message's whole SMTP exchange (TLS, AUTH, MAIL,
    /// RCPT, DATA), must end within this long, ms; a send that does not
    /// fails and closes its connection. Keep it under the carrier's
    /// `timeout_ms` so that the reason says so.
    pub timeout_ms: u64,
    /// With TLS: a PEM bundle of the only CAs trusted for this server
    /// (empty: the system's trust store).
    pub ca_file: String,
    /// The name given in EHLO; empty: this machine's host name.
    pub helo_name: String,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 587,
            tls: SmtpTls::Starttls,
            username: String::new(),
            password: String::new(),
            from: String::new(),
            pool_size: 8,
            timeout_ms: 8_000,
            ca_file: String::new(),
            helo_name: String::new(),
        }
    }
}

/// Shows everything but the password.
impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = if self.password.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &password)
            .field("from", &self.from)
            .field("pool_size", &self.pool_size)
            .field("timeout_ms", &self.timeout_ms)
            .field("ca_file", &self.ca_file)
            .field("helo_name", &self.helo_name)
            .finish()
    }
}

/// An SMTP carrier's mistakes, as `field: reason` under the carrier (never
/// quoting the password).
fn validate_smtp(c: &CarrierConfig) -> Result<(), String> {
    let s = &c.smtp;
    if c.channels.iter().any(|ch| *ch != Channel::Email) {
        return Err(
            "channels: an smtp carrier sends e-mail only; set channels = [\"email\"]".into(),
        );
    }
    if s.host.is_empty() {
        return Err("smtp.host: must be set (the mail server's name or IP address)".into());
    }
    let ip = s.host.parse::<std::net::IpAddr>().is_ok();
    if !ip
        && !s
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(format!(
            "smtp.host: {:?} is not a host name or IP address (no scheme, no port: the port \
             goes in smtp.port)",
            s.host
        ));
    }
    if s.port == 0 {
        return Err("smtp.port: must be 1..=65535".into());
    }
    if s.username.is_empty() != s.password.is_empty() {
        return Err(if s.username.is_empty() {
            "smtp.username: must be set with smtp.password (AUTH needs both)".into()
        } else {
            "smtp.password: must be set with smtp.username (AUTH needs both)".into()
        });
    }
    if s.pool_size == 0 {
        return Err("smtp.pool_size: must be at least 1".into());
    }
    if s.timeout_ms == 0 {
        return Err("smtp.timeout_ms: must be positive".into());
    }
    if !s.helo_name.is_empty()
        && !s
            .helo_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
    {
        return Err(format!(
            "smtp.helo_name: {:?} is not a domain name or address literal",
            s.helo_name
        ));
    }
    if s.from.is_empty() {
        let first = c.senders.first().map_or("", String::as_str);
        if first.parse::<lettre::message::Mailbox>().is_err() {
            return Err(format!(
                "senders: an smtp carrier without smtp.from sends from its first sender, and \
                 {first:?} is not an e-mail address; set smtp.from (e.g. \"codes@example.com\")"
            ));
        }
    } else if s.from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(format!(
            "smtp.from: {:?} is not a mailbox (codes@example.com or Name <codes@example.com>)",
            s.from
        ));
    }
    if !s.ca_file.is_empty() {
        if s.tls == SmtpTls::None {
            return Err(
                "smtp.ca_file: only with tls = \"starttls\" or \"tls\" (tls = \"none\" has no \
                 certificate to check)"
                    .into(),
            );
        }
        super::http::ca_file_roots(std::path::Path::new(&s.ca_file))
            .map_err(|e| format!("smtp.ca_file: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_authorization_and_url_credentials() {
        let cfg = HttpConfig {
            url: "https://user:s3cret@api.example/v1?x=@".into(),
            authorization: "Bearer t0ken".into(),
            ..HttpConfig::default()
        };
        let d = format!("{cfg:?}");
        assert!(
            !d.contains("s3cret") && !d.contains("t0ken") && !d.contains("user"),
            "{d}"
        );
        assert!(d.contains("https://<redacted>@api.example/v1?x=@"), "{d}");
    }

    #[test]
    fn an_smpp_carrier_is_checked_field_by_field_and_caps_the_router() {
        let mut cfg = RouterConfig::default();
        let c = &mut cfg.carriers[0];
        c.kind = CarrierKind::Smpp;
        c.smpp.system_id = "ww".into();
        c.smpp.password = "s3cret".into();
        let e = cfg.validate().unwrap_err().0;
        assert_eq!(
            e,
            "carriers[0] (sim-primary).channels: an smpp carrier sends SMS only; set channels = [\"sms\"]"
        );
        cfg.carriers[0].channels = vec![Channel::Sms];
        let e = cfg.validate().unwrap_err().0;
        assert!(
            e.starts_with("carriers[0] (sim-primary).smpp.host: "),
            "{e}"
        );
        cfg.carriers[0].smpp.host = "smsc.example".into();
        cfg.validate().unwrap();
        cfg.carriers[0].smpp.password = "much-too-long-s3cret".into();
        let e = cfg.validate().unwrap_err().0;
        assert!(
            e.starts_with("carriers[0] (sim-primary).smpp.password: "),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");

        // The router's window and pace stay within the binds'.
        let c = &mut cfg.carriers[0];
        c.smpp.binds = 3;
        c.smpp.window = 10;
        assert_eq!(c.in_flight_limit(), 30);
        c.max_in_flight = 8;
        assert_eq!(c.in_flight_limit(), 8);
        assert_eq!(c.throughput_limit(), 0);
        c.smpp.throughput_per_bind = 50;
        assert_eq!(c.throughput_limit(), 150);
        c.throughput_per_s = 100;
        assert_eq!(c.throughput_limit(), 100);
        c.kind = CarrierKind::Http;
        assert_eq!((c.in_flight_limit(), c.throughput_limit()), (8, 100));
    }

    #[test]
    fn an_http_carrier_needs_an_http_or_https_url() {
        let mut cfg = RouterConfig::default();
        cfg.carriers[0].kind = CarrierKind::Http;
        for (url, ok) in [
            ("https://api.example/v1", true),
            ("http://127.0.0.1:8080/send", true),
            ("ftp://api.example/", false),
            ("", false),
        ] {
            cfg.carriers[0].http.url = url.into();
            assert_eq!(cfg.validate().is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn http_receipts_need_a_long_enough_secret_which_is_never_shown() {
        let mut cfg = RouterConfig::default();
        cfg.carriers[0].kind = CarrierKind::Http;
        cfg.carriers[0].http.url = "http://127.0.0.1:8080/send".into();
        cfg.validate().unwrap();
        cfg.carriers[0].http.receipts = true;
        let e = cfg.validate().unwrap_err().0;
        assert!(
            e.contains(".http.callback_secret: receipts = true needs"),
            "{e}"
        );
        cfg.carriers[0].http.callback_secret = "short-s3cret".into();
        let e = cfg.validate().unwrap_err().0;
        assert!(e.contains("at least 16 bytes"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        cfg.carriers[0].http.callback_secret = "sixteen-byte-s3cret".into();
        cfg.validate().unwrap();
        let shown = format!("{:?}", cfg.carriers[0].http);
        assert!(shown.contains("callback_secret: \"<redacted>\""), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        // A secret without receipts is a mistake, not silently ignored.
        cfg.carriers[0].http.receipts = false;
        let e = cfg.validate().unwrap_err().0;
        assert!(e.contains("only with receipts = true"), "{e}");
    }
}
