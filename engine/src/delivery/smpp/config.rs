//! Settings of an SMPP carrier (`[router.carriers.smpp]`) and their checks.
//!
//! This module only describes and validates: it must never open a connection,
//! and the bind password must never show in Debug output or in an error.

use serde::{Deserialize, Serialize};

/// Longest `system_id` (SMPP 3.4: 16 octets with the NUL).
pub const MAX_SYSTEM_ID: usize = 15;
/// Longest `password` (SMPP 3.4: 9 octets with the NUL).
pub const MAX_PASSWORD: usize = 8;
/// Longest `system_type` (SMPP 3.4: 13 octets with the NUL).
pub const MAX_SYSTEM_TYPE: usize = 12;

/// Settings of an SMPP 3.4 carrier: where its SMSC listens, the bind
/// credentials, how many transceiver binds and their windows, keep-alive,
/// reconnection back-off, and the address and receipt settings of each
/// `submit_sm`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmppConfig {
    /// The SMSC's host name or IP address.
    pub host: String,
    /// The SMSC's port (2775 is SMPP's).
    pub port: u16,
    /// The bind's `system_id` (at most 15 ASCII characters).
    pub system_id: String,
    /// The bind's password (at most 8 ASCII characters); never logged or shown.
    pub password: String,
    /// The bind's `system_type` (at most 12 ASCII characters; often empty).
    pub system_type: String,
    /// Transceiver binds kept open at once (each its own TCP connection).
    pub binds: u32,
    /// `submit_sm` awaiting their `submit_sm_resp` at once, per bind.
    pub window: u32,
    /// `submit_sm` per second per bind (0 = unlimited; SMSCs throttle above
    /// what the contract allows).
    pub throughput_per_bind: u32,
    /// Seconds between `enquire_link`s on each bind (its keep-alive).
    pub enquire_link_s: u64,
    /// First wait before binding again after a lost or refused bind, ms.
    pub reconnect_min_ms: u64,
    /// Longest wait between bind attempts, ms (the wait doubles up to it,
    /// with jitter).
    pub reconnect_max_ms: u64,
    /// TON of numeric senders written without `+` (short codes): 3 is
    /// network specific. Senders written `+digits` go as international
    /// (TON 1, NPI 1) and alphanumeric ones as TON 5 (NPI 0).
    pub source_ton: u8,
    /// NPI of numeric senders written without `+`.
    pub source_npi: u8,
    /// TON of destinations (E.164 numbers: 1, international).
    pub dest_ton: u8,
    /// NPI of destinations (1, ISDN / E.164).
    pub dest_npi: u8,
    /// Ask the SMSC for a delivery receipt (`registered_delivery` 1). Off,
    /// an accepted `submit_sm` counts as delivered.
    pub registered_delivery: bool,
    /// A message id awaiting its receipt is forgotten after this long, ms
    /// (the router's own `receipt_timeout_ms` ends the message as failed).
    pub receipt_timeout_ms: u64,
}

impl Default for SmppConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 2775,
            system_id: String::new(),
            password: String::new(),
            system_type: String::new(),
            binds: 1,
            window: 10,
            throughput_per_bind: 0,
            enquire_link_s: 30,
            reconnect_min_ms: 1_000,
            reconnect_max_ms: 60_000,
            source_ton: 3,
            source_npi: 0,
            dest_ton: 1,
            dest_npi: 1,
            registered_delivery: true,
            receipt_timeout_ms: 120_000,
        }
    }
}

/// Shows no password.
impl std::fmt::Debug for SmppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = if self.password.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("SmppConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("system_id", &self.system_id)
            .field("password", &password)
            .field("system_type", &self.system_type)
            .field("binds", &self.binds)
            .field("window", &self.window)
            .field("throughput_per_bind", &self.throughput_per_bind)
            .field("enquire_link_s", &self.enquire_link_s)
            .field("reconnect_min_ms", &self.reconnect_min_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .field("source_ton", &self.source_ton)
            .field("source_npi", &self.source_npi)
            .field("dest_ton", &self.dest_ton)
            .field("dest_npi", &self.dest_npi)
            .field("registered_delivery", &self.registered_delivery)
            .field("receipt_timeout_ms", &self.receipt_timeout_ms)
            .finish()
    }
}

/// NPI values SMPP 3.4 defines.
const NPIS: [u8; 10] = [0, 1, 3, 4, 6, 8, 9, 10, 14, 18];

fn smpp_text(s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("at most {max} characters, got {}", s.len()));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err("printable ASCII only".into());
    }
    Ok(())
}

impl SmppConfig {
    /// Checks the settings; the error is `field: reason` (the field relative
    /// to this section, e.g. `host: must not be empty`), never quoting the
    /// password.
    pub fn validate(&self) -> Result<(), String> {
        let host = self.host.trim();
        if host.is_empty() {
            return Err("host: must not be empty (the SMSC's host name or IP address)".into());
        }
        if host != self.host || host.contains(char::is_whitespace) || host.contains('/') {
            return Err(format!(
                "host: {:?} is not a host name or IP address (no scheme, path or spaces)",
                self.host
            ));
        }
        if self.port == 0 {
            return Err("port: must be 1..=65535".into());
        }
        if self.system_id.is_empty() {
            return Err("system_id: must not be empty".into());
        }
        smpp_text(&self.system_id, MAX_SYSTEM_ID).map_err(|e| format!("system_id: {e}"))?;
        // Never quotes the password.
        if self.password.len() > MAX_PASSWORD {
            return Err(format!(
                "password: at most {MAX_PASSWORD} characters (SMPP 3.4), got {}",
                self.password.len()
            ));
        }
        if !self.password.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("password: printable ASCII without spaces only".into());
        }
        smpp_text(&self.system_type, MAX_SYSTEM_TYPE).map_err(|e| format!("system_type: {e}"))?;
        if !(1..=64).contains(&self.binds) {
            return Err(format!("binds: must be 1..=64, got {}", self.binds));
        }
        if !(1..=1_000).contains(&self.window) {
            return Err(format!("window: must be 1..=1000, got {}", self.window));
        }
        if !(1..=3_600).contains(&self.enquire_link_s) {
            return Err(format!(
                "enquire_link_s: must be 1..=3600, got {}",
                self.enquire_link_s
            ));
        }
        if self.reconnect_min_ms == 0 {
            return Err("reconnect_min_ms: must be positive".into());
        }
        if self.reconnect_max_ms < self.reconnect_min_ms || self.reconnect_max_ms > 3_600_000 {
            return Err(format!(
                "reconnect_max_ms: must be reconnect_min_ms ({})..=3600000, got {}",
                self.reconnect_min_ms, self.reconnect_max_ms
            ));
        }
        for (n, ton) in [("source_ton", self.source_ton), ("dest_ton", self.dest_ton)] {
            if ton > 6 {
                return Err(format!("{n}: must be 0..=6 (SMPP 3.4 TON), got {ton}"));
            }
        }
        for (n, npi) in [("source_npi", self.source_npi), ("dest_npi", self.dest_npi)] {
            if !NPIS.contains(&npi) {
                return Err(format!(
                    "{n}: {npi} is no SMPP 3.4 NPI (0, 1, 3, 4, 6, 8, 9, 10, 14 or 18)"
                ));
            }
        }
        if self.receipt_timeout_ms == 0 || self.receipt_timeout_ms > 7 * 86_400_000 {
            return Err("receipt_timeout_ms: must be 1..=604800000 (7 days)".into());
        }
        Ok(())
    }

    /// Every bind's window together: the most `submit_sm` awaiting an answer.
    pub fn total_window(&self) -> usize {
        (self.binds as usize).saturating_mul(self.window as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> SmppConfig {
        SmppConfig {
            host: "smsc.example".into(),
            system_id: "watchword".into(),
            password: "s3cret".into(),
            ..SmppConfig::default()
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let d = format!("{:?}", ok());
        assert!(!d.contains("s3cret") && d.contains("<redacted>"), "{d}");
        assert!(d.contains("smsc.example") && d.contains("watchword"), "{d}");
    }

    #[test]
    fn each_mistake_names_its_field_and_never_the_password() {
        assert_eq!(ok().validate(), Ok(()));
        type Change = fn(&mut SmppConfig);
        let cases: Vec<(Change, &str)> = vec![
            (|c| c.host.clear(), "host:"),
            (|c| c.host = "smpp://smsc.example".into(), "host:"),
            (|c| c.port = 0, "port:"),
            (|c| c.system_id.clear(), "system_id:"),
            (
                |c| c.system_id = "a-system-id-too-long".into(),
                "system_id:",
            ),
            (|c| c.password = "much-too-long-s3cret".into(), "password:"),
            (|c| c.password = "s3 cret".into(), "password:"),
            (|c| c.system_type = "ünïcode".into(), "system_type:"),
            (|c| c.binds = 0, "binds:"),
            (|c| c.window = 0, "window:"),
            (|c| c.enquire_link_s = 0, "enquire_link_s:"),
            (|c| c.reconnect_min_ms = 0, "reconnect_min_ms:"),
            (|c| c.reconnect_max_ms = 10, "reconnect_max_ms:"),
            (|c| c.source_ton = 7, "source_ton:"),
            (|c| c.dest_npi = 2, "dest_npi:"),
            (|c| c.receipt_timeout_ms = 0, "receipt_timeout_ms:"),
        ];
        for (change, field) in cases {
            let mut c = ok();
            change(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(field), "want {field}, got {e}");
            assert!(!e.contains("s3cret") && !e.contains("s3 cret"), "{e}");
        }
    }
}
