//! HTTPS and mutual TLS, with certificates made in the test.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::helpers::*;

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_pem: String,
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate, all signed by the CA; PEM files in a temp directory.
fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["execution.engines.internal".into()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem).unwrap();
    write("ca.pem", &ca_cert.pem());
    write("server.pem", &server_cert.pem());
    write("server.key", &server_key.serialize_pem());
    Pki {
        ca_pem: ca_cert.pem(),
        client_pem: format!("{}{}", client_cert.pem(), client_key.serialize_pem()),
        dir,
    }
}

fn tls_toml(pki: &Pki, mutual: bool) -> String {
    let p = |name: &str| pki.dir.path().join(name).display().to_string();
    let mut toml = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        p("server.pem"),
        p("server.key")
    );
    if mutual {
        toml.push_str(&format!("client_ca = \"{}\"\n", p("ca.pem")));
    }
    toml
}

fn https_client(pki: &Pki, identity: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap());
    if identity {
        builder = builder.identity(reqwest::Identity::from_pem(pki.client_pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[actix_web::test]
async fn serves_https_and_refuses_plain_http() {
    let pki = pki();
    let app = spawn_app_with(&tls_toml(&pki, false)).await;
    let https = app.base.replace("http://", "https://");
    let client = https_client(&pki, false);
    let res = client
        .get(format!("{https}/vault/token/pf_203/slack"))
        .header("X-Engine-Id", EXECUTION.0)
        .bearer_auth(EXECUTION.1)
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
    assert!(
        app.client.get(app.url("/healthz")).send().await.is_err(),
        "no plain HTTP on a TLS port"
    );
}

#[actix_web::test]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = pki();
    let app = spawn_app_with(&tls_toml(&pki, true)).await;
    let https = app.base.replace("http://", "https://");
    let without = https_client(&pki, false)
        .get(format!("{https}/healthz"))
        .send()
        .await;
    assert!(
        without.is_err(),
        "handshake refused without a client certificate"
    );
    let with = https_client(&pki, true)
        .get(format!("{https}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(with.status().as_u16(), 200);
    // The certificate is an additional factor: engine credentials still count.
    let res = https_client(&pki, true)
        .get(format!("{https}/vault/token/pf_203/slack"))
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthenticated").await;
}
