//! The gateway's TOML configuration: `[server]`, `[[tenants]]` (keys, role and
//! the tenant's defaults), `[table]`, `[router]` (carriers, sender pools, rate
//! limits), `[audit]`, `[storage]`, `[http]` and `[radius]` (clients, their
//! secrets, the upstream server); the embedded development profile; the commented
//! default printed by `watchword print-config`; and validation that lists
//! every mistake with its field and reason (`watchword check-config`).
//!
//! This module must never print or log a tenant key or a RADIUS secret
//! (their `Debug` output is redacted, their errors name the field only),
//! and never let the development profile listen on a non-loopback address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use watchword_engine::delivery::{CarrierKind, RouterConfig};
use watchword_engine::delivery::{SmtpConfig, SmtpTls};
use watchword_engine::table::TableConfig;

use crate::server::{Role, ServerSettings, TenantAuth};

/// Which safety rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Local development: loopback addresses only.
    Development,
    /// A real deployment.
    Production,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `development` (loopback only) or `production`.
    pub profile: Profile,
    /// Name sent in the HELLO answer and written in the audit log.
    pub name: String,
    /// Protocol address, `ip:port`.
    pub listen: String,
    /// Metrics and health address, `ip:port`.
    pub metrics_listen: String,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Largest frame body accepted, bytes (6..=16777216).
    pub max_frame: u32,
    /// Most requests in flight per connection before reading pauses.
    pub max_in_flight: usize,
    /// Seconds without traffic before a connection is closed.
    pub idle_timeout_s: u64,
    /// PEM certificate chain; with `tls_key`, the protocol runs over TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Seconds allowed for queued deliveries to drain at shutdown.
    pub shutdown_deadline_s: u64,
    /// Let the kernel back the process's memory with transparent huge pages
    /// (Linux). Off by default: see docs/operations.md, "Memory pages".
    pub transparent_huge_pages: bool,
    /// Production guards waived by name (see [`PRODUCTION_RULES`]):
    /// `simulator_tenants`, `simulated_carriers`, `development_keys`,
    /// `short_keys`, `plaintext`.
    pub allow: Vec<String>,
}

/// The rules the production profile enforces, each waived by naming it in
/// `server.allow`: its name and what it refuses.
pub const PRODUCTION_RULES: [(&str, &str); 6] = [
    (
        "simulator_tenants",
        "a tenant with the simulator role (it reads every code from the outbox)",
    ),
    (
        "simulated_carriers",
        "a simulated carrier (messages go to the outbox, not to people)",
    ),
    (
        "development_keys",
        "a key or secret of the development profile (published in the README)",
    ),
    ("short_keys", "a tenant or HTTP key shorter than 16 bytes"),
    (
        "plaintext",
        "a protocol, HTTP or metrics listener off loopback without TLS, an http:// or smpp carrier, or an smtp carrier with tls = \"none\" off loopback",
    ),
    (
        "unlimited_guesses",
        "a tenant without a VERIFY or CHECK rate limit (verify_per_s, check_per_s = 0)",
    ),
];

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            profile: Profile::Development,
            name: "watchword".into(),
            listen: "127.0.0.1:7400".into(),
            metrics_listen: "127.0.0.1:9400".into(),
            max_connections: 10_000,
            max_frame: 65_536,
            max_in_flight: 1024,
            idle_timeout_s: 300,
            tls_cert: None,
            tls_key: None,
            shutdown_deadline_s: 10,
            transparent_huge_pages: false,
            allow: Vec::new(),
        }
    }
}

/// One `[[tenants]]` entry: credentials, role and defaults. Its `Debug`
/// output redacts the keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// Name sent in HELLO.
    pub name: String,
    /// Accepted keys (at least one, each at least 8 bytes).
    pub keys: Vec<String>,
    /// `client`, or `simulator` (may also subscribe to the outbox).
    pub role: Role,
    /// Digits in a code when the request says 0 (4..=12).
    pub code_len: u8,
    /// Validity in seconds when the request says 0 (30..=3600).
    pub ttl_s: u16,
    /// Wrong codes allowed before a challenge locks.
    pub max_attempts: u8,
    /// ISO 3166 alpha-2 country for national-format phone numbers.
    pub default_country: String,
    /// Voice extensions go through an operator instead of tones.
    pub operator_assistance: bool,
    /// Message language when the request gives none (BCP 47).
    pub locale: String,
    /// The service name written in messages.
    pub service_name: String,
    /// Hours after a contact's confirmation before it counts for help-desk
    /// caller verification.
    pub contact_hold_hours: u32,
    /// TOTP steps accepted either side of the current one (0..=10).
    pub token_window: u8,
    /// HOTP counters tried from the next expected one (1..=100).
    pub hotp_lookahead: u32,
    /// Wrong token codes in a row that lock a token (1..=100).
    pub token_max_failures: u32,
    /// Where users type their PIN: `none`, `prefix` (PIN then code) or
    /// `call` (PIN then `#` on a confirmation call).
    pub pin_mode: String,
    /// Digits of the PINs made from now on (4..=12); existing PINs keep
    /// their length.
    pub pin_length: u8,
    /// The contacts a help-desk verification code goes to, the first
    /// active one first: `email`, `sms`, `voice` in any order.
    pub helpdesk_order: Vec<String>,
    /// VERIFY and VERIFY_SUBJECT attempts per second for the whole tenant
    /// (a burst of one second's worth); beyond it RATE_LIMITED. 0: no limit
    /// (refused in production unless `unlimited_guesses` is allowed).
    pub verify_per_s: u32,
    /// CHECKs per second for the whole tenant, every front end together;
    /// 0: no limit (as `verify_per_s` in production).
    pub check_per_s: u32,
    /// Per challenge, the least time between a wrong code and the next try;
    /// sooner is RATE_LIMITED and counts no attempt (0..=60000 ms, 0: none).
    pub verify_gap_ms: u32,
    /// Keys of the HTTP API, each with its role.
    pub http_keys: Vec<HttpKey>,
}

/// What an HTTP API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpRole {
    /// `POST /v1/check` only.
    Client,
    /// Check, help desk, and reading users.
    Helpdesk,
    /// Everything.
    Admin,
}

impl HttpRole {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Helpdesk => "helpdesk",
            Self::Admin => "admin",
        }
    }
}

/// One HTTP API key. Its `Debug` output redacts the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpKey {
    /// The bearer token (8..=1024 bytes).
    pub key: String,
    /// What it may do.
    pub role: HttpRole,
}

impl std::fmt::Debug for HttpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpKey")
            .field("key", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

impl std::fmt::Debug for TenantConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConfig")
            .field("name", &self.name)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("role", &self.role)
            .field("code_len", &self.code_len)
            .field("ttl_s", &self.ttl_s)
            .field("max_attempts", &self.max_attempts)
            .field("default_country", &self.default_country)
            .field("operator_assistance", &self.operator_assistance)
            .field("locale", &self.locale)
            .field("service_name", &self.service_name)
            .field("contact_hold_hours", &self.contact_hold_hours)
            .field("token_window", &self.token_window)
            .field("hotp_lookahead", &self.hotp_lookahead)
            .field("token_max_failures", &self.token_max_failures)
            .field("pin_mode", &self.pin_mode)
            .field("pin_length", &self.pin_length)
            .field("verify_per_s", &self.verify_per_s)
            .field("check_per_s", &self.check_per_s)
            .field("verify_gap_ms", &self.verify_gap_ms)
            .field("helpdesk_order", &self.helpdesk_order)
            .field("http_keys", &self.http_keys)
            .finish()
    }
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            name: "demo".into(),
            keys: vec!["demo-key".into()],
            role: Role::Simulator,
            code_len: 6,
            ttl_s: 300,
            max_attempts: 5,
            default_country: "US".into(),
            operator_assistance: false,
            locale: "en".into(),
            service_name: "Watchword".into(),
            contact_hold_hours: 48,
            token_window: 1,
            hotp_lookahead: 10,
            token_max_failures: 10,
            pin_mode: "none".into(),
            pin_length: watchword_engine::directory::DEFAULT_PIN_LEN,
            helpdesk_order: vec!["email".into(), "sms".into(), "voice".into()],
            verify_per_s: 0,
            check_per_s: 0,
            verify_gap_ms: 0,
            // None by default: a tenant written without `http_keys` must not
            // inherit the development profile's keys.
            http_keys: Vec::new(),
        }
    }
}

/// The development profile's HTTP keys of tenant `demo` (admin-api.md).
pub fn development_http_keys() -> Vec<HttpKey> {
    [
        ("demo-admin-key", HttpRole::Admin),
        ("demo-helpdesk-key", HttpRole::Helpdesk),
        ("demo-client-key", HttpRole::Client),
    ]
    .into_iter()
    .map(|(key, role)| HttpKey {
        key: key.into(),
        role,
    })
    .collect()
}

/// `[storage]`: the directory's embedded database and the master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// The data directory (created on first start; the database is
    /// `watchword.db` in it). Empty: users live in memory only and every
    /// change is lost at exit (tests).
    pub path: PathBuf,
    /// The master key file (`watchword keygen FILE`), outside the data
    /// directory. Unset in the development profile: a key is made as
    /// `master.key` inside the data directory, with a warning.
    pub master_key: Option<PathBuf>,
    /// Directory writes queued for the disk before writes are refused.
    pub queue_ops: usize,
    /// Keep the pending challenges, limiter windows and tombstones across a
    /// graceful restart: written sealed to `pending.snapshot` in the data
    /// directory at SIGTERM/SIGINT, loaded and deleted at the next start.
    pub snapshot: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("watchword-data"),
            master_key: None,
            queue_ops: 65_536,
            snapshot: true,
        }
    }
}

/// `[http]`: the HTTP API listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `ip:port`; empty turns the HTTP API off. TLS follows
    /// `server.tls_cert` and `server.tls_key`.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9401".into(),
        }
    }
}

/// `[radius]`: the RADIUS server (docs/radius.md). Off while `listen` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RadiusConfig {
    /// UDP `ip:port`; empty turns RADIUS off.
    pub listen: String,
    /// Longest a request is held on a ringing confirmation call, seconds.
    pub call_wait_s: u64,
    /// Requests of one client being processed at once (held calls, token
    /// writes, upstream checks); more are discarded and counted as `full`.
    pub max_in_flight: usize,
    /// Replies of one client kept for retransmissions (30 s each); when
    /// full, the oldest is pushed out early (counted in
    /// `watchword_radius_reply_cache_evicted_total`).
    pub reply_cache_entries: usize,
    /// The clients (NAS): a source address or prefix each.
    pub clients: Vec<RadiusClientConfig>,
    /// The upstream server of clients with `first_factor = "upstream"`.
    pub upstream: Option<RadiusUpstreamConfig>,
}

impl Default for RadiusConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            call_wait_s: 50,
            max_in_flight: 1024,
            reply_cache_entries: 131_072,
            clients: Vec::new(),
            upstream: None,
        }
    }
}

impl RadiusConfig {
    /// The development profile's: `127.0.0.1:1812`, one client `local` for
    /// `127.0.0.0/8`, secret `demo-radius-secret`, tenant `demo`,
    /// Message-Authenticator required, first factor `none`.
    pub fn development() -> Self {
        Self {
            listen: "127.0.0.1:1812".into(),
            clients: vec![RadiusClientConfig {
                name: "local".into(),
                address: "127.0.0.0/8".into(),
                secret: "demo-radius-secret".into(),
                tenant: "demo".into(),
                require_message_authenticator: true,
                first_factor: FirstFactor::None,
            }],
            ..Self::default()
        }
    }
}

/// Who checks the password (docs/radius.md, "First factor").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FirstFactor {
    /// The NAS checked it; User-Password carries only the one-time answer.
    #[default]
    None,
    /// The first request's password is checked by `[radius.upstream]`.
    Upstream,
}

/// One `[[radius.clients]]` entry. Its `Debug` output redacts the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RadiusClientConfig {
    /// Its name in metrics, logs and the audit trail (1..=64 of `A-Za-z0-9._-`).
    pub name: String,
    /// Its source address or prefix: `192.0.2.7`, `10.0.0.0/8`, `2001:db8::/32`.
    pub address: String,
    /// The shared secret (16..=256 bytes).
    pub secret: String,
    /// The tenant whose users it authenticates.
    pub tenant: String,
    /// Discard its requests that have no Message-Authenticator.
    #[serde(default = "yes")]
    pub require_message_authenticator: bool,
    /// `none` or `upstream`.
    #[serde(default)]
    pub first_factor: FirstFactor,
}

fn yes() -> bool {
    true
}

impl std::fmt::Debug for RadiusClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadiusClientConfig")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("secret", &"<redacted>")
            .field("tenant", &self.tenant)
            .field(
                "require_message_authenticator",
                &self.require_message_authenticator,
            )
            .field("first_factor", &self.first_factor)
            .finish()
    }
}

/// `[radius.upstream]`. Its `Debug` output redacts the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RadiusUpstreamConfig {
    /// The upstream RADIUS server, `ip:port`.
    pub address: String,
    /// The secret shared with it (16..=256 bytes).
    pub secret: String,
    /// How long to wait for its answer (sent up to 3 times), ms.
    pub timeout_ms: u64,
    /// Refuse its replies without Message-Authenticator (FreeRADIUS sends
    /// one from 3.2.5 on).
    pub require_message_authenticator: bool,
}

impl Default for RadiusUpstreamConfig {
    fn default() -> Self {
        Self {
            address: String::new(),
            secret: String::new(),
            timeout_ms: 5000,
            require_message_authenticator: true,
        }
    }
}

impl std::fmt::Debug for RadiusUpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadiusUpstreamConfig")
            .field("address", &self.address)
            .field("secret", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .field(
                "require_message_authenticator",
                &self.require_message_authenticator,
            )
            .finish()
    }
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Write the audit log at all.
    pub enabled: bool,
    /// The JSON Lines file. A rotated file is renamed `PATH.<UTC time>`
    /// (`20250131T120000.123Z`, when it was rotated), then compressed to
    /// `PATH.<UTC time>.zst`.
    pub path: PathBuf,
    /// Rotate when the file would grow beyond this many bytes.
    pub max_file_bytes: u64,
    /// Optional limit on the number of rotated files kept (unset: none; 0
    /// keeps no rotated file). Age and disk budget apply either way.
    pub max_files: Option<u32>,
    /// Rotated files whose newest record is older than this many days are
    /// deleted (0: no age limit).
    pub max_age_days: u32,
    /// The disk budget of the trail: the current file and every rotated
    /// file together; beyond it the oldest rotated files are deleted.
    pub max_total_bytes: u64,
    /// A record deleted (by the disk budget or `max_files`) younger than this
    /// many hours is counted (`watchword_audit_deleted_early_total`) and
    /// logged as an error.
    pub min_age_hours: u32,
    /// Events buffered in memory; when full, new events are dropped and counted.
    pub buffer_events: usize,
    /// Flush and fsync at least this often, milliseconds.
    pub flush_interval_ms: u64,
    /// Forward every record to a local syslog daemon (RFC 5424):
    /// `unix:/dev/log` or `udp:127.0.0.1:514`; empty: off.
    pub syslog: String,
    /// The syslog facility: `auth`, `authpriv`, `daemon`, `user` or `local0`..`local7`.
    pub syslog_facility: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from("watchword-audit.jsonl"),
            max_file_bytes: 64 * 1024 * 1024,
            max_files: None,
            max_age_days: 90,
            max_total_bytes: 4 * 1024 * 1024 * 1024,
            min_age_hours: 24,
            buffer_events: 65_536,
            flush_interval_ms: 200,
            syslog: String::new(),
            syslog_facility: "authpriv".into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[[tenants]]`.
    pub tenants: Vec<TenantConfig>,
    /// `[table]`: the challenge table's capacity and shards.
    pub table: TableConfig,
    /// `[router]`: carriers, sender pools, rate limits.
    pub router: RouterConfig,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[storage]`.
    pub storage: StorageConfig,
    /// `[http]`.
    pub http: HttpConfig,
    /// `[radius]`: off unless configured (on in the development profile).
    pub radius: RadiusConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self::development()
    }
}

/// One mistake in a configuration: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field, e.g. `server.listen` or `tenants[1].keys`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// The embedded development profile: protocol on 127.0.0.1:7400, metrics
    /// on 127.0.0.1:9400, simulated carriers, tenant `demo` with key
    /// `demo-key` and role `simulator`.
    pub fn development() -> Self {
        Self {
            server: ServerConfig::default(),
            tenants: vec![TenantConfig {
                http_keys: development_http_keys(),
                ..TenantConfig::default()
            }],
            table: TableConfig {
                capacity: 1_000_000,
                ..TableConfig::default()
            },
            router: RouterConfig::development(),
            audit: AuditConfig::default(),
            storage: StorageConfig::default(),
            http: HttpConfig::default(),
            radius: RadiusConfig::development(),
        }
    }

    /// Parses TOML text and validates it; every mistake found is returned.
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        // A syntax error keeps toml's own lines: where, and a caret under it.
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| vec![err("(syntax)", e.to_string().trim_end())])?;
        let mut errors = Vec::new();
        // A file without [radius] has RADIUS off: the development profile's
        // client and its well-known secret are never inherited.
        let mut cfg = Config {
            tenants: Vec::new(),
            radius: RadiusConfig::default(),
            ..Config::development()
        };
        for (key, value) in table {
            match key.as_str() {
                "server" => {
                    section(value, &key, &mut errors, &mut cfg.server);
                }
                "table" => {
                    section(value, &key, &mut errors, &mut cfg.table);
                }
                "router" => {
                    section(value, &key, &mut errors, &mut cfg.router);
                }
                "audit" => {
                    section(value, &key, &mut errors, &mut cfg.audit);
                }
                "storage" => {
                    section(value, &key, &mut errors, &mut cfg.storage);
                }
                "http" => {
                    section(value, &key, &mut errors, &mut cfg.http);
                }
                "radius" => {
                    section(value, &key, &mut errors, &mut cfg.radius);
                }
                "tenants" => match value {
                    toml::Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let mut t = TenantConfig::default();
                            if section(item, &format!("tenants[{i}]"), &mut errors, &mut t) {
                                cfg.tenants.push(t);
                            } else {
                                // Keep indexes aligned for later messages.
                                cfg.tenants.push(TenantConfig {
                                    name: format!("\u{0}invalid{i}"),
                                    ..TenantConfig::default()
                                });
                            }
                        }
                    }
                    _ => errors.push(err("tenants", "must be an array of tables ([[tenants]])")),
                },
                other => errors.push(err(
                    other,
                    "unknown section (expected server, tenants, table, router, audit, storage, http, radius)",
                )),
            }
        }
        errors.extend(cfg.validate().into_iter().filter(|e| {
            // A tenant that failed to parse was already reported.
            !e.reason.contains('\u{0}')
        }));
        for e in &mut errors {
            if let Some((line, column)) = locate(text, &e.field) {
                e.reason
                    .push_str(&format!(" (line {line}, column {column})"));
            }
        }
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(errors)
        }
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![err("(file)", format!("cannot read: {e}"))])?;
        Self::parse(&text)
    }

    /// Every semantic mistake in the configuration.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let s = &self.server;
        let mut addr = |field: &str, v: &str| match v.parse::<SocketAddr>() {
            Ok(a) => {
                if s.profile == Profile::Development && !a.ip().is_loopback() {
                    errors.push(err(
                        field,
                        format!(
                            "{v} is not a loopback address; the development profile only \
                             listens on loopback (set server.profile = \"production\")"
                        ),
                    ));
                }
            }
            Err(e) => errors.push(err(field, format!("{v:?} is not an ip:port address: {e}"))),
        };
        addr("server.listen", &s.listen);
        addr("server.metrics_listen", &s.metrics_listen);
        if !self.http.listen.is_empty() {
            addr("http.listen", &self.http.listen);
        }
        if s.name.is_empty() || s.name.len() > 255 {
            errors.push(err("server.name", "must be 1..=255 bytes"));
        }
        if s.max_connections == 0 {
            errors.push(err("server.max_connections", "must be at least 1"));
        }
        if !(64..=16 * 1024 * 1024).contains(&s.max_frame) {
            errors.push(err(
                "server.max_frame",
                format!("must be 64..=16777216, got {}", s.max_frame),
            ));
        }
        if !(1..=65_536).contains(&s.max_in_flight) {
            errors.push(err("server.max_in_flight", "must be 1..=65536"));
        }
        if s.idle_timeout_s == 0 {
            errors.push(err("server.idle_timeout_s", "must be at least 1"));
        }
        match (&s.tls_cert, &s.tls_key) {
            (None, None) => {}
            (Some(c), Some(k)) => {
                for (field, p) in [("server.tls_cert", c), ("server.tls_key", k)] {
                    if !p.is_file() {
                        errors.push(err(
                            field,
                            format!("{} is not a readable file", p.display()),
                        ));
                    }
                }
            }
            _ => errors.push(err(
                "server.tls_cert",
                "tls_cert and tls_key must be given together",
            )),
        }
        if self.tenants.is_empty() {
            errors.push(err("tenants", "at least one [[tenants]] entry is required"));
        }
        for (i, t) in self.tenants.iter().enumerate() {
            if t.name.contains('\u{0}') {
                continue;
            }
            let at = |f: &str| format!("tenants[{i}].{f}");
            if t.name.is_empty() || t.name.len() > 1024 {
                errors.push(err(at("name"), "must be 1..=1024 bytes"));
            }
            if self.tenants[..i].iter().any(|o| o.name == t.name) {
                errors.push(err(
                    at("name"),
                    format!("{:?} is used by another tenant", t.name),
                ));
            }
            if t.keys.is_empty() {
                errors.push(err(at("keys"), "at least one key is required"));
            }
            for (j, k) in t.keys.iter().enumerate() {
                if k.len() < 8 || k.len() > 1024 {
                    errors.push(err(
                        format!("tenants[{i}].keys[{j}]"),
                        "a key must be 8..=1024 bytes (its value is not shown)",
                    ));
                }
            }
            if !(4..=12).contains(&t.code_len) {
                errors.push(err(
                    at("code_len"),
                    format!("must be 4..=12, got {}", t.code_len),
                ));
            }
            if !(30..=3600).contains(&t.ttl_s) {
                errors.push(err(
                    at("ttl_s"),
                    format!("must be 30..=3600, got {}", t.ttl_s),
                ));
            }
            if t.max_attempts == 0 {
                errors.push(err(at("max_attempts"), "must be at least 1"));
            }
            if t.token_window > 10 {
                errors.push(err(
                    at("token_window"),
                    format!("must be 0..=10, got {}", t.token_window),
                ));
            }
            if !(1..=100).contains(&t.hotp_lookahead) {
                errors.push(err(
                    at("hotp_lookahead"),
                    format!("must be 1..=100, got {}", t.hotp_lookahead),
                ));
            }
            if !(1..=100).contains(&t.token_max_failures) {
                errors.push(err(
                    at("token_max_failures"),
                    format!("must be 1..=100, got {}", t.token_max_failures),
                ));
            }
            if watchword_engine::PinMode::parse(&t.pin_mode).is_none() {
                errors.push(err(
                    at("pin_mode"),
                    format!(
                        "must be \"none\", \"prefix\" or \"call\", got {:?}",
                        t.pin_mode
                    ),
                ));
            }
            if !(watchword_engine::directory::MIN_PIN_LEN
                ..=watchword_engine::directory::MAX_PIN_LEN)
                .contains(&t.pin_length)
            {
                errors.push(err(
                    at("pin_length"),
                    format!("must be 4..=12, got {}", t.pin_length),
                ));
            }
            if t.verify_gap_ms > 60_000 {
                errors.push(err(
                    at("verify_gap_ms"),
                    format!("must be 0..=60000 ms, got {}", t.verify_gap_ms),
                ));
            }
            let mut seen_kinds = Vec::new();
            for k in &t.helpdesk_order {
                if !matches!(k.as_str(), "email" | "sms" | "voice") || seen_kinds.contains(k) {
                    errors.push(err(
                        at("helpdesk_order"),
                        format!("each of \"email\", \"sms\", \"voice\" at most once, got {k:?}"),
                    ));
                }
                seen_kinds.push(k.clone());
            }
            if t.helpdesk_order.is_empty() {
                errors.push(err(
                    at("helpdesk_order"),
                    "must name at least one contact type",
                ));
            }
            if t.contact_hold_hours > 24 * 365 {
                errors.push(err(
                    at("contact_hold_hours"),
                    "must be at most 8760 (a year)",
                ));
            }
            for (j, k) in t.http_keys.iter().enumerate() {
                if k.key.len() < 8 || k.key.len() > 1024 {
                    errors.push(err(
                        format!("tenants[{i}].http_keys[{j}].key"),
                        "a key must be 8..=1024 bytes (its value is not shown)",
                    ));
                }
                let used = self.tenants.iter().enumerate().any(|(o, ot)| {
                    ot.http_keys
                        .iter()
                        .enumerate()
                        .any(|(ok, other)| (o, ok) < (i, j) && other.key == k.key)
                });
                if used {
                    errors.push(err(
                        format!("tenants[{i}].http_keys[{j}].key"),
                        "this key is already used (an HTTP key names its tenant, so it must be unique)",
                    ));
                }
            }
            if t.default_country.len() != 2
                || !t.default_country.bytes().all(|b| b.is_ascii_uppercase())
            {
                errors.push(err(
                    at("default_country"),
                    format!(
                        "must be an ISO 3166 alpha-2 code such as \"US\", got {:?}",
                        t.default_country
                    ),
                ));
            }
        }
        let st = &self.storage;
        if let Some(k) = &st.master_key {
            if !st.path.as_os_str().is_empty() && k.starts_with(&st.path) {
                errors.push(err(
                    "storage.master_key",
                    "must be outside storage.path: a copied data directory must not carry its key",
                ));
            }
        } else if s.profile == Profile::Production && !st.path.as_os_str().is_empty() {
            errors.push(err(
                "storage.master_key",
                "required in production: create one with `watchword keygen FILE` outside the data directory",
            ));
        }
        if st.queue_ops == 0 {
            errors.push(err("storage.queue_ops", "must be at least 1"));
        }
        self.validate_production(&mut errors);
        if let Err(e) = self.table.validate() {
            errors.push(err("table", e.to_string()));
        }
        if let Err(e) = self.router.validate() {
            let (field, reason) = self.router_error_field(&e.0);
            errors.push(err(field, reason));
        }
        self.validate_radius(&mut errors);
        let a = &self.audit;
        if a.enabled {
            if a.path.as_os_str().is_empty() {
                errors.push(err("audit.path", "must not be empty when audit.enabled"));
            }
            if a.max_file_bytes < 4096 {
                errors.push(err("audit.max_file_bytes", "must be at least 4096"));
            }
            if a.buffer_events == 0 {
                errors.push(err("audit.buffer_events", "must be at least 1"));
            }
            if a.flush_interval_ms == 0 || a.flush_interval_ms > 60_000 {
                errors.push(err("audit.flush_interval_ms", "must be 1..=60000"));
            }
            validate_audit_retention(a, &mut errors);
            if let Err(e) = crate::audit::syslog::Target::parse(&a.syslog) {
                errors.push(err("audit.syslog", e));
            }
            if crate::audit::syslog::facility(&a.syslog_facility).is_none() {
                errors.push(err(
                    "audit.syslog_facility",
                    format!(
                        "must be one of {}, got {:?}",
                        crate::audit::syslog::FACILITIES.map(|(n, _)| n).join(", "),
                        a.syslog_facility
                    ),
                ));
            }
        }
        errors
    }

    /// The field a router error names: the engine writes a carrier's as
    /// `carriers[i] (name).field: reason`, shown here as
    /// `router.carriers[i].field` (so its line is found) and the reason.
    /// Anything else stays under `router`.
    fn router_error_field(&self, msg: &str) -> (String, String) {
        for (i, c) in self.router.carriers.iter().enumerate() {
            let Some(rest) = msg.strip_prefix(&format!("carriers[{i}] ({})", c.name)) else {
                continue;
            };
            if let Some((path, reason)) = rest.strip_prefix('.').and_then(|r| r.split_once(": ")) {
                return (format!("router.carriers[{i}].{path}"), reason.to_owned());
            }
            if let Some(reason) = rest.strip_prefix(": ") {
                return (format!("router.carriers[{i}]"), reason.to_owned());
            }
        }
        ("router".into(), msg.to_owned())
    }

    /// The production profile's guards: every rule of [`PRODUCTION_RULES`]
    /// not waived in `server.allow`, each refusal naming its rule.
    fn validate_production(&self, errors: &mut Vec<ConfigError>) {
        let s = &self.server;
        for (i, a) in s.allow.iter().enumerate() {
            if !PRODUCTION_RULES.iter().any(|(name, _)| name == a) {
                errors.push(err(
                    format!("server.allow[{i}]"),
                    format!(
                        "{a:?} is no rule; the rules are {}",
                        PRODUCTION_RULES.map(|(n, _)| n).join(", ")
                    ),
                ));
            }
        }
        if s.profile != Profile::Production {
            return;
        }
        let allowed = |rule: &str| s.allow.iter().any(|a| a == rule);
        let refuse = |errors: &mut Vec<ConfigError>, field: String, rule: &str, what: String| {
            errors.push(err(
                field,
                format!(
                    "{what}: refused in production by rule {rule} (waive it with server.allow = [\"{rule}\"])"
                ),
            ));
        };
        if !allowed("simulator_tenants") {
            for (i, t) in self.tenants.iter().enumerate() {
                if t.role == Role::Simulator {
                    refuse(
                        errors,
                        format!("tenants[{i}].role"),
                        "simulator_tenants",
                        format!(
                            "tenant {:?} has the simulator role, which reads every code",
                            t.name
                        ),
                    );
                }
            }
        }
        if !allowed("unlimited_guesses") {
            for (i, t) in self.tenants.iter().enumerate() {
                for (key, v) in [
                    ("verify_per_s", t.verify_per_s),
                    ("check_per_s", t.check_per_s),
                ] {
                    if v == 0 {
                        refuse(
                            errors,
                            format!("tenants[{i}].{key}"),
                            "unlimited_guesses",
                            format!("tenant {:?} sets no {key} limit", t.name),
                        );
                    }
                }
            }
        }
        if !allowed("plaintext") {
            for (i, c) in self.router.carriers.iter().enumerate() {
                if c.kind == CarrierKind::Http && c.http.url.starts_with("http://") {
                    refuse(
                        errors,
                        format!("router.carriers[{i}].http.url"),
                        "plaintext",
                        format!("carrier {:?} sends codes over plain http://", c.name),
                    );
                }
                if c.kind == CarrierKind::Smpp {
                    refuse(
                        errors,
                        format!("router.carriers[{i}].kind"),
                        "plaintext",
                        format!(
                            "carrier {:?} sends codes over SMPP without TLS (run it over a \
                             private link or VPN)",
                            c.name
                        ),
                    );
                }
                if c.kind == CarrierKind::Smtp && smtp_in_the_clear(&c.smtp) {
                    refuse(
                        errors,
                        format!("router.carriers[{i}].smtp.tls"),
                        "plaintext",
                        format!(
                            "carrier {:?} e-mails codes without TLS to {:?}, off loopback",
                            c.name, c.smtp.host
                        ),
                    );
                }
            }
        }
        if !allowed("simulated_carriers") {
            for (i, c) in self.router.carriers.iter().enumerate() {
                if c.kind == CarrierKind::Simulated {
                    refuse(
                        errors,
                        format!("router.carriers[{i}].kind"),
                        "simulated_carriers",
                        format!("carrier {:?} is simulated", c.name),
                    );
                }
            }
        }
        let dev = Config::development();
        let dev_keys: Vec<&str> = dev
            .tenants
            .iter()
            .flat_map(|t| {
                t.keys
                    .iter()
                    .map(String::as_str)
                    .chain(t.http_keys.iter().map(|k| k.key.as_str()))
            })
            .chain(dev.radius.clients.iter().map(|c| c.secret.as_str()))
            .collect();
        for (i, t) in self.tenants.iter().enumerate() {
            let keys =
                t.keys
                    .iter()
                    .enumerate()
                    .map(|(j, k)| (format!("tenants[{i}].keys[{j}]"), k.as_str()))
                    .chain(t.http_keys.iter().enumerate().map(|(j, k)| {
                        (format!("tenants[{i}].http_keys[{j}].key"), k.key.as_str())
                    }));
            for (field, k) in keys {
                if !allowed("development_keys") && dev_keys.contains(&k) {
                    refuse(
                        errors,
                        field.clone(),
                        "development_keys",
                        "a development profile key".into(),
                    );
                } else if !allowed("short_keys") && k.len() < 16 {
                    refuse(
                        errors,
                        field,
                        "short_keys",
                        format!("a key of {} bytes (value not shown)", k.len()),
                    );
                }
            }
        }
        if !allowed("development_keys") {
            for (i, c) in self.radius.clients.iter().enumerate() {
                if dev_keys.contains(&c.secret.as_str()) {
                    refuse(
                        errors,
                        format!("radius.clients[{i}].secret"),
                        "development_keys",
                        "the development profile's RADIUS secret".into(),
                    );
                }
            }
        }
        if !allowed("plaintext") {
            let off_loopback =
                |v: &str| v.parse::<SocketAddr>().is_ok_and(|a| !a.ip().is_loopback());
            let tls = s.tls_cert.is_some() && s.tls_key.is_some();
            let mut listeners = vec![("server.listen", s.listen.as_str(), tls)];
            if !self.http.listen.is_empty() {
                listeners.push(("http.listen", self.http.listen.as_str(), tls));
            }
            // The metrics listener never speaks TLS.
            listeners.push(("server.metrics_listen", s.metrics_listen.as_str(), false));
            for (field, v, tls) in listeners {
                if off_loopback(v) && !tls {
                    refuse(
                        errors,
                        field.to_owned(),
                        "plaintext",
                        format!("{v} is off loopback without TLS"),
                    );
                }
            }
        }
    }

    /// The `[radius]` mistakes. Secrets are never quoted, only their length.
    fn validate_radius(&self, errors: &mut Vec<ConfigError>) {
        let r = &self.radius;
        if r.listen.is_empty() {
            return;
        }
        match r.listen.parse::<SocketAddr>() {
            Ok(a) if self.server.profile == Profile::Development && !a.ip().is_loopback() => {
                errors.push(err(
                    "radius.listen",
                    format!(
                        "{} is not a loopback address; the development profile only \
                         listens on loopback (set server.profile = \"production\")",
                        r.listen
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) => errors.push(err(
                "radius.listen",
                format!("{:?} is not an ip:port address: {e}", r.listen),
            )),
        }
        if !(1..=600).contains(&r.call_wait_s) {
            errors.push(err(
                "radius.call_wait_s",
                format!("must be 1..=600, got {}", r.call_wait_s),
            ));
        }
        if !(1..=65_536).contains(&r.max_in_flight) {
            errors.push(err("radius.max_in_flight", "must be 1..=65536"));
        }
        if r.reply_cache_entries < r.max_in_flight || r.reply_cache_entries > 16 * 1024 * 1024 {
            errors.push(err(
                "radius.reply_cache_entries",
                "must be at least radius.max_in_flight and at most 16777216",
            ));
        }
        if r.clients.is_empty() {
            errors.push(err(
                "radius.clients",
                "at least one [[radius.clients]] entry is required when radius.listen is set",
            ));
        }
        let secret_ok = |s: &str| (16..=256).contains(&s.len());
        let mut prefixes = Vec::new();
        for (i, c) in r.clients.iter().enumerate() {
            let at = |f: &str| format!("radius.clients[{i}].{f}");
            let name_ok = !c.name.is_empty()
                && c.name.len() <= 64
                && !c.name.starts_with('_')
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !name_ok {
                errors.push(err(
                    at("name"),
                    "must be 1..=64 of A-Za-z0-9._- and not start with '_'",
                ));
            }
            if r.clients[..i].iter().any(|o| o.name == c.name) {
                errors.push(err(
                    at("name"),
                    format!("{:?} is used by another client", c.name),
                ));
            }
            match c.address.parse::<crate::radius::clients::Prefix>() {
                Ok(p) => {
                    if prefixes.contains(&p) {
                        errors.push(err(
                            at("address"),
                            format!("{p} is already another client's address"),
                        ));
                    }
                    prefixes.push(p);
                }
                Err(e) => errors.push(err(at("address"), e.to_string())),
            }
            if !secret_ok(&c.secret) {
                errors.push(err(
                    at("secret"),
                    format!(
                        "a RADIUS secret must be 16..=256 bytes, got {} (its value is not shown)",
                        c.secret.len()
                    ),
                ));
            }
            if !self.tenants.iter().any(|t| t.name == c.tenant) {
                errors.push(err(
                    at("tenant"),
                    format!("{:?} is not a configured tenant", c.tenant),
                ));
            }
            if c.first_factor == FirstFactor::Upstream && r.upstream.is_none() {
                errors.push(err(
                    at("first_factor"),
                    "\"upstream\" needs a [radius.upstream] section",
                ));
            }
        }
        if let Some(u) = &r.upstream {
            if let Err(e) = u.address.parse::<SocketAddr>() {
                errors.push(err(
                    "radius.upstream.address",
                    format!("{:?} is not an ip:port address: {e}", u.address),
                ));
            }
            if !secret_ok(&u.secret) {
                errors.push(err(
                    "radius.upstream.secret",
                    format!(
                        "a RADIUS secret must be 16..=256 bytes, got {} (its value is not shown)",
                        u.secret.len()
                    ),
                ));
            }
            if !(100..=60_000).contains(&u.timeout_ms) {
                errors.push(err(
                    "radius.upstream.timeout_ms",
                    format!("must be 100..=60000, got {}", u.timeout_ms),
                ));
            }
        }
    }

    /// Whether any carrier is simulated (OUTBOX_SUBSCRIBE can work).
    pub fn has_simulated_carriers(&self) -> bool {
        self.router
            .carriers
            .iter()
            .any(|c| c.kind == CarrierKind::Simulated)
    }

    /// The protocol server's runtime settings.
    pub fn server_settings(&self) -> ServerSettings {
        ServerSettings {
            server_name: self.server.name.clone(),
            max_connections: self.server.max_connections,
            max_frame: self.server.max_frame,
            max_in_flight: self.server.max_in_flight,
            idle_timeout: Duration::from_secs(self.server.idle_timeout_s),
            tenants: self
                .tenants
                .iter()
                .map(|t| TenantAuth {
                    name: t.name.clone(),
                    keys: t.keys.clone(),
                    role: t.role,
                })
                .collect(),
        }
    }

    /// The full default configuration as commented TOML.
    pub fn commented_default() -> String {
        Self::commented(&Config::development())
    }

    /// `cfg` as TOML with a comment above every table header and every key:
    /// the commented default's printer. A carrier shows the table of its own
    /// kind only (`[router.carriers.simulated]` or `[router.carriers.http]`);
    /// keys unset in `cfg` (the TLS files) are shown commented out, and so is
    /// an HTTP carrier when `cfg` has none.
    pub(crate) fn commented(cfg: &Config) -> String {
        let mut out = String::from(
            "# Watchword gateway configuration (TOML). This is the embedded development\n\
             # profile that `watchword serve` runs with no --config; every key is shown\n\
             # with its default. Validate a file with `watchword check-config FILE`.\n\n",
        );
        let body = toml::to_string_pretty(cfg).unwrap_or_default();
        let has_http_carrier = cfg
            .router
            .carriers
            .iter()
            .any(|c| c.kind == CarrierKind::Http);
        let mut header = String::new();
        // The kind of the carrier whose tables are being printed.
        let mut carrier_kind = String::new();
        let mut skipping = false;
        let mut example_due = !has_http_carrier;
        for line in body.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                let in_carrier = t == "[[router.carriers]]" || t.starts_with("[router.carriers.");
                let was_carrier =
                    header == "[[router.carriers]]" || header.starts_with("[router.carriers.");
                if example_due && was_carrier && !in_carrier {
                    example_due = false;
                    out.push_str(
                        "# An HTTP carrier, commented out: each message is POSTed as JSON to its url.\n\
                         # Uncomment, fill in, and give it the other keys of a carrier (as above)\n\
                         # where their defaults do not fit.\n",
                    );
                    out.push_str(&http_carrier_example());
                }
                header = t.to_owned();
                if t == "[[router.carriers]]" {
                    carrier_kind.clear();
                }
                // A table of another kind's settings does not apply: every
                // kind's table is named after the kind.
                skipping = !carrier_kind.is_empty()
                    && t.strip_prefix("[router.carriers.")
                        .and_then(|rest| rest.split(['.', ']']).next())
                        .is_some_and(|kind| {
                            CARRIER_KIND_TABLES.contains(&kind) && kind != carrier_kind
                        });
                if skipping {
                    continue;
                }
                // The blank line that ends the table before is already out.
            } else if skipping {
                continue;
            }
            if header == "[[router.carriers]]"
                && let Some(kind) = t.strip_prefix("kind = ")
            {
                carrier_kind = kind.trim_matches('"').to_owned();
            }
            annotate(&mut out, &header, line, "", "# ");
            // Keys unset by default print nothing in TOML: shown commented.
            if header == "[audit]" && t.starts_with("max_file_bytes = ") {
                out.push_str(
                    "# Optional limit on the number of rotated files kept (unset: none;\n\
                     # 0 keeps none); max_age_days and max_total_bytes apply either way.\n\
                     # max_files = 1000\n",
                );
            }
            if header == "[server]"
                && t.starts_with("idle_timeout_s = ")
                && cfg.server.tls_cert.is_none()
                && cfg.server.tls_key.is_none()
            {
                out.push_str(
                    "# PEM certificate chain; with tls_key, the protocol and the HTTP API\n\
                     # speak TLS (unset: plain TCP, refused off loopback in production).\n\
                     # tls_cert = \"/etc/watchword/tls/cert.pem\"\n\
                     # The PEM private key of tls_cert.\n\
                     # tls_key = \"/etc/watchword/tls/key.pem\"\n",
                );
            }
        }
        // A blank line stays from a skipped table's end; collapse doubles.
        while out.contains("\n\n\n") {
            out = out.replace("\n\n\n", "\n\n");
        }
        out
    }
}

/// Whether an SMTP carrier speaks in the clear (`tls = "none"`) to a server
/// that is not on loopback (`localhost` or a loopback address).
fn smtp_in_the_clear(s: &SmtpConfig) -> bool {
    let host = s.host.trim_end_matches('.');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    s.tls == SmtpTls::None && !loopback
}

/// The `[audit]` retention mistakes: the disk budget must hold the current
/// file and one rotated file beside it, and the age limit must not delete
/// what `min_age_hours` promises to keep.
fn validate_audit_retention(a: &AuditConfig, errors: &mut Vec<ConfigError>) {
    if a.max_total_bytes < a.max_file_bytes.saturating_mul(2) {
        errors.push(err(
            "audit.max_total_bytes",
            format!(
                "must be at least twice audit.max_file_bytes ({}): the current file and \
                 one rotated file must fit, got {}",
                a.max_file_bytes.saturating_mul(2),
                a.max_total_bytes
            ),
        ));
    }
    if a.max_age_days > 36_500 {
        errors.push(err(
            "audit.max_age_days",
            format!("must be 0 (no age limit)..=36500, got {}", a.max_age_days),
        ));
    }
    if a.min_age_hours > 24 * 36_500 {
        errors.push(err(
            "audit.min_age_hours",
            format!("must be 0..=876000, got {}", a.min_age_hours),
        ));
    } else if a.max_age_days > 0 && u64::from(a.min_age_hours) > u64::from(a.max_age_days) * 24 {
        errors.push(err(
            "audit.min_age_hours",
            format!(
                "must not exceed audit.max_age_days x 24 ({}): records older than \
                 max_age_days are deleted, got {}",
                u64::from(a.max_age_days) * 24,
                a.min_age_hours
            ),
        ));
    }
}

/// Writes `line` of the table `header` with its comment above it: lines of
/// the comment start with `comment`, the line itself with `prefix` (both
/// `# ` and `## ` for a commented-out example).
fn annotate(out: &mut String, header: &str, line: &str, prefix: &str, comment: &str) {
    let t = line.trim();
    let c = if t.starts_with('[') {
        section_comment(t)
    } else if !line.starts_with(' ') && t.contains(" = ") {
        key_comment(header, t.split(" = ").next().unwrap_or(""))
    } else {
        None
    };
    if let Some(c) = c {
        for l in c.lines() {
            out.push_str(comment);
            out.push_str(l);
            out.push('\n');
        }
    }
    if !line.is_empty() {
        out.push_str(prefix);
        out.push_str(line);
    }
    out.push('\n');
}

/// An HTTP carrier, commented out (`# ` before each line, `## ` before each
/// comment): its name, kind, senders and its `[router.carriers.http]` table
/// (the other keys are a carrier's as above).
fn http_carrier_example() -> String {
    #[derive(Serialize)]
    struct Router {
        carriers: Vec<watchword_engine::delivery::CarrierConfig>,
    }
    #[derive(Serialize)]
    struct Example {
        router: Router,
    }
    let carrier = watchword_engine::delivery::CarrierConfig {
        name: "http-primary".into(),
        kind: CarrierKind::Http,
        senders: vec!["+15550100003".into(), "Watchword".into()],
        http: watchword_engine::delivery::HttpConfig {
            url: "http://carrier.example/messages".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let body = toml::to_string_pretty(&Example {
        router: Router {
            carriers: vec![carrier],
        },
    })
    .unwrap_or_default();
    let mut out = String::new();
    let mut header = String::new();
    let mut keep_table = true;
    // Whether the last key (and the lines of its multi-line array) is shown.
    let mut keep_key = true;
    for line in body.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            header = t.to_owned();
            keep_table = t == "[[router.carriers]]" || t.starts_with("[router.carriers.http");
            keep_key = true;
        } else if !line.starts_with(' ') && t.contains(" = ") {
            keep_key = header != "[[router.carriers]]"
                || ["name = ", "kind = ", "senders = "]
                    .iter()
                    .any(|k| t.starts_with(k));
        }
        if t == "[[router.carriers]]" {
            // The introduction above stands for the table's own comment.
            out.push_str("# [[router.carriers]]\n");
        } else if keep_table && (keep_key || t.is_empty()) {
            annotate(&mut out, &header, line, "# ", "## ");
        }
    }
    out.push('\n');
    out
}

/// The tables of one carrier kind's settings, each named after its kind
/// (a carrier's other tables, such as `breaker`, apply to every kind).
const CARRIER_KIND_TABLES: [&str; 4] = ["simulated", "http", "smpp", "smtp"];

/// Reads one section into `into`. An unknown key is reported and set
/// aside, and the section read again, so it never hides a bad value beside
/// it. False when anything was wrong.
fn section<T: serde::de::DeserializeOwned>(
    value: toml::Value,
    name: &str,
    errors: &mut Vec<ConfigError>,
    into: &mut T,
) -> bool {
    let mut value = value;
    let mut clean = true;
    loop {
        match value.clone().try_into::<T>() {
            Ok(v) => {
                *into = v;
                return clean;
            }
            Err(e) => {
                let msg = e.to_string();
                let unknown = msg
                    .split_once("unknown field `")
                    .and_then(|(_, rest)| rest.split_once('`'))
                    .map(|(field, _)| field.to_owned());
                if let (Some(field), toml::Value::Table(t)) = (unknown, &mut value)
                    && t.remove(&field).is_some()
                {
                    let expected = msg
                        .split_once(", expected ")
                        .map_or("", |(_, rest)| rest.trim_end());
                    errors.push(err(
                        format!("{name}.{field}"),
                        format!("unknown key (expected {expected})"),
                    ));
                    clean = false;
                    continue;
                }
                errors.push(err(name, msg.trim_end().replace('\n', " ")));
                return false;
            }
        }
    }
}

/// Where `field` (`server.listen`, `tenants[1].keys[0]`,
/// `router.carriers[1].http.ca_file`, ...) is written in `text`: the line and
/// column of its key, under the header of its table (the n-th `[[array]]`
/// header for an indexed table, and a sub-table's header within that entry).
/// `None` when it is not written there (a default, or a whole section).
fn locate(text: &str, field: &str) -> Option<(usize, usize)> {
    // A part's name and, when it has one, its index.
    let strip = |s: &str| -> (String, Option<usize>) {
        match s.split_once('[') {
            Some((n, rest)) => (n.to_owned(), rest.trim_end_matches(']').parse().ok()),
            None => (s.to_owned(), None),
        }
    };
    let parts: Vec<&str> = field.split('.').collect();
    let (last, sections) = parts.split_last()?;
    let (key, _) = strip(last);
    let names: Vec<(String, Option<usize>)> = sections.iter().map(|s| strip(s)).collect();
    let joined = |n: usize| {
        let v: Vec<&str> = names[..n].iter().map(|(s, _)| s.as_str()).collect();
        v.join(".")
    };
    let header = joined(names.len());
    let lines: Vec<&str> = text.lines().collect();
    let (mut start, mut end) = (0, lines.len());
    // The last indexed part says which occurrence of its array's header.
    if let Some(k) = names.iter().rposition(|(_, i)| i.is_some()) {
        let array = format!("[[{}]]", joined(k + 1));
        let nth = names[k].1.unwrap_or(0);
        let mut at = (lines.iter().enumerate())
            .filter(|(_, l)| l.trim() == array)
            .map(|(i, _)| i)
            .skip(nth);
        start = at.next()? + 1;
        end = at.next().unwrap_or(lines.len());
        if k + 1 < names.len() {
            // A sub-table of that entry: its header before the next entry.
            let sub = format!("[{header}]");
            start = (start..end).find(|&i| lines[i].trim() == sub)? + 1;
        }
    } else if !header.is_empty() {
        let (table, array) = (format!("[{header}]"), format!("[[{header}]]"));
        start = lines
            .iter()
            .position(|l| l.trim() == table || l.trim() == array)?
            + 1;
    }
    for (i, l) in lines.iter().enumerate().take(end).skip(start) {
        let t = l.trim_start();
        if t.starts_with('[') {
            break;
        }
        if let Some(rest) = t.strip_prefix(key.as_str())
            && rest.trim_start().starts_with('=')
        {
            return Some((i + 1, l.len() - t.len() + 1));
        }
    }
    None
}

fn section_comment(header: &str) -> Option<&'static str> {
    Some(match header {
        "[server]" => "The protocol and metrics listeners and connection limits.",
        "[[tenants]]" => {
            "One entry per tenant: credentials, role (client | simulator) and defaults.\n\
             Replace demo-key in any real deployment; a simulator tenant may read the outbox."
        }
        "[table]" => "The in-memory challenge table.",
        "[router]" => "Delivery: queue, outbox, retries, receipts.",
        "[[router.carriers]]" => {
            "A carrier: kind = \"simulated\", \"http\", \"smpp\" or \"smtp\"; lower priority\n\
             is preferred. Its own settings go in the table named after its kind."
        }
        "[router.carriers.simulated]" => {
            "Behaviour of a simulated carrier (latencies, failure rates)."
        }
        "[router.carriers.http]" => {
            "Settings of an HTTP carrier (JSON over HTTP/1.1, plain or HTTPS)."
        }
        "[router.carriers.smpp]" => {
            "Settings of an SMPP 3.4 carrier (kind = \"smpp\", channels = [\"sms\"]): transceiver\n\
             binds to an SMSC, no TLS (a private link or VPN; production needs server.allow =\n\
             [\"plaintext\"])."
        }
        "[router.carriers.smtp]" => {
            "Settings of an SMTP carrier (e-mail only: channels = [\"email\"]);\n\
             see docs/operations.md, \"SMTP carriers\"."
        }
        "[router.carriers.simulated.auto_answer]" => {
            "The simulated handsets answer confirmation calls by themselves (keys, delay),\n\
             only while no connection of the tenant is subscribed to the outbox."
        }
        "[router.carriers.breaker]" => "The carrier's circuit breaker.",
        "[[router.carriers.simulated.outages]]" => {
            "A scheduled outage of the simulated carrier, counted from the start."
        }
        "[router.senders]" => "SMS sender pools per country.",
        "[[router.senders.pools]]" => {
            "An SMS sender pool (short codes) for one country: SMS to that country\n\
             go from these senders, whatever the carrier. It carries at most\n\
             senders x rate_per_s messages a second (metric\n\
             watchword_sender_capacity_per_second); more queue and arrive late."
        }
        "[router.limits]" => {
            "Keyed admission limits: a send over any of them is refused with\n\
             RATE_LIMITED (metric watchword_rate_limited_total{scope}). A max up to 16\n\
             is an exact count over any window; above, a smooth rate with a burst of max."
        }
        "[[router.limits.prefixes]]" => {
            "A limit on every destination under a number prefix together (against\n\
             SMS pumping); the longest matching prefix applies."
        }
        "[router.limits.prefixes.limit]" => "The prefix's limit (max 0 = off).",
        "[router.limits.destination]" => {
            "Sends per destination, all tenants: protocol v1 says 5 in any 5 minutes."
        }
        "[router.limits.subject]" => "Sends per tenant and subject (max 0 = off).",
        "[router.limits.tenant]" => "Sends per tenant (max 0 = off).",
        "[router.limits.country]" => "Sends per destination country (max 0 = off).",
        "[router.retry]" => "Tries per message and their time budget.",
        "[audit]" => "The append-only JSON Lines audit log (never a code, key or full number).",
        "[storage]" => {
            "The directory of users and methods: an embedded SQLite database in `path`,\n\
             its secrets sealed with the master key (a file outside `path`)."
        }
        "[http]" => "The HTTP API (docs/http-api.md); TLS follows server.tls_cert/tls_key.",
        "[[tenants.http_keys]]" => "An HTTP API key and its role: client, helpdesk or admin.",
        "[radius]" => {
            "The RADIUS server (docs/radius.md): UDP, PAP, Message-Authenticator rules of\n\
             BlastRADIUS. A configuration file without this section has RADIUS off.\n\
             A [radius.upstream] section (address = \"ip:port\", secret = \"...\",\n\
             timeout_ms = 5000, require_message_authenticator = true) names the server\n\
             that checks passwords for clients with first_factor = \"upstream\"."
        }
        "[[radius.clients]]" => {
            "A RADIUS client (NAS): its source address or prefix, shared secret (16 bytes\n\
             or more; replace the demo secret anywhere real) and tenant."
        }
        "[radius.upstream]" => "The upstream RADIUS server of first_factor = \"upstream\".",
        _ => return None,
    })
}

fn key_comment(header: &str, key: &str) -> Option<&'static str> {
    Some(match (header, key) {
        ("[server]", "profile") => "development (loopback addresses only) or production.",
        ("[server]", "name") => "Sent in the HELLO answer and written in the audit log.",
        ("[server]", "listen") => "Protocol v1 listener, ip:port.",
        ("[server]", "metrics_listen") => "Prometheus /metrics, /healthz and /readyz, ip:port.",
        ("[server]", "max_connections") => "Most connections served at once.",
        ("[server]", "max_frame") => "Largest frame body accepted, bytes.",
        ("[server]", "max_in_flight") => "Requests in flight per connection before reading pauses.",
        ("[server]", "idle_timeout_s") => {
            "Close a connection after this many seconds without traffic."
        }
        ("[server]", "tls_cert") => {
            "PEM certificate chain; with tls_key, the protocol and the HTTP API speak TLS."
        }
        ("[server]", "tls_key") => "The PEM private key of tls_cert.",
        ("[server]", "shutdown_deadline_s") => {
            "At SIGTERM/SIGINT, seconds allowed for queued deliveries to drain."
        }
        ("[server]", "allow") => {
            "Production guards waived by name: simulator_tenants, simulated_carriers,\n\
             development_keys, short_keys, plaintext (each refuses what it names)."
        }
        ("[server]", "transparent_huge_pages") => {
            "Let Linux back memory with 2 MiB transparent huge pages. Off, as Redis\n\
             does: a huge page is zeroed at its first touch, inside the worker that\n\
             touched it, and that stalled answers for milliseconds."
        }
        ("[[tenants]]", "name") => "The tenant name sent in HELLO.",
        ("[[tenants]]", "keys") => "Accepted keys (8..=1024 bytes each).",
        ("[[tenants]]", "role") => "client, or simulator (may also OUTBOX_SUBSCRIBE).",
        ("[[tenants]]", "code_len") => "Code digits when a request says 0 (4..=12).",
        ("[[tenants]]", "ttl_s") => "Code validity in seconds when a request says 0 (30..=3600).",
        ("[[tenants]]", "max_attempts") => "Wrong codes before a challenge locks.",
        ("[[tenants]]", "default_country") => {
            "Country for national-format phone numbers (ISO 3166 alpha-2)."
        }
        ("[[tenants]]", "operator_assistance") => {
            "Voice extensions via an operator instead of tones."
        }
        ("[[tenants]]", "locale") => "Message language when a request gives none (BCP 47).",
        ("[[tenants]]", "service_name") => "The service name written in messages.",
        ("[[tenants]]", "token_window") => {
            "TOTP steps accepted either side of the current one (the drift seen is remembered)."
        }
        ("[[tenants]]", "hotp_lookahead") => "HOTP counters tried from the next expected one.",
        ("[[tenants]]", "token_max_failures") => {
            "Wrong token codes in a row that lock a token until an administrator resets it."
        }
        ("[[tenants]]", "pin_mode") => {
            "none; prefix: the answer is the user's PIN followed by the one-time\n\
             code, checked together (a wrong PIN counts as a wrong code); call: a\n\
             confirmation call is answered with the PIN then # (wrong PINs lock it)."
        }
        ("[[tenants]]", "helpdesk_order") => {
            "Where a help-desk verification code goes: the first active contact of\n\
             these types, in this order."
        }
        ("[[tenants]]", "verify_per_s") => {
            "VERIFY attempts per second for the whole tenant (0: no limit;\n\
             production needs one)."
        }
        ("[[tenants]]", "check_per_s") => {
            "CHECKs per second for the whole tenant, all front ends (0: no limit;\n\
             production needs one)."
        }
        ("[[tenants]]", "verify_gap_ms") => {
            "Per challenge, ms between a wrong code and the next try (0: none)."
        }
        ("[[tenants]]", "pin_length") => {
            "Digits of PINs made from now on (4..=12); existing PINs keep theirs."
        }
        ("[[tenants]]", "contact_hold_hours") => {
            "Hours after confirmation before a new phone or address counts for\n\
             help-desk caller verification (seed 000: 48)."
        }
        ("[[tenants]]", "http_keys") => {
            "HTTP API keys ([[tenants.http_keys]]: key and role); none unless written."
        }
        ("[[tenants.http_keys]]", "key") => {
            "The bearer token (replace the demo keys anywhere real)."
        }
        ("[[tenants.http_keys]]", "role") => {
            "client (check only), helpdesk (check, help desk, read users) or admin."
        }
        ("[storage]", "path") => {
            "Data directory; empty keeps users in memory only (lost at exit).\n\
             master_key = \"/etc/watchword/master.key\" names the master key (a file made by\n\
             `watchword keygen`, outside this directory; required in production). Unset in\n\
             development: one is made as master.key inside the directory, with a warning."
        }
        ("[router.carriers.simulated]", "ring_timeout_ms") => {
            "A confirmation call nobody answers ends as not answered after this long."
        }
        ("[storage]", "master_key") => {
            "The master key file (`watchword keygen`), outside the data directory."
        }
        ("[storage]", "queue_ops") => "Writes queued for the disk before the API answers 503.",
        ("[storage]", "snapshot") => {
            "Keep pending challenges, limit windows and tombstones across a graceful restart \
             (sealed pending.snapshot in the data directory; a kill -9 loses them)."
        }
        ("[http]", "listen") => "HTTP API address, ip:port; empty turns it off.",
        ("[radius]", "listen") => "RADIUS address (UDP), ip:port; empty turns RADIUS off.",
        ("[radius]", "call_wait_s") => {
            "Longest a request is held on a ringing confirmation call, seconds."
        }
        ("[radius]", "max_in_flight") => {
            "Requests of one client processed at once (held calls, token writes,\n\
             upstream checks); more are discarded and counted (reason full)."
        }
        ("[radius]", "reply_cache_entries") => {
            "Replies of one client kept 30 s for retransmissions; when full, the\n\
             oldest goes early (counted). Rate x 30 s keeps every reply 30 s."
        }
        ("[radius]", "clients") => "The clients ([[radius.clients]] tables).",
        ("[[radius.clients]]", "name") => "Its name in metrics, logs and the audit trail.",
        ("[[radius.clients]]", "address") => "Source address or prefix, e.g. 10.0.0.0/8.",
        ("[[radius.clients]]", "secret") => "The shared secret, 16 bytes or more.",
        ("[[radius.clients]]", "tenant") => "The tenant whose users it authenticates.",
        ("[[radius.clients]]", "require_message_authenticator") => {
            "Discard its requests without Message-Authenticator (BlastRADIUS)."
        }
        ("[[radius.clients]]", "first_factor") => {
            "none: the NAS checked the password, User-Password is the one-time answer;\n\
             upstream: the first password goes to [radius.upstream] first."
        }
        ("[radius.upstream]", "address") => "The upstream RADIUS server, ip:port.",
        ("[radius.upstream]", "secret") => "The secret shared with it, 16 bytes or more.",
        ("[radius.upstream]", "timeout_ms") => {
            "No verified answer within this long (sent up to 3 times): Access-Reject."
        }
        ("[radius.upstream]", "require_message_authenticator") => {
            "Refuse its replies without Message-Authenticator (FreeRADIUS 3.2.5 and later\n\
             send one; set false for older servers)."
        }
        ("[table]", "shards") => "Lock shards; 0 picks (cores x 16) rounded up to a power of two.",
        ("[table]", "capacity") => "Most pending challenges; beyond it ISSUE answers CAPACITY.",
        ("[table]", "tombstone_grace_s") => {
            "Seconds a finished challenge stays visible to STATUS (0: forgotten at once, no tombstones)."
        }
        ("[table]", "sweep_slice") => {
            "Expired entries handled per shard lock by the sweeper (small: a verify waits for at most one slice)."
        }
        ("[table]", "sweep_interval_ms") => "How often the sweeper wakes.",
        ("[router]", "queue_capacity") => "Messages queued before ISSUE answers CAPACITY.",
        ("[router]", "outbox_capacity") => {
            "Messages kept for slow outbox subscribers before they lag."
        }
        ("[router]", "receipt_timeout_ms") => {
            "A message without a receipt after this long has failed."
        }
        ("[router]", "janitor_interval_ms") => "How often idle limiter keys are reclaimed.",
        ("[router]", "carriers") => "The carriers ([[router.carriers]] tables), at most 64.",
        ("[[router.carriers]]", "name") => "Unique; shown in STATUS, metrics and the audit log.",
        ("[[router.carriers]]", "kind") => {
            "simulated (messages go to the outbox, not to people) or http."
        }
        ("[[router.carriers]]", "channels") => "Channels served: sms, voice, email.",
        ("[[router.carriers]]", "countries") => "ISO countries served; with prefixes empty, all.",
        ("[[router.carriers]]", "prefixes") => "E.164 prefixes served, e.g. \"+1\".",
        ("[[router.carriers]]", "priority") => {
            "Lower is preferred; a higher one takes over when the preferred ones are\n\
             open (breaker), throttled or saturated."
        }
        ("[[router.carriers]]", "weight") => "Traffic share among carriers of equal priority.",
        ("[[router.carriers]]", "throughput_per_s") => {
            "Sends per second to this carrier (0 = unlimited), paced with a burst of two."
        }
        ("[[router.carriers]]", "queue_capacity") => {
            "Messages waiting for this carrier before it counts as saturated."
        }
        ("[[router.carriers]]", "max_queue_delay_ms") => {
            "With throughput_per_s: a pacing backlog longer than this also counts as\n\
             saturated (new messages go to another carrier or are refused)."
        }
        ("[[router.carriers]]", "max_in_flight") => {
            "Sends awaiting the carrier's answer at once (like an SMPP window)."
        }
        ("[[router.carriers]]", "timeout_ms") => "A send without an answer after this long failed.",
        ("[[router.carriers]]", "senders") => {
            "SMS to countries without a sender pool rotate over these; the first is\n\
             the caller id of calls and the from address of e-mail."
        }
        ("[[router.carriers]]", "sender_rate_per_s") => {
            "Each of senders' own SMS per second (0 = unlimited; a long number does\n\
             about 1): SMS without a pool carry at most senders x this."
        }
        ("[router.carriers.breaker]", "failure_threshold") => "Failures in a row that open it.",
        ("[router.carriers.breaker]", "cooldown_ms") => {
            "First wait, ms, before one probe send tries the carrier again."
        }
        ("[router.carriers.breaker]", "max_cooldown_ms") => {
            "The wait doubles after each failed probe, up to this, ms."
        }
        ("[router.carriers.simulated]", "latency_min_ms") => "Fastest answer to a send, ms.",
        ("[router.carriers.simulated]", "latency_max_ms") => {
            "Slowest answer, ms (uniform between the two)."
        }
        ("[router.carriers.simulated]", "failure_rate") => {
            "Share of sends that fail for the moment (retried), 0..=1."
        }
        ("[router.carriers.simulated]", "throttle_rate") => {
            "Share of sends throttled (retried after throttle_retry_after_ms), 0..=1."
        }
        ("[router.carriers.simulated]", "throttle_retry_after_ms") => {
            "The Retry-After of a throttled send, ms."
        }
        ("[router.carriers.simulated]", "reject_rate") => {
            "Share of sends rejected for good (not retried), 0..=1."
        }
        ("[router.carriers.simulated]", "lost_rate") => {
            "Share of accepted messages never delivered (no receipt), 0..=1."
        }
        ("[router.carriers.simulated]", "receipt_delay_ms") => {
            "From acceptance to the delivery receipt, ms."
        }
        ("[router.carriers.simulated]", "outages") => {
            "Scheduled outages ([[router.carriers.simulated.outages]]: start_ms,\n\
             duration_ms, mode = \"fail\" or \"hang\")."
        }
        ("[[router.carriers.simulated.outages]]", "start_ms") => "Start, ms after the start.",
        ("[[router.carriers.simulated.outages]]", "duration_ms") => "Length, ms.",
        ("[[router.carriers.simulated.outages]]", "mode") => {
            "fail: every send fails at once; hang: sends get no answer (timeout_ms)."
        }
        ("[router.carriers.simulated.auto_answer]", "digits") => {
            "Keys pressed: # confirms, PIN# confirms with a PIN, other digits decline,\n\
             empty hangs up."
        }
        ("[router.carriers.simulated.auto_answer]", "delay_ms") => {
            "From the ring to the answer, ms."
        }
        ("[router.carriers.http]", "url") => "Where each message is POSTed as JSON.",
        ("[router.carriers.http]", "authorization") => {
            "The Authorization header sent with each message (empty: none)."
        }
        ("[router.carriers.http]", "pool_max_idle_per_host") => {
            "Idle keep-alive connections kept to the carrier."
        }
        ("[router.carriers.http]", "pool_idle_timeout_ms") => {
            "An idle kept connection is closed after this long, ms."
        }
        ("[router.carriers.http]", "receipts") => {
            "false: a 2xx counts as delivered. true: a 2xx is only accepted; the body\n\
             carries receipt_token and callback (/v1/carriers/<name>/receipts), and the\n\
             carrier's signed callback on the HTTP API says delivered or failed (else the\n\
             router's receipt timeout fails it). A confirmation call also names\n\
             call_callback (/v1/carriers/<name>/calls), where the carrier reports the call's\n\
             outcome and the keys pressed. See docs/http-api.md."
        }
        ("[router.carriers.http]", "callback_secret") => {
            "The HMAC-SHA256 key the carrier signs its callbacks with (receipts = true\n\
             only; at least 16 bytes; never logged or shown)."
        }
        ("[router.senders]", "pools") => "The pools ([[router.senders.pools]] tables).",
        ("[[router.senders.pools]]", "country") => "ISO 3166 alpha-2 country of the destinations.",
        ("[[router.senders.pools]]", "senders") => "The senders (short codes), used in rotation.",
        ("[[router.senders.pools]]", "rate_per_s") => {
            "Each sender's own messages per second (0 = unlimited)."
        }
        ("[router.limits]", "prefixes") => {
            "Limits per number prefix ([[router.limits.prefixes]]: prefix = \"+882\",\n\
             and its limit table, max and window_ms)."
        }
        ("[[router.limits.prefixes]]", "prefix") => "E.164 prefix, e.g. \"+882\".",
        (h, "max") if h.starts_with("[router.limits.") => {
            "Sends allowed in any window (0 = no limit)."
        }
        (h, "window_ms") if h.starts_with("[router.limits.") => "The window, ms (at most 7 days).",
        ("[router.retry]", "max_tries") => {
            "Tries per message (1..=5); a try after a failure may go to another carrier."
        }
        ("[router.retry]", "budget_ms") => {
            "Every try starts within this long of the first, ms (at most 300000)."
        }
        ("[router.retry]", "base_backoff_ms") => {
            "Wait before the second try, ms; it doubles after each, with jitter."
        }
        ("[router.retry]", "max_backoff_ms") => "The longest wait between tries, ms.",
        ("[router.carriers.http]", "ca_file") => {
            "With an https:// url: a PEM bundle of the only CAs trusted for this\n\
             carrier. Empty: the system's trust store (SSL_CERT_FILE / SSL_CERT_DIR\n\
             override it; an https carrier refuses to start when it is empty)."
        }
        ("[router.carriers.smpp]", "host") => "The SMSC's host name or IP address.",
        ("[router.carriers.smpp]", "port") => "The SMSC's SMPP port.",
        ("[router.carriers.smpp]", "system_id") => "The bind's system_id (at most 15 characters).",
        ("[router.carriers.smpp]", "password") => {
            "The bind's password (at most 8 characters; never logged or shown)."
        }
        ("[router.carriers.smpp]", "system_type") => "The bind's system_type (often empty).",
        ("[router.carriers.smpp]", "binds") => {
            "Transceiver binds kept open (one TCP connection each)."
        }
        ("[router.carriers.smpp]", "window") => {
            "submit_sm awaiting their answer at once, per bind (the router never has more\n\
             in flight than binds x window, nor than max_in_flight)."
        }
        ("[router.carriers.smpp]", "throughput_per_bind") => {
            "submit_sm per second per bind (0 = unlimited); the router paces to binds x this."
        }
        ("[router.carriers.smpp]", "enquire_link_s") => {
            "Seconds between enquire_links (keep-alive) on each bind."
        }
        ("[router.carriers.smpp]", "reconnect_min_ms") => {
            "First wait before binding again after a lost or refused bind, ms."
        }
        ("[router.carriers.smpp]", "reconnect_max_ms") => {
            "Longest wait between bind attempts, ms (doubling with jitter up to it)."
        }
        ("[router.carriers.smpp]", "source_ton") => {
            "TON of short-code senders (digits): 3 network specific. +digits senders go\n\
             as TON 1 / NPI 1, alphanumeric ones (at most 11 characters) as TON 5 / NPI 0."
        }
        ("[router.carriers.smpp]", "source_npi") => "NPI of short-code senders.",
        ("[router.carriers.smpp]", "dest_ton") => "TON of destinations (1: international).",
        ("[router.carriers.smpp]", "dest_npi") => "NPI of destinations (1: ISDN / E.164).",
        ("[router.carriers.smpp]", "registered_delivery") => {
            "Ask for delivery receipts; off, an accepted submit_sm counts as delivered."
        }
        ("[router.carriers.smpp]", "receipt_timeout_ms") => {
            "A message id awaiting its receipt is forgotten after this long, ms."
        }
        ("[router.carriers.smtp]", "host") => {
            "The mail server (submission service or relay): a name or IP address, no\n\
             port; its certificate must be valid for it."
        }
        ("[router.carriers.smtp]", "port") => "587 (submission, STARTTLS); 465 with tls = \"tls\".",
        ("[router.carriers.smtp]", "tls") => {
            "starttls (required: a server without it fails every send), tls (implicit,\n\
             from the first byte) or none (loopback relays and tests; production\n\
             refuses it off loopback, rule plaintext)."
        }
        ("[router.carriers.smtp]", "username") => "AUTH user (PLAIN or LOGIN); empty: no AUTH.",
        ("[router.carriers.smtp]", "password") => {
            "AUTH password (never in logs, errors or Debug output)."
        }
        ("[router.carriers.smtp]", "from") => {
            "The sender, codes@example.com or \"Name <codes@example.com>\"; empty:\n\
             the carrier's first sender (then it must be an e-mail address)."
        }
        ("[router.carriers.smtp]", "pool_size") => {
            "Connections open at once; each kept open for the next send (60 s idle)."
        }
        ("[router.carriers.smtp]", "timeout_ms") => {
            "Connecting, and each message's whole SMTP exchange, end within this, ms\n\
             (keep it under the carrier's timeout_ms)."
        }
        ("[router.carriers.smtp]", "ca_file") => {
            "With TLS: a PEM bundle of the only CAs trusted for this server. Empty:\n\
             the system's trust store (refused at start when it is empty)."
        }
        ("[router.carriers.smtp]", "helo_name") => {
            "The name sent in EHLO; empty: this host's name."
        }
        ("[audit]", "enabled") => "Write the audit log.",
        ("[audit]", "path") => {
            "Audit file. A full file is renamed PATH.<UTC time of rotation>, e.g.\n\
             watchword-audit.jsonl.20250131T120000.123Z, then compressed with zstd\n\
             to that name plus .zst (read it with zstdcat)."
        }
        ("[audit]", "max_file_bytes") => "Rotate beyond this size.",
        ("[audit]", "max_age_days") => {
            "Delete rotated files whose newest record is older than this (0: never by age)."
        }
        ("[audit]", "max_total_bytes") => {
            "Disk budget of the trail (current file and rotated files, as stored);\n\
             beyond it the oldest rotated files are deleted. At least 2 x max_file_bytes."
        }
        ("[audit]", "min_age_hours") => {
            "Records deleted by the disk budget (or max_files) younger than this are\n\
             counted (watchword_audit_deleted_early_total) and logged as an error:\n\
             the budget is too small for the traffic."
        }
        ("[audit]", "syslog") => {
            "Also forward each record to a local syslog daemon, RFC 5424:\n\
             \"unix:/dev/log\" or \"udp:127.0.0.1:514\" (loopback only); \"\" is off.\n\
             Records that cannot be sent at once are dropped and counted\n\
             (watchword_audit_syslog_dropped_total); the file keeps them."
        }
        ("[audit]", "syslog_facility") => {
            "auth, authpriv, daemon, user or local0..local7 (severity: info; app-name watchword)."
        }
        ("[audit]", "buffer_events") => {
            "Events buffered in memory; when full, new events are dropped and counted\n\
             (metric watchword_audit_dropped_total, and an audit_gap line when room returns)."
        }
        ("[audit]", "flush_interval_ms") => "Flush and fsync at least this often.",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_default_parses_back_to_the_default() {
        let text = Config::commented_default();
        let parsed = Config::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(parsed, Config::development());
        // The TLS keys, unset by default, are shown commented; uncommented
        // they are read.
        assert!(
            text.contains("\n# tls_cert = ") && text.contains("\n# tls_key = "),
            "{text}"
        );
        let on = text
            .replace("# tls_cert = ", "tls_cert = ")
            .replace("# tls_key = ", "tls_key = ");
        let errs = Config::parse(&on).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.field == "server.tls_cert" && e.reason.contains("not a readable file")),
            "{errs:?}"
        );
    }

    /// A configuration with every optional table written: an HTTP carrier
    /// beside a simulated one, an outage, a prefix limit, the TLS files, the
    /// master key, a RADIUS upstream, a tenant without HTTP keys.
    fn everything() -> Config {
        use watchword_engine::delivery::{
            CarrierConfig, HttpConfig as CarrierHttp, Limit, OutageConfig, OutageMode, PrefixLimit,
        };
        let mut c = Config::development();
        c.server.tls_cert = Some("/etc/watchword/tls/cert.pem".into());
        c.server.tls_key = Some("/etc/watchword/tls/key.pem".into());
        c.storage.master_key = Some("/etc/watchword/master.key".into());
        c.tenants.push(TenantConfig {
            name: "other".into(),
            keys: vec!["0123456789abcdef".into()],
            ..TenantConfig::default()
        });
        c.router.carriers[0].simulated.outages.push(OutageConfig {
            start_ms: 1_000,
            duration_ms: 2_000,
            mode: OutageMode::Hang,
        });
        c.router.carriers.push(CarrierConfig {
            name: "http-primary".into(),
            kind: CarrierKind::Http,
            http: CarrierHttp {
                url: "http://127.0.0.1:8080/messages".into(),
                ..CarrierHttp::default()
            },
            ..CarrierConfig::default()
        });
        c.router.limits.prefixes.push(PrefixLimit {
            prefix: "+882".into(),
            limit: Limit::new(10, 60_000),
        });
        c.radius.upstream = Some(RadiusUpstreamConfig {
            address: "127.0.0.1:18120".into(),
            secret: "an-upstream-secret".into(),
            ..RadiusUpstreamConfig::default()
        });
        c
    }

    /// The key lines and table headers of `text` (TOML) that have no
    /// comment: neither a comment line right above them nor one after the
    /// value on the same line.
    fn uncommented(text: &str) -> Vec<String> {
        let inline_comment = |line: &str| {
            let mut quoted = false;
            line.chars().any(|c| {
                if c == '"' {
                    quoted = !quoted;
                }
                c == '#' && !quoted
            })
        };
        let mut above = "";
        let mut missing = Vec::new();
        for line in text.lines() {
            let is_key = !line.starts_with([' ', '#', ']', '[']) && line.contains(" = ");
            if (is_key || line.starts_with('[')) && !above.starts_with('#') && !inline_comment(line)
            {
                missing.push(line.to_owned());
            }
            above = line;
        }
        missing
    }

    #[test]
    fn every_printed_key_and_table_has_a_comment() {
        let all = Config::commented(&everything());
        for text in [Config::commented_default(), all.clone()] {
            let missing = uncommented(&text);
            assert!(missing.is_empty(), "no comment on {missing:#?}\n{text}");
        }
        // The walk sees what it must: keys nested in carriers, limits and pools.
        for key in [
            "\npriority = 0\n",
            "\nfailure_threshold = 5\n",
            "\nsender_rate_per_s = 1\n",
            "\nrate_per_s = 100\n",
            "\nmax_tries = 5\n",
            "\nmode = \"hang\"\n",
            "\nprefix = \"+882\"\n",
            "\nurl = \"http://127.0.0.1:8080/messages\"\n",
            "\ntls_cert = ",
            "\nmaster_key = ",
            "\nhttp_keys = []\n",
        ] {
            assert!(all.contains(key), "{key:?} not printed:\n{all}");
        }
        // The walk itself: a comment above or after the value counts, a # in a
        // string does not.
        assert_eq!(
            uncommented("[x]\na = 1 # one\nc = \"#\"\n# b\nb = [\n    2,\n]\n"),
            ["[x]", "c = \"#\""]
        );
        // Everything printed reads back as it was.
        let back: Config = toml::from_str(&all).unwrap();
        assert_eq!(back, everything());
    }

    #[test]
    fn a_carrier_prints_the_settings_of_its_kind_only() {
        let text = Config::commented_default();
        let tables = |t: &str, name: &str| t.lines().filter(|l| *l == name).count();
        // Two simulated carriers: their tables, and no HTTP carrier table.
        assert_eq!(tables(&text, "[router.carriers.simulated]"), 2, "{text}");
        assert_eq!(tables(&text, "[router.carriers.http]"), 0, "{text}");
        assert!(!text.contains("\nhttp = "), "{text}");
        // An HTTP carrier is shown commented out; uncommented, it is read.
        let example = http_carrier_example();
        let uncommented: String = example
            .lines()
            .filter(|l| !l.starts_with("##"))
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        let parsed = Config::parse(&format!("{text}\n{uncommented}"))
            .unwrap_or_else(|e| panic!("{e:?}\n{uncommented}"));
        let http = &parsed.router.carriers[2];
        assert_eq!(http.kind, CarrierKind::Http);
        assert_eq!(http.http.url, "http://carrier.example/messages");
        // A configuration with an HTTP carrier prints its table and no
        // simulated one for it, and no example.
        let all = Config::commented(&everything());
        assert_eq!(tables(&all, "[router.carriers.simulated]"), 2, "{all}");
        assert_eq!(tables(&all, "[router.carriers.http]"), 1, "{all}");
        assert!(!all.contains("# [router.carriers.http]"), "{all}");
    }

    #[test]
    fn every_mistake_is_listed() {
        let text = r#"
            bogus = 1
            [server]
            listen = "0.0.0.0:7400"
            max_frame = 3
            [[tenants]]
            name = "a"
            keys = ["short"]
            code_len = 2
            [[tenants]]
            name = "b"
            colour = "red"
            [audit]
            flush_interval_ms = 0
        "#;
        let errs = Config::parse(text).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        for want in [
            "bogus",
            "server.listen",
            "server.max_frame",
            "tenants[0].keys[0]",
            "tenants[0].code_len",
            "tenants[1].colour",
            "audit.flush_interval_ms",
        ] {
            assert!(fields.contains(&want), "{want} missing in {errs:?}");
        }
        assert!(!format!("{errs:?}").contains("short\""), "a key leaked");
    }

    #[test]
    fn audit_retention_and_syslog_mistakes_name_the_field_and_the_reason() {
        let base = "[[tenants]]\nname = \"x\"\nkeys = [\"0123456789\"]\n[audit]\n";
        let errs = |audit: &str| Config::parse(&format!("{base}{audit}")).unwrap_err();
        let one = |audit: &str, field: &str, why: &str| {
            let e = errs(audit);
            assert!(
                e.iter().any(|e| e.field == field && e.reason.contains(why)),
                "{audit}: want {field}: {why}, got {e:?}"
            );
        };
        one(
            "max_total_bytes = 100000000",
            "audit.max_total_bytes",
            "at least twice audit.max_file_bytes (134217728)",
        );
        one(
            "max_age_days = 1\nmin_age_hours = 48",
            "audit.min_age_hours",
            "must not exceed audit.max_age_days x 24 (24)",
        );
        one("max_age_days = 40000", "audit.max_age_days", "36500");
        one("syslog = \"/dev/log\"", "audit.syslog", "unix:/dev/log");
        one("syslog = \"udp:192.0.2.1:514\"", "audit.syslog", "loopback");
        one("syslog = \"unix:dev/log\"", "audit.syslog", "absolute");
        one(
            "syslog_facility = \"kern\"",
            "audit.syslog_facility",
            "authpriv",
        );
        one("max_files = -1", "audit", "max_files");
        // Every one says where.
        assert!(
            errs("syslog = \"x\"")[0]
                .reason
                .ends_with("(line 5, column 1)")
        );
        // Good values, and the former count key, are read.
        let c = Config::parse(&format!(
            "{base}max_files = 10\nmax_age_days = 0\nmin_age_hours = 0\nmax_total_bytes = 134217728\n\
             syslog = \"udp:127.0.0.1:514\"\nsyslog_facility = \"local3\"\n"
        ))
        .unwrap();
        assert_eq!(c.audit.max_files, Some(10));
        assert_eq!(c.audit.max_age_days, 0);
        assert_eq!(c.audit.syslog, "udp:127.0.0.1:514");
        let d = AuditConfig::default();
        assert_eq!(
            (
                d.max_files,
                d.max_age_days,
                d.min_age_hours,
                d.max_total_bytes
            ),
            (None, 90, 24, 4 << 30)
        );
        assert!(d.syslog.is_empty() && d.syslog_facility == "authpriv");
        // A disabled trail is not checked.
        Config::parse(&format!(
            "{base}enabled = false\nmax_total_bytes = 0\nsyslog = \"x\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn every_audit_key_is_explained_in_the_printed_default() {
        let text = Config::commented_default();
        let audit = text.split("\n[audit]\n").nth(1).unwrap();
        let audit = audit.split("\n[").next().unwrap();
        let mut previous = "";
        for line in audit.lines() {
            if line.contains(" = ") && !line.starts_with('#') {
                assert!(
                    previous.starts_with("# "),
                    "{line} has no comment:\n{audit}"
                );
            }
            previous = line;
        }
        for key in [
            "max_age_days = 90",
            "max_total_bytes = 4294967296",
            "min_age_hours = 24",
            "syslog = \"\"",
            "syslog_facility = \"authpriv\"",
            "# max_files = ",
            "zstdcat",
        ] {
            assert!(audit.contains(key), "{key} missing:\n{audit}");
        }
    }

    #[test]
    fn a_tenant_without_http_keys_has_none() {
        let c = Config::parse("[[tenants]]\nname = \"x\"\nkeys = [\"0123456789\"]\n").unwrap();
        assert!(
            c.tenants[0].http_keys.is_empty(),
            "no development key inherited"
        );
        assert_eq!(Config::development().tenants[0].http_keys.len(), 3);
    }

    #[test]
    fn production_may_listen_anywhere() {
        let text = "[server]\nprofile = \"production\"\nlisten = \"0.0.0.0:7400\"\nallow = [\"plaintext\", \"simulated_carriers\"]\n[[tenants]]\nname = \"x\"\nrole = \"client\"\nkeys = [\"0123456789abcdef\"]\nverify_per_s = 20000\ncheck_per_s = 5000\n[storage]\nmaster_key = \"/etc/watchword/master.key\"\n";
        Config::parse(text).unwrap();
    }

    #[test]
    fn an_unknown_key_hides_no_bad_value_and_every_mistake_says_where() {
        let text = "[server]\nlisten = \"not-an-address\"\nlisen = \"127.0.0.1:1\"\n\n[[tenants]]\nname = \"a\"\nkeys = [\"0123456789\"]\n\n[[tenants]]\nname = \"b\"\n  keys = [\"short\"]\n";
        let errs = Config::parse(text).unwrap_err();
        let find = |field: &str| {
            errs.iter()
                .find(|e| e.field == field)
                .unwrap_or_else(|| panic!("{field}: {errs:?}"))
                .reason
                .clone()
        };
        assert!(find("server.lisen").starts_with("unknown key"), "{errs:?}");
        assert!(
            find("server.lisen").ends_with("(line 3, column 1)"),
            "{errs:?}"
        );
        assert!(
            find("server.listen").ends_with("(line 2, column 1)"),
            "{errs:?}"
        );
        assert!(
            find("tenants[1].keys[0]").ends_with("(line 11, column 3)"),
            "{errs:?}"
        );
        // A syntax error keeps toml's own lines, the caret included.
        let errs = Config::parse("[server]\nlisten = \n").unwrap_err();
        assert!(
            errs[0].reason.contains('\n') && errs[0].reason.contains('^'),
            "{errs:?}"
        );
    }

    #[test]
    fn a_carrier_mistake_names_the_carrier_field_and_its_line() {
        let text = "[[router.carriers]]\nname = \"a\"\nkind = \"http\"\n\n[router.carriers.http]\nurl = \"https://a.example/send\"\n\n[[router.carriers]]\nname = \"b\"\nkind = \"http\"\n\n[router.carriers.http]\nurl = \"https://b.example/send\"\nca_file = \"/nonexistent/ca.pem\"\n\n[[tenants]]\nname = \"x\"\nkeys = [\"0123456789\"]\n";
        let errs = Config::parse(text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "router.carriers[1].http.ca_file");
        assert!(
            errs[0]
                .reason
                .starts_with("/nonexistent/ca.pem: cannot read")
                && errs[0].reason.ends_with("(line 14, column 1)"),
            "{errs:?}"
        );
        // A plain http:// carrier has no certificate to check.
        let plain = text.replace("https://b.", "http://b.");
        let errs = Config::parse(&plain).unwrap_err();
        assert_eq!(errs[0].field, "router.carriers[1].http.ca_file");
        assert!(
            errs[0].reason.starts_with("only with an https:// url"),
            "{errs:?}"
        );
        // A mistake of the whole carrier names the carrier.
        let dup = text.replace("name = \"b\"", "name = \"a\"");
        let errs = Config::parse(&dup).unwrap_err();
        assert_eq!(errs[0].field, "router.carriers[1].name");
        assert!(
            errs[0].reason.starts_with("duplicate (line 9, column 1)"),
            "{errs:?}"
        );
        // Mistakes outside the carriers stay under router.
        let errs = Config::parse(&text.replace(
            "[[router.carriers]]\nname = \"a\"",
            "[router]\nqueue_capacity = 0\n[[router.carriers]]\nname = \"a\"",
        ))
        .unwrap_err();
        assert_eq!(errs[0].field, "router", "{errs:?}");
        assert!(errs[0].reason.starts_with("queue_capacity: "), "{errs:?}");
    }

    #[test]
    fn production_refuses_each_development_default_by_rule_unless_waived() {
        // The development profile as it is, declared production.
        let mut c = Config::development();
        c.server.profile = Profile::Production;
        c.server.listen = "0.0.0.0:7400".into();
        c.storage.path = PathBuf::new();
        c.tenants[0].keys.push("short-key-123".into());
        let errs = c.validate();
        let text = format!("{errs:?}");
        for (rule, field) in [
            ("simulator_tenants", "tenants[0].role"),
            ("simulated_carriers", "router.carriers[0].kind"),
            ("development_keys", "tenants[0].keys[0]"),
            ("development_keys", "tenants[0].http_keys[0].key"),
            ("development_keys", "radius.clients[0].secret"),
            ("short_keys", "tenants[0].keys[1]"),
            ("plaintext", "server.listen"),
            ("unlimited_guesses", "tenants[0].verify_per_s"),
            ("unlimited_guesses", "tenants[0].check_per_s"),
        ] {
            assert!(
                errs.iter()
                    .any(|e| e.field == field && e.reason.contains(rule)),
                "{rule} at {field}: {text}"
            );
        }
        assert!(
            !text.contains("demo-key") && !text.contains("short-key-123"),
            "{text}"
        );
        // Waived by name, each rule goes quiet; a rule that is no rule is refused.
        c.server.allow = PRODUCTION_RULES
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        c.server.allow.push("everything".into());
        assert!(c.validate().iter().any(|e| e.field == "server.allow[6]"));
        // TLS on the listeners satisfies the plaintext rule (metrics stay on loopback).
        c.server.allow = vec![
            "simulator_tenants".into(),
            "simulated_carriers".into(),
            "development_keys".into(),
            "short_keys".into(),
            "unlimited_guesses".into(),
        ];
        c.server.tls_cert = Some(PathBuf::from("/dev/null"));
        c.server.tls_key = Some(PathBuf::from("/dev/null"));
        assert!(
            !c.validate().iter().any(|e| e.reason.contains("plaintext")),
            "{:?}",
            c.validate()
        );
    }

    #[test]
    fn production_refuses_codes_over_plain_http_to_a_carrier() {
        let text = "[server]\nprofile = \"production\"\n[[tenants]]\nname = \"x\"\nrole = \"client\"\nkeys = [\"0123456789abcdef\"]\nverify_per_s = 100\ncheck_per_s = 100\n[storage]\nmaster_key = \"/etc/watchword/master.key\"\n[[router.carriers]]\nname = \"sms\"\nkind = \"http\"\n[router.carriers.http]\nurl = \"http://sms.example/send\"\n";
        let errs = Config::parse(text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "router.carriers[0].http.url");
        assert!(errs[0].reason.contains("rule plaintext"), "{errs:?}");
        Config::parse(&text.replace("http://sms", "https://sms")).unwrap();
    }

    #[test]
    fn production_refuses_smtp_without_tls_off_loopback_and_smtp_fields_are_named() {
        let text = "[server]\nprofile = \"production\"\n[[tenants]]\nname = \"x\"\nrole = \"client\"\nkeys = [\"0123456789abcdef\"]\nverify_per_s = 100\ncheck_per_s = 100\n[storage]\nmaster_key = \"/etc/watchword/master.key\"\n[[router.carriers]]\nname = \"mail\"\nkind = \"smtp\"\nchannels = [\"email\"]\n[router.carriers.smtp]\nhost = \"mail.example.net\"\ntls = \"none\"\nfrom = \"codes@example.net\"\nusername = \"ww\"\npassword = \"smtp-pass-value\"\n";
        let errs = Config::parse(text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "router.carriers[0].smtp.tls");
        assert!(errs[0].reason.contains("rule plaintext"), "{errs:?}");
        assert!(!format!("{errs:?}").contains("smtp-pass-value"));
        // STARTTLS, or a relay on loopback, or the rule waived: accepted.
        Config::parse(&text.replace("tls = \"none\"", "tls = \"starttls\"")).unwrap();
        for host in ["127.0.0.1", "localhost", "::1"] {
            Config::parse(&text.replace("mail.example.net", host)).unwrap();
        }
        let waived = text.replace(
            "profile = \"production\"\n",
            "profile = \"production\"\nallow = [\"plaintext\"]\n",
        );
        Config::parse(&waived).unwrap();
        // The engine's checks come back under router.carriers[i].smtp.*.
        let errs = Config::parse(&waived.replace("host = \"mail.example.net\"", "host = \"\""))
            .unwrap_err();
        assert_eq!(errs[0].field, "router.carriers[0].smtp.host", "{errs:?}");
        assert!(errs[0].reason.starts_with("must be set"), "{errs:?}");
        let errs =
            Config::parse(&waived.replace("from = \"codes@example.net\"\n", "")).unwrap_err();
        assert_eq!(errs[0].field, "router.carriers[0].senders", "{errs:?}");
        let mut with_smtp = Config::development();
        with_smtp
            .router
            .carriers
            .push(watchword_engine::delivery::CarrierConfig {
                name: "mail".into(),
                kind: CarrierKind::Smtp,
                ..watchword_engine::delivery::CarrierConfig::default()
            });
        let printed = Config::commented(&with_smtp);
        assert_eq!(
            printed.matches("\n[router.carriers.smtp]\n").count(),
            1,
            "only the SMTP carrier prints an smtp table"
        );
        for key in [
            "# Settings of an SMTP carrier (e-mail only",
            "[router.carriers.smtp]\n# The mail server",
            "\n# 587 (submission, STARTTLS); 465 with tls = \"tls\".\nport = 587\n",
            "\ntls = \"starttls\"\n",
            "\n# AUTH password (never in logs, errors or Debug output).\npassword = \"\"\n",
            "\n# The name sent in EHLO; empty: this host's name.\nhelo_name = \"\"\n",
        ] {
            assert!(printed.contains(key), "{key} missing");
        }
        let smtp = printed.split("[router.carriers.smtp]\n").nth(1).unwrap();
        let smtp = smtp.split("\n[").next().unwrap();
        let mut previous = "";
        for line in smtp.lines() {
            if line.contains(" = ") && !line.starts_with('#') {
                assert!(previous.starts_with("# "), "{line} has no comment:\n{smtp}");
            }
            previous = line;
        }
    }

    #[test]
    fn production_needs_a_master_key_outside_the_data_directory() {
        let base = "[server]\nprofile = \"production\"\n[[tenants]]\nname = \"x\"\nkeys = [\"0123456789\"]\n[storage]\npath = \"/var/lib/ww\"\n";
        let errs = Config::parse(base).unwrap_err();
        assert!(
            errs.iter().any(|e| e.field == "storage.master_key"),
            "{errs:?}"
        );
        let inside = format!("{base}master_key = \"/var/lib/ww/master.key\"\n");
        let errs = Config::parse(&inside).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.field == "storage.master_key" && e.reason.contains("outside"))
        );
    }

    #[test]
    fn radius_is_on_in_the_development_profile_only() {
        let d = Config::development();
        assert_eq!(d.radius.listen, "127.0.0.1:1812");
        let c = &d.radius.clients[0];
        assert_eq!(
            (c.address.as_str(), c.secret.as_str(), c.tenant.as_str()),
            ("127.0.0.0/8", "demo-radius-secret", "demo")
        );
        assert!(c.require_message_authenticator);
        assert_eq!(c.first_factor, FirstFactor::None);
        assert!(d.validate().is_empty());
        let file =
            Config::parse("[[tenants]]\nname = \"demo\"\nkeys = [\"0123456789\"]\n").unwrap();
        assert!(
            file.radius.listen.is_empty(),
            "a file without [radius] has it off"
        );
        assert!(file.radius.clients.is_empty());
    }

    #[test]
    fn radius_mistakes_are_listed_without_secrets() {
        let text = r#"
            [[tenants]]
            name = "demo"
            keys = ["0123456789"]
            [radius]
            listen = "0.0.0.0:1812"
            call_wait_s = 0
            [[radius.clients]]
            name = "vpn"
            address = "10.0.0.0/33"
            secret = "short-secret"
            tenant = "nope"
            first_factor = "upstream"
            [[radius.clients]]
            name = "vpn"
            address = "10.0.0.0/8"
            secret = "a-long-enough-secret"
            tenant = "demo"
            [radius.upstream]
            address = "radius.example"
            secret = "tiny"
            timeout_ms = 10
        "#;
        let errs = Config::parse(text).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        for want in [
            "radius.listen",
            "radius.call_wait_s",
            "radius.clients[0].address",
            "radius.clients[0].secret",
            "radius.clients[0].tenant",
            "radius.clients[1].name",
            "radius.upstream.address",
            "radius.upstream.secret",
            "radius.upstream.timeout_ms",
        ] {
            assert!(fields.contains(&want), "{want} missing in {errs:?}");
        }
        let all = format!("{errs:?}");
        assert!(
            !all.contains("short-secret") && !all.contains("tiny\""),
            "{all}"
        );
        assert!(all.contains("16..=256 bytes, got 12"), "{all}");
        let needs = Config::parse(
            "[[tenants]]\nname = \"demo\"\nkeys = [\"0123456789\"]\n[radius]\nlisten = \"127.0.0.1:1812\"\n\
             [[radius.clients]]\nname = \"n\"\naddress = \"127.0.0.1\"\nsecret = \"0123456789abcdef\"\n\
             tenant = \"demo\"\nfirst_factor = \"upstream\"\n",
        )
        .unwrap_err();
        assert!(
            needs
                .iter()
                .any(|e| e.field == "radius.clients[0].first_factor"),
            "{needs:?}"
        );
    }

    #[test]
    fn smpp_carriers_are_explained_checked_and_keep_their_password() {
        let mut with_smpp = Config::development();
        with_smpp
            .router
            .carriers
            .push(watchword_engine::delivery::CarrierConfig {
                name: "smsc".into(),
                kind: CarrierKind::Smpp,
                ..watchword_engine::delivery::CarrierConfig::default()
            });
        let text = Config::commented(&with_smpp);
        assert_eq!(
            text.matches("\n[router.carriers.smpp]\n").count(),
            1,
            "only the SMPP carrier prints an smpp table"
        );
        let smpp = text.split("\n[router.carriers.smpp]\n").nth(1).unwrap();
        let smpp = smpp.split("\n[").next().unwrap();
        let mut previous = "";
        for line in smpp.lines() {
            if line.contains(" = ") && !line.starts_with('#') {
                assert!(previous.starts_with("# "), "{line} has no comment:\n{smpp}");
            }
            previous = line;
        }
        assert!(smpp.contains("port = 2775") && smpp.contains("enquire_link_s = 30"));

        let base = "[[tenants]]\nname = \"x\"\nkeys = [\"0123456789\"]\n\
                    [[router.carriers]]\nname = \"smsc\"\nkind = \"smpp\"\nchannels = [\"sms\"]\n\
                    [router.carriers.smpp]\n";
        let errs = |smpp: &str| Config::parse(&format!("{base}{smpp}")).unwrap_err();
        let e = errs("system_id = \"ww\"\n");
        assert_eq!(e[0].field, "router.carriers[0].smpp.host", "{e:?}");
        let e = errs(
            "host = \"smsc.example\"\nsystem_id = \"ww\"\npassword = \"far-too-long-s3cret\"\n",
        );
        assert_eq!(e[0].field, "router.carriers[0].smpp.password", "{e:?}");
        assert!(!format!("{e:?}").contains("s3cret"), "{e:?}");
        let ok =
            format!("{base}host = \"smsc.example\"\nsystem_id = \"ww\"\npassword = \"pw-s3cr\"\n");
        let c = Config::parse(&ok).unwrap();
        assert!(!format!("{c:?}").contains("pw-s3cr"));
        // Production: no TLS, so refused unless plaintext is waived.
        let prod = "[server]\nprofile = \"production\"\n[[tenants]]\nname = \"x\"\nrole = \"client\"\nkeys = [\"0123456789abcdef\"]\nverify_per_s = 100\ncheck_per_s = 100\n[storage]\nmaster_key = \"/etc/watchword/master.key\"\n[[router.carriers]]\nname = \"smsc\"\nkind = \"smpp\"\nchannels = [\"sms\"]\n[router.carriers.smpp]\nhost = \"smsc.example\"\nsystem_id = \"ww\"\n";
        let e = Config::parse(prod).unwrap_err();
        assert_eq!(e[0].field, "router.carriers[0].kind", "{e:?}");
        assert!(e[0].reason.contains("rule plaintext"), "{e:?}");
    }

    #[test]
    fn radius_secrets_never_show_in_debug() {
        let mut d = Config::development();
        d.radius.upstream = Some(RadiusUpstreamConfig {
            address: "127.0.0.1:1".into(),
            secret: "upstream-secret-value".into(),
            ..RadiusUpstreamConfig::default()
        });
        let shown = format!("{d:?}");
        assert!(!shown.contains("demo-radius-secret"), "{shown}");
        assert!(!shown.contains("upstream-secret-value"), "{shown}");
        let printed = Config::commented_default();
        assert!(printed.contains("[[radius.clients]]"), "{printed}");
        assert!(printed.contains("# The shared secret, 16 bytes or more."));
    }
}
