//! Storage faults under load: the store fails calls before and after doing
//! them and answers slowly while engines store, read, refresh and delete.
//! Every failure is a clear 503, nothing acknowledged is lost, nothing is
//! half-written, every token handed out has its usage record, the chain
//! still verifies, and the vault recovers when the store does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use vault_secret_store::fault::{FaultPlan, FaultyStore};
use vault_secret_store::{AuditAction, AuditOutcome, SecretStore, SqliteStore};
use vault_server::startup::StoreLayer;

use crate::helpers::*;

const ADDRESSES: usize = 12;
const ROUNDS: usize = 20;

fn manual(i: usize, value: &str) -> Value {
    json!({
        "project_id": format!("faults-{i}"),
        "platform": "manual",
        "token_data": { "access_token": value }
    })
}

/// What one response may be under faults: a success or a clear 503.
async fn outcome(res: reqwest::Response, ok: u16) -> Result<Value, String> {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status == ok {
        return Ok(body);
    }
    assert_eq!(status, 503, "only {ok} or 503 under storage faults: {body}");
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    assert!(
        ["storage_unavailable", "audit_unavailable"].contains(&code.as_str()),
        "a 503 names the failing part: {body}"
    );
    Err(code)
}

#[derive(Default)]
struct Ledger {
    /// Per address: every value sent, in order, and the index of the last
    /// one acknowledged.
    sent: HashMap<usize, Vec<String>>,
    acked: HashMap<usize, usize>,
    reads_served: usize,
    refreshes_served: usize,
    failures: usize,
}

impl Ledger {
    /// The values the address may hold: the last acknowledged one or any
    /// sent after it (its write may have landed with the reply lost).
    fn allowed(&self, i: usize) -> &[String] {
        &self.sent[&i][self.acked[&i]..]
    }
}

#[actix_web::test]
async fn storage_faults_under_load_give_clear_503s_and_lose_nothing() {
    let fake = vault_test_support::FakeProvider::start();
    let secrets = tempfile::tempdir().unwrap();
    let toml = providers_toml(&fake, &secrets.path().join("client.secret"));
    let plan = FaultPlan::new(0x5eed);
    let layer_plan = Arc::clone(&plan);
    let layer: StoreLayer = Box::new(move |inner: Arc<dyn SecretStore>| {
        Arc::new(FaultyStore::new(inner, layer_plan)) as Arc<dyn SecretStore>
    });
    let app = spawn_app_layered(&toml, Some(layer)).await;

    // Healthy start: every address holds a first value.
    let mut ledger = Ledger::default();
    for i in 0..ADDRESSES {
        let v = format!("v-{i}-start");
        assert_eq!(app.store(&manual(i, &v)).await.status().as_u16(), 201);
        ledger.sent.insert(i, vec![v]);
        ledger.acked.insert(i, 0);
    }
    let mut refresh_body = slack_body();
    refresh_body["platform"] = json!("acme");
    refresh_body["project_id"] = json!("faults-refresh");
    assert_eq!(app.store(&refresh_body).await.status().as_u16(), 201);

    // Break the store: one call in ten fails before it is made, one in
    // twenty after, and every call waits up to 2 ms.
    let break_store = || {
        plan.fail_before(100);
        plan.fail_after(50);
        plan.delay(Duration::from_millis(2));
    };
    break_store();

    for round in 0..ROUNDS {
        // Stores and reads of every address, four at a time.
        for chunk in (0..ADDRESSES).collect::<Vec<_>>().chunks(4) {
            let stores = chunk.iter().map(|&i| {
                let v = format!("v-{i}-{round}");
                let app = &app;
                async move {
                    (
                        i,
                        v.clone(),
                        outcome(app.store(&manual(i, &v)).await, 201).await,
                    )
                }
            });
            for (i, v, result) in futures_util::future::join_all(stores).await {
                let sent = ledger.sent.get_mut(&i).unwrap();
                sent.push(v);
                match result {
                    Ok(_) => {
                        let last = sent.len() - 1;
                        ledger.acked.insert(i, last);
                    }
                    Err(_) => ledger.failures += 1,
                }
            }
            let reads = chunk.iter().map(|&i| {
                let app = &app;
                async move {
                    let res = app.get(&format!("/vault/token/faults-{i}/manual")).await;
                    (i, outcome(res, 200).await)
                }
            });
            for (i, result) in futures_util::future::join_all(reads).await {
                match result {
                    Ok(body) => {
                        ledger.reads_served += 1;
                        let token = body["access_token"].as_str().unwrap().to_owned();
                        assert!(ledger.allowed(i).contains(&token), "{i}: {token}");
                    }
                    Err(_) => ledger.failures += 1,
                }
            }
        }
        // A forced refresh: provider call, new version, usage record.
        app.clock.advance(time::Duration::seconds(11));
        let res = app
            .get("/vault/token/faults-refresh/acme?force_refresh=true")
            .await;
        match outcome(res, 200).await {
            Ok(_) => ledger.refreshes_served += 1,
            Err(_) => ledger.failures += 1,
        }
        // A delete of an address stored for it.
        let del = format!("faults-del-{round}");
        let mut body = manual(0, "to-delete");
        body["project_id"] = json!(del);
        if outcome(app.store(&body).await, 201).await.is_ok() {
            let res = app.delete(&format!("/vault/delete/{del}/manual")).await;
            let deleted = outcome(res, 200).await.is_ok();
            plan.clear();
            let after = app.get(&format!("/vault/token/{del}/manual")).await;
            let status = after.status().as_u16();
            if deleted {
                assert_eq!(status, 404, "an acknowledged delete is final");
            } else {
                assert!(status == 200 || status == 404, "{status}");
            }
            break_store();
        }
    }
    eprintln!(
        "injected {} faults; {} requests failed; {} reads and {} refreshes served",
        plan.injected(),
        ledger.failures,
        ledger.reads_served,
        ledger.refreshes_served
    );
    assert!(
        plan.injected() > 20,
        "faults were injected: {}",
        plan.injected()
    );
    assert!(ledger.failures > 10, "requests failed: {}", ledger.failures);
    assert!(
        ledger.reads_served > 50,
        "reads served: {}",
        ledger.reads_served
    );
    assert!(ledger.refreshes_served > 0);

    // The store recovers; so does the vault, at once.
    plan.clear();
    assert_eq!(app.get_public("/readyz").await.status().as_u16(), 200);
    for i in 0..ADDRESSES {
        let res = app.get(&format!("/vault/token/faults-{i}/manual")).await;
        assert_eq!(res.status().as_u16(), 200);
        let body: Value = res.json().await.unwrap();
        let token = body["access_token"].as_str().unwrap();
        assert!(
            ledger.allowed(i).iter().any(|v| v == token),
            "address {i} holds {token}, acknowledged {:?}",
            ledger.allowed(i).first()
        );
    }

    // Every token handed out has its usage record; the chain verifies.
    let store = SqliteStore::open(&app.db_path()).await.unwrap();
    let records = store.recent_audit(1_000_000).await.unwrap();
    let served_reads = records
        .iter()
        .filter(|r| {
            r.action == AuditAction::Read
                && r.outcome == AuditOutcome::Success
                && r.project
                    .as_deref()
                    .is_some_and(|p| p.starts_with("faults-"))
                && r.project.as_deref() != Some("faults-refresh")
                && !r
                    .project
                    .as_deref()
                    .is_some_and(|p| p.starts_with("faults-del-"))
        })
        .count();
    // Recovery reads above are served and recorded too.
    assert!(
        served_reads >= ledger.reads_served + ADDRESSES,
        "{served_reads} read records for {} reads served",
        ledger.reads_served + ADDRESSES
    );
    let opened = vault_server::startup::open_vault(&app.config, false)
        .await
        .unwrap();
    let verified = opened.verify_audit().await.unwrap();
    assert!(
        verified.records > 0 && verified.verified == verified.records,
        "{verified:?}"
    );
}
