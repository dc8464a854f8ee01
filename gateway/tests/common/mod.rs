//! Shared helpers for the gateway's integration tests: a fake backend, a
//! server on an ephemeral loopback port, and raw-frame socket helpers.
//! Must never sleep to wait for a condition that can be awaited instead.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;
use watchword_engine::{ChallengeId, Channel, TenantId, VerifyOutcome};
use watchword_gateway::backend::{Backend, FeedItem, OutboxFeed};
use watchword_gateway::frame;
use watchword_gateway::protocol::{Delivered, Request, Response, Status};
use watchword_gateway::server::{Role, ServerSettings, Shutdown, TenantAuth, accept_loop};

/// A backend with fixed answers: ISSUE succeeds, VERIFY rejects unless the
/// code is "000000", STATUS answers INTERNAL, the outbox is a broadcast channel.
#[derive(Clone)]
pub struct Fake {
    pub outbox: broadcast::Sender<(TenantId, Delivered)>,
    /// Set by `begin_shutdown`: ISSUE then answers SHUTTING_DOWN.
    pub shutting_down: Arc<AtomicBool>,
    /// `drain` waits until this is notified.
    pub drain_gate: Arc<tokio::sync::Notify>,
}

pub struct FakeFeed(broadcast::Receiver<(TenantId, Delivered)>);

impl OutboxFeed for FakeFeed {
    async fn recv(&mut self) -> FeedItem {
        match self.0.recv().await {
            Ok((t, d)) => FeedItem::Message(t, d),
            Err(broadcast::error::RecvError::Lagged(n)) => FeedItem::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => FeedItem::Closed,
        }
    }
}

impl Backend for Fake {
    type Feed = FakeFeed;
    fn tenant_id(&self, name: &str) -> Option<TenantId> {
        match name {
            "alpha" => Some(TenantId(0)),
            "beta" => Some(TenantId(1)),
            _ => None,
        }
    }
    fn handle(&self, _tenant: TenantId, req: Request) -> Response {
        match req {
            Request::Issue(_) if self.shutting_down.load(Ordering::SeqCst) => {
                Response::error(Status::ShuttingDown, 1000, "draining")
            }
            Request::Issue(_) => Response::Issued {
                id: ChallengeId([9; 16]),
                expires_at_ms: 1,
                masked_destination: "+14*******34".into(),
            },
            Request::Verify { code, .. } => Response::Verified(if code == "000000" {
                VerifyOutcome::Approved
            } else {
                VerifyOutcome::Rejected { attempts_left: 4 }
            }),
            Request::Status { .. } => Response::error(Status::Internal, 0, "fake fault"),
            _ => Response::error(Status::NotFound, 0, "no such challenge"),
        }
    }
    fn outbox_subscribe(&self, _tenant: TenantId) -> Option<FakeFeed> {
        Some(FakeFeed(self.outbox.subscribe()))
    }
    fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
    async fn drain(&self, _deadline: Duration) {
        self.drain_gate.notified().await;
    }
}

pub fn tenants() -> Vec<TenantAuth> {
    vec![
        TenantAuth {
            name: "alpha".into(),
            keys: vec!["alpha-key".into(), "alpha-key-2".into()],
            role: Role::Simulator,
        },
        TenantAuth {
            name: "beta".into(),
            keys: vec!["beta-key".into()],
            role: Role::Client,
        },
    ]
}

pub struct FakeServer {
    pub addr: String,
    pub fake: Fake,
    pub signals: Shutdown,
    pub tracker: TaskTracker,
}

pub async fn fake_server(settings: ServerSettings) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = Fake {
        outbox: broadcast::channel(1024).0,
        shutting_down: Arc::new(AtomicBool::new(false)),
        drain_gate: Arc::new(tokio::sync::Notify::new()),
    };
    let signals = Shutdown::default();
    let tracker = TaskTracker::new();
    let settings = ServerSettings {
        tenants: tenants(),
        ..settings
    };
    tokio::spawn(accept_loop(
        listener,
        settings,
        None,
        fake.clone(),
        signals.clone(),
        tracker.clone(),
    ));
    FakeServer {
        addr,
        fake,
        signals,
        tracker,
    }
}

pub fn hello(tenant: &str, key: &str) -> Request {
    Request::Hello {
        version: 1,
        tenant: tenant.into(),
        key: key.into(),
    }
}

/// A raw request frame with an arbitrary op and payload.
pub fn raw(op: u8, req_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32((6 + payload.len()) as u32);
    b.put_u8(op);
    b.put_u8(0);
    b.put_u32(req_id);
    b.put_slice(payload);
    b.to_vec()
}

pub fn enc(req: &Request, req_id: u32) -> Vec<u8> {
    let mut b = BytesMut::new();
    req.encode(req_id, &mut b);
    b.to_vec()
}

/// Reads one frame: (op, status, req_id, payload). `None` on EOF.
pub async fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    assert!((6..=frame::DEFAULT_MAX_FRAME as usize).contains(&len));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    let req_id = u32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    Some((body[0], body[1], req_id, body[6..].to_vec()))
}

/// Whether the server closed the connection (EOF or reset) with nothing more to read.
pub async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b).await, Ok(0) | Err(_))
}

pub async fn connect_raw(addr: &str) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

pub async fn authed_raw(addr: &str, tenant: &str, key: &str) -> TcpStream {
    let mut s = connect_raw(addr).await;
    s.write_all(&enc(&hello(tenant, key), 1)).await.unwrap();
    let (op, st, id, _) = read_frame(&mut s).await.unwrap();
    assert_eq!((op, st, id), (0x81, 0, 1));
    s
}

/// The message of an error payload.
pub fn message(payload: &[u8]) -> String {
    let n = u16::from_be_bytes([payload[4], payload[5]]) as usize;
    String::from_utf8(payload[6..6 + n].to_vec()).unwrap()
}

pub fn delivered(id: u8, text: &str) -> Delivered {
    Delivered {
        id: ChallengeId([id; 16]),
        channel: Channel::Sms,
        destination: "+14255550100".into(),
        carrier: "sim-a".into(),
        sender: "12345".into(),
        text: text.into(),
    }
}
