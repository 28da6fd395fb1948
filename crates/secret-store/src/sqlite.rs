//! The embedded SQLite store.

use std::fmt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use time::OffsetDateTime;
use vault_types::SecretAddress;

use crate::{
    AuditAction, AuditOutcome, AuditRecord, Error, Result, SecretMeta, SecretStatus, SecretStore,
    SecretWrite, StoredSecret,
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
];

/// Tuning for [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Connections used for reads (WAL readers run in parallel).
    pub readers: usize,
    /// How long a statement waits for a lock before failing.
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            readers: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
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
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    tx.commit()?;
    Ok(())
}

/// Creates the database file with mode 0600 (and its directory with 0700)
/// before SQLite opens it, so it is never readable by others.
fn prepare_file(path: &Path) -> Result<()> {
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
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    Ok(())
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(v: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000)
        .map_err(|_| Error::Corrupt(format!("timestamp {v} out of range")))
}

fn u64_of(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("{what} {v} is negative")))
}

fn i64_of(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Invalid("version out of range"))
}

const SELECT_SECRET: &str = "SELECT version, sealed, key_id, status, valid_until_ms, scopes,
        has_refresh_token, token_type, metadata, created_at_ms, updated_at_ms
     FROM secrets WHERE environment = ?1 AND project = ?2 AND platform = ?3";

type SecretRow = (
    i64,
    Vec<u8>,
    String,
    String,
    Option<i64>,
    String,
    bool,
    String,
    Option<String>,
    i64,
    i64,
);

fn read_secret(conn: &Connection, address: &SecretAddress) -> Result<Option<StoredSecret>> {
    let row: Option<SecretRow> = conn
        .prepare_cached(SELECT_SECRET)?
        .query_row(
            params![address.environment(), address.project(), address.platform()],
            |r| {
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
                    r.get(9)?,
                    r.get(10)?,
                ))
            },
        )
        .optional()?;
    let Some((
        version,
        sealed,
        key_id,
        status,
        valid_until,
        scopes,
        has_rt,
        token_type,
        metadata,
        created,
        updated,
    )) = row
    else {
        return Ok(None);
    };
    let status = SecretStatus::parse(&status)
        .ok_or_else(|| Error::Corrupt(format!("unknown status {status:?}")))?;
    let scopes: Vec<String> = serde_json::from_str(&scopes)
        .map_err(|_| Error::Corrupt("scopes column is not a JSON array".into()))?;
    let metadata = metadata
        .map(|m| serde_json::from_str(&m))
        .transpose()
        .map_err(|_| Error::Corrupt("metadata column is not a JSON object".into()))?;
    Ok(Some(StoredSecret {
        address: address.clone(),
        version: u64_of(version, "version")?,
        sealed,
        key_id,
        meta: SecretMeta {
            status,
            valid_until: valid_until.map(from_ms).transpose()?,
            scopes,
            has_refresh_token: has_rt,
            token_type,
            metadata,
        },
        created_at: from_ms(created)?,
        updated_at: from_ms(updated)?,
    }))
}

fn insert_audit(tx: &Connection, r: &AuditRecord) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO audit_log (at_ms, request_id, engine_id, action, environment, project,
             platform, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        ms(r.at),
        r.request_id,
        r.engine_id,
        r.action.as_str(),
        r.environment,
        r.project,
        r.platform,
        r.outcome.as_str(),
        r.detail,
    ])?;
    Ok(())
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

fn put_tx(
    conn: &mut Connection,
    w: &SecretWrite,
    expected: Option<u64>,
    audit: &AuditRecord,
) -> Result<()> {
    if w.version != expected.unwrap_or(0) + 1 {
        return Err(Error::Invalid(
            "version must be one more than the expected version",
        ));
    }
    let scopes = serde_json::to_string(&w.meta.scopes)
        .map_err(|_| Error::Invalid("scopes do not serialise"))?;
    let metadata = w
        .meta
        .metadata
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|_| Error::Invalid("metadata does not serialise"))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = current_version(&tx, &w.address)?;
    if found != expected {
        return Err(Error::Conflict { expected, found });
    }
    let a = &w.address;
    tx.prepare_cached(
        "INSERT INTO secrets (environment, project, platform, version, sealed, key_id, status,
             valid_until_ms, scopes, has_refresh_token, token_type, metadata, created_at_ms,
             updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)
         ON CONFLICT (environment, project, platform) DO UPDATE SET
             version = excluded.version, sealed = excluded.sealed, key_id = excluded.key_id,
             status = excluded.status, valid_until_ms = excluded.valid_until_ms,
             scopes = excluded.scopes, has_refresh_token = excluded.has_refresh_token,
             token_type = excluded.token_type, metadata = excluded.metadata,
             updated_at_ms = excluded.updated_at_ms",
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
    ])?;
    insert_audit(&tx, audit)?;
    tx.commit()?;
    Ok(())
}

fn delete_tx(
    conn: &mut Connection,
    address: &SecretAddress,
    mut audit: AuditRecord,
) -> Result<Option<u64>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = current_version(&tx, address)?;
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
    insert_audit(&tx, &audit)?;
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
        prepare_file(&path)?;
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
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn with_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.writer))).await?
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
        let address = address.clone();
        self.with_reader(move |c| read_secret(c, &address)).await
    }

    async fn put(
        &self,
        write: SecretWrite,
        expected: Option<u64>,
        audit: AuditRecord,
    ) -> Result<()> {
        self.with_writer(move |c| put_tx(c, &write, expected, &audit))
            .await
    }

    async fn delete(&self, address: &SecretAddress, audit: AuditRecord) -> Result<Option<u64>> {
        let address = address.clone();
        self.with_writer(move |c| delete_tx(c, &address, audit))
            .await
    }

    async fn append_audit(&self, record: AuditRecord) -> Result<()> {
        self.with_writer(move |c| insert_audit(c, &record)).await
    }

    async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditRecord>> {
        self.with_reader(move |c| recent_audit(c, limit)).await
    }

    async fn key_ids_in_use(&self) -> Result<Vec<String>> {
        self.with_reader(|c| {
            let mut stmt =
                c.prepare_cached("SELECT DISTINCT key_id FROM secrets ORDER BY key_id")?;
            let ids = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(ids)
        })
        .await
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

#[cfg(test)]
pub(crate) const MIGRATION_COUNT: usize = MIGRATIONS.len();
