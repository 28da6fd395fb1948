//! The usage-log chain key and `vault-server audit …`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use vault_encryption_layer::{DataKey, KeyProvider};
use vault_secret_store::{AuditMac, AuditProblem};

use crate::cli::AuditCommand;
use crate::config::Config;

/// The label the usage-log key is derived under from the master key.
pub const AUDIT_KEY_LABEL: &str = "audit-log-mac-v1";

/// HMAC-SHA256 with a key derived from the master key.
pub struct HmacAuditMac {
    key: DataKey,
}

impl std::fmt::Debug for HmacAuditMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacAuditMac([redacted])")
    }
}

impl HmacAuditMac {
    /// The chain MAC for the master key behind `keys`.
    pub async fn derive(keys: &dyn KeyProvider) -> vault_encryption_layer::Result<Self> {
        Ok(Self {
            key: keys.derive(AUDIT_KEY_LABEL).await?,
        })
    }
}

impl AuditMac for HmacAuditMac {
    fn mac(&self, data: &[u8]) -> [u8; 32] {
        vault_encryption_layer::hmac_sha256(self.key.expose(), data)
    }
}

/// Runs an audit command; the process exit code (1 when the chain is broken).
pub fn run(config_path: Option<&Path>, cmd: AuditCommand) -> ExitCode {
    crate::cli::run_tool(
        config_path,
        |config| async move { execute(&config, cmd).await },
    )
}

async fn execute(config: &Config, cmd: AuditCommand) -> Result<ExitCode, String> {
    let (store, keys) = crate::startup::open_existing(config)
        .await
        .map_err(|e| e.to_string())?;
    match cmd {
        AuditCommand::Verify => {
            let mac = HmacAuditMac::derive(keys.as_ref())
                .await
                .map_err(|e| e.to_string())?;
            let v = store
                .verify_audit(Arc::new(mac))
                .await
                .map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_chain_key_is_derived_and_never_printed() {
        let keys = vault_encryption_layer::LocalKeyProvider::generate().unwrap();
        let a = HmacAuditMac::derive(&keys).await.unwrap();
        let b = HmacAuditMac::derive(&keys).await.unwrap();
        assert_eq!(a.mac(b"x"), b.mac(b"x"));
        assert_ne!(a.mac(b"x"), a.mac(b"y"));
        assert_eq!(format!("{a:?}"), "HmacAuditMac([redacted])");
    }
}
