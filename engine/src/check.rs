//! The one decision of DOMAIN.md §7 ("may this user in?"), called by every
//! front end (the protocol's CHECK, the HTTP API's `/v1/check`, RADIUS), and
//! the registration of a user's methods, which confirms a phone or an address
//! before it counts.
//!
//! A CHECK state is `ws1`, the 32 hex digits of the challenge's id and a
//! 64-bit tag sealing it to the tenant ([`StateSeal`]): unguessable (the
//! id's random bits and the tag's), bound to the tenant (the tag) and to the
//! subject (checked here), single-use because the challenge is consumed
//! when it verifies (or, for a call, when its outcome is taken), and it
//! expires with the challenge.
//!
//! Every decision writes one audit record with its result and reason. This
//! module must never return or record a code, a PIN or a full destination,
//! and never hold a lock across an `.await` (the only await is a call's
//! outcome, on a watch channel).

use std::time::Duration;

use crate::calls::{CallHandle, CallOutcome};
use crate::delivery::MessagePurpose;
use crate::directory::{
    DirectoryError, Durable, Method, MethodId, MethodState, MethodType, TokenCheck,
    validate_subject,
};
use crate::events::Record;
use crate::mask::mask_destination;
use crate::service::{Engine, EngineError, GuessLimit, IssueParams};
use crate::types::{ChallengeId, TenantId, VerifyOutcome};

/// Longest answer and state a CHECK takes, bytes (protocol v1).
pub const MAX_CHECK_FIELD: usize = 64;
/// Longest a CHECK on a ringing call is held before it answers the same
/// CHALLENGE again.
pub const CALL_HOLD: Duration = Duration::from_secs(25);

/// One CHECK as a front end decoded it. Its `Debug` shows the answer's
/// length only (it may hold a code, or a PIN and a code).
#[derive(Clone, Copy)]
pub struct CheckRequest<'a> {
    /// The upstream user id.
    pub subject: &'a str,
    /// What the person typed: a code, a method keyword, or empty.
    pub answer: &'a str,
    /// Empty, or the state of an earlier CHALLENGE.
    pub state: &'a str,
    /// The end user's address, for the audit trail.
    pub client_ip: &'a str,
}

impl std::fmt::Debug for CheckRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckRequest")
            .field("subject", &self.subject)
            .field("answer", &format_args!("<{} bytes>", self.answer.len()))
            .field("state", &self.state)
            .field("client_ip", &self.client_ip)
            .finish()
    }
}

/// The code a wrong PIN is replaced with: matches no code and no token
/// (not digits), so it counts as one wrong answer wherever it is checked.
const NO_CODE: &str = "-";

/// Why a CHECK rejected. Wire values as in protocol v1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The answer did not match.
    WrongAnswer = 1,
    /// Too many wrong answers: the challenge (or token) is locked.
    Locked = 2,
    /// The challenge's time ran out.
    Expired = 3,
    /// No such user, or the user is disabled.
    UnknownUser = 4,
    /// The user has no active method that can serve the request.
    NoMethod = 5,
    /// The confirmation call was declined, hung up or not answered.
    CallNotConfirmed = 6,
    /// The state is unknown, used, or not this user's.
    UnknownState = 7,
}

impl RejectReason {
    /// The wire value.
    pub fn wire(self) -> u8 {
        self as u8
    }

    /// The word used by the HTTP API and the audit trail.
    pub fn word(self) -> &'static str {
        match self {
            Self::WrongAnswer => "wrong_answer",
            Self::Locked => "locked",
            Self::Expired => "expired",
            Self::UnknownUser => "unknown_user",
            Self::NoMethod => "no_method",
            Self::CallNotConfirmed => "call_not_confirmed",
            Self::UnknownState => "unknown_state",
        }
    }
}

/// A challenge started by a CHECK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeInfo {
    /// The single-use state to send back with the answer.
    pub state: String,
    /// The method the challenge runs on.
    pub method: MethodType,
    /// Where it went, masked ("" for a token).
    pub masked_destination: String,
    /// When it expires, Unix ms.
    pub expires_at_ms: u64,
    /// What to tell the person.
    pub message: String,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Let the user in.
    Accept,
    /// Do not.
    Reject {
        /// Why.
        reason: RejectReason,
        /// Wrong answers still allowed (wrong answers only; else 0).
        attempts_left: u8,
        /// For a wrong answer, the same state again (the challenge goes on);
        /// otherwise empty.
        state: String,
    },
    /// Ask the person for an answer.
    Challenge(ChallengeInfo),
}

impl CheckResult {
    fn reject(reason: RejectReason) -> Self {
        Self::Reject {
            reason,
            attempts_left: 0,
            state: String::new(),
        }
    }

    /// `accept`, `reject` or `challenge`.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Reject { .. } => "reject",
            Self::Challenge(_) => "challenge",
        }
    }
}

/// A decision made at once, or one that waits for a call's outcome.
#[derive(Debug)]
pub enum CheckStep {
    /// The decision.
    Done(CheckResult),
    /// Await [`CallWait::finish`] (at most [`CALL_HOLD`]).
    WaitCall(CallWait),
    /// Await [`WriteWait::finish`] (a token's new state reaching the disk).
    WaitWrite(WriteWait),
}

impl CheckStep {
    /// The decision: at once, or once its call or write is over.
    pub async fn finish(self) -> CheckResult {
        match self {
            CheckStep::Done(r) => r,
            CheckStep::WaitCall(w) => w.finish().await,
            CheckStep::WaitWrite(w) => w.finish().await,
        }
    }
}

/// A decision whose token state must reach the disk before it is answered.
#[derive(Debug)]
pub struct WriteWait {
    engine: Engine,
    tenant: TenantId,
    subject: String,
    client_ip: String,
    result: CheckResult,
    write: Durable<()>,
}

impl WriteWait {
    /// Waits for the write, then answers (REJECT if it failed: a code whose
    /// use could not be recorded must not let anyone in).
    pub async fn finish(self) -> CheckResult {
        let WriteWait {
            engine,
            tenant,
            subject,
            client_ip,
            result,
            write,
        } = self;
        let result = match write.wait().await {
            Ok(()) => result,
            Err(e) => {
                tracing::error!(error = %e, "a token's state could not be written; refusing");
                CheckResult::reject(RejectReason::WrongAnswer)
            }
        };
        let on = On {
            method: Some(MethodType::Token),
            challenge: None,
            destination: None,
            client_ip: &client_ip,
        };
        engine.audit_check(tenant, &subject, &result, on);
        result
    }
}

/// A CHECK held on a ringing call.
#[derive(Debug)]
pub struct CallWait {
    engine: Engine,
    tenant: TenantId,
    id: ChallengeId,
    call: CallHandle,
    again: ChallengeInfo,
    client_ip: String,
}

impl CallWait {
    /// Waits for the call's outcome, at most [`CALL_HOLD`] and never past
    /// the challenge's expiry; then decides.
    pub async fn finish(self) -> CheckResult {
        let CallWait {
            engine,
            tenant,
            id,
            mut call,
            again,
            client_ip,
        } = self;
        let now = engine.now_ms();
        let left = Duration::from_millis(call.expires_at_ms.saturating_sub(now));
        let outcome = tokio::time::timeout(
            left.min(CALL_HOLD),
            call.outcome.wait_for(|o| *o != CallOutcome::Ringing),
        )
        .await;
        let taken = match outcome {
            Ok(_) => engine.inner.calls.take(tenant, id),
            Err(_) if engine.now_ms() >= call.expires_at_ms => {
                engine.inner.calls.expire(tenant, id)
            }
            Err(_) => {
                // Still ringing: the same challenge again, to wait in a loop.
                let result = CheckResult::Challenge(again);
                engine.audit_check(tenant, &call.subject, &result, On::call(id, &client_ip));
                return result;
            }
        };
        let result = match taken {
            Some(CallOutcome::Confirmed) => CheckResult::Accept,
            Some(_) => CheckResult::reject(RejectReason::CallNotConfirmed),
            // Another CHECK took the outcome first: this state is used.
            None => CheckResult::reject(RejectReason::UnknownState),
        };
        engine.audit_check(tenant, &call.subject, &result, On::call(id, &client_ip));
        result
    }
}

/// What a decision was about, for its audit record.
pub(crate) struct On<'a> {
    method: Option<MethodType>,
    challenge: Option<ChallengeId>,
    destination: Option<crate::mask::MaskedDestination>,
    client_ip: &'a str,
}

impl<'a> On<'a> {
    fn call(id: ChallengeId, client_ip: &'a str) -> Self {
        Self {
            method: Some(MethodType::Call),
            challenge: Some(id),
            destination: None,
            client_ip,
        }
    }
}

/// The decision counters, registered once (no registry look-up per CHECK).
pub(crate) fn check_counters() -> [metrics::Counter; 9] {
    let c = |result: &'static str, reason: &'static str| metrics::counter!("watchword_checks_total", "result" => result, "reason" => reason);
    [
        c("accept", ""),
        c("challenge", ""),
        c("reject", RejectReason::WrongAnswer.word()),
        c("reject", RejectReason::Locked.word()),
        c("reject", RejectReason::Expired.word()),
        c("reject", RejectReason::UnknownUser.word()),
        c("reject", RejectReason::NoMethod.word()),
        c("reject", RejectReason::CallNotConfirmed.word()),
        c("reject", RejectReason::UnknownState.word()),
    ]
}

/// How long a token challenge's state is accepted, ms.
pub const TOKEN_STATE_TTL_MS: u64 = 300_000;

/// Length of a state: `ws1`, 32 hex digits of the challenge id, 16 of the tag.
pub const STATE_LEN: usize = 3 + 32 + 16;

/// Seals CHECK states: a 64-bit HMAC-SHA256 tag over the tenant and the
/// challenge id, under a key drawn at start. The id's own randomness is
/// what makes a state unguessable (the table draws it); the tag adds 64
/// bits more, so a state carries well over 128 bits nobody can guess, and a
/// state made for one tenant never opens for another. The key lives only in
/// memory, like the challenges it seals.
pub(crate) struct StateSeal(ring::hmac::Key);

impl StateSeal {
    /// A seal with a fresh random key.
    #[cfg(test)]
    pub(crate) fn new() -> Result<StateSeal, String> {
        Ok(Self::with_key(&rand::random()))
    }

    /// A seal under `key` (kept in the restart snapshot, so that states
    /// handed out before a restart still open after it).
    pub(crate) fn with_key(key: &[u8; 32]) -> StateSeal {
        StateSeal(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key))
    }

    fn tag(&self, tenant: TenantId, id: ChallengeId) -> [u8; 8] {
        let mut msg = [0u8; 18];
        msg[..2].copy_from_slice(&tenant.0.to_be_bytes());
        msg[2..].copy_from_slice(&id.0);
        let full = ring::hmac::sign(&self.0, &msg);
        let mut t = [0u8; 8];
        t.copy_from_slice(&full.as_ref()[..8]);
        t
    }

    /// The state of challenge `id` of `tenant`.
    pub(crate) fn state(&self, tenant: TenantId, id: ChallengeId) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(STATE_LEN);
        s.push_str("ws1");
        s.push_str(std::str::from_utf8(&id.hex()).unwrap_or(""));
        for b in self.tag(tenant, id) {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        s
    }

    /// The state of a token challenge of `subject` until `expires_ms`:
    /// `wt1`, 12 hex digits of the expiry, 32 of a random nonce, 16 of a tag
    /// over tenant, subject, expiry and nonce (63 bytes).
    pub(crate) fn token_state(&self, tenant: TenantId, subject: &str, expires_ms: u64) -> String {
        let nonce: u128 = rand::random();
        let body = format!("wt1{:012x}{nonce:032x}", expires_ms & 0xffff_ffff_ffff);
        let tag = self.token_tag(tenant, subject, &body);
        format!("{body}{:016x}", u64::from_be_bytes(tag))
    }

    fn token_tag(&self, tenant: TenantId, subject: &str, body: &str) -> [u8; 8] {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(b"token-state\0");
        ctx.update(&tenant.0.to_be_bytes());
        ctx.update(&(subject.len() as u32).to_be_bytes());
        ctx.update(subject.as_bytes());
        ctx.update(body.as_bytes());
        let mut t = [0u8; 8];
        t.copy_from_slice(&ctx.sign().as_ref()[..8]);
        t
    }

    /// The expiry of a token state this seal made for `tenant` and
    /// `subject`; `None` for anything else.
    pub(crate) fn open_token_state(
        &self,
        tenant: TenantId,
        subject: &str,
        state: &str,
    ) -> Option<u64> {
        use subtle::ConstantTimeEq;
        if state.len() != 63
            || !state.starts_with("wt1")
            || !state[3..].bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        let (body, tag) = state.split_at(47);
        let tag = u64::from_str_radix(tag, 16).ok()?.to_be_bytes();
        if !bool::from(self.token_tag(tenant, subject, body).ct_eq(&tag)) {
            return None;
        }
        u64::from_str_radix(&body[3..15], 16).ok()
    }

    fn helpdesk_tag(&self, tenant: TenantId, id: ChallengeId) -> [u8; 8] {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(b"helpdesk\0");
        ctx.update(&tenant.0.to_be_bytes());
        ctx.update(&id.0);
        let mut t = [0u8; 8];
        t.copy_from_slice(&ctx.sign().as_ref()[..8]);
        t
    }

    /// The id of a help-desk verification: `wh1`, the challenge id, and a
    /// tag of its own domain (51 bytes): it never opens as a CHECK state,
    /// nor a CHECK state as it.
    pub(crate) fn helpdesk_id(&self, tenant: TenantId, id: ChallengeId) -> String {
        let mut s = String::with_capacity(STATE_LEN);
        s.push_str("wh1");
        s.push_str(std::str::from_utf8(&id.hex()).unwrap_or(""));
        s.push_str(&format!(
            "{:016x}",
            u64::from_be_bytes(self.helpdesk_tag(tenant, id))
        ));
        s
    }

    /// The challenge of a help-desk verification id this seal made for
    /// `tenant`; `None` for anything else.
    pub(crate) fn open_helpdesk(&self, tenant: TenantId, hid: &str) -> Option<ChallengeId> {
        use subtle::ConstantTimeEq;
        let rest = hid.strip_prefix("wh1")?;
        if rest.len() != 48 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let id = ChallengeId(u128::from_str_radix(&rest[..32], 16).ok()?.to_be_bytes());
        let tag = u64::from_str_radix(&rest[32..], 16).ok()?.to_be_bytes();
        bool::from(self.helpdesk_tag(tenant, id).ct_eq(&tag)).then_some(id)
    }

    /// The challenge id of a state this seal made for `tenant`; `None` for
    /// anything else (the tag compared in constant time).
    pub(crate) fn open(&self, tenant: TenantId, state: &str) -> Option<ChallengeId> {
        use subtle::ConstantTimeEq;
        let id = parse_state(state)?;
        let tag = u64::from_str_radix(&state[35..], 16).ok()?.to_be_bytes();
        bool::from(self.tag(tenant, id).ct_eq(&tag)).then_some(id)
    }
}

/// The challenge id a state names, if it is well formed (not proof that
/// this server made it: tools and tests use it to find the challenge).
pub fn parse_state(state: &str) -> Option<ChallengeId> {
    let rest = state.strip_prefix("ws1")?;
    if rest.len() != STATE_LEN - 3 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u128::from_str_radix(&rest[..32], 16).ok()?;
    Some(ChallengeId(v.to_be_bytes()))
}

/// What a method's registration answers to a code typed back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// The code matched: the method is active.
    Confirmed(Method),
    /// Wrong code; the method stays pending.
    WrongCode {
        /// Wrong codes still allowed.
        attempts_left: u8,
    },
    /// The confirmation ended (locked, expired, lost at a restart): the
    /// method failed; register it again.
    Failed {
        /// The method, failed.
        method: Method,
        /// Why, in words.
        reason: &'static str,
    },
}

/// A method's registration waiting for its confirmation.
#[derive(Clone, Debug)]
pub(crate) struct PendingConfirmation {
    pub(crate) challenge: ChallengeId,
    pub(crate) subject: Box<str>,
    pub(crate) expires_at_ms: u64,
}

impl Engine {
    /// The decision of DOMAIN.md §7 for one CHECK. Errors are the protocol's
    /// (INVALID_ARGUMENT for oversized fields; RATE_LIMITED, NO_ROUTE,
    /// CAPACITY when starting a challenge is refused).
    pub fn check(
        &self,
        tenant: TenantId,
        req: &CheckRequest<'_>,
    ) -> Result<CheckStep, EngineError> {
        validate_subject(req.subject).map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        for (field, v) in [("answer", req.answer), ("state", req.state)] {
            if v.len() > MAX_CHECK_FIELD {
                return Err(EngineError::InvalidArgument(format!(
                    "{field}: at most {MAX_CHECK_FIELD} bytes, got {}",
                    v.len()
                )));
            }
        }
        let gate = self.tenant(tenant)?.check_gate.as_ref();
        self.admit_guess(gate, GuessLimit::TenantCheck)?;
        let keyword =
            MethodType::parse(req.answer.trim()).filter(|t| MethodType::REGISTRABLE.contains(t));
        // In `prefix` mode a typed answer is the PIN then the code: checked
        // here, the code goes on; a wrong PIN becomes a code that matches
        // nothing, so it counts where a wrong code counts and answers the
        // same.
        let unprefixed;
        let req = if !req.answer.is_empty()
            && (keyword.is_none() || !req.state.is_empty())
            && self
                .tenant_policy(tenant)
                .is_some_and(|p| p.pin_mode == crate::service::PinMode::Prefix)
        {
            unprefixed = CheckRequest {
                answer: self.strip_pin(tenant, req.subject, req.answer),
                ..*req
            };
            &unprefixed
        } else {
            req
        };
        if !req.state.is_empty() {
            return self.check_state(tenant, req);
        }
        let answers_a_code = !req.answer.is_empty() && keyword.is_none();
        // Whether the user holds a token matters only to pick a challenge:
        // a code is checked against the tokens themselves.
        let tokens = !answers_a_code && self.inner.directory.has_active_token(tenant, req.subject);
        let picked = self.inner.directory.with_view(tenant, req.subject, |u| {
            if !u.enabled {
                return Err(RejectReason::UnknownUser);
            }
            if answers_a_code {
                // An answer without a state is checked against the user's
                // tokens (and PIN, per policy, when that lands).
                return Ok(None);
            }
            let token_first =
                keyword.is_none() && tokens && u.default_method == Some(MethodType::Token);
            match u.pick_method(keyword) {
                Some(m) if !token_first => Ok(Some((
                    m.kind,
                    m.destination.to_owned(),
                    u.locale.map(str::to_owned),
                ))),
                _ if keyword.is_none() && tokens => Err(RejectReason::WrongAnswer),
                _ => Err(RejectReason::NoMethod),
            }
        });
        let picked = match picked {
            Some(Ok(None)) => return Ok(self.check_token_code(tenant, req, None)),
            // WrongAnswer stands here for "challenge on the user's token".
            Some(Err(RejectReason::WrongAnswer)) => {
                let result = CheckResult::Challenge(ChallengeInfo {
                    state: self.inner.state_seal.token_state(
                        tenant,
                        req.subject,
                        self.now_ms() + TOKEN_STATE_TTL_MS,
                    ),
                    method: MethodType::Token,
                    masked_destination: String::new(),
                    expires_at_ms: self.now_ms() + TOKEN_STATE_TTL_MS,
                    message: challenge_message(MethodType::Token, ""),
                });
                return Ok(self.decided(tenant, req, result, Some(MethodType::Token), None));
            }
            Some(Ok(Some(x))) => Some(Ok(x)),
            Some(Err(r)) => Some(Err(r)),
            None => None,
        };
        let (kind, destination, locale) = match picked {
            None => {
                return Ok(self.decided(
                    tenant,
                    req,
                    CheckResult::reject(RejectReason::UnknownUser),
                    None,
                    None,
                ));
            }
            Some(Err(reason)) => {
                return Ok(self.decided(tenant, req, CheckResult::reject(reason), None, None));
            }
            Some(Ok(x)) => x,
        };
        let channel = kind
            .channel()
            .ok_or_else(|| EngineError::Internal("a picked method has no channel".into()))?;
        let purpose = if kind == MethodType::Call {
            MessagePurpose::CallConfirmation
        } else {
            MessagePurpose::Code
        };
        let params = IssueParams {
            subject: req.subject,
            channel,
            destination: &destination,
            code_len: 0,
            ttl_s: 0,
            locale: locale.as_deref().unwrap_or(""),
            client_ip: req.client_ip,
        };
        let issued = self.issue_for(tenant, &params, purpose)?;
        let masked = issued.masked_destination.as_str().to_owned();
        let message = challenge_message(kind, &masked);
        let result = CheckResult::Challenge(ChallengeInfo {
            state: self.inner.state_seal.state(tenant, issued.id),
            method: kind,
            masked_destination: masked,
            expires_at_ms: issued.expires_at_ms,
            message,
        });
        let on = On {
            method: Some(kind),
            challenge: Some(issued.id),
            destination: Some(issued.masked_destination),
            client_ip: req.client_ip,
        };
        self.audit_check(tenant, req.subject, &result, on);
        Ok(CheckStep::Done(result))
    }

    /// The one-time code after the user's PIN in `answer`, or [`NO_CODE`]
    /// when the PIN is wrong, missing or locked (the comparison is constant
    /// time; the same work is done whichever way it goes).
    fn strip_pin<'a>(&self, tenant: TenantId, subject: &str, answer: &'a str) -> &'a str {
        self.inner
            .directory
            .strip_pin(tenant, subject, answer)
            .unwrap_or(NO_CODE)
    }

    /// Audits a decision made at once and answers it.
    fn decided(
        &self,
        tenant: TenantId,
        req: &CheckRequest<'_>,
        result: CheckResult,
        method: Option<MethodType>,
        challenge: Option<ChallengeId>,
    ) -> CheckStep {
        let on = On {
            method,
            challenge,
            destination: None,
            client_ip: req.client_ip,
        };
        self.audit_check(tenant, req.subject, &result, on);
        CheckStep::Done(result)
    }

    /// Step 3 of the decision: the answer against the user's tokens. The
    /// token's moved state is durable before the answer (`WaitWrite`).
    fn check_token_code(
        &self,
        tenant: TenantId,
        req: &CheckRequest<'_>,
        state: Option<&str>,
    ) -> CheckStep {
        let policy = self
            .tenant_policy(tenant)
            .map(|p| p.tokens)
            .unwrap_or_default();
        let now_s = self.now_ms() / 1000;
        let done = self.inner.directory.verify_token_code(
            tenant,
            req.subject,
            req.answer.as_bytes(),
            now_s,
            policy,
        );
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "a token verification could not be written");
                return self.decided(
                    tenant,
                    req,
                    CheckResult::reject(RejectReason::WrongAnswer),
                    Some(MethodType::Token),
                    None,
                );
            }
        };
        let result = match done.value() {
            TokenCheck::NoTokens => CheckResult::reject(RejectReason::NoMethod),
            TokenCheck::AllLocked => CheckResult::reject(RejectReason::Locked),
            TokenCheck::Accepted { .. } => CheckResult::Accept,
            TokenCheck::Wrong {
                all_locked: true, ..
            } => CheckResult::reject(RejectReason::Locked),
            TokenCheck::Wrong { .. } => CheckResult::Reject {
                reason: RejectReason::WrongAnswer,
                attempts_left: 0,
                state: state.unwrap_or("").to_owned(),
            },
        };
        let on = On {
            method: Some(MethodType::Token),
            challenge: None,
            destination: None,
            client_ip: req.client_ip,
        };
        CheckStep::WaitWrite(WriteWait {
            engine: self.clone(),
            tenant,
            subject: req.subject.to_owned(),
            client_ip: on.client_ip.to_owned(),
            result,
            write: done.map(|_| ()),
        })
    }

    fn check_state(
        &self,
        tenant: TenantId,
        req: &CheckRequest<'_>,
    ) -> Result<CheckStep, EngineError> {
        // Step 1 holds with a state too: a user disabled or deleted since
        // the challenge began is rejected, whatever the answer.
        let enabled = self
            .inner
            .directory
            .with_view(tenant, req.subject, |u| u.enabled)
            .unwrap_or(false);
        if !enabled {
            return Ok(self.decided(
                tenant,
                req,
                CheckResult::reject(RejectReason::UnknownUser),
                None,
                None,
            ));
        }
        if req.state.starts_with("wt1") {
            return Ok(
                match self
                    .inner
                    .state_seal
                    .open_token_state(tenant, req.subject, req.state)
                {
                    Some(expires) if self.now_ms() < expires => {
                        self.check_token_code(tenant, req, Some(req.state))
                    }
                    Some(_) => self.decided(
                        tenant,
                        req,
                        CheckResult::reject(RejectReason::Expired),
                        Some(MethodType::Token),
                        None,
                    ),
                    None => self.decided(
                        tenant,
                        req,
                        CheckResult::reject(RejectReason::UnknownState),
                        None,
                        None,
                    ),
                },
            );
        }
        let Some(id) = self.inner.state_seal.open(tenant, req.state) else {
            return Ok(self.decided(
                tenant,
                req,
                CheckResult::reject(RejectReason::UnknownState),
                None,
                None,
            ));
        };
        if let Some(call) = self.inner.calls.watch(tenant, id) {
            if *call.subject != *req.subject {
                return Ok(self.decided(
                    tenant,
                    req,
                    CheckResult::reject(RejectReason::UnknownState),
                    None,
                    None,
                ));
            }
            let masked = self
                .inner
                .table
                .peek_pending(tenant, id)
                .map(|t| mask_destination(&t.destination).as_str().to_owned())
                .unwrap_or_default();
            let again = ChallengeInfo {
                state: req.state.to_owned(),
                method: MethodType::Call,
                message: challenge_message(MethodType::Call, &masked),
                masked_destination: masked,
                expires_at_ms: call.expires_at_ms,
            };
            return Ok(CheckStep::WaitCall(CallWait {
                engine: self.clone(),
                tenant,
                id,
                call,
                again,
                client_ip: req.client_ip.to_owned(),
            }));
        }
        // A pending challenge of another subject is not this user's state:
        // refused without counting an attempt against it.
        let pending = self.inner.table.peek_pending(tenant, id);
        if pending.as_ref().is_some_and(|t| t.subject != req.subject) {
            return Ok(self.decided(
                tenant,
                req,
                CheckResult::reject(RejectReason::UnknownState),
                None,
                None,
            ));
        }
        let method = pending.as_ref().map(|t| match t.channel {
            crate::types::Channel::Sms => MethodType::Sms,
            crate::types::Channel::Voice => MethodType::Voice,
            crate::types::Channel::Email => MethodType::Email,
        });
        let gap = self.tenant(tenant)?.policy.verify_gap_ms;
        let outcome = self
            .inner
            .table
            .verify_spaced(tenant, id, req.answer.as_bytes(), gap)
            .map_err(|wait| self.guess_refused(GuessLimit::Challenge, u64::from(wait)))?;
        let result = match outcome {
            VerifyOutcome::Approved => CheckResult::Accept,
            VerifyOutcome::Rejected { attempts_left } => CheckResult::Reject {
                reason: RejectReason::WrongAnswer,
                attempts_left,
                state: req.state.to_owned(),
            },
            VerifyOutcome::Expired => CheckResult::reject(RejectReason::Expired),
            VerifyOutcome::Locked => CheckResult::reject(RejectReason::Locked),
            VerifyOutcome::Unknown => CheckResult::reject(RejectReason::UnknownState),
        };
        Ok(self.decided(tenant, req, result, method, Some(id)))
    }

    pub(crate) fn audit_check(
        &self,
        tenant: TenantId,
        subject: &str,
        result: &CheckResult,
        on: On<'_>,
    ) {
        let On {
            method,
            challenge,
            destination,
            client_ip,
        } = on;
        let (word, reason, counter) = match result {
            CheckResult::Accept => ("success", None, 0),
            CheckResult::Reject { reason, .. } => (
                "failure",
                Some(reason.word()),
                1 + usize::from(reason.wire()),
            ),
            CheckResult::Challenge(_) => ("challenge", None, 1),
        };
        self.inner.check_counters[counter].increment(1);
        self.inner.sink.record_other(&Record {
            at_ms: self.now_ms(),
            tenant,
            event: "check",
            result: word,
            subject,
            method: method.map(MethodType::name),
            destination,
            challenge,
            reason,
            client_ip: (!client_ip.is_empty()).then_some(client_ip),
            agent: None,
        });
    }

    /// Records a directory change in the audit trail (`user_created`,
    /// `method_deleted`, ...); a reason makes it a failure.
    pub fn audit_directory(
        &self,
        tenant: TenantId,
        subject: &str,
        event: &str,
        method: Option<&Method>,
        reason: Option<&str>,
    ) {
        self.inner.sink.record_other(&Record {
            at_ms: self.now_ms(),
            tenant,
            event,
            result: if reason.is_some() {
                "failure"
            } else {
                "success"
            },
            subject,
            method: method.map(|m| m.kind.name()),
            destination: method.map(Method::masked),
            challenge: None,
            reason,
            client_ip: None,
            agent: None,
        });
    }

    /// Where a user's new PIN would be e-mailed: an active e-mail method,
    /// else the address of the user's profile. `None` when there is none.
    pub fn pin_mail_address(&self, tenant: TenantId, subject: &str) -> Option<String> {
        self.inner
            .directory
            .with_view(tenant, subject, |u| {
                u.methods()
                    .find(|m| m.kind == MethodType::Email && m.state == MethodState::Active)
                    .map(|m| m.destination.to_owned())
                    .or_else(|| u.email.map(str::to_owned))
            })
            .flatten()
    }

    /// E-mails a user's new PIN (in the user's locale) through the router,
    /// with the limits, carriers and audit of every message. Answers the
    /// address, masked.
    pub fn email_pin(
        &self,
        tenant: TenantId,
        subject: &str,
        pin: &crate::directory::Pin,
    ) -> Result<String, EngineError> {
        let address = self.pin_mail_address(tenant, subject).ok_or_else(|| {
            EngineError::InvalidArgument("email: the user has no e-mail address".into())
        })?;
        let digits = pin.expose();
        let carried = digits
            .parse::<u64>()
            .ok()
            .and_then(|v| crate::code::Code::from_parts(v, u8::try_from(digits.len()).ok()?))
            .ok_or_else(|| EngineError::Internal("a PIN that is no code".into()))?;
        let locale = self
            .inner
            .directory
            .with_view(tenant, subject, |u| u.locale.map(str::to_owned))
            .flatten();
        let issued = self.issue_carrying(
            tenant,
            &IssueParams {
                subject,
                channel: crate::types::Channel::Email,
                destination: &address,
                code_len: 0,
                ttl_s: 0,
                locale: locale.as_deref().unwrap_or(""),
                client_ip: "",
            },
            MessagePurpose::PinNotice,
            Some(carried),
        )?;
        Ok(issued.masked_destination.as_str().to_owned())
    }

    /// Registers a method for a user and starts its confirmation: a code by
    /// SMS or e-mail, or a call to answer with `#` for `voice` and `call`.
    /// The method is `pending` until then, and fails if it is not confirmed
    /// before its confirmation challenge expires.
    pub fn add_method(
        &self,
        tenant: TenantId,
        subject: &str,
        kind: MethodType,
        destination: &str,
    ) -> Result<Durable<Method>, EngineError> {
        validate_subject(subject).map_err(EngineError::from)?;
        if !MethodType::REGISTRABLE.contains(&kind) {
            return Err(EngineError::InvalidArgument(format!(
                "type: {} methods are not registered here; use sms, voice, email or call",
                kind.name()
            )));
        }
        let channel = kind
            .channel()
            .ok_or_else(|| EngineError::Internal("no channel".into()))?;
        let policy = self
            .tenant_policy(tenant)
            .ok_or_else(|| EngineError::Internal("unknown tenant".into()))?;
        let normalized = crate::delivery::normalize(channel, destination, &policy_delivery(policy))
            .map_err(|e| EngineError::InvalidArgument(format!("destination: {e}")))?;
        // Refused before anything is sent: a registration that cannot be
        // stored must not ring a phone or spend a send from the limits.
        let now = self.now_ms();
        let locale = self
            .inner
            .directory
            .with_user(tenant, subject, |u| {
                crate::directory::admits(u, kind, normalized.as_str(), now)
                    .map(|()| u.locale.clone())
            })
            .ok_or(EngineError::Directory(DirectoryError::NotFound(
                "no such user",
            )))??;
        let purpose = if kind.confirmed_by_call() {
            MessagePurpose::CallConfirmation
        } else {
            MessagePurpose::Code
        };
        let params = IssueParams {
            subject,
            channel,
            destination: normalized.as_str(),
            code_len: 0,
            ttl_s: 0,
            locale: locale.as_deref().unwrap_or(""),
            client_ip: "",
        };
        let issued = self.issue_for(tenant, &params, purpose)?;
        let method = Method {
            id: MethodId::random(),
            kind,
            state: MethodState::Pending,
            destination: normalized.as_str().into(),
            created_at_ms: now,
            confirmed_at_ms: 0,
            effective_at_ms: 0,
            confirm_deadline_ms: issued.expires_at_ms,
        };
        let added = match self
            .inner
            .directory
            .add_method(tenant, subject, method, now)
        {
            Ok(d) => d,
            Err(e) => {
                let _ = self.inner.table.cancel(tenant, issued.id);
                self.inner.calls.forget(issued.id);
                return Err(e.into());
            }
        };
        let m = added.value().clone();
        if kind.confirmed_by_call() {
            self.watch_registration_call(tenant, subject, m.id, issued.id);
        } else {
            self.inner.confirmations.lock().insert(
                (tenant, m.id),
                PendingConfirmation {
                    challenge: issued.id,
                    subject: subject.into(),
                    expires_at_ms: issued.expires_at_ms,
                },
            );
        }
        Ok(added)
    }

    /// Waits (in a task) for a registration call's outcome and writes it to
    /// the method: active when confirmed, failed otherwise.
    fn watch_registration_call(
        &self,
        tenant: TenantId,
        subject: &str,
        method: MethodId,
        id: ChallengeId,
    ) {
        let Some(mut call) = self.inner.calls.watch(tenant, id) else {
            return;
        };
        let weak = std::sync::Arc::downgrade(&self.inner);
        let subject = subject.to_owned();
        let left = Duration::from_millis(call.expires_at_ms.saturating_sub(self.now_ms()));
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(left, call.outcome.wait_for(|o| *o != CallOutcome::Ringing))
                    .await;
            let Some(inner) = weak.upgrade() else { return };
            let engine = Engine { inner };
            let outcome = engine
                .inner
                .calls
                .take(tenant, id)
                .or_else(|| engine.inner.calls.expire(tenant, id));
            let confirmed = outcome == Some(CallOutcome::Confirmed);
            let reason = match outcome {
                Some(CallOutcome::Confirmed) => None,
                Some(CallOutcome::Declined) => Some("call declined"),
                _ => Some("call not answered"),
            };
            let _ = engine.finish_registration(tenant, &subject, method, confirmed, reason);
        });
    }

    /// Writes `failed` to every sms or e-mail registration whose
    /// confirmation expired unanswered (the janitor calls it).
    pub(crate) fn fail_expired_registrations(&self, now_ms: u64) {
        let expired: Vec<_> = {
            let mut pending = self.inner.confirmations.lock();
            let keys: Vec<_> = pending
                .iter()
                .filter(|(_, p)| now_ms >= p.expires_at_ms)
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| pending.remove(&k).map(|p| (k, p)))
                .collect()
        };
        for ((tenant, id), p) in expired {
            let reason = Some("the confirmation expired");
            if let Err(e) = self.finish_registration(tenant, &p.subject, id, false, reason) {
                tracing::debug!(error = %e, "an expired registration could not be written as failed");
            }
        }
    }

    /// Writes a registration's end to the method.
    fn finish_registration(
        &self,
        tenant: TenantId,
        subject: &str,
        id: MethodId,
        confirmed: bool,
        reason: Option<&'static str>,
    ) -> Result<Durable<Method>, DirectoryError> {
        let now = self.now_ms();
        let hold_ms = self
            .tenant_policy(tenant)
            .map_or(48, |p| u64::from(p.contact_hold_hours))
            * 3_600_000;
        let done = self
            .inner
            .directory
            .update_method(tenant, subject, id, |m| {
                if m.state != MethodState::Pending {
                    return false;
                }
                if confirmed {
                    m.state = MethodState::Active;
                    m.confirmed_at_ms = now;
                    m.effective_at_ms = now + hold_ms;
                } else {
                    m.state = MethodState::Failed;
                }
                true
            })?;
        let event = if confirmed {
            "method_confirmed"
        } else {
            "method_failed"
        };
        self.audit_directory(tenant, subject, event, Some(done.value()), reason);
        Ok(done)
    }

    /// Checks the code typed back for a pending `sms` or `email` method.
    pub fn confirm_method(
        &self,
        tenant: TenantId,
        subject: &str,
        id: MethodId,
        code: &str,
    ) -> Result<Durable<ConfirmOutcome>, EngineError> {
        let now = self.now_ms();
        let method = self
            .inner
            .directory
            .with_user(tenant, subject, |u| u.method(id).cloned())
            .ok_or(EngineError::Directory(DirectoryError::NotFound(
                "no such user",
            )))?
            .ok_or(EngineError::Directory(DirectoryError::NotFound(
                "no such method",
            )))?;
        if method.kind.confirmed_by_call() {
            return Err(EngineError::Directory(DirectoryError::Conflict(format!(
                "a {} method is confirmed by answering its call with #, not by a code",
                method.kind.name()
            ))));
        }
        match method.state {
            MethodState::Pending => {}
            other => {
                return Err(EngineError::Directory(DirectoryError::Conflict(format!(
                    "the method is {}, not pending",
                    other.name()
                ))));
            }
        }
        let pending = self.inner.confirmations.lock().get(&(tenant, id)).cloned();
        let outcome = match pending {
            None => VerifyOutcome::Unknown,
            Some(_) if now >= method.confirm_deadline_ms => VerifyOutcome::Expired,
            Some(p) => self
                .inner
                .table
                .verify(tenant, p.challenge, code.as_bytes()),
        };
        let (confirmed, reason) = match outcome {
            VerifyOutcome::Rejected { attempts_left } => {
                return Ok(Durable::ready(ConfirmOutcome::WrongCode { attempts_left }));
            }
            VerifyOutcome::Approved => (true, None),
            VerifyOutcome::Locked => (false, Some("too many wrong codes")),
            VerifyOutcome::Expired => (false, Some("the confirmation expired")),
            VerifyOutcome::Unknown => (
                false,
                Some("the confirmation ended (superseded, or lost at a restart)"),
            ),
        };
        self.inner.confirmations.lock().remove(&(tenant, id));
        let done = self
            .finish_registration(tenant, subject, id, confirmed, reason)
            .map_err(EngineError::from)?;
        Ok(done.map(|m| {
            if confirmed {
                ConfirmOutcome::Confirmed(m)
            } else {
                ConfirmOutcome::Failed {
                    method: m,
                    reason: reason.unwrap_or("failed"),
                }
            }
        }))
    }

    /// What a simulated handset keyed for the call `id` (CALL_ANSWER).
    pub fn call_answer(
        &self,
        tenant: TenantId,
        id: ChallengeId,
        digits: &str,
    ) -> Result<(), EngineError> {
        if digits.len() > MAX_CHECK_FIELD {
            return Err(EngineError::InvalidArgument(format!(
                "digits: at most {MAX_CHECK_FIELD} bytes, got {}",
                digits.len()
            )));
        }
        let answer = crate::delivery::HandsetAnswer::Digits(digits.to_owned());
        if self.inner.calls.answer(tenant, id, &answer) {
            Ok(())
        } else {
            Err(EngineError::NotFound)
        }
    }
}

fn policy_delivery(p: &crate::service::TenantPolicy) -> crate::delivery::TenantDelivery {
    crate::delivery::TenantDelivery {
        default_country: p.default_country.clone(),
        operator_assistance: p.operator_assistance,
        service_name: p.service_name.clone(),
        default_locale: p.locale.clone(),
    }
}

/// The sentence shown to the person for a challenge.
pub fn challenge_message(kind: MethodType, masked: &str) -> String {
    match kind {
        MethodType::Sms | MethodType::Email => format!("Enter the code sent to {masked}"),
        MethodType::Voice => format!("Enter the code read out in the call to {masked}"),
        MethodType::Call => "Answer the call and press #".to_owned(),
        MethodType::Token => "Enter the code from your token".to_owned(),
        MethodType::Pin => "Enter your PIN".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_state_opens_only_as_made(s in "\\PC{0,70}", id in any::<[u8; 16]>(), t in any::<u16>()) {
            let seal = StateSeal::new().unwrap();
            let made = seal.state(TenantId(t), ChallengeId(id));
            prop_assert_eq!(made.len(), STATE_LEN);
            prop_assert!(made.bytes().all(|b| b.is_ascii_graphic()));
            prop_assert_eq!(seal.open(TenantId(t), &made), Some(ChallengeId(id)));
            prop_assert_eq!(parse_state(&made), Some(ChallengeId(id)));
            prop_assert_eq!(seal.open(TenantId(t.wrapping_add(1)), &made), None, "another tenant");
            prop_assert_eq!(StateSeal::new().unwrap().open(TenantId(t), &made), None, "another key");
            // Arbitrary text opens only if it is that very state.
            if seal.open(TenantId(t), &s).is_some() {
                prop_assert_eq!(s.to_ascii_lowercase(), seal.state(TenantId(t), parse_state(&s).unwrap()));
            }
        }
    }

    #[test]
    fn malformed_states_are_refused() {
        let seal = StateSeal::new().unwrap();
        let s = seal.state(TenantId(0), ChallengeId(*b"0123456789abcdef"));
        let mut flipped = s.clone().into_bytes();
        flipped[40] = if flipped[40] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            "",
            "ws1",
            &s[..50],
            &format!("{s}0"),
            &s.replacen("ws1", "ws2", 1),
            &flipped,
            &s.replacen("ws1", "ws1+", 1)[..51],
        ] {
            assert_eq!(seal.open(TenantId(0), bad), None, "{bad}");
        }
    }
}
