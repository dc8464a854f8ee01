//! The directory's durable store: a narrow trait ([`DirectoryStore`]) so that a
//! shared SQL server can later serve several nodes without touching callers,
//! its storage types, and the embedded SQLite implementation ([`SqliteStore`]).
//!
//! The storage types here are the store's own, versioned with the schema; the
//! directory converts its domain types to and from them. A write is
//! acknowledged (its [`Ticket`] resolves `Ok`) only after the transaction that
//! holds it has committed to disk. This module must never log, print or put
//! into an error message a stored value: no destination, e-mail address, name
//! or sealed secret (the `Debug` of the row types masks them).

use std::fmt;
use std::path::Path;

use tokio::sync::oneshot;

use crate::mask::mask_destination;

mod schema;
mod sqlite;
mod writer;

pub use schema::SCHEMA_VERSION;
pub use sqlite::{DB_FILE, SqliteStore, StoreOptions};

/// One user of a tenant, as stored (schema v1).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredUser {
    /// The tenant's id.
    pub tenant: String,
    /// The user's id within the tenant.
    pub subject: String,
    /// A name to show, if any.
    pub display_name: Option<String>,
    /// A contact e-mail address, if any (not a delivery method).
    pub email: Option<String>,
    /// Preferred locale (BCP 47), if any.
    pub locale: Option<String>,
    /// Whether the user may authenticate.
    pub enabled: bool,
    /// The method to use when a request names none (its kind or id, as the
    /// directory encodes it), if any.
    pub default_method: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Last change, Unix milliseconds.
    pub updated_at_ms: u64,
}

impl fmt::Debug for StoredUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredUser")
            .field("tenant", &self.tenant)
            .field("subject", &self.subject)
            .field(
                "display_name",
                &self.display_name.as_ref().map(|_| "<present>"),
            )
            .field("email", &self.email.as_deref().map(mask_destination))
            .field("locale", &self.locale)
            .field("enabled", &self.enabled)
            .field("default_method", &self.default_method)
            .field("created_at_ms", &self.created_at_ms)
            .field("updated_at_ms", &self.updated_at_ms)
            .finish()
    }
}

/// One delivery method of a user (a phone number, an e-mail address...), as
/// stored (schema v1).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredMethod {
    /// The tenant's id.
    pub tenant: String,
    /// The owning user's id within the tenant.
    pub subject: String,
    /// The method's id, unique within the tenant.
    pub id: u64,
    /// The method's kind (`sms`, `voice`, `email`...), as the directory encodes it.
    pub kind: String,
    /// The full, normalised destination. Never logged: `Debug` masks it.
    pub destination: String,
    /// The method's state (`pending`, `active`...), as the directory encodes it.
    pub state: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// When the owner confirmed it, Unix milliseconds.
    pub confirmed_at_ms: Option<u64>,
    /// When it becomes usable (a cooling-off period), Unix milliseconds.
    pub effective_at_ms: Option<u64>,
    /// When an unconfirmed method lapses, Unix milliseconds.
    pub confirm_deadline_ms: Option<u64>,
}

impl fmt::Debug for StoredMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredMethod")
            .field("tenant", &self.tenant)
            .field("subject", &self.subject)
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("destination", &mask_destination(&self.destination))
            .field("state", &self.state)
            .field("created_at_ms", &self.created_at_ms)
            .field("confirmed_at_ms", &self.confirmed_at_ms)
            .field("effective_at_ms", &self.effective_at_ms)
            .field("confirm_deadline_ms", &self.confirm_deadline_ms)
            .finish()
    }
}

/// One OATH token as stored. Its secret is sealed with the master key (the
/// store never sees it in clear); its `Debug` prints no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// The tenant's id.
    pub tenant: String,
    /// The token's serial, unique within the tenant.
    pub serial: String,
    /// The user it is assigned to, if any.
    pub subject: Option<String>,
    /// `totp` or `hotp`.
    pub kind: String,
    /// `SHA1`, `SHA256` or `SHA512`.
    pub algorithm: String,
    /// 6 or 8.
    pub digits: u8,
    /// The TOTP step, seconds (0 for HOTP).
    pub period: u32,
    /// The secret, sealed by `MasterKey::seal` (with the tenant and serial
    /// as associated data).
    pub secret_sealed: Vec<u8>,
    /// HOTP: the next counter expected.
    pub counter: u64,
    /// TOTP: the last accepted step (0: none).
    pub last_step: u64,
    /// TOTP: the drift remembered at the last success, steps.
    pub drift: i64,
    /// Wrong codes in a row.
    pub failcount: u32,
    /// `active`, `locked` or `disabled`.
    pub state: String,
    /// When it was enrolled or imported.
    pub created_at_ms: u64,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("tenant", &self.tenant)
            .field("serial", &self.serial)
            .field("subject", &self.subject)
            .field("kind", &self.kind)
            .field("algorithm", &self.algorithm)
            .field("digits", &self.digits)
            .field("period", &self.period)
            .field(
                "secret_sealed",
                &format_args!("<{} bytes>", self.secret_sealed.len()),
            )
            .field("counter", &self.counter)
            .field("last_step", &self.last_step)
            .field("failcount", &self.failcount)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A user's PIN as stored: only its verifier (a keyed hash under the master
/// key), never the PIN. `Debug` prints no verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredPin {
    /// The tenant's id.
    pub tenant: String,
    /// Whose PIN.
    pub subject: String,
    /// HMAC-SHA256 of tenant, subject and PIN under a key derived from the
    /// master key (32 bytes).
    pub verifier: Vec<u8>,
    /// Its digits (4..=12), fixed when it was made.
    pub length: u8,
    /// Wrong PINs in a row.
    pub failcount: u32,
    /// `active` or `locked`.
    pub state: String,
    /// When it was made, ms since the epoch.
    pub created_at_ms: u64,
}

impl fmt::Debug for StoredPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredPin")
            .field("tenant", &self.tenant)
            .field("length", &self.length)
            .field("failcount", &self.failcount)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// One change to the store. A submit's ops are applied in order, in one
/// transaction with the submits around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or update the user `(tenant, subject)` (an update keeps its
    /// methods, tokens and PIN).
    PutUser(StoredUser),
    /// Delete a user and with it the user's methods, tokens and PIN.
    DeleteUser {
        /// The tenant's id.
        tenant: String,
        /// The user's id within the tenant.
        subject: String,
    },
    /// Insert or update the method `(tenant, id)`. The user must exist (the
    /// caller orders its ops so); otherwise the whole batch fails.
    PutMethod(StoredMethod),
    /// Delete the method `(tenant, id)` if it belongs to `subject`.
    DeleteMethod {
        /// The tenant's id.
        tenant: String,
        /// The owning user's id within the tenant.
        subject: String,
        /// The method's id.
        id: u64,
    },
    /// Insert or replace the token `(tenant, serial)` whole (enrollment,
    /// import, assignment). A subject, when given, must exist.
    PutToken(StoredToken),
    /// The replay-sensitive state of a token after a verification: its
    /// counter, last step, drift, failures and state. Written before the
    /// answer, so an accepted code stays used across a crash.
    TokenProgress {
        /// The tenant's id.
        tenant: String,
        /// The token.
        serial: String,
        /// HOTP: the next counter expected.
        counter: u64,
        /// TOTP: the last accepted step.
        last_step: u64,
        /// TOTP: the drift.
        drift: i64,
        /// Wrong codes in a row.
        failcount: u32,
        /// `active`, `locked` or `disabled`.
        state: String,
    },
    /// Delete the token `(tenant, serial)`.
    DeleteToken {
        /// The tenant's id.
        tenant: String,
        /// The token.
        serial: String,
    },
    /// Insert or replace a user's PIN whole (a reset). The user must exist.
    PutPin(StoredPin),
    /// A PIN's failures and state after a check.
    PinProgress {
        /// The tenant's id.
        tenant: String,
        /// Whose PIN.
        subject: String,
        /// Wrong PINs in a row.
        failcount: u32,
        /// `active` or `locked`.
        state: String,
    },
}

/// One row streamed by [`DirectoryStore::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// A user (each user is followed by its methods).
    User(StoredUser),
    /// A method of the user just streamed.
    Method(StoredMethod),
    /// A token (all tokens come after every user, by serial).
    Token(StoredToken),
    /// A PIN (all PINs come after every token).
    Pin(StoredPin),
}

/// Why the store refused or failed. Messages carry no stored value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The write queue is full; nothing was queued. Retry later or shed load.
    #[error("the store's write queue is full; the write was not queued")]
    Full,
    /// A commit failed (this submit's batch, or an earlier one: the store then
    /// turned read-only for the rest of the process's life).
    #[error("store write failed, the store is now read-only (restart to reload from disk): {0}")]
    Failed(String),
    /// The master key file is not the one this database was created with.
    #[error(
        "the master key file does not match this database (its key check value differs): start with the key file this database was created with"
    )]
    WrongMasterKey,
    /// The database was written by a newer binary.
    #[error(
        "database schema version {found} is newer than this binary supports ({supported}); run a newer watchword"
    )]
    NewerSchema {
        /// The version found in the database.
        found: u32,
        /// The newest version this binary knows.
        supported: u32,
    },
    /// A tool open found a database not yet migrated to this binary's schema.
    #[error(
        "database schema version {found} is older than this binary's ({supported}); start the server once to migrate it"
    )]
    OlderSchema {
        /// The version found in the database.
        found: u32,
        /// The version this binary writes.
        supported: u32,
    },
    /// A file system or disk error (missing database, disk full, I/O error).
    #[error("store I/O error: {0}")]
    Io(String),
    /// The database file is damaged or is not a Watchword database.
    #[error("store database is corrupt: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("store database error: {0}")]
    Database(String),
    /// A submit that cannot be stored (refused before queuing, nothing written).
    #[error("store refused the write: {0}")]
    Invalid(String),
    /// The store was opened for tools (backup, check) and takes no writes.
    #[error("the store was opened read-only for tools and takes no writes")]
    ReadOnly,
    /// A backup destination already exists.
    #[error("backup destination {0} already exists; refusing to overwrite it")]
    DestinationExists(String),
}

/// The acknowledgement of one submit: resolves once its transaction has
/// committed to disk (`Ok`) or failed.
#[must_use = "a submit is durable only once its ticket resolves Ok"]
pub struct Ticket(TicketInner);

enum TicketInner {
    Pending(oneshot::Receiver<Result<(), StoreError>>),
    Ready(Result<(), StoreError>),
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticket")
    }
}

impl Ticket {
    /// A ticket the writer answers through `rx`.
    pub(crate) fn pending(rx: oneshot::Receiver<Result<(), StoreError>>) -> Ticket {
        Ticket(TicketInner::Pending(rx))
    }

    /// A ticket already answered (an implementation with nothing to wait for).
    pub fn ready(result: Result<(), StoreError>) -> Ticket {
        Ticket(TicketInner::Ready(result))
    }

    /// Waits for the commit.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            TicketInner::Pending(rx) => rx.await.unwrap_or_else(|_| Err(writer_gone())),
            TicketInner::Ready(r) => r,
        }
    }

    /// Waits for the commit, blocking the thread.
    ///
    /// # Panics
    /// If called from inside an async runtime (use [`Ticket::wait`] there).
    pub fn wait_blocking(self) -> Result<(), StoreError> {
        match self.0 {
            TicketInner::Pending(rx) => rx.blocking_recv().unwrap_or_else(|_| Err(writer_gone())),
            TicketInner::Ready(r) => r,
        }
    }
}

fn writer_gone() -> StoreError {
    StoreError::Failed("the store's writer stopped before answering".to_owned())
}

/// The result of [`DirectoryStore::check`]. `problems` empty means clean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The schema version found in the database.
    pub schema_version: u32,
    /// Rows in `users`.
    pub users: u64,
    /// Rows in `methods`.
    pub methods: u64,
    /// Rows in `tokens`.
    pub tokens: u64,
    /// Rows in `pins`.
    pub pins: u64,
    /// What is wrong, one line each (no stored values). Empty = clean.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether the check found nothing wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The directory's durable store.
pub trait DirectoryStore: Send + Sync + 'static {
    /// Streams every stored row to `sink` from one consistent snapshot, in
    /// (tenant, subject) order: each user followed by its methods, oldest
    /// first; then every token in (tenant, serial) order. Called once at
    /// start.
    fn load(&self, sink: &mut dyn FnMut(Loaded)) -> Result<(), StoreError>;

    /// Queues `ops` to be written in one transaction (with others: group
    /// commit), in submit order. Never blocks: a full queue is
    /// [`StoreError::Full`]; after a failed commit every later submit is
    /// [`StoreError::Failed`] (the store turned read-only; a restart reloads
    /// from disk).
    fn submit(&self, ops: Vec<StoreOp>) -> Result<Ticket, StoreError>;

    /// Integrity check (`watchword check-store`).
    fn check(&self) -> Result<CheckReport, StoreError>;

    /// Online backup to a new file `dest` (an existing `dest` is refused),
    /// consistent, while writes go on.
    fn backup(&self, dest: &Path) -> Result<(), StoreError>;

    /// Gauge for metrics: ops queued now (including the batch being committed).
    fn queued(&self) -> usize;

    /// Whether a commit failed: the store takes no more writes until a
    /// restart (readiness reports it).
    fn failed(&self) -> bool {
        false
    }
}
