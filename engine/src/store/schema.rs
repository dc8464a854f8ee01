//! The store's SQLite schema: the `meta` table that versions it and the
//! ordered migrations, embedded in the binary and applied at open, one
//! transaction each.
//!
//! A published step must never be edited or reordered: a database records how
//! many steps it has run, so a change is always a new step at the end.

/// The `meta` table, created before anything else: `schema_version` (an
/// integer, the number of migration steps applied) and `key_check` (the
/// master key's check value, 32 bytes).
pub(crate) const META_TABLE: &str = "CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value ANY NOT NULL
) STRICT, WITHOUT ROWID;";

/// `meta` key of the schema version.
pub(crate) const KEY_SCHEMA_VERSION: &str = "schema_version";
/// `meta` key of the master key's check value.
pub(crate) const KEY_CHECK: &str = "key_check";

/// Migration step `i` takes a database from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // v1: users and their delivery methods; tokens and PINs (unused by the API
    // yet). Every table is STRICT (a wrong type is an error, not a silent
    // conversion) and WITHOUT ROWID (rows live in their primary key's b-tree).
    // Children reference users ON DELETE CASCADE, so deleting a user deletes
    // its methods, tokens and PIN; each child has an index on (tenant, subject)
    // so the cascade does not scan the table.
    "CREATE TABLE users (
        tenant          TEXT NOT NULL,
        subject         TEXT NOT NULL,
        display_name    TEXT,
        email           TEXT,
        locale          TEXT,
        enabled         INTEGER NOT NULL CHECK (enabled IN (0, 1)),
        default_method  TEXT,
        created_at_ms   INTEGER NOT NULL CHECK (created_at_ms >= 0),
        updated_at_ms   INTEGER NOT NULL CHECK (updated_at_ms >= 0),
        PRIMARY KEY (tenant, subject)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE methods (
        tenant               TEXT NOT NULL,
        id                   INTEGER NOT NULL CHECK (id >= 0),
        subject              TEXT NOT NULL,
        kind                 TEXT NOT NULL,
        destination          TEXT NOT NULL,
        state                TEXT NOT NULL,
        created_at_ms        INTEGER NOT NULL CHECK (created_at_ms >= 0),
        confirmed_at_ms      INTEGER CHECK (confirmed_at_ms >= 0),
        effective_at_ms      INTEGER CHECK (effective_at_ms >= 0),
        confirm_deadline_ms  INTEGER CHECK (confirm_deadline_ms >= 0),
        PRIMARY KEY (tenant, id),
        FOREIGN KEY (tenant, subject) REFERENCES users (tenant, subject) ON DELETE CASCADE
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX methods_by_user ON methods (tenant, subject);

    CREATE TABLE tokens (
        tenant         TEXT NOT NULL,
        serial         TEXT NOT NULL,
        subject        TEXT,
        kind           TEXT NOT NULL,
        algorithm      TEXT NOT NULL,
        digits         INTEGER NOT NULL,
        period         INTEGER NOT NULL DEFAULT 0,
        secret_sealed  BLOB NOT NULL,
        counter        INTEGER NOT NULL DEFAULT 0,
        last_step      INTEGER NOT NULL DEFAULT 0,
        drift          INTEGER NOT NULL DEFAULT 0,
        failcount      INTEGER NOT NULL DEFAULT 0,
        state          TEXT NOT NULL,
        created_at_ms  INTEGER NOT NULL CHECK (created_at_ms >= 0),
        PRIMARY KEY (tenant, serial),
        FOREIGN KEY (tenant, subject) REFERENCES users (tenant, subject) ON DELETE CASCADE
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX tokens_by_user ON tokens (tenant, subject);

    CREATE TABLE pins (
        tenant         TEXT NOT NULL,
        subject        TEXT NOT NULL,
        verifier       BLOB NOT NULL,
        length         INTEGER NOT NULL,
        failcount      INTEGER NOT NULL DEFAULT 0,
        state          TEXT NOT NULL,
        created_at_ms  INTEGER NOT NULL CHECK (created_at_ms >= 0),
        PRIMARY KEY (tenant, subject),
        FOREIGN KEY (tenant, subject) REFERENCES users (tenant, subject) ON DELETE CASCADE
    ) STRICT, WITHOUT ROWID;",
];

/// The schema version this binary writes: the number of migration steps.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Upsert of a user: `ON CONFLICT DO UPDATE`, never `INSERT OR REPLACE`
/// (a replace deletes the row first, and the cascade would take its methods).
pub(crate) const PUT_USER: &str = "INSERT INTO users
    (tenant, subject, display_name, email, locale, enabled, default_method, created_at_ms, updated_at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
    ON CONFLICT (tenant, subject) DO UPDATE SET
        display_name = excluded.display_name,
        email = excluded.email,
        locale = excluded.locale,
        enabled = excluded.enabled,
        default_method = excluded.default_method,
        created_at_ms = excluded.created_at_ms,
        updated_at_ms = excluded.updated_at_ms";

/// Deletes a user; the foreign keys cascade to its methods, tokens and PIN.
pub(crate) const DELETE_USER: &str = "DELETE FROM users WHERE tenant = ?1 AND subject = ?2";

/// Upsert of a method by `(tenant, id)`.
pub(crate) const PUT_METHOD: &str = "INSERT INTO methods
    (tenant, id, subject, kind, destination, state, created_at_ms, confirmed_at_ms, effective_at_ms, confirm_deadline_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
    ON CONFLICT (tenant, id) DO UPDATE SET
        subject = excluded.subject,
        kind = excluded.kind,
        destination = excluded.destination,
        state = excluded.state,
        created_at_ms = excluded.created_at_ms,
        confirmed_at_ms = excluded.confirmed_at_ms,
        effective_at_ms = excluded.effective_at_ms,
        confirm_deadline_ms = excluded.confirm_deadline_ms";

/// Deletes a method if it belongs to the named user.
pub(crate) const DELETE_METHOD: &str =
    "DELETE FROM methods WHERE tenant = ?1 AND id = ?2 AND subject = ?3";

/// Insert or replace a token whole, by `(tenant, serial)`.
pub(crate) const PUT_TOKEN: &str = "INSERT INTO tokens
    (tenant, serial, subject, kind, algorithm, digits, period, secret_sealed, counter, last_step, drift, failcount, state, created_at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
    ON CONFLICT (tenant, serial) DO UPDATE SET
        subject = excluded.subject,
        kind = excluded.kind,
        algorithm = excluded.algorithm,
        digits = excluded.digits,
        period = excluded.period,
        secret_sealed = excluded.secret_sealed,
        counter = excluded.counter,
        last_step = excluded.last_step,
        drift = excluded.drift,
        failcount = excluded.failcount,
        state = excluded.state,
        created_at_ms = excluded.created_at_ms";

/// A token's replay-sensitive state.
pub(crate) const TOKEN_PROGRESS: &str = "UPDATE tokens SET
    counter = ?3, last_step = ?4, drift = ?5, failcount = ?6, state = ?7
    WHERE tenant = ?1 AND serial = ?2";

/// Insert or replace a PIN whole, by `(tenant, subject)`.
pub(crate) const PUT_PIN: &str = "INSERT INTO pins
    (tenant, subject, verifier, length, failcount, state, created_at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (tenant, subject) DO UPDATE SET
        verifier = excluded.verifier,
        length = excluded.length,
        failcount = excluded.failcount,
        state = excluded.state,
        created_at_ms = excluded.created_at_ms";

/// A PIN's failures and state.
pub(crate) const PIN_PROGRESS: &str =
    "UPDATE pins SET failcount = ?3, state = ?4 WHERE tenant = ?1 AND subject = ?2";

/// Every PIN, in primary-key order.
pub(crate) const SELECT_PINS: &str = "SELECT tenant, subject, verifier, length, failcount, state,
    created_at_ms FROM pins ORDER BY tenant, subject";

/// Deletes a token.
pub(crate) const DELETE_TOKEN: &str = "DELETE FROM tokens WHERE tenant = ?1 AND serial = ?2";

/// Every token, in primary-key order.
pub(crate) const SELECT_TOKENS: &str = "SELECT tenant, serial, subject, kind, algorithm, digits,
    period, secret_sealed, counter, last_step, drift, failcount, state, created_at_ms
    FROM tokens ORDER BY tenant, serial";

/// Every user, in primary-key order.
pub(crate) const SELECT_USERS: &str =
    "SELECT tenant, subject, display_name, email, locale, enabled,
    default_method, created_at_ms, updated_at_ms FROM users ORDER BY tenant, subject";

/// Every method, in the users' order (through the `methods_by_user`
/// index), each user's oldest first.
pub(crate) const SELECT_METHODS: &str = "SELECT tenant, id, subject, kind, destination, state,
    created_at_ms, confirmed_at_ms, effective_at_ms, confirm_deadline_ms
    FROM methods ORDER BY tenant, subject, created_at_ms, id";
