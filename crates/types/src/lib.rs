//! The shared vocabulary of Vault Engine.
//!
//! Every layer of the vault speaks of the same few things: where a secret
//! lives ([`SecretAddress`]), what went wrong in terms a caller can act on
//! ([`ErrorKind`]), secret text that must never be printed ([`Secret`]) and
//! the current time ([`Clock`], injected so that tests move expiry without
//! sleeping). They live here so that no layer has to import another layer
//! just to name them.
//!
//! ```
//! use vault_types::SecretAddress;
//!
//! let addr = SecretAddress::new("prod", "pf_203", "Slack")?;
//! assert_eq!(addr.platform(), "slack"); // platforms are case-insensitive
//! assert_eq!(addr.to_string(), "prod/pf_203/slack");
//! # Ok::<(), vault_types::IdentifierError>(())
//! ```

mod address;
mod clock;
mod error;
pub mod metrics;
mod secret;

pub use address::{IdentifierError, MAX_IDENTIFIER_LEN, SecretAddress, validate_identifier};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::ErrorKind;
pub use secret::Secret;
