//! RADIUS (RFC 2865) for VPNs and network policy servers, with the
//! BlastRADIUS rules of `docs/radius.md`: the packet codec (`packet`), the
//! client table (`clients`), the reply cache of RFC 5080 (`cache`), the
//! binding of challenge States to their client (`state`), the upstream
//! password server (`upstream`) and the UDP server (`server`).
//!
//! Nothing in this module may log, count or answer a secret, a password, a
//! code or a full destination.

pub mod cache;
pub mod clients;
pub mod packet;
pub mod server;
pub mod state;
pub mod upstream;
