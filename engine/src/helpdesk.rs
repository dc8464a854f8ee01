//! Help-desk caller verification (DOMAIN.md §6, seed 000): an agent names a
//! user and the caller ID of the incoming call. The caller is verified by
//! caller ID alone when it is, as E.164, one of the user's active phone
//! numbers whose contact hold (`effective_at`) has passed; otherwise a code
//! goes to the user's first active contact in the tenant's order (e-mail,
//! then SMS, then voice, by default), through the same table, limits and
//! delivery as every challenge, and the agent checks what the caller reads
//! back. Every step is audited with the way the caller was verified and the
//! agent's key fingerprint.
//!
//! This module must never show a caller ID, a destination or a code in full
//! (answers and audit carry masked destinations only), and never let a
//! verification id open as a CHECK state or the other way round.

use crate::delivery::MessagePurpose;
use crate::delivery::destination::normalize;
use crate::directory::MethodType;
use crate::events::Record;
use crate::service::{Engine, EngineError, IssueParams};
use crate::types::{Channel, TenantId, VerifyOutcome};

/// The default order of contacts a help-desk code goes to.
pub const DEFAULT_ORDER: [MethodType; 3] = [MethodType::Email, MethodType::Sms, MethodType::Voice];

/// How a verification began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallerVerification {
    /// The caller ID is one of the user's phones past its hold: verified.
    ByCallerId,
    /// A code went to the user's contact; check what the caller reads back.
    CodeSent {
        /// The verification's id (`wh1...`), for the check.
        id: String,
        /// The contact's type.
        method: MethodType,
        /// The contact, masked.
        sent_to: String,
        /// When the code stops verifying, Unix ms.
        expires_at_ms: u64,
    },
}

/// What a code read back gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelpdeskOutcome {
    /// The caller read the right code.
    Approved,
    /// A wrong code; more tries allowed.
    Rejected {
        /// Tries left.
        attempts_left: u8,
    },
    /// Too many wrong codes: the verification ended.
    Locked,
    /// The code expired: the verification ended.
    Expired,
}

impl HelpdeskOutcome {
    /// Its word in the API.
    pub fn word(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Rejected { .. } => "rejected",
            Self::Locked => "locked",
            Self::Expired => "expired",
        }
    }
}

fn channel_of(kind: MethodType) -> Option<Channel> {
    match kind {
        MethodType::Email => Some(Channel::Email),
        MethodType::Sms => Some(Channel::Sms),
        MethodType::Voice => Some(Channel::Voice),
        _ => None,
    }
}

impl Engine {
    /// Starts the verification of a caller who says they are `subject`,
    /// calling from `caller_id` (any notation; empty when withheld), for
    /// the agent whose key fingerprint is `agent`.
    pub fn helpdesk_verify(
        &self,
        tenant: TenantId,
        subject: &str,
        caller_id: &str,
        agent: &str,
    ) -> Result<CallerVerification, EngineError> {
        crate::directory::validate_subject(subject)?;
        let policy = self
            .tenant_policy(tenant)
            .ok_or_else(|| EngineError::Internal("unknown tenant".into()))?;
        let now = self.now_ms();
        // A withheld or malformed caller ID matches nothing (it is a hint,
        // never an error: the code path follows).
        let caller = normalize(Channel::Sms, caller_id, &self.tenant(tenant)?.delivery).ok();
        let order = if policy.helpdesk_order.is_empty() {
            &DEFAULT_ORDER[..]
        } else {
            &policy.helpdesk_order[..]
        };
        let found = self.directory().with_view(tenant, subject, |u| {
            if !u.enabled {
                return Err(());
            }
            let by_phone = caller.as_ref().is_some_and(|c| {
                u.methods().any(|m| {
                    matches!(
                        m.kind,
                        MethodType::Sms | MethodType::Voice | MethodType::Call
                    ) && m.state == crate::directory::MethodState::Active
                        && m.effective_at_ms != 0
                        && m.effective_at_ms <= now
                        && m.destination == c.as_str()
                })
            });
            if by_phone {
                return Ok(None);
            }
            let contact = order.iter().find_map(|kind| {
                u.methods()
                    .find(|m| m.kind == *kind && m.state == crate::directory::MethodState::Active)
                    .map(|m| (m.kind, m.destination.to_owned()))
            });
            Ok(Some((contact, u.locale.map(str::to_owned))))
        });
        let (contact, locale) = match found {
            None | Some(Err(())) => {
                self.audit_helpdesk(
                    tenant,
                    subject,
                    "failure",
                    None,
                    None,
                    None,
                    Some("unknown_user"),
                    agent,
                );
                return Err(crate::directory::DirectoryError::NotFound("no such user").into());
            }
            Some(Ok(None)) => {
                self.audit_helpdesk(
                    tenant,
                    subject,
                    "success",
                    None,
                    None,
                    None,
                    Some("caller_id"),
                    agent,
                );
                return Ok(CallerVerification::ByCallerId);
            }
            Some(Ok(Some(x))) => x,
        };
        let Some((kind, destination)) = contact else {
            self.audit_helpdesk(
                tenant,
                subject,
                "failure",
                None,
                None,
                None,
                Some("no_contact"),
                agent,
            );
            return Err(EngineError::InvalidArgument(
                "the user has no confirmed contact to send a code to (e-mail, SMS or voice): \
                 the caller cannot be verified by code"
                    .into(),
            ));
        };
        let channel = channel_of(kind)
            .ok_or_else(|| EngineError::Internal("a help-desk contact has no channel".into()))?;
        let issued = self.issue_for(
            tenant,
            &IssueParams {
                subject,
                channel,
                destination: &destination,
                code_len: 0,
                ttl_s: 0,
                locale: locale.as_deref().unwrap_or(""),
                client_ip: "",
            },
            MessagePurpose::Code,
        )?;
        let sent_to = issued.masked_destination.as_str().to_owned();
        self.audit_helpdesk(
            tenant,
            subject,
            "challenge",
            Some(kind),
            Some(issued.masked_destination),
            Some(issued.id),
            Some("code_sent"),
            agent,
        );
        Ok(CallerVerification::CodeSent {
            id: self.inner.state_seal.helpdesk_id(tenant, issued.id),
            method: kind,
            sent_to,
            expires_at_ms: issued.expires_at_ms,
        })
    }

    /// Checks the code a caller read back for verification `id`. A
    /// verification that ended (approved, locked, expired) or that this
    /// server did not start for the tenant is [`EngineError::NotFound`].
    pub fn helpdesk_check(
        &self,
        tenant: TenantId,
        id: &str,
        code: &str,
        agent: &str,
    ) -> Result<HelpdeskOutcome, EngineError> {
        let challenge = self
            .inner
            .state_seal
            .open_helpdesk(tenant, id)
            .ok_or(EngineError::NotFound)?;
        // Only a pending verification takes a code (an ended one is 404,
        // not a second "approved").
        let pending = self
            .inner
            .table
            .peek_pending(tenant, challenge)
            .ok_or(EngineError::NotFound)?;
        let subject = pending.subject.clone();
        let outcome = match self.inner.table.verify(tenant, challenge, code.as_bytes()) {
            VerifyOutcome::Approved => HelpdeskOutcome::Approved,
            VerifyOutcome::Rejected { attempts_left } => {
                HelpdeskOutcome::Rejected { attempts_left }
            }
            VerifyOutcome::Locked => HelpdeskOutcome::Locked,
            VerifyOutcome::Expired => HelpdeskOutcome::Expired,
            VerifyOutcome::Unknown => return Err(EngineError::NotFound),
        };
        let result = if outcome == HelpdeskOutcome::Approved {
            "success"
        } else {
            "failure"
        };
        let reason = (outcome != HelpdeskOutcome::Approved).then(|| outcome.word());
        self.audit_helpdesk(
            tenant,
            &subject,
            result,
            None,
            None,
            Some(challenge),
            reason.or(Some("code")),
            agent,
        );
        Ok(outcome)
    }

    #[allow(clippy::too_many_arguments)]
    fn audit_helpdesk(
        &self,
        tenant: TenantId,
        subject: &str,
        result: &str,
        method: Option<MethodType>,
        destination: Option<crate::MaskedDestination>,
        challenge: Option<crate::types::ChallengeId>,
        reason: Option<&str>,
        agent: &str,
    ) {
        self.inner.sink.record_other(&Record {
            at_ms: self.now_ms(),
            tenant,
            event: "helpdesk_verification",
            result,
            subject,
            method: method.map(MethodType::name),
            destination,
            challenge,
            reason,
            client_ip: None,
            agent: Some(agent),
        });
    }
}
