//! The store contract, run against every implementation.
//!
//! Each test function below takes a fixture ([`Fx`]): a store of some
//! backend, and a way to reach its tables behind its back. The
//! [`conformance!`] list at the bottom runs every one of them against a
//! SQLite file (`tests::sqlite::*`) and against a fresh PostgreSQL database
//! (`tests::postgres::*`, on the server `VAULT_TEST_POSTGRES_URL` names;
//! skipped loudly without it). Tests of one backend's own matters (file
//! modes, SQLite migrations from old files) follow the list.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use vault_types::SecretAddress;

use crate::sqlite::{MIGRATION_COUNT, schema_version};
use crate::*;

fn addr(platform: &str) -> SecretAddress {
    SecretAddress::new("prod", "pf_203", platform).unwrap()
}

const T0: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

fn write(address: &SecretAddress, version: u64, sealed: &[u8]) -> SecretWrite {
    let mut metadata = serde_json::Map::new();
    metadata.insert("team_id".into(), "T123".into());
    SecretWrite {
        address: address.clone(),
        version,
        sealed: sealed.to_vec(),
        key_id: "local-test".into(),
        meta: SecretMeta {
            status: SecretStatus::Active,
            valid_until: Some(T0 + Duration::hours(1)),
            scopes: vec!["chat:write".into(), "users:read".into()],
            has_refresh_token: true,
            token_type: "Bearer".into(),
            metadata: Some(metadata),
            refresh: RefreshState::default(),
        },
        at: T0 + Duration::seconds(version as i64),
    }
}

fn audit(action: AuditAction, request_id: &str) -> AuditRecord {
    AuditRecord {
        at: T0,
        request_id: request_id.into(),
        engine_id: Some("execution".into()),
        action,
        environment: Some("prod".into()),
        project: Some("pf_203".into()),
        platform: Some("slack".into()),
        outcome: AuditOutcome::Success,
        detail: None,
    }
}

async fn contract_crud(store: &dyn SecretStore) {
    let a = addr("slack");
    assert!(store.key_ids_in_use().await.unwrap().is_empty());
    assert!(store.get(&a).await.unwrap().is_none());

    store
        .put(
            write(&a, 1, b"sealed-1"),
            None,
            audit(AuditAction::Store, "r1"),
            None,
        )
        .await
        .unwrap();
    let got = store.get(&a).await.unwrap().unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(got.sealed, b"sealed-1");
    assert_eq!(got.key_id, "local-test");
    assert_eq!(got.meta, write(&a, 1, b"").meta);
    assert_eq!(got.created_at, T0 + Duration::seconds(1));

    // Replace: version bumps, created_at stays, updated_at moves.
    store
        .put(
            write(&a, 2, b"sealed-2"),
            Some(1),
            audit(AuditAction::Store, "r2"),
            None,
        )
        .await
        .unwrap();
    let got = store.get(&a).await.unwrap().unwrap();
    assert_eq!((got.version, got.sealed.as_slice()), (2, &b"sealed-2"[..]));
    assert_eq!(got.created_at, T0 + Duration::seconds(1));
    assert_eq!(got.updated_at, T0 + Duration::seconds(2));

    assert_eq!(store.key_ids_in_use().await.unwrap(), ["local-test"]);
    store.ready().await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.secrets_by_status, [(SecretStatus::Active, 1)]);
    assert_eq!(stats.audit_records, 2);

    // A delete of a version that is no longer current changes nothing.
    let err = store
        .delete(&a, Some(1), audit(AuditAction::Delete, "stale"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }));
    assert!(store.get(&a).await.unwrap().is_some());

    // Other addresses are independent.
    assert!(store.get(&addr("notion")).await.unwrap().is_none());

    assert_eq!(
        store
            .delete(&a, None, audit(AuditAction::Delete, "r3"))
            .await
            .unwrap(),
        Some(2)
    );
    assert!(store.get(&a).await.unwrap().is_none());
    assert_eq!(
        store
            .delete(&a, None, audit(AuditAction::Delete, "r4"))
            .await
            .unwrap(),
        None
    );

    let log = store.recent_audit(10).await.unwrap();
    let ids: Vec<_> = log.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(
        ids,
        ["r4", "r3", "r2", "r1"],
        "the refused delete left no record"
    );
    assert_eq!(log[0].outcome, AuditOutcome::NotFound);
    assert_eq!(log[1].outcome, AuditOutcome::Success);
    assert_eq!(log[3], audit(AuditAction::Store, "r1"));
}

async fn contract_conflicts_change_nothing(store: &dyn SecretStore) {
    let a = addr("google");
    store
        .put(
            write(&a, 1, b"v1"),
            None,
            audit(AuditAction::Store, "c1"),
            None,
        )
        .await
        .unwrap();
    // Expecting "absent" when a secret exists.
    let err = store
        .put(
            write(&a, 1, b"other"),
            None,
            audit(AuditAction::Store, "c2"),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Conflict {
            expected: None,
            found: Some(1)
        }
    ));
    // Expecting a stale version.
    store
        .put(
            write(&a, 2, b"v2"),
            Some(1),
            audit(AuditAction::Store, "c3"),
            None,
        )
        .await
        .unwrap();
    let err = store
        .put(
            write(&a, 2, b"stale"),
            Some(1),
            audit(AuditAction::Store, "c4"),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), vault_types::ErrorKind::Conflict);
    // A version that does not follow the expected one is refused.
    assert!(matches!(
        store
            .put(
                write(&a, 7, b"x"),
                Some(2),
                audit(AuditAction::Store, "c5"),
                None
            )
            .await,
        Err(Error::Invalid(_))
    ));
    let got = store.get(&a).await.unwrap().unwrap();
    assert_eq!((got.version, got.sealed.as_slice()), (2, &b"v2"[..]));
    // Failed writes left no audit record behind.
    let ids: Vec<_> = store
        .recent_audit(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert!(ids.contains(&"c3".to_string()));
    assert!(!ids.iter().any(|i| i == "c2" || i == "c4" || i == "c5"));
}

async fn contract_concurrent_writers_one_wins(store: &Arc<dyn SecretStore>) {
    let a = addr("stripe");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = Arc::clone(store);
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put(
                    write(&a, 1, format!("w{i}").as_bytes()),
                    None,
                    audit(AuditAction::Store, &format!("w{i}")),
                    None,
                )
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert!(matches!(e, Error::Conflict { .. })),
        }
    }
    assert_eq!(ok, 1, "exactly one creator wins");
}

async fn sqlite_store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("data").join("vault.db"))
        .await
        .unwrap()
}

async fn crud(fx: Fx) {
    contract_crud(fx.store.as_ref()).await;
}

async fn conflicts_change_nothing(fx: Fx) {
    contract_conflicts_change_nothing(fx.store.as_ref()).await;
}

async fn concurrent_writers_one_wins(fx: Fx) {
    contract_concurrent_writers_one_wins(&fx.store).await;
}

#[tokio::test]
async fn sqlite_survives_reopen_and_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("vault.db");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .put(
                write(&addr("slack"), 1, b"kept"),
                None,
                audit(AuditAction::Store, "m1"),
                None,
            )
            .await
            .unwrap();
    }
    assert_eq!(schema_version(&path), MIGRATION_COUNT as i64);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store.get(&addr("slack")).await.unwrap().unwrap().sealed,
        b"kept"
    );
    assert_eq!(schema_version(&path), MIGRATION_COUNT as i64);
    assert_eq!(store.recent_audit(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_files_are_private_and_wal_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    store
        .put(
            write(&addr("slack"), 1, b"x"),
            None,
            audit(AuditAction::Store, "p1"),
            None,
        )
        .await
        .unwrap();
    let data = dir.path().join("data");
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for name in ["vault.db", "vault.db-wal", "vault.db-shm"] {
        let mode = std::fs::metadata(data.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    let conn = rusqlite::Connection::open(data.join("vault.db")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

async fn corrupt_rows_are_errors_not_panics(fx: Fx) {
    let store = Arc::clone(&fx.store);
    store
        .put(
            write(&addr("slack"), 1, b"x"),
            None,
            audit(AuditAction::Store, "k1"),
            None,
        )
        .await
        .unwrap();
    fx.exec("UPDATE secrets SET status = 'bogus'");
    let err = store.get(&addr("slack")).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
}

async fn contract_refresh_bookkeeping(store: &dyn SecretStore) {
    let due = |platform: &str, minutes: i64| {
        let mut w = write(&addr(platform), 1, b"x");
        w.meta.refresh.refresh_due = Some(T0 + Duration::minutes(minutes));
        w
    };
    for (platform, minutes) in [("a", 3), ("b", 1), ("c", 2), ("d", 10)] {
        store
            .put(
                due(platform, minutes),
                None,
                audit(AuditAction::Store, platform),
                None,
            )
            .await
            .unwrap();
    }
    // No refresh_due: never listed.
    store
        .put(
            write(&addr("e"), 1, b"x"),
            None,
            audit(AuditAction::Store, "e"),
            None,
        )
        .await
        .unwrap();
    let now = T0 + Duration::minutes(5);
    let names = |v: Vec<SecretAddress>| {
        v.iter()
            .map(|a| a.platform().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(store.due_for_refresh(now, 10).await.unwrap()),
        ["b", "c", "a"]
    );
    assert_eq!(
        names(store.due_for_refresh(now, 2).await.unwrap()),
        ["b", "c"]
    );

    // Backing off and reauth_required are left out.
    let backoff = RefreshState {
        refresh_due: Some(T0 + Duration::minutes(1)),
        last_error: Some("timeout".into()),
        failure_count: 2,
        next_attempt_at: Some(T0 + Duration::minutes(7)),
        ..RefreshState::default()
    };
    store
        .update_state(
            &addr("b"),
            1,
            SecretStatus::RefreshFailing,
            backoff.clone(),
            audit(AuditAction::Refresh, "u1"),
            None,
        )
        .await
        .unwrap();
    store
        .update_state(
            &addr("c"),
            1,
            SecretStatus::ReauthRequired,
            RefreshState::default(),
            audit(AuditAction::Refresh, "u2"),
            Some(NewNotification {
                payload: "{\"event\":\"x\"}".into(),
            }),
        )
        .await
        .unwrap();
    assert_eq!(names(store.due_for_refresh(now, 10).await.unwrap()), ["a"]);
    assert_eq!(
        names(
            store
                .due_for_refresh(T0 + Duration::minutes(8), 10)
                .await
                .unwrap()
        ),
        ["b", "a"]
    );
    let b = store.get(&addr("b")).await.unwrap().unwrap();
    assert_eq!(b.meta.status, SecretStatus::RefreshFailing);
    assert_eq!(b.meta.refresh, backoff);
    assert_eq!(b.version, 1, "state updates keep the version");

    // A stale version is a conflict and changes nothing.
    let err = store
        .update_state(
            &addr("b"),
            7,
            SecretStatus::Active,
            RefreshState::default(),
            audit(AuditAction::Refresh, "u3"),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }));
    assert_eq!(
        store.get(&addr("b")).await.unwrap().unwrap().meta.status,
        SecretStatus::RefreshFailing
    );

    // Project listing spans environments.
    let dev = SecretAddress::new("dev", "pf_203", "a").unwrap();
    let mut w = write(&dev, 1, b"x");
    w.address = dev.clone();
    store
        .put(w, None, audit(AuditAction::Store, "dev"), None)
        .await
        .unwrap();
    let listed = store.list_project("pf_203").await.unwrap();
    assert_eq!(listed.len(), 6);
    assert_eq!(listed[0], dev);
    assert!(store.list_project("pf_999").await.unwrap().is_empty());

    // The outbox: pending, failed with backoff, delivered.
    let pending = store.pending_notifications(T0, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].attempts, 0);
    let id = pending[0].id;
    store
        .notification_failed(id, T0 + Duration::minutes(1))
        .await
        .unwrap();
    assert!(
        store
            .pending_notifications(T0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .pending_notifications(T0 + Duration::minutes(1), 10)
        .await
        .unwrap();
    assert_eq!((again[0].id, again[0].attempts), (id, 1));
    store.notification_delivered(id).await.unwrap();
    assert!(
        store
            .pending_notifications(T0 + Duration::days(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn refresh_bookkeeping(fx: Fx) {
    contract_refresh_bookkeeping(fx.store.as_ref()).await;
}

#[tokio::test]
async fn sqlite_migrates_a_version_1_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    {
        // A database as the first release left it.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(crate::sqlite::MIGRATION_1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO secrets VALUES ('prod','p','slack',3,x'00','k','active',NULL,'[]',0,
             'Bearer',NULL,1,2)",
            [],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(schema_version(&path), MIGRATION_COUNT as i64);
    let got = store
        .get(&SecretAddress::new("prod", "p", "slack").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.version, 3);
    assert_eq!(got.meta.refresh, RefreshState::default());
}

fn rowid_of(path: &std::path::Path, platform: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(
        "SELECT rowid FROM secrets WHERE platform = ?1",
        [platform],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn sqlite_row_keys_never_change() {
    // Stored rows depend on these values: a changed hash would send every
    // read of an existing row through the slower index path. Computed
    // independently: first 8 bytes of SHA-256 over the encoding, shifted
    // right by one.
    use crate::sqlite::row_key;
    assert_eq!(
        row_key("prod", "pf_203", "slack"),
        7_101_626_570_247_779_111
    );
    assert_eq!(row_key("prod", "bench", "p0"), 5_629_528_500_147_043_330);
    // The separators keep the parts apart.
    assert_ne!(row_key("prod", "ab", "c"), row_key("prod", "a", "bc"));
}

#[tokio::test]
async fn sqlite_rows_live_at_their_address_key_and_collisions_use_the_index() {
    use crate::sqlite::row_key;
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite_path(&dir);
    let store = SqliteStore::open(&path).await.unwrap();
    let (a, b) = (addr("slack"), addr("notion"));
    let key = |x: &SecretAddress| row_key(x.environment(), x.project(), x.platform());
    assert_ne!(key(&a), key(&b));

    store
        .put(
            write(&a, 1, b"a1"),
            None,
            audit(AuditAction::Store, "req"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(rowid_of(&path, "slack"), key(&a));
    store
        .put(
            write(&a, 2, b"a2"),
            Some(1),
            audit(AuditAction::Store, "req"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        rowid_of(&path, "slack"),
        key(&a),
        "a replaced row keeps its key"
    );

    // A collision: another row sits on b's key before b is stored.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE secrets SET rowid = ?1 WHERE platform = 'slack'",
            [key(&b)],
        )
        .unwrap();
    store
        .put(
            write(&b, 1, b"b1"),
            None,
            audit(AuditAction::Store, "req"),
            None,
        )
        .await
        .unwrap();
    let b_rowid = rowid_of(&path, "notion");
    assert_ne!(b_rowid, key(&b), "b's key was taken: b lives elsewhere");
    assert_eq!(rowid_of(&path, "slack"), key(&b));

    // Both are found (the key holds the other address: the index answers).
    let got_a = store.get(&a).await.unwrap().unwrap();
    assert_eq!((got_a.version, got_a.sealed.as_slice()), (2, &b"a2"[..]));
    let got_b = store.get(&b).await.unwrap().unwrap();
    assert_eq!((got_b.version, got_b.sealed.as_slice()), (1, &b"b1"[..]));
    store
        .put(
            write(&b, 2, b"b2"),
            Some(1),
            audit(AuditAction::Store, "req"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(rowid_of(&path, "notion"), b_rowid);
    assert_eq!(store.get(&b).await.unwrap().unwrap().sealed, b"b2");
    assert!(store.get(&addr("github")).await.unwrap().is_none());
}

/// A file whose chain is older than its anchors (migration 7): after the
/// upgrade the chain begins afresh, signed, with the first append (those
/// old MACs were never anchored), and the unsigned sink cursors start over.
#[tokio::test]
async fn sqlite_a_chain_from_before_anchors_begins_at_the_first_append_after_the_upgrade() {
    use crate::sqlite::MIGRATIONS_BEFORE_ANCHORS;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in MIGRATIONS_BEFORE_ANCHORS {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", MIGRATIONS_BEFORE_ANCHORS.len() as i64)
            .unwrap();
        for seq in 1..=3 {
            conn.execute(
                "INSERT INTO audit_log (seq, at_ms, request_id, action, outcome, mac)
                 VALUES (?1, 1, 'old', 'read', 'success', X'0102')",
                rusqlite::params![seq],
            )
            .unwrap();
        }
        conn.execute_batch("INSERT INTO audit_cursors (name, seq) VALUES ('forward', 2)")
            .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    store.chain_audit(Arc::new(TestMac));
    assert_eq!(store.audit_cursor("forward").await.unwrap(), 0);
    store
        .append_audit(audit(AuditAction::Read, "new"))
        .await
        .unwrap();
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(
        (v.records, v.verified, v.problem.clone()),
        (4, 1, None),
        "{v:?}"
    );
}

/// A file from before the anchors that an older build upgraded: it began
/// the chain after the records it had chained without anchors, whose MACs
/// then stood before the start anchor, where `audit verify` expects none.
/// Migration 12 drops them.
#[tokio::test]
async fn sqlite_macs_before_the_start_anchor_are_dropped_by_migration_12() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        for i in 0..2 {
            store
                .append_audit(audit(AuditAction::Read, &format!("old{i}")))
                .await
                .unwrap();
        }
        store.chain_audit(Arc::new(TestMac));
        store
            .append_audit(audit(AuditAction::Read, "chained"))
            .await
            .unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("UPDATE audit_log SET mac = X'0102' WHERE seq <= 2")
        .unwrap();
    let before = SqliteStore::open(&path).await.unwrap();
    let v = before.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert!(v.problem.is_some(), "the old MACs stand out: {v:?}");
    drop(before);
    conn.pragma_update(None, "user_version", 11).unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).await.unwrap();
    store.chain_audit(Arc::new(TestMac));
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(
        (v.records, v.verified, v.problem.clone()),
        (3, 1, None),
        "{v:?}"
    );
    store
        .append_audit(audit(AuditAction::Read, "after"))
        .await
        .unwrap();
}

#[tokio::test]
async fn sqlite_migration_moves_old_rows_to_their_keys() {
    use crate::sqlite::{MIGRATIONS_BEFORE_REKEY, row_key};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let key = |platform: &str| row_key("prod", "pf_203", platform);
    {
        // A file from before rows were keyed: rowids 1, 2, ...; and "zoom"
        // already sits on "slack"'s key, so "slack" cannot move there.
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in MIGRATIONS_BEFORE_REKEY {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", MIGRATIONS_BEFORE_REKEY.len() as i64)
            .unwrap();
        let rows = [
            (1, "slack"),
            (2, "notion"),
            (3, "github"),
            (key("slack"), "zoom"),
        ];
        for (rowid, platform) in rows {
            conn.execute(
                "INSERT INTO secrets (rowid, environment, project, platform, version, sealed,
                     key_id, status, scopes, has_refresh_token, token_type, created_at_ms,
                     updated_at_ms)
                 VALUES (?1, 'prod', 'pf_203', ?2, 4, CAST(?2 AS BLOB), 'k', 'active', '[]', 0, 'Bearer', 1, 2)",
                rusqlite::params![rowid, platform],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(schema_version(&path), MIGRATION_COUNT as i64);
    for platform in ["notion", "github", "zoom"] {
        assert_eq!(rowid_of(&path, platform), key(platform), "{platform} moved");
    }
    assert_eq!(rowid_of(&path, "slack"), 1, "its key was taken: it stays");
    let wal = std::fs::metadata(dir.path().join("vault.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the migration's WAL was folded back and truncated");
    for platform in ["slack", "notion", "github", "zoom"] {
        let got = store.get(&addr(platform)).await.unwrap().unwrap();
        assert_eq!(
            (got.version, got.sealed.as_slice()),
            (4, platform.as_bytes())
        );
    }
}

async fn contract_engines(store: &dyn SecretStore) {
    assert!(store.list_engines().await.unwrap().is_empty());
    let mut e = EngineRecord {
        id: "ops".into(),
        token_sha256: "ab".repeat(32),
        grants: vec!["read:prod:*:*".into()],
        created_at: T0,
        updated_at: T0,
        revoked_at: None,
    };
    store.put_engine(e.clone()).await.unwrap();
    assert_eq!(store.list_engines().await.unwrap(), [e.clone()]);
    e.token_sha256 = "cd".repeat(32);
    e.updated_at = T0 + Duration::minutes(1);
    e.revoked_at = Some(T0 + Duration::minutes(2));
    store.put_engine(e.clone()).await.unwrap();
    assert_eq!(store.list_engines().await.unwrap(), [e]);
}

async fn engines(fx: Fx) {
    contract_engines(fx.store.as_ref()).await;
}

#[derive(Debug)]
struct TestMac;

impl AuditMac for TestMac {
    fn mac(&self, data: &[u8]) -> [u8; 32] {
        // A keyed toy MAC is enough to test the chain's bookkeeping; the
        // vault uses HMAC-SHA256.
        let mut out = [7u8; 32];
        for (i, b) in data.iter().enumerate() {
            out[i % 32] = out[i % 32].wrapping_mul(31).wrapping_add(*b);
        }
        out
    }
}

async fn chained(fx: &Fx, n: usize) -> Arc<dyn SecretStore> {
    let store = Arc::clone(&fx.store);
    store.chain_audit(Arc::new(TestMac));
    for i in 0..n {
        let mut r = audit(AuditAction::Read, &format!("q{i}"));
        r.detail = Some(format!("d{i}"));
        store.append_audit(r).await.unwrap();
    }
    store
}

/// `n` chained records, record `i + 1` written on day `i` after `T0`.
async fn chained_daily(fx: &Fx, n: i64) -> Arc<dyn SecretStore> {
    let store = Arc::clone(&fx.store);
    store.chain_audit(Arc::new(TestMac));
    for i in 0..n {
        let mut r = audit(AuditAction::Read, &format!("p{i}"));
        r.at = T0 + Duration::days(i);
        store.append_audit(r).await.unwrap();
    }
    store
}

async fn audit_chain_verifies_when_untouched(fx: Fx) {
    let store = chained(&fx, 6).await;
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!((v.records, v.verified, v.problem), (6, 6, None));
    assert_eq!(v.last_verified_seq, Some(6));
}

async fn audit_chain_detects_a_changed_record(fx: Fx) {
    let store = chained(&fx, 6).await;
    fx.exec("UPDATE audit_log SET outcome = 'success', detail = NULL WHERE seq = 3");
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(v.problem, Some(AuditProblem::Changed { seq: 3 }));
    assert_eq!(v.last_verified_seq, Some(2));
}

async fn audit_chain_detects_a_removed_record(fx: Fx) {
    let store = chained(&fx, 6).await;
    fx.exec("DELETE FROM audit_log WHERE seq = 4");
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(v.problem, Some(AuditProblem::Removed { seq: 5 }));
    assert_eq!(v.last_verified_seq, Some(3));
}

async fn audit_chain_detects_an_inserted_record(fx: Fx) {
    let store = chained(&fx, 6).await;
    // A forged record at the end, and one in place of a removed record.
    fx.exec(&format!(
        "INSERT INTO audit_log (seq, at_ms, request_id, action, outcome, mac)
             VALUES (7, 0, 'forged', 'read', 'success', {})",
        fx.blob("00")
    ));
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(v.problem, Some(AuditProblem::Inserted { seq: 7 }));
    let fx = fx.fresh().await;
    let store = chained(&fx, 4).await;
    fx.exec(&format!(
        "DELETE FROM audit_log WHERE seq = 2;
         INSERT INTO audit_log (seq, at_ms, request_id, action, outcome, mac)
         VALUES (2, 0, 'forged', 'read', 'success', {})",
        fx.blob("0102")
    ));
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(v.problem, Some(AuditProblem::Inserted { seq: 2 }));
}

async fn audit_records_before_the_chain_are_counted_apart(fx: Fx) {
    let store = Arc::clone(&fx.store);
    store
        .append_audit(audit(AuditAction::Read, "old"))
        .await
        .unwrap();
    store.chain_audit(Arc::new(TestMac));
    store
        .append_audit(audit(AuditAction::Read, "new"))
        .await
        .unwrap();
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!((v.unchained, v.verified, v.problem), (1, 1, None));

    // Retention takes the unchained record first, in its own chunk and
    // without a checkpoint, then the chained one; the log still verifies.
    let before = T0 + Duration::days(1);
    assert_eq!(
        store.prune_audit(before, i64::MAX, 1).await.unwrap(),
        Some(1)
    );
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!((v.unchained, v.verified, v.problem), (0, 1, None));
    assert_eq!(
        store.prune_audit(before, i64::MAX, 1).await.unwrap(),
        Some(2)
    );
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!((v.problem, v.pruned_through), (None, Some(2)));
    assert_eq!(store.prune_audit(before, i64::MAX, 1).await.unwrap(), None);
}

async fn audit_query_filters_and_pages(fx: Fx) {
    let store = chained(&fx, 5).await;
    let mut other = audit(AuditAction::Store, "s1");
    other.project = Some("pf_other".into());
    store.append_audit(other).await.unwrap();
    let q = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        };
        f(&mut q);
        q
    };
    let all = store.query_audit(q(|_| {})).await.unwrap();
    assert_eq!(
        all.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [6, 5, 4, 3, 2, 1]
    );
    assert_eq!(all.next_before, None);
    let reads = store
        .query_audit(q(|q| q.action = Some(AuditAction::Read)))
        .await
        .unwrap();
    assert_eq!(reads.entries.len(), 5);
    let other = store
        .query_audit(q(|q| q.project = Some("pf_other".into())))
        .await
        .unwrap();
    assert_eq!(other.entries.len(), 1);
    let page = store
        .query_audit(q(|q| {
            q.limit = 2;
            q.before_seq = Some(5);
        }))
        .await
        .unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [4, 3]
    );
    assert_eq!(page.next_before, Some(3));

    // A bounded scan: at most two records examined per page. Pages may come
    // back short, even empty, with a cursor that goes on to the end.
    for (project, want) in [("pf_203", vec![5, 4, 3, 2, 1]), ("pf_other", vec![6])] {
        let mut cursor = None;
        let mut found = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let page = store
                .query_audit(AuditQuery {
                    limit: 100,
                    scan: Some(2),
                    project: Some(project.into()),
                    before_seq: cursor,
                    ..AuditQuery::default()
                })
                .await
                .unwrap();
            sizes.push(page.entries.len());
            found.extend(page.entries.iter().map(|e| e.seq));
            match page.next_before {
                Some(next) => cursor = Some(next),
                None => break,
            }
            assert!(sizes.len() < 10, "the cursor does not move on");
        }
        assert_eq!(found, want, "{project}");
        assert_eq!(sizes.len(), 3, "6 records, 2 examined per page: {sizes:?}");
    }
    // A cursor far past the newest record starts from the newest.
    let page = store
        .query_audit(AuditQuery {
            limit: 100,
            scan: Some(2),
            before_seq: Some(i64::MAX),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [6, 5]
    );
    assert_eq!(store.audit_cursor("forward").await.unwrap(), 0);
    store.set_audit_cursor("forward", 4).await.unwrap();
    store.set_audit_cursor("forward", 2).await.unwrap();
    assert_eq!(
        store.audit_cursor("forward").await.unwrap(),
        4,
        "never back"
    );
    let after = store.audit_after(4, 10).await.unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 6]);
    assert!(after.iter().all(|e| e.mac.is_some()));
}

async fn retention_prunes_and_leaves_a_verifiable_checkpoint(fx: Fx) {
    let store = chained_daily(&fx, 10).await;
    // Older than day 6, but nothing past record 4 (not yet delivered).
    let pruned = store
        .prune_audit(T0 + Duration::days(6), 4, 10_000)
        .await
        .unwrap();
    assert_eq!(pruned, Some(4));
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(v.problem, None, "{v:?}");
    assert_eq!((v.pruned_through, v.records, v.verified), (Some(4), 6, 6));
    // Pruning again up to day 6: records 5 and 6.
    assert_eq!(
        store
            .prune_audit(T0 + Duration::days(6), i64::MAX, 10_000)
            .await
            .unwrap(),
        Some(6)
    );
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(
        (v.problem, v.pruned_through, v.verified),
        (None, Some(6), 4)
    );
    // Nothing more to prune.
    assert_eq!(
        store
            .prune_audit(T0 + Duration::days(6), i64::MAX, 10_000)
            .await
            .unwrap(),
        None
    );

    // Deleting the first record after the checkpoint is still caught…
    fx.exec("DELETE FROM audit_log WHERE seq = 7");
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(v.problem, Some(AuditProblem::Removed { seq: 8 }));
    // …and so is a forged checkpoint.
    fx.exec("UPDATE audit_checkpoints SET seq = 7 WHERE seq = 6");
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(v.problem, Some(AuditProblem::Checkpoint { seq: 7 }));
}

async fn retention_prunes_in_chunks_each_leaving_a_verifiable_checkpoint(fx: Fx) {
    let store = chained_daily(&fx, 10).await;
    // Records 1..=8 are old enough; three per call.
    let before = T0 + Duration::days(8);
    let mut cuts = Vec::new();
    while let Some(seq) = store.prune_audit(before, i64::MAX, 3).await.unwrap() {
        cuts.push(seq);
        let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
        assert_eq!(v.problem, None, "after pruning through {seq}: {v:?}");
        assert_eq!(v.pruned_through, Some(seq));
        // Appends go on between chunks (new records, not due for pruning).
        let mut r = audit(AuditAction::Read, "between");
        r.at = T0 + Duration::days(20);
        store.append_audit(r).await.unwrap();
        assert!(cuts.len() < 10, "pruning never ends: {cuts:?}");
    }
    assert_eq!(cuts, [3, 6, 8]);
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!((v.problem, v.records), (None, 2 + 3));
}

async fn the_chain_continues_after_everything_was_pruned(fx: Fx) {
    let store = chained(&fx, 3).await;
    assert_eq!(
        store
            .prune_audit(T0 + Duration::days(1), i64::MAX, 10_000)
            .await
            .unwrap(),
        Some(3)
    );
    store
        .append_audit(audit(AuditAction::Read, "after"))
        .await
        .unwrap();
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(
        (v.problem, v.verified, v.last_verified_seq),
        (None, 1, Some(4))
    );
}

async fn group_commit_keeps_every_record_in_one_chain(fx: Fx) {
    let store = chained(&fx, 0).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .append_audit(audit(AuditAction::Read, &format!("g{i}")))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!((v.records, v.verified, v.problem), (200, 200, None));
}

/// Stores, conflicting stores and lone usage records all at once: with
/// SQLite they share group commits, each store in its own savepoint. Every
/// distinct store lands with its record, exactly one creator of the
/// contested address wins, the losers leave no trace, one chain verifies.
async fn concurrent_stores_conflicts_and_records_commit_together(fx: Fx) {
    let store = chained(&fx, 0).await;
    let mut tasks = Vec::new();
    for i in 0..120 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => store
                    .put(
                        write(&addr(&format!("own{i}")), 1, format!("v{i}").as_bytes()),
                        None,
                        audit(AuditAction::Store, &format!("own{i}")),
                        None,
                    )
                    .await
                    .map(|()| "own"),
                1 => store
                    .put(
                        write(&addr("contested"), 1, format!("c{i}").as_bytes()),
                        None,
                        audit(AuditAction::Store, &format!("contested{i}")),
                        None,
                    )
                    .await
                    .map(|()| "contested"),
                _ => store
                    .append_audit(audit(AuditAction::Read, &format!("r{i}")))
                    .await
                    .map(|()| "read"),
            }
        }));
    }
    let (mut own, mut contested, mut reads, mut conflicts) = (0, 0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok("own") => own += 1,
            Ok("contested") => contested += 1,
            Ok(_) => reads += 1,
            Err(Error::Conflict { .. }) => conflicts += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((own, contested, reads, conflicts), (40, 1, 40, 39));
    for i in (0..120).step_by(3) {
        let got = store.get(&addr(&format!("own{i}"))).await.unwrap().unwrap();
        assert_eq!(got.sealed, format!("v{i}").as_bytes());
    }
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!((v.records, v.verified, v.problem), (81, 81, None));
}

#[tokio::test]
async fn sqlite_a_failed_usage_log_write_fails_with_and_without_group_commit() {
    for group_commit in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(
            &dir.path().join("vault.db"),
            SqliteOptions {
                group_commit,
                ..SqliteOptions::default()
            },
        )
        .await
        .unwrap();
        rusqlite::Connection::open(store.path())
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER full BEFORE INSERT ON audit_log
                 BEGIN SELECT RAISE(FAIL, 'disk full'); END;",
            )
            .unwrap();
        assert!(
            store
                .append_audit(audit(AuditAction::Read, "x"))
                .await
                .is_err(),
            "group commit {group_commit}"
        );
    }
}

/// SQLite may roll a transaction back on its own (a full disk, an I/O
/// error): a trigger raising ROLLBACK does the same on purpose, under the
/// first store of a batch. The batch must fail as a whole: the store
/// behind it in the same batch was committed alone, outside the batch's
/// transaction, while its caller heard that it failed.
#[tokio::test]
async fn sqlite_a_batch_rolled_back_under_its_stores_fails_whole_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open_with(
            &dir.path().join("vault.db"),
            SqliteOptions {
                busy_timeout: std::time::Duration::from_secs(60),
                ..SqliteOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let outside = rusqlite::Connection::open(store.path()).unwrap();
    outside
        .execute_batch(
            "CREATE TRIGGER rolled_back BEFORE INSERT ON secrets
             WHEN NEW.platform = 'poison'
             BEGIN SELECT RAISE(ROLLBACK, 'rolled back'); END;",
        )
        .unwrap();
    let queued = |store: Arc<SqliteStore>| async move { store.stats().await.unwrap().audit_queue };
    let wait_for_queue = |n: u64| {
        let store = Arc::clone(&store);
        async move {
            while queued(Arc::clone(&store)).await < n {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(queued(store).await, n);
        }
    };

    // The writer takes a first record and waits for the lock held here,
    // while the poisoned store, an innocent one and a record queue behind
    // it: they make up the next batch, in that order.
    outside.execute_batch("BEGIN IMMEDIATE").unwrap();
    let first = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.append_audit(audit(AuditAction::Read, "r0")).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!first.is_finished());
    let put = |platform: &'static str| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .put(
                    write(&addr(platform), 1, b"sealed"),
                    None,
                    audit(AuditAction::Store, platform),
                    None,
                )
                .await
        })
    };
    let poisoned = put("poison");
    wait_for_queue(1).await;
    let innocent = put("slack");
    wait_for_queue(2).await;
    let record = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.append_audit(audit(AuditAction::Read, "r1")).await }
    });
    wait_for_queue(3).await;
    outside.execute_batch("COMMIT").unwrap();

    first.await.unwrap().unwrap();
    assert!(poisoned.await.unwrap().is_err());
    let innocent = innocent.await.unwrap();
    let record = record.await.unwrap();
    assert!(
        innocent.is_err() && record.is_err(),
        "{innocent:?} {record:?}"
    );
    // What the callers heard is what happened: nothing of the batch stayed.
    assert!(store.get(&addr("slack")).await.unwrap().is_none());
    let ids: Vec<String> = store
        .recent_audit(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.request_id)
        .collect();
    assert_eq!(ids, ["r0"]);
    // And the writer goes on.
    store
        .put(
            write(&addr("slack"), 1, b"sealed"),
            None,
            audit(AuditAction::Store, "again"),
            None,
        )
        .await
        .unwrap();
    assert!(store.get(&addr("slack")).await.unwrap().is_some());
}

async fn stripping_the_chain_is_found(fx: Fx) {
    // Every MAC removed.
    let store = chained(&fx, 5).await;
    fx.exec("UPDATE audit_log SET mac = NULL");
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert!(v.problem.is_some(), "{v:?}");
    // …and the anchors and checkpoints with them.
    fx.exec("DELETE FROM audit_anchors; DELETE FROM audit_checkpoints;");
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(v.problem, Some(AuditProblem::Unanchored));
}

async fn cutting_off_the_newest_records_is_found(fx: Fx) {
    let store = chained(&fx, 6).await;
    fx.exec("DELETE FROM audit_log WHERE seq >= 5");
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(v.problem, Some(AuditProblem::Removed { seq: 5 }));
    assert_eq!(v.last_verified_seq, Some(4));
}

async fn records_cut_off_the_end_stay_missing_after_later_appends(fx: Fx) {
    let store = chained(&fx, 6).await;
    fx.exec("DELETE FROM audit_log WHERE seq >= 5");
    // The vault goes on writing: the chain continues from the signed head
    // (after 6), not from the cut, so the gap is still found.
    for i in 0..3 {
        store
            .append_audit(audit(AuditAction::Read, &format!("after{i}")))
            .await
            .unwrap();
    }
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    // Found where the chain resumes after the gap.
    assert_eq!(v.problem, Some(AuditProblem::Removed { seq: 7 }));
    assert_eq!(v.last_verified_seq, Some(4));
    let newest = store.recent_audit(1).await.unwrap();
    assert_eq!(newest[0].request_id, "after2");
    let seqs: Vec<i64> = store
        .query_audit(AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .entries
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        seqs,
        [9, 8, 7, 4, 3, 2, 1],
        "numbered after the signed head"
    );
}

async fn verify_sees_one_snapshot_while_records_are_appended(fx: Fx) {
    let store = chained(&fx, 3).await;
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..300 {
                store
                    .append_audit(audit(AuditAction::Read, &format!("w{i}")))
                    .await
                    .unwrap();
            }
        })
    };
    let mut runs = 0;
    while !writer.is_finished() {
        let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
        assert_eq!(v.problem, None, "after {} records: {v:?}", v.records);
        runs += 1;
    }
    writer.await.unwrap();
    assert!(runs > 0);
}

async fn nothing_is_appended_over_a_forged_head(fx: Fx) {
    let store = chained(&fx, 6).await;
    fx.exec("DELETE FROM audit_log WHERE seq >= 5");
    fx.exec("UPDATE audit_anchors SET seq = 4 WHERE name = 'head'");
    let err = store
        .append_audit(audit(AuditAction::Read, "over-the-forgery"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("head anchor"), "{err}");
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert!(v.problem.is_some(), "{v:?}");
}

/// A head signed with a key version this process has not loaded: a wait
/// when the store holds that version (another process rotated the key), a
/// forgery when it does not.
async fn a_head_under_an_unknown_key_version_is_a_wait_or_a_forgery(fx: Fx) {
    let store = chained(&fx, 3).await;
    fx.exec("UPDATE audit_anchors SET mac_key = 999 WHERE name = 'head'");
    let err = store
        .append_audit(audit(AuditAction::Read, "over-999"))
        .await
        .unwrap_err();
    // (Group commits answer every failure as the commit's; the message
    // tells the two apart.)
    assert!(err.to_string().contains("does not exist"), "{err}");
    store
        .add_audit_key(AuditKeyRecord {
            version: 2,
            sealed: b"sealed elsewhere".to_vec(),
            key_id: "k".into(),
            created_at: T0,
        })
        .await
        .unwrap();
    fx.exec("UPDATE audit_anchors SET mac_key = 2 WHERE name = 'head'");
    let err = store
        .append_audit(audit(AuditAction::Read, "over-2"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not loaded yet"), "{err}");
}

/// Removed anchors leave the log unanchored for `audit verify`; the next
/// append must not begin the chain afresh over them (which would hide the
/// removal), whether the head went too or not.
async fn the_chain_is_not_begun_again_over_removed_anchors(fx: Fx) {
    for removed in ["name = 'start'", "TRUE"] {
        let store = chained(&fx, 5).await;
        fx.exec(&format!("DELETE FROM audit_anchors WHERE {removed}"));
        let err = store
            .append_audit(audit(AuditAction::Read, "after-the-strip"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("start anchor"), "{err}");
        let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
        assert_eq!(v.problem, Some(AuditProblem::Unanchored), "{removed}");
        fx.exec("DELETE FROM audit_log; DELETE FROM audit_anchors;");
    }
}

async fn forged_rows_below_a_checkpoint_are_found(fx: Fx) {
    let store = chained(&fx, 6).await;
    store
        .prune_audit(T0 + Duration::days(1), 3, 10_000)
        .await
        .unwrap();
    fx.exec(
        "INSERT INTO audit_log (seq, at_ms, request_id, action, outcome)
             VALUES (2, 0, 'forged-old', 'read', 'success')",
    );
    let v = store.verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!(v.problem, Some(AuditProblem::Inserted { seq: 2 }));
}

async fn a_cursor_moved_by_hand_is_refused(fx: Fx) {
    let store = chained(&fx, 6).await;
    store.set_audit_cursor("forward", 2).await.unwrap();
    assert_eq!(store.audit_cursor("forward").await.unwrap(), 2);
    fx.exec("UPDATE audit_cursors SET seq = 6 WHERE name = 'forward'");
    assert!(store.audit_cursor("forward").await.is_err());
    // The forwarder moving on from 2 must not sign the forged 6 as its own.
    assert!(matches!(
        store.set_audit_cursor("forward", 3).await,
        Err(Error::Corrupt(_))
    ));
    assert!(store.audit_cursor("forward").await.is_err());
}

async fn contract_rewrap(store: &dyn SecretStore) {
    let (a, b, c) = (addr("a"), addr("b"), addr("c"));
    for x in [&a, &b, &c] {
        store
            .put(
                write(x, 1, b"old"),
                None,
                audit(AuditAction::Store, "s"),
                None,
            )
            .await
            .unwrap();
    }
    let usage = store.key_usage().await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!((usage[0].secrets, usage[0].audit_keys), (3, 0));

    // Pages in address order, resuming after the last address seen.
    let first = store.secrets_to_rewrap("new-key", None, 2).await.unwrap();
    assert_eq!(
        first
            .iter()
            .map(|i| i.address.platform())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let rest = store
        .secrets_to_rewrap("new-key", Some(first[1].address.clone()), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].address, c);

    // `b` changes between read and write-back: its rewrap is skipped.
    store
        .put(
            write(&b, 2, b"newer"),
            Some(1),
            audit(AuditAction::Store, "s2"),
            None,
        )
        .await
        .unwrap();
    let items: Vec<Rewrapped> = first
        .into_iter()
        .chain(rest)
        .map(|item| Rewrapped {
            item,
            sealed: b"rewrapped".to_vec(),
            key_id: "new-key".into(),
        })
        .collect();
    assert_eq!(store.rewrap_secrets(items).await.unwrap(), 2);
    let got_a = store.get(&a).await.unwrap().unwrap();
    assert_eq!(
        (got_a.sealed.as_slice(), got_a.key_id.as_str()),
        (&b"rewrapped"[..], "new-key")
    );
    assert_eq!(got_a.version, 1, "a rewrap is not a new version");
    let got_b = store.get(&b).await.unwrap().unwrap();
    assert_eq!(got_b.sealed, b"newer");
    // Only `b` (written under the old id by this test) is left.
    let left = store.secrets_to_rewrap("new-key", None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].address, b);

    // Usage-log keys are counted and rewrapped too.
    let key = AuditKeyRecord {
        version: 1,
        sealed: b"k1".to_vec(),
        key_id: "local-test".into(),
        created_at: T0,
    };
    store.add_audit_key(key.clone()).await.unwrap();
    assert!(
        store.add_audit_key(key).await.is_err(),
        "versions are unique"
    );
    assert!(
        !store
            .rewrap_audit_key(1, b"stale".to_vec(), b"k1'".to_vec(), "new-key".into())
            .await
            .unwrap()
    );
    assert!(
        store
            .rewrap_audit_key(1, b"k1".to_vec(), b"k1'".to_vec(), "new-key".into())
            .await
            .unwrap()
    );
    let keys = store.audit_keys().await.unwrap();
    assert_eq!(
        (keys[0].sealed.as_slice(), keys[0].key_id.as_str()),
        (&b"k1'"[..], "new-key")
    );
    let mut usage = store.key_usage().await.unwrap();
    usage.sort_by(|x, y| x.key_id.cmp(&y.key_id));
    assert_eq!(
        usage
            .iter()
            .map(|u| (u.key_id.as_str(), u.secrets, u.audit_keys))
            .collect::<Vec<_>>(),
        [("local-test", 1, 0), ("new-key", 2, 1)]
    );
}

async fn rewrap(fx: Fx) {
    contract_rewrap(fx.store.as_ref()).await;
}

/// A MAC with several key versions, like the vault's after a rotation.
#[derive(Debug)]
struct VersionedMac {
    current: u32,
}

impl AuditMac for VersionedMac {
    fn mac(&self, data: &[u8]) -> [u8; 32] {
        self.mac_with(self.current, data).unwrap_or_default()
    }

    fn version(&self) -> u32 {
        self.current
    }

    fn mac_with(&self, version: u32, data: &[u8]) -> Option<[u8; 32]> {
        if version == 0 || version > self.current {
            return None;
        }
        let mut out = TestMac.mac(data);
        out[0] ^= version as u8;
        Some(out)
    }
}

async fn the_chain_verifies_across_a_usage_log_key_rotation(fx: Fx) {
    let store = Arc::clone(&fx.store);
    let v1 = Arc::new(VersionedMac { current: 1 });
    store.chain_audit(Arc::clone(&v1) as _);
    for i in 0..5 {
        store
            .append_audit(audit(AuditAction::Read, &format!("a{i}")))
            .await
            .unwrap();
    }
    store.set_audit_cursor("logs", 3).await.unwrap();
    store
        .prune_audit(T0 + Duration::seconds(1), 2, 10_000)
        .await
        .unwrap();

    let v2 = Arc::new(VersionedMac { current: 2 });
    store.chain_audit(Arc::clone(&v2) as _);
    for i in 0..5 {
        store
            .append_audit(audit(AuditAction::Read, &format!("b{i}")))
            .await
            .unwrap();
    }
    // The cursor and the checkpoint were signed with version 1 and still
    // verify with both versions known.
    assert_eq!(store.audit_cursor("logs").await.unwrap(), 3);
    let report = store.verify_audit(Arc::clone(&v2) as _).await.unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.verified, 8);

    // Knowing only version 1, the newer records do not verify.
    let report = store.verify_audit(v1).await.unwrap();
    assert!(report.problem.is_some(), "{report:?}");

    // The version column is covered: moving a record to another version
    // breaks its MAC.
    fx.exec("UPDATE audit_log SET mac_key = 1 WHERE seq = (SELECT MAX(seq) FROM audit_log) - 1");
    let report = store.verify_audit(v2).await.unwrap();
    assert!(report.problem.is_some(), "{report:?}");
}

/// The backend of a fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

/// A store under test, and what it keeps its data in.
struct Fx {
    store: Arc<dyn SecretStore>,
    kind: Kind,
    dir: Option<tempfile::TempDir>,
    db: Option<vault_test_support::TestDatabase>,
}

impl Fx {
    async fn new(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let store = sqlite_store(&dir).await;
                Some(Self {
                    store: Arc::new(store),
                    kind,
                    dir: Some(dir),
                    db: None,
                })
            }
            Kind::Postgres => {
                let db = vault_test_support::TestDatabase::create()?;
                let store = PostgresStore::connect(db.url(), pg_options())
                    .await
                    .unwrap();
                Some(Self {
                    store: Arc::new(store),
                    kind,
                    dir: None,
                    db: Some(db),
                })
            }
        }
    }

    /// Another empty store of the same backend.
    async fn fresh(&self) -> Self {
        Self::new(self.kind).await.unwrap()
    }

    /// A second store over the same data (another process, another replica).
    async fn open_another(&self) -> Arc<dyn SecretStore> {
        match (&self.dir, &self.db) {
            (Some(dir), _) => Arc::new(sqlite_store(dir).await),
            (_, Some(db)) => Arc::new(
                PostgresStore::connect(db.url(), pg_options())
                    .await
                    .unwrap(),
            ),
            _ => unreachable!("a fixture has a directory or a database"),
        }
    }

    /// Runs SQL statements on the data directly, as an intruder would.
    fn exec(&self, sql: &str) {
        match (&self.dir, &self.db) {
            (Some(dir), _) => rusqlite::Connection::open(sqlite_path(dir))
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            (_, Some(db)) => db.execute(sql).unwrap(),
            _ => unreachable!("a fixture has a directory or a database"),
        }
    }

    /// A literal of bytes, in this backend's SQL.
    fn blob(&self, hex: &str) -> String {
        match self.kind {
            Kind::Sqlite => format!("x'{hex}'"),
            Kind::Postgres => format!("'\\x{hex}'::bytea"),
        }
    }
}

fn pg_options() -> PostgresOptions {
    PostgresOptions {
        pool_size: 4,
        ..PostgresOptions::default()
    }
}

fn sqlite_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("data").join("vault.db")
}

async fn a_failed_usage_log_write_is_an_error_for_its_caller(fx: Fx) {
    let store = Arc::clone(&fx.store);
    fx.exec(match fx.kind {
        Kind::Sqlite => {
            "CREATE TRIGGER full BEFORE INSERT ON audit_log
             BEGIN SELECT RAISE(FAIL, 'disk full'); END;"
        }
        Kind::Postgres => {
            "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
             CREATE TRIGGER disk_full BEFORE INSERT ON audit_log
                 FOR EACH ROW EXECUTE FUNCTION disk_full();"
        }
    });
    assert!(
        store
            .append_audit(audit(AuditAction::Read, "x"))
            .await
            .is_err()
    );
    // A change whose record cannot be written is not made.
    let a = addr("slack");
    assert!(
        store
            .put(
                write(&a, 1, b"x"),
                None,
                audit(AuditAction::Store, "s"),
                None
            )
            .await
            .is_err()
    );
    assert!(store.get(&a).await.unwrap().is_none());
}

async fn survives_reopen_and_migrates_once(fx: Fx) {
    fx.store
        .put(
            write(&addr("slack"), 1, b"kept"),
            None,
            audit(AuditAction::Store, "m1"),
            None,
        )
        .await
        .unwrap();
    // Several processes opening the same data at once: one migrates, none
    // fails, nothing is lost.
    let (s1, s2, s3, s4) = tokio::join!(
        fx.open_another(),
        fx.open_another(),
        fx.open_another(),
        fx.open_another()
    );
    for store in [s1, s2, s3, s4] {
        assert_eq!(
            store.get(&addr("slack")).await.unwrap().unwrap().sealed,
            b"kept"
        );
        assert_eq!(store.recent_audit(10).await.unwrap().len(), 1);
    }
}

async fn several_writers_keep_one_chain(fx: Fx) {
    // Two stores over the same data (two replicas) append, store and
    // delete at once: one chain, one sequence, verifiable.
    let mac: Arc<dyn AuditMac> = Arc::new(TestMac);
    let other = fx.open_another().await;
    fx.store.chain_audit(Arc::clone(&mac));
    other.chain_audit(Arc::clone(&mac));
    let mut tasks = Vec::new();
    for (n, store) in [Arc::clone(&fx.store), other].into_iter().enumerate() {
        for i in 0..60 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let a = addr(&format!("r{n}x{i}"));
                if i % 3 == 0 {
                    store
                        .put(
                            write(&a, 1, b"x"),
                            None,
                            audit(AuditAction::Store, "w"),
                            None,
                        )
                        .await
                        .unwrap();
                    store
                        .delete(&a, None, audit(AuditAction::Delete, "d"))
                        .await
                        .unwrap();
                } else {
                    store
                        .append_audit(audit(AuditAction::Read, &format!("r{n}-{i}")))
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = fx.store.verify_audit(mac).await.unwrap();
    assert_eq!(v.problem, None, "{v:?}");
    assert_eq!(v.records, v.verified);
    // 40 reads and 20 stores and deletes through each store.
    assert_eq!(v.verified, 2 * 40 + 2 * 20 * 2, "{v:?}");
}

async fn refresh_leases(fx: Fx) {
    let store = Arc::clone(&fx.store);
    let ttl = std::time::Duration::from_secs(30);
    let (a, b) = (addr("slack"), addr("notion"));
    assert_eq!(
        store.acquire_refresh_lease(&a, "r1", ttl).await.unwrap(),
        LeaseOutcome::Missing
    );
    for x in [&a, &b] {
        let mut w = write(x, 1, b"x");
        w.meta.refresh.refresh_due = Some(T0);
        store
            .put(w, None, audit(AuditAction::Store, "s"), None)
            .await
            .unwrap();
    }
    use LeaseOutcome::{Acquired, Held};
    assert_eq!(
        store.acquire_refresh_lease(&a, "r1", ttl).await.unwrap(),
        Acquired
    );
    assert_eq!(
        store.acquire_refresh_lease(&a, "r2", ttl).await.unwrap(),
        Held
    );
    assert_eq!(
        store.acquire_refresh_lease(&a, "r1", ttl).await.unwrap(),
        Acquired,
        "extended"
    );
    // A lease neither changes the version nor survives a delete.
    assert_eq!(store.get(&a).await.unwrap().unwrap().version, 1);
    store.release_refresh_lease(&a, "r2").await.unwrap();
    assert_eq!(
        store.acquire_refresh_lease(&a, "r2", ttl).await.unwrap(),
        Held,
        "not r2's to release"
    );
    store.release_refresh_lease(&a, "r1").await.unwrap();
    assert_eq!(
        store.acquire_refresh_lease(&a, "r2", ttl).await.unwrap(),
        Acquired
    );

    // A holder that stops renewing (a crashed replica) loses the lease.
    let short = std::time::Duration::from_millis(50);
    assert_eq!(
        store
            .acquire_refresh_lease(&b, "dead", short)
            .await
            .unwrap(),
        Acquired
    );
    assert_eq!(
        store.acquire_refresh_lease(&b, "r1", ttl).await.unwrap(),
        Held
    );
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert_eq!(
        store.acquire_refresh_lease(&b, "r1", ttl).await.unwrap(),
        Acquired
    );

    // Claims skip leased addresses (`a` is r2's, `b` is r1's), the
    // claimer's own too (those are in flight).
    let now = T0 + Duration::minutes(1);
    let names = |v: Vec<SecretAddress>| {
        v.iter()
            .map(|a| a.platform().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        store
            .claim_due_for_refresh(now, 10, "r3", ttl)
            .await
            .unwrap()
            .is_empty()
    );
    store.release_refresh_lease(&a, "r2").await.unwrap();
    assert_eq!(
        names(
            store
                .claim_due_for_refresh(now, 10, "r1", ttl)
                .await
                .unwrap()
        ),
        ["slack"]
    );
    assert!(
        store
            .claim_due_for_refresh(now, 10, "r1", ttl)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.acquire_refresh_lease(&a, "r2", ttl).await.unwrap(),
        Held
    );
    // Deleting the secret ends its lease; storing it again starts free.
    store
        .delete(&a, None, audit(AuditAction::Delete, "d"))
        .await
        .unwrap();
    store
        .put(
            write(&a, 1, b"y"),
            None,
            audit(AuditAction::Store, "s"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.acquire_refresh_lease(&a, "r3", ttl).await.unwrap(),
        Acquired
    );
    // A new version ends the lease too: the refresh it guarded is moot.
    store
        .put(
            write(&a, 2, b"z"),
            Some(1),
            audit(AuditAction::Store, "s2"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.acquire_refresh_lease(&a, "r4", ttl).await.unwrap(),
        Acquired
    );
}

async fn job_leases(fx: Fx) {
    let store = Arc::clone(&fx.store);
    let other = fx.open_another().await;
    let ttl = std::time::Duration::from_secs(30);
    assert!(
        store
            .acquire_job_lease("forward:logs", "r1", ttl)
            .await
            .unwrap()
    );
    assert!(
        !other
            .acquire_job_lease("forward:logs", "r2", ttl)
            .await
            .unwrap()
    );
    assert!(
        store
            .acquire_job_lease("forward:logs", "r1", ttl)
            .await
            .unwrap(),
        "renewed"
    );
    assert!(
        other
            .acquire_job_lease("notifier", "r2", ttl)
            .await
            .unwrap(),
        "jobs are apart"
    );
    // A holder that stops renewing loses the job.
    let short = std::time::Duration::from_millis(50);
    assert!(
        store
            .acquire_job_lease("retention", "dead", short)
            .await
            .unwrap()
    );
    assert!(
        !other
            .acquire_job_lease("retention", "r2", ttl)
            .await
            .unwrap()
    );
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert!(
        other
            .acquire_job_lease("retention", "r2", ttl)
            .await
            .unwrap()
    );
    assert!(
        !store
            .acquire_job_lease("retention", "dead", short)
            .await
            .unwrap()
    );
}

async fn concurrent_claims_are_disjoint(fx: Fx) {
    let store = Arc::clone(&fx.store);
    let other = fx.open_another().await;
    for i in 0..200 {
        let mut w = write(&addr(&format!("p{i:03}")), 1, b"x");
        w.meta.refresh.refresh_due = Some(T0 + Duration::seconds(i));
        store
            .put(w, None, audit(AuditAction::Store, "s"), None)
            .await
            .unwrap();
    }
    let ttl = std::time::Duration::from_secs(60);
    let now = T0 + Duration::hours(1);
    let mut tasks = Vec::new();
    for (n, s) in [
        Arc::clone(&store),
        Arc::clone(&other),
        Arc::clone(&store),
        other,
    ]
    .into_iter()
    .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s
                    .claim_due_for_refresh(now, 7, &format!("h{n}"), ttl)
                    .await
                    .unwrap();
                if got.is_empty() {
                    break mine;
                }
                mine.extend(got);
            }
        }));
    }
    let mut all = Vec::new();
    let mut per_holder = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        per_holder.push(mine.len());
        all.extend(mine);
    }
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (count, all.len()),
        (200, 200),
        "every due token claimed once: {per_holder:?}"
    );
}

async fn refuses_a_newer_schema(fx: Fx) {
    match fx.kind {
        Kind::Sqlite => {
            let path = sqlite_path(fx.dir.as_ref().unwrap());
            rusqlite::Connection::open(&path)
                .unwrap()
                .pragma_update(None, "user_version", 999)
                .unwrap();
        }
        Kind::Postgres => fx.exec("UPDATE vault_schema SET version = 999"),
    }
    let err = match fx.kind {
        Kind::Sqlite => SqliteStore::open(&sqlite_path(fx.dir.as_ref().unwrap()))
            .await
            .unwrap_err(),
        Kind::Postgres => PostgresStore::connect(fx.db.as_ref().unwrap().url(), pg_options())
            .await
            .unwrap_err(),
    };
    assert!(
        matches!(err, Error::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
}

/// Runs each named test function against every backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fx = super::Fx::new(super::Kind::Sqlite).await.unwrap();
                    super::$name(fx).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fx) = super::Fx::new(super::Kind::Postgres).await else {
                        return;
                    };
                    super::$name(fx).await;
                }
            )*
        }
    };
}

conformance!(
    crud,
    conflicts_change_nothing,
    concurrent_writers_one_wins,
    refresh_bookkeeping,
    engines,
    rewrap,
    corrupt_rows_are_errors_not_panics,
    survives_reopen_and_migrates_once,
    refuses_a_newer_schema,
    several_writers_keep_one_chain,
    refresh_leases,
    concurrent_claims_are_disjoint,
    job_leases,
    a_failed_usage_log_write_is_an_error_for_its_caller,
    audit_chain_verifies_when_untouched,
    audit_chain_detects_a_changed_record,
    audit_chain_detects_a_removed_record,
    audit_chain_detects_an_inserted_record,
    audit_records_before_the_chain_are_counted_apart,
    audit_query_filters_and_pages,
    retention_prunes_and_leaves_a_verifiable_checkpoint,
    retention_prunes_in_chunks_each_leaving_a_verifiable_checkpoint,
    the_chain_continues_after_everything_was_pruned,
    group_commit_keeps_every_record_in_one_chain,
    concurrent_stores_conflicts_and_records_commit_together,
    stripping_the_chain_is_found,
    cutting_off_the_newest_records_is_found,
    records_cut_off_the_end_stay_missing_after_later_appends,
    nothing_is_appended_over_a_forged_head,
    the_chain_is_not_begun_again_over_removed_anchors,
    a_head_under_an_unknown_key_version_is_a_wait_or_a_forgery,
    verify_sees_one_snapshot_while_records_are_appended,
    forged_rows_below_a_checkpoint_are_found,
    a_cursor_moved_by_hand_is_refused,
    the_chain_verifies_across_a_usage_log_key_rotation,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_vault_migrates_into_postgres_whole() {
    let Some(db) = vault_test_support::TestDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = sqlite_store(&dir).await;
    let mac: Arc<dyn AuditMac> = Arc::new(TestMac);
    source.chain_audit(Arc::clone(&mac));
    for i in 0..25 {
        let mut w = write(&addr(&format!("p{i}")), 1, format!("sealed-{i}").as_bytes());
        w.meta.refresh.refresh_due = Some(T0 + Duration::minutes(i));
        source
            .put(w, None, audit(AuditAction::Store, &format!("s{i}")), None)
            .await
            .unwrap();
    }
    source
        .update_state(
            &addr("p3"),
            1,
            SecretStatus::ReauthRequired,
            RefreshState::default(),
            audit(AuditAction::Refresh, "r"),
            Some(NewNotification {
                payload: "{\"event\":\"reauth\"}".into(),
            }),
        )
        .await
        .unwrap();
    contract_engines(&source).await;
    source
        .add_audit_key(AuditKeyRecord {
            version: 1,
            sealed: b"k1".to_vec(),
            key_id: "local-test".into(),
            created_at: T0,
        })
        .await
        .unwrap();
    source
        .prune_audit(T0 + Duration::days(1), 5, 10_000)
        .await
        .unwrap();
    source.set_audit_cursor("forward", 12).await.unwrap();
    let before = source.verify_audit(Arc::clone(&mac)).await.unwrap();
    assert_eq!(before.problem, None);

    let mut seen = Vec::new();
    let report =
        migrate_sqlite_to_postgres(source.path(), db.url(), pg_options(), |t, done, total| {
            seen.push((t.to_owned(), done, total))
        })
        .await
        .unwrap();
    let rows: std::collections::HashMap<_, _> = report.tables.into_iter().collect();
    assert_eq!(rows["secrets"], 25);
    assert_eq!(rows["notifications"], 1);
    assert_eq!(rows["audit_checkpoints"], 1);
    assert!(
        seen.iter()
            .any(|(t, done, total)| t == "secrets" && *done == 25 && *total == 25)
    );

    let target = PostgresStore::connect(db.url(), pg_options())
        .await
        .unwrap();
    target.chain_audit(Arc::clone(&mac));
    for i in 0..25 {
        let a = addr(&format!("p{i}"));
        let (x, y) = (
            source.get(&a).await.unwrap().unwrap(),
            target.get(&a).await.unwrap().unwrap(),
        );
        assert_eq!(
            (
                x.version,
                x.sealed,
                x.key_id,
                x.meta,
                x.created_at,
                x.updated_at
            ),
            (
                y.version,
                y.sealed,
                y.key_id,
                y.meta,
                y.created_at,
                y.updated_at
            )
        );
    }
    assert_eq!(
        target.list_engines().await.unwrap(),
        source.list_engines().await.unwrap()
    );
    assert_eq!(
        target.audit_keys().await.unwrap(),
        source.audit_keys().await.unwrap()
    );
    assert_eq!(target.audit_cursor("forward").await.unwrap(), 12);
    let after = target.verify_audit(Arc::clone(&mac)).await.unwrap();
    assert_eq!(after, before, "the usage log verifies as it did");
    // Both keep going: new records chain on, new notifications get new ids.
    target
        .update_state(
            &addr("p4"),
            1,
            SecretStatus::ReauthRequired,
            RefreshState::default(),
            audit(AuditAction::Refresh, "r2"),
            Some(NewNotification {
                payload: "{}".into(),
            }),
        )
        .await
        .unwrap();
    let pending = target
        .pending_notifications(T0 + Duration::days(9), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 2);
    assert_ne!(pending[0].id, pending[1].id);
    assert_eq!(target.verify_audit(mac).await.unwrap().problem, None);

    // A second copy into a database that holds data is refused, and
    // changes nothing.
    let err = migrate_sqlite_to_postgres(source.path(), db.url(), pg_options(), |_, _, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(
        target
            .stats()
            .await
            .unwrap()
            .secrets_by_status
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>(),
        25
    );
}

/// Two replicas appending at once on a server whose default isolation is
/// REPEATABLE READ: every append still sees the records the other replica
/// committed while it waited for the usage-log lock, so none collides and
/// the chain is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_appends_do_not_depend_on_the_default_isolation() {
    let Some(db) = vault_test_support::TestDatabase::create() else {
        return;
    };
    db.execute(
        "DO $$ BEGIN EXECUTE format(
             'ALTER DATABASE %I SET default_transaction_isolation = %L',
             current_database(), 'repeatable read'); END $$",
    )
    .unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = PostgresStore::connect(db.url(), pg_options())
            .await
            .unwrap();
        store.chain_audit(Arc::new(TestMac));
        replicas.push(Arc::new(store));
    }
    // The database's default, as a plain connection sees it; the store's
    // connections set their own.
    let (plain, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let show = "SHOW default_transaction_isolation";
    let database: String = plain.query_one(show, &[]).await.unwrap().get(0);
    assert_eq!(database, "repeatable read");
    let store: String = replicas[0]
        .client()
        .await
        .unwrap()
        .query_one(show, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(store, "read committed");
    let mut tasks = Vec::new();
    for i in 0..160 {
        let store = Arc::clone(&replicas[i % 2]);
        tasks.push(tokio::spawn(async move {
            if i % 4 == 0 {
                store
                    .put(
                        write(&addr(&format!("p{i}")), 1, b"sealed"),
                        None,
                        audit(AuditAction::Store, &format!("s{i}")),
                        None,
                    )
                    .await
            } else {
                store
                    .append_audit(audit(AuditAction::Read, &format!("r{i}")))
                    .await
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let v = replicas[1].verify_audit(Arc::new(TestMac)).await.unwrap();
    assert_eq!((v.records, v.verified, v.problem), (160, 160, None));

    // Single-statement writes contending for one row: each answers held
    // or not, none fails to serialize.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = Arc::clone(&replicas[i % 2]);
        tasks.push(tokio::spawn(async move {
            let ttl = std::time::Duration::from_millis(1);
            let job = store.acquire_job_lease("job", &format!("h{i}"), ttl).await;
            let lease = store
                .acquire_refresh_lease(&addr("p0"), &format!("h{i}"), ttl)
                .await;
            (job.map(|_| ()), lease.map(|_| ()))
        }));
    }
    for t in tasks {
        let (job, lease) = t.await.unwrap();
        job.unwrap();
        lease.unwrap();
    }
}

/// The `ssl` column of `pg_stat_ssl` for one of the store's connections.
async fn encrypted(store: &PostgresStore) -> bool {
    store
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server_certificate() {
    let Some(db) = vault_test_support::TestDatabase::create() else {
        return;
    };
    // The server's certificate here is Debian's self-signed one for
    // `localhost`; the test needs it and a server with TLS on.
    let ca = std::path::Path::new("/etc/ssl/certs/ssl-cert-snakeoil.pem");
    let plain = PostgresStore::connect(db.url(), pg_options())
        .await
        .unwrap();
    let ssl_on: String = plain
        .client()
        .await
        .unwrap()
        .query_one("SHOW ssl", &[])
        .await
        .unwrap()
        .get(0);
    if !ca.exists() || ssl_on != "on" || !db.url().contains("@127.0.0.1:") {
        eprintln!(
            "SKIPPED: this PostgreSQL server has no TLS certificate for localhost to test with"
        );
        return;
    }
    assert!(!encrypted(&plain).await, "without sslmode, no TLS");
    let localhost = format!(
        "{}?sslmode=require&hostaddr=127.0.0.1",
        db.url().replace("@127.0.0.1:", "@localhost:")
    );
    let with_ca = PostgresOptions {
        tls_ca_file: Some(ca.to_owned()),
        ..pg_options()
    };
    let tls = PostgresStore::connect(&localhost, with_ca.clone())
        .await
        .unwrap();
    assert!(encrypted(&tls).await, "the connection is encrypted");
    tls.put(
        write(&addr("slack"), 1, b"over-tls"),
        None,
        audit(AuditAction::Store, "t"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        plain.get(&addr("slack")).await.unwrap().unwrap().sealed,
        b"over-tls"
    );
    // A certificate the trusted roots did not sign, or for another name,
    // is refused: no connection, no silent fall-back to plain text.
    let err = PostgresStore::connect(&localhost, pg_options())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), vault_types::ErrorKind::Unavailable, "{err}");
    let by_ip = format!("{}?sslmode=require", db.url());
    assert!(PostgresStore::connect(&by_ip, with_ca).await.is_err());
    // "prefer" could fall back to plain text: refused, however it is
    // written, and so is a string that names sslmode without setting it
    // (it used to leave the fall-back mode on); an explicit mode beside
    // the word is taken.
    // Refused before any connection is made: the rest of the string is
    // never used.
    let key_value = |extra: &str| format!("host=127.0.0.1 user=postgres dbname=test {extra}");
    for prefer in [
        format!("{localhost}&sslmode=prefer"),
        key_value("sslmode = prefer"),
        key_value("sslmode='prefer'"),
        format!("{}?application_name=sslmode-probe", db.url()),
    ] {
        let err = PostgresStore::connect(&prefer, pg_options())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("sslmode=prefer"),
            "{prefer}: {err}"
        );
    }
    let named = format!(
        "{}?application_name=sslmode-probe&sslmode=disable",
        db.url()
    );
    let store = PostgresStore::connect(&named, pg_options()).await.unwrap();
    assert!(!encrypted(&store).await);
    // A CA file that does not read is a clear error.
    let err = PostgresStore::connect(
        &localhost,
        PostgresOptions {
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..pg_options()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err}");
}
