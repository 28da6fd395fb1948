use serde_json::Value;

use crate::helpers::*;

#[actix_web::test]
async fn delete_removes_every_version_and_says_so() {
    let app = spawn_app().await;
    app.store(&slack_body()).await;
    app.store(&slack_body()).await;
    let res = app.delete("/vault/delete/pf_203/Slack").await;
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["deleted"], true);
    assert_eq!(body["platform"], "slack");
    assert_eq!(body["environment"], "prod");
    assert_eq!(body["version"], 2);
    assert_error(app.get("/vault/token/pf_203/slack").await, 404, "not_found").await;
    assert_error(
        app.delete("/vault/delete/pf_203/slack").await,
        404,
        "not_found",
    )
    .await;
    // Nothing of it remains in the database.
    let conn = rusqlite::Connection::open(app.db_path()).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM secrets", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[actix_web::test]
async fn delete_is_scoped_to_one_environment() {
    let app = spawn_app().await;
    let mut dev = slack_body();
    dev["environment"] = serde_json::json!("dev");
    app.store(&dev).await;
    app.store(&slack_body()).await;
    assert_eq!(
        app.delete("/vault/delete/pf_203/slack?env=dev")
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        app.get("/vault/token/pf_203/slack").await.status().as_u16(),
        200,
        "prod is untouched"
    );
}
