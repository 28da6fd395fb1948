//! Tests of the `vault-server` binary as a process: the embedded default,
//! configuration from the environment, durability across `kill -9`,
//! graceful shutdown, start-up refusals, and what ends up on disk and in
//! the logs.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_vault-server");

struct Server {
    child: Child,
    base: String,
    logs: Arc<Mutex<Vec<String>>>,
}

/// Starts the binary in `dir` with JSON logs on a free port and waits
/// (bounded) until it listens. `envs` are extra environment variables.
fn start(dir: &Path, envs: &[(&str, &str)]) -> Result<Server, String> {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("VAULT_CONFIG")
        .env_remove("RUST_LOG")
        .env("VAULT__SERVER__BIND", "127.0.0.1:0")
        .env("VAULT__LOG__FORMAT", "json")
        .env("VAULT__SERVER__WORKERS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    {
        let logs = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "vault listening"
                {
                    let _ = tx.send(v["address"].as_str().unwrap_or("").to_owned());
                }
                logs.lock().unwrap().push(line);
            }
        });
    }
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => Ok(Server {
            child,
            base: format!("http://{addr}"),
            logs,
        }),
        Err(_) => {
            let status = child.wait().ok();
            std::thread::sleep(Duration::from_millis(100));
            Err(format!(
                "server did not start (exit {status:?}): {}",
                logs.lock().unwrap().join("\n")
            ))
        }
    }
}

impl Server {
    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits (bounded) for the process to exit.
    fn wait(&mut self) -> std::process::ExitStatus {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server did not exit")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

fn dev_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("vault-data/dev-engine.token"))
        .unwrap()
        .trim()
        .to_owned()
}

fn store(s: &Server, token: &str, body: &Value) -> reqwest::blocking::Response {
    client()
        .post(format!("{}/vault/store", s.base))
        .header("X-Engine-Id", "dev")
        .bearer_auth(token)
        .json(body)
        .send()
        .unwrap()
}

fn get(s: &Server, token: &str, path: &str) -> reqwest::blocking::Response {
    client()
        .get(format!("{}{path}", s.base))
        .header("X-Engine-Id", "dev")
        .bearer_auth(token)
        .send()
        .unwrap()
}

fn slack(access: &str, refresh: &str) -> Value {
    json!({
        "engine_id": "dev",
        "project_id": "pf_203",
        "platform": "Slack",
        "token_data": {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": 3600,
            "scopes": ["chat:write", "users:read"]
        }
    })
}

#[test]
fn embedded_default_runs_the_spec_example_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]).unwrap();
    let data = dir.path().join("vault-data");
    for (name, mode) in [
        ("", 0o700),
        ("master.key", 0o600),
        ("dev-engine.token", 0o600),
        ("vault.db", 0o600),
    ] {
        let m = std::fs::metadata(data.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "mode of vault-data/{name}");
    }
    let logs = s.logs();
    assert!(logs.contains("DEVELOPMENT SETUP"), "dev warning: {logs}");
    let token = dev_token(dir.path());
    assert!(!logs.contains(&token), "the dev token is not logged");

    let res = store(&s, &token, &slack("xoxb-abc", "rt-xyz"));
    assert_eq!(res.status().as_u16(), 201);
    let res = get(&s, &token, "/vault/token/pf_203/slack");
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().unwrap();
    assert_eq!(body["access_token"], "xoxb-abc");
    let res = client()
        .delete(format!("{}/vault/delete/pf_203/slack", s.base))
        .header("X-Engine-Id", "dev")
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = client().get(format!("{}/healthz", s.base)).send().unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

#[test]
fn sigterm_shuts_down_gracefully_and_restart_keeps_data_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path(), &[]).unwrap();
    let token = dev_token(dir.path());
    assert_eq!(
        store(&s, &token, &slack("xoxb-1", "rt-1"))
            .status()
            .as_u16(),
        201
    );
    s.signal("-TERM");
    assert!(s.wait().success(), "graceful exit: {}", s.logs());
    let s = start(dir.path(), &[]).unwrap();
    assert_eq!(dev_token(dir.path()), token, "dev token is kept");
    let body: Value = get(&s, &token, "/vault/token/pf_203/slack").json().unwrap();
    assert_eq!(body["access_token"], "xoxb-1");
}

#[test]
fn acknowledged_stores_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path(), &[]).unwrap();
    let token = dev_token(dir.path());
    for i in 0..20 {
        let mut body = slack(&format!("xoxb-{i}"), &format!("rt-{i}"));
        body["platform"] = json!(format!("p{i}"));
        assert_eq!(store(&s, &token, &body).status().as_u16(), 201);
    }
    s.signal("-KILL");
    s.wait();
    let s = start(dir.path(), &[]).unwrap();
    for i in 0..20 {
        let res = get(&s, &token, &format!("/vault/token/pf_203/p{i}"));
        assert_eq!(res.status().as_u16(), 200, "store {i} survived");
        let body: Value = res.json().unwrap();
        assert_eq!(body["access_token"], format!("xoxb-{i}"));
    }
    let conn = rusqlite::Connection::open(dir.path().join("vault-data/vault.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn no_plaintext_token_on_disk_or_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[("RUST_LOG", "trace")]).unwrap();
    let token = dev_token(dir.path());
    let access = "xoxb-DISK-MARKER-7d3a91";
    let refresh = "rt-DISK-MARKER-52be04";
    assert_eq!(
        store(&s, &token, &slack(access, refresh)).status().as_u16(),
        201
    );
    let body: Value = get(&s, &token, "/vault/token/pf_203/slack").json().unwrap();
    assert_eq!(body["access_token"], access);
    // An error path with the token in a wrong place.
    let mut bad = slack(access, refresh);
    bad["token_data"]["expires_in"] = json!(access);
    assert_eq!(store(&s, &token, &bad).status().as_u16(), 400);
    // A wrong engine token that looks like a secret.
    let res = client()
        .get(format!("{}/vault/token/pf_203/slack", s.base))
        .header("X-Engine-Id", "dev")
        .bearer_auth("wrong-ENGINE-MARKER-11")
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);

    let data = dir.path().join("vault-data");
    for name in ["vault.db", "vault.db-wal", "vault.db-shm"] {
        let Ok(bytes) = std::fs::read(data.join(name)) else {
            continue;
        };
        for needle in ["DISK-MARKER", "ENGINE-MARKER"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} found in {name}"
            );
        }
    }
    // Give the log reader a moment to drain what was already written.
    std::thread::sleep(Duration::from_millis(200));
    let logs = s.logs();
    assert!(logs.contains("\"audit\""), "audit events are logged");
    for needle in ["DISK-MARKER", "ENGINE-MARKER", token.as_str()] {
        assert!(!logs.contains(needle), "{needle} found in the logs");
    }
}

#[test]
fn environment_variables_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vault.toml");
    std::fs::write(
        &config,
        "data_dir = \"./elsewhere\"\n[server]\nbind = \"127.0.0.1:1\"\n[vault]\ndefault_environment = \"staging\"\n",
    )
    .unwrap();
    let s = start(
        dir.path(),
        &[
            ("VAULT_CONFIG", config.to_str().unwrap()),
            ("VAULT__VAULT__DEFAULT_ENVIRONMENT", "qa"),
        ],
    )
    .unwrap();
    // The bind from the environment (port 0) won over the file's port 1,
    // the data directory came from the file, the environment's default env won.
    let token = std::fs::read_to_string(dir.path().join("elsewhere/dev-engine.token")).unwrap();
    let info: Value = store(&s, token.trim(), &slack("a", "b")).json().unwrap();
    assert_eq!(info["environment"], "qa");
}

#[test]
fn bad_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vault.toml");
    std::fs::write(&config, "[server]\nbnid = \"typo\"\n").unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bnid"), "{stderr}");
    assert!(!dir.path().join("vault-data").exists(), "nothing created");
}

#[test]
fn start_is_refused_without_the_key_that_sealed_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path(), &[]).unwrap();
    let token = dev_token(dir.path());
    assert_eq!(store(&s, &token, &slack("x", "y")).status().as_u16(), 201);
    s.signal("-TERM");
    s.wait();
    let key = dir.path().join("vault-data/master.key");
    let original = std::fs::read(&key).unwrap();

    // Key file gone: refuse rather than create a new key.
    std::fs::remove_file(&key).unwrap();
    let err = start(dir.path(), &[]).err().expect("must refuse");
    assert!(err.contains("does not exist"), "{err}");
    assert!(!key.exists(), "no new key was created over existing data");

    // A different key: refuse, naming the key id needed.
    std::fs::write(&key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = start(dir.path(), &[]).err().expect("must refuse");
    assert!(err.contains("sealed under master key local-"), "{err}");

    // An empty key: a clear message, not a crash.
    std::fs::write(&key, "").unwrap();
    let err = start(dir.path(), &[]).err().expect("must refuse");
    assert!(err.contains("empty"), "{err}");

    // The right key again: served.
    std::fs::write(&key, original).unwrap();
    let s = start(dir.path(), &[]).unwrap();
    assert_eq!(
        get(&s, &token, "/vault/token/pf_203/slack")
            .status()
            .as_u16(),
        200
    );
}

#[test]
fn master_key_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
    let envs = [("VAULT__KEYS__PROVIDER", "env"), ("VAULT_MASTER_KEY", key)];
    let mut s = start(dir.path(), &envs).unwrap();
    assert!(!dir.path().join("vault-data/master.key").exists());
    let token = dev_token(dir.path());
    assert_eq!(store(&s, &token, &slack("x", "y")).status().as_u16(), 201);
    assert!(!s.logs().contains(key), "the key is not logged");
    s.signal("-TERM");
    s.wait();
    let s = start(dir.path(), &envs).unwrap();
    assert_eq!(
        get(&s, &token, "/vault/token/pf_203/slack")
            .status()
            .as_u16(),
        200
    );
    drop(s);
    let err = start(dir.path(), &[("VAULT__KEYS__PROVIDER", "env")])
        .err()
        .expect("no key in the environment");
    assert!(err.contains("VAULT_MASTER_KEY"), "{err}");
}

#[test]
fn hash_token_prints_the_config_value() {
    let mut child = Command::new(BIN)
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        vault_access_resolver::token_sha256_hex("s3cret")
    );
}

/// A config file with provider `acme` at the fake provider, a fast
/// background refresher and signed notifications to the fake's webhook.
fn lifecycle_config(dir: &Path, fake: &vault_test_support::FakeProvider) -> std::path::PathBuf {
    let secret = dir.join("client.secret");
    std::fs::write(&secret, vault_test_support::CLIENT_SECRET).unwrap();
    let hook = dir.join("hook.secret");
    std::fs::write(&hook, "hook-secret-value").unwrap();
    let config = dir.join("vault.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[providers.acme]
kind = "oauth2"
token_url = "{token}"
revoke_url = "{revoke}"
client_id = "{id}"
client_secret_file = "{secret}"
[refresh]
interval_ms = 100
max_jitter_ms = 10
[notifications]
url = "{hook_url}"
secret_file = "{hook}"
interval_ms = 100
"#,
            token = fake.url("/token"),
            revoke = fake.url("/revoke"),
            id = vault_test_support::CLIENT_ID,
            secret = secret.display(),
            hook_url = fake.url("/webhook"),
            hook = hook.display(),
        ),
    )
    .unwrap();
    config
}

fn acme(expires_in: u64) -> Value {
    json!({
        "project_id": "pf_1",
        "platform": "acme",
        "token_data": {
            "access_token": "at-original",
            "refresh_token": "rt-original",
            "expires_in": expires_in
        }
    })
}

/// Waits (bounded) for `cond`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn tokens_due_while_the_vault_was_down_are_refreshed_after_start() {
    let dir = tempfile::tempdir().unwrap();
    let fake = vault_test_support::FakeProvider::start();
    let config = lifecycle_config(dir.path(), &fake);
    let envs = [("VAULT_CONFIG", config.to_str().unwrap())];
    let mut s = start(dir.path(), &envs).unwrap();
    let token = dev_token(dir.path());
    assert_eq!(store(&s, &token, &acme(2)).status().as_u16(), 201);
    s.signal("-TERM");
    assert!(s.wait().success());
    // The token expires while nothing runs.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(fake.refresh_calls(), 0);
    let s = start(dir.path(), &envs).unwrap();
    // The background refresher finds it without any request asking.
    wait_until("the background refresh", || fake.refresh_calls() == 1);
    let body: Value = get(&s, &token, "/vault/token/pf_1/acme").json().unwrap();
    assert_eq!(body["access_token"], "at-refreshed-1");
    assert_eq!(fake.refresh_calls(), 1);
    assert!(!s.logs().contains("rt-original") && !s.logs().contains("at-refreshed"));
    assert!(
        !s.logs().contains(vault_test_support::CLIENT_SECRET),
        "no client secret in the logs"
    );
    let db = std::fs::read(dir.path().join("vault-data/vault.db")).unwrap();
    let secret = vault_test_support::CLIENT_SECRET.as_bytes();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret),
        "nor on disk"
    );
}

/// Stops the vault with SIGTERM while a refresh is waiting for its
/// provider (which rotates the refresh token when it takes the call, and
/// answers 1.5 s later), restarts it, and checks that the answer was
/// written before the process ended: the refreshed token is served and the
/// provider is not called again. The token is stored with `expires_in`;
/// with `read_first` a read starts the refresh, else the background
/// refresher does.
fn stop_during_a_refresh(extra_env: &[(&str, &str)], expires_in: u64, read_first: bool) {
    let dir = tempfile::tempdir().unwrap();
    let fake = vault_test_support::FakeProvider::start();
    fake.set_expires_in(Some(3600));
    fake.set_delay(Duration::from_millis(1500));
    let config = lifecycle_config(dir.path(), &fake);
    let mut envs = vec![("VAULT_CONFIG", config.to_str().unwrap())];
    envs.extend_from_slice(extra_env);
    let mut s = start(dir.path(), &envs).unwrap();
    let token = dev_token(dir.path());
    assert_eq!(store(&s, &token, &acme(expires_in)).status().as_u16(), 201);
    if read_first {
        let body: Value = get(&s, &token, "/vault/token/pf_1/acme").json().unwrap();
        assert_eq!(body["access_token"], "at-original");
    }
    wait_until("the refresh to start", || fake.refresh_calls() == 1);
    s.signal("-TERM");
    assert!(s.wait().success(), "graceful exit: {}", s.logs());

    fake.set_delay(Duration::ZERO);
    let s = start(dir.path(), &envs).unwrap();
    let body: Value = get(&s, &token, "/vault/token/pf_1/acme").json().unwrap();
    assert_eq!(body["access_token"], "at-refreshed-1");
    assert_eq!(fake.refresh_calls(), 1);
}

#[test]
fn a_graceful_stop_writes_a_refresh_under_way() {
    // Due at once: the background refresher calls the provider.
    stop_during_a_refresh(&[], 2, false);
}

#[test]
fn a_graceful_stop_writes_a_refresh_a_read_started() {
    // No background refresher, and a token valid for 200 s but due at once
    // (a margin of its whole lifetime): a read answers with it and starts a
    // refresh beside the request.
    stop_during_a_refresh(
        &[
            ("VAULT__REFRESH__BACKGROUND", "false"),
            ("VAULT__REFRESH__MARGIN_RATIO", "1.0"),
        ],
        200,
        true,
    );
}

#[test]
fn a_dead_grant_is_announced_by_a_signed_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let fake = vault_test_support::FakeProvider::start();
    fake.set_mode(vault_test_support::Mode::InvalidGrant);
    fake.fail_webhooks(1);
    let config = lifecycle_config(dir.path(), &fake);
    let s = start(dir.path(), &[("VAULT_CONFIG", config.to_str().unwrap())]).unwrap();
    let token = dev_token(dir.path());
    assert_eq!(store(&s, &token, &acme(1)).status().as_u16(), 201);
    wait_until("the webhook", || !fake.webhooks().is_empty());
    let (signature, body) = fake.webhooks()[0].clone();
    let ts: i64 = signature
        .strip_prefix("t=")
        .and_then(|v| v.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        signature,
        vault_token_manager::sign_webhook(b"hook-secret-value", ts, body.as_bytes())
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "secret.reauth_required");
    assert_eq!(v["platform"], "acme");
    assert!(!body.contains("rt-original"));
    let res = get(&s, &token, "/vault/token/pf_1/acme");
    assert_eq!(res.status().as_u16(), 409);
}

fn engine_cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let (code, out, err) = cli(dir, &[], &[&["engine"], args].concat());
    (code == 0, out, err)
}

fn get_as(s: &Server, id: &str, token: &str, path: &str) -> u16 {
    client()
        .get(format!("{}{path}", s.base))
        .header("X-Engine-Id", id)
        .bearer_auth(token)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn engines_are_managed_from_the_command_line_while_the_vault_runs() {
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        ("VAULT__ACCESS__ENGINE_RELOAD_SECS", "1"),
        ("VAULT__ACCESS__MAX_FAILURES", "1000"),
    ];
    let s = start(dir.path(), &envs).unwrap();
    let path = "/vault/token/pf_1/slack";

    let (ok, token, stderr) = engine_cli(dir.path(), &["add", "ops", "--grant", "read:prod:*:*"]);
    assert!(ok, "{stderr}");
    let token = token.trim().to_owned();
    assert_eq!(token.len(), 64, "256-bit token, alone on stdout");
    assert!(stderr.contains("added engine ops"));
    assert!(!stderr.contains(&token));
    wait_until("the new engine", || get_as(&s, "ops", &token, path) == 404);

    let (ok, list, _) = engine_cli(dir.path(), &["list"]);
    assert!(ok);
    assert!(list.contains("ops\tactive\tread:prod:*:*"), "{list}");
    assert!(!list.contains(&token));

    let (ok, rotated, _) = engine_cli(dir.path(), &["rotate", "ops"]);
    assert!(ok);
    let rotated = rotated.trim().to_owned();
    assert_ne!(rotated, token);
    wait_until("the old token to stop working", || {
        get_as(&s, "ops", &token, path) == 401
    });
    assert_eq!(get_as(&s, "ops", &rotated, path), 404);

    let (ok, _, _) = engine_cli(dir.path(), &["revoke", "ops"]);
    assert!(ok);
    wait_until("the revocation", || {
        get_as(&s, "ops", &rotated, path) == 401
    });
    let (_, list, _) = engine_cli(dir.path(), &["list"]);
    assert!(list.contains("ops\trevoked"), "{list}");

    // Bad input is refused with a message and changes nothing.
    let (ok, _, stderr) = engine_cli(dir.path(), &["add", "bad id", "--grant", "read:*:*:*"]);
    assert!(!ok && stderr.contains("engine id"), "{stderr}");
    let (ok, _, stderr) = engine_cli(dir.path(), &["add", "x", "--grant", "fly:*:*:*"]);
    assert!(!ok && stderr.contains("unknown action"), "{stderr}");
    let (ok, _, stderr) = engine_cli(dir.path(), &["rotate", "nobody"]);
    assert!(!ok && stderr.contains("no managed engine"), "{stderr}");
    // The token hash is stored, never the token.
    let db = std::fs::read(dir.path().join("vault-data/vault.db")).unwrap();
    assert!(!db.windows(64).any(|w| w == rotated.as_bytes()));
}

#[test]
fn plain_http_beyond_loopback_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[("VAULT__SERVER__BIND", "0.0.0.0:0")]).unwrap();
    assert!(
        s.logs().contains("plain HTTP beyond loopback"),
        "{}",
        s.logs()
    );
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]).unwrap();
    assert!(!s.logs().contains("plain HTTP beyond loopback"));
}

fn audit_cli(dir: &Path, args: &[&str]) -> (i32, String) {
    let (code, out, err) = cli(dir, &[], &[&["audit"], args].concat());
    (code, format!("{out}{err}"))
}

#[test]
fn the_usage_log_chain_verifies_and_tampering_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path(), &[]).unwrap();
    let token = dev_token(dir.path());
    assert_eq!(
        store(&s, &token, &slack("xoxb-AUDIT-MARKER", "rt-AUDIT-MARKER"))
            .status()
            .as_u16(),
        201
    );
    for _ in 0..3 {
        assert_eq!(
            get(&s, &token, "/vault/token/pf_203/slack")
                .status()
                .as_u16(),
            200
        );
    }
    assert_eq!(
        get(&s, &token, "/vault/token/pf_203/none")
            .status()
            .as_u16(),
        404
    );
    s.signal("-TERM");
    s.wait();

    let (code, out) = audit_cli(dir.path(), &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("records: 5, verified: 5") && out.contains("chain intact"),
        "{out}"
    );

    let (code, out) = audit_cli(dir.path(), &["export"]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["action"], "store");
    assert_eq!(lines[4]["outcome"], "not_found");
    assert!(!out.contains("AUDIT-MARKER"), "no token in the usage log");

    // Someone with write access to the file rewrites a denial as a success.
    let db = dir.path().join("vault-data/vault.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE audit_log SET outcome = 'success' WHERE seq = 5", [])
        .unwrap();
    let (code, out) = audit_cli(dir.path(), &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("record 5 ") && out.contains("last verified: 4"),
        "{out}"
    );
    // And one who deletes a record.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM audit_log WHERE seq = 2", [])
        .unwrap();
    let (code, out) = audit_cli(dir.path(), &["verify"]);
    assert_eq!(code, 1);
    assert!(out.contains("record 3 missing before"), "{out}");
}

#[test]
fn config_check_validates_and_masks() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vault.toml");
    std::fs::write(
        &config,
        "[[engines]]\nid = \"execution\"\ntoken_sha256 = \"5e8848a1b3f0c2d4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e\"\ngrants = [\"read:prod:*:*\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "config", "check"])
        .env("VAULT__SERVER__WORKERS", "3")
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains("workers = 3"),
        "environment applied: {shown}"
    );
    assert!(
        shown.contains("[redacted]") && !shown.contains("5e8848a1"),
        "{shown}"
    );
    std::fs::write(&config, "[server]\nworkers = 0\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("workers"));
}

fn import(dir: &Path, args: &[&str]) -> (i32, String) {
    let (code, _, err) = cli(dir, &[], &[&["import"], args].concat());
    (code, err)
}

fn secret_count(dir: &Path) -> i64 {
    let db = dir.join("vault-data/vault.db");
    if !db.exists() {
        return 0;
    }
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM secrets", [], |r| r.get(0))
        .unwrap_or(0)
}

#[test]
fn import_is_all_or_nothing_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.jsonl");
    std::fs::write(
        &file,
        [
            r#"{"project_id":"pf_1","platform":"Slack","token_data":{"access_token":"xoxb-IMPORT-1","refresh_token":"rt-1","expires_in":3600,"scopes":["chat:write"]}}"#,
            r#"{"project_id":"pf_2","platform":"stripe","environment":"dev","token_data":{"access_token":"sk_IMPORT_2"}}"#,
            r#"{"project_id":"pf 3","platform":"notion","token_data":{"access_token":"secret_IMPORT_3"}}"#,
            "",
            r#"{"project_id":"pf_4","platform":"acme","token_data":{"access_token":"IMPORT-SECRET-4","expires_in":"soon"}}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let path = file.to_str().unwrap();

    let (code, err) = import(dir.path(), &[path, "--dry-run"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("line 3: project") && err.contains("line 5:"),
        "{err}"
    );
    assert!(err.contains("2 valid, 2 invalid"), "{err}");
    assert!(!err.contains("IMPORT"), "no value echoed: {err}");
    assert_eq!(secret_count(dir.path()), 0);

    let (code, err) = import(dir.path(), &[path]);
    assert_eq!(code, 1);
    assert!(err.contains("nothing imported"), "{err}");
    assert_eq!(secret_count(dir.path()), 0, "nothing half-imported");

    let (code, err) = import(dir.path(), &[path, "--continue-on-error"]);
    assert_eq!(code, 1, "some lines were bad: {err}");
    assert!(err.contains("imported 2/2"), "{err}");
    assert_eq!(secret_count(dir.path()), 2);

    // The imported tokens are served.
    let s = start(dir.path(), &[]).unwrap();
    let token = dev_token(dir.path());
    let body: Value = get(&s, &token, "/vault/token/pf_1/slack").json().unwrap();
    assert_eq!(body["access_token"], "xoxb-IMPORT-1");
    let body: Value = get(&s, &token, "/vault/token/pf_2/stripe?env=dev")
        .json()
        .unwrap();
    assert_eq!(body["access_token"], "sk_IMPORT_2");
}

fn import_lines(dir: &Path, name: &str, lines: &[(&str, &str)]) -> String {
    let file = dir.join(name);
    let text: Vec<String> = lines
        .iter()
        .map(|(project, platform)| {
            json!({"project_id": project, "platform": platform,
                   "token_data": {"access_token": format!("IMPORTED-{project}-{platform}")}})
            .to_string()
        })
        .collect();
    std::fs::write(&file, text.join("\n")).unwrap();
    file.to_str().unwrap().to_owned()
}

#[test]
fn an_import_that_fails_while_writing_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let first = import_lines(dir.path(), "first.jsonl", &[("pf_0", "x")]);
    let (code, err) = import(dir.path(), &[&first]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(secret_count(dir.path()), 1);
    // The usage log names each imported address.
    let imported: i64 = rusqlite::Connection::open(dir.path().join("vault-data/vault.db"))
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM audit_log
             WHERE project = 'pf_0' AND platform = 'x' AND action = 'store'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(imported, 1);

    // The database refuses the third line's row, as a full disk or a key
    // service refusing halfway would.
    rusqlite::Connection::open(dir.path().join("vault-data/vault.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse_p3 BEFORE INSERT ON secrets WHEN NEW.platform = 'p3'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    let four = import_lines(
        dir.path(),
        "four.jsonl",
        &[
            ("pf_1", "p1"),
            ("pf_1", "p2"),
            ("pf_1", "p3"),
            ("pf_1", "p4"),
        ],
    );
    let (code, err) = import(dir.path(), &[&four]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing imported"), "{err}");
    assert_eq!(secret_count(dir.path()), 1, "nothing half-imported: {err}");
    assert!(!err.contains("IMPORTED"), "no value echoed: {err}");

    // Line by line, the others go in and the failing one is named.
    let (code, err) = import(dir.path(), &[&four, "--continue-on-error"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("line 3:") && err.contains("imported 3/4"),
        "{err}"
    );
    assert_eq!(secret_count(dir.path()), 4);

    // At once, an import only adds: an address already stored, or one
    // given twice, refuses the whole file.
    let again = import_lines(dir.path(), "again.jsonl", &[("pf_2", "new"), ("pf_0", "x")]);
    let (code, err) = import(dir.path(), &[&again]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already holds a secret"), "{err}");
    let twice = import_lines(
        dir.path(),
        "twice.jsonl",
        &[("pf_3", "a"), ("pf_3", "b"), ("pf_3", "a")],
    );
    let (code, err) = import(dir.path(), &[&twice]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 3: the same address as line 1"), "{err}");
    assert_eq!(secret_count(dir.path()), 4);
}

#[test]
fn the_shell_walkthrough_runs_against_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/walkthrough.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&s.base)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "[HTTP 201]",
        "\"access_token\":\"xoxb-walkthrough\"",
        "insufficient_scope",
        "[HTTP 401]",
        "\"deleted\":true",
        "[HTTP 404]",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
}

/// Runs the binary as a command-line tool in `dir`: exit code, stdout,
/// stderr.
fn cli(dir: &Path, envs: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).env_remove("VAULT_CONFIG").args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count_under(dir: &Path, key_id: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("vault-data/vault.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM secrets WHERE key_id = ?1",
        [key_id],
        |r| r.get(0),
    )
    .unwrap()
}

const KEY_ENV: &[(&str, &str)] = &[
    ("VAULT__KEYS__CHECK_INTERVAL_SECS", "1"),
    ("VAULT__KEYS__REWRAP_BATCH", "5"),
];

#[test]
fn a_key_is_not_retired_while_a_server_may_still_seal_under_it() {
    // The server looks at the key file every 30 s: after a rotation from the
    // command line it keeps sealing under the old key for up to that long.
    let env = &[("VAULT__KEYS__CHECK_INTERVAL_SECS", "30")];
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), env).unwrap();
    let token = dev_token(dir.path());
    assert_eq!(
        store(&s, &token, &slack("xoxb-before", "rt-b"))
            .status()
            .as_u16(),
        201
    );
    let (_, status, _) = cli(dir.path(), env, &["keys", "status"]);
    let old = status
        .lines()
        .find_map(|l| l.strip_prefix("active master key: "))
        .unwrap()
        .trim()
        .to_owned();
    // The tool rotates and rewraps everything stored so far: nothing in the
    // database is sealed under the old key any more.
    let (code, _, err) = cli(dir.path(), env, &["keys", "rotate"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(count_under(dir.path(), &old), 0);

    // Retiring it now would lose what the server still seals under it.
    let (code, _, err) = cli(dir.path(), env, &["keys", "retire", &old]);
    assert_ne!(code, 0, "retired while the server may still use it");
    assert!(err.contains("key file changed"), "{err}");
    let mut body = slack("xoxb-after", "rt-a");
    body["platform"] = json!("after");
    assert_eq!(store(&s, &token, &body).status().as_u16(), 201);
    assert_eq!(count_under(dir.path(), &old), 1, "sealed under the old key");

    // Both tokens survive a restart.
    drop(s);
    let s = start(dir.path(), env).unwrap();
    for (path, want) in [
        ("/vault/token/pf_203/slack", "xoxb-before"),
        ("/vault/token/pf_203/after", "xoxb-after"),
    ] {
        let res = get(&s, &token, path);
        assert_eq!(res.status().as_u16(), 200, "{path}");
        assert_eq!(res.json::<Value>().unwrap()["access_token"], want);
    }
}

#[test]
fn master_key_rotation_rewraps_online_survives_kill_9_and_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path(), KEY_ENV).unwrap();
    let token = dev_token(dir.path());
    let n = 200;
    for i in 0..n {
        let mut body = slack(&format!("xoxb-rot-{i}"), &format!("rt-{i}"));
        body["platform"] = json!(format!("p{i}"));
        assert_eq!(store(&s, &token, &body).status().as_u16(), 201);
    }
    let (code, before, _) = cli(dir.path(), &[], &["keys", "status"]);
    assert_eq!(code, 0);
    let old = before
        .lines()
        .find_map(|l| l.strip_prefix("active master key: "))
        .unwrap()
        .trim()
        .to_owned();

    // Rotate from the command line while the server runs; leave the
    // rewrap to the server's background job.
    let (code, out, err) = cli(dir.path(), &[], &["keys", "rotate", "--no-rewrap"]);
    assert_eq!(code, 0, "{err}");
    let new = out.trim().to_owned();
    assert!(new.starts_with("local-") && new != old, "{out}");

    // The server picks the new key up and rewraps in batches: catch it in
    // the middle and kill it there.
    let mut partial = false;
    for _ in 0..2000 {
        let moved = count_under(dir.path(), &new);
        if moved > 0 && moved < n {
            partial = true;
            break;
        }
        if moved >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    s.signal("-KILL");
    s.wait();
    let moved_at_kill = count_under(dir.path(), &new);
    eprintln!("killed with {moved_at_kill}/{n} rewrapped (caught mid-way: {partial})");

    // Retirement is refused while anything is sealed under the old key.
    if moved_at_kill < n {
        let (code, _, err) = cli(dir.path(), &[], &["keys", "retire", &old]);
        assert_ne!(code, 0);
        assert!(err.contains("still seals"), "{err}");
    }

    // A restart resumes the rewrap; nothing is lost.
    let s = start(dir.path(), KEY_ENV).unwrap();
    wait_until("the rewrap to finish", || {
        count_under(dir.path(), &new) == n
    });
    // A new store is sealed under the new key at once.
    let mut body = slack("xoxb-after", "rt-after");
    body["platform"] = json!("after");
    assert_eq!(store(&s, &token, &body).status().as_u16(), 201);
    assert_eq!(count_under(dir.path(), &new), n + 1);
    for i in (0..n).step_by(7) {
        let res = get(&s, &token, &format!("/vault/token/pf_203/p{i}"));
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(
            res.json::<Value>().unwrap()["access_token"],
            format!("xoxb-rot-{i}")
        );
    }
    let status: Value = get(&s, &token, "/vault/keys").json().unwrap();
    assert_eq!(status["active_key_id"], new.as_str());
    assert_eq!(status["pending_rewrap"], 0);
    assert_eq!(status["retirable_key_ids"], json!([old.clone()]));

    // Now the old key can go, once the key file has been unchanged for two
    // check intervals and a margin (12 s here); the server keeps serving
    // without it.
    wait_until("the old key to be retirable", || {
        let (code, _, err) = cli(dir.path(), &[], &["keys", "retire", &old]);
        assert!(code == 0 || err.contains("key file changed"), "{err}");
        code == 0
    });
    let key_file = std::fs::read_to_string(dir.path().join("vault-data/master.key")).unwrap();
    assert_eq!(key_file.lines().filter(|l| !l.starts_with('#')).count(), 1);
    drop(s);
    let s = start(dir.path(), KEY_ENV).unwrap();
    let res = get(&s, &token, "/vault/token/pf_203/p3");
    assert_eq!(res.status().as_u16(), 200);
    drop(s);
    let conn = rusqlite::Connection::open(dir.path().join("vault-data/vault.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let (code, out) = audit_cli(dir.path(), &["verify"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_usage_log_key_rotates_through_the_admin_api_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path(), &[]).unwrap();
    let token = dev_token(dir.path());
    assert_eq!(
        store(&s, &token, &slack("xoxb-a", "rt-a"))
            .status()
            .as_u16(),
        201
    );
    let res = client()
        .post(format!("{}/vault/keys/rotate?target=audit", s.base))
        .header("X-Engine-Id", "dev")
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.json::<Value>().unwrap()["version"], 2);
    for _ in 0..5 {
        assert_eq!(
            get(&s, &token, "/vault/token/pf_203/slack")
                .status()
                .as_u16(),
            200
        );
    }
    let res = client()
        .post(format!("{}/vault/keys/rotate?target=nonsense", s.base))
        .header("X-Engine-Id", "dev")
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    s.signal("-TERM");
    s.wait();
    // And once more offline, from the command line.
    let (code, out, err) = cli(dir.path(), &[], &["keys", "rotate-audit-key"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "3");
    let s = start(dir.path(), &[]).unwrap();
    assert_eq!(
        get(&s, &token, "/vault/token/pf_203/slack")
            .status()
            .as_u16(),
        200
    );
    drop(s);
    let (code, out) = audit_cli(dir.path(), &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("chain intact"), "{out}");
}

#[test]
fn keys_in_the_environment_cannot_be_rotated_by_the_vault() {
    let dir = tempfile::tempdir().unwrap();
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let envs = [("VAULT__KEYS__PROVIDER", "env"), ("VAULT_MASTER_KEY", key)];
    let (code, _, err) = cli(dir.path(), &envs, &["keys", "rotate"]);
    assert_ne!(code, 0);
    assert!(err.contains("VAULT_MASTER_KEY"), "{err}");
    assert!(!err.contains(key), "the key itself is never printed");
}

#[test]
fn backup_while_writing_then_restore_and_a_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]).unwrap();
    let token = dev_token(dir.path());
    for i in 0..50 {
        let mut body = slack(&format!("xoxb-marker-bk-{i}"), &format!("rt-marker-bk-{i}"));
        body["platform"] = json!(format!("b{i}"));
        assert_eq!(store(&s, &token, &body).status().as_u16(), 201);
    }
    // A writer keeps storing while the backup runs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (base, token, stop) = (s.base.clone(), token.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut body = slack(&format!("xoxb-marker-w-{i}"), "rt-marker-w");
                body["platform"] = json!(format!("w{i}"));
                let res = client()
                    .post(format!("{base}/vault/store"))
                    .header("X-Engine-Id", "dev")
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .unwrap();
                assert_eq!(res.status().as_u16(), 201);
                i += 1;
            }
            i
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let backup = dir.path().join("snapshot.db");
    let (code, _, err) = cli(dir.path(), &[], &["backup", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 0);
    drop(s);

    // Only ciphertext in the copy.
    let bytes = std::fs::read(&backup).unwrap();
    assert!(
        !bytes.windows(11).any(|w| w == b"xoxb-marker"),
        "plaintext in backup"
    );
    assert!(
        !bytes.windows(9).any(|w| w == b"rt-marker"),
        "plaintext in backup"
    );
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second backup to the same file is refused rather than overwriting.
    let (code, _, _) = cli(dir.path(), &[], &["backup", backup.to_str().unwrap()]);
    assert_ne!(code, 0);

    // Restore into an empty data directory with the right key.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("vault-data")).unwrap();
    std::fs::copy(
        dir.path().join("vault-data/master.key"),
        other.path().join("vault-data/master.key"),
    )
    .unwrap();
    std::fs::copy(
        dir.path().join("vault-data/dev-engine.token"),
        other.path().join("vault-data/dev-engine.token"),
    )
    .unwrap();
    let (code, _, err) = cli(other.path(), &[], &["restore", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("chain intact"), "{err}");
    // Restoring over an existing database is refused.
    let (code, _, err) = cli(other.path(), &[], &["restore", backup.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("exists already"), "{err}");
    let s = start(other.path(), &[]).unwrap();
    for i in (0..50).step_by(5) {
        let res = get(&s, &token, &format!("/vault/token/pf_203/b{i}"));
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(
            res.json::<Value>().unwrap()["access_token"],
            format!("xoxb-marker-bk-{i}")
        );
    }
    drop(s);

    // With another key the restore is refused, naming the key it needs,
    // and leaves nothing behind.
    let wrong = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(wrong.path().join("vault-data")).unwrap();
    std::fs::write(
        wrong.path().join("vault-data/master.key"),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    )
    .unwrap();
    std::fs::set_permissions(
        wrong.path().join("vault-data/master.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let (code, _, err) = cli(wrong.path(), &[], &["restore", backup.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("sealed under master key local-"), "{err}");
    assert!(!wrong.path().join("vault-data/vault.db").exists());
}

#[test]
fn backup_and_restore_refuse_links_make_private_directories_and_report_a_broken_chain() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]).unwrap();
    let token = dev_token(dir.path());
    assert_eq!(
        store(&s, &token, &slack("xoxb-r", "rt-r"))
            .status()
            .as_u16(),
        201
    );
    drop(s);

    // A dangling link where the backup should go: refused, and nothing is
    // written where it points.
    let target = dir.path().join("elsewhere.db");
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (code, _, err) = cli(dir.path(), &[], &["backup", link.to_str().unwrap()]);
    assert_ne!(code, 0, "{err}");
    assert!(!target.exists(), "the backup followed the link");
    let backup = dir.path().join("copy.db");
    let (code, _, err) = cli(dir.path(), &[], &["backup", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    // A custom database file in a directory that does not exist yet: made
    // 0700, and the WAL guard looks at that file's own WAL.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("vault-data")).unwrap();
    std::fs::copy(
        dir.path().join("vault-data/master.key"),
        other.path().join("vault-data/master.key"),
    )
    .unwrap();
    let db = other.path().join("db/sub/vault.sqlite");
    let env = [("VAULT__STORAGE__PATH", db.to_str().unwrap())];
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(other.path().join("db/sub/vault.sqlite-wal"), b"").unwrap();
    let (code, _, err) = cli(other.path(), &env, &["restore", backup.to_str().unwrap()]);
    assert_ne!(code, 0, "restored beside a WAL of another database: {err}");
    assert!(err.contains("exists already"), "{err}");
    std::fs::remove_dir_all(other.path().join("db")).unwrap();
    let (code, _, err) = cli(other.path(), &env, &["restore", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let mode = std::fs::metadata(db.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);

    // A copy whose usage log was changed is restored, but not silently.
    let tampered = dir.path().join("tampered.db");
    std::fs::copy(&backup, &tampered).unwrap();
    rusqlite::Connection::open(&tampered)
        .unwrap()
        .execute(
            "UPDATE audit_log SET engine_id = 'someone-else' WHERE seq = 1",
            [],
        )
        .unwrap();
    let third = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(third.path().join("vault-data")).unwrap();
    std::fs::copy(
        dir.path().join("vault-data/master.key"),
        third.path().join("vault-data/master.key"),
    )
    .unwrap();
    let (code, _, err) = cli(third.path(), &[], &["restore", tampered.to_str().unwrap()]);
    assert!(err.contains("chain BROKEN"), "{err}");
    assert_eq!(code, 1, "{err}");
}

#[test]
fn an_unreachable_kms_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("http://127.0.0.1:{port}");
    let err = start(
        dir.path(),
        &[
            ("VAULT__KEYS__PROVIDER", "transit"),
            ("VAULT__KEYS__TRANSIT__ADDRESS", &address),
            ("VAULT__KEYS__TRANSIT__KEY_NAME", "vault-engine"),
            ("VAULT__KEYS__TRANSIT__TOKEN_ENV", "TRANSIT_TOKEN"),
            ("TRANSIT_TOKEN", "s.secret-transit-token"),
        ],
    )
    .err()
    .expect("must refuse");
    assert!(err.contains("transit key provider does not work"), "{err}");
    assert!(err.contains(&address), "{err}");
    assert!(!err.contains("s.secret-transit-token"), "{err}");
    assert!(!dir.path().join("vault-data/master.key").exists());
}

/// moto's AWS emulator with one KMS key; `None` when moto is missing.
fn moto_with_key() -> Option<(vault_test_support::Moto, String)> {
    let moto = vault_test_support::Moto::start()?;
    let key = moto.create_kms_key();
    Some((moto, key))
}

#[test]
fn aws_kms_as_the_master_key_and_a_start_without_it_is_refused() {
    let Some((mut moto, key)) = moto_with_key() else {
        return;
    };
    let url = moto.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        ("VAULT__KEYS__PROVIDER", "aws-kms"),
        ("VAULT__KEYS__AWS_KMS__REGION", "us-east-1"),
        ("VAULT__KEYS__AWS_KMS__KEY_ID", key.as_str()),
        ("VAULT__KEYS__AWS_KMS__ENDPOINT", url.as_str()),
        ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-marker"),
    ];
    let mut s = start(dir.path(), &envs).unwrap();
    let token = dev_token(dir.path());
    assert_eq!(
        store(&s, &token, &slack("xoxb-kms-1", "rt-kms-1"))
            .status()
            .as_u16(),
        201
    );
    let res = get(&s, &token, "/vault/token/pf_203/slack");
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.json::<Value>().unwrap()["access_token"], "xoxb-kms-1");
    let status: Value = get(&s, &token, "/vault/keys").json().unwrap();
    assert_eq!(status["provider"], "aws-kms");
    assert_eq!(status["active_key_id"], format!("aws:{key}"));
    assert!(!dir.path().join("vault-data/master.key").exists());
    s.signal("-TERM");
    s.wait();
    assert!(!s.logs().contains("aws-secret-marker"));

    // Without the KMS the vault does not start.
    moto.stop();
    let err = start(dir.path(), &envs).err().expect("must refuse");
    assert!(err.contains("aws-kms key provider does not work"), "{err}");
    assert!(!err.contains("aws-secret-marker"), "{err}");
}

/// A config for replicas sharing the PostgreSQL database at `url`: one
/// engine `ie` with every grant (token `ie-token`), provider `acme` at the
/// fake, no background refresher (the tests drive the refreshes).
fn replica_config(
    dir: &Path,
    url: &str,
    fake: &vault_test_support::FakeProvider,
    refresh: &str,
) -> std::path::PathBuf {
    let secret = dir.join("client.secret");
    std::fs::write(&secret, vault_test_support::CLIENT_SECRET).unwrap();
    let config = dir.join("replica.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{data}"
[storage]
backend = "postgres"
url = "{url}"
pool_size = 4
[[engines]]
id = "ie"
token_sha256 = "{hash}"
grants = ["*:*:*:*"]
[providers.acme]
kind = "oauth2"
token_url = "{token}"
client_id = "{id}"
client_secret_file = "{secret}"
[refresh]
background = false
{refresh}
"#,
            data = dir.join("shared-data").display(),
            hash = vault_access_resolver::token_sha256_hex("ie-token"),
            token = fake.url("/token"),
            id = vault_test_support::CLIENT_ID,
            secret = secret.display(),
        ),
    )
    .unwrap();
    config
}

fn as_ie(req: reqwest::blocking::RequestBuilder) -> reqwest::blocking::Response {
    req.header("X-Engine-Id", "ie")
        .bearer_auth("ie-token")
        .send()
        .unwrap()
}

#[test]
fn three_replicas_on_postgres_refresh_an_expired_token_exactly_once() {
    let Some(db) = vault_test_support::TestDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fake = vault_test_support::FakeProvider::start();
    let config = replica_config(dir.path(), db.url(), &fake, "");
    let envs = [("VAULT_CONFIG", config.to_str().unwrap())];
    // The first creates the key and the schema; the others join.
    let first = start(dir.path(), &envs).unwrap();
    let replicas = [
        first,
        start(dir.path(), &envs).unwrap(),
        start(dir.path(), &envs).unwrap(),
    ];
    let stored = as_ie(
        client()
            .post(format!("{}/vault/store", replicas[1].base))
            .json(&acme(1)),
    );
    assert_eq!(stored.status().as_u16(), 201);
    std::thread::sleep(Duration::from_millis(1500));
    fake.set_delay(Duration::from_millis(300));

    // 300 GETs of the expired token at once, spread over the replicas.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let answers = rt.block_on(async {
        let http = reqwest::Client::new();
        let calls = (0..300).map(|i| {
            let req = http
                .get(format!("{}/vault/token/pf_1/acme", bases[i % 3]))
                .header("X-Engine-Id", "ie")
                .bearer_auth("ie-token");
            async move {
                let r = req.send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }
        });
        futures_util::future::join_all(calls).await
    });
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["access_token"], "at-refreshed-1");
    }
    assert_eq!(fake.refresh_calls(), 1, "one provider call for 300 reads");

    // Every replica appended to one usage log, and it verifies.
    let (code, out, err) = cli(dir.path(), &envs, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    drop(replicas);
}

#[test]
fn a_replica_killed_while_holding_the_refresh_lease_is_taken_over() {
    let Some(db) = vault_test_support::TestDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fake = vault_test_support::FakeProvider::start();
    let config = replica_config(
        dir.path(),
        db.url(),
        &fake,
        "http_timeout_secs = 3\nlease_secs = 7",
    );
    let envs = [("VAULT_CONFIG", config.to_str().unwrap())];
    let a = start(dir.path(), &envs).unwrap();
    let b = start(dir.path(), &envs).unwrap();
    let stored = as_ie(
        client()
            .post(format!("{}/vault/store", a.base))
            .json(&acme(1)),
    );
    assert_eq!(stored.status().as_u16(), 201);
    std::thread::sleep(Duration::from_millis(1500));
    fake.set_delay(Duration::from_millis(1000));
    // A provider that rotates refresh tokens would have rotated this one
    // away in the call the killed replica never saw answered (the grant
    // is then dead, as it would be for a single node); this one does not.
    fake.set_rotate(false);

    // `a` takes the lease and calls the provider; it dies mid-call.
    let url = format!("{}/vault/token/pf_1/acme", a.base);
    let pending = std::thread::spawn(move || {
        client()
            .get(url)
            .header("X-Engine-Id", "ie")
            .bearer_auth("ie-token")
            .send()
            .is_err()
    });
    wait_until("a's provider call", || fake.refresh_calls() == 1);
    a.signal("-KILL");
    assert!(
        pending.join().unwrap(),
        "the request to the killed replica failed"
    );

    // `b` waits out the dead replica's lease, then refreshes once.
    let r = as_ie(client().get(format!("{}/vault/token/pf_1/acme", b.base)));
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap();
    assert_eq!(status, 200, "{body}\n{}", b.logs());
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("at-refreshed-"), "{body}");
    assert_eq!(fake.refresh_calls(), 2);
    // And the result is committed for everyone.
    let again: Value = as_ie(client().get(format!("{}/vault/token/pf_1/acme", b.base)))
        .json()
        .unwrap();
    assert_eq!(again["access_token"], token.as_str());
    assert_eq!(fake.refresh_calls(), 2);
}

#[test]
fn a_sqlite_vault_migrates_to_postgres_and_serves_from_there() {
    let Some(db) = vault_test_support::TestDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path(), &[]).unwrap();
    let token = dev_token(dir.path());
    assert_eq!(
        store(&s, &token, &slack("xoxb-MIGRATED", "rt-MIGRATED"))
            .status()
            .as_u16(),
        201
    );
    s.signal("-TERM");
    assert!(s.wait().success());

    let to = db.url().to_owned();
    let (code, out, err) = cli(dir.path(), &[("VAULT_MIGRATE_TO", &to)], &["migrate"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("secrets: 1 row(s)"), "{err}");
    assert!(err.contains("chain intact"), "{err}");
    assert!(!err.contains("xoxb-MIGRATED"));
    // Into a database that holds a vault already: refused.
    let (code, _, err) = cli(dir.path(), &[], &["migrate", "--to", &to]);
    assert_ne!(code, 0);
    assert!(err.contains("already holds vault data"), "{err}");

    // The same data directory (the key), now on PostgreSQL.
    let pg = [
        ("VAULT__STORAGE__BACKEND", "postgres"),
        ("VAULT__STORAGE__URL", to.as_str()),
    ];
    let s = start(dir.path(), &pg).unwrap();
    let body: Value = get(&s, &token, "/vault/token/pf_203/slack").json().unwrap();
    assert_eq!(body["access_token"], "xoxb-MIGRATED");
    let (code, out, err) = cli(dir.path(), &pg, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// What a crash test knows of one address: the last acknowledged value
/// (`None`: deleted or never stored) and the operation in flight when the
/// server died, if any (`Some(None)`: a delete).
#[derive(Clone, Default)]
struct Known {
    acked: Option<String>,
    in_flight: Option<Option<String>>,
}

/// Stores, replaces and deletes at `addresses` until `stop`, recording
/// what the server acknowledged.
fn crash_writer(
    base: String,
    token: String,
    worker: usize,
    known: Arc<Mutex<std::collections::HashMap<String, Known>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    round: usize,
    acked: Arc<std::sync::atomic::AtomicUsize>,
) {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut n = 0usize;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        n += 1;
        let platform = format!("w{worker}x{}", n % 5);
        let delete = n.is_multiple_of(4);
        let value = format!("at-r{round}-w{worker}-n{n}");
        let next = if delete { None } else { Some(value.clone()) };
        known
            .lock()
            .unwrap()
            .entry(platform.clone())
            .or_default()
            .in_flight = Some(next.clone());
        let res = if delete {
            http.delete(format!("{base}/vault/delete/pf_crash/{platform}"))
                .header("X-Engine-Id", "dev")
                .bearer_auth(&token)
                .send()
        } else {
            http.post(format!("{base}/vault/store"))
                .header("X-Engine-Id", "dev")
                .bearer_auth(&token)
                .json(&json!({
                    "project_id": "pf_crash",
                    "platform": platform,
                    "token_data": {"access_token": value, "refresh_token": format!("rt-{value}")}
                }))
                .send()
        };
        match res {
            // A delete of nothing is a 404, and leaves nothing too.
            Ok(r) if r.status().is_success() || (delete && r.status().as_u16() == 404) => {
                let mut k = known.lock().unwrap();
                let entry = k.get_mut(&platform).unwrap();
                entry.acked = next;
                entry.in_flight = None;
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            // Connection lost: the server died with it in flight.
            Err(_) => return,
            Ok(r) => panic!("unexpected answer {} for {platform}", r.status()),
        }
    }
}

#[test]
fn twenty_kill_9s_under_load_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let fake = vault_test_support::FakeProvider::start();
    // Refreshes never fail here: a refresh token rotated away by a call
    // whose answer died with the server would end the grant (see
    // docs/deployment.md), which is not what this test is about.
    fake.set_rotate(false);
    // Refreshed tokens live 2 s (a 1 s lifetime can round down to nothing).
    fake.set_expires_in(Some(2));
    let config = lifecycle_config(dir.path(), &fake);
    let envs = [("VAULT_CONFIG", config.to_str().unwrap())];
    let known: Arc<Mutex<std::collections::HashMap<String, Known>>> = Arc::default();
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut cut_short = 0;
    for round in 0..20 {
        let s = start(dir.path(), &envs).unwrap();
        let token = dev_token(dir.path());
        // Everything acknowledged before the last kill is there, and what
        // was in flight is there whole or not at all.
        cut_short += check_known(&s, &token, &known, round);
        // Tokens that expire within seconds (the provider's answers too)
        // keep refreshes writing throughout.
        if round == 0 {
            for i in 0..3 {
                let mut body = acme(1);
                body["project_id"] = json!(format!("pf_refresh{i}"));
                assert!(store(&s, &token, &body).status().is_success());
            }
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (base, token, known, stop, acked) = (
                    s.base.clone(),
                    token.clone(),
                    Arc::clone(&known),
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                );
                std::thread::spawn(move || crash_writer(base, token, w, known, stop, round, acked))
            })
            .collect();
        // Readers force refreshes of the expired tokens meanwhile.
        let reader = {
            let (base, token, stop) = (s.base.clone(), token.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    for i in 0..3 {
                        let r = client()
                            .get(format!("{base}/vault/token/pf_refresh{i}/acme"))
                            .header("X-Engine-Id", "dev")
                            .bearer_auth(&token)
                            .send();
                        if r.is_err() {
                            return;
                        }
                    }
                }
            })
        };
        // A random point in the load: 200 to 800 ms in.
        let pause = {
            use std::hash::{BuildHasher, Hasher};
            200 + std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                % 600
        };
        std::thread::sleep(Duration::from_millis(pause));
        s.signal("-KILL");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in writers {
            w.join().unwrap();
        }
        reader.join().unwrap();
        drop(s);
    }
    let s = start(dir.path(), &envs).unwrap();
    let token = dev_token(dir.path());
    cut_short += check_known(&s, &token, &known, 20);
    let acked = acked.load(std::sync::atomic::Ordering::SeqCst);
    let refreshes = fake.refresh_calls();
    eprintln!(
        "{acked} writes acknowledged, {cut_short} cut short by a kill, {refreshes} refreshes"
    );
    assert!(
        acked >= 200 && cut_short >= 20 && refreshes >= 5,
        "the load was real: {acked}, {cut_short}, {refreshes}"
    );
    for i in 0..3 {
        let r = get(&s, &token, &format!("/vault/token/pf_refresh{i}/acme"));
        assert_eq!(r.status().as_u16(), 200, "refreshed token {i} readable");
    }
    let mut s = s;
    s.signal("-TERM");
    assert!(s.wait().success());
    let conn = rusqlite::Connection::open(dir.path().join("vault-data/vault.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let (code, out, err) = cli(dir.path(), &envs, &["audit", "verify"]);
    assert_eq!(
        code, 0,
        "the usage log verifies after 20 crashes: {out}{err}"
    );
}

/// Checks every address against what was acknowledged (and possibly in
/// flight), then forgets what was in flight: it is settled now. Returns
/// how many operations were in flight at the kill.
fn check_known(
    s: &Server,
    token: &str,
    known: &Mutex<std::collections::HashMap<String, Known>>,
    round: usize,
) -> usize {
    let mut known = known.lock().unwrap();
    let in_flight = known.values().filter(|k| k.in_flight.is_some()).count();
    for (platform, k) in known.iter_mut() {
        let r = get(s, token, &format!("/vault/token/pf_crash/{platform}"));
        let found = match r.status().as_u16() {
            200 => Some(
                r.json::<Value>().unwrap()["access_token"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            404 => None,
            other => panic!("round {round}: {platform} answered {other}"),
        };
        let allowed = match &k.in_flight {
            Some(next) => found == k.acked || &found == next,
            None => found == k.acked,
        };
        assert!(
            allowed,
            "round {round}: {platform} is {found:?}; acknowledged {:?}, in flight {:?}",
            k.acked, k.in_flight
        );
        k.acked = found;
        k.in_flight = None;
    }
    in_flight
}

/// Every place a marker must never reach, checked: `what` names it.
fn assert_no_marker(what: &str, haystack: &[u8], needles: &[&str]) {
    for needle in needles {
        assert!(
            !haystack
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "{needle} leaked into {what}"
        );
    }
}

#[test]
fn marked_secrets_leak_nowhere_on_any_path() {
    let dir = tempfile::tempdir().unwrap();
    let fake = vault_test_support::FakeProvider::start();
    fake.set_rotate(false);
    // From the start, the provider echoes the refresh token in its error
    // answers, to the background refresher and to requests alike.
    fake.set_mode(vault_test_support::Mode::EchoToken);
    let config = lifecycle_config(dir.path(), &fake);
    let audit_file = dir.path().join("audit.jsonl");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[audit]\nfile = \"{}\"\n[audit.forward]\nurl = \"{}\"\ninterval_ms = 50\n",
        audit_file.display(),
        fake.url("/logs")
    ));
    std::fs::write(&config, text).unwrap();
    let envs = [
        ("VAULT_CONFIG", config.to_str().unwrap()),
        ("RUST_LOG", "trace"),
        ("VAULT__REFRESH__BACKOFF_BASE_SECS", "1"),
    ];
    let mut s = start(dir.path(), &envs).unwrap();
    let token = dev_token(dir.path());
    let access = "at-LEAKMARK-a7c1";
    let refresh = "rt-LEAKMARK-r93e";
    // What no file, log, record or answer other than a token read may hold.
    let secrets = [
        "LEAKMARK",
        "ENGINEMARK",
        "at-refreshed-",
        "rt-refreshed-",
        vault_test_support::CLIENT_SECRET,
        "hook-secret-value",
        token.as_str(),
    ];
    let mut answers: Vec<(String, String)> = Vec::new();
    let mut keep = |what: &str, r: reqwest::blocking::Response| -> u16 {
        let status = r.status().as_u16();
        answers.push((what.to_owned(), r.text().unwrap()));
        status
    };
    let with_dev = |req: reqwest::blocking::RequestBuilder| {
        req.header("X-Engine-Id", "dev").bearer_auth(&token)
    };
    let body = json!({
        "project_id": "pf_1",
        "platform": "acme",
        "token_data": {"access_token": access, "refresh_token": refresh, "expires_in": 3}
    });
    let stored_at = std::time::Instant::now();
    assert_eq!(keep("store", store(&s, &token, &body)), 201);
    let read: Value = get(&s, &token, "/vault/token/pf_1/acme").json().unwrap();
    assert_eq!(read["access_token"], access);
    // Error paths with the secret in the wrong place.
    let mut bad = body.clone();
    bad["token_data"]["expires_in"] = json!(access);
    assert_eq!(keep("bad field", store(&s, &token, &bad)), 400);
    let broken =
        format!("{{\"project_id\": \"pf_1\", \"token_data\": {{\"access_token\": \"{access}\"");
    let r = with_dev(client().post(format!("{}/vault/store", s.base)))
        .header("content-type", "application/json")
        .body(broken)
        .send()
        .unwrap();
    assert_eq!(keep("broken json", r), 400);
    let huge = format!(
        "{{\"pad\": \"{}\", \"t\": \"{access}\"}}",
        "x".repeat(70 * 1024)
    );
    let r = with_dev(client().post(format!("{}/vault/store", s.base)))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .unwrap();
    assert_eq!(keep("oversized", r), 413);
    let r = client()
        .get(format!("{}/vault/token/pf_1/acme", s.base))
        .header("X-Engine-Id", "dev")
        .bearer_auth("wrong-ENGINEMARK-44")
        .send()
        .unwrap();
    assert_eq!(keep("wrong engine token", r), 401);
    // Expired now; every refresh meets the echoing provider.
    std::thread::sleep(Duration::from_millis(3300).saturating_sub(stored_at.elapsed()));
    let r = get(&s, &token, "/vault/token/pf_1/acme");
    assert!(keep("failed refresh", r) >= 400);
    let r = with_dev(client().post(format!("{}/vault/refresh/pf_1/acme", s.base)))
        .send()
        .unwrap();
    assert!(keep("failed forced refresh", r) >= 400);
    assert!(fake.refresh_calls() >= 1);
    fake.set_mode(vault_test_support::Mode::Ok);
    wait_until("a refresh once the provider is back", || {
        get(&s, &token, "/vault/token/pf_1/acme").status().as_u16() == 200
    });
    // Everything else an operator or engine can read.
    let r = with_dev(client().get(format!("{}/vault/status/pf_1/acme", s.base)))
        .send()
        .unwrap();
    assert_eq!(keep("status", r), 200);
    assert_eq!(
        keep(
            "metrics",
            client().get(format!("{}/metrics", s.base)).send().unwrap()
        ),
        200
    );
    let r = with_dev(client().get(format!("{}/vault/audit?limit=500", s.base)))
        .send()
        .unwrap();
    assert_eq!(keep("audit query", r), 200);
    let r = with_dev(client().delete(format!("{}/vault/delete/pf_1/acme", s.base)))
        .send()
        .unwrap();
    assert_eq!(keep("delete", r), 200);
    wait_until("forwarded usage records", || fake.logged().len() >= 8);
    for (what, text) in &answers {
        assert_no_marker(&format!("the {what} answer"), text.as_bytes(), &secrets);
    }
    for record in fake.logged() {
        assert_no_marker(
            "a forwarded usage record",
            record.to_string().as_bytes(),
            &secrets,
        );
    }
    for (_, hook) in fake.webhooks() {
        assert_no_marker("a webhook", hook.as_bytes(), &secrets);
    }
    assert_no_marker(
        "the audit file",
        &std::fs::read(&audit_file).unwrap(),
        &secrets,
    );

    // The command line, while the server runs.
    let backup = dir.path().join("copy.db");
    for args in [
        vec!["audit", "export"],
        vec!["audit", "verify"],
        vec!["config", "check"],
        vec!["keys", "status"],
        vec!["backup", backup.to_str().unwrap()],
    ] {
        let (code, out, err) = cli(dir.path(), &envs, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_no_marker(
            &format!("`{}`", args.join(" ")),
            format!("{out}{err}").as_bytes(),
            &secrets,
        );
    }
    assert_no_marker("the backup", &std::fs::read(&backup).unwrap(), &secrets);

    // Stopped: the logs at trace level, and every database file.
    s.signal("-TERM");
    assert!(s.wait().success());
    std::thread::sleep(Duration::from_millis(200));
    let logs = s.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("\"trace\""),
        "trace logging was on"
    );
    assert_no_marker("the logs", logs.as_bytes(), &secrets);
    let data = dir.path().join("vault-data");
    for name in ["vault.db", "vault.db-wal", "vault.db-shm"] {
        if let Ok(bytes) = std::fs::read(data.join(name)) {
            assert_no_marker(name, &bytes, &secrets);
        }
    }
}

/// Resident memory and open file descriptors of a process.
fn rss_kb_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

/// A steady mixed load (reads, stores, deletes, refreshes of tokens that
/// expire every second, usage-log forwarding) for `VAULT_SOAK_SECS`
/// (30 by default; 600 for the full soak): no errors, memory and file
/// descriptors flat after warm-up, forwarding keeping up.
#[test]
fn soak_under_mixed_load_stays_flat() {
    let secs: u64 = std::env::var("VAULT_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .max(10);
    let dir = tempfile::tempdir().unwrap();
    let fake = vault_test_support::FakeProvider::start();
    fake.set_rotate(false);
    // Refreshed tokens live 2 s: refreshes run all the time, and
    // an expiry rounded down to whole seconds still leaves time to use
    // them (a 1 s lifetime can round down to nothing).
    fake.set_expires_in(Some(2));
    let config = lifecycle_config(dir.path(), &fake);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[audit.forward]\nurl = \"{}\"\ninterval_ms = 100\nbatch = 500\n",
        fake.url("/logs")
    ));
    std::fs::write(&config, text).unwrap();
    let envs = [("VAULT_CONFIG", config.to_str().unwrap())];
    let mut s = start(dir.path(), &envs).unwrap();
    let pid = s.child.id();
    let token = dev_token(dir.path());
    for i in 0..5 {
        let mut body = acme(1);
        body["project_id"] = json!(format!("pf_soak{i}"));
        assert_eq!(store(&s, &token, &body).status().as_u16(), 201);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (base, token, stop, errors, done, failures) = (
                s.base.clone(),
                token.clone(),
                Arc::clone(&stop),
                Arc::clone(&errors),
                Arc::clone(&done),
                Arc::clone(&failures),
            );
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    n += 1;
                    let req = match n % 10 {
                        0 => http.delete(format!("{base}/vault/delete/pf_w{w}/p{}", n % 50)),
                        1..=3 => http.post(format!("{base}/vault/store")).json(&json!({
                            "project_id": format!("pf_w{w}"),
                            "platform": format!("p{}", n % 50),
                            "token_data": {"access_token": format!("at-{n}")}
                        })),
                        4 => http.get(format!("{base}/vault/token/pf_soak{}/acme", n % 5)),
                        _ => http.get(format!("{base}/vault/token/pf_soak{}/acme", (n + 1) % 5)),
                    };
                    let failure = match req.header("X-Engine-Id", "dev").bearer_auth(&token).send()
                    {
                        Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => None,
                        Ok(r) => Some(format!("{} {}", r.status(), r.text().unwrap_or_default())),
                        Err(e) => Some(format!("transport: {e}")),
                    };
                    if let Some(f) = failure {
                        errors.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let mut seen = failures.lock().unwrap();
                        if seen.len() < 10 {
                            seen.push(f);
                        }
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // A steady rate, not a flood: about 200 requests/s each.
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    // Warm-up, then samples: memory and descriptors at a third of the run
    // and at its end.
    let third = Duration::from_secs(secs / 3);
    std::thread::sleep(third);
    let (rss_warm, fds_warm) = rss_kb_and_fds(pid);
    std::thread::sleep(third * 2);
    let (rss_end, fds_end) = rss_kb_and_fds(pid);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let requests = done.load(std::sync::atomic::Ordering::SeqCst);
    let errors = errors.load(std::sync::atomic::Ordering::SeqCst);
    // Forwarding keeps up: everything recorded reaches the receiver soon
    // after the load stops.
    let records = |s: &Server| -> i64 {
        let r = get(s, &token, "/vault/audit?limit=1");
        r.json::<Value>().unwrap()["records"][0]["id"]
            .as_i64()
            .unwrap_or(0)
    };
    let newest = records(&s);
    wait_until("forwarding to catch up", || {
        fake.logged()
            .iter()
            .filter_map(|v| v["id"].as_i64())
            .max()
            .unwrap_or(0)
            >= newest
    });
    eprintln!(
        "soak {secs} s: {requests} requests, {errors} errors, {} refreshes, \
         RSS {rss_warm} -> {rss_end} kB, fds {fds_warm} -> {fds_end}, {newest} usage records forwarded",
        fake.refresh_calls()
    );
    assert_eq!(
        errors,
        0,
        "no errors under a steady load: {:?}",
        failures.lock().unwrap()
    );
    assert!(requests as u64 > secs * 100, "the load ran: {requests}");
    assert!(
        fake.refresh_calls() as u64 >= secs,
        "refreshes ran throughout"
    );
    assert!(
        rss_end <= rss_warm + rss_warm / 10 + 2048,
        "memory grew after warm-up: {rss_warm} -> {rss_end} kB"
    );
    assert!(
        fds_end <= fds_warm + 8,
        "file descriptors grew: {fds_warm} -> {fds_end}"
    );
    s.signal("-TERM");
    assert!(s.wait().success());
}

/// A small tmpfs mounted for one test (needs root); unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(path.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` until it refuses another byte.
fn fill_disk(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() && f.sync_data().is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() && f.sync_data().is_ok() {}
}

/// A full disk under the SQLite database: requests that need to write get
/// a clear 503 (nothing half-written, no token handed out without its usage
/// record), the server keeps running, and it recovers on its own once there
/// is space again.
#[test]
fn a_full_disk_gives_clear_503s_and_the_vault_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("vault-data"), "6m") else {
        assert!(
            std::env::var_os("VAULT_TEST_REQUIRE_FULL_DISK").is_none(),
            "VAULT_TEST_REQUIRE_FULL_DISK is set but a tmpfs cannot be mounted here"
        );
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    };
    let mut s = start(dir.path(), &[("VAULT__REFRESH__BACKGROUND", "false")]).unwrap();
    let token = dev_token(dir.path());
    let value = |i: usize| format!("disk-{i}-{}", "x".repeat(8_000));
    let body = |i: usize| {
        json!({
            "project_id": "disk",
            "platform": format!("p{i}"),
            "token_data": { "access_token": value(i) }
        })
    };
    for i in 0..5 {
        assert_eq!(store(&s, &token, &body(i)).status().as_u16(), 201);
    }

    let filler = dir.path().join("vault-data/filler");
    fill_disk(&filler);
    let clear_503 = |res: reqwest::blocking::Response| {
        let body: Value = res.json().unwrap();
        let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
        assert!(
            ["storage_unavailable", "audit_unavailable"].contains(&code.as_str()),
            "{body}"
        );
    };
    let (mut acked, mut refused, mut reads_served) = (Vec::new(), Vec::new(), 0);
    for i in 5..120 {
        let res = store(&s, &token, &body(i));
        match res.status().as_u16() {
            201 => acked.push(i),
            503 => {
                clear_503(res);
                refused.push(i);
            }
            other => panic!("store {i}: {other}"),
        }
        let res = get(&s, &token, &format!("/vault/token/disk/p{}", i % 5));
        match res.status().as_u16() {
            200 => {
                reads_served += 1;
                let body: Value = res.json().unwrap();
                assert_eq!(body["access_token"], value(i % 5));
            }
            503 => clear_503(res),
            other => panic!("read {i}: {other}"),
        }
    }
    eprintln!(
        "full disk: {} stores acknowledged, {} refused; {reads_served} of 115 reads served",
        acked.len(),
        refused.len()
    );
    assert!(
        refused.len() > 50,
        "the disk was full: {} refused",
        refused.len()
    );
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "the server kept running"
    );

    // Space returns: the same requests succeed, without a restart.
    std::fs::remove_file(&filler).unwrap();
    for &i in &refused {
        let res = get(&s, &token, &format!("/vault/token/disk/p{i}"));
        // A refused store left nothing behind (or, at most, all of it).
        match res.status().as_u16() {
            404 => {}
            200 => assert_eq!(res.json::<Value>().unwrap()["access_token"], value(i)),
            other => panic!("after a refused store {i}: {other}"),
        }
        assert_eq!(
            store(&s, &token, &body(i)).status().as_u16(),
            201,
            "store {i} after recovery"
        );
    }
    for i in 0..120 {
        let res = get(&s, &token, &format!("/vault/token/disk/p{i}"));
        assert_eq!(res.status().as_u16(), 200, "{i}");
        assert_eq!(res.json::<Value>().unwrap()["access_token"], value(i));
    }
    assert!(!s.logs().contains("panicked"), "{}", s.logs());

    // After a crash: integrity, the chain, and a usage record per token served.
    s.signal("-KILL");
    s.wait();
    let conn = rusqlite::Connection::open(dir.path().join("vault-data/vault.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let read_records: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_log WHERE action = 'read' AND outcome = 'success'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    assert!(
        read_records >= reads_served + 120,
        "{read_records} read records for {} reads served",
        reads_served + 120
    );
    let (code, out) = audit_cli(dir.path(), &["verify"]);
    assert_eq!(code, 0, "{out}");
    drop(disk);
}
