//! A restart through a snapshot, at the engine's level: what was pending
//! still verifies with the same code, what expired meanwhile does not (and
//! says so in the audit), tombstones still answer STATUS, a limiter's window
//! still refuses the sixth send, and a snapshot never opens under another key.

use std::sync::Arc;
use std::time::Duration;

use watchword_engine::delivery::OutboxMessage;
use watchword_engine::directory::Directory;
use watchword_engine::secret::MasterKey;
use watchword_engine::snapshot::{Reader, SnapshotError};
use watchword_engine::{
    ChallengeId, ChallengeState, Channel, Engine, EngineConfig, EngineError, EventKind,
    IssueParams, ManualClock, MemorySink, TenantPolicy, VerifyOutcome,
};

const START_MS: u64 = 1_800_000_000_000;

fn params<'a>(subject: &'a str, channel: Channel, destination: &'a str) -> IssueParams<'a> {
    IssueParams {
        subject,
        channel,
        destination,
        code_len: 0,
        ttl_s: 0,
        locale: "",
        client_ip: "",
    }
}

fn config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.tenants.push(TenantPolicy {
        name: "other".into(),
        ..TenantPolicy::default()
    });
    config
}

fn names(config: &EngineConfig) -> Vec<String> {
    config.tenants.iter().map(|t| t.name.clone()).collect()
}

fn start(
    config: EngineConfig,
    clock: &Arc<ManualClock>,
    snapshot: Option<Reader>,
) -> (
    Engine,
    Option<watchword_engine::RestoreReport>,
    Arc<MemorySink>,
) {
    let sink = Arc::new(MemorySink::default());
    let dir = Directory::in_memory(names(&config));
    let (engine, report) =
        Engine::start_restoring(config, clock.clone(), sink.clone(), dir, snapshot).unwrap();
    (engine, report, sink)
}

async fn code_of(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<OutboxMessage>>,
    id: ChallengeId,
) -> String {
    let msg = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = rx.recv().await.expect("outbox open");
            if m.id == id {
                return m;
            }
        }
    })
    .await
    .expect("the message arrives");
    msg.text
        .split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == 6)
        .expect("a code")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_challenges_limits_and_tombstones_survive_a_restart() {
    let clock = ManualClock::new(START_MS);
    let key = MasterKey::generate();
    let (before, _, _) = start(config(), &clock, None);
    let demo = before.tenant_id("demo").unwrap();
    let other = before.tenant_id("other").unwrap();
    let (mut outbox, _h) = before.outbox_subscribe(demo).unwrap();
    let (mut outbox_other, _h2) = before.outbox_subscribe(other).unwrap();

    // ann: an SMS (sent five times: the destination's limit is spent) and
    // an e-mail, two pending challenges in one subject chain.
    let sms = before
        .issue(demo, &params("ann", Channel::Sms, "+14255550100"))
        .unwrap();
    let sms_code = code_of(&mut outbox, sms.id).await;
    for _ in 0..4 {
        before.resend(demo, sms.id).unwrap();
    }
    let mail = before
        .issue(demo, &params("ann", Channel::Email, "ann@example.com"))
        .unwrap();
    let mail_code = code_of(&mut outbox, mail.id).await;
    // One wrong guess on the e-mail's challenge.
    assert_eq!(
        before.verify(demo, mail.id, b"000000").unwrap(),
        VerifyOutcome::Rejected { attempts_left: 4 }
    );
    // bob: approved before the restart (a tombstone).
    let bob = before
        .issue(demo, &params("bob", Channel::Sms, "+14255550101"))
        .unwrap();
    let bob_code = code_of(&mut outbox, bob.id).await;
    assert_eq!(
        before.verify(demo, bob.id, bob_code.as_bytes()).unwrap(),
        VerifyOutcome::Approved
    );
    // carl (other tenant): a short validity that ends during the restart.
    let carl = before
        .issue(
            other,
            &IssueParams {
                ttl_s: 30,
                ..params("carl", Channel::Sms, "+14255550102")
            },
        )
        .unwrap();
    let _ = code_of(&mut outbox_other, carl.id).await;

    let file = before.snapshot(&key);
    assert_eq!(file.challenges, 4);
    assert!(file.limiter_keys >= 3, "{}", file.limiter_keys);
    before.begin_shutdown();
    drop(before);

    clock.advance_s(40);
    let reader = Reader::open(file.bytes.clone(), &key).unwrap();
    let (after, report, sink) = start(config(), &clock, Some(reader));
    let report = report.unwrap();
    assert_eq!(report.challenges.pending, 2, "{report:?}");
    assert_eq!(
        report.challenges.tombstones, 1,
        "bob's grace (60 s) is not over: {report:?}"
    );
    assert_eq!(report.challenges.expired, 1, "{report:?}");
    assert!(report.limiters_set_aside.is_empty(), "{report:?}");
    assert_eq!(
        after.status(demo, bob.id).unwrap().state,
        ChallengeState::Approved
    );
    // carl's challenge ended while the server was down: audited, not verifiable.
    let expired = sink.events();
    assert!(
        expired
            .iter()
            .any(|e| e.kind == EventKind::Expired && e.id == carl.id),
        "an expired event for carl"
    );
    assert_eq!(
        after.verify(other, carl.id, b"123456").unwrap(),
        VerifyOutcome::Unknown
    );

    // The e-mail kept its attempts, then verifies with the same code.
    let status = after.status(demo, mail.id).unwrap();
    assert_eq!(status.attempts_left, 4, "{status:?}");
    assert_eq!(
        after.verify(demo, mail.id, mail_code.as_bytes()).unwrap(),
        VerifyOutcome::Approved
    );
    // The destination's five sends are remembered: a sixth is refused.
    match after.resend(demo, sms.id) {
        Err(EngineError::RateLimited { message, .. }) => {
            assert!(message.contains("destination"), "{message}")
        }
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    }
    // Tenant isolation holds after the restart.
    assert_eq!(
        after.verify(other, sms.id, sms_code.as_bytes()).unwrap(),
        VerifyOutcome::Unknown
    );
    assert_eq!(
        after.verify(demo, sms.id, sms_code.as_bytes()).unwrap(),
        VerifyOutcome::Approved
    );
    after.begin_shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_and_subject_chains_come_back_whole() {
    let clock = ManualClock::new(START_MS);
    let key = MasterKey::generate();
    let (before, _, _) = start(config(), &clock, None);
    let demo = before.tenant_id("demo").unwrap();
    let (mut outbox, _h) = before.outbox_subscribe(demo).unwrap();
    let done = before
        .issue(demo, &params("dora", Channel::Sms, "+14255550110"))
        .unwrap();
    let code = code_of(&mut outbox, done.id).await;
    before.verify(demo, done.id, code.as_bytes()).unwrap();
    let a = before
        .issue(demo, &params("eve", Channel::Sms, "+14255550111"))
        .unwrap();
    let b = before
        .issue(demo, &params("eve", Channel::Email, "eve@example.com"))
        .unwrap();
    let b_code = code_of(&mut outbox, b.id).await;
    let file = before.snapshot(&key);
    drop(before);

    clock.advance_s(5);
    let (after, report, _) = start(
        config(),
        &clock,
        Some(Reader::open(file.bytes, &key).unwrap()),
    );
    let report = report.unwrap();
    assert_eq!(
        (report.challenges.pending, report.challenges.tombstones),
        (2, 1)
    );
    // The tombstone still answers STATUS.
    assert_eq!(
        after.status(demo, done.id).unwrap().state,
        ChallengeState::Approved
    );
    // The subject's newest challenge (the e-mail) is the one a code by
    // subject checks first.
    assert_eq!(
        after.verify_subject(demo, "eve", b_code.as_bytes()),
        Ok(VerifyOutcome::Approved)
    );
    // A new issue to the same target supersedes the restored one.
    let again = after
        .issue(demo, &params("eve", Channel::Sms, "+14255550111"))
        .unwrap();
    assert_ne!(again.id, a.id);
    assert_eq!(
        after.status(demo, a.id).unwrap().state,
        ChallengeState::Superseded
    );
    // A second snapshot of the restored engine opens with the same seeds.
    let second = after.snapshot(&key);
    let r = Reader::open(second.bytes, &key).unwrap();
    assert_eq!(r.entries_left, 4);
    after.begin_shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_or_a_changed_byte_is_refused_and_nothing_is_loaded() {
    let clock = ManualClock::new(START_MS);
    let key = MasterKey::generate();
    let (before, _, _) = start(config(), &clock, None);
    let demo = before.tenant_id("demo").unwrap();
    before
        .issue(demo, &params("fay", Channel::Sms, "+14255550120"))
        .unwrap();
    let file = before.snapshot(&key).bytes;
    drop(before);
    assert_eq!(
        Reader::open(file.clone(), &MasterKey::generate()).unwrap_err(),
        SnapshotError::Unauthentic
    );
    let mut changed = file.clone();
    let at = changed.len() - 40;
    changed[at] ^= 0x20;
    assert_eq!(
        Reader::open(changed, &key).unwrap_err(),
        SnapshotError::Unauthentic
    );
    assert!(Reader::open(file[..file.len() / 2].to_vec(), &key).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_tenant_drops_its_challenges_and_the_subject_windows() {
    let clock = ManualClock::new(START_MS);
    let key = MasterKey::generate();
    let (before, _, _) = start(config(), &clock, None);
    let other = before.tenant_id("other").unwrap();
    let demo = before.tenant_id("demo").unwrap();
    before
        .issue(other, &params("gil", Channel::Sms, "+14255550130"))
        .unwrap();
    let kept = before
        .issue(demo, &params("hal", Channel::Sms, "+14255550131"))
        .unwrap();
    let file = before.snapshot(&key).bytes;
    drop(before);
    // The restart's configuration has only `demo`.
    let (after, report, _) = start(
        EngineConfig::default(),
        &clock,
        Some(Reader::open(file, &key).unwrap()),
    );
    let report = report.unwrap();
    assert_eq!(report.challenges.dropped_unknown_tenant, 1, "{report:?}");
    assert_eq!(report.challenges.pending, 1, "{report:?}");
    assert!(
        report.limiters_set_aside.iter().any(|n| n == "subject"),
        "{report:?}"
    );
    assert_eq!(
        after.status(demo, kept.id).unwrap().state,
        ChallengeState::Pending
    );
    after.begin_shutdown();
}
