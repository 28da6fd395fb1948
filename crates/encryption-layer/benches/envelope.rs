//! Micro-benchmarks of sealing and opening a token-sized value with a
//! local master key: `cargo bench -p vault-encryption-layer`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use vault_encryption_layer::{Envelope, LocalKeyProvider};

fn envelope(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let env = Envelope::new(Arc::new(LocalKeyProvider::generate().unwrap()));
    let value = vec![b'x'; 300];
    let aad = b"prod/pf_203/slack#1";
    let sealed = rt.block_on(env.seal(&value, aad)).unwrap();
    c.bench_function("seal 300 B", |b| {
        b.iter(|| rt.block_on(env.seal(&value, aad)).unwrap())
    });
    c.bench_function("open 300 B", |b| {
        b.iter(|| rt.block_on(env.open(&sealed, aad)).unwrap())
    });
    c.bench_function("rewrap", |b| {
        b.iter(|| rt.block_on(env.rewrap(&sealed)).unwrap())
    });
}

criterion_group!(benches, envelope);
criterion_main!(benches);
