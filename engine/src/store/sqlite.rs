//! [`SqliteStore`]: the directory's store in one embedded SQLite database,
//! `DIR/watchword.db`, in WAL mode with `synchronous=FULL` (an acknowledged
//! write survives `kill -9` and power loss). One writer thread owns the write
//! connection and commits queued submits in groups; a second connection reads
//! (load, check, backup) without blocking it.
//!
//! It must never acknowledge a write before its commit reached the disk, never
//! start on a database written with another master key or by a newer binary,
//! and never log or return a stored value.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Sender, TrySendError};
use parking_lot::Mutex;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use super::schema::{
    KEY_CHECK, KEY_SCHEMA_VERSION, META_TABLE, MIGRATIONS, SCHEMA_VERSION, SELECT_METHODS,
    SELECT_PINS, SELECT_TOKENS, SELECT_USERS,
};
use super::writer::{self, FAILED_EARLIER, Request, Shared};
use super::{
    CheckReport, DirectoryStore, Loaded, StoreError, StoreOp, StoredMethod, StoredPin, StoredToken,
    StoredUser, Ticket,
};
use crate::secret::{MasterKey, sync_parent_dir};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "watchword.db";

/// How long a connection waits for another's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a backup retries a busy source before giving up.
const BACKUP_BUSY_LIMIT: Duration = Duration::from_secs(30);

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Ops admitted and not yet committed before a submit is refused with
    /// [`StoreError::Full`] (a submit counts `max(1, ops)`; one larger than
    /// this is admitted when nothing else is queued). Also the write
    /// channel's bound, in submits. Default 65 536.
    pub queue_ops: usize,
    /// Ops the writer gathers into one transaction before committing (a
    /// batch exceeds it by at most one submit's ops). Default 8 192.
    pub max_batch_ops: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            queue_ops: 65_536,
            max_batch_ops: 8_192,
        }
    }
}

/// The directory's store in an embedded SQLite database (see the module doc).
///
/// Dropping it stops the writer thread after it has committed and answered
/// everything queued (the drop blocks for that long).
pub struct SqliteStore {
    path: PathBuf,
    /// The read connection (`query_only`): load, check, backup.
    ///
    /// Locking behaviour: held for the whole of one `load`, `check` or the
    /// copy of one `backup`; never by `submit` or the writer.
    reader: Mutex<Connection>,
    /// `None` when opened for tools: no writer, submits refused.
    writer: Option<WriterHandle>,
    shared: Arc<Shared>,
    queue_ops: usize,
}

struct WriterHandle {
    tx: Option<Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("read_only", &self.writer.is_none())
            .field("queued", &self.queued())
            .field("commits", &self.commits())
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the store in `dir`: the directory (mode
    /// 0700 when created), `dir/watchword.db` (mode 0600 when created), the
    /// schema migrated step by step, the master key checked, and the writer
    /// thread started.
    ///
    /// Refuses a database of a newer schema ([`StoreError::NewerSchema`]) or
    /// one first opened with another master key ([`StoreError::WrongMasterKey`]).
    pub fn open(
        dir: &Path,
        key: &MasterKey,
        opts: StoreOptions,
    ) -> Result<SqliteStore, StoreError> {
        let queue_ops = opts.queue_ops.max(1);
        let max_batch_ops = opts.max_batch_ops.max(1);
        create_private_dir(dir)?;
        let path = dir.join(DB_FILE);
        let created = create_private_file(&path)?;

        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map_err)?;
        configure_writer(&conn)?;
        prepare(&conn, key)?;
        if created {
            sync_parent_dir(&path).map_err(|e| io_err("sync the data directory", &e))?;
        }

        let reader = open_reader(&path)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = channel::bounded(queue_ops);
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("watchword-store".to_owned())
                .spawn(move || writer::run(conn, rx, shared, max_batch_ops))
                .map_err(|e| io_err("start the writer thread", &e))?
        };
        Ok(SqliteStore {
            path,
            reader: Mutex::new(reader),
            writer: Some(WriterHandle {
                tx: Some(tx),
                thread: Some(thread),
            }),
            shared,
            queue_ops,
        })
    }

    /// Opens an existing store for `watchword backup` and `watchword
    /// check-store`, possibly while a server runs on it (WAL lets readers and
    /// the server's writer go on together): no writer thread, no migration,
    /// nothing written; [`DirectoryStore::submit`] answers
    /// [`StoreError::ReadOnly`]. The database must exist, be of this binary's
    /// schema version and match `key`.
    pub fn open_for_tools(dir: &Path, key: &MasterKey) -> Result<SqliteStore, StoreError> {
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StoreError::Io(format!(
                "no store database at {}",
                path.display()
            )));
        }
        let reader = open_reader(&path)?;
        verify_existing(&reader, key)?;
        Ok(SqliteStore {
            path,
            reader: Mutex::new(reader),
            writer: None,
            shared: Arc::new(Shared::default()),
            queue_ops: 0,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Successful commits since open (each may hold many submits).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Whether a commit has failed (the store then refuses every write).
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            // Closing the channel lets the writer finish the queue and stop.
            drop(w.tx.take());
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl DirectoryStore for SqliteStore {
    fn failed(&self) -> bool {
        self.has_failed()
    }

    fn load(&self, sink: &mut dyn FnMut(Loaded)) -> Result<(), StoreError> {
        let conn = self.reader.lock();
        read_transaction(&conn, |conn| {
            // Two cursors in (tenant, subject) order, merged: each user, then
            // its methods. A method whose user is missing (the foreign key
            // forbids it) still comes, before the next user.
            let mut users = conn.prepare_cached(SELECT_USERS).map_err(map_err)?;
            let mut methods = conn.prepare_cached(SELECT_METHODS).map_err(map_err)?;
            let mut users = users.query([]).map_err(map_err)?;
            let mut methods = methods.query([]).map_err(map_err)?;
            let mut next_method = || -> Result<Option<StoredMethod>, StoreError> {
                methods
                    .next()
                    .map_err(map_err)?
                    .map(method_from_row)
                    .transpose()
            };
            let mut method = next_method()?;
            while let Some(row) = users.next().map_err(map_err)? {
                let user = user_from_row(row)?;
                let here = (user.tenant.clone(), user.subject.clone());
                let here = (here.0.as_str(), here.1.as_str());
                while let Some(m) =
                    method.take_if(|m| (m.tenant.as_str(), m.subject.as_str()) < here)
                {
                    sink(Loaded::Method(m));
                    method = next_method()?;
                }
                sink(Loaded::User(user));
                while let Some(m) =
                    method.take_if(|m| (m.tenant.as_str(), m.subject.as_str()) == here)
                {
                    sink(Loaded::Method(m));
                    method = next_method()?;
                }
            }
            while let Some(m) = method {
                sink(Loaded::Method(m));
                method = next_method()?;
            }
            let mut tokens = conn.prepare_cached(SELECT_TOKENS).map_err(map_err)?;
            let mut rows = tokens.query([]).map_err(map_err)?;
            while let Some(row) = rows.next().map_err(map_err)? {
                sink(Loaded::Token(token_from_row(row)?));
            }
            let mut pins = conn.prepare_cached(SELECT_PINS).map_err(map_err)?;
            let mut rows = pins.query([]).map_err(map_err)?;
            while let Some(row) = rows.next().map_err(map_err)? {
                let corrupt = |e: rusqlite::Error| {
                    StoreError::Corrupt(format!("a pins row does not read back: {e}"))
                };
                sink(Loaded::Pin(StoredPin {
                    tenant: row.get(0).map_err(corrupt)?,
                    subject: row.get(1).map_err(corrupt)?,
                    verifier: row.get(2).map_err(corrupt)?,
                    length: row.get(3).map_err(corrupt)?,
                    failcount: row.get(4).map_err(corrupt)?,
                    state: row.get(5).map_err(corrupt)?,
                    created_at_ms: row.get(6).map_err(corrupt)?,
                }));
            }
            Ok(())
        })
    }

    fn submit(&self, ops: Vec<StoreOp>) -> Result<Ticket, StoreError> {
        let Some(tx) = self.writer.as_ref().and_then(|w| w.tx.as_ref()) else {
            return Err(StoreError::ReadOnly);
        };
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed(FAILED_EARLIER.to_owned()));
        }
        validate(&ops)?;
        let cost = ops.len().max(1);
        let before = self.shared.queued.fetch_add(cost, Ordering::AcqRel);
        if before > 0 && before + cost > self.queue_ops {
            self.shared.queued.fetch_sub(cost, Ordering::AcqRel);
            return Err(StoreError::Full);
        }
        let (reply, rx) = oneshot::channel();
        match tx.try_send(Request { ops, cost, reply }) {
            Ok(()) => Ok(Ticket::pending(rx)),
            Err(e) => {
                self.shared.queued.fetch_sub(cost, Ordering::AcqRel);
                Err(match e {
                    TrySendError::Full(_) => StoreError::Full,
                    TrySendError::Disconnected(_) => {
                        StoreError::Failed("the store's writer has stopped".to_owned())
                    }
                })
            }
        }
    }

    fn check(&self) -> Result<CheckReport, StoreError> {
        let conn = self.reader.lock();
        read_transaction(&conn, check_connection)
    }

    fn backup(&self, dest: &Path) -> Result<(), StoreError> {
        // create_new: an existing file (or a race with one) is refused, and
        // the file is private from its first byte.
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(dest) {
            Ok(file) => drop(file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::DestinationExists(dest.display().to_string()));
            }
            Err(e) => return Err(io_err("create the backup file", &e)),
        }
        let result = self.backup_into(dest);
        if result.is_err() {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let mut p = dest.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(p));
            }
        }
        result
    }

    fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }
}

impl SqliteStore {
    /// Copies the database into the (new, empty) file `dest` from one read
    /// snapshot, then makes it a self-contained rollback-journal database,
    /// checks it and syncs it.
    fn backup_into(&self, dest: &Path) -> Result<(), StoreError> {
        let mut dst = Connection::open_with_flags(
            dest,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map_err)?;
        {
            let src = self.reader.lock();
            let backup = Backup::new(&src, &mut dst).map_err(map_err)?;
            let started = Instant::now();
            // All pages in one step: one read transaction on the source, so the
            // copy is one consistent snapshot however many commits go on (a
            // step-by-step copy restarts whenever another connection writes).
            loop {
                match backup.step(-1).map_err(map_err)? {
                    StepResult::Done => break,
                    StepResult::More => {}
                    StepResult::Busy | StepResult::Locked => {
                        if started.elapsed() > BACKUP_BUSY_LIMIT {
                            return Err(StoreError::Database(
                                "backup: the database stayed locked".to_owned(),
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {}
                }
            }
        }
        // The copy carries the source's WAL flag; a backup is one file.
        let mode: String = dst
            .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))
            .map_err(map_err)?;
        if !mode.eq_ignore_ascii_case("delete") {
            return Err(StoreError::Database(format!(
                "backup: could not leave WAL mode (journal_mode is {mode})"
            )));
        }
        let report = read_transaction(&dst, check_connection)?;
        if !report.is_clean() {
            return Err(StoreError::Corrupt(format!(
                "the backup copy does not check clean: {}",
                report.problems.join("; ")
            )));
        }
        dst.close().map_err(|(_, e)| map_err(e))?;
        File::open(dest)
            .and_then(|f| f.sync_all())
            .and_then(|()| sync_parent_dir(dest))
            .map_err(|e| io_err("sync the backup file", &e))
    }
}

/// Creates `dir` (and missing parents) private to the owner; an existing
/// directory is left as it is.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| io_err(&format!("create the data directory {}", dir.display()), &e))
}

/// Creates the database file with mode 0600 if it is missing (SQLite gives its
/// `-wal` and `-shm` files the same mode). Returns whether it was created.
fn create_private_file(path: &Path) -> Result<bool, StoreError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(&format!("create {}", path.display()), &e)),
    }
}

/// The write connection's settings.
fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(map_err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(map_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database(format!(
            "could not switch the database to WAL mode (journal_mode is {mode})"
        )));
    }
    // FULL: in WAL mode every commit syncs the WAL before returning.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(map_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(map_err)?;
    // Overwrite deleted content (e-mail addresses, destinations) where it
    // costs no extra I/O.
    conn.pragma_update(None, "secure_delete", "FAST")
        .map_err(map_err)?;
    // After a checkpoint, cut a WAL that grew (a long backup holds the
    // checkpoint back) down to 64 MiB instead of keeping its peak size.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024_i64)
        .map_err(map_err)?;
    // Replay-protection writes (a token's step after each accepted code)
    // land on pages all over the tokens table: keep 64 MiB of them cached
    // instead of 2 MiB, and let the WAL collect 64 MiB (16,384 pages)
    // before a checkpoint copies them back, so a page changed by many
    // commits is written to the database file once, not once per commit.
    conn.pragma_update(None, "cache_size", -64 * 1024_i64)
        .map_err(map_err)?;
    conn.pragma_update(None, "wal_autocheckpoint", 16_384_i64)
        .map_err(map_err)?;
    let synchronous: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .map_err(map_err)?;
    let foreign_keys: i64 = conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .map_err(map_err)?;
    if synchronous != 2 || foreign_keys != 1 {
        return Err(StoreError::Database(
            "SQLite refused synchronous=FULL or foreign_keys=ON".to_owned(),
        ));
    }
    Ok(())
}

/// A connection for reads only (`query_only`): it opens the database
/// read-write (so it can share the WAL index with a running server) but runs
/// no statement that writes.
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(map_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(map_err)?;
    conn.pragma_update(None, "query_only", "ON")
        .map_err(map_err)?;
    Ok(conn)
}

/// At open: the `meta` table, the version and key checks, then every missing
/// migration, one transaction each.
fn prepare(conn: &Connection, key: &MasterKey) -> Result<(), StoreError> {
    let check = key.check_value();
    let mut version = write_transaction(conn, |conn| {
        conn.execute_batch(META_TABLE).map_err(map_err)?;
        let version = read_version(conn)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        match read_key_check(conn)? {
            Some(stored) => compare_key_check(&stored, &check)?,
            None if version == 0 => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                    rusqlite::params![KEY_CHECK, &check[..]],
                )
                .map_err(map_err)?;
            }
            None => {
                return Err(StoreError::Corrupt(
                    "the database has a schema but no master key check value".to_owned(),
                ));
            }
        }
        Ok(version)
    })?;
    while version < SCHEMA_VERSION {
        version = write_transaction(conn, |conn| {
            // Re-read inside the transaction: another process may have
            // migrated in between.
            let now = read_version(conn)?;
            if now >= SCHEMA_VERSION {
                return Ok(now);
            }
            conn.execute_batch(MIGRATIONS[now as usize]).map_err(|e| {
                StoreError::Database(format!(
                    "migration to schema version {} failed: {e}",
                    now + 1
                ))
            })?;
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rusqlite::params![KEY_SCHEMA_VERSION, i64::from(now + 1)],
            )
            .map_err(map_err)?;
            Ok(now + 1)
        })?;
    }
    Ok(())
}

/// The checks of [`SqliteStore::open_for_tools`], which writes nothing.
fn verify_existing(conn: &Connection, key: &MasterKey) -> Result<(), StoreError> {
    read_transaction(conn, |conn| {
        if !has_meta_table(conn)? {
            return Err(StoreError::Corrupt(
                "not a Watchword store (no meta table)".to_owned(),
            ));
        }
        let version = read_version(conn)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            return Err(StoreError::OlderSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        match read_key_check(conn)? {
            Some(stored) => compare_key_check(&stored, &key.check_value()),
            None => Err(StoreError::Corrupt(
                "the database has no master key check value".to_owned(),
            )),
        }
    })
}

fn compare_key_check(stored: &[u8], expected: &[u8; 32]) -> Result<(), StoreError> {
    if stored.len() == expected.len() && bool::from(stored.ct_eq(&expected[..])) {
        Ok(())
    } else {
        Err(StoreError::WrongMasterKey)
    }
}

fn has_meta_table(conn: &Connection) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'meta'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(map_err)
}

/// The schema version in `meta` (0 when absent: a new database).
fn read_version(conn: &Connection) -> Result<u32, StoreError> {
    let value: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [KEY_SCHEMA_VERSION],
            |r| r.get(0),
        )
        .optional()
        .map_err(map_err)?;
    match value {
        None => Ok(0),
        Some(v) => u32::try_from(v)
            .map_err(|_| StoreError::Corrupt("the schema version is out of range".to_owned())),
    }
}

fn read_key_check(conn: &Connection) -> Result<Option<Vec<u8>>, StoreError> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [KEY_CHECK], |r| {
        r.get(0)
    })
    .optional()
    .map_err(map_err)
}

/// The body of `check`, inside a read transaction on `conn`.
fn check_connection(conn: &Connection) -> Result<CheckReport, StoreError> {
    let mut problems = Vec::new();

    let mut stmt = conn
        .prepare("PRAGMA integrity_check(100)")
        .map_err(map_err)?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(map_err)?
        .collect::<Result<_, _>>()
        .map_err(map_err)?;
    if lines.len() != 1 || lines[0] != "ok" {
        problems.extend(lines.into_iter().map(|l| format!("integrity: {l}")));
    }

    // One line per (table, parent) with a count: rows are not named (their
    // keys are user ids).
    let mut stmt = conn.prepare("PRAGMA foreign_key_check").map_err(map_err)?;
    let mut violations: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut rows = stmt.query([]).map_err(map_err)?;
    while let Some(row) = rows.next().map_err(map_err)? {
        let table: String = row.get(0).map_err(map_err)?;
        let parent: String = row.get(2).map_err(map_err)?;
        *violations.entry((table, parent)).or_default() += 1;
    }
    drop(rows);
    for ((table, parent), n) in violations {
        problems.push(format!(
            "foreign keys: {n} row(s) of {table} reference a missing row of {parent}"
        ));
    }

    if !has_meta_table(conn)? {
        problems.push("no meta table: not a Watchword store".to_owned());
        return Ok(CheckReport {
            schema_version: 0,
            users: 0,
            methods: 0,
            tokens: 0,
            pins: 0,
            problems,
        });
    }
    let schema_version = read_version(conn)?;
    if schema_version != SCHEMA_VERSION {
        problems.push(format!(
            "schema version {schema_version}, this binary's is {SCHEMA_VERSION}"
        ));
    }
    match read_key_check(conn)? {
        Some(v) if v.len() == 32 => {}
        Some(_) => problems.push("the master key check value is malformed".to_owned()),
        None => problems.push("the master key check value is missing".to_owned()),
    }

    let mut count = |table: &str| -> Result<u64, StoreError> {
        let exists: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .map_err(map_err)?;
        if exists == 0 {
            problems.push(format!("table {table} is missing"));
            return Ok(0);
        }
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(map_err)
    };
    let users = count("users")?;
    let methods = count("methods")?;
    let tokens = count("tokens")?;
    let pins = count("pins")?;
    Ok(CheckReport {
        schema_version,
        users,
        methods,
        tokens,
        pins,
        problems,
    })
}

/// Runs `f` inside `BEGIN` (deferred: a read snapshot) and ends the
/// transaction whatever happens.
fn read_transaction<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    in_transaction(conn, "BEGIN", f)
}

/// Runs `f` inside `BEGIN IMMEDIATE` and commits if it succeeded.
fn write_transaction<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    in_transaction(conn, "BEGIN IMMEDIATE", f)
}

fn in_transaction<T>(
    conn: &Connection,
    begin: &str,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch(begin).map_err(map_err)?;
    let result = f(conn).and_then(|v| conn.execute_batch("COMMIT").map(|()| v).map_err(map_err));
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

/// Refuses, before queuing, what SQLite's signed integers cannot hold (the
/// batch would fail and take the store read-only with it).
fn validate(ops: &[StoreOp]) -> Result<(), StoreError> {
    const MAX: u64 = i64::MAX as u64;
    let out_of_range = |what: &str| StoreError::Invalid(format!("{what} is above 2^63 - 1"));
    for op in ops {
        match op {
            StoreOp::PutUser(u) => {
                if u.created_at_ms > MAX || u.updated_at_ms > MAX {
                    return Err(out_of_range("a user's time"));
                }
            }
            StoreOp::PutMethod(m) => {
                if m.id > MAX {
                    return Err(out_of_range("a method id"));
                }
                let times = [
                    Some(m.created_at_ms),
                    m.confirmed_at_ms,
                    m.effective_at_ms,
                    m.confirm_deadline_ms,
                ];
                if times.into_iter().flatten().any(|t| t > MAX) {
                    return Err(out_of_range("a method's time"));
                }
            }
            StoreOp::DeleteMethod { id, .. } => {
                if *id > MAX {
                    return Err(out_of_range("a method id"));
                }
            }
            StoreOp::PutToken(t) => {
                if t.counter > MAX || t.last_step > MAX || t.created_at_ms > MAX {
                    return Err(out_of_range("a token's counter, step or time"));
                }
            }
            StoreOp::TokenProgress {
                counter, last_step, ..
            } => {
                if *counter > MAX || *last_step > MAX {
                    return Err(out_of_range("a token's counter or step"));
                }
            }
            StoreOp::PutPin(p) => {
                if p.created_at_ms > MAX {
                    return Err(out_of_range("a PIN's time"));
                }
            }
            StoreOp::DeleteUser { .. }
            | StoreOp::DeleteToken { .. }
            | StoreOp::PinProgress { .. } => {}
        }
    }
    Ok(())
}

fn token_from_row(row: &Row<'_>) -> Result<StoredToken, StoreError> {
    let corrupt =
        |e: rusqlite::Error| StoreError::Corrupt(format!("a tokens row does not read back: {e}"));
    Ok(StoredToken {
        tenant: row.get(0).map_err(corrupt)?,
        serial: row.get(1).map_err(corrupt)?,
        subject: row.get(2).map_err(corrupt)?,
        kind: row.get(3).map_err(corrupt)?,
        algorithm: row.get(4).map_err(corrupt)?,
        digits: row.get(5).map_err(corrupt)?,
        period: row.get(6).map_err(corrupt)?,
        secret_sealed: row.get(7).map_err(corrupt)?,
        counter: row.get(8).map_err(corrupt)?,
        last_step: row.get(9).map_err(corrupt)?,
        drift: row.get(10).map_err(corrupt)?,
        failcount: row.get(11).map_err(corrupt)?,
        state: row.get(12).map_err(corrupt)?,
        created_at_ms: row.get(13).map_err(corrupt)?,
    })
}

fn user_from_row(row: &Row<'_>) -> Result<StoredUser, StoreError> {
    let corrupt =
        |e: rusqlite::Error| StoreError::Corrupt(format!("a users row does not read back: {e}"));
    Ok(StoredUser {
        tenant: row.get(0).map_err(corrupt)?,
        subject: row.get(1).map_err(corrupt)?,
        display_name: row.get(2).map_err(corrupt)?,
        email: row.get(3).map_err(corrupt)?,
        locale: row.get(4).map_err(corrupt)?,
        enabled: row.get(5).map_err(corrupt)?,
        default_method: row.get(6).map_err(corrupt)?,
        created_at_ms: row.get(7).map_err(corrupt)?,
        updated_at_ms: row.get(8).map_err(corrupt)?,
    })
}

fn method_from_row(row: &Row<'_>) -> Result<StoredMethod, StoreError> {
    let corrupt =
        |e: rusqlite::Error| StoreError::Corrupt(format!("a methods row does not read back: {e}"));
    Ok(StoredMethod {
        tenant: row.get(0).map_err(corrupt)?,
        id: row.get(1).map_err(corrupt)?,
        subject: row.get(2).map_err(corrupt)?,
        kind: row.get(3).map_err(corrupt)?,
        destination: row.get(4).map_err(corrupt)?,
        state: row.get(5).map_err(corrupt)?,
        created_at_ms: row.get(6).map_err(corrupt)?,
        confirmed_at_ms: row.get(7).map_err(corrupt)?,
        effective_at_ms: row.get(8).map_err(corrupt)?,
        confirm_deadline_ms: row.get(9).map_err(corrupt)?,
    })
}

fn io_err(what: &str, e: &io::Error) -> StoreError {
    StoreError::Io(format!("could not {what}: {e}"))
}

/// Sorts a SQLite error into the store's kinds. SQLite's messages name
/// tables, columns and constraints, never bound values.
fn map_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StoreError::Corrupt(e.to_string())
        }
        Some(
            ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly,
        ) => StoreError::Io(e.to_string()),
        _ => StoreError::Database(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_bytes([1; 32])
    }

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn migrations_bring_an_empty_database_to_the_current_version_once() {
        let conn = Connection::open_in_memory().unwrap();
        prepare(&conn, &key()).unwrap();
        assert_eq!(read_version(&conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(
            tables(&conn),
            ["meta", "methods", "pins", "tokens", "users"]
        );
        let stored = read_key_check(&conn).unwrap().unwrap();
        assert_eq!(stored, key().check_value());
        // A second open runs nothing again and keeps the check value.
        prepare(&conn, &key()).unwrap();
        assert_eq!(read_version(&conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(
            prepare(&conn, &MasterKey::from_bytes([2; 32])).unwrap_err(),
            StoreError::WrongMasterKey
        );
        let report = read_transaction(&conn, check_connection).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
    }

    #[test]
    fn a_schema_without_a_key_check_value_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        prepare(&conn, &key()).unwrap();
        conn.execute("DELETE FROM meta WHERE key = ?1", [KEY_CHECK])
            .unwrap();
        assert!(matches!(
            prepare(&conn, &key()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_file_that_is_not_a_database_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 4096]).unwrap();
        let err = SqliteStore::open(dir.path(), &key(), StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }

    #[test]
    fn a_new_store_is_private_to_its_owner() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let store = SqliteStore::open(&dir, &key(), StoreOptions::default()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(store.path()), 0o600);
            assert_eq!(mode(&dir.join(format!("{DB_FILE}-wal"))), 0o600);
        }
        let journal: String = store
            .reader
            .lock()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
    }

    #[test]
    fn submits_of_values_sqlite_cannot_hold_are_invalid() {
        let op = StoreOp::DeleteMethod {
            tenant: "t".to_owned(),
            subject: "s".to_owned(),
            id: u64::MAX,
        };
        assert!(matches!(validate(&[op]), Err(StoreError::Invalid(_))));
        assert!(validate(&[]).is_ok());
    }
}
