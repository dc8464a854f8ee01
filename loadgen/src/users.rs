//! Users through the HTTP API: provisioning the users a `check` run needs
//! (each with an e-mail method confirmed by the code its simulated mailbox
//! received) and those a `totp` run needs (each with a TOTP token, imported
//! from CSV), and the durable-upsert measurement (`watchword-loadgen users`):
//! closed-loop `PUT /v1/users/{subject}` from many connections, each answer
//! acknowledged only once the write reached the disk.
//!
//! This module must never print a key or a code, and never retry a request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;
use watchword_gateway::client::{Client, ClientConfig};

use watchword_engine::oath::{Algorithm, Params, Secret, Token};

use crate::http::HttpConn;
use crate::target::extract_code;

/// The subject of provisioned user `k`.
pub fn check_subject(k: u64) -> String {
    format!("lg-check-{k}")
}

fn check_address(k: u64) -> String {
    format!("lg-check-{k}@loadgen.example.com")
}

/// The subject of TOTP user `k` (`--mix totp`).
pub fn totp_subject(k: u64) -> String {
    format!("lg-totp-{k}")
}

/// The serial of TOTP user `k`'s token.
fn totp_serial(k: u64) -> String {
    format!("LGTOTP{k:010}")
}

/// TOTP user `k`'s token: SHA-1, 6 digits, 30 s, a secret made from `k`
/// (a load-test token: never a real one).
fn totp_token(k: u64) -> (Secret, Params) {
    let mut secret = vec![0x5a; 20];
    secret[..8].copy_from_slice(&k.to_le_bytes());
    let params = Params {
        algorithm: Algorithm::Sha1,
        digits: 6,
        period: 30,
    };
    (Secret::new(secret), params)
}

/// The code token `k` answers at `now_s` for its `round`-th use in a run:
/// the step before the current one, then the current one, then the next
/// (all inside the default window of one step either side, each after the
/// one before, so none is a replay). A fourth use repeats the next step and
/// is refused as a replay: size `--users` above a third of the requests.
pub fn totp_code(k: u64, now_s: u64, round: u64) -> String {
    let (secret, params) = totp_token(k);
    match Token::new(&secret, params) {
        Ok(t) => t.hotp(t.step_at(now_s).saturating_sub(1) + round.min(2)),
        Err(_) => String::new(),
    }
}

/// Makes TOTP users `0..users` hold a token each: imports them through
/// `POST /v1/tokens/import?format=csv` (the Entra layout: the `upn` makes
/// the user), 100,000 rows a file. Tokens already there are skipped by
/// serial (a rerun imports nothing). Returns how many were imported now.
pub async fn provision_tokens(url: &str, key: &str, users: u64) -> anyhow::Result<u64> {
    let mut c = HttpConn::connect(url, key).await?;
    let mut imported = 0;
    let mut from = 0;
    while from < users {
        let to = (from + 100_000).min(users);
        let mut csv =
            String::from("upn,serial number,secret key,time interval,manufacturer,model\n");
        for k in from..to {
            let (secret, _) = totp_token(k);
            csv.push_str(&format!(
                "{},{},{},30,loadgen,totp\n",
                totp_subject(k),
                totp_serial(k),
                secret.to_base32()
            ));
        }
        let r = c
            .json("POST", "/v1/tokens/import?format=csv", &csv, &[200])
            .await?;
        imported += r["imported"].as_u64().unwrap_or(0);
        from = to;
    }
    Ok(imported)
}

/// Makes users `0..users` exist with an active e-mail method, through the
/// HTTP API at `url` (admin key `key`); codes are read from the outbox as
/// tenant `sim` (a simulator). Users that already have an active e-mail
/// method are left as they are. Returns how many were confirmed now.
pub async fn provision(
    url: &str,
    key: &str,
    sim: ClientConfig,
    users: u64,
    connections: usize,
) -> anyhow::Result<u64> {
    let client = Client::connect(sim)
        .await
        .map_err(|e| anyhow::anyhow!("connect the simulator tenant: {e}"))?;
    let mut outbox = client
        .subscribe_outbox()
        .await
        .map_err(|e| anyhow::anyhow!("OUTBOX_SUBSCRIBE for provisioning: {e}"))?;
    let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<String>>>> = Arc::default();
    let router = {
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(d) = outbox.recv().await {
                let Some(tx) = waiting.lock().remove(&d.destination) else {
                    continue;
                };
                if let Some(code) = extract_code(&d.text, 6) {
                    let _ = tx.send(code);
                }
            }
        })
    };
    let next = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections.clamp(1, 64) {
        let (url, key) = (url.to_owned(), key.to_owned());
        let (next, confirmed, waiting) = (next.clone(), confirmed.clone(), waiting.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = HttpConn::connect(&url, &key).await?;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= users {
                    return anyhow::Ok(());
                }
                let subject = check_subject(k);
                let path = format!("/v1/users/{subject}");
                let u = c
                    .json("PUT", &path, r#"{"default_method":"email"}"#, &[200, 201])
                    .await?;
                let has_active = u["methods"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .any(|m| m["type"] == "email" && m["state"] == "active")
                });
                if has_active {
                    continue;
                }
                let address = check_address(k);
                let (tx, rx) = oneshot::channel();
                waiting.lock().insert(address.clone(), tx);
                let body = serde_json::json!({"type": "email", "destination": address}).to_string();
                let m = c
                    .json("POST", &format!("{path}/methods"), &body, &[201])
                    .await?;
                let id = m["id"].as_str().unwrap_or_default().to_owned();
                let code = tokio::time::timeout(Duration::from_secs(30), rx)
                    .await
                    .map_err(|_| anyhow::anyhow!("no confirmation code for {subject} within 30 s"))?
                    .map_err(|_| anyhow::anyhow!("the outbox closed"))?;
                let body = serde_json::json!({ "code": code }).to_string();
                c.json(
                    "POST",
                    &format!("{path}/methods/{id}/confirm"),
                    &body,
                    &[200],
                )
                .await?;
                confirmed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    router.abort();
    Ok(confirmed.load(Ordering::Relaxed))
}

/// What the upsert measurement found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UpsertReport {
    /// Connections.
    pub connections: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// Answered 200 or 201 in the measured window.
    pub ok: u64,
    /// Any other answer or failure in the measured window.
    pub errors: u64,
    /// `ok` per second.
    pub ok_per_s: f64,
    /// Latency percentiles of the measured answers, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl UpsertReport {
    /// A few lines for people.
    pub fn to_text(&self) -> String {
        format!(
            "PUT /v1/users, {} connections, closed loop, {:.1} s measured\n  ok {} ({:.0}/s)  errors {}\n  latency p50 {} us  p99 {} us  p99.9 {} us  max {} us\n",
            self.connections,
            self.seconds,
            self.ok,
            self.ok_per_s,
            self.errors,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}

/// Closed-loop durable upserts: each of `connections` connections PUTs
/// users `lg-put-{conn}-{i}` (new ones, then the same ones again: creates
/// and updates, every one a change), `warmup` then `duration` measured.
pub async fn upserts(
    url: &str,
    key: &str,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    users_per_conn: u64,
) -> anyhow::Result<UpsertReport> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let hist = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // A value of this run's own in every write: a PUT that changes nothing
    // writes nothing, and a rerun must not measure those.
    let run: u32 = rand::random();
    let mut tasks = Vec::new();
    for conn in 0..connections.max(1) {
        let (url, key) = (url.to_owned(), key.to_owned());
        let (hist, ok, errors) = (hist.clone(), ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = HttpConn::connect(&url, &key).await?;
            let mut local = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut i = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let path = format!("/v1/users/lg-put-{conn}-{}", i % users_per_conn.max(1));
                let body = format!(r#"{{"display_name":"Load {run:08x} {i}","locale":"en"}}"#);
                i += 1;
                let r = c.request("PUT", &path, &body).await;
                let done = Instant::now();
                if t0 < measure_from {
                    continue;
                }
                match r {
                    Ok((200 | 201, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        local.saturating_record(done.duration_since(t0).as_micros() as u64);
                    }
                    Ok(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            hist.lock().add(&local)?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let h = hist.lock();
    let seconds = duration.as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    Ok(UpsertReport {
        connections,
        seconds,
        ok,
        errors: errors.load(Ordering::Relaxed),
        ok_per_s: ok as f64 / seconds,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    })
}
