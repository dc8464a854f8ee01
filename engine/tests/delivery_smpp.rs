//! The SMPP carrier against a real SMSC: the `smpp` npm package's server,
//! scripted by `engine/tests/smsc/smsc.js` and started by each test with
//! `node` on a free loopback port. Binds, `submit_sm` and its statuses,
//! delivery receipts (TLVs or text only), throttling without the breaker,
//! refused binds opening it, reconnection after the SMSC dies, and the
//! `enquire_link` keep-alive; through the router where the outcome is the
//! router's.
//!
//! A test whose SMSC cannot run (no `node`, or `npm ci` not run in
//! engine/tests/smsc) says so and passes, except in CI (`CI` set), where it
//! fails. Every SMSC listens on 127.0.0.1 and is killed by its pid when its
//! test ends, also on panic. Real sockets and real time with short timeouts.

#[path = "smsc_support.rs"]
mod smsc_support;
#[path = "delivery_support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use smsc_support::{PASSWORD, SYSTEM_ID, Smsc, field, smsc_ready};
use support::TestLedger;
use tokio::time::Instant;
use watchword_engine::delivery::{
    BreakerConfig, BreakerState, Carrier, CarrierConfig, CarrierKind, CarrierMessage, CarrierSlot,
    DeliveryJob, DialPlan, Limit, MessagePurpose, Receipt, ReceiptToken, Receipts, Router,
    RouterConfig, SendOutcome, SlotHint, SmppCarrier, SmppConfig, TenantDelivery, normalize,
};
use watchword_engine::{ChallengeId, Channel, Code, DeliveryState, ManualClock, TenantId};

/// The text of a SUBMIT line (hex of its UTF-8).
fn submitted_text(line: &str) -> String {
    let hex = field(line, "text");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

// ---------------------------------------------------------------- carriers

fn smpp(name: &str, port: u16, password: &str, priority: u8) -> CarrierConfig {
    CarrierConfig {
        name: name.into(),
        kind: CarrierKind::Smpp,
        channels: vec![Channel::Sms],
        priority,
        timeout_ms: 2_000,
        breaker: BreakerConfig {
            failure_threshold: 2,
            cooldown_ms: 10_000,
            max_cooldown_ms: 10_000,
        },
        smpp: SmppConfig {
            host: "127.0.0.1".into(),
            port,
            system_id: SYSTEM_ID.into(),
            password: password.into(),
            reconnect_min_ms: 100,
            reconnect_max_ms: 400,
            receipt_timeout_ms: 10_000,
            ..SmppConfig::default()
        },
        ..CarrierConfig::default()
    }
}

fn router_config(carriers: Vec<CarrierConfig>) -> RouterConfig {
    let mut cfg = RouterConfig {
        carriers,
        receipt_timeout_ms: 10_000,
        ..RouterConfig::default()
    };
    cfg.limits.destination = Limit::new(0, 1);
    cfg.retry.base_backoff_ms = 20;
    cfg.retry.max_backoff_ms = 200;
    cfg
}

fn job(ledger: &TestLedger, n: u64, locale: &str) -> DeliveryJob {
    let t = TenantDelivery::default();
    DeliveryJob {
        tenant: TenantId(0),
        id: ledger.add(n, Duration::from_secs(300)),
        slot_hint: SlotHint::NONE,
        channel: Channel::Sms,
        destination: normalize(Channel::Sms, "+1 425 555 1234", &t).unwrap(),
        code: Code::from_parts(123456, 6).unwrap(),
        expires_at_ms: u64::MAX,
        locale: locale.into(),
        service_name: "Acme".into(),
        avoid_carrier: CarrierSlot::NONE,
        operator_assistance: false,
        purpose: MessagePurpose::Code,
    }
}

fn msg(n: u64, sender: &str, text: &str) -> CarrierMessage {
    CarrierMessage {
        tenant: TenantId(0),
        id: support::id(n),
        channel: Channel::Sms,
        to: "+14255551234".into(),
        dial_plan: DialPlan::Direct,
        purpose: MessagePurpose::Code,
        sender: sender.into(),
        text: text.into(),
        token: ReceiptToken(n),
    }
}

/// Waits until the challenge's last delivery state is final; returns it.
async fn final_state(
    ledger: &TestLedger,
    id: ChallengeId,
    within: Duration,
) -> (DeliveryState, String, Option<String>) {
    let end = Instant::now() + within;
    loop {
        if let Some(last) = ledger.last(id)
            && matches!(last.0, DeliveryState::Delivered | DeliveryState::Failed)
        {
            return last;
        }
        assert!(
            Instant::now() < end,
            "no final state for {id:?}: {:?}",
            ledger.last(id)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_bound(c: &SmppCarrier, n: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    while c.binds_up() != n {
        assert!(Instant::now() < end, "{} binds up, want {n}", c.binds_up());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receipts reported, by token.
type Got = Arc<Mutex<Vec<(u64, Receipt)>>>;

/// Receipts collected by token.
fn collect() -> (Receipts, Got) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    (Receipts::from_fn(move |t, r| g.lock().push((t.0, r))), got)
}

async fn wait_receipts(got: &Mutex<Vec<(u64, Receipt)>>, n: usize) {
    let end = Instant::now() + Duration::from_secs(5);
    while got.lock().len() < n {
        assert!(Instant::now() < end, "receipts: {:?}", got.lock());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_message_is_delivered_by_its_receipt() {
    if !smsc_ready() {
        return;
    }
    let smsc = Smsc::start().await;
    let ledger = TestLedger::new();
    let cfg = router_config(vec![smpp("smsc", smsc.port, PASSWORD, 0)]);
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let j = job(&ledger, 1, "fr");
    let id = j.id;
    router.try_reserve().unwrap().send(j);
    let (state, carrier, reason) = final_state(&ledger, id, Duration::from_secs(10)).await;
    assert_eq!(
        (state, carrier.as_str(), reason),
        (DeliveryState::Delivered, "smsc", None)
    );
    let updates: Vec<DeliveryState> = ledger.recs.lock()[&id]
        .updates
        .iter()
        .map(|u| u.0)
        .collect();
    assert_eq!(updates, [DeliveryState::Sent, DeliveryState::Delivered]);
    assert_eq!(router.stats().delivered, 1);

    let submit = smsc.submits(1).await.remove(0);
    assert_eq!(field(&submit, "status"), "0x00");
    // A US short code of the sender pool, as a network-specific number.
    assert!(
        ["97671", "69829", "51789", "99399"].contains(&field(&submit, "from").as_str()),
        "{submit}"
    );
    assert_eq!(
        (field(&submit, "from_ton"), field(&submit, "from_npi")),
        ("3".into(), "0".into())
    );
    assert_eq!(field(&submit, "to"), "14255551234");
    assert_eq!(
        (field(&submit, "to_ton"), field(&submit, "to_npi")),
        ("1".into(), "1".into())
    );
    // French with an é: still GSM 7-bit (data_coding 0), decoded by the SMSC.
    assert_eq!(field(&submit, "dc"), "0");
    assert_eq!(field(&submit, "rd"), "1");
    let text = submitted_text(&submit);
    assert!(
        text.starts_with("123456 est votre code de vérification Acme."),
        "{text}"
    );
    // The receipt was answered.
    assert!(
        smsc.wait_for(
            |l| l.starts_with("RECEIPT_RESP ") && l.ends_with("status=0x00"),
            1,
            Duration::from_secs(5)
        )
        .await
    );
    assert_eq!(smsc.count(|l| l.starts_with("BIND status=0x00")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ucs2_texts_and_each_kind_of_sender_go_as_the_smsc_expects() {
    if !smsc_ready() {
        return;
    }
    let smsc = Smsc::start().await;
    let carrier = SmppCarrier::new(&smpp("smsc", smsc.port, PASSWORD, 0)).unwrap();
    wait_bound(&carrier, 1).await;
    let (receipts, got) = collect();
    let cyrillic = "Ваш код 123456. Он действует 5 мин.";
    for (n, sender, text) in [
        (1, "Watchword", cyrillic),
        (2, "+15550100001", "123456 is your code. [ok] 5 €"),
        (3, "97671", "123456 is your code."),
    ] {
        assert_eq!(
            carrier.send(msg(n, sender, text), &receipts).await,
            SendOutcome::Accepted
        );
    }
    let submits = smsc.submits(3).await;
    let s = |i: usize, k: &str| field(&submits[i], k);
    assert_eq!(
        (s(0, "dc"), s(0, "from"), s(0, "from_ton")),
        ("8".into(), "Watchword".into(), "5".into())
    );
    assert_eq!(submitted_text(&submits[0]), cyrillic);
    assert_eq!(
        (s(1, "dc"), s(1, "from"), s(1, "from_ton"), s(1, "from_npi")),
        ("0".into(), "15550100001".into(), "1".into(), "1".into())
    );
    assert_eq!(submitted_text(&submits[1]), "123456 is your code. [ok] 5 €");
    assert_eq!(
        (s(2, "from"), s(2, "from_ton")),
        ("97671".into(), "3".into())
    );
    wait_receipts(&got, 3).await;
    let mut tokens: Vec<u64> = got.lock().iter().map(|(t, _)| *t).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [1, 2, 3]);
    assert!(got.lock().iter().all(|(_, r)| *r == Receipt::Delivered));

    // Longer than one segment: refused here, never sent, never split.
    let out = carrier
        .send(msg(4, "97671", &"x".repeat(161)), &receipts)
        .await;
    assert!(
        matches!(&out, SendOutcome::Rejected { reason } if reason.contains("more than one SMS segment")),
        "{out:?}"
    );
    // A sender no SMSC takes: a failure (another sender or carrier may do).
    let out = carrier.send(msg(5, "Watchword Inc", "hi"), &receipts).await;
    assert!(
        matches!(&out, SendOutcome::Failed { reason } if reason.starts_with("sender:")),
        "{out:?}"
    );
    assert_eq!(smsc.count(|l| l.starts_with("SUBMIT ")), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_backs_off_without_opening_the_breaker_and_the_message_still_goes() {
    if !smsc_ready() {
        return;
    }
    let smsc = Smsc::start().await;
    // Three throttles, more than the breaker's threshold of two failures.
    smsc.control("throttle 2").await;
    smsc.control("qfull 1").await;
    let ledger = TestLedger::new();
    let cfg = router_config(vec![smpp("smsc", smsc.port, PASSWORD, 0)]);
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let t0 = Instant::now();
    let j = job(&ledger, 1, "en");
    let id = j.id;
    router.try_reserve().unwrap().send(j);
    let (state, carrier, _) = final_state(&ledger, id, Duration::from_secs(15)).await;
    assert_eq!(
        (state, carrier.as_str()),
        (DeliveryState::Delivered, "smsc")
    );
    assert_eq!(router.breaker_state("smsc"), Some(BreakerState::Closed));
    let statuses: Vec<String> = smsc
        .submits(4)
        .await
        .iter()
        .map(|l| field(l, "status"))
        .collect();
    assert_eq!(statuses, ["0x58", "0x58", "0x14", "0x00"]);
    // It backed off: 0.5 s, 1 s, then 2 s between the tries.
    assert!(
        t0.elapsed() >= Duration::from_millis(3_000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(router.stats().tries, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bind_opens_the_breaker_and_the_router_fails_over() {
    if !smsc_ready() {
        return;
    }
    let smsc = Smsc::start().await;
    // The carrier alone says why: the refusal's status, never the password.
    let wrong = SmppCarrier::new(&smpp("wrong", smsc.port, "wrong-pw", 0)).unwrap();
    assert!(
        smsc.wait_for(
            |l| l.starts_with("BIND status=0x0e"),
            1,
            Duration::from_secs(5)
        )
        .await
    );
    let out = wrong.send(msg(9, "97671", "x"), &Receipts::discard()).await;
    let SendOutcome::Failed { reason } = &out else {
        panic!("{out:?}")
    };
    assert!(
        reason.starts_with("no SMPP bind (bind refused: ESME_RINVPASWD (0x0E))"),
        "{reason}"
    );
    assert!(!reason.contains("wrong-pw") && !format!("{wrong:?}").contains("wrong-pw"));
    drop(wrong);

    let ledger = TestLedger::new();
    let cfg = router_config(vec![
        smpp("refused", smsc.port, "wrong-pw", 0),
        smpp("backup", smsc.port, PASSWORD, 1),
    ]);
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let mut ids = Vec::new();
    for n in 1..=4 {
        let j = job(&ledger, n, "en");
        ids.push(j.id);
        router.try_reserve().unwrap().send(j);
    }
    for id in ids {
        let (state, carrier, _) = final_state(&ledger, id, Duration::from_secs(10)).await;
        assert_eq!(
            (state, carrier.as_str()),
            (DeliveryState::Delivered, "backup")
        );
    }
    assert_eq!(router.breaker_state("refused"), Some(BreakerState::Open));
    assert_eq!(router.breaker_state("backup"), Some(BreakerState::Closed));
    assert_eq!(smsc.submits(4).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_carrier_binds_again_after_the_smsc_is_killed() {
    if !smsc_ready() {
        return;
    }
    let mut smsc = Smsc::start().await;
    let port = smsc.port;
    let carrier = Arc::new(SmppCarrier::new(&smpp("smsc", port, PASSWORD, 0)).unwrap());
    let ledger = TestLedger::new();
    let router = Router::start_with_carriers(
        router_config(vec![smpp("smsc", port, PASSWORD, 0)]),
        ledger.clone(),
        ManualClock::new(0),
        vec![("smsc".into(), carrier.clone() as Arc<dyn Carrier>)],
    )
    .unwrap();
    wait_bound(&carrier, 1).await;
    let j = job(&ledger, 1, "en");
    let first = j.id;
    router.try_reserve().unwrap().send(j);
    assert_eq!(
        final_state(&ledger, first, Duration::from_secs(10)).await.0,
        DeliveryState::Delivered
    );

    smsc.kill();
    wait_bound(&carrier, 0).await;
    let out = carrier
        .send(msg(9, "97671", "x"), &Receipts::discard())
        .await;
    assert!(
        matches!(&out, SendOutcome::Failed { reason } if reason.starts_with("no SMPP bind (")),
        "{out:?}"
    );

    let smsc = Smsc::start_on(port).await;
    wait_bound(&carrier, 1).await;
    assert_eq!(smsc.count(|l| l.starts_with("BIND status=0x00")), 1);
    let j = job(&ledger, 2, "en");
    let second = j.id;
    router.try_reserve().unwrap().send(j);
    assert_eq!(
        final_state(&ledger, second, Duration::from_secs(10))
            .await
            .0,
        DeliveryState::Delivered
    );
    assert_eq!(smsc.submits(1).await.len(), 1);
    assert_eq!(router.breaker_state("smsc"), Some(BreakerState::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelivered_receipt_ends_the_message_failed() {
    if !smsc_ready() {
        return;
    }
    let smsc = Smsc::start().await;
    smsc.control("state 5").await;
    let ledger = TestLedger::new();
    let cfg = router_config(vec![smpp("smsc", smsc.port, PASSWORD, 0)]);
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let j = job(&ledger, 1, "en");
    let id = j.id;
    router.try_reserve().unwrap().send(j);
    let (state, carrier, reason) = final_state(&ledger, id, Duration::from_secs(10)).await;
    assert_eq!((state, carrier.as_str()), (DeliveryState::Failed, "smsc"));
    let reason = reason.unwrap();
    assert_eq!(reason, "the SMSC reported it UNDELIVERABLE (err 001)");
    // Once: a receipt ends the message, it is not sent again.
    assert_eq!(smsc.submits(1).await.len(), 1);
    let s = router.stats();
    assert_eq!((s.delivered, s.failed, s.awaiting_receipt), (0, 1, 0));
    assert_eq!(router.breaker_state("smsc"), Some(BreakerState::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_with_the_id_only_in_their_text_are_matched() {
    if !smsc_ready() {
        return;
    }
    let smsc = Smsc::start().await;
    // No TLVs; the text quotes the id in decimal while submit_sm_resp gave
    // it in hexadecimal.
    smsc.control("style text").await;
    smsc.control("dec_in_text on").await;
    let carrier = SmppCarrier::new(&smpp("smsc", smsc.port, PASSWORD, 0)).unwrap();
    wait_bound(&carrier, 1).await;
    let (receipts, got) = collect();
    assert_eq!(
        carrier.send(msg(1, "97671", "a"), &receipts).await,
        SendOutcome::Accepted
    );
    // The SMSC reads the state when it sends the receipt.
    wait_receipts(&got, 1).await;
    smsc.control("state 3").await;
    assert_eq!(
        carrier.send(msg(2, "97671", "b"), &receipts).await,
        SendOutcome::Accepted
    );
    wait_receipts(&got, 2).await;
    let mut got = got.lock().clone();
    got.sort_by_key(|(t, _)| *t);
    assert_eq!(
        got,
        [
            (1, Receipt::Delivered),
            (
                2,
                Receipt::Undelivered {
                    reason: "the SMSC reported it EXPIRED (err 001)".into()
                }
            )
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enquire_link_keeps_an_idle_bind_alive() {
    if !smsc_ready() {
        return;
    }
    let smsc = Smsc::start().await;
    let mut c = smpp("smsc", smsc.port, PASSWORD, 0);
    c.smpp.enquire_link_s = 1;
    let carrier = SmppCarrier::new(&c).unwrap();
    wait_bound(&carrier, 1).await;
    assert!(
        smsc.wait_for(|l| l == "ENQUIRE_LINK", 3, Duration::from_secs(6))
            .await,
        "{:?}",
        smsc.lines.lock()
    );
    assert_eq!(carrier.binds_up(), 1);
    assert_eq!(
        smsc.count(|l| l.starts_with("BIND ")),
        1,
        "one bind, never dropped"
    );
    assert_eq!(smsc.count(|l| l == "CLOSED"), 0);
    assert_eq!(
        carrier
            .send(msg(1, "97671", "x"), &Receipts::discard())
            .await,
        SendOutcome::Accepted
    );
    // Dropping the carrier unbinds.
    drop(carrier);
    assert!(
        smsc.wait_for(|l| l == "UNBIND", 1, Duration::from_secs(5))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_destination_is_rejected_and_an_unanswered_submit_fails() {
    if !smsc_ready() {
        return;
    }
    let smsc = Smsc::start().await;
    let mut c = smpp("smsc", smsc.port, PASSWORD, 0);
    c.timeout_ms = 1_000;
    let carrier = SmppCarrier::new(&c).unwrap();
    wait_bound(&carrier, 1).await;
    smsc.control("status 1 11").await;
    let out = carrier
        .send(msg(1, "97671", "x"), &Receipts::discard())
        .await;
    assert_eq!(
        out,
        SendOutcome::Rejected {
            reason: "the SMSC refused it: ESME_RINVDSTADR (0x0B)".into()
        }
    );
    smsc.control("status 1 8").await;
    let out = carrier
        .send(msg(2, "97671", "x"), &Receipts::discard())
        .await;
    assert_eq!(
        out,
        SendOutcome::Failed {
            reason: "the SMSC answered ESME_RSYSERR (0x08)".into()
        }
    );
    smsc.control("silent 1").await;
    let out = carrier
        .send(msg(3, "97671", "x"), &Receipts::discard())
        .await;
    assert_eq!(
        out,
        SendOutcome::Failed {
            reason: "no submit_sm_resp within 1000 ms".into()
        }
    );
    // The bind survives all three.
    assert_eq!(
        carrier
            .send(msg(4, "97671", "x"), &Receipts::discard())
            .await,
        SendOutcome::Accepted
    );
    assert_eq!(smsc.count(|l| l.starts_with("BIND ")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_spread_over_the_binds_within_their_windows() {
    if !smsc_ready() {
        return;
    }
    let smsc = Smsc::start().await;
    let mut c = smpp("smsc", smsc.port, PASSWORD, 0);
    c.smpp.binds = 2;
    c.smpp.window = 2;
    let carrier = Arc::new(SmppCarrier::new(&c).unwrap());
    wait_bound(&carrier, 2).await;
    let (receipts, got) = collect();
    let sends: Vec<_> = (1..=20)
        .map(|n| {
            let c = Arc::clone(&carrier);
            let r = receipts.clone();
            tokio::spawn(async move { c.send(msg(n, "97671", "x"), &r).await })
        })
        .collect();
    for s in sends {
        assert_eq!(s.await.unwrap(), SendOutcome::Accepted);
    }
    wait_receipts(&got, 20).await;
    assert_eq!(smsc.count(|l| l.starts_with("BIND status=0x00")), 2);
    assert_eq!(smsc.submits(20).await.len(), 20);
}
