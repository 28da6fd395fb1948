//! `vault-server keys …`, `backup` and `restore`.
//!
//! Key commands act on the configured key provider and database directly;
//! a running server picks up a rotation made here within
//! `keys.check_interval_secs` (and rewraps in the background as well).

use std::path::Path;
use std::process::ExitCode;

use vault_token_manager::RequestContext;

use crate::cli::KeysCommand;
use crate::config::{Config, StorageBackend};
use crate::progress::Progress;

fn tool_context() -> RequestContext {
    RequestContext::new(
        format!("cli-{}", std::process::id()),
        Some("vault-server-cli".into()),
    )
}

/// Runs a keys command; the process exit code.
pub fn run(config_path: Option<&Path>, cmd: KeysCommand) -> ExitCode {
    crate::cli::run_tool(
        config_path,
        |config| async move { execute(&config, cmd).await },
    )
}

async fn rewrap(tokens: &vault_token_manager::TokenManager, batch: u32) -> Result<(), String> {
    let pending = tokens
        .key_status()
        .await
        .map_err(|e| e.to_string())?
        .pending_rewrap;
    let mut progress = Progress::new("rewrap", Some(pending));
    let total = tokens
        .rewrap_all(batch, |p| progress.update(p.rewrapped + p.failed, pending))
        .await
        .map_err(|e| e.to_string())?;
    progress.finish();
    eprintln!(
        "rewrapped {} value(s){}",
        total.rewrapped,
        if total.failed > 0 {
            format!(", {} could not be opened (see the log)", total.failed)
        } else {
            String::new()
        }
    );
    if total.failed > 0 {
        return Err("some values could not be rewrapped".into());
    }
    Ok(())
}

async fn execute(config: &Config, cmd: KeysCommand) -> Result<ExitCode, String> {
    let opened = crate::startup::open_vault(config, false)
        .await
        .map_err(|e| e.to_string())?;
    let tokens = opened.tokens;
    let ctx = tool_context();
    match cmd {
        KeysCommand::Status => {
            let s = tokens.key_status().await.map_err(|e| e.to_string())?;
            println!("provider:          {}", s.provider);
            println!("active master key: {}", s.active);
            println!("available:         {}", s.available.join(", "));
            for u in &s.usage {
                println!(
                    "  {}: {} secret(s), {} usage-log key(s){}",
                    u.key_id,
                    u.secrets,
                    u.audit_keys,
                    if u.key_id == s.active {
                        " (active)"
                    } else {
                        ""
                    }
                );
            }
            println!("pending rewrap:    {}", s.pending_rewrap);
            println!(
                "retirable:         {}",
                if s.retirable.is_empty() {
                    "none".to_owned()
                } else {
                    s.retirable.join(", ")
                }
            );
            println!("usage-log key:     version {}", s.audit_key_version);
        }
        KeysCommand::Rotate { no_rewrap } => {
            let id = tokens
                .rotate_master_key(&ctx)
                .await
                .map_err(|e| e.to_string())?;
            println!("{id}");
            eprintln!("new values are sealed under {id}");
            if !no_rewrap {
                rewrap(&tokens, config.keys.rewrap_batch).await?;
            }
        }
        KeysCommand::Rewrap => rewrap(&tokens, config.keys.rewrap_batch).await?,
        KeysCommand::Retire { key_id } => {
            tokens
                .retire_key(&ctx, &key_id)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("retired {key_id}");
        }
        KeysCommand::RotateAuditKey => {
            let v = tokens
                .rotate_audit_key(&ctx)
                .await
                .map_err(|e| e.to_string())?;
            println!("{v}");
            eprintln!(
                "usage-log key version {v} added; new records are chained with it once every \
                 process has had time to load it (twice keys.check_interval_secs plus 10 s)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Backup and restore copy the SQLite file; PostgreSQL has its own tools.
const POSTGRES_BACKUP: &str = "backup and restore copy the SQLite file; for storage.backend = \
    \"postgres\" use pg_dump and pg_restore (see docs/deployment.md)";

/// `vault-server backup <file>`: a consistent online copy of the database
/// (ciphertext only; the master key is never in it).
pub fn backup(config_path: Option<&Path>, file: &Path) -> ExitCode {
    let file = file.to_owned();
    crate::cli::run_tool(config_path, |config| async move {
        if config.storage.backend == StorageBackend::Postgres {
            return Err(POSTGRES_BACKUP.to_owned());
        }
        let source = config.database_path();
        let mut progress = Progress::new("backup", None);
        let dest = file.clone();
        let result = tokio::task::spawn_blocking(move || {
            vault_secret_store::backup_database(&source, &dest, |done, total| {
                progress.update(done, total);
            })
            .map(|()| progress.finish())
        })
        .await
        .map_err(|e| e.to_string())?;
        result.map_err(|e| e.to_string())?;
        eprintln!(
            "backed up to {} (sealed values only; keep the master key separately)",
            file.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// `vault-server restore <file>`: into an empty data directory; the restored
/// database must open with the configured key, or it is removed again.
pub fn restore(config_path: Option<&Path>, file: &Path) -> ExitCode {
    let file = file.to_owned();
    crate::cli::run_tool(config_path, |config| async move {
        if config.storage.backend == StorageBackend::Postgres {
            return Err(POSTGRES_BACKUP.to_owned());
        }
        let dest = config.database_path();
        if let Some(dir) = dest.parent() {
            // As the server makes it: 0700, not the umask's 0755.
            crate::startup::ensure_private_dir(dir).map_err(|e| e.to_string())?;
        }
        let (backup, target) = (file.clone(), dest.clone());
        tokio::task::spawn_blocking(move || vault_secret_store::restore_database(&backup, &target))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        // The same checks as the server's start: every key the copy needs is
        // available and the usage-log keys open.
        match crate::startup::open_vault(&config, false).await {
            Ok(opened) => {
                let v = opened.verify_audit().await?;
                let intact = v.problem.is_none();
                eprintln!(
                    "restored {} to {}; usage log: {} record(s), {}",
                    file.display(),
                    dest.display(),
                    v.records,
                    if intact {
                        "chain intact"
                    } else {
                        "chain BROKEN (run `audit verify`)"
                    }
                );
                // Restored, but a broken chain means the copy was changed:
                // a script must not carry on as if all were well.
                Ok(if intact {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            Err(e) => {
                for f in [
                    dest.clone(),
                    vault_secret_store::sidecar_file(&dest, "-wal"),
                    vault_secret_store::sidecar_file(&dest, "-shm"),
                ] {
                    let _ = std::fs::remove_file(f);
                }
                Err(format!(
                    "the backup does not open with the configured key, nothing restored: {e}"
                ))
            }
        }
    })
}
