//! What the runner drives: the [`Backend`] trait (connect, issue, verify,
//! resend, ping, and where codes arrive), the target address syntax
//! (`watchword://HOST:PORT`, `redis://HOST:PORT`), the Redis OTP baseline
//! backend, and the spread of subjects and destinations.
//!
//! This module must never retry a failed request (a retry hides an error and
//! distorts latency) and never choose destinations so that the per-destination
//! limit is what gets measured, unless the plan asks for a small pool.

use crate::resp::{Resp, RespConn, RespError};
use std::future::Future;
use std::str::FromStr;
use tokio::sync::mpsc;

/// A challenge id as the load generator keeps it (16 bytes, both targets).
pub type Key = [u8; 16];

/// What an issue returned.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The challenge id.
    pub id: Key,
    /// The code, when the target hands it back directly (Redis: the load
    /// generator chose it); `None` when it arrives through the outbox.
    pub code: Option<String>,
}

/// A code that reached a simulated phone.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The challenge it belongs to.
    pub id: Key,
    /// The digits extracted from the message text.
    pub code: String,
}

/// Why one request failed, as a short static label for "errors by status".
pub type ErrLabel = &'static str;

/// A verify outcome label: `approved`, `rejected`, `expired`, `locked`, `unknown`.
pub type OutcomeLabel = &'static str;

/// A target the runner can drive. Connections are cheap to clone and may be
/// used by many tasks at once (that is how pipeline depth is made).
pub trait Backend: Send + Sync + 'static {
    /// One connection.
    type Conn: Clone + Send + Sync + 'static;

    /// A short description for reports (`watchword://127.0.0.1:7400`).
    fn describe(&self) -> String;

    /// Opens one connection (and authenticates / loads scripts).
    fn connect(&self) -> impl Future<Output = anyhow::Result<Self::Conn>> + Send;

    /// Subscribes to delivered codes, when the target delivers them out of band.
    /// `Ok(None)` when issue already returns the code.
    fn outbox(
        &self,
    ) -> impl Future<Output = anyhow::Result<Option<mpsc::Receiver<Delivery>>>> + Send;

    /// Issues one challenge for destination number `n` of the plan.
    fn issue(conn: &Self::Conn, n: u64) -> impl Future<Output = Result<Issued, ErrLabel>> + Send;

    /// Verifies `code` against `id`.
    fn verify(
        conn: &Self::Conn,
        id: Key,
        code: &str,
    ) -> impl Future<Output = Result<OutcomeLabel, ErrLabel>> + Send;

    /// Asks for the code to be sent again.
    fn resend(conn: &Self::Conn, id: Key) -> impl Future<Output = Result<(), ErrLabel>> + Send;

    /// A round trip that does no work.
    fn ping(conn: &Self::Conn) -> impl Future<Output = Result<(), ErrLabel>> + Send;

    /// The user-level decision for provisioned user number `n`, with no
    /// answer (it starts a challenge). Its result's label: `accept`,
    /// `reject` or `challenge`. Targets without it answer `unsupported`.
    fn check(
        conn: &Self::Conn,
        n: u64,
    ) -> impl Future<Output = Result<OutcomeLabel, ErrLabel>> + Send {
        let _ = (conn, n);
        async { Err("unsupported") }
    }

    /// A CHECK answered with a TOTP code of provisioned token number `n`;
    /// `seq` (the request's sequence number) says which of the token's
    /// fresh steps to use. Its label as for [`Backend::check`].
    fn totp(
        conn: &Self::Conn,
        n: u64,
        seq: u64,
    ) -> impl Future<Output = Result<OutcomeLabel, ErrLabel>> + Send {
        let _ = (conn, n, seq);
        async { Err("unsupported") }
    }

    /// A RADIUS Access-Request with user `n`'s static password (the
    /// FreeRADIUS baseline). Its label as for [`Backend::check`].
    fn pap(
        conn: &Self::Conn,
        n: u64,
    ) -> impl Future<Output = Result<OutcomeLabel, ErrLabel>> + Send {
        let _ = (conn, n);
        async { Err("unsupported") }
    }
}

/// Which target a `--target` URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetAddr {
    /// A Watchword gateway at `host:port`.
    Watchword(String),
    /// A redis-server at `host:port`.
    Redis(String),
    /// A RADIUS server (Watchword's listener, or FreeRADIUS) at `host:port`.
    Radius(String),
}

impl FromStr for TargetAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(a) = s.strip_prefix("watchword://") {
            Ok(Self::Watchword(with_port(a, 7400)))
        } else if let Some(a) = s.strip_prefix("redis://") {
            Ok(Self::Redis(with_port(a, 6379)))
        } else if let Some(a) = s.strip_prefix("radius://") {
            Ok(Self::Radius(with_port(a, 1812)))
        } else {
            Err(format!(
                "bad target `{s}` (expected watchword://HOST:PORT, redis://HOST:PORT or radius://HOST:PORT)"
            ))
        }
    }
}

impl std::fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Watchword(a) => write!(f, "watchword://{a}"),
            Self::Redis(a) => write!(f, "redis://{a}"),
            Self::Radius(a) => write!(f, "radius://{a}"),
        }
    }
}

fn with_port(a: &str, default: u16) -> String {
    let a = a.trim_end_matches('/');
    if a.is_empty() {
        format!("127.0.0.1:{default}")
    } else if a
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        a.to_string()
    } else {
        format!("{a}:{default}")
    }
}

/// How subjects and destinations are spread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestPlan {
    /// Number of distinct destinations; 0 means one per request (no repeats).
    pub distinct: u64,
    /// Use e-mail addresses instead of phone numbers.
    pub email: bool,
}

/// US area codes used for spread phone numbers (all in service).
const AREA: [u16; 16] = [
    201, 202, 206, 212, 213, 303, 312, 404, 415, 425, 503, 512, 617, 702, 713, 917,
];

impl DestPlan {
    /// Destination number `n`: a phone number in E.164 or an e-mail address.
    /// Distinct for distinct `n` (up to 16 × 700 × 10 000 phone numbers).
    pub fn destination(&self, n: u64) -> String {
        let n = if self.distinct > 0 {
            n % self.distinct
        } else {
            n
        };
        if self.email {
            return format!("u{n}@loadgen.example.com");
        }
        let line = n % 10_000;
        let exch = 200 + (n / 10_000) % 700; // 200..=899, never 555-01xx
        let exch = if exch == 555 { 556 } else { exch };
        let area = AREA[((n / 7_000_000) % AREA.len() as u64) as usize];
        format!("+1{area}{exch:03}{line:04}")
    }

    /// The country and calling code of the phone numbers (every area code
    /// of [`AREA`] is in the US); `None` with e-mail addresses.
    pub fn phone_country(&self) -> Option<(&'static str, &'static str)> {
        (!self.email).then_some(("US", "+1"))
    }

    /// The subject for request `n`.
    pub fn subject(&self, n: u64) -> String {
        format!("user{n}")
    }
}

/// The 6-digit code the load generator stores for Redis challenge `n`
/// (100000..=999999, so it never equals [`WRONG_CODE`]).
pub fn redis_code(n: u64) -> String {
    format!("{}", 100_000 + crate::mix::splitmix64(n ^ 0xC0DE) % 900_000)
}

/// The code sent by `wrong` and `verify`: never a Redis code, and a one in a
/// million hit against Watchword.
pub const WRONG_CODE: &str = "000000";

/// A random-looking id that was never issued (for `unknown`).
pub fn unknown_id(n: u64) -> Key {
    let a = crate::mix::splitmix64(n ^ 0xDEAD_BEEF);
    let b = crate::mix::splitmix64(a);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// The Redis OTP baseline: one hash per challenge, issue and verify as the
/// baseline's Lua scripts via EVALSHA.
#[derive(Clone, Debug)]
pub struct RedisBackend {
    /// `host:port`.
    pub addr: String,
    /// Challenge lifetime in seconds (the same default as Watchword: 300).
    pub ttl_s: u32,
    /// Attempts allowed (Watchword's default: 5).
    pub attempts: u32,
    /// `Some`: issue with `issue_queue.lua`, which also queues each message
    /// (to these destinations) on a capped stream for delivery workers;
    /// `None`: the store-only `issue.lua`.
    pub queue: Option<DestPlan>,
}

/// The stream `issue_queue.lua` appends messages to.
pub const REDIS_DELIVERY_STREAM: &[u8] = b"otp:deliveries";

/// The baseline's issue script, byte for byte.
pub const ISSUE_LUA: &str = include_str!("../lua/issue.lua");
/// The baseline's verify script, byte for byte.
pub const VERIFY_LUA: &str = include_str!("../lua/verify.lua");
/// The baseline's store-and-queue issue script, byte for byte.
pub const ISSUE_QUEUE_LUA: &str = include_str!("../lua/issue_queue.lua");

/// One Redis connection with the script hashes it loaded.
#[derive(Clone, Debug)]
pub struct RedisConn {
    conn: RespConn,
    issue_sha: std::sync::Arc<str>,
    verify_sha: std::sync::Arc<str>,
    ttl: std::sync::Arc<str>,
    attempts: std::sync::Arc<str>,
    /// Destinations when issuing through `issue_queue.lua` (then
    /// `issue_sha` is that script's).
    queue: Option<DestPlan>,
}

fn resp_err(e: RespError) -> ErrLabel {
    match e {
        RespError::Closed => "closed",
        RespError::Protocol(_) => "protocol",
    }
}

/// Redis key for a challenge id.
fn redis_key(id: &Key) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut k = [0u8; 36];
    k[..4].copy_from_slice(b"otp:");
    for (i, b) in id.iter().enumerate() {
        k[4 + 2 * i] = HEX[(b >> 4) as usize];
        k[5 + 2 * i] = HEX[(b & 15) as usize];
    }
    k
}

async fn script_load(c: &RespConn, src: &str) -> anyhow::Result<String> {
    match c.call(&[b"SCRIPT", b"LOAD", src.as_bytes()]).await {
        Ok(Resp::Bulk(Some(b))) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Ok(other) => anyhow::bail!("SCRIPT LOAD answered {other:?}"),
        Err(e) => anyhow::bail!("SCRIPT LOAD failed: {e}"),
    }
}

impl Backend for RedisBackend {
    type Conn = RedisConn;

    fn describe(&self) -> String {
        match self.queue {
            Some(_) => format!("redis://{} issue_queue.lua", self.addr),
            None => format!("redis://{}", self.addr),
        }
    }

    async fn connect(&self) -> anyhow::Result<RedisConn> {
        let conn = RespConn::connect(&self.addr)
            .await
            .map_err(|e| anyhow::anyhow!("connect to redis {}: {e}", self.addr))?;
        let issue_src = if self.queue.is_some() {
            ISSUE_QUEUE_LUA
        } else {
            ISSUE_LUA
        };
        let issue_sha = script_load(&conn, issue_src).await?;
        let verify_sha = script_load(&conn, VERIFY_LUA).await?;
        Ok(RedisConn {
            conn,
            issue_sha: issue_sha.into(),
            verify_sha: verify_sha.into(),
            ttl: self.ttl_s.to_string().into(),
            attempts: self.attempts.to_string().into(),
            queue: self.queue,
        })
    }

    async fn outbox(&self) -> anyhow::Result<Option<mpsc::Receiver<Delivery>>> {
        Ok(None)
    }

    async fn issue(c: &RedisConn, n: u64) -> Result<Issued, ErrLabel> {
        // The id plays the part of the server-chosen id: unguessable-looking and unique.
        let id = unknown_id(n ^ 0x155E_0000_0000_0000);
        let code = redis_code(n);
        let key = redis_key(&id);
        let to = c.queue.map(|plan| plan.destination(n)).unwrap_or_default();
        let mut args: Vec<&[u8]> = vec![b"EVALSHA", c.issue_sha.as_bytes()];
        if c.queue.is_some() {
            args.extend([b"2" as &[u8], &key, REDIS_DELIVERY_STREAM]);
        } else {
            args.extend([b"1" as &[u8], &key]);
        }
        args.extend([code.as_bytes(), c.ttl.as_bytes(), c.attempts.as_bytes()]);
        if c.queue.is_some() {
            args.push(to.as_bytes());
        }
        let r = c.conn.call(&args).await.map_err(resp_err)?;
        match r {
            Resp::Int(1) => Ok(Issued {
                id,
                code: Some(code),
            }),
            Resp::Int(0) => Err("exists"),
            Resp::Error(_) => Err("redis_error"),
            _ => Err("protocol"),
        }
    }

    async fn verify(c: &RedisConn, id: Key, code: &str) -> Result<OutcomeLabel, ErrLabel> {
        let key = redis_key(&id);
        let r = c
            .conn
            .call(&[
                b"EVALSHA",
                c.verify_sha.as_bytes(),
                b"1",
                &key,
                code.as_bytes(),
            ])
            .await
            .map_err(resp_err)?;
        match r {
            Resp::Int(1) => Ok("approved"),
            Resp::Int(0) => Ok("rejected"),
            Resp::Int(-1) => Ok("unknown"),
            Resp::Error(_) => Err("redis_error"),
            _ => Err("protocol"),
        }
    }

    async fn resend(c: &RedisConn, id: Key) -> Result<(), ErrLabel> {
        // What a Redis-based service does to resend: read the stored code back.
        let key = redis_key(&id);
        match c
            .conn
            .call(&[b"HGET", &key, b"c"])
            .await
            .map_err(resp_err)?
        {
            Resp::Bulk(Some(_)) => Ok(()),
            Resp::Bulk(None) => Err("not_found"),
            Resp::Error(_) => Err("redis_error"),
            _ => Err("protocol"),
        }
    }

    async fn ping(c: &RedisConn) -> Result<(), ErrLabel> {
        match c.conn.call(&[b"PING"]).await.map_err(resp_err)? {
            Resp::Simple(_) => Ok(()),
            Resp::Error(_) => Err("redis_error"),
            _ => Err("protocol"),
        }
    }
}

/// Extracts the code from a delivered message text: the first run of exactly
/// `len` digits, else the longest run of 4 to 12 digits.
pub fn extract_code(text: &str, len: usize) -> Option<String> {
    let mut runs: Vec<&str> = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            runs.push(&text[s..i]);
        } else {
            i += 1;
        }
    }
    if let Some(r) = runs.iter().find(|r| r.len() == len) {
        return Some((*r).to_string());
    }
    runs.iter()
        .filter(|r| (4..=12).contains(&r.len()))
        .max_by_key(|r| r.len())
        .map(|r| (*r).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        assert_eq!(
            "watchword://".parse::<TargetAddr>().unwrap(),
            TargetAddr::Watchword("127.0.0.1:7400".into())
        );
        assert_eq!(
            "redis://127.0.0.1:6380".parse::<TargetAddr>().unwrap(),
            TargetAddr::Redis("127.0.0.1:6380".into())
        );
        assert!("http://x".parse::<TargetAddr>().is_err());
    }

    #[test]
    fn destinations_are_distinct_and_codes_never_wrong() {
        let p = DestPlan::default();
        let set: std::collections::HashSet<_> = (0..50_000u64).map(|n| p.destination(n)).collect();
        assert_eq!(set.len(), 50_000);
        assert!(p.destination(3).starts_with("+1"));
        let small = DestPlan {
            distinct: 10,
            email: true,
        };
        assert_eq!(small.destination(3), small.destination(13));
        for n in 0..10_000 {
            assert_ne!(redis_code(n), WRONG_CODE);
            assert_eq!(redis_code(n).len(), 6);
        }
    }

    #[test]
    fn code_extraction() {
        assert_eq!(
            extract_code("Your code is 123456. Valid for 300 s.", 6).as_deref(),
            Some("123456")
        );
        assert_eq!(
            extract_code("code 1234 from 22", 6).as_deref(),
            Some("1234")
        );
        assert_eq!(extract_code("no digits", 6), None);
    }
}
