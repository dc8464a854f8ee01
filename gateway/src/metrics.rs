//! Prometheus metrics and the health endpoints, served over HTTP/1 on
//! `metrics_listen`: `/metrics` (text format), `/healthz` (the process is up),
//! `/readyz` (accepting work; 503 while starting or draining).
//!
//! Metric names (all prefixed `watchword_`): `requests_total{op,status}`,
//! `request_duration_seconds{op}` (histogram of the time to decode, execute
//! and encode one request; not the time it waited in buffers), `connections` (gauge),
//! `connections_total`, `pushes_total`, `pushes_lagged_total`,
//! `pending_challenges` (gauge), `audit_dropped_total`, plus whatever the
//! engine records (carrier figures). Labels are fixed small sets: never a
//! tenant-chosen or user-chosen string, never a code, key or destination.

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
            };
            builder()
                .install_recorder()
                .unwrap_or_else(|_| builder().build_recorder().handle())
        })
        .clone()
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
/// says whether `/readyz` answers 200. `pending` is polled every few seconds
/// for the `watchword_pending_challenges` gauge.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    ready: Arc<AtomicBool>,
    pending: Arc<dyn Fn() -> Option<usize> + Send + Sync>,
    stop: CancellationToken,
) {
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
            if let Some(n) = pending() {
                metrics::gauge!("watchword_pending_challenges").set(n as f64);
            }
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
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (code, body) = match req.uri().path() {
                    "/metrics" => (StatusCode::OK, handle.render()),
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
