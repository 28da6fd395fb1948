//! Several token managers over one store, as several vault replicas over
//! one database: one provider call per due token, whatever the number of
//! replicas asking. Each test runs on a shared SQLite file and on a fresh
//! PostgreSQL database (`VAULT_TEST_POSTGRES_URL`; skipped loudly without).

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration as StdDuration;

use time::Duration;
use vault_encryption_layer::{Envelope, KeyProvider, LocalKeyProvider};
use vault_secret_store::{LeaseOutcome, PostgresOptions, PostgresStore, SecretStore, SqliteStore};
use vault_test_support::{CLIENT_ID, CLIENT_SECRET, FakeProvider, TestDatabase};
use vault_token_manager::provider::{ProviderConfig, ProviderDefinition, ProviderRegistry};
use vault_token_manager::{
    AuditAction, AuditOutcome, AuditSink, ForwarderConfig, NotifierConfig, RefreshPolicy,
    RefresherConfig, RequestContext, StoreRequest, TokenData, TokenManager,
};
use vault_types::{Clock, ManualClock, Secret, SecretAddress};

enum Data {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

/// `n` replicas over one store, one key, one clock and one provider.
struct Replicas {
    data: Data,
    clock: Arc<ManualClock>,
    provider: FakeProvider,
    replicas: Vec<TokenManager>,
}

fn addr(i: usize) -> SecretAddress {
    SecretAddress::new("prod", &format!("pf_{i}"), "acme").unwrap()
}

fn ctx() -> RequestContext {
    RequestContext::new("t", Some("execution".into()))
}

impl Replicas {
    async fn start(postgres: bool, n: usize, lease: StdDuration) -> Option<Self> {
        Self::start_with(postgres, n, lease, StdDuration::ZERO).await
    }

    /// [`Replicas::start`], with new usage-log keys used only after
    /// `audit_key_grace`.
    async fn start_with(
        postgres: bool,
        n: usize,
        lease: StdDuration,
        audit_key_grace: StdDuration,
    ) -> Option<Self> {
        let data = if postgres {
            Data::Postgres(TestDatabase::create()?)
        } else {
            Data::Sqlite(tempfile::tempdir().unwrap())
        };
        let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
        let provider = FakeProvider::start();
        let key: Arc<dyn KeyProvider> = Arc::new(LocalKeyProvider::generate().unwrap());
        let mut replicas = Vec::new();
        for _ in 0..n {
            let store: Arc<dyn SecretStore> = match &data {
                Data::Sqlite(dir) => Arc::new(
                    SqliteStore::open(&dir.path().join("vault.db"))
                        .await
                        .unwrap(),
                ),
                Data::Postgres(db) => Arc::new(
                    PostgresStore::connect(
                        db.url(),
                        PostgresOptions {
                            pool_size: 8,
                            ..PostgresOptions::default()
                        },
                    )
                    .await
                    .unwrap(),
                ),
            };
            let acme = ProviderDefinition::generic("acme", Some(provider.url("/token")), None);
            let registry = ProviderRegistry::from_configs(
                vec![ProviderConfig {
                    definition: acme,
                    client_id: Some(CLIENT_ID.into()),
                    client_secret: Some(Secret::from(CLIENT_SECRET)),
                }],
                StdDuration::from_secs(10),
            )
            .unwrap();
            replicas.push(
                TokenManager::builder(
                    store,
                    Envelope::new(Arc::clone(&key)),
                    Arc::clone(&clock) as Arc<dyn Clock>,
                )
                .providers(registry)
                .refresh_policy(RefreshPolicy {
                    lease,
                    ..RefreshPolicy::default()
                })
                .notifications(true)
                .audit_key_grace(audit_key_grace)
                .build(),
            );
        }
        Some(Self {
            data,
            clock,
            provider,
            replicas,
        })
    }

    async fn store(&self, i: usize, expires_in: u64) {
        let mut t = TokenData::new(Secret::from(format!("at-original-{i}")));
        t.refresh_token = Some(Secret::from(format!("rt-original-{i}")));
        t.expires_in = Some(expires_in);
        self.replicas[0]
            .store(&ctx(), StoreRequest::new(addr(i), t))
            .await
            .unwrap();
    }
}

async fn one_expired_token_is_refreshed_once_by_three_replicas(postgres: bool) {
    let Some(r) = Replicas::start(postgres, 3, StdDuration::from_secs(30)).await else {
        return;
    };
    r.store(0, 3600).await;
    r.provider.set_delay(StdDuration::from_millis(200));
    r.clock.advance(Duration::seconds(4000));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let tokens = r.replicas[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            tokens.fetch(&ctx(), &addr(0), &[]).await
        }));
    }
    for t in tasks {
        let token = t.await.unwrap().unwrap();
        assert_eq!(token.access_token.expose(), "at-refreshed-1");
    }
    assert_eq!(r.provider.refresh_calls(), 1);
}

async fn background_refreshers_split_the_due_tokens(postgres: bool) {
    let Some(r) = Replicas::start(postgres, 3, StdDuration::from_secs(30)).await else {
        return;
    };
    for i in 0..60 {
        r.store(i, 3600).await;
    }
    r.provider.set_delay(StdDuration::from_millis(20));
    r.clock.advance(Duration::seconds(3500));
    let mut passes = Vec::new();
    for tokens in &r.replicas {
        let tokens = tokens.clone();
        passes.push(tokio::spawn(async move {
            tokens.refresh_due_now(4, 1000).await.unwrap()
        }));
    }
    let mut claimed = Vec::new();
    for p in passes {
        claimed.push(p.await.unwrap());
    }
    assert_eq!(
        claimed.iter().sum::<usize>(),
        60,
        "disjoint claims: {claimed:?}"
    );
    assert_eq!(
        r.provider.refresh_calls(),
        60,
        "one provider call per due token"
    );
    let store = r.replicas[1].secret_store();
    for i in 0..60 {
        assert_eq!(store.get(&addr(i)).await.unwrap().unwrap().version, 2);
    }
}

async fn a_dead_replicas_lease_runs_out_and_another_refreshes(postgres: bool) {
    let lease = StdDuration::from_millis(800);
    let Some(r) = Replicas::start(postgres, 2, lease).await else {
        return;
    };
    r.store(0, 3600).await;
    r.clock.advance(Duration::seconds(4000));
    // A replica took the lease and died before calling the provider.
    let store = r.replicas[0].secret_store();
    assert_eq!(
        store
            .acquire_refresh_lease(&addr(0), "crashed-replica", lease)
            .await
            .unwrap(),
        LeaseOutcome::Acquired
    );
    let started = std::time::Instant::now();
    let token = r.replicas[1].fetch(&ctx(), &addr(0), &[]).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-refreshed-1");
    assert_eq!(r.provider.refresh_calls(), 1);
    assert!(
        started.elapsed() >= lease / 2,
        "the refresh waited for the lease to run out"
    );
    drop(r.data);
}

async fn one_replica_at_a_time_forwards_the_usage_log(postgres: bool) {
    let Some(r) = Replicas::start(postgres, 3, StdDuration::from_secs(30)).await else {
        return;
    };
    let receiver = FakeProvider::start();
    let config = ForwarderConfig {
        name: "logs-engine".into(),
        sink: AuditSink::Http {
            url: receiver.url("/logs"),
            authorization: None,
            timeout: StdDuration::from_secs(2),
        },
        batch: 5,
        interval: StdDuration::from_millis(20),
        max_backoff: StdDuration::from_millis(100),
    };
    let tasks: Vec<_> = r
        .replicas
        .iter()
        .map(|t| tokio::spawn(t.clone().run_audit_forwarder(config.clone())))
        .collect();
    for i in 0..30 {
        r.replicas[i % 3]
            .record_event(
                &RequestContext::new(format!("r{i}"), Some("execution".into())),
                AuditAction::Read,
                None,
                AuditOutcome::Success,
                "test",
            )
            .await
            .unwrap();
    }
    for _ in 0..500 {
        if receiver.logged().len() >= 30 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    // Settle: a second sender would show up as extra deliveries.
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    let ids: Vec<i64> = receiver
        .logged()
        .iter()
        .filter_map(|v| v["id"].as_i64())
        .collect();
    assert_eq!(
        ids,
        (1..=30).collect::<Vec<_>>(),
        "each record once, in order"
    );
    for t in tasks {
        t.abort();
    }
}

async fn one_replica_at_a_time_sends_webhooks_even_when_a_round_outlasts_the_lease(postgres: bool) {
    let lease = StdDuration::from_secs(1);
    let Some(r) = Replicas::start(postgres, 2, lease).await else {
        return;
    };
    // Eight dead grants, eight notifications.
    let n = 8;
    for i in 0..n {
        r.store(i, 3600).await;
    }
    r.provider.set_mode(vault_test_support::Mode::InvalidGrant);
    r.clock.advance(Duration::seconds(4000));
    for i in 0..n {
        assert!(r.replicas[0].fetch(&ctx(), &addr(i), &[]).await.is_err());
    }
    // Each delivery takes 300 ms: one round of eight takes 2.4 s, more than
    // twice the lease.
    r.provider.set_webhook_delay(StdDuration::from_millis(300));
    let config = NotifierConfig {
        url: r.provider.url("/webhook"),
        secret: Secret::from("hook-secret"),
        interval: StdDuration::from_millis(50),
        timeout: StdDuration::from_secs(2),
    };
    let tasks: Vec<_> = r
        .replicas
        .iter()
        .map(|t| tokio::spawn(t.clone().run_notifier(config.clone())))
        .collect();
    for _ in 0..600 {
        if r.provider.webhooks().len() >= n {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    // Settle: a second sender would show up as extra deliveries.
    tokio::time::sleep(StdDuration::from_millis(800)).await;
    for t in tasks {
        t.abort();
    }
    let mut bodies: Vec<String> = r.provider.webhooks().into_iter().map(|(_, b)| b).collect();
    let delivered = bodies.len();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), n, "every notification delivered");
    assert_eq!(delivered, n, "none delivered twice");
}

impl Replicas {
    /// Makes the database refuse (or accept again) every new version of a
    /// secret, while leases and everything else still work: a store that
    /// fails between the provider's answer and its commit.
    fn refuse_new_versions(&self, refuse: bool) {
        match &self.data {
            Data::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("vault.db")).unwrap();
                conn.execute_batch(if refuse {
                    "CREATE TRIGGER refuse BEFORE UPDATE OF version ON secrets
                     BEGIN SELECT RAISE(FAIL, 'refused'); END;"
                } else {
                    "DROP TRIGGER refuse;"
                })
                .unwrap();
            }
            Data::Postgres(db) => db
                .execute(if refuse {
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                       $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
                     CREATE TRIGGER refuse BEFORE UPDATE OF version ON secrets
                       FOR EACH ROW EXECUTE FUNCTION refuse();"
                } else {
                    "DROP TRIGGER refuse ON secrets; DROP FUNCTION refuse();"
                })
                .unwrap(),
        }
    }
}

async fn tokens_refreshed_but_not_stored_keep_their_lease_until_written(postgres: bool) {
    let lease = StdDuration::from_secs(1);
    let Some(r) = Replicas::start(postgres, 2, lease).await else {
        return;
    };
    // The provider rotates refresh tokens and refuses a used one, as
    // Slack, Notion and GitHub Apps do.
    r.store(0, 60).await;
    r.clock.advance(Duration::seconds(60));
    r.refuse_new_versions(true);
    let (a, b) = (&r.replicas[0], &r.replicas[1]);
    let err = a.fetch(&ctx(), &addr(0), &[]).await.unwrap_err();
    assert_eq!(err.kind(), vault_types::ErrorKind::Unavailable, "{err:?}");
    assert_eq!(r.provider.refresh_calls(), 1);
    // Replica a keeps the lease and retries the write in the background.
    let background = tokio::spawn(a.clone().run_refresher(RefresherConfig {
        interval: StdDuration::from_millis(100),
        max_jitter: StdDuration::ZERO,
        ..RefresherConfig::default()
    }));
    // Replica b must not spend the rotated-away refresh token, however
    // long it waits (leases run out after 1 s; it gives up after 3 s).
    let err = b.fetch(&ctx(), &addr(0), &[]).await.unwrap_err();
    assert_eq!(r.provider.refresh_calls(), 1, "{err:?}");
    assert!(err.to_string().contains("refresh_in_progress"), "{err}");
    // Once the database takes writes again, a's tokens are stored, and
    // everyone reads them.
    r.refuse_new_versions(false);
    let store = b.secret_store();
    for _ in 0..100 {
        if store.get(&addr(0)).await.unwrap().unwrap().version == 2 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    let token = b.fetch(&ctx(), &addr(0), &[]).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-refreshed-1");
    assert_eq!(r.provider.refresh_calls(), 1);
    // The rotated refresh token is the stored one: the next refresh works.
    r.clock.advance(Duration::seconds(4000));
    let token = b.fetch(&ctx(), &addr(0), &[]).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-refreshed-2");
    background.abort();
}

async fn a_delete_waits_for_a_refresh_on_another_replica(postgres: bool) {
    let Some(r) = Replicas::start(postgres, 2, StdDuration::from_secs(30)).await else {
        return;
    };
    r.store(0, 60).await;
    r.clock.advance(Duration::seconds(60));
    r.provider.set_delay(StdDuration::from_millis(500));
    let a = r.replicas[0].clone();
    let refreshing = tokio::spawn(async move { a.fetch(&ctx(), &addr(0), &[]).await });
    for _ in 0..200 {
        if r.provider.refresh_calls() == 1 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    assert_eq!(r.provider.refresh_calls(), 1);
    // Replica b deletes while a's provider call is under way: it waits for
    // the new version, so the tokens it revokes and deletes are the
    // refreshed ones, not the ones the provider has just replaced.
    let out = r.replicas[1].delete(&ctx(), &addr(0)).await.unwrap();
    assert_eq!(out.version, 2, "the delete covered the refreshed version");
    let fetched = refreshing.await.unwrap().unwrap();
    assert_eq!(fetched.access_token.expose(), "at-refreshed-1");
    let store = r.replicas[1].secret_store();
    assert!(store.get(&addr(0)).await.unwrap().is_none());
    assert_eq!(r.provider.refresh_calls(), 1);
}

/// The usage-log key rotated on one replica: the other, which has not
/// reloaded its keys yet, goes on appending (nothing is signed with the new
/// version before the grace); both pick it up; the chain verifies.
async fn a_usage_log_key_rotated_on_one_replica_does_not_stop_the_other(postgres: bool) {
    let grace = StdDuration::from_secs(20);
    let Some(r) = Replicas::start_with(postgres, 2, StdDuration::from_secs(30), grace).await else {
        return;
    };
    let mut rings = Vec::new();
    for replica in &r.replicas {
        rings.push(Some(replica.load_audit_keys().await.unwrap()));
    }
    r.store(0, 3600).await;
    assert_eq!(r.replicas[0].rotate_audit_key(&ctx()).await.unwrap(), 2);
    r.replicas[0].fetch(&ctx(), &addr(0), &[]).await.unwrap();
    r.replicas[1].fetch(&ctx(), &addr(0), &[]).await.unwrap();
    // Both know version 2 now; neither signs with it yet.
    for (replica, ring) in r.replicas.iter().zip(rings.iter_mut()) {
        replica.reload_keys(ring).await.unwrap();
        let ring = ring.as_ref().unwrap();
        assert_eq!((ring.newest_version(), ring.current_version()), (2, 1));
        replica.fetch(&ctx(), &addr(0), &[]).await.unwrap();
    }
    r.clock.advance(Duration::seconds(21));
    for (replica, ring) in r.replicas.iter().zip(rings.iter_mut()) {
        assert!(
            replica.reload_keys(ring).await.unwrap(),
            "the grace is over"
        );
        assert_eq!(ring.as_ref().unwrap().current_version(), 2);
    }
    for _ in 0..3 {
        for replica in &r.replicas {
            replica.fetch(&ctx(), &addr(0), &[]).await.unwrap();
        }
    }
    let mac = rings[1].clone().unwrap() as Arc<dyn vault_secret_store::AuditMac>;
    let v = r.replicas[1]
        .secret_store()
        .verify_audit(mac)
        .await
        .unwrap();
    assert_eq!(v.problem, None, "{v:?}");
    assert_eq!(v.verified, v.records);
    assert!(v.records >= 11, "{v:?}");
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(false).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(true).await;
                }
            )*
        }
    };
}

on_both!(
    one_expired_token_is_refreshed_once_by_three_replicas,
    background_refreshers_split_the_due_tokens,
    a_dead_replicas_lease_runs_out_and_another_refreshes,
    one_replica_at_a_time_forwards_the_usage_log,
    tokens_refreshed_but_not_stored_keep_their_lease_until_written,
    a_delete_waits_for_a_refresh_on_another_replica,
    one_replica_at_a_time_sends_webhooks_even_when_a_round_outlasts_the_lease,
    a_usage_log_key_rotated_on_one_replica_does_not_stop_the_other,
);
