//! The SMS sender capacity check against a real gateway started in this
//! process (loopback, ephemeral ports): what its metrics say, and the
//! warning a run over it gets.

use watchword_gateway::config::Config;
use watchword_loadgen::mix::{Mix, Scenario};
use watchword_loadgen::senders::{Owner, read, sms_offered, warnings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_the_gateways_us_pool_is_warned_with_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::development();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.server.metrics_listen = "127.0.0.1:0".into();
    cfg.http.listen = String::new();
    cfg.radius.listen = String::new();
    cfg.storage.path = dir.path().join("data");
    cfg.audit.path = dir.path().join("audit.jsonl");
    let r = watchword_gateway::app::start(cfg).await.unwrap();
    let sets = read(&format!("http://{}/metrics", r.metrics_addr))
        .await
        .unwrap();
    let us = sets
        .iter()
        .find(|s| s.owner == Owner::Pool("US".into()))
        .unwrap_or_else(|| panic!("{sets:?}"));
    assert_eq!((us.senders, us.per_second), (4, Some(400.0)));
    let offered = sms_offered(&Mix::single(Scenario::Flow), 500.0);
    let w = warnings(&sets, "US", "+1", &offered, 0);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(
            "offered 500 flows/s of SMS to +1; the gateway's US sender pool carries 400 \
             messages/s (4 short codes x 100/s): deliveries will queue"
        ),
        "{w:?}"
    );
    r.shutdown();
    r.wait().await;
    // Nobody listening: an error to say, not a panic.
    assert!(
        read(&format!("http://{}/metrics", r_addr_gone()))
            .await
            .is_err()
    );
}

/// A loopback address where nothing listens (a port just released).
fn r_addr_gone() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
