//! Watchword's gateway: protocol v1 on the network in front of the engine.
//!
//! One file per concern, as in mini-redis: [`frame`] and [`protocol`] (wire
//! format only), [`connection`] (buffered frames on a stream), [`server`]
//! (accept loop and per-connection handler), [`backend`] (the thin layer to
//! the engine), [`metrics`], [`tls`] and [`client`] (the async client
//! library). The library holds everything testable; the `watchword` binary
//! only parses flags and calls into it. Nothing in this crate may log, count
//! or return a code, a key or a full destination.

pub mod app;
pub mod audit;
pub mod backend;
pub mod cli;
pub mod client;
pub mod config;
pub mod connection;
pub mod dispatch;
pub mod frame;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod radius;
pub mod server;
pub mod snapshot;
pub mod tls;

pub use client::{
    Client, ClientConfig, ClientError, ClientTls, Delivered, IssueReply, IssueRequest, ResendReply,
    StatusReply, VerifyReply,
};
pub use protocol::{CheckReply, Op, Status};
