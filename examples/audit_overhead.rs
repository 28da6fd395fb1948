//! Benchmark: what recording every read costs. Reads per second of
//! `TokenManager::fetch` with 64 concurrent readers over 1,000 stored tokens
//! (real SQLite file, WAL, synchronous=FULL), with the usage record of each
//! read (a) not written, (b) committed one by one, (c) group-committed.
//!
//! Run with:
//! `cargo run --release -p vault-token-manager --example audit_overhead [SECONDS]`

#![allow(clippy::unwrap_used)] // a benchmark: any failure should stop it loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vault_encryption_layer::{Envelope, LocalKeyProvider};
use vault_secret_store::{SecretStore, SqliteOptions, SqliteStore};
use vault_token_manager::{RequestContext, StoreRequest, TokenData, TokenManager};
use vault_types::{Secret, SecretAddress, SystemClock};

const TOKENS: usize = 1000;
const READERS: usize = 64;

async fn run(label: &str, group_commit: bool, audit: bool, secs: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(
        &dir.path().join("vault.db"),
        SqliteOptions {
            group_commit,
            ..SqliteOptions::default()
        },
    )
    .await
    .unwrap();
    let mut builder = TokenManager::builder(
        Arc::new(store) as Arc<dyn SecretStore>,
        Envelope::new(Arc::new(LocalKeyProvider::generate().unwrap())),
        Arc::new(SystemClock),
    );
    if !audit {
        builder = builder.skip_read_audit_for_benchmarks();
    }
    let tokens = builder.build();
    let ctx = RequestContext::new("bench", Some("bench".into()));
    for i in 0..TOKENS {
        let mut t = TokenData::new(Secret::from(format!("xoxb-{i:04}-bench-token-value")));
        t.expires_in = Some(3600);
        let a = SecretAddress::new("prod", &format!("p{i}"), "slack").unwrap();
        tokens.store(&ctx, StoreRequest::new(a, t)).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for r in 0..READERS {
        let tokens = tokens.clone();
        let stop = Arc::clone(&stop);
        let reads = Arc::clone(&reads);
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let a = SecretAddress::new("prod", &format!("p{}", i % TOKENS), "slack").unwrap();
                tokens.fetch(&ctx, &a, &[]).await.unwrap();
                reads.fetch_add(1, Ordering::Relaxed);
                i += READERS;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let rate = reads.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("{label:<34} {rate:>10.0} reads/s");
    rate
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let off = run("audit off (baseline)", true, false, secs).await;
    let each = run("audit on, one commit per read", false, true, secs).await;
    let group = run("audit on, group commit", true, true, secs).await;
    println!();
    println!(
        "one commit per read: {:>5.1} % of baseline",
        100.0 * each / off
    );
    println!(
        "group commit:        {:>5.1} % of baseline ({:.1} % loss)",
        100.0 * group / off,
        100.0 * (1.0 - group / off)
    );
}
