//! `vault-server migrate --to postgres://…`: from one SQLite node to a
//! PostgreSQL database that several replicas share.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, StorageBackend};
use crate::progress::Progress;

/// Copies the configured SQLite vault into the PostgreSQL database at `to`
/// and checks the copy: it opens with the configured keys, and its usage
/// log verifies as the original did.
pub fn run(config_path: Option<&Path>, to: &str) -> ExitCode {
    let to = to.to_owned();
    crate::cli::run_tool(
        config_path,
        |config| async move { migrate(config, &to).await },
    )
}

async fn migrate(config: Config, to: &str) -> Result<ExitCode, String> {
    if config.storage.backend != StorageBackend::Sqlite {
        return Err("migrate copies a SQLite vault; storage.backend is already postgres".into());
    }
    let target = vault_secret_store::describe_postgres_url(to);
    vault_secret_store::parse_postgres_url(to).map_err(|e| e.to_string())?;
    // The source must open with the configured keys before anything moves.
    let source = crate::startup::open_vault(&config, false)
        .await
        .map_err(|e| format!("the SQLite vault does not open: {e}"))?;
    let before = source.verify_audit().await?;
    drop(source);

    let mut current: Option<(String, Progress)> = None;
    let options = vault_secret_store::PostgresOptions {
        tls_ca_file: config.storage.tls_ca_file.clone(),
        ..vault_secret_store::PostgresOptions::default()
    };
    let report = vault_secret_store::migrate_sqlite_to_postgres(
        &config.database_path(),
        to,
        options,
        |table, done, total| {
            if current.as_ref().is_none_or(|(t, _)| t != table) {
                if let Some((_, p)) = &current {
                    p.finish();
                }
                current = Some((
                    table.to_owned(),
                    Progress::new(table.to_owned(), Some(total)),
                ));
            }
            if let Some((_, p)) = &mut current {
                p.update(done, total);
            }
        },
    )
    .await
    .map_err(|e| format!("migrating to {target}: {e}"))?;
    if let Some((_, p)) = &current {
        p.finish();
    }

    // Open the copy the way a replica will, and compare.
    let mut pg = config.clone();
    pg.storage.backend = StorageBackend::Postgres;
    pg.storage.url = Some(to.to_owned());
    let copy = crate::startup::open_vault(&pg, false)
        .await
        .map_err(|e| format!("the copy in {target} does not open: {e}"))?;
    let after = copy.verify_audit().await?;
    if after.problem != before.problem || after.verified != before.verified {
        return Err(format!(
            "the usage log in {target} does not verify as the original did \
             ({} verified, problem {:?}; the original: {}, {:?})",
            after.verified, after.problem, before.verified, before.problem
        ));
    }
    for (table, rows) in &report.tables {
        eprintln!("{table}: {rows} row(s)");
    }
    eprintln!(
        "migrated to {target}; usage log: {} record(s), {}. Point the servers at it with \
         storage.backend = \"postgres\" and VAULT__STORAGE__URL.",
        after.records,
        if after.problem.is_none() {
            "chain intact"
        } else {
            "chain as broken as in the original (run `audit verify`)"
        }
    );
    Ok(ExitCode::SUCCESS)
}
