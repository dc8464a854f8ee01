//! Buffered reading and writing of protocol v1 frames on one stream (plain TCP
//! or TLS).
//!
//! The read buffer is a field of [`Connection`], so a `select!` that cancels
//! [`Connection::read_more`] loses no bytes. Responses are appended to the
//! write buffer and go out in one `write_all` per batch. This module must never
//! grow the read buffer past one frame of `max_frame` plus one read chunk: it
//! only reads when no whole frame is buffered.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{self, FrameError, RawFrame};

/// Bytes reserved for each read.
const READ_CHUNK: usize = 16 * 1024;

/// A framed stream with its read and write buffers.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_frame: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a stream; frames longer than `max_frame` are framing errors.
    pub fn new(stream: S, max_frame: u32) -> Self {
        Self {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            max_frame,
        }
    }

    /// The next whole buffered frame, `Ok(None)` if more bytes are needed, or
    /// the framing error. Allocates nothing.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, FrameError> {
        match frame::take(&mut self.rbuf, self.max_frame) {
            Ok(f) => Ok(Some(f)),
            Err(FrameError::Incomplete) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads more bytes into the read buffer; `Ok(0)` means the peer closed.
    /// Cancel-safe.
    pub async fn read_more(&mut self) -> std::io::Result<usize> {
        self.rbuf.reserve(READ_CHUNK);
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// Bytes buffered but not yet parsed.
    pub fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// The write buffer, to encode responses and pushes into.
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Writes everything buffered for the peer, in one `write_all`.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Flushes and shuts the write side down.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
