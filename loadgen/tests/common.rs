//! Test helpers shared by the integration tests: a tiny RESP server that can
//! stall, and a fast in-process mock of the Watchword target with an outbox.
//!
//! Helpers must never listen on anything but loopback and never outlive the test.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
use watchword_loadgen::resp::{Resp, parse};
use watchword_loadgen::target::{Backend, Delivery, ErrLabel, Issued, Key, OutcomeLabel};

/// A stall window, relative to the first PING the server sees.
#[derive(Clone, Copy)]
pub struct Stall {
    pub after: Duration,
    pub length: Duration,
}

/// Starts a RESP server on 127.0.0.1:0 answering SCRIPT LOAD, PING and
/// EVALSHA; with `stall`, every reply due inside the window waits for its end.
pub async fn resp_server(stall: Option<Stall>) -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let served = Arc::new(AtomicU64::new(0));
    let first: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
    let s2 = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            sock.set_nodelay(true).unwrap();
            let (served, first) = (s2.clone(), first.clone());
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(4096);
                let mut tmp = [0u8; 4096];
                loop {
                    let n = match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&tmp[..n]);
                    let mut pos = 0;
                    let mut out = Vec::new();
                    while let Ok(Some((cmd, np))) = parse(&buf, pos) {
                        pos = np;
                        let Resp::Array(Some(args)) = cmd else { return };
                        let name = match &args[0] {
                            Resp::Bulk(Some(b)) => b.to_ascii_uppercase(),
                            _ => return,
                        };
                        match &name[..] {
                            b"SCRIPT" => out.extend_from_slice(
                                b"$40\r\n0123456789012345678901234567890123456789\r\n",
                            ),
                            b"PING" => {
                                let t0 = *first.get_or_init(Instant::now);
                                if let Some(s) = stall {
                                    let (a, b) = (t0 + s.after, t0 + s.after + s.length);
                                    let now = Instant::now();
                                    if now >= a && now < b {
                                        tokio::time::sleep_until(b.into()).await;
                                    }
                                }
                                out.extend_from_slice(b"+PONG\r\n")
                            }
                            _ => out.extend_from_slice(b":1\r\n"),
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    buf.drain(..pos);
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, served)
}

/// An in-process Watchword stand-in: issue returns an id and sends the code
/// through the outbox after `delay` (except for every `lose_every`-th issue);
/// verify approves the right code once.
pub struct Mock {
    pub delay: Duration,
    pub lose_every: u64,
    pub outbox: Mutex<Option<mpsc::Sender<Delivery>>>,
    pub codes: Arc<parking_lot::Mutex<ahash::AHashMap<Key, String>>>,
    pub issued: AtomicU64,
}

#[derive(Clone)]
pub struct MockConn(Arc<Mock>);

pub struct MockBackend(pub Arc<Mock>);

impl Backend for MockBackend {
    type Conn = MockConn;
    fn describe(&self) -> String {
        "mock://".into()
    }
    async fn connect(&self) -> anyhow::Result<MockConn> {
        Ok(MockConn(self.0.clone()))
    }
    async fn outbox(&self) -> anyhow::Result<Option<mpsc::Receiver<Delivery>>> {
        let (tx, rx) = mpsc::channel(1024);
        *self.0.outbox.lock().await = Some(tx);
        Ok(Some(rx))
    }
    async fn issue(c: &MockConn, n: u64) -> Result<Issued, ErrLabel> {
        let m = &c.0;
        let k = m.issued.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_be_bytes());
        id[8..].copy_from_slice(&k.to_be_bytes());
        let code = format!("{:06}", n % 1_000_000);
        m.codes.lock().insert(id, code.clone());
        if m.lose_every == 0 || k % m.lose_every != m.lose_every - 1 {
            let tx = m.outbox.lock().await.clone();
            let delay = m.delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Some(tx) = tx {
                    let _ = tx.send(Delivery { id, code }).await;
                }
            });
        }
        Ok(Issued { id, code: None })
    }
    async fn verify(c: &MockConn, id: Key, code: &str) -> Result<OutcomeLabel, ErrLabel> {
        let mut m = c.0.codes.lock();
        match m.get(&id) {
            Some(c) if c == code => {
                m.remove(&id);
                Ok("approved")
            }
            Some(_) => Ok("rejected"),
            None => Ok("unknown"),
        }
    }
    async fn resend(_c: &MockConn, _id: Key) -> Result<(), ErrLabel> {
        Ok(())
    }
    async fn ping(_c: &MockConn) -> Result<(), ErrLabel> {
        Ok(())
    }
}
