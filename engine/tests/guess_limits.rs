//! The limits on guessing (issue: "the audit trail survives a flood"): a
//! tenant's VERIFY and CHECK rates, and per challenge a least gap after a
//! wrong code. A refused guess answers RATE_LIMITED with a retry hint and
//! counts no attempt against the challenge.

use std::sync::Arc;

use watchword_engine::directory::Directory;
use watchword_engine::{
    Channel, CheckRequest, Engine, EngineConfig, EngineError, IssueParams, ManualClock, NullSink,
    TenantPolicy, VerifyOutcome,
};

fn engine(policy: TenantPolicy) -> (Engine, Arc<ManualClock>) {
    let clock = ManualClock::new(1_800_000_000_000);
    let config = EngineConfig {
        tenants: vec![policy],
        ..EngineConfig::default()
    };
    let dir = Directory::in_memory(vec!["demo".into()]);
    let engine =
        Engine::start_with_directory(config, clock.clone(), Arc::new(NullSink), dir).unwrap();
    (engine, clock)
}

fn sms<'a>(subject: &'a str, destination: &'a str) -> IssueParams<'a> {
    IssueParams {
        subject,
        channel: Channel::Sms,
        destination,
        code_len: 0,
        ttl_s: 0,
        locale: "",
        client_ip: "",
    }
}

fn rate_limited<T: std::fmt::Debug>(r: Result<T, EngineError>) -> (u32, String) {
    match r {
        Err(EngineError::RateLimited {
            retry_after_ms,
            message,
        }) => (retry_after_ms, message),
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_verify_rate_refuses_the_excess_and_refills() {
    let (engine, clock) = engine(TenantPolicy {
        verify_per_s: 3,
        ..TenantPolicy::default()
    });
    let demo = engine.tenant_id("demo").unwrap();
    let ids: Vec<_> = (0..4)
        .map(|i| {
            let dest = format!("+1425555014{i}");
            engine
                .issue(demo, &sms(&format!("u{i}"), &dest))
                .unwrap()
                .id
        })
        .collect();
    for id in &ids[..3] {
        assert!(matches!(
            engine.verify(demo, *id, b"000000"),
            Ok(VerifyOutcome::Rejected { .. })
        ));
    }
    let (wait, message) = rate_limited(engine.verify(demo, ids[3], b"000000"));
    assert!((1..=334).contains(&wait), "{wait}");
    assert!(message.contains("VERIFY"), "{message}");
    // VERIFY_SUBJECT draws on the same budget.
    rate_limited(engine.verify_subject(demo, "u3", b"000000"));
    // Nothing was counted against the refused challenge.
    assert_eq!(engine.status(demo, ids[3]).unwrap().attempts_left, 5);
    clock.advance_ms(u64::from(wait));
    assert_eq!(
        engine.verify(demo, ids[3], b"000000"),
        Ok(VerifyOutcome::Rejected { attempts_left: 4 })
    );
    engine.begin_shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_holds_its_challenge_for_the_gap_without_counting_the_refusal() {
    let (engine, clock) = engine(TenantPolicy {
        verify_gap_ms: 1_000,
        ..TenantPolicy::default()
    });
    let demo = engine.tenant_id("demo").unwrap();
    let id = engine.issue(demo, &sms("ann", "+14255550150")).unwrap().id;
    let other = engine.issue(demo, &sms("bob", "+14255550151")).unwrap().id;
    // The first try is never held.
    assert_eq!(
        engine.verify(demo, id, b"000000"),
        Ok(VerifyOutcome::Rejected { attempts_left: 4 })
    );
    clock.advance_ms(400);
    let (wait, message) = rate_limited(engine.verify(demo, id, b"111111"));
    assert_eq!(wait, 600);
    assert!(message.contains("too soon"), "{message}");
    rate_limited(engine.verify_subject(demo, "ann", b"111111"));
    // Another challenge is not held by this one's wrong code.
    assert!(engine.verify(demo, other, b"000000").is_ok());
    clock.advance_ms(600);
    assert_eq!(
        engine.verify(demo, id, b"111111"),
        Ok(VerifyOutcome::Rejected { attempts_left: 3 }),
        "the refusals counted no attempt"
    );
    engine.begin_shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_check_rate_refuses_the_excess() {
    let (engine, clock) = engine(TenantPolicy {
        check_per_s: 2,
        ..TenantPolicy::default()
    });
    let demo = engine.tenant_id("demo").unwrap();
    let req = CheckRequest {
        subject: "nobody",
        answer: "",
        state: "",
        client_ip: "",
    };
    assert!(engine.check(demo, &req).is_ok());
    assert!(engine.check(demo, &req).is_ok());
    let (wait, message) = rate_limited(engine.check(demo, &req).map(|_| ()));
    assert!(message.contains("CHECK"), "{message}");
    clock.advance_ms(u64::from(wait));
    assert!(engine.check(demo, &req).is_ok());
    engine.begin_shutdown();
}
