//! The token manager as a library: SQLite store, local key, no HTTP. Stores
//! a token, fetches it, lets it expire and fetches it again, which refreshes
//! it at a local OAuth provider; then deletes it (revoking it there).
//!
//! Run with `cargo run -p vault-token-manager --example embedded`.

use std::sync::Arc;
use std::time::Duration;

use vault_encryption_layer::{Envelope, LocalKeyProvider};
use vault_secret_store::{SecretStore, SqliteStore};
use vault_test_support::{CLIENT_ID, CLIENT_SECRET, FakeProvider};
use vault_token_manager::provider::{ProviderConfig, ProviderDefinition, ProviderRegistry};
use vault_token_manager::{RequestContext, StoreRequest, TokenData, TokenManager};
use vault_types::{Clock, ManualClock, Secret, SecretAddress};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("vault.db")).await?);
    let keys = Arc::new(LocalKeyProvider::from_file(
        &dir.path().join("master.key"),
        true,
    )?);

    // A local OAuth provider standing in for a real one, speaking HTTP.
    let provider = FakeProvider::start();
    let providers = ProviderRegistry::from_configs(
        vec![ProviderConfig {
            definition: ProviderDefinition::generic(
                "acme",
                Some(provider.url("/token")),
                Some(provider.url("/revoke")),
            ),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(Secret::from(CLIENT_SECRET)),
        }],
        Duration::from_secs(10),
    )?;
    // A clock the example can move, to let the token expire.
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let tokens = TokenManager::builder(
        store as Arc<dyn SecretStore>,
        Envelope::new(keys),
        Arc::clone(&clock) as Arc<dyn Clock>,
    )
    .providers(providers)
    .build();

    let ctx = RequestContext::new("example-1", Some("integration".into()));
    let acme = SecretAddress::new("prod", "pf_203", "acme")?;
    let mut token = TokenData::new("at-example".into());
    token.refresh_token = Some("rt-example".into());
    token.expires_in = Some(3600);
    token.scopes = vec!["chat:write".into()];

    let info = tokens
        .store(&ctx, StoreRequest::new(acme.clone(), token))
        .await?;
    println!(
        "stored {} version {} valid until {:?}",
        info.address, info.version, info.valid_until
    );

    let issued = tokens.fetch(&ctx, &acme, &["chat:write".into()]).await?;
    println!("fetched version {} (value not printed)", issued.version);

    clock.advance(time::Duration::hours(1));
    let refreshed = tokens.fetch(&ctx, &acme, &[]).await?;
    println!(
        "an hour later: refreshed at the provider ({} call), now version {}, valid until {:?}",
        provider.refresh_calls(),
        refreshed.version,
        refreshed.valid_until
    );

    let deleted = tokens.delete(&ctx, &acme).await?;
    println!(
        "deleted {} at version {}; revocations: {:?}",
        deleted.address,
        deleted.version,
        deleted
            .revocations
            .iter()
            .map(|r| r.outcome.as_str())
            .collect::<Vec<_>>()
    );
    Ok(())
}
