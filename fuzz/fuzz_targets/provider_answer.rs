//! Provider answers to refresh requests: a status, a `Retry-After` header
//! and a body, from a party the vault does not control. The parser returns
//! tokens taken from the body or an error that carries none of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_token_manager::provider::{ProviderDefinition, read_refresh_answer};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = 100 + u16::from_be_bytes([data[0], data[1]]) % 500;
    let def = match data[2] % 3 {
        0 => ProviderDefinition::generic("acme", None, None),
        1 => ProviderDefinition::builtin("slack").expect("built-in"),
        _ => ProviderDefinition::builtin("notion").expect("built-in"),
    };
    let body = &data[3..];
    let retry = std::str::from_utf8(body).ok();
    match read_refresh_answer(&def, status, retry, body) {
        Ok(r) => {
            assert!((200..300).contains(&status));
            let json: serde_json::Value = serde_json::from_slice(body).expect("accepted JSON");
            assert_eq!(json["access_token"].as_str(), Some(r.access_token.expose()));
        }
        Err(e) => {
            // The only text an error carries is a short identifier-like code.
            let text = e.to_string();
            let code = text.split(['(', ')']).nth(1).unwrap_or_default();
            assert!(code.len() <= 64, "{text}");
            assert!(
                code.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
        }
    }
});
