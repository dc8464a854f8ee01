//! The RADIUS target (`--target radius://HOST:PORT`): Access-Requests over
//! UDP as a NAS sends them (PAP, Message-Authenticator first, the shared
//! secret of `--radius-secret`), for Watchword's RADIUS listener and, as the
//! baseline, FreeRADIUS's own PAP.
//!
//! Each connection is one UDP socket with up to 256 requests outstanding
//! (the Identifier is eight bits); one task reads the replies and hands each
//! to the request holding its Identifier, which checks the Response and
//! Message-Authenticators before it counts the answer. A reply that does not
//! verify (a late answer to an Identifier since reused, a wrong secret) is
//! an error, never an accept.
//!
//! Scenarios: `totp` (the code of provisioned token K as the password),
//! `pap` (user K's static password: the FreeRADIUS baseline) and `flow` (an
//! empty password starts an SMS or e-mail challenge; the code, read from
//! the simulated outbox through the binary protocol, answers it with the
//! challenge's State). This module must never print a secret, a password or
//! a code, and never retransmit.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, mpsc, oneshot};
use watchword_gateway::radius::packet::{self, Code, RequestBuilder, STATE, USER_NAME};

use crate::target::{Backend, Delivery, ErrLabel, Issued, Key, OutcomeLabel};
use crate::watchword::WatchwordBackend;

/// How to reach a RADIUS server.
#[derive(Clone, Debug)]
pub struct RadiusBackend {
    /// `host:port` of the server.
    pub addr: String,
    /// The shared secret.
    pub secret: String,
    /// The static password of the `pap` scenario.
    pub password: String,
    /// Whether a reply must carry a Message-Authenticator (FreeRADIUS
    /// before 3.2.5 signs none; Watchword signs every reply).
    pub require_signed_replies: bool,
    /// Provisioned users the scenarios spread over.
    pub users: u64,
    /// The Watchword gateway whose outbox the `flow` scenario reads (the
    /// simulator tenant over the binary protocol); `None` for FreeRADIUS.
    pub outbox: Option<WatchwordBackend>,
}

/// One UDP socket and its outstanding requests.
#[derive(Clone)]
pub struct RadiusConn {
    inner: Arc<Inner>,
}

struct Inner {
    sock: UdpSocket,
    secret: Vec<u8>,
    password: String,
    users: u64,
    require_signed_replies: bool,
    /// The request waiting for each Identifier.
    waiting: Mutex<Vec<Option<oneshot::Sender<Vec<u8>>>>>,
    /// Identifiers free to use (bounds the requests outstanding to 256).
    free: Mutex<Vec<u8>>,
    slots: Semaphore,
    /// Challenges started by `flow`, by challenge id: the user and State.
    states: Mutex<HashMap<Key, (String, Vec<u8>)>>,
}

impl std::fmt::Debug for RadiusConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadiusConn").finish_non_exhaustive()
    }
}

/// The challenge id inside Watchword's sealed State (`ws1` + 32 hex digits
/// of the id + a tag): the outbox names deliveries by it.
fn challenge_id(state: &[u8]) -> Option<Key> {
    let hex = state.strip_prefix(b"ws1")?.get(..32)?;
    let v = u128::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    Some(v.to_be_bytes())
}

impl Inner {
    /// Sends one Access-Request for `user` with `password` (and `state`)
    /// and answers the verified reply's code and State.
    async fn ask(
        &self,
        user: &str,
        password: &str,
        state: Option<&[u8]>,
    ) -> Result<(Code, Option<Vec<u8>>), ErrLabel> {
        let _permit = self.slots.acquire().await.map_err(|_| "closed")?;
        let id = self.free.lock().pop().ok_or("no_identifier")?;
        // Frees the Identifier however this ends, a timeout's drop included.
        let _guard = IdGuard { inner: self, id };
        let (tx, rx) = oneshot::channel();
        if let Some(slot) = self.waiting.lock().get_mut(usize::from(id)) {
            *slot = Some(tx);
        }
        let authenticator: [u8; 16] = rand::random();
        let mut req = RequestBuilder::new(id, authenticator);
        req.push(USER_NAME, user.as_bytes()).map_err(|_| "encode")?;
        req.push_user_password(password.as_bytes(), &self.secret)
            .map_err(|_| "encode")?;
        if let Some(s) = state {
            req.push(STATE, s).map_err(|_| "encode")?;
        }
        let bytes = req.finish(&self.secret);
        self.sock.send(&bytes).await.map_err(|_| "io")?;
        let reply = rx.await.map_err(|_| "closed")?;
        let view = packet::verify_reply(
            &reply,
            &authenticator,
            &self.secret,
            self.require_signed_replies,
        )
        .map_err(|e| e.reason())?;
        Ok((view.code(), view.first(STATE).map(<[u8]>::to_vec)))
    }
}

/// Gives an Identifier back when its request ends.
struct IdGuard<'a> {
    inner: &'a Inner,
    id: u8,
}

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.inner.waiting.lock().get_mut(usize::from(self.id)) {
            *slot = None;
        }
        self.inner.free.lock().push(self.id);
    }
}

fn label(code: Code) -> OutcomeLabel {
    match code {
        Code::ACCESS_ACCEPT => "accept",
        Code::ACCESS_REJECT => "reject",
        Code::ACCESS_CHALLENGE => "challenge",
        _ => "other",
    }
}

impl Backend for RadiusBackend {
    type Conn = RadiusConn;

    fn describe(&self) -> String {
        format!("radius://{}", self.addr)
    }

    async fn connect(&self) -> anyhow::Result<RadiusConn> {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        sock.connect(&self.addr)
            .await
            .map_err(|e| anyhow::anyhow!("radius {}: {e}", self.addr))?;
        let inner = Arc::new(Inner {
            sock,
            secret: self.secret.as_bytes().to_vec(),
            password: self.password.clone(),
            users: self.users.max(1),
            require_signed_replies: self.require_signed_replies,
            waiting: Mutex::new((0..256).map(|_| None).collect()),
            free: Mutex::new((0..=255).collect()),
            slots: Semaphore::new(256),
            states: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut buf = vec![0u8; packet::MAX_PACKET];
            loop {
                let Some(inner) = weak.upgrade() else { break };
                let n = tokio::select! {
                    r = inner.sock.recv(&mut buf) => match r {
                        Ok(n) => n,
                        Err(_) => continue,
                    },
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                };
                let Some(&id) = buf.get(1) else { continue };
                let tx = inner
                    .waiting
                    .lock()
                    .get_mut(usize::from(id))
                    .and_then(Option::take);
                if let (Some(tx), Some(reply)) = (tx, buf.get(..n)) {
                    let _ = tx.send(reply.to_vec());
                }
            }
        });
        Ok(RadiusConn { inner })
    }

    async fn outbox(&self) -> anyhow::Result<Option<mpsc::Receiver<Delivery>>> {
        match &self.outbox {
            Some(w) => w.outbox().await,
            None => Ok(None),
        }
    }

    async fn issue(c: &RadiusConn, n: u64) -> Result<Issued, ErrLabel> {
        let user = crate::users::check_subject(n % c.inner.users);
        let (code, state) = c.inner.ask(&user, "", None).await?;
        if code != Code::ACCESS_CHALLENGE {
            return Err(label(code));
        }
        let state = state.ok_or("no_state")?;
        let id = challenge_id(&state).ok_or("bad_state")?;
        c.inner.states.lock().insert(id, (user, state));
        Ok(Issued { id, code: None })
    }

    async fn verify(c: &RadiusConn, id: Key, code: &str) -> Result<OutcomeLabel, ErrLabel> {
        let (user, state) = c.inner.states.lock().remove(&id).ok_or("no_state")?;
        let (reply, _) = c.inner.ask(&user, code, Some(&state)).await?;
        Ok(match reply {
            Code::ACCESS_ACCEPT => "approved",
            Code::ACCESS_REJECT => "rejected",
            other => label(other),
        })
    }

    async fn resend(_: &RadiusConn, _: Key) -> Result<(), ErrLabel> {
        Err("unsupported")
    }

    async fn ping(_: &RadiusConn) -> Result<(), ErrLabel> {
        Err("unsupported")
    }

    async fn totp(c: &RadiusConn, n: u64, seq: u64) -> Result<OutcomeLabel, ErrLabel> {
        let k = n % c.inner.users;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let code = crate::users::totp_code(k, now, seq / c.inner.users);
        let (reply, _) = c
            .inner
            .ask(&crate::users::totp_subject(k), &code, None)
            .await?;
        Ok(label(reply))
    }

    async fn pap(c: &RadiusConn, n: u64) -> Result<OutcomeLabel, ErrLabel> {
        let user = crate::users::totp_subject(n % c.inner.users);
        let (reply, _) = c.inner.ask(&user, &c.inner.password, None).await?;
        Ok(label(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_id_is_read_from_a_sealed_state() {
        let state = b"ws100000000000000000000000000000abc0123456789abcdef";
        let id = challenge_id(state).unwrap();
        assert_eq!(u128::from_be_bytes(id), 0xabc);
        assert!(challenge_id(b"wt1...").is_none());
        assert!(challenge_id(b"ws1short").is_none());
    }
}
