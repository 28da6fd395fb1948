//! Property tests for the sealed format and the local key-file parser: the
//! two places where bytes from disk (or from whoever can write to the
//! database) meet the encryption layer.

use std::sync::Arc;

use proptest::prelude::*;
use vault_encryption_layer::{Envelope, Error, LocalKeyProvider, sealed_key_id};

fn envelope() -> Envelope {
    // A fixed key, so that failures shrink and replay the same way.
    Envelope::new(Arc::new(
        LocalKeyProvider::from_bytes(&[7u8; 32]).expect("a 32-byte key"),
    ))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Whatever is sealed opens to itself under the same AAD, and to nothing
    /// under any other.
    #[test]
    fn round_trip(value in proptest::collection::vec(any::<u8>(), 0..2048),
                  aad in proptest::collection::vec(any::<u8>(), 0..128),
                  other in proptest::collection::vec(any::<u8>(), 0..128)) {
        let rt = runtime();
        let env = envelope();
        let sealed = rt.block_on(env.seal(&value, &aad)).unwrap();
        let opened = rt.block_on(env.open(&sealed, &aad)).unwrap();
        prop_assert_eq!(opened.as_slice(), value.as_slice());
        prop_assert!(sealed_key_id(&sealed).is_ok());
        if other != aad {
            prop_assert!(rt.block_on(env.open(&sealed, &other)).is_err());
        }
    }

    /// Any single flipped bit, anywhere, and any truncation is refused: no
    /// part of a sealed value can be altered unnoticed.
    #[test]
    fn tampering_is_refused(value in proptest::collection::vec(any::<u8>(), 0..256),
                            pos in any::<usize>(), bit in 0u8..8, cut in any::<usize>()) {
        let rt = runtime();
        let env = envelope();
        let sealed = rt.block_on(env.seal(&value, b"aad")).unwrap();
        let mut flipped = sealed.clone();
        let pos = pos % flipped.len();
        flipped[pos] ^= 1 << bit;
        prop_assert!(rt.block_on(env.open(&flipped, b"aad")).is_err(), "flip at {}", pos);
        let cut = cut % sealed.len();
        prop_assert!(rt.block_on(env.open(&sealed[..cut], b"aad")).is_err(), "cut at {}", cut);
    }

    /// Arbitrary bytes never panic, and are never taken for a value.
    #[test]
    fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let rt = runtime();
        let _ = sealed_key_id(&bytes);
        prop_assert!(rt.block_on(envelope().open(&bytes, b"aad")).is_err());
    }

    /// Bytes with a well-formed header and random contents: they get past
    /// the parser, so this drives the key lookup and unwrap paths.
    #[test]
    fn well_formed_headers_with_random_contents(
        key_id in "[a-z0-9-]{1,64}",
        wrapped in proptest::collection::vec(any::<u8>(), 0..80),
        rest in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let mut bytes = b"VE\x01".to_vec();
        bytes.push(key_id.len() as u8);
        bytes.extend_from_slice(key_id.as_bytes());
        bytes.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&wrapped);
        bytes.extend_from_slice(&rest);
        let parsed = sealed_key_id(&bytes);
        if rest.len() >= 28 {
            prop_assert_eq!(parsed.unwrap(), key_id.as_str());
        } else {
            prop_assert!(parsed.is_err());
        }
        prop_assert!(runtime().block_on(envelope().open(&bytes, b"aad")).is_err());
    }

    /// A key list that fails to parse says where, never what: no part of a
    /// key (valid or not) reaches the error message.
    #[test]
    fn key_file_errors_never_echo_key_material(
        keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 32), 1..4),
        junk in "[A-Za-z0-9+/=!]{6,60}",
        sep in prop_oneof![Just("\n"), Just(","), Just(" "), Just("\r\n")],
    ) {
        use base64::Engine as _;
        let encoded: Vec<String> = keys
            .iter()
            .map(|k| base64::engine::general_purpose::STANDARD.encode(k))
            .collect();
        let mut text = encoded.join(sep);
        text.push_str(sep);
        text.push_str(&junk);
        match LocalKeyProvider::from_base64("test keys", &text) {
            Ok(_) => {}
            Err(e) => {
                let msg = format!("{e} {e:?}");
                prop_assert!(!msg.contains(&junk), "{}", msg);
                for k in &encoded {
                    prop_assert!(!msg.contains(&k[..12]), "{}", msg);
                }
                prop_assert!(matches!(e, Error::InvalidKey(_)));
            }
        }
    }
}
