//! The usage-log forwarder against a receiver speaking real HTTP, with a
//! real SQLite file.

use std::sync::Arc;
use std::time::Duration;

use vault_encryption_layer::{Envelope, LocalKeyProvider};
use vault_secret_store::{AuditAction, AuditOutcome, SecretStore, SqliteStore};
use vault_test_support::FakeProvider;
use vault_types::{Secret, SystemClock};

use super::*;
use crate::RequestContext;

/// A manager over the file at `path`. Each is a process of its own: a new
/// one waits for the job lease of one that stopped to run out (short here).
async fn manager(path: &std::path::Path) -> TokenManager {
    let store = Arc::new(SqliteStore::open(path).await.unwrap());
    TokenManager::builder(
        store as Arc<dyn SecretStore>,
        Envelope::new(Arc::new(LocalKeyProvider::generate().unwrap())),
        Arc::new(SystemClock),
    )
    .refresh_policy(crate::RefreshPolicy {
        lease: Duration::from_millis(500),
        ..crate::RefreshPolicy::default()
    })
    .build()
}

async fn record(tokens: &TokenManager, n: usize) {
    for i in 0..n {
        tokens
            .record_event(
                &RequestContext::new(format!("r{i}"), Some("execution".into())),
                AuditAction::Read,
                None,
                AuditOutcome::Success,
                "test",
            )
            .await
            .unwrap();
    }
}

fn config(receiver: &FakeProvider) -> ForwarderConfig {
    ForwarderConfig {
        name: "logs-engine".into(),
        sink: AuditSink::Http {
            url: receiver.url("/logs"),
            authorization: Some(Secret::from("Bearer logs-engine-key")),
            timeout: Duration::from_millis(500),
        },
        batch: 7,
        interval: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    }
}

/// The ids received, without duplicates, in first-arrival order.
fn distinct_ids(receiver: &FakeProvider) -> Vec<i64> {
    let mut seen = std::collections::HashSet::new();
    receiver
        .logged()
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .filter(|id| seen.insert(*id))
        .collect()
}

async fn wait_for(receiver: &FakeProvider, n: usize) {
    for _ in 0..500 {
        if distinct_ids(receiver).len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("received {:?}", distinct_ids(receiver));
}

#[tokio::test]
async fn everything_arrives_in_order_through_failures_and_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = manager(&dir.path().join("vault.db")).await;
    let receiver = FakeProvider::start();
    // Down for a while, then stalled past the timeout, then back.
    receiver.fail_logs(4);
    record(&tokens, 20).await;
    let task = tokio::spawn(tokens.clone().run_audit_forwarder(config(&receiver)));
    wait_for(&receiver, 7).await;
    receiver.set_logs_delay(Duration::from_millis(800));
    record(&tokens, 5).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    receiver.set_logs_delay(Duration::ZERO);
    wait_for(&receiver, 25).await;
    // A batch the stalled receiver took after the vault gave up on it is
    // sent again: the cursor only moves on an acknowledgement.
    for _ in 0..300 {
        if tokens
            .secret_store()
            .audit_cursor("logs-engine")
            .await
            .unwrap()
            == 25
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    assert_eq!(
        distinct_ids(&receiver),
        (1..=25).collect::<Vec<_>>(),
        "in order, none lost"
    );
    assert!(
        receiver
            .logs_authorization()
            .iter()
            .all(|a| a == "Bearer logs-engine-key")
    );
    let first = &receiver.logged()[0];
    assert_eq!(first["action"], "read");
    assert_eq!(first["engine_id"], "execution");
    assert_eq!(
        tokens
            .secret_store()
            .audit_cursor("logs-engine")
            .await
            .unwrap(),
        25
    );
}

#[tokio::test]
async fn a_restart_resumes_from_the_durable_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let receiver = FakeProvider::start();
    {
        let tokens = manager(&path).await;
        record(&tokens, 10).await;
        let task = tokio::spawn(tokens.clone().run_audit_forwarder(config(&receiver)));
        wait_for(&receiver, 7).await;
        // Stop once the first batch is acknowledged (a batch delivered but
        // not yet acknowledged would rightly be sent again).
        for _ in 0..300 {
            if tokens
                .secret_store()
                .audit_cursor("logs-engine")
                .await
                .unwrap()
                >= 7
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        record(&tokens, 5).await;
    }
    let before = receiver.logged().len();
    let tokens = manager(&path).await;
    let task = tokio::spawn(tokens.clone().run_audit_forwarder(config(&receiver)));
    wait_for(&receiver, 15).await;
    task.abort();
    assert_eq!(distinct_ids(&receiver), (1..=15).collect::<Vec<_>>());
    // Nothing acknowledged before the restart was sent again.
    let resent = receiver.logged()[before..]
        .iter()
        .filter(|r| r["id"].as_i64() <= Some(7))
        .count();
    assert_eq!(resent, 0);
}

#[tokio::test]
async fn a_file_sink_gets_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = manager(&dir.path().join("vault.db")).await;
    record(&tokens, 9).await;
    let file = dir.path().join("audit.jsonl");
    let task = tokio::spawn(tokens.clone().run_audit_forwarder(ForwarderConfig {
        name: "file".into(),
        sink: AuditSink::File { path: file.clone() },
        batch: 4,
        interval: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
    }));
    for _ in 0..300 {
        if tokens.secret_store().audit_cursor("file").await.unwrap() == 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let text = std::fs::read_to_string(&file).unwrap();
    let ids: Vec<i64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, (1..=9).collect::<Vec<_>>());
}
