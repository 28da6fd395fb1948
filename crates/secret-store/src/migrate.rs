//! Copying a SQLite vault into PostgreSQL, row for row.
//!
//! Both backends keep the same tables and columns, so every value moves
//! as it is: sealed values stay sealed under the same keys, and the usage
//! log keeps its sequence numbers, MACs, anchors and checkpoints, so its
//! chain still verifies on the other side. Refresh leases are not copied.

use std::path::Path;

use futures_util::future::try_join_all;
use rusqlite::types::Value;
use tokio_postgres::types::ToSql;

use crate::{Error, PostgresOptions, PostgresStore, Result, SqliteStore};

/// Column types, as PostgreSQL wants them.
#[derive(Clone, Copy)]
enum Ty {
    Int,
    Text,
    Blob,
    Bool,
}

use Ty::{Blob, Bool, Int, Text};

/// Every table and the columns copied, parents before children.
const TABLES: &[(&str, &[(&str, Ty)])] = &[
    (
        "secrets",
        &[
            ("environment", Text),
            ("project", Text),
            ("platform", Text),
            ("version", Int),
            ("sealed", Blob),
            ("key_id", Text),
            ("status", Text),
            ("valid_until_ms", Int),
            ("scopes", Text),
            ("has_refresh_token", Bool),
            ("token_type", Text),
            ("metadata", Text),
            ("created_at_ms", Int),
            ("updated_at_ms", Int),
            ("refresh_due_ms", Int),
            ("last_refresh_at_ms", Int),
            ("last_error", Text),
            ("failure_count", Int),
            ("next_attempt_at_ms", Int),
        ],
    ),
    (
        "audit_log",
        &[
            ("seq", Int),
            ("at_ms", Int),
            ("request_id", Text),
            ("engine_id", Text),
            ("action", Text),
            ("environment", Text),
            ("project", Text),
            ("platform", Text),
            ("outcome", Text),
            ("detail", Text),
            ("mac", Blob),
            ("mac_key", Int),
        ],
    ),
    (
        "notifications",
        &[
            ("id", Int),
            ("created_at_ms", Int),
            ("payload", Text),
            ("attempts", Int),
            ("next_attempt_at_ms", Int),
        ],
    ),
    (
        "engines",
        &[
            ("id", Text),
            ("token_sha256", Text),
            ("grants", Text),
            ("created_at_ms", Int),
            ("updated_at_ms", Int),
            ("revoked_at_ms", Int),
        ],
    ),
    (
        "audit_cursors",
        &[
            ("name", Text),
            ("seq", Int),
            ("signature", Blob),
            ("mac_key", Int),
        ],
    ),
    (
        "audit_checkpoints",
        &[
            ("seq", Int),
            ("mac", Blob),
            ("at_ms", Int),
            ("signature", Blob),
            ("mac_key", Int),
        ],
    ),
    (
        "audit_anchors",
        &[
            ("name", Text),
            ("seq", Int),
            ("mac", Blob),
            ("signature", Blob),
            ("mac_key", Int),
        ],
    ),
    (
        "audit_keys",
        &[
            ("version", Int),
            ("sealed", Blob),
            ("key_id", Text),
            ("created_at_ms", Int),
        ],
    ),
];

/// Rows read from SQLite per step.
const CHUNK: i64 = 2000;

/// What [`migrate_sqlite_to_postgres`] copied: rows per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// `(table, rows)`, in copy order.
    pub tables: Vec<(String, u64)>,
}

/// One SQLite value as a PostgreSQL parameter of type `ty`.
fn param(value: Value, ty: Ty, table: &str, column: &str) -> Result<Box<dyn ToSql + Sync + Send>> {
    let wrong = || Error::Corrupt(format!("{table}.{column} holds a value of the wrong type"));
    Ok(match (ty, value) {
        (Int, Value::Integer(v)) => Box::new(v),
        (Int, Value::Null) => Box::new(None::<i64>),
        (Bool, Value::Integer(v)) => Box::new(v != 0),
        (Bool, Value::Null) => Box::new(None::<bool>),
        (Text, Value::Text(v)) => Box::new(v),
        (Text, Value::Null) => Box::new(None::<String>),
        (Blob, Value::Blob(v)) => Box::new(v),
        (Blob, Value::Null) => Box::new(None::<Vec<u8>>),
        _ => return Err(wrong()),
    })
}

/// Reads up to [`CHUNK`] rows of `table` after `rowid`, in the snapshot
/// the connection's open transaction holds.
fn read_chunk(
    conn: &rusqlite::Connection,
    table: &str,
    columns: &[(&str, Ty)],
    after: i64,
) -> Result<Vec<(i64, Vec<Value>)>> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let sql = format!(
        "SELECT rowid, {} FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        names.join(", ")
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params![after, CHUNK], |r| {
        let rowid: i64 = r.get(0)?;
        let values = (1..=columns.len())
            .map(|i| r.get::<_, Value>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((rowid, values))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Copies the SQLite vault at `sqlite` into the PostgreSQL database at
/// `url`, which must hold no vault data yet (its schema is created if
/// needed). The copy is one consistent snapshot of the source (one read
/// transaction; the source may stay in use, but changes made after the
/// copy starts are not in it) and one transaction on the target: all or
/// nothing. `progress(table, rows_copied, rows_in_table)` follows it.
pub async fn migrate_sqlite_to_postgres(
    sqlite: &Path,
    url: &str,
    options: PostgresOptions,
    mut progress: impl FnMut(&str, u64, u64) + Send,
) -> Result<MigrationReport> {
    if !sqlite.exists() {
        return Err(Error::Io {
            path: sqlite.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no database here"),
        });
    }
    // Bring the source to this build's schema first.
    drop(SqliteStore::open(sqlite).await?);
    let target = PostgresStore::connect(url, options).await?;
    let mut client = target.client().await?;
    let tx = client.transaction().await?;
    for (table, _) in TABLES {
        let any = tx
            .query_opt(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
            .await?;
        if any.is_some() {
            return Err(Error::Invalid(
                "the PostgreSQL database already holds vault data; migrate into an empty one",
            ));
        }
    }
    let path = sqlite.to_owned();
    let mut source = tokio::task::spawn_blocking(move || -> Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // The snapshot every chunk below reads from.
        conn.execute_batch("BEGIN")?;
        conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(conn)
    })
    .await??;
    let mut report = MigrationReport::default();
    for (table, columns) in TABLES {
        let (conn, total) = tokio::task::spawn_blocking(move || -> Result<_> {
            let n: i64 =
                source.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
            Ok((source, n))
        })
        .await??;
        source = conn;
        let total = u64::try_from(total).unwrap_or(0);
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
        let insert = tx
            .prepare(&format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                names.join(", "),
                placeholders.join(", ")
            ))
            .await?;
        let mut copied = 0u64;
        let mut after = 0i64;
        progress(table, 0, total);
        loop {
            let (conn, rows) = tokio::task::spawn_blocking(move || -> Result<_> {
                let rows = read_chunk(&source, table, columns, after)?;
                Ok((source, rows))
            })
            .await??;
            source = conn;
            let Some((last, _)) = rows.last() else {
                break;
            };
            after = *last;
            let mut batch = Vec::with_capacity(rows.len());
            for (_, values) in rows {
                let params = values
                    .into_iter()
                    .zip(columns.iter())
                    .map(|(v, (name, ty))| param(v, *ty, table, name))
                    .collect::<Result<Vec<_>>>()?;
                batch.push(params);
            }
            // Sent together: the client pipelines them on one connection.
            let n = batch.len() as u64;
            try_join_all(batch.iter().map(|params| {
                let refs: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                let insert = &insert;
                let tx = &tx;
                async move { tx.execute(insert, &refs).await }
            }))
            .await?;
            copied += n;
            progress(table, copied, total);
        }
        report.tables.push(((*table).to_owned(), copied));
    }
    // New notifications continue after the copied ids.
    tx.execute(
        "SELECT setval(pg_get_serial_sequence('notifications', 'id'),
                       COALESCE((SELECT MAX(id) FROM notifications), 0) + 1, false)",
        &[],
    )
    .await?;
    tx.commit().await?;
    let _ = tokio::task::spawn_blocking(move || source.execute_batch("COMMIT")).await;
    Ok(report)
}
