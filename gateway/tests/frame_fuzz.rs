//! Property tests of the frame and payload decoders: arbitrary bytes never
//! panic, never yield a frame beyond `max_frame`, and decoding allocates no
//! more than the payload it was given. Valid requests round-trip.

use bytes::BytesMut;
use proptest::prelude::*;
use watchword_engine::{ChallengeId, Channel};
use watchword_gateway::Op;
use watchword_gateway::frame::{self, FrameError, HEADER_LEN};
use watchword_gateway::protocol::{CheckReply, CheckRequest, IssueRequest, Request, Response};

fn request_strategy() -> impl Strategy<Value = Request> {
    let s = || "\\PC{0,40}";
    prop_oneof![
        (any::<u16>(), s(), s()).prop_map(|(version, tenant, key)| Request::Hello {
            version,
            tenant,
            key
        }),
        Just(Request::Ping),
        (s(), 1u8..=3, s(), any::<u8>(), any::<u16>(), s(), s()).prop_map(
            |(subject, ch, destination, code_len, ttl_s, locale, client_ip)| {
                Request::Issue(IssueRequest {
                    subject,
                    channel: Channel::from_wire(ch).unwrap(),
                    destination,
                    code_len,
                    ttl_s,
                    locale,
                    client_ip,
                })
            }
        ),
        (any::<[u8; 16]>(), s()).prop_map(|(id, code)| Request::Verify {
            id: ChallengeId(id),
            code
        }),
        (s(), s()).prop_map(|(subject, code)| Request::VerifySubject { subject, code }),
        any::<[u8; 16]>().prop_map(|id| Request::Resend {
            id: ChallengeId(id)
        }),
        any::<[u8; 16]>().prop_map(|id| Request::Cancel {
            id: ChallengeId(id)
        }),
        any::<[u8; 16]>().prop_map(|id| Request::Status {
            id: ChallengeId(id)
        }),
        Just(Request::OutboxSubscribe),
        (s(), s(), s(), s()).prop_map(|(subject, answer, state, client_ip)| {
            Request::Check(CheckRequest {
                subject,
                answer,
                state,
                client_ip,
            })
        }),
        (any::<[u8; 16]>(), s()).prop_map(|(id, digits)| Request::CallAnswer {
            id: ChallengeId(id),
            digits
        }),
    ]
}

fn decoded_size(r: &Request) -> usize {
    match r {
        Request::Hello { tenant, key, .. } => tenant.len() + key.len(),
        Request::Issue(i) => {
            i.subject.len() + i.destination.len() + i.locale.len() + i.client_ip.len()
        }
        Request::Verify { code, .. } => code.len(),
        Request::VerifySubject { subject, code } => subject.len() + code.len(),
        Request::Check(c) => c.subject.len() + c.answer.len() + c.state.len() + c.client_ip.len(),
        Request::CallAnswer { digits, .. } => digits.len(),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_streams_never_panic_or_exceed_max_frame(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        max_frame in 6u32..2048,
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            let before = buf.len();
            match frame::take(&mut buf, max_frame) {
                Ok(f) => {
                    prop_assert!(f.payload.len() + HEADER_LEN <= max_frame as usize);
                    prop_assert!(buf.len() < before);
                    if let Ok(req) = Request::decode(f.op, &f.payload) {
                        // Decoded strings never exceed the payload they came from.
                        prop_assert!(decoded_size(&req) <= f.payload.len());
                    }
                    if let Some(op) = Op::from_u8(f.op & 0x7f) {
                        let _ = Response::decode(op, f.flags_or_status, &f.payload);
                    }
                    let _ = watchword_gateway::protocol::Delivered::decode(&f.payload);
                }
                Err(FrameError::Incomplete) => {
                    prop_assert_eq!(buf.len(), before);
                    break;
                }
                Err(FrameError::BadLength(len)) => {
                    prop_assert!((len as usize) < HEADER_LEN || len > max_frame);
                    break;
                }
            }
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic(op in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Request::decode(op, &payload);
    }

    #[test]
    fn valid_requests_roundtrip(req in request_strategy(), req_id in any::<u32>()) {
        let mut b = BytesMut::new();
        req.encode(req_id, &mut b);
        let f = frame::take(&mut b, u32::MAX).unwrap();
        prop_assert_eq!(f.req_id, req_id);
        prop_assert_eq!(Request::decode(f.op, &f.payload).unwrap(), req);
    }

    #[test]
    fn check_answers_roundtrip(
        result in 0u8..3, reason in 0u8..8, attempts_left in any::<u8>(), method in 0u8..6,
        state in "[!-~]{0,64}", masked in "\\PC{0,40}", expires_at_ms in any::<u64>(), message in "\\PC{0,80}",
    ) {
        let r = Response::Checked(CheckReply {
            result, reason, attempts_left, state, method,
            masked_destination: masked, expires_at_ms, message,
        });
        let mut b = BytesMut::new();
        r.encode(Op::Check.code(), 7, &mut b);
        let f = frame::take(&mut b, u32::MAX).unwrap();
        prop_assert_eq!(Response::decode(Op::Check, f.flags_or_status, &f.payload).unwrap(), r);
    }

    #[test]
    fn a_length_prefix_alone_never_allocates(len in any::<u32>()) {
        // Only the 4-byte prefix is buffered: the check looks at it and
        // reserves nothing, whatever it claims.
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let cap = buf.capacity();
        let r = frame::take(&mut buf, 65_536);
        prop_assert!(r.is_err());
        prop_assert_eq!(buf.capacity(), cap);
    }
}
