//! Protocol v1 messages: op and status codes, and the typed requests,
//! responses and pushes with their payload encodings (see `docs/protocol.md`).
//!
//! Wire format only: nothing here talks to the engine or to a socket. Decoding
//! never panics on any input and never allocates more than the payload it was
//! given (which the framing layer already bounded by `max_frame`). Every
//! malformed payload becomes a [`DecodeError`] whose message says what was
//! wrong; that message must never echo a code, a key or a destination.

use bytes::{BufMut, BytesMut};
use watchword_engine::{ChallengeId, ChallengeState, Channel, DeliveryState, VerifyOutcome};

use crate::frame;

/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// The longest `str` field a server accepts in a request, bytes.
pub const MAX_STR: usize = 1024;
/// Response ops are the request op with this bit set.
pub const RESPONSE_BIT: u8 = 0x80;
/// Push ops are at or above this value.
pub const PUSH_MIN: u8 = 0xC0;
/// The DELIVERED push op.
pub const PUSH_DELIVERED: u8 = 0xC1;

/// A request op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// 0x01: authenticate; must come first.
    Hello = 0x01,
    /// 0x02: liveness.
    Ping = 0x02,
    /// 0x10: create a challenge.
    Issue = 0x10,
    /// 0x11: check a code by challenge id.
    Verify = 0x11,
    /// 0x12: check a code against a subject's newest challenge.
    VerifySubject = 0x12,
    /// 0x13: send the same code again.
    Resend = 0x13,
    /// 0x14: end a challenge.
    Cancel = 0x14,
    /// 0x15: where a challenge stands.
    Status = 0x15,
    /// 0x20: the user-level decision (accept, reject or challenge).
    Check = 0x20,
    /// 0x30: receive DELIVERED pushes (simulator tenants only).
    OutboxSubscribe = 0x30,
    /// 0x32: a simulated handset answers a confirmation call (simulator only).
    CallAnswer = 0x32,
}

impl Op {
    /// Every op, in wire order.
    pub const ALL: [Op; 11] = [
        Op::Hello,
        Op::Ping,
        Op::Issue,
        Op::Verify,
        Op::VerifySubject,
        Op::Resend,
        Op::Cancel,
        Op::Status,
        Op::Check,
        Op::OutboxSubscribe,
        Op::CallAnswer,
    ];

    /// The op for a wire value, or `None` for an unknown op.
    pub fn from_u8(v: u8) -> Option<Op> {
        Op::ALL.into_iter().find(|op| *op as u8 == v)
    }

    /// The wire value.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Lower-case name, for metrics labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Ping => "ping",
            Op::Issue => "issue",
            Op::Verify => "verify",
            Op::VerifySubject => "verify_subject",
            Op::Resend => "resend",
            Op::Cancel => "cancel",
            Op::Status => "status",
            Op::Check => "check",
            Op::OutboxSubscribe => "outbox_subscribe",
            Op::CallAnswer => "call_answer",
        }
    }
}

/// A response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 0x00: success.
    Ok = 0x00,
    /// 0x01: malformed frame or payload.
    BadFrame = 0x01,
    /// 0x02: unknown op or protocol version.
    Unsupported = 0x02,
    /// 0x03: no successful HELLO yet, or wrong tenant/key.
    Unauthenticated = 0x03,
    /// 0x04: the tenant's role does not allow this op.
    Forbidden = 0x04,
    /// 0x05: a field's value is not acceptable.
    InvalidArgument = 0x05,
    /// 0x06: a rate limit was hit.
    RateLimited = 0x06,
    /// 0x07: the challenge table (or delivery queue) is full.
    Capacity = 0x07,
    /// 0x08: no carrier can serve this channel and destination.
    NoRoute = 0x08,
    /// 0x09: no such challenge for this tenant.
    NotFound = 0x09,
    /// 0x0A: the server is draining.
    ShuttingDown = 0x0A,
    /// 0x0B: a bug or unexpected fault.
    Internal = 0x0B,
}

impl Status {
    /// Every status, in wire order.
    pub const ALL: [Status; 12] = [
        Status::Ok,
        Status::BadFrame,
        Status::Unsupported,
        Status::Unauthenticated,
        Status::Forbidden,
        Status::InvalidArgument,
        Status::RateLimited,
        Status::Capacity,
        Status::NoRoute,
        Status::NotFound,
        Status::ShuttingDown,
        Status::Internal,
    ];

    /// The status for a wire value, or `None`.
    pub fn from_u8(v: u8) -> Option<Status> {
        Status::ALL.get(usize::from(v)).copied()
    }

    /// The wire value.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Upper-case name as in the specification.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadFrame => "BAD_FRAME",
            Status::Unsupported => "UNSUPPORTED",
            Status::Unauthenticated => "UNAUTHENTICATED",
            Status::Forbidden => "FORBIDDEN",
            Status::InvalidArgument => "INVALID_ARGUMENT",
            Status::RateLimited => "RATE_LIMITED",
            Status::Capacity => "CAPACITY",
            Status::NoRoute => "NO_ROUTE",
            Status::NotFound => "NOT_FOUND",
            Status::ShuttingDown => "SHUTTING_DOWN",
            Status::Internal => "INTERNAL",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An ISSUE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// The upstream system's user id (1..=256 bytes).
    pub subject: String,
    /// How to deliver the code.
    pub channel: Channel,
    /// Phone number or e-mail address, in any common notation.
    pub destination: String,
    /// 0 for the tenant default, else 4..=12.
    pub code_len: u8,
    /// 0 for the tenant default, else 30..=3600.
    pub ttl_s: u16,
    /// BCP 47 tag for the message text; may be empty.
    pub locale: String,
    /// The end user's address as seen upstream; may be empty.
    pub client_ip: String,
}

/// A decoded request. Its `Debug` output redacts keys and codes.
#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    /// HELLO.
    Hello {
        /// Protocol version the client speaks.
        version: u16,
        /// Tenant name.
        tenant: String,
        /// Tenant key (never log it).
        key: String,
    },
    /// PING.
    Ping,
    /// ISSUE.
    Issue(IssueRequest),
    /// VERIFY.
    Verify {
        /// The challenge.
        id: ChallengeId,
        /// The code the user typed (never log it).
        code: String,
    },
    /// VERIFY_SUBJECT.
    VerifySubject {
        /// The upstream user id.
        subject: String,
        /// The code the user typed (never log it).
        code: String,
    },
    /// RESEND.
    Resend {
        /// The challenge.
        id: ChallengeId,
    },
    /// CANCEL.
    Cancel {
        /// The challenge.
        id: ChallengeId,
    },
    /// STATUS.
    Status {
        /// The challenge.
        id: ChallengeId,
    },
    /// OUTBOX_SUBSCRIBE.
    OutboxSubscribe,
    /// CHECK.
    Check(CheckRequest),
    /// CALL_ANSWER.
    CallAnswer {
        /// The call's challenge.
        id: ChallengeId,
        /// The keys pressed (may hold a PIN: never log them).
        digits: String,
    },
}

/// The fields of a CHECK. Its `Debug` output redacts the answer.
#[derive(Clone, PartialEq, Eq)]
pub struct CheckRequest {
    /// The upstream user id.
    pub subject: String,
    /// What the person typed (a code, PIN+code, a method keyword, or empty).
    pub answer: String,
    /// Empty, or the state of an earlier CHALLENGE.
    pub state: String,
    /// The end user's address, for the audit trail.
    pub client_ip: String,
}

impl std::fmt::Debug for CheckRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckRequest")
            .field("subject", &self.subject)
            .field("answer", &"<redacted>")
            .field("state", &self.state)
            .field("client_ip", &self.client_ip)
            .finish()
    }
}

/// The OK payload of CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReply {
    /// 0 ACCEPT, 1 REJECT, 2 CHALLENGE.
    pub result: u8,
    /// For REJECT: 1 wrong answer, 2 locked, 3 expired, 4 unknown or disabled
    /// user, 5 no usable method, 6 call not confirmed, 7 state unknown.
    pub reason: u8,
    /// Wrong answers still allowed.
    pub attempts_left: u8,
    /// The state to send back (CHALLENGE, or REJECT of a wrong answer).
    pub state: String,
    /// 1 sms, 2 voice, 3 email, 4 token, 5 call (CHALLENGE), else 0.
    pub method: u8,
    /// Where the code went, masked.
    pub masked_destination: String,
    /// The challenge's expiry, Unix ms (CHALLENGE), else 0.
    pub expires_at_ms: u64,
    /// What to tell the person.
    pub message: String,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Hello {
                version, tenant, ..
            } => f
                .debug_struct("Hello")
                .field("version", version)
                .field("tenant", tenant)
                .field("key", &"<redacted>")
                .finish(),
            Request::Issue(i) => f.debug_tuple("Issue").field(i).finish(),
            Request::Verify { id, .. } => f
                .debug_struct("Verify")
                .field("id", id)
                .field("code", &"<redacted>")
                .finish(),
            Request::VerifySubject { subject, .. } => f
                .debug_struct("VerifySubject")
                .field("subject", subject)
                .field("code", &"<redacted>")
                .finish(),
            Request::Resend { id } => f.debug_struct("Resend").field("id", id).finish(),
            Request::Cancel { id } => f.debug_struct("Cancel").field("id", id).finish(),
            Request::Status { id } => f.debug_struct("Status").field("id", id).finish(),
            Request::Ping => f.write_str("Ping"),
            Request::OutboxSubscribe => f.write_str("OutboxSubscribe"),
            Request::Check(c) => f.debug_tuple("Check").field(c).finish(),
            Request::CallAnswer { id, .. } => f
                .debug_struct("CallAnswer")
                .field("id", id)
                .field("digits", &"<redacted>")
                .finish(),
        }
    }
}

impl Request {
    /// The op of this request.
    pub fn op(&self) -> Op {
        match self {
            Request::Hello { .. } => Op::Hello,
            Request::Ping => Op::Ping,
            Request::Issue(_) => Op::Issue,
            Request::Verify { .. } => Op::Verify,
            Request::VerifySubject { .. } => Op::VerifySubject,
            Request::Resend { .. } => Op::Resend,
            Request::Cancel { .. } => Op::Cancel,
            Request::Status { .. } => Op::Status,
            Request::OutboxSubscribe => Op::OutboxSubscribe,
            Request::Check(_) => Op::Check,
            Request::CallAnswer { .. } => Op::CallAnswer,
        }
    }

    /// Decodes a request payload for `op` (server side: `str` fields limited
    /// to [`MAX_STR`] bytes). The error carries the status to answer with:
    /// UNSUPPORTED for an unknown op, INVALID_ARGUMENT for an unknown channel,
    /// BAD_FRAME for everything malformed.
    pub fn decode(op: u8, payload: &[u8]) -> Result<Request, DecodeError> {
        let op = Op::from_u8(op).ok_or_else(|| DecodeError {
            status: Status::Unsupported,
            message: format!("unknown op 0x{op:02x}"),
        })?;
        let mut r = Reader::new(payload, MAX_STR);
        let req = match op {
            Op::Hello => Request::Hello {
                version: r.u16("version")?,
                tenant: r.str("tenant")?,
                key: r.str("key")?,
            },
            Op::Ping => Request::Ping,
            Op::Issue => {
                let subject = r.str("subject")?;
                let channel_raw = r.u8("channel")?;
                let destination = r.str("destination")?;
                let code_len = r.u8("code_len")?;
                let ttl_s = r.u16("ttl_s")?;
                let locale = r.str("locale")?;
                let client_ip = r.str("client_ip")?;
                r.end()?;
                let channel = Channel::from_wire(channel_raw).ok_or_else(|| DecodeError {
                    status: Status::InvalidArgument,
                    message: format!(
                        "channel: {channel_raw} is not a channel (1 sms, 2 voice, 3 email)"
                    ),
                })?;
                Request::Issue(IssueRequest {
                    subject,
                    channel,
                    destination,
                    code_len,
                    ttl_s,
                    locale,
                    client_ip,
                })
            }
            Op::Verify => Request::Verify {
                id: r.id("id")?,
                code: r.str("code")?,
            },
            Op::VerifySubject => Request::VerifySubject {
                subject: r.str("subject")?,
                code: r.str("code")?,
            },
            Op::Resend => Request::Resend { id: r.id("id")? },
            Op::Cancel => Request::Cancel { id: r.id("id")? },
            Op::Status => Request::Status { id: r.id("id")? },
            Op::OutboxSubscribe => Request::OutboxSubscribe,
            Op::Check => Request::Check(CheckRequest {
                subject: r.str("subject")?,
                answer: r.str("answer")?,
                state: r.str("state")?,
                client_ip: r.str("client_ip")?,
            }),
            Op::CallAnswer => Request::CallAnswer {
                id: r.id("id")?,
                digits: r.str("digits")?,
            },
        };
        r.end()?;
        Ok(req)
    }

    /// Appends this request as one whole frame (client side).
    pub fn encode(&self, req_id: u32, buf: &mut BytesMut) {
        let start = frame::begin(buf, self.op().code(), 0, req_id);
        match self {
            Request::Hello {
                version,
                tenant,
                key,
            } => {
                buf.put_u16(*version);
                put_str(buf, tenant);
                put_str(buf, key);
            }
            Request::Ping | Request::OutboxSubscribe => {}
            Request::Issue(i) => {
                put_str(buf, &i.subject);
                buf.put_u8(i.channel.wire());
                put_str(buf, &i.destination);
                buf.put_u8(i.code_len);
                buf.put_u16(i.ttl_s);
                put_str(buf, &i.locale);
                put_str(buf, &i.client_ip);
            }
            Request::Verify { id, code } => {
                buf.put_slice(&id.0);
                put_str(buf, code);
            }
            Request::VerifySubject { subject, code } => {
                put_str(buf, subject);
                put_str(buf, code);
            }
            Request::Resend { id } | Request::Cancel { id } | Request::Status { id } => {
                buf.put_slice(&id.0);
            }
            Request::Check(c) => {
                put_str(buf, &c.subject);
                put_str(buf, &c.answer);
                put_str(buf, &c.state);
                put_str(buf, &c.client_ip);
            }
            Request::CallAnswer { id, digits } => {
                buf.put_slice(&id.0);
                put_str(buf, digits);
            }
        }
        frame::finish(buf, start);
    }
}

/// A payload that could not be decoded, with the status to answer it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// BAD_FRAME, UNSUPPORTED or INVALID_ARGUMENT.
    pub status: Status,
    /// What was wrong (names the field; never echoes its content).
    pub message: String,
}

/// The OK payload of STATUS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReply {
    /// Where the challenge's life cycle stands.
    pub state: ChallengeState,
    /// Wrong codes still allowed.
    pub attempts_left: u8,
    /// Where its latest message stands.
    pub delivery: DeliveryState,
    /// The carrier of the latest message ("" if none yet).
    pub carrier: String,
    /// When it expires (or expired), Unix milliseconds.
    pub expires_at_ms: u64,
}

/// A response: an OK payload for one op, or an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// OK to HELLO.
    Hello {
        /// The server's protocol version.
        version: u16,
        /// The server's name.
        server_name: String,
        /// Largest frame body the server accepts.
        max_frame: u32,
    },
    /// OK with an empty payload (PING, CANCEL, OUTBOX_SUBSCRIBE).
    Empty,
    /// OK to ISSUE.
    Issued {
        /// The new challenge.
        id: ChallengeId,
        /// When it expires, Unix milliseconds.
        expires_at_ms: u64,
        /// The destination as it may be shown.
        masked_destination: String,
    },
    /// OK to VERIFY and VERIFY_SUBJECT.
    Verified(VerifyOutcome),
    /// OK to RESEND.
    Resent {
        /// Sends the destination may still receive in its window.
        sends_left: u8,
        /// When the challenge expires, Unix milliseconds.
        expires_at_ms: u64,
    },
    /// OK to STATUS.
    Status(StatusReply),
    /// OK to CHECK.
    Checked(CheckReply),
    /// Any non-OK status.
    Error {
        /// The status (never OK).
        status: Status,
        /// When to retry, milliseconds (0 if not applicable).
        retry_after_ms: u32,
        /// A short reason.
        message: String,
    },
}

impl Response {
    /// A non-OK response.
    pub fn error(status: Status, retry_after_ms: u32, message: impl Into<String>) -> Response {
        Response::Error {
            status,
            retry_after_ms,
            message: message.into(),
        }
    }

    /// The status this response carries.
    pub fn status(&self) -> Status {
        match self {
            Response::Error { status, .. } => *status,
            _ => Status::Ok,
        }
    }

    /// Appends this response to a request with op `op` as one whole frame.
    pub fn encode(&self, op: u8, req_id: u32, buf: &mut BytesMut) {
        let start = frame::begin(buf, op | RESPONSE_BIT, self.status().code(), req_id);
        match self {
            Response::Hello {
                version,
                server_name,
                max_frame,
            } => {
                buf.put_u16(*version);
                put_str(buf, server_name);
                buf.put_u32(*max_frame);
            }
            Response::Empty => {}
            Response::Issued {
                id,
                expires_at_ms,
                masked_destination,
            } => {
                buf.put_slice(&id.0);
                buf.put_u64(*expires_at_ms);
                put_str(buf, masked_destination);
            }
            Response::Verified(o) => {
                buf.put_u8(o.wire());
                buf.put_u8(o.attempts_left());
            }
            Response::Resent {
                sends_left,
                expires_at_ms,
            } => {
                buf.put_u8(*sends_left);
                buf.put_u64(*expires_at_ms);
            }
            Response::Status(s) => {
                buf.put_u8(s.state.wire());
                buf.put_u8(s.attempts_left);
                buf.put_u8(s.delivery.wire());
                put_str(buf, &s.carrier);
                buf.put_u64(s.expires_at_ms);
            }
            Response::Checked(c) => {
                buf.put_u8(c.result);
                buf.put_u8(c.reason);
                buf.put_u8(c.attempts_left);
                put_str(buf, &c.state);
                buf.put_u8(c.method);
                put_str(buf, &c.masked_destination);
                buf.put_u64(c.expires_at_ms);
                put_str(buf, &c.message);
            }
            Response::Error {
                retry_after_ms,
                message,
                ..
            } => {
                buf.put_u32(*retry_after_ms);
                put_str(buf, message);
            }
        }
        frame::finish(buf, start);
    }

    /// Decodes a response (client side) to a request of `op`, given the
    /// status byte and payload. String fields may be up to 65535 bytes.
    pub fn decode(op: Op, status: u8, payload: &[u8]) -> Result<Response, String> {
        let status = Status::from_u8(status).ok_or_else(|| format!("unknown status {status}"))?;
        let mut r = Reader::new(payload, usize::from(u16::MAX));
        let m = |e: DecodeError| e.message;
        let resp = if status != Status::Ok {
            Response::Error {
                status,
                retry_after_ms: r.u32("retry_after_ms").map_err(m)?,
                message: r.str("message").map_err(m)?,
            }
        } else {
            match op {
                Op::Hello => Response::Hello {
                    version: r.u16("version").map_err(m)?,
                    server_name: r.str("server_name").map_err(m)?,
                    max_frame: r.u32("max_frame").map_err(m)?,
                },
                Op::Ping | Op::Cancel | Op::OutboxSubscribe | Op::CallAnswer => Response::Empty,
                Op::Check => Response::Checked(CheckReply {
                    result: r.u8("result").map_err(m)?,
                    reason: r.u8("reason").map_err(m)?,
                    attempts_left: r.u8("attempts_left").map_err(m)?,
                    state: r.str("state").map_err(m)?,
                    method: r.u8("method").map_err(m)?,
                    masked_destination: r.str("masked_destination").map_err(m)?,
                    expires_at_ms: r.u64("expires_at_ms").map_err(m)?,
                    message: r.str("message").map_err(m)?,
                }),
                Op::Issue => Response::Issued {
                    id: r.id("id").map_err(m)?,
                    expires_at_ms: r.u64("expires_at_ms").map_err(m)?,
                    masked_destination: r.str("masked_destination").map_err(m)?,
                },
                Op::Verify | Op::VerifySubject => {
                    let outcome = r.u8("outcome").map_err(m)?;
                    let attempts_left = r.u8("attempts_left").map_err(m)?;
                    Response::Verified(match outcome {
                        0 => VerifyOutcome::Approved,
                        1 => VerifyOutcome::Rejected { attempts_left },
                        2 => VerifyOutcome::Expired,
                        3 => VerifyOutcome::Locked,
                        4 => VerifyOutcome::Unknown,
                        v => return Err(format!("outcome: unknown value {v}")),
                    })
                }
                Op::Resend => Response::Resent {
                    sends_left: r.u8("sends_left").map_err(m)?,
                    expires_at_ms: r.u64("expires_at_ms").map_err(m)?,
                },
                Op::Status => {
                    let state = match r.u8("state").map_err(m)? {
                        0 => ChallengeState::Pending,
                        1 => ChallengeState::Approved,
                        2 => ChallengeState::Expired,
                        3 => ChallengeState::Locked,
                        4 => ChallengeState::Cancelled,
                        5 => ChallengeState::Superseded,
                        v => return Err(format!("state: unknown value {v}")),
                    };
                    let attempts_left = r.u8("attempts_left").map_err(m)?;
                    let delivery = match r.u8("delivery").map_err(m)? {
                        0 => DeliveryState::Queued,
                        1 => DeliveryState::Sent,
                        2 => DeliveryState::Delivered,
                        3 => DeliveryState::Failed,
                        v => return Err(format!("delivery: unknown value {v}")),
                    };
                    Response::Status(StatusReply {
                        state,
                        attempts_left,
                        delivery,
                        carrier: r.str("carrier").map_err(m)?,
                        expires_at_ms: r.u64("expires_at_ms").map_err(m)?,
                    })
                }
            }
        };
        r.end().map_err(m)?;
        Ok(resp)
    }
}

/// A message a simulated carrier delivered: the DELIVERED push (0xC1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The challenge the message belongs to.
    pub id: ChallengeId,
    /// The channel it went over.
    pub channel: Channel,
    /// The normalised address the carrier was given.
    pub destination: String,
    /// The carrier's name.
    pub carrier: String,
    /// The short code, number or address it came from.
    pub sender: String,
    /// The message as the handset shows or hears it, code included.
    pub text: String,
}

impl Delivered {
    /// Appends this push as one whole frame.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = frame::begin(buf, PUSH_DELIVERED, 0, 0);
        buf.put_slice(&self.id.0);
        buf.put_u8(self.channel.wire());
        put_str(buf, &self.destination);
        put_str(buf, &self.carrier);
        put_str(buf, &self.sender);
        put_str(buf, &self.text);
        frame::finish(buf, start);
    }

    /// Decodes a DELIVERED push payload.
    pub fn decode(payload: &[u8]) -> Result<Delivered, String> {
        let mut r = Reader::new(payload, usize::from(u16::MAX));
        let m = |e: DecodeError| e.message;
        let id = r.id("id").map_err(m)?;
        let ch = r.u8("channel").map_err(m)?;
        let channel = Channel::from_wire(ch).ok_or_else(|| format!("channel: unknown {ch}"))?;
        let d = Delivered {
            id,
            channel,
            destination: r.str("destination").map_err(m)?,
            carrier: r.str("carrier").map_err(m)?,
            sender: r.str("sender").map_err(m)?,
            text: r.str("text").map_err(m)?,
        };
        r.end().map_err(m)?;
        Ok(d)
    }
}

/// Appends a `str` field. A string longer than 65535 bytes is cut at a
/// character boundary (servers never produce one; see `MAX_STR`).
pub fn put_str(buf: &mut BytesMut, s: &str) {
    let mut n = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    buf.put_u16(n as u16);
    buf.put_slice(&s.as_bytes()[..n]);
}

/// A bounds-checked cursor over a payload.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    max_str: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], max_str: usize) -> Self {
        Self {
            buf,
            pos: 0,
            max_str,
        }
    }

    fn bad(message: String) -> DecodeError {
        DecodeError {
            status: Status::BadFrame,
            message,
        }
    }

    fn bytes(&mut self, n: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        let rest = self.buf.len() - self.pos;
        if rest < n {
            return Err(Self::bad(format!(
                "payload too short: {field} needs {n} bytes, {rest} left"
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.bytes(1, field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        let b = self.bytes(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        let b = self.bytes(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &str) -> Result<u64, DecodeError> {
        let b = self.bytes(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn id(&mut self, field: &str) -> Result<ChallengeId, DecodeError> {
        let b = self.bytes(16, field)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        Ok(ChallengeId(a))
    }

    fn str(&mut self, field: &str) -> Result<String, DecodeError> {
        let n = usize::from(self.u16(field)?);
        if n > self.max_str {
            return Err(Self::bad(format!(
                "{field}: {n} bytes is longer than the {} allowed",
                self.max_str
            )));
        }
        let b = self.bytes(n, field)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(Self::bad(format!(
                "{field}: not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ))),
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        let rest = self.buf.len() - self.pos;
        if rest == 0 {
            Ok(())
        } else {
            Err(Self::bad(format!(
                "payload too long: {rest} unexpected bytes after the last field"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(req: Request) {
        let mut b = BytesMut::new();
        req.encode(9, &mut b);
        let f = frame::take(&mut b, frame::DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(f.req_id, 9);
        assert_eq!(Request::decode(f.op, &f.payload).unwrap(), req);
    }

    #[test]
    fn requests_roundtrip() {
        roundtrip(Request::Hello {
            version: 1,
            tenant: "demo".into(),
            key: "k".into(),
        });
        roundtrip(Request::Ping);
        roundtrip(Request::Issue(IssueRequest {
            subject: "u1".into(),
            channel: Channel::Voice,
            destination: "+1 425 555 0100".into(),
            code_len: 0,
            ttl_s: 60,
            locale: "fr".into(),
            client_ip: "::1".into(),
        }));
        roundtrip(Request::Verify {
            id: ChallengeId([7; 16]),
            code: "123456".into(),
        });
        roundtrip(Request::VerifySubject {
            subject: "s".into(),
            code: "1".into(),
        });
        roundtrip(Request::Resend {
            id: ChallengeId([1; 16]),
        });
        roundtrip(Request::Cancel {
            id: ChallengeId([2; 16]),
        });
        roundtrip(Request::Status {
            id: ChallengeId([3; 16]),
        });
        roundtrip(Request::OutboxSubscribe);
    }

    #[test]
    fn debug_redacts_keys_and_codes() {
        let h = Request::Hello {
            version: 1,
            tenant: "t".into(),
            key: "sekrit-key".into(),
        };
        let v = Request::Verify {
            id: ChallengeId([0; 16]),
            code: "918273".into(),
        };
        assert!(!format!("{h:?}{v:?}").contains("sekrit") && !format!("{v:?}").contains("918273"));
    }

    #[test]
    fn malformed_payloads_say_why() {
        let e = Request::decode(0x11, &[0; 10]).unwrap_err();
        assert_eq!(e.status, Status::BadFrame);
        assert!(e.message.contains("too short"), "{}", e.message);
        let e = Request::decode(0x02, &[0]).unwrap_err();
        assert!(e.message.contains("too long"), "{}", e.message);
        let e = Request::decode(0x12, &[0, 2, 0xff, 0xfe, 0, 0]).unwrap_err();
        assert!(e.message.contains("UTF-8"), "{}", e.message);
        let e = Request::decode(0x77, &[]).unwrap_err();
        assert_eq!(e.status, Status::Unsupported);
    }

    #[test]
    fn responses_roundtrip() {
        let cases = [
            (Op::Ping, Response::Empty),
            (
                Op::Verify,
                Response::Verified(VerifyOutcome::Rejected { attempts_left: 3 }),
            ),
            (
                Op::Issue,
                Response::Issued {
                    id: ChallengeId([4; 16]),
                    expires_at_ms: 5,
                    masked_destination: "+14*******34".into(),
                },
            ),
            (Op::Cancel, Response::error(Status::NotFound, 0, "no")),
        ];
        for (op, resp) in cases {
            let mut b = BytesMut::new();
            resp.encode(op.code(), 1, &mut b);
            let f = frame::take(&mut b, frame::DEFAULT_MAX_FRAME).unwrap();
            assert_eq!(f.op, op.code() | RESPONSE_BIT);
            assert_eq!(
                Response::decode(op, f.flags_or_status, &f.payload).unwrap(),
                resp
            );
        }
    }
}
