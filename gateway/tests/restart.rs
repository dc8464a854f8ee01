//! A graceful restart of the real binary keeps what people are in the middle
//! of: a code issued before SIGTERM verifies after the restart, one whose
//! validity ended while the server was down does not, the per-destination
//! limit still refuses the sixth send, and a damaged snapshot stops the start
//! with a clear error until the operator says `--discard-snapshot`.

mod child;

use std::time::{Duration, Instant};

use child::Server;
use watchword_engine::{Channel, VerifyOutcome};
use watchword_gateway::client::ClientError;
use watchword_gateway::protocol::{Delivered, Status};
use watchword_gateway::{Client, ClientConfig, IssueRequest};

fn sms(subject: &str, destination: &str, ttl_s: u16) -> IssueRequest {
    IssueRequest {
        subject: subject.into(),
        channel: Channel::Sms,
        destination: destination.into(),
        code_len: 0,
        ttl_s,
        locale: String::new(),
        client_ip: String::new(),
    }
}

async fn client(server: &Server) -> Client {
    Client::connect(ClientConfig {
        addr: format!("127.0.0.1:{}", server.proto_port),
        ..ClientConfig::default()
    })
    .await
    .unwrap()
}

async fn code_for(
    rx: &mut tokio::sync::mpsc::Receiver<Delivered>,
    id: watchword_engine::ChallengeId,
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
    .expect("the code is delivered");
    msg.text
        .split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == 6)
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_keeps_pending_codes_and_limits() {
    let mut server = Server::start();
    let snapshot = server.dir.path().join("data").join("pending.snapshot");
    let c = client(&server).await;
    let mut outbox = c.subscribe_outbox().await.unwrap();
    // Issued first: a 30 s validity that ends while the server is down.
    let short = c.issue(&sms("short", "+14255550140", 30)).await.unwrap();
    let short_issued = Instant::now();
    let short_code = code_for(&mut outbox, short.id).await;
    // Five sends to one destination: the limit's window is full.
    let kept = c.issue(&sms("kept", "+14255550141", 0)).await.unwrap();
    let kept_code = code_for(&mut outbox, kept.id).await;
    for _ in 0..4 {
        c.resend(kept.id).await.unwrap();
    }
    drop(c);

    assert!(server.terminate(), "SIGTERM exits 0:\n{}", server.log());
    let bytes = std::fs::read(&snapshot).expect("a snapshot after SIGTERM");
    let text = String::from_utf8_lossy(&bytes);
    for secret in [&kept_code, &short_code, &"4255550141".to_owned()] {
        assert!(!text.contains(secret.as_str()), "the snapshot is sealed");
    }
    // Stay down until the short validity has ended.
    let down_until = short_issued + Duration::from_secs(31);
    tokio::time::sleep(down_until.saturating_duration_since(Instant::now())).await;
    server.start_again(&[]);
    server.wait_ready();
    assert!(!snapshot.exists(), "loaded once, then deleted");

    let c = client(&server).await;
    assert_eq!(
        c.verify(kept.id, &kept_code).await.unwrap().outcome,
        VerifyOutcome::Approved,
        "a code issued before the restart verifies after it"
    );
    assert_eq!(
        c.verify(short.id, &short_code).await.unwrap().outcome,
        VerifyOutcome::Unknown,
        "a code that expired while the server was down does not"
    );
    match c.issue(&sms("kept", "+14255550141", 0)).await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, Status::RateLimited),
        other => panic!("the sixth send must be refused, got {other:?}"),
    }
    let audit = std::fs::read_to_string(server.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("validity period ended during a restart"),
        "the expiry is audited"
    );
    drop(c);
    assert!(server.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_stops_the_start_until_discarded() {
    let mut server = Server::start();
    let snapshot = server.dir.path().join("data").join("pending.snapshot");
    let c = client(&server).await;
    let issued = c.issue(&sms("dora", "+14255550150", 0)).await.unwrap();
    drop(c);
    assert!(server.terminate());
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x01;
    std::fs::write(&snapshot, &bytes).unwrap();

    server.start_again(&[]);
    let (code, log) = server.wait_exit();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("pending.snapshot") && log.contains("--discard-snapshot"),
        "the error names the file and the way out:\n{log}"
    );
    assert!(snapshot.exists(), "nothing is deleted without being told");

    // A truncated one is refused the same way.
    std::fs::write(&snapshot, &bytes[..bytes.len() / 2]).unwrap();
    server.start_again(&[]);
    assert_eq!(server.wait_exit().0, Some(1));

    server.start_again(&["--discard-snapshot"]);
    server.wait_ready();
    assert!(!snapshot.exists());
    let c = client(&server).await;
    assert_eq!(
        c.verify(issued.id, "000000").await.unwrap().outcome,
        VerifyOutcome::Unknown,
        "started empty"
    );
    drop(c);
    assert!(server.terminate());
}
