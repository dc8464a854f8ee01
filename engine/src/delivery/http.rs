//! The HTTP carrier: posts each message as JSON to a configured URL, over
//! plain HTTP/1.1 or HTTPS (rustls, ring provider), through a keep-alive
//! connection pool (hyper-util's legacy client). This is the shape of the
//! common SMS and voice APIs. 2xx accepted, 429 throttled (honouring
//! `Retry-After`), other 4xx rejected, 5xx and transport errors (TLS
//! included) failed; the router's timeout covers a server that never answers.
//!
//! An `https://` carrier trusts the CAs of its `ca_file` alone when one is
//! set, else the operating system's trust store; with neither it refuses to
//! start rather than trust nothing.
//!
//! With `receipts = true` a 2xx only means accepted: the body carries a
//! `receipt_token` and the `callback` path, and the message stays sent until
//! the carrier's signed callback (checked by [`super::callback`], reported
//! through `Router::carrier_receipt`) or the router's receipt timeout.
//! Without it a 2xx counts as delivered, as before. A confirmation call
//! (voice, purpose `call_confirmation`) also names `call_callback`, where the
//! carrier's IVR reports the call's outcome and the keys pressed (see
//! `Router::carrier_call`).
//!
//! It must never log the body (it holds the code), never put the body, the
//! destination or the URL's credentials in a failure reason, and never offer
//! a mode that skips certificate verification.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::carrier::{
    Carrier, CarrierMessage, DialPlan, MessagePurpose, Receipt, Receipts, SendFuture, SendOutcome,
};
use super::config::{HttpConfig, RouterConfigError};

/// Longest Retry-After honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Retry-After assumed when a 429 gives none (or an HTTP date).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A carrier reached over HTTP/1.1, in the clear or over TLS.
#[derive(Clone)]
pub struct HttpCarrier {
    pool: Pool,
    uri: Uri,
    authorization: Option<HeaderValue>,
    /// With receipts on: the callback path this carrier's messages name.
    callback: Option<Arc<str>>,
    /// With receipts on: the call-outcome callback path its confirmation
    /// calls name.
    call_callback: Option<Arc<str>>,
}

/// The keep-alive pool: `http://` URLs connect exactly as before TLS existed;
/// `https://` ones through rustls.
#[derive(Clone)]
enum Pool {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl Pool {
    fn request(&self, req: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            Self::Plain(c) => c.request(req),
            Self::Tls(c) => c.request(req),
        }
    }
}

impl std::fmt::Debug for HttpCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCarrier")
            .field("host", &self.uri.host())
            .field("tls", &matches!(self.pool, Pool::Tls(_)))
            .finish()
    }
}
#[derive(serde::Serialize)]
struct Body<'a> {
    id: String,
    channel: &'a str,
    to: &'a str,
    from: &'a str,
    text: &'a str,
    dial_plan: &'a str,
    /// "code", or "call_confirmation" (the carrier's IVR collects the keys).
    purpose: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    extension: Option<&'a str>,
    /// With receipts on: the token the callback names (16 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt_token: Option<String>,
    /// With receipts on: the callback's path on the HTTP API listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    callback: Option<&'a str>,
    /// With receipts on, for a confirmation call: where the carrier posts
    /// the call's outcome (answered, keys pressed, completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    call_callback: Option<&'a str>,
}

impl HttpCarrier {
    /// A client for `cfg.url` (`http://` or `https://`); call inside a tokio
    /// runtime. An `https://` URL loads its trust roots here: `cfg.ca_file`'s
    /// CAs when set, else the system's, and an empty system store is an error.
    pub fn new(cfg: &HttpConfig) -> Result<Self, RouterConfigError> {
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|_| RouterConfigError("http.url: not a valid URL".into()))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(RouterConfigError(
                    "http.url: must be http:// or https://host[:port]/path".into(),
                ));
            }
        };
        let Some(host) = uri.host() else {
            return Err(RouterConfigError("http.url: has no host".into()));
        };
        if !tls && !cfg.ca_file.is_empty() {
            return Err(RouterConfigError(
                "http.ca_file: only with an https:// url".into(),
            ));
        }
        let authorization = if cfg.authorization.is_empty() {
            None
        } else {
            Some(HeaderValue::from_str(&cfg.authorization).map_err(|_| {
                RouterConfigError("http.authorization: not a valid header value".into())
            })?)
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms));
        let pool = if tls {
            // The name the certificate must carry: the URL's host (an IP
            // address is checked against the certificate's IP addresses).
            let name = host.trim_start_matches('[').trim_end_matches(']');
            ServerName::try_from(name).map_err(|_| {
                RouterConfigError("http.url: the host is not a valid TLS server name".into())
            })?;
            let roots = trust_roots(cfg).map_err(RouterConfigError)?;
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| RouterConfigError(format!("http: TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            // The TLS connector hands the TCP connector https URLs.
            connector.enforce_http(false);
            let https = HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only()
                .enable_http1()
                .wrap_connector(connector);
            Pool::Tls(builder.build(https))
        } else {
            Pool::Plain(builder.build(connector))
        };
        Ok(Self {
            pool,
            uri,
            authorization,
            callback: None,
            call_callback: None,
        })
    }

    /// This carrier as configured under `name`: with `cfg.receipts`, its
    /// messages carry a receipt token and the callback path
    /// `/v1/carriers/<name>/receipts`, and a 2xx only means accepted; its
    /// confirmation calls also name `/v1/carriers/<name>/calls`, where the
    /// carrier reports what the person did.
    pub fn named(mut self, name: &str, cfg: &HttpConfig) -> Self {
        self.callback = cfg
            .receipts
            .then(|| Arc::from(format!("/v1/carriers/{name}/receipts")));
        self.call_callback = cfg
            .receipts
            .then(|| Arc::from(format!("/v1/carriers/{name}/calls")));
        self
    }
}

/// The roots an `https://` carrier trusts: only the CAs of `cfg.ca_file` when
/// it is set, else the operating system's store (which must not be empty).
fn trust_roots(cfg: &HttpConfig) -> Result<RootCertStore, String> {
    if cfg.ca_file.is_empty() {
        system_roots()
    } else {
        ca_file_roots(Path::new(&cfg.ca_file)).map_err(|e| format!("http.ca_file: {e}"))
    }
}

/// The CA certificates of a PEM bundle, as trust anchors. The error says what
/// is wrong with the file (never quoting its contents); the configuration's
/// validation uses it too.
pub(crate) fn ca_file_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let unreadable = |e: rustls_pki_types::pem::Error| format!("{shown}: cannot read: {e}");
    let certs = CertificateDer::pem_file_iter(path).map_err(unreadable)?;
    let mut roots = RootCertStore::empty();
    for (n, c) in certs.enumerate() {
        let c = c.map_err(unreadable)?;
        roots
            .add(c)
            .map_err(|e| format!("{shown}: certificate {} is not a usable CA: {e}", n + 1))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{shown}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(roots)
}

/// The operating system's trust store (on Linux, the files openssl-probe
/// finds, or `SSL_CERT_FILE` / `SSL_CERT_DIR`).
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let first_error = found.errors.first().map(ToString::to_string);
    let unreadable = found.errors.len();
    let roots = usable_roots(found.certs, first_error)?;
    tracing::debug!(
        roots = roots.len(),
        unreadable,
        "https carrier: system trust roots loaded"
    );
    Ok(roots)
}

/// The usable certificates of the system's store. None is an error: an
/// https carrier that trusts nothing would only ever fail, so it refuses to
/// start and says how to give it roots.
fn usable_roots(
    certs: Vec<CertificateDer<'static>>,
    first_error: Option<String>,
) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        let why = first_error.map_or_else(String::new, |e| format!(" ({e})"));
        return Err(format!(
            "http.url: an https:// carrier needs trust roots and the system's trust store has \
             none{why}; install the system's CA certificates (e.g. the ca-certificates \
             package), point SSL_CERT_FILE at a PEM bundle, or set http.ca_file"
        ));
    }
    Ok(roots)
}

/// Why a request that got no answer failed: the TLS error when there is one
/// (named, never with the URL or the body), else connect or connection.
fn transport_reason(e: &hyper_util::client::legacy::Error) -> String {
    if let Some(t) = find_tls_error(e) {
        return tls_reason(t);
    }
    if e.is_connect() {
        "could not connect to the carrier".into()
    } else {
        "the carrier connection failed".into()
    }
}

/// The rustls error somewhere in `e`'s chain. `io::Error` hides the error it
/// wraps from `source()` (it returns the wrapped error's source), so wrapped
/// errors are looked into as well.
pub(crate) fn find_tls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref())
            && let Some(t) = find_tls_error(inner)
        {
            return Some(t);
        }
        next = e.source();
    }
    None
}

/// A failure reason for a TLS error: what is wrong, in words, plus the
/// rustls name of the case. It names neither the host nor the certificate.
pub(crate) fn tls_reason(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "tls: certificate not trusted (UnknownIssuer)".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "tls: hostname mismatch (the certificate is not for the carrier's host)".into()
            }
            C::Expired | C::ExpiredContext { .. } => "tls: certificate expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "tls: certificate not valid yet".into()
            }
            C::Revoked => "tls: certificate revoked".into(),
            // webpki's own case, e.g. CaUsedAsEndEntity.
            C::Other(o) => format!("tls: invalid certificate ({o})"),
            other => format!("tls: invalid certificate ({})", variant(other)),
        },
        rustls::Error::AlertReceived(a) => {
            format!(
                "tls: the carrier refused the handshake (alert {})",
                variant(a)
            )
        }
        other => format!("tls: handshake failed ({})", variant(other)),
    }
}

/// The variant name of an enum's Debug output (`ExpiredContext { .. }` ->
/// `ExpiredContext`): the case without its data.
fn variant(d: &impl std::fmt::Debug) -> String {
    let s = format!("{d:?}");
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn retry_after(v: Option<&HeaderValue>) -> Duration {
    v.and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
        .min(MAX_RETRY_AFTER)
}

/// What an HTTP status means for a send.
pub fn classify(status: StatusCode, retry_after_header: Option<&HeaderValue>) -> SendOutcome {
    if status.is_success() {
        SendOutcome::Accepted
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        SendOutcome::Throttled {
            retry_after: retry_after(retry_after_header),
        }
    } else if status.is_client_error() {
        SendOutcome::Rejected {
            reason: format!("carrier answered HTTP {}", status.as_u16()),
        }
    } else {
        SendOutcome::Failed {
            reason: format!("carrier answered HTTP {}", status.as_u16()),
        }
    }
}

impl Carrier for HttpCarrier {
    fn send(&self, msg: CarrierMessage, receipts: &Receipts) -> SendFuture {
        let (plan, ext) = match &msg.dial_plan {
            DialPlan::Direct => ("direct", None),
            DialPlan::Tones(e) => ("tones", Some(e.as_str())),
            DialPlan::Operator(e) => ("operator", Some(e.as_str())),
        };
        let body = Body {
            id: msg.id.to_string(),
            channel: msg.channel.name(),
            to: &msg.to,
            from: &msg.sender,
            text: &msg.text,
            dial_plan: plan,
            purpose: match msg.purpose {
                MessagePurpose::Code => "code",
                MessagePurpose::CallConfirmation => "call_confirmation",
                MessagePurpose::PinNotice => "pin_notice",
            },
            extension: ext,
            receipt_token: self
                .callback
                .as_ref()
                .map(|_| super::callback::format_token(msg.token)),
            callback: self.callback.as_deref(),
            call_callback: self
                .call_callback
                .as_deref()
                .filter(|_| msg.purpose == MessagePurpose::CallConfirmation),
        };
        let json = match serde_json::to_vec(&body) {
            Ok(j) => j,
            Err(_) => {
                return Box::pin(std::future::ready(SendOutcome::Failed {
                    reason: "could not encode the message".into(),
                }));
            }
        };
        let mut req = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)));
        if let (Ok(r), Some(a)) = (&mut req, &self.authorization) {
            r.headers_mut().insert(AUTHORIZATION, a.clone());
        }
        let pool = self.pool.clone();
        let receipts = receipts.clone();
        let token = msg.token;
        let await_callback = self.callback.is_some();
        Box::pin(async move {
            let Ok(req) = req else {
                return SendOutcome::Failed {
                    reason: "could not build the request".into(),
                };
            };
            let resp = match pool.request(req).await {
                Ok(r) => r,
                Err(e) => {
                    return SendOutcome::Failed {
                        reason: transport_reason(&e),
                    };
                }
            };
            let status = resp.status();
            let outcome = classify(status, resp.headers().get(RETRY_AFTER));
            // Read the body to the end so the connection returns to the pool.
            let _ = resp.into_body().collect().await;
            if outcome == SendOutcome::Accepted && !await_callback {
                // Without receipts a 2xx counts as delivered.
                receipts.report(token, Receipt::Delivered);
            }
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_system_store_refuses_to_start_and_says_what_to_do() {
        let e = usable_roots(Vec::new(), Some("no such file".into())).unwrap_err();
        assert!(e.contains("trust store has none (no such file)"), "{e}");
        assert!(
            e.contains("http.ca_file") && e.contains("SSL_CERT_FILE"),
            "{e}"
        );
        // Certificates that do not parse count as none.
        let junk = vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])];
        assert!(usable_roots(junk, None).is_err());
    }

    #[test]
    fn tls_errors_read_as_what_went_wrong() {
        use rustls::CertificateError as C;
        let r = |c: C| tls_reason(&rustls::Error::InvalidCertificate(c));
        assert_eq!(
            r(C::UnknownIssuer),
            "tls: certificate not trusted (UnknownIssuer)"
        );
        assert!(r(C::NotValidForName).starts_with("tls: hostname mismatch"));
        assert_eq!(r(C::Expired), "tls: certificate expired");
        assert_eq!(
            r(C::BadSignature),
            "tls: invalid certificate (BadSignature)"
        );
        assert_eq!(
            tls_reason(&rustls::Error::AlertReceived(
                rustls::AlertDescription::HandshakeFailure
            )),
            "tls: the carrier refused the handshake (alert HandshakeFailure)"
        );
        // The TLS error is found inside the io::Errors that wrap it.
        let wrapped = io::Error::other(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(C::UnknownIssuer),
        ));
        assert_eq!(
            find_tls_error(&wrapped),
            Some(&rustls::Error::InvalidCertificate(C::UnknownIssuer))
        );
    }

    #[test]
    fn an_https_url_needs_a_host_and_ca_file_needs_https() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _g = rt.enter();
        let cfg = |url: &str, ca: &str| HttpConfig {
            url: url.into(),
            ca_file: ca.into(),
            ..HttpConfig::default()
        };
        let e = HttpCarrier::new(&cfg("ftp://h/x", "")).unwrap_err();
        assert!(e.0.starts_with("http.url: must be http://"), "{e}");
        let e = HttpCarrier::new(&cfg("http://h/x", "/ca.pem")).unwrap_err();
        assert!(
            e.0.starts_with("http.ca_file: only with an https://"),
            "{e}"
        );
        let e = HttpCarrier::new(&cfg("https://h/x", "/nonexistent/ca.pem")).unwrap_err();
        assert!(
            e.0.starts_with("http.ca_file: /nonexistent/ca.pem: cannot read"),
            "{e}"
        );
        // A plain carrier loads no trust roots at all.
        let c = HttpCarrier::new(&cfg("http://user:pw@h:80/x", "")).unwrap();
        assert_eq!(
            format!("{c:?}"),
            r#"HttpCarrier { host: Some("h"), tls: false }"#
        );
    }
}
