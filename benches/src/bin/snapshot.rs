//! The restart snapshot at scale: an engine holding N pending challenges
//! (and the limiter windows their sends opened) writes its snapshot as a
//! graceful shutdown does (collect, seal, write, fsync, rename), then a new
//! engine reads it as `watchword serve` does at start (read, open, restore).
//!
//! `cargo run --release -p watchword-benches --bin snapshot -- [N] [ROUNDS] [DIR]`
//! (default 1,000,000 challenges, 3 rounds, a temporary directory). Prints
//! each round and the medians. It measures; it never asserts a target.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use watchword_engine::delivery::{TenantDelivery, normalize};
use watchword_engine::directory::Directory;
use watchword_engine::secret::MasterKey;
use watchword_engine::snapshot::Reader;
use watchword_engine::table::IssueSpec;
use watchword_engine::{Channel, Engine, EngineConfig, NullSink, SystemClock};

fn config(n: usize) -> EngineConfig {
    let mut c = EngineConfig::default();
    c.table.capacity = n * 2 + 1024;
    // The tenant-wide rate would refuse a million sends in a second.
    c.router.limits.tenant.max = 0;
    c
}

fn start(n: usize, snapshot: Option<Reader>) -> Result<(Engine, Option<u64>), String> {
    let dir = Directory::in_memory(vec!["demo".into()]);
    let (engine, report) = Engine::start_restoring(
        config(n),
        SystemClock::shared(),
        Arc::new(NullSink),
        dir,
        snapshot,
    )?;
    Ok((engine, report.map(|r| r.challenges.pending)))
}

fn fill(engine: &Engine, n: usize) {
    let demo = engine.tenant_id("demo").unwrap();
    let delivery = TenantDelivery::default();
    for i in 0..n {
        let subject = format!("user-{i:07}@corp.example.com");
        let destination = format!("user{i}@corp.example.com");
        let dest = normalize(Channel::Email, &destination, &delivery).unwrap();
        let _ = engine
            .router()
            .admit(demo, "demo", &subject, Channel::Email, &dest);
        engine
            .table()
            .issue(&IssueSpec {
                tenant: demo,
                subject: &subject,
                channel: Channel::Email,
                destination: dest.address(),
                code_len: 6,
                ttl_s: 900,
                max_attempts: 5,
                client_ip: "",
            })
            .unwrap();
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map_or(Ok(1_000_000), |a| a.parse())
        .map_err(|e| format!("N: {e}"))?;
    let rounds: usize = args
        .next()
        .map_or(Ok(3), |a| a.parse())
        .map_err(|e| format!("ROUNDS: {e}"))?;
    let tmp = tempfile_dir();
    let dir = args.next().map_or(tmp.clone(), std::path::PathBuf::from);
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("pending.snapshot");
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let _guard = rt.enter();
    let key = MasterKey::generate();

    let (mut writes, mut loads) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (engine, _) = start(n, None)?;
        let t = Instant::now();
        fill(&engine, n);
        let filled = t.elapsed();

        let t = Instant::now();
        let file = engine.snapshot(&key);
        let sealed = t.elapsed();
        let tmp_path = path.with_extension("snapshot.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(|e| e.to_string())?;
        f.write_all(&file.bytes).map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())?;
        fs::rename(&tmp_path, &path).map_err(|e| e.to_string())?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| e.to_string())?;
        let write = t.elapsed();
        engine.begin_shutdown();
        drop(engine);

        let t = Instant::now();
        let bytes = fs::read(&path).map_err(|e| e.to_string())?;
        let reader = Reader::open(bytes, &key).map_err(|e| e.to_string())?;
        let opened = t.elapsed();
        let (restored, pending) = start(n, Some(reader))?;
        let load = t.elapsed();
        assert_eq!(pending, Some(n as u64), "every challenge restored");
        println!(
            "round {round}: {n} challenges (filled in {:.2} s), {} limiter keys, {:.1} MB; \
             write {:.3} s (collect+seal {:.3} s); load {:.3} s (read+open {:.3} s)",
            filled.as_secs_f64(),
            file.limiter_keys,
            file.bytes.len() as f64 / 1e6,
            write.as_secs_f64(),
            sealed.as_secs_f64(),
            load.as_secs_f64(),
            opened.as_secs_f64(),
        );
        writes.push(write);
        loads.push(load);
        restored.begin_shutdown();
        drop(restored);
        let _ = fs::remove_file(&path);
    }
    println!(
        "median of {rounds}: write {:.3} s, load {:.3} s",
        median(&mut writes).as_secs_f64(),
        median(&mut loads).as_secs_f64()
    );
    if dir == tmp {
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok(())
}

fn tempfile_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("watchword-snapshot-bench-{}", std::process::id()))
}
