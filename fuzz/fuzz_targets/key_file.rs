//! Key files and `VAULT_MASTER_KEY` values: refused with a message that
//! holds no key material, or accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_encryption_layer::LocalKeyProvider;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = LocalKeyProvider::from_base64("fuzz", text) {
        let msg = e.to_string();
        // Any base64 word of 8 characters or more in the input must not be
        // repeated by the message.
        for word in text.split(|c: char| c == ',' || c.is_whitespace()) {
            if word.len() >= 8 && !word.starts_with('#') {
                assert!(!msg.contains(word), "{msg}");
            }
        }
    }
});
