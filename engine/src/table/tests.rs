//! Unit and property tests of the challenge table's rules. Time moves through a
//! `ManualClock`; no test sleeps or measures time.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::clock::ManualClock;
use crate::events::MemorySink;

const T0: u64 = 1_700_000_000_000;
const DEMO: TenantId = TenantId(0);
const OTHER: TenantId = TenantId(1);

fn table_with(config: TableConfig) -> (Arc<ChallengeTable>, Arc<ManualClock>, Arc<MemorySink>) {
    let clock = ManualClock::new(T0);
    let sink = Arc::new(MemorySink::default());
    let table = ChallengeTable::new(config, clock.clone(), sink.clone()).unwrap();
    (Arc::new(table), clock, sink)
}

fn table() -> (Arc<ChallengeTable>, Arc<ManualClock>, Arc<MemorySink>) {
    table_with(TableConfig {
        shards: 4,
        ..TableConfig::default()
    })
}

/// One shard and no tombstones: a finished challenge's slot is the next one reused.
fn one_shard_without_tombstones() -> (Arc<ChallengeTable>, Arc<ManualClock>, Arc<MemorySink>) {
    table_with(TableConfig {
        shards: 1,
        tombstone_grace_s: 0,
        ..TableConfig::default()
    })
}

fn spec<'a>(subject: &'a str, destination: &'a str) -> IssueSpec<'a> {
    IssueSpec {
        tenant: DEMO,
        subject,
        channel: Channel::Sms,
        destination,
        code_len: 6,
        ttl_s: 300,
        max_attempts: 5,
        client_ip: "",
    }
}

fn digits(code: Code) -> Vec<u8> {
    let (d, n) = code.digits();
    d[..n].to_vec()
}

/// Verifies `c` with its own code.
fn verify_right(t: &ChallengeTable, c: &IssuedChallenge) -> VerifyOutcome {
    t.verify(DEMO, c.id, &digits(c.code))
}

fn wrong(code: Code) -> Vec<u8> {
    let mut d = digits(code);
    d[0] = if d[0] == b'9' { b'0' } else { d[0] + 1 };
    d
}

#[test]
fn right_code_approves_once() {
    let (t, _, sink) = table();
    let c = t.issue(&spec("alice", "+14255551234")).unwrap();
    assert_eq!(verify_right(&t, &c), VerifyOutcome::Approved);
    assert_eq!(verify_right(&t, &c), VerifyOutcome::Unknown);
    assert_eq!(t.pending(), 0);
    assert_eq!(sink.count(EventKind::Approved), 1);
    assert_eq!(
        t.status(DEMO, c.id).unwrap().state,
        ChallengeState::Approved
    );
}

#[test]
fn wrong_codes_count_down_then_lock() {
    let (t, _, sink) = table();
    let c = t.issue(&spec("bob", "+14255551234")).unwrap();
    for left in (1..5).rev() {
        assert_eq!(
            t.verify(DEMO, c.id, &wrong(c.code)),
            VerifyOutcome::Rejected {
                attempts_left: left
            }
        );
    }
    assert_eq!(t.verify(DEMO, c.id, &wrong(c.code)), VerifyOutcome::Locked);
    // Locked is final: even the right code is refused.
    assert_eq!(verify_right(&t, &c), VerifyOutcome::Locked);
    assert_eq!(sink.count(EventKind::Rejected), 4);
    assert_eq!(sink.count(EventKind::Locked), 1);
    assert_eq!(t.pending(), 0);
}

/// A code offered after the challenge ended answers as before and changes
/// nothing, but is audited: one `Refused` event naming the end it met.
#[test]
fn a_code_offered_after_the_end_is_audited_as_refused() {
    type End = fn(&ChallengeTable, &ManualClock, &IssuedChallenge);
    let cases: [(&str, End, VerifyOutcome, &str); 5] = [
        (
            "used",
            |t, _, c| assert_eq!(verify_right(t, c), VerifyOutcome::Approved),
            VerifyOutcome::Unknown,
            "challenge already used",
        ),
        (
            "locked",
            |t, _, c| {
                for _ in 0..5 {
                    t.verify(DEMO, c.id, &wrong(c.code));
                }
            },
            VerifyOutcome::Locked,
            "challenge locked by wrong codes",
        ),
        (
            "expired",
            |t, clock, c| {
                clock.advance_s(300);
                assert_eq!(verify_right(t, c), VerifyOutcome::Expired);
            },
            VerifyOutcome::Expired,
            "challenge already expired",
        ),
        (
            "cancelled",
            |t, _, c| assert!(t.cancel(DEMO, c.id)),
            VerifyOutcome::Unknown,
            "challenge cancelled",
        ),
        (
            "superseded",
            |t, _, _| {
                t.issue(&spec("ulla", "+14255551234")).unwrap();
            },
            VerifyOutcome::Unknown,
            "challenge replaced by a newer one",
        ),
    ];
    for (name, end, answer, reason) in cases {
        let (t, clock, sink) = table();
        let c = t.issue(&spec("ulla", "+14255551234")).unwrap();
        end(&t, &clock, &c);
        let before = sink.events().len();
        let (pending, state) = (t.pending(), t.status(DEMO, c.id).unwrap());
        // Even the right code, twice: each try is one event.
        assert_eq!(verify_right(&t, &c), answer, "{name}");
        assert_eq!(verify_right(&t, &c), answer, "{name}");
        let events = sink.events();
        assert_eq!(events.len(), before + 2, "{name}");
        for e in &events[before..] {
            assert_eq!(e.kind, EventKind::Refused, "{name}");
            assert_eq!(e.id, c.id, "{name}");
            assert_eq!(e.subject, "ulla", "{name}");
            assert_eq!(e.reason.as_deref(), Some(reason), "{name}");
        }
        assert_eq!(t.pending(), pending, "{name}");
        assert_eq!(t.status(DEMO, c.id).unwrap(), state, "{name}");
        // Another tenant's try at the same id learns nothing and is not
        // written under this tenant's challenge.
        assert_eq!(
            t.verify(OTHER, c.id, &digits(c.code)),
            VerifyOutcome::Unknown
        );
        assert_eq!(sink.events().len(), before + 2, "{name}");
    }
    // Without tombstones an ended challenge is forgotten at once: its id is
    // unknown, and there is no subject left to write.
    let (t, _, sink) = one_shard_without_tombstones();
    let c = t.issue(&spec("ulla", "+14255551234")).unwrap();
    assert_eq!(verify_right(&t, &c), VerifyOutcome::Approved);
    assert_eq!(verify_right(&t, &c), VerifyOutcome::Unknown);
    assert_eq!(sink.count(EventKind::Refused), 0);
}

#[test]
fn wrong_length_and_non_digits_are_rejected_attempts() {
    let (t, _, _) = table();
    let c = t.issue(&spec("carol", "+14255551234")).unwrap();
    assert_eq!(
        t.verify(DEMO, c.id, b"12"),
        VerifyOutcome::Rejected { attempts_left: 4 }
    );
    assert_eq!(
        t.verify(DEMO, c.id, b"abcdef"),
        VerifyOutcome::Rejected { attempts_left: 3 }
    );
    assert_eq!(verify_right(&t, &c), VerifyOutcome::Approved);
}

#[test]
fn expired_code_never_verifies_even_before_the_sweep() {
    let (t, clock, sink) = table();
    let c = t.issue(&spec("dave", "+14255551234")).unwrap();
    clock.advance_s(300);
    assert_eq!(verify_right(&t, &c), VerifyOutcome::Expired);
    assert_eq!(verify_right(&t, &c), VerifyOutcome::Expired);
    assert_eq!(sink.count(EventKind::Expired), 1);
    assert_eq!(t.pending(), 0);
}

#[test]
fn one_millisecond_before_expiry_still_verifies() {
    let (t, clock, _) = table();
    let c = t.issue(&spec("erin", "+14255551234")).unwrap();
    clock.advance_ms(300_000 - 1);
    assert_eq!(verify_right(&t, &c), VerifyOutcome::Approved);
}

#[test]
fn tenants_are_isolated() {
    let (t, _, _) = table();
    let c = t.issue(&spec("frank", "+14255551234")).unwrap();
    assert_eq!(
        t.verify(OTHER, c.id, &digits(c.code)),
        VerifyOutcome::Unknown
    );
    assert!(t.status(OTHER, c.id).is_none());
    assert!(!t.cancel(OTHER, c.id));
    assert!(t.resend(OTHER, c.id).is_none());
    assert_eq!(
        t.verify_subject(OTHER, "frank", &digits(c.code)),
        VerifyOutcome::Unknown
    );
    // Untouched by the other tenant's tries.
    assert_eq!(t.status(DEMO, c.id).unwrap().attempts_left, 5);
    assert_eq!(verify_right(&t, &c), VerifyOutcome::Approved);
}

#[test]
fn same_target_supersedes_other_targets_do_not() {
    let (t, _, sink) = table();
    let a = t.issue(&spec("gina", "+14255551234")).unwrap();
    let other_dest = t.issue(&spec("gina", "+14255550000")).unwrap();
    let b = t.issue(&spec("gina", "+14255551234")).unwrap();
    assert_eq!(b.superseded, Some(a.id));
    assert_eq!(verify_right(&t, &a), VerifyOutcome::Unknown);
    assert_eq!(
        t.status(DEMO, a.id).unwrap().state,
        ChallengeState::Superseded
    );
    assert_eq!(sink.count(EventKind::Superseded), 1);
    assert_eq!(t.pending(), 2);
    assert_eq!(verify_right(&t, &other_dest), VerifyOutcome::Approved);
    assert_eq!(verify_right(&t, &b), VerifyOutcome::Approved);
}

#[test]
fn verify_subject_uses_the_newest_pending_challenge() {
    let (t, _, _) = table();
    let old = t.issue(&spec("hank", "+14255551234")).unwrap();
    let new = t.issue(&spec("hank", "hank@example.com")).unwrap();
    // The older one's code is wrong for the newest challenge.
    let old_digits = digits(old.code);
    if old_digits != digits(new.code) {
        assert_eq!(
            t.verify_subject(DEMO, "hank", &old_digits),
            VerifyOutcome::Rejected { attempts_left: 4 }
        );
    }
    assert_eq!(
        t.verify_subject(DEMO, "hank", &digits(new.code)),
        VerifyOutcome::Approved
    );
    // Now the older one is the newest pending.
    assert_eq!(
        t.verify_subject(DEMO, "hank", &digits(old.code)),
        VerifyOutcome::Approved
    );
    assert_eq!(
        t.verify_subject(DEMO, "hank", &digits(old.code)),
        VerifyOutcome::Unknown
    );
}

#[test]
fn verify_subject_skips_expired_and_reports_expired_when_none_live() {
    let (t, clock, _) = table();
    let short = IssueSpec {
        ttl_s: 30,
        ..spec("ivy", "+14255551234")
    };
    let long = t.issue(&spec("ivy", "ivy@example.com")).unwrap();
    clock.advance_s(1);
    let s = t.issue(&short).unwrap();
    clock.advance_s(30);
    // The newest (short) one expired; the older live one is used.
    assert_eq!(
        t.verify_subject(DEMO, "ivy", &digits(long.code)),
        VerifyOutcome::Approved
    );
    assert_eq!(t.status(DEMO, s.id).unwrap().state, ChallengeState::Expired);
    let late = t.issue(&short).unwrap();
    clock.advance_s(31);
    assert_eq!(
        t.verify_subject(DEMO, "ivy", &digits(late.code)),
        VerifyOutcome::Expired
    );
}

#[test]
fn capacity_refuses_new_but_never_evicts() {
    let (t, _, _) = table_with(TableConfig {
        shards: 2,
        capacity: 3,
        ..TableConfig::default()
    });
    let held: Vec<_> = (0..3)
        .map(|i| t.issue(&spec(&format!("u{i}"), "+14255551234")).unwrap())
        .collect();
    assert_eq!(
        t.issue(&spec("u9", "+14255551234")).unwrap_err(),
        IssueError::Capacity { capacity: 3 }
    );
    // Superseding does not add a pending challenge, so it is allowed when full.
    let again = t.issue(&spec("u0", "+14255551234")).unwrap();
    assert_eq!(again.superseded, Some(held[0].id));
    for c in &held[1..] {
        assert_eq!(verify_right(&t, c), VerifyOutcome::Approved);
    }
    assert!(t.issue(&spec("u9", "+14255551234")).is_ok());
}

#[test]
fn bad_input_names_the_field() {
    let (t, _, _) = table();
    let long_subject = "s".repeat(257);
    let cases: Vec<(IssueSpec<'_>, &str)> = vec![
        (spec("", "+14255551234"), "subject"),
        (spec(&long_subject, "+14255551234"), "subject"),
        (spec("a", ""), "destination"),
        (
            IssueSpec {
                code_len: 3,
                ..spec("a", "+1")
            },
            "code_len",
        ),
        (
            IssueSpec {
                code_len: 13,
                ..spec("a", "+1")
            },
            "code_len",
        ),
        (
            IssueSpec {
                ttl_s: 29,
                ..spec("a", "+1")
            },
            "ttl_s",
        ),
        (
            IssueSpec {
                ttl_s: 3601,
                ..spec("a", "+1")
            },
            "ttl_s",
        ),
        (
            IssueSpec {
                max_attempts: 0,
                ..spec("a", "+1")
            },
            "max_attempts",
        ),
    ];
    for (s, field) in cases {
        match t.issue(&s) {
            Err(IssueError::InvalidArgument { field: f, reason }) => {
                assert_eq!(f, field);
                assert!(!reason.is_empty());
            }
            other => panic!("expected InvalidArgument for {field}, got {other:?}"),
        }
    }
    assert_eq!(t.pending(), 0);
}

#[test]
fn resend_returns_the_same_code_and_counts() {
    let (t, _, sink) = table();
    let c = t.issue(&spec("jack", "+14255551234")).unwrap();
    let r = t.resend(DEMO, c.id).unwrap();
    assert_eq!(digits(r.code), digits(c.code));
    assert_eq!(r.sends, 2);
    assert_eq!(r.destination, "+14255551234");
    assert_eq!(t.status(DEMO, c.id).unwrap().sends, 2);
    assert_eq!(sink.count(EventKind::Resent), 1);
    assert!(t.cancel(DEMO, c.id));
    assert!(t.resend(DEMO, c.id).is_none());
}

#[test]
fn cancel_ends_it_and_tombstone_is_forgotten_after_grace() {
    let (t, clock, _) = table();
    let c = t.issue(&spec("kim", "+14255551234")).unwrap();
    assert!(t.cancel(DEMO, c.id));
    assert!(!t.cancel(DEMO, c.id));
    assert_eq!(verify_right(&t, &c), VerifyOutcome::Unknown);
    assert_eq!(
        t.status(DEMO, c.id).unwrap().state,
        ChallengeState::Cancelled
    );
    clock.advance_s(59);
    t.sweep();
    assert!(t.status(DEMO, c.id).is_some());
    clock.advance_s(2);
    // Gone for STATUS at once, and freed by the sweep.
    assert!(t.status(DEMO, c.id).is_none());
    t.sweep();
    assert_eq!(t.len(), 0);
}

#[test]
fn without_grace_a_finished_challenge_is_forgotten_at_once_and_its_slot_reused() {
    let (t, clock, sink) = one_shard_without_tombstones();
    // Approved, locked, cancelled and superseded: gone for STATUS at once,
    // with their events still emitted (read before the slot is freed).
    let approved = t.issue(&spec("ann", "+14255550001")).unwrap();
    assert_eq!(verify_right(&t, &approved), VerifyOutcome::Approved);
    let locked = t.issue(&spec("bob", "+14255550002")).unwrap();
    for _ in 0..5 {
        t.verify(DEMO, locked.id, &wrong(locked.code));
    }
    let cancelled = t.issue(&spec("cat", "+14255550003")).unwrap();
    assert!(t.cancel(DEMO, cancelled.id));
    let old = t.issue(&spec("dan", "+14255550004")).unwrap();
    let new = t.issue(&spec("dan", "+14255550004")).unwrap();
    assert_eq!(new.superseded, Some(old.id));
    for id in [approved.id, locked.id, cancelled.id, old.id] {
        assert!(t.status(DEMO, id).is_none());
        assert_eq!(t.verify(DEMO, id, b"000000"), VerifyOutcome::Unknown);
    }
    assert_eq!((t.len(), t.pending()), (1, 1));
    for kind in [
        EventKind::Approved,
        EventKind::Locked,
        EventKind::Cancelled,
        EventKind::Superseded,
    ] {
        assert_eq!(sink.count(kind), 1, "{kind:?}");
    }
    let approved_event = sink
        .events()
        .into_iter()
        .find(|e| e.kind == EventKind::Approved)
        .unwrap();
    assert_eq!(approved_event.id, approved.id);
    // Their slots are reused: a thousand cycles hold one slot's worth.
    for i in 0..1000 {
        let c = t.issue(&spec(&format!("u{i}"), "+14255551234")).unwrap();
        assert_eq!(verify_right(&t, &c), VerifyOutcome::Approved);
    }
    assert_eq!(t.len(), 1);
    // Expired by the sweeper, or on the way of a verify by subject: forgotten
    // in the same step.
    t.issue(&spec("eve", "+14255550005")).unwrap();
    clock.advance_s(301);
    assert_eq!(
        t.verify_subject(DEMO, "eve", b"000000"),
        VerifyOutcome::Expired
    );
    assert!(t.sweep() >= 1);
    assert_eq!((t.len(), t.pending()), (0, 0));
    assert_eq!(sink.count(EventKind::Expired), 2);
}

#[test]
fn sweeper_expires_then_forgets_and_memory_comes_back() {
    let (t, clock, sink) = table();
    let ids: Vec<_> = (0..5000)
        .map(|i| {
            t.issue(&spec(&format!("user{i}"), "+14255551234"))
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(t.pending(), 5000);
    let full = t.reserved_bytes();
    clock.advance_s(300);
    t.sweep();
    assert_eq!(t.pending(), 0);
    assert_eq!(sink.count(EventKind::Expired), 5000);
    assert_eq!(
        t.status(DEMO, ids[0]).unwrap().state,
        ChallengeState::Expired
    );
    assert_eq!(t.len(), 5000);
    clock.advance_s(61);
    t.sweep();
    assert_eq!(t.len(), 0);
    assert!(t.status(DEMO, ids[0]).is_none());
    assert!(
        t.reserved_bytes() < full / 4,
        "{} vs {full}",
        t.reserved_bytes()
    );
}

#[test]
fn the_id_index_shrinks_once_it_stayed_mostly_empty_for_a_whole_pass() {
    let (t, clock, _) = table_with(TableConfig {
        shards: 1,
        ..TableConfig::default()
    });
    // One challenge that stays, and a wave of 40,000 that are approved.
    t.issue(&IssueSpec {
        ttl_s: 3600,
        ..spec("stays", "+14255550000")
    })
    .unwrap();
    for i in 0..40_000 {
        let c = t.issue(&spec(&format!("wave{i}"), "+14255551234")).unwrap();
        assert_eq!(verify_right(&t, &c), VerifyOutcome::Approved);
    }
    clock.advance_s(61);
    t.sweep();
    assert_eq!(t.len(), 1, "the wave's tombstones are forgotten");
    // The index held 40,001 entries during this pass: it is kept as it is.
    let after_first_pass = t.reserved_bytes();
    clock.advance_s(1);
    t.sweep();
    // A pass later it has stayed nearly empty: its room for 57,344 slots of
    // 5 bytes (4-byte slot, 1 control byte) comes back.
    let freed = after_first_pass.saturating_sub(t.reserved_bytes());
    assert!(
        freed >= 200_000,
        "only {freed} bytes came back on the second pass"
    );
}

#[test]
fn indexes_that_grow_past_thousands_of_entries_lose_nothing() {
    // One shard, so that both indexes grow well past the size at which a
    // growth is worked off a few slots per insert instead of all at once.
    let (t, clock, _) = table_with(TableConfig {
        shards: 1,
        ..TableConfig::default()
    });
    let mut expected: HashMap<ChallengeId, ChallengeState> = HashMap::new();
    let mut forgotten: Vec<ChallengeId> = Vec::new();
    let mut newest: HashMap<String, (ChallengeId, Code)> = HashMap::new();
    for i in 0..60_000u32 {
        if i == 30_000 {
            // Forget every tombstone so far: their slots are reused while
            // the indexes grow, below the slab walk's position as well.
            clock.advance_s(61);
            t.sweep();
            expected.retain(|id, state| {
                let keep = *state == ChallengeState::Pending;
                if !keep {
                    forgotten.push(*id);
                }
                keep
            });
        }
        // Subjects repeat from i = 45,000 on: those issues supersede.
        let subject = format!("u{}", i % 45_000);
        let c = t.issue(&spec(&subject, "+14255551234")).unwrap();
        if let Some(old) = c.superseded {
            expected.insert(old, ChallengeState::Superseded);
        }
        expected.insert(c.id, ChallengeState::Pending);
        newest.insert(subject.clone(), (c.id, c.code));
        if i % 7 == 0 {
            assert_eq!(verify_right(&t, &c), VerifyOutcome::Approved);
            expected.insert(c.id, ChallengeState::Approved);
            newest.remove(&subject);
        } else if i % 11 == 0 {
            assert!(t.cancel(DEMO, c.id));
            expected.insert(c.id, ChallengeState::Cancelled);
            newest.remove(&subject);
        }
        if i % 5_000 == 0 {
            clock.advance_s(1);
            t.sweep();
        }
    }
    for (id, state) in &expected {
        assert_eq!(t.status(DEMO, *id).map(|s| s.state), Some(*state), "{id:?}");
    }
    assert!(forgotten.len() > 5_000, "{}", forgotten.len());
    for id in &forgotten {
        assert!(t.status(DEMO, *id).is_none());
    }
    assert_eq!(t.pending(), newest.len());
    for (subject, (id, code)) in &newest {
        assert_eq!(
            t.verify_subject(DEMO, subject, &digits(*code)),
            VerifyOutcome::Approved,
            "{subject}"
        );
        assert_eq!(t.status(DEMO, *id).unwrap().state, ChallengeState::Approved);
    }
    assert_eq!(t.pending(), 0);
}

#[test]
fn the_sweeper_allocates_the_next_index_tables_before_they_are_needed() {
    let (t, _, _) = table_with(TableConfig {
        shards: 1,
        ..TableConfig::default()
    });
    let issue = |i: u32| {
        t.issue(&spec(&format!("user{i}"), "+14255551234")).unwrap();
    };
    // Until an index is three quarters full nothing is prepared.
    let mut i = 0u32;
    while t.shards[0].lock().spares_wanted() == (None, None) {
        issue(i);
        i += 1;
    }
    assert_eq!(t.shards[0].lock().has_spares(), (false, false));
    t.sweep();
    let (id, subject) = t.shards[0].lock().has_spares();
    assert!(id && subject, "the sweep handed in both spares");
    assert_eq!(t.shards[0].lock().spares_wanted(), (None, None));
    // The growths take them instead of allocating under the lock.
    let prepared_at = i;
    while t.shards[0].lock().has_spares() != (false, false) && i < prepared_at * 2 {
        issue(i);
        i += 1;
    }
    assert_eq!(t.shards[0].lock().has_spares(), (false, false));
    assert_eq!(t.pending(), i as usize);
}

#[test]
fn sweep_works_in_slices_and_handles_long_ttls_and_late_sweeps() {
    let (t, clock, _) = table_with(TableConfig {
        shards: 1,
        sweep_slice: 7,
        tombstone_grace_s: 5000,
        ..TableConfig::default()
    });
    let long = t
        .issue(&IssueSpec {
            ttl_s: 3600,
            ..spec("long", "+14255551234")
        })
        .unwrap();
    for i in 0..100 {
        t.issue(&IssueSpec {
            ttl_s: 30,
            ..spec(&format!("s{i}"), "+14255551234")
        })
        .unwrap();
    }
    clock.advance_s(31);
    assert_eq!(t.sweep(), 100);
    assert_eq!(t.pending(), 1);
    // The tombstones' grace (5000 s) is longer than a wheel lap (4096 s).
    clock.advance_s(3600);
    t.sweep();
    assert_eq!(
        t.status(DEMO, long.id).unwrap().state,
        ChallengeState::Expired
    );
    clock.advance_s(1500);
    t.sweep();
    assert_eq!(t.len(), 1, "only the long one's tombstone remains");
    clock.advance_s(5000);
    t.sweep();
    assert_eq!(t.len(), 0);
}

#[test]
fn delivery_updates_flow_to_status_and_never_go_back() {
    let (t, clock, sink) = table();
    let c = t.issue(&spec("lee", "+14255551234")).unwrap();
    assert!(t.deliverable(c.id, SlotHint::NONE));
    // Sent, delivered, then a late "sent" from another carrier: ignored.
    for (state, carrier, name) in [
        (DeliveryState::Sent, CarrierSlot(2), "simA"),
        (DeliveryState::Delivered, CarrierSlot(2), "simA"),
        (DeliveryState::Sent, CarrierSlot(3), "simB"),
    ] {
        t.delivery_update(c.id, SlotHint::NONE, state, carrier, name, None);
    }
    let s = t.status(DEMO, c.id).unwrap();
    assert_eq!(s.delivery, DeliveryState::Delivered);
    assert_eq!(s.carrier, CarrierSlot(2));
    assert_eq!(sink.count(EventKind::Delivered), 1);
    clock.advance_s(300);
    assert!(!t.deliverable(c.id, SlotHint::NONE));
    assert!(!t.deliverable(ChallengeId([7; 16]), SlotHint::NONE));
}

#[test]
fn a_slot_hint_finds_its_challenge_and_a_stale_one_never_touches_another() {
    let (t, _, sink) = one_shard_without_tombstones();
    let first = t.issue(&spec("ann", "+14255550001")).unwrap();
    assert!(t.deliverable(first.id, first.slot_hint));
    // Approved without grace: forgotten at once, its slot free for the next.
    assert_eq!(verify_right(&t, &first), VerifyOutcome::Approved);
    let second = t.issue(&spec("bob", "+14255550002")).unwrap();
    assert_eq!(second.slot_hint, first.slot_hint, "the slot was reused");
    // The stale hint now points at bob's challenge: ann's id must not match it.
    assert!(!t.deliverable(first.id, first.slot_hint));
    t.delivery_update(
        first.id,
        first.slot_hint,
        DeliveryState::Delivered,
        CarrierSlot(1),
        "simA",
        None,
    );
    let bob = t.status(DEMO, second.id).unwrap();
    assert_eq!(bob.delivery, DeliveryState::Queued);
    assert_eq!(sink.count(EventKind::Delivered), 0);
    // A wrong hint (another live slot, or past the slab) falls back to the index.
    let third = t.issue(&spec("cat", "+14255550003")).unwrap();
    for hint in [second.slot_hint, SlotHint(1 << 30), SlotHint::NONE] {
        assert!(t.deliverable(third.id, hint));
    }
    t.delivery_update(
        third.id,
        second.slot_hint,
        DeliveryState::Sent,
        CarrierSlot(1),
        "simA",
        None,
    );
    assert_eq!(
        t.status(DEMO, third.id).unwrap().delivery,
        DeliveryState::Sent
    );
    assert_eq!(
        t.status(DEMO, second.id).unwrap().delivery,
        DeliveryState::Queued
    );
}

#[test]
fn events_never_carry_the_code_or_full_destination() {
    let (t, _, sink) = table();
    let c = t.issue(&spec("mo", "+14255551234")).unwrap();
    t.verify(DEMO, c.id, &wrong(c.code));
    verify_right(&t, &c);
    let code = String::from_utf8(digits(c.code)).unwrap();
    for e in sink.events() {
        let text = format!("{e:?}");
        assert!(!text.contains(&code), "{text}");
        assert!(!text.contains("4255551234"), "{text}");
        assert_eq!(e.subject, "mo");
    }
}

#[test]
fn ids_carry_their_shard_and_differ() {
    let (t, _, _) = table_with(TableConfig {
        shards: 64,
        ..TableConfig::default()
    });
    let mut seen = std::collections::HashSet::new();
    for i in 0..2000 {
        let c = t.issue(&spec(&format!("u{i}"), "+14255551234")).unwrap();
        assert!(seen.insert(c.id));
        assert!(t.status(DEMO, c.id).is_some());
    }
    // An id with a flipped random bit is unknown, not another challenge.
    let c = t.issue(&spec("zed", "+14255551234")).unwrap();
    let mut forged = c.id;
    forged.0[15] ^= 1;
    assert_eq!(
        t.verify(DEMO, forged, &digits(c.code)),
        VerifyOutcome::Unknown
    );
}

#[test]
fn bad_configuration_is_refused_with_the_field() {
    let clock = ManualClock::new(T0);
    let bad = TableConfig {
        shards: 3,
        ..TableConfig::default()
    };
    let err = ChallengeTable::new(bad, clock, Arc::new(MemorySink::default())).unwrap_err();
    assert!(err.to_string().starts_with("table.shards"), "{err}");
}

#[test]
fn concurrent_right_codes_approve_exactly_once() {
    let (t, _, _) = table();
    for round in 0..200 {
        let c = t
            .issue(&spec(&format!("race{round}"), "+14255551234"))
            .unwrap();
        let code = digits(c.code);
        let approvals: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| t.verify(DEMO, c.id, &code) == VerifyOutcome::Approved))
                .collect();
            hs.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
        });
        assert_eq!(approvals, 1, "round {round}");
    }
}

#[test]
fn many_threads_issue_and_verify_without_losing_count() {
    let (t, _, sink) = table_with(TableConfig {
        shards: 8,
        ..TableConfig::default()
    });
    std::thread::scope(|s| {
        for th in 0..4 {
            let t = &t;
            s.spawn(move || {
                for i in 0..2000 {
                    let c = t
                        .issue(&spec(
                            &format!("t{th}-u{}", i % 50),
                            &format!("+1425555{:04}", i % 7),
                        ))
                        .unwrap();
                    if i % 3 == 0 {
                        t.verify(DEMO, c.id, &wrong(c.code));
                    }
                    if i % 2 == 0 {
                        assert_eq!(verify_right(t, &c), VerifyOutcome::Approved);
                    }
                }
            });
        }
    });
    let issued = sink.count(EventKind::Issued);
    let approved = sink.count(EventKind::Approved);
    let superseded = sink.count(EventKind::Superseded);
    assert_eq!(issued, 8000);
    assert_eq!(approved, 4000);
    assert_eq!(t.pending(), issued - approved - superseded);
}

// ---- Property test: the table against a simple model -----------------------

#[derive(Clone, Debug)]
enum Op {
    Issue { subject: u8, dest: u8 },
    VerifyRight { pick: u8 },
    VerifyWrong { pick: u8 },
    VerifySubject { subject: u8, right: bool },
    Cancel { pick: u8 },
    Resend { pick: u8 },
    Advance { secs: u16 },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3, 0u8..2).prop_map(|(subject, dest)| Op::Issue { subject, dest }),
        2 => any::<u8>().prop_map(|pick| Op::VerifyRight { pick }),
        3 => any::<u8>().prop_map(|pick| Op::VerifyWrong { pick }),
        1 => (0u8..3, any::<bool>()).prop_map(|(subject, right)| Op::VerifySubject { subject, right }),
        1 => any::<u8>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<u8>().prop_map(|pick| Op::Resend { pick }),
        1 => (0u16..200).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Sweep),
    ]
}

#[derive(Clone, Debug)]
struct Model {
    id: ChallengeId,
    code: Code,
    subject: u8,
    expires_at_ms: u64,
    attempts_left: u8,
    finished: Option<ChallengeState>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn table_follows_the_model(ops in proptest::collection::vec(op(), 1..80), keep in any::<bool>()) {
        // `keep`: tombstones outlive the test (a long grace), or there are
        // none (grace 0: a finished challenge is forgotten at once).
        let grace = if keep { 1_000_000 } else { 0 };
        let (t, clock, _) = table_with(TableConfig { shards: 2, tombstone_grace_s: grace, ..TableConfig::default() });
        let mut all: Vec<Model> = Vec::new();
        let mut approvals: HashMap<ChallengeId, usize> = HashMap::new();
        for op in ops {
            let now = clock.now_ms();
            match op {
                Op::Issue { subject, dest } => {
                    let s = format!("s{subject}");
                    let d = format!("+1425555000{dest}");
                    let c = t.issue(&IssueSpec { ttl_s: 60, ..spec(&s, &d) }).unwrap();
                    if let Some(old) = c.superseded {
                        let m = all.iter_mut().find(|m| m.id == old).unwrap();
                        prop_assert!(m.finished.is_none() && m.expires_at_ms > now);
                        m.finished = Some(ChallengeState::Superseded);
                    }
                    // Nothing live with the same target may remain.
                    all.push(Model { id: c.id, code: c.code, subject, expires_at_ms: c.expires_at_ms, attempts_left: 5, finished: None });
                }
                Op::VerifyRight { pick } | Op::VerifyWrong { pick } if !all.is_empty() => {
                    let right = matches!(op, Op::VerifyRight { .. });
                    let n = all.len(); let m = &mut all[usize::from(pick) % n];
                    let typed = if right { digits(m.code) } else { wrong(m.code) };
                    let before = m.attempts_left;
                    let got = t.verify(DEMO, m.id, &typed);
                    let expected = match m.finished {
                        Some(ChallengeState::Locked) if keep => VerifyOutcome::Locked,
                        Some(ChallengeState::Expired) if keep => VerifyOutcome::Expired,
                        Some(_) => VerifyOutcome::Unknown,
                        None if m.expires_at_ms <= now => { m.finished = Some(ChallengeState::Expired); VerifyOutcome::Expired }
                        None if right => { m.finished = Some(ChallengeState::Approved); VerifyOutcome::Approved }
                        None => {
                            m.attempts_left -= 1;
                            if m.attempts_left == 0 { m.finished = Some(ChallengeState::Locked); VerifyOutcome::Locked }
                            else { VerifyOutcome::Rejected { attempts_left: m.attempts_left } }
                        }
                    };
                    prop_assert_eq!(got, expected);
                    prop_assert!(m.attempts_left <= before);
                    if got == VerifyOutcome::Approved { *approvals.entry(m.id).or_default() += 1; }
                }
                Op::VerifySubject { subject, right } => {
                    let live: Vec<usize> = all.iter().enumerate()
                        .filter(|(_, m)| m.subject == subject && m.finished.is_none())
                        .map(|(i, _)| i).collect();
                    let newest_live = live.iter().rev().copied().find(|&i| all[i].expires_at_ms > now);
                    let any_expired = live.iter().any(|&i| all[i].expires_at_ms <= now);
                    let typed = match newest_live { Some(i) if right => digits(all[i].code), Some(i) => wrong(all[i].code), None => b"000000".to_vec() };
                    let got = t.verify_subject(DEMO, &format!("s{subject}"), &typed);
                    // Every expired one newer than the match was expired on the way.
                    for &i in &live {
                        if all[i].expires_at_ms <= now && newest_live.is_none_or(|n| i > n) {
                            all[i].finished = Some(ChallengeState::Expired);
                        }
                    }
                    match newest_live {
                        Some(i) => {
                            let m = &mut all[i];
                            if right {
                                prop_assert_eq!(got, VerifyOutcome::Approved);
                                m.finished = Some(ChallengeState::Approved);
                                *approvals.entry(m.id).or_default() += 1;
                            } else {
                                m.attempts_left -= 1;
                                if m.attempts_left == 0 { m.finished = Some(ChallengeState::Locked); prop_assert_eq!(got, VerifyOutcome::Locked); }
                                else { prop_assert_eq!(got, VerifyOutcome::Rejected { attempts_left: m.attempts_left }); }
                            }
                        }
                        None if any_expired => prop_assert_eq!(got, VerifyOutcome::Expired),
                        None => prop_assert_eq!(got, VerifyOutcome::Unknown),
                    }
                }
                Op::Cancel { pick } if !all.is_empty() => {
                    let n = all.len(); let m = &mut all[usize::from(pick) % n];
                    let live = m.finished.is_none() && m.expires_at_ms > now;
                    prop_assert_eq!(t.cancel(DEMO, m.id), live);
                    if live { m.finished = Some(ChallengeState::Cancelled); }
                    else if m.finished.is_none() { m.finished = Some(ChallengeState::Expired); }
                }
                Op::Resend { pick } if !all.is_empty() => {
                    let m = &all[usize::from(pick) % all.len()];
                    let live = m.finished.is_none() && m.expires_at_ms > now;
                    let r = t.resend(DEMO, m.id);
                    prop_assert_eq!(r.is_some(), live);
                    if let Some(r) = r { prop_assert_eq!(digits(r.code), digits(m.code)); }
                }
                Op::Advance { secs } => clock.advance_s(u64::from(secs)),
                Op::Sweep => {
                    t.sweep();
                    for m in all.iter_mut().filter(|m| m.finished.is_none() && m.expires_at_ms <= now) {
                        m.finished = Some(ChallengeState::Expired);
                    }
                }
                _ => {}
            }
            // Status agrees with the model for every challenge.
            let now = clock.now_ms();
            for m in &all {
                let status = t.status(DEMO, m.id);
                if m.finished.is_some() && !keep {
                    prop_assert!(status.is_none(), "forgotten at once without a grace period");
                    continue;
                }
                let s = status.unwrap();
                let expected = match m.finished { Some(st) => st, None if m.expires_at_ms <= now => ChallengeState::Expired, None => ChallengeState::Pending };
                prop_assert_eq!(s.state, expected);
                prop_assert_eq!(s.attempts_left, m.attempts_left);
            }
            let pending_model = all.iter().filter(|m| m.finished.is_none()).count();
            prop_assert_eq!(t.pending(), pending_model);
            if !keep {
                // No tombstones: every entry held is a pending one.
                prop_assert_eq!(t.len(), pending_model);
            }
        }
        prop_assert!(approvals.values().all(|&n| n == 1));
    }
}
