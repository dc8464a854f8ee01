//! How the directory holds a user in memory: one allocation of packed bytes
//! per user (its subject first, then its fields and its methods), ordered by
//! subject. A million users with two methods each fit in about 250 bytes
//! apiece this way, where the [`User`] struct with its nine separate strings
//! and a method array took over 600 (measured, docs/benchmarks.md).
//!
//! [`UserView`] reads the bytes in place for the hot path (CHECK picks a
//! method without allocating); [`Packed::decode`] gives the owned [`User`]
//! for everything else. Only [`Packed::encode`] writes the bytes, so the
//! reader trusts their layout, yet never panics on them: a short read gives
//! empty values. This module must never hold a full destination anywhere but
//! in the packed bytes it was given.

use std::borrow::Borrow;
use std::cmp::Ordering;

use super::model::{Method, MethodId, MethodState, MethodType, User};

const ENABLED: u8 = 1;
const HAS_DISPLAY: u8 = 2;
const HAS_EMAIL: u8 = 4;
const HAS_LOCALE: u8 = 8;

const KINDS: [MethodType; 6] = [
    MethodType::Sms,
    MethodType::Voice,
    MethodType::Email,
    MethodType::Call,
    MethodType::Token,
    MethodType::Pin,
];
const STATES: [MethodState; 4] = [
    MethodState::Pending,
    MethodState::Active,
    MethodState::Failed,
    MethodState::Disabled,
];

fn kind_code(k: MethodType) -> u8 {
    KINDS.iter().position(|x| *x == k).unwrap_or(0) as u8
}

fn state_code(s: MethodState) -> u8 {
    STATES.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// One user's packed bytes.
pub(crate) struct Packed(Box<[u8]>);

fn put_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..n]);
}

impl Packed {
    /// Packs a user.
    pub(crate) fn encode(u: &User) -> Packed {
        let mut out = Vec::with_capacity(Self::size_hint(u));
        Self::encode_head(&mut out, u);
        out.push(u.methods.len().min(255) as u8);
        for m in u.methods.iter().take(255) {
            Self::encode_method(&mut out, m);
        }
        Packed(out.into_boxed_slice())
    }

    fn size_hint(u: &User) -> usize {
        let strings: usize = [
            u.subject.len(),
            u.display_name.as_deref().map_or(0, str::len),
            u.email.as_deref().map_or(0, str::len),
            u.locale.as_deref().map_or(0, str::len),
        ]
        .iter()
        .sum::<usize>()
            + u.methods.iter().map(|m| m.destination.len()).sum::<usize>();
        strings + 24 + 8 + u.methods.len() * 44
    }

    /// Appends everything of `u` but its methods.
    pub(crate) fn encode_head(out: &mut Vec<u8>, u: &User) {
        put_str(out, &u.subject);
        let mut flags = 0;
        if u.enabled {
            flags |= ENABLED;
        }
        if u.display_name.is_some() {
            flags |= HAS_DISPLAY;
        }
        if u.email.is_some() {
            flags |= HAS_EMAIL;
        }
        if u.locale.is_some() {
            flags |= HAS_LOCALE;
        }
        out.push(flags);
        out.push(u.default_method.map_or(0, |k| kind_code(k) + 1));
        out.extend_from_slice(&u.created_at_ms.to_le_bytes());
        out.extend_from_slice(&u.updated_at_ms.to_le_bytes());
        for s in [&u.display_name, &u.email, &u.locale].into_iter().flatten() {
            put_str(out, s);
        }
    }

    /// Appends one method.
    pub(crate) fn encode_method(out: &mut Vec<u8>, m: &Method) {
        {
            out.extend_from_slice(&m.id.0.to_le_bytes());
            out.push(kind_code(m.kind));
            out.push(state_code(m.state));
            for t in [
                m.created_at_ms,
                m.confirmed_at_ms,
                m.effective_at_ms,
                m.confirm_deadline_ms,
            ] {
                out.extend_from_slice(&t.to_le_bytes());
            }
            put_str(out, &m.destination);
        }
    }

    /// A user from its head, as [`Packed::encode_head`] wrote it, and the
    /// bytes of its `count` methods, as [`Packed::encode_method`] wrote
    /// each, oldest first (at most 255 are kept: more cannot be registered).
    pub(crate) fn assemble_raw(head: &[u8], count: usize, methods: &[u8]) -> Packed {
        let mut out = Vec::with_capacity(head.len() + 1 + methods.len());
        out.extend_from_slice(head);
        out.push(count.min(255) as u8);
        out.extend_from_slice(methods);
        Packed(out.into_boxed_slice())
    }

    /// The subject's bytes, not checked as UTF-8 (ordering and look-ups:
    /// byte order is `str`'s order).
    fn key(&self) -> &[u8] {
        Reader(&self.0).bytes()
    }

    /// A reader over the bytes in place.
    pub(crate) fn view(&self) -> UserView<'_> {
        UserView::new(&self.0)
    }

    /// The owned user.
    pub(crate) fn decode(&self) -> User {
        let v = self.view();
        User {
            subject: v.subject.into(),
            display_name: v.display_name.map(Into::into),
            email: v.email.map(Into::into),
            locale: v.locale.map(Into::into),
            enabled: v.enabled,
            default_method: v.default_method,
            methods: v.methods().map(|m| m.to_owned()).collect(),
            created_at_ms: v.created_at_ms,
            updated_at_ms: v.updated_at_ms,
        }
    }
}

impl PartialEq for Packed {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Packed {}

impl PartialOrd for Packed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Packed {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

impl Borrow<[u8]> for Packed {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

/// A cursor over packed bytes; short reads give zeros and empty strings.
#[derive(Clone)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let t = self.take(8);
        b[..t.len()].copy_from_slice(t);
        u64::from_le_bytes(b)
    }

    fn bytes(&mut self) -> &'a [u8] {
        let mut b = [0u8; 2];
        let t = self.take(2);
        b[..t.len()].copy_from_slice(t);
        let n = usize::from(u16::from_le_bytes(b));
        self.take(n)
    }

    fn str(&mut self) -> &'a str {
        std::str::from_utf8(self.bytes()).unwrap_or("")
    }
}

/// A user read in place.
#[derive(Clone, Copy)]
pub struct UserView<'a> {
    /// The upstream id.
    pub subject: &'a str,
    /// A name to show.
    pub display_name: Option<&'a str>,
    /// The user's address.
    pub email: Option<&'a str>,
    /// Message language.
    pub locale: Option<&'a str>,
    /// Enabled or not.
    pub enabled: bool,
    /// The default method type.
    pub default_method: Option<MethodType>,
    /// When created, Unix ms.
    pub created_at_ms: u64,
    /// When last changed, Unix ms.
    pub updated_at_ms: u64,
    methods: &'a [u8],
}

impl std::fmt::Debug for UserView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserView")
            .field("subject", &self.subject)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl<'a> UserView<'a> {
    fn new(buf: &'a [u8]) -> Self {
        let mut r = Reader(buf);
        let subject = r.str();
        let flags = r.u8();
        let default = r.u8();
        let created_at_ms = r.u64();
        let updated_at_ms = r.u64();
        let mut opt = |bit: u8| (flags & bit != 0).then(|| r.str());
        let display_name = opt(HAS_DISPLAY);
        let email = opt(HAS_EMAIL);
        let locale = opt(HAS_LOCALE);
        UserView {
            subject,
            display_name,
            email,
            locale,
            enabled: flags & ENABLED != 0,
            default_method: default
                .checked_sub(1)
                .and_then(|k| KINDS.get(usize::from(k)).copied()),
            created_at_ms,
            updated_at_ms,
            methods: r.0,
        }
    }

    /// The methods, oldest first.
    pub fn methods(&self) -> impl Iterator<Item = MethodView<'a>> + Clone + use<'a> {
        let mut r = Reader(self.methods);
        let count = r.u8();
        (0..count).map(move |_| {
            let id = MethodId(r.u64());
            let kind = KINDS
                .get(usize::from(r.u8()))
                .copied()
                .unwrap_or(MethodType::Sms);
            let state = STATES
                .get(usize::from(r.u8()))
                .copied()
                .unwrap_or(MethodState::Failed);
            MethodView {
                id,
                kind,
                state,
                created_at_ms: r.u64(),
                confirmed_at_ms: r.u64(),
                effective_at_ms: r.u64(),
                confirm_deadline_ms: r.u64(),
                destination: r.str(),
            }
        })
    }

    /// The method a challenge starts on (see [`User::pick_method`]).
    pub fn pick_method(&self, named: Option<MethodType>) -> Option<MethodView<'a>> {
        let methods = self.methods().map(|m| (m.kind, m.state, m));
        super::model::pick(methods, self.default_method, named)
    }
}

/// A method read in place.
#[derive(Clone, Copy)]
pub struct MethodView<'a> {
    /// Its id.
    pub id: MethodId,
    /// What it is.
    pub kind: MethodType,
    /// Where it stands (as written; see [`Method::state_at`]).
    pub state: MethodState,
    /// The normalised destination (never to be shown unmasked).
    pub destination: &'a str,
    /// When registered.
    pub created_at_ms: u64,
    /// When confirmed (0: not yet).
    pub confirmed_at_ms: u64,
    /// When it counts for the help desk (0: not yet).
    pub effective_at_ms: u64,
    /// The confirmation's deadline.
    pub confirm_deadline_ms: u64,
}

impl std::fmt::Debug for MethodView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodView")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl MethodView<'_> {
    /// The owned method.
    pub fn to_owned(&self) -> Method {
        Method {
            id: self.id,
            kind: self.kind,
            state: self.state,
            destination: self.destination.into(),
            created_at_ms: self.created_at_ms,
            confirmed_at_ms: self.confirmed_at_ms,
            effective_at_ms: self.effective_at_ms,
            confirm_deadline_ms: self.confirm_deadline_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_method() -> impl Strategy<Value = Method> {
        (
            any::<u64>(),
            0usize..6,
            0usize..4,
            "\\PC{0,40}",
            any::<[u64; 4]>(),
        )
            .prop_map(|(id, k, s, dest, t)| Method {
                id: MethodId(id),
                kind: KINDS[k],
                state: STATES[s],
                destination: dest.into(),
                created_at_ms: t[0],
                confirmed_at_ms: t[1],
                effective_at_ms: t[2],
                confirm_deadline_ms: t[3],
            })
    }

    fn arb_user() -> impl Strategy<Value = User> {
        (
            "\\PC{1,60}",
            proptest::option::of("\\PC{0,30}"),
            proptest::option::of("\\PC{0,30}"),
            proptest::option::of("[a-z]{2}"),
            any::<bool>(),
            proptest::option::of(0usize..6),
            proptest::collection::vec(arb_method(), 0..17),
            any::<[u64; 2]>(),
        )
            .prop_map(
                |(subject, display, email, locale, enabled, default, methods, t)| User {
                    subject: subject.into(),
                    display_name: display.map(Into::into),
                    email: email.map(Into::into),
                    locale: locale.map(Into::into),
                    enabled,
                    default_method: default.map(|k| KINDS[k]),
                    methods: methods.into(),
                    created_at_ms: t[0],
                    updated_at_ms: t[1],
                },
            )
    }

    proptest! {
        #[test]
        fn a_packed_user_reads_back_whole(u in arb_user()) {
            let p = Packed::encode(&u);
            prop_assert_eq!(p.view().subject, &*u.subject);
            prop_assert_eq!(p.decode(), u.clone());
            let v = p.view();
            for named in [None, Some(MethodType::Sms), Some(MethodType::Call)] {
                prop_assert_eq!(
                    v.pick_method(named).map(|m| m.id),
                    u.pick_method(named).map(|m| m.id)
                );
            }
        }

        #[test]
        fn truncated_bytes_never_panic(u in arb_user(), cut in any::<usize>()) {
            let p = Packed::encode(&u);
            let n = cut % (p.0.len() + 1);
            let short = Packed(p.0[..n].to_vec().into_boxed_slice());
            let _ = short.decode();
            let _ = short.view().pick_method(None);
        }
    }
}
