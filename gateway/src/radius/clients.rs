//! RADIUS clients (NAS) as the server knows them: an address prefix, a
//! shared secret and the client's rules; and the table that finds the client
//! of a datagram's source address by longest prefix.
//!
//! This module must never format, log or compare a secret in variable time
//! with respect to its content: [`Secret`]'s `Debug` prints its length only,
//! and nothing here returns a secret inside an error.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A shared secret. `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// Wraps the secret's bytes.
    pub fn new(bytes: &[u8]) -> Secret {
        Secret(bytes.into())
    }

    /// The bytes, for HMAC-MD5 and MD5 only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted, {} bytes>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            *b = 0;
        }
        std::hint::black_box(&mut self.0);
    }
}

/// An address prefix such as `127.0.0.0/8`, `192.0.2.7` or `2001:db8::/32`.
/// Host bits are cleared when it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix did not parse (the text is the configuration's, never a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PrefixError(String);

impl Prefix {
    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is a zero-length prefix (matches every address of its family).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `ip` is inside the prefix. An IPv4-mapped IPv6 address
    /// (`::ffff:192.0.2.1`) counts as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = mask32(self.len);
                u32::from(a) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = mask128(self.len);
                u128::from(a) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| PrefixError(format!("{s:?} is not an address or prefix")))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(l) if l <= max => l,
                _ => {
                    return Err(PrefixError(format!(
                        "{s:?}: the prefix length must be 0..={max}"
                    )));
                }
            },
        };
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(len)).into()),
        };
        Ok(Prefix { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Finds the client of a source address: the longest matching prefix wins.
/// Built once at start; lookups take no lock and allocate nothing.
#[derive(Debug, Clone, Default)]
pub struct ClientTable {
    /// (prefix, client index), longest prefixes first.
    by_len: Vec<(Prefix, usize)>,
}

impl ClientTable {
    /// A table of `prefixes`, where the i-th prefix names client i.
    pub fn new(prefixes: impl IntoIterator<Item = Prefix>) -> ClientTable {
        let mut by_len: Vec<(Prefix, usize)> = prefixes.into_iter().zip(0..).collect();
        by_len.sort_by(|a, b| b.0.len.cmp(&a.0.len).then(a.1.cmp(&b.1)));
        ClientTable { by_len }
    }

    /// The index of the client whose prefix is the longest to contain `ip`.
    pub fn find(&self, ip: IpAddr) -> Option<usize> {
        let ip = ip.to_canonical();
        self.by_len
            .iter()
            .find(|(p, _)| p.contains(ip))
            .map(|&(_, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_parse_and_match() {
        assert_eq!(
            p("127.0.0.1/8").to_string(),
            "127.0.0.0/8",
            "host bits cleared"
        );
        assert_eq!(p("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(p("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(p("::ffff:10.0.0.1/8").to_string(), "10.0.0.0/8");
        for bad in ["", "1.2.3", "1.2.3.4/33", "::/129", "1.2.3.4/x", "host/8"] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
        assert!(p("127.0.0.0/8").contains(ip("127.200.0.1")));
        assert!(!p("127.0.0.0/8").contains(ip("128.0.0.1")));
        assert!(p("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")), "mapped");
        assert!(!p("127.0.0.0/8").contains(ip("::1")));
        assert!(p("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!p("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(p("::/0").contains(ip("2001:db8::1")));
        assert!(p("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!p("2001:db8::/32").contains(ip("2001:db9::1")));
    }

    #[test]
    fn the_longest_prefix_wins() {
        let t = ClientTable::new([p("10.0.0.0/8"), p("10.1.0.0/16"), p("10.1.2.3"), p("::1")]);
        assert_eq!(t.find(ip("10.9.9.9")), Some(0));
        assert_eq!(t.find(ip("10.1.9.9")), Some(1));
        assert_eq!(t.find(ip("10.1.2.3")), Some(2));
        assert_eq!(t.find(ip("::1")), Some(3));
        assert_eq!(t.find(ip("11.0.0.1")), None);
        assert_eq!(ClientTable::default().find(ip("10.0.0.1")), None);
    }

    #[test]
    fn a_secret_never_shows() {
        let s = Secret::new(b"demo-radius-secret");
        assert_eq!(format!("{s:?}"), "Secret(<redacted, 18 bytes>)");
    }

    proptest! {
        /// Longest-prefix lookup agrees with a brute-force scan over every
        /// prefix, for random IPv4 prefixes and addresses.
        #[test]
        fn lookup_is_the_longest_match(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..12),
            probes in proptest::collection::vec(any::<u32>(), 1..32),
        ) {
            let prefixes: Vec<Prefix> = nets
                .iter()
                .map(|&(a, l)| format!("{}/{l}", std::net::Ipv4Addr::from(a)).parse().unwrap())
                .collect();
            let table = ClientTable::new(prefixes.clone());
            for a in probes {
                let a = IpAddr::V4(a.into());
                let best = prefixes
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.contains(a))
                    .max_by(|x, y| x.1.len().cmp(&y.1.len()).then(y.0.cmp(&x.0)))
                    .map(|(i, _)| i);
                prop_assert_eq!(table.find(a), best);
            }
        }
    }
}
