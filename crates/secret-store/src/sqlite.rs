//! The embedded SQLite store.

use std::fmt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use time::OffsetDateTime;
use vault_types::SecretAddress;

use crate::chain::{
    Anchor, ChainRow, Checkpoint, GENESIS, anchor_signature, chain_mac, chain_position,
    check_chain_not_begun, check_cursor, checkpoint_signature, from_ms, mac_version, ms,
    prune_upto, unknown_head_version, unknown_key_version, verify_rows,
};
use crate::group::{self, Batch, Pending, PutJob, Reply};
use crate::row::{SecretRow, i64_of, opt_ms, ttl_ms, u64_of};
use crate::{
    AuditAction, AuditEntry, AuditKeyRecord, AuditMac, AuditOutcome, AuditPage, AuditQuery,
    AuditRecord, AuditVerification, EngineRecord, Error, KeyUsage, LeaseOutcome, NewNotification,
    PendingNotification, RefreshState, Result, RewrapItem, Rewrapped, SecretStatus, SecretStore,
    SecretWrite, StoreStats, StoredSecret,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Never edit a shipped migration: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: secrets and the usage log.
    "CREATE TABLE secrets (
        environment       TEXT    NOT NULL,
        project           TEXT    NOT NULL,
        platform          TEXT    NOT NULL,
        version           INTEGER NOT NULL CHECK (version > 0),
        sealed            BLOB    NOT NULL,
        key_id            TEXT    NOT NULL,
        status            TEXT    NOT NULL,
        valid_until_ms    INTEGER,
        scopes            TEXT    NOT NULL,
        has_refresh_token INTEGER NOT NULL,
        token_type        TEXT    NOT NULL,
        metadata          TEXT,
        created_at_ms     INTEGER NOT NULL,
        updated_at_ms     INTEGER NOT NULL,
        PRIMARY KEY (environment, project, platform)
    ) STRICT;
    CREATE INDEX secrets_by_expiry ON secrets (valid_until_ms) WHERE valid_until_ms IS NOT NULL;
    CREATE TABLE audit_log (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms       INTEGER NOT NULL,
        request_id  TEXT    NOT NULL,
        engine_id   TEXT,
        action      TEXT    NOT NULL,
        environment TEXT,
        project     TEXT,
        platform    TEXT,
        outcome     TEXT    NOT NULL,
        detail      TEXT
    ) STRICT;",
    // 2: refresh bookkeeping and the notification outbox.
    "ALTER TABLE secrets ADD COLUMN refresh_due_ms INTEGER;
    ALTER TABLE secrets ADD COLUMN last_refresh_at_ms INTEGER;
    ALTER TABLE secrets ADD COLUMN last_error TEXT;
    ALTER TABLE secrets ADD COLUMN failure_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE secrets ADD COLUMN next_attempt_at_ms INTEGER;
    CREATE INDEX secrets_by_refresh_due ON secrets (refresh_due_ms)
        WHERE refresh_due_ms IS NOT NULL;
    CREATE INDEX secrets_by_project ON secrets (project);
    CREATE TABLE notifications (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at_ms      INTEGER NOT NULL,
        payload            TEXT    NOT NULL,
        attempts           INTEGER NOT NULL DEFAULT 0,
        next_attempt_at_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX notifications_by_next_attempt ON notifications (next_attempt_at_ms);",
    // 3: engines managed with `vault-server engine ...` (token hashes only).
    "CREATE TABLE engines (
        id            TEXT    PRIMARY KEY,
        token_sha256  TEXT    NOT NULL,
        grants        TEXT    NOT NULL,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    ) STRICT;",
    // 4: the usage-log hash chain.
    "ALTER TABLE audit_log ADD COLUMN mac BLOB;",
    // 5: how far each usage-log sink (forwarding, file) has delivered.
    "CREATE TABLE audit_cursors (
        name TEXT    PRIMARY KEY,
        seq  INTEGER NOT NULL
    ) STRICT;",
    // 6: checkpoints left by usage-log retention.
    "CREATE TABLE audit_checkpoints (
        seq       INTEGER PRIMARY KEY,
        mac       BLOB    NOT NULL,
        at_ms     INTEGER NOT NULL,
        signature BLOB    NOT NULL
    ) STRICT;", // 7: signed anchors of the chain (where it starts, where it ends) and
    // signed sink cursors.
    "CREATE TABLE audit_anchors (
        name      TEXT    PRIMARY KEY,
        seq       INTEGER NOT NULL,
        mac       BLOB    NOT NULL,
        signature BLOB    NOT NULL
    ) STRICT;
    ALTER TABLE audit_cursors ADD COLUMN signature BLOB;",
    // 8: versioned usage-log keys (each MAC and signature names the
    // version it was made with; NULL is version 1), and an index to find
    // the values still sealed under an old master key.
    "CREATE TABLE audit_keys (
        version       INTEGER PRIMARY KEY CHECK (version > 0),
        sealed        BLOB    NOT NULL,
        key_id        TEXT    NOT NULL,
        created_at_ms INTEGER NOT NULL
    ) STRICT;
    ALTER TABLE audit_log ADD COLUMN mac_key INTEGER;
    ALTER TABLE audit_anchors ADD COLUMN mac_key INTEGER;
    ALTER TABLE audit_checkpoints ADD COLUMN mac_key INTEGER;
    ALTER TABLE audit_cursors ADD COLUMN mac_key INTEGER;
    CREATE INDEX secrets_by_key ON secrets (key_id);",
    // 9: refresh leases, so that one process at a time refreshes a token
    // (several processes may share one file: the server and the CLI).
    "ALTER TABLE secrets ADD COLUMN lease_holder TEXT;
    ALTER TABLE secrets ADD COLUMN lease_until_ms INTEGER;",
    // 10: leases of background jobs that one process at a time runs.
    "CREATE TABLE job_leases (
        name     TEXT    PRIMARY KEY,
        holder   TEXT    NOT NULL,
        until_ms INTEGER NOT NULL
    ) STRICT;",
    // 11: each secret's rowid becomes the row key of its address (see
    // `row_key`), so that a read finds the row in one B-tree descent; the
    // rows are moved by `rekey_secrets` in the same transaction.
    "-- rows re-keyed in Rust",
    // 12: what files from before the anchors (7) kept of their chain. MACs
    // at or before the start anchor (all of them where there is none) are
    // from a chain that was never anchored: dropped, so that the chain
    // begins, signed, with the next append (records with MACs and no start
    // anchor are otherwise taken for a chain whose anchors were removed).
    // Sink cursors never signed start over: records may be delivered twice,
    // none is skipped.
    "UPDATE audit_log SET mac = NULL, mac_key = NULL
         WHERE mac IS NOT NULL
           AND seq <= coalesce(
               (SELECT seq FROM audit_anchors WHERE name = 'start'),
               (SELECT max(seq) FROM audit_log));
    DELETE FROM audit_cursors WHERE signature IS NULL;",
];

/// The migration (1-based, as `user_version` counts) after whose SQL
/// `rekey_secrets` runs.
const REKEY_MIGRATION: usize = 11;

/// The rowid a secret at this address is stored under when it is free:
/// the first 63 bits of SHA-256 over `"vault-row-v1" 0x00 environment 0x00
/// project 0x00 platform` (identifiers hold no `0x00`).
///
/// A point read then descends the table's B-tree once, by rowid, instead
/// of descending the address index first and the table after it; at a
/// million secrets that halves the pages a read touches. The address
/// columns stay the row's unique key: a read checks them, and a row whose
/// key was taken (a collision, or a row from before migration 11 that
/// could not move) keeps another rowid and is found through the index.
pub(crate) fn row_key(environment: &str, project: &str, platform: &str) -> i64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"vault-row-v1\0");
    ctx.update(environment.as_bytes());
    ctx.update(b"\0");
    ctx.update(project.as_bytes());
    ctx.update(b"\0");
    ctx.update(platform.as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    // 63 bits: a rowid is a signed 64-bit integer; keep keys non-negative.
    (u64::from_be_bytes(first) >> 1) as i64
}

fn address_key(a: &SecretAddress) -> i64 {
    row_key(a.environment(), a.project(), a.platform())
}

/// Moves every secret stored under another rowid to its row key, where
/// that key is free (migration 11). Rows are visited in rowid order up to
/// the largest rowid found at the start; a moved row lands on a key that
/// is (all but surely) above it, and is skipped if it is met again.
fn rekey_secrets(tx: &Connection) -> Result<()> {
    let (count, last): (i64, Option<i64>) =
        tx.query_row("SELECT count(*), max(rowid) FROM secrets", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let Some(last) = last else {
        return Ok(());
    };
    // Once per database; about half a minute for a million secrets.
    tracing::info!(secrets = count, "keying secrets by their address");
    let mut page = tx.prepare(
        "SELECT rowid, environment, project, platform FROM secrets
         WHERE rowid > ?1 AND rowid <= ?2 ORDER BY rowid LIMIT 10000",
    )?;
    let mut taken = tx.prepare("SELECT 1 FROM secrets WHERE rowid = ?1")?;
    let mut move_row = tx.prepare("UPDATE secrets SET rowid = ?1 WHERE rowid = ?2")?;
    let (mut after, mut moved, mut kept) = (i64::MIN, 0u64, 0u64);
    loop {
        let rows = page
            .query_map(params![after, last], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    row_key(
                        &r.get::<_, String>(1)?,
                        &r.get::<_, String>(2)?,
                        &r.get::<_, String>(3)?,
                    ),
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let Some(&(end, _)) = rows.last() else {
            break;
        };
        for (rowid, key) in rows {
            if key == rowid {
                continue;
            }
            if taken.exists(params![key])? {
                kept += 1;
            } else {
                move_row.execute(params![key, rowid])?;
                moved += 1;
            }
        }
        after = end;
    }
    tracing::info!(moved, kept, "secrets keyed by their address");
    Ok(())
}

/// Tuning for [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Connections used for reads (WAL readers run in parallel).
    pub readers: usize,
    /// How long a statement waits for a lock before failing.
    pub busy_timeout: Duration,
    /// Group commit of stores and of usage records appended on their own
    /// (reads): one writer applies every job waiting in one transaction,
    /// each store in its own savepoint, and commits once; each caller waits
    /// for the commit that holds its job. Off: one commit per job.
    pub group_commit: bool,
    /// Most jobs in one group commit.
    pub group_commit_max: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            group_commit: true,
            group_commit_max: 512,
        }
    }
}

/// Applies one store inside the batch's transaction, in a savepoint: a
/// conflict or error undoes this store alone (the inner result). The outer
/// error ends the whole batch: the savepoint itself failed, or SQLite
/// rolled back the batch's transaction on its own (it may, on a full disk,
/// an I/O error or out of memory). Going on then would run the next
/// stores and the usage records outside any transaction, each committed
/// alone, while their callers hear that the batch failed.
fn put_in_savepoint(
    tx: &Transaction<'_>,
    job: &PutJob,
    mac: Option<&dyn AuditMac>,
) -> Result<Result<()>> {
    tx.execute_batch("SAVEPOINT put")?;
    let result = apply_put(
        tx,
        &job.write,
        job.expected,
        &job.audit,
        job.notification.as_ref(),
        mac,
    );
    if tx.is_autocommit() {
        return Err(result.err().unwrap_or(Error::Unavailable(
            "the batch's transaction ended early".into(),
        )));
    }
    match &result {
        Ok(()) => tx.execute_batch("RELEASE put")?,
        Err(_) => tx.execute_batch("ROLLBACK TO put; RELEASE put")?,
    }
    Ok(result)
}

/// The group-commit writer: takes every job waiting (stores and usage
/// records), applies them in one transaction, commits once and answers
/// each caller. Jobs queue while a commit runs, so batches grow with load
/// and a lone job is committed at once: one fsync serves many requests.
/// Ends when the store is dropped.
fn group_commit_loop(
    inner: std::sync::Weak<Inner>,
    rx: std::sync::mpsc::Receiver<Pending>,
    max: usize,
) {
    struct Stopped(std::sync::Weak<Inner>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            if let Some(inner) = self.0.upgrade() {
                inner.committer_alive.store(false, Ordering::SeqCst);
            }
        }
    }
    let _stopped = Stopped(std::sync::Weak::clone(&inner));
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let batch = Batch::new(batch);
        let Some(inner) = inner.upgrade() else {
            batch.closed();
            return;
        };
        inner.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let mac = inner.audit_mac();
        let mac = mac.as_deref();
        let mut stores = Vec::with_capacity(batch.puts.len());
        let commit = (|| -> Result<()> {
            let mut conn = lock(&inner.writer);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for put in &batch.puts {
                stores.push(put_in_savepoint(&tx, put, mac)?);
            }
            insert_audits(&tx, &batch.records, mac)?;
            tx.commit()?;
            Ok(())
        })();
        batch.answer(commit, stores);
    }
}

impl Inner {
    /// A reader connection that is free right now, if any.
    fn try_reader(&self) -> Option<MutexGuard<'_, Connection>> {
        let n = self.readers.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|k| match self.readers[(start + k) % n].try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        })
    }

    /// The usage-log key in use now (it can change: key rotation).
    fn audit_mac(&self) -> Option<Arc<dyn AuditMac>> {
        self.audit_mac
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    audit_mac: RwLock<Option<Arc<dyn AuditMac>>>,
    group_commit: Option<std::sync::mpsc::Sender<Pending>>,
    /// Jobs (usage records and stores) waiting for the group commit.
    queued: AtomicUsize,
    /// Whether the group-commit thread is running.
    committer_alive: std::sync::atomic::AtomicBool,
}

/// A [`SecretStore`] in one SQLite file.
///
/// One writer connection serialises writes; a small set of reader
/// connections serves reads in parallel (WAL mode). The database files are
/// created with mode 0600 (SQLite gives the `-wal` and `-shm` files the
/// main file's mode). Every call runs on tokio's blocking pool.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("readers", &self.inner.readers.len())
            .finish()
    }
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave a half-applied change:
    // SQLite rolls back an open transaction when it is dropped.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn configure(conn: &Connection, options: &SqliteOptions) -> Result<()> {
    conn.busy_timeout(options.busy_timeout)?;
    // WAL: readers never block the writer. synchronous=FULL: a commit is on
    // disk before it is acknowledged (a rotated refresh token lost to a power
    // cut is lost for good).
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Corrupt(format!(
            "could not enable WAL mode (got {mode})"
        )));
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(Error::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)?;
        if i + 1 == REKEY_MIGRATION {
            rekey_secrets(&tx)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    tx.commit()?;
    if current > 0 && (current as usize) < MIGRATIONS.len() {
        // A migration may have rewritten much of the file into the WAL;
        // fold it back and give the space back now rather than keep a WAL
        // the size of the database.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(())
}

/// Creates the database file with mode 0600 (and its directory with 0700)
/// before SQLite opens it, so it is never readable by others. `fresh`:
/// the file must not exist yet (nor a link by its name, dangling or not);
/// it is created exclusively, so nothing made in between is reused.
fn prepare_file(path: &Path, fresh: bool) -> Result<()> {
    let io_err = |p: &Path| {
        let p = p.display().to_string();
        move |source| Error::Io { path: p, source }
    };
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(!fresh)
        .create_new(fresh)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    Ok(())
}

/// The file SQLite keeps beside `db` with `suffix` (`-wal`, `-shm`): the
/// whole file name with the suffix appended, whatever its extension.
pub fn sidecar_file(db: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// The columns `secret_from_row` reads, from `secrets` rows matching
/// `$filter`.
macro_rules! select_secret {
    ($filter:literal) => {
        concat!(
            "SELECT version, sealed, key_id, status, valid_until_ms, scopes,
                has_refresh_token, token_type, metadata, created_at_ms, updated_at_ms,
                refresh_due_ms, last_refresh_at_ms, last_error, failure_count,
                next_attempt_at_ms
             FROM secrets WHERE ",
            $filter
        )
    };
}

/// A secret by its address, through the address index.
const SELECT_SECRET: &str = select_secret!("environment = ?1 AND project = ?2 AND platform = ?3");

/// A secret at its row key `?4`, the address checked too.
const SELECT_SECRET_BY_KEY: &str =
    select_secret!("rowid = ?4 AND environment = ?1 AND project = ?2 AND platform = ?3");

fn secret_from_row(address: &SecretAddress, r: &rusqlite::Row<'_>) -> Result<StoredSecret> {
    SecretRow {
        version: r.get(0)?,
        sealed: r.get(1)?,
        key_id: r.get(2)?,
        status: r.get(3)?,
        valid_until: r.get(4)?,
        scopes: r.get(5)?,
        has_refresh_token: r.get(6)?,
        token_type: r.get(7)?,
        metadata: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        refresh_due: r.get(11)?,
        last_refresh_at: r.get(12)?,
        last_error: r.get(13)?,
        failure_count: r.get(14)?,
        next_attempt_at: r.get(15)?,
    }
    .decode(address)
}

/// The row of `address`: first at its row key (one B-tree descent), then,
/// if it is not there, through the address index (a row that kept another
/// rowid, or no row at all).
fn read_secret(conn: &Connection, address: &SecretAddress) -> Result<Option<StoredSecret>> {
    let (environment, project, platform) =
        (address.environment(), address.project(), address.platform());
    let mut by_key = conn.prepare_cached(SELECT_SECRET_BY_KEY)?;
    let mut rows = by_key.query(params![
        environment,
        project,
        platform,
        address_key(address)
    ])?;
    if let Some(row) = rows.next()? {
        return secret_from_row(address, row).map(Some);
    }
    let mut by_address = conn.prepare_cached(SELECT_SECRET)?;
    let mut rows = by_address.query(params![environment, project, platform])?;
    match rows.next()? {
        Some(row) => secret_from_row(address, row).map(Some),
        None => Ok(None),
    }
}

fn put_anchor(
    tx: &Connection,
    mac: &dyn AuditMac,
    name: &str,
    seq: i64,
    anchor_mac: &[u8],
) -> Result<()> {
    let version = mac_version(mac);
    let signature = anchor_signature(mac, version, name, seq, anchor_mac)
        .ok_or(Error::Invalid("the usage-log key has no current version"))?;
    tx.prepare_cached(
        "INSERT INTO audit_anchors (name, seq, mac, signature, mac_key) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, mac = excluded.mac,
             signature = excluded.signature, mac_key = excluded.mac_key",
    )?
    .execute(params![name, seq, anchor_mac, signature.to_vec(), version])?;
    Ok(())
}

fn get_anchor(conn: &Connection, name: &str) -> Result<Option<Anchor>> {
    Ok(conn
        .prepare_cached("SELECT seq, mac, signature, mac_key FROM audit_anchors WHERE name = ?1")?
        .query_row(params![name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?)
}

fn prune_tx(
    conn: &mut Connection,
    mac: &dyn AuditMac,
    before: OffsetDateTime,
    max_seq: i64,
    limit: u32,
    now: OffsetDateTime,
) -> Result<Option<i64>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // At most `limit` records from the oldest on.
    let first: Option<i64> = tx.query_row("SELECT MIN(seq) FROM audit_log", [], |r| r.get(0))?;
    let Some(first) = first else {
        return Ok(None);
    };
    let upto = prune_upto(first, max_seq, limit);
    let last: Option<(i64, Option<Vec<u8>>)> = tx
        .query_row(
            "SELECT seq, mac FROM audit_log WHERE at_ms < ?1 AND seq <= ?2
             ORDER BY seq DESC LIMIT 1",
            params![ms(before), upto],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((seq, record_mac)) = last else {
        return Ok(None);
    };
    let Some(record_mac) = record_mac else {
        // Records from before the chain began (all older than the chained
        // ones): outside the chain, they go without a checkpoint.
        tx.execute(
            "DELETE FROM audit_log WHERE seq <= ?1 AND mac IS NULL",
            params![seq],
        )?;
        tx.commit()?;
        return Ok(Some(seq));
    };
    let at_ms = ms(now);
    let version = mac_version(mac);
    let signature = checkpoint_signature(mac, version, seq, &record_mac, at_ms)
        .ok_or(Error::Invalid("the usage-log key has no current version"))?;
    tx.execute("DELETE FROM audit_log WHERE seq <= ?1", params![seq])?;
    tx.execute(
        "INSERT INTO audit_checkpoints (seq, mac, at_ms, signature, mac_key)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![seq, record_mac, at_ms, signature.to_vec(), version],
    )?;
    tx.commit()?;
    Ok(Some(seq))
}

fn insert_audit(tx: &Connection, r: &AuditRecord, mac: Option<&dyn AuditMac>) -> Result<()> {
    insert_audits(tx, std::slice::from_ref(r), mac)
}

/// Appends `records` in order, each chained to the one before.
fn insert_audits(
    tx: &Connection,
    records: &[AuditRecord],
    mac: Option<&dyn AuditMac>,
) -> Result<()> {
    let mut last: Option<(i64, Option<Vec<u8>>)> = tx
        .prepare_cached("SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    if last.is_none() {
        // Retention may have pruned every record: continue after the
        // checkpoint it left, from the MAC it kept.
        last = tx
            .prepare_cached("SELECT seq, mac FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
    }
    let head = match mac {
        Some(_) => get_anchor(tx, "head")?,
        None => None,
    };
    let had_head = head.is_some();
    if let Some(version) = unknown_head_version(mac, head.as_ref()) {
        let stored: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM audit_keys WHERE version = ?1)")?
            .query_row(params![version], |r| r.get(0))?;
        return Err(unknown_key_version(version, stored));
    }
    let (mut seq, mut prev) = chain_position(mac, last, head)?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO audit_log (seq, at_ms, request_id, engine_id, action, environment, project,
             platform, outcome, detail, mac, mac_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    let version = mac.and_then(mac_version);
    if let Some(m) = mac
        && get_anchor(tx, "start")?.is_none()
    {
        let chained_before: bool = had_head
            || tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM audit_log WHERE mac IS NOT NULL)")?
                .query_row([], |r| r.get(0))?;
        check_chain_not_begun(chained_before)?;
        // The first chained record: everything before it is from before
        // the chain, and the signed start anchor says so.
        put_anchor(tx, m, "start", seq, &prev)?;
    }
    for r in records {
        seq += 1;
        let record_mac = match mac {
            Some(m) => Some(
                chain_mac(m, version, &prev, seq, r)
                    .ok_or(Error::Invalid("the usage-log key has no current version"))?
                    .to_vec(),
            ),
            None => None,
        };
        stmt.execute(params![
            seq,
            ms(r.at),
            r.request_id,
            r.engine_id,
            r.action.as_str(),
            r.environment,
            r.project,
            r.platform,
            r.outcome.as_str(),
            r.detail,
            record_mac,
            version,
        ])?;
        prev = record_mac.unwrap_or_else(|| GENESIS.to_vec());
    }
    if let Some(m) = mac {
        // The signed head: cutting records off the end is found.
        put_anchor(tx, m, "head", seq, &prev)?;
    }
    Ok(())
}

fn audit_from_row(row: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<Result<AuditRecord>> {
    let at: i64 = row.get(offset)?;
    let action: String = row.get(offset + 3)?;
    let outcome: String = row.get(offset + 7)?;
    let build = || -> Result<AuditRecord> {
        Ok(AuditRecord {
            at: from_ms(at)?,
            request_id: row.get(offset + 1)?,
            engine_id: row.get(offset + 2)?,
            action: AuditAction::parse(&action)
                .ok_or_else(|| Error::Corrupt(format!("unknown audit action {action:?}")))?,
            environment: row.get(offset + 4)?,
            project: row.get(offset + 5)?,
            platform: row.get(offset + 6)?,
            outcome: AuditOutcome::parse(&outcome)
                .ok_or_else(|| Error::Corrupt(format!("unknown audit outcome {outcome:?}")))?,
            detail: row.get(offset + 8)?,
        })
    };
    Ok(build())
}

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AuditEntry>> {
    let seq: i64 = row.get(0)?;
    let mac: Option<Vec<u8>> = row.get(10)?;
    Ok(audit_from_row(row, 1)?.map(|record| AuditEntry { seq, record, mac }))
}

fn collect_entries(
    rows: impl Iterator<Item = rusqlite::Result<Result<AuditEntry>>>,
) -> Result<Vec<AuditEntry>> {
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

fn verify_audit(conn: &Connection, mac: &dyn AuditMac) -> Result<AuditVerification> {
    let mut stmt = conn.prepare(
        "SELECT seq, at_ms, request_id, engine_id, action, environment, project, platform,
                outcome, detail, mac, mac_key
         FROM audit_log ORDER BY seq",
    )?;
    let rows: Vec<ChainRow> = stmt
        .query_map([], |row| {
            let seq: i64 = row.get(0)?;
            let record = audit_from_row(row, 1)?.ok();
            let stored: Option<Vec<u8>> = row.get(10)?;
            let version: Option<i64> = row.get(11)?;
            Ok((seq, record, stored, version))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let start = get_anchor(conn, "start")?;
    let head = get_anchor(conn, "head")?;
    let checkpoint: Option<Checkpoint> = conn
        .query_row(
            "SELECT seq, mac, at_ms, signature, mac_key FROM audit_checkpoints
             ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    Ok(verify_rows(mac, rows, start, head, checkpoint))
}

fn current_version(tx: &Transaction<'_>, address: &SecretAddress) -> Result<Option<u64>> {
    let v: Option<i64> = tx
        .prepare_cached(
            "SELECT version FROM secrets WHERE environment = ?1 AND project = ?2 AND platform = ?3",
        )?
        .query_row(
            params![address.environment(), address.project(), address.platform()],
            |r| r.get(0),
        )
        .optional()?;
    v.map(|v| u64_of(v, "version")).transpose()
}

fn insert_notification(tx: &Connection, at: OffsetDateTime, n: &NewNotification) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO notifications (created_at_ms, payload, attempts, next_attempt_at_ms)
         VALUES (?1, ?2, 0, ?1)",
    )?
    .execute(params![ms(at), n.payload])?;
    Ok(())
}

/// Writes the usage record (and the notification, if any) that describe a
/// change into the change's own transaction, and commits it.
fn commit_with_records(
    tx: Transaction<'_>,
    audit: &AuditRecord,
    notification: Option<&NewNotification>,
    mac: Option<&dyn AuditMac>,
) -> Result<()> {
    insert_audit(&tx, audit, mac)?;
    if let Some(n) = notification {
        insert_notification(&tx, audit.at, n)?;
    }
    tx.commit()?;
    Ok(())
}

/// Inserts or replaces the row of `w` (the caller checked the version).
fn write_secret(tx: &Transaction<'_>, w: &SecretWrite) -> Result<()> {
    let scopes = serde_json::to_string(&w.meta.scopes)
        .map_err(|_| Error::Invalid("scopes do not serialise"))?;
    let metadata = w
        .meta
        .metadata
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|_| Error::Invalid("metadata does not serialise"))?;
    let a = &w.address;
    let r = &w.meta.refresh;
    // A new row takes its row key unless another row holds it (a
    // collision: then SQLite picks a rowid and reads use the index); an
    // existing row keeps its rowid (the conflict on the address updates it).
    tx.prepare_cached(
        "INSERT INTO secrets (environment, project, platform, version, sealed, key_id, status,
             valid_until_ms, scopes, has_refresh_token, token_type, metadata, created_at_ms,
             updated_at_ms, refresh_due_ms, last_refresh_at_ms, last_error, failure_count,
             next_attempt_at_ms, rowid)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14, ?15, ?16, ?17,
             ?18, (SELECT ?19 WHERE NOT EXISTS (SELECT 1 FROM secrets WHERE rowid = ?19)))
         ON CONFLICT (environment, project, platform) DO UPDATE SET
             version = excluded.version, sealed = excluded.sealed, key_id = excluded.key_id,
             status = excluded.status, valid_until_ms = excluded.valid_until_ms,
             scopes = excluded.scopes, has_refresh_token = excluded.has_refresh_token,
             token_type = excluded.token_type, metadata = excluded.metadata,
             updated_at_ms = excluded.updated_at_ms, refresh_due_ms = excluded.refresh_due_ms,
             last_refresh_at_ms = excluded.last_refresh_at_ms, last_error = excluded.last_error,
             failure_count = excluded.failure_count,
             next_attempt_at_ms = excluded.next_attempt_at_ms,
             lease_holder = NULL, lease_until_ms = NULL",
    )?
    .execute(params![
        a.environment(),
        a.project(),
        a.platform(),
        i64_of(w.version)?,
        w.sealed,
        w.key_id,
        w.meta.status.as_str(),
        w.meta.valid_until.map(ms),
        scopes,
        w.meta.has_refresh_token,
        w.meta.token_type,
        metadata,
        ms(w.at),
        r.refresh_due.map(ms),
        r.last_refresh_at.map(ms),
        r.last_error,
        r.failure_count,
        r.next_attempt_at.map(ms),
        address_key(a),
    ])?;
    Ok(())
}

/// A store inside `tx`: the version checks, the row, its usage record and
/// its notification. The caller commits (alone, or in a group commit).
fn apply_put(
    tx: &Transaction<'_>,
    w: &SecretWrite,
    expected: Option<u64>,
    audit: &AuditRecord,
    notification: Option<&NewNotification>,
    mac: Option<&dyn AuditMac>,
) -> Result<()> {
    if w.version != expected.unwrap_or(0) + 1 {
        return Err(Error::Invalid(
            "version must be one more than the expected version",
        ));
    }
    let found = current_version(tx, &w.address)?;
    if found != expected {
        return Err(Error::Conflict { expected, found });
    }
    write_secret(tx, w)?;
    insert_audit(tx, audit, mac)?;
    if let Some(n) = notification {
        insert_notification(tx, audit.at, n)?;
    }
    Ok(())
}

fn put_tx(
    conn: &mut Connection,
    w: &SecretWrite,
    expected: Option<u64>,
    audit: &AuditRecord,
    notification: Option<&NewNotification>,
    mac: Option<&dyn AuditMac>,
) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    apply_put(&tx, w, expected, audit, notification, mac)?;
    tx.commit()?;
    Ok(())
}

/// Stores new secrets (version 1, none existing yet) in one transaction
/// with one usage record; nothing is stored if any exists.
fn put_new_batch_tx(
    conn: &mut Connection,
    writes: &[SecretWrite],
    audits: &[AuditRecord],
    mac: Option<&dyn AuditMac>,
) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for w in writes {
        if w.version != 1 {
            return Err(Error::Invalid("a batch holds new secrets only (version 1)"));
        }
        if let Some(found) = current_version(&tx, &w.address)? {
            return Err(Error::Conflict {
                expected: None,
                found: Some(found),
            });
        }
        write_secret(&tx, w)?;
    }
    insert_audits(&tx, audits, mac)?;
    tx.commit()?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn update_state_tx(
    conn: &mut Connection,
    address: &SecretAddress,
    expected: u64,
    status: SecretStatus,
    r: &RefreshState,
    audit: &AuditRecord,
    notification: Option<&NewNotification>,
    mac: Option<&dyn AuditMac>,
) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = current_version(&tx, address)?;
    if found != Some(expected) {
        return Err(Error::Conflict {
            expected: Some(expected),
            found,
        });
    }
    tx.prepare_cached(
        "UPDATE secrets SET status = ?4, refresh_due_ms = ?5, last_refresh_at_ms = ?6,
             last_error = ?7, failure_count = ?8, next_attempt_at_ms = ?9
         WHERE environment = ?1 AND project = ?2 AND platform = ?3",
    )?
    .execute(params![
        address.environment(),
        address.project(),
        address.platform(),
        status.as_str(),
        r.refresh_due.map(ms),
        r.last_refresh_at.map(ms),
        r.last_error,
        r.failure_count,
        r.next_attempt_at.map(ms),
    ])?;
    commit_with_records(tx, audit, notification, mac)
}

fn addresses(rows: Vec<(String, String, String)>) -> Result<Vec<SecretAddress>> {
    rows.into_iter()
        .map(|(e, p, pl)| {
            SecretAddress::new(&e, &p, &pl)
                .map_err(|_| Error::Corrupt("stored address is not valid".into()))
        })
        .collect()
}

fn due_for_refresh(
    conn: &Connection,
    now: OffsetDateTime,
    limit: u32,
) -> Result<Vec<SecretAddress>> {
    let mut stmt = conn.prepare_cached(
        "SELECT environment, project, platform FROM secrets
         WHERE refresh_due_ms <= ?1
           AND status != 'reauth_required'
           AND (next_attempt_at_ms IS NULL OR next_attempt_at_ms <= ?1)
         ORDER BY refresh_due_ms
         LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![ms(now), limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    addresses(rows)
}

/// Takes the lease in the writer's transaction (the caller commits).
fn take_lease(
    tx: &Connection,
    address: &SecretAddress,
    holder: &str,
    now_ms: i64,
    ttl: Duration,
) -> Result<bool> {
    let n = tx
        .prepare_cached(
            "UPDATE secrets SET lease_holder = ?4, lease_until_ms = ?5 + ?6
             WHERE environment = ?1 AND project = ?2 AND platform = ?3
               AND (lease_holder IS NULL OR lease_holder = ?4 OR lease_until_ms <= ?5)",
        )?
        .execute(params![
            address.environment(),
            address.project(),
            address.platform(),
            holder,
            now_ms,
            ttl_ms(ttl),
        ])?;
    Ok(n == 1)
}

fn claim_due_tx(
    conn: &mut Connection,
    now: OffsetDateTime,
    limit: u32,
    holder: &str,
    ttl: Duration,
) -> Result<Vec<SecretAddress>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let clock = ms(OffsetDateTime::now_utc());
    let rows = tx
        .prepare_cached(
            "SELECT environment, project, platform FROM secrets
             WHERE refresh_due_ms <= ?1
               AND status != 'reauth_required'
               AND (next_attempt_at_ms IS NULL OR next_attempt_at_ms <= ?1)
               AND (lease_holder IS NULL OR lease_until_ms <= ?4)
             ORDER BY refresh_due_ms
             LIMIT ?2",
        )?
        .query_map(params![ms(now), limit, holder, clock], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let due = addresses(rows)?;
    for address in &due {
        take_lease(&tx, address, holder, clock, ttl)?;
    }
    tx.commit()?;
    Ok(due)
}

fn list_project(conn: &Connection, project: &str) -> Result<Vec<SecretAddress>> {
    let mut stmt = conn.prepare_cached(
        "SELECT environment, project, platform FROM secrets WHERE project = ?1
         ORDER BY environment, platform",
    )?;
    let rows = stmt
        .query_map(params![project], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    addresses(rows)
}

fn pending_notifications(
    conn: &Connection,
    now: OffsetDateTime,
    limit: u32,
) -> Result<Vec<PendingNotification>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, payload, attempts FROM notifications WHERE next_attempt_at_ms <= ?1
         ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![ms(now), limit], |r| {
            Ok(PendingNotification {
                id: r.get(0)?,
                payload: r.get(1)?,
                attempts: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn delete_tx(
    conn: &mut Connection,
    address: &SecretAddress,
    expected: Option<u64>,
    mut audit: AuditRecord,
    mac: Option<&dyn AuditMac>,
) -> Result<Option<u64>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = current_version(&tx, address)?;
    if expected.is_some() && found != expected {
        return Err(Error::Conflict { expected, found });
    }
    if found.is_some() {
        tx.prepare_cached(
            "DELETE FROM secrets WHERE environment = ?1 AND project = ?2 AND platform = ?3",
        )?
        .execute(params![
            address.environment(),
            address.project(),
            address.platform()
        ])?;
    } else {
        audit.outcome = AuditOutcome::NotFound;
    }
    insert_audit(&tx, &audit, mac)?;
    tx.commit()?;
    Ok(found)
}

type AuditRow = (
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
);

fn recent_audit(conn: &Connection, limit: u32) -> Result<Vec<AuditRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, request_id, engine_id, action, environment, project, platform, outcome,
                detail
         FROM audit_log ORDER BY seq DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (at, request_id, engine_id, action, environment, project, platform, outcome, detail): AuditRow =
            row?;
        out.push(AuditRecord {
            at: from_ms(at)?,
            request_id,
            engine_id,
            action: AuditAction::parse(&action)
                .ok_or_else(|| Error::Corrupt(format!("unknown audit action {action:?}")))?,
            environment,
            project,
            platform,
            outcome: AuditOutcome::parse(&outcome)
                .ok_or_else(|| Error::Corrupt(format!("unknown audit outcome {outcome:?}")))?,
            detail,
        });
    }
    Ok(out)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with default options.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens (creating if needed) the database at `path`, and runs pending
    /// migrations.
    pub async fn open_with(path: &Path, options: SqliteOptions) -> Result<Self> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, options)).await?
    }

    fn open_blocking(path: PathBuf, options: SqliteOptions) -> Result<Self> {
        prepare_file(&path, false)?;
        let mut writer = Connection::open(&path)?;
        configure(&writer, &options)?;
        migrate(&mut writer)?;
        let readers = (0..options.readers.max(1))
            .map(|_| {
                let conn = Connection::open(&path)?;
                configure(&conn, &options)?;
                Ok(Mutex::new(conn))
            })
            .collect::<Result<Vec<_>>>()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let inner = Arc::new(Inner {
            path,
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            audit_mac: RwLock::new(None),
            group_commit: options.group_commit.then_some(tx),
            queued: AtomicUsize::new(0),
            committer_alive: std::sync::atomic::AtomicBool::new(options.group_commit),
        });
        if options.group_commit {
            let weak = Arc::downgrade(&inner);
            let max = options.group_commit_max.max(1);
            std::thread::Builder::new()
                .name("vault-group-commit".into())
                .spawn(move || group_commit_loop(weak, rx, max))
                .map_err(|source| Error::Io {
                    path: "group commit thread".into(),
                    source,
                })?;
        }
        Ok(Self { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn with_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, Option<&dyn AuditMac>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mac = inner.audit_mac();
            f(&mut lock(&inner.writer), mac.as_deref())
        })
        .await?
    }

    /// Queues a job for the group-commit writer and waits for its commit.
    async fn group_committed(&self, job: impl FnOnce(Reply) -> Pending) -> Result<()> {
        let queue = self.inner.group_commit.as_ref();
        let send = |p| queue.is_some_and(|q| q.send(p).is_ok());
        group::submit(&self.inner.queued, send, job).await
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            f(&lock(&inner.readers[i]))
        })
        .await?
    }
}

#[async_trait]
impl SecretStore for SqliteStore {
    async fn get(&self, address: &SecretAddress) -> Result<Option<StoredSecret>> {
        // The hot path: a point read by primary key takes microseconds and
        // never waits for the writer (WAL), so it runs on the caller's
        // thread when a reader connection is free, sparing two thread
        // hand-offs; otherwise it queues on the blocking pool like the rest.
        if let Some(conn) = self.inner.try_reader() {
            return read_secret(&conn, address);
        }
        let address = address.clone();
        self.with_reader(move |c| read_secret(c, &address)).await
    }

    async fn put(
        &self,
        write: SecretWrite,
        expected: Option<u64>,
        audit: AuditRecord,
        notification: Option<NewNotification>,
    ) -> Result<()> {
        if self.inner.group_commit.is_some() {
            let job = PutJob {
                write,
                expected,
                audit,
                notification,
            };
            return self
                .group_committed(|reply| Pending::Put(Box::new(job), reply))
                .await;
        }
        self.with_writer(move |c, mac| {
            put_tx(c, &write, expected, &audit, notification.as_ref(), mac)
        })
        .await
    }

    async fn put_new_batch(
        &self,
        writes: Vec<SecretWrite>,
        audits: Vec<AuditRecord>,
    ) -> Result<()> {
        self.with_writer(move |c, mac| put_new_batch_tx(c, &writes, &audits, mac))
            .await
    }

    async fn update_state(
        &self,
        address: &SecretAddress,
        expected: u64,
        status: SecretStatus,
        refresh: RefreshState,
        audit: AuditRecord,
        notification: Option<NewNotification>,
    ) -> Result<()> {
        let address = address.clone();
        self.with_writer(move |c, mac| {
            update_state_tx(
                c,
                &address,
                expected,
                status,
                &refresh,
                &audit,
                notification.as_ref(),
                mac,
            )
        })
        .await
    }

    async fn due_for_refresh(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<SecretAddress>> {
        self.with_reader(move |c| due_for_refresh(c, now, limit))
            .await
    }

    async fn claim_due_for_refresh(
        &self,
        now: OffsetDateTime,
        limit: u32,
        holder: &str,
        ttl: Duration,
    ) -> Result<Vec<SecretAddress>> {
        let holder = holder.to_owned();
        self.with_writer(move |c, _| claim_due_tx(c, now, limit, &holder, ttl))
            .await
    }

    async fn acquire_refresh_lease(
        &self,
        address: &SecretAddress,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome> {
        let (address, holder) = (address.clone(), holder.to_owned());
        self.with_writer(move |c, _| {
            let now = ms(OffsetDateTime::now_utc());
            // Already this holder's for at least half its time (a claim by
            // the background refresher): no write, no commit.
            let mine: Option<i64> = c
                .prepare_cached(
                    "SELECT lease_until_ms FROM secrets
                     WHERE environment = ?1 AND project = ?2 AND platform = ?3
                       AND lease_holder = ?4",
                )?
                .query_row(
                    params![
                        address.environment(),
                        address.project(),
                        address.platform(),
                        holder
                    ],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            if mine.is_some_and(|until| until - now >= ttl_ms(ttl) / 2) {
                return Ok(LeaseOutcome::Acquired);
            }
            if take_lease(c, &address, &holder, now, ttl)? {
                return Ok(LeaseOutcome::Acquired);
            }
            let exists = c
                .prepare_cached(
                    "SELECT 1 FROM secrets
                     WHERE environment = ?1 AND project = ?2 AND platform = ?3",
                )?
                .query_row(
                    params![address.environment(), address.project(), address.platform()],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?;
            Ok(if exists.is_some() {
                LeaseOutcome::Held
            } else {
                LeaseOutcome::Missing
            })
        })
        .await
    }

    async fn acquire_job_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with_writer(move |c, _| {
            let now = ms(OffsetDateTime::now_utc());
            // Held by this holder for at least half its time: nothing to
            // write (one process alone commits nothing for its jobs).
            let mine: Option<i64> = c
                .prepare_cached("SELECT until_ms FROM job_leases WHERE name = ?1 AND holder = ?2")?
                .query_row(params![name, holder], |r| r.get(0))
                .optional()?;
            if mine.is_some_and(|until| until - now >= ttl_ms(ttl) / 2) {
                return Ok(true);
            }
            let n = c
                .prepare_cached(
                    "INSERT INTO job_leases (name, holder, until_ms) VALUES (?1, ?2, ?3 + ?4)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                         until_ms = excluded.until_ms
                     WHERE job_leases.holder = excluded.holder OR job_leases.until_ms <= ?3",
                )?
                .execute(params![name, holder, now, ttl_ms(ttl)])?;
            Ok(n == 1)
        })
        .await
    }

    async fn release_refresh_lease(&self, address: &SecretAddress, holder: &str) -> Result<()> {
        let (address, holder) = (address.clone(), holder.to_owned());
        self.with_writer(move |c, _| {
            c.prepare_cached(
                "UPDATE secrets SET lease_holder = NULL, lease_until_ms = NULL
                 WHERE environment = ?1 AND project = ?2 AND platform = ?3 AND lease_holder = ?4",
            )?
            .execute(params![
                address.environment(),
                address.project(),
                address.platform(),
                holder
            ])?;
            Ok(())
        })
        .await
    }

    async fn list_project(&self, project: &str) -> Result<Vec<SecretAddress>> {
        let project = project.to_owned();
        self.with_reader(move |c| list_project(c, &project)).await
    }

    async fn pending_notifications(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<PendingNotification>> {
        self.with_reader(move |c| pending_notifications(c, now, limit))
            .await
    }

    async fn notification_delivered(&self, id: i64) -> Result<()> {
        self.with_writer(move |c, _| {
            c.prepare_cached("DELETE FROM notifications WHERE id = ?1")?
                .execute(params![id])?;
            Ok(())
        })
        .await
    }

    async fn notification_failed(&self, id: i64, retry_at: OffsetDateTime) -> Result<()> {
        self.with_writer(move |c, _| {
            c.prepare_cached(
                "UPDATE notifications SET attempts = attempts + 1, next_attempt_at_ms = ?2
                 WHERE id = ?1",
            )?
            .execute(params![id, ms(retry_at)])?;
            Ok(())
        })
        .await
    }

    async fn delete(
        &self,
        address: &SecretAddress,
        expected: Option<u64>,
        audit: AuditRecord,
    ) -> Result<Option<u64>> {
        let address = address.clone();
        self.with_writer(move |c, mac| delete_tx(c, &address, expected, audit, mac))
            .await
    }

    async fn append_audit(&self, record: AuditRecord) -> Result<()> {
        if self.inner.group_commit.is_some() {
            return self
                .group_committed(|reply| Pending::Audit(record, reply))
                .await;
        }
        // The row and the anchors commit together.
        self.with_writer(move |c, mac| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            insert_audit(&tx, &record, mac)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn query_audit(&self, q: AuditQuery) -> Result<AuditPage> {
        self.with_reader(move |c| {
            let (oldest, head): (Option<i64>, Option<i64>) = c
                .prepare_cached("SELECT MIN(seq), MAX(seq) FROM audit_log")?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let floor = AuditPage::floor(&q, head);
            let mut stmt = c.prepare_cached(
                "SELECT seq, at_ms, request_id, engine_id, action, environment, project, platform,
                        outcome, detail, mac
                 FROM audit_log
                 WHERE (?1 IS NULL OR environment = ?1) AND (?2 IS NULL OR project = ?2)
                   AND (?3 IS NULL OR platform = ?3) AND (?4 IS NULL OR engine_id = ?4)
                   AND (?5 IS NULL OR action = ?5) AND (?6 IS NULL OR at_ms >= ?6)
                   AND (?7 IS NULL OR at_ms < ?7) AND (?8 IS NULL OR seq < ?8)
                   AND (?10 IS NULL OR seq >= ?10)
                 ORDER BY seq DESC LIMIT ?9",
            )?;
            let rows = stmt.query_map(
                params![
                    q.environment,
                    q.project,
                    q.platform,
                    q.engine_id,
                    q.action.map(|a| a.as_str()),
                    q.since.map(ms),
                    q.until.map(ms),
                    q.before_seq,
                    q.limit,
                    floor,
                ],
                entry_from_row,
            )?;
            let entries = collect_entries(rows)?;
            Ok(AuditPage::new(entries, &q, floor, oldest))
        })
        .await
    }

    async fn audit_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        self.with_reader(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, at_ms, request_id, engine_id, action, environment, project, platform,
                        outcome, detail, mac
                 FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], entry_from_row)?;
            collect_entries(rows)
        })
        .await
    }

    async fn audit_cursor(&self, name: &str) -> Result<i64> {
        let name = name.to_owned();
        let mac = self.inner.audit_mac();
        self.with_reader(move |c| {
            let row: Option<(i64, Option<Vec<u8>>, Option<i64>)> = c
                .prepare_cached(
                    "SELECT seq, signature, mac_key FROM audit_cursors WHERE name = ?1",
                )?
                .query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((seq, signature, version)) = row else {
                return Ok(0);
            };
            check_cursor(mac.as_deref(), &name, seq, signature.as_deref(), version)?;
            Ok(seq)
        })
        .await
    }

    async fn set_audit_cursor(&self, name: &str, seq: i64) -> Result<()> {
        let name = name.to_owned();
        self.with_writer(move |c, mac| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<(i64, Option<Vec<u8>>, Option<i64>)> = tx
                .query_row(
                    "SELECT seq, signature, mac_key FROM audit_cursors WHERE name = ?1",
                    params![name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            // Cursors only move forward, and never from a position the vault
            // did not sign: signing max(forged, seq) would make a forgery
            // genuine.
            if let Some((at, signature, version)) = &current {
                check_cursor(mac, &name, *at, signature.as_deref(), *version)?;
            }
            let seq = current.map_or(seq, |(c, _, _)| c.max(seq));
            let version = mac.and_then(mac_version);
            let signature = mac
                .and_then(|m| anchor_signature(m, version, &format!("cursor:{name}"), seq, &[]))
                .map(|s| s.to_vec());
            tx.execute(
                "INSERT INTO audit_cursors (name, seq, signature, mac_key) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, signature = excluded.signature,
                     mac_key = excluded.mac_key",
                params![name, seq, signature, version],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn prune_audit(
        &self,
        before: OffsetDateTime,
        max_seq: i64,
        limit: u32,
    ) -> Result<Option<i64>> {
        let Some(mac) = self.inner.audit_mac() else {
            return Err(Error::Invalid("the usage-log chain key is not set"));
        };
        let now = OffsetDateTime::now_utc();
        self.with_writer(move |c, _| prune_tx(c, mac.as_ref(), before, max_seq, limit, now))
            .await
    }

    fn chain_audit(&self, mac: Arc<dyn AuditMac>) {
        *self
            .inner
            .audit_mac
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(mac);
    }

    async fn verify_audit(&self, mac: Arc<dyn AuditMac>) -> Result<AuditVerification> {
        // One read transaction: the rows, anchors and checkpoint all from
        // one snapshot, however many records are appended meanwhile.
        self.with_reader(move |c| {
            let snapshot = c.unchecked_transaction()?;
            verify_audit(&snapshot, mac.as_ref())
        })
        .await
    }

    async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditRecord>> {
        self.with_reader(move |c| recent_audit(c, limit)).await
    }

    async fn put_engine(&self, e: EngineRecord) -> Result<()> {
        let grants = serde_json::to_string(&e.grants)
            .map_err(|_| Error::Invalid("grants do not serialise"))?;
        self.with_writer(move |c, _| {
            c.prepare_cached(
                "INSERT INTO engines (id, token_sha256, grants, created_at_ms, updated_at_ms,
                     revoked_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET token_sha256 = excluded.token_sha256,
                     grants = excluded.grants, updated_at_ms = excluded.updated_at_ms,
                     revoked_at_ms = excluded.revoked_at_ms",
            )?
            .execute(params![
                e.id,
                e.token_sha256,
                grants,
                ms(e.created_at),
                ms(e.updated_at),
                e.revoked_at.map(ms),
            ])?;
            Ok(())
        })
        .await
    }

    async fn list_engines(&self) -> Result<Vec<EngineRecord>> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, token_sha256, grants, created_at_ms, updated_at_ms, revoked_at_ms
                 FROM engines ORDER BY id",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(id, token_sha256, grants, created, updated, revoked)| {
                    Ok(EngineRecord {
                        id,
                        token_sha256,
                        grants: serde_json::from_str(&grants).map_err(|_| {
                            Error::Corrupt("engine grants are not a JSON list".into())
                        })?,
                        created_at: from_ms(created)?,
                        updated_at: from_ms(updated)?,
                        revoked_at: opt_ms(revoked)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn key_ids_in_use(&self) -> Result<Vec<String>> {
        // Checked at every start: one index seek per distinct key id, so
        // the cost does not grow with the number of secrets.
        self.with_reader(|c| {
            let mut ids = std::collections::BTreeSet::new();
            let mut next = c.prepare_cached("SELECT MIN(key_id) FROM secrets WHERE key_id > ?1")?;
            let mut last = String::new();
            while let Some(id) = next.query_row(params![last], |r| r.get::<_, Option<String>>(0))? {
                ids.insert(id.clone());
                last = id;
            }
            let mut audit = c.prepare_cached("SELECT DISTINCT key_id FROM audit_keys")?;
            for id in audit.query_map([], |r| r.get::<_, String>(0))? {
                ids.insert(id?);
            }
            Ok(ids.into_iter().collect())
        })
        .await
    }

    async fn key_usage(&self) -> Result<Vec<KeyUsage>> {
        self.with_reader(|c| {
            let mut usage: std::collections::BTreeMap<String, KeyUsage> = Default::default();
            let mut count = |sql: &str, audit: bool| -> Result<()> {
                let mut stmt = c.prepare_cached(sql)?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                for row in rows {
                    let (key_id, n) = row?;
                    let entry = usage.entry(key_id.clone()).or_insert(KeyUsage {
                        key_id,
                        secrets: 0,
                        audit_keys: 0,
                    });
                    let n = u64_of(n, "count")?;
                    if audit {
                        entry.audit_keys += n;
                    } else {
                        entry.secrets += n;
                    }
                }
                Ok(())
            };
            count(
                "SELECT key_id, COUNT(*) FROM secrets GROUP BY key_id",
                false,
            )?;
            count(
                "SELECT key_id, COUNT(*) FROM audit_keys GROUP BY key_id",
                true,
            )?;
            Ok(usage.into_values().collect())
        })
        .await
    }

    async fn secrets_to_rewrap(
        &self,
        key_id: &str,
        after: Option<SecretAddress>,
        limit: u32,
    ) -> Result<Vec<RewrapItem>> {
        let key_id = key_id.to_owned();
        self.with_reader(move |c| {
            // The common case, nothing to rewrap, answered from the key_id
            // index without scanning the table.
            let any: Option<i64> = c
                .prepare_cached("SELECT 1 FROM secrets WHERE key_id < ?1 OR key_id > ?1 LIMIT 1")?
                .query_row(params![key_id], |r| r.get(0))
                .optional()?;
            if any.is_none() {
                return Ok(Vec::new());
            }
            let (e, p, pl) = after
                .as_ref()
                .map(|a| (a.environment(), a.project(), a.platform()))
                .unwrap_or(("", "", ""));
            let mut stmt = c.prepare_cached(
                "SELECT environment, project, platform, version, sealed FROM secrets
                 WHERE key_id != ?1 AND (environment, project, platform) > (?2, ?3, ?4)
                 ORDER BY environment, project, platform LIMIT ?5",
            )?;
            let rows = stmt.query_map(params![key_id, e, p, pl, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (environment, project, platform, version, sealed) = row?;
                let address = SecretAddress::new(&environment, &project, &platform)
                    .map_err(|e| Error::Corrupt(format!("stored address: {e}")))?;
                out.push(RewrapItem {
                    address,
                    version: u64_of(version, "version")?,
                    sealed,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn rewrap_secrets(&self, items: Vec<Rewrapped>) -> Result<u64> {
        if items.is_empty() {
            return Ok(0);
        }
        self.with_writer(move |c, _| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut replaced = 0u64;
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE secrets SET sealed = ?1, key_id = ?2
                     WHERE environment = ?3 AND project = ?4 AND platform = ?5
                       AND version = ?6 AND sealed = ?7",
                )?;
                for r in &items {
                    let a = &r.item.address;
                    replaced += stmt.execute(params![
                        r.sealed,
                        r.key_id,
                        a.environment(),
                        a.project(),
                        a.platform(),
                        i64_of(r.item.version)?,
                        r.item.sealed,
                    ])? as u64;
                }
            }
            tx.commit()?;
            Ok(replaced)
        })
        .await
    }

    async fn audit_keys(&self) -> Result<Vec<AuditKeyRecord>> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT version, sealed, key_id, created_at_ms FROM audit_keys ORDER BY version",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (version, sealed, key_id, at) = row?;
                out.push(AuditKeyRecord {
                    version: u32::try_from(version)
                        .map_err(|_| Error::Corrupt("usage-log key version".into()))?,
                    sealed,
                    key_id,
                    created_at: from_ms(at)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn add_audit_key(&self, key: AuditKeyRecord) -> Result<()> {
        self.with_writer(move |c, _| {
            let inserted = c.execute(
                "INSERT INTO audit_keys (version, sealed, key_id, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (version) DO NOTHING",
                params![key.version, key.sealed, key.key_id, ms(key.created_at)],
            )?;
            if inserted == 0 {
                return Err(Error::Invalid("that usage-log key version exists already"));
            }
            Ok(())
        })
        .await
    }

    async fn rewrap_audit_key(
        &self,
        version: u32,
        old: Vec<u8>,
        sealed: Vec<u8>,
        key_id: String,
    ) -> Result<bool> {
        self.with_writer(move |c, _| {
            let n = c.execute(
                "UPDATE audit_keys SET sealed = ?1, key_id = ?2 WHERE version = ?3 AND sealed = ?4",
                params![sealed, key_id, version, old],
            )?;
            Ok(n == 1)
        })
        .await
    }

    fn audit_writer_alive(&self) -> bool {
        self.inner.group_commit.is_none() || self.inner.committer_alive.load(Ordering::SeqCst)
    }

    async fn ready(&self) -> Result<()> {
        self.with_writer(|c, _| {
            // Takes the write lock and lets it go: the writer is alive and
            // the file is writable.
            c.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
            Ok(())
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT status, COUNT(*) FROM secrets GROUP BY status ORDER BY status",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut secrets_by_status = Vec::with_capacity(rows.len());
            for (status, n) in rows {
                let status = SecretStatus::parse(&status)
                    .ok_or_else(|| Error::Corrupt(format!("unknown status {status:?}")))?;
                secrets_by_status.push((status, u64_of(n, "count")?));
            }
            let count = |sql: &str| -> Result<u64> {
                let n: i64 = c.query_row(sql, [], |r| r.get(0))?;
                u64_of(n, "count")
            };
            let mut cursors =
                c.prepare_cached("SELECT name, seq FROM audit_cursors ORDER BY name")?;
            let audit_cursors = cursors
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(StoreStats {
                secrets_by_status,
                notifications_pending: count("SELECT COUNT(*) FROM notifications")?,
                audit_records: count("SELECT COALESCE(MAX(seq), 0) FROM audit_log")?,
                audit_cursors,
                audit_queue: 0,
            })
        })
        .await
        .map(|mut stats| {
            stats.audit_queue = self.inner.queued.load(Ordering::Relaxed) as u64;
            stats
        })
    }

    async fn health(&self) -> Result<()> {
        self.with_reader(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
pub(crate) fn schema_version(path: &Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

pub(crate) const MIGRATION_COUNT: usize = MIGRATIONS.len();

#[cfg(test)]
pub(crate) const MIGRATION_1: &str = MIGRATIONS[0];

#[cfg(test)]
pub(crate) const MIGRATIONS_BEFORE_REKEY: &[&str] = MIGRATIONS.split_at(REKEY_MIGRATION - 1).0;

/// The migrations of a file from before the chain's anchors (migration 7).
#[cfg(test)]
pub(crate) const MIGRATIONS_BEFORE_ANCHORS: &[&str] = MIGRATIONS.split_at(6).0;

/// Copies the SQLite database at `source` to a new file `dest` (mode 0600,
/// which must not exist) with SQLite's online backup API while other
/// processes keep writing: the copy is one consistent snapshot, because the
/// source connection holds a read transaction for the whole copy (in WAL
/// mode that blocks no writer). `progress(copied_pages, total_pages)` is
/// called after each step. The copy holds what the database holds: sealed
/// values, metadata, token hashes and the usage log; never a key.
pub fn backup_database(
    source: &Path,
    dest: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<()> {
    // symlink_metadata: a dangling link counts as existing too.
    if dest.symlink_metadata().is_ok() {
        return Err(Error::Io {
            path: dest.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists already"),
        });
    }
    if !source.exists() {
        return Err(Error::Io {
            path: source.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no database here"),
        });
    }
    let src = Connection::open_with_flags(
        source,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    src.busy_timeout(Duration::from_secs(10))?;
    // The snapshot: every step below reads inside this transaction.
    src.execute_batch("BEGIN")?;
    let _: i64 = src.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
    prepare_file(dest, true)?;
    let result = (|| -> Result<()> {
        let mut dst = Connection::open(dest)?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
            loop {
                let step = backup.step(512)?;
                let p = backup.progress();
                let total = u64::try_from(p.pagecount).unwrap_or(0);
                let left = u64::try_from(p.remaining).unwrap_or(0);
                progress(total.saturating_sub(left), total);
                match step {
                    rusqlite::backup::StepResult::Done => break,
                    rusqlite::backup::StepResult::More => {}
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        // A standalone file: no WAL beside it.
        dst.pragma_update(None, "journal_mode", "DELETE")?;
        let check: String = dst.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(Error::Corrupt(format!(
                "the copy fails its integrity check: {check}"
            )));
        }
        Ok(())
    })();
    let _ = src.execute_batch("COMMIT");
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

/// Restores a copy made by [`backup_database`] to `dest`, which must not
/// exist yet (restore into an empty data directory): checks the copy's
/// integrity and schema first, then writes it with mode 0600 and syncs it.
pub fn restore_database(backup: &Path, dest: &Path) -> Result<()> {
    {
        let src = Connection::open_with_flags(backup, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let check: String = src.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(Error::Corrupt(format!(
                "the backup fails its integrity check: {check}"
            )));
        }
        let version: i64 = src.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > MIGRATION_COUNT as i64 {
            return Err(Error::SchemaTooNew {
                found: version,
                supported: MIGRATION_COUNT as i64,
            });
        }
        if version == 0 {
            return Err(Error::Corrupt("the file is not a vault database".into()));
        }
    }
    for path in [dest.to_owned(), sidecar_file(dest, "-wal")] {
        if path.symlink_metadata().is_ok() {
            return Err(Error::Io {
                path: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists already: restore into an empty data directory",
                ),
            });
        }
    }
    backup_database(backup, dest, |_, _| {})?;
    std::fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(|source| Error::Io {
            path: dest.display().to_string(),
            source,
        })?;
    Ok(())
}
