//! The authorization matrix: every route × every kind of caller that must
//! be refused. A route the server registers but this matrix does not list
//! fails the first test, so a new route cannot ship unchecked.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Need {
    Nothing,
    Store,
    Read,
    Delete,
    /// `admin` somewhere: the usage log, filtered to what each grant covers.
    Admin,
    /// `admin` on every address: the keys act on the whole vault.
    VaultAdmin,
}

/// What each route needs, by method and path as registered.
const MATRIX: &[(&str, &str, Need)] = &[
    ("GET", "/healthz", Need::Nothing),
    ("GET", "/readyz", Need::Nothing),
    ("GET", "/metrics", Need::Nothing),
    ("GET", "/openapi.json", Need::Nothing),
    ("POST", "/vault/store", Need::Store),
    ("GET", "/vault/token/{project}/{platform}", Need::Read),
    ("POST", "/vault/refresh/{project}/{platform}", Need::Read),
    ("GET", "/vault/status/{project}/{platform}", Need::Read),
    ("DELETE", "/vault/delete/{project}/{platform}", Need::Delete),
    ("DELETE", "/vault/delete/{project}", Need::Delete),
    ("GET", "/vault/audit", Need::Admin),
    ("GET", "/vault/keys", Need::VaultAdmin),
    ("POST", "/vault/keys/rotate", Need::VaultAdmin),
];

const OTHER_PROJECT: (&str, &str) = ("other-project", "other-project-token-0123");
const OTHER_ENV: (&str, &str) = ("other-env", "other-env-token-0123");
const OTHER_PLATFORM: (&str, &str) = ("other-platform", "other-platform-token-0123");

fn scoped_engines() -> String {
    [
        (OTHER_PROJECT, r#"["*:prod:pf_other:*"]"#),
        (OTHER_ENV, r#"["*:dev:*:*"]"#),
        (OTHER_PLATFORM, r#"["*:prod:pf_203:notion"]"#),
    ]
    .iter()
    .map(|((id, token), grants)| {
        format!(
            "[[engines]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\ngrants = {grants}\n",
            vault_access_resolver::token_sha256_hex(token)
        )
    })
    .collect()
}

#[test]
fn every_registered_route_is_in_the_matrix() {
    let mut registered: Vec<(String, String)> = vault_api::route_table()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    registered.sort();
    let mut listed: Vec<(String, String)> = MATRIX
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    listed.sort();
    assert_eq!(listed, registered, "add the new route to MATRIX");
}

fn concrete(path: &str) -> String {
    path.replace("{project}", "pf_203")
        .replace("{platform}", "slack")
}

/// An engine holding `need`'s action for no address at all.
fn without_grant(need: Need) -> (&'static str, &'static str) {
    match need {
        Need::Store | Need::Delete | Need::Admin | Need::VaultAdmin => EXECUTION,
        Need::Read => INTEGRATION,
        Need::Nothing => ADMIN,
    }
}

#[actix_web::test]
async fn every_route_refuses_every_caller_it_must() {
    // Generous lockout: this test fails many logins on purpose.
    let extra = format!("[access]\nmax_failures = 10000\n{}", scoped_engines());
    let app = spawn_app_with(&extra).await;
    let mut body = slack_body();
    body["token_data"]["access_token"] = "xoxb-MATRIX-MARKER".into();
    assert_eq!(app.store(&body).await.status().as_u16(), 201);
    let mut store_body = slack_body();
    // No engine_id: each caller is judged on its grants alone.
    store_body.as_object_mut().unwrap().remove("engine_id");
    let store_body = store_body.to_string();

    let send = |method: &str, path: &str, who: Option<(&str, &str)>| {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = app.client.request(m, app.url(&concrete(path)));
        if let Some((id, token)) = who {
            req = req.header("X-Engine-Id", id).bearer_auth(token);
        }
        if method == "POST" && path == "/vault/store" {
            req = req
                .header("content-type", "application/json")
                .body(store_body.clone());
        }
        req.send()
    };

    let mut unauthenticated_bodies = Vec::new();
    for (method, path, need) in MATRIX {
        let label = format!("{method} {path}");
        if *need == Need::Nothing {
            let status = send(method, path, None).await.unwrap().status().as_u16();
            assert!(status == 200 || status == 503, "{label}: {status}");
            continue;
        }
        // No credentials, a wrong token, an unknown engine: one answer.
        for who in [
            None,
            Some((EXECUTION.0, "wrong-token")),
            Some(("nobody", EXECUTION.1)),
        ] {
            let res = send(method, path, who).await.unwrap();
            assert_eq!(res.status().as_u16(), 401, "{label} as {who:?}");
            let text = res.text().await.unwrap();
            assert!(!text.contains("MARKER"), "{label}: {text}");
            unauthenticated_bodies.push(text);
        }
        // The project delete answers "nothing here that you may delete"
        // whether nothing exists or nothing is permitted: it tells no
        // caller what exists. Every other route answers 403.
        let (refused, code) = if *path == "/vault/delete/{project}" {
            (404, "not_found")
        } else {
            (403, "forbidden")
        };
        // A known engine without the action.
        let res = send(method, path, Some(without_grant(*need)))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), refused, "{label} without the grant");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], code, "{label}");
        assert!(!err.to_string().contains("MARKER"));

        // Grants for another project, environment or platform. The
        // usage log answers them with the records they cover; the keys
        // refuse them, since `admin` on some addresses is not `admin` on
        // the vault.
        if *need == Need::Admin {
            continue;
        }
        for who in [OTHER_PROJECT, OTHER_ENV, OTHER_PLATFORM] {
            let res = send(method, path, Some(who)).await.unwrap();
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            assert!(!text.contains("MARKER"), "{label} as {}: {text}", who.0);
            assert_eq!(status, refused, "{label} as {}: {text}", who.0);
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"]["code"], code, "{label} as {}", who.0);
        }
    }
    // Every way of failing authentication looked the same.
    assert!(
        unauthenticated_bodies.windows(2).all(|w| w[0] == w[1]),
        "401 bodies differ: {unauthenticated_bodies:?}"
    );
    // And nothing was deleted or replaced on the way.
    let res = app.get("/vault/token/pf_203/slack").await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["access_token"],
        "xoxb-MATRIX-MARKER"
    );
}
