//! The async client library for protocol v1: one connection per [`Client`],
//! pipelined by req_id, shared by any number of tasks, reconnected on the next
//! call after it broke, with typed results.
//!
//! Structure: each connection has a writer task (batches queued frames into few
//! writes) and a reader task (matches responses to waiting callers by req_id,
//! forwards DELIVERED pushes). A bounded semaphore keeps at most
//! `max_in_flight` requests outstanding. This module must never log a key or a
//! code, and never hold a sync lock across an `.await`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use watchword_engine::{ChallengeId, VerifyOutcome};

use crate::frame::{self, FrameError};
use crate::protocol::{CheckReply, Op, PUSH_DELIVERED, Request, Response, Status, VERSION};
pub use crate::protocol::{Delivered, IssueRequest, StatusReply};

/// How many DELIVERED pushes wait in the receiver returned by
/// [`Client::subscribe_outbox`]. When it is full, further pushes are dropped
/// (never blocking the connection) and counted in [`Client::outbox_dropped`].
pub const OUTBOX_CAPACITY: usize = 65_536;

/// The code a delivered message carries (what a person reads off the
/// handset): its first run of 4 to 12 digits, the lengths a tenant's
/// `code_len` may have. The texts' other numbers (the minutes of validity)
/// are shorter; a spoken code (`1, 2, 3, 4`) has no such run.
pub fn code_in(text: &str) -> Option<&str> {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|run| (4..=12).contains(&run.len()))
}

/// TLS settings of a client.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The name the server's certificate must carry.
    pub server_name: String,
    /// A PEM file with the CA certificate(s) to trust.
    pub ca_cert_pem: PathBuf,
}

/// Where and how to connect. Its `Debug` output redacts the key.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port`, e.g. `127.0.0.1:7400`.
    pub addr: String,
    /// Tenant name sent in HELLO.
    pub tenant: String,
    /// Tenant key sent in HELLO.
    pub key: String,
    /// TLS, or `None` for plain TCP.
    pub tls: Option<ClientTls>,
    /// Most requests outstanding on the connection; further calls wait.
    pub max_in_flight: usize,
    /// Limit for TCP connect, TLS handshake and HELLO together.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr)
            .field("tenant", &self.tenant)
            .field("key", &"<redacted>")
            .field("tls", &self.tls)
            .field("max_in_flight", &self.max_in_flight)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:7400".into(),
            tenant: "demo".into(),
            key: "demo-key".into(),
            tls: None,
            max_in_flight: 1024,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket or TLS error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with a non-OK status.
    #[error("{status}: {message} (retry after {retry_after_ms} ms)")]
    Status {
        /// The status.
        status: Status,
        /// When to retry (0 if not applicable).
        retry_after_ms: u32,
        /// The server's reason.
        message: String,
    },
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection closed before the answer came; the next call reconnects.
    #[error("connection closed")]
    Closed,
    /// Connecting took longer than `connect_timeout`.
    #[error("timed out")]
    Timeout,
}

/// OK to ISSUE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueReply {
    /// The new challenge.
    pub id: ChallengeId,
    /// When it expires, Unix milliseconds.
    pub expires_at_ms: u64,
    /// The destination as it may be shown.
    pub masked_destination: String,
}

/// OK to VERIFY or VERIFY_SUBJECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReply {
    /// What the attempt came to (attempts left are inside `Rejected`).
    pub outcome: VerifyOutcome,
}

/// OK to RESEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendReply {
    /// Sends the destination may still receive in its window.
    pub sends_left: u8,
    /// When the challenge expires, Unix milliseconds.
    pub expires_at_ms: u64,
}

/// Largest frame accepted from a server (its HELLO says its own `max_frame`
/// for requests; answers and pushes are small). Beyond it the client drops the
/// connection instead of buffering.
const MAX_SERVER_FRAME: u32 = 16 * 1024 * 1024;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type Waiter = oneshot::Sender<Result<Response, ClientError>>;
type Pending = Arc<Mutex<HashMap<u32, (Op, Waiter)>>>;
type OutboxSlot = Arc<Mutex<Option<mpsc::Sender<Delivered>>>>;

/// One live connection: the writer queue, the waiting callers, the limit.
struct Conn {
    tx: mpsc::Sender<Bytes>,
    pending: Pending,
    next_id: AtomicU32,
    permits: Semaphore,
    closed: Arc<AtomicBool>,
    _stop: DropGuard,
}

impl Conn {
    async fn call(&self, req: &Request) -> Result<Response, ClientError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?;
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let (wtx, wrx) = oneshot::channel();
        self.pending.lock().insert(id, (req.op(), wtx));
        let mut buf = BytesMut::with_capacity(64);
        req.encode(id, &mut buf);
        if self.tx.send(buf.freeze()).await.is_err() {
            self.pending.lock().remove(&id);
            return Err(ClientError::Closed);
        }
        // The reader fails every waiter when the connection ends, so this
        // cannot wait forever on a dead connection.
        let resp = wrx.await.map_err(|_| ClientError::Closed)??;
        match resp {
            Response::Error {
                status,
                retry_after_ms,
                message,
            } => Err(ClientError::Status {
                status,
                retry_after_ms,
                message,
            }),
            ok => Ok(ok),
        }
    }
}

struct Inner {
    cfg: ClientConfig,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    outbox: OutboxSlot,
    outbox_dropped: Arc<AtomicU64>,
}

/// A protocol v1 client over one connection. Cheap to clone; clones share the
/// connection. Many tasks may call concurrently (requests are pipelined, at
/// most `max_in_flight` outstanding; further callers wait for a slot).
///
/// When the connection breaks, calls waiting on it fail with
/// [`ClientError::Closed`] and the next call reconnects (and renews an outbox
/// subscription). There is no per-request timeout: wrap a call in
/// `tokio::time::timeout` if you need one.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.cfg.addr)
            .field("tenant", &self.inner.cfg.tenant)
            .finish_non_exhaustive()
    }
}

fn protocol(msg: impl Into<String>) -> ClientError {
    ClientError::Protocol(msg.into())
}

impl Client {
    /// Connects, performs the TLS handshake if configured, and sends HELLO.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let tls = match &cfg.tls {
            None => None,
            Some(t) => Some(crate::tls::client_connector(t).map_err(|e| {
                ClientError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?),
        };
        let client = Client {
            inner: Arc::new(Inner {
                cfg,
                tls,
                conn: tokio::sync::Mutex::new(None),
                outbox: Arc::new(Mutex::new(None)),
                outbox_dropped: Arc::new(AtomicU64::new(0)),
            }),
        };
        client.conn().await?;
        Ok(client)
    }

    /// The live connection, or a new one when there is none or it broke.
    async fn conn(&self) -> Result<Arc<Conn>, ClientError> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.closed.load(Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        *slot = None;
        let conn = tokio::time::timeout(self.inner.cfg.connect_timeout, self.open())
            .await
            .map_err(|_| ClientError::Timeout)??;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        drop(slot);
        if self.inner.outbox.lock().is_some() {
            conn.call(&Request::OutboxSubscribe).await?;
        }
        Ok(conn)
    }

    async fn open(&self) -> Result<Conn, ClientError> {
        let cfg = &self.inner.cfg;
        let tcp = TcpStream::connect(&cfg.addr).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &self.inner.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
        };
        let (rd, wr) = tokio::io::split(stream);
        let stop = CancellationToken::new();
        let closed = Arc::new(AtomicBool::new(false));
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let max_in_flight = cfg.max_in_flight.max(1);
        let (tx, rx) = mpsc::channel::<Bytes>(max_in_flight);
        tokio::spawn(write_loop(
            wr,
            rx,
            stop.clone(),
            closed.clone(),
            pending.clone(),
        ));
        tokio::spawn(read_loop(
            rd,
            stop.clone(),
            closed.clone(),
            pending.clone(),
            self.inner.outbox.clone(),
            self.inner.outbox_dropped.clone(),
        ));
        let conn = Conn {
            tx,
            pending,
            next_id: AtomicU32::new(1),
            permits: Semaphore::new(max_in_flight),
            closed,
            _stop: stop.drop_guard(),
        };
        let hello = Request::Hello {
            version: VERSION,
            tenant: cfg.tenant.clone(),
            key: cfg.key.clone(),
        };
        match conn.call(&hello).await? {
            Response::Hello { .. } => Ok(conn),
            other => Err(protocol(format!("unexpected answer to HELLO: {other:?}"))),
        }
    }

    async fn call(&self, req: Request) -> Result<Response, ClientError> {
        let conn = self.conn().await?;
        conn.call(&req).await
    }

    /// PING.
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.call(Request::Ping).await? {
            Response::Empty => Ok(()),
            other => Err(protocol(format!("unexpected answer to PING: {other:?}"))),
        }
    }

    /// ISSUE: creates a challenge; the code goes only to the destination.
    pub async fn issue(&self, req: &IssueRequest) -> Result<IssueReply, ClientError> {
        match self.call(Request::Issue(req.clone())).await? {
            Response::Issued {
                id,
                expires_at_ms,
                masked_destination,
            } => Ok(IssueReply {
                id,
                expires_at_ms,
                masked_destination,
            }),
            other => Err(protocol(format!("unexpected answer to ISSUE: {other:?}"))),
        }
    }

    /// VERIFY: checks a code against a challenge.
    pub async fn verify(&self, id: ChallengeId, code: &str) -> Result<VerifyReply, ClientError> {
        let req = Request::Verify {
            id,
            code: code.to_owned(),
        };
        match self.call(req).await? {
            Response::Verified(outcome) => Ok(VerifyReply { outcome }),
            other => Err(protocol(format!("unexpected answer to VERIFY: {other:?}"))),
        }
    }

    /// VERIFY_SUBJECT: checks a code against the subject's newest challenge.
    pub async fn verify_subject(
        &self,
        subject: &str,
        code: &str,
    ) -> Result<VerifyReply, ClientError> {
        let req = Request::VerifySubject {
            subject: subject.to_owned(),
            code: code.to_owned(),
        };
        match self.call(req).await? {
            Response::Verified(outcome) => Ok(VerifyReply { outcome }),
            other => Err(protocol(format!(
                "unexpected answer to VERIFY_SUBJECT: {other:?}"
            ))),
        }
    }

    /// RESEND: sends the same code again.
    pub async fn resend(&self, id: ChallengeId) -> Result<ResendReply, ClientError> {
        match self.call(Request::Resend { id }).await? {
            Response::Resent {
                sends_left,
                expires_at_ms,
            } => Ok(ResendReply {
                sends_left,
                expires_at_ms,
            }),
            other => Err(protocol(format!("unexpected answer to RESEND: {other:?}"))),
        }
    }

    /// CHECK: the user-level decision. `answer` and `state` may be empty.
    /// A CHECK on a ringing call's state is held by the server for up to 25 s.
    pub async fn check(
        &self,
        subject: &str,
        answer: &str,
        state: &str,
        client_ip: &str,
    ) -> Result<CheckReply, ClientError> {
        let req = Request::Check(crate::protocol::CheckRequest {
            subject: subject.to_owned(),
            answer: answer.to_owned(),
            state: state.to_owned(),
            client_ip: client_ip.to_owned(),
        });
        match self.call(req).await? {
            Response::Checked(c) => Ok(c),
            other => Err(protocol(format!("unexpected answer to CHECK: {other:?}"))),
        }
    }

    /// CALL_ANSWER: a simulated handset answers the confirmation call `id`
    /// with `digits` (`#` confirms; simulator tenants only).
    pub async fn call_answer(&self, id: ChallengeId, digits: &str) -> Result<(), ClientError> {
        let req = Request::CallAnswer {
            id,
            digits: digits.to_owned(),
        };
        match self.call(req).await? {
            Response::Empty => Ok(()),
            other => Err(protocol(format!(
                "unexpected answer to CALL_ANSWER: {other:?}"
            ))),
        }
    }

    /// CANCEL: ends a pending challenge.
    pub async fn cancel(&self, id: ChallengeId) -> Result<(), ClientError> {
        match self.call(Request::Cancel { id }).await? {
            Response::Empty => Ok(()),
            other => Err(protocol(format!("unexpected answer to CANCEL: {other:?}"))),
        }
    }

    /// STATUS: where a challenge stands.
    pub async fn status(&self, id: ChallengeId) -> Result<StatusReply, ClientError> {
        match self.call(Request::Status { id }).await? {
            Response::Status(s) => Ok(s),
            other => Err(protocol(format!("unexpected answer to STATUS: {other:?}"))),
        }
    }

    /// OUTBOX_SUBSCRIBE: every message a simulated carrier delivers for this
    /// tenant arrives on the returned receiver (bounded to
    /// [`OUTBOX_CAPACITY`]; when it is full, pushes are dropped and counted in
    /// [`Client::outbox_dropped`]). The subscription is renewed when the client
    /// reconnects. A second call replaces the first receiver.
    pub async fn subscribe_outbox(&self) -> Result<mpsc::Receiver<Delivered>, ClientError> {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        *self.inner.outbox.lock() = Some(tx);
        match self.call(Request::OutboxSubscribe).await {
            Ok(Response::Empty) => Ok(rx),
            Ok(other) => {
                *self.inner.outbox.lock() = None;
                Err(protocol(format!(
                    "unexpected answer to OUTBOX_SUBSCRIBE: {other:?}"
                )))
            }
            Err(e) => {
                *self.inner.outbox.lock() = None;
                Err(e)
            }
        }
    }

    /// DELIVERED pushes dropped because the outbox receiver was full.
    pub fn outbox_dropped(&self) -> u64 {
        self.inner.outbox_dropped.load(Ordering::Relaxed)
    }
}

fn fail_all(pending: &Pending, closed: &AtomicBool) {
    closed.store(true, Ordering::Release);
    let waiters: Vec<_> = pending.lock().drain().collect();
    for (_, (_, w)) in waiters {
        let _ = w.send(Err(ClientError::Closed));
    }
}

async fn write_loop(
    mut wr: tokio::io::WriteHalf<Box<dyn Stream>>,
    mut rx: mpsc::Receiver<Bytes>,
    stop: CancellationToken,
    closed: Arc<AtomicBool>,
    pending: Pending,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        buf.extend_from_slice(&first);
        // Batch whatever else is already queued into the same write. When
        // nothing is but other requests are in flight, yield once first:
        // callers woken by the same batch of responses are usually about to
        // queue their next request, and one write for all of them saves a
        // system call (and a server read) each. With a single request in
        // flight there is nothing to wait for.
        let mut yielded = false;
        while buf.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(m) => buf.extend_from_slice(&m),
                Err(_) if !yielded && pending.lock().len() > 1 => {
                    yielded = true;
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
        if wr.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
    }
    let _ = wr.shutdown().await;
    fail_all(&pending, &closed);
}

async fn read_loop(
    mut rd: tokio::io::ReadHalf<Box<dyn Stream>>,
    stop: CancellationToken,
    closed: Arc<AtomicBool>,
    pending: Pending,
    outbox: OutboxSlot,
    dropped: Arc<AtomicU64>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    'outer: loop {
        loop {
            match frame::take(&mut buf, MAX_SERVER_FRAME) {
                Ok(f) => {
                    if f.op >= crate::protocol::PUSH_MIN {
                        if f.op == PUSH_DELIVERED
                            && let Ok(d) = Delivered::decode(&f.payload)
                        {
                            let tx = outbox.lock().clone();
                            if let Some(tx) = tx
                                && tx.try_send(d).is_err()
                            {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        continue;
                    }
                    let waiter = pending.lock().remove(&f.req_id);
                    match waiter {
                        Some((op, w)) => {
                            let r = Response::decode(op, f.flags_or_status, &f.payload)
                                .map_err(ClientError::Protocol);
                            let _ = w.send(r);
                        }
                        None if f.req_id == 0 => break 'outer, // framing error: server closes
                        None => {}
                    }
                }
                Err(FrameError::Incomplete) => break,
                Err(FrameError::BadLength(_)) => break 'outer,
            }
        }
        let n = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = stop.cancelled() => break,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    fail_all(&pending, &closed);
    stop.cancel();
}

#[cfg(test)]
mod tests {
    use super::code_in;

    #[test]
    fn the_code_is_the_digit_run_of_any_configured_length() {
        for code in ["1234", "204962", "12345678", "123456789012"] {
            let sms = format!("{code} is your Watchword verification code. It expires in 5 min.");
            assert_eq!(code_in(&sms), Some(code), "{sms}");
            let mail = format!(
                "Subject: Your Watchword verification code\n\nYour Watchword verification \
                 code is {code}.\nIt expires in 10 minutes."
            );
            assert_eq!(code_in(&mail), Some(code), "{mail}");
        }
        assert_eq!(code_in("It expires in 60 min."), None);
        assert_eq!(code_in("1234567890123 is too long"), None);
        assert_eq!(code_in("Your code is: 1, 2, 3, 4."), None);
    }
}
