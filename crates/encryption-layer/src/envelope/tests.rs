use std::sync::Arc;

use super::*;
use crate::LocalKeyProvider;

fn envelope() -> Envelope {
    Envelope::new(Arc::new(LocalKeyProvider::generate().unwrap()))
}

#[tokio::test]
async fn round_trip() {
    let env = envelope();
    for plaintext in [&b""[..], b"x", b"xoxb-0123456789", &[0u8; 10_000][..]] {
        let sealed = env.seal(plaintext, b"addr#1").await.unwrap();
        let opened = env.open(&sealed, b"addr#1").await.unwrap();
        assert_eq!(&opened[..], plaintext);
    }
}

#[tokio::test]
async fn same_plaintext_seals_differently() {
    let env = envelope();
    let a = env.seal(b"token", b"aad").await.unwrap();
    let b = env.seal(b"token", b"aad").await.unwrap();
    assert_ne!(a, b, "fresh data key and nonce per value");
}

#[tokio::test]
async fn plaintext_does_not_appear_in_sealed_bytes() {
    let env = envelope();
    let marker = b"MARKER-plaintext-never-on-disk";
    let sealed = env.seal(marker, b"aad").await.unwrap();
    assert!(!sealed.windows(marker.len()).any(|w| w == marker));
}

#[tokio::test]
async fn aad_mismatch_fails() {
    let env = envelope();
    let sealed = env.seal(b"token", b"prod/p/slack#1").await.unwrap();
    assert!(matches!(
        env.open(&sealed, b"prod/p/slack#2").await,
        Err(Error::Decrypt)
    ));
    assert!(matches!(
        env.open(&sealed, b"prod/p/notion#1").await,
        Err(Error::Decrypt)
    ));
}

#[tokio::test]
async fn wrong_key_fails_with_the_needed_key_id() {
    let a = envelope();
    let b = envelope();
    let sealed = a.seal(b"token", b"aad").await.unwrap();
    let needed = a.key_provider().active_key_id().to_owned();
    match b.open(&sealed, b"aad").await {
        Err(Error::UnknownKey { key_id }) => assert_eq!(key_id, needed),
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    assert_eq!(sealed_key_id(&sealed).unwrap(), needed);
}

#[tokio::test]
async fn every_tampered_byte_is_detected() {
    let env = envelope();
    let sealed = env.seal(b"a token worth protecting", b"aad").await.unwrap();
    for i in 0..sealed.len() {
        let mut tampered = sealed.clone();
        tampered[i] ^= 0x01;
        assert!(
            env.open(&tampered, b"aad").await.is_err(),
            "flipping byte {i} went unnoticed"
        );
    }
}

#[tokio::test]
async fn truncated_and_garbage_inputs_are_errors_not_panics() {
    let env = envelope();
    let sealed = env.seal(b"token", b"aad").await.unwrap();
    for len in 0..sealed.len() {
        assert!(env.open(&sealed[..len], b"aad").await.is_err(), "len {len}");
    }
    assert!(matches!(
        env.open(b"XX\x01", b"aad").await,
        Err(Error::Malformed(_))
    ));
    let mut future = sealed.clone();
    future[2] = 9;
    assert!(matches!(
        env.open(&future, b"aad").await,
        Err(Error::UnsupportedFormat(9))
    ));
}

#[tokio::test]
async fn header_layout_is_as_documented() {
    let env = envelope();
    let sealed = env.seal(b"abc", b"aad").await.unwrap();
    let key_id = env.key_provider().active_key_id();
    assert_eq!(&sealed[..2], b"VE");
    assert_eq!(sealed[2], FORMAT_VERSION);
    assert_eq!(usize::from(sealed[3]), key_id.len());
    assert_eq!(&sealed[4..4 + key_id.len()], key_id.as_bytes());
    let w = 4 + key_id.len();
    let wrapped_len = usize::from(u16::from_be_bytes([sealed[w], sealed[w + 1]]));
    assert_eq!(wrapped_len, 12 + 32 + 16);
    assert_eq!(sealed.len(), w + 2 + wrapped_len + 12 + 3 + 16);
}

#[tokio::test]
async fn rewrap_moves_a_value_to_the_new_key_without_changing_the_payload() {
    let keys = Arc::new(LocalKeyProvider::generate().unwrap());
    let env = Envelope::new(Arc::clone(&keys) as Arc<dyn KeyProvider>);
    let sealed = env.seal(b"xoxb-rewrap", b"p/x/slack#1").await.unwrap();
    let old_id = sealed_key_id(&sealed).unwrap().to_owned();
    let new_id = keys.rotate().await.unwrap();
    let rewrapped = env.rewrap(&sealed).await.unwrap();
    assert_eq!(sealed_key_id(&rewrapped).unwrap(), new_id);
    // Same nonce, ciphertext and tag at the end.
    let tail = 12 + b"xoxb-rewrap".len() + 16;
    assert_eq!(
        sealed[sealed.len() - tail..],
        rewrapped[rewrapped.len() - tail..]
    );
    assert_eq!(
        &env.open(&rewrapped, b"p/x/slack#1").await.unwrap()[..],
        b"xoxb-rewrap"
    );
    assert!(env.open(&rewrapped, b"p/x/slack#2").await.is_err());
    // Once the old version is retired only the rewrapped value opens.
    keys.retire(&old_id).await.unwrap();
    assert!(env.open(&sealed, b"p/x/slack#1").await.is_err());
    assert!(env.open(&rewrapped, b"p/x/slack#1").await.is_ok());
}

/// Two processes sharing a key file: one rotates and seals under the new
/// key; the other, which has not reloaded the file yet, opens the value
/// all the same (an unknown key makes it look again), and a value under a
/// key nobody has stays an unknown key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_sealed_under_a_key_another_process_just_added_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let here = Arc::new(LocalKeyProvider::from_file(&path, true).unwrap());
    let there = Arc::new(LocalKeyProvider::from_file(&path, false).unwrap());
    let here_env = Envelope::new(Arc::clone(&here) as Arc<dyn KeyProvider>);
    let there_env = Envelope::new(Arc::clone(&there) as Arc<dyn KeyProvider>);
    let new = there.rotate().await.unwrap();
    let sealed = there_env
        .seal(b"xoxb-after-rotation", b"aad")
        .await
        .unwrap();
    assert!(!here.has_key(&new), "not reloaded yet");
    let opened = here_env.open(&sealed, b"aad").await.unwrap();
    assert_eq!(&opened[..], b"xoxb-after-rotation");
    assert!(here.has_key(&new));

    // Many readers meeting the next new key at once (reloads for unknown
    // keys are at most one a second): one reloads, the others wait for it,
    // none fails.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    there.rotate().await.unwrap();
    let sealed = there_env.seal(b"xoxb-again", b"aad").await.unwrap();
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let (env, sealed) = (here_env.clone(), sealed.clone());
            tokio::spawn(async move { env.open(&sealed, b"aad").await })
        })
        .collect();
    for reader in readers {
        assert_eq!(&reader.await.unwrap().unwrap()[..], b"xoxb-again");
    }

    let stranger = envelope().seal(b"x", b"aad").await.unwrap();
    let err = here_env.open(&stranger, b"aad").await.unwrap_err();
    assert!(matches!(err, Error::UnknownKey { .. }), "{err}");
}
