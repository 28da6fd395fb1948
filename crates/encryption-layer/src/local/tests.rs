use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn key_file_is_created_with_mode_0600_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let first = LocalKeyProvider::from_file(&path, true).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = LocalKeyProvider::from_file(&path, true).unwrap();
    assert_eq!(first.active_key_id(), again.active_key_id());
    assert!(first.active_key_id().starts_with("local-"));
}

#[test]
fn missing_file_without_create_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = LocalKeyProvider::from_file(&dir.path().join("nope"), false).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
}

#[test]
fn empty_or_short_or_garbage_keys_are_rejected_clearly() {
    let err = LocalKeyProvider::from_base64("test", "  \n").unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = LocalKeyProvider::from_base64("test", "c2hvcnQ=").unwrap_err();
    assert!(err.to_string().contains("32 bytes"), "{err}");
    let err = LocalKeyProvider::from_base64("test", "not base64!!").unwrap_err();
    assert!(err.to_string().contains("base64"), "{err}");
}

#[test]
fn key_id_depends_on_the_key() {
    let a = LocalKeyProvider::from_bytes(&[1u8; 32]).unwrap();
    let b = LocalKeyProvider::from_bytes(&[2u8; 32]).unwrap();
    let a2 = LocalKeyProvider::from_base64("t", &BASE64.encode([1u8; 32])).unwrap();
    assert_ne!(a.active_key_id(), b.active_key_id());
    assert_eq!(a.active_key_id(), a2.active_key_id());
}

#[test]
fn debug_shows_no_key_material() {
    let p = LocalKeyProvider::from_bytes(&[7u8; 32]).unwrap();
    let dbg = format!("{p:?}");
    assert!(dbg.contains("local-"));
    assert!(!dbg.contains("7, 7"));
    let dk = DataKey::from_bytes([9u8; 32]);
    assert_eq!(format!("{dk:?}"), "DataKey([redacted])");
}

#[tokio::test]
async fn wrap_unwrap_round_trip_and_tamper() {
    let p = LocalKeyProvider::generate().unwrap();
    let dk = DataKey::from_bytes([5u8; 32]);
    let wrapped = p.wrap(&dk).await.unwrap();
    let back = p.unwrap(&wrapped.key_id, &wrapped.bytes).await.unwrap();
    assert_eq!(back.expose(), dk.expose());
    let mut bad = wrapped.bytes.clone();
    bad[20] ^= 1;
    assert!(matches!(
        p.unwrap(&wrapped.key_id, &bad).await,
        Err(Error::Decrypt)
    ));
    assert!(matches!(
        p.unwrap("local-0000000000000000", &wrapped.bytes).await,
        Err(Error::UnknownKey { .. })
    ));
}

#[tokio::test]
async fn derived_keys_are_stable_per_label_and_key() {
    let a = LocalKeyProvider::from_bytes(&[1u8; 32]).unwrap();
    let again = LocalKeyProvider::from_bytes(&[1u8; 32]).unwrap();
    let b = LocalKeyProvider::from_bytes(&[2u8; 32]).unwrap();
    let k = a.derive("audit").await.unwrap();
    assert_eq!(k.expose(), again.derive("audit").await.unwrap().expose());
    assert_ne!(k.expose(), a.derive("other").await.unwrap().expose());
    assert_ne!(k.expose(), b.derive("audit").await.unwrap().expose());
    assert_ne!(k.expose(), &[1u8; 32]);
}
