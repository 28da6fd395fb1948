//! Measures reading sealed values with AWS KMS as the master key, with and
//! without the data-key cache, against moto's KMS API on loopback (started
//! here; `pip install "moto[server]"`).
//!
//! ```text
//! cargo run --release -p vault-encryption-layer --example kms_cache [opens]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use vault_encryption_layer::{
    AwsCredentials, AwsKmsConfig, AwsKmsProvider, CacheLimits, CachingKeyProvider, Envelope,
    KeyProvider, LocalKeyProvider,
};
use zeroize::Zeroizing;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opens: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(2_000);
    let Some(moto) = vault_test_support::Moto::start() else {
        return Err("moto_server is not installed".into());
    };
    let url = moto.url.clone();
    let key_id = moto.create_kms_key();
    let kms = Arc::new(AwsKmsProvider::new(AwsKmsConfig {
        endpoint: url.clone(),
        region: "us-east-1".into(),
        key_id,
        previous_key_ids: vec![],
        credentials: AwsCredentials {
            access_key_id: "AKIDBENCH".into(),
            secret_access_key: Zeroizing::new("bench".into()),
            session_token: None,
        },
        timeout: Duration::from_secs(5),
    })?);

    // 100 sealed values, read round-robin.
    let plain = Envelope::new(Arc::clone(&kms) as Arc<dyn KeyProvider>);
    let mut sealed = Vec::new();
    let t = Instant::now();
    for i in 0..100 {
        sealed.push(
            plain
                .seal(b"xoxb-benchmark-token", format!("a#{i}").as_bytes())
                .await?,
        );
    }
    let seal_rate = 100.0 / t.elapsed().as_secs_f64();

    let uncached_opens = opens.min(2_000);
    let t = Instant::now();
    for i in 0..uncached_opens {
        plain
            .open(&sealed[i % 100], format!("a#{}", i % 100).as_bytes())
            .await?;
    }
    let uncached = uncached_opens as f64 / t.elapsed().as_secs_f64();

    let cached = Arc::new(CachingKeyProvider::new(kms, CacheLimits::default()));
    let envelope = Envelope::new(Arc::clone(&cached) as Arc<dyn KeyProvider>);
    let cached_opens = opens * 50;
    let t = Instant::now();
    for i in 0..cached_opens {
        envelope
            .open(&sealed[i % 100], format!("a#{}", i % 100).as_bytes())
            .await?;
    }
    let with_cache = cached_opens as f64 / t.elapsed().as_secs_f64();
    let stats = cached.stats();

    let local = Envelope::new(Arc::new(LocalKeyProvider::generate()?));
    let local_sealed = local.seal(b"xoxb-benchmark-token", b"a#0").await?;
    let t = Instant::now();
    for _ in 0..cached_opens {
        local.open(&local_sealed, b"a#0").await?;
    }
    let local_rate = cached_opens as f64 / t.elapsed().as_secs_f64();
    drop(moto);

    println!("| operation (KMS: moto on loopback)        | per second |");
    println!("|------------------------------------------|-----------:|");
    println!("| seal (one KMS Encrypt each)              | {seal_rate:>10.0} |");
    println!("| open, no cache (one KMS Decrypt each)    | {uncached:>10.0} |");
    println!(
        "| open, data-key cache ({} hits, {} misses) | {with_cache:>10.0} |",
        stats.hits, stats.misses
    );
    println!("| open, local key (baseline)               | {local_rate:>10.0} |");
    println!(
        "cache speed-up over KMS round trips: {:.0}x",
        with_cache / uncached
    );
    Ok(())
}
