//! The usage-log hash chain, shared by every backend: what each MAC and
//! signature covers, and the verifier that walks a log read from storage.

use time::OffsetDateTime;

use crate::{AuditMac, AuditProblem, AuditRecord, AuditVerification, Error, Result};

/// Milliseconds since the Unix epoch, as stored.
pub(crate) fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The time of a stored millisecond count.
pub(crate) fn from_ms(v: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000)
        .map_err(|_| Error::Corrupt(format!("timestamp {v} out of range")))
}

/// The bytes a usage record's MAC covers (with the previous MAC before
/// them). Every field is length-prefixed and optional fields carry a
/// presence byte, so no two records encode alike.
pub(crate) fn canonical(seq: i64, r: &AuditRecord) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn opt(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => {
                out.push(1);
                field(out, s);
            }
            None => out.push(0),
        }
    }
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"vault-audit-v1");
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ms(r.at).to_be_bytes());
    field(&mut out, &r.request_id);
    opt(&mut out, r.engine_id.as_deref());
    field(&mut out, r.action.as_str());
    opt(&mut out, r.environment.as_deref());
    opt(&mut out, r.project.as_deref());
    opt(&mut out, r.platform.as_deref());
    field(&mut out, r.outcome.as_str());
    opt(&mut out, r.detail.as_deref());
    out
}

/// The MAC of a version stored in a `mac_key` column (NULL: version 1,
/// from before keys had versions); `None` when that version is unknown.
pub(crate) fn mac_with(mac: &dyn AuditMac, version: Option<i64>, data: &[u8]) -> Option<[u8; 32]> {
    let version = u32::try_from(version.unwrap_or(1)).ok()?;
    mac.mac_with(version, data)
}

pub(crate) fn chain_mac(
    mac: &dyn AuditMac,
    version: Option<i64>,
    prev: &[u8],
    seq: i64,
    r: &AuditRecord,
) -> Option<[u8; 32]> {
    let mut data = Vec::with_capacity(32 + 128);
    data.extend_from_slice(prev);
    data.extend_from_slice(&canonical(seq, r));
    mac_with(mac, version, &data)
}

/// Whether `signature` is what `expected` computed (an unknown key
/// version never matches), compared in constant time.
pub(crate) fn signed(expected: Option<[u8; 32]>, signature: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    expected.is_some_and(|e| bool::from(e.as_slice().ct_eq(signature)))
}

pub(crate) const GENESIS: [u8; 32] = [0; 32];

/// The signature of a retention checkpoint: the chain MAC over a fixed
/// label, the last pruned sequence number, its record MAC and the time.
pub(crate) fn checkpoint_signature(
    mac: &dyn AuditMac,
    version: Option<i64>,
    seq: i64,
    record_mac: &[u8],
    at_ms: i64,
) -> Option<[u8; 32]> {
    let mut data = b"vault-audit-checkpoint-v1".to_vec();
    data.extend_from_slice(&seq.to_be_bytes());
    data.extend_from_slice(&(record_mac.len() as u32).to_be_bytes());
    data.extend_from_slice(record_mac);
    data.extend_from_slice(&at_ms.to_be_bytes());
    mac_with(mac, version, &data)
}

/// The signature of a chain anchor (`start`: the chain begins after `seq`
/// from `mac`; `head`: the newest record is `seq` with `mac`) or of a sink
/// cursor (`cursor:<name>`, with an empty MAC).
pub(crate) fn anchor_signature(
    mac: &dyn AuditMac,
    version: Option<i64>,
    name: &str,
    seq: i64,
    anchor_mac: &[u8],
) -> Option<[u8; 32]> {
    let mut data = b"vault-audit-anchor-v1".to_vec();
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&seq.to_be_bytes());
    data.extend_from_slice(&(anchor_mac.len() as u32).to_be_bytes());
    data.extend_from_slice(anchor_mac);
    mac_with(mac, version, &data)
}

/// Where the next record joins the chain: after `last` (the newest row,
/// or the retention checkpoint when every row was pruned), unless the
/// signed head says the chain went further. Then the head wins, so records
/// cut off the end stay missing, and `audit verify` keeps finding them,
/// instead of a new head being signed over the cut. A head that does not
/// verify is tampering: nothing is appended over it.
pub(crate) fn chain_position(
    mac: Option<&dyn AuditMac>,
    last: Option<(i64, Option<Vec<u8>>)>,
    head: Option<Anchor>,
) -> Result<(i64, Vec<u8>)> {
    let last_seq = last.as_ref().map_or(0, |(s, _)| *s);
    if let (Some(m), Some((seq, head_mac, signature, version))) = (mac, head) {
        let expected = anchor_signature(m, version, "head", seq, &head_mac);
        if !signed(expected, &signature) {
            return Err(Error::Corrupt(
                "the usage log's head anchor does not verify (run `audit verify`); \
                 nothing is appended over it"
                    .into(),
            ));
        }
        if seq >= last_seq {
            return Ok((seq, head_mac));
        }
    }
    let prev = last
        .and_then(|(_, m)| m)
        .unwrap_or_else(|| GENESIS.to_vec());
    Ok((last_seq, prev))
}

/// The key version of `head`'s signature when `mac` does not hold it: the
/// caller asks the store whether that version exists (see
/// [`unknown_key_version`]) before [`chain_position`] takes the head for a
/// forgery.
pub(crate) fn unknown_head_version(
    mac: Option<&dyn AuditMac>,
    head: Option<&Anchor>,
) -> Option<i64> {
    let (m, (_, _, _, version)) = (mac?, head?);
    let v = version.unwrap_or(1);
    let known = u32::try_from(v).is_ok_and(|v| m.knows(v));
    (!known).then_some(v)
}

/// The error for a head signed with key `version`, which this process does
/// not hold: a version the store has (another process rotated the key, and
/// this one has not loaded it yet) is a wait; one it does not have is a
/// forged head.
pub(crate) fn unknown_key_version(version: i64, stored: bool) -> Error {
    if stored {
        Error::Unavailable(format!(
            "the usage log's head is signed with key version {version}, which this process \
             has not loaded yet"
        ))
    } else {
        Error::Corrupt(format!(
            "the usage log's head is signed with key version {version}, which does not exist \
             (run `audit verify`); nothing is appended over it"
        ))
    }
}

/// The key version new MACs are made with, as stored.
/// Checks a stored sink cursor against its signature. A cursor moved by
/// hand would make forwarding skip records and retention prune undelivered
/// ones; without a chain key there is nothing to check.
pub(crate) fn check_cursor(
    mac: Option<&dyn AuditMac>,
    name: &str,
    seq: i64,
    signature: Option<&[u8]>,
    version: Option<i64>,
) -> Result<()> {
    let Some(mac) = mac else {
        return Ok(());
    };
    let want = anchor_signature(mac, version, &format!("cursor:{name}"), seq, &[]);
    if signature.is_some_and(|s| signed(want, s)) {
        Ok(())
    } else {
        Err(Error::Corrupt(format!(
            "the usage-log cursor {name} was not set by the vault"
        )))
    }
}

/// Refuses to begin the chain where it has begun before (a head anchor, or
/// records with MACs) but its start anchor is gone: someone removed the
/// anchors, and starting afresh would hide that from `audit verify`, which
/// reports the log as unanchored until then.
pub(crate) fn check_chain_not_begun(chained_before: bool) -> Result<()> {
    if chained_before {
        return Err(Error::Corrupt(
            "the usage log's start anchor is missing although its chain has begun \
             (run `audit verify`); nothing is appended"
                .into(),
        ));
    }
    Ok(())
}

/// The last sequence number one retention chunk may reach: `limit` records
/// from the oldest, `first`, and none past `max_seq`.
pub(crate) fn prune_upto(first: i64, max_seq: i64, limit: u32) -> i64 {
    max_seq.min(first.saturating_add(i64::from(limit.max(1)) - 1))
}

pub(crate) fn mac_version(mac: &dyn AuditMac) -> Option<i64> {
    Some(i64::from(mac.version()))
}

/// A stored anchor: sequence number, MAC, signature, key version.
pub(crate) type Anchor = (i64, Vec<u8>, Vec<u8>, Option<i64>);

/// A stored retention checkpoint: sequence number, record MAC, time,
/// signature, key version.
pub(crate) type Checkpoint = (i64, Vec<u8>, i64, Vec<u8>, Option<i64>);

/// A usage-log row as the verifier reads it: a record that does not even
/// decode counts as changed.
pub(crate) type ChainRow = (i64, Option<AuditRecord>, Option<Vec<u8>>, Option<i64>);

/// Checks a whole usage log read from storage (`rows` in sequence order)
/// against its anchors and newest checkpoint: reports the first record
/// that was changed, removed or inserted.
pub(crate) fn verify_rows(
    mac: &dyn AuditMac,
    rows: Vec<ChainRow>,
    start: Option<Anchor>,
    head: Option<Anchor>,
    checkpoint: Option<Checkpoint>,
) -> AuditVerification {
    let mut report = AuditVerification {
        records: rows.len() as u64,
        verified: 0,
        unchained: 0,
        last_verified_seq: None,
        pruned_through: None,
        problem: None,
    };
    let Some((start_seq, start_mac, start_sig, start_key)) = start else {
        if !rows.is_empty() || checkpoint.is_some() {
            // Records, but no sign that the chain ever began: its anchors
            // were removed (or no record was written since it began).
            report.problem = Some(AuditProblem::Unanchored);
        }
        return report;
    };
    if !signed(
        anchor_signature(mac, start_key, "start", start_seq, &start_mac),
        &start_sig,
    ) {
        report.problem = Some(AuditProblem::Anchor { seq: start_seq });
        return report;
    }
    // Where verification begins: after the start anchor, or after the
    // newest retention checkpoint when that is later.
    let mut prev = start_mac;
    let mut from = start_seq;
    if let Some((seq, record_mac, at_ms, signature, key)) = checkpoint {
        if !signed(
            checkpoint_signature(mac, key, seq, &record_mac, at_ms),
            &signature,
        ) {
            report.problem = Some(AuditProblem::Checkpoint { seq });
            return report;
        }
        report.pruned_through = Some(seq);
        if seq > from {
            prev = record_mac;
            from = seq;
        }
    }
    let mut chained_rows = Vec::with_capacity(rows.len());
    for row in rows {
        let seq = row.0;
        if report.pruned_through.is_some_and(|p| seq <= p) {
            // Retention deleted everything up to its checkpoint.
            report.problem = Some(AuditProblem::Inserted { seq });
            return report;
        }
        if seq <= from {
            // From before the chain began: it carries no MAC to check.
            if row.2.is_some() {
                report.problem = Some(AuditProblem::Inserted { seq });
                return report;
            }
            report.unchained += 1;
        } else {
            chained_rows.push(row);
        }
    }
    let rows = chained_rows;
    report.records = rows.len() as u64 + report.unchained;
    let mut last_seq: Option<i64> = Some(from);
    let expected = |prev: &[u8], seq: i64, record: &Option<AuditRecord>, version: Option<i64>| {
        record
            .as_ref()
            .and_then(|r| chain_mac(mac, version, prev, seq, r))
            .map(|m| m.to_vec())
    };
    for (i, (seq, record, stored, version)) in rows.iter().enumerate() {
        if last_seq.is_some_and(|l| *seq != l + 1) {
            report.problem = Some(AuditProblem::Removed { seq: *seq });
            return report;
        }
        let want = expected(&prev, *seq, record, *version);
        if want.is_none() || want.as_ref() != stored.as_ref() {
            // Content changed under its old MAC, or a forged record? The next
            // record tells: it chains from the stored MAC only if that MAC
            // is the vault's own.
            let next_chains = match (stored, rows.get(i + 1)) {
                (Some(stored_mac), Some((next_seq, next_record, next_stored, next_version))) => {
                    next_stored.is_some()
                        && expected(stored_mac, *next_seq, next_record, *next_version).as_ref()
                            == next_stored.as_ref()
                }
                _ => false,
            };
            report.problem = Some(if next_chains {
                AuditProblem::Changed { seq: *seq }
            } else {
                AuditProblem::Inserted { seq: *seq }
            });
            return report;
        }
        prev = stored.clone().unwrap_or_default();
        report.verified += 1;
        report.last_verified_seq = Some(*seq);
        last_seq = Some(*seq);
    }
    // The signed head must name the newest record: records cut off the end
    // (or a file restored from an older copy of the log) show here.
    let end = last_seq.unwrap_or(from);
    match head {
        Some((head_seq, head_mac, head_sig, head_key)) => {
            if !signed(
                anchor_signature(mac, head_key, "head", head_seq, &head_mac),
                &head_sig,
            ) {
                report.problem = Some(AuditProblem::Anchor { seq: head_seq });
            } else if head_seq > end {
                report.problem = Some(AuditProblem::Removed { seq: end + 1 });
            } else if head_seq < end || head_mac != prev {
                report.problem = Some(AuditProblem::Inserted { seq: head_seq + 1 });
            }
        }
        None => report.problem = Some(AuditProblem::Unanchored),
    }
    report
}
