use serde_json::json;

use crate::helpers::*;

async fn post_raw(app: &TestApp, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    app.as_engine(reqwest::Method::POST, "/vault/store", INTEGRATION)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    for body in [
        &b""[..],
        b"{",
        b"null",
        b"[]",
        b"\"x\"",
        b"{\"project_id\": }",
        b"\xff\xfe{}",
        b"{\"project_id\":\"a\",\"platform\":\"b\",\"token_data\":{\"access_token\":\"x\"}} trailing",
    ] {
        let res = post_raw(&app, "application/json", body.to_vec()).await;
        assert_error(res, 400, "invalid_json").await;
    }
}

#[actix_web::test]
async fn unknown_fields_are_400_and_values_are_not_echoed() {
    let app = spawn_app().await;
    let mut body = slack_body();
    body["token"] = json!("xoxb-SECRET-IN-WRONG-FIELD");
    let msg = assert_error(app.store(&body).await, 400, "invalid_json").await;
    assert!(msg.contains("unknown field"), "{msg}");
    assert!(!msg.contains("SECRET"), "{msg}");

    let mut body = slack_body();
    body["token_data"]["expires_in"] = json!("xoxb-SECRET-AS-EXPIRY");
    let msg = assert_error(app.store(&body).await, 400, "invalid_json").await;
    assert!(!msg.contains("SECRET"), "{msg}");

    let mut body = slack_body();
    body.as_object_mut().unwrap().remove("project_id");
    let msg = assert_error(app.store(&body).await, 400, "invalid_json").await;
    assert!(msg.contains("project_id"), "{msg}");
}

#[actix_web::test]
async fn oversized_bodies_are_413() {
    let app = spawn_app().await;
    let mut body = slack_body();
    body["metadata"] = json!({ "x": "y".repeat(70 * 1024) });
    assert_error(app.store(&body).await, 413, "payload_too_large").await;
    // Also without a Content-Length (chunked).
    let big = serde_json::to_vec(&body).unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let stream = futures_util::stream::iter(chunks);
    let res = app
        .as_engine(reqwest::Method::POST, "/vault/store", INTEGRATION)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_error(res, 413, "payload_too_large").await;
}

#[actix_web::test]
async fn wrong_content_type_is_415() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&slack_body()).unwrap();
    let res = post_raw(&app, "text/plain", body.clone()).await;
    assert_error(res, 415, "unsupported_media_type").await;
    let res = post_raw(&app, "application/json; charset=utf-8", body).await;
    assert_eq!(res.status().as_u16(), 201);
}

#[actix_web::test]
async fn unknown_routes_and_methods() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_error(res, 404, "route_not_found").await;
    let res = app
        .client
        .get(app.url("/vault/token/only-project"))
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "route_not_found").await;
    for (method, path, allow) in [
        (reqwest::Method::GET, "/vault/store", "POST"),
        (reqwest::Method::POST, "/vault/token/pf_203/slack", "GET"),
        (reqwest::Method::GET, "/vault/delete/pf_203/slack", "DELETE"),
        (reqwest::Method::POST, "/healthz", "GET"),
        (reqwest::Method::TRACE, "/vault/audit", "GET"),
    ] {
        let res = app.as_engine(method, path, ADMIN).send().await.unwrap();
        // RFC 9110: a 405 names the methods the route does support.
        assert_eq!(res.headers()["allow"], allow, "{path}");
        assert_error(res, 405, "method_not_allowed").await;
    }
}

/// Garbage of many shapes: always a 4xx with the standard body, never a 5xx.
#[actix_web::test]
async fn hostile_bodies_never_cause_a_5xx() {
    let app = spawn_app().await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<Vec<u8>> = vec![
        deep.into_bytes(),
        b"{\"project_id\":\"\\ud800\",\"platform\":\"x\",\"token_data\":{\"access_token\":\"x\"}}".to_vec(),
        json!({"project_id": "p", "platform": "x", "token_data": {"access_token": "x", "expires_in": 1e300}}).to_string().into_bytes(),
        json!({"project_id": "p", "platform": "x", "token_data": {"access_token": "x", "expires_in": u64::MAX}}).to_string().into_bytes(),
        json!({"project_id": "p", "platform": "x", "token_data": {"access_token": "x", "scopes": [1, 2]}}).to_string().into_bytes(),
        json!({"project_id": ["p"], "platform": "x", "token_data": {}}).to_string().into_bytes(),
        json!({"project_id": "p", "platform": "x", "token_data": {"access_token": "x"}, "metadata": {"a": {"b": {"c": [null, true, 1.5]}}}}).to_string().into_bytes(),
        (0u8..=255).collect(),
    ];
    for body in cases {
        let res = post_raw(&app, "application/json", body).await;
        let status = res.status().as_u16();
        assert!(
            (200..500).contains(&status),
            "status {status} for hostile input"
        );
        if status >= 400 {
            let v: serde_json::Value = res.json().await.unwrap();
            assert!(v["error"]["code"].is_string());
        }
    }
    assert_eq!(app.get_public("/healthz").await.status().as_u16(), 200);
}

/// Every documented route answers as documented for a request without
/// credentials: public routes 200 (or 503), `/vault/*` routes 401 — never
/// `route_not_found` or `method_not_allowed`, so the document and the
/// server agree over real HTTP too.
#[actix_web::test]
async fn the_served_openapi_document_matches_the_server() {
    let app = spawn_app().await;
    let res = reqwest::get(app.url("/openapi.json")).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let doc: serde_json::Value = res.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let client = reqwest::Client::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{project}", "pf_1")
            .replace("{platform}", "slack");
        for method in item.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let res = client.request(m, app.url(&concrete)).send().await.unwrap();
            let status = res.status().as_u16();
            if path.starts_with("/vault/") {
                // Unauthenticated; after a few, the lockout (both documented).
                let body: serde_json::Value = res.json().await.unwrap();
                let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
                assert!(
                    (status, code.as_str()) == (401, "unauthenticated")
                        || (status, code.as_str()) == (429, "too_many_failures"),
                    "{method} {path}: {status} {code}"
                );
            } else {
                assert!(status == 200 || status == 503, "{method} {path}: {status}");
            }
        }
    }
}
