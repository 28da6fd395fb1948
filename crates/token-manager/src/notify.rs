//! Notifications to the Integration Manager: payloads and signatures.
//!
//! When a secret becomes `reauth_required` (the user must reconnect) and
//! when it recovers, the vault POSTs a JSON body to a configured URL. The
//! body never carries a token. Each delivery is signed:
//!
//! ```text
//! X-Vault-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! The receiver recomputes the HMAC over the timestamp and the raw body,
//! compares in constant time, and rejects old timestamps to stop replays.
//! Each payload has a stable `id` for de-duplication: delivery is at least
//! once.

use time::OffsetDateTime;
use vault_types::SecretAddress;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Vault-Signature";

/// Signs `body` sent at `timestamp` (unix seconds); the header value.
pub fn sign_webhook(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut signed = timestamp.to_string().into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(body);
    let mac = vault_encryption_layer::hmac_sha256(secret, &signed);
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// What a notification announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The provider rejected the grant; the user must reconnect.
    ReauthRequired,
    /// A new token was stored for a secret that needed re-authorization.
    Recovered,
}

/// The JSON body of a notification.
pub(crate) fn payload(
    event: Event,
    address: &SecretAddress,
    at: OffsetDateTime,
    reason: Option<&str>,
) -> String {
    let id = vault_encryption_layer::random_u64()
        .map(|r| format!("{r:016x}{:016x}", at.unix_timestamp_nanos() as u64))
        .unwrap_or_else(|_| format!("{:032x}", at.unix_timestamp_nanos()));
    serde_json::json!({
        "id": id,
        "type": match event {
            Event::ReauthRequired => "secret.reauth_required",
            Event::Recovered => "secret.recovered",
        },
        "environment": address.environment(),
        "project": address.project(),
        "platform": address.platform(),
        "at": at.unix_timestamp(),
        "reason": reason,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_timestamp_and_body() {
        let a = sign_webhook(b"k", 1_700_000_000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_eq!(a.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(a, sign_webhook(b"k", 1_700_000_001, b"{}"));
        assert_ne!(a, sign_webhook(b"k", 1_700_000_000, b"{ }"));
        assert_ne!(a, sign_webhook(b"other", 1_700_000_000, b"{}"));
    }

    #[test]
    fn payload_names_the_secret_and_event_only() {
        let addr = SecretAddress::new("prod", "pf_1", "slack").unwrap();
        let p = payload(
            Event::ReauthRequired,
            &addr,
            time::macros::datetime!(2026-01-01 0:00 UTC),
            Some("invalid_grant"),
        );
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["type"], "secret.reauth_required");
        assert_eq!(v["platform"], "slack");
        assert_eq!(v["reason"], "invalid_grant");
        assert_eq!(v["id"].as_str().unwrap().len(), 32);
    }
}
