//! Protocol v1 framing: `len:u32 body[len]`, and the 6-byte header every body
//! starts with (`op:u8 flags|status:u8 req_id:u32`).
//!
//! Parsing is two passes, as in mini-redis: [`check`] says whether a whole
//! frame is buffered (or that the length is out of range), and only then
//! [`take`] splits it off the buffer. "Not enough bytes yet" is the normal
//! [`FrameError::Incomplete`] state, not an error.
//!
//! This module must never trust `len` before comparing it with `max_frame`, and
//! never reserve or allocate memory on the strength of an unchecked length.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the header at the start of every frame body.
pub const HEADER_LEN: usize = 6;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// The default and usual largest accepted body length.
pub const DEFAULT_MAX_FRAME: u32 = 65_536;

/// Why no frame could be taken from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Not enough bytes buffered yet; read more and try again.
    Incomplete,
    /// The length prefix is below [`HEADER_LEN`] or above `max_frame`: the
    /// stream can no longer be trusted.
    BadLength(u32),
}

/// One frame body, split into its header fields and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The op byte (a request op, a response op `| 0x80`, or a push op).
    pub op: u8,
    /// The second header byte: `flags` in a request, `status` in a response.
    pub flags_or_status: u8,
    /// The request id (0 for pushes).
    pub req_id: u32,
    /// Everything after the header.
    pub payload: Bytes,
}

/// Checks whether `buf` starts with one whole frame. Returns the frame's total
/// size (prefix + body) when it does. Reads at most the first four bytes to
/// learn the length; allocates nothing.
pub fn check(buf: &[u8], max_frame: u32) -> Result<usize, FrameError> {
    if buf.len() < LEN_PREFIX {
        return Err(FrameError::Incomplete);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if (len as usize) < HEADER_LEN || len > max_frame {
        return Err(FrameError::BadLength(len));
    }
    let total = LEN_PREFIX + len as usize;
    if buf.len() < total {
        return Err(FrameError::Incomplete);
    }
    Ok(total)
}

/// Checks and, when a whole frame is buffered, splits it off the front of
/// `buf` (no copy: the payload shares the buffer's memory).
pub fn take(buf: &mut BytesMut, max_frame: u32) -> Result<RawFrame, FrameError> {
    let total = check(buf, max_frame)?;
    let mut body = buf.split_to(total).freeze();
    body.advance(LEN_PREFIX);
    let op = body.get_u8();
    let flags_or_status = body.get_u8();
    let req_id = body.get_u32();
    Ok(RawFrame {
        op,
        flags_or_status,
        req_id,
        payload: body,
    })
}

/// Appends the length prefix and header of a frame whose payload the caller
/// appends next; returns the offset to hand to [`finish`] afterwards.
pub fn begin(buf: &mut BytesMut, op: u8, second: u8, req_id: u32) -> usize {
    let start = buf.len();
    buf.put_u32(0);
    buf.put_u8(op);
    buf.put_u8(second);
    buf.put_u32(req_id);
    start
}

/// Writes the real body length into the prefix that [`begin`] left at `start`.
pub fn finish(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start - LEN_PREFIX) as u32;
    buf[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_then_whole() {
        let mut b = BytesMut::new();
        let s = begin(&mut b, 0x02, 0, 7);
        finish(&mut b, s);
        for cut in 0..b.len() {
            assert_eq!(check(&b[..cut], 64), Err(FrameError::Incomplete));
        }
        let f = take(&mut b, 64).unwrap();
        assert_eq!((f.op, f.flags_or_status, f.req_id), (2, 0, 7));
        assert!(f.payload.is_empty());
        assert!(b.is_empty());
    }

    #[test]
    fn lengths_out_of_range() {
        assert_eq!(check(&[0, 0, 0, 5], 64), Err(FrameError::BadLength(5)));
        assert_eq!(check(&[0, 0, 0, 65], 64), Err(FrameError::BadLength(65)));
        assert_eq!(
            check(&[0xff, 0xff, 0xff, 0xff], 64),
            Err(FrameError::BadLength(u32::MAX))
        );
    }
}
