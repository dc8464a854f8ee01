//! The directory's SQLite store on real files in temporary directories:
//! round trips, cascades, ordering, reopen, key and schema refusals, online
//! backup under load, group commit, the full queue, read-only tool opens and
//! that no sealed secret's plaintext reaches the database files.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use watchword_engine::secret::MasterKey;
use watchword_engine::store::{
    DB_FILE, DirectoryStore, Loaded, SCHEMA_VERSION, SqliteStore, StoreError, StoreOp,
    StoreOptions, StoredMethod, StoredToken, StoredUser,
};

fn key() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir, &key(), StoreOptions::default()).unwrap()
}

fn user(tenant: &str, subject: &str) -> StoredUser {
    StoredUser {
        tenant: tenant.to_owned(),
        subject: subject.to_owned(),
        display_name: Some(format!("User {subject}")),
        email: Some(format!("{subject}@example.com")),
        locale: Some("en-GB".to_owned()),
        enabled: true,
        default_method: Some("1".to_owned()),
        created_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_500,
    }
}

fn method(tenant: &str, subject: &str, id: u64) -> StoredMethod {
    StoredMethod {
        tenant: tenant.to_owned(),
        subject: subject.to_owned(),
        id,
        kind: "sms".to_owned(),
        destination: format!("+4479460{id:05}"),
        state: "active".to_owned(),
        created_at_ms: 1_700_000_000_000,
        confirmed_at_ms: Some(1_700_000_001_000),
        effective_at_ms: Some(1_700_000_002_000),
        confirm_deadline_ms: Some(1_700_000_003_000),
    }
}

/// Every row, checking that each method follows its own user.
fn load_all(store: &dyn DirectoryStore) -> (Vec<StoredUser>, Vec<StoredMethod>) {
    let mut users: Vec<StoredUser> = Vec::new();
    let mut methods = Vec::new();
    store
        .load(&mut |row| match row {
            Loaded::User(u) => users.push(u),
            Loaded::Token(_) | Loaded::Pin(_) => {}
            Loaded::Method(m) => {
                let last = users.last().expect("a method before any user");
                assert_eq!(
                    (&last.tenant, &last.subject),
                    (&m.tenant, &m.subject),
                    "a method away from its user"
                );
                methods.push(m);
            }
        })
        .unwrap();
    (users, methods)
}

fn submit(store: &dyn DirectoryStore, ops: Vec<StoreOp>) {
    store.submit(ops).unwrap().wait_blocking().unwrap();
}

#[test]
fn put_and_load_round_trip_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let full = user("acme", "alice");
    let bare = StoredUser {
        tenant: "acme".to_owned(),
        subject: "bob".to_owned(),
        display_name: None,
        email: None,
        locale: None,
        enabled: false,
        default_method: None,
        created_at_ms: 0,
        updated_at_ms: u64::try_from(i64::MAX).unwrap(),
    };
    let m_full = method("acme", "alice", 1);
    let m_bare = StoredMethod {
        tenant: "acme".to_owned(),
        subject: "bob".to_owned(),
        id: u64::try_from(i64::MAX).unwrap(),
        kind: "email".to_owned(),
        destination: "bob@example.org".to_owned(),
        state: "pending".to_owned(),
        created_at_ms: 5,
        confirmed_at_ms: None,
        effective_at_ms: None,
        confirm_deadline_ms: None,
    };
    submit(
        &store,
        vec![
            StoreOp::PutUser(full.clone()),
            StoreOp::PutUser(bare.clone()),
            StoreOp::PutMethod(m_full.clone()),
            StoreOp::PutMethod(m_bare.clone()),
        ],
    );
    let (users, methods) = load_all(&store);
    assert_eq!(users, vec![full.clone(), bare]);
    assert_eq!(methods, vec![m_full.clone(), m_bare]);

    // An update of a user keeps its methods (upsert, not delete + insert).
    let mut renamed = full;
    renamed.display_name = Some("Alice B.".to_owned());
    renamed.updated_at_ms += 1;
    let mut confirmed = m_full;
    confirmed.state = "confirmed".to_owned();
    submit(
        &store,
        vec![
            StoreOp::PutUser(renamed.clone()),
            StoreOp::PutMethod(confirmed.clone()),
        ],
    );
    let (users, methods) = load_all(&store);
    assert_eq!(users[0], renamed);
    assert_eq!(methods.len(), 2);
    assert_eq!(methods[0], confirmed);
}

#[test]
fn delete_user_cascades_to_methods_tokens_and_pin() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    submit(
        &store,
        vec![
            StoreOp::PutUser(user("acme", "alice")),
            StoreOp::PutUser(user("acme", "bob")),
            StoreOp::PutMethod(method("acme", "alice", 1)),
            StoreOp::PutMethod(method("acme", "alice", 2)),
            StoreOp::PutMethod(method("acme", "bob", 3)),
        ],
    );
    // A token and a PIN of alice's, written by hand (the API has none yet).
    let conn = Connection::open(store.path()).unwrap();
    conn.execute(
        "INSERT INTO tokens (tenant, serial, subject, kind, algorithm, digits, period, secret_sealed, state, created_at_ms)
         VALUES ('acme', 'T1', 'alice', 'totp', 'SHA1', 6, 30, x'00', 'active', 1)",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO pins (tenant, subject, verifier, length, state, created_at_ms)
         VALUES ('acme', 'alice', x'00', 4, 'active', 1)",
        [],
    )
    .unwrap();
    drop(conn);
    let before = store.check().unwrap();
    assert_eq!(
        (before.users, before.methods, before.tokens, before.pins),
        (2, 3, 1, 1)
    );

    submit(
        &store,
        vec![StoreOp::DeleteUser {
            tenant: "acme".to_owned(),
            subject: "alice".to_owned(),
        }],
    );
    let (users, methods) = load_all(&store);
    assert_eq!(users, vec![user("acme", "bob")]);
    assert_eq!(methods, vec![method("acme", "bob", 3)]);
    let after = store.check().unwrap();
    assert!(after.is_clean(), "{:?}", after.problems);
    assert_eq!(
        (after.users, after.methods, after.tokens, after.pins),
        (1, 1, 0, 0)
    );

    // DeleteMethod names the owner: another user's subject deletes nothing.
    submit(
        &store,
        vec![StoreOp::DeleteMethod {
            tenant: "acme".to_owned(),
            subject: "alice".to_owned(),
            id: 3,
        }],
    );
    assert_eq!(load_all(&store).1.len(), 1);
    submit(
        &store,
        vec![StoreOp::DeleteMethod {
            tenant: "acme".to_owned(),
            subject: "bob".to_owned(),
            id: 3,
        }],
    );
    assert!(load_all(&store).1.is_empty());
}

#[test]
fn ops_are_applied_in_submit_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = user("acme", "carol");
    let mut second = user("acme", "carol");
    second.display_name = Some("second".to_owned());
    let del = StoreOp::DeleteUser {
        tenant: "acme".to_owned(),
        subject: "carol".to_owned(),
    };
    // Three submits queued back to back (likely one batch), waited at the end.
    let tickets = vec![
        store
            .submit(vec![
                StoreOp::PutUser(first.clone()),
                StoreOp::PutMethod(method("acme", "carol", 9)),
            ])
            .unwrap(),
        store.submit(vec![del.clone()]).unwrap(),
        store
            .submit(vec![StoreOp::PutUser(second.clone())])
            .unwrap(),
    ];
    for t in tickets {
        t.wait_blocking().unwrap();
    }
    let (users, methods) = load_all(&store);
    assert_eq!(users, vec![second.clone()]);
    assert!(
        methods.is_empty(),
        "the delete between the puts took the method"
    );

    // Within one submit too: put, delete, put.
    submit(
        &store,
        vec![
            StoreOp::PutUser(user("acme", "dave")),
            StoreOp::DeleteUser {
                tenant: "acme".to_owned(),
                subject: "dave".to_owned(),
            },
            StoreOp::PutUser(first.clone()),
        ],
    );
    assert_eq!(load_all(&store).0, vec![first]);
}

#[test]
fn reopen_after_drop_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut ops = Vec::new();
    for i in 0..50u64 {
        ops.push(StoreOp::PutUser(user("t", &format!("u{i:02}"))));
        ops.push(StoreOp::PutMethod(method("t", &format!("u{i:02}"), i)));
    }
    let (users, methods) = {
        let store = open(dir.path());
        submit(&store, ops);
        let all = load_all(&store);
        // Queued but not waited for: the drop finishes the queue.
        let _unwaited = store
            .submit(vec![StoreOp::PutUser(user("t", "last"))])
            .unwrap();
        drop(store);
        all
    };
    let store = open(dir.path());
    let (users2, methods2) = load_all(&store);
    assert_eq!(users2.len(), users.len() + 1);
    assert!(users2.contains(&user("t", "last")));
    assert!(users.iter().all(|u| users2.contains(u)));
    assert_eq!(methods2, methods);
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.schema_version, SCHEMA_VERSION);
}

#[test]
fn a_wrong_master_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let other = MasterKey::from_bytes([8; 32]);
    let err = SqliteStore::open(dir.path(), &other, StoreOptions::default()).unwrap_err();
    assert_eq!(err, StoreError::WrongMasterKey);
    assert!(
        err.to_string()
            .contains("master key file does not match this database"),
        "{err}"
    );
    let err = SqliteStore::open_for_tools(dir.path(), &other).unwrap_err();
    assert_eq!(err, StoreError::WrongMasterKey);
    // The right key still opens it.
    drop(open(dir.path()));
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
        [i64::from(SCHEMA_VERSION + 1)],
    )
    .unwrap();
    drop(conn);
    let expected = StoreError::NewerSchema {
        found: SCHEMA_VERSION + 1,
        supported: SCHEMA_VERSION,
    };
    let err = SqliteStore::open(dir.path(), &key(), StoreOptions::default()).unwrap_err();
    assert_eq!(err, expected);
    assert!(err.to_string().contains("newer"), "{err}");
    assert_eq!(
        SqliteStore::open_for_tools(dir.path(), &key()).unwrap_err(),
        expected
    );

    // A database written entirely by hand, by a "future" binary.
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(
        "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value ANY NOT NULL) STRICT, WITHOUT ROWID;
         INSERT INTO meta VALUES ('schema_version', 99);
         CREATE TABLE users_v99 (x);",
    )
    .unwrap();
    drop(conn);
    let err = SqliteStore::open(dir.path(), &key(), StoreOptions::default()).unwrap_err();
    assert_eq!(
        err,
        StoreError::NewerSchema {
            found: 99,
            supported: SCHEMA_VERSION
        }
    );
}

#[test]
fn backup_while_eight_threads_write_opens_and_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (store, stop, written) =
                (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&written));
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let subject = format!("w{t}-{i}");
                    // A user and its method in one submit: the backup must
                    // hold both or neither.
                    submit(
                        &*store,
                        vec![
                            StoreOp::PutUser(user("acme", &subject)),
                            StoreOp::PutMethod(method("acme", &subject, t * 1_000_000 + i)),
                        ],
                    );
                    written.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    while written.load(Ordering::Relaxed) < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let backup_dir = tempfile::tempdir().unwrap();
    let dest = backup_dir.path().join(DB_FILE);
    store.backup(&dest).unwrap();
    let at_backup_end = written.load(Ordering::Relaxed);
    // Let the writers go on a little after the backup, then stop them.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    // An existing destination is refused, and left alone.
    let size = std::fs::metadata(&dest).unwrap().len();
    assert!(matches!(
        store.backup(&dest),
        Err(StoreError::DestinationExists(_))
    ));
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), size);
    assert!(
        !Path::new(&format!("{}-wal", dest.display())).exists(),
        "the backup is one file"
    );

    let copy = SqliteStore::open_for_tools(backup_dir.path(), &key()).unwrap();
    let report = copy.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(
        report.users >= 200 && report.users <= at_backup_end + 8,
        "{report:?}"
    );
    assert_eq!(
        report.users, report.methods,
        "a submit was split by the backup"
    );
    let (users, methods) = load_all(&copy);
    assert_eq!(users.len() as u64, report.users);
    for m in &methods {
        assert!(users.iter().any(|u| u.subject == m.subject));
    }
    drop(copy);
    // A full open (and its writer) works on the copy too.
    let reopened = open(backup_dir.path());
    submit(
        &reopened,
        vec![StoreOp::PutUser(user("acme", "after-restore"))],
    );
    assert!(reopened.check().unwrap().is_clean());
}

#[test]
fn sixteen_threads_times_five_hundred_submits_are_group_committed() {
    const THREADS: u64 = 16;
    const EACH: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let subject = format!("s{t}-{i}");
                    // Each submit waits for its acknowledgement, as an API
                    // request would: grouping comes from concurrency alone.
                    submit(
                        &*store,
                        vec![
                            StoreOp::PutUser(user("acme", &subject)),
                            StoreOp::PutMethod(method("acme", &subject, t * EACH + i)),
                        ],
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let submits = THREADS * EACH;
    let commits = store.commits();
    eprintln!(
        "{submits} submits in {commits} commits ({:.1} submits per commit) in {:?}",
        submits as f64 / commits as f64,
        started.elapsed()
    );
    assert!(
        commits * 4 < submits,
        "{commits} commits for {submits} submits"
    );
    assert_eq!(store.queued(), 0);
    drop(store);

    let store = open(dir.path());
    let (users, methods) = load_all(&store);
    assert_eq!(users.len() as u64, submits);
    assert_eq!(methods.len() as u64, submits);
    assert!(store.check().unwrap().is_clean());
}

#[test]
fn a_full_queue_answers_full_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        queue_ops: 2,
        max_batch_ops: 8,
    };
    let store = SqliteStore::open(dir.path(), &key(), opts).unwrap();
    // Another connection holds the write lock: the writer waits in BEGIN
    // IMMEDIATE (busy timeout) and answers nothing meanwhile.
    let blocker = Connection::open(store.path()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

    let t1 = store
        .submit(vec![StoreOp::PutUser(user("acme", "a"))])
        .unwrap();
    let t2 = store
        .submit(vec![StoreOp::PutUser(user("acme", "b"))])
        .unwrap();
    assert_eq!(store.queued(), 2);
    let before = Instant::now();
    let refused = store.submit(vec![StoreOp::PutUser(user("acme", "c"))]);
    assert!(matches!(refused, Err(StoreError::Full)), "{refused:?}");
    assert!(
        before.elapsed() < Duration::from_millis(500),
        "submit blocked"
    );
    assert_eq!(store.queued(), 2);

    blocker.execute_batch("COMMIT").unwrap();
    t1.wait_blocking().unwrap();
    t2.wait_blocking().unwrap();
    assert_eq!(store.queued(), 0);
    // Room again.
    submit(&store, vec![StoreOp::PutUser(user("acme", "c"))]);
    assert_eq!(load_all(&store).0.len(), 3);
}

#[test]
fn a_sealed_secret_never_reaches_the_files_in_plaintext() {
    let plaintext: &[u8] = b"12345678901234567890-JBSWY3DPEHPK3PXP-seed";
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    submit(&store, vec![StoreOp::PutUser(user("acme", "alice"))]);
    let aad = b"acme/T1";
    let sealed = key().seal(plaintext, aad);
    let conn = Connection::open(store.path()).unwrap();
    conn.execute(
        "INSERT INTO tokens (tenant, serial, subject, kind, algorithm, digits, period, secret_sealed,
                             counter, last_step, drift, failcount, state, created_at_ms)
         VALUES ('acme', 'T1', 'alice', 'totp', 'SHA1', 6, 30, ?1, 0, 0, 0, 0, 'active', 1)",
        [&sealed],
    )
    .unwrap();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let files = |dir: &Path| -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal"] {
            if let Ok(bytes) = std::fs::read(dir.join(format!("{DB_FILE}{suffix}"))) {
                all.extend_from_slice(&bytes);
            }
        }
        all
    };
    // While running (the row in the WAL) and after close (checkpointed).
    let running = files(dir.path());
    assert!(
        contains(&running, &sealed),
        "the sealed blob is not where the test looks"
    );
    assert!(!contains(&running, plaintext));
    assert!(!contains(&running, &plaintext[..16]));
    drop(conn);
    drop(store);
    let closed = files(dir.path());
    assert!(contains(&closed, &sealed));
    assert!(!contains(&closed, plaintext));

    // And the blob reads back and opens.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let blob: Vec<u8> = conn
        .query_row(
            "SELECT secret_sealed FROM tokens WHERE serial = 'T1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(key().open(&blob, aad).unwrap(), plaintext);
}

#[test]
fn a_tools_open_backs_up_and_checks_beside_a_running_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    submit(&*store, vec![StoreOp::PutUser(user("acme", "alice"))]);

    let tools = SqliteStore::open_for_tools(dir.path(), &key()).unwrap();
    assert_eq!(
        tools
            .submit(vec![StoreOp::PutUser(user("acme", "x"))])
            .unwrap_err(),
        StoreError::ReadOnly
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                submit(
                    &*store,
                    vec![StoreOp::PutUser(user("acme", &format!("bg{i}")))],
                );
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(30));
    let report = tools.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(report.users >= 1);
    let backup_dir = tempfile::tempdir().unwrap();
    tools.backup(&backup_dir.path().join(DB_FILE)).unwrap();
    drop(tools);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // The running store was not disturbed.
    submit(&*store, vec![StoreOp::PutUser(user("acme", "bob"))]);
    assert!(!store.has_failed());
    assert!(store.check().unwrap().is_clean());
    let copy = SqliteStore::open_for_tools(backup_dir.path(), &key()).unwrap();
    assert!(copy.check().unwrap().is_clean());

    // A tools open needs an existing store.
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        SqliteStore::open_for_tools(empty.path(), &key()),
        Err(StoreError::Io(_))
    ));
    assert!(!empty.path().join(DB_FILE).exists());
}

#[test]
fn a_failed_commit_turns_the_store_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    submit(&store, vec![StoreOp::PutUser(user("acme", "alice"))]);
    // A method of a user that does not exist breaks the foreign key: the batch
    // fails and nothing of it is written.
    let orphan = method("acme", "nobody", 1);
    let err = store
        .submit(vec![
            StoreOp::PutUser(user("acme", "carol")),
            StoreOp::PutMethod(orphan.clone()),
        ])
        .unwrap()
        .wait_blocking()
        .unwrap_err();
    assert!(matches!(err, StoreError::Failed(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        !msg.contains(&orphan.destination) && !msg.contains("nobody"),
        "{msg}"
    );
    assert!(store.has_failed());
    assert!(matches!(
        store.submit(vec![StoreOp::PutUser(user("acme", "dave"))]),
        Err(StoreError::Failed(_))
    ));
    assert_eq!(load_all(&store).0, vec![user("acme", "alice")]);
    drop(store);
    // A restart reloads from disk and takes writes again.
    let store = open(dir.path());
    submit(&store, vec![StoreOp::PutUser(user("acme", "dave"))]);
    assert_eq!(load_all(&store).0.len(), 2);
}

#[test]
fn values_sqlite_cannot_hold_are_refused_before_queuing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut u = user("acme", "alice");
    u.updated_at_ms = u64::MAX;
    assert!(matches!(
        store.submit(vec![StoreOp::PutUser(u)]),
        Err(StoreError::Invalid(_))
    ));
    let mut m = method("acme", "alice", 1);
    m.id = 1 << 63;
    assert!(matches!(
        store.submit(vec![StoreOp::PutMethod(m)]),
        Err(StoreError::Invalid(_))
    ));
    assert!(!store.has_failed());
    submit(&store, vec![StoreOp::PutUser(user("acme", "alice"))]);
}

#[test]
fn check_reports_a_broken_foreign_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let clean = store.check().unwrap();
    assert!(clean.is_clean(), "{:?}", clean.problems);
    assert_eq!(clean.schema_version, SCHEMA_VERSION);
    let conn = Connection::open(store.path()).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         INSERT INTO methods (tenant, id, subject, kind, destination, state, created_at_ms)
         VALUES ('acme', 1, 'ghost', 'sms', '+447946000001', 'active', 1);",
    )
    .unwrap();
    let report = store.check().unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("methods"),
        "{:?}",
        report.problems
    );
    assert!(
        !report.problems[0].contains("+44"),
        "a check names no value"
    );
}

#[test]
fn debug_of_stored_rows_masks_contacts() {
    let m = method("acme", "alice", 1);
    let dbg = format!("{m:?}");
    assert!(!dbg.contains(&m.destination), "{dbg}");
    let u = user("acme", "alice");
    let dbg = format!("{:?}", StoreOp::PutUser(u.clone()));
    assert!(
        !dbg.contains("alice@example.com") && !dbg.contains("User alice"),
        "{dbg}"
    );
}

#[tokio::test]
async fn tickets_can_be_awaited() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ticket = store
        .submit(vec![StoreOp::PutUser(user("acme", "alice"))])
        .unwrap();
    ticket.wait().await.unwrap();
    assert_eq!(store.commits(), 1);
}

/// Child half of [`acknowledged_writes_survive_kill_9`]: writes and reports
/// each acknowledgement on stdout until killed.
fn kill_9_child(dir: &Path) -> ! {
    use std::io::Write;
    let store = open(dir);
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        submit(
            &store,
            vec![StoreOp::PutUser(user("acme", &format!("k{i}")))],
        );
        writeln!(out, "acked {i}").unwrap();
        out.flush().unwrap();
    }
    unreachable!()
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    use std::io::BufRead;
    const CHILD_ENV: &str = "WATCHWORD_STORE_KILL9_DIR";
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        kill_9_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_writes_survive_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut last_acked = None;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            let n: u64 = n.parse().unwrap();
            last_acked = Some(n);
            if n >= 300 {
                break;
            }
        }
    }
    // SIGKILL on unix: no destructor, no checkpoint, no clean close.
    child.kill().unwrap();
    child.wait().unwrap();
    let last = last_acked.expect("the child acknowledged nothing");
    let store = open(dir.path());
    let (users, _) = load_all(&store);
    for i in 0..=last {
        let subject = format!("k{i}");
        assert!(
            users.iter().any(|u| u.subject == subject),
            "acknowledged {subject} lost"
        );
    }
    assert!(store.check().unwrap().is_clean());
}

fn token(tenant: &str, serial: &str, subject: Option<&str>) -> StoredToken {
    StoredToken {
        tenant: tenant.to_owned(),
        serial: serial.to_owned(),
        subject: subject.map(str::to_owned),
        kind: "totp".to_owned(),
        algorithm: "SHA256".to_owned(),
        digits: 8,
        period: 30,
        secret_sealed: key().seal(b"12345678901234567890", serial.as_bytes()),
        counter: 0,
        last_step: 0,
        drift: 0,
        failcount: 0,
        state: "active".to_owned(),
        created_at_ms: 1_700_000_000_000,
    }
}

fn tokens_of(store: &dyn DirectoryStore) -> Vec<StoredToken> {
    let mut out = Vec::new();
    store
        .load(&mut |row| {
            if let Loaded::Token(t) = row {
                out.push(t);
            }
        })
        .unwrap();
    out
}

#[test]
fn tokens_round_trip_progress_and_go_with_their_user() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        submit(&store, vec![StoreOp::PutUser(user("t", "ann"))]);
        submit(
            &store,
            vec![
                StoreOp::PutToken(token("t", "TOK-2", Some("ann"))),
                StoreOp::PutToken(token("t", "TOK-1", None)),
                StoreOp::TokenProgress {
                    tenant: "t".into(),
                    serial: "TOK-2".into(),
                    counter: 0,
                    last_step: 56_666_667,
                    drift: -1,
                    failcount: 0,
                    state: "active".into(),
                },
            ],
        );
        let big = StoreOp::TokenProgress {
            tenant: "t".into(),
            serial: "TOK-2".into(),
            counter: u64::MAX,
            last_step: 0,
            drift: 0,
            failcount: 0,
            state: "active".into(),
        };
        assert!(matches!(
            store.submit(vec![big]),
            Err(StoreError::Invalid(_))
        ));
    }
    let store = open(dir.path());
    let tokens = tokens_of(&store);
    let serials: Vec<_> = tokens.iter().map(|t| t.serial.as_str()).collect();
    assert_eq!(serials, ["TOK-1", "TOK-2"], "by serial");
    let t2 = &tokens[1];
    assert_eq!(
        (t2.last_step, t2.drift, t2.subject.as_deref()),
        (56_666_667, -1, Some("ann"))
    );
    assert_eq!(
        key().open(&t2.secret_sealed, b"TOK-2").unwrap(),
        b"12345678901234567890"
    );
    assert!(
        !format!("{t2:?}").contains("1234567890"),
        "Debug shows no secret"
    );
    // The user's token goes with the user; the unassigned one stays.
    submit(
        &store,
        vec![StoreOp::DeleteUser {
            tenant: "t".into(),
            subject: "ann".into(),
        }],
    );
    let left: Vec<_> = tokens_of(&store).into_iter().map(|t| t.serial).collect();
    assert_eq!(left, ["TOK-1"]);
    submit(
        &store,
        vec![StoreOp::DeleteToken {
            tenant: "t".into(),
            serial: "TOK-1".into(),
        }],
    );
    assert!(tokens_of(&store).is_empty());
}

#[test]
fn pins_round_trip_progress_and_go_with_their_user() {
    use watchword_engine::store::StoredPin;
    let dir = tempfile::tempdir().unwrap();
    let pin = StoredPin {
        tenant: "t".into(),
        subject: "ann".into(),
        verifier: vec![9; 32],
        length: 6,
        failcount: 0,
        state: "active".into(),
        created_at_ms: 1_700_000_000_000,
    };
    {
        let store = open(dir.path());
        submit(
            &store,
            vec![
                StoreOp::PutUser(user("t", "ann")),
                StoreOp::PutPin(pin.clone()),
            ],
        );
        submit(
            &store,
            vec![StoreOp::PinProgress {
                tenant: "t".into(),
                subject: "ann".into(),
                failcount: 3,
                state: "locked".into(),
            }],
        );
    }
    let store = open(dir.path());
    let pins = || {
        let mut out = Vec::new();
        store
            .load(&mut |row| {
                if let Loaded::Pin(p) = row {
                    out.push(p);
                }
            })
            .unwrap();
        out
    };
    let loaded = pins();
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        (
            loaded[0].length,
            loaded[0].failcount,
            loaded[0].state.as_str(),
            &loaded[0].verifier
        ),
        (6, 3, "locked", &vec![9; 32])
    );
    assert!(
        !format!("{:?}", loaded[0]).contains("9, 9"),
        "Debug shows no verifier"
    );
    submit(
        &store,
        vec![StoreOp::DeleteUser {
            tenant: "t".into(),
            subject: "ann".into(),
        }],
    );
    assert!(pins().is_empty(), "a PIN goes with its user");
}

#[test]
fn a_reset_pin_verifies_after_a_restart_and_only_its_verifier_is_stored() {
    use watchword_engine::directory::{Directory, UserPatch};
    use watchword_engine::types::TenantId;
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId(0);
    let pin = {
        let store = Arc::new(open(dir.path()));
        let (d, _) = Directory::load(vec!["t".into()], store, Arc::new(key())).unwrap();
        d.put_user(t, "ann", &UserPatch::default(), 1)
            .unwrap()
            .wait_blocking()
            .unwrap();
        let pin = d
            .reset_pin(t, "ann", 7, 2)
            .unwrap()
            .wait_blocking()
            .unwrap();
        pin.expose().to_owned()
    };
    let store = Arc::new(open(dir.path()));
    let (d, report) = Directory::load(vec!["t".into()], store, Arc::new(key())).unwrap();
    assert_eq!(report.pins, 1);
    assert!(d.pin_matches(t, "ann", pin.as_bytes()));
    assert!(!d.pin_matches(t, "ann", b"0000000"));
    assert_eq!(d.pin_info(t, "ann").unwrap().length, 7);
    // The database holds no PIN in clear.
    drop(d);
    for f in ["watchword.db", "watchword.db-wal"] {
        let bytes = std::fs::read(dir.path().join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(pin.len()).any(|w| w == pin.as_bytes()),
            "{f} holds the PIN"
        );
    }
}
