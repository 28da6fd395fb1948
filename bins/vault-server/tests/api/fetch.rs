use serde_json::{Value, json};

use crate::helpers::*;

#[actix_web::test]
async fn fetch_answers_the_spec_output_case_insensitively() {
    let app = spawn_app().await;
    app.store(&slack_body()).await;
    let res = app.get("/vault/token/pf_203/slack").await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(res.headers().contains_key("x-request-id"));
    let text = res.text().await.unwrap();
    assert!(
        !text.contains("rt-xyz-0001"),
        "refresh token never leaves: {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["access_token"], "xoxb-abc-0001");
    assert_eq!(body["valid_until"], "2026-03-01T13:00:00Z");
    assert_eq!(body["scopes"], json!(["chat:write", "users:read"]));
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("refresh_token").is_none());
    // Any spelling of the platform reaches the same secret.
    for path in ["/vault/token/pf_203/Slack", "/vault/token/pf_203/SLACK"] {
        assert_eq!(app.get(path).await.status().as_u16(), 200, "{path}");
    }
}

#[actix_web::test]
async fn required_scopes() {
    let app = spawn_app().await;
    app.store(&slack_body()).await;
    for ok in [
        "?scopes=chat:write",
        "?scopes=chat:write,users:read",
        "?scopes=",
        "?scopes=users:read,chat:write,users:read",
    ] {
        let res = app.get(&format!("/vault/token/pf_203/slack{ok}")).await;
        assert_eq!(res.status().as_u16(), 200, "{ok}");
    }
    // Exactly the documented list: no empty items, spaces or quotes.
    for bad in [
        "?scopes=users:read,,chat:write",
        "?scopes=,chat:write",
        "?scopes=chat:write%20",
        "?scopes=chat%22write",
    ] {
        let res = app.get(&format!("/vault/token/pf_203/slack{bad}")).await;
        assert_error(res, 400, "invalid_query").await;
    }
    let msg = assert_error(
        app.get("/vault/token/pf_203/slack?scopes=chat:write,admin")
            .await,
        403,
        "insufficient_scope",
    )
    .await;
    assert!(msg.contains("admin"), "{msg}");
}

#[actix_web::test]
async fn unknown_address_is_404() {
    let app = spawn_app().await;
    assert_error(app.get("/vault/token/pf_203/slack").await, 404, "not_found").await;
    app.store(&slack_body()).await;
    assert_error(app.get("/vault/token/pf_204/slack").await, 404, "not_found").await;
    assert_error(
        app.get("/vault/token/pf_203/notion").await,
        404,
        "not_found",
    )
    .await;
}

#[actix_web::test]
async fn expired_token_is_409_never_served() {
    let app = spawn_app().await;
    app.store(&slack_body()).await;
    app.clock.advance(time::Duration::seconds(3599));
    assert_eq!(
        app.get("/vault/token/pf_203/slack").await.status().as_u16(),
        200
    );
    app.clock.advance(time::Duration::seconds(1));
    let msg = assert_error(
        app.get("/vault/token/pf_203/slack").await,
        409,
        "token_expired",
    )
    .await;
    assert!(msg.contains("slack"), "{msg}");
}

#[actix_web::test]
async fn invalid_path_or_query_is_400() {
    let app = spawn_app().await;
    for path in [
        "/vault/token/pf%20203/slack",
        "/vault/token/pf_203/sl%2Fack",
        "/vault/token/pf_203/%FF%FE",
        "/vault/token/pf_203/slack?env=pr%20od",
    ] {
        assert_error(app.get(path).await, 400, "invalid_identifier").await;
    }
    for path in [
        "/vault/token/pf_203/slack?scope=admin",
        "/vault/token/pf_203/slack?env=prod&env=dev",
        "/vault/token/pf_203/slack?scopes=a&unknown=1",
    ] {
        assert_error(app.get(path).await, 400, "invalid_query").await;
    }
    let long = "x".repeat(129);
    assert_error(
        app.get(&format!("/vault/token/{long}/slack")).await,
        400,
        "invalid_identifier",
    )
    .await;
}

#[actix_web::test]
async fn health_needs_no_auth() {
    let app = spawn_app().await;
    let res = app.get_public("/healthz").await;
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

#[actix_web::test]
async fn a_read_that_cannot_be_recorded_is_not_served() {
    let app = spawn_app().await;
    app.store(&slack_body()).await;
    let conn = rusqlite::Connection::open(app.db_path()).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER full BEFORE INSERT ON audit_log BEGIN SELECT RAISE(FAIL, 'disk full'); END;",
    )
    .unwrap();
    let res = app.get("/vault/token/pf_203/slack").await;
    assert_eq!(res.status().as_u16(), 503);
    let text = res.text().await.unwrap();
    assert!(!text.contains("xoxb-abc-0001"), "nothing returned: {text}");
    assert!(text.contains("audit_unavailable"), "{text}");
    conn.execute_batch("DROP TRIGGER full;").unwrap();
    assert_eq!(
        app.get("/vault/token/pf_203/slack").await.status().as_u16(),
        200
    );
}
