//! The store's writer thread: the only owner of the write connection. It takes
//! one queued submit, drains whatever else is queued (group commit), writes the
//! lot in one `BEGIN IMMEDIATE ... COMMIT`, and answers the submits' tickets
//! only after `COMMIT` has returned (with `synchronous=FULL`, after the WAL
//! reached the disk).
//!
//! It must never acknowledge a write before its commit, never write anything
//! after a failed commit (the caller's memory and the disk would part ways),
//! and never log a stored value: a failure is logged with SQLite's message,
//! which names tables and constraints, not values.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam::channel::Receiver;
use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::schema::{
    DELETE_METHOD, DELETE_TOKEN, DELETE_USER, PIN_PROGRESS, PUT_METHOD, PUT_PIN, PUT_TOKEN,
    PUT_USER, TOKEN_PROGRESS,
};
use super::{StoreError, StoreOp};

/// One submit on its way to the writer.
pub(crate) struct Request {
    /// The ops, applied in order.
    pub(crate) ops: Vec<StoreOp>,
    /// What the submit counts against the queue bound (`max(1, ops.len())`).
    pub(crate) cost: usize,
    /// Where the outcome goes.
    pub(crate) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// State the store's handle and its writer share.
#[derive(Default)]
pub(crate) struct Shared {
    /// Ops admitted and not yet answered (queued or in the batch being committed).
    pub(crate) queued: AtomicUsize,
    /// Set once a commit failed: every later submit is refused.
    pub(crate) failed: AtomicBool,
    /// Successful commits since open.
    pub(crate) commits: AtomicU64,
}

/// The reason given to submits refused after a failed commit.
pub(crate) const FAILED_EARLIER: &str =
    "an earlier commit failed, the store takes no more writes until restart";

struct Metrics {
    commits: metrics::Counter,
    failures: metrics::Counter,
    commit_seconds: metrics::Histogram,
    batch_ops: metrics::Histogram,
}

/// The writer's loop: runs until every sender is gone and the queue is empty.
pub(crate) fn run(
    conn: Connection,
    rx: Receiver<Request>,
    shared: Arc<Shared>,
    max_batch_ops: usize,
) {
    let metrics = Metrics {
        commits: metrics::counter!("watchword_store_commits_total"),
        failures: metrics::counter!("watchword_store_commit_failures_total"),
        commit_seconds: metrics::histogram!("watchword_store_commit_seconds"),
        batch_ops: metrics::histogram!("watchword_store_batch_ops"),
    };
    let mut batch: Vec<Request> = Vec::new();
    // Blocks for one submit; ends when the store is dropped and all is drained.
    while let Ok(first) = rx.recv() {
        let mut ops = first.ops.len();
        batch.push(first);
        // The bound is checked before taking a submit, so a batch can exceed
        // it by one submit's ops at most.
        while ops < max_batch_ops {
            match rx.try_recv() {
                Ok(req) => {
                    ops += req.ops.len();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }

        let outcome = if shared.failed.load(Ordering::Acquire) {
            Err(StoreError::Failed(FAILED_EARLIER.to_owned()))
        } else {
            let started = Instant::now();
            match commit(&conn, &batch) {
                Ok(()) => {
                    metrics
                        .commit_seconds
                        .record(started.elapsed().as_secs_f64());
                    metrics.batch_ops.record(ops as f64);
                    metrics.commits.increment(1);
                    shared.commits.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => {
                    metrics.failures.increment(1);
                    tracing::error!(
                        error = %e,
                        submits = batch.len(),
                        ops,
                        "store commit failed; the store takes no more writes until restart"
                    );
                    // Set before any ticket is answered: whoever sees this
                    // failure and submits again is refused.
                    shared.failed.store(true, Ordering::Release);
                    Err(StoreError::Failed(e.to_string()))
                }
            }
        };

        let cost: usize = batch.iter().map(|r| r.cost).sum();
        shared.queued.fetch_sub(cost, Ordering::AcqRel);
        for req in batch.drain(..) {
            // A dropped ticket is no error: its ops are written all the same.
            let _ = req.reply.send(outcome.clone());
        }
    }
}

/// Writes every op of the batch in one transaction. On any error the
/// transaction is rolled back and nothing of the batch remains.
fn commit(conn: &Connection, batch: &[Request]) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = batch
        .iter()
        .flat_map(|req| req.ops.iter())
        .try_for_each(|op| apply(conn, op))
        .and_then(|()| conn.execute_batch("COMMIT"));
    if result.is_err() && !conn.is_autocommit() {
        // Still inside the transaction (a statement failed, or COMMIT failed
        // without rolling back): undo it. If even this fails, the connection
        // is in doubt, but the store refuses every later write anyway.
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

fn apply(conn: &Connection, op: &StoreOp) -> rusqlite::Result<()> {
    match op {
        StoreOp::PutUser(u) => {
            conn.prepare_cached(PUT_USER)?.execute(params![
                u.tenant,
                u.subject,
                u.display_name,
                u.email,
                u.locale,
                u.enabled,
                u.default_method,
                u.created_at_ms,
                u.updated_at_ms,
            ])?;
        }
        StoreOp::DeleteUser { tenant, subject } => {
            conn.prepare_cached(DELETE_USER)?
                .execute(params![tenant, subject])?;
        }
        StoreOp::PutMethod(m) => {
            conn.prepare_cached(PUT_METHOD)?.execute(params![
                m.tenant,
                m.id,
                m.subject,
                m.kind,
                m.destination,
                m.state,
                m.created_at_ms,
                m.confirmed_at_ms,
                m.effective_at_ms,
                m.confirm_deadline_ms,
            ])?;
        }
        StoreOp::DeleteMethod {
            tenant,
            subject,
            id,
        } => {
            conn.prepare_cached(DELETE_METHOD)?
                .execute(params![tenant, id, subject])?;
        }
        StoreOp::PutToken(t) => {
            conn.prepare_cached(PUT_TOKEN)?.execute(params![
                t.tenant,
                t.serial,
                t.subject,
                t.kind,
                t.algorithm,
                t.digits,
                t.period,
                t.secret_sealed,
                t.counter,
                t.last_step,
                t.drift,
                t.failcount,
                t.state,
                t.created_at_ms,
            ])?;
        }
        StoreOp::TokenProgress {
            tenant,
            serial,
            counter,
            last_step,
            drift,
            failcount,
            state,
        } => {
            conn.prepare_cached(TOKEN_PROGRESS)?.execute(params![
                tenant, serial, counter, last_step, drift, failcount, state
            ])?;
        }
        StoreOp::DeleteToken { tenant, serial } => {
            conn.prepare_cached(DELETE_TOKEN)?
                .execute(params![tenant, serial])?;
        }
        StoreOp::PutPin(p) => {
            conn.prepare_cached(PUT_PIN)?.execute(params![
                p.tenant,
                p.subject,
                p.verifier,
                p.length,
                p.failcount,
                p.state,
                p.created_at_ms,
            ])?;
        }
        StoreOp::PinProgress {
            tenant,
            subject,
            failcount,
            state,
        } => {
            conn.prepare_cached(PIN_PROGRESS)?
                .execute(params![tenant, subject, failcount, state])?;
        }
    }
    Ok(())
}
