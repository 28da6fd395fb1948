//! The Engine Control Core resolver against a stand-in core speaking real
//! HTTP on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use vault_types::SecretAddress;

use super::*;
use crate::{Action, EngineConfig, token_sha256_hex};

/// How the stand-in core answers.
#[derive(Debug, Clone)]
enum Behaviour {
    /// Allow engine `execution` with token `exec-token` to read prod.
    Policy {
        ttl: Option<u64>,
    },
    Slow,
    Status(u16),
    Malformed,
    /// A valid answer padded past the size the vault reads.
    Huge,
}

#[derive(Debug)]
struct Core {
    behaviour: Mutex<Behaviour>,
    calls: AtomicUsize,
    revoked: Mutex<bool>,
}

async fn decide(core: web::Data<Core>, body: web::Json<serde_json::Value>) -> HttpResponse {
    core.calls.fetch_add(1, Ordering::SeqCst);
    let behaviour = core.behaviour.lock().unwrap().clone();
    match behaviour {
        Behaviour::Slow => {
            actix_web::rt::time::sleep(Duration::from_secs(3)).await;
            HttpResponse::Ok().json(serde_json::json!({"allow": true}))
        }
        Behaviour::Status(s) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(s).unwrap()).finish()
        }
        Behaviour::Malformed => HttpResponse::Ok().body("{\"allow\": \"yes\"}"),
        Behaviour::Huge => HttpResponse::Ok().body(format!(
            "{{\"allow\": true, \"pad\": \"{}\"}}",
            "x".repeat(1 << 20)
        )),
        Behaviour::Policy { ttl } => {
            let b = body.into_inner();
            let known = b["engine_id"] == "execution"
                && b["token_sha256"] == token_sha256_hex("exec-token")
                && !*core.revoked.lock().unwrap();
            let allow = known
                && match b["action"].as_str() {
                    Some("authenticate") => true,
                    Some("read") => b["environment"] == "prod",
                    _ => false,
                };
            let mut answer = serde_json::json!({ "allow": allow });
            if let Some(ttl) = ttl {
                answer["ttl_seconds"] = ttl.into();
            }
            HttpResponse::Ok().json(answer)
        }
    }
}

fn start_core(behaviour: Behaviour) -> (String, Arc<Core>) {
    let core = Arc::new(Core {
        behaviour: Mutex::new(behaviour),
        calls: AtomicUsize::new(0),
        revoked: Mutex::new(false),
    });
    let data = web::Data::from(Arc::clone(&core));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .route("/decide", web::post().to(decide))
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .unwrap();
            tx.send(server.addrs()[0]).unwrap();
            server.run().await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}/decide"), core)
}

fn resolver(url: String, cache_ttl: Duration) -> EccResolver {
    EccResolver::new(EccConfig {
        url,
        timeout: Duration::from_millis(500),
        cache_ttl,
        authorization: None,
    })
    .unwrap()
}

fn prod() -> SecretAddress {
    SecretAddress::new("prod", "pf_1", "slack").unwrap()
}

#[tokio::test]
async fn allow_and_deny_from_the_core() {
    let (url, _core) = start_core(Behaviour::Policy { ttl: None });
    let r = resolver(url, Duration::ZERO);
    let p = r
        .authenticate(&EngineCredentials::new("execution", "exec-token"))
        .await
        .unwrap();
    r.authorize(&p, &AccessRequest::new(Action::Read, &prod()))
        .await
        .unwrap();
    let dev = SecretAddress::new("dev", "pf_1", "slack").unwrap();
    let err = r
        .authorize(&p, &AccessRequest::new(Action::Read, &dev))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden { .. }));
    let err = r
        .authenticate(&EngineCredentials::new("execution", "wrong"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthenticated));
}

#[tokio::test]
async fn failures_deny_as_unavailable() {
    for behaviour in [
        Behaviour::Slow,
        Behaviour::Status(500),
        Behaviour::Status(403),
        Behaviour::Malformed,
        Behaviour::Huge,
    ] {
        let (url, _core) = start_core(behaviour.clone());
        let r = resolver(url, Duration::from_secs(30));
        let err = r
            .authenticate(&EngineCredentials::new("execution", "exec-token"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Unavailable(_)),
            "{behaviour:?}: {err:?}"
        );
        assert_eq!(err.kind(), vault_types::ErrorKind::Unavailable);
    }
    // Nobody listening.
    let r = resolver("http://127.0.0.1:1/decide".into(), Duration::from_secs(30));
    let err = r
        .authenticate(&EngineCredentials::new("execution", "exec-token"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)));
}

#[tokio::test]
async fn decisions_are_cached_no_longer_than_the_core_says() {
    let (url, core) = start_core(Behaviour::Policy { ttl: Some(1) });
    let r = resolver(url, Duration::from_secs(30));
    let creds = EngineCredentials::new("execution", "exec-token");
    for _ in 0..5 {
        r.authenticate(&creds).await.unwrap();
    }
    assert_eq!(core.calls.load(Ordering::SeqCst), 1, "cached");
    // The engine is revoked at the core: the cached allow lasts its TTL only.
    *core.revoked.lock().unwrap() = true;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(r.authenticate(&creds).await.is_err());
    assert_eq!(core.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_local_cache_period_shorter_than_the_core_ttl_wins() {
    let (url, core) = start_core(Behaviour::Policy { ttl: Some(3600) });
    let r = resolver(url, Duration::from_millis(100));
    let creds = EngineCredentials::new("execution", "exec-token");
    r.authenticate(&creds).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    r.authenticate(&creds).await.unwrap();
    assert_eq!(core.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_token_never_leaves_the_vault() {
    let (url, _core) = start_core(Behaviour::Policy { ttl: None });
    let r = resolver(url, Duration::ZERO);
    let p = r
        .authenticate(&EngineCredentials::new("execution", "exec-token"))
        .await
        .unwrap();
    // Only its hash is known past authentication.
    assert_eq!(p.token_sha256, token_sha256_hex("exec-token"));
    assert!(!format!("{r:?}").contains("exec-token"));
}

#[tokio::test]
async fn the_chain_asks_local_engines_locally_and_others_remotely() {
    let (url, core) = start_core(Behaviour::Policy { ttl: None });
    let local = Arc::new(
        ConfigResolver::new(vec![EngineConfig {
            id: "integration".into(),
            token_sha256: token_sha256_hex("int-token"),
            grants: vec!["store:*:*:*".parse().unwrap()],
        }])
        .unwrap(),
    );
    let chain = ChainResolver::new(local, Arc::new(resolver(url, Duration::ZERO)));
    let p = chain
        .authenticate(&EngineCredentials::new("integration", "int-token"))
        .await
        .unwrap();
    chain
        .authorize(&p, &AccessRequest::new(Action::Store, &prod()))
        .await
        .unwrap();
    assert_eq!(core.calls.load(Ordering::SeqCst), 0, "decided locally");
    // A local engine with a wrong token is not passed on to the core.
    assert!(
        chain
            .authenticate(&EngineCredentials::new("integration", "exec-token"))
            .await
            .is_err()
    );
    assert_eq!(core.calls.load(Ordering::SeqCst), 0);
    let p = chain
        .authenticate(&EngineCredentials::new("execution", "exec-token"))
        .await
        .unwrap();
    chain
        .authorize(&p, &AccessRequest::new(Action::Read, &prod()))
        .await
        .unwrap();
    assert_eq!(core.calls.load(Ordering::SeqCst), 2);
}
