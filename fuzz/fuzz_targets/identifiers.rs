//! Identifiers from paths and bodies: the accepted set is exactly
//! `[A-Za-z0-9._:-]{1,128}`, and errors are fixed messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_types::{MAX_IDENTIFIER_LEN, SecretAddress, validate_identifier};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let model = !text.is_empty()
        && text.len() <= MAX_IDENTIFIER_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    match validate_identifier("project", text) {
        Ok(()) => assert!(model),
        Err(e) => {
            assert!(!model);
            // One of three fixed messages: nothing of the value in any.
            let msg = e.to_string();
            assert!(
                [
                    "project must not be empty",
                    "project must be at most 128 characters",
                    "project may only contain letters, digits and . _ : -",
                ]
                .contains(&msg.as_str()),
                "{msg}"
            );
        }
    }
    let mut parts = text.splitn(3, '/');
    let (a, b, c) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if let Ok(address) = SecretAddress::new(a, b, c) {
        assert_eq!(address.platform(), c.to_ascii_lowercase());
        assert!(address.aad(0).starts_with(b"vault-secret-v1\0"));
    }
});
