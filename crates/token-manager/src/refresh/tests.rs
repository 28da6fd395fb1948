//! Refresh, revocation and notification against a provider that speaks
//! real HTTP on loopback, with a real SQLite file and a manual clock.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use time::Duration;
use vault_encryption_layer::{Envelope, LocalKeyProvider};
use vault_secret_store::{AuditAction, AuditOutcome, SecretStatus, SecretStore, SqliteStore};
use vault_test_support::{CLIENT_ID, CLIENT_SECRET, FakeProvider, Mode};
use vault_types::{Clock, ManualClock, Secret, SecretAddress};

use crate::provider::{
    ClientAuth, ProviderConfig, ProviderDefinition, ProviderRegistry, TokenKind,
};
use crate::*;

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    provider: FakeProvider,
    tokens: TokenManager,
    store: Arc<SqliteStore>,
}

fn configs(p: &FakeProvider) -> Vec<ProviderConfig> {
    let creds = |definition| ProviderConfig {
        definition,
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(Secret::from(CLIENT_SECRET)),
    };
    let mut slack = ProviderDefinition::builtin("slack").unwrap();
    slack.token_url = Some(p.url("/slack/oauth.v2.access"));
    slack.revoke_url = Some(p.url("/slack/auth.revoke"));
    let mut google = ProviderDefinition::builtin("google").unwrap();
    google.token_url = Some(p.url("/token"));
    google.revoke_url = Some(p.url("/revoke"));
    let mut notion = ProviderDefinition::builtin("notion").unwrap();
    notion.token_url = Some(p.url("/token"));
    notion.revoke_url = Some(p.url("/revoke"));
    let acme = ProviderDefinition::generic("acme", Some(p.url("/token")), Some(p.url("/revoke")));
    // Nothing listens on port 1: every call is a connection error.
    let down = ProviderDefinition::generic("down", Some("http://127.0.0.1:1/token".into()), None);
    // Slack's definition at an RFC-style endpoint: HTTP 400 invalid_grant.
    let mut slack400 = ProviderDefinition::builtin("slack").unwrap();
    slack400.name = "slack400".into();
    slack400.token_url = Some(p.url("/token"));
    let mut body_auth = ProviderDefinition::generic("bodyauth", Some(p.url("/token")), None);
    body_auth.client_auth = ClientAuth::Body;
    vec![
        creds(slack),
        creds(google),
        creds(notion),
        creds(acme),
        creds(body_auth),
        creds(down),
        creds(slack400),
        creds(ProviderDefinition::builtin("stripe").unwrap()),
    ]
}

async fn fixture_with(timeout: StdDuration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("vault.db"))
            .await
            .unwrap(),
    );
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let provider = FakeProvider::start();
    let registry = ProviderRegistry::from_configs(configs(&provider), timeout).unwrap();
    let tokens = TokenManager::builder(
        Arc::clone(&store) as Arc<dyn SecretStore>,
        Envelope::new(Arc::new(LocalKeyProvider::generate().unwrap())),
        Arc::clone(&clock) as Arc<dyn Clock>,
    )
    .providers(registry)
    .notifications(true)
    .build();
    Fixture {
        _dir: dir,
        clock,
        provider,
        tokens,
        store,
    }
}

async fn fixture() -> Fixture {
    fixture_with(StdDuration::from_secs(5)).await
}

fn ctx() -> RequestContext {
    RequestContext::new("t", Some("execution".into()))
}

fn addr(platform: &str) -> SecretAddress {
    SecretAddress::new("prod", "pf_1", platform).unwrap()
}

impl Fixture {
    async fn store(&self, platform: &str, expires_in: Option<u64>) {
        let mut t = TokenData::new(Secret::from(format!("at-original-{platform}")));
        t.refresh_token = Some(Secret::from(format!("rt-original-{platform}")));
        t.expires_in = expires_in;
        t.scopes = vec!["chat:write".into()];
        self.tokens
            .store(&ctx(), StoreRequest::new(addr(platform), t))
            .await
            .unwrap();
    }

    async fn fetch(&self, platform: &str) -> Result<IssuedToken> {
        self.tokens.fetch(&ctx(), &addr(platform), &[]).await
    }

    async fn stored(&self, platform: &str) -> vault_secret_store::StoredSecret {
        self.store.get(&addr(platform)).await.unwrap().unwrap()
    }

    /// Makes the database refuse (or accept again) every new version of a
    /// secret, while leases and everything else still work: a store that
    /// fails after the refresh lease was taken (a full disk, say).
    fn refuse_new_versions(&self, refuse: bool) {
        let conn = rusqlite::Connection::open(self._dir.path().join("vault.db")).unwrap();
        conn.execute_batch(if refuse {
            "CREATE TRIGGER refuse BEFORE UPDATE OF version ON secrets
             BEGIN SELECT RAISE(FAIL, 'refused'); END;"
        } else {
            "DROP TRIGGER refuse;"
        })
        .unwrap();
    }

    /// Waits (bounded) until the provider has seen `n` refresh calls.
    async fn wait_for_calls(&self, n: usize) {
        for _ in 0..500 {
            if self.provider.refresh_calls() >= n {
                return;
            }
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
        panic!(
            "provider saw {} calls, wanted {n}",
            self.provider.refresh_calls()
        );
    }
}

#[tokio::test]
async fn expired_tokens_are_refreshed_before_answering_and_rotation_is_persisted() {
    let f = fixture().await;
    f.store("acme", Some(3600)).await;
    f.clock.advance(Duration::seconds(3600));
    let t = f.fetch("acme").await.unwrap();
    assert_eq!(t.access_token.expose(), "at-refreshed-1");
    assert_eq!(t.version, 2);
    assert_eq!(
        t.scopes,
        ["chat:write", "users:read"],
        "scopes from the answer"
    );
    assert_eq!(f.provider.refresh_calls(), 1);
    let s = f.stored("acme").await;
    assert_eq!(s.meta.refresh.last_refresh_at, Some(f.tokens.now()));
    assert!(s.meta.refresh.refresh_due.is_some());
    // The rotated refresh token was stored: the provider rejects reuse of
    // the original, so a second refresh only works with the new one.
    f.clock.advance(Duration::seconds(3600));
    let t = f.fetch("acme").await.unwrap();
    assert_eq!(t.access_token.expose(), "at-refreshed-2");
    assert_eq!(f.provider.refresh_calls(), 2);
    let log = f.store.recent_audit(20).await.unwrap();
    let refreshes = log
        .iter()
        .filter(|r| r.action == AuditAction::Refresh && r.outcome == AuditOutcome::Success)
        .count();
    assert_eq!(refreshes, 2);
}

#[tokio::test]
async fn a_rotation_with_an_unusable_lifetime_is_kept_with_the_previous_lifetime() {
    for unusable in [
        serde_json::json!(-1),
        serde_json::json!("soon"),
        serde_json::json!(true),
        serde_json::json!({"seconds": 60}),
    ] {
        let f = fixture().await;
        f.store("acme", Some(3600)).await;
        f.provider.set_expires_in_json(unusable.clone());
        f.clock.advance(Duration::seconds(3600));
        // The provider rotated the refresh token; the answer is used.
        let t = f.fetch("acme").await.unwrap();
        assert_eq!(t.access_token.expose(), "at-refreshed-1", "{unusable}");
        let s = f.stored("acme").await;
        // Expiries are kept to the second, rounded down.
        let lifetime = s.meta.valid_until.unwrap() - f.tokens.now();
        assert!(
            lifetime >= Duration::seconds(3599) && lifetime <= Duration::seconds(3600),
            "{unusable}: the previous lifetime is assumed, not {lifetime}"
        );
        // The rotated refresh token was stored: the provider refuses the
        // original, so the next refresh works only with the new one.
        f.clock.advance(Duration::seconds(3600));
        let t = f.fetch("acme").await.unwrap();
        assert_eq!(t.access_token.expose(), "at-refreshed-2", "{unusable}");
        assert_eq!(f.provider.refresh_calls(), 2);
        assert_eq!(f.stored("acme").await.meta.status, SecretStatus::Active);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_already_expired_when_its_refresh_ends_is_not_handed_out() {
    let f = fixture().await;
    f.store("acme", Some(3600)).await;
    f.clock.advance(Duration::seconds(3600));
    // The provider answers slowly with a token that expires at once, and
    // the clock moves two minutes while it does: the token is expired by
    // the time of the answer, though not by the time the fetch began.
    f.provider.set_expires_in(Some(0));
    f.provider.set_delay(StdDuration::from_millis(300));
    let fetch = {
        let tokens = f.tokens.clone();
        tokio::spawn(async move { tokens.fetch(&ctx(), &addr("acme"), &[]).await })
    };
    f.wait_for_calls(1).await;
    f.clock.advance(Duration::seconds(120));
    let err = fetch.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::TokenExpired { .. }), "{err}");
    assert_eq!(f.provider.refresh_calls(), 1);
}

#[tokio::test]
async fn a_provider_answering_expired_tokens_is_not_called_on_every_fetch() {
    let f = fixture().await;
    f.store("acme", Some(3600)).await;
    f.clock.advance(Duration::seconds(3600));
    f.provider.set_expires_in(Some(0));
    let err = f.fetch("acme").await.unwrap_err();
    assert!(matches!(err, Error::TokenExpired { .. }), "{err:?}");
    for _ in 0..4 {
        let err = f.fetch("acme").await.unwrap_err();
        assert!(
            err.to_string().contains("expired_on_arrival"),
            "{err}: the refresh failure says why"
        );
        assert_eq!(err.kind(), vault_types::ErrorKind::Unavailable, "{err:?}");
    }
    assert_eq!(
        f.provider.refresh_calls(),
        1,
        "the others wait out a backoff"
    );
    let s = f.stored("acme").await;
    assert_eq!(
        s.version, 2,
        "the answer was stored (its refresh token rotated)"
    );
    assert_eq!(
        s.meta.refresh.last_error.as_deref(),
        Some("expired_on_arrival")
    );
    assert_eq!(s.meta.refresh.failure_count, 1);
    assert_eq!(s.meta.status, SecretStatus::RefreshFailing);
    // After the backoff, one more attempt; a good answer clears it all.
    f.provider.set_expires_in(Some(3600));
    f.clock.advance(Duration::seconds(3600));
    let t = f.fetch("acme").await.unwrap();
    assert_eq!(t.access_token.expose(), "at-refreshed-2");
    assert_eq!(f.provider.refresh_calls(), 2);
    let s = f.stored("acme").await;
    assert_eq!(s.meta.refresh.failure_count, 0);
    assert_eq!(s.meta.refresh.last_error, None);
    assert_eq!(s.meta.status, SecretStatus::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_reads_cause_exactly_one_refresh() {
    let f = fixture().await;
    f.store("acme", Some(3600)).await;
    f.provider.set_delay(StdDuration::from_millis(100));
    f.clock.advance(Duration::seconds(4000));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let tokens = f.tokens.clone();
        tasks.push(tokio::spawn(async move {
            tokens.fetch(&ctx(), &addr("acme"), &[]).await
        }));
    }
    for t in tasks {
        let token = t.await.unwrap().unwrap();
        assert_eq!(token.access_token.expose(), "at-refreshed-1");
    }
    assert_eq!(f.provider.refresh_calls(), 1);
}

#[tokio::test]
async fn near_expiry_answers_the_current_token_and_refreshes_in_the_background() {
    let f = fixture().await;
    f.store("acme", Some(3600)).await;
    // Margin: min(5 min, 10 % of 3600 s = 6 min) = 5 min.
    f.clock.advance(Duration::seconds(3600 - 301));
    assert_eq!(
        f.fetch("acme").await.unwrap().access_token.expose(),
        "at-original-acme"
    );
    assert_eq!(f.provider.refresh_calls(), 0, "not yet due");
    f.clock.advance(Duration::seconds(2));
    let t = f.fetch("acme").await.unwrap();
    assert_eq!(
        t.access_token.expose(),
        "at-original-acme",
        "still valid: served"
    );
    f.wait_for_calls(1).await;
    for _ in 0..100 {
        if f.stored("acme").await.version == 2 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    assert_eq!(
        f.fetch("acme").await.unwrap().access_token.expose(),
        "at-refreshed-1"
    );
    assert_eq!(f.provider.refresh_calls(), 1);
}

#[tokio::test]
async fn margin_is_ten_percent_of_short_lifetimes() {
    let f = fixture().await;
    f.store("acme", Some(600)).await;
    let s = f.stored("acme").await;
    let valid_until = s.meta.valid_until.unwrap();
    assert_eq!(
        s.meta.refresh.refresh_due,
        Some(valid_until - Duration::seconds(60))
    );
}

#[tokio::test]
async fn a_missing_refresh_token_in_the_answer_keeps_the_old_one() {
    let f = fixture().await;
    f.provider.set_rotate(false);
    f.store("google", Some(3600)).await;
    for n in 1..=3 {
        f.clock.advance(Duration::seconds(3600));
        let t = f.fetch("google").await.unwrap();
        assert_eq!(t.access_token.expose(), format!("at-refreshed-{n}"));
        assert!(f.stored("google").await.meta.has_refresh_token);
    }
}

#[tokio::test]
async fn body_client_auth_and_json_bodies_work() {
    let f = fixture().await;
    for platform in ["bodyauth", "notion"] {
        f.store(platform, Some(60)).await;
    }
    f.clock.advance(Duration::seconds(61));
    f.fetch("bodyauth").await.unwrap();
    f.fetch("notion").await.unwrap();
    assert_eq!(f.provider.refresh_calls(), 2);
}

#[tokio::test]
async fn slack_ok_false_makes_the_secret_reauth_required_and_notifies() {
    let f = fixture().await;
    f.store("slack", Some(43200)).await;
    f.clock.advance(Duration::seconds(43200));
    f.provider.set_mode(Mode::InvalidGrant);
    let err = f.fetch("slack").await.unwrap_err();
    assert!(matches!(err, Error::ReauthRequired { ref platform } if platform == "slack"));
    assert_eq!(err.code(), "reauth_required");
    let s = f.stored("slack").await;
    assert_eq!(s.meta.status, SecretStatus::ReauthRequired);
    assert_eq!(s.meta.refresh.last_error.as_deref(), Some("invalid_grant"));
    // No more provider calls: the grant is dead.
    f.provider.set_mode(Mode::Ok);
    assert!(f.fetch("slack").await.is_err());
    assert!(f.tokens.refresh_due_now(4, 100).await.unwrap() == 0);
    assert_eq!(f.provider.refresh_calls(), 1);
    let pending = f
        .store
        .pending_notifications(f.tokens.now(), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&pending[0].payload).unwrap();
    assert_eq!(v["type"], "secret.reauth_required");
    assert_eq!(v["reason"], "invalid_grant");
    assert!(!pending[0].payload.contains("original"));

    // Storing a new token recovers the secret and says so.
    f.store("slack", Some(43200)).await;
    assert_eq!(f.stored("slack").await.meta.status, SecretStatus::Active);
    let pending = f
        .store
        .pending_notifications(f.tokens.now(), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 2);
    assert!(pending[1].payload.contains("secret.recovered"));
}

#[tokio::test]
async fn slack_scopes_are_comma_separated() {
    let f = fixture().await;
    f.store("slack", Some(100)).await;
    f.clock.advance(Duration::seconds(100));
    let t = f.fetch("slack").await.unwrap();
    assert_eq!(t.scopes, ["chat:write", "users:read"]);
    assert_eq!(t.token_type, "Bearer", "the stored token type is kept");
}

#[tokio::test]
async fn transient_failures_back_off_and_the_old_token_is_served_while_valid() {
    let f = fixture().await;
    f.store("acme", Some(3600)).await;
    f.provider.set_mode(Mode::Status(503));
    f.clock.advance(Duration::seconds(3400));
    // Due: refresh fails in the background, the valid token is served.
    let t = f.fetch("acme").await.unwrap();
    assert_eq!(t.access_token.expose(), "at-original-acme");
    f.wait_for_calls(1).await;
    let mut s = f.stored("acme").await;
    for _ in 0..100 {
        if s.meta.status == SecretStatus::RefreshFailing {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
        s = f.stored("acme").await;
    }
    assert_eq!(s.meta.status, SecretStatus::RefreshFailing);
    assert_eq!(s.meta.refresh.last_error.as_deref(), Some("server_error"));
    assert_eq!(s.meta.refresh.failure_count, 1);
    let next = s.meta.refresh.next_attempt_at.unwrap();
    let now = f.tokens.now();
    assert!(
        next > now && next <= now + Duration::seconds(5),
        "first backoff ≤ base"
    );
    let t = f.fetch("acme").await.unwrap();
    assert_eq!(t.status, SecretStatus::RefreshFailing);
    assert_eq!(f.provider.refresh_calls(), 1, "no call during backoff");

    // Expired while the provider is down: an error, never the expired token.
    f.clock.advance(Duration::seconds(300));
    let err = f.fetch("acme").await.unwrap_err();
    assert!(
        matches!(err, Error::RefreshFailed { ref kind, .. } if kind == "server_error"),
        "{err:?}"
    );
    assert_eq!(err.kind(), vault_types::ErrorKind::Unavailable);
    let s = f.stored("acme").await;
    assert_eq!(s.meta.refresh.failure_count, 2);
    assert!(s.meta.refresh.next_attempt_at.unwrap() > f.tokens.now());

    // The provider recovers; after the backoff the refresh succeeds.
    f.provider.set_mode(Mode::Ok);
    f.clock.advance(Duration::seconds(60));
    let t = f.fetch("acme").await.unwrap();
    assert_eq!(t.access_token.expose(), "at-refreshed-1");
    let s = f.stored("acme").await;
    assert_eq!(s.meta.status, SecretStatus::Active);
    assert_eq!(s.meta.refresh.failure_count, 0);
    assert_eq!(s.meta.refresh.last_error, None);
}

#[tokio::test]
async fn rate_limits_respect_retry_after() {
    let f = fixture().await;
    f.store("acme", Some(60)).await;
    f.provider.set_mode(Mode::RateLimited(120));
    f.clock.advance(Duration::seconds(60));
    let err = f.fetch("acme").await.unwrap_err();
    assert!(matches!(err, Error::RefreshFailed { ref kind, .. } if kind == "rate_limited"));
    let next = f.stored("acme").await.meta.refresh.next_attempt_at.unwrap();
    assert!(next >= f.tokens.now() + Duration::seconds(120));
}

#[tokio::test]
async fn invalid_json_and_echoed_tokens_are_kinds_never_bodies() {
    let f = fixture().await;
    f.store("acme", Some(60)).await;
    f.store("google", Some(60)).await;
    f.clock.advance(Duration::seconds(60));
    f.provider.set_mode(Mode::InvalidJson);
    let err = f.fetch("acme").await.unwrap_err();
    assert!(matches!(err, Error::RefreshFailed { ref kind, .. } if kind == "invalid_response"));
    f.provider.set_mode(Mode::EchoToken);
    let err = f.fetch("google").await.unwrap_err();
    assert!(matches!(err, Error::RefreshFailed { ref kind, .. } if kind == "rejected"));
    let log = f.store.recent_audit(50).await.unwrap();
    for r in &log {
        assert!(!format!("{r:?}").contains("rt-original"), "{r:?}");
    }
    let s = f.stored("google").await;
    assert!(!format!("{:?}", s.meta).contains("rt-original"));
    assert!(!err.to_string().contains("rt-original"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_times_out_without_blocking_other_addresses() {
    let f = fixture_with(StdDuration::from_millis(1500)).await;
    f.store("acme", Some(60)).await;
    f.store("stripe", None).await;
    f.provider.set_delay(StdDuration::from_secs(3));
    f.clock.advance(Duration::seconds(60));
    let tokens = f.tokens.clone();
    let slow = tokio::spawn(async move { tokens.fetch(&ctx(), &addr("acme"), &[]).await });
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    // Another address is served while the slow refresh is in flight.
    f.fetch("stripe").await.unwrap();
    assert!(!slow.is_finished(), "the slow refresh is still waiting");
    let err = slow.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::RefreshFailed { ref kind, .. } if kind == "timeout"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_grant_is_not_declared_when_a_new_token_arrived_meanwhile() {
    let f = fixture().await;
    f.store("acme", Some(60)).await;
    f.provider.set_mode(Mode::InvalidGrant);
    f.provider.set_delay(StdDuration::from_millis(400));
    f.clock.advance(Duration::seconds(60));
    let tokens = f.tokens.clone();
    let refreshing = tokio::spawn(async move { tokens.fetch(&ctx(), &addr("acme"), &[]).await });
    f.wait_for_calls(1).await;
    // The user reconnects while the provider thinks.
    let mut t = TokenData::new(Secret::from("at-reconnected"));
    t.refresh_token = Some(Secret::from("rt-reconnected"));
    t.expires_in = Some(3600);
    f.tokens
        .store(&ctx(), StoreRequest::new(addr("acme"), t))
        .await
        .unwrap();
    let got = refreshing.await.unwrap().unwrap();
    assert_eq!(got.access_token.expose(), "at-reconnected");
    assert_eq!(f.stored("acme").await.meta.status, SecretStatus::Active);
}

#[tokio::test]
async fn forced_refresh_is_single_flight_and_rate_limited() {
    let f = fixture().await;
    f.store("acme", Some(3600)).await;
    let t = f
        .tokens
        .fetch_with(&ctx(), &addr("acme"), &[], true)
        .await
        .unwrap();
    assert_eq!(t.access_token.expose(), "at-refreshed-1");
    // Within the cooldown: the fresh token, no provider call.
    let t = f
        .tokens
        .fetch_with(&ctx(), &addr("acme"), &[], true)
        .await
        .unwrap();
    assert_eq!(t.access_token.expose(), "at-refreshed-1");
    assert_eq!(f.provider.refresh_calls(), 1);
    // After a failure, forced refreshes are refused until the backoff ends.
    f.clock.advance(Duration::seconds(11));
    f.provider.set_mode(Mode::Status(500));
    assert!(
        f.tokens
            .fetch_with(&ctx(), &addr("acme"), &[], true)
            .await
            .is_err()
    );
    let err = f
        .tokens
        .fetch_with(&ctx(), &addr("acme"), &[], true)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RefreshRateLimited { .. }), "{err:?}");
    assert_eq!(err.kind(), vault_types::ErrorKind::RateLimited);
    assert_eq!(f.provider.refresh_calls(), 2);
    // Manual tokens cannot be refreshed.
    f.store("manual", Some(3600)).await;
    let err = f
        .tokens
        .fetch_with(&ctx(), &addr("manual"), &[], true)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotRefreshable { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresher_refreshes_due_tokens_only() {
    let f = fixture().await;
    f.provider.set_rotate(false);
    // Forty acme tokens in as many projects; half fall due within the hour.
    let mut due = 0;
    for i in 0..40 {
        let a = SecretAddress::new("prod", &format!("p{i}"), "acme").unwrap();
        let mut t = TokenData::new(Secret::from("at-x"));
        t.refresh_token = Some(Secret::from("rt-x"));
        t.expires_in = Some(if i % 2 == 0 { 3600 } else { 86400 });
        f.tokens
            .store(&ctx(), StoreRequest::new(a, t))
            .await
            .unwrap();
        if i % 2 == 0 {
            due += 1;
        }
    }
    f.clock.advance(Duration::seconds(3400));
    let task = tokio::spawn(f.tokens.clone().run_refresher(RefresherConfig {
        interval: StdDuration::from_millis(50),
        concurrency: 8,
        batch: 1000,
        max_jitter: StdDuration::from_millis(20),
    }));
    f.wait_for_calls(due).await;
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    task.abort();
    assert_eq!(
        f.provider.refresh_calls(),
        due,
        "each due token exactly once"
    );
    let none_left = f.store.due_for_refresh(f.tokens.now(), 100).await.unwrap();
    assert!(none_left.is_empty());
}

#[tokio::test]
async fn delete_revokes_at_the_provider_and_reports_per_token() {
    let f = fixture().await;
    f.store("acme", Some(3600)).await;
    let out = f.tokens.delete(&ctx(), &addr("acme")).await.unwrap();
    assert_eq!(
        out.revocations,
        [
            Revocation {
                token: TokenKind::Access,
                outcome: RevocationOutcome::Revoked
            },
            Revocation {
                token: TokenKind::Refresh,
                outcome: RevocationOutcome::Revoked
            },
        ]
    );
    assert_eq!(
        f.provider.revoked(),
        [
            ("at-original-acme".to_string(), "access_token".to_string()),
            ("rt-original-acme".to_string(), "refresh_token".to_string()),
        ]
    );
    // Slack revokes access tokens only.
    f.store("slack", Some(3600)).await;
    let out = f.tokens.delete(&ctx(), &addr("slack")).await.unwrap();
    assert_eq!(out.revocations[0].outcome, RevocationOutcome::Revoked);
    assert_eq!(out.revocations[1].outcome, RevocationOutcome::NotSupported);
    // A failing revocation still deletes locally, and says why.
    f.store("google", Some(3600)).await;
    f.provider.set_mode(Mode::Status(500));
    let out = f.tokens.delete(&ctx(), &addr("google")).await.unwrap();
    assert_eq!(
        out.revocations[0].outcome,
        RevocationOutcome::Failed("server_error".into())
    );
    assert!(f.store.get(&addr("google")).await.unwrap().is_none());
    // Manual tokens and API keys: nothing to call.
    f.store("stripe", None).await;
    let out = f.tokens.delete(&ctx(), &addr("stripe")).await.unwrap();
    assert!(
        out.revocations
            .iter()
            .all(|r| r.outcome == RevocationOutcome::NotSupported)
    );
    let log = f.store.recent_audit(100).await.unwrap();
    assert!(log.iter().any(|r| r.action == AuditAction::Revoke
        && r.detail.as_deref() == Some("access_token:failed:server_error")));
}

#[tokio::test]
async fn notifications_are_signed_delivered_and_retried() {
    let f = fixture().await;
    f.store("slack", Some(60)).await;
    f.provider.set_mode(Mode::InvalidGrant);
    f.clock.advance(Duration::seconds(60));
    let _ = f.fetch("slack").await;
    f.provider.fail_webhooks(1);
    let notifier = tokio::spawn(f.tokens.clone().run_notifier(NotifierConfig {
        url: f.provider.url("/webhook"),
        secret: Secret::from("hook-secret"),
        interval: StdDuration::from_millis(20),
        timeout: StdDuration::from_secs(2),
    }));
    // The first delivery fails; the retry waits for its backoff.
    for _ in 0..100 {
        let pending = f
            .store
            .pending_notifications(f.tokens.now() + Duration::days(1), 10)
            .await
            .unwrap();
        if pending.first().is_some_and(|p| p.attempts == 1) {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    assert!(f.provider.webhooks().is_empty());
    f.clock.advance(Duration::minutes(5));
    for _ in 0..200 {
        let delivered = f
            .store
            .pending_notifications(f.tokens.now() + Duration::days(1), 10)
            .await
            .unwrap()
            .is_empty();
        if delivered {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    notifier.abort();
    let hooks = f.provider.webhooks();
    assert_eq!(hooks.len(), 1);
    let (signature, body) = &hooks[0];
    let ts: i64 = signature
        .strip_prefix("t=")
        .and_then(|s| s.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        signature,
        &sign_webhook(b"hook-secret", ts, body.as_bytes())
    );
    assert!(body.contains("secret.reauth_required"));
    assert!(!body.contains("original"), "no token in a notification");
}

#[tokio::test]
async fn an_unreachable_provider_is_a_connect_failure() {
    let f = fixture().await;
    f.store("down", Some(60)).await;
    f.clock.advance(Duration::seconds(60));
    let err = f.fetch("down").await.unwrap_err();
    assert!(
        matches!(err, Error::RefreshFailed { ref kind, .. } if kind == "connect"),
        "{err:?}"
    );
    assert_eq!(
        f.stored("down").await.meta.status,
        SecretStatus::RefreshFailing
    );
}

#[tokio::test]
async fn slack_invalid_grant_over_http_400_is_handled_too() {
    let f = fixture().await;
    f.store("slack400", Some(60)).await;
    f.provider.set_mode(Mode::InvalidGrant);
    f.clock.advance(Duration::seconds(60));
    let err = f.fetch("slack400").await.unwrap_err();
    assert!(matches!(err, Error::ReauthRequired { .. }), "{err:?}");
}

#[tokio::test]
async fn reads_show_the_refresh_state() {
    let f = fixture().await;
    f.store("acme", Some(60)).await;
    let t = f.fetch("acme").await.unwrap();
    assert_eq!((t.last_refresh_at, t.last_error.as_deref()), (None, None));
    f.clock.advance(Duration::seconds(60));
    let t = f.fetch("acme").await.unwrap();
    assert_eq!(t.last_refresh_at, Some(f.tokens.now()));
    assert_eq!(t.status, SecretStatus::Active);
}

#[tokio::test]
async fn refreshed_tokens_the_store_refused_are_kept_and_written_later() {
    let f = fixture().await;
    f.store("acme", Some(60)).await;
    f.clock.advance(Duration::seconds(60));
    f.refuse_new_versions(true);
    let err = f.fetch("acme").await.unwrap_err();
    assert_eq!(err.kind(), vault_types::ErrorKind::Unavailable, "{err:?}");
    assert_eq!(f.provider.refresh_calls(), 1);
    f.refuse_new_versions(false);
    // The next read stores the tokens already refreshed instead of spending
    // the old refresh token, which the provider has rotated away.
    let t = f.fetch("acme").await.unwrap();
    assert_eq!(t.access_token.expose(), "at-refreshed-1");
    assert_eq!(f.provider.refresh_calls(), 1);
    // And the rotated refresh token was kept: the next refresh works.
    f.clock.advance(Duration::seconds(3600));
    assert_eq!(
        f.fetch("acme").await.unwrap().access_token.expose(),
        "at-refreshed-2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_revokes_refreshed_tokens_the_store_had_refused() {
    let f = fixture().await;
    f.store("acme", Some(60)).await;
    f.clock.advance(Duration::seconds(60));
    f.refuse_new_versions(true);
    assert!(f.fetch("acme").await.is_err());
    assert_eq!(f.provider.refresh_calls(), 1);
    // The refreshed tokens exist only in memory and at the provider.
    f.tokens.delete(&ctx(), &addr("acme")).await.unwrap();
    for _ in 0..100 {
        let revoked: Vec<String> = f.provider.revoked().into_iter().map(|(t, _)| t).collect();
        if revoked.contains(&"at-refreshed-1".to_string()) {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    panic!("not revoked: {:?}", f.provider.revoked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_stored_during_a_delete_is_revoked_and_deleted_too() {
    let f = fixture().await;
    f.store("acme", Some(3600)).await;
    f.provider.set_delay(StdDuration::from_millis(300));
    let tokens = f.tokens.clone();
    let deleting = tokio::spawn(async move { tokens.delete(&ctx(), &addr("acme")).await });
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    let mut t = TokenData::new(Secret::from("at-stored-during-delete"));
    t.expires_in = Some(3600);
    f.tokens
        .store(&ctx(), StoreRequest::new(addr("acme"), t))
        .await
        .unwrap();
    let out = deleting.await.unwrap().unwrap();
    assert_eq!(
        out.version, 2,
        "the delete covered the version stored meanwhile"
    );
    assert!(f.store.get(&addr("acme")).await.unwrap().is_none());
    let revoked: Vec<String> = f.provider.revoked().into_iter().map(|(t, _)| t).collect();
    assert!(revoked.contains(&"at-original-acme".to_string()));
    assert!(revoked.contains(&"at-stored-during-delete".to_string()));
}

#[tokio::test]
async fn unrefreshable_due_tokens_stop_being_listed() {
    let f = fixture().await;
    f.store("acme", Some(3600)).await;
    f.clock.advance(Duration::seconds(3400));
    // The provider was removed from the configuration.
    let without = TokenManager::builder(
        Arc::clone(&f.store) as Arc<dyn SecretStore>,
        Envelope::new(Arc::new(LocalKeyProvider::generate().unwrap())),
        Arc::clone(&f.clock) as Arc<dyn Clock>,
    )
    .build();
    assert_eq!(without.refresh_due_now(4, 100).await.unwrap(), 1);
    assert!(
        f.store
            .due_for_refresh(f.tokens.now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(f.provider.refresh_calls(), 0);
}

#[tokio::test]
async fn a_refresh_without_expires_in_keeps_the_previous_lifetime() {
    let f = fixture().await;
    f.provider.set_expires_in(None);
    f.store("acme", Some(3600)).await;
    f.clock.advance(Duration::seconds(3600));
    let t = f.fetch("acme").await.unwrap();
    let now = f.tokens.now().replace_nanosecond(0).unwrap();
    assert_eq!(t.valid_until, Some(now + Duration::seconds(3600)));
    assert!(f.stored("acme").await.meta.refresh.refresh_due.is_some());
}

/// Refreshes `platform`'s token while a new one is stored under it: the
/// new one wins. Returns the provider calls made so far.
async fn refresh_lost_to_a_concurrent_store(f: &Fixture, platform: &str) -> usize {
    let calls = f.provider.refresh_calls();
    f.store(platform, Some(60)).await;
    f.provider.set_delay(StdDuration::from_millis(300));
    f.clock.advance(Duration::seconds(60));
    let tokens = f.tokens.clone();
    let address = addr(platform);
    let refreshing = tokio::spawn(async move { tokens.fetch(&ctx(), &address, &[]).await });
    f.wait_for_calls(calls + 1).await;
    let mut t = TokenData::new(Secret::from("at-reconnected"));
    t.expires_in = Some(3600);
    f.tokens
        .store(&ctx(), StoreRequest::new(addr(platform), t))
        .await
        .unwrap();
    let got = refreshing.await.unwrap().unwrap();
    assert_eq!(got.access_token.expose(), "at-reconnected");
    f.provider.set_delay(StdDuration::ZERO);
    calls + 1
}

async fn wait_until_revoked(f: &Fixture, token: &str) {
    for _ in 0..200 {
        if f.provider.revoked().iter().any(|(t, _)| t == token) {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    panic!(
        "the discarded token was not revoked: {:?}",
        f.provider.revoked()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refreshed_but_lost_to_a_concurrent_store_are_revoked() {
    let f = fixture().await;
    let n = refresh_lost_to_a_concurrent_store(&f, "acme").await;
    wait_until_revoked(&f, &format!("at-refreshed-{n}")).await;
}

/// Google revokes the whole grant when any of its tokens is revoked: the
/// token lost to a newer store, which may hold the same grant, is left to
/// expire instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_refresh_is_not_revoked_where_revocation_ends_the_grant() {
    let f = fixture().await;
    let google = refresh_lost_to_a_concurrent_store(&f, "google").await;
    // A lost refresh of another platform afterwards is revoked: by then,
    // a revocation of Google's would have been sent too.
    let acme = refresh_lost_to_a_concurrent_store(&f, "acme").await;
    wait_until_revoked(&f, &format!("at-refreshed-{acme}")).await;
    let revoked: Vec<String> = f.provider.revoked().into_iter().map(|(t, _)| t).collect();
    assert!(
        revoked.iter().all(|t| t.ends_with(&format!("-{acme}"))),
        "google's refresh was number {google}: {revoked:?}"
    );
    let stored = f.tokens.fetch(&ctx(), &addr("google"), &[]).await.unwrap();
    assert_eq!(stored.access_token.expose(), "at-reconnected");
}
