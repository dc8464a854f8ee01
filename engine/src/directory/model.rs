//! The directory's domain types: a user, the methods it registered, and their
//! conversions to and from the store's own storage rows.
//!
//! These are what the decision and the front ends read; the wire forms live in
//! the gateway, the storage forms in [`crate::store`]. A destination is held
//! normalised and in full here (it is needed to deliver): it must never leave
//! the engine except masked, or towards a carrier.

use std::fmt;

use crate::mask::{MaskedDestination, mask_destination};
use crate::store::{StoredMethod, StoredUser};
use crate::types::Channel;

/// What kind of method a user registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodType {
    /// A text message to a phone.
    Sms,
    /// A voice call that reads a code out.
    Voice,
    /// An e-mail with the code.
    Email,
    /// A call the person answers and confirms with `#`.
    Call,
    /// An OATH token (its own issue; room kept in the schema).
    Token,
    /// A PIN (its own issue; room kept in the schema).
    Pin,
}

impl MethodType {
    /// The types a user may register through the methods API today.
    pub const REGISTRABLE: [MethodType; 4] = [Self::Sms, Self::Voice, Self::Email, Self::Call];

    /// Lower-case name, as in the API and the store.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Voice => "voice",
            Self::Email => "email",
            Self::Call => "call",
            Self::Token => "token",
            Self::Pin => "pin",
        }
    }

    /// The type called `name` (exact, lower-case).
    pub fn parse(name: &str) -> Option<MethodType> {
        Some(match name {
            "sms" => Self::Sms,
            "voice" => Self::Voice,
            "email" => Self::Email,
            "call" => Self::Call,
            "token" => Self::Token,
            "pin" => Self::Pin,
            _ => return None,
        })
    }

    /// The channel a message for this method travels on (`call` rings a
    /// phone, so voice); `None` for tokens and PINs.
    pub fn channel(self) -> Option<Channel> {
        match self {
            Self::Sms => Some(Channel::Sms),
            Self::Voice | Self::Call => Some(Channel::Voice),
            Self::Email => Some(Channel::Email),
            Self::Token | Self::Pin => None,
        }
    }

    /// The protocol's CHECK method number: 1 sms, 2 voice, 3 email, 4 token, 5 call.
    pub fn wire(self) -> u8 {
        match self {
            Self::Sms => 1,
            Self::Voice => 2,
            Self::Email => 3,
            Self::Token => 4,
            Self::Call => 5,
            Self::Pin => 6,
        }
    }

    /// Whether a confirmation call (answered with `#`) confirms it, rather
    /// than a code typed back.
    pub fn confirmed_by_call(self) -> bool {
        matches!(self, Self::Voice | Self::Call)
    }
}

/// Where a method stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodState {
    /// Registered; its confirmation is under way.
    Pending,
    /// Confirmed: it counts.
    Active,
    /// Its confirmation expired, was declined, not answered, or took too
    /// many wrong codes. It never counts; register it again.
    Failed,
    /// Switched off by an administrator.
    Disabled,
}

impl MethodState {
    /// Lower-case name, as in the API and the store.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
        }
    }

    /// The state called `name`.
    pub fn parse(name: &str) -> Option<MethodState> {
        Some(match name {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "failed" => Self::Failed,
            "disabled" => Self::Disabled,
            _ => return None,
        })
    }
}

/// A method's id: 63 random bits (SQL integers are signed), shown as `m`
/// and 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MethodId(pub u64);

impl MethodId {
    /// A fresh random id (never 0, never above `i64::MAX`).
    pub fn random() -> MethodId {
        loop {
            let v: u64 = rand::random::<u64>() >> 1;
            if v != 0 {
                return MethodId(v);
            }
        }
    }

    /// Parses the shown form `m0123456789abcdef`.
    pub fn parse(s: &str) -> Option<MethodId> {
        let hex = s.strip_prefix('m')?;
        if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(MethodId)
    }
}

impl fmt::Display for MethodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{:016x}", self.0)
    }
}

impl fmt::Debug for MethodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One registered method. Times are Unix milliseconds; 0 means unset.
#[derive(Clone, PartialEq, Eq)]
pub struct Method {
    /// Its id.
    pub id: MethodId,
    /// What it is.
    pub kind: MethodType,
    /// Where it stands.
    pub state: MethodState,
    /// The normalised destination (E.164 with its extension, or an address).
    pub destination: Box<str>,
    /// When it was registered.
    pub created_at_ms: u64,
    /// When its confirmation succeeded (0: not yet).
    pub confirmed_at_ms: u64,
    /// When it starts to count for help-desk caller verification (0: not yet).
    pub effective_at_ms: u64,
    /// A pending method that is not confirmed by then has failed.
    pub confirm_deadline_ms: u64,
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Method")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("state", &self.state)
            .field("destination", &self.masked())
            .finish_non_exhaustive()
    }
}

impl Method {
    /// The destination as it may be shown.
    pub fn masked(&self) -> MaskedDestination {
        mask_destination(&self.destination)
    }

    /// The state as of `now_ms`: a pending method past its confirmation
    /// deadline has failed, whether or not that was written yet.
    pub fn state_at(&self, now_ms: u64) -> MethodState {
        if self.state == MethodState::Pending && now_ms >= self.confirm_deadline_ms {
            MethodState::Failed
        } else {
            self.state
        }
    }

    /// Whether it may be used to reach the person now.
    pub fn is_active(&self) -> bool {
        self.state == MethodState::Active
    }
}

/// The rule of [`User::pick_method`] over any list of `(type, state, item)`:
/// the first active method of the named type; with none named, the first
/// active method of the default type, else the first active method able to
/// carry a challenge.
pub(crate) fn pick<T>(
    methods: impl Iterator<Item = (MethodType, MethodState, T)> + Clone,
    default: Option<MethodType>,
    named: Option<MethodType>,
) -> Option<T> {
    let active = || {
        methods
            .clone()
            .filter(|(k, s, _)| *s == MethodState::Active && k.channel().is_some())
    };
    let of = |t: MethodType| active().find(|(k, _, _)| *k == t);
    match named {
        Some(t) => of(t),
        None => default.and_then(of).or_else(|| active().next()),
    }
    .map(|(_, _, m)| m)
}

/// One user of a tenant. Times are Unix milliseconds.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The upstream system's user id.
    pub subject: Box<str>,
    /// A name to show.
    pub display_name: Option<Box<str>>,
    /// The user's own address (audit field; not a method until registered as one).
    pub email: Option<Box<str>>,
    /// Message language (BCP 47); the tenant's when unset.
    pub locale: Option<Box<str>>,
    /// A disabled user is rejected by every decision.
    pub enabled: bool,
    /// The method type a challenge starts on when none is named.
    pub default_method: Option<MethodType>,
    /// Registered methods, oldest first.
    pub methods: Box<[Method]>,
    /// When it was created.
    pub created_at_ms: u64,
    /// When it last changed.
    pub updated_at_ms: u64,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("subject", &self.subject)
            .field("enabled", &self.enabled)
            .field("methods", &self.methods)
            .finish_non_exhaustive()
    }
}

impl User {
    /// The method with this id.
    pub fn method(&self, id: MethodId) -> Option<&Method> {
        self.methods.iter().find(|m| m.id == id)
    }

    /// The method a challenge starts on: the first active method of the
    /// named type; with none named, the first active method of the default
    /// type, else the first active method able to carry a challenge.
    pub fn pick_method(&self, named: Option<MethodType>) -> Option<&Method> {
        let methods = self.methods.iter().map(|m| (m.kind, m.state, m));
        pick(methods, self.default_method, named)
    }

    /// The storage row of this user for `tenant`.
    pub fn to_stored(&self, tenant: &str) -> StoredUser {
        StoredUser {
            tenant: tenant.to_owned(),
            subject: self.subject.to_string(),
            display_name: self.display_name.as_deref().map(str::to_owned),
            email: self.email.as_deref().map(str::to_owned),
            locale: self.locale.as_deref().map(str::to_owned),
            enabled: self.enabled,
            default_method: self.default_method.map(|t| t.name().to_owned()),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }

    /// A user from its storage row (methods come separately).
    pub fn from_stored(row: StoredUser) -> Result<User, String> {
        let default_method =
            match row.default_method.as_deref() {
                None => None,
                Some(t) => Some(MethodType::parse(t).ok_or_else(|| {
                    format!("user {:?}: unknown default method {t:?}", row.subject)
                })?),
            };
        Ok(User {
            subject: row.subject.into(),
            display_name: row.display_name.map(Into::into),
            email: row.email.map(Into::into),
            locale: row.locale.map(Into::into),
            enabled: row.enabled,
            default_method,
            methods: Box::default(),
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
        })
    }
}

impl Method {
    /// The storage row of this method.
    pub fn to_stored(&self, tenant: &str, subject: &str) -> StoredMethod {
        let opt = |v: u64| (v != 0).then_some(v);
        StoredMethod {
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            id: self.id.0,
            kind: self.kind.name().to_owned(),
            destination: self.destination.to_string(),
            state: self.state.name().to_owned(),
            created_at_ms: self.created_at_ms,
            confirmed_at_ms: opt(self.confirmed_at_ms),
            effective_at_ms: opt(self.effective_at_ms),
            confirm_deadline_ms: opt(self.confirm_deadline_ms),
        }
    }

    /// A method from its storage row.
    pub fn from_stored(row: StoredMethod) -> Result<Method, String> {
        let kind = MethodType::parse(&row.kind)
            .ok_or_else(|| format!("method {}: unknown type {:?}", MethodId(row.id), row.kind))?;
        let state = MethodState::parse(&row.state)
            .ok_or_else(|| format!("method {}: unknown state {:?}", MethodId(row.id), row.state))?;
        Ok(Method {
            id: MethodId(row.id),
            kind,
            state,
            destination: row.destination.into(),
            created_at_ms: row.created_at_ms,
            confirmed_at_ms: row.confirmed_at_ms.unwrap_or(0),
            effective_at_ms: row.effective_at_ms.unwrap_or(0),
            confirm_deadline_ms: row.confirm_deadline_ms.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(kind: MethodType, state: MethodState) -> Method {
        Method {
            id: MethodId::random(),
            kind,
            state,
            destination: "+14255550100".into(),
            created_at_ms: 1,
            confirmed_at_ms: 0,
            effective_at_ms: 0,
            confirm_deadline_ms: 1_000,
        }
    }

    fn user(methods: Vec<Method>, default_method: Option<MethodType>) -> User {
        User {
            subject: "ann".into(),
            display_name: None,
            email: None,
            locale: None,
            enabled: true,
            default_method,
            methods: methods.into(),
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    #[test]
    fn method_ids_print_and_parse_back() {
        let id = MethodId(0x0123_4567_89ab_cdef);
        assert_eq!(id.to_string(), "m0123456789abcdef");
        assert_eq!(MethodId::parse("m0123456789abcdef"), Some(id));
        for bad in [
            "",
            "m",
            "0123456789abcdef",
            "m0123456789abcdeg",
            "m0123456789abcdef0",
            "m+123456789abcdef",
        ] {
            assert_eq!(MethodId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn random_ids_fit_a_signed_sql_integer() {
        for _ in 0..10_000 {
            let id = MethodId::random();
            assert!(id.0 != 0 && id.0 <= i64::MAX as u64);
        }
    }

    #[test]
    fn a_pending_method_past_its_deadline_reads_as_failed() {
        let m = method(MethodType::Sms, MethodState::Pending);
        assert_eq!(m.state_at(999), MethodState::Pending);
        assert_eq!(m.state_at(1_000), MethodState::Failed);
        let a = method(MethodType::Sms, MethodState::Active);
        assert_eq!(a.state_at(5_000), MethodState::Active);
    }

    #[test]
    fn the_picked_method_is_active_of_the_named_then_default_type() {
        let sms = method(MethodType::Sms, MethodState::Active);
        let email_pending = method(MethodType::Email, MethodState::Pending);
        let email = method(MethodType::Email, MethodState::Active);
        let u = user(
            vec![sms.clone(), email_pending, email.clone()],
            Some(MethodType::Email),
        );
        assert_eq!(u.pick_method(None).map(|m| m.id), Some(email.id));
        assert_eq!(
            u.pick_method(Some(MethodType::Sms)).map(|m| m.id),
            Some(sms.id)
        );
        assert!(u.pick_method(Some(MethodType::Call)).is_none());
        let u = user(vec![sms.clone(), email.clone()], Some(MethodType::Call));
        assert_eq!(
            u.pick_method(None).map(|m| m.id),
            Some(sms.id),
            "falls back to the first active"
        );
        let u = user(vec![method(MethodType::Sms, MethodState::Failed)], None);
        assert!(u.pick_method(None).is_none());
    }

    #[test]
    fn debug_never_shows_the_full_destination() {
        let u = user(vec![method(MethodType::Sms, MethodState::Active)], None);
        let d = format!("{u:?}");
        assert!(!d.contains("4255550100"), "{d}");
    }
}
