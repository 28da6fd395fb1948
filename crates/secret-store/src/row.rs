//! Decoding of stored rows, shared by both backends: each reads its
//! columns, this turns them into the crate's types.

use std::time::Duration;

use time::OffsetDateTime;
use vault_types::SecretAddress;

use crate::chain::from_ms;
use crate::{Error, RefreshState, Result, SecretMeta, SecretStatus, StoredSecret};

/// A stored count or version, which must not be negative.
pub(crate) fn u64_of(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("{what} {v} is negative")))
}

/// A version as stored.
pub(crate) fn i64_of(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Invalid("version out of range"))
}

/// An optional stored time.
pub(crate) fn opt_ms(v: Option<i64>) -> Result<Option<OffsetDateTime>> {
    v.map(from_ms).transpose()
}

/// A lease length in milliseconds, as stored.
pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// The columns of a secret row as read, in the order both backends select
/// them (version, sealed, key_id, status, valid_until_ms, scopes,
/// has_refresh_token, token_type, metadata, created_at_ms, updated_at_ms,
/// refresh_due_ms, last_refresh_at_ms, last_error, failure_count,
/// next_attempt_at_ms).
pub(crate) struct SecretRow {
    pub(crate) version: i64,
    pub(crate) sealed: Vec<u8>,
    pub(crate) key_id: String,
    pub(crate) status: String,
    pub(crate) valid_until: Option<i64>,
    pub(crate) scopes: String,
    pub(crate) has_refresh_token: bool,
    pub(crate) token_type: String,
    pub(crate) metadata: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) refresh_due: Option<i64>,
    pub(crate) last_refresh_at: Option<i64>,
    pub(crate) last_error: Option<String>,
    pub(crate) failure_count: i64,
    pub(crate) next_attempt_at: Option<i64>,
}

impl SecretRow {
    /// The secret at `address`; a column that does not decode is
    /// [`Error::Corrupt`], never a panic.
    pub(crate) fn decode(self, address: &SecretAddress) -> Result<StoredSecret> {
        let status = SecretStatus::parse(&self.status)
            .ok_or_else(|| Error::Corrupt(format!("unknown status {:?}", self.status)))?;
        let scopes: Vec<String> = serde_json::from_str(&self.scopes)
            .map_err(|_| Error::Corrupt("scopes column is not a JSON array".into()))?;
        let metadata = self
            .metadata
            .map(|m| serde_json::from_str(&m))
            .transpose()
            .map_err(|_| Error::Corrupt("metadata column is not a JSON object".into()))?;
        let failures = self.failure_count;
        Ok(StoredSecret {
            address: address.clone(),
            version: u64_of(self.version, "version")?,
            sealed: self.sealed,
            key_id: self.key_id,
            meta: SecretMeta {
                status,
                valid_until: opt_ms(self.valid_until)?,
                scopes,
                has_refresh_token: self.has_refresh_token,
                token_type: self.token_type,
                metadata,
                refresh: RefreshState {
                    refresh_due: opt_ms(self.refresh_due)?,
                    last_refresh_at: opt_ms(self.last_refresh_at)?,
                    last_error: self.last_error,
                    failure_count: u32::try_from(failures).map_err(|_| {
                        Error::Corrupt(format!("failure count {failures} out of range"))
                    })?,
                    next_attempt_at: opt_ms(self.next_attempt_at)?,
                },
            },
            created_at: from_ms(self.created_at)?,
            updated_at: from_ms(self.updated_at)?,
        })
    }
}
