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

#[tokio::test]
async fn rotating_a_key_file_appends_a_version_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let p = LocalKeyProvider::from_file(&path, true).unwrap();
    let first = p.active_key_id();
    let old = p.wrap(&DataKey::from_bytes([3u8; 32])).await.unwrap();

    let second = p.rotate().await.unwrap();
    assert_ne!(first, second);
    assert_eq!(p.active_key_id(), second);
    assert_eq!(p.key_ids(), vec![first.clone(), second.clone()]);
    let new = p.wrap(&DataKey::from_bytes([4u8; 32])).await.unwrap();
    assert_eq!(new.key_id, second);
    // Both versions still unwrap.
    assert_eq!(
        p.unwrap(&old.key_id, &old.bytes).await.unwrap().expose(),
        &[3u8; 32]
    );
    assert_eq!(
        p.unwrap(&new.key_id, &new.bytes).await.unwrap().expose(),
        &[4u8; 32]
    );

    // The file stays private and another process reading it sees both.
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let other = LocalKeyProvider::from_file(&path, false).unwrap();
    assert_eq!(other.key_ids(), vec![first.clone(), second.clone()]);
    assert_eq!(other.active_key_id(), second);
}

#[tokio::test]
async fn reload_picks_up_a_rotation_made_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let server = LocalKeyProvider::from_file(&path, true).unwrap();
    let tool = LocalKeyProvider::from_file(&path, false).unwrap();
    assert!(!server.reload().await.unwrap());
    let new = tool.rotate().await.unwrap();
    assert!(server.reload().await.unwrap());
    assert_eq!(server.active_key_id(), new);
}

#[tokio::test]
async fn retiring_removes_an_old_version_but_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let p = LocalKeyProvider::from_file(&path, true).unwrap();
    let first = p.active_key_id();
    let old = p.wrap(&DataKey::from_bytes([3u8; 32])).await.unwrap();
    let second = p.rotate().await.unwrap();

    let err = p.retire(&second).await.unwrap_err();
    assert!(err.to_string().contains("active"), "{err}");
    p.retire(&first).await.unwrap();
    assert_eq!(p.key_ids(), vec![second.clone()]);
    assert!(matches!(
        p.unwrap(&old.key_id, &old.bytes).await,
        Err(Error::UnknownKey { .. })
    ));
    let reread = LocalKeyProvider::from_file(&path, false).unwrap();
    assert_eq!(reread.key_ids(), vec![second]);
    assert!(matches!(
        p.retire(&first).await,
        Err(Error::UnknownKey { .. })
    ));
}

#[tokio::test]
async fn a_key_is_retired_only_once_the_file_has_settled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let grace = std::time::Duration::from_secs(60);
    // A server that reloads the file now and then, and the tool that rotates.
    let server = LocalKeyProvider::from_file(&path, true).unwrap();
    let first = server.active_key_id();
    let tool = LocalKeyProvider::from_file(&path, false)
        .unwrap()
        .with_retire_grace(grace);
    let second = tool.rotate().await.unwrap();

    // Right after the rotation the server has not reloaded: it still seals
    // under the first key, so that key must stay.
    let err = tool.retire(&first).await.unwrap_err();
    assert!(err.to_string().contains("changed 0 s ago"), "{err}");
    assert_eq!(tool.key_ids(), vec![first.clone(), second.clone()]);
    let sealed = server.wrap(&DataKey::from_bytes([5u8; 32])).await.unwrap();
    assert_eq!(sealed.key_id, first);

    // Once the file is older than the grace, the retirement goes through.
    let past = std::time::SystemTime::now() - grace - std::time::Duration::from_secs(1);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(past)
        .unwrap();
    tool.retire(&first).await.unwrap();
    assert_eq!(tool.key_ids(), vec![second]);
}

#[tokio::test]
async fn retiring_one_of_several_keys_on_a_line_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let (a, b, c) = (
        BASE64.encode([1u8; 32]),
        BASE64.encode([2u8; 32]),
        BASE64.encode([3u8; 32]),
    );
    std::fs::write(&path, format!("# old keys\n{a}, {b} {c}\n")).unwrap();
    let p = LocalKeyProvider::from_file(&path, false).unwrap();
    let ids = p.key_ids();
    assert_eq!(ids.len(), 3);
    let sealed_b = LocalKeyProvider::from_bytes(&[2u8; 32])
        .unwrap()
        .wrap(&DataKey::from_bytes([9u8; 32]))
        .await
        .unwrap();
    // Retire the first: the second and the (active) third stay.
    p.retire(&ids[0]).await.unwrap();
    assert_eq!(p.key_ids(), ids[1..].to_vec());
    let reread = LocalKeyProvider::from_file(&path, false).unwrap();
    assert_eq!(reread.key_ids(), ids[1..].to_vec());
    assert!(
        reread
            .unwrap(&sealed_b.key_id, &sealed_b.bytes)
            .await
            .is_ok()
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(&a) && text.contains(&b) && text.contains(&c),
        "{text}"
    );
    // And the middle one, leaving the active key alone on its line.
    p.retire(&ids[1]).await.unwrap();
    assert_eq!(
        LocalKeyProvider::from_file(&path, false).unwrap().key_ids(),
        vec![ids[2].clone()]
    );
}

#[tokio::test]
async fn a_list_of_keys_forms_a_ring_with_the_last_one_active() {
    let a = BASE64.encode([1u8; 32]);
    let b = BASE64.encode([2u8; 32]);
    let ring = LocalKeyProvider::from_base64("test", &format!("{a}, {b}")).unwrap();
    let only_a = LocalKeyProvider::from_bytes(&[1u8; 32]).unwrap();
    let only_b = LocalKeyProvider::from_bytes(&[2u8; 32]).unwrap();
    assert_eq!(ring.active_key_id(), only_b.active_key_id());
    assert_eq!(
        ring.key_ids(),
        vec![only_a.active_key_id(), only_b.active_key_id()]
    );
    let dup = LocalKeyProvider::from_base64("test", &format!("{a},{a}")).unwrap_err();
    assert!(dup.to_string().contains("twice"), "{dup}");

    // Keys given in memory rotate in memory.
    let new = ring.rotate().await.unwrap();
    assert_eq!(ring.key_ids().len(), 3);
    assert_eq!(ring.active_key_id(), new);
}

/// A reload that read the key file before a rotation in this process
/// finished does not put the older ring back.
#[tokio::test]
async fn a_reload_that_read_the_file_before_a_rotation_does_not_undo_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let p = LocalKeyProvider::from_file(&path, true).unwrap();
    let generation = p.ring().generation;
    let read_before = LocalKeyProvider::read_file(&path).unwrap();
    let new = p.rotate().await.unwrap();
    assert!(!p.replace_ring_if(read_before, generation));
    assert_eq!(p.active_key_id(), new);
    assert!(!p.reload().await.unwrap(), "the file and the ring agree");
}
