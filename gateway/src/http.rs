//! The HTTP API of `admin-api.md` (docs/http-api.md): users, methods, the
//! user-level decision (`POST /v1/check`), health, and the OpenAPI
//! description, on axum over the hyper already in the tree.
//!
//! Every request but health, the description and the carrier callbacks
//! (`POST /v1/carriers/{name}/receipts` and `.../calls`, authenticated by
//! the carrier's HMAC signature instead, at most 4 KiB) carries
//! `Authorization: Bearer KEY`; the key names its tenant and role (compared in constant time
//! against every configured key; a missing and a wrong key get the same 401).
//! Bodies are JSON, at most 1 MiB, parsed here so that every refusal has the
//! contract's error body and names the field and why.
//!
//! This module must never put a code, a key, a secret or a full destination
//! in a response, an error or a log line, never hold a lock across an
//! `.await`, and never answer a write before it is durable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use watchword_engine::check::{ConfirmOutcome, MAX_CHECK_FIELD};
use watchword_engine::delivery::{CallReport, CarrierKind, Receipt, callback};
use watchword_engine::directory::{
    Directory, DirectoryError, Durable, Method, MethodId, MethodType, TokenInfo, Upsert, User,
    UserPatch,
};
use watchword_engine::helpdesk::{CallerVerification, HelpdeskOutcome};
use watchword_engine::import::Row;
use watchword_engine::oath::{Algorithm, Kind, Params, otpauth_uri};
use watchword_engine::{CheckRequest, CheckResult, Engine, EngineError, TenantId};

use crate::config::{Config, HttpRole};

/// Largest request body, bytes (the token import, later, takes 16 MiB).
pub const MAX_BODY: usize = 1 << 20;
/// Most HTTP connections served at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// One configured key, resolved.
struct KeyEntry {
    key: Vec<u8>,
    tenant: TenantId,
    role: HttpRole,
}

/// What every handler shares.
pub struct ApiState {
    engine: Engine,
    keys: Vec<KeyEntry>,
    ready: Arc<AtomicBool>,
    /// `(name, callback_secret)` of each HTTP carrier with receipts on.
    callbacks: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field(
                "callbacks",
                &format_args!("<{} redacted>", self.callbacks.len()),
            )
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// The state for `cfg`'s tenants and keys over `engine`.
    pub fn new(cfg: &Config, engine: Engine, ready: Arc<AtomicBool>) -> ApiState {
        let keys = cfg
            .tenants
            .iter()
            .filter_map(|t| engine.tenant_id(&t.name).map(|id| (t, id)))
            .flat_map(|(t, id)| {
                t.http_keys.iter().map(move |k| KeyEntry {
                    key: k.key.as_bytes().to_vec(),
                    tenant: id,
                    role: k.role,
                })
            })
            .collect();
        let callbacks = cfg
            .router
            .carriers
            .iter()
            .filter(|c| c.kind == CarrierKind::Http && c.http.receipts)
            .map(|c| (c.name.clone(), c.http.callback_secret.as_bytes().to_vec()))
            .collect();
        ApiState {
            engine,
            keys,
            ready,
            callbacks,
        }
    }
}

/// An error answer: the contract's `{"error", "message"}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_ms: Option<u32>,
    attempts_left: Option<u8>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_ms: None,
            attempts_left: None,
        }
    }

    fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", m)
    }

    fn invalid(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument", m)
    }

    fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing or unknown key: send Authorization: Bearer KEY",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some(ms) = self.retry_after_ms {
            body["retry_after_ms"] = json!(ms);
        }
        if let Some(n) = self.attempts_left {
            body["attempts_left"] = json!(n);
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(ms) = self.retry_after_ms {
            let secs = u64::from(ms).div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidArgument(m) | EngineError::NoRoute(m) => Self::invalid(m),
            EngineError::RateLimited {
                retry_after_ms,
                message,
            } => Self {
                retry_after_ms: Some(retry_after_ms),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            },
            EngineError::Capacity {
                retry_after_ms,
                message,
            } => Self {
                retry_after_ms: (retry_after_ms > 0).then_some(retry_after_ms),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "capacity", message)
            },
            EngineError::NotFound => {
                Self::new(StatusCode::NOT_FOUND, "not_found", "no such challenge")
            }
            EngineError::ShuttingDown => Self {
                retry_after_ms: Some(1000),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the server is shutting down; retry on another node",
                )
            },
            EngineError::Internal(m) => {
                tracing::error!(message = %m, "engine fault (HTTP API)");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                )
            }
            EngineError::Directory(d) => d.into(),
        }
    }
}

impl From<DirectoryError> for ApiError {
    fn from(e: DirectoryError) -> Self {
        match e {
            DirectoryError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m),
            DirectoryError::InvalidArgument(m) => Self::invalid(m),
            DirectoryError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            DirectoryError::Unavailable {
                retry_after_ms,
                message,
            } => {
                tracing::error!(%message, "directory write refused");
                Self {
                    retry_after_ms: (retry_after_ms > 0).then_some(retry_after_ms),
                    ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "capacity", message)
                }
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// The key's tenant and role, or 401. Every configured key is compared, in
/// constant time, whatever the answer.
/// The key a request presents (`Authorization: Bearer KEY`), or "".
fn presented_key(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("")
}

fn authenticate(state: &ApiState, headers: &HeaderMap) -> Result<(TenantId, HttpRole), ApiError> {
    let presented = presented_key(headers);
    let mut found: Option<(TenantId, HttpRole)> = None;
    for k in &state.keys {
        let eq = if k.key.len() == presented.len() {
            bool::from(k.key.as_slice().ct_eq(presented.as_bytes()))
        } else {
            // Same work, never equal.
            let _ = presented.as_bytes().ct_eq(presented.as_bytes());
            false
        };
        if eq && found.is_none() {
            found = Some((k.tenant, k.role));
        }
    }
    match found {
        Some(f) if !presented.is_empty() => Ok(f),
        _ => Err(ApiError::unauthenticated()),
    }
}

/// The tenant, if the key's role is at least `need`; else 401 or 403.
fn allow(state: &ApiState, headers: &HeaderMap, need: HttpRole) -> Result<TenantId, ApiError> {
    let (tenant, role) = authenticate(state, headers)?;
    if role < need {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs a key with role {} (this key is {})",
                need.name(),
                role.name()
            ),
        ));
    }
    Ok(tenant)
}

/// The fingerprint of the key a request presented, for the audit trail:
/// `key:` and the first 12 hex digits of its SHA-256 (never the key).
fn key_fingerprint(headers: &HeaderMap) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, presented_key(headers).as_bytes());
    let mut s = String::from("key:");
    for b in d.as_ref().iter().take(6) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parses a JSON body into `T`, with the contract's errors: 413 over the
/// limit, 400 for what is not JSON or has unknown fields (the message names
/// the field and position, never the value).
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is over {MAX_BODY} bytes"),
            )
        } else {
            ApiError::bad_request("the body could not be read")
        }
    })?;
    let text = if bytes.is_empty() {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(text).map_err(|e| ApiError::bad_request(json_error(&e)))
}

/// A serde_json error without any value it quoted (a value may be a code).
fn json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let at = format!("line {} column {}", e.line(), e.column());
    let kind = match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            return format!("the body is not valid JSON ({at})");
        }
        serde_json::error::Category::Io => return "the body could not be read".into(),
        serde_json::error::Category::Data => msg,
    };
    if kind.starts_with("unknown field") || kind.starts_with("missing field") {
        // Names a field the client wrote or forgot: no value in it.
        let head = kind.split(" at line").next().unwrap_or(&kind);
        return head.to_owned();
    }
    match kind.split_once(", expected ") {
        Some((_, expected)) => {
            let expected = expected.split(" at line").next().unwrap_or(expected);
            format!("a field has the wrong type or value: expected {expected} ({at})")
        }
        None => format!("a field has the wrong type or value ({at})"),
    }
}

/// Deserialises a field that may be absent (keep), null (clear) or a value.
fn double<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn rfc3339(ms: u64) -> Value {
    if ms == 0 {
        return Value::Null;
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    json!(humantime::format_rfc3339_millis(t).to_string())
}

fn method_json(m: &Method, now_ms: u64) -> Value {
    json!({
        "id": m.id.to_string(),
        "type": m.kind.name(),
        "destination": m.masked().as_str(),
        "state": m.state_at(now_ms).name(),
        "confirmed_at": rfc3339(m.confirmed_at_ms),
        "effective_at": rfc3339(m.effective_at_ms),
    })
}

fn user_json(u: &User, now_ms: u64) -> Value {
    let email = u
        .email
        .as_deref()
        .map(|e| watchword_engine::mask_destination(e).as_str().to_owned());
    json!({
        "subject": &*u.subject,
        "display_name": u.display_name.as_deref(),
        "email": email,
        "locale": u.locale.as_deref(),
        "enabled": u.enabled,
        "default_method": u.default_method.map(|t| t.name()),
        "methods": u.methods.iter().map(|m| method_json(m, now_ms)).collect::<Vec<_>>(),
        "created_at": rfc3339(u.created_at_ms),
        "updated_at": rfc3339(u.updated_at_ms),
    })
}

fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    #[serde(default, deserialize_with = "double")]
    display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    locale: Option<Option<String>>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "double")]
    default_method: Option<Option<String>>,
}

async fn put_user(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Admin)?;
    let b: UserBody = parse_body(body)?;
    let default_method = match b.default_method {
        None => None,
        Some(None) => Some(None),
        Some(Some(t)) => match MethodType::parse(&t).filter(|t| *t != MethodType::Pin) {
            Some(t) => Some(Some(t)),
            None => {
                return Err(ApiError::invalid(
                    "default_method: must be one of sms, voice, email, call, token",
                ));
            }
        },
    };
    let patch = UserPatch {
        display_name: b.display_name,
        email: b.email,
        locale: b.locale,
        enabled: b.enabled,
        default_method,
    };
    let e = &st.engine;
    let now = e.now_ms();
    let (user, done) = e
        .directory()
        .put_user(tenant, &subject, &patch, now)?
        .wait()
        .await?;
    let event = match done {
        Upsert::Created => Some("user_created"),
        Upsert::Updated => Some("user_updated"),
        Upsert::Unchanged => None,
    };
    if let Some(event) = event {
        e.audit_directory(tenant, &subject, event, None, None);
    }
    let status = if done == Upsert::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, user_json(&user, now))
}

async fn get_user(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Helpdesk)?;
    let now = st.engine.now_ms();
    let user = st
        .engine
        .directory()
        .with_user(tenant, &subject, |u| user_json(u, now))
        .ok_or(DirectoryError::NotFound("no such user"))?;
    ok(StatusCode::OK, user)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_users(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Helpdesk)?;
    let Query(q) = query.map_err(|e| {
        ApiError::invalid(format!(
            "query: {}",
            e.body_text()
                .trim_start_matches("Failed to deserialize query string: ")
        ))
    })?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit: must be 1 to 1000, got {limit}"
        )));
    }
    let now = st.engine.now_ms();
    let (users, next) = st.engine.directory().list(tenant, &q.after, limit);
    ok(
        StatusCode::OK,
        json!({
            "users": users.iter().map(|u| user_json(u, now)).collect::<Vec<_>>(),
            "next": next,
        }),
    )
}

async fn delete_user(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Admin)?;
    st.engine
        .directory()
        .delete_user(tenant, &subject)?
        .wait()
        .await?;
    st.engine
        .audit_directory(tenant, &subject, "user_deleted", None, None);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodBody {
    #[serde(rename = "type")]
    kind: String,
    destination: String,
}

async fn add_method(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Admin)?;
    let b: MethodBody = parse_body(body)?;
    let kind = MethodType::parse(&b.kind)
        .filter(|t| MethodType::REGISTRABLE.contains(t))
        .ok_or_else(|| ApiError::invalid("type: must be one of sms, voice, email, call"))?;
    if b.destination.len() > 1024 {
        return Err(ApiError::invalid("destination: at most 1024 bytes"));
    }
    let now = st.engine.now_ms();
    let m = st
        .engine
        .add_method(tenant, &subject, kind, &b.destination)?
        .wait()
        .await?;
    st.engine
        .audit_directory(tenant, &subject, "method_added", Some(&m), None);
    ok(StatusCode::CREATED, method_json(&m, now))
}

fn method_id(raw: &str) -> Result<MethodId, ApiError> {
    MethodId::parse(raw).ok_or(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such method",
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    code: String,
}

async fn confirm_method(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((subject, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Admin)?;
    let id = method_id(&id)?;
    let b: ConfirmBody = parse_body(body)?;
    if b.code.len() > MAX_CHECK_FIELD {
        return Err(ApiError::invalid(format!(
            "code: at most {MAX_CHECK_FIELD} bytes"
        )));
    }
    let now = st.engine.now_ms();
    match st
        .engine
        .confirm_method(tenant, &subject, id, &b.code)?
        .wait()
        .await?
    {
        ConfirmOutcome::Confirmed(m) => ok(StatusCode::OK, method_json(&m, now)),
        ConfirmOutcome::WrongCode { attempts_left } => Err(ApiError {
            attempts_left: Some(attempts_left),
            ..ApiError::invalid(format!("code: wrong code; {attempts_left} attempts left"))
        }),
        ConfirmOutcome::Failed { reason, .. } => Err(ApiError {
            attempts_left: Some(0),
            ..ApiError::invalid(format!(
                "code: the confirmation failed ({reason}); the method is failed, register it again"
            ))
        }),
    }
}

async fn get_method(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((subject, id)): Path<(String, String)>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Helpdesk)?;
    let id = method_id(&id)?;
    let now = st.engine.now_ms();
    let m = st
        .engine
        .directory()
        .with_user(tenant, &subject, |u| {
            u.method(id).map(|m| method_json(m, now))
        })
        .ok_or(DirectoryError::NotFound("no such user"))?
        .ok_or(DirectoryError::NotFound("no such method"))?;
    ok(StatusCode::OK, m)
}

async fn delete_method(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((subject, id)): Path<(String, String)>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Admin)?;
    let id = method_id(&id)?;
    let m = st
        .engine
        .directory()
        .delete_method(tenant, &subject, id)?
        .wait()
        .await?;
    st.engine
        .audit_directory(tenant, &subject, "method_deleted", Some(&m), None);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    digits: Option<u8>,
    #[serde(default)]
    period: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    #[serde(default)]
    email: bool,
}

/// Draws a new PIN for the user (the tenant's current length), keeps only
/// its verifier, and answers it this once.
async fn reset_pin(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Admin)?;
    let b: PinBody = parse_body(body)?;
    let e = &st.engine;
    if b.email && e.pin_mail_address(tenant, &subject).is_none() {
        if e.directory().user(tenant, &subject).is_none() {
            return Err(DirectoryError::NotFound("no such user").into());
        }
        return Err(ApiError::invalid(
            "email: the user has no e-mail address (an active e-mail method or the profile's email)",
        ));
    }
    let length = e
        .tenant_policy(tenant)
        .map_or(watchword_engine::directory::DEFAULT_PIN_LEN, |p| {
            p.pin_length
        });
    let pin = e
        .directory()
        .reset_pin(tenant, &subject, length, e.now_ms())?
        .wait()
        .await?;
    e.audit_directory(tenant, &subject, "pin_reset", None, None);
    let mut answer = json!({"pin": pin.expose(), "length": pin.expose().len()});
    if b.email {
        // The PIN is reset whatever the mail does: the answer still shows
        // it this once, with why it was not sent.
        match e.email_pin(tenant, &subject, &pin) {
            Ok(to) => answer["emailed_to"] = json!(to),
            Err(err) => answer["email_error"] = json!(err.to_string()),
        }
    }
    ok(StatusCode::OK, answer)
}

/// Whether the user has a PIN, masked.
async fn get_pin(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Helpdesk)?;
    let dir = st.engine.directory();
    if dir.user(tenant, &subject).is_none() {
        return Err(DirectoryError::NotFound("no such user").into());
    }
    let body = match dir.pin_info(tenant, &subject) {
        Some(p) => json!({
            "set": true,
            "length": p.length,
            "masked": watchword_engine::directory::mask(usize::from(p.length)),
            "state": p.state.name(),
        }),
        None => json!({"set": false}),
    };
    ok(StatusCode::OK, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HelpdeskBody {
    subject: String,
    #[serde(default)]
    caller_id: String,
}

/// Starts a caller's verification: by caller ID when it is one of the
/// user's phones past its hold, else by a code sent to the user's contact.
async fn helpdesk_verify(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Helpdesk)?;
    let b: HelpdeskBody = parse_body(body)?;
    if b.caller_id.len() > 64 {
        return Err(ApiError::invalid("caller_id: at most 64 bytes"));
    }
    let agent = key_fingerprint(&headers);
    match st
        .engine
        .helpdesk_verify(tenant, &b.subject, &b.caller_id, &agent)?
    {
        CallerVerification::ByCallerId => {
            ok(StatusCode::OK, json!({"verified": true, "by": "caller_id"}))
        }
        CallerVerification::CodeSent {
            id,
            method,
            sent_to,
            expires_at_ms,
        } => ok(
            StatusCode::CREATED,
            json!({
                "verified": false,
                "id": id,
                "sent_to": sent_to,
                "method": method.name(),
                "expires_at": rfc3339(expires_at_ms),
            }),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HelpdeskCodeBody {
    code: String,
}

/// Checks the code a caller read back.
async fn helpdesk_check(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Helpdesk)?;
    let b: HelpdeskCodeBody = parse_body(body)?;
    if b.code.len() > 64 {
        return Err(ApiError::invalid("code: at most 64 bytes"));
    }
    let agent = key_fingerprint(&headers);
    let outcome = st
        .engine
        .helpdesk_check(tenant, &id, b.code.trim(), &agent)
        .map_err(|e| match e {
            EngineError::NotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such verification, or it has ended (approved, locked or expired)",
            ),
            other => other.into(),
        })?;
    let attempts_left = match outcome {
        HelpdeskOutcome::Rejected { attempts_left } => attempts_left,
        _ => 0,
    };
    ok(
        StatusCode::OK,
        json!({
            "verified": outcome == HelpdeskOutcome::Approved,
            "outcome": outcome.word(),
            "attempts_left": attempts_left,
        }),
    )
}

/// The API's view of a token (never its secret).
fn token_json(t: &TokenInfo) -> Value {
    json!({
        "serial": t.serial,
        "type": t.kind,
        "algorithm": t.algorithm.name(),
        "digits": t.digits,
        "period": t.period,
        "subject": t.subject,
        "state": t.state.name(),
        "failcount": t.failcount,
    })
}

/// Enrolls a software token: the secret is answered once, as an
/// `otpauth://` URI and its QR code, and never again.
async fn enroll_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Admin)?;
    let b: EnrollBody = parse_body(body)?;
    let kind = match b.kind.as_str() {
        "totp" => Kind::Totp,
        "hotp" => Kind::Hotp,
        _ => return Err(ApiError::invalid("type: must be totp or hotp")),
    };
    let algorithm = match b.algorithm.as_deref() {
        None => Algorithm::Sha1,
        Some(a) => Algorithm::parse(a)
            .ok_or_else(|| ApiError::invalid("algorithm: must be SHA1, SHA256 or SHA512"))?,
    };
    let params = Params {
        algorithm,
        digits: b.digits.unwrap_or(6),
        period: b.period.unwrap_or(30),
    };
    let e = &st.engine;
    let (serial, secret) = e
        .directory()
        .enroll_token(tenant, &subject, kind, params, e.now_ms())?
        .wait()
        .await?;
    e.audit_directory(tenant, &subject, "token_enrolled", None, None);
    let issuer = e
        .tenant_policy(tenant)
        .map_or("Watchword", |p| p.service_name.as_str());
    let uri = otpauth_uri(kind, issuer, &subject, &secret, params, 0);
    let qr = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the QR code could not be made",
            )
        })?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build();
    ok(
        StatusCode::CREATED,
        json!({"serial": serial, "otpauth_uri": uri, "qr_svg": qr}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    format: String,
    /// PSKC: the passphrase of a PBKDF2-encrypted file (never logged).
    #[serde(default)]
    password: Option<String>,
    /// PSKC: the pre-shared key, hex (never logged).
    #[serde(default)]
    key: Option<String>,
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Tokens an import queues for the disk before it waits for them.
const IMPORT_SLICE: usize = 4096;

/// Largest token import, bytes.
pub const MAX_IMPORT: usize = 16 << 20;

/// Imports tokens from a file: every row or key package reported, imported
/// or skipped with the reason; a bad row never stops the rest, a serial the
/// tenant has is never overwritten, a `upn` creates its user if needed.
async fn import_tokens(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Admin)?;
    let Query(q) = query.map_err(|_| ApiError::invalid("format: csv or pskc"))?;
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the file is over {MAX_IMPORT} bytes"),
            )
        } else {
            ApiError::bad_request("the body could not be read")
        }
    })?;
    let rows = match q.format.as_str() {
        "csv" => {
            if q.password.is_some() || q.key.is_some() {
                return Err(ApiError::invalid("password, key: only for format=pskc"));
            }
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ApiError::bad_request("the file is not UTF-8 text"))?;
            watchword_engine::import::parse_csv(text).map_err(ApiError::invalid)?
        }
        "pskc" => {
            let key =
                match &q.key {
                    None => None,
                    Some(hex) => Some(decode_hex(hex).ok_or_else(|| {
                        ApiError::invalid("key: must be hex (16 bytes for AES-128)")
                    })?),
                };
            let keys = watchword_engine::pskc::Keys {
                key,
                password: q.password.clone(),
            };
            watchword_engine::pskc::parse(&bytes, &keys).map_err(ApiError::invalid)?
        }
        _ => return Err(ApiError::invalid("format: csv or pskc")),
    };
    let e = &st.engine;
    let now = e.now_ms();
    let mut imported = 0u64;
    let mut skipped = Vec::new();
    let mut writes = Vec::new();
    for row in rows {
        let t = match row {
            Row::Skipped { serial, reason } => {
                skipped.push(json!({"serial": serial, "reason": reason}));
                continue;
            }
            Row::Token(t) => t,
        };
        if let Some(s) = &t.subject
            && e.directory().user(tenant, s).is_none()
        {
            match e
                .directory()
                .put_user(tenant, s, &UserPatch::default(), now)
            {
                Ok(d) => writes.push(d.map(|_| ())),
                Err(err) => {
                    skipped.push(json!({"serial": t.serial, "reason": format!("upn: {err}")}));
                    continue;
                }
            }
        }
        // Backpressure: a large file must not fill the store's write queue
        // (other writers would get 503): wait for each slice to be durable.
        if writes.len() >= IMPORT_SLICE {
            for w in writes.drain(..) {
                w.wait().await?;
            }
        }
        let serial = t.serial.clone();
        match e.directory().import_token(tenant, t, now) {
            Ok(d) => {
                imported += 1;
                writes.push(d);
            }
            Err(DirectoryError::Conflict(m)) | Err(DirectoryError::InvalidArgument(m)) => {
                skipped.push(json!({"serial": serial, "reason": m}));
            }
            Err(other) => return Err(other.into()),
        }
    }
    for w in writes {
        w.wait().await?;
    }
    e.audit_directory(tenant, "", "tokens_imported", None, None);
    ok(
        StatusCode::OK,
        json!({"imported": imported, "skipped": skipped}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResyncBody {
    code1: String,
    code2: String,
}

async fn resync_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(serial): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Admin)?;
    let b: ResyncBody = parse_body(body)?;
    if b.code1.len() > 16 || b.code2.len() > 16 {
        return Err(ApiError::invalid("code1, code2: at most 16 bytes each"));
    }
    let now_s = st.engine.now_ms() / 1000;
    match st
        .engine
        .directory()
        .resync_token(tenant, &serial, &b.code1, &b.code2, now_s)?
        .wait()
        .await?
    {
        Some(t) => {
            let subject = t.subject.clone().unwrap_or_default();
            st.engine
                .audit_directory(tenant, &subject, "token_resynced", None, None);
            ok(StatusCode::OK, token_json(&t))
        }
        None => Err(ApiError::invalid(
            "code1, code2: no two consecutive codes match within 1000 counters or steps",
        )),
    }
}

async fn assign_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((subject, serial)): Path<(String, String)>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Admin)?;
    let t = st
        .engine
        .directory()
        .assign_token(tenant, &serial, &subject)?
        .wait()
        .await?;
    st.engine
        .audit_directory(tenant, &subject, "token_assigned", None, None);
    ok(StatusCode::OK, token_json(&t))
}

/// A user's tokens (never their secrets).
async fn list_user_tokens(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Helpdesk)?;
    let dir = st.engine.directory();
    if dir.user(tenant, &subject).is_none() {
        return Err(DirectoryError::NotFound("no such user").into());
    }
    let tokens: Vec<Value> = dir
        .tokens_of(tenant, &subject)
        .iter()
        .filter_map(|serial| dir.token_info(tenant, serial))
        .map(|t| token_json(&t))
        .collect();
    ok(StatusCode::OK, json!({ "tokens": tokens }))
}

/// The help-desk console's files, embedded in the binary.
const CONSOLE_HTML: &str = include_str!("../console/index.html");
const CONSOLE_JS: &str = include_str!("../console/app.js");
const CONSOLE_CSS: &str = include_str!("../console/app.css");

/// The console's content security policy: its own files only, no inline
/// script or style, no framing, API calls to this origin only.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One console file with the headers that keep it to itself.
fn console_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONSOLE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::HeaderName::from_static("cross-origin-opener-policy"),
                "same-origin",
            ),
            (
                header::HeaderName::from_static("cross-origin-resource-policy"),
                "same-origin",
            ),
        ],
        body,
    )
        .into_response()
}

async fn console_redirect() -> Response {
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, "/console/")],
    )
        .into_response()
}

async fn console_page() -> Response {
    console_file("text/html; charset=utf-8", CONSOLE_HTML)
}

async fn console_script() -> Response {
    console_file("text/javascript; charset=utf-8", CONSOLE_JS)
}

async fn console_style() -> Response {
    console_file("text/css; charset=utf-8", CONSOLE_CSS)
}

async fn get_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Helpdesk)?;
    let t = st
        .engine
        .directory()
        .token_info(tenant, &serial)
        .ok_or(DirectoryError::NotFound("no such token"))?;
    ok(StatusCode::OK, token_json(&t))
}

/// An admin change to one token (reset, delete), audited under `event`
/// once it is on disk.
async fn change_token(
    st: &ApiState,
    headers: &HeaderMap,
    serial: &str,
    event: &str,
    change: fn(&Directory, TenantId, &str) -> Result<Durable<TokenInfo>, DirectoryError>,
) -> Result<TokenInfo, ApiError> {
    let tenant = allow(st, headers, HttpRole::Admin)?;
    let t = change(st.engine.directory(), tenant, serial)?
        .wait()
        .await?;
    let subject = t.subject.as_deref().unwrap_or("");
    st.engine
        .audit_directory(tenant, subject, event, None, None);
    Ok(t)
}

async fn reset_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> ApiResult {
    let t = change_token(
        &st,
        &headers,
        &serial,
        "token_reset",
        Directory::reset_token,
    )
    .await?;
    ok(StatusCode::OK, token_json(&t))
}

async fn delete_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> ApiResult {
    change_token(
        &st,
        &headers,
        &serial,
        "token_deleted",
        Directory::delete_token,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    subject: String,
    #[serde(default)]
    answer: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    client_ip: String,
}

/// The HTTP form of a decision.
pub fn check_json(r: &CheckResult) -> Value {
    match r {
        CheckResult::Accept => json!({"result": "accept"}),
        CheckResult::Reject {
            reason,
            attempts_left,
            state,
        } => {
            let mut v = json!({"result": "reject", "reason": reason.word()});
            if *reason == watchword_engine::RejectReason::WrongAnswer {
                v["attempts_left"] = json!(attempts_left);
                v["state"] = json!(state);
            }
            v
        }
        CheckResult::Challenge(c) => {
            let mut v = json!({
                "result": "challenge",
                "state": c.state,
                "method": c.method.name(),
                "expires_at": rfc3339(c.expires_at_ms),
                "message": c.message,
            });
            if !c.masked_destination.is_empty() {
                v["destination"] = json!(c.masked_destination);
            }
            v
        }
    }
}

async fn check(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let tenant = allow(&st, &headers, HttpRole::Client)?;
    let b: CheckBody = parse_body(body)?;
    if b.client_ip.len() > 1024 {
        return Err(ApiError::invalid("client_ip: at most 1024 bytes"));
    }
    let req = CheckRequest {
        subject: &b.subject,
        answer: &b.answer,
        state: &b.state,
        client_ip: &b.client_ip,
    };
    let result = st.engine.check(tenant, &req)?.finish().await;
    ok(StatusCode::OK, check_json(&result))
}

/// Largest carrier callback body, bytes.
pub const MAX_CALLBACK: usize = 4 << 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptBody {
    receipt_token: String,
    status: String,
    /// Accepted for the carrier's convenience, never stored or logged.
    #[serde(default, rename = "reason")]
    _reason: serde::de::IgnoredAny,
}

/// A carrier callback's body, once its signature under the carrier's
/// `callback_secret` was checked (see `watchword_engine::delivery::callback`).
/// Signature first, then the body: an unsigned caller learns nothing beyond
/// whether the path names a carrier with receipts.
fn signed_callback(
    st: &ApiState,
    name: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    let Some((_, secret)) = st.callbacks.iter().find(|(n, _)| n == name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no HTTP carrier with receipts = true of that name",
        ));
    };
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is over {MAX_CALLBACK} bytes"),
            )
        } else {
            ApiError::bad_request("the body could not be read")
        }
    })?;
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Err(e) = callback::verify(
        secret,
        header(callback::SIGNATURE_HEADER),
        header(callback::TIMESTAMP_HEADER),
        &bytes,
        now,
    ) {
        tracing::warn!(carrier = %name, why = %e, "carrier callback refused");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            format!("the callback's signature was refused: {e}"),
        ));
    }
    Ok(bytes)
}

/// `POST /v1/carriers/{name}/receipts`: an HTTP carrier's delivery receipt.
/// No bearer key: the body is authenticated by its HMAC signature (see
/// [`signed_callback`]).
async fn carrier_receipt(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let bytes = signed_callback(&st, &name, &headers, body)?;
    let b: ReceiptBody = parse_body(Ok(bytes))?;
    let Some(token) = callback::parse_token(&b.receipt_token) else {
        return Err(ApiError::invalid(
            "receipt_token: must be the token the message carried (hex)",
        ));
    };
    let receipt = match b.status.as_str() {
        "delivered" => Receipt::Delivered,
        "failed" | "undelivered" => Receipt::Undelivered {
            // The carrier's own reason is not kept: it may name the
            // destination, and STATUS shows the reason.
            reason: format!("carrier receipt: {}", b.status),
        },
        _ => {
            return Err(ApiError::invalid(
                "status: must be delivered, failed or undelivered",
            ));
        }
    };
    if !st.engine.router().carrier_receipt(&name, token, receipt) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no receipt is awaited under that receipt_token (unknown, already settled or timed out)",
        ));
    }
    ok(StatusCode::ACCEPTED, json!({"accepted": true}))
}

/// Most DTMF keys a call-outcome callback may report (`PIN#` fits).
const MAX_CALL_DIGITS: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    receipt_token: String,
    status: String,
    /// The keys pressed, with `completed` (never stored or logged).
    #[serde(default)]
    digits: Option<String>,
    /// Accepted for the carrier's convenience, never stored or logged.
    #[serde(default, rename = "reason")]
    _reason: serde::de::IgnoredAny,
}

/// `POST /v1/carriers/{name}/calls`: an HTTP carrier's call-outcome
/// callback for a confirmation call (`answered`; `completed` with the
/// `digits` pressed; `no_answer`, `busy` or `failed`). Authenticated like
/// receipts (see [`signed_callback`]).
async fn carrier_call(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let bytes = signed_callback(&st, &name, &headers, body)?;
    let b: CallBody = parse_body(Ok(bytes))?;
    let Some(token) = callback::parse_token(&b.receipt_token) else {
        return Err(ApiError::invalid(
            "receipt_token: must be the token the call carried (hex)",
        ));
    };
    if let Some(d) = &b.digits {
        if d.len() > MAX_CALL_DIGITS
            || !d
                .bytes()
                .all(|c| c.is_ascii_digit() || c == b'*' || c == b'#')
        {
            return Err(ApiError::invalid(format!(
                "digits: at most {MAX_CALL_DIGITS} keys of 0-9, * and #"
            )));
        }
    }
    let report = match (b.status.as_str(), b.digits) {
        ("answered", None) => CallReport::Answered,
        ("completed", digits) => CallReport::Completed {
            digits: digits.unwrap_or_default(),
        },
        ("no_answer", None) => CallReport::NotAnswered {
            reason: "not answered",
        },
        ("busy", None) => CallReport::NotAnswered { reason: "busy" },
        ("failed", None) => CallReport::NotAnswered { reason: "failed" },
        ("answered" | "no_answer" | "busy" | "failed", Some(_)) => {
            return Err(ApiError::invalid("digits: only with status completed"));
        }
        _ => {
            return Err(ApiError::invalid(
                "status: must be answered, completed, no_answer, busy or failed",
            ));
        }
    };
    if !st.engine.router().carrier_call(&name, token, report) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no confirmation call awaits an outcome under that receipt_token (unknown, ended, expired or not a call)",
        ));
    }
    ok(StatusCode::ACCEPTED, json!({"accepted": true}))
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(st): State<Arc<ApiState>>) -> Response {
    if st.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Gives the contract's JSON error body to the refusals axum makes itself
/// (a method the path does not serve: 405; a path that does not decode:
/// 400), which come with a plain-text body.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("bad_request", "this method is not served on this path"),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", "the body is over 1 MiB"),
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint (see /v1/openapi.json)"),
        s if s.is_server_error() => ("internal", "internal error; see the server log"),
        _ => (
            "bad_request",
            "the request could not be read (path or headers)",
        ),
    };
    let allow = resp.headers().get(header::ALLOW).cloned();
    let mut out = (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response();
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint (see /v1/openapi.json)",
    )
}

/// The OpenAPI 3.1 description served at `/v1/openapi.json` (also in docs/).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// The API's routes over `state`.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/check", post(check))
        .route("/v1/users", get(list_users))
        .route(
            "/v1/users/{subject}",
            put(put_user).get(get_user).delete(delete_user),
        )
        .route("/v1/users/{subject}/methods", post(add_method))
        .route(
            "/v1/users/{subject}/tokens",
            post(enroll_token).get(list_user_tokens),
        )
        .route("/console", get(console_redirect))
        .route("/console/", get(console_page))
        .route("/console/app.js", get(console_script))
        .route("/console/app.css", get(console_style))
        .route("/v1/users/{subject}/pin", post(reset_pin).get(get_pin))
        .route("/v1/helpdesk/verifications", post(helpdesk_verify))
        .route("/v1/helpdesk/verifications/{id}", post(helpdesk_check))
        .route("/v1/users/{subject}/tokens/{serial}", put(assign_token))
        .route(
            "/v1/tokens/import",
            post(import_tokens).layer(DefaultBodyLimit::max(MAX_IMPORT)),
        )
        .route(
            "/v1/carriers/{name}/receipts",
            post(carrier_receipt).layer(DefaultBodyLimit::max(MAX_CALLBACK)),
        )
        .route(
            "/v1/carriers/{name}/calls",
            post(carrier_call).layer(DefaultBodyLimit::max(MAX_CALLBACK)),
        )
        .route("/v1/tokens/{serial}/resync", post(resync_token))
        .route("/v1/tokens/{serial}", get(get_token).delete(delete_token))
        .route("/v1/tokens/{serial}/reset", post(reset_token))
        .route(
            "/v1/users/{subject}/methods/{method_id}",
            get(get_method).delete(delete_method),
        )
        .route(
            "/v1/users/{subject}/methods/{method_id}/confirm",
            post(confirm_method),
        )
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves the API on `listener` (TLS when `tls` is given) until `stop`
/// fires; then lets connections finish their requests (a held CHECK at
/// most 25 s) on `tracker`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let (tcp, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_conn(tcp, app, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(s)) => serve_conn(s, app, stop).await,
                        _ => tracing::debug!("HTTP TLS handshake failed or timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_conn<S>(stream: S, app: Router, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        }
    }
}
