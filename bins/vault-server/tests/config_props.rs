//! Property tests for the configuration parser: any file, however broken,
//! gives a configuration or a clear error (never a panic), an accepted one
//! survives its own `config show`, and no error or shown configuration ever
//! contains the database password.

use proptest::prelude::*;
use vault_server::config::Config;

/// The password of the database URL: the one secret a configuration file
/// may hold.
const PASSWORD: &str = "zqpassword";
/// A password in a URL under some other key, where it does not belong:
/// shown back when the key accepts any string, but never in an error.
const STRAY: &str = "zqstray";

/// Keys the configuration knows, by section.
const KEYS: &[(&str, &str)] = &[
    ("", "data_dir"),
    ("server", "bind"),
    ("server", "workers"),
    ("storage", "backend"),
    ("storage", "path"),
    ("storage", "pool_size"),
    ("storage", "tls_ca_file"),
    ("keys", "provider"),
    ("keys", "create_if_missing"),
    ("keys", "env_var"),
    ("vault", "default_environment"),
    ("access", "resolver"),
    ("access", "engine_reload_secs"),
    ("access", "max_failures"),
    ("access", "lockout_secs"),
    ("access", "engine_rate_per_sec"),
    ("access", "engine_burst"),
    ("access.ecc", "url"),
    ("access.ecc", "timeout_ms"),
    ("audit", "retention_days"),
    ("audit", "prune_interval_secs"),
    ("audit.forward", "url"),
    ("audit.forward", "batch"),
    ("log", "format"),
    ("log", "level"),
    ("providers.acme", "kind"),
    ("providers.acme", "token_url"),
    ("providers.acme", "client_id"),
    ("providers.acme", "client_secret_env"),
    ("providers.acme", "scope_separator"),
    ("providers.slack", "client_id"),
    ("refresh", "interval_ms"),
    ("refresh", "concurrency"),
    ("refresh", "margin_ratio"),
    ("refresh", "http_timeout_secs"),
    ("refresh", "lease_secs"),
    ("notifications", "url"),
    ("notifications", "secret_env"),
];

/// TOML values of every type, biased towards ones the keys expect, with the
/// password inside URLs.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0.0f64..2.0).prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("\"sqlite\"".to_owned()),
        Just("\"postgres\"".to_owned()),
        Just("\"local\"".to_owned()),
        Just("\"json\"".to_owned()),
        Just("\"127.0.0.1:0\"".to_owned()),
        Just("\"http://127.0.0.1:1/x\"".to_owned()),
        "[a-z0-9 ._:/-]{0,16}".prop_map(|s| format!("{s:?}")),
        database_url(STRAY),
    ]
}

/// Connection strings, well-formed or not, and of the wrong type.
fn database_url(password: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}".prop_map(move |h| format!(
            "\"postgres://vault:{password}@{h}:5432/vault?sslmode=require\""
        )),
        "[a-z]{1,8}".prop_map(move |h| format!("\"postgres://vault:{password}@{h}:99999/vault\"")),
        Just(format!("\"postgres://vault:{password}@[::1/vault\"")),
        Just(format!("\"postgres://vault:{password}/x@h/vault\"")),
        Just(format!("\"host=h user=vault password={password}\"")),
        Just(format!("[\"postgres://vault:{password}@h/vault\"]")),
        Just(format!(
            "{{ url = \"postgres://vault:{password}@h/vault\" }}"
        )),
    ]
}

fn config_text() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec((0..KEYS.len(), value()), 0..12),
        proptest::option::of(database_url(PASSWORD)),
    )
        .prop_map(|(entries, url)| {
            let mut sections: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
            if let Some(url) = url {
                sections
                    .entry("storage")
                    .or_default()
                    .push(format!("url = {url}"));
            }
            for (k, v) in entries {
                let (section, key) = KEYS[k];
                let lines = sections.entry(section).or_default();
                let line = format!("{key} = {v}");
                if !lines.iter().any(|l| l.starts_with(&format!("{key} ="))) {
                    lines.push(line);
                }
            }
            let mut text = String::new();
            for (section, lines) in sections {
                if !section.is_empty() {
                    text.push_str(&format!("[{section}]\n"));
                }
                for l in lines {
                    text.push_str(&l);
                    text.push('\n');
                }
            }
            text
        })
}

fn check(text: &str) -> Result<(), TestCaseError> {
    match Config::from_toml(text) {
        Ok(config) => {
            let shown = config
                .effective_toml()
                .expect("an accepted config can be shown");
            prop_assert!(!shown.contains(PASSWORD), "{}", shown);
            let again = Config::from_toml(&shown);
            prop_assert!(
                again.is_ok(),
                "shown config refused: {:?}\n{}",
                again.err(),
                shown
            );
            if !text.contains("zq") {
                // Without a redacted password, showing is lossless.
                let again = again
                    .expect("checked")
                    .effective_toml()
                    .expect("shown again");
                prop_assert_eq!(again, shown);
            }
        }
        Err(e) => {
            let msg = format!("{e} {e:?}");
            prop_assert!(!msg.contains(PASSWORD) && !msg.contains(STRAY), "{}", msg);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn generated_configurations(text in config_text()) {
        check(&text)?;
    }

    #[test]
    fn arbitrary_text(text in "[\\[\\]a-z_=\"'.#\n 0-9{},\\\\]{0,200}") {
        check(&text)?;
    }

    #[test]
    fn generated_configurations_cut_short(text in config_text(), cut in any::<usize>()) {
        let cut = cut % (text.len() + 1);
        // Generated text is ASCII: every cut is a character boundary.
        check(&text[..cut])?;
    }
}

/// The generator reaches both accepted and refused configurations.
#[test]
fn generator_reaches_both_outcomes() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..300 {
        let text = config_text().new_tree(&mut runner).unwrap().current();
        if Config::from_toml(&text).is_ok() {
            ok += 1;
        } else {
            refused += 1;
        }
    }
    assert!(ok > 15 && refused > 15, "accepted {ok}, refused {refused}");
}
