//! Wires a whole gateway from a [`Config`]: the audit log, the engine, the
//! protocol listener (optionally TLS), the metrics listener, the HTTP API,
//! the RADIUS server, and the shutdown sequence.
//!
//! Shutdown order: stop accepting and answer SHUTTING_DOWN to new ISSUEs;
//! keep serving open connections while the engine drains queued deliveries
//! (up to `shutdown_deadline_s`); then let every connection answer what it has
//! read, flush and close; then flush and fsync the audit log. This module must
//! never exit before the audit log is flushed, and never log a key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use watchword_engine::delivery::{TenantDelivery, normalize};
use watchword_engine::{
    Channel, Engine, EngineConfig, EventSink, NullSink, SystemClock, TenantPolicy,
};

use watchword_engine::directory::Directory;
use watchword_engine::secret::MasterKey;
use watchword_engine::store::{SqliteStore, StoreOptions};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::server::{Shutdown, accept_loop, graceful_shutdown};

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    /// The protocol listener's address.
    pub addr: SocketAddr,
    /// The metrics listener's address.
    pub metrics_addr: SocketAddr,
    /// The HTTP API's address, when it is on.
    pub http_addr: Option<SocketAddr>,
    /// The RADIUS server's UDP address, when it is on.
    pub radius_addr: Option<SocketAddr>,
    /// The engine (for tools and tests).
    pub engine: Engine,
    signals: Shutdown,
    done: JoinHandle<()>,
}

impl Running {
    /// Starts the graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        self.signals.shutdown.cancel();
    }

    /// Waits until the shutdown sequence has finished.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// The engine configuration a gateway configuration describes.
pub fn engine_config(cfg: &Config) -> EngineConfig {
    EngineConfig {
        table: cfg.table.clone(),
        router: cfg.router.clone(),
        tenants: cfg
            .tenants
            .iter()
            .map(|t| TenantPolicy {
                name: t.name.clone(),
                code_len: t.code_len,
                ttl_s: t.ttl_s,
                max_attempts: t.max_attempts,
                default_country: t.default_country.clone(),
                operator_assistance: t.operator_assistance,
                locale: t.locale.clone(),
                service_name: t.service_name.clone(),
                contact_hold_hours: t.contact_hold_hours,
                pin_mode: watchword_engine::PinMode::parse(&t.pin_mode).unwrap_or_default(),
                pin_length: t.pin_length,
                helpdesk_order: t
                    .helpdesk_order
                    .iter()
                    .filter_map(|k| watchword_engine::directory::MethodType::parse(k))
                    .collect(),
                verify_per_s: t.verify_per_s,
                check_per_s: t.check_per_s,
                verify_gap_ms: t.verify_gap_ms,
                tokens: watchword_engine::directory::TokenPolicy {
                    window: t.token_window,
                    lookahead: t.hotp_lookahead,
                    max_failures: t.token_max_failures,
                },
            })
            .collect(),
    }
}

/// How `serve` was asked to start, beyond the configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartOptions {
    /// Delete the restart snapshot unread and start without it.
    pub discard_snapshot: bool,
}

/// Validates `cfg`, binds both listeners, starts everything, and returns. Must
/// be called inside a tokio runtime. The error says what failed.
pub async fn start(cfg: Config) -> Result<Running, String> {
    start_with(cfg, StartOptions::default()).await
}

/// [`start`], with options.
pub async fn start_with(cfg: Config, opts: StartOptions) -> Result<Running, String> {
    let errors = cfg.validate();
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(list.join("; "));
    }
    // Before the table, the queues and the connections take their memory:
    // every 2 MiB they grew into stalled a worker while the kernel zeroed it
    // (docs/operations.md, "Memory pages"). Redis turns them off
    // for the same reason.
    if !cfg.server.transparent_huge_pages
        && let Err(e) = watchword_engine::memory::transparent_huge_pages_off()
    {
        tracing::warn!(error = %e, "could not turn transparent huge pages off");
    }
    let listener = TcpListener::bind(&cfg.server.listen)
        .await
        .map_err(|e| format!("server.listen {}: {e}", cfg.server.listen))?;
    let metrics_listener = TcpListener::bind(&cfg.server.metrics_listen)
        .await
        .map_err(|e| format!("server.metrics_listen {}: {e}", cfg.server.metrics_listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let metrics_addr = metrics_listener.local_addr().map_err(|e| e.to_string())?;
    let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(c), Some(k)) => Some(crate::tls::server_acceptor(c, k)?),
        _ => None,
    };
    let http_listener = if cfg.http.listen.is_empty() {
        None
    } else {
        Some(
            TcpListener::bind(&cfg.http.listen)
                .await
                .map_err(|e| format!("http.listen {}: {e}", cfg.http.listen))?,
        )
    };
    let http_addr = match &http_listener {
        Some(l) => Some(l.local_addr().map_err(|e| e.to_string())?),
        None => None,
    };
    let radius_socket = bind_radius(&cfg).await?;
    let radius_addr = match &radius_socket {
        Some(s) => Some(s.local_addr().map_err(|e| e.to_string())?),
        None => None,
    };
    // The recorder first: the store and the engine register their metric
    // handles when they start, and handles taken before the recorder exists
    // count nowhere.
    let handle = crate::metrics::install();
    crate::metrics::publish_sender_capacity(&cfg.router);
    let key = if cfg.storage.path.as_os_str().is_empty() {
        None
    } else {
        let c = cfg.clone();
        let key = tokio::task::spawn_blocking(move || master_key(&c))
            .await
            .map_err(|e| format!("loading the master key failed: {e}"))??;
        Some(Arc::new(key))
    };
    let directory = open_directory(&cfg, key.clone()).await?;
    let snapshot_path = crate::snapshot::path(&cfg).filter(|_| key.is_some());
    let snapshot = match (&snapshot_path, &key) {
        (Some(path), Some(key)) => {
            let (path, key) = (path.clone(), key.clone());
            let discard = opts.discard_snapshot;
            tokio::task::spawn_blocking(move || crate::snapshot::load(&path, &key, discard))
                .await
                .map_err(|e| format!("reading the restart snapshot failed: {e}"))??
        }
        _ => {
            tracing::warn!(
                "storage.path is empty or storage.snapshot is off: pending challenges are lost at every restart"
            );
            None
        }
    };
    let audit = if cfg.audit.enabled {
        let names = cfg.tenants.iter().map(|t| t.name.clone()).collect();
        Some(
            AuditLog::open(&cfg.audit, &cfg.server.name, &addr.ip().to_string(), names)
                .map_err(|e| format!("audit.path {}: {e}", cfg.audit.path.display()))?,
        )
    } else {
        None
    };
    let sink: Arc<dyn EventSink> = match &audit {
        Some(a) => a.clone(),
        None => Arc::new(NullSink),
    };
    let (engine, restored) = Engine::start_restoring(
        engine_config(&cfg),
        SystemClock::shared(),
        sink.clone(),
        directory,
        snapshot,
    )?;
    if let Some(r) = restored {
        let c = &r.challenges;
        tracing::info!(
            written_at_ms = r.written_at_ms,
            pending = c.pending,
            tombstones = c.tombstones,
            expired_meanwhile = c.expired,
            dropped_unknown_tenant = c.dropped_unknown_tenant,
            dropped_moved_tenant = c.dropped_moved_tenant,
            limiter_keys = r.limiter_keys,
            registrations = r.registrations,
            "restart snapshot loaded"
        );
        if !r.limiters_set_aside.is_empty() {
            tracing::warn!(limits = ?r.limiters_set_aside, "these limits' windows were not restored (the limit is gone, changed kind, or the tenants were reordered)");
        }
        if let Some(n) = r.shards_from_snapshot {
            tracing::warn!(
                shards = n,
                "table.shards follows the snapshot's for this run (ids carry their shard); the configured count applies from the next start"
            );
        }
        if let Some(path) = &snapshot_path {
            crate::snapshot::remove(path)?;
        }
    }
    // Load the phone-number metadata now (process-wide, once), so the first
    // ISSUE does not pay for it (about a second in debug builds).
    let _ = tokio::task::spawn_blocking(|| {
        let _ = normalize(Channel::Sms, "+14255550100", &TenantDelivery::default());
    })
    .await;
    let ready = Arc::new(AtomicBool::new(true));
    let metrics_stop = CancellationToken::new();
    let pending_engine = engine.clone();
    let store_ready = ready.clone();
    tokio::spawn(crate::metrics::serve(
        metrics_listener,
        handle,
        ready.clone(),
        // Read every 5 s: the pending challenges, and the directory's gauges.
        // A store that failed a commit takes no more writes until a restart:
        // the node turns unready (for good) so that traffic goes elsewhere.
        Arc::new(move || {
            let e = &pending_engine;
            if e.directory().store_failed() && store_ready.swap(false, Ordering::Relaxed) {
                tracing::error!(
                    "the directory store failed a commit: writes are refused and /readyz answers 503 until a restart"
                );
            }
            metrics::gauge!("watchword_directory_users").set(e.directory().len() as f64);
            metrics::gauge!("watchword_store_queued_ops").set(e.directory().store_queued() as f64);
            metrics::gauge!("watchword_calls_in_progress").set(e.calls().len() as f64);
            e.table().publish_gauges();
        }),
        metrics_stop.clone(),
    ));
    let signals = Shutdown::default();
    let tracker = TaskTracker::new();
    if let Some(socket) = radius_socket {
        let settings = crate::radius::server::RadiusSettings::from_config(&cfg.radius, |name| {
            engine.tenant_id(name)
        })?;
        let server = crate::radius::server::RadiusServer::new(
            socket,
            settings,
            engine.clone(),
            sink.clone(),
            signals.close.clone(),
        )
        .await?;
        tracker.spawn(server.run(signals.clone()));
    }
    let http_stop = CancellationToken::new();
    if let Some(l) = http_listener {
        let state = Arc::new(crate::http::ApiState::new(
            &cfg,
            engine.clone(),
            ready.clone(),
        ));
        tokio::spawn(crate::http::serve(
            l,
            tls.clone(),
            crate::http::router(state),
            http_stop.clone(),
            tracker.clone(),
        ));
    }
    tokio::spawn(accept_loop(
        listener,
        cfg.server_settings(),
        tls,
        engine.clone(),
        signals.clone(),
        tracker.clone(),
    ));
    tracing::info!(%addr, %metrics_addr, http = ?http_addr, radius = ?radius_addr, tls = cfg.server.tls_cert.is_some(), "watchword gateway listening");
    let deadline = Duration::from_secs(cfg.server.shutdown_deadline_s);
    let done = {
        let engine = engine.clone();
        let signals = signals.clone();
        tokio::spawn(async move {
            signals.shutdown.cancelled().await;
            tracing::info!("shutting down: no new connections, ISSUE answers SHUTTING_DOWN");
            ready.store(false, Ordering::Relaxed);
            // Held HTTP requests finish (a CHECK on a call: 25 s at most),
            // new connections are refused; the tracker waits for both.
            http_stop.cancel();
            graceful_shutdown(&engine, &signals, &tracker, deadline).await;
            if let (Some(path), Some(key)) = (snapshot_path, key) {
                let engine = engine.clone();
                let written = tokio::task::spawn_blocking(move || {
                    crate::snapshot::write(&engine, &key, &path)
                })
                .await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "the pending challenges are lost"),
                    Err(e) => tracing::error!(error = %e, "writing the restart snapshot failed"),
                }
            }
            tracing::info!("connections closed; flushing the audit log");
            if let Some(a) = audit {
                let _ = tokio::task::spawn_blocking(move || a.close()).await;
            }
            metrics_stop.cancel();
            tracing::info!("shutdown complete");
        })
    };
    Ok(Running {
        addr,
        metrics_addr,
        http_addr,
        radius_addr,
        engine,
        signals,
        done,
    })
}

/// Binds the RADIUS socket when `radius.listen` is set. In the development
/// profile an address already in use (another local gateway, or a
/// FreeRADIUS) is logged and RADIUS stays off; in production it is an error.
async fn bind_radius(cfg: &Config) -> Result<Option<tokio::net::UdpSocket>, String> {
    let listen = &cfg.radius.listen;
    if listen.is_empty() {
        return Ok(None);
    }
    match tokio::net::UdpSocket::bind(listen).await {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if cfg.server.profile == crate::config::Profile::Development
                && e.kind() == std::io::ErrorKind::AddrInUse =>
        {
            tracing::error!(
                error = %e,
                %listen,
                "development profile: the RADIUS address is taken; RADIUS is OFF for this run"
            );
            Ok(None)
        }
        Err(e) => Err(format!("radius.listen {listen}: {e}")),
    }
}

/// The master key `cfg` names; in the development profile without one, a key
/// made (once) as `master.key` inside the data directory, with a warning.
pub fn master_key(cfg: &Config) -> Result<MasterKey, String> {
    let st = &cfg.storage;
    match &st.master_key {
        Some(path) => {
            MasterKey::load(path).map_err(|e| format!("storage.master_key {}: {e}", path.display()))
        }
        None => {
            let path = st.path.join("master.key");
            if path.exists() {
                MasterKey::load(&path).map_err(|e| format!("{}: {e}", path.display()))
            } else {
                std::fs::create_dir_all(&st.path)
                    .map_err(|e| format!("storage.path {}: {e}", st.path.display()))?;
                tracing::warn!(
                    path = %path.display(),
                    "development profile: made a master key INSIDE the data directory; \
                     a copy of that directory reveals every secret. In production set \
                     storage.master_key to a file made by `watchword keygen` elsewhere"
                );
                MasterKey::create(&path).map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }
}

/// Opens the store and loads the directory (in memory only when
/// `storage.path` is empty).
async fn open_directory(cfg: &Config, key: Option<Arc<MasterKey>>) -> Result<Directory, String> {
    let names: Vec<String> = cfg.tenants.iter().map(|t| t.name.clone()).collect();
    let Some(key) = key.filter(|_| !cfg.storage.path.as_os_str().is_empty()) else {
        tracing::warn!("storage.path is empty: users and methods live in memory only");
        return Ok(Directory::in_memory(names));
    };
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let opts = StoreOptions {
            queue_ops: cfg.storage.queue_ops,
            ..StoreOptions::default()
        };
        let store = SqliteStore::open(&cfg.storage.path, &key, opts)
            .map_err(|e| format!("storage.path {}: {e}", cfg.storage.path.display()))?;
        let (dir, report) = Directory::load(names, Arc::new(store), key)?;
        tracing::info!(
            users = report.users,
            methods = report.methods,
            tokens = report.tokens,
            skipped_unknown_tenant = report.skipped_unknown_tenant,
            ms = started.elapsed().as_millis() as u64,
            "directory loaded"
        );
        Ok(dir)
    })
    .await
    .map_err(|e| format!("loading the directory failed: {e}"))?
}
