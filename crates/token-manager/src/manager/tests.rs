use std::sync::Arc;

use time::Duration;
use time::macros::datetime;
use vault_encryption_layer::LocalKeyProvider;
use vault_secret_store::SqliteStore;
use vault_types::{ErrorKind, ManualClock, Secret};

use super::*;
use crate::{TokenData, limits};

struct Fixture {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    clock: Arc<ManualClock>,
    tokens: TokenManager,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("vault.db");
    let store = Arc::new(SqliteStore::open(&db).await.unwrap());
    let clock = Arc::new(ManualClock::new(datetime!(2026-03-01 12:00 UTC)));
    let envelope = Envelope::new(Arc::new(LocalKeyProvider::generate().unwrap()));
    let tokens = TokenManager::new(store, envelope, Arc::clone(&clock) as Arc<dyn Clock>);
    Fixture {
        _dir: dir,
        db,
        clock,
        tokens,
    }
}

fn ctx(id: &str) -> RequestContext {
    RequestContext::new(id, Some("execution".into()))
}

fn slack() -> SecretAddress {
    SecretAddress::new("prod", "pf_203", "Slack").unwrap()
}

fn slack_token(access: &str) -> TokenData {
    TokenData {
        access_token: Secret::from(access),
        refresh_token: Some(Secret::from("rt-xyz-refresh")),
        expires_in: Some(3600),
        scopes: vec!["chat:write".into(), "users:read".into()],
        token_type: None,
    }
}

#[tokio::test]
async fn store_fetch_replace() {
    let f = fixture().await;
    let info = f
        .tokens
        .store(
            &ctx("r1"),
            StoreRequest::new(slack(), slack_token("xoxb-1")),
        )
        .await
        .unwrap();
    assert_eq!(info.version, 1);
    assert_eq!(info.valid_until, Some(f.clock.now() + Duration::hours(1)));
    assert!(info.has_refresh_token);
    assert_eq!(info.token_type, "Bearer");
    assert_eq!(info.status, SecretStatus::Active);

    let lower = SecretAddress::new("prod", "pf_203", "slack").unwrap();
    let t = f.tokens.fetch(&ctx("r2"), &lower, &[]).await.unwrap();
    assert_eq!(t.access_token.expose(), "xoxb-1");
    assert_eq!(t.scopes, ["chat:write", "users:read"]);
    assert_eq!(t.version, 1);

    f.clock.advance(Duration::minutes(1));
    let info = f
        .tokens
        .store(
            &ctx("r3"),
            StoreRequest::new(slack(), slack_token("xoxb-2")),
        )
        .await
        .unwrap();
    assert_eq!(info.version, 2);
    assert_eq!(info.created_at, datetime!(2026-03-01 12:00 UTC));
    assert_eq!(info.stored_at, datetime!(2026-03-01 12:01 UTC));
    let t = f.tokens.fetch(&ctx("r4"), &slack(), &[]).await.unwrap();
    assert_eq!((t.access_token.expose(), t.version), ("xoxb-2", 2));
}

#[tokio::test]
async fn required_scopes_must_all_be_present() {
    let f = fixture().await;
    f.tokens
        .store(&ctx("s1"), StoreRequest::new(slack(), slack_token("xoxb")))
        .await
        .unwrap();
    f.tokens
        .fetch(&ctx("s2"), &slack(), &["chat:write".into()])
        .await
        .unwrap();
    let err = f
        .tokens
        .fetch(&ctx("s3"), &slack(), &["chat:write".into(), "admin".into()])
        .await
        .unwrap_err();
    match &err {
        Error::InsufficientScope { missing } => assert_eq!(missing, &["admin".to_string()]),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    assert_eq!(err.code(), "insufficient_scope");
}

#[tokio::test]
async fn expired_tokens_are_never_served() {
    let f = fixture().await;
    f.tokens
        .store(&ctx("e1"), StoreRequest::new(slack(), slack_token("xoxb")))
        .await
        .unwrap();
    f.clock.advance(Duration::seconds(3599));
    f.tokens.fetch(&ctx("e2"), &slack(), &[]).await.unwrap();
    f.clock.advance(Duration::seconds(1));
    let err = f.tokens.fetch(&ctx("e3"), &slack(), &[]).await.unwrap_err();
    assert!(matches!(err, Error::TokenExpired { ref platform } if platform == "slack"));
    assert_eq!(err.code(), "token_expired");
}

#[tokio::test]
async fn tokens_without_expiry_do_not_expire() {
    let f = fixture().await;
    let stripe = SecretAddress::new("prod", "pf_203", "stripe").unwrap();
    let info = f
        .tokens
        .store(
            &ctx("n1"),
            StoreRequest::new(stripe.clone(), TokenData::new("sk_test_123".into())),
        )
        .await
        .unwrap();
    assert_eq!(info.valid_until, None);
    assert!(!info.has_refresh_token);
    f.clock.advance(Duration::days(3650));
    let t = f.tokens.fetch(&ctx("n2"), &stripe, &[]).await.unwrap();
    assert_eq!(t.valid_until, None);
}

#[tokio::test]
async fn unknown_address_is_not_found_and_audited() {
    let f = fixture().await;
    let err = f.tokens.fetch(&ctx("u1"), &slack(), &[]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = f.tokens.delete(&ctx("u2"), &slack()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let log = f.tokens.secret_store().recent_audit(10).await.unwrap();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.outcome == AuditOutcome::NotFound));
}

#[tokio::test]
async fn a_store_that_cannot_be_sealed_is_recorded_as_failed() {
    // A KMS that cannot be reached: sealing fails, nothing is stored, and
    // the attempt is in the usage log.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("vault.db"))
            .await
            .unwrap(),
    );
    let kms = vault_encryption_layer::AwsKmsProvider::new(vault_encryption_layer::AwsKmsConfig {
        endpoint: "http://127.0.0.1:1".into(),
        region: "us-east-1".into(),
        key_id: "alias/vault".into(),
        previous_key_ids: Vec::new(),
        credentials: vault_encryption_layer::AwsCredentials {
            access_key_id: "AKIDTEST".into(),
            secret_access_key: zeroize::Zeroizing::new("test-secret".into()),
            session_token: None,
        },
        timeout: std::time::Duration::from_secs(2),
    })
    .unwrap();
    let clock = Arc::new(ManualClock::new(datetime!(2026-03-01 12:00 UTC)));
    let tokens = TokenManager::new(
        store,
        Envelope::new(Arc::new(kms)),
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    let err = tokens
        .store(
            &ctx("k1"),
            StoreRequest::new(slack(), slack_token("xoxb-KMS-DOWN")),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Crypto(_)), "{err}");
    assert!(tokens.secret_store().get(&slack()).await.unwrap().is_none());
    let log = tokens.secret_store().recent_audit(10).await.unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].action, AuditAction::Store);
    assert_eq!(log[0].outcome, AuditOutcome::Failed);
    assert_eq!(log[0].request_id, "k1");
    assert!(!format!("{log:?}").contains("KMS-DOWN"));
}

#[tokio::test]
async fn delete_removes_the_secret() {
    let f = fixture().await;
    for i in 0..3 {
        f.tokens
            .store(
                &ctx(&format!("d{i}")),
                StoreRequest::new(slack(), slack_token("x")),
            )
            .await
            .unwrap();
    }
    let out = f.tokens.delete(&ctx("d9"), &slack()).await.unwrap();
    assert_eq!(out.version, 3);
    assert!(f.tokens.fetch(&ctx("d10"), &slack(), &[]).await.is_err());
    // A new store starts again at version 1.
    let info = f
        .tokens
        .store(&ctx("d11"), StoreRequest::new(slack(), slack_token("y")))
        .await
        .unwrap();
    assert_eq!(info.version, 1);
}

#[tokio::test]
async fn a_sealed_value_copied_to_another_address_does_not_open() {
    let f = fixture().await;
    let notion = SecretAddress::new("prod", "pf_203", "notion").unwrap();
    f.tokens
        .store(
            &ctx("c1"),
            StoreRequest::new(slack(), slack_token("xoxb-slack")),
        )
        .await
        .unwrap();
    f.tokens
        .store(
            &ctx("c2"),
            StoreRequest::new(notion.clone(), slack_token("secret_notion")),
        )
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&f.db).unwrap();
    conn.execute(
        "UPDATE secrets SET sealed = (SELECT sealed FROM secrets WHERE platform = 'slack')
         WHERE platform = 'notion'",
        [],
    )
    .unwrap();
    let err = f.tokens.fetch(&ctx("c3"), &notion, &[]).await.unwrap_err();
    assert!(
        matches!(err, Error::Crypto(vault_encryption_layer::Error::Decrypt)),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Internal);

    // Rolling a row back to an older version's ciphertext fails the same way.
    let old = conn
        .query_row(
            "SELECT sealed FROM secrets WHERE platform = 'slack'",
            [],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .unwrap();
    f.tokens
        .store(
            &ctx("c4"),
            StoreRequest::new(slack(), slack_token("xoxb-v2")),
        )
        .await
        .unwrap();
    conn.execute(
        "UPDATE secrets SET sealed = ?1 WHERE platform = 'slack'",
        [old],
    )
    .unwrap();
    assert!(f.tokens.fetch(&ctx("c5"), &slack(), &[]).await.is_err());
}

#[tokio::test]
async fn invalid_input_is_rejected_and_nothing_is_stored() {
    let f = fixture().await;
    let mut cases: Vec<TokenData> = Vec::new();
    cases.push(TokenData::new("".into()));
    cases.push(TokenData::new("a\nb".into()));
    cases.push(TokenData::new(
        "x".repeat(limits::MAX_TOKEN_BYTES + 1).into(),
    ));
    let mut t = slack_token("ok");
    t.refresh_token = Some("".into());
    cases.push(t);
    let mut t = slack_token("ok");
    t.expires_in = Some(limits::MAX_EXPIRES_IN + 1);
    cases.push(t);
    let mut t = slack_token("ok");
    t.scopes = vec!["has space".into()];
    cases.push(t);
    let mut t = slack_token("ok");
    t.scopes = (0..=limits::MAX_SCOPES).map(|i| format!("s{i}")).collect();
    cases.push(t);
    let mut t = slack_token("ok");
    t.token_type = Some("Bearer\r\nX-Evil: 1".into());
    cases.push(t);
    for (i, token) in cases.into_iter().enumerate() {
        let err = f
            .tokens
            .store(&ctx("v"), StoreRequest::new(slack(), token))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "case {i}: {err}");
    }
    let mut big = serde_json::Map::new();
    big.insert("x".into(), "y".repeat(limits::MAX_METADATA_BYTES).into());
    let mut req = StoreRequest::new(slack(), slack_token("ok"));
    req.metadata = Some(big);
    assert_eq!(
        f.tokens.store(&ctx("v"), req).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert!(f.tokens.info(&slack()).await.is_err(), "nothing was stored");
    let log = f.tokens.secret_store().recent_audit(20).await.unwrap();
    assert_eq!(log.len(), 9, "every rejected store is recorded");
    for r in &log {
        assert_eq!(r.action, AuditAction::Store);
        assert_eq!(r.outcome, AuditOutcome::Failed);
        assert_eq!(r.detail.as_deref(), Some("invalid_request"));
    }
}

#[tokio::test]
async fn scopes_are_deduplicated() {
    let f = fixture().await;
    let mut t = slack_token("x");
    t.scopes = vec!["a".into(), "b".into(), "a".into()];
    let info = f
        .tokens
        .store(&ctx("q"), StoreRequest::new(slack(), t))
        .await
        .unwrap();
    assert_eq!(info.scopes, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stores_all_land_in_order() {
    let f = fixture().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let tokens = f.tokens.clone();
        tasks.push(tokio::spawn(async move {
            tokens
                .store(
                    &ctx(&format!("w{i}")),
                    StoreRequest::new(slack(), slack_token(&format!("xoxb-{i}"))),
                )
                .await
                .map(|info| info.version)
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap().unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn usage_log_records_every_action_without_tokens() {
    let f = fixture().await;
    f.tokens
        .store(
            &ctx("a1"),
            StoreRequest::new(slack(), slack_token("xoxb-MARKER")),
        )
        .await
        .unwrap();
    f.tokens.fetch(&ctx("a2"), &slack(), &[]).await.unwrap();
    let _ = f
        .tokens
        .fetch(&ctx("a3"), &slack(), &["nope".into()])
        .await
        .unwrap_err();
    f.tokens.delete(&ctx("a4"), &slack()).await.unwrap();
    let log = f.tokens.secret_store().recent_audit(10).await.unwrap();
    let summary: Vec<_> = log
        .iter()
        .rev()
        .map(|r| {
            (
                r.request_id.as_str(),
                r.action,
                r.outcome,
                r.detail.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a1", AuditAction::Store, AuditOutcome::Success, None),
            ("a2", AuditAction::Read, AuditOutcome::Success, None),
            (
                "a3",
                AuditAction::Read,
                AuditOutcome::Denied,
                Some("insufficient_scope")
            ),
            // No provider is configured: nothing to revoke, and the log says so.
            (
                "a4",
                AuditAction::Revoke,
                AuditOutcome::Success,
                Some("access_token:not_supported")
            ),
            (
                "a4",
                AuditAction::Revoke,
                AuditOutcome::Success,
                Some("refresh_token:not_supported")
            ),
            ("a4", AuditAction::Delete, AuditOutcome::Success, None),
        ]
    );
    for r in &log {
        assert_eq!(r.engine_id.as_deref(), Some("execution"));
        assert_eq!(r.platform.as_deref(), Some("slack"));
        assert!(!format!("{r:?}").contains("MARKER"));
    }
}

#[tokio::test]
async fn no_plaintext_token_on_disk() {
    let f = fixture().await;
    let marker = "xoxb-PLAINTEXT-MARKER-4f1c";
    let mut t = slack_token(marker);
    t.refresh_token = Some("rt-PLAINTEXT-MARKER-9a7e".into());
    f.tokens
        .store(&ctx("p1"), StoreRequest::new(slack(), t))
        .await
        .unwrap();
    f.tokens.fetch(&ctx("p2"), &slack(), &[]).await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", f.db.display());
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        for needle in [marker.as_bytes(), b"PLAINTEXT-MARKER"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "plaintext found in {path}"
            );
        }
    }
}

#[tokio::test]
async fn a_batch_of_new_tokens_is_stored_all_or_nothing() {
    let f = fixture().await;
    let batch: Vec<StoreRequest> = (0..50)
        .map(|i| {
            StoreRequest::new(
                SecretAddress::new("prod", "bulk", &format!("p{i}")).unwrap(),
                slack_token(&format!("xoxb-bulk-{i}")),
            )
        })
        .collect();
    assert_eq!(
        f.tokens.store_new_batch(&ctx("b1"), batch).await.unwrap(),
        50
    );
    let a = SecretAddress::new("prod", "bulk", "p7").unwrap();
    let got = f.tokens.fetch(&ctx("r"), &a, &[]).await.unwrap();
    assert_eq!(got.access_token.expose(), "xoxb-bulk-7");

    // One address exists already: nothing of the second batch is stored.
    let again: Vec<StoreRequest> = [("p7", "xoxb-new"), ("p99", "xoxb-99")]
        .into_iter()
        .map(|(p, t)| {
            StoreRequest::new(
                SecretAddress::new("prod", "bulk", p).unwrap(),
                slack_token(t),
            )
        })
        .collect();
    assert!(f.tokens.store_new_batch(&ctx("b2"), again).await.is_err());
    let p99 = SecretAddress::new("prod", "bulk", "p99").unwrap();
    assert!(f.tokens.fetch(&ctx("r"), &p99, &[]).await.is_err());
    let got = f.tokens.fetch(&ctx("r"), &a, &[]).await.unwrap();
    assert_eq!(got.access_token.expose(), "xoxb-bulk-7");
}
