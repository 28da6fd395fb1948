//! `vault-server audit …`.

use std::path::Path;
use std::process::ExitCode;

use vault_secret_store::AuditProblem;

use crate::cli::AuditCommand;
use crate::config::Config;

/// Runs an audit command; the process exit code (1 when the chain is broken).
pub fn run(config_path: Option<&Path>, cmd: AuditCommand) -> ExitCode {
    crate::cli::run_tool(
        config_path,
        |config| async move { execute(&config, cmd).await },
    )
}

async fn execute(config: &Config, cmd: AuditCommand) -> Result<ExitCode, String> {
    let opened = crate::startup::open_vault(config, false)
        .await
        .map_err(|e| e.to_string())?;
    let store = &opened.store;
    match cmd {
        AuditCommand::Verify => {
            let v = opened.verify_audit().await?;
            let last = v
                .last_verified_seq
                .map_or_else(|| "none".to_owned(), |s| s.to_string());
            println!(
                "records: {}, verified: {}, before the chain: {}, last verified: {last}",
                v.records, v.verified, v.unchained
            );
            if let Some(p) = v.pruned_through {
                println!("records up to {p} were pruned by retention (signed checkpoint verified)");
            }
            match v.problem {
                None => {
                    println!("chain intact");
                    Ok(ExitCode::SUCCESS)
                }
                Some(p) => {
                    let (what, seq) = match p {
                        AuditProblem::Changed { seq } => ("changed", seq),
                        AuditProblem::Removed { seq } => ("missing before", seq),
                        AuditProblem::Inserted { seq } => ("not written by the vault", seq),
                        AuditProblem::Checkpoint { seq } => {
                            ("is a forged retention checkpoint", seq)
                        }
                        AuditProblem::Anchor { seq } => ("is named by a forged chain anchor", seq),
                        AuditProblem::Unanchored => {
                            println!(
                                "chain BROKEN: the log has records but its chain anchors are gone"
                            );
                            return Ok(ExitCode::from(1));
                        }
                    };
                    println!("chain BROKEN: record {seq} {what}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::Export => {
            let mut after = 0;
            loop {
                let page = store
                    .audit_after(after, 1000)
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    println!("{}", vault_token_manager::audit_entry_json(e));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
