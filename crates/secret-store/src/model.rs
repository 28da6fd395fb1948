//! What the store keeps.

use std::fmt;

use time::OffsetDateTime;
use vault_types::SecretAddress;

/// The life-cycle state of a stored secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretStatus {
    /// Usable (or refreshable) as far as the vault knows.
    Active,
    /// Recent refreshes failed for a reason that may pass.
    RefreshFailing,
    /// The provider rejected the grant: the user must reconnect.
    ReauthRequired,
}

impl SecretStatus {
    /// The stable lower-case name, as stored and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::RefreshFailing => "refresh_failing",
            Self::ReauthRequired => "reauth_required",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "refresh_failing" => Self::RefreshFailing,
            "reauth_required" => Self::ReauthRequired,
            _ => return None,
        })
    }
}

impl fmt::Display for SecretStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Non-secret facts about a stored secret, kept in clear for listing and
/// indexing. The authoritative copies of expiry and scopes also travel
/// inside the sealed value.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretMeta {
    /// Life-cycle state.
    pub status: SecretStatus,
    /// When the access token stops working; `None`: it does not expire.
    pub valid_until: Option<OffsetDateTime>,
    /// Scopes granted to the token.
    pub scopes: Vec<String>,
    /// Whether a refresh token is stored with it.
    pub has_refresh_token: bool,
    /// Token type, e.g. `Bearer`.
    pub token_type: String,
    /// Free-form non-secret facts (e.g. a Slack team id), a JSON object.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Refresh bookkeeping.
    pub refresh: RefreshState,
}

/// Refresh bookkeeping of a stored secret (no secret in it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshState {
    /// When the background refresher should refresh it; `None`: never
    /// (no expiry, no refresh token, or no provider that can refresh).
    pub refresh_due: Option<OffsetDateTime>,
    /// When it was last refreshed successfully.
    pub last_refresh_at: Option<OffsetDateTime>,
    /// Kind of the last refresh failure (e.g. `timeout`, `invalid_grant`).
    pub last_error: Option<String>,
    /// Refresh failures since the last success.
    pub failure_count: u32,
    /// No refresh is attempted before this time (backoff after failures).
    pub next_attempt_at: Option<OffsetDateTime>,
}

/// What [`SecretStore::acquire_refresh_lease`](crate::SecretStore::acquire_refresh_lease)
/// found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The caller holds the lease now (it was free, had expired, or was
    /// the caller's already).
    Acquired,
    /// Another holder's lease has not expired: someone else is refreshing.
    Held,
    /// No secret at that address.
    Missing,
}

/// A notification to deliver (to the Integration Manager's webhook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    /// The JSON body to send; never holds a token.
    pub payload: String,
}

/// A notification waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingNotification {
    /// Stable id, also in the payload, so the receiver can deduplicate.
    pub id: i64,
    /// The JSON body.
    pub payload: String,
    /// Delivery attempts so far.
    pub attempts: u32,
}

/// A new version of a secret, sealed.
#[derive(Debug, Clone)]
pub struct SecretWrite {
    /// Where it goes.
    pub address: SecretAddress,
    /// Its version number: one more than the version it replaces, or 1.
    pub version: u64,
    /// The sealed value (opaque to the store).
    pub sealed: Vec<u8>,
    /// Id of the master key the value is sealed under.
    pub key_id: String,
    /// Non-secret metadata.
    pub meta: SecretMeta,
    /// When it was written.
    pub at: OffsetDateTime,
}

/// A secret as stored.
#[derive(Debug, Clone)]
pub struct StoredSecret {
    /// Where it lives.
    pub address: SecretAddress,
    /// Current version, starting at 1 and bumped by every replacement.
    pub version: u64,
    /// The sealed value.
    pub sealed: Vec<u8>,
    /// Id of the master key the value is sealed under.
    pub key_id: String,
    /// Non-secret metadata.
    pub meta: SecretMeta,
    /// When the first version at this address was stored.
    pub created_at: OffsetDateTime,
    /// When the current version was stored.
    pub updated_at: OffsetDateTime,
}

/// What a usage record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// `POST /vault/store`.
    Store,
    /// `GET /vault/token`.
    Read,
    /// `DELETE /vault/delete`.
    Delete,
    /// A refresh at the provider (on demand, forced or in the background).
    Refresh,
    /// A revocation at the provider.
    Revoke,
    /// `GET /vault/status`: metadata only.
    Status,
    /// An administrative request (usage log, engine management).
    Admin,
}

impl AuditAction {
    /// The stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Read => "read",
            Self::Delete => "delete",
            Self::Refresh => "refresh",
            Self::Revoke => "revoke",
            Self::Status => "status",
            Self::Admin => "admin",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "store" => Self::Store,
            "read" => Self::Read,
            "delete" => Self::Delete,
            "refresh" => Self::Refresh,
            "revoke" => Self::Revoke,
            "status" => Self::Status,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
}

/// How the request a usage record describes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    /// Served.
    Success,
    /// Refused: unauthenticated or not allowed.
    Denied,
    /// Nothing at the address.
    NotFound,
    /// Failed for another reason (the detail says which).
    Failed,
}

impl AuditOutcome {
    /// The stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::NotFound => "not_found",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "success" => Self::Success,
            "denied" => Self::Denied,
            "not_found" => Self::NotFound,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// One entry of the usage log. Never holds a token or other secret.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// When it happened.
    pub at: OffsetDateTime,
    /// The request it belongs to.
    pub request_id: String,
    /// The calling engine, when it could be identified.
    pub engine_id: Option<String>,
    /// What was asked.
    pub action: AuditAction,
    /// The environment, when known.
    pub environment: Option<String>,
    /// The project, when known.
    pub project: Option<String>,
    /// The platform, when known.
    pub platform: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// A stable error code or other short non-secret detail.
    pub detail: Option<String>,
}

/// An engine managed with `vault-server engine …`: its token is kept only
/// as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineRecord {
    /// Engine id.
    pub id: String,
    /// Hex SHA-256 of its bearer token.
    pub token_sha256: String,
    /// Grants in the compact text form.
    pub grants: Vec<String>,
    /// When it was added.
    pub created_at: OffsetDateTime,
    /// When its token or grants last changed.
    pub updated_at: OffsetDateTime,
    /// When it was revoked; revoked engines cannot authenticate.
    pub revoked_at: Option<OffsetDateTime>,
}

/// Computes the MAC that chains usage records:
/// `mac_n = MAC_v(mac_{n-1} || canonical(record_n))`, with a key only the
/// vault holds. Implemented by the layer that owns the keys; the store only
/// calls it.
///
/// Keys have versions: new records, anchors and cursors are made with the
/// current one, and each names its version, so the chain stays verifiable
/// across a rotation of the usage-log key while the old versions are kept.
pub trait AuditMac: std::fmt::Debug + Send + Sync + 'static {
    /// The 32-byte MAC of `data` with the current key.
    fn mac(&self, data: &[u8]) -> [u8; 32];

    /// The current key's version (1 for a key that never rotated).
    fn version(&self) -> u32 {
        1
    }

    /// The MAC of `data` with key `version`, if that version is known.
    fn mac_with(&self, version: u32, data: &[u8]) -> Option<[u8; 32]> {
        (version == self.version()).then(|| self.mac(data))
    }

    /// Whether [`AuditMac::mac_with`] knows key `version`. The default asks
    /// it for a MAC; implementations that can tell without one should.
    fn knows(&self, version: u32) -> bool {
        self.mac_with(version, &[]).is_some()
    }
}

/// A version of the usage-log key, sealed under a master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditKeyRecord {
    /// Its version, from 1.
    pub version: u32,
    /// The key, sealed (opaque to the store).
    pub sealed: Vec<u8>,
    /// The master key it is sealed under.
    pub key_id: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

/// How many stored values are sealed under one master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// The master key id.
    pub key_id: String,
    /// Secrets sealed under it.
    pub secrets: u64,
    /// Usage-log key versions sealed under it.
    pub audit_keys: u64,
}

/// A secret whose value is to be rewrapped under another master key.
#[derive(Debug, Clone)]
pub struct RewrapItem {
    /// Where it is.
    pub address: SecretAddress,
    /// Its current version; the rewrap is skipped if it changed meanwhile.
    pub version: u64,
    /// Its sealed value now.
    pub sealed: Vec<u8>,
}

/// A rewrapped secret to write back.
#[derive(Debug, Clone)]
pub struct Rewrapped {
    /// What was read (address, version and the sealed value replaced).
    pub item: RewrapItem,
    /// The value sealed under the new master key.
    pub sealed: Vec<u8>,
    /// The new master key id.
    pub key_id: String,
}

/// What `verify_audit` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    /// Records in the log.
    pub records: u64,
    /// Records whose MAC verified.
    pub verified: u64,
    /// Records written before the chain began (no MAC to check).
    pub unchained: u64,
    /// Sequence number of the last record that verified.
    pub last_verified_seq: Option<i64>,
    /// Records up to this sequence number were pruned by retention; the
    /// chain was verified from the signed checkpoint they left.
    pub pruned_through: Option<i64>,
    /// The first break in the chain, if any.
    pub problem: Option<AuditProblem>,
}

/// A break in the usage-log chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditProblem {
    /// The record at `seq` was changed (its content no longer matches its MAC).
    Changed {
        /// Sequence number.
        seq: i64,
    },
    /// Records are missing before `seq` (the sequence jumps).
    Removed {
        /// The first sequence number after the gap.
        seq: i64,
    },
    /// The record at `seq` was not written by the vault.
    Inserted {
        /// Sequence number.
        seq: i64,
    },
    /// The checkpoint left by pruning at `seq` is not the vault's.
    Checkpoint {
        /// Sequence number of the last pruned record.
        seq: i64,
    },
    /// A signed anchor of the chain (its start or its head) is not the
    /// vault's.
    Anchor {
        /// The sequence number the anchor names.
        seq: i64,
    },
    /// The log has records but no anchors: the chain's marks were removed.
    Unanchored,
}

/// A usage record as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Position in the log (1, 2, …); also the record's stable id.
    pub seq: i64,
    /// The record.
    pub record: AuditRecord,
    /// Its chain MAC (absent for records written before the chain began).
    pub mac: Option<Vec<u8>>,
}

/// Filters of a usage-log query; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this environment.
    pub environment: Option<String>,
    /// Only this project.
    pub project: Option<String>,
    /// Only this platform.
    pub platform: Option<String>,
    /// Only this engine.
    pub engine_id: Option<String>,
    /// Only this action.
    pub action: Option<AuditAction>,
    /// At or after this time.
    pub since: Option<OffsetDateTime>,
    /// Before this time.
    pub until: Option<OffsetDateTime>,
    /// Only records older than this sequence number (the page cursor).
    pub before_seq: Option<i64>,
    /// Most records returned.
    pub limit: u32,
    /// Most records examined, newest first from the cursor (`None`: no
    /// bound). The log has no index on its filters (each index would cost
    /// every token read an insert), so a filter matching little would
    /// otherwise walk the whole log; with a bound a page may come back
    /// short, and [`AuditPage::next_before`] says where to go on.
    pub scan: Option<u32>,
}

/// One page of a usage-log query.
#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    /// The matching records, newest first.
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts (its `before_seq`), or `None` when
    /// nothing older is left to look at: the last entry's sequence number
    /// when the page is full, else the lower end of the scanned range when
    /// older records remain beyond it.
    pub next_before: Option<i64>,
}

impl AuditPage {
    /// Builds the page of `entries` found for `q` in the range of sequence
    /// numbers from `floor` (the scan bound, if any) up, in a log whose
    /// oldest record is `oldest`.
    pub(crate) fn new(
        entries: Vec<AuditEntry>,
        q: &AuditQuery,
        floor: Option<i64>,
        oldest: Option<i64>,
    ) -> Self {
        let next_before = if entries.len() as u64 >= u64::from(q.limit) {
            entries.last().map(|e| e.seq)
        } else {
            floor.filter(|f| oldest.is_some_and(|o| o < *f))
        };
        Self {
            entries,
            next_before,
        }
    }

    /// The lowest sequence number a scan of `q` examines, given the newest
    /// record `head`: at most `q.scan` numbers below the cursor, or below
    /// the newest record when the cursor is past it (a cursor far above
    /// would otherwise take endless empty pages to come down).
    pub(crate) fn floor(q: &AuditQuery, head: Option<i64>) -> Option<i64> {
        let scan = i64::from(q.scan?);
        let after_head = head?.saturating_add(1);
        let top = q
            .before_seq
            .map_or(after_head, |before| before.min(after_head));
        Some(top.saturating_sub(scan))
    }
}

/// Counts for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Stored secrets by status.
    pub secrets_by_status: Vec<(SecretStatus, u64)>,
    /// Notifications waiting for delivery.
    pub notifications_pending: u64,
    /// The last sequence number of the usage log.
    pub audit_records: u64,
    /// Each usage-log sink's cursor (the last record it delivered).
    pub audit_cursors: Vec<(String, i64)>,
    /// Usage records waiting for the group commit.
    pub audit_queue: u64,
}
