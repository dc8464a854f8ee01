//! Watchword's gateway: protocol v1 on the network in front of the engine.
//!
//! One file per concern, as in mini-redis: [`frame`] and [`protocol`] (wire
//! format only), [`client`] (the async client library) and [`tls`]. The library
//! holds everything testable; the `watchword` binary only parses flags and
//! calls into it. Nothing in this crate may log, count or return a code, a key
//! or a full destination.

pub mod client;
pub mod frame;
pub mod protocol;
pub mod tls;

pub use client::{
    Client, ClientConfig, ClientError, ClientTls, Delivered, IssueReply, IssueRequest, ResendReply,
    StatusReply, VerifyReply,
};
pub use protocol::{Op, Status};
