//! A rough closed-loop throughput probe of a running gateway (not the load
//! generator: no latency spectrum, no open loop). It opens `CONNS` client
//! connections with `DEPTH` concurrent callers each, sends VERIFY for random
//! unknown ids (a cheap table lookup, answered UNKNOWN) for a few seconds and
//! prints requests per second. Usage:
//! `cargo run --release -p watchword-gateway --example pipeline_throughput -- [ADDR] [CONNS] [DEPTH] [SECS]`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use watchword_engine::ChallengeId;
use watchword_gateway::{Client, ClientConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:7400".into());
    let conns: usize = args.get(2).map_or(Ok(4), |s| s.parse())?;
    let depth: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let secs: u64 = args.get(4).map_or(Ok(5), |s| s.parse())?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let client = Client::connect(ClientConfig {
            addr: addr.clone(),
            max_in_flight: depth * 2,
            ..ClientConfig::default()
        })
        .await?;
        for d in 0..depth {
            let client = client.clone();
            let done = done.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut i: u64 = (c * depth + d) as u64;
                while !stop.load(Ordering::Relaxed) {
                    i = i.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&i.to_be_bytes());
                    if client.verify(ChallengeId(id), "123456").await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let el = start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "{n} VERIFY in {el:.2} s = {:.0} req/s ({conns} connections x {depth} in flight)",
        n as f64 / el
    );
    Ok(())
}
