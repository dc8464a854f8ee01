//! Start-up with a large directory: writes N users with two methods each
//! (an SMS and an e-mail method, both active) into a fresh SQLite store
//! through the store's own group-commit queue, then times what `watchword
//! serve` does at start (open the store, stream every row into the in-memory
//! directory) and the resident memory that directory holds per user.
//!
//! `cargo run --release -p watchword-benches --bin directory_load -- [USERS] [DIR] [TOKENS]`
//! (default 1,000,000 users in a temporary directory; an existing DIR with a
//! `watchword.db` of the same master key is loaded without writing). With
//! `TOKENS` = 1, each user also gets a TOTP token (imported through the
//! directory, as `POST /v1/tokens/import` does), so two runs, with and
//! without, give the memory per token.
//! It measures; it never asserts a target (that is the benchmarks
//! document's job).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use watchword_benches::rss_bytes;
use watchword_engine::directory::{Directory, Method, MethodId, MethodState, MethodType};
use watchword_engine::secret::MasterKey;
use watchword_engine::store::{DirectoryStore, SqliteStore, StoreOp, StoreOptions, StoredUser};

const KEY: [u8; 32] = [7; 32];

fn user_ops(i: u64, now: u64) -> [StoreOp; 3] {
    let subject = format!("user-{i:07}@corp.example.com");
    let user = StoredUser {
        tenant: "demo".into(),
        subject: subject.clone(),
        display_name: Some(format!("User {i}")),
        email: Some(format!("user{i}@corp.example.com")),
        locale: Some("en".into()),
        enabled: true,
        default_method: Some("sms".into()),
        created_at_ms: now,
        updated_at_ms: now,
    };
    let method = |n: u64, kind: MethodType, dest: String| Method {
        id: MethodId(i * 2 + n + 1),
        kind,
        state: MethodState::Active,
        destination: dest.into(),
        created_at_ms: now,
        confirmed_at_ms: now,
        effective_at_ms: now + 48 * 3_600_000,
        confirm_deadline_ms: now + 300_000,
    };
    let sms = method(0, MethodType::Sms, format!("+1425{:07}", i % 10_000_000));
    let email = method(1, MethodType::Email, format!("user{i}@corp.example.com"));
    [
        StoreOp::PutUser(user),
        StoreOp::PutMethod(sms.to_stored("demo", &subject)),
        StoreOp::PutMethod(email.to_stored("demo", &subject)),
    ]
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let users: u64 = args
        .next()
        .map(|s| s.parse().map_err(|e| format!("USERS: {e}")))
        .transpose()?
        .unwrap_or(1_000_000);
    let keep;
    let dir: PathBuf = match args.next() {
        Some(d) => PathBuf::from(d),
        None => {
            keep = tempfile_dir()?;
            keep.clone()
        }
    };
    let with_tokens = match args.next().as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(other) => return Err(format!("TOKENS: 0 or 1, got {other:?}")),
    };
    let key = MasterKey::from_bytes(KEY);
    if !dir.join(watchword_engine::store::DB_FILE).exists() {
        // Room for the four batches of 30,000 rows kept in flight.
        let bulk = StoreOptions {
            queue_ops: 1 << 20,
            ..StoreOptions::default()
        };
        let store = SqliteStore::open(&dir, &key, bulk).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let now = 1_764_000_000_000;
        let mut batch = Vec::with_capacity(30_000);
        let mut tickets = Vec::new();
        for i in 0..users {
            batch.extend(user_ops(i, now));
            if batch.len() >= 30_000 {
                tickets.push(
                    store
                        .submit(std::mem::take(&mut batch))
                        .map_err(|e| e.to_string())?,
                );
                if tickets.len() >= 4 {
                    tickets
                        .remove(0)
                        .wait_blocking()
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        if !batch.is_empty() {
            tickets.push(store.submit(batch).map_err(|e| e.to_string())?);
        }
        for t in tickets {
            t.wait_blocking().map_err(|e| e.to_string())?;
        }
        println!(
            "wrote {users} users x 2 methods in {:.1} s ({} commits)",
            t0.elapsed().as_secs_f64(),
            store.commits()
        );
        if with_tokens {
            import_tokens(store, users, now)?;
        }
    }
    let size = std::fs::metadata(dir.join(watchword_engine::store::DB_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let rss0 = rss_bytes().unwrap_or(0);
    let t0 = Instant::now();
    let store =
        SqliteStore::open(&dir, &key, StoreOptions::default()).map_err(|e| e.to_string())?;
    let (directory, report) = if std::env::var_os("LOAD_IN_THREAD").is_some() {
        let key = Arc::new(key);
        std::thread::spawn(move || Directory::load(vec!["demo".into()], Arc::new(store), key))
            .join()
            .map_err(|_| "the load thread panicked".to_owned())??
    } else {
        Directory::load(vec!["demo".into()], Arc::new(store), Arc::new(key))?
    };
    let load_s = t0.elapsed().as_secs_f64();
    let rss_peak = rss_bytes().unwrap_or(0);
    // The allocator hands freed pages back after a short delay: what the
    // directory holds is measured once the load's temporaries are gone.
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        // Some allocator traffic, as a serving gateway has: mimalloc hands
        // freed memory back to the system from inside its calls.
        let v: Vec<Vec<u8>> = (0..1000).map(|i| vec![0u8; 64 + i % 512]).collect();
        drop(v);
    }
    let rss1 = rss_bytes().unwrap_or(0);
    let per_user = (rss1.saturating_sub(rss0)) as f64 / report.users.max(1) as f64;
    println!(
        "loaded {} users, {} methods and {} tokens in {load_s:.2} s; database {:.0} MiB; RSS {:.0} -> {:.0} MiB at the end of the load, {:.0} MiB 2 s later: {per_user:.0} bytes per user",
        report.users,
        report.methods,
        report.tokens,
        size as f64 / (1 << 20) as f64,
        rss0 as f64 / (1 << 20) as f64,
        rss_peak as f64 / (1 << 20) as f64,
        rss1 as f64 / (1 << 20) as f64,
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for l in status
            .lines()
            .filter(|l| l.starts_with("Rss") || l.starts_with("VmHWM"))
        {
            println!("  {l}");
        }
    }
    // Keep the directory alive until measured.
    assert_eq!(directory.len(), report.users);
    Ok(())
}

/// One TOTP token per user, through the directory (sealed with the master
/// key, queued to the store), each 4,096th import waited for.
fn import_tokens(store: SqliteStore, users: u64, now: u64) -> Result<(), String> {
    use watchword_engine::import::ImportedToken;
    use watchword_engine::oath::{Algorithm, Kind, Params, Secret};
    let t0 = Instant::now();
    let (directory, _) = Directory::load(
        vec!["demo".into()],
        Arc::new(store),
        Arc::new(MasterKey::from_bytes(KEY)),
    )?;
    // The only tenant loaded.
    let tenant = watchword_engine::types::TenantId(0);
    let mut last = None;
    for i in 0..users {
        let mut secret = [0u8; 20];
        secret[..8].copy_from_slice(&i.to_le_bytes());
        let token = ImportedToken {
            serial: format!("TOTP{i:08}"),
            subject: Some(format!("user-{i:07}@corp.example.com")),
            kind: Kind::Totp,
            params: Params {
                algorithm: Algorithm::Sha1,
                digits: 6,
                period: 30,
            },
            secret: Secret::new(secret.to_vec()),
            counter: 0,
        };
        let done = directory
            .import_token(tenant, token, now)
            .map_err(|e| e.to_string())?;
        if i % 4096 == 4095 {
            done.wait_blocking().map_err(|e| e.to_string())?;
        } else {
            last = Some(done);
        }
    }
    if let Some(done) = last {
        done.wait_blocking().map_err(|e| e.to_string())?;
    }
    println!(
        "imported {users} tokens in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let d = std::env::temp_dir().join(format!("watchword-load-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    Ok(d)
}
