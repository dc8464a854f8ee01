//! RADIUS (RFC 2865) for VPNs and network policy servers: the packet codec
//! (`packet`), with the BlastRADIUS rules of `docs/radius.md`.

pub mod packet;
