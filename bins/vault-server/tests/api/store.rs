use serde_json::{Value, json};

use crate::helpers::*;

#[actix_web::test]
async fn store_answers_metadata_only() {
    let app = spawn_app().await;
    let res = app.store(&slack_body()).await;
    assert_eq!(res.status().as_u16(), 201);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let text = res.text().await.unwrap();
    assert!(!text.contains("xoxb-abc-0001"), "no access token: {text}");
    assert!(!text.contains("rt-xyz-0001"), "no refresh token: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["environment"], "prod");
    assert_eq!(body["project"], "pf_203");
    assert_eq!(body["platform"], "slack");
    assert_eq!(body["version"], 1);
    assert_eq!(body["status"], "active");
    assert_eq!(body["valid_until"], "2026-03-01T13:00:00Z");
    assert_eq!(body["scopes"], json!(["chat:write", "users:read"]));
    assert_eq!(body["has_refresh_token"], true);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["stored_at"], "2026-03-01T12:00:00Z");
}

#[actix_web::test]
async fn storing_again_replaces_and_bumps_the_version() {
    let app = spawn_app().await;
    app.store(&slack_body()).await;
    app.clock.advance(time::Duration::minutes(5));
    let mut body = slack_body();
    body["token_data"]["access_token"] = json!("xoxb-abc-0002");
    body["platform"] = json!("SLACK");
    let res = app.store(&body).await;
    assert_eq!(res.status().as_u16(), 201);
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["version"], 2);
    assert_eq!(info["created_at"], "2026-03-01T12:00:00Z");
    assert_eq!(info["stored_at"], "2026-03-01T12:05:00Z");
    let token: Value = app
        .get("/vault/token/pf_203/slack")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(token["access_token"], "xoxb-abc-0002");
    assert_eq!(token["version"], 2);
}

#[actix_web::test]
async fn api_keys_without_expiry_have_null_valid_until() {
    let app = spawn_app().await;
    let res = app
        .store(&json!({
            "project_id": "pf_203",
            "platform": "stripe",
            "token_data": { "access_token": "sk_test_51Abc" }
        }))
        .await;
    assert_eq!(res.status().as_u16(), 201);
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["valid_until"], Value::Null);
    assert_eq!(info["has_refresh_token"], false);
    assert_eq!(info["scopes"], json!([]));
    app.clock.advance(time::Duration::days(3000));
    let token: Value = app
        .get("/vault/token/pf_203/stripe")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(token["access_token"], "sk_test_51Abc");
    assert_eq!(token["valid_until"], Value::Null);
}

#[actix_web::test]
async fn environment_comes_from_the_body_and_the_query() {
    let app = spawn_app().await;
    let mut body = slack_body();
    body["environment"] = json!("dev");
    let info: Value = app.store(&body).await.json().await.unwrap();
    assert_eq!(info["environment"], "dev");
    // Default environment (prod) has nothing.
    assert_error(app.get("/vault/token/pf_203/slack").await, 404, "not_found").await;
    // The execution engine may only read prod; the admin engine reads dev.
    let res = app
        .as_engine(
            reqwest::Method::GET,
            "/vault/token/pf_203/slack?env=dev",
            ADMIN,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

#[actix_web::test]
async fn default_environment_is_configurable() {
    let app = spawn_app_with("[vault]\ndefault_environment = \"staging\"").await;
    let info: Value = app.store(&slack_body()).await.json().await.unwrap();
    assert_eq!(info["environment"], "staging");
}

#[actix_web::test]
async fn metadata_round_trips_and_is_limited() {
    let app = spawn_app().await;
    let mut body = slack_body();
    body["metadata"] = json!({ "team_id": "T123", "bot_user_id": "U9" });
    let info: Value = app.store(&body).await.json().await.unwrap();
    assert_eq!(info["metadata"]["team_id"], "T123");

    body["metadata"] = json!({ "blob": "x".repeat(9000) });
    body["token_data"]["access_token"] = json!("xoxb-should-not-replace");
    let msg = assert_error(app.store(&body).await, 400, "invalid_request").await;
    assert!(msg.contains("metadata"), "{msg}");
    body["metadata"] = json!(["not", "an", "object"]);
    assert_error(app.store(&body).await, 400, "invalid_json").await;

    // Nothing was replaced by the rejected requests.
    let token: Value = app
        .get("/vault/token/pf_203/slack")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(token["access_token"], "xoxb-abc-0001");
    assert_eq!(token["version"], 1);
}

#[actix_web::test]
async fn invalid_identifiers_are_400() {
    let app = spawn_app().await;
    for (field, value) in [
        ("project_id", json!("pf 203")),
        ("project_id", json!("")),
        ("project_id", json!("x".repeat(129))),
        ("platform", json!("sl/ack")),
        ("platform", json!("slack\u{0}")),
        ("environment", json!("prod!")),
    ] {
        let mut body = slack_body();
        body[field] = value;
        let msg = assert_error(app.store(&body).await, 400, "invalid_identifier").await;
        assert!(
            !msg.contains("pf 203") && !msg.contains("sl/ack"),
            "message does not echo input: {msg}"
        );
    }
    let ok = slack_body();
    let mut long_ok = ok.clone();
    long_ok["project_id"] = json!("x".repeat(128));
    assert_eq!(app.store(&long_ok).await.status().as_u16(), 201);
}

#[actix_web::test]
async fn invalid_token_data_is_400_and_changes_nothing() {
    let app = spawn_app().await;
    app.store(&slack_body()).await;
    for token_data in [
        json!({ "access_token": "" }),
        json!({ "access_token": "a\u{7}b" }),
        json!({ "access_token": "ok", "refresh_token": "" }),
        json!({ "access_token": "ok", "expires_in": 400_000_000u64 }),
        json!({ "access_token": "ok", "scopes": ["has space"] }),
        json!({ "access_token": "ok", "token_type": "Bearer\r\nX: y" }),
    ] {
        let mut body = slack_body();
        body["token_data"] = token_data;
        assert_error(app.store(&body).await, 400, "invalid_request").await;
    }
    for token_data in [
        json!({ "access_token": "ok", "expires_in": -5 }),
        json!({ "access_token": 12 }),
        json!({ "refresh_token": "only" }),
        json!({ "access_token": "ok", "scopes": "a b" }),
        json!({ "access_token": "ok", "surprise": 1 }),
    ] {
        let mut body = slack_body();
        body["token_data"] = token_data;
        assert_error(app.store(&body).await, 400, "invalid_json").await;
    }
    let token: Value = app
        .get("/vault/token/pf_203/slack")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(token["access_token"], "xoxb-abc-0001");
    assert_eq!(token["version"], 1);
}
