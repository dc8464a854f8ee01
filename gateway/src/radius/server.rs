//! The RADIUS server (docs/radius.md): one UDP socket, one long-lived task
//! that reads it, and the decision of `engine::check` behind it.
//!
//! Each datagram is matched to its client by source prefix, decoded without
//! copying, checked (Message-Authenticator, the BlastRADIUS rules), looked
//! up in the client's reply cache, and answered at once when the engine
//! decides at once. A request that must wait (a held confirmation call, a
//! token write reaching the disk, the upstream server's answer) becomes a
//! future in a set the same task polls, bounded by the client's in-flight
//! budget; its reply is built and cached when it resolves. Nothing is
//! spawned per packet, no lock exists (the task owns every cache), and the
//! only allocations per answered packet are the reply and what the engine
//! records.
//!
//! This module must never answer a request that failed authentication
//! (discard and count instead), never let one client's traffic use another
//! client's cache or budget, never panic on input, and never log, count or
//! put into a reply a secret, a password, a code or a full destination.

use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::net::UdpSocket;
use watchword_engine::check::challenge_message;
use watchword_engine::directory::{MethodType, validate_subject};
use watchword_engine::{
    CheckRequest, CheckResult, CheckStep, Engine, EngineError, EventSink, Record, RejectReason,
    TenantId,
};

use super::cache::{Begin, Key, REPLY_TTL, ReplyCache};
use super::clients::{ClientTable, Prefix, Secret};
use super::packet::{
    CHAP_PASSWORD, Code, EAP_MESSAGE, MAX_PACKET, MessageAuth, NAS_IP_ADDRESS, PROXY_STATE,
    PacketView, ReplyBuilder, STATE, USER_NAME, USER_PASSWORD, check_message_authenticator, decode,
    reveal_user_password,
};
use super::state::StateBinding;
use super::upstream::{Upstream, UpstreamSettings, Verdict};
use crate::config::{FirstFactor, RadiusConfig};
use crate::metrics::{RadiusClientMetrics, RadiusDiscard, radius_unknown_client};
use crate::server::Shutdown;

/// NAS-IPv6-Address (95), for the audit identity when NAS-IP-Address is absent.
const NAS_IPV6_ADDRESS: u8 = 95;
/// Longest one-time answer with first factor `none` (protocol v1's CHECK).
pub const MAX_ANSWER: usize = watchword_engine::check::MAX_CHECK_FIELD;

/// One configured client as the server uses it. `Debug` hides the secret.
#[derive(Debug, Clone)]
pub struct RadiusClient {
    /// Its name (metrics label, audit identity).
    pub name: String,
    /// The source addresses it sends from.
    pub prefix: Prefix,
    /// The shared secret.
    pub secret: Secret,
    /// The tenant whose users it authenticates.
    pub tenant: TenantId,
    /// Discard its requests without Message-Authenticator.
    pub require_message_authenticator: bool,
    /// Who checks the password.
    pub first_factor: FirstFactor,
}

/// The runtime settings of the RADIUS server.
#[derive(Debug, Clone)]
pub struct RadiusSettings {
    /// The clients, in configuration order.
    pub clients: Vec<RadiusClient>,
    /// Longest a request is held on a ringing call.
    pub call_wait: Duration,
    /// Requests of one client waiting at once (held, writing, upstream).
    pub max_in_flight: usize,
    /// Entries of one client's reply cache.
    pub reply_cache_entries: usize,
    /// The upstream server, when a client uses it.
    pub upstream: Option<UpstreamSettings>,
}

impl RadiusSettings {
    /// The settings `cfg` describes; tenants are resolved by `tenant_id`.
    /// The error names the field (never a secret).
    pub fn from_config(
        cfg: &RadiusConfig,
        tenant_id: impl Fn(&str) -> Option<TenantId>,
    ) -> Result<RadiusSettings, String> {
        let mut clients = Vec::with_capacity(cfg.clients.len());
        for (i, c) in cfg.clients.iter().enumerate() {
            let prefix = c
                .address
                .parse()
                .map_err(|e| format!("radius.clients[{i}].address: {e}"))?;
            let tenant = tenant_id(&c.tenant)
                .ok_or_else(|| format!("radius.clients[{i}].tenant: no tenant {:?}", c.tenant))?;
            clients.push(RadiusClient {
                name: c.name.clone(),
                prefix,
                secret: Secret::new(c.secret.as_bytes()),
                tenant,
                require_message_authenticator: c.require_message_authenticator,
                first_factor: c.first_factor,
            });
        }
        let upstream = match &cfg.upstream {
            Some(u) => Some(UpstreamSettings {
                addr: u
                    .address
                    .parse()
                    .map_err(|e| format!("radius.upstream.address: {e}"))?,
                secret: Secret::new(u.secret.as_bytes()),
                timeout: Duration::from_millis(u.timeout_ms),
                require_message_authenticator: u.require_message_authenticator,
            }),
            None => None,
        };
        Ok(RadiusSettings {
            clients,
            call_wait: Duration::from_secs(cfg.call_wait_s),
            max_in_flight: cfg.max_in_flight.max(1),
            reply_cache_entries: cfg.reply_cache_entries.max(1),
            upstream,
        })
    }
}

/// What a request is answered, before it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Accept,
    /// Access-Reject with this Reply-Message.
    Reject(&'static str),
    /// Access-Challenge with this State and Reply-Message.
    Challenge {
        state: String,
        message: String,
    },
}

/// The Reply-Message of a reject, in words.
fn reject_words(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::WrongAnswer => "Wrong code.",
        RejectReason::Locked => "Too many wrong codes: locked. Contact your help desk.",
        RejectReason::Expired => "The code has expired. Start again.",
        RejectReason::UnknownUser => "Unknown user.",
        RejectReason::NoMethod => "No second-factor method is set up for this user.",
        RejectReason::CallNotConfirmed => "The call was not confirmed.",
        RejectReason::UnknownState => "The challenge is unknown, used or expired. Start again.",
    }
}

impl Decision {
    /// The reply to a CHECK result for `client`: a challenge's State is
    /// bound to that client.
    fn of(r: CheckResult, states: &StateBinding, client: &str) -> Decision {
        match r {
            CheckResult::Accept => Decision::Accept,
            CheckResult::Reject { reason, .. } => Decision::Reject(reject_words(reason)),
            CheckResult::Challenge(c) => Decision::Challenge {
                state: states.bind(client, &c.state),
                message: c.message,
            },
        }
    }
}

/// A reject decided here rather than by the engine: its audit reason and
/// its Reply-Message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    reason: &'static str,
    words: &'static str,
}

const PAP_REQUIRED: Refusal = Refusal {
    reason: "pap_required",
    words: "PAP is required: CHAP, MS-CHAP and EAP are not supported.",
};
const BAD_USER_NAME: Refusal = Refusal {
    reason: "bad_user_name",
    words: "User-Name is missing or not valid.",
};
const ANSWER_TOO_LONG: Refusal = Refusal {
    reason: "answer_too_long",
    words: "The answer is longer than 64 bytes.",
};
const BAD_ANSWER: Refusal = Refusal {
    reason: "wrong_answer",
    words: "Wrong code.",
};
const BAD_STATE: Refusal = Refusal {
    reason: "unknown_state",
    words: "The challenge is unknown, used or expired. Start again.",
};
const UPSTREAM_REJECT: Refusal = Refusal {
    reason: "upstream_reject",
    words: "The password was rejected.",
};
const UPSTREAM_TIMEOUT: Refusal = Refusal {
    reason: "upstream_timeout",
    words: "The password could not be checked: no answer from the password server.",
};

/// The refusal of an engine error (no error text reaches the NAS).
fn engine_refusal(e: &EngineError) -> Refusal {
    let (reason, words) = match e {
        EngineError::InvalidArgument(_) => ("invalid_request", "The request is not valid."),
        EngineError::RateLimited { .. } => ("rate_limited", "Too many attempts. Try again later."),
        EngineError::Capacity { .. } => ("capacity", "The service is busy. Try again later."),
        EngineError::NoRoute(_) => ("no_route", "The code cannot be delivered to this user."),
        EngineError::NotFound => ("unknown_state", BAD_STATE.words),
        EngineError::ShuttingDown => ("shutting_down", "The server is shutting down. Try again."),
        EngineError::Internal(_) | EngineError::Directory(_) => {
            ("internal", "Internal error. Try again later.")
        }
    };
    Refusal { reason, words }
}

/// What the server shares with the futures of waiting requests.
struct Shared {
    engine: Engine,
    /// Binds challenge States to their client.
    states: StateBinding,
    sink: Arc<dyn EventSink>,
    upstream: Option<Arc<Upstream>>,
    call_wait: Duration,
}

impl Shared {
    /// Audits a reject decided by the RADIUS front end itself (the engine
    /// audits its own decisions).
    fn audit_refusal(&self, tenant: TenantId, subject: &str, why: Refusal, who: &str) {
        self.sink.record_other(&Record {
            at_ms: self.engine.now_ms(),
            tenant,
            event: "check",
            result: "failure",
            subject,
            method: None,
            destination: None,
            challenge: None,
            reason: Some(why.reason),
            client_ip: Some(who),
            agent: None,
        });
    }

    fn refuse(&self, tenant: TenantId, subject: &str, why: Refusal, who: &str) -> Decision {
        self.audit_refusal(tenant, subject, why, who);
        Decision::Reject(why.words)
    }
}

/// A waiting request's result, handed back to the receive loop.
struct Finished {
    client: usize,
    key: Key,
    started: Instant,
    /// The request's bytes (its Proxy-States go into the reply).
    request: Vec<u8>,
    outcome: Result<Decision, RadiusDiscard>,
    upstream: Option<Verdict>,
}

type Waiting = Pin<Box<dyn Future<Output = Finished> + Send>>;

/// One client's state, owned by the receive loop.
struct ClientState {
    cfg: RadiusClient,
    cache: ReplyCache,
    metrics: RadiusClientMetrics,
}

/// What was read from an Access-Request, borrowed from the datagram.
struct Parsed<'a> {
    user: Option<&'a str>,
    password: Option<super::packet::Password>,
    state: Option<&'a [u8]>,
    unsupported_auth: bool,
}

/// A RADIUS server on its socket, ready to [`run`](RadiusServer::run).
pub struct RadiusServer {
    socket: UdpSocket,
    table: ClientTable,
    clients: Vec<ClientState>,
    shared: Arc<Shared>,
    /// The audit identity of the packet being handled, reused.
    who: String,
    /// Datagrams from no client.
    unknown_client: metrics::Counter,
    /// Replies the socket refused.
    send_errors: metrics::Counter,
}

impl std::fmt::Debug for RadiusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadiusServer")
            .field("local_addr", &self.socket.local_addr().ok())
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl RadiusServer {
    /// A server on `socket`; starts the upstream client when a client uses
    /// it (its reply reader stops when `stop` fires). Registers the metric
    /// series. The error names the field (never a secret).
    pub async fn new(
        socket: UdpSocket,
        settings: RadiusSettings,
        engine: Engine,
        sink: Arc<dyn EventSink>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<RadiusServer, String> {
        let upstream = match settings.upstream {
            Some(u)
                if settings
                    .clients
                    .iter()
                    .any(|c| c.first_factor == FirstFactor::Upstream) =>
            {
                let addr = u.addr;
                Some(
                    Upstream::start(u, stop)
                        .await
                        .map_err(|e| format!("radius.upstream.address {addr}: {e}"))?,
                )
            }
            _ => None,
        };
        let table = ClientTable::new(settings.clients.iter().map(|c| c.prefix));
        let clients = settings
            .clients
            .into_iter()
            .map(|cfg| ClientState {
                metrics: RadiusClientMetrics::new(&cfg.name),
                cache: ReplyCache::new(
                    settings.reply_cache_entries,
                    settings.max_in_flight,
                    REPLY_TTL,
                ),
                cfg,
            })
            .collect();
        Ok(RadiusServer {
            socket,
            table,
            clients,
            shared: Arc::new(Shared {
                engine,
                states: StateBinding::new()?,
                sink,
                upstream,
                call_wait: settings.call_wait,
            }),
            who: String::with_capacity(128),
            unknown_client: radius_unknown_client(),
            send_errors: metrics::counter!("watchword_radius_send_errors_total"),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Serves until `signals.close` fires (requests still waiting then get
    /// no answer; the NAS retries elsewhere).
    pub async fn run(mut self, signals: Shutdown) {
        let mut buf = vec![0u8; MAX_PACKET + 1];
        let mut waiting: FuturesUnordered<Waiting> = FuturesUnordered::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = signals.close.cancelled() => break,
                Some(done) = waiting.next(), if !waiting.is_empty() => self.finish(done),
                _ = tick.tick() => self.sweep(),
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, src)) => {
                        let data = buf.get(..n).unwrap_or(&[]);
                        if let Some(w) = self.on_datagram(data, src) {
                            waiting.push(w);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "RADIUS receive failed"),
                },
            }
        }
        tracing::info!(
            abandoned = waiting.len(),
            "RADIUS server stopped; requests still waiting get no answer"
        );
    }

    /// Expires cached replies and updates the gauges.
    fn sweep(&mut self) {
        let now = Instant::now();
        for c in &mut self.clients {
            c.cache.sweep(now);
            c.cache.shrink();
            c.metrics.cache_entries.set(c.cache.len() as f64);
            c.metrics.cache_evicted.absolute(c.cache.evicted_early());
            c.metrics.in_flight.set(c.cache.in_progress() as f64);
        }
    }

    fn send(&self, reply: &[u8], to: SocketAddr) {
        if let Err(e) = self.socket.try_send_to(reply, to) {
            // A full send buffer loses the reply like the network would:
            // the NAS's retransmission gets it from the cache.
            tracing::debug!(error = %e, "RADIUS reply not sent");
            self.send_errors.increment(1);
        }
    }

    /// Handles one datagram: discards it, answers it, or returns the future
    /// of a request that waits.
    fn on_datagram(&mut self, data: &[u8], src: SocketAddr) -> Option<Waiting> {
        let started = Instant::now();
        let src = SocketAddr::new(src.ip().to_canonical(), src.port());
        let Some(ci) = self.table.find(src.ip()) else {
            self.unknown_client.increment(1);
            return None;
        };
        let client = self.clients.get(ci)?;
        client.metrics.requests.increment(1);
        let discard = |why| {
            client.metrics.discard(why);
            None
        };
        if data.len() > MAX_PACKET {
            return discard(RadiusDiscard::Malformed);
        }
        let Ok(packet) = decode(data) else {
            return discard(RadiusDiscard::Malformed);
        };
        if packet.code() != Code::ACCESS_REQUEST {
            return discard(RadiusDiscard::UnsupportedCode);
        }
        match check_message_authenticator(&packet, client.cfg.secret.expose()) {
            MessageAuth::Invalid => return discard(RadiusDiscard::BadAuthenticator),
            MessageAuth::Absent
                if client.cfg.require_message_authenticator || packet.has(PROXY_STATE) =>
            {
                return discard(RadiusDiscard::MissingMessageAuthenticator);
            }
            _ => {}
        }
        let Some(parsed) = parse(&packet, &client.cfg.secret) else {
            return discard(RadiusDiscard::Malformed);
        };
        let key = Key {
            peer: src,
            identifier: packet.identifier(),
            authenticator: *packet.authenticator(),
        };
        let client = self.clients.get_mut(ci)?;
        match client.cache.begin(key, started) {
            Begin::New => {
                client
                    .metrics
                    .cache_evicted
                    .absolute(client.cache.evicted_early());
            }
            Begin::Resend(reply) => {
                if let Err(e) = self.socket.try_send_to(reply, src) {
                    tracing::debug!(error = %e, "RADIUS reply not resent");
                    self.send_errors.increment(1);
                }
                client.metrics.resent.increment(1);
                return None;
            }
            Begin::InProgress => {
                client.metrics.discard(RadiusDiscard::Duplicate);
                return None;
            }
            Begin::Full => {
                client.metrics.discard(RadiusDiscard::Full);
                return None;
            }
        }
        self.who.clear();
        let _ = write!(
            self.who,
            "radius:{}/{}",
            client.cfg.name,
            nas_ip(&packet, src.ip())
        );
        let decided = decide(&self.shared, &client.cfg, &packet, parsed, &self.who);
        match decided {
            Ok(decision) => {
                self.answer(ci, key, &packet, &decision, started);
                None
            }
            Err(later) => {
                let request = packet.bytes().to_vec();
                client.metrics.in_flight.increment(1.0);
                Some(Box::pin(async move {
                    let (outcome, upstream) = later.await;
                    Finished {
                        client: ci,
                        key,
                        started,
                        request,
                        outcome,
                        upstream,
                    }
                }))
            }
        }
    }

    /// Encodes, sends, caches and counts one reply.
    fn answer(
        &mut self,
        ci: usize,
        key: Key,
        request: &PacketView<'_>,
        decision: &Decision,
        started: Instant,
    ) {
        let Some(client) = self.clients.get(ci) else {
            return;
        };
        let (code, reply) = encode_reply(request, decision, client.cfg.secret.expose());
        self.send(&reply, key.peer);
        let m = &client.metrics;
        match code {
            Code::ACCESS_ACCEPT => m.accepts.increment(1),
            Code::ACCESS_CHALLENGE => m.challenges.increment(1),
            _ => m.rejects.increment(1),
        }
        m.latency.record(started.elapsed().as_secs_f64());
        if let Some(client) = self.clients.get_mut(ci) {
            client.cache.finish(key, reply, Instant::now());
        }
    }

    /// Completes a request that waited.
    fn finish(&mut self, done: Finished) {
        let Some(client) = self.clients.get_mut(done.client) else {
            return;
        };
        client.metrics.in_flight.decrement(1.0);
        if let Some(v) = done.upstream {
            client.metrics.upstream(v.label());
        }
        let outcome = match (done.outcome, decode(&done.request)) {
            (Ok(decision), Ok(request)) => {
                self.answer(done.client, done.key, &request, &decision, done.started);
                return;
            }
            // The bytes decoded when they arrived: not reached.
            (Ok(_), Err(_)) => RadiusDiscard::Malformed,
            (Err(why), _) => why,
        };
        client.cache.abandon(done.key);
        client.metrics.discard(outcome);
    }
}

/// Reads what the decision needs; `None` if the User-Password cannot be
/// revealed (its length is not a multiple of 16 in 16..=128).
fn parse<'a>(packet: &PacketView<'a>, secret: &Secret) -> Option<Parsed<'a>> {
    let password = match packet.first(USER_PASSWORD) {
        Some(hidden) => {
            Some(reveal_user_password(hidden, secret.expose(), packet.authenticator()).ok()?)
        }
        None => None,
    };
    Some(Parsed {
        user: packet
            .first(USER_NAME)
            .and_then(|u| std::str::from_utf8(u).ok()),
        password,
        state: packet.first(STATE),
        unsupported_auth: packet.has(CHAP_PASSWORD)
            || packet.has(EAP_MESSAGE)
            || packet.is_ms_chap(),
    })
}

/// The NAS's address for the audit trail: NAS-IP-Address, else
/// NAS-IPv6-Address, else the datagram's source address.
fn nas_ip(packet: &PacketView<'_>, src: IpAddr) -> IpAddr {
    if let Some(v4) = packet
        .first(NAS_IP_ADDRESS)
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
    {
        return IpAddr::V4(Ipv4Addr::from(v4));
    }
    if let Some(v6) = packet
        .first(NAS_IPV6_ADDRESS)
        .and_then(|v| <[u8; 16]>::try_from(v).ok())
    {
        return IpAddr::V6(Ipv6Addr::from(v6));
    }
    src
}

/// The result of a request that waits, and the upstream's verdict if asked.
type Later =
    Pin<Box<dyn Future<Output = (Result<Decision, RadiusDiscard>, Option<Verdict>)> + Send>>;

/// Decides a request: at once (`Ok`), or as a future (`Err`) when it must
/// wait for a call, a write or the upstream server.
fn decide(
    shared: &Arc<Shared>,
    client: &RadiusClient,
    packet: &PacketView<'_>,
    parsed: Parsed<'_>,
    who: &str,
) -> Result<Decision, Later> {
    let tenant = client.tenant;
    let Some(user) = parsed.user.filter(|u| validate_subject(u).is_ok()) else {
        return Ok(shared.refuse(tenant, "", BAD_USER_NAME, who));
    };
    if parsed.unsupported_auth {
        return Ok(shared.refuse(tenant, user, PAP_REQUIRED, who));
    }
    // The State must be one this server bound to this client.
    let state = match parsed.state.map(std::str::from_utf8) {
        None => "",
        Some(Ok(wire)) => match shared.states.open(&client.name, wire) {
            Some(s) if s.len() <= MAX_ANSWER => s,
            _ => return Ok(shared.refuse(tenant, user, BAD_STATE, who)),
        },
        Some(Err(_)) => return Ok(shared.refuse(tenant, user, BAD_STATE, who)),
    };
    let password = parsed.password.as_ref().map_or(&[][..], |p| p.as_bytes());
    if client.first_factor == FirstFactor::Upstream && state.is_empty() {
        if let Some(up) = shared.upstream.clone() {
            return Err(first_factor(
                shared.clone(),
                up,
                client,
                packet.bytes().to_vec(),
                user.to_owned(),
                who.to_owned(),
            ));
        }
        return Ok(shared.refuse(tenant, user, UPSTREAM_TIMEOUT, who));
    }
    if password.len() > MAX_ANSWER {
        return Ok(shared.refuse(tenant, user, ANSWER_TOO_LONG, who));
    }
    let Ok(answer) = std::str::from_utf8(password) else {
        return Ok(shared.refuse(tenant, user, BAD_ANSWER, who));
    };
    let req = CheckRequest {
        subject: user,
        answer,
        state,
        client_ip: who,
    };
    match shared.engine.check(tenant, &req) {
        Ok(CheckStep::Done(r)) => Ok(Decision::of(r, &shared.states, &client.name)),
        Ok(step) => Err(Box::pin(hold(
            shared.clone(),
            tenant,
            step,
            Held {
                client: client.name.clone(),
                subject: user.to_owned(),
                answer: answer.to_owned(),
                state: state.to_owned(),
                who: who.to_owned(),
            },
        ))),
        Err(e) => Ok(shared.refuse(tenant, user, engine_refusal(&e), who)),
    }
}

/// The fields of a held CHECK, owned, to ask again.
struct Held {
    client: String,
    subject: String,
    answer: String,
    state: String,
    who: String,
}

/// Waits for a decision that is not immediate: a token write until it is
/// on disk; a ringing call up to `call_wait`, asking the engine again each
/// time it answers the same challenge (after
/// [`CALL_HOLD`](watchword_engine::check::CALL_HOLD)) while time is left;
/// at the end the NAS gets that challenge again.
async fn hold(
    shared: Arc<Shared>,
    tenant: TenantId,
    mut step: CheckStep,
    held: Held,
) -> (Result<Decision, RadiusDiscard>, Option<Verdict>) {
    if !matches!(step, CheckStep::WaitCall(_)) {
        // A token write: never cut short (the code is already used).
        let r = step.finish().await;
        return (Ok(Decision::of(r, &shared.states, &held.client)), None);
    }
    let deadline = tokio::time::Instant::now() + shared.call_wait;
    let again = |message: Option<String>| Decision::Challenge {
        state: shared.states.bind(&held.client, &held.state),
        message: message.unwrap_or_else(|| challenge_message(MethodType::Call, "")),
    };
    let mut last_message = None;
    let decision = loop {
        let result = match tokio::time::timeout_at(deadline, step.finish()).await {
            Ok(r) => r,
            Err(_) => {
                // Cut short by call_wait_s: still ringing.
                let d = again(last_message);
                shared.sink.record_other(&Record {
                    at_ms: shared.engine.now_ms(),
                    tenant,
                    event: "check",
                    result: "challenge",
                    subject: &held.subject,
                    method: Some(MethodType::Call.name()),
                    destination: None,
                    challenge: None,
                    reason: None,
                    client_ip: Some(&held.who),
                    agent: None,
                });
                break d;
            }
        };
        match result {
            CheckResult::Challenge(c)
                if c.method == MethodType::Call
                    && c.state == held.state
                    && tokio::time::Instant::now() < deadline =>
            {
                last_message = Some(c.message);
                let req = CheckRequest {
                    subject: &held.subject,
                    answer: &held.answer,
                    state: &held.state,
                    client_ip: &held.who,
                };
                step = match shared.engine.check(tenant, &req) {
                    Ok(s) => s,
                    Err(e) => {
                        break shared.refuse(tenant, &held.subject, engine_refusal(&e), &held.who);
                    }
                };
            }
            other => break Decision::of(other, &shared.states, &held.client),
        }
    };
    (Ok(decision), None)
}

/// `first_factor = "upstream"`: the password goes to the upstream server;
/// once it accepts, the second factor's challenge starts.
fn first_factor(
    shared: Arc<Shared>,
    up: Arc<Upstream>,
    from: &RadiusClient,
    request: Vec<u8>,
    subject: String,
    who: String,
) -> Later {
    let (tenant, client, secret) = (from.tenant, from.name.clone(), from.secret.clone());
    Box::pin(async move {
        let Ok(packet) = decode(&request) else {
            return (Err(RadiusDiscard::Malformed), None);
        };
        let password = match packet.first(USER_PASSWORD) {
            Some(h) => match reveal_user_password(h, secret.expose(), packet.authenticator()) {
                Ok(p) => Some(p),
                Err(_) => return (Err(RadiusDiscard::Malformed), None),
            },
            None => None,
        };
        let pw = password.as_ref().map_or(&[][..], |p| p.as_bytes());
        let verdict = up.forward(&packet, pw).await;
        drop(password);
        let decision = match verdict {
            Verdict::Accept => {
                let req = CheckRequest {
                    subject: &subject,
                    answer: "",
                    state: "",
                    client_ip: &who,
                };
                match shared.engine.check(tenant, &req) {
                    Ok(step) => Decision::of(step.finish().await, &shared.states, &client),
                    Err(e) => shared.refuse(tenant, &subject, engine_refusal(&e), &who),
                }
            }
            Verdict::Reject | Verdict::Other => {
                shared.refuse(tenant, &subject, UPSTREAM_REJECT, &who)
            }
            Verdict::Timeout | Verdict::Error => {
                shared.refuse(tenant, &subject, UPSTREAM_TIMEOUT, &who)
            }
            Verdict::Busy => return (Err(RadiusDiscard::Full), Some(verdict)),
        };
        (Ok(decision), Some(verdict))
    })
}

/// Encodes the reply to `request`: Message-Authenticator first, then State
/// and Reply-Message, then the Proxy-States in order. A reply that would
/// not fit 4096 bytes becomes a bare Access-Reject (with the Proxy-States,
/// which always fit).
fn encode_reply(request: &PacketView<'_>, decision: &Decision, secret: &[u8]) -> (Code, Vec<u8>) {
    let id = request.identifier();
    let built = (|| {
        let (code, mut b) = match decision {
            Decision::Accept => (
                Code::ACCESS_ACCEPT,
                ReplyBuilder::new(Code::ACCESS_ACCEPT, id),
            ),
            Decision::Reject(words) => {
                let mut b = ReplyBuilder::new(Code::ACCESS_REJECT, id);
                b.push_reply_message(words)?;
                (Code::ACCESS_REJECT, b)
            }
            Decision::Challenge { state, message } => {
                let mut b = ReplyBuilder::new(Code::ACCESS_CHALLENGE, id);
                b.push(STATE, state.as_bytes())?;
                b.push_reply_message(message)?;
                (Code::ACCESS_CHALLENGE, b)
            }
        };
        b.copy_proxy_states(request)?;
        Ok::<_, super::packet::EncodeError>((code, b))
    })();
    let (code, b) = built.unwrap_or_else(|_| {
        let mut b = ReplyBuilder::new(Code::ACCESS_REJECT, id);
        let _ = b.copy_proxy_states(request);
        (Code::ACCESS_REJECT, b)
    });
    (code, b.finish(request.authenticator(), secret))
}

#[cfg(test)]
mod tests;
