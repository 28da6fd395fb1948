//! Benchmark: what recording every read costs over HTTP. Starts the vault's
//! HTTP layer in this process (2 workers, real SQLite file, local key) and
//! drives `GET /vault/token/...` with `wrk` (64 connections), once with the
//! usage record of each read skipped and once group-committed (and
//! HMAC-chained, as the server does).
//!
//! Needs `wrk` on the PATH (Debian: `apt-get install wrk`). Run with:
//! `cargo run --release -p vault-server --example http_audit_overhead [SECONDS]`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;

use vault_access_resolver::{ConfigResolver, EngineConfig, token_sha256_hex};
use vault_api::ApiState;
use vault_encryption_layer::{Envelope, LocalKeyProvider};
use vault_secret_store::{SecretStore, SqliteStore};
use vault_token_manager::{RequestContext, StoreRequest, TokenData, TokenManager};
use vault_types::{Secret, SecretAddress, SystemClock};

const TOKEN: &str = "bench-engine-token-0123456789abcdef";

fn run(label: &str, audit: bool, secs: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().join("vault.db");
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let store = Arc::new(SqliteStore::open(&path).await.unwrap()) as Arc<dyn SecretStore>;
            let keys = Arc::new(LocalKeyProvider::generate().unwrap());
            let mut builder =
                TokenManager::builder(store, Envelope::new(keys), Arc::new(SystemClock));
            if !audit {
                builder = builder.skip_read_audit_for_benchmarks();
            }
            let tokens = builder.build();
            // As the server does: every record chained with the HMAC key.
            tokens.load_audit_keys().await.unwrap();
            let ctx = RequestContext::new("bench", Some("bench".into()));
            let mut t = TokenData::new(Secret::from("xoxb-0001-bench-token-value"));
            t.expires_in = Some(3600);
            let a = SecretAddress::new("prod", "pf_1", "slack").unwrap();
            tokens.store(&ctx, StoreRequest::new(a, t)).await.unwrap();
            let access = ConfigResolver::new(vec![EngineConfig {
                id: "bench".into(),
                token_sha256: token_sha256_hex(TOKEN),
                grants: vec!["*:*:*:*".parse().unwrap()],
            }])
            .unwrap();
            let state = ApiState::new(tokens, Arc::new(access), "prod".into());
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            vault_api::server(state, listener, 2, None)
                .unwrap()
                .await
                .unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c64",
            &format!("-d{secs}s"),
            "-H",
            "X-Engine-Id: bench",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            &format!("http://{addr}/vault/token/pf_1/slack"),
        ])
        .output()
        .expect("wrk on the PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    let rate: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let non2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .unwrap_or("all 2xx");
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("Latency"))
        .unwrap_or("")
        .trim();
    println!("{label:<26} {rate:>9.0} req/s   {p99}   ({non2xx})");
    rate
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let off = run("audit off (baseline)", false, secs);
    let on = run("audit on, group commit", true, secs);
    println!();
    println!(
        "audit on: {:.1} % of baseline ({:.1} % loss)",
        100.0 * on / off,
        100.0 * (1.0 - on / off)
    );
}
