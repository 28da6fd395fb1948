//! `POST /vault/store` bodies (and `vault-server import` lines): parsed,
//! turned into an address and checked, or refused with a description that
//! repeats none of the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_token_manager::{StoreBody, describe_json_error};

fuzz_target!(|data: &[u8]| {
    let body = match serde_json::from_slice::<StoreBody>(data) {
        Ok(body) => body,
        Err(e) => {
            let what = describe_json_error(&e);
            assert!(
                what == "not valid JSON"
                    || what == "an unknown field"
                    || what == "not the expected shape"
                    || what.starts_with("missing field `"),
                "{what}"
            );
            return;
        }
    };
    let Ok(request) = body.into_request("production") else {
        return;
    };
    if request.check().is_ok() {
        let token = request.token.access_token.expose();
        assert!(!token.is_empty() && token.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        assert!(!format!("{:?}", request.token.access_token).contains(token));
    }
});
