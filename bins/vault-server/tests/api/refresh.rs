use reqwest::Method;
use serde_json::{Value, json};
use vault_test_support::{FakeProvider, Mode};

use crate::helpers::*;

fn acme_body(expires_in: u64) -> Value {
    json!({
        "project_id": "pf_203",
        "platform": "acme",
        "token_data": {
            "access_token": "at-original",
            "refresh_token": "rt-original",
            "expires_in": expires_in,
            "scopes": ["chat:write"]
        }
    })
}

#[actix_web::test]
async fn two_hundred_concurrent_gets_of_an_expired_token_make_one_provider_call() {
    let fake = FakeProvider::start();
    fake.set_delay(std::time::Duration::from_millis(100));
    let (app, _secrets) = spawn_app_with_provider(&fake).await;
    assert_eq!(app.store(&acme_body(3600)).await.status().as_u16(), 201);
    app.clock.advance(time::Duration::seconds(3601));
    let mut requests = Vec::new();
    for _ in 0..200 {
        requests.push(app.get("/vault/token/pf_203/acme"));
    }
    let responses = futures_util::future::join_all(requests).await;
    for res in responses {
        assert_eq!(res.status().as_u16(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["access_token"], "at-refreshed-1");
        assert_eq!(body["version"], 2);
    }
    assert_eq!(fake.refresh_calls(), 1);
}

#[actix_web::test]
async fn status_shows_refresh_state_without_tokens() {
    let fake = FakeProvider::start();
    let (app, _secrets) = spawn_app_with_provider(&fake).await;
    app.store(&acme_body(3600)).await;
    app.clock.advance(time::Duration::seconds(3600));
    let token: Value = app
        .get("/vault/token/pf_203/acme")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(token["status"], "active");
    assert!(token["last_refresh_at"].is_string(), "{token}");
    assert_eq!(token["last_error"], Value::Null);
    let res = app.get("/vault/status/pf_203/acme").await;
    assert_eq!(res.status().as_u16(), 200);
    let text = res.text().await.unwrap();
    assert!(!text.contains("at-") && !text.contains("rt-"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], "active");
    assert_eq!(body["version"], 2);
    assert_eq!(body["last_refresh_at"], body["stored_at"]);
    assert_eq!(body["last_error"], Value::Null);
    assert_error(
        app.get("/vault/status/pf_203/nothing").await,
        404,
        "not_found",
    )
    .await;
    // Status needs the read grant.
    let res = app
        .as_engine(Method::GET, "/vault/status/pf_203/acme", INTEGRATION)
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
}

#[actix_web::test]
async fn forced_refresh_by_post_and_by_query() {
    let fake = FakeProvider::start();
    let (app, _secrets) = spawn_app_with_provider(&fake).await;
    app.store(&acme_body(3600)).await;
    let res = app
        .as_engine(Method::POST, "/vault/refresh/pf_203/acme", EXECUTION)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["access_token"], "at-refreshed-1");
    // Within the cooldown the fresh token comes back without a provider call.
    let body: Value = app
        .get("/vault/token/pf_203/acme?force_refresh=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["access_token"], "at-refreshed-1");
    assert_eq!(fake.refresh_calls(), 1);
    app.clock.advance(time::Duration::seconds(11));
    let body: Value = app
        .get("/vault/token/pf_203/acme?force_refresh=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["access_token"], "at-refreshed-2");
    // A failing provider: the retry storm is cut off by the backoff (429).
    let force = || async {
        app.as_engine(Method::POST, "/vault/refresh/pf_203/acme", EXECUTION)
            .send()
            .await
            .unwrap()
    };
    fake.set_mode(Mode::Status(500));
    app.clock.advance(time::Duration::seconds(11));
    let res = force().await;
    assert_error(res, 503, "refresh_failed").await;
    let mut retry_after = Vec::new();
    for _ in 0..5 {
        let res = force().await;
        let header = res.headers().get("retry-after").cloned();
        assert_error(res, 429, "refresh_rate_limited").await;
        let seconds: i64 = header
            .expect("429 refresh_rate_limited says when to retry")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        retry_after.push(seconds);
    }
    assert_eq!(fake.refresh_calls(), 3);
    // The clock stands still: the same wait each time, and once it has
    // passed, the provider is asked again.
    assert!(
        retry_after.windows(2).all(|w| w[0] == w[1]),
        "{retry_after:?}"
    );
    assert!((1..=3600).contains(&retry_after[0]), "{retry_after:?}");
    app.clock
        .advance(time::Duration::seconds(retry_after[0] - 1));
    let res = force().await;
    assert_error(res, 429, "refresh_rate_limited").await;
    app.clock.advance(time::Duration::seconds(1));
    let res = force().await;
    assert_error(res, 503, "refresh_failed").await;
    assert_eq!(fake.refresh_calls(), 4);
    // Manual tokens cannot be refreshed.
    app.store(&slack_body()).await;
    let mut manual = acme_body(3600);
    manual["platform"] = json!("zendesk");
    app.store(&manual).await;
    let res = app
        .as_engine(Method::POST, "/vault/refresh/pf_203/zendesk", EXECUTION)
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "not_refreshable").await;
}

#[actix_web::test]
async fn a_dead_grant_is_409_reauth_required_naming_the_platform() {
    let fake = FakeProvider::start();
    let (app, _secrets) = spawn_app_with_provider(&fake).await;
    app.store(&slack_body()).await;
    fake.set_mode(Mode::InvalidGrant);
    app.clock.advance(time::Duration::seconds(3600));
    let msg = assert_error(
        app.get("/vault/token/pf_203/slack").await,
        409,
        "reauth_required",
    )
    .await;
    assert!(msg.contains("slack"), "{msg}");
    let status: Value = app
        .get("/vault/status/pf_203/slack")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "reauth_required");
    assert_eq!(status["last_error"], "invalid_grant");
}

#[actix_web::test]
async fn expired_while_the_provider_is_down_is_503_naming_the_platform() {
    let fake = FakeProvider::start();
    let (app, _secrets) = spawn_app_with_provider(&fake).await;
    app.store(&acme_body(60)).await;
    fake.set_mode(Mode::Status(502));
    app.clock.advance(time::Duration::seconds(60));
    let msg = assert_error(
        app.get("/vault/token/pf_203/acme").await,
        503,
        "refresh_failed",
    )
    .await;
    assert!(
        msg.contains("acme") && msg.contains("server_error"),
        "{msg}"
    );
}

#[actix_web::test]
async fn delete_reports_revocation_per_token() {
    let fake = FakeProvider::start();
    let (app, _secrets) = spawn_app_with_provider(&fake).await;
    app.store(&acme_body(3600)).await;
    let body: Value = app
        .delete("/vault/delete/pf_203/acme")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["revocation"],
        json!([
            {"token": "access_token", "outcome": "revoked"},
            {"token": "refresh_token", "outcome": "revoked"}
        ])
    );
    assert_eq!(fake.revoked().len(), 2);
    // The provider fails: reported, and the secret is gone anyway.
    app.store(&acme_body(3600)).await;
    fake.set_mode(Mode::Status(500));
    let res = app.delete("/vault/delete/pf_203/acme").await;
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["revocation"][0]["outcome"], "failed");
    assert_eq!(body["revocation"][0]["error"], "server_error");
    assert_error(app.get("/vault/token/pf_203/acme").await, 404, "not_found").await;
}

#[actix_web::test]
async fn cleanup_deletes_a_whole_project_it_may_delete() {
    let fake = FakeProvider::start();
    let (app, _secrets) = spawn_app_with_provider(&fake).await;
    for (env, platform) in [("prod", "acme"), ("prod", "slack"), ("dev", "stripe")] {
        let mut b = acme_body(3600);
        b["platform"] = json!(platform);
        b["environment"] = json!(env);
        assert_eq!(app.store(&b).await.status().as_u16(), 201);
    }
    let mut other = acme_body(3600);
    other["project_id"] = json!("pf_999");
    app.store(&other).await;

    let res = app.delete("/vault/delete/pf_203").await;
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["project"], "pf_203");
    let deleted = body["deleted"].as_array().unwrap();
    let names: Vec<_> = deleted
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["environment"].as_str().unwrap(),
                d["platform"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, ["dev/stripe", "prod/acme", "prod/slack"]);
    assert_eq!(deleted[1]["revocation"][0]["outcome"], "revoked");
    assert_eq!(deleted[0]["revocation"][0]["outcome"], "not_supported");
    // The other project is untouched; nothing is left to delete here.
    assert_eq!(
        app.get("/vault/token/pf_999/acme").await.status().as_u16(),
        200
    );
    assert_error(app.delete("/vault/delete/pf_203").await, 404, "not_found").await;
    // An engine without a delete grant finds nothing it may delete.
    let res = app
        .as_engine(Method::DELETE, "/vault/delete/pf_999", EXECUTION)
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
}

#[actix_web::test]
async fn metrics_and_readiness() {
    let fake = FakeProvider::start();
    let (app, _secrets) = spawn_app_with_provider(&fake).await;
    app.store(&acme_body(60)).await;
    app.clock.advance(time::Duration::seconds(60));
    assert_eq!(
        app.get("/vault/token/pf_203/acme").await.status().as_u16(),
        200
    );
    assert_eq!(
        app.get("/vault/token/pf_203/none").await.status().as_u16(),
        404
    );

    // Methods outside the standard ones share one label, however many.
    for i in 0..3 {
        let method = Method::from_bytes(format!("PROBE{i}").as_bytes()).unwrap();
        let res = app
            .client
            .request(method, app.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }

    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let text = res.text().await.unwrap();
    assert!(!text.contains("PROBE"), "a label per method:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("method=\"OTHER\"") && l.ends_with(" 3")),
        "{text}"
    );
    for needle in [
        "vault_http_requests_total{route=\"/vault/token/{project}/{platform}\",method=\"GET\",status=\"200\"} 1",
        "vault_http_requests_total{route=\"/vault/token/{project}/{platform}\",method=\"GET\",status=\"404\"} 1",
        "vault_http_requests_total{route=\"/vault/store\",method=\"POST\",status=\"201\"} 1",
        "vault_http_request_duration_seconds_count{route=\"/vault/store\"} 1",
        "vault_refreshes_total{platform=\"acme\",outcome=\"success\"} 1",
        "vault_provider_request_duration_seconds_count{platform=\"acme\",operation=\"refresh\"} 1",
        "vault_secrets{status=\"active\"} 1",
        "vault_secrets{status=\"reauth_required\"} 0",
        "vault_notifications_pending 0",
        "vault_audit_queue_depth 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert!(
        !text.contains("at-") && !text.contains("rt-"),
        "no tokens in metrics"
    );

    let res = app.get_public("/readyz").await;
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["master_key"], "ok");
    assert_eq!(body["checks"]["audit_writer"], "ok");
}

#[actix_web::test]
async fn readiness_fails_when_the_database_cannot_take_writes() {
    let app = spawn_app().await;
    // Another process holds the write lock (a stuck writer, say).
    let conn = rusqlite::Connection::open(app.db_path()).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let res = app.get_public("/readyz").await;
    assert_eq!(res.status().as_u16(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["database"], "storage_unavailable");
    conn.execute_batch("ROLLBACK;").unwrap();
    let res = app.get_public("/readyz").await;
    assert_eq!(res.status().as_u16(), 200);
}

#[actix_web::test]
async fn the_usage_log_is_forwarded_and_pruned_keeping_the_chain() {
    let fake = FakeProvider::start();
    let app = spawn_app_with(&format!(
        "[audit]\nretention_days = 1\nprune_interval_secs = 1\n[audit.forward]\nurl = \"{}\"\ninterval_ms = 50\n",
        fake.url("/logs")
    ))
    .await;
    app.store(&slack_body()).await;
    for _ in 0..4 {
        app.get("/vault/token/pf_203/slack").await;
    }
    // Forwarded, in order.
    for _ in 0..300 {
        if fake.logged().len() >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let ids: Vec<i64> = fake
        .logged()
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(&ids[..5], [1, 2, 3, 4, 5]);
    assert!(!format!("{:?}", fake.logged()).contains("xoxb-abc-0001"));

    // Two days later retention prunes what was delivered.
    app.clock.advance(time::Duration::days(2));
    let count = || {
        rusqlite::Connection::open(app.db_path())
            .unwrap()
            .query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    for _ in 0..300 {
        if count() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(count(), 0);
    app.get("/vault/token/pf_203/slack").await;

    // The chain still verifies from the signed checkpoint.
    use vault_secret_store::SecretStore;
    let keys = vault_encryption_layer::LocalKeyProvider::from_file(
        &app.dir.path().join("master.key"),
        false,
    )
    .unwrap();
    let store: std::sync::Arc<dyn SecretStore> = std::sync::Arc::new(
        vault_secret_store::SqliteStore::open(&app.db_path())
            .await
            .unwrap(),
    );
    let tokens = vault_token_manager::TokenManager::new(
        std::sync::Arc::clone(&store),
        vault_encryption_layer::Envelope::new(std::sync::Arc::new(keys)),
        std::sync::Arc::new(vault_types::SystemClock),
    );
    let mac = tokens.load_audit_keys().await.unwrap();
    let v = store.verify_audit(mac).await.unwrap();
    assert_eq!(v.problem, None, "{v:?}");
    assert_eq!(v.pruned_through, Some(5));
    assert_eq!(v.last_verified_seq, Some(6));
}
