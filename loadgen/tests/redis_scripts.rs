//! The Redis baseline backend against a real `redis-server` started on
//! loopback: both issue scripts store a challenge the verify script accepts,
//! and `issue_queue.lua` also queues one message per challenge, to the
//! run's destination, with the code in its text. Without redis-server the
//! test says what is missing and passes, except in CI (`CI` set), where
//! `.ci/run` installs it and its absence fails.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use watchword_loadgen::resp::{Resp, RespConn};
use watchword_loadgen::target::{
    Backend, DestPlan, REDIS_DELIVERY_STREAM, RedisBackend, redis_code,
};

/// A redis-server on a free loopback port, killed by its pid when dropped.
struct Redis {
    child: Child,
    addr: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Option<Redis> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = match Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed; .ci/run installs it (apt-get install redis-server)"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
    };
    let redis = Redis {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&redis.addr).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(redis)
}

fn backend(addr: &str, queue: Option<DestPlan>) -> RedisBackend {
    RedisBackend {
        addr: addr.to_string(),
        ttl_s: 300,
        attempts: 5,
        queue,
    }
}

#[tokio::test]
async fn both_issue_scripts_store_a_code_that_verifies_and_the_queue_script_queues_its_message() {
    let Some(redis) = start_redis() else { return };
    let plan = DestPlan {
        distinct: 0,
        email: true,
    };
    let raw = RespConn::connect(&redis.addr).await.unwrap();

    // Store-only: a verifiable challenge, nothing queued.
    let store = backend(&redis.addr, None);
    let c = store.connect().await.unwrap();
    let issued = RedisBackend::issue(&c, 1).await.unwrap();
    assert_eq!(issued.code.as_deref(), Some(redis_code(1).as_str()));
    assert_eq!(
        RedisBackend::verify(&c, issued.id, "000000").await,
        Ok("rejected")
    );
    let code = issued.code.unwrap();
    assert_eq!(
        RedisBackend::verify(&c, issued.id, &code).await,
        Ok("approved")
    );
    assert_eq!(
        RedisBackend::verify(&c, issued.id, &code).await,
        Ok("unknown")
    );
    let xlen = raw.call(&[b"XLEN", REDIS_DELIVERY_STREAM]).await.unwrap();
    assert_eq!(xlen, Resp::Int(0), "issue.lua queues nothing");

    // Store and queue: the same challenge, plus one message per issue.
    let queued = backend(&redis.addr, Some(plan));
    let c = queued.connect().await.unwrap();
    let mut ids = Vec::new();
    for n in 10..15 {
        ids.push((n, RedisBackend::issue(&c, n).await.unwrap()));
    }
    let xlen = raw.call(&[b"XLEN", REDIS_DELIVERY_STREAM]).await.unwrap();
    assert_eq!(xlen, Resp::Int(5), "one queued message per issue");
    let Resp::Array(Some(entries)) = raw
        .call(&[b"XRANGE", REDIS_DELIVERY_STREAM, b"-", b"+"])
        .await
        .unwrap()
    else {
        panic!("XRANGE answered something else")
    };
    for ((n, issued), entry) in ids.iter().zip(entries) {
        let text = format!("{entry:?}");
        assert!(
            text.contains(&plan.destination(*n)),
            "message {n} goes to its destination: {text}"
        );
        assert!(
            text.contains(&format!("{} is your verification code", redis_code(*n))),
            "message {n} carries its code: {text}"
        );
        let code = issued.code.clone().unwrap();
        assert_eq!(
            RedisBackend::verify(&c, issued.id, &code).await,
            Ok("approved")
        );
    }
    // The same id again is refused by both scripts, and queues nothing more.
    assert_eq!(RedisBackend::issue(&c, 20).await.map(|_| ()), Ok(()));
    assert_eq!(RedisBackend::issue(&c, 20).await.map(|_| ()), Err("exists"));
    let xlen = raw.call(&[b"XLEN", REDIS_DELIVERY_STREAM]).await.unwrap();
    assert_eq!(xlen, Resp::Int(6));
}
