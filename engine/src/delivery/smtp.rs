//! The SMTP carrier: e-mails each code through a mail server (a submission
//! service or a relay) with lettre's async SMTP connection, over a pool of
//! kept-open connections, protected by STARTTLS (required, never a silent
//! downgrade), implicit TLS or nothing (`tls = "none"`, loopback and tests
//! only), with optional AUTH (PLAIN or LOGIN). TLS is rustls with the ring provider; the
//! server's certificate is checked against `ca_file`'s CAs when one is set,
//! else the operating system's trust store (an empty one refuses to start).
//!
//! Each message is a multipart/alternative e-mail: a text/plain part and a
//! text/html part (the same text, HTML-escaped), a `Subject` taken from the
//! rendered text's `Subject:` line (localized by the templates), `From` the
//! carrier's sender, `To` the address, `Message-ID`, `Date` and
//! `Auto-Submitted: auto-generated` (no vacation replies).
//!
//! Answers: the server's 250 after DATA is `Accepted`, and reported as
//! delivered at once (SMTP gives no delivery receipt: the mail server has
//! taken responsibility for the message; a later bounce is not seen). 4xx is
//! `Failed` (retried, failed over), except 421/450/451/452 whose text says
//! the client is too fast ("too many", "rate limit", "throttl", "slow down",
//! or enhanced code 4.7.28), which is `Throttled` for
//! [`THROTTLE_RETRY_AFTER`] (SMTP has no Retry-After). 5xx about the message
//! or the address (550-554, 501, ...) is `Rejected`; 5xx that says the
//! carrier itself is wrong (500/502/503/504 protocol, 530/534/535/538 AUTH,
//! enhanced 5.1.7/5.1.8 sender, 5.7.8 credentials) is `Failed`, so that a
//! misconfigured carrier fails over instead of rejecting every address.
//! Timeouts, refused or broken connections and TLS failures are `Failed`.
//!
//! The pool is this module's, not lettre's: lettre's hands a connection back
//! to its pool when a send is dropped half-way (the router's timeout drops
//! sends), and the next message would read the previous one's replies. Here
//! a connection goes back only after a finished transaction; a send that is
//! dropped or times out closes its connection. A pooled connection is
//! checked with NOOP before reuse and closed after [`POOL_IDLE_TIMEOUT`]
//! idle; at most `pool_size` are open at once.
//!
//! It never retries by itself (the router does), never logs the message or
//! the address (lettre's `tracing` feature stays off: it would log every
//! command and reply, addresses and AUTH included), and never puts the
//! server's reply text (it may quote the address), the address, the code or
//! the password in a failure reason: reasons hold reply codes, enhanced
//! status codes and fixed words only. It never offers a mode that skips
//! certificate verification.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, Certificate, CertificateStore, Tls, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, Message};
use parking_lot::Mutex;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::carrier::{
    Carrier, CarrierMessage, MessagePurpose, Receipt, Receipts, SendFuture, SendOutcome,
};
use super::config::{RouterConfigError, SmtpConfig, SmtpTls};
use super::http::{find_tls_error, tls_reason};
use crate::types::Channel;

/// How long a carrier that said "too many" / "rate limit" is left alone
/// (SMTP replies carry no Retry-After).
pub const THROTTLE_RETRY_AFTER: Duration = Duration::from_secs(10);

/// An idle pooled connection is closed after this long (servers close theirs
/// after a few minutes; the pool checks a connection with NOOP before reuse).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `Auto-Submitted` (RFC 3834): no vacation or other automatic replies.
const AUTO_SUBMITTED: HeaderName = HeaderName::new_from_ascii_str("Auto-Submitted");

/// A carrier that sends e-mail through one SMTP server.
pub struct SmtpCarrier {
    server: Arc<Server>,
    /// `smtp.from`, or `None` for each message's sender.
    from: Option<Mailbox>,
}

/// How to reach the server, and the connections kept open to it.
struct Server {
    host: String,
    port: u16,
    mode: SmtpTls,
    /// `Wrapper` (implicit), `Required` (STARTTLS) or `None`.
    tls: Tls,
    hello: ClientId,
    credentials: Option<Credentials>,
    /// Connecting, and each message's whole exchange, end within this.
    timeout: Duration,
    /// One permit per connection open at once (`pool_size`).
    slots: Arc<Semaphore>,
    /// Connections after a finished transaction, with when they went idle.
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

/// Shows where the carrier sends, never its credentials.
impl std::fmt::Debug for SmtpCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.server;
        f.debug_struct("SmtpCarrier")
            .field("host", &s.host)
            .field("port", &s.port)
            .field("tls", &s.mode.name())
            .field("auth", &s.credentials.is_some())
            .finish()
    }
}

impl SmtpCarrier {
    /// A client of `cfg.host`. With TLS it loads its trust roots here:
    /// `cfg.ca_file`'s CAs when set, else the system's, and an empty system
    /// store is an error. It opens no connection until the first send.
    pub fn new(cfg: &SmtpConfig) -> Result<Self, RouterConfigError> {
        let e = |s: String| RouterConfigError(s);
        if cfg.host.is_empty() {
            return Err(e("smtp.host: must be set".into()));
        }
        if cfg.pool_size == 0 {
            return Err(e("smtp.pool_size: must be at least 1".into()));
        }
        if cfg.username.is_empty() != cfg.password.is_empty() {
            return Err(e(
                "smtp.username: must be set with smtp.password (AUTH needs both)".into(),
            ));
        }
        let from = if cfg.from.is_empty() {
            None
        } else {
            Some(cfg.from.parse::<Mailbox>().map_err(|_| {
                e(
                    "smtp.from: not a mailbox (codes@example.com or Name <codes@example.com>)"
                        .into(),
                )
            })?)
        };
        let tls = match cfg.tls {
            SmtpTls::None => {
                if !cfg.ca_file.is_empty() {
                    return Err(e(
                        "smtp.ca_file: only with tls = \"starttls\" or \"tls\"".into()
                    ));
                }
                Tls::None
            }
            SmtpTls::Starttls => Tls::Required(tls_parameters(cfg).map_err(e)?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters(cfg).map_err(e)?),
        };
        let hello = if cfg.helo_name.is_empty() {
            ClientId::default()
        } else {
            ClientId::Domain(cfg.helo_name.clone())
        };
        let credentials = (!cfg.username.is_empty())
            .then(|| Credentials::new(cfg.username.clone(), cfg.password.clone()));
        Ok(Self {
            server: Arc::new(Server {
                host: cfg.host.clone(),
                port: cfg.port,
                mode: cfg.tls,
                tls,
                hello,
                credentials,
                timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
                slots: Arc::new(Semaphore::new(cfg.pool_size as usize)),
                idle: Mutex::new(Vec::new()),
            }),
            from,
        })
    }

    /// The e-mail for `msg`, or the outcome that ends the send without it.
    fn build(&self, msg: &CarrierMessage) -> Result<Message, SendOutcome> {
        if msg.channel != Channel::Email {
            return Err(SendOutcome::Rejected {
                reason: format!(
                    "an smtp carrier sends e-mail only, not {}",
                    msg.channel.name()
                ),
            });
        }
        let from = match &self.from {
            Some(f) => f.clone(),
            None => msg
                .sender
                .parse::<Mailbox>()
                .map_err(|_| SendOutcome::Failed {
                    reason: "the sender is not an e-mail address (set smtp.from)".into(),
                })?,
        };
        let to = msg
            .to
            .parse::<Address>()
            .map_err(|_| SendOutcome::Rejected {
                reason: "the destination is not a valid e-mail address".into(),
            })?;
        let (subject, body) = split_subject(&msg.text);
        let subject = subject.unwrap_or(match msg.purpose {
            MessagePurpose::PinNotice => "Your new PIN",
            _ => "Your verification code",
        });
        let mut plain = body.to_owned();
        if !plain.ends_with('\n') {
            plain.push('\n');
        }
        let html = html_body(subject, body);
        let message_id = format!("<{:032x}@{}>", rand::random::<u128>(), from.email.domain());
        Message::builder()
            .from(from)
            .to(Mailbox::new(None, to))
            .subject(subject)
            .message_id(Some(message_id))
            .date_now()
            .raw_header(HeaderValue::new(AUTO_SUBMITTED, "auto-generated".into()))
            .multipart(MultiPart::alternative_plain_html(plain, html))
            .map_err(|_| SendOutcome::Failed {
                reason: "could not build the e-mail".into(),
            })
    }
}

/// The TLS settings: the carrier's host as the name its certificate must
/// carry, and the roots it trusts (only `ca_file`'s, or the system's).
fn tls_parameters(cfg: &SmtpConfig) -> Result<TlsParameters, String> {
    ServerName::try_from(cfg.host.as_str())
        .map_err(|_| "smtp.host: not a valid TLS server name".to_owned())?;
    let roots = if cfg.ca_file.is_empty() {
        system_roots()?
    } else {
        ca_file_certs(Path::new(&cfg.ca_file)).map_err(|e| format!("smtp.ca_file: {e}"))?
    };
    let mut builder =
        TlsParameters::builder(cfg.host.clone()).certificate_store(CertificateStore::None);
    for der in roots {
        let cert = Certificate::from_der(der.to_vec())
            .map_err(|_| "smtp.tls: a trusted certificate is not usable".to_owned())?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build_rustls()
        .map_err(|_| "smtp.tls: could not set up TLS".to_owned())
}

/// The CA certificates of a PEM bundle (checked as trust anchors first, with
/// the HTTP carrier's reasons).
fn ca_file_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    super::http::ca_file_roots(path)?;
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// The usable certificates of the operating system's trust store (on Linux,
/// the files openssl-probe finds, or `SSL_CERT_FILE` / `SSL_CERT_DIR`). None
/// is an error: a TLS carrier that trusts nothing would only ever fail.
fn system_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    let found = rustls_native_certs::load_native_certs();
    let first_error = found.errors.first().map(ToString::to_string);
    let usable: Vec<_> = found
        .certs
        .into_iter()
        .filter(|c| RootCertStore::empty().add(c.clone()).is_ok())
        .collect();
    if usable.is_empty() {
        let why = first_error.map_or_else(String::new, |e| format!(" ({e})"));
        return Err(format!(
            "smtp.tls: a TLS carrier needs trust roots and the system's trust store has \
             none{why}; install the system's CA certificates (e.g. the ca-certificates \
             package), point SSL_CERT_FILE at a PEM bundle, or set smtp.ca_file"
        ));
    }
    tracing::debug!(
        roots = usable.len(),
        "smtp carrier: system trust roots loaded"
    );
    Ok(usable)
}

/// The rendered text's subject (its first line, `Subject: ...`) and body
/// (after the blank line that follows); no subject line: all of it is body.
fn split_subject(text: &str) -> (Option<&str>, &str) {
    let Some(rest) = text.strip_prefix("Subject: ") else {
        return (None, text);
    };
    let (subject, body) = rest.split_once('\n').unwrap_or((rest, ""));
    let body = body.strip_prefix("\r\n").unwrap_or(body);
    let body = body.strip_prefix('\n').unwrap_or(body);
    (Some(subject.trim()), body)
}

/// `s` with `&`, `<`, `>`, `"` and `'` escaped for HTML text and attributes.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The HTML part: the subject as its title, each line of the text a
/// paragraph, everything escaped.
fn html_body(subject: &str, text: &str) -> String {
    let mut html = String::with_capacity(text.len() * 2 + 160);
    html.push_str("<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>");
    html.push_str(&escape_html(subject));
    html.push_str("</title></head>\n<body>\n");
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        html.push_str("<p>");
        html.push_str(&escape_html(line));
        html.push_str("</p>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}

/// The enhanced status code (RFC 3463) at the start of a reply's text, e.g.
/// `5.1.1`: digits and dots only, so it may go in a reason.
fn enhanced_code(text: &str) -> Option<&str> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let class = parts.next()?;
    let (subject, detail) = (parts.next()?, parts.next()?);
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    (matches!(class, "2" | "4" | "5")
        && digits(subject, 3)
        && digits(detail, 3)
        && parts.next().is_none())
    .then_some(first)
}

/// Whether a 4xx reply's text says the client is too fast.
fn says_too_fast(text: &str, enhanced: Option<&str>) -> bool {
    let t = text.to_ascii_lowercase();
    enhanced == Some("4.7.28")
        || [
            "too many",
            "rate limit",
            "rate-limit",
            "ratelimit",
            "throttl",
            "slow down",
        ]
        .iter()
        .any(|m| t.contains(m))
}

/// What a negative SMTP reply (`code` and its text) means for a send. The
/// text is read, never quoted: it may hold the address.
pub fn classify_reply(code: u16, text: &str) -> SendOutcome {
    let enhanced = enhanced_code(text);
    let shown = match enhanced {
        Some(x) => format!("{code} {x}"),
        None => code.to_string(),
    };
    match code {
        421 | 450 | 451 | 452 if says_too_fast(text, enhanced) => SendOutcome::Throttled {
            retry_after: THROTTLE_RETRY_AFTER,
        },
        400..=499 => SendOutcome::Failed {
            reason: format!("the mail server answered {shown} (transient)"),
        },
        530 | 534 | 535 | 538 => SendOutcome::Failed {
            reason: format!(
                "the mail server refused the login ({shown}); check smtp.username, smtp.password \
                 and tls"
            ),
        },
        _ if matches!(enhanced, Some("5.7.8" | "5.7.9" | "5.7.11")) => SendOutcome::Failed {
            reason: format!(
                "the mail server refused the login ({shown}); check smtp.username, smtp.password \
                 and tls"
            ),
        },
        _ if matches!(enhanced, Some("5.1.7" | "5.1.8")) => SendOutcome::Failed {
            reason: format!("the mail server refused the sender ({shown}); check smtp.from"),
        },
        500 | 502 | 503 | 504 => SendOutcome::Failed {
            reason: format!("the mail server did not accept the commands ({shown})"),
        },
        500..=599 => SendOutcome::Rejected {
            reason: format!("the mail server refused the message ({shown})"),
        },
        _ => SendOutcome::Failed {
            reason: format!("the mail server answered {shown}"),
        },
    }
}

/// What a failed send means: the reply's classification when the server
/// answered, else a transport failure named by its kind.
fn classify_error(e: &lettre::transport::smtp::Error) -> SendOutcome {
    use std::error::Error as _;
    if let Some(code) = e.status() {
        let code = code.to_string().parse::<u16>().unwrap_or(0);
        let text = e.source().map(ToString::to_string).unwrap_or_default();
        return classify_reply(code, &text);
    }
    SendOutcome::Failed {
        reason: transport_reason(e),
    }
}

/// Why a send that got no SMTP answer failed, without the host, the
/// address or the message.
fn transport_reason(e: &lettre::transport::smtp::Error) -> String {
    if let Some(t) = find_tls_error(e) {
        return tls_reason(t);
    }
    if e.is_timeout() {
        return "timed out (no answer within smtp.timeout_ms)".into();
    }
    if e.is_transport_shutdown() {
        return "the carrier is shut down".into();
    }
    if e.is_tls() {
        return "tls: could not set up the session".into();
    }
    // lettre's own words, matched rather than quoted.
    let said = e.to_string();
    if e.is_response() {
        return if said.contains("incomplete response") {
            "the mail server closed the connection".into()
        } else {
            "the mail server's reply is not SMTP".into()
        };
    }
    if e.is_client() {
        return if said.contains("STARTTLS") {
            "the mail server does not offer STARTTLS (tls = \"starttls\" requires it)".into()
        } else if said.contains("authentication mechanism") {
            "the mail server offers no AUTH mechanism in common (PLAIN, LOGIN); AUTH needs TLS \
             on most servers"
                .into()
        } else if said.contains("SMTPUTF8") {
            "the mail server cannot take a non-ASCII address (no SMTPUTF8)".into()
        } else {
            "the smtp client failed".into()
        };
    }
    let kind = io_kind(e).map_or_else(String::new, |k| format!(" ({k:?})"));
    if said.starts_with("Connection error") {
        format!("could not connect to the mail server{kind}")
    } else {
        format!("the mail server connection failed{kind}")
    }
}

/// The kind of the I/O error somewhere in `e`'s chain.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}

impl Server {
    /// A new connection: TCP (and TLS from the first byte for implicit
    /// TLS), greeting, EHLO, STARTTLS when required, AUTH when configured.
    async fn connect(&self) -> Result<AsyncSmtpConnection, lettre::transport::smtp::Error> {
        let implicit = match &self.tls {
            Tls::Wrapper(p) => Some(p.clone()),
            _ => None,
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &self.hello,
            implicit,
            None,
        )
        .await?;
        if let Tls::Required(p) = &self.tls {
            // Fails when the server does not offer STARTTLS: no downgrade.
            conn.starttls(p.clone(), &self.hello).await?;
        }
        if let Some(c) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], c).await?;
        }
        Ok(conn)
    }

    /// A pooled connection that still answers NOOP, else a new one.
    async fn connection(&self) -> Result<AsyncSmtpConnection, lettre::transport::smtp::Error> {
        loop {
            // The lock is never held across an await.
            let next = self.idle.lock().pop();
            let Some((mut conn, since)) = next else {
                return self.connect().await;
            };
            if since.elapsed() < POOL_IDLE_TIMEOUT && conn.test_connected().await {
                return Ok(conn);
            }
            // Too old or dead: dropped (closed), try the next.
        }
    }

    /// Sends one message on a pooled or new connection, within the timeout.
    /// Only a connection whose transaction finished goes back to the pool;
    /// if this future is dropped half-way, its connection is closed.
    async fn send(&self, envelope: Envelope, email: Vec<u8>) -> SendOutcome {
        let Ok(_slot) = self.slots.acquire().await else {
            return SendOutcome::Failed {
                reason: "the carrier is shut down".into(),
            };
        };
        let exchange = async {
            let mut conn = self.connection().await?;
            let sent = conn.send(&envelope, &email).await;
            Ok::<_, lettre::transport::smtp::Error>((conn, sent))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => SendOutcome::Failed {
                reason: "timed out (no answer within smtp.timeout_ms)".into(),
            },
            Ok(Err(e)) => classify_error(&e),
            Ok(Ok((conn, sent))) => {
                // A negative reply has already closed the connection.
                if !conn.has_broken() {
                    self.idle.lock().push((conn, Instant::now()));
                }
                match sent {
                    Ok(_) => SendOutcome::Accepted,
                    Err(e) => classify_error(&e),
                }
            }
        }
    }
}

impl Carrier for SmtpCarrier {
    fn send(&self, msg: CarrierMessage, receipts: &Receipts) -> SendFuture {
        let built = self.build(&msg);
        let server = Arc::clone(&self.server);
        let receipts = receipts.clone();
        let token = msg.token;
        Box::pin(async move {
            let email = match built {
                Ok(m) => m,
                Err(outcome) => return outcome,
            };
            let outcome = server
                .send(email.envelope().clone(), email.formatted())
                .await;
            if outcome == SendOutcome::Accepted {
                // SMTP has no delivery receipt: the server's 250 after DATA
                // (it took responsibility for the message) counts as delivered.
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
    fn replies_map_to_outcomes_without_quoting_the_text() {
        let secret = "<jane@example.com> 123456";
        let r = |code, text: &str| classify_reply(code, &format!("{text} {secret}"));
        assert_eq!(
            r(550, "5.1.1 Mailbox unavailable"),
            SendOutcome::Rejected {
                reason: "the mail server refused the message (550 5.1.1)".into()
            }
        );
        assert!(matches!(
            r(554, "Transaction failed"),
            SendOutcome::Rejected { .. }
        ));
        assert!(matches!(
            r(553, "5.1.3 bad address"),
            SendOutcome::Rejected { .. }
        ));
        assert_eq!(
            r(451, "4.3.0 Local error"),
            SendOutcome::Failed {
                reason: "the mail server answered 451 4.3.0 (transient)".into()
            }
        );
        assert!(matches!(
            r(421, "4.3.2 Service not available"),
            SendOutcome::Failed { .. }
        ));
        for (code, text) in [
            (421, "4.7.0 Too many connections"),
            (451, "4.7.1 Rate limit exceeded"),
            (450, "Throttled"),
            (421, "4.7.28 unusual rate of mail"),
        ] {
            assert_eq!(
                r(code, text),
                SendOutcome::Throttled {
                    retry_after: THROTTLE_RETRY_AFTER
                },
                "{code} {text}"
            );
        }
        // A carrier that is itself wrong fails (and fails over).
        for (code, text) in [
            (535, "5.7.8 Authentication credentials invalid"),
            (530, "5.7.0 Authentication required"),
            (550, "5.1.8 Bad sender's system address"),
            (503, "5.5.1 Bad sequence of commands"),
        ] {
            assert!(
                matches!(r(code, text), SendOutcome::Failed { .. }),
                "{code} {text}"
            );
        }
        for (code, text) in [
            (550, "5.1.1 x"),
            (451, "4.7.1 Rate limit"),
            (535, "5.7.8 x"),
        ] {
            let o = format!("{:?}", r(code, text));
            assert!(!o.contains("jane") && !o.contains("123456"), "{o}");
        }
    }

    #[test]
    fn enhanced_codes_are_digits_only() {
        assert_eq!(enhanced_code("5.1.1 Mailbox"), Some("5.1.1"));
        assert_eq!(enhanced_code("4.7.28 rate"), Some("4.7.28"));
        assert_eq!(enhanced_code("Mailbox 5.1.1"), None);
        assert_eq!(enhanced_code("5.1 x"), None);
        assert_eq!(enhanced_code("5.1.1.1 x"), None);
        assert_eq!(enhanced_code("<a@b.c>"), None);
        assert_eq!(enhanced_code(""), None);
    }

    #[test]
    fn the_subject_line_is_split_off_and_html_is_escaped() {
        let (s, b) = split_subject("Subject: Votre code\n\nLigne 1\nLigne 2\n");
        assert_eq!((s, b), (Some("Votre code"), "Ligne 1\nLigne 2\n"));
        assert_eq!(split_subject("no subject"), (None, "no subject"));
        let h = html_body("A & B", "Code <b>1</b> \"x\" 'y'\n\nend");
        assert!(h.contains("<title>A &amp; B</title>"), "{h}");
        assert!(
            h.contains("<p>Code &lt;b&gt;1&lt;/b&gt; &quot;x&quot; &#39;y&#39;</p>\n<p>end</p>"),
            "{h}"
        );
    }

    #[test]
    fn construction_checks_and_debug_hides_the_password() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _g = rt.enter();
        let cfg = SmtpConfig {
            host: "127.0.0.1".into(),
            port: 2525,
            tls: SmtpTls::None,
            username: "user".into(),
            password: "s3cret-pw".into(),
            ..SmtpConfig::default()
        };
        let c = SmtpCarrier::new(&cfg).unwrap();
        let d = format!("{c:?} {cfg:?}");
        assert!(!d.contains("s3cret"), "{d}");
        assert!(d.contains("<redacted>") && d.contains("auth: true"), "{d}");
        let e = SmtpCarrier::new(&SmtpConfig {
            tls: SmtpTls::Starttls,
            ca_file: "/nonexistent/ca.pem".into(),
            ..cfg.clone()
        })
        .unwrap_err();
        assert!(
            e.0.starts_with("smtp.ca_file: /nonexistent/ca.pem: cannot read"),
            "{e}"
        );
        let e = SmtpCarrier::new(&SmtpConfig {
            ca_file: "/ca.pem".into(),
            ..cfg.clone()
        })
        .unwrap_err();
        assert!(e.0.starts_with("smtp.ca_file: only with tls"), "{e}");
        let e = SmtpCarrier::new(&SmtpConfig {
            from: "not a mailbox".into(),
            ..cfg
        })
        .unwrap_err();
        assert!(e.0.starts_with("smtp.from: not a mailbox"), "{e}");
    }
}
