use reqwest::Method;
use serde_json::json;
use vault_secret_store::{AuditAction, AuditOutcome};

use crate::helpers::*;

/// Every way of failing authentication gets the same 401 and body.
#[actix_web::test]
async fn bad_credentials_are_401_without_detail() {
    // More failures than the default lockout allows, all from one address.
    let app = spawn_app_with("[access]\nmax_failures = 100").await;
    app.store(&slack_body()).await;
    let url = app.url("/vault/token/pf_203/slack");
    let (id, token) = EXECUTION;
    let requests = vec![
        app.client.get(&url),
        app.client.get(&url).header("X-Engine-Id", id),
        app.client.get(&url).bearer_auth(token),
        app.client
            .get(&url)
            .header("X-Engine-Id", id)
            .bearer_auth("wrong"),
        app.client
            .get(&url)
            .header("X-Engine-Id", "nobody")
            .bearer_auth(token),
        app.client
            .get(&url)
            .header("X-Engine-Id", INTEGRATION.0)
            .bearer_auth(token),
        app.client
            .get(&url)
            .header("X-Engine-Id", id)
            .basic_auth(id, Some(token)),
        app.client
            .get(&url)
            .header("X-Engine-Id", id)
            .header("Authorization", token),
        app.client
            .get(&url)
            .header("X-Engine-Id", id)
            .header("Authorization", "Bearer "),
    ];
    let mut messages = Vec::new();
    for req in requests {
        let res = req.send().await.unwrap();
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        messages.push(assert_error(res, 401, "unauthenticated").await);
    }
    messages.dedup();
    assert_eq!(messages, ["missing or invalid engine credentials"]);

    // The bearer scheme is case-insensitive.
    let res = app
        .client
        .get(&url)
        .header("X-Engine-Id", id)
        .header("Authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

#[actix_web::test]
async fn every_route_requires_credentials() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::POST, "/vault/store"),
        (Method::GET, "/vault/token/pf_203/slack"),
        (Method::DELETE, "/vault/delete/pf_203/slack"),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(path))
            .json(&slack_body())
            .send()
            .await
            .unwrap();
        assert_error(res, 401, "unauthenticated").await;
    }
}

#[actix_web::test]
async fn unauthenticated_callers_learn_nothing_about_the_body() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/vault/store"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthenticated").await;
}

#[actix_web::test]
async fn body_engine_id_must_match_the_caller() {
    let app = spawn_app().await;
    let mut body = slack_body();
    body["engine_id"] = json!("execution");
    assert_error(app.store(&body).await, 403, "engine_mismatch").await;
    assert_error(app.get("/vault/token/pf_203/slack").await, 404, "not_found").await;
}

#[actix_web::test]
async fn grants_are_enforced() {
    let app = spawn_app().await;
    app.store(&slack_body()).await;
    let mut dev = slack_body();
    dev["environment"] = json!("dev");
    app.store(&dev).await;

    // Execution may read prod only.
    let res = app
        .as_engine(Method::POST, "/vault/store", EXECUTION)
        .json(&{
            let mut b = slack_body();
            b["engine_id"] = json!("execution");
            b
        })
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
    let res = app
        .as_engine(Method::GET, "/vault/token/pf_203/slack?env=dev", EXECUTION)
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
    let res = app
        .as_engine(Method::DELETE, "/vault/delete/pf_203/slack", EXECUTION)
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
    // Integration may store but not read; cleanup may delete but not read.
    for engine in [INTEGRATION, CLEANUP] {
        let res = app
            .as_engine(Method::GET, "/vault/token/pf_203/slack", engine)
            .send()
            .await
            .unwrap();
        assert_error(res, 403, "forbidden").await;
    }
    // The secret is still there.
    assert_eq!(
        app.get("/vault/token/pf_203/slack").await.status().as_u16(),
        200
    );
}

#[actix_web::test]
async fn grants_are_checked_before_existence_is_revealed() {
    let app = spawn_app().await;
    // A forbidden caller gets 403 whether or not the secret exists.
    let res = app
        .as_engine(
            Method::GET,
            "/vault/token/pf_203/nothing?env=dev",
            EXECUTION,
        )
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
}

#[actix_web::test]
async fn every_request_is_in_the_usage_log_without_tokens() {
    let app = spawn_app().await;
    app.store(&slack_body()).await;
    app.get("/vault/token/pf_203/slack").await;
    app.get("/vault/token/pf_203/slack?scopes=admin").await;
    app.get("/vault/token/pf_203/nothing").await;
    app.client
        .get(app.url("/vault/token/pf_203/slack"))
        .header("X-Engine-Id", "execution")
        .bearer_auth("xoxb-abc-0001")
        .send()
        .await
        .unwrap();
    app.as_engine(Method::GET, "/vault/token/pf_203/slack", INTEGRATION)
        .send()
        .await
        .unwrap();
    app.delete("/vault/delete/pf_203/slack").await;

    let log = app.audit(20).await;
    let got: Vec<_> = log
        .iter()
        .rev()
        .map(|r| {
            (
                r.engine_id.as_deref(),
                r.action,
                r.outcome,
                r.detail.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                Some("integration"),
                AuditAction::Store,
                AuditOutcome::Success,
                None
            ),
            (
                Some("execution"),
                AuditAction::Read,
                AuditOutcome::Success,
                None
            ),
            (
                Some("execution"),
                AuditAction::Read,
                AuditOutcome::Denied,
                Some("insufficient_scope")
            ),
            (
                Some("execution"),
                AuditAction::Read,
                AuditOutcome::NotFound,
                Some("not_found")
            ),
            (
                None,
                AuditAction::Read,
                AuditOutcome::Denied,
                Some("unauthenticated")
            ),
            (
                Some("integration"),
                AuditAction::Read,
                AuditOutcome::Denied,
                Some("forbidden")
            ),
            (
                Some("cleanup"),
                AuditAction::Revoke,
                AuditOutcome::Success,
                Some("access_token:not_supported")
            ),
            (
                Some("cleanup"),
                AuditAction::Revoke,
                AuditOutcome::Success,
                Some("refresh_token:not_supported")
            ),
            (
                Some("cleanup"),
                AuditAction::Delete,
                AuditOutcome::Success,
                None
            ),
        ]
    );
    // Every record is about the right secret.
    let mut ids: Vec<_> = log.iter().map(|r| r.request_id.clone()).collect();
    ids.sort();
    ids.dedup();
    // One id per request; a delete's revocation records share its id.
    assert_eq!(ids.len(), 7);
    for r in &log {
        let text = format!("{r:?}");
        assert!(!text.contains("xoxb-abc-0001") && !text.contains("rt-xyz-0001"));
        assert_eq!(r.at, time::macros::datetime!(2026-03-01 12:00 UTC));
    }
    assert_eq!(log[1].platform.as_deref(), Some("slack"));
}

#[actix_web::test]
async fn repeated_failures_lock_out_the_engine_id_and_the_address() {
    let app = spawn_app().await;
    app.store(&slack_body()).await;
    let url = app.url("/vault/token/pf_203/slack");
    let attempt = |id: &'static str, token: &'static str| {
        app.client
            .get(&url)
            .header("X-Engine-Id", id)
            .bearer_auth(token)
            .send()
    };
    for _ in 0..5 {
        assert_error(
            attempt("execution", "wrong").await.unwrap(),
            401,
            "unauthenticated",
        )
        .await;
    }
    // Locked out: even the right token is refused, with Retry-After.
    let res = attempt(EXECUTION.0, EXECUTION.1).await.unwrap();
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 800 && retry <= 900, "{retry}");
    assert_error(res, 429, "too_many_failures").await;
    // An unknown engine id from this address gets the same answer: the
    // lockout tells nothing about which ids exist.
    let res = attempt("nobody", "x").await.unwrap();
    assert_error(res, 429, "too_many_failures").await;
    // The lockout and the failures before it are in the usage log; the
    // refused attempts during it are not (they could flood it).
    let log = app.audit(50).await;
    let details: Vec<_> = log.iter().filter_map(|r| r.detail.as_deref()).collect();
    assert_eq!(
        details.iter().filter(|d| **d == "unauthenticated").count(),
        5
    );
    assert_eq!(
        details
            .iter()
            .filter(|d| **d == "too_many_failures")
            .count(),
        1
    );
}

#[actix_web::test]
async fn unknown_engine_ids_count_like_wrong_tokens() {
    let app = spawn_app().await;
    let url = app.url("/vault/token/pf_203/slack");
    for i in 0..5 {
        let res = app
            .client
            .get(&url)
            .header("X-Engine-Id", format!("ghost{i}"))
            .bearer_auth("x")
            .send()
            .await
            .unwrap();
        assert_error(res, 401, "unauthenticated").await;
    }
    let res = app
        .client
        .get(&url)
        .header("X-Engine-Id", EXECUTION.0)
        .bearer_auth(EXECUTION.1)
        .send()
        .await
        .unwrap();
    assert_error(res, 429, "too_many_failures").await;
}

#[actix_web::test]
async fn engines_over_their_request_rate_get_429() {
    let app = spawn_app_with("[access]\nengine_rate_per_sec = 1\nengine_burst = 3").await;
    app.store(&slack_body()).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(app.get("/vault/token/pf_203/slack").await.status().as_u16());
    }
    assert_eq!(&statuses[..3], [200, 200, 200]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let res = app.get("/vault/token/pf_203/slack").await;
    statuses.push(res.status().as_u16());
    if res.status().as_u16() == 429 {
        assert!(res.headers().contains_key("retry-after"));
        assert_error(res, 429, "rate_limited").await;
    }
    // A run of refusals is recorded once, not once per request.
    for _ in 0..30 {
        statuses.push(app.get("/vault/token/pf_203/slack").await.status().as_u16());
    }
    let runs = statuses
        .iter()
        .enumerate()
        .filter(|&(i, &s)| s == 429 && (i == 0 || statuses[i - 1] != 429))
        .count();
    let recorded = app
        .audit(200)
        .await
        .iter()
        .filter(|r| r.detail.as_deref() == Some("rate_limited"))
        .count();
    assert!(runs >= 1 && statuses.iter().filter(|&&s| s == 429).count() > runs);
    assert_eq!(
        recorded, runs,
        "{recorded} records for {runs} runs of refusals: {statuses:?}"
    );
}

#[actix_web::test]
async fn an_unreachable_engine_control_core_fails_closed_with_503() {
    let app = spawn_app_with(
        "[access]\nresolver = \"ecc\"\n[access.ecc]\nurl = \"http://127.0.0.1:1/decide\"\ntimeout_ms = 500",
    )
    .await;
    let res = app.get("/vault/token/pf_203/slack").await;
    let msg = assert_error(res, 503, "access_resolver_unavailable").await;
    assert!(
        !msg.contains("127.0.0.1"),
        "no internals in the answer: {msg}"
    );
    // Refusals for an unavailable resolver do not count towards a lockout.
    for _ in 0..6 {
        assert_eq!(
            app.get("/vault/token/pf_203/slack").await.status().as_u16(),
            503
        );
    }
}

#[actix_web::test]
async fn the_chain_serves_local_engines_when_the_core_is_down() {
    let app = spawn_app_with(
        "[access]\nresolver = \"chain\"\n[access.ecc]\nurl = \"http://127.0.0.1:1/decide\"\ntimeout_ms = 500",
    )
    .await;
    assert_eq!(app.store(&slack_body()).await.status().as_u16(), 201);
    assert_eq!(
        app.get("/vault/token/pf_203/slack").await.status().as_u16(),
        200
    );
    let res = app
        .client
        .get(app.url("/vault/token/pf_203/slack"))
        .header("X-Engine-Id", "remote-engine")
        .bearer_auth("x")
        .send()
        .await
        .unwrap();
    assert_error(res, 503, "access_resolver_unavailable").await;
}

#[actix_web::test]
async fn the_usage_log_is_queryable_by_admins_only() {
    let auditor_token = "auditor-token-0123456789";
    let extra = format!(
        "[[engines]]\nid = \"auditor\"\ntoken_sha256 = \"{}\"\ngrants = [\"admin:dev:*:*\"]\n",
        vault_access_resolver::token_sha256_hex(auditor_token)
    );
    let app = spawn_app_with(&extra).await;
    app.store(&slack_body()).await;
    let mut dev = slack_body();
    dev["environment"] = json!("dev");
    app.store(&dev).await;
    for _ in 0..3 {
        app.get("/vault/token/pf_203/slack").await;
    }
    let query = |engine: (&str, &str), q: &str| {
        app.as_engine(Method::GET, &format!("/vault/audit{q}"), engine)
            .send()
    };
    // No admin grant: 403.
    assert_error(query(EXECUTION, "").await.unwrap(), 403, "forbidden").await;

    // A full admin sees everything, newest first, and pages through it.
    let page: serde_json::Value = query(ADMIN, "?limit=2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert!(records[0]["id"].as_i64() > records[1]["id"].as_i64());
    let cursor = page["next_cursor"].as_i64().unwrap();
    let next: serde_json::Value = query(ADMIN, &format!("?limit=2&cursor={cursor}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(next["records"][0]["id"].as_i64().unwrap() < cursor);
    let reads: serde_json::Value = query(
        ADMIN,
        "?action=read&engine=execution&environment=prod&limit=100",
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(reads["records"].as_array().unwrap().len(), 3);
    assert_eq!(reads["next_cursor"], serde_json::Value::Null);
    let text = query(ADMIN, "?limit=1000")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("xoxb-abc-0001") && !text.contains("rt-xyz-0001"));

    // An admin of dev only sees dev records (and records about no secret).
    let dev_view: serde_json::Value = query(("auditor", auditor_token), "?limit=1000")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for r in dev_view["records"].as_array().unwrap() {
        assert!(
            r["environment"] == "dev" || r["environment"].is_null(),
            "{r}"
        );
    }
    assert!(
        dev_view["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["environment"] == "dev")
    );

    // Bad filters: 400.
    for q in [
        "?since=yesterday",
        "?limit=0",
        "?limit=5000",
        "?action=fly",
        "?cursor=-1",
        "?projekt=x",
        "?project=a%20b",
    ] {
        assert_error(query(ADMIN, q).await.unwrap(), 400, "invalid_query").await;
    }
}

/// An engine that never failed to authenticate is never throttled by its
/// own concurrency (the lockout counts parallel attempts only once a
/// failure was seen).
#[actix_web::test]
async fn many_concurrent_requests_of_a_good_engine_are_all_served() {
    let app = spawn_app().await;
    assert_eq!(app.store(&slack_body()).await.status().as_u16(), 201);
    let requests = (0..64).map(|_| {
        app.as_engine(Method::GET, "/vault/token/pf_203/slack", EXECUTION)
            .send()
    });
    let results = futures_util::future::join_all(requests).await;
    for r in results {
        assert_eq!(r.unwrap().status().as_u16(), 200);
    }
}

/// A stand-in Engine Control Core that allows everything, except that it
/// fails (HTTP 500) every question about project `pf_broken` once `broken`
/// is set. Decisions are not cached (`ttl_seconds: 0`).
fn core_failing_for_one_project(broken: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                let broken = std::sync::Arc::clone(&broken);
                App::new().route(
                    "/decide",
                    web::post().to(move |body: web::Json<serde_json::Value>| {
                        let failing = broken.load(std::sync::atomic::Ordering::SeqCst)
                            && body["project"] == "pf_broken";
                        async move {
                            if failing {
                                HttpResponse::InternalServerError().finish()
                            } else {
                                HttpResponse::Ok().json(json!({"allow": true, "ttl_seconds": 0}))
                            }
                        }
                    }),
                )
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .unwrap();
            tx.send(server.addrs()[0]).unwrap();
            server.run().await.unwrap();
        });
    });
    format!("http://{}/decide", rx.recv().unwrap())
}

#[actix_web::test]
async fn an_audit_page_fails_rather_than_hide_records_the_core_cannot_decide() {
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = core_failing_for_one_project(std::sync::Arc::clone(&broken));
    let app = spawn_app_with(&format!(
        "[access]\nresolver = \"ecc\"\n[access.ecc]\nurl = \"{url}\"\ntimeout_ms = 2000"
    ))
    .await;
    for project in ["pf_ok", "pf_broken"] {
        let mut body = slack_body();
        body["project_id"] = json!(project);
        assert_eq!(app.store(&body).await.status().as_u16(), 201);
    }
    let page = |app: &TestApp| {
        app.as_engine(Method::GET, "/vault/audit?limit=100", ADMIN)
            .send()
    };
    let all: serde_json::Value = page(&app).await.unwrap().json().await.unwrap();
    let projects: Vec<&str> = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["project"].as_str())
        .collect();
    assert!(
        projects.contains(&"pf_broken") && projects.contains(&"pf_ok"),
        "{all}"
    );

    // The core cannot decide for one project's records: the page is refused
    // (a short page with a cursor past them would hide them for good).
    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let res = page(&app).await.unwrap();
    assert_error(res, 503, "access_resolver_unavailable").await;
}

/// A grant restricted to some scopes applies to the reads that name them:
/// the token, and also a forced refresh and the status, which take
/// `?scopes=` for that.
#[actix_web::test]
async fn a_scope_restricted_grant_applies_to_refresh_and_status_too() {
    let scoped = ("scoped", "scoped-token-0123456789");
    let extra = format!(
        "[[engines]]\nid = \"scoped\"\ntoken_sha256 = \"{}\"\ngrants = [{{ actions = [\"read\"], \
         environments = [\"prod\"], projects = [\"*\"], platforms = [\"*\"], \
         scopes = [\"chat:write\"] }}]\n",
        vault_access_resolver::token_sha256_hex(scoped.1)
    );
    let app = spawn_app_with(&extra).await;
    app.store(&slack_body()).await;
    let call = |method: Method, path: &str| app.as_engine(method, path, scoped).send();
    let routes = [
        (Method::GET, "/vault/token/pf_203/slack"),
        (Method::POST, "/vault/refresh/pf_203/slack"),
        (Method::GET, "/vault/status/pf_203/slack"),
    ];
    for (method, path) in &routes {
        // Without the scopes named, or with one outside the restriction,
        // the grant does not apply.
        for query in ["", "?scopes=users:read", "?scopes=chat:write,users:read"] {
            let res = call(method.clone(), &format!("{path}{query}"))
                .await
                .unwrap();
            assert_error(res, 403, "forbidden").await;
        }
    }
    let res = call(Method::GET, "/vault/token/pf_203/slack?scopes=chat:write")
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = call(Method::GET, "/vault/status/pf_203/slack?scopes=chat:write")
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["platform"], "slack");
    // No Slack provider is configured here: allowed, then not refreshable.
    let res = call(
        Method::POST,
        "/vault/refresh/pf_203/slack?scopes=chat:write",
    )
    .await
    .unwrap();
    assert_error(res, 409, "not_refreshable").await;
}
