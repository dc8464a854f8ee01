//! The operator subcommands of the `watchword` binary, as a library:
//! `keygen`, `backup` and `check-store` (local files: the master key and the
//! directory's store), and [`ApiClient`], the small HTTP/1.1 client that the
//! `users`, `methods`, `tokens` and `check` subcommands use to talk to a
//! running server's HTTP API (`admin-api.md`). The binary only parses flags
//! and prints what these functions return.
//!
//! This module must never print, log or put into an error message a key (a
//! master key byte, an HTTP key, a token file's password or key) and never a
//! full phone number or address: it prints only the server's answers, which
//! the server has already masked, and counts from the store. The one secret
//! that reaches the operator is a new software token's, in the enrollment
//! answer (`otpauth_uri`, `qr_svg`), which exists to hand it over once.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use watchword_engine::secret::MasterKey;
use watchword_engine::store::{CheckReport, DB_FILE, DirectoryStore, SqliteStore, StoreError};

use crate::config::Config;

/// The HTTP API's address when neither `--url` nor [`URL_ENV`] gives one (the
/// development profile's `http.listen`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:9401";
/// The environment variable read when `--url` is not given.
pub const URL_ENV: &str = "WATCHWORD_URL";
/// The environment variable read when `--key` is not given.
pub const KEY_ENV: &str = "WATCHWORD_KEY";

/// How long one request may take, all in all (a check on a pending call is
/// held by the server for up to 25 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (a page of 1000 users fits many times over).
const MAX_ANSWER: usize = 16 << 20;
/// The most of a non-JSON answer quoted in an error.
const MAX_QUOTE: usize = 200;
/// The largest token file `tokens import` sends: the server's limit for the
/// import's body (16 MiB); a larger file is refused before any request.
pub const MAX_IMPORT_FILE: usize = crate::http::MAX_IMPORT;
/// The largest key file read for a PSKC import (a key is 16 to 32 bytes, 64
/// hex digits; this leaves room for line ends and a comment-free file).
const MAX_KEY_FILE: u64 = 4096;

/// Why a subcommand failed. No message carries a key, and none carries a
/// destination other than as the server (masked) or the operator wrote it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A mistake in what was asked: a missing key, a bad URL, an empty subject.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached (or did not answer in time).
    #[error("cannot reach the Watchword HTTP API at {url}: {reason}")]
    Connect {
        /// The base URL tried.
        url: String,
        /// Why, from the operating system or the HTTP client.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{0}")]
    Api(ApiFailure),
    /// The server's answer could not be understood.
    #[error("unexpected answer from {url}: {reason}")]
    Protocol {
        /// The base URL asked.
        url: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// A local operation failed: the configuration, the key file, the store.
    #[error("{0}")]
    Local(String),
}

/// An error answer of the HTTP API: `{"error": CODE, "message": TEXT}` and
/// the optional `retry_after_ms` and `attempts_left`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: StatusCode,
    /// The error code (`unauthenticated`, `not_found`, ...), or `http_NNN`
    /// when the body was not the API's error JSON.
    pub code: String,
    /// The server's message (it never holds a secret or a full destination).
    pub message: String,
    /// When to retry (`rate_limited`).
    pub retry_after_ms: Option<u64>,
    /// Attempts left (a wrong confirmation code).
    pub attempts_left: Option<u64>,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(ms) = self.retry_after_ms {
            write!(f, " (retry after {ms} ms)")?;
        }
        if let Some(n) = self.attempts_left {
            write!(f, " (attempts left: {n})")?;
        }
        Ok(())
    }
}

impl ApiFailure {
    /// Reads an error answer; a body that is not the API's error JSON (a
    /// proxy's page, say) is quoted, shortened.
    fn from_answer(status: StatusCode, body: &[u8]) -> ApiFailure {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name).cloned());
        match field("error").and_then(|v| v.as_str().map(str::to_owned)) {
            Some(code) => ApiFailure {
                status,
                code,
                message: field("message")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                retry_after_ms: field("retry_after_ms").and_then(|v| v.as_u64()),
                attempts_left: field("attempts_left").and_then(|v| v.as_u64()),
            },
            None => ApiFailure {
                status,
                code: format!("http_{}", status.as_u16()),
                message: quote(body),
                retry_after_ms: None,
                attempts_left: None,
            },
        }
    }
}

/// At most [`MAX_QUOTE`] characters of a body, on one line.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_QUOTE)
        .collect();
    if one_line.is_empty() {
        "(empty answer)".to_owned()
    } else {
        one_line
    }
}

/// The base URL: `flag`, else [`URL_ENV`] when set and not empty, else
/// [`DEFAULT_URL`].
pub fn resolve_url(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var(URL_ENV).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

/// The HTTP key: `flag`, else [`KEY_ENV`] when set and not empty; neither is
/// a [`CliError::Usage`] saying how to give one.
pub fn resolve_key(flag: Option<String>) -> Result<String, CliError> {
    flag.or_else(|| std::env::var(KEY_ENV).ok())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "no HTTP key: pass --key KEY or set {KEY_ENV} (an HTTP key of the tenant, \
                 from its http_keys in the configuration)"
            ))
        })
}

/// Percent-encodes `s` for one path segment or query value: the RFC 3986
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) stay, every other byte of
/// the UTF-8 becomes `%XX`. A segment that is all dots (`.` or `..`) has its
/// dots encoded too, so that no URL resolver takes it for a relative step.
pub fn encode_segment(s: &str) -> String {
    let all_dots = !s.is_empty() && s.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'~')
            || (b == b'.' && !all_dots);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/v1/users/{subject}`, the subject encoded; an empty subject is refused.
pub fn user_path(subject: &str) -> Result<String, CliError> {
    if subject.is_empty() {
        return Err(CliError::Usage("SUBJECT must not be empty".to_owned()));
    }
    Ok(format!("/v1/users/{}", encode_segment(subject)))
}

/// `/v1/users/{subject}/methods`.
pub fn methods_path(subject: &str) -> Result<String, CliError> {
    Ok(format!("{}/methods", user_path(subject)?))
}

/// `/v1/users/{subject}/methods/{method_id}`; an empty id is refused.
pub fn method_path(subject: &str, method_id: &str) -> Result<String, CliError> {
    if method_id.is_empty() {
        return Err(CliError::Usage("METHOD_ID must not be empty".to_owned()));
    }
    Ok(format!(
        "{}/{}",
        methods_path(subject)?,
        encode_segment(method_id)
    ))
}

/// `/v1/users/{subject}/tokens` (a software token's enrollment).
pub fn user_tokens_path(subject: &str) -> Result<String, CliError> {
    Ok(format!("{}/tokens", user_path(subject)?))
}

/// `/v1/users/{subject}/tokens/{serial}` (an imported token's assignment).
pub fn user_token_path(subject: &str, serial: &str) -> Result<String, CliError> {
    let serial = serial_segment(serial)?;
    Ok(format!("{}/{serial}", user_tokens_path(subject)?))
}

/// `/v1/tokens/{serial}`; an empty serial is refused.
pub fn token_path(serial: &str) -> Result<String, CliError> {
    Ok(format!("/v1/tokens/{}", serial_segment(serial)?))
}

/// A serial, encoded for a path; an empty one is refused.
fn serial_segment(serial: &str) -> Result<String, CliError> {
    if serial.is_empty() {
        return Err(CliError::Usage("SERIAL must not be empty".to_owned()));
    }
    Ok(encode_segment(serial))
}

/// `/v1/users?after=S&limit=N`, with only the parameters given.
pub fn list_path(after: Option<&str>, limit: Option<u32>) -> String {
    let mut params = Vec::new();
    if let Some(a) = after.filter(|a| !a.is_empty()) {
        params.push(format!("after={}", encode_segment(a)));
    }
    if let Some(n) = limit {
        params.push(format!("limit={n}"));
    }
    if params.is_empty() {
        "/v1/users".to_owned()
    } else {
        format!("/v1/users?{}", params.join("&"))
    }
}

/// The fields of `PUT /v1/users/{subject}`; `None` leaves a field out, which
/// keeps an existing user's value (the server merges).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFields {
    /// `display_name`.
    pub display_name: Option<String>,
    /// `email`.
    pub email: Option<String>,
    /// `locale`.
    pub locale: Option<String>,
    /// `enabled`.
    pub enabled: Option<bool>,
    /// `default_method`: a method type (`sms`, `voice`, `email`, `call`, `token`).
    pub default_method: Option<String>,
}

impl UserFields {
    /// The JSON body, with only the fields given.
    pub fn to_json(&self) -> Value {
        let mut body = serde_json::Map::new();
        let strings = [
            ("display_name", &self.display_name),
            ("email", &self.email),
            ("locale", &self.locale),
            ("default_method", &self.default_method),
        ];
        for (name, value) in strings {
            if let Some(v) = value {
                body.insert(name.to_owned(), json!(v));
            }
        }
        if let Some(e) = self.enabled {
            body.insert("enabled".to_owned(), json!(e));
        }
        Value::Object(body)
    }
}

/// A software token's type, for `tokens enroll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenKind {
    /// Time-based (RFC 6238): a code per period.
    Totp,
    /// Counter-based (RFC 4226): a code per press.
    Hotp,
}

impl TokenKind {
    /// The API's name (`totp`, `hotp`).
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::Totp => "totp",
            TokenKind::Hotp => "hotp",
        }
    }
}

/// The body of `POST /v1/users/{subject}/tokens`; `None` leaves a field to
/// the server's default (SHA1, 6 digits, 30 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollFields {
    /// `type`.
    pub kind: TokenKind,
    /// `algorithm`: `SHA1`, `SHA256` or `SHA512`.
    pub algorithm: Option<String>,
    /// `digits`: 6 or 8.
    pub digits: Option<u8>,
    /// `period` in seconds (30 or 60); TOTP only.
    pub period: Option<u32>,
}

impl EnrollFields {
    /// The JSON body, with only the fields given; a period for an HOTP token
    /// (which has none) is refused.
    pub fn to_json(&self) -> Result<Value, CliError> {
        if self.kind == TokenKind::Hotp && self.period.is_some() {
            return Err(CliError::Usage(
                "--period applies to totp tokens only (an hotp token counts presses)".to_owned(),
            ));
        }
        let mut body = serde_json::Map::new();
        body.insert("type".to_owned(), json!(self.kind.name()));
        if let Some(a) = &self.algorithm {
            body.insert("algorithm".to_owned(), json!(a));
        }
        if let Some(d) = self.digits {
            body.insert("digits".to_owned(), json!(d));
        }
        if let Some(p) = self.period {
            body.insert("period".to_owned(), json!(p));
        }
        Ok(Value::Object(body))
    }
}

/// The file that `tokens enroll --qr FILE` writes the QR code to. It is
/// made (new only, mode 0600: the code holds the token's secret) before the
/// enrollment is asked, so that a file that cannot be made costs no
/// enrollment; it is removed again when nothing could be written to it.
#[derive(Debug)]
pub struct QrFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl QrFile {
    /// Creates `path`; an existing file is never overwritten.
    pub fn create(path: &Path) -> Result<QrFile, CliError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CliError::Local(format!(
                    "{} already exists; refusing to overwrite it (give a new file name for the \
                     QR code)",
                    path.display()
                ))
            } else {
                CliError::Local(format!("cannot create {}: {e}", path.display()))
            }
        })?;
        Ok(QrFile {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the `qr_svg` of an enrollment `answer` into the file. When it
    /// cannot be written, `answer` keeps its `qr_svg` (the enrollment is
    /// shown only once: printing it is then the only way not to lose it)
    /// and the file is removed.
    pub fn store(mut self, answer: &mut Value) -> Result<(), CliError> {
        let svg = match answer.get("qr_svg") {
            Some(Value::String(svg)) => svg.clone(),
            _ => {
                return Err(CliError::Local(
                    "the enrollment answer has no qr_svg to write".to_owned(),
                ));
            }
        };
        let written = match self.file.take() {
            Some(mut f) => f.write_all(svg.as_bytes()).and_then(|()| f.sync_all()),
            None => Err(std::io::Error::other("the file is closed")),
        };
        match written {
            Ok(()) => {
                if let Some(map) = answer.as_object_mut() {
                    map.remove("qr_svg");
                }
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                Err(CliError::Local(format!(
                    "cannot write the QR code to {}: {e}",
                    self.path.display()
                )))
            }
        }
    }
}

impl Drop for QrFile {
    /// Removes the (empty) file when nothing was stored in it.
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A token file's format, for `tokens import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// CSV: `serial,secret,period` or the Entra layout (`upn,serial number,
    /// secret key,time interval,...`).
    Csv,
    /// PSKC (RFC 6030) XML.
    Pskc,
}

impl ImportFormat {
    /// The API's name, for `format=`.
    pub fn name(self) -> &'static str {
        match self {
            ImportFormat::Csv => "csv",
            ImportFormat::Pskc => "pskc",
        }
    }

    /// The `Content-Type` the file is sent with.
    pub fn content_type(self) -> &'static str {
        match self {
            ImportFormat::Csv => "text/csv",
            ImportFormat::Pskc => "application/xml",
        }
    }
}

/// What opens an encrypted PSKC file. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub enum ImportSecret {
    /// Nothing (a file whose keys are not encrypted, or a CSV).
    None,
    /// A passphrase (PBKDF2), sent as `password=`.
    Password(String),
    /// A pre-shared key as hex, sent as `key=`.
    KeyHex(String),
}

impl fmt::Debug for ImportSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImportSecret::None => "None",
            ImportSecret::Password(_) => "Password(<redacted>)",
            ImportSecret::KeyHex(_) => "KeyHex(<redacted>)",
        })
    }
}

/// `/v1/tokens/import?format=F[&password=P or &key=HEX]`, the values
/// percent-encoded. The path holds the password or key: never print it.
pub fn import_path(format: ImportFormat, secret: &ImportSecret) -> String {
    let mut path = format!("/v1/tokens/import?format={}", format.name());
    match secret {
        ImportSecret::None => {}
        ImportSecret::Password(p) => {
            path.push_str("&password=");
            path.push_str(&encode_segment(p));
        }
        ImportSecret::KeyHex(k) => {
            path.push_str("&key=");
            path.push_str(&encode_segment(k));
        }
    }
    path
}

/// Reads a token file for `tokens import`; a file over
/// [`MAX_IMPORT_FILE`] is refused before it is read.
pub fn read_import_file(path: &Path) -> Result<Vec<u8>, CliError> {
    let too_large = |size: u64| {
        CliError::Local(format!(
            "{} is {size} bytes, over the {} MiB ({MAX_IMPORT_FILE} bytes) a token import takes; \
             split the file",
            path.display(),
            MAX_IMPORT_FILE >> 20
        ))
    };
    let cannot =
        |e: std::io::Error| CliError::Local(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(CliError::Local(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let limit = u64::try_from(MAX_IMPORT_FILE).unwrap_or(u64::MAX);
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow while it is read: read one byte past the limit.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() > MAX_IMPORT_FILE {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads a PSKC pre-shared key file as hex for `key=`: a file of hex
/// digits (whitespace around them trimmed, as most vendors ship the key),
/// else a binary key of 16, 24 or 32 bytes, hex-encoded. No error names a
/// byte of the file.
pub fn read_key_file(path: &Path) -> Result<String, CliError> {
    let cannot =
        |e: std::io::Error| CliError::Local(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(CliError::Local(format!(
            "{} is too large for a key file (over {MAX_KEY_FILE} bytes)",
            path.display()
        )));
    }
    let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        if text.len() % 2 != 0 {
            return Err(CliError::Local(format!(
                "{}: the key has an odd number of hex digits",
                path.display()
            )));
        }
        return Ok(text.to_ascii_lowercase());
    }
    // Text that is not hex is a mistake (a typo, the wrong file), never a
    // binary key that happens to be printable.
    let is_text = bytes
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if !is_text && matches!(bytes.len(), 16 | 24 | 32) {
        return Ok(bytes.iter().map(|b| format!("{b:02x}")).collect());
    }
    Err(CliError::Local(format!(
        "{} holds neither a key in hex nor a binary key of 16, 24 or 32 bytes",
        path.display()
    )))
}

/// A client of one server's HTTP API with one key: plain `http://` over
/// HTTP/1.1 (https is not supported yet). `Debug` does not show the key.
#[derive(Clone)]
pub struct ApiClient {
    /// The base URL, without a trailing `/` (`http://host:port` and an
    /// optional path prefix).
    pub base: String,
    /// The bearer key; never printed.
    key: HeaderValue,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ApiClient {
    /// A client of the API at `url` (`http://host:port`, optionally with a
    /// path prefix) with the bearer `key`. Refuses https, user information
    /// in the URL, a query, and a key that cannot be a header value.
    pub fn new(url: &str, key: &str) -> Result<ApiClient, CliError> {
        let base = parse_base(url)?;
        let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
            CliError::Usage(
                "the key holds characters not allowed in an HTTP header (its value is not shown)"
                    .to_owned(),
            )
        })?;
        value.set_sensitive(true);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
        Ok(ApiClient {
            base,
            key: value,
            http,
        })
    }

    /// Sends `method` to `path` (starting with `/`, already encoded) with
    /// `body` as JSON. A 2xx answer is its status and JSON (`null` for an
    /// empty body, as 204 has); any other status is [`CliError::Api`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), CliError> {
        let content = match body {
            Some(v) => Some((
                "application/json",
                Bytes::from(serde_json::to_vec(&v).map_err(|e| CliError::Usage(e.to_string()))?),
            )),
            None => None,
        };
        self.send(method, path, content).await
    }

    /// Sends `method` to `path` with `body` as it is (a file), labelled
    /// `content_type`; the answer as [`ApiClient::request`] reads it.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Value), CliError> {
        self.send(method, path, Some((content_type, body))).await
    }

    /// One exchange. `path` may hold a secret in its query (an import's
    /// password or key): no error quotes the query.
    async fn send(
        &self,
        method: Method,
        path: &str,
        content: Option<(&str, Bytes)>,
    ) -> Result<(StatusCode, Value), CliError> {
        let uri: Uri = format!("{}{path}", self.base).parse().map_err(|e| {
            let shown = path.split_once('?').map_or(path, |(p, _)| p);
            CliError::Usage(format!("cannot make a URL of {shown}: {e}"))
        })?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, self.key.clone())
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("watchword-cli/", env!("CARGO_PKG_VERSION")),
            );
        let bytes = match content {
            Some((content_type, bytes)) => {
                req = req.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| CliError::Usage(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| CliError::Connect {
                    url: self.base.clone(),
                    reason: error_chain(&e),
                })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| CliError::Protocol {
                    url: self.base.clone(),
                    reason: format!("reading the answer failed: {e}"),
                })?
                .to_bytes();
            Ok::<_, CliError>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| CliError::Connect {
                url: self.base.clone(),
                reason: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
            })??;
        if !status.is_success() {
            return Err(CliError::Api(ApiFailure::from_answer(status, &body)));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_slice(&body).map_err(|_| CliError::Protocol {
            url: self.base.clone(),
            reason: format!(
                "HTTP {status} with a body that is not JSON: {}",
                quote(&body)
            ),
        })?;
        Ok((status, value))
    }

    /// Every user, following `next` from `after` until it is null, in pages
    /// of `limit` (default 1000): `{"users": [...], "next": null}`.
    pub async fn list_all(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Value, CliError> {
        let limit = Some(limit.unwrap_or(1000));
        let mut users = Vec::new();
        let mut cursor = after.map(str::to_owned);
        loop {
            let path = list_path(cursor.as_deref(), limit);
            let (_, page) = self.request(Method::GET, &path, None).await?;
            let bad = |reason: &str| CliError::Protocol {
                url: self.base.clone(),
                reason: reason.to_owned(),
            };
            let list = page
                .get("users")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("a page of users without a \"users\" array"))?;
            users.extend(list.iter().cloned());
            match page.get("next") {
                None | Some(Value::Null) => break,
                Some(Value::String(next)) => {
                    if cursor.as_deref() == Some(next.as_str()) {
                        return Err(bad("the server gave the same \"next\" twice"));
                    }
                    cursor = Some(next.clone());
                }
                Some(_) => return Err(bad("\"next\" is neither a string nor null")),
            }
        }
        Ok(json!({"users": users, "next": null}))
    }
}

/// `scheme://authority[/prefix]` of `url`, checked.
fn parse_base(url: &str) -> Result<String, CliError> {
    let bad = |why: &str| CliError::Usage(format!("--url {url}: {why}"));
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|_| bad("not a URL (expected http://HOST:PORT)"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported by the CLI yet; use http:// (for a TLS-only server, \
                 through a local TLS tunnel)",
            ));
        }
        _ => return Err(bad("expected http://HOST:PORT")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad("expected http://HOST:PORT"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "user information in the URL is not supported; pass the key with --key or WATCHWORD_KEY",
        ));
    }
    if uri.query().is_some() {
        return Err(bad("a query is not allowed in the base URL"));
    }
    let prefix = uri.path().trim_end_matches('/');
    Ok(format!("http://{authority}{prefix}"))
}

/// An error and its causes, joined by `: ` (the HTTP client's top error
/// alone says only "client error (Connect)").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p == &text) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

/// `watchword keygen FILE`: a new master key file (mode 0600), never over an
/// existing file. Nothing of the key is returned or printed.
pub fn keygen(path: &Path) -> Result<(), CliError> {
    MasterKey::create(path)
        .map(drop)
        .map_err(|e| CliError::Local(e.to_string()))
}

/// The configuration in `file`, or the embedded development profile when
/// `None` (as `serve` does); every mistake is listed, one a line.
pub fn load_config(file: Option<&Path>) -> Result<Config, CliError> {
    match file {
        None => Ok(Config::development()),
        Some(f) => Config::load(f).map_err(|errors| {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}: {}", f.display(), e.field, e.reason))
                .collect();
            CliError::Local(lines.join("\n"))
        }),
    }
}

/// The master key of `cfg`'s store, for a tool (`purpose` is "back up" or
/// "check"). Unlike [`crate::app::master_key`] it never makes a key: in the
/// development profile without `storage.master_key`, a missing
/// `master.key` means no server has used the data directory yet.
fn tools_key(cfg: &Config, purpose: &str) -> Result<MasterKey, CliError> {
    let st = &cfg.storage;
    if st.path.as_os_str().is_empty() {
        return Err(CliError::Local(format!(
            "storage.path is empty: users live in memory only, there is nothing to {purpose}"
        )));
    }
    if st.master_key.is_none() {
        let dev_key = st.path.join("master.key");
        if !dev_key.exists() {
            return Err(CliError::Local(format!(
                "{} does not exist (development profile without storage.master_key): no server \
                 has used the data directory {} yet, there is nothing to {purpose}",
                dev_key.display(),
                st.path.display()
            )));
        }
    }
    if !st.path.join(DB_FILE).is_file() {
        return Err(CliError::Local(format!(
            "no store database at {}: there is nothing to {purpose}",
            st.path.join(DB_FILE).display()
        )));
    }
    crate::app::master_key(cfg).map_err(CliError::Local)
}

/// Where the master key of `cfg` is (for advice in messages).
pub fn master_key_path(cfg: &Config) -> PathBuf {
    cfg.storage
        .master_key
        .clone()
        .unwrap_or_else(|| cfg.storage.path.join("master.key"))
}

fn store_err(dir: &Path, e: &StoreError) -> CliError {
    CliError::Local(format!("store {}: {e}", dir.display()))
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The database file written (`DEST/watchword.db`).
    pub file: PathBuf,
    /// The check of the copy, opened afresh (clean).
    pub report: CheckReport,
}

/// `watchword backup DEST`: an online, consistent copy of `cfg`'s store
/// (a server may be running on it) into the new directory `dest` (mode
/// 0700; it must not exist, its parent must), as `dest/watchword.db`. The
/// copy is then opened with the same master key and checked. `dest` is a
/// data directory: to restore, point `storage.path` at it (or copy its
/// `watchword.db` into the data directory) with the same master key, which
/// is never part of the backup.
pub fn backup(cfg: &Config, dest: &Path) -> Result<BackupSummary, CliError> {
    if dest.symlink_metadata().is_ok() {
        return Err(CliError::Local(format!(
            "{} already exists; refusing to overwrite it (give a new directory name)",
            dest.display()
        )));
    }
    let key = tools_key(cfg, "back up")?;
    let dir = &cfg.storage.path;
    let store = SqliteStore::open_for_tools(dir, &key).map_err(|e| store_err(dir, &e))?;
    create_private_dir(dest)?;
    let file = dest.join(DB_FILE);
    if let Err(e) = store.backup(&file) {
        // The store removed its partial file; the directory is ours and empty.
        let _ = std::fs::remove_dir(dest);
        return Err(CliError::Local(format!(
            "backup of {} to {} failed: {e}",
            dir.display(),
            file.display()
        )));
    }
    drop(store);
    let copy = SqliteStore::open_for_tools(dest, &key).map_err(|e| {
        CliError::Local(format!(
            "the backup {} was written but does not open: {e}",
            file.display()
        ))
    })?;
    let report = copy.check().map_err(|e| {
        CliError::Local(format!(
            "the backup {} was written but its check failed: {e}",
            file.display()
        ))
    })?;
    if !report.is_clean() {
        return Err(CliError::Local(format!(
            "the backup {} does not check clean (kept for inspection): {}",
            file.display(),
            report.problems.join("; ")
        )));
    }
    Ok(BackupSummary { file, report })
}

/// Creates `dir` (not its parents) private to the owner; an existing one is
/// refused.
fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::Local(format!(
                "{} already exists; refusing to overwrite it",
                dir.display()
            ))
        } else {
            CliError::Local(format!("cannot create {}: {e}", dir.display()))
        }
    })
}

/// `watchword check-store`: the store's integrity check (read-only; a
/// server may be running). A key that does not match is an error; a report
/// with problems is returned for the caller to print (and fail on).
pub fn check_store(cfg: &Config) -> Result<CheckReport, CliError> {
    let key = tools_key(cfg, "check")?;
    let dir = &cfg.storage.path;
    let store = SqliteStore::open_for_tools(dir, &key).map_err(|e| store_err(dir, &e))?;
    store.check().map_err(|e| store_err(dir, &e))
}

/// A report as lines: schema version, counts, then the problems (or "none").
pub fn report_lines(r: &CheckReport) -> Vec<String> {
    let mut lines = vec![
        format!("schema version: {}", r.schema_version),
        format!("users: {}", r.users),
        format!("methods: {}", r.methods),
        format!("tokens: {}", r.tokens),
        format!("pins: {}", r.pins),
    ];
    if r.problems.is_empty() {
        lines.push("problems: none".to_owned());
    } else {
        lines.push(format!("problems: {}", r.problems.len()));
        lines.extend(r.problems.iter().map(|p| format!("  {p}")));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_unreserved_and_encode_the_rest() {
        assert_eq!(encode_segment("alice"), "alice");
        assert_eq!(encode_segment("a.b-c_d~e"), "a.b-c_d~e");
        assert_eq!(encode_segment("a b/c?d#e%"), "a%20b%2Fc%3Fd%23e%25");
        assert_eq!(encode_segment("alice@example.com"), "alice%40example.com");
        assert_eq!(encode_segment("é"), "%C3%A9");
        assert_eq!(encode_segment("."), "%2E");
        assert_eq!(encode_segment(".."), "%2E%2E");
        assert_eq!(encode_segment("..."), "%2E%2E%2E");
        assert_eq!(encode_segment("a..b"), "a..b");
    }

    #[test]
    fn paths_are_built_and_empty_names_refused() {
        assert_eq!(user_path("a/b").unwrap(), "/v1/users/a%2Fb");
        assert_eq!(
            method_path("bob", "m 1").unwrap(),
            "/v1/users/bob/methods/m%201"
        );
        assert!(user_path("").is_err());
        assert!(method_path("bob", "").is_err());
        assert_eq!(list_path(None, None), "/v1/users");
        assert_eq!(
            list_path(Some("a&b"), Some(10)),
            "/v1/users?after=a%26b&limit=10"
        );
    }

    #[test]
    fn user_fields_send_only_what_was_given() {
        let f = UserFields {
            email: Some("a@example.com".into()),
            enabled: Some(false),
            ..UserFields::default()
        };
        assert_eq!(
            f.to_json(),
            json!({"email": "a@example.com", "enabled": false})
        );
        assert_eq!(UserFields::default().to_json(), json!({}));
    }

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            parse_base("http://127.0.0.1:9401").unwrap(),
            "http://127.0.0.1:9401"
        );
        assert_eq!(parse_base("http://h:1/api/").unwrap(), "http://h:1/api");
        let https = parse_base("https://h:1").unwrap_err().to_string();
        assert!(https.contains("https is not supported"), "{https}");
        assert!(parse_base("http://u:p@h:1").is_err());
        assert!(parse_base("h:1").is_err());
        assert!(parse_base("http://h:1/?x=1").is_err());
    }

    #[test]
    fn error_answers_are_read() {
        let f = ApiFailure::from_answer(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"error":"rate_limited","message":"slow down","retry_after_ms":1500}"#,
        );
        assert_eq!(
            f.to_string(),
            "rate_limited: slow down (retry after 1500 ms)"
        );
        let f = ApiFailure::from_answer(StatusCode::BAD_GATEWAY, b"<html>bad\ngateway</html>");
        assert_eq!(f.to_string(), "http_502: <html>bad gateway</html>");
    }

    #[test]
    fn the_key_is_not_in_debug() {
        let c = ApiClient::new("http://127.0.0.1:1", "very-secret-key").unwrap();
        assert!(!format!("{c:?}").contains("very-secret-key"));
    }

    #[test]
    fn token_paths_are_built_and_empty_serials_refused() {
        assert_eq!(token_path("A/1").unwrap(), "/v1/tokens/A%2F1");
        assert_eq!(user_tokens_path("bob").unwrap(), "/v1/users/bob/tokens");
        assert_eq!(
            user_token_path("bob ops", "CLI-1").unwrap(),
            "/v1/users/bob%20ops/tokens/CLI-1"
        );
        assert!(token_path("").is_err());
        assert!(user_token_path("bob", "").is_err());
        assert!(user_token_path("", "CLI-1").is_err());
    }

    #[test]
    fn import_paths_encode_the_secret_and_debug_hides_it() {
        assert_eq!(
            import_path(ImportFormat::Csv, &ImportSecret::None),
            "/v1/tokens/import?format=csv"
        );
        let pw = ImportSecret::Password("p&w =?".into());
        assert_eq!(
            import_path(ImportFormat::Pskc, &pw),
            "/v1/tokens/import?format=pskc&password=p%26w%20%3D%3F"
        );
        assert_eq!(
            import_path(ImportFormat::Pskc, &ImportSecret::KeyHex("00ff".into())),
            "/v1/tokens/import?format=pskc&key=00ff"
        );
        assert!(!format!("{pw:?}").contains("p&w"));
        assert_eq!(ImportFormat::Pskc.content_type(), "application/xml");
        assert_eq!(ImportFormat::Csv.content_type(), "text/csv");
    }

    #[test]
    fn key_files_are_hex_text_or_binary_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let hex = file("hex", b"  12345678901234567890ABCDEFabcdef\n");
        assert_eq!(
            read_key_file(&hex).unwrap(),
            "12345678901234567890abcdefabcdef"
        );
        let raw: Vec<u8> = (0u8..16).map(|b| b.wrapping_mul(37) | 0x80).collect();
        let bin = file("bin", &raw);
        let expected: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(read_key_file(&bin).unwrap(), expected);
        let odd = read_key_file(&file("odd", b"abc\n"))
            .unwrap_err()
            .to_string();
        assert!(odd.contains("odd number"), "{odd}");
        // 16 bytes of text: not taken for a binary key.
        let junk = read_key_file(&file("junk", b"not a key at all"))
            .unwrap_err()
            .to_string();
        assert!(
            junk.contains("neither") && !junk.contains("not a key"),
            "{junk}"
        );
    }

    #[test]
    fn import_files_over_the_limit_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.csv");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_IMPORT_FILE as u64 + 1).unwrap();
        let e = read_import_file(&big).unwrap_err().to_string();
        assert!(e.contains("16 MiB"), "{e}");
        let ok = dir.path().join("ok.csv");
        std::fs::write(&ok, "serial,secret\n").unwrap();
        assert_eq!(read_import_file(&ok).unwrap(), b"serial,secret\n");
        assert!(read_import_file(dir.path()).is_err());
    }

    #[test]
    fn enroll_bodies_send_what_was_given() {
        let f = EnrollFields {
            kind: TokenKind::Totp,
            algorithm: Some("SHA256".into()),
            digits: Some(8),
            period: Some(60),
        };
        assert_eq!(
            f.to_json().unwrap(),
            json!({"type": "totp", "algorithm": "SHA256", "digits": 8, "period": 60})
        );
        let hotp = EnrollFields {
            kind: TokenKind::Hotp,
            algorithm: None,
            digits: None,
            period: None,
        };
        assert_eq!(hotp.to_json().unwrap(), json!({"type": "hotp"}));
        let bad = EnrollFields {
            period: Some(30),
            ..hotp
        };
        assert!(bad.to_json().is_err());
    }

    #[test]
    fn qr_files_are_new_private_and_removed_when_unused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qr.svg");
        let qr = QrFile::create(&path).unwrap();
        assert!(QrFile::create(&path).is_err(), "never overwritten");
        let mut answer = json!({"serial": "S", "qr_svg": "<?xml x?><svg/>"});
        qr.store(&mut answer).unwrap();
        assert_eq!(answer, json!({"serial": "S"}));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "<?xml x?><svg/>");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let unused = dir.path().join("unused.svg");
        drop(QrFile::create(&unused).unwrap());
        assert!(!unused.exists());
    }
}
