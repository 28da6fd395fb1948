//! Configuration files: loaded and validated, or refused; an accepted one
//! survives its own `config show`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_server::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml(text) {
        let shown = config.effective_toml().expect("shown");
        if !text.contains("://") && !text.contains("password") {
            let again = Config::from_toml(&shown).expect("shown config loads");
            assert_eq!(again.effective_toml().expect("shown again"), shown);
        }
    }
});
