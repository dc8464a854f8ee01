//! The directory loaded from a real store: what the writes of one run left
//! (several tenants, users with and without methods, a tenant no longer
//! configured) comes back whole and in order at the next start.

use std::sync::Arc;

use watchword_engine::TenantId;
use watchword_engine::directory::{
    Directory, Method, MethodId, MethodState, MethodType, UserPatch,
};
use watchword_engine::secret::MasterKey;
use watchword_engine::store::{DirectoryStore, SqliteStore, StoreOp, StoreOptions, StoredToken};

fn method(id: u64, kind: MethodType, dest: &str, at: u64) -> Method {
    Method {
        id: MethodId(id),
        kind,
        state: MethodState::Active,
        destination: dest.into(),
        created_at_ms: at,
        confirmed_at_ms: at + 1,
        effective_at_ms: at + 2,
        confirm_deadline_ms: at + 3,
    }
}

#[test]
fn what_was_written_loads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_bytes([9; 32]);
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let written = {
        let store = SqliteStore::open(dir.path(), &key, StoreOptions::default()).unwrap();
        let (d, _) = Directory::load(
            names(&["a", "b", "gone"]),
            Arc::new(store),
            Arc::new(MasterKey::from_bytes([9; 32])),
        )
        .unwrap();
        let patch = UserPatch {
            display_name: Some(Some("Zoë".into())),
            locale: Some(Some("fr".into())),
            ..UserPatch::default()
        };
        for (t, subject) in [(0, "zed"), (0, "amy"), (1, "amy"), (0, "bob"), (2, "old")] {
            d.put_user(TenantId(t), subject, &patch, 10)
                .unwrap()
                .wait_blocking()
                .unwrap();
        }
        // The larger id first: methods load back in the order they were
        // added (their creation time), not by id.
        let m = [
            (
                0,
                "amy",
                method(900, MethodType::Email, "amy@example.com", 20),
            ),
            (0, "amy", method(100, MethodType::Sms, "+14255550100", 30)),
            (1, "amy", method(500, MethodType::Call, "+33425555123", 20)),
            (2, "old", method(7, MethodType::Sms, "+14255550101", 20)),
        ];
        for (t, s, m) in m {
            d.add_method(TenantId(t), s, m, 40)
                .unwrap()
                .wait_blocking()
                .unwrap();
        }
        (0..2)
            .map(|t| d.list(TenantId(t), "", 100).0)
            .collect::<Vec<_>>()
    };
    {
        // A token of tenant a, as the OATH issue's enrollment will write it.
        let store = SqliteStore::open(dir.path(), &key, StoreOptions::default()).unwrap();
        let tok = StoredToken {
            tenant: "a".into(),
            serial: "T1".into(),
            subject: Some("amy".into()),
            kind: "totp".into(),
            algorithm: "SHA1".into(),
            digits: 6,
            period: 30,
            secret_sealed: key.seal(b"12345678901234567890", b"a\0T1"),
            counter: 0,
            last_step: 7,
            drift: 0,
            failcount: 0,
            state: "active".into(),
            created_at_ms: 50,
        };
        store
            .submit(vec![StoreOp::PutToken(tok)])
            .unwrap()
            .wait_blocking()
            .unwrap();
    }
    let store = SqliteStore::open(dir.path(), &key, StoreOptions::default()).unwrap();
    let (d, report) = Directory::load(
        names(&["a", "b"]),
        Arc::new(store),
        Arc::new(MasterKey::from_bytes([9; 32])),
    )
    .unwrap();
    assert_eq!(
        (report.users, report.methods, report.skipped_unknown_tenant),
        (4, 3, 2)
    );
    assert_eq!(report.tokens, 1);
    let info = d.token_info(TenantId(0), "T1").unwrap();
    assert_eq!((info.subject.as_deref(), info.digits), (Some("amy"), 6));
    assert!(
        d.token_info(TenantId(1), "T1").is_none(),
        "another tenant's serial"
    );
    assert_eq!(d.tokens_of(TenantId(0), "amy"), ["T1"]);
    for (t, users) in written.iter().enumerate() {
        assert_eq!(&d.list(TenantId(t as u16), "", 100).0, users);
    }
    let amy = d.user(TenantId(0), "amy").unwrap();
    let ids: Vec<u64> = amy.methods.iter().map(|m| m.id.0).collect();
    assert_eq!(ids, [900, 100], "oldest first");
    assert_eq!(amy.display_name.as_deref(), Some("Zoë"));
    assert!(d.user(TenantId(1), "zed").is_none());
}
