//! The thin layer between the protocol server and the engine: the [`Backend`]
//! trait the server calls for every authenticated challenge op, and the
//! [`OutboxFeed`] it reads DELIVERED pushes from.
//!
//! The engine implements it in `dispatch`; tests may implement it with a fake.
//! A backend's `handle` must be synchronous and non-blocking (it runs on the
//! connection's task), must never panic on any request, and its messages must
//! never contain a code, a key or a full destination.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use watchword_engine::TenantId;

use crate::protocol::{CheckRequest, Delivered, Request, Response, Status};

/// An answer that comes later (a CHECK held on a ringing call).
pub type Later = Pin<Box<dyn Future<Output = Response> + Send + 'static>>;

/// What a backend gives for a request: the answer, or a future of it.
pub enum Reply {
    /// Answered now.
    Now(Response),
    /// Answered when the future completes (the server bounds how many a
    /// connection holds, and answers SHUTTING_DOWN to those still held at
    /// close).
    Later(Later),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Now(r) => f.debug_tuple("Now").field(r).finish(),
            Reply::Later(_) => f.write_str("Later"),
        }
    }
}

/// What one read of an outbox feed gives.
#[derive(Debug)]
pub enum FeedItem {
    /// A message a simulated carrier delivered, for `tenant`.
    Message(TenantId, Delivered),
    /// The subscriber fell behind and this many messages were skipped.
    Lagged(u64),
    /// The feed ended (the engine stopped).
    Closed,
}

/// A subscription to the messages simulated carriers deliver (all tenants;
/// the server filters by tenant).
pub trait OutboxFeed: Send + 'static {
    /// The next item. Must be cancel-safe (it is used in `select!`).
    fn recv(&mut self) -> impl Future<Output = FeedItem> + Send;
}

/// What the protocol server needs from the engine.
pub trait Backend: Clone + Send + Sync + 'static {
    /// The outbox subscription type.
    type Feed: OutboxFeed;

    /// The id of the tenant called `name`, if the engine knows it.
    fn tenant_id(&self, name: &str) -> Option<TenantId>;

    /// Carries out one challenge op (ISSUE, VERIFY, VERIFY_SUBJECT, RESEND,
    /// CANCEL, STATUS) for `tenant` and returns the response. HELLO, PING and
    /// OUTBOX_SUBSCRIBE are the server's own and never reach here.
    fn handle(&self, tenant: TenantId, req: Request) -> Response;

    /// The user-level decision (CHECK): answered now, or later when it is
    /// held on a ringing call. The default answers UNSUPPORTED.
    fn check(&self, tenant: TenantId, req: CheckRequest) -> Reply {
        let _ = (tenant, req);
        Reply::Now(Response::error(
            Status::Unsupported,
            0,
            "this server does not support CHECK",
        ))
    }

    /// A new outbox subscription of `tenant` (which then holds its simulated
    /// handsets), or `None` when no simulated carrier runs.
    fn outbox_subscribe(&self, tenant: TenantId) -> Option<Self::Feed>;

    /// From now on, ISSUE (and RESEND) answer SHUTTING_DOWN.
    fn begin_shutdown(&self);

    /// Waits for queued deliveries to finish, up to `deadline`.
    fn drain(&self, deadline: Duration) -> impl Future<Output = ()> + Send;

    /// Challenges pending now (for the gauge); `None` if unknown.
    fn pending(&self) -> Option<usize> {
        None
    }
}
