//! Property tests for the two parsers of the token manager: provider
//! answers (bytes from a third party, possibly hostile or broken) and store
//! bodies (bytes from an engine).

use proptest::prelude::*;
use serde_json::{Value, json};
use vault_token_manager::provider::{ProviderDefinition, ProviderError, read_refresh_answer};
use vault_token_manager::{StoreBody, describe_json_error};

/// A value that must never leave the parser except as a token.
const MARKER: &str = "zqmarker";

fn definitions() -> impl Strategy<Value = ProviderDefinition> {
    prop_oneof![
        Just(ProviderDefinition::generic(
            "acme",
            Some("http://127.0.0.1:1/token".into()),
            None
        )),
        Just(ProviderDefinition::builtin("slack").expect("built-in")),
        Just(ProviderDefinition::builtin("google").expect("built-in")),
        Just(ProviderDefinition::builtin("notion").expect("built-in")),
    ]
}

/// Arbitrary JSON, a few levels deep, with the marker among the strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::String),
        "[ -~]{0,20}".prop_map(|s| Value::String(format!("{MARKER}{s}"))),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like token answers and error answers, every field
/// sometimes missing, mistyped or carrying the marker.
fn answer_object() -> impl Strategy<Value = Value> {
    let field = |name: &'static str| {
        proptest::option::of(prop_oneof![
            json_value(),
            "[ -~]{1,40}".prop_map(move |s| Value::String(format!("{MARKER}-{name}-{s}"))),
        ])
    };
    (
        field("access_token"),
        field("refresh_token"),
        proptest::option::of(prop_oneof![
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[0-9 ]{0,22}".prop_map(Value::String),
            json_value(),
        ]),
        field("scope"),
        proptest::option::of(prop_oneof![
            Just(Value::String("invalid_grant".into())),
            Just(Value::String("invalid_client".into())),
            json_value()
        ]),
        proptest::option::of(any::<bool>()),
        field("error_description"),
    )
        .prop_map(|(at, rt, exp, scope, error, ok, desc)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("access_token", at),
                ("refresh_token", rt),
                ("expires_in", exp),
                ("scope", scope),
                ("error", error),
                ("ok", ok.map(Value::Bool)),
                ("error_description", desc),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        })
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(200u16),
        Just(400),
        Just(401),
        Just(429),
        Just(500),
        Just(503),
        100u16..1000
    ]
}

fn check_answer(
    def: &ProviderDefinition,
    status: u16,
    retry: Option<&str>,
    body: &[u8],
) -> Result<(), TestCaseError> {
    match read_refresh_answer(def, status, retry, body) {
        Ok(r) => {
            prop_assert!((200..300).contains(&status));
            prop_assert!(!r.access_token.expose().is_empty());
            // Whatever the answer held, the parsed tokens are its own.
            let json: Value = serde_json::from_slice(body).expect("accepted bodies are JSON");
            prop_assert_eq!(Some(r.access_token.expose()), json["access_token"].as_str());
            if let Some(rt) = &r.refresh_token {
                prop_assert_eq!(Some(rt.expose()), json["refresh_token"].as_str());
            }
            // Debug output of the tokens redacts them.
            let debug = format!("{:?} {:?}", r.access_token, r.refresh_token);
            prop_assert!(!debug.contains(MARKER), "{}", debug);
        }
        Err(e) => {
            let text = format!("{e} {e:?} {}", e.kind());
            prop_assert!(!text.contains(MARKER), "{}", text);
            if let ProviderError::RateLimited {
                retry_after: Some(d),
            } = e
            {
                prop_assert!(d.as_secs() <= 24 * 3600);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn provider_answers_shaped_like_tokens(def in definitions(), status in status(),
                                           retry in proptest::option::of("[ -~]{0,24}"),
                                           body in answer_object()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        check_answer(&def, status, retry.as_deref(), &bytes)?;
    }

    #[test]
    fn provider_answers_of_arbitrary_json(def in definitions(), status in status(),
                                          body in json_value()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        check_answer(&def, status, None, &bytes)?;
    }

    #[test]
    fn provider_answers_of_arbitrary_bytes(def in definitions(), status in status(),
                                           body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = MARKER.as_bytes().to_vec();
        bytes.extend_from_slice(&body);
        check_answer(&def, status, None, &bytes)?;
    }

    /// Store bodies: whatever the bytes, parsing, building the address and
    /// checking the fields either accept or give an error that names the
    /// problem without any of the caller's values.
    #[test]
    fn store_bodies(body in store_body()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        check_store_body(&bytes)?;
    }

    #[test]
    fn store_bodies_cut_short(body in store_body(), cut in any::<usize>()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        check_store_body(&bytes[..cut % (bytes.len() + 1)])?;
    }

    #[test]
    fn store_bodies_of_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_store_body(&bytes)?;
    }
}

fn store_body() -> impl Strategy<Value = Value> {
    let ident = prop_oneof![
        4 => "[A-Za-z0-9._:-]{1,20}".prop_map(Value::String),
        1 => "[ -~]{0,12}".prop_map(|s| Value::String(format!("{MARKER}{s}"))),
        1 => json_value(),
    ];
    let token = prop_oneof![
        4 => "[ -~]{1,40}".prop_map(|s| Value::String(format!("{MARKER}{s}"))),
        1 => "[\\x00-\\x1f ]{0,4}".prop_map(|s| Value::String(format!("{MARKER}{s}"))),
        1 => json_value(),
    ];
    let token_data = (
        token.clone(),
        proptest::option::of(token),
        proptest::option::of(prop_oneof![
            3 => (0u64..700_000_000).prop_map(Value::from),
            1 => any::<u64>().prop_map(Value::from),
            1 => json_value()
        ]),
        proptest::option::of(prop_oneof![
            3 => proptest::collection::vec("[a-z.:/]{1,12}".prop_map(Value::String), 0..5)
                .prop_map(Value::Array),
            1 => json_value()
        ]),
        proptest::option::of(prop_oneof![3 => Just(json!("Bearer")), 1 => json_value()]),
        proptest::option::weighted(0.1, json_value()),
    )
        .prop_map(|(at, rt, exp, scopes, tt, extra)| {
            let mut m = serde_json::Map::new();
            m.insert("access_token".into(), at);
            for (k, v) in [
                ("refresh_token", rt),
                ("expires_in", exp),
                ("scopes", scopes),
                ("token_type", tt),
                ("unexpected", extra),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        });
    (
        ident.clone(),
        ident.clone(),
        proptest::option::of(ident),
        token_data,
        proptest::option::weighted(
            0.3,
            prop_oneof![
                3 => proptest::collection::btree_map("[a-z_]{1,12}", json_value(), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                1 => json_value(),
            ],
        ),
    )
        .prop_map(|(project, platform, env, token_data, metadata)| {
            let mut m = serde_json::Map::new();
            m.insert("project_id".into(), project);
            m.insert("platform".into(), platform);
            if let Some(env) = env {
                m.insert("environment".into(), env);
            }
            m.insert("token_data".into(), token_data);
            if let Some(md) = metadata {
                m.insert("metadata".into(), md);
            }
            Value::Object(m)
        })
}

fn check_store_body(bytes: &[u8]) -> Result<(), TestCaseError> {
    let body = match serde_json::from_slice::<StoreBody>(bytes) {
        Ok(b) => b,
        Err(e) => {
            let what = describe_json_error(&e);
            prop_assert!(!what.contains(MARKER), "{}", what);
            return Ok(());
        }
    };
    let request = match body.into_request("production") {
        Ok(r) => r,
        Err(e) => {
            let text = format!("{e} {e:?}");
            prop_assert!(!text.contains(MARKER), "{}", text);
            return Ok(());
        }
    };
    match request.check() {
        Ok(()) => {
            // An accepted token is within the limits it was checked against.
            let t = request.token.access_token.expose();
            prop_assert!(!t.is_empty() && t.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        }
        Err(e) => {
            let text = format!("{e} {e:?}");
            prop_assert!(!text.contains(MARKER), "{}", text);
        }
    }
    // The parsed tokens, in debug form, show nothing of themselves.
    let t = &request.token;
    let debug = format!("{:?} {:?}", t.access_token, t.refresh_token);
    prop_assert!(!debug.contains(MARKER), "{}", debug);
    Ok(())
}

/// The generators reach both sides of each parser: a generator that only
/// ever produced rejected input would prove little.
#[test]
fn generators_reach_acceptance_and_rejection() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut stored, mut refused) = (0, 0);
    for _ in 0..500 {
        let body = store_body().new_tree(&mut runner).unwrap().current();
        let accepted = serde_json::from_value::<StoreBody>(body)
            .ok()
            .and_then(|b| b.into_request("production").ok())
            .is_some_and(|r| r.check().is_ok());
        if accepted { stored += 1 } else { refused += 1 }
    }
    let (mut refreshed, mut failed) = (0, 0);
    let def = ProviderDefinition::generic("acme", None, None);
    for _ in 0..500 {
        let body = answer_object().new_tree(&mut runner).unwrap().current();
        let bytes = serde_json::to_vec(&body).unwrap();
        match read_refresh_answer(&def, 200, None, &bytes) {
            Ok(_) => refreshed += 1,
            Err(_) => failed += 1,
        }
    }
    assert!(
        stored > 25 && refused > 25,
        "stored {stored}, refused {refused}"
    );
    assert!(
        refreshed > 25 && failed > 25,
        "refreshed {refreshed}, failed {failed}"
    );
}

/// `expires_in` is an integer in the sense of JSON Schema: `3600.0` counts,
/// `3600.5`, negative numbers and strings do not.
#[test]
fn expires_in_takes_whole_numbers_in_any_notation() {
    let parse = |v: &str| {
        let body = format!(
            r#"{{"project_id":"p","platform":"slack","token_data":{{"access_token":"a","expires_in":{v}}}}}"#
        );
        serde_json::from_str::<StoreBody>(&body).map(|b| b.token_data.expires_in)
    };
    assert_eq!(parse("3600").unwrap(), Some(3600));
    assert_eq!(parse("3600.0").unwrap(), Some(3600));
    assert_eq!(parse("3.6e3").unwrap(), Some(3600));
    assert_eq!(parse("null").unwrap(), None);
    for bad in ["3600.5", "-1", "-1.0", "\"3600\"", "1e40", "true"] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}
