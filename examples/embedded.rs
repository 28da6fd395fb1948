//! The token manager as a library: SQLite store, local key, no HTTP.
//!
//! Run with `cargo run -p vault-token-manager --example embedded`.

use std::sync::Arc;

use vault_encryption_layer::{Envelope, LocalKeyProvider};
use vault_secret_store::SqliteStore;
use vault_token_manager::{RequestContext, StoreRequest, TokenData, TokenManager};
use vault_types::{SecretAddress, SystemClock};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("vault.db")).await?);
    let keys = Arc::new(LocalKeyProvider::from_file(
        &dir.path().join("master.key"),
        true,
    )?);
    let tokens = TokenManager::new(store, Envelope::new(keys), Arc::new(SystemClock));

    let ctx = RequestContext::new("example-1", Some("integration".into()));
    let slack = SecretAddress::new("prod", "pf_203", "Slack")?;
    let mut token = TokenData::new("xoxb-example".into());
    token.refresh_token = Some("rt-example".into());
    token.expires_in = Some(3600);
    token.scopes = vec!["chat:write".into(), "users:read".into()];

    let info = tokens
        .store(&ctx, StoreRequest::new(slack.clone(), token))
        .await?;
    println!(
        "stored {} version {} valid until {:?}",
        info.address, info.version, info.valid_until
    );

    let issued = tokens.fetch(&ctx, &slack, &["chat:write".into()]).await?;
    println!(
        "fetched a {} token with scopes {:?} (value not printed)",
        issued.token_type, issued.scopes
    );

    let deleted = tokens.delete(&ctx, &slack).await?;
    println!("deleted {} at version {}", deleted.address, deleted.version);
    Ok(())
}
