//! The engine behind the protocol: [`Backend`] for [`Engine`], mapping each
//! decoded request to one engine call and each [`EngineError`] to its protocol
//! status; and the engine's outbox as an [`OutboxFeed`].
//!
//! This module must never put a code or a full destination in a response
//! message, and never block (every engine call here is synchronous and
//! non-blocking).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use watchword_engine::calls::SubscriberGuard;
use watchword_engine::delivery::OutboxMessage;
use watchword_engine::directory::DirectoryError;
use watchword_engine::{
    CheckRequest, CheckResult, CheckStep, Engine, EngineError, IssueParams, TenantId,
};

use crate::backend::{Backend, FeedItem, OutboxFeed, Reply};
use crate::protocol::{
    CheckReply, CheckRequest as ProtoCheck, Delivered, Request, Response, Status, StatusReply,
};

/// The engine's outbox broadcast as a feed, and the guard that counts its
/// tenant as holding the simulated handsets while it lives.
#[derive(Debug)]
pub struct EngineFeed {
    rx: broadcast::Receiver<Arc<OutboxMessage>>,
    _holds_handsets: SubscriberGuard,
}

impl OutboxFeed for EngineFeed {
    async fn recv(&mut self) -> FeedItem {
        match self.rx.recv().await {
            Ok(m) => FeedItem::Message(
                m.tenant,
                Delivered {
                    id: m.id,
                    channel: m.channel,
                    destination: m.destination.clone(),
                    carrier: m.carrier.clone(),
                    sender: m.sender.clone(),
                    text: m.text.clone(),
                },
            ),
            Err(broadcast::error::RecvError::Lagged(n)) => FeedItem::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => FeedItem::Closed,
        }
    }
}

/// The protocol status and answer for an engine error.
pub fn error_response(e: EngineError) -> Response {
    match e {
        EngineError::InvalidArgument(m) => Response::error(Status::InvalidArgument, 0, m),
        EngineError::RateLimited {
            retry_after_ms,
            message,
        } => Response::error(Status::RateLimited, retry_after_ms, message),
        EngineError::Capacity {
            retry_after_ms,
            message,
        } => Response::error(Status::Capacity, retry_after_ms, message),
        EngineError::NoRoute(m) => Response::error(Status::NoRoute, 0, m),
        EngineError::NotFound => Response::error(Status::NotFound, 0, "no such challenge"),
        EngineError::ShuttingDown => Response::error(
            Status::ShuttingDown,
            1000,
            "the server is shutting down; retry on another node",
        ),
        EngineError::Internal(m) => {
            tracing::error!(message = %m, "engine fault");
            Response::error(Status::Internal, 0, "internal error; see the server log")
        }
        EngineError::Directory(d) => match d {
            DirectoryError::NotFound(m) => Response::error(Status::NotFound, 0, m),
            DirectoryError::InvalidArgument(m) | DirectoryError::Conflict(m) => {
                Response::error(Status::InvalidArgument, 0, m)
            }
            DirectoryError::Unavailable {
                retry_after_ms,
                message,
            } => Response::error(Status::Capacity, retry_after_ms, message),
        },
    }
}

/// The protocol's CHECK answer for a decision.
pub fn check_reply(r: CheckResult) -> CheckReply {
    match r {
        CheckResult::Accept => CheckReply {
            result: 0,
            reason: 0,
            attempts_left: 0,
            state: String::new(),
            method: 0,
            masked_destination: String::new(),
            expires_at_ms: 0,
            message: String::new(),
        },
        CheckResult::Reject {
            reason,
            attempts_left,
            state,
        } => CheckReply {
            result: 1,
            reason: reason.wire(),
            attempts_left,
            state,
            method: 0,
            masked_destination: String::new(),
            expires_at_ms: 0,
            message: String::new(),
        },
        CheckResult::Challenge(c) => CheckReply {
            result: 2,
            reason: 0,
            attempts_left: 0,
            state: c.state,
            method: c.method.wire(),
            masked_destination: c.masked_destination,
            expires_at_ms: c.expires_at_ms,
            message: c.message,
        },
    }
}

impl Backend for Engine {
    type Feed = EngineFeed;

    fn tenant_id(&self, name: &str) -> Option<TenantId> {
        Engine::tenant_id(self, name)
    }

    fn handle(&self, tenant: TenantId, req: Request) -> Response {
        match req {
            Request::Issue(i) => {
                let params = IssueParams {
                    subject: &i.subject,
                    channel: i.channel,
                    destination: &i.destination,
                    code_len: i.code_len,
                    ttl_s: i.ttl_s,
                    locale: &i.locale,
                    client_ip: &i.client_ip,
                };
                match self.issue(tenant, &params) {
                    Ok(x) => Response::Issued {
                        id: x.id,
                        expires_at_ms: x.expires_at_ms,
                        masked_destination: x.masked_destination.as_str().to_owned(),
                    },
                    Err(e) => error_response(e),
                }
            }
            Request::Verify { id, code } => match self.verify(tenant, id, code.as_bytes()) {
                Ok(o) => Response::Verified(o),
                Err(e) => error_response(e),
            },
            Request::VerifySubject { subject, code } => {
                match self.verify_subject(tenant, &subject, code.as_bytes()) {
                    Ok(o) => Response::Verified(o),
                    Err(e) => error_response(e),
                }
            }
            Request::Resend { id } => match self.resend(tenant, id) {
                Ok(r) => Response::Resent {
                    sends_left: r.sends_left,
                    expires_at_ms: r.expires_at_ms,
                },
                Err(e) => error_response(e),
            },
            Request::Cancel { id } => match self.cancel(tenant, id) {
                Ok(()) => Response::Empty,
                Err(e) => error_response(e),
            },
            Request::Status { id } => match self.status(tenant, id) {
                Ok(s) => Response::Status(StatusReply {
                    state: s.state,
                    attempts_left: s.attempts_left,
                    delivery: s.delivery,
                    carrier: s.carrier,
                    expires_at_ms: s.expires_at_ms,
                }),
                Err(e) => error_response(e),
            },
            Request::CallAnswer { id, digits } => match self.call_answer(tenant, id, &digits) {
                Ok(()) => Response::Empty,
                Err(e) => error_response(e),
            },
            Request::Check(c) => match Backend::check(self, tenant, c) {
                Reply::Now(r) => r,
                Reply::Later(_) => Response::error(
                    Status::Internal,
                    0,
                    "a held CHECK reached the synchronous dispatcher",
                ),
            },
            Request::Hello { .. } | Request::Ping | Request::OutboxSubscribe => Response::error(
                Status::Internal,
                0,
                "session op reached the engine dispatcher",
            ),
        }
    }

    fn check(&self, tenant: TenantId, req: ProtoCheck) -> Reply {
        let r = CheckRequest {
            subject: &req.subject,
            answer: &req.answer,
            state: &req.state,
            client_ip: &req.client_ip,
        };
        match Engine::check(self, tenant, &r) {
            Ok(CheckStep::Done(result)) => Reply::Now(Response::Checked(check_reply(result))),
            Ok(held) => Reply::Later(Box::pin(async move {
                Response::Checked(check_reply(held.finish().await))
            })),
            Err(e) => Reply::Now(error_response(e)),
        }
    }

    fn outbox_subscribe(&self, tenant: TenantId) -> Option<EngineFeed> {
        Engine::outbox_subscribe(self, tenant).map(|(rx, guard)| EngineFeed {
            rx,
            _holds_handsets: guard,
        })
    }

    fn begin_shutdown(&self) {
        Engine::begin_shutdown(self);
    }

    async fn drain(&self, deadline: Duration) {
        Engine::drain(self, deadline).await;
    }

    fn pending(&self) -> Option<usize> {
        Some(self.table().pending())
    }
}
