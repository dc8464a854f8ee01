//! Prometheus metrics and the health endpoints, served over HTTP/1 on
//! `metrics_listen`: `/metrics` (text format), `/healthz` (the process is up),
//! `/readyz` (accepting work; 503 while starting or draining).
//!
//! Metric names (all prefixed `watchword_`): `requests_total{op,status}`,
//! `request_duration_seconds{op}` (histogram of the time to decode, execute
//! and encode one request; not the time it waited in buffers), `connections` (gauge),
//! `connections_total`, `pushes_total`, `pushes_lagged_total`,
//! `pending_challenges` (gauge), `audit_dropped_total`, the audit trail's
//! `audit_deleted_early_total` (records deleted by the disk budget before
//! `min_age_hours`), `audit_deleted_files_total{reason}`, `audit_disk_bytes`,
//! `audit_compressed_files_total`, `audit_archive_errors_total`,
//! `audit_syslog_sent_total` and `audit_syslog_dropped_total{reason}`, plus
//! whatever the engine records (carrier figures). Labels are fixed small
//! sets: never a tenant-chosen or user-chosen string, never a code, key or
//! destination.
//!
//! RADIUS (docs/radius.md), per configured client (label `client`, the
//! operator's name for it): `radius_requests_total`, `radius_accepts_total`,
//! `radius_rejects_total`, `radius_challenges_total`, `radius_resent_total`
//! (answered again from the reply cache), `radius_discarded_total{reason}`,
//! `radius_request_duration_seconds` (histogram, receipt to reply),
//! `radius_in_flight` and `radius_reply_cache_entries` (gauges),
//! `radius_reply_cache_evicted_total` (replies pushed out of a full cache
//! before their 30 s),
//! `radius_upstream_total{result}`; datagrams from no client count as
//! `radius_discarded_total{client="_unknown",reason="unknown_client"}`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::protocol::{Op, Status};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the
/// same handle). If another recorder is already installed, metrics go there
/// and the returned handle renders an empty page.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets(&[
                        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5,
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                    ])
                    .expect("static, non-empty buckets")
                    // Writes per group commit: a count, not seconds.
                    .set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            "watchword_store_batch_ops".into(),
                        ),
                        &[
                            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 8192.0,
                        ],
                    )
                    .expect("static, non-empty buckets")
                    // RADIUS replies include held calls (up to a minute).
                    .set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            "watchword_radius_request_duration_seconds".into(),
                        ),
                        &[
                            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
                            0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                        ],
                    )
                    .expect("static, non-empty buckets")
            };
            let handle = builder()
                .install_recorder()
                .unwrap_or_else(|_| builder().build_recorder().handle());
            describe_all();
            handle
        })
        .clone()
}

/// Gives every metric its HELP text (Prometheus `# HELP`). Called once the
/// recorder is installed; a metric added to the code needs its line here
/// (a test fails on any series without one).
pub fn describe_all() {
    metrics::describe_counter!(
        "watchword_audit_dropped_total",
        "Audit records dropped because the audit buffer was full."
    );
    metrics::describe_counter!(
        "watchword_audit_write_errors_total",
        "Audit log writes that failed."
    );
    metrics::describe_counter!(
        "watchword_audit_archive_errors_total",
        "Compressions, scans and deletions of rotated audit files that failed."
    );
    metrics::describe_counter!(
        "watchword_audit_compressed_files_total",
        "Rotated audit files compressed to .zst."
    );
    metrics::describe_counter!(
        "watchword_audit_deleted_files_total",
        "Rotated audit files deleted, by reason: age (max_age_days), budget (max_total_bytes), count (max_files)."
    );
    metrics::describe_counter!(
        "watchword_audit_deleted_early_total",
        "Audit records (lines, not files) deleted by the disk budget or max_files while younger than min_age_hours: the trail is missing them."
    );
    metrics::describe_gauge!(
        "watchword_audit_disk_bytes",
        "Bytes the audit trail holds on disk: the current file and the rotated files."
    );
    metrics::describe_counter!(
        "watchword_audit_syslog_sent_total",
        "Audit records sent to the syslog daemon."
    );
    metrics::describe_counter!(
        "watchword_audit_syslog_dropped_total",
        "Audit records not forwarded to syslog (the file has them), by reason: full (queue full) or error (send failed)."
    );
    metrics::describe_gauge!(
        "watchword_calls_in_progress",
        "Confirmation calls ringing or with an outcome not yet taken."
    );
    metrics::describe_gauge!(
        "watchword_carrier_breaker_state",
        "Each carrier's circuit breaker: 0 closed, 1 half-open, 2 open."
    );
    metrics::describe_gauge!(
        "watchword_carrier_queue_depth",
        "Messages queued for each carrier."
    );
    metrics::describe_histogram!(
        "watchword_carrier_send_seconds",
        "Time of one send to a carrier, seconds."
    );
    metrics::describe_counter!(
        "watchword_carrier_sends_total",
        "Sends to carriers, by carrier and result."
    );
    metrics::describe_counter!(
        "watchword_challenges_cancelled_total",
        "Challenges cancelled (a declined call, a failed registration)."
    );
    metrics::describe_counter!(
        "watchword_challenges_capacity_refused_total",
        "ISSUEs refused because the table was full."
    );
    metrics::describe_counter!(
        "watchword_challenges_expired_total",
        "Challenges that expired unanswered."
    );
    metrics::describe_counter!(
        "watchword_challenges_forgotten_total",
        "Ended challenges whose tombstones were dropped."
    );
    metrics::describe_counter!("watchword_challenges_issued_total", "Challenges issued.");
    metrics::describe_gauge!(
        "watchword_challenges_pending",
        "Challenges pending in the table, counted exactly at each scrape and every 5 s."
    );
    metrics::describe_counter!(
        "watchword_challenges_superseded_total",
        "Challenges replaced by a newer one of the same subject."
    );
    metrics::describe_gauge!(
        "watchword_challenges_tombstones",
        "Ended challenges kept to answer late verifies."
    );
    metrics::describe_counter!(
        "watchword_checks_total",
        "CHECK decisions, by result and reason."
    );
    metrics::describe_gauge!("watchword_connections", "Protocol connections open.");
    metrics::describe_counter!(
        "watchword_connections_total",
        "Protocol connections accepted."
    );
    metrics::describe_counter!(
        "watchword_delivery_outcomes_total",
        "Messages that ended delivered or failed, by outcome."
    );
    metrics::describe_gauge!("watchword_directory_users", "Users in the directory.");
    metrics::describe_gauge!("watchword_limiter_keys", "Keys held by the rate limiters.");
    metrics::describe_counter!(
        "watchword_pushes_lagged_total",
        "Outbox pushes a slow subscriber missed."
    );
    metrics::describe_counter!(
        "watchword_pushes_total",
        "Outbox pushes sent to subscribers."
    );
    metrics::describe_counter!(
        "watchword_rate_limited_total",
        "Requests refused by a rate limit, by limit."
    );
    metrics::describe_histogram!(
        "watchword_request_duration_seconds",
        "Protocol request service time, seconds, by op."
    );
    metrics::describe_counter!(
        "watchword_requests_total",
        "Protocol requests, by op and status."
    );
    metrics::describe_gauge!(
        "watchword_router_queue_depth",
        "Messages waiting in the delivery router."
    );
    metrics::describe_histogram!(
        "watchword_store_batch_ops",
        "Directory writes per group commit."
    );
    metrics::describe_counter!(
        "watchword_store_commit_failures_total",
        "Directory store commits that failed (the store then refuses writes)."
    );
    metrics::describe_histogram!(
        "watchword_store_commit_seconds",
        "Time of one directory store commit, seconds (fsync included)."
    );
    metrics::describe_counter!("watchword_store_commits_total", "Directory store commits.");
    metrics::describe_gauge!(
        "watchword_store_queued_ops",
        "Directory writes queued for the disk."
    );
    metrics::describe_counter!("watchword_verify_total", "VERIFY outcomes.");
    metrics::describe_counter!(
        "watchword_simulated_receipts_lost_total",
        "Delivery receipts the simulated carriers lost on purpose."
    );
    metrics::describe_counter!(
        "watchword_radius_requests_total",
        "RADIUS datagrams from each client."
    );
    metrics::describe_counter!(
        "watchword_radius_accepts_total",
        "RADIUS Access-Accepts sent, by client."
    );
    metrics::describe_counter!(
        "watchword_radius_rejects_total",
        "RADIUS Access-Rejects sent, by client."
    );
    metrics::describe_counter!(
        "watchword_radius_challenges_total",
        "RADIUS Access-Challenges sent, by client."
    );
    metrics::describe_counter!(
        "watchword_radius_resent_total",
        "RADIUS retransmissions answered from the reply cache, by client."
    );
    metrics::describe_counter!(
        "watchword_radius_discarded_total",
        "RADIUS datagrams discarded, by client and reason."
    );
    metrics::describe_histogram!(
        "watchword_radius_request_duration_seconds",
        "RADIUS receipt to reply, seconds, by client."
    );
    metrics::describe_gauge!(
        "watchword_radius_in_flight",
        "RADIUS requests waiting (held calls, token writes, upstream), by client."
    );
    metrics::describe_gauge!(
        "watchword_radius_reply_cache_entries",
        "RADIUS reply cache entries, by client."
    );
    metrics::describe_counter!(
        "watchword_radius_reply_cache_evicted_total",
        "RADIUS replies pushed out of a full cache before their 30 s."
    );
    metrics::describe_counter!(
        "watchword_radius_upstream_total",
        "Upstream RADIUS verdicts, by client and result."
    );
    metrics::describe_counter!(
        "watchword_radius_upstream_discarded_total",
        "Upstream RADIUS replies discarded, by reason."
    );
    metrics::describe_counter!(
        "watchword_radius_send_errors_total",
        "RADIUS replies the socket refused to send."
    );
    metrics::describe_gauge!(
        "watchword_sender_capacity_per_second",
        "SMS a second the senders of each sender pool (label pool, its country) or \
         carrier's own senders (label carrier, for countries without a pool) may send \
         together: senders x each one's rate, from the configuration. More queue and \
         arrive late. No series where the rate is unlimited."
    );
    metrics::describe_gauge!(
        "watchword_senders",
        "Senders (short codes, numbers) of each sender pool (label pool) or carrier's \
         own set (label carrier)."
    );
}

/// One set of SMS senders and what it may send: a country's sender pool, or
/// a carrier's own senders (SMS to countries without a pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderCapacity {
    /// `("pool", country)` or `("carrier", name)`: the series' label.
    pub label: (&'static str, String),
    /// Senders in the set.
    pub senders: usize,
    /// Each sender's own rate, messages a second (0 = unlimited).
    pub rate_per_s: u32,
}

impl SenderCapacity {
    /// Messages a second the set may send together; `None` when unlimited.
    pub fn per_second(&self) -> Option<u64> {
        (self.rate_per_s > 0).then(|| self.senders as u64 * u64::from(self.rate_per_s))
    }
}

/// The SMS sender sets of `router`, as the router paces them: each
/// country's pool (one per country, the last written wins, as in the
/// router), then each SMS carrier's own senders.
pub fn sender_capacities(router: &watchword_engine::delivery::RouterConfig) -> Vec<SenderCapacity> {
    let mut out: Vec<SenderCapacity> = Vec::new();
    for p in &router.senders.pools {
        let country = p.country.to_ascii_uppercase();
        out.retain(|c| c.label.1 != country);
        out.push(SenderCapacity {
            label: ("pool", country),
            senders: p.senders.len(),
            rate_per_s: p.rate_per_s,
        });
    }
    for c in &router.carriers {
        if c.channels.contains(&watchword_engine::Channel::Sms) {
            out.push(SenderCapacity {
                label: ("carrier", c.name.clone()),
                senders: c.senders.len(),
                rate_per_s: c.sender_rate_per_s,
            });
        }
    }
    out
}

/// Sets `watchword_sender_capacity_per_second` and `watchword_senders` from
/// the router's configuration (once, at start).
pub(crate) fn publish_sender_capacity(router: &watchword_engine::delivery::RouterConfig) {
    for c in sender_capacities(router) {
        let (key, value) = (c.label.0, c.label.1.clone());
        metrics::gauge!("watchword_senders", key => value.clone(), "channel" => "sms")
            .set(c.senders as f64);
        if let Some(n) = c.per_second() {
            metrics::gauge!("watchword_sender_capacity_per_second", key => value, "channel" => "sms")
                .set(n as f64);
        }
    }
}

/// Handles for the per-request series, registered once per server so the hot
/// path does no registry lookup. Built after the recorder is installed.
pub(crate) struct RequestMetrics {
    /// `requests_total`, indexed by op slot x 12 + status.
    counters: Vec<metrics::Counter>,
    /// `request_duration_seconds`, indexed by op slot.
    latency: Vec<metrics::Histogram>,
}

fn op_slot(op: Option<Op>) -> usize {
    op.and_then(|o| Op::ALL.iter().position(|x| *x == o))
        .unwrap_or(Op::ALL.len())
}

impl RequestMetrics {
    /// Registers every (op, status) series.
    pub(crate) fn new() -> Self {
        let names: Vec<&'static str> = Op::ALL
            .iter()
            .map(|o| o.name())
            .chain(std::iter::once("unknown"))
            .collect();
        let mut counters = Vec::with_capacity(names.len() * Status::ALL.len());
        for op in &names {
            for st in Status::ALL {
                counters.push(metrics::counter!(
                    "watchword_requests_total", "op" => *op, "status" => st.name()
                ));
            }
        }
        let latency = names
            .iter()
            .map(|op| metrics::histogram!("watchword_request_duration_seconds", "op" => *op))
            .collect();
        Self { counters, latency }
    }

    /// Counts one answered request, and its processing time when measured.
    pub(crate) fn request(&self, op: Option<Op>, status: Status, elapsed: Option<Duration>) {
        let slot = op_slot(op);
        let i = slot * Status::ALL.len() + usize::from(status.code());
        if let Some(c) = self.counters.get(i) {
            c.increment(1);
        }
        if let (Some(e), Some(h)) = (elapsed, self.latency.get(slot)) {
            h.record(e.as_secs_f64());
        }
    }
}

/// Why the RADIUS server discarded a datagram without answering (label
/// `reason` of `watchword_radius_discarded_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RadiusDiscard {
    /// The source address matches no configured client.
    UnknownClient,
    /// Not a well-formed RADIUS packet (lengths, size, User-Password length).
    Malformed,
    /// A well-formed packet other than an Access-Request.
    UnsupportedCode,
    /// A Message-Authenticator that does not verify.
    BadAuthenticator,
    /// No Message-Authenticator where one is required (the client requires
    /// it, or the request carries Proxy-State).
    MissingMessageAuthenticator,
    /// A retransmission of a request still being processed.
    Duplicate,
    /// The client's reply cache or in-flight budget is full (or every
    /// upstream Identifier is in use).
    Full,
}

impl RadiusDiscard {
    /// Every reason, in label order.
    pub const ALL: [RadiusDiscard; 7] = [
        RadiusDiscard::UnknownClient,
        RadiusDiscard::Malformed,
        RadiusDiscard::UnsupportedCode,
        RadiusDiscard::BadAuthenticator,
        RadiusDiscard::MissingMessageAuthenticator,
        RadiusDiscard::Duplicate,
        RadiusDiscard::Full,
    ];

    /// The label.
    pub const fn label(self) -> &'static str {
        match self {
            RadiusDiscard::UnknownClient => "unknown_client",
            RadiusDiscard::Malformed => "malformed",
            RadiusDiscard::UnsupportedCode => "unsupported_code",
            RadiusDiscard::BadAuthenticator => "bad_authenticator",
            RadiusDiscard::MissingMessageAuthenticator => "missing_message_authenticator",
            RadiusDiscard::Duplicate => "duplicate",
            RadiusDiscard::Full => "full",
        }
    }
}

/// The `client` label of datagrams from no configured client.
pub const RADIUS_UNKNOWN_CLIENT: &str = "_unknown";

/// One RADIUS client's series, registered once when the server starts so
/// the per-packet path does no registry look-up.
pub(crate) struct RadiusClientMetrics {
    pub(crate) requests: metrics::Counter,
    pub(crate) accepts: metrics::Counter,
    pub(crate) rejects: metrics::Counter,
    pub(crate) challenges: metrics::Counter,
    pub(crate) resent: metrics::Counter,
    discarded: Vec<metrics::Counter>,
    pub(crate) latency: metrics::Histogram,
    pub(crate) in_flight: metrics::Gauge,
    pub(crate) cache_entries: metrics::Gauge,
    pub(crate) cache_evicted: metrics::Counter,
    upstream: Vec<metrics::Counter>,
}

/// The upstream verdict labels, in [`RadiusClientMetrics::upstream`] order.
const UPSTREAM_RESULTS: [&str; 6] = ["accept", "reject", "other", "timeout", "busy", "error"];

impl RadiusClientMetrics {
    /// Registers the series of the client called `client`.
    pub(crate) fn new(client: &str) -> Self {
        let name = client.to_owned();
        let c = |metric: &'static str| metrics::counter!(metric, "client" => name.clone());
        Self {
            requests: c("watchword_radius_requests_total"),
            accepts: c("watchword_radius_accepts_total"),
            rejects: c("watchword_radius_rejects_total"),
            challenges: c("watchword_radius_challenges_total"),
            resent: c("watchword_radius_resent_total"),
            discarded: RadiusDiscard::ALL
                .iter()
                .map(|r| match r {
                    // Counted under client "_unknown" only.
                    RadiusDiscard::UnknownClient => metrics::Counter::noop(),
                    _ => metrics::counter!("watchword_radius_discarded_total",
                        "client" => name.clone(), "reason" => r.label()),
                })
                .collect(),
            latency: metrics::histogram!("watchword_radius_request_duration_seconds", "client" => name.clone()),
            in_flight: metrics::gauge!("watchword_radius_in_flight", "client" => name.clone()),
            cache_entries: metrics::gauge!("watchword_radius_reply_cache_entries", "client" => name.clone()),
            cache_evicted: metrics::counter!("watchword_radius_reply_cache_evicted_total", "client" => name.clone()),
            upstream: UPSTREAM_RESULTS
                .iter()
                .map(|r| {
                    metrics::counter!("watchword_radius_upstream_total",
                        "client" => name.clone(), "result" => *r)
                })
                .collect(),
        }
    }

    /// Counts one discarded datagram.
    pub(crate) fn discard(&self, why: RadiusDiscard) {
        if let Some(c) = RadiusDiscard::ALL
            .iter()
            .position(|r| *r == why)
            .and_then(|i| self.discarded.get(i))
        {
            c.increment(1);
        }
    }

    /// Counts one upstream verdict by its label.
    pub(crate) fn upstream(&self, label: &str) {
        if let Some(c) = UPSTREAM_RESULTS
            .iter()
            .position(|r| *r == label)
            .and_then(|i| self.upstream.get(i))
        {
            c.increment(1);
        }
    }
}

/// The counter of datagrams from addresses that match no RADIUS client.
pub(crate) fn radius_unknown_client() -> metrics::Counter {
    metrics::counter!("watchword_radius_discarded_total",
        "client" => RADIUS_UNKNOWN_CLIENT, "reason" => RadiusDiscard::UnknownClient.label())
}

pub(crate) fn connection_opened() {
    metrics::gauge!("watchword_connections").increment(1.0);
    metrics::counter!("watchword_connections_total").increment(1);
}

pub(crate) fn connection_closed() {
    metrics::gauge!("watchword_connections").decrement(1.0);
}

pub(crate) fn push() {
    metrics::counter!("watchword_pushes_total").increment(1);
}

pub(crate) fn push_lagged(n: u64) {
    metrics::counter!("watchword_pushes_lagged_total").increment(n);
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `stop` fires. `ready`
/// says whether `/readyz` answers 200. `refresh` brings the gauges that are
/// counted rather than kept (pending challenges, users, queues) up to date:
/// every 5 s, and before each scrape so a scrape reads exact values.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    ready: Arc<AtomicBool>,
    refresh: Arc<dyn Fn() + Send + Sync>,
    stop: CancellationToken,
) {
    let upkeep_refresh = Arc::clone(&refresh);
    let upkeep_handle = handle.clone();
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = upkeep_stop.cancelled() => return,
            }
            upkeep_handle.run_upkeep();
            upkeep_refresh();
        }
    });
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let handle = handle.clone();
        let ready = ready.clone();
        let refresh = Arc::clone(&refresh);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (code, body) = match req.uri().path() {
                    "/metrics" => {
                        refresh();
                        (StatusCode::OK, handle.render())
                    }
                    "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
                    "/readyz" if ready.load(Ordering::Relaxed) => {
                        (StatusCode::OK, "ready\n".to_owned())
                    }
                    "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned()),
                    _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
                };
                let resp = Response::builder()
                    .status(code)
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(Full::new(Bytes::from(body)));
                async move { Ok::<_, Infallible>(resp.unwrap_or_default()) }
            });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchword_engine::Channel;
    use watchword_engine::delivery::{CarrierConfig, RouterConfig, SenderPool};

    #[test]
    fn sender_capacity_is_senders_times_rate_per_pool_and_carrier() {
        let mut r = RouterConfig::development();
        let got: Vec<_> = sender_capacities(&r)
            .iter()
            .map(|c| (c.label.0, c.label.1.clone(), c.senders, c.per_second()))
            .collect();
        assert_eq!(
            got,
            [
                ("pool", "US".to_owned(), 4, Some(400)),
                ("pool", "CA".to_owned(), 2, Some(200)),
                ("carrier", "sim-primary".to_owned(), 2, Some(2)),
                ("carrier", "sim-backup".to_owned(), 2, Some(2)),
            ]
        );
        // A later pool of the same country replaces it (as in the router); a
        // rate of 0 is unlimited; a carrier without SMS has no SMS senders.
        r.senders.pools.push(SenderPool {
            country: "us".into(),
            senders: vec!["1".into(); 3],
            rate_per_s: 0,
        });
        r.carriers.push(CarrierConfig {
            name: "voice-only".into(),
            channels: vec![Channel::Voice],
            ..CarrierConfig::default()
        });
        let caps = sender_capacities(&r);
        let us = caps.iter().find(|c| c.label.1 == "US").unwrap();
        assert_eq!((us.senders, us.per_second()), (3, None));
        assert_eq!(caps.iter().filter(|c| c.label.1 == "US").count(), 1);
        assert!(!caps.iter().any(|c| c.label.1 == "voice-only"));
    }
}
