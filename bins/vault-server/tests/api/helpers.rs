use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use time::macros::datetime;
use vault_access_resolver::token_sha256_hex;
use vault_secret_store::{AuditRecord, SecretStore, SqliteStore};
use vault_server::config::Config;
use vault_server::startup::{Application, StoreLayer};
use vault_types::{Clock, ManualClock};

/// Engines configured for every test app, with their tokens.
pub const INTEGRATION: (&str, &str) = ("integration", "int-token-0123456789");
pub const EXECUTION: (&str, &str) = ("execution", "exec-token-0123456789");
pub const CLEANUP: (&str, &str) = ("cleanup", "cleanup-token-0123456789");
pub const ADMIN: (&str, &str) = ("admin", "admin-token-0123456789");

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub config: Config,
    pub dir: tempfile::TempDir,
    pub handle: actix_web::dev::ServerHandle,
}

pub fn config_toml(data_dir: &std::path::Path, extra: &str) -> String {
    let engine = |(id, token): (&str, &str), grants: &str| {
        format!(
            "[[engines]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\ngrants = {grants}\n",
            token_sha256_hex(token)
        )
    };
    format!(
        "data_dir = \"{}\"\n{extra}\n[server]\nbind = \"127.0.0.1:0\"\nworkers = 1\n{}{}{}{}",
        data_dir.display(),
        engine(INTEGRATION, r#"["store:*:*:*"]"#),
        engine(EXECUTION, r#"["read:prod:*:*"]"#),
        engine(CLEANUP, r#"["delete:*:*:*"]"#),
        engine(ADMIN, r#"["*:*:*:*"]"#),
    )
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// Starts the real server on a free loopback port with a fresh data
/// directory; `extra` is TOML put before the `[server]` table.
pub async fn spawn_app_with(extra: &str) -> TestApp {
    spawn_app_layered(extra, None).await
}

/// [`spawn_app_with`] with the store wrapped in `layer`.
pub async fn spawn_app_layered(extra: &str, layer: Option<StoreLayer>) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let extra = extra.replace("{dir}", &dir.path().display().to_string());
    let config = Config::from_toml(&config_toml(dir.path(), &extra)).unwrap();
    let clock = Arc::new(ManualClock::new(datetime!(2026-03-01 12:00 UTC)));
    let app = Application::build_with_layer(&config, Arc::clone(&clock) as Arc<dyn Clock>, layer)
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr());
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        base,
        client: reqwest::Client::new(),
        clock,
        config,
        dir,
        handle,
    }
}

pub fn slack_body() -> Value {
    json!({
        "engine_id": "integration",
        "project_id": "pf_203",
        "platform": "Slack",
        "token_data": {
            "access_token": "xoxb-abc-0001",
            "refresh_token": "rt-xyz-0001",
            "expires_in": 3600,
            "scopes": ["chat:write", "users:read"]
        }
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("vault.db")
    }

    pub fn as_engine(
        &self,
        method: reqwest::Method,
        path: &str,
        (id, token): (&str, &str),
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("X-Engine-Id", id)
            .bearer_auth(token)
    }

    pub async fn store(&self, body: &Value) -> reqwest::Response {
        self.as_engine(reqwest::Method::POST, "/vault/store", INTEGRATION)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A GET without credentials (health, readiness, the document).
    pub async fn get_public(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.as_engine(reqwest::Method::GET, path, EXECUTION)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.as_engine(reqwest::Method::DELETE, path, CLEANUP)
            .send()
            .await
            .unwrap()
    }

    /// The newest usage records, newest first, read from the database.
    pub async fn audit(&self, limit: u32) -> Vec<AuditRecord> {
        let store = SqliteStore::open(&self.db_path()).await.unwrap();
        store.recent_audit(limit).await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop accepting; the runtime ends with the test anyway.
        drop(self.handle.stop(false));
    }
}

/// Asserts the response has `status` and the standard error body with
/// `code`; returns the message.
pub async fn assert_error(res: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(res.status().as_u16(), status, "status for {code}");
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "body: {body}");
    let obj = body.as_object().unwrap();
    assert_eq!(obj.len(), 1, "only the error object: {body}");
    assert_eq!(body["error"].as_object().unwrap().len(), 2, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// TOML for providers `acme` (generic OAuth 2.0) and `slack` (built-in)
/// pointing at `fake`, with the background refresher off (tests move the
/// clock and drive refreshes through requests).
pub fn providers_toml(
    fake: &vault_test_support::FakeProvider,
    dir_secret: &std::path::Path,
) -> String {
    std::fs::write(dir_secret, vault_test_support::CLIENT_SECRET).unwrap();
    format!(
        r#"
[providers.acme]
kind = "oauth2"
token_url = "{token}"
revoke_url = "{revoke}"
client_id = "{id}"
client_secret_file = "{secret}"
[providers.slack]
token_url = "{slack_token}"
revoke_url = "{slack_revoke}"
client_id = "{id}"
client_secret_file = "{secret}"
[refresh]
background = false
"#,
        token = fake.url("/token"),
        revoke = fake.url("/revoke"),
        slack_token = fake.url("/slack/oauth.v2.access"),
        slack_revoke = fake.url("/slack/auth.revoke"),
        id = vault_test_support::CLIENT_ID,
        secret = dir_secret.display(),
    )
}

/// An app with the fake provider configured; the client secret file lives
/// in a directory of its own.
pub async fn spawn_app_with_provider(
    fake: &vault_test_support::FakeProvider,
) -> (TestApp, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let toml = providers_toml(fake, &secrets.path().join("client.secret"));
    (spawn_app_with(&toml).await, secrets)
}
