//! Secret addresses and identifier validation.

use std::fmt;

/// Longest identifier accepted, in bytes (all accepted characters are ASCII).
pub const MAX_IDENTIFIER_LEN: usize = 128;

/// Why an identifier was rejected.
///
/// The message names the field and the rule, never echoes the rejected value
/// (it came from the caller and may be arbitrary bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    /// The identifier was empty.
    #[error("{field} must not be empty")]
    Empty {
        /// Which identifier (`environment`, `project`, `platform`, `engine_id`).
        field: &'static str,
    },
    /// The identifier was longer than [`MAX_IDENTIFIER_LEN`].
    #[error("{field} must be at most 128 characters")]
    TooLong {
        /// Which identifier.
        field: &'static str,
    },
    /// The identifier held a character outside `[A-Za-z0-9._:-]`.
    #[error("{field} may only contain letters, digits and . _ : -")]
    InvalidCharacter {
        /// Which identifier.
        field: &'static str,
    },
}

/// Checks that `value` is 1–128 characters of `[A-Za-z0-9._:-]`.
///
/// `field` names the identifier in the error message.
pub fn validate_identifier(field: &'static str, value: &str) -> Result<(), IdentifierError> {
    if value.is_empty() {
        return Err(IdentifierError::Empty { field });
    }
    if value.len() > MAX_IDENTIFIER_LEN {
        return Err(IdentifierError::TooLong { field });
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    if !value.bytes().all(allowed) {
        return Err(IdentifierError::InvalidCharacter { field });
    }
    Ok(())
}

/// Where a secret lives: environment, project and platform.
///
/// Construction validates all three parts and lower-cases the platform, so
/// `Slack` and `slack` are the same address. Environment and project keep
/// their case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretAddress {
    environment: String,
    project: String,
    platform: String,
}

impl SecretAddress {
    /// Validates and builds an address.
    pub fn new(environment: &str, project: &str, platform: &str) -> Result<Self, IdentifierError> {
        validate_identifier("environment", environment)?;
        validate_identifier("project", project)?;
        validate_identifier("platform", platform)?;
        Ok(Self {
            environment: environment.to_owned(),
            project: project.to_owned(),
            platform: platform.to_ascii_lowercase(),
        })
    }

    /// The environment, e.g. `prod`.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// The project, e.g. `pf_203`.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The platform, lower case, e.g. `slack`.
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// The bytes that bind a sealed secret to this address and a version.
    ///
    /// Layout: `"vault-secret-v1" 0x00 environment 0x00 project 0x00
    /// platform 0x00 version(u64, big endian)`. Identifiers cannot contain
    /// `0x00`, so the encoding is unambiguous.
    pub fn aad(&self, version: u64) -> Vec<u8> {
        let mut aad = Vec::with_capacity(
            16 + self.environment.len() + self.project.len() + self.platform.len() + 11,
        );
        aad.extend_from_slice(b"vault-secret-v1\0");
        for part in [&self.environment, &self.project, &self.platform] {
            aad.extend_from_slice(part.as_bytes());
            aad.push(0);
        }
        aad.extend_from_slice(&version.to_be_bytes());
        aad
    }
}

impl fmt::Display for SecretAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.environment, self.project, self.platform)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_is_lower_cased_and_others_keep_case() {
        let a = SecretAddress::new("Prod", "PF_203", "SLACK").unwrap();
        assert_eq!(a.environment(), "Prod");
        assert_eq!(a.project(), "PF_203");
        assert_eq!(a.platform(), "slack");
        assert_eq!(a, SecretAddress::new("Prod", "PF_203", "slack").unwrap());
    }

    #[test]
    fn identifiers_are_validated() {
        assert!(validate_identifier("project", "a.b_c:d-E9").is_ok());
        assert!(validate_identifier("project", &"x".repeat(128)).is_ok());
        assert_eq!(
            validate_identifier("project", ""),
            Err(IdentifierError::Empty { field: "project" })
        );
        assert_eq!(
            validate_identifier("project", &"x".repeat(129)),
            Err(IdentifierError::TooLong { field: "project" })
        );
        for bad in ["a/b", "a b", "é", "a\0b", "..%2f", "a\nb"] {
            assert_eq!(
                validate_identifier("platform", bad),
                Err(IdentifierError::InvalidCharacter { field: "platform" }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn error_message_does_not_echo_the_value() {
        let err = SecretAddress::new("prod", "secret-looking value!", "slack").unwrap_err();
        assert!(!err.to_string().contains("secret-looking"));
    }

    #[test]
    fn aad_differs_by_every_part() {
        let a = SecretAddress::new("prod", "p", "slack").unwrap();
        let b = SecretAddress::new("prod", "p", "notion").unwrap();
        let c = SecretAddress::new("dev", "p", "slack").unwrap();
        assert_ne!(a.aad(1), a.aad(2));
        assert_ne!(a.aad(1), b.aad(1));
        assert_ne!(a.aad(1), c.aad(1));
        // "ab"/"c" and "a"/"bc" must not collide.
        let d = SecretAddress::new("ab", "c", "x").unwrap();
        let e = SecretAddress::new("a", "bc", "x").unwrap();
        assert_ne!(d.aad(1), e.aad(1));
    }
}
