//! A small RESP2 client for redis-server over one tokio `TcpStream`, with
//! exact pipelining control: each caller has at most one command in flight, so
//! the number of concurrent callers on a connection *is* its pipeline depth.
//!
//! One I/O task owns the socket; callers hand it `(command, reply slot)` pairs
//! through a bounded channel and replies are matched in FIFO order, as Redis
//! answers in order. This module must never buffer without bound (the command
//! channel is bounded and so is the number of callers) and never trust a length
//! from the wire without checking it against [`MAX_BULK`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// The largest bulk string or array accepted from the server.
pub const MAX_BULK: usize = 16 * 1024 * 1024;

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n\r\n...` (`None` for `$-1`)
    Bulk(Option<Bytes>),
    /// `*n\r\n...` (`None` for `*-1`)
    Array(Option<Vec<Resp>>),
}

/// Why a command got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// The connection is gone (closed by the peer, or an I/O error).
    #[error("connection closed")]
    Closed,
    /// The server sent bytes that are not RESP2.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    b.put_u8(b'*');
    b.put_slice(args.len().to_string().as_bytes());
    b.put_slice(b"\r\n");
    for a in args {
        b.put_u8(b'$');
        b.put_slice(a.len().to_string().as_bytes());
        b.put_slice(b"\r\n");
        b.put_slice(a);
        b.put_slice(b"\r\n");
    }
    b.freeze()
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn parse_int(b: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RespError::Protocol("bad integer".into()))
}

/// Parses one reply starting at `pos`; `Ok(None)` when it is not all buffered.
/// Returns the reply and the position just after it.
pub fn parse(buf: &[u8], pos: usize) -> Result<Option<(Resp, usize)>, RespError> {
    let Some(&tag) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(eol) = find_crlf(buf, pos + 1) else {
        return Ok(None);
    };
    let line = &buf[pos + 1..eol];
    let next = eol + 2;
    match tag {
        b'+' => Ok(Some((
            Resp::Simple(String::from_utf8_lossy(line).into_owned()),
            next,
        ))),
        b'-' => Ok(Some((
            Resp::Error(String::from_utf8_lossy(line).into_owned()),
            next,
        ))),
        b':' => Ok(Some((Resp::Int(parse_int(line)?), next))),
        b'$' => {
            let n = parse_int(line)?;
            if n < 0 {
                return Ok(Some((Resp::Bulk(None), next)));
            }
            let n = n as usize;
            if n > MAX_BULK {
                return Err(RespError::Protocol("bulk too large".into()));
            }
            if buf.len() < next + n + 2 {
                return Ok(None);
            }
            let data = Bytes::copy_from_slice(&buf[next..next + n]);
            Ok(Some((Resp::Bulk(Some(data)), next + n + 2)))
        }
        b'*' => {
            let n = parse_int(line)?;
            if n < 0 {
                return Ok(Some((Resp::Array(None), next)));
            }
            if n as usize > MAX_BULK {
                return Err(RespError::Protocol("array too large".into()));
            }
            let mut items = Vec::with_capacity((n as usize).min(64));
            let mut p = next;
            for _ in 0..n {
                match parse(buf, p)? {
                    Some((r, np)) => {
                        items.push(r);
                        p = np;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Resp::Array(Some(items)), p)))
        }
        _ => Err(RespError::Protocol(format!("unexpected byte {tag:#x}"))),
    }
}

type Slot = oneshot::Sender<Result<Resp, RespError>>;

/// A pipelined RESP connection; cheap to clone, every clone shares the socket.
#[derive(Clone, Debug)]
pub struct RespConn {
    tx: mpsc::Sender<(Bytes, Slot)>,
}

impl RespConn {
    /// Connects to `addr` (`host:port`) and starts the I/O task.
    pub async fn connect(addr: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(io_task(stream, rx));
        Ok(Self { tx })
    }

    /// Sends one command and waits for its reply.
    pub async fn call(&self, args: &[&[u8]]) -> Result<Resp, RespError> {
        let (stx, srx) = oneshot::channel();
        self.tx
            .send((encode(args), stx))
            .await
            .map_err(|_| RespError::Closed)?;
        srx.await.map_err(|_| RespError::Closed)?
    }
}

async fn io_task(stream: TcpStream, mut rx: mpsc::Receiver<(Bytes, Slot)>) {
    let (mut rd, mut wr) = stream.into_split();
    let mut pending: VecDeque<Slot> = VecDeque::new();
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let fail = |pending: &mut VecDeque<Slot>, e: RespError| {
        for s in pending.drain(..) {
            let _ = s.send(Err(e.clone()));
        }
    };
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some((bytes, slot)) = cmd else { break };
                wbuf.put_slice(&bytes);
                pending.push_back(slot);
                // Coalesce whatever else is already queued into one write.
                while let Ok((bytes, slot)) = rx.try_recv() {
                    wbuf.put_slice(&bytes);
                    pending.push_back(slot);
                }
                if wr.write_all(&wbuf).await.is_err() {
                    fail(&mut pending, RespError::Closed);
                    break;
                }
                wbuf.clear();
            }
            n = rd.read_buf(&mut rbuf), if !pending.is_empty() => {
                match n {
                    Ok(0) | Err(_) => { fail(&mut pending, RespError::Closed); break; }
                    Ok(_) => {}
                }
                let mut pos = 0;
                loop {
                    match parse(&rbuf, pos) {
                        Ok(Some((r, np))) => {
                            pos = np;
                            match pending.pop_front() {
                                Some(s) => { let _ = s.send(Ok(r)); }
                                None => { return; }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => { fail(&mut pending, e); return; }
                    }
                }
                rbuf.advance(pos);
            }
        }
    }
    // Callers still queued in the channel see `Closed` when it drops.
    fail(&mut pending, RespError::Closed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_waits_for_more() {
        let b = b"+PONG\r\n:1\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:-1\r\n-ERR x\r\n";
        let (r, p) = parse(b, 0).unwrap().unwrap();
        assert_eq!(r, Resp::Simple("PONG".into()));
        let (r, p) = parse(b, p).unwrap().unwrap();
        assert_eq!(r, Resp::Int(1));
        let (r, p) = parse(b, p).unwrap().unwrap();
        assert_eq!(r, Resp::Bulk(Some(Bytes::from_static(b"abc"))));
        let (r, p) = parse(b, p).unwrap().unwrap();
        assert_eq!(r, Resp::Bulk(None));
        let (r, p) = parse(b, p).unwrap().unwrap();
        assert_eq!(
            r,
            Resp::Array(Some(vec![Resp::Int(-1), Resp::Error("ERR x".into())]))
        );
        assert_eq!(p, b.len());
        assert_eq!(parse(b"$3\r\nab", 0).unwrap(), None);
        assert_eq!(parse(b"*2\r\n:1\r\n", 0).unwrap(), None);
        assert!(parse(b"$999999999999\r\n", 0).is_err());
    }

    #[test]
    fn encodes_bulk_arrays() {
        assert_eq!(&encode(&[b"PING"])[..], b"*1\r\n$4\r\nPING\r\n");
    }
}
