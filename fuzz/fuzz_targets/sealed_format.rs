//! Sealed values as read back from a database someone may have written to:
//! the parser must refuse anything it did not produce, without panicking.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vault_encryption_layer::{Envelope, LocalKeyProvider, sealed_key_id};

fn envelope() -> &'static (Envelope, tokio::runtime::Runtime) {
    static ENV: OnceLock<(Envelope, tokio::runtime::Runtime)> = OnceLock::new();
    ENV.get_or_init(|| {
        let keys = LocalKeyProvider::from_bytes(&[7u8; 32]).expect("a 32-byte key");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        (Envelope::new(Arc::new(keys)), rt)
    })
}

fuzz_target!(|data: &[u8]| {
    let (env, rt) = envelope();
    let _ = sealed_key_id(data);
    // Nothing but a value sealed under this key and AAD opens.
    assert!(rt.block_on(env.open(data, b"fuzz")).is_err());
    // And whatever the bytes, sealing them round-trips.
    let sealed = rt.block_on(env.seal(data, b"fuzz")).expect("seal");
    let opened = rt.block_on(env.open(&sealed, b"fuzz")).expect("open");
    assert_eq!(opened.as_slice(), data);
});
