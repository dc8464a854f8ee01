//! The directory and the one decision end to end, through the engine and its
//! simulated carriers: registering methods (a code typed back, a call
//! answered with #), every CHECK path (challenge, accept, each reject reason,
//! a state replayed, a state of another user, a call confirmed, declined and
//! not answered), and the audit records they leave.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::Receiver;
use watchword_engine::calls::SubscriberGuard;
use watchword_engine::check::{ConfirmOutcome, parse_state};
use watchword_engine::delivery::{AutoAnswer, OutboxMessage, RouterConfig};
use watchword_engine::directory::{MethodState, MethodType, UserPatch};
use watchword_engine::{
    ChallengeId, CheckRequest, CheckResult, CheckStep, Engine, EngineConfig, EngineError,
    MemorySink, RejectReason, SystemClock, TenantId, TenantPolicy,
};

const DEMO: TenantId = TenantId(0);
const OTHER: TenantId = TenantId(1);

struct Rig {
    engine: Engine,
    sink: Arc<MemorySink>,
    outbox: Receiver<Arc<OutboxMessage>>,
    _handsets: SubscriberGuard,
}

/// An engine whose handsets are held by the test (no auto answer), with a
/// short ring timeout.
fn rig_with(router: RouterConfig) -> Rig {
    rig_on(router, SystemClock::shared())
}

/// A rig on `clock` (a manual clock moves challenges past their expiry).
fn rig_on(router: RouterConfig, clock: Arc<dyn watchword_engine::Clock>) -> Rig {
    let mut config = EngineConfig {
        router,
        ..EngineConfig::default()
    };
    config.tenants.push(TenantPolicy {
        name: "other".into(),
        ..TenantPolicy::default()
    });
    rig_from(config, clock)
}

/// A rig of `config` on `clock`, its handsets held by the test.
fn rig_from(config: EngineConfig, clock: Arc<dyn watchword_engine::Clock>) -> Rig {
    let sink = Arc::new(MemorySink::default());
    let engine = Engine::start(config, clock, sink.clone()).unwrap();
    let (outbox, guard) = engine.outbox_subscribe(DEMO).unwrap();
    Rig {
        engine,
        sink,
        outbox,
        _handsets: guard,
    }
}

fn rig() -> Rig {
    let mut router = RouterConfig::default();
    for c in &mut router.carriers {
        c.simulated.ring_timeout_ms = 300;
    }
    rig_with(router)
}

async fn next_for(rx: &mut Receiver<Arc<OutboxMessage>>, id: ChallengeId) -> Arc<OutboxMessage> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = rx.recv().await.expect("outbox open");
            if m.id == id {
                return m;
            }
        }
    })
    .await
    .expect("the message arrives")
}

fn code_in(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == 6)
        .expect("a code in the text")
        .to_owned()
}

fn user(r: &Rig, tenant: TenantId, subject: &str) {
    r.engine
        .directory()
        .put_user(tenant, subject, &UserPatch::default(), r.engine.now_ms())
        .unwrap()
        .wait_blocking()
        .unwrap();
}

/// Registers and confirms an active method by its code.
async fn active_method(r: &mut Rig, subject: &str, kind: MethodType, dest: &str) {
    let m = r
        .engine
        .add_method(DEMO, subject, kind, dest)
        .unwrap()
        .wait()
        .await
        .unwrap();
    // The confirmation's message is the newest one to this destination.
    let text = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), r.outbox.recv())
            .await
            .unwrap()
            .unwrap();
        if msg.text.chars().filter(char::is_ascii_digit).count() >= 6 {
            break msg.text.clone();
        }
    };
    let done = r
        .engine
        .confirm_method(DEMO, subject, m.id, &code_in(&text))
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(matches!(done, ConfirmOutcome::Confirmed(_)), "{done:?}");
}

fn check(r: &Rig, tenant: TenantId, subject: &str, answer: &str, state: &str) -> CheckResult {
    match r
        .engine
        .check(
            tenant,
            &CheckRequest {
                subject,
                answer,
                state,
                client_ip: "198.51.100.7",
            },
        )
        .unwrap()
    {
        CheckStep::Done(res) => res,
        CheckStep::WaitCall(_) => panic!("held on a call"),
        // A token's new state: in memory here, nothing to wait for on disk.
        w @ CheckStep::WaitWrite(_) => {
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(w.finish()))
        }
    }
}

fn reason(res: &CheckResult) -> RejectReason {
    match res {
        CheckResult::Reject { reason, .. } => *reason,
        other => panic!("not a reject: {other:?}"),
    }
}

fn challenge(res: CheckResult) -> watchword_engine::ChallengeInfo {
    match res {
        CheckResult::Challenge(c) => c,
        other => panic!("not a challenge: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_disabled_and_methodless_users_are_rejected() {
    let r = rig();
    assert_eq!(
        reason(&check(&r, DEMO, "nobody", "", "")),
        RejectReason::UnknownUser
    );
    user(&r, DEMO, "ann");
    assert_eq!(
        reason(&check(&r, DEMO, "ann", "", "")),
        RejectReason::NoMethod
    );
    // A pending method does not count.
    let _ = r
        .engine
        .add_method(DEMO, "ann", MethodType::Email, "ann@example.com")
        .unwrap();
    assert_eq!(
        reason(&check(&r, DEMO, "ann", "", "")),
        RejectReason::NoMethod
    );
    let off = UserPatch {
        enabled: Some(false),
        ..UserPatch::default()
    };
    let _ = r.engine.directory().put_user(DEMO, "ann", &off, 1).unwrap();
    assert_eq!(
        reason(&check(&r, DEMO, "ann", "", "")),
        RejectReason::UnknownUser
    );
    // Another tenant's user of the same name is unknown here.
    assert_eq!(
        reason(&check(&r, OTHER, "ann", "", "")),
        RejectReason::UnknownUser
    );
    let long = "1".repeat(65);
    assert!(matches!(
        r.engine.check(
            DEMO,
            &CheckRequest {
                subject: "ann",
                answer: &long,
                state: "",
                client_ip: ""
            }
        ),
        Err(EngineError::InvalidArgument(m)) if m.starts_with("answer")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_method_is_confirmed_by_its_code_then_counts() {
    let mut r = rig();
    user(&r, DEMO, "ann");
    let m = r
        .engine
        .add_method(DEMO, "ann", MethodType::Email, "Ann@Example.com")
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(m.state, MethodState::Pending);
    let stored = r.engine.directory().user(DEMO, "ann").unwrap();
    assert_eq!(stored.methods.len(), 1);
    let msg = tokio::time::timeout(Duration::from_secs(10), r.outbox.recv())
        .await
        .unwrap()
        .unwrap();
    let code = code_in(&msg.text);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let w = r
        .engine
        .confirm_method(DEMO, "ann", m.id, wrong)
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(w, ConfirmOutcome::WrongCode { attempts_left: 4 });
    let before = r.engine.now_ms();
    match r
        .engine
        .confirm_method(DEMO, "ann", m.id, &code)
        .unwrap()
        .wait()
        .await
        .unwrap()
    {
        ConfirmOutcome::Confirmed(m) => {
            assert_eq!(m.state, MethodState::Active);
            assert!(m.confirmed_at_ms >= before);
            assert_eq!(
                m.effective_at_ms,
                m.confirmed_at_ms + 48 * 3_600_000,
                "the 48 h hold"
            );
        }
        other => panic!("{other:?}"),
    }
    // Confirming again is a conflict, not a second success.
    assert!(matches!(
        r.engine.confirm_method(DEMO, "ann", m.id, &code),
        Err(EngineError::Directory(_))
    ));
    let records = r.sink.records();
    assert!(
        records
            .iter()
            .any(|x| x.event == "method_confirmed" && x.method.as_deref() == Some("email"))
    );
    for x in &records {
        assert!(
            !format!("{x:?}").contains(&code),
            "a code in the audit: {x:?}"
        );
        assert!(
            !format!("{x:?}").contains("ann@example.com"),
            "a full address in the audit: {x:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_whose_confirmation_locks_fails_and_never_counts() {
    let mut r = rig();
    user(&r, DEMO, "ann");
    let m = r
        .engine
        .add_method(DEMO, "ann", MethodType::Sms, "+14255550100")
        .unwrap()
        .wait()
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), r.outbox.recv())
        .await
        .unwrap()
        .unwrap();
    let code = code_in(&msg.text);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (1..5).rev() {
        let w = r
            .engine
            .confirm_method(DEMO, "ann", m.id, wrong)
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(
            w,
            ConfirmOutcome::WrongCode {
                attempts_left: left
            }
        );
    }
    match r
        .engine
        .confirm_method(DEMO, "ann", m.id, wrong)
        .unwrap()
        .wait()
        .await
        .unwrap()
    {
        ConfirmOutcome::Failed { method, .. } => assert_eq!(method.state, MethodState::Failed),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        reason(&check(&r, DEMO, "ann", "", "")),
        RejectReason::NoMethod
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_challenge_accepts_once_and_counts_wrong_answers() {
    let mut r = rig();
    user(&r, DEMO, "ann");
    active_method(&mut r, "ann", MethodType::Email, "ann@example.com").await;
    let c = challenge(check(&r, DEMO, "ann", "", ""));
    assert_eq!(c.method, MethodType::Email);
    assert_eq!(c.masked_destination, "a***@example.com");
    assert_eq!(c.message, "Enter the code sent to a***@example.com");
    assert!(c.state.len() >= 16 && c.state.len() <= 64);
    let id = parse_state(&c.state).unwrap();
    let code = code_in(&next_for(&mut r.outbox, id).await.text);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    match check(&r, DEMO, "ann", wrong, &c.state) {
        CheckResult::Reject {
            reason,
            attempts_left,
            state,
        } => {
            assert_eq!((reason, attempts_left), (RejectReason::WrongAnswer, 4));
            assert_eq!(state, c.state, "a wrong answer keeps the challenge");
        }
        other => panic!("{other:?}"),
    }
    // Another user's state is refused and counts nothing against it.
    user(&r, DEMO, "bob");
    assert_eq!(
        reason(&check(&r, DEMO, "bob", &code, &c.state)),
        RejectReason::UnknownState
    );
    // Another tenant cannot use it either.
    user(&r, OTHER, "ann");
    assert_eq!(
        reason(&check(&r, OTHER, "ann", &code, &c.state)),
        RejectReason::UnknownState
    );
    assert_eq!(check(&r, DEMO, "ann", &code, &c.state), CheckResult::Accept);
    assert_eq!(
        reason(&check(&r, DEMO, "ann", &code, &c.state)),
        RejectReason::UnknownState,
        "a state is single-use"
    );
    assert_eq!(
        reason(&check(&r, DEMO, "ann", &code, "garbage")),
        RejectReason::UnknownState
    );
    let records: Vec<_> = r
        .sink
        .records()
        .into_iter()
        .filter(|x| x.event == "check")
        .collect();
    let results: Vec<_> = records
        .iter()
        .map(|x| (x.result.as_str(), x.reason.as_deref()))
        .collect();
    assert!(results.contains(&("challenge", None)));
    assert!(results.contains(&("failure", Some("wrong_answer"))));
    assert!(results.contains(&("success", None)));
    assert!(results.contains(&("failure", Some("unknown_state"))));
    for x in &records {
        assert!(!format!("{x:?}").contains(&code));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_answers_lock_the_challenge() {
    let mut r = rig();
    user(&r, DEMO, "ann");
    active_method(&mut r, "ann", MethodType::Sms, "+1 425-555-0100").await;
    let c = challenge(check(&r, DEMO, "ann", "sms", ""));
    assert_eq!(c.method, MethodType::Sms);
    assert_eq!(c.masked_destination, "+14*******00");
    let id = parse_state(&c.state).unwrap();
    let code = code_in(&next_for(&mut r.outbox, id).await.text);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..4 {
        assert_eq!(
            reason(&check(&r, DEMO, "ann", wrong, &c.state)),
            RejectReason::WrongAnswer
        );
    }
    match check(&r, DEMO, "ann", wrong, &c.state) {
        CheckResult::Reject { reason, state, .. } => {
            assert_eq!(reason, RejectReason::Locked);
            assert!(state.is_empty(), "a locked challenge returns no state");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        reason(&check(&r, DEMO, "ann", &code, &c.state)),
        RejectReason::Locked
    );
    // A keyword for a method the user lacks.
    assert_eq!(
        reason(&check(&r, DEMO, "ann", "call", "")),
        RejectReason::NoMethod
    );
    // An answer without a state and without tokens.
    assert_eq!(
        reason(&check(&r, DEMO, "ann", "123456", "")),
        RejectReason::NoMethod
    );
}

/// Answers the next call to `subject`'s phone with `digits` (None: let it ring).
async fn registered_call(r: &mut Rig, subject: &str, digits: Option<&str>) -> MethodState {
    let m = r
        .engine
        .add_method(DEMO, subject, MethodType::Call, "+14255550199")
        .unwrap()
        .wait()
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), r.outbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.channel, watchword_engine::Channel::Voice);
    assert!(msg.text.contains("press the pound key"), "{}", msg.text);
    if let Some(d) = digits {
        r.engine.call_answer(DEMO, msg.id, d).unwrap();
    }
    for _ in 0..200 {
        let s = r
            .engine
            .directory()
            .user(DEMO, subject)
            .unwrap()
            .method(m.id)
            .unwrap()
            .state;
        if s != MethodState::Pending {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    MethodState::Pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_method_is_confirmed_by_pound_and_fails_otherwise() {
    let mut r = rig();
    user(&r, DEMO, "ann");
    assert_eq!(
        registered_call(&mut r, "ann", Some("#")).await,
        MethodState::Active
    );
    user(&r, DEMO, "bob");
    assert_eq!(
        registered_call(&mut r, "bob", Some("7")).await,
        MethodState::Failed
    );
    user(&r, DEMO, "cid");
    assert_eq!(
        registered_call(&mut r, "cid", None).await,
        MethodState::Failed,
        "not answered within the ring timeout"
    );
    assert!(matches!(
        r.engine.call_answer(DEMO, ChallengeId([9; 16]), "#"),
        Err(EngineError::NotFound)
    ));
}

async fn call_check(r: &mut Rig, subject: &str, digits: Option<&str>) -> (CheckResult, String) {
    let c = challenge(check(r, DEMO, subject, "", ""));
    assert_eq!(c.method, MethodType::Call);
    assert_eq!(c.message, "Answer the call and press #");
    let id = parse_state(&c.state).unwrap();
    let step = r
        .engine
        .check(
            DEMO,
            &CheckRequest {
                subject,
                answer: "",
                state: &c.state,
                client_ip: "",
            },
        )
        .unwrap();
    let CheckStep::WaitCall(wait) = step else {
        panic!("a call's state is held")
    };
    let held = tokio::spawn(wait.finish());
    let _ = next_for(&mut r.outbox, id).await;
    if let Some(d) = digits {
        r.engine.call_answer(DEMO, id, d).unwrap();
    }
    (held.await.unwrap(), c.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_held_on_a_call_answers_with_its_outcome_once() {
    let mut r = rig();
    user(&r, DEMO, "ann");
    assert_eq!(
        registered_call(&mut r, "ann", Some("#")).await,
        MethodState::Active
    );
    let (res, state) = call_check(&mut r, "ann", Some("#")).await;
    assert_eq!(res, CheckResult::Accept);
    assert_eq!(
        reason(&check(&r, DEMO, "ann", "", &state)),
        RejectReason::UnknownState,
        "single-use"
    );
    let (res, _) = call_check(&mut r, "ann", Some("")).await;
    assert_eq!(reason(&res), RejectReason::CallNotConfirmed, "hung up");
    let (res, _) = call_check(&mut r, "ann", None).await;
    assert_eq!(reason(&res), RejectReason::CallNotConfirmed, "not answered");
    // Another user's call state is not this user's.
    user(&r, DEMO, "bob");
    let c = challenge(check(&r, DEMO, "ann", "", ""));
    assert_eq!(
        reason(&check(&r, DEMO, "bob", "", &c.state)),
        RejectReason::UnknownState
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handsets_answer_by_themselves_only_while_nobody_holds_them() {
    let mut router = RouterConfig::development();
    for c in &mut router.carriers {
        c.simulated.auto_answer = Some(AutoAnswer {
            digits: "#".into(),
            delay_ms: 50,
        });
        c.simulated.ring_timeout_ms = 400;
    }
    let r = rig_with(router);
    user(&r, DEMO, "ann");
    // The rig holds demo's handsets: no auto answer, the call rings out.
    let m = r
        .engine
        .add_method(DEMO, "ann", MethodType::Voice, "+14255550100")
        .unwrap();
    let id = m.value().id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r.engine
            .directory()
            .user(DEMO, "ann")
            .unwrap()
            .method(id)
            .unwrap()
            .state,
        MethodState::Pending
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        r.engine
            .directory()
            .user(DEMO, "ann")
            .unwrap()
            .method(id)
            .unwrap()
            .state,
        MethodState::Failed
    );
    // Nobody holds the other tenant's handsets: answered by itself.
    user(&r, OTHER, "ann");
    let m = r
        .engine
        .add_method(OTHER, "ann", MethodType::Voice, "+14255550100")
        .unwrap();
    let id = m.value().id;
    let mut state = MethodState::Pending;
    for _ in 0..100 {
        state = r
            .engine
            .directory()
            .user(OTHER, "ann")
            .unwrap()
            .method(id)
            .unwrap()
            .state;
        if state != MethodState::Pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, MethodState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dies_with_its_user_and_a_registration_is_refused_before_it_sends() {
    let mut r = rig();
    user(&r, DEMO, "ann");
    active_method(&mut r, "ann", MethodType::Email, "ann@example.com").await;
    let c = challenge(check(&r, DEMO, "ann", "", ""));
    let code = code_in(
        &next_for(&mut r.outbox, parse_state(&c.state).unwrap())
            .await
            .text,
    );
    let off = UserPatch {
        enabled: Some(false),
        ..UserPatch::default()
    };
    let _ = r.engine.directory().put_user(DEMO, "ann", &off, 1).unwrap();
    assert_eq!(
        reason(&check(&r, DEMO, "ann", &code, &c.state)),
        RejectReason::UnknownUser,
        "a user disabled since the challenge began is rejected"
    );
    // A second registration of the same address is refused before any
    // message goes out.
    let sends = r.engine.router().stats().accepted;
    assert!(matches!(
        r.engine
            .add_method(DEMO, "ann", MethodType::Email, "ann@example.com"),
        Err(EngineError::Directory(
            watchword_engine::directory::DirectoryError::Conflict(_)
        ))
    ));
    assert_eq!(r.engine.router().stats().accepted, sends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_challenge_rejects_as_expired_and_returns_no_state() {
    let clock = watchword_engine::ManualClock::new(1_800_000_000_000);
    let mut r = rig_on(RouterConfig::default(), clock.clone());
    user(&r, DEMO, "ann");
    active_method(&mut r, "ann", MethodType::Email, "ann@example.com").await;
    let c = challenge(check(&r, DEMO, "ann", "", ""));
    let code = code_in(
        &next_for(&mut r.outbox, parse_state(&c.state).unwrap())
            .await
            .text,
    );
    clock.advance_s(301);
    match check(&r, DEMO, "ann", &code, &c.state) {
        CheckResult::Reject { reason, state, .. } => {
            assert_eq!(reason, RejectReason::Expired);
            assert!(state.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

fn totp(secret: &watchword_engine::oath::Secret, now_ms: u64) -> String {
    let p = watchword_engine::oath::Params {
        algorithm: watchword_engine::oath::Algorithm::Sha1,
        digits: 6,
        period: 30,
    };
    watchword_engine::oath::Token::new(secret, p)
        .unwrap()
        .totp(now_ms / 1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_code_accepts_once_challenges_and_locks() {
    use watchword_engine::oath::{Algorithm, Kind, Params};
    let clock = watchword_engine::ManualClock::new(1_800_000_000_000);
    let r = rig_on(RouterConfig::default(), clock.clone());
    user(&r, DEMO, "ann");
    let params = Params {
        algorithm: Algorithm::Sha1,
        digits: 6,
        period: 30,
    };
    let (serial, secret) = r
        .engine
        .directory()
        .enroll_token(DEMO, "ann", Kind::Totp, params, r.engine.now_ms())
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(r.engine.directory().token_info(OTHER, &serial).is_none());
    let code = totp(&secret, r.engine.now_ms());
    assert_eq!(check(&r, DEMO, "ann", &code, ""), CheckResult::Accept);
    assert_eq!(
        reason(&check(&r, DEMO, "ann", &code, "")),
        RejectReason::WrongAnswer,
        "a code is accepted once"
    );
    // Two concurrent checks of the next code: exactly one accept.
    clock.advance_s(30);
    let code = totp(&secret, r.engine.now_ms());
    let accepts = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let step = r
                        .engine
                        .check(
                            DEMO,
                            &CheckRequest {
                                subject: "ann",
                                answer: &code,
                                state: "",
                                client_ip: "",
                            },
                        )
                        .unwrap();
                    matches!(step, CheckStep::WaitWrite(_))
                        && tokio::runtime::Runtime::new()
                            .unwrap()
                            .block_on(step.finish())
                            == CheckResult::Accept
                })
            })
            .collect();
        runs.into_iter()
            .map(|h| h.join().unwrap())
            .filter(|accepted| *accepted)
            .count()
    });
    assert_eq!(accepts, 1);
    // With the token as default method, an empty answer is a token challenge.
    let token_first = UserPatch {
        default_method: Some(Some(MethodType::Token)),
        ..UserPatch::default()
    };
    let _ = r
        .engine
        .directory()
        .put_user(DEMO, "ann", &token_first, 1)
        .unwrap();
    let c = challenge(check(&r, DEMO, "ann", "", ""));
    assert_eq!(
        (c.method, c.message.as_str()),
        (MethodType::Token, "Enter the code from your token")
    );
    assert!(c.state.len() <= 64 && c.state.starts_with("wt1"));
    assert_eq!(
        reason(&check(&r, DEMO, "bob", "123456", &c.state)),
        RejectReason::UnknownUser
    );
    user(&r, DEMO, "bob");
    assert_eq!(
        reason(&check(&r, DEMO, "bob", "123456", &c.state)),
        RejectReason::UnknownState,
        "another user's state"
    );
    clock.advance_s(30);
    let code = totp(&secret, r.engine.now_ms());
    assert_eq!(check(&r, DEMO, "ann", &code, &c.state), CheckResult::Accept);
    // Ten wrong codes in a row lock it; a reset unlocks it.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..9 {
        assert_eq!(
            reason(&check(&r, DEMO, "ann", wrong, "")),
            RejectReason::WrongAnswer
        );
    }
    assert_eq!(
        reason(&check(&r, DEMO, "ann", wrong, "")),
        RejectReason::Locked
    );
    clock.advance_s(30);
    let code = totp(&secret, r.engine.now_ms());
    assert_eq!(
        reason(&check(&r, DEMO, "ann", &code, "")),
        RejectReason::Locked,
        "locked until reset"
    );
    let info = r
        .engine
        .directory()
        .reset_token(DEMO, &serial)
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!((info.state.name(), info.failcount), ("active", 0));
    assert_eq!(check(&r, DEMO, "ann", &code, ""), CheckResult::Accept);
    // Deleting the user takes its token.
    let _ = r.engine.directory().delete_user(DEMO, "ann").unwrap();
    assert!(r.engine.directory().token_info(DEMO, &serial).is_none());
    let records = r.sink.records();
    assert!(records.iter().any(|x| x.event == "check"
        && x.method.as_deref() == Some("token")
        && x.result == "success"));
    for x in &records {
        assert!(!format!("{x:?}").contains(&code));
    }
}

/// A rig whose tenant `demo` asks for the PIN in front of the code.
fn prefix_rig(clock: Arc<dyn watchword_engine::Clock>) -> Rig {
    let mut config = EngineConfig::default();
    for t in &mut config.tenants {
        t.pin_mode = watchword_engine::PinMode::Prefix;
    }
    rig_from(config, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_prefix_mode_the_pin_and_the_code_are_checked_together() {
    use watchword_engine::oath::{Algorithm, Kind, Params};
    let clock = watchword_engine::ManualClock::new(1_800_000_000_000);
    let mut r = prefix_rig(clock.clone());
    user(&r, DEMO, "ann");
    let params = Params {
        algorithm: Algorithm::Sha1,
        digits: 6,
        period: 30,
    };
    let (serial, secret) = r
        .engine
        .directory()
        .enroll_token(DEMO, "ann", Kind::Totp, params, r.engine.now_ms())
        .unwrap()
        .wait()
        .await
        .unwrap();
    // No PIN yet: even the right code is a wrong answer.
    let code = totp(&secret, r.engine.now_ms());
    assert_eq!(
        reason(&check(&r, DEMO, "ann", &code, "")),
        RejectReason::WrongAnswer
    );
    let pin = r
        .engine
        .directory()
        .reset_pin(DEMO, "ann", 5, r.engine.now_ms())
        .unwrap()
        .wait()
        .await
        .unwrap();
    let pin = pin.expose().to_owned();
    assert_eq!(pin.len(), 5);
    // The code alone, a wrong PIN with the right code, the PIN alone: all
    // the same wrong answer, and each counts on the token.
    let wrong_pin = format!(
        "{}{}",
        if pin.starts_with('0') { "1" } else { "0" },
        &pin[1..]
    );
    for answer in [code.clone(), format!("{wrong_pin}{code}"), pin.clone()] {
        assert_eq!(
            reason(&check(&r, DEMO, "ann", &answer, "")),
            RejectReason::WrongAnswer,
            "{}",
            answer.len()
        );
    }
    assert_eq!(
        r.engine
            .directory()
            .token_info(DEMO, &serial)
            .unwrap()
            .failcount,
        4
    );
    // PIN then code: accepted (the wrong-PIN tries did not use the code up).
    assert_eq!(
        check(&r, DEMO, "ann", &format!("{pin}{code}"), ""),
        CheckResult::Accept
    );
    assert_eq!(
        r.engine
            .directory()
            .token_info(DEMO, &serial)
            .unwrap()
            .failcount,
        0
    );
    // A new length applies to PINs made afterwards: ann's 5 digits still work.
    user(&r, DEMO, "bob");
    let bob_pin = r
        .engine
        .directory()
        .reset_pin(DEMO, "bob", 8, r.engine.now_ms())
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(bob_pin.expose().len(), 8);
    clock.advance_s(30);
    let code = totp(&secret, r.engine.now_ms());
    assert_eq!(
        check(&r, DEMO, "ann", &format!("{pin}{code}"), ""),
        CheckResult::Accept
    );
    assert_eq!(
        r.engine.directory().pin_info(DEMO, "ann").unwrap().length,
        5
    );
    assert!(
        r.engine.directory().reset_pin(DEMO, "bob", 3, 0).is_err(),
        "4 to 12 digits"
    );

    // A code challenge (e-mail): PIN then the e-mailed code, with the state.
    active_method(&mut r, "bob", MethodType::Email, "bob@example.com").await;
    let ch = challenge(check(&r, DEMO, "bob", "email", ""));
    let text = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), r.outbox.recv())
            .await
            .unwrap()
            .unwrap();
        if msg.destination == "bob@example.com" {
            break msg.text.clone();
        }
    };
    let mailed = code_in(&text);
    let bob_pin = bob_pin.expose().to_owned();
    match check(&r, DEMO, "bob", &mailed, &ch.state) {
        CheckResult::Reject {
            reason: RejectReason::WrongAnswer,
            attempts_left,
            ..
        } => assert_eq!(attempts_left, 4, "the code without the PIN counts"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        check(&r, DEMO, "bob", &format!("{bob_pin}{mailed}"), &ch.state),
        CheckResult::Accept
    );
    // Nothing of a PIN reaches the audit trail.
    let audit = format!("{:?}", r.sink.records());
    assert!(!audit.contains(&pin) && !audit.contains(&bob_pin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_help_desk_trusts_a_caller_id_only_after_its_hold_and_else_sends_a_code() {
    use watchword_engine::helpdesk::{CallerVerification, HelpdeskOutcome};
    let clock = watchword_engine::ManualClock::new(1_800_000_000_000);
    let mut r = rig_on(RouterConfig::default(), clock.clone());
    user(&r, DEMO, "ann");
    // No contact: no code can be sent.
    let e = r
        .engine
        .helpdesk_verify(DEMO, "ann", "+14255550100", "key:agent")
        .unwrap_err();
    assert!(e.to_string().contains("no confirmed contact"), "{e}");
    assert!(matches!(
        r.engine.helpdesk_verify(DEMO, "nobody", "", "key:agent"),
        Err(EngineError::Directory(_))
    ));
    active_method(&mut r, "ann", MethodType::Sms, "+14255550100").await;
    // Within the 48 h hold the matching caller ID is not enough: a code goes
    // to the phone (the only contact).
    let started = r
        .engine
        .helpdesk_verify(DEMO, "ann", "(425) 555-0100", "key:agent")
        .unwrap();
    let CallerVerification::CodeSent {
        id,
        method,
        sent_to,
        ..
    } = started
    else {
        panic!("{started:?}");
    };
    assert_eq!(method, MethodType::Sms);
    assert!(!sent_to.contains("5550100"), "{sent_to}");
    let text = tokio::time::timeout(Duration::from_secs(10), r.outbox.recv())
        .await
        .unwrap()
        .unwrap()
        .text
        .clone();
    let code = code_in(&text);
    assert_eq!(
        r.engine
            .helpdesk_check(DEMO, &id, "000000x", "key:agent")
            .unwrap(),
        HelpdeskOutcome::Rejected { attempts_left: 4 }
    );
    // The id is no CHECK state, and belongs to its tenant only.
    assert_eq!(
        reason(&check(&r, DEMO, "ann", &code, &id)),
        RejectReason::UnknownState
    );
    assert!(matches!(
        r.engine.helpdesk_check(OTHER, &id, &code, "key:agent"),
        Err(EngineError::NotFound)
    ));
    assert_eq!(
        r.engine
            .helpdesk_check(DEMO, &id, &code, "key:agent")
            .unwrap(),
        HelpdeskOutcome::Approved
    );
    assert!(
        matches!(
            r.engine.helpdesk_check(DEMO, &id, &code, "key:agent"),
            Err(EngineError::NotFound)
        ),
        "an ended verification takes no more codes"
    );
    // 48 h later the same caller ID, in any notation, verifies at once;
    // another number still gets a code.
    clock.advance_s(48 * 3600 + 1);
    assert_eq!(
        r.engine
            .helpdesk_verify(DEMO, "ann", "+1 425-555-0100", "key:agent")
            .unwrap(),
        CallerVerification::ByCallerId
    );
    assert!(matches!(
        r.engine
            .helpdesk_verify(DEMO, "ann", "+14255550199", "key:agent")
            .unwrap(),
        CallerVerification::CodeSent { .. }
    ));
    // Audited: which way, and by which agent key; never the code.
    let records = r.sink.records();
    let hd: Vec<_> = records
        .iter()
        .filter(|x| x.event == "helpdesk_verification")
        .collect();
    assert!(
        hd.iter()
            .any(|x| x.reason.as_deref() == Some("caller_id") && x.result == "success")
    );
    assert!(
        hd.iter()
            .any(|x| x.reason.as_deref() == Some("code") && x.result == "success")
    );
    assert!(hd.iter().all(|x| x.agent.as_deref() == Some("key:agent")));
    assert!(!format!("{records:?}").contains(&code));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_call_mode_a_confirmation_call_wants_the_pin_then_pound() {
    let mut config = EngineConfig::default();
    for c in &mut config.router.carriers {
        c.simulated.ring_timeout_ms = 300;
    }
    // Seven calls to one number in a few seconds: no send limits here.
    config.router.limits.destination.max = 0;
    config.router.limits.subject.max = 0;
    for t in &mut config.tenants {
        t.pin_mode = watchword_engine::PinMode::Call;
        t.tokens.max_failures = 3;
    }
    let mut r = rig_from(config, SystemClock::shared());
    user(&r, DEMO, "ann");
    let pin = r
        .engine
        .directory()
        .reset_pin(DEMO, "ann", 5, r.engine.now_ms())
        .unwrap()
        .wait()
        .await
        .unwrap()
        .expose()
        .to_owned();
    // Registration by call wants the PIN too: `#` alone declines it.
    assert_eq!(
        registered_call(&mut r, "ann", Some("#")).await,
        MethodState::Failed
    );
    assert_eq!(
        registered_call(&mut r, "ann", Some(&format!("{pin}#"))).await,
        MethodState::Active
    );
    let (res, _) = call_check(&mut r, "ann", Some(&format!("{pin}#"))).await;
    assert_eq!(res, CheckResult::Accept);
    // Wrong PINs decline the call and count; the third locks the PIN (and
    // says so in the audit trail); then even the right PIN declines.
    let wrong = format!(
        "{}#",
        if pin.starts_with('9') { "0" } else { "9" }.repeat(5)
    );
    for _ in 0..2 {
        let (res, _) = call_check(&mut r, "ann", Some(&wrong)).await;
        assert_eq!(reason(&res), RejectReason::CallNotConfirmed);
    }
    assert_eq!(
        r.engine
            .directory()
            .pin_info(DEMO, "ann")
            .unwrap()
            .failcount,
        2
    );
    let (res, _) = call_check(&mut r, "ann", Some(&wrong)).await;
    assert_eq!(reason(&res), RejectReason::CallNotConfirmed);
    assert_eq!(
        r.engine.directory().pin_info(DEMO, "ann").unwrap().state,
        watchword_engine::directory::PinState::Locked
    );
    assert!(r.sink.records().iter().any(|x| x.event == "pin_locked"));
    let (res, _) = call_check(&mut r, "ann", Some(&format!("{pin}#"))).await;
    assert_eq!(reason(&res), RejectReason::CallNotConfirmed, "locked");
    assert!(!format!("{:?}", r.sink.records()).contains(&pin));
}

#[test]
fn a_check_request_prints_no_answer() {
    let req = CheckRequest {
        subject: "ann",
        answer: "48213905117",
        state: "",
        client_ip: "192.0.2.1",
    };
    let text = format!("{req:?}");
    assert!(
        !text.contains("48213905117") && text.contains("<11 bytes>"),
        "{text}"
    );
}
