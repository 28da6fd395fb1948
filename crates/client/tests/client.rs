//! The client against the real server on a loopback port.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::{App, HttpResponse, HttpServer, web};
use vault_client::{Error, StoreRequest, TokenData, TokenOptions, VaultClient};
use vault_server::config::Config;
use vault_server::startup::Application;

const TOKEN: &str = "client-test-token-0123456789";

async fn vault() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "data_dir = \"{}\"\n[server]\nbind = \"127.0.0.1:0\"\nworkers = 1\n[[engines]]\nid = \"execution\"\ntoken_sha256 = \"{}\"\ngrants = [\"*:*:*:*\"]\n",
        dir.path().display(),
        vault_access_resolver::token_sha256_hex(TOKEN)
    );
    let app = Application::build(&Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr());
    actix_web::rt::spawn(app.run_until_stopped());
    (base, dir)
}

#[actix_web::test]
async fn store_fetch_status_delete() {
    let (base, _dir) = vault().await;
    let vault = VaultClient::new(&base, "execution", TOKEN).unwrap();
    let info = vault
        .store(&StoreRequest {
            project_id: "pf_1".into(),
            platform: "Slack".into(),
            environment: None,
            token_data: TokenData {
                access_token: "xoxb-client".into(),
                refresh_token: None,
                expires_in: Some(3600),
                scopes: vec!["chat:write".into()],
            },
            metadata: None,
        })
        .await
        .unwrap();
    assert_eq!((info.platform.as_str(), info.version), ("slack", 1));

    let token = vault
        .token(
            "pf_1",
            "slack",
            &TokenOptions::default().scopes(["chat:write"]),
        )
        .await
        .unwrap();
    assert_eq!(token.access_token.expose(), "xoxb-client");
    assert!(matches!(
        vault
            .token("pf_1", "slack", &TokenOptions::default().scopes(["admin"]))
            .await,
        Err(Error::InsufficientScope(_))
    ));
    assert!(matches!(
        vault
            .token("pf_1", "slack", &TokenOptions::default().force_refresh())
            .await,
        Err(Error::Api { status: 409, .. })
    ));
    let status = vault.status("pf_1", "slack", None).await.unwrap();
    assert_eq!(status.status, "active");
    let deleted = vault.delete("pf_1", "slack", None).await.unwrap();
    assert_eq!(deleted.version, 1);
    assert!(matches!(
        vault.token("pf_1", "slack", &TokenOptions::default()).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        vault.token("pf 1", "slack", &TokenOptions::default()).await,
        Err(Error::Api { status: 400, .. })
    ));
    let stranger = VaultClient::new(&base, "execution", "wrong").unwrap();
    assert!(matches!(
        stranger
            .token("pf_1", "slack", &TokenOptions::default())
            .await,
        Err(Error::Unauthenticated)
    ));
}

/// A stand-in vault that answers 503 `times` times, then a token.
fn flaky(times: usize) -> (String, Arc<AtomicUsize>) {
    flaky_with(times, 503, "storage_unavailable")
}

/// A server answering `status` with error `code` `times` times, then 200.
fn flaky_with(times: usize, status: u16, code: &'static str) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                let seen = Arc::clone(&seen);
                App::new().default_service(web::to(move || {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n < times {
                            HttpResponse::build(
                                actix_web::http::StatusCode::from_u16(status).unwrap(),
                            )
                            .insert_header(("Retry-After", "0"))
                            .json(serde_json::json!({"error": {"code": code, "message": "retry"}}))
                        } else {
                            HttpResponse::Ok().json(serde_json::json!({
                                "access_token": "t", "token_type": "Bearer", "valid_until": null,
                                "scopes": [], "version": 1, "status": "active"
                            }))
                        }
                    }
                }))
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .unwrap();
            tx.send(server.addrs()[0]).unwrap();
            server.run().await.unwrap();
        });
    });
    (format!("http://{}", rx.recv().unwrap()), calls)
}

#[actix_web::test]
async fn unavailable_answers_are_retried_then_reported() {
    let (base, calls) = flaky(2);
    let vault = VaultClient::new(&base, "e", "t").unwrap();
    let token = vault
        .token("p", "x", &TokenOptions::default())
        .await
        .unwrap();
    assert_eq!(token.access_token.expose(), "t");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let (base, calls) = flaky(100);
    let vault = VaultClient::new(&base, "e", "t").unwrap().with_retries(2);
    let err = vault
        .token("p", "x", &TokenOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { ref code, .. } if code == "storage_unavailable"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[actix_web::test]
async fn writes_are_repeated_only_when_nothing_was_written() {
    let request = StoreRequest {
        project_id: "p".into(),
        platform: "slack".into(),
        environment: None,
        token_data: TokenData {
            access_token: "xoxb-1".into(),
            refresh_token: None,
            expires_in: None,
            scopes: vec![],
        },
        metadata: None,
    };
    // Storage answered 503: the store may have been committed, so it is
    // reported, not sent again.
    let (base, calls) = flaky(1);
    let vault = VaultClient::new(&base, "e", "t").unwrap();
    let err = vault.store(&request).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { ref code, .. } if code == "storage_unavailable"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let (base, calls) = flaky(1);
    let vault = VaultClient::new(&base, "e", "t").unwrap();
    assert!(vault.delete("p", "slack", None).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Refusals that come before anything is written are sent again.
    for (status, code) in [
        (429, "rate_limited"),
        (503, "access_resolver_unavailable"),
        (503, "key_unavailable"),
    ] {
        let (base, calls) = flaky_with(1, status, code);
        let vault = VaultClient::new(&base, "e", "t").unwrap();
        // The stand-in's success body is a token, not a store answer:
        // only the number of attempts matters here.
        let _ = vault.store(&request).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{status} {code}");
    }
}
