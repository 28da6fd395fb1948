//! Benchmark: 10,000 tokens falling due within one minute, refreshed by the
//! background refresher's path against a local provider that answers in
//! 50 ms. Prints how long the stores and the refreshes took.
//!
//! Run with:
//! `cargo run --release -p vault-token-manager --example refresh_storm [TOKENS] [CONCURRENCY]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use vault_encryption_layer::{Envelope, LocalKeyProvider};
use vault_secret_store::{SecretStore, SqliteStore};
use vault_test_support::{CLIENT_ID, CLIENT_SECRET, FakeProvider};
use vault_token_manager::provider::{ProviderConfig, ProviderDefinition, ProviderRegistry};
use vault_token_manager::{RequestContext, StoreRequest, TokenData, TokenManager};
use vault_types::{Clock, ManualClock, Secret, SecretAddress};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let concurrency: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(32);

    let provider = FakeProvider::start();
    provider.set_delay(Duration::from_millis(50));
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("vault.db")).await?);
    let start = time::OffsetDateTime::now_utc();
    let clock = Arc::new(ManualClock::new(start));
    let registry = ProviderRegistry::from_configs(
        vec![ProviderConfig {
            definition: ProviderDefinition::generic("acme", Some(provider.url("/token")), None),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(Secret::from(CLIENT_SECRET)),
        }],
        Duration::from_secs(10),
    )?;
    let tokens = TokenManager::builder(
        Arc::clone(&store) as Arc<dyn SecretStore>,
        Envelope::new(Arc::new(LocalKeyProvider::generate()?)),
        Arc::clone(&clock) as Arc<dyn Clock>,
    )
    .providers(registry)
    .build();

    // Store n tokens whose refresh falls due within the same minute:
    // lifetimes from 3600 s to 3659 s, margin 5 min.
    let ctx = RequestContext::new("bench", Some("bench".into()));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..concurrency {
        let tokens = tokens.clone();
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = chunk;
            while i < n {
                let address = SecretAddress::new("prod", &format!("p{i}"), "acme")?;
                let mut t = TokenData::new(Secret::from(format!("at-{i}")));
                t.refresh_token = Some(Secret::from(format!("rt-{i}")));
                t.expires_in = Some(3600 + (i % 60) as u64);
                tokens.store(&ctx, StoreRequest::new(address, t)).await?;
                i += concurrency;
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| e.to_string())?;
    }
    let stored_in = t0.elapsed();

    // One minute before the earliest expiry of the batch plus the margin:
    // all n are due.
    clock.advance(time::Duration::seconds(3600 + 60 - 300));
    let t1 = Instant::now();
    let due = tokens.refresh_due_now(concurrency, n as u32).await?;
    let refreshed_in = t1.elapsed();
    let left = store.due_for_refresh(clock.now(), 10).await?.len();

    println!(
        "tokens stored:        {n} in {:.2} s ({:.0}/s, durable, {concurrency} concurrent)",
        stored_in.as_secs_f64(),
        n as f64 / stored_in.as_secs_f64()
    );
    println!("due at once:          {due}");
    println!("provider calls:       {}", provider.refresh_calls());
    println!(
        "refreshed in:         {:.2} s ({:.0}/s, concurrency {concurrency}, provider 50 ms)",
        refreshed_in.as_secs_f64(),
        due as f64 / refreshed_in.as_secs_f64()
    );
    println!("still due afterwards: {left}");
    println!(
        "refresh margin:       300 s -> {:.0} % of the margin used",
        100.0 * refreshed_in.as_secs_f64() / 300.0
    );
    Ok(())
}
