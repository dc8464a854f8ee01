//! The upstream RADIUS server of `first_factor = "upstream"`: the user's
//! password is checked there before Watchword starts the second factor.
//!
//! One connected UDP socket and one long-lived task that reads its replies;
//! a request takes one of the 256 Identifiers (none free: the request is
//! refused at once, and the caller counts it), carries a random Request
//! Authenticator and a Message-Authenticator, and its User-Password is
//! hidden again with the upstream's secret. It is sent up to
//! [`ATTEMPTS`] times within the timeout. A reply is accepted only if its
//! Response Authenticator (and Message-Authenticator, when present or
//! required) verifies against the request it answers.
//!
//! This module must never log or return a secret or a password, never hold
//! its lock across an `.await`, and never let a reply it could not verify
//! decide anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::clients::Secret;
use super::packet::{
    Code, MAX_PACKET, MESSAGE_AUTHENTICATOR, PROXY_STATE, PacketView, RequestBuilder, STATE,
    USER_PASSWORD, verify_reply,
};

/// Sends of one request within the timeout (the first and two resends).
pub const ATTEMPTS: u32 = 3;

/// The upstream server and how to talk to it. `Debug` hides the secret.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Its address.
    pub addr: SocketAddr,
    /// The secret shared with it.
    pub secret: Secret,
    /// How long to wait for its answer, all sends included.
    pub timeout: Duration,
    /// Refuse replies without a Message-Authenticator.
    pub require_message_authenticator: bool,
}

/// What the upstream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Access-Accept: the password is right.
    Accept,
    /// Access-Reject.
    Reject,
    /// Access-Challenge or another code: not supported, taken as a reject.
    Other,
    /// No verified answer within the timeout.
    Timeout,
    /// All 256 Identifiers are waiting for answers: not sent.
    Busy,
    /// The request could not be built or sent.
    Error,
}

impl Verdict {
    /// A short, stable label for metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Reject => "reject",
            Verdict::Other => "other",
            Verdict::Timeout => "timeout",
            Verdict::Busy => "busy",
            Verdict::Error => "error",
        }
    }
}

struct Waiter {
    authenticator: [u8; 16],
    tx: oneshot::Sender<Code>,
}

struct Slots {
    next: u8,
    waiting: Vec<Option<Waiter>>,
}

/// A client of the upstream server, shared by every request.
pub struct Upstream {
    socket: UdpSocket,
    settings: UpstreamSettings,
    slots: Mutex<Slots>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Frees an Identifier when its request is over (also when cancelled).
struct SlotGuard<'a> {
    up: &'a Upstream,
    id: u8,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.up.slots.lock().waiting.get_mut(usize::from(self.id)) {
            *w = None;
        }
    }
}

impl Upstream {
    /// Binds a socket connected to the upstream and starts the task that
    /// reads its replies (until `stop` fires).
    pub async fn start(
        settings: UpstreamSettings,
        stop: CancellationToken,
    ) -> std::io::Result<Arc<Upstream>> {
        let local: SocketAddr = if settings.addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(settings.addr).await?;
        let up = Arc::new(Upstream {
            socket,
            settings,
            slots: Mutex::new(Slots {
                next: 0,
                waiting: (0..256).map(|_| None).collect(),
            }),
        });
        tokio::spawn(up.clone().read_replies(stop));
        Ok(up)
    }

    /// Identifiers waiting for an answer.
    pub fn waiting(&self) -> usize {
        self.slots.lock().waiting.iter().flatten().count()
    }

    /// Takes a free Identifier for a request with `authenticator`.
    /// Locking behaviour: takes the slots lock briefly.
    fn take_slot(
        &self,
        authenticator: [u8; 16],
    ) -> Option<(SlotGuard<'_>, oneshot::Receiver<Code>)> {
        let mut s = self.slots.lock();
        let start = s.next;
        let id = (0..=255u8)
            .map(|i| start.wrapping_add(i))
            .find(|&id| s.waiting.get(usize::from(id)).is_some_and(Option::is_none))?;
        let (tx, rx) = oneshot::channel();
        if let Some(w) = s.waiting.get_mut(usize::from(id)) {
            *w = Some(Waiter { authenticator, tx });
        }
        s.next = id.wrapping_add(1);
        Some((SlotGuard { up: self, id }, rx))
    }

    /// Forwards `request` (its attributes but Message-Authenticator,
    /// User-Password, State and Proxy-State) with `password` hidden under
    /// the upstream's secret, and waits for the verified answer.
    pub async fn forward(&self, request: &PacketView<'_>, password: &[u8]) -> Verdict {
        let authenticator: [u8; 16] = rand::random();
        let Some((guard, mut rx)) = self.take_slot(authenticator) else {
            return Verdict::Busy;
        };
        let mut b = RequestBuilder::new(guard.id, authenticator);
        for (t, v) in request.attributes() {
            if matches!(
                t,
                MESSAGE_AUTHENTICATOR | USER_PASSWORD | STATE | PROXY_STATE
            ) {
                continue;
            }
            if b.push(t, v).is_err() {
                return Verdict::Error;
            }
        }
        let secret = self.settings.secret.expose();
        if b.push_user_password(password, secret).is_err() {
            return Verdict::Error;
        }
        let bytes = b.finish(secret);
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let every = self.settings.timeout / ATTEMPTS;
        for _ in 0..ATTEMPTS {
            if let Err(e) = self.socket.send(&bytes).await {
                tracing::debug!(error = %e, "sending to the upstream RADIUS server failed");
            }
            let next = (tokio::time::Instant::now() + every).min(deadline);
            match tokio::time::timeout_at(next, &mut rx).await {
                Ok(Ok(code)) => {
                    drop(guard);
                    return match code {
                        Code::ACCESS_ACCEPT => Verdict::Accept,
                        Code::ACCESS_REJECT => Verdict::Reject,
                        _ => Verdict::Other,
                    };
                }
                Ok(Err(_)) => return Verdict::Error,
                Err(_) if tokio::time::Instant::now() >= deadline => break,
                Err(_) => {}
            }
        }
        Verdict::Timeout
    }

    /// Reads replies until `stop`; a verified reply wakes its request.
    async fn read_replies(self: Arc<Self>, stop: CancellationToken) {
        let mut buf = vec![0u8; MAX_PACKET + 1];
        loop {
            let n = tokio::select! {
                r = self.socket.recv(&mut buf) => match r {
                    Ok(n) => n,
                    Err(e) => {
                        // ICMP errors (the upstream is down) land here: the
                        // waiting requests time out.
                        tracing::debug!(error = %e, "upstream RADIUS socket error");
                        discarded("socket_error");
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let Some(reply) = buf.get(..n).filter(|_| n <= MAX_PACKET) else {
                discarded("too_long");
                continue;
            };
            let id = usize::from(reply.get(1).copied().unwrap_or(0));
            let expected = self
                .slots
                .lock()
                .waiting
                .get(id)
                .and_then(|w| w.as_ref().map(|w| w.authenticator));
            let Some(auth) = expected else {
                discarded("unknown_identifier");
                continue;
            };
            let secret = self.settings.secret.expose();
            let require = self.settings.require_message_authenticator;
            match verify_reply(reply, &auth, secret, require) {
                Ok(view) => {
                    let waiter = {
                        let mut s = self.slots.lock();
                        match s.waiting.get_mut(id) {
                            Some(w) if w.as_ref().is_some_and(|w| w.authenticator == auth) => {
                                w.take()
                            }
                            _ => None,
                        }
                    };
                    if let Some(w) = waiter {
                        let _ = w.tx.send(view.code());
                    }
                }
                Err(e) => {
                    if matches!(e, super::packet::ReplyError::MissingMessageAuthenticator) {
                        tracing::warn!(
                            "the upstream RADIUS server answered without Message-Authenticator: \
                             refused (servers before FreeRADIUS 3.2.5 need \
                             radius.upstream.require_message_authenticator = false)"
                        );
                    }
                    discarded(e.reason());
                }
            }
        }
    }
}

fn discarded(reason: &'static str) {
    metrics::counter!("watchword_radius_upstream_discarded_total", "reason" => reason).increment(1);
}
