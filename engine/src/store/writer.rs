//! The store's writer thread: the only owner of the write connection. It takes
//! one queued submit, drains whatever else is queued (group commit), writes the
//! lot in one `BEGIN IMMEDIATE ... COMMIT`, and answers the submits' tickets
//! only after `COMMIT` has returned (with `synchronous=FULL`, after the WAL
//! reached the disk).
//!
//! Tokens' replay state goes to an append-only log (`token_progress`); the
//! writer folds it into `tokens` in chunks of `fold_chunk` rows: when it has
//! been idle for [`IDLE_FOLD_AFTER`], when the log holds `fold_at` rows or
//! more (one chunk after each commit, so a burst never stalls the queue for
//! long), before any write of a whole token (so an older log row can never
//! overwrite it), and all of it at open and at shutdown.
//!
//! It must never acknowledge a write before its commit, never write anything
//! after a failed commit (the caller's memory and the disk would part ways),
//! and never log a stored value: a failure is logged with SQLite's message,
//! which names tables and constraints, not values.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam::channel::{Receiver, RecvTimeoutError};
use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::schema::{
    DELETE_METHOD, DELETE_TOKEN, DELETE_USER, PUT_METHOD, PUT_TOKEN, PUT_USER, TOKEN_LOG_FOLD,
    TOKEN_LOG_SPAN, TOKEN_LOG_TRIM, TOKEN_PROGRESS,
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
    /// Rows in the token log not yet folded into `tokens`.
    pub(crate) token_log_rows: AtomicU64,
}

/// How long the writer waits with nothing to do before folding a chunk of
/// the token log.
pub(crate) const IDLE_FOLD_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// When and how much of the token log the writer folds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FoldPolicy {
    /// Log rows from which a chunk is folded after every commit.
    pub(crate) fold_at: u64,
    /// Rows folded in one transaction.
    pub(crate) fold_chunk: u64,
}

/// The reason given to submits refused after a failed commit.
pub(crate) const FAILED_EARLIER: &str =
    "an earlier commit failed, the store takes no more writes until restart";

struct Metrics {
    commits: metrics::Counter,
    failures: metrics::Counter,
    commit_seconds: metrics::Histogram,
    batch_ops: metrics::Histogram,
    token_log_rows: metrics::Gauge,
}

/// The writer's loop: runs until every sender is gone and the queue is empty.
pub(crate) fn run(
    conn: Connection,
    rx: Receiver<Request>,
    shared: Arc<Shared>,
    max_batch_ops: usize,
    fold: FoldPolicy,
) {
    let metrics = Metrics {
        commits: metrics::counter!("watchword_store_commits_total"),
        failures: metrics::counter!("watchword_store_commit_failures_total"),
        commit_seconds: metrics::histogram!("watchword_store_commit_seconds"),
        batch_ops: metrics::histogram!("watchword_store_batch_ops"),
        token_log_rows: metrics::gauge!("watchword_store_token_log_rows"),
    };
    let mut log = TokenLog {
        rows: shared.token_log_rows.load(Ordering::Relaxed),
    };
    let mut batch: Vec<Request> = Vec::new();
    // Blocks for one submit (folding a chunk of the token log after each
    // idle spell); ends when the store is dropped and all is drained.
    loop {
        let first = if log.rows > 0 && !shared.failed.load(Ordering::Acquire) {
            match rx.recv_timeout(IDLE_FOLD_AFTER) {
                Ok(first) => first,
                Err(RecvTimeoutError::Timeout) => {
                    fold_or_fail(&conn, &mut log, fold.fold_chunk, &shared, &metrics);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(first) => first,
                Err(_) => break,
            }
        };
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
            let before = log.rows;
            match commit(&conn, &batch, &mut log) {
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
                    log.rows = before;
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

        shared.token_log_rows.store(log.rows, Ordering::Relaxed);
        let cost: usize = batch.iter().map(|r| r.cost).sum();
        shared.queued.fetch_sub(cost, Ordering::AcqRel);
        for req in batch.drain(..) {
            // A dropped ticket is no error: its ops are written all the same.
            let _ = req.reply.send(outcome.clone());
        }
        if log.rows >= fold.fold_at && !shared.failed.load(Ordering::Acquire) {
            fold_or_fail(&conn, &mut log, fold.fold_chunk, &shared, &metrics);
        }
        shared.token_log_rows.store(log.rows, Ordering::Relaxed);
        metrics.token_log_rows.set(log.rows as f64);
    }
    // Shutdown: leave the next start nothing to fold.
    while log.rows > 0 && !shared.failed.load(Ordering::Acquire) {
        fold_or_fail(&conn, &mut log, u64::MAX, &shared, &metrics);
    }
}

/// The writer's count of unfolded token-log rows.
struct TokenLog {
    rows: u64,
}

/// Folds up to `chunk` of the oldest log rows in their own transaction; a
/// failure turns the store read-only like a failed commit.
fn fold_or_fail(
    conn: &Connection,
    log: &mut TokenLog,
    chunk: u64,
    shared: &Shared,
    metrics: &Metrics,
) {
    let folded = conn
        .execute_batch("BEGIN IMMEDIATE")
        .and_then(|()| fold_token_log(conn, chunk))
        .and_then(|n| conn.execute_batch("COMMIT").map(|()| n));
    match folded {
        Ok(_) => {
            log.rows = count_token_log(conn).unwrap_or(log.rows);
        }
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            metrics.failures.increment(1);
            tracing::error!(error = %e, "folding the token log failed; the store takes no more writes until restart");
            shared.failed.store(true, Ordering::Release);
        }
    }
    shared.token_log_rows.store(log.rows, Ordering::Relaxed);
    metrics.token_log_rows.set(log.rows as f64);
}

/// Folds the oldest `chunk` rows of the token log into `tokens` and drops
/// them, inside the caller's transaction. Returns the rows dropped.
pub(crate) fn fold_token_log(conn: &Connection, chunk: u64) -> rusqlite::Result<usize> {
    let (first, last, _) = token_log_span(conn)?;
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(0);
    };
    let upto = first
        .saturating_add(i64::try_from(chunk).unwrap_or(i64::MAX).saturating_sub(1))
        .min(last);
    conn.prepare_cached(TOKEN_LOG_FOLD)?.execute([upto])?;
    conn.prepare_cached(TOKEN_LOG_TRIM)?.execute([upto])
}

/// The log's first and last `seq` (none when empty) and its row count.
fn token_log_span(conn: &Connection) -> rusqlite::Result<(Option<i64>, Option<i64>, u64)> {
    conn.prepare_cached(TOKEN_LOG_SPAN)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
}

/// Rows in the token log.
pub(crate) fn count_token_log(conn: &Connection) -> rusqlite::Result<u64> {
    token_log_span(conn).map(|(_, _, n)| n)
}

/// Writes every op of the batch in one transaction. On any error the
/// transaction is rolled back and nothing of the batch remains.
fn commit(conn: &Connection, batch: &[Request], log: &mut TokenLog) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = batch
        .iter()
        .flat_map(|req| req.ops.iter())
        .try_for_each(|op| apply(conn, op, log))
        .and_then(|()| conn.execute_batch("COMMIT"));
    if result.is_err() && !conn.is_autocommit() {
        // Still inside the transaction (a statement failed, or COMMIT failed
        // without rolling back): undo it. If even this fails, the connection
        // is in doubt, but the store refuses every later write anyway.
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

fn apply(conn: &Connection, op: &StoreOp, log: &mut TokenLog) -> rusqlite::Result<()> {
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
            // A whole token replaces the row: fold first, so no older log
            // row of this serial can overwrite it later.
            if log.rows > 0 {
                while fold_token_log(conn, u64::MAX)? > 0 {}
                log.rows = 0;
            }
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
            log.rows += 1;
        }
        StoreOp::DeleteToken { tenant, serial } => {
            conn.prepare_cached(DELETE_TOKEN)?
                .execute(params![tenant, serial])?;
        }
    }
    Ok(())
}
