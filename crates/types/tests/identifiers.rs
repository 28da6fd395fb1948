//! Property tests for identifiers and addresses: the first parser every
//! request meets, fed from paths and bodies the caller controls.

use proptest::prelude::*;
use vault_types::{MAX_IDENTIFIER_LEN, SecretAddress, validate_identifier};

/// The rule, written independently of the implementation.
fn model_accepts(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IDENTIFIER_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn identifier() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,128}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn accepts_exactly_the_grammar(s in any::<String>()) {
        prop_assert_eq!(validate_identifier("project", &s).is_ok(), model_accepts(&s));
    }

    /// Mostly-valid strings with the odd space, slash, NUL, `%`, non-ASCII
    /// letter or length past the limit: where bugs in such rules live.
    #[test]
    fn accepts_exactly_the_grammar_near_its_edges(s in "[A-Za-z0-9._:\\- /%\\x00é]{0,140}") {
        prop_assert_eq!(validate_identifier("platform", &s).is_ok(), model_accepts(&s));
    }

    /// Rejections name the field and the rule, never the value.
    #[test]
    fn rejections_never_echo_the_value(s in "zq[a-z]{2,8}[^A-Za-z0-9._:-][a-z]{0,200}") {
        let err = validate_identifier("environment", &s).unwrap_err();
        let text = format!("{err} {err:?}");
        prop_assert!(!text.contains(&s));
        prop_assert!(!text.contains(&s[..4]));
        prop_assert!(text.contains("environment"));
    }

    /// Valid parts make an address whose platform is lower-cased and whose
    /// AAD differs from that of any other address or version.
    #[test]
    fn addresses_and_their_aad(
        a in (identifier(), identifier(), identifier(), any::<u64>()),
        b in (identifier(), identifier(), identifier(), any::<u64>()),
    ) {
        let x = SecretAddress::new(&a.0, &a.1, &a.2).unwrap();
        let y = SecretAddress::new(&b.0, &b.1, &b.2).unwrap();
        prop_assert_eq!(x.platform(), a.2.to_ascii_lowercase());
        prop_assert_eq!(x.environment(), a.0.as_str());
        prop_assert_eq!(x.project(), a.1.as_str());
        let same = x == y && a.3 == b.3;
        prop_assert_eq!(x.aad(a.3) == y.aad(b.3), same);
    }

    /// Splitting the same characters differently between the parts never
    /// yields the same AAD (the separators keep them apart).
    #[test]
    fn aad_keeps_parts_apart(s in "[a-z0-9]{3,60}", i in 1usize..100, j in 1usize..100) {
        let (i, j) = (i % (s.len() - 1) + 1, j % (s.len() - 1) + 1);
        prop_assume!(i != j);
        let x = SecretAddress::new("production", &s[..i], &s[i..]).unwrap();
        let y = SecretAddress::new("production", &s[..j], &s[j..]).unwrap();
        prop_assert_ne!(x.aad(1), y.aad(1));
    }
}
