//! Throw-away databases on the PostgreSQL server the tests are given.

use std::time::{SystemTime, UNIX_EPOCH};

/// The variable naming the server (and a database on it the tests may
/// connect to): `postgres://user@host:port/db`.
pub const POSTGRES_URL_VAR: &str = "VAULT_TEST_POSTGRES_URL";

/// A fresh, empty database for one test, dropped (with every connection
/// still open to it) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs `sql` on the server at `url`, from a thread of its own (so it
/// works inside and outside a runtime, and in `Drop`).
fn admin(url: &str, sql: String) -> Result<(), String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| format!("cannot connect to {POSTGRES_URL_VAR}: {e}"))?;
            let driver = tokio::spawn(connection);
            let result = client
                .batch_execute(&sql)
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(db) => format!("{}: {}", db.code().code(), db.message()),
                    None => e.to_string(),
                });
            drop(client);
            let _ = driver.await;
            result
        })
    })
    .join()
    .map_err(|_| "the database helper thread panicked".to_owned())?
}

impl TestDatabase {
    /// Creates a fresh database on the server `VAULT_TEST_POSTGRES_URL`
    /// points at. Without that variable, says loudly that the calling test
    /// is skipped and returns `None`; with `VAULT_TEST_REQUIRE_POSTGRES`
    /// set (as in CI), fails instead.
    pub fn create() -> Option<Self> {
        let Ok(admin_url) = std::env::var(POSTGRES_URL_VAR) else {
            assert!(
                std::env::var_os("VAULT_TEST_REQUIRE_POSTGRES").is_none(),
                "{POSTGRES_URL_VAR} is required (VAULT_TEST_REQUIRE_POSTGRES is set) but not set"
            );
            eprintln!(
                "SKIPPED: {POSTGRES_URL_VAR} is not set (e.g. \
                 postgres://postgres@127.0.0.1:5432/test); this PostgreSQL test did not run"
            );
            return None;
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "vault_t_{:x}_{:x}",
            std::process::id(),
            nanos & 0xffff_ffff_ffff
        );
        if let Err(e) = admin(&admin_url, format!("CREATE DATABASE {name}")) {
            panic!("could not create a test database: {e}");
        }
        let url = with_database(&admin_url, &name);
        Some(Self {
            admin_url,
            name,
            url,
        })
    }

    /// The connection string of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs SQL statements in the new database (to look behind the
    /// vault's back, or to tamper with what it wrote).
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        admin(&self.url, sql.to_owned())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = admin(
            &self.admin_url,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h:5432/test?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
