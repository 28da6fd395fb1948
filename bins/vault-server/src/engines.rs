//! `vault-server engine …`: engines managed in the database.
//!
//! The token of a new or rotated engine is printed once, alone, on
//! standard output, so a script can capture it; everything else goes to
//! standard error. Only its SHA-256 is stored. Managed engines live in the
//! database rather than in the configuration file because the vault reads
//! them while it runs (a revocation takes effect within one reload period,
//! without a restart) and because every replica of a shared database sees
//! the same list.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use vault_access_resolver::{Grant, token_sha256_hex};
use vault_secret_store::{EngineRecord, SecretStore};
use vault_types::validate_identifier;

use crate::cli::EngineCommand;
use crate::config::Config;

/// Runs an engine command; the process exit code.
pub fn run(config_path: Option<&Path>, cmd: EngineCommand) -> ExitCode {
    crate::cli::run_tool(
        config_path,
        |config| async move { execute(&config, cmd).await },
    )
}

async fn open(config: &Config) -> Result<Arc<dyn SecretStore>, String> {
    crate::startup::open_store(config)
        .await
        .map_err(|e| format!("opening the database: {e}"))
}

fn new_token() -> Result<String, String> {
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| "the system random number generator failed".to_owned())?;
    Ok(hex::encode(raw))
}

async fn find(store: &dyn SecretStore, id: &str) -> Result<EngineRecord, String> {
    store
        .list_engines()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| format!("no managed engine {id}"))
}

async fn execute(config: &Config, cmd: EngineCommand) -> Result<ExitCode, String> {
    let store = open(config).await?;
    let now = time::OffsetDateTime::now_utc();
    match cmd {
        EngineCommand::Add { id, grants } => {
            validate_identifier("engine id", &id).map_err(|e| e.to_string())?;
            for g in &grants {
                g.parse::<Grant>().map_err(|e| format!("{g}: {e}"))?;
            }
            if config.engines.iter().any(|e| e.id == id) {
                return Err(format!("engine {id} is configured in the config file"));
            }
            let existing = store.list_engines().await.map_err(|e| e.to_string())?;
            if existing
                .iter()
                .any(|e| e.id == id && e.revoked_at.is_none())
            {
                return Err(format!("engine {id} exists; rotate or revoke it"));
            }
            let token = new_token()?;
            store
                .put_engine(EngineRecord {
                    id: id.clone(),
                    token_sha256: token_sha256_hex(&token),
                    grants: grants.clone(),
                    created_at: now,
                    updated_at: now,
                    revoked_at: None,
                })
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("added engine {id} with grants {}", grants.join(" "));
            eprintln!("its token follows on stdout; it is shown once and stored only as a hash");
            println!("{token}");
        }
        EngineCommand::List => {
            for e in store.list_engines().await.map_err(|e| e.to_string())? {
                let state = match e.revoked_at {
                    Some(t) => format!("revoked {}", t.unix_timestamp()),
                    None => "active".into(),
                };
                println!(
                    "{}\t{}\t{}\tupdated {}",
                    e.id,
                    state,
                    e.grants.join(" "),
                    e.updated_at.unix_timestamp()
                );
            }
        }
        EngineCommand::Revoke { id } => {
            let mut e = find(store.as_ref(), &id).await?;
            e.revoked_at = Some(now);
            e.updated_at = now;
            store.put_engine(e).await.map_err(|e| e.to_string())?;
            eprintln!(
                "revoked engine {id}; running vaults refuse it within {} s",
                config.access.engine_reload_secs
            );
        }
        EngineCommand::Rotate { id } => {
            let mut e = find(store.as_ref(), &id).await?;
            if e.revoked_at.is_some() {
                return Err(format!("engine {id} is revoked"));
            }
            let token = new_token()?;
            e.token_sha256 = token_sha256_hex(&token);
            e.updated_at = now;
            store.put_engine(e).await.map_err(|e| e.to_string())?;
            eprintln!(
                "rotated engine {id}; the old token stops working within {} s",
                config.access.engine_reload_secs
            );
            println!("{token}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
