//! Micro-benchmarks of the SQLite store: a read of one secret among
//! 10,000 and a durable write: `cargo bench -p vault-secret-store`.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use time::OffsetDateTime;
use vault_secret_store::{
    AuditAction, AuditOutcome, AuditRecord, RefreshState, SecretMeta, SecretStatus, SecretStore,
    SecretWrite, SqliteStore,
};
use vault_types::SecretAddress;

fn write(i: usize, version: u64) -> SecretWrite {
    SecretWrite {
        address: SecretAddress::new("prod", "bench", &format!("p{i}")).unwrap(),
        version,
        sealed: vec![7u8; 400],
        key_id: "local-bench".into(),
        meta: SecretMeta {
            status: SecretStatus::Active,
            valid_until: None,
            scopes: vec!["chat:write".into()],
            has_refresh_token: true,
            token_type: "Bearer".into(),
            metadata: None,
            refresh: RefreshState::default(),
        },
        at: OffsetDateTime::now_utc(),
    }
}

fn record() -> AuditRecord {
    AuditRecord {
        at: OffsetDateTime::now_utc(),
        request_id: "bench".into(),
        engine_id: Some("bench".into()),
        action: AuditAction::Store,
        environment: None,
        project: None,
        platform: None,
        outcome: AuditOutcome::Success,
        detail: None,
    }
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(SqliteStore::open(&dir.path().join("vault.db")))
        .unwrap();
    let batch: Vec<SecretWrite> = (0..10_000).map(|i| write(i, 1)).collect();
    rt.block_on(store.put_new_batch(batch, vec![record()]))
        .unwrap();
    let mut i = 0usize;
    c.bench_function("get (10,000 stored)", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            let a = SecretAddress::new("prod", "bench", &format!("p{i}")).unwrap();
            rt.block_on(store.get(&a)).unwrap().unwrap()
        })
    });
    let mut version = 1u64;
    c.bench_function("put (durable, with its usage record)", |b| {
        b.iter(|| {
            let w = write(0, version + 1);
            rt.block_on(store.put(w, Some(version), record(), None))
                .unwrap();
            version += 1;
        })
    });
}

criterion_group!(benches, store);
criterion_main!(benches);
