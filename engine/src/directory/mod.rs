//! The directory: every tenant's users and their methods, held in memory for
//! the hot path and kept in step with a durable [`DirectoryStore`].
//!
//! Reads (CHECK, the protocol, the API's GETs) never touch the disk: each
//! tenant's users live in one ordered map behind a read-write lock, loaded
//! once at start. A write takes the tenant's write lock, computes the new
//! rows, hands them to the store's group-commit queue (non-blocking; a full
//! queue refuses the write before anything changes) and changes the map, all
//! in one critical section, so the store sees the tenant's writes in the
//! order memory did. The caller answers only after [`Durable::wait`]: an
//! acknowledged write has reached the disk. A failed commit turns the store
//! read-only (every later write is refused) until a restart reloads memory
//! from disk.
//!
//! This module must never hold a lock across an `.await`, block on the disk
//! inside a lock, or put a full destination in an error or a `Debug` output.

pub mod model;
mod packed;
mod pins;
mod tokens;

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::RwLock;

pub use model::{Method, MethodId, MethodState, MethodType, User};
pub use packed::{MethodView, UserView};
pub use pins::{DEFAULT_PIN_LEN, MAX_PIN_LEN, MIN_PIN_LEN, Pin, PinInfo, PinState, mask};
pub use tokens::{TokenInfo, TokenState};

use packed::Packed;

use crate::secret::MasterKey;
use crate::store::{DirectoryStore, Loaded, StoreError, StoreOp, Ticket};
use crate::types::TenantId;

/// Longest subject, bytes (as ISSUE's).
pub const MAX_SUBJECT_LEN: usize = 256;
/// Longest display name, bytes.
pub const MAX_DISPLAY_NAME_LEN: usize = 256;
/// Longest locale tag, bytes.
pub const MAX_LOCALE_LEN: usize = 35;
/// Most methods one user may register.
pub const MAX_METHODS_PER_USER: usize = 16;

/// Why a directory operation was refused. Messages name the field and the
/// reason, never a destination.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// No such user or method for this tenant.
    #[error("{0}")]
    NotFound(&'static str),
    /// A field's value is not acceptable.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// The store cannot take writes now (queue full, or read-only after a
    /// failed commit).
    #[error("{message}")]
    Unavailable {
        /// Suggested wait before a retry, ms (0: do not retry here).
        retry_after_ms: u32,
        /// What is wrong.
        message: String,
    },
}

impl From<StoreError> for DirectoryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full => Self::Unavailable {
                retry_after_ms: 100,
                message: "the directory's write queue is full".into(),
            },
            other => Self::Unavailable {
                retry_after_ms: 0,
                message: format!("the directory store cannot take writes: {other}"),
            },
        }
    }
}

/// A change made in memory whose disk write may still be under way.
#[must_use = "answer only after `wait`: the write is durable then"]
pub struct Durable<T> {
    value: T,
    ticket: Option<Ticket>,
}

impl<T> std::fmt::Debug for Durable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("pending", &self.ticket.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Durable<T> {
    /// A value with nothing to wait for (no store, or nothing changed).
    pub fn ready(value: T) -> Self {
        Self {
            value,
            ticket: None,
        }
    }

    /// The value, before durability is known (for tools that do not answer anyone).
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Maps the value, keeping the pending write.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Durable<U> {
        Durable {
            value: f(self.value),
            ticket: self.ticket,
        }
    }

    /// Waits until the write reached the disk.
    pub async fn wait(self) -> Result<T, DirectoryError> {
        if let Some(t) = self.ticket {
            t.wait().await?;
        }
        Ok(self.value)
    }

    /// [`Durable::wait`] for threads outside the runtime.
    pub fn wait_blocking(self) -> Result<T, DirectoryError> {
        if let Some(t) = self.ticket {
            t.wait_blocking()?;
        }
        Ok(self.value)
    }
}

/// What a [`Directory::put_user`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsert {
    /// A new user.
    Created,
    /// An existing user changed.
    Updated,
    /// The user already had these values: nothing was written.
    Unchanged,
}

/// A change to a user's own fields; `None` keeps the field, `Some(None)`
/// clears an optional one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserPatch {
    /// A name to show.
    pub display_name: Option<Option<String>>,
    /// The user's address.
    pub email: Option<Option<String>>,
    /// Message language.
    pub locale: Option<Option<String>>,
    /// Enabled or not (a new user is enabled unless this says otherwise).
    pub enabled: Option<bool>,
    /// The method type challenges start on.
    pub default_method: Option<Option<MethodType>>,
}

/// What a load at start found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Users loaded.
    pub users: usize,
    /// Methods loaded.
    pub methods: usize,
    /// Tokens loaded.
    pub tokens: usize,
    /// PINs loaded.
    pub pins: usize,
    /// Rows of tenants no longer configured (kept on disk, not served).
    pub skipped_unknown_tenant: usize,
}

type UserMap = BTreeSet<Packed>;

use pins::{PinEntry, PinTable};
use tokens::{TokenEntry, TokenTable};

/// Every tenant's users and methods.
pub struct Directory {
    tenants: Vec<String>,
    maps: Box<[RwLock<UserMap>]>,
    tokens: Box<[RwLock<TokenTable>]>,
    pins: Box<[RwLock<PinTable>]>,
    /// Opens token secrets at load, seals them for the store.
    key: Arc<MasterKey>,
    store: Option<Arc<dyn DirectoryStore>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("tenants", &self.tenants.len())
            .field("users", &self.len())
            .field("durable", &self.store.is_some())
            .finish()
    }
}

/// Checks a subject as every front end must: 1..=256 bytes, no control characters.
pub fn validate_subject(subject: &str) -> Result<(), DirectoryError> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN {
        return Err(DirectoryError::InvalidArgument(format!(
            "subject: must be 1 to {MAX_SUBJECT_LEN} bytes, got {}",
            subject.len()
        )));
    }
    if subject.chars().any(char::is_control) {
        return Err(DirectoryError::InvalidArgument(
            "subject: must not contain control characters".into(),
        ));
    }
    Ok(())
}

fn validate_text(field: &str, v: &str, max: usize) -> Result<(), DirectoryError> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(DirectoryError::InvalidArgument(format!(
            "{field}: must be 1 to {max} bytes without control characters"
        )));
    }
    Ok(())
}

impl Directory {
    /// An empty directory for these tenants (by [`TenantId`] order), kept only
    /// in memory (tests, benchmarks).
    pub fn in_memory(tenants: Vec<String>) -> Directory {
        let maps = tenants.iter().map(|_| RwLock::default()).collect();
        let tokens = tenants.iter().map(|_| RwLock::default()).collect();
        let pins = tenants.iter().map(|_| RwLock::default()).collect();
        Directory {
            tenants,
            maps,
            tokens,
            pins,
            key: Arc::new(MasterKey::generate()),
            store: None,
        }
    }

    /// Loads every stored user and method of the configured tenants from
    /// `store`, which then takes every write. The store streams each user
    /// followed by its methods, so each user is packed as it arrives: the
    /// load's only temporaries are one row and one user.
    pub fn load(
        tenants: Vec<String>,
        store: Arc<dyn DirectoryStore>,
        key: Arc<MasterKey>,
    ) -> Result<(Directory, LoadReport), String> {
        let mut dir = Directory::in_memory(tenants);
        dir.key = key;
        let mut report = LoadReport::default();
        let mut error = None;
        let index: std::collections::HashMap<String, usize> = dir
            .tenants
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let mut users: Vec<Vec<Packed>> = dir.tenants.iter().map(|_| Vec::new()).collect();
        let mut tokens: Vec<TokenTable> =
            dir.tenants.iter().map(|_| TokenTable::default()).collect();
        let mut pins: Vec<PinTable> = dir.tenants.iter().map(|_| PinTable::default()).collect();
        let key = dir.key.clone();
        // The user being read: its tenant, subject, head and methods.
        let mut current: Option<(usize, String)> = None;
        let (mut head, mut methods) = (Vec::new(), Vec::new());
        let mut finish = |current: &mut Option<(usize, String)>,
                          head: &mut Vec<u8>,
                          methods: &mut Vec<u8>,
                          count: &mut usize| {
            if let Some((t, _)) = current.take() {
                users[t].push(Packed::assemble_raw(head, *count, methods));
            }
            head.clear();
            methods.clear();
            *count = 0;
        };
        let mut count = 0usize;
        store
            .load(&mut |row| {
                if error.is_some() {
                    return;
                }
                match row {
                    Loaded::User(u) => {
                        finish(&mut current, &mut head, &mut methods, &mut count);
                        let Some(&t) = index.get(&u.tenant) else {
                            report.skipped_unknown_tenant += 1;
                            return;
                        };
                        match User::from_stored(u) {
                            Ok(user) => {
                                Packed::encode_head(&mut head, &user);
                                current = Some((t, user.subject.into()));
                                report.users += 1;
                            }
                            Err(e) => error = Some(e),
                        }
                    }
                    Loaded::Method(m) => {
                        let Some(&t) = index.get(&m.tenant) else {
                            report.skipped_unknown_tenant += 1;
                            return;
                        };
                        let mine = current
                            .as_ref()
                            .is_some_and(|(ct, s)| *ct == t && *s == m.subject);
                        match Method::from_stored(m) {
                            Ok(method) if mine => {
                                Packed::encode_method(&mut methods, &method);
                                count += 1;
                                report.methods += 1;
                            }
                            Ok(method) => {
                                error =
                                    Some(format!("method {} belongs to no stored user", method.id))
                            }
                            Err(e) => error = Some(e),
                        }
                    }
                    Loaded::Token(tok) => {
                        finish(&mut current, &mut head, &mut methods, &mut count);
                        let Some(&t) = index.get(&tok.tenant) else {
                            report.skipped_unknown_tenant += 1;
                            return;
                        };
                        match TokenEntry::from_stored(&tok, &key) {
                            Ok(entry) => {
                                tokens[t].put(entry);
                                report.tokens += 1;
                            }
                            Err(e) => error = Some(e),
                        }
                    }
                    Loaded::Pin(p) => {
                        finish(&mut current, &mut head, &mut methods, &mut count);
                        let Some(&t) = index.get(&p.tenant) else {
                            report.skipped_unknown_tenant += 1;
                            return;
                        };
                        match PinEntry::from_stored(&p) {
                            Ok(entry) => {
                                pins[t].insert(p.subject.as_str().into(), entry);
                                report.pins += 1;
                            }
                            Err(e) => error = Some(e),
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        finish(&mut current, &mut head, &mut methods, &mut count);
        if let Some(e) = error {
            return Err(format!("the directory store holds a bad row: {e}"));
        }
        for (map, users) in dir.maps.iter_mut().zip(users) {
            *map.get_mut() = users.into_iter().collect();
        }
        for (map, pins) in dir.pins.iter_mut().zip(pins) {
            *map.get_mut() = pins;
        }
        for (map, mut tokens) in dir.tokens.iter_mut().zip(tokens) {
            tokens.shrink_to_fit();
            *map.get_mut() = tokens;
        }
        dir.store = Some(store);
        Ok((dir, report))
    }

    /// What the API shows of a token of the tenant.
    pub fn token_info(&self, tenant: TenantId, serial: &str) -> Option<TokenInfo> {
        let t = self.tokens.get(usize::from(tenant.0))?.read();
        t.get(serial).map(TokenEntry::info)
    }

    /// Whether the user holds an active token.
    pub fn has_active_token(&self, tenant: TenantId, subject: &str) -> bool {
        self.tokens.get(usize::from(tenant.0)).is_some_and(|t| {
            t.read()
                .tokens_of(subject)
                .any(|e| e.state == TokenState::Active)
        })
    }

    /// The serials of a user's tokens.
    pub fn tokens_of(&self, tenant: TenantId, subject: &str) -> Vec<String> {
        self.tokens
            .get(usize::from(tenant.0))
            .map(|t| {
                t.read()
                    .tokens_of(subject)
                    .map(|e| e.serial().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Users of every tenant.
    pub fn len(&self) -> usize {
        self.maps.iter().map(|m| m.read().len()).sum()
    }

    /// Whether no tenant has a user.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Users of one tenant.
    pub fn tenant_len(&self, tenant: TenantId) -> usize {
        self.map(tenant).map_or(0, |m| m.read().len())
    }

    /// Whether writes reach a durable store.
    pub fn is_durable(&self) -> bool {
        self.store.is_some()
    }

    /// Whether the store refused a commit and takes no more writes (until a
    /// restart reloads memory from disk).
    pub fn store_failed(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.failed())
    }

    /// Writes queued for the store now.
    pub fn store_queued(&self) -> usize {
        self.store.as_ref().map_or(0, |s| s.queued())
    }

    fn map(&self, tenant: TenantId) -> Option<&RwLock<UserMap>> {
        self.maps.get(usize::from(tenant.0))
    }

    fn tenant_name(&self, tenant: TenantId) -> &str {
        self.tenants
            .get(usize::from(tenant.0))
            .map_or("", String::as_str)
    }

    /// Calls `f` with the user under the tenant's read lock (keep it short).
    ///
    /// Locking behaviour: takes the tenant's read lock for the call.
    pub fn with_user<R>(
        &self,
        tenant: TenantId,
        subject: &str,
        f: impl FnOnce(&User) -> R,
    ) -> Option<R> {
        let map = self.map(tenant)?.read();
        map.get(subject.as_bytes()).map(|p| f(&p.decode()))
    }

    /// Calls `f` with the user read in place under the tenant's read lock:
    /// no allocation (the hot path's way in; keep `f` short).
    ///
    /// Locking behaviour: takes the tenant's read lock for the call.
    pub fn with_view<R>(
        &self,
        tenant: TenantId,
        subject: &str,
        f: impl FnOnce(UserView<'_>) -> R,
    ) -> Option<R> {
        let map = self.map(tenant)?.read();
        map.get(subject.as_bytes()).map(|p| f(p.view()))
    }

    /// A copy of the user.
    pub fn user(&self, tenant: TenantId, subject: &str) -> Option<User> {
        self.with_user(tenant, subject, User::clone)
    }

    /// Up to `limit` users whose subject sorts after `after`, in subject
    /// order, and the subject to continue after when more remain.
    pub fn list(&self, tenant: TenantId, after: &str, limit: usize) -> (Vec<User>, Option<String>) {
        let Some(map) = self.map(tenant) else {
            return (Vec::new(), None);
        };
        let map = map.read();
        use std::ops::Bound;
        let mut range = map.range::<[u8], _>((Bound::Excluded(after.as_bytes()), Bound::Unbounded));
        let users: Vec<User> = range.by_ref().take(limit).map(Packed::decode).collect();
        let next = (range.next().is_some() && !users.is_empty())
            .then(|| users.last().map(|u| u.subject.to_string()))
            .flatten();
        (users, next)
    }

    /// Applies one change to the tenant's map: `change` gets the map and
    /// returns the value and the rows to write, or refuses. The rows go to
    /// the store's queue before the map changes, in one critical section.
    ///
    /// Locking behaviour: takes the tenant's write lock for the call; never
    /// waits on the disk (the store's queue is non-blocking).
    fn write<R>(
        &self,
        tenant: TenantId,
        change: impl FnOnce(&UserMap, &str) -> Result<(R, Vec<StoreOp>, Edit), DirectoryError>,
    ) -> Result<Durable<R>, DirectoryError> {
        let map = self
            .map(tenant)
            .ok_or(DirectoryError::NotFound("no such tenant"))?;
        let name = self.tenant_name(tenant);
        let mut map = map.write();
        let (value, ops, edit) = change(&map, name)?;
        let ticket = match (&self.store, ops.is_empty()) {
            (Some(store), false) => Some(store.submit(ops)?),
            _ => None,
        };
        match edit {
            Edit::Put(user) => {
                map.replace(Packed::encode(&user));
            }
            Edit::Remove(subject) => {
                map.remove(subject.as_bytes());
            }
            Edit::None => {}
        }
        Ok(Durable { value, ticket })
    }

    /// Creates or updates a user (a merge: fields the patch leaves out keep
    /// their value). Answers the user and what was done.
    pub fn put_user(
        &self,
        tenant: TenantId,
        subject: &str,
        patch: &UserPatch,
        now_ms: u64,
    ) -> Result<Durable<(User, Upsert)>, DirectoryError> {
        validate_subject(subject)?;
        validate_patch(patch)?;
        self.write(tenant, |map, tenant_name| {
            let (mut user, created) = match map.get(subject.as_bytes()) {
                Some(u) => (u.decode(), false),
                None => (
                    User {
                        subject: subject.into(),
                        display_name: None,
                        email: None,
                        locale: None,
                        enabled: true,
                        default_method: None,
                        methods: Box::default(),
                        created_at_ms: now_ms,
                        updated_at_ms: now_ms,
                    },
                    true,
                ),
            };
            let before = user.clone();
            if let Some(v) = &patch.display_name {
                user.display_name = v.as_deref().map(Into::into);
            }
            if let Some(v) = &patch.email {
                user.email = v.as_deref().map(Into::into);
            }
            if let Some(v) = &patch.locale {
                user.locale = v.as_deref().map(Into::into);
            }
            if let Some(v) = patch.enabled {
                user.enabled = v;
            }
            if let Some(v) = patch.default_method {
                user.default_method = v;
            }
            if !created && user == before {
                // Nothing changed: nothing to write.
                return Ok(((user, Upsert::Unchanged), Vec::new(), Edit::None));
            }
            user.updated_at_ms = now_ms;
            let ops = vec![StoreOp::PutUser(user.to_stored(tenant_name))];
            let done = if created {
                Upsert::Created
            } else {
                Upsert::Updated
            };
            Ok(((user.clone(), done), ops, Edit::Put(user)))
        })
    }

    /// Deletes a user with its methods (and, in the store, its tokens and PIN).
    pub fn delete_user(
        &self,
        tenant: TenantId,
        subject: &str,
    ) -> Result<Durable<User>, DirectoryError> {
        validate_subject(subject)?;
        self.write(tenant, |map, tenant_name| {
            let user = map
                .get(subject.as_bytes())
                .ok_or(DirectoryError::NotFound("no such user"))?
                .decode();
            let ops = vec![StoreOp::DeleteUser {
                tenant: tenant_name.to_owned(),
                subject: subject.to_owned(),
            }];
            Ok((user, ops, Edit::Remove(subject.to_owned())))
        })
        .inspect(|_| {
            // The store's cascade takes the user's tokens; so does memory.
            if let Some(t) = self.tokens.get(usize::from(tenant.0)) {
                t.write().remove_subject(subject);
            }
            if let Some(p) = self.pins.get(usize::from(tenant.0)) {
                p.write().remove(subject);
            }
        })
    }

    /// Applies one change to the tenant's tokens: `change` gets the table
    /// and returns the value and the rows to write; the rows are queued in
    /// the same critical section. Callers that need the user to exist hold
    /// its tenant's user lock around this (users before tokens, always).
    ///
    /// Locking behaviour: takes the tenant's token write lock for the call.
    fn write_tokens<R>(
        &self,
        tenant: TenantId,
        change: impl FnOnce(
            &mut TokenTable,
            &str,
            &MasterKey,
        ) -> Result<(R, Vec<StoreOp>), DirectoryError>,
    ) -> Result<Durable<R>, DirectoryError> {
        let table = self
            .tokens
            .get(usize::from(tenant.0))
            .ok_or(DirectoryError::NotFound("no such tenant"))?;
        let name = self.tenant_name(tenant);
        let mut table = table.write();
        let (value, ops) = change(&mut table, name, &self.key)?;
        let ticket = match (&self.store, ops.is_empty()) {
            (Some(store), false) => Some(store.submit(ops)?),
            _ => None,
        };
        Ok(Durable { value, ticket })
    }

    /// The tenant's user map, read-locked, once `subject` is known to be in
    /// it: held by a change that needs the user to stay (users before
    /// tokens and PINs, always).
    fn existing_user(
        &self,
        tenant: TenantId,
        subject: &str,
    ) -> Result<parking_lot::RwLockReadGuard<'_, UserMap>, DirectoryError> {
        let users = self
            .map(tenant)
            .ok_or(DirectoryError::NotFound("no such tenant"))?
            .read();
        if !users.contains(subject.as_bytes()) {
            return Err(DirectoryError::NotFound("no such user"));
        }
        Ok(users)
    }

    /// Enrolls a software token for an existing user: a fresh secret from
    /// the CSPRNG, a new serial. Answers the serial and the secret (shown
    /// once, as the enrollment's URI; never again).
    pub fn enroll_token(
        &self,
        tenant: TenantId,
        subject: &str,
        kind: crate::oath::Kind,
        params: crate::oath::Params,
        now_ms: u64,
    ) -> Result<Durable<(String, crate::oath::Secret)>, DirectoryError> {
        params
            .validate()
            .map_err(|e| DirectoryError::InvalidArgument(e.to_string()))?;
        let users = self.existing_user(tenant, subject)?;
        let secret_len = match params.algorithm {
            crate::oath::Algorithm::Sha1 => 20,
            crate::oath::Algorithm::Sha256 => 32,
            crate::oath::Algorithm::Sha512 => 64,
        };
        let secret =
            crate::oath::Secret::generate(secret_len).map_err(|e| DirectoryError::Unavailable {
                retry_after_ms: 0,
                message: e.to_string(),
            })?;
        let done = self.write_tokens(tenant, |table, tenant_name, key| {
            let serial = loop {
                let s = format!("WW{:012X}", rand::random::<u64>() >> 16);
                if !table.contains(&s) {
                    break s;
                }
            };
            let entry = TokenEntry::new(
                &serial,
                Some(subject),
                kind,
                params,
                secret.expose(),
                0,
                now_ms,
            );
            let ops = vec![StoreOp::PutToken(entry.to_stored(tenant_name, key))];
            table.put(entry);
            Ok(((serial, secret), ops))
        });
        drop(users);
        done
    }

    /// Checks `code` against the user's active tokens at `now_s`; the first
    /// that matches takes it (its step or counter moves past it), and when
    /// none does, each active token counts one more failure (locking at
    /// `max_failures`). The moved state is queued for the store before the
    /// lock is released: answer only after [`Durable::wait`].
    pub fn verify_token_code(
        &self,
        tenant: TenantId,
        subject: &str,
        code: &[u8],
        now_s: u64,
        policy: TokenPolicy,
    ) -> Result<Durable<TokenCheck>, DirectoryError> {
        self.write_tokens(tenant, |table, tenant_name, _| {
            let slots = table.of(subject);
            let mut active = 0;
            let mut ops = Vec::new();
            let mut matched = None;
            for &slot in &slots {
                let Some(e) = table.at_mut(slot) else {
                    continue;
                };
                if e.state != TokenState::Active {
                    continue;
                }
                active += 1;
                if matched.is_none() && e.verify(code, now_s, policy.window, policy.lookahead) {
                    matched = Some(e.serial().to_owned());
                    ops.push(progress(tenant_name, e));
                }
            }
            if active == 0 {
                let result = if slots.is_empty() {
                    TokenCheck::NoTokens
                } else {
                    TokenCheck::AllLocked
                };
                return Ok((result, ops));
            }
            if let Some(serial) = matched {
                return Ok((
                    TokenCheck::Accepted {
                        serial: serial.into(),
                    },
                    ops,
                ));
            }
            // No token took it: one more failure on each active token.
            let mut locked = Vec::new();
            for &slot in &slots {
                let Some(e) = table.at_mut(slot) else {
                    continue;
                };
                if e.state != TokenState::Active {
                    continue;
                }
                e.failcount = e.failcount.saturating_add(1);
                if e.failcount >= policy.max_failures {
                    e.state = TokenState::Locked;
                    locked.push(e.serial().to_owned());
                }
                ops.push(progress(tenant_name, e));
            }
            let all_locked = locked.len() == active;
            Ok((TokenCheck::Wrong { locked, all_locked }, ops))
        })
    }

    /// Resynchronises a token with two consecutive codes: HOTP searches the
    /// next 1000 counters, TOTP the 1000 steps either side of now (never at
    /// or before its last accepted step). Answers whether they were found.
    pub fn resync_token(
        &self,
        tenant: TenantId,
        serial: &str,
        code1: &str,
        code2: &str,
        now_s: u64,
    ) -> Result<Durable<Option<TokenInfo>>, DirectoryError> {
        self.write_tokens(tenant, |table, tenant_name, _| {
            let e = table
                .get_mut(serial)
                .ok_or(DirectoryError::NotFound("no such token"))?;
            let token = e
                .token()
                .map_err(|err| DirectoryError::Conflict(err.to_string()))?;
            let found = match e.kind {
                crate::oath::Kind::Hotp => token
                    .resync(code1.as_bytes(), code2.as_bytes(), e.counter, 1000)
                    .map(|c| e.counter = c + 1),
                crate::oath::Kind::Totp => {
                    let now = token.step_at(now_s);
                    let from = now.saturating_sub(1000).max(e.last_step.saturating_add(1));
                    token
                        .resync(code1.as_bytes(), code2.as_bytes(), from, 2001)
                        .map(|step| {
                            e.last_step = step;
                            e.drift =
                                tokens::clamp_drift((i128::from(step) - i128::from(now)) as i64);
                        })
                }
            };
            if found.is_none() {
                return Ok((None, Vec::new()));
            }
            e.failcount = 0;
            let ops = vec![progress(tenant_name, e)];
            Ok((Some(e.info()), ops))
        })
    }

    /// Assigns a token (an imported one, or another user's after a
    /// deletion) to an existing user.
    pub fn assign_token(
        &self,
        tenant: TenantId,
        serial: &str,
        subject: &str,
    ) -> Result<Durable<TokenInfo>, DirectoryError> {
        let users = self.existing_user(tenant, subject)?;
        let done = self.write_tokens(tenant, |table, tenant_name, key| {
            let mut e = table
                .remove(serial)
                .ok_or(DirectoryError::NotFound("no such token"))?;
            if e.subject().is_some_and(|s| s != subject) {
                table.put(e);
                return Err(DirectoryError::Conflict(
                    "the token is assigned to another user; delete or reassign it there first"
                        .into(),
                ));
            }
            e.set_subject(Some(subject));
            let ops = vec![StoreOp::PutToken(e.to_stored(tenant_name, key))];
            let info = e.info();
            table.put(e);
            Ok((info, ops))
        });
        drop(users);
        done
    }

    /// Adds an imported token (not yet anyone's unless `subject` names an
    /// existing user); a serial the tenant has already is refused, never
    /// overwritten.
    pub fn import_token(
        &self,
        tenant: TenantId,
        token: crate::import::ImportedToken,
        now_ms: u64,
    ) -> Result<Durable<()>, DirectoryError> {
        let crate::import::ImportedToken {
            serial,
            subject,
            kind,
            params,
            secret,
            counter,
        } = token;
        let (serial, subject) = (serial.as_str(), subject.as_deref());
        params
            .validate()
            .and_then(|()| crate::oath::validate_secret(secret.expose()))
            .map_err(|e| DirectoryError::InvalidArgument(e.to_string()))?;
        if serial.is_empty() || serial.len() > 128 || serial.chars().any(char::is_control) {
            return Err(DirectoryError::InvalidArgument(
                "serial: must be 1 to 128 bytes without control characters".into(),
            ));
        }
        let users = self
            .map(tenant)
            .ok_or(DirectoryError::NotFound("no such tenant"))?
            .read();
        if let Some(s) = subject
            && !users.contains(s.as_bytes())
        {
            return Err(DirectoryError::NotFound("no such user"));
        }
        let done = self.write_tokens(tenant, |table, tenant_name, key| {
            if table.contains(serial) {
                return Err(DirectoryError::Conflict("duplicate serial".into()));
            }
            let entry = TokenEntry::new(
                serial,
                subject,
                kind,
                params,
                secret.expose(),
                counter,
                now_ms,
            );
            let ops = vec![StoreOp::PutToken(entry.to_stored(tenant_name, key))];
            table.put(entry);
            Ok(((), ops))
        });
        drop(users);
        done
    }

    /// Draws a new PIN of `length` digits for an existing user (replacing
    /// any PIN, unlocked, no failures) and keeps only its verifier. Answers
    /// the PIN: shown once, never again.
    pub fn reset_pin(
        &self,
        tenant: TenantId,
        subject: &str,
        length: u8,
        now_ms: u64,
    ) -> Result<Durable<Pin>, DirectoryError> {
        if !(MIN_PIN_LEN..=MAX_PIN_LEN).contains(&length) {
            return Err(DirectoryError::InvalidArgument(format!(
                "PIN length: {MIN_PIN_LEN} to {MAX_PIN_LEN} digits, got {length}"
            )));
        }
        let users = self.existing_user(tenant, subject)?;
        let pin = pins::draw(length).map_err(|_| DirectoryError::Unavailable {
            retry_after_ms: 0,
            message: "the system's random generator failed".into(),
        })?;
        let table = self
            .pins
            .get(usize::from(tenant.0))
            .ok_or(DirectoryError::NotFound("no such tenant"))?;
        let name = self.tenant_name(tenant);
        let entry = PinEntry::new(&self.key, name, subject, &pin, now_ms);
        let ops = vec![StoreOp::PutPin(entry.to_stored(name, subject))];
        // Queued under the PIN table's lock, after the user lock: a reset
        // racing another lands in the store in the order it lands here.
        let mut pins = table.write();
        let ticket = match &self.store {
            Some(store) => Some(store.submit(ops)?),
            None => None,
        };
        pins.insert(subject.into(), entry);
        drop(pins);
        drop(users);
        Ok(Durable { value: pin, ticket })
    }

    /// What the API shows of a user's PIN, if the user has one.
    pub fn pin_info(&self, tenant: TenantId, subject: &str) -> Option<PinInfo> {
        let t = self.pins.get(usize::from(tenant.0))?.read();
        t.get(subject).map(PinEntry::info)
    }

    /// `answer` as the user's active PIN followed by a one-time code: the
    /// code when the PIN is right (compared in constant time), `None` when
    /// it is wrong, or the user has no active PIN, or nothing follows it.
    /// Counts nothing (in `prefix` mode a wrong PIN counts where the code
    /// would: the caller's job).
    pub fn strip_pin<'a>(
        &self,
        tenant: TenantId,
        subject: &str,
        answer: &'a str,
    ) -> Option<&'a str> {
        let table = self.pins.get(usize::from(tenant.0))?.read();
        let p = table.get(subject).filter(|p| p.state == PinState::Active)?;
        let (pin, code) = answer.split_at_checked(usize::from(p.length))?;
        let right = p.matches(&self.key, self.tenant_name(tenant), subject, pin.as_bytes());
        (right && !code.is_empty()).then_some(code)
    }

    /// Whether `pin` is the user's active PIN, in constant time. Counts
    /// nothing: in `prefix` mode a wrong PIN counts as a wrong code on what
    /// it was typed with (the caller's job).
    pub fn pin_matches(&self, tenant: TenantId, subject: &str, pin: &[u8]) -> bool {
        let Some(t) = self.pins.get(usize::from(tenant.0)) else {
            return false;
        };
        let name = self.tenant_name(tenant);
        t.read().get(subject).is_some_and(|p| {
            p.state == PinState::Active && p.matches(&self.key, name, subject, pin)
        })
    }

    /// A confirmation call's PIN (tenant mode `call`): whether `pin` is the
    /// user's active PIN, in constant time. A wrong one (or none, or a
    /// locked PIN) counts a failure, locking the PIN at `max_failures`; a
    /// right one clears the failures. The change is queued for the store
    /// (not waited for: the call's outcome is what answers). Answers
    /// whether the PIN was right, and whether this try locked it.
    pub fn check_call_pin(
        &self,
        tenant: TenantId,
        subject: &str,
        pin: &[u8],
        max_failures: u32,
    ) -> (bool, bool) {
        let Some(table) = self.pins.get(usize::from(tenant.0)) else {
            return (false, false);
        };
        let name = self.tenant_name(tenant);
        let mut pins = table.write();
        let Some(entry) = pins.get_mut(subject) else {
            return (false, false);
        };
        let right = entry.matches(&self.key, name, subject, pin);
        let ok = right && entry.state == PinState::Active;
        let before = (entry.failcount, entry.state);
        if ok {
            entry.failcount = 0;
        } else if entry.state == PinState::Active {
            entry.failcount = entry.failcount.saturating_add(1);
            if entry.failcount >= max_failures.max(1) {
                entry.state = PinState::Locked;
            }
        }
        if (entry.failcount, entry.state) != before
            && let Some(store) = &self.store
        {
            let op = StoreOp::PinProgress {
                tenant: name.to_owned(),
                subject: subject.to_owned(),
                failcount: entry.failcount,
                state: entry.state.name().to_owned(),
            };
            if let Err(e) = store.submit(vec![op]) {
                tracing::error!(error = %e, "a PIN's failures could not be queued for the store");
            }
        }
        (
            ok,
            before.1 == PinState::Active && entry.state == PinState::Locked,
        )
    }

    /// Unlocks a token and clears its failures.
    pub fn reset_token(
        &self,
        tenant: TenantId,
        serial: &str,
    ) -> Result<Durable<TokenInfo>, DirectoryError> {
        self.write_tokens(tenant, |table, tenant_name, _| {
            let e = table
                .get_mut(serial)
                .ok_or(DirectoryError::NotFound("no such token"))?;
            e.failcount = 0;
            if e.state == TokenState::Locked {
                e.state = TokenState::Active;
            }
            let ops = vec![progress(tenant_name, e)];
            Ok((e.info(), ops))
        })
    }

    /// Deletes a token.
    pub fn delete_token(
        &self,
        tenant: TenantId,
        serial: &str,
    ) -> Result<Durable<TokenInfo>, DirectoryError> {
        self.write_tokens(tenant, |table, tenant_name, _| {
            let e = table
                .remove(serial)
                .ok_or(DirectoryError::NotFound("no such token"))?;
            let ops = vec![StoreOp::DeleteToken {
                tenant: tenant_name.to_owned(),
                serial: serial.to_owned(),
            }];
            Ok((e.info(), ops))
        })
    }

    /// Registers a method for an existing user.
    pub fn add_method(
        &self,
        tenant: TenantId,
        subject: &str,
        method: Method,
        now_ms: u64,
    ) -> Result<Durable<Method>, DirectoryError> {
        validate_subject(subject)?;
        self.write(tenant, |map, tenant_name| {
            let mut user = existing(map, subject)?;
            admits(&user, method.kind, &method.destination, now_ms)?;
            let ops = vec![StoreOp::PutMethod(method.to_stored(tenant_name, subject))];
            let mut methods = std::mem::take(&mut user.methods).into_vec();
            methods.push(method.clone());
            user.methods = methods.into_boxed_slice();
            Ok((method, ops, Edit::Put(user)))
        })
    }

    /// Changes one method with `change`, which says whether it changed
    /// anything; an unchanged method writes nothing.
    pub fn update_method(
        &self,
        tenant: TenantId,
        subject: &str,
        id: MethodId,
        change: impl FnOnce(&mut Method) -> bool,
    ) -> Result<Durable<Method>, DirectoryError> {
        self.write(tenant, |map, tenant_name| {
            let mut user = existing(map, subject)?;
            let m = user
                .methods
                .iter_mut()
                .find(|m| m.id == id)
                .ok_or(DirectoryError::NotFound("no such method"))?;
            if !change(m) {
                let m = m.clone();
                return Ok((m, Vec::new(), Edit::None));
            }
            let m = m.clone();
            let ops = vec![StoreOp::PutMethod(m.to_stored(tenant_name, subject))];
            Ok((m, ops, Edit::Put(user)))
        })
    }

    /// Deletes one method.
    pub fn delete_method(
        &self,
        tenant: TenantId,
        subject: &str,
        id: MethodId,
    ) -> Result<Durable<Method>, DirectoryError> {
        self.write(tenant, |map, tenant_name| {
            let mut user = existing(map, subject)?;
            let at = user
                .methods
                .iter()
                .position(|m| m.id == id)
                .ok_or(DirectoryError::NotFound("no such method"))?;
            let mut methods = std::mem::take(&mut user.methods).into_vec();
            let m = methods.remove(at);
            user.methods = methods.into_boxed_slice();
            let ops = vec![StoreOp::DeleteMethod {
                tenant: tenant_name.to_owned(),
                subject: subject.to_owned(),
                id: id.0,
            }];
            Ok((m, ops, Edit::Put(user)))
        })
    }
}

/// The user `subject` of `map`, decoded, or NotFound.
fn existing(map: &UserMap, subject: &str) -> Result<User, DirectoryError> {
    map.get(subject.as_bytes())
        .map(Packed::decode)
        .ok_or(DirectoryError::NotFound("no such user"))
}

/// Whether `user` may register one more method of `kind` to `destination`:
/// at most [`MAX_METHODS_PER_USER`], and no second one of the same type and
/// destination unless the first has failed.
pub fn admits(
    user: &User,
    kind: MethodType,
    destination: &str,
    now_ms: u64,
) -> Result<(), DirectoryError> {
    if user.methods.len() >= MAX_METHODS_PER_USER {
        return Err(DirectoryError::Conflict(format!(
            "a user has at most {MAX_METHODS_PER_USER} methods; delete one first"
        )));
    }
    if user.methods.iter().any(|m| {
        m.kind == kind
            && *m.destination == *destination
            && m.state_at(now_ms) != MethodState::Failed
    }) {
        return Err(DirectoryError::Conflict(format!(
            "this user already has a {} method to that destination",
            kind.name()
        )));
    }
    Ok(())
}

/// How tokens verify, per tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenPolicy {
    /// TOTP steps accepted either side of the current one (1 by default).
    pub window: u8,
    /// HOTP counters tried from the next expected (10 by default).
    pub lookahead: u32,
    /// Wrong codes in a row that lock a token (10 by default).
    pub max_failures: u32,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            window: 1,
            lookahead: 10,
            max_failures: 10,
        }
    }
}

/// What a code did against a user's tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// The user holds no token.
    NoTokens,
    /// Every token of the user is locked or disabled.
    AllLocked,
    /// This token took the code.
    Accepted {
        /// Its serial.
        serial: Box<str>,
    },
    /// No token took it; these were locked by this failure.
    Wrong {
        /// Tokens locked now.
        locked: Vec<String>,
        /// Whether no active token is left.
        all_locked: bool,
    },
}

fn progress(tenant: &str, e: &TokenEntry) -> StoreOp {
    StoreOp::TokenProgress {
        tenant: tenant.to_owned(),
        serial: e.serial().to_owned(),
        counter: e.counter,
        last_step: e.last_step,
        drift: i64::from(e.drift),
        failcount: e.failcount,
        state: e.state.name().to_owned(),
    }
}

/// What a write does to the map once its rows are queued.
enum Edit {
    Put(User),
    Remove(String),
    None,
}

fn validate_patch(p: &UserPatch) -> Result<(), DirectoryError> {
    if let Some(Some(v)) = &p.display_name {
        validate_text("display_name", v, MAX_DISPLAY_NAME_LEN)?;
    }
    if let Some(Some(v)) = &p.email
        && !email_address::EmailAddress::is_valid(v)
    {
        return Err(DirectoryError::InvalidArgument(
            "email: not a valid e-mail address".into(),
        ));
    }
    if let Some(Some(v)) = &p.locale
        && (v.is_empty()
            || v.len() > MAX_LOCALE_LEN
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(DirectoryError::InvalidArgument(format!(
            "locale: must be a BCP 47 tag such as \"en\" or \"fr-CA\" (1 to {MAX_LOCALE_LEN} letters, digits and '-')"
        )));
    }
    if let Some(Some(t)) = p.default_method
        && matches!(t, MethodType::Pin)
    {
        return Err(DirectoryError::InvalidArgument(
            "default_method: must be one of sms, voice, email, call, token".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TenantId = TenantId(0);

    fn dir() -> Directory {
        Directory::in_memory(vec!["a".into(), "b".into()])
    }

    fn sms(dest: &str) -> Method {
        Method {
            id: MethodId::random(),
            kind: MethodType::Sms,
            state: MethodState::Pending,
            destination: dest.into(),
            created_at_ms: 5,
            confirmed_at_ms: 0,
            effective_at_ms: 0,
            confirm_deadline_ms: 1_000,
        }
    }

    #[test]
    fn put_merges_and_reports_creation() {
        let d = dir();
        let p = UserPatch {
            display_name: Some(Some("Ann".into())),
            ..UserPatch::default()
        };
        let (u, created) = d
            .put_user(T, "ann", &p, 10)
            .unwrap()
            .wait_blocking()
            .unwrap();
        assert!(created == Upsert::Created && u.enabled && u.created_at_ms == 10);
        let p2 = UserPatch {
            locale: Some(Some("fr".into())),
            ..UserPatch::default()
        };
        let (u, created) = d
            .put_user(T, "ann", &p2, 20)
            .unwrap()
            .wait_blocking()
            .unwrap();
        assert_eq!(created, Upsert::Updated);
        assert_eq!(
            u.display_name.as_deref(),
            Some("Ann"),
            "a field left out keeps its value"
        );
        assert_eq!(u.locale.as_deref(), Some("fr"));
        assert_eq!((u.created_at_ms, u.updated_at_ms), (10, 20));
        let clear = UserPatch {
            display_name: Some(None),
            ..UserPatch::default()
        };
        let (u, _) = d
            .put_user(T, "ann", &clear, 30)
            .unwrap()
            .wait_blocking()
            .unwrap();
        assert_eq!(u.display_name, None);
        let (u, same) = d
            .put_user(T, "ann", &clear, 40)
            .unwrap()
            .wait_blocking()
            .unwrap();
        assert_eq!(
            (same, u.updated_at_ms),
            (Upsert::Unchanged, 30),
            "nothing written"
        );
    }

    #[test]
    fn tenants_never_see_each_other() {
        let d = dir();
        let _ = d.put_user(T, "ann", &UserPatch::default(), 1).unwrap();
        assert!(d.user(TenantId(1), "ann").is_none());
        assert_eq!(
            d.delete_user(TenantId(1), "ann").unwrap_err(),
            DirectoryError::NotFound("no such user")
        );
        assert!(d.user(T, "ann").is_some());
        assert!(
            d.user(TenantId(7), "ann").is_none(),
            "an unknown tenant has nobody"
        );
    }

    #[test]
    fn bad_fields_are_refused_with_their_name() {
        let d = dir();
        let long = "x".repeat(257);
        for (subject, patch, field) in [
            ("", UserPatch::default(), "subject"),
            (long.as_str(), UserPatch::default(), "subject"),
            ("a\nb", UserPatch::default(), "subject"),
            (
                "ann",
                UserPatch {
                    email: Some(Some("not an address".into())),
                    ..UserPatch::default()
                },
                "email",
            ),
            (
                "ann",
                UserPatch {
                    locale: Some(Some("en US".into())),
                    ..UserPatch::default()
                },
                "locale",
            ),
        ] {
            match d.put_user(T, subject, &patch, 1) {
                Err(DirectoryError::InvalidArgument(m)) => assert!(m.starts_with(field), "{m}"),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(d.is_empty());
    }

    #[test]
    fn list_pages_in_subject_order() {
        let d = dir();
        for s in ["d", "a", "c", "b", "e"] {
            let _ = d.put_user(T, s, &UserPatch::default(), 1).unwrap();
        }
        let (page, next) = d.list(T, "", 2);
        let names: Vec<_> = page.iter().map(|u| &*u.subject).collect();
        assert_eq!((names, next.as_deref()), (vec!["a", "b"], Some("b")));
        let (page, next) = d.list(T, "b", 2);
        assert_eq!(page.len(), 2);
        assert_eq!(next.as_deref(), Some("d"));
        let (page, next) = d.list(T, "d", 2);
        assert_eq!((page.len(), next), (1, None));
    }

    #[test]
    fn methods_are_added_updated_and_deleted_with_their_user() {
        let d = dir();
        let _ = d.put_user(T, "ann", &UserPatch::default(), 1).unwrap();
        assert_eq!(
            d.add_method(TenantId(0), "bob", sms("+14255550100"), 2)
                .unwrap_err(),
            DirectoryError::NotFound("no such user")
        );
        let m = d
            .add_method(T, "ann", sms("+14255550100"), 2)
            .unwrap()
            .wait_blocking()
            .unwrap();
        assert!(matches!(
            d.add_method(T, "ann", sms("+14255550100"), 2),
            Err(DirectoryError::Conflict(_))
        ));
        let m2 = d
            .update_method(T, "ann", m.id, |m| {
                m.state = MethodState::Active;
                true
            })
            .unwrap()
            .wait_blocking()
            .unwrap();
        assert_eq!(m2.state, MethodState::Active);
        assert_eq!(
            d.user(T, "ann").unwrap().methods[0].state,
            MethodState::Active
        );
        let _ = d.delete_method(T, "ann", m.id).unwrap();
        assert!(d.user(T, "ann").unwrap().methods.is_empty());
        assert_eq!(
            d.delete_method(T, "ann", m.id).unwrap_err(),
            DirectoryError::NotFound("no such method")
        );
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_methods() {
        let d = dir();
        let _ = d.put_user(T, "ann", &UserPatch::default(), 1).unwrap();
        for i in 0..MAX_METHODS_PER_USER {
            let _ = d
                .add_method(T, "ann", sms(&format!("+1425555{i:04}")), 2)
                .unwrap();
        }
        assert!(matches!(
            d.add_method(T, "ann", sms("+14255559999"), 2),
            Err(DirectoryError::Conflict(_))
        ));
    }
}
