//! Test doubles for the vault's outside world, speaking real HTTP on a
//! loopback port: an OAuth 2.0 provider with switchable quirks (plain RFC
//! 6749, Slack's `ok: false` envelope, rotation with reuse detection, no
//! refresh token in answers, 5xx, 429, slow answers, invalid JSON, dead
//! grants, error bodies that echo the token) and a webhook receiver; and
//! [`Moto`], the AWS KMS emulator as a child process; and
//! [`TestDatabase`], a throw-away PostgreSQL database.
//!
//! Used by the workspace's tests only; never by the vault itself.
//!
//! ```
//! let provider = vault_test_support::FakeProvider::start();
//! assert!(provider.url("/token").starts_with("http://127.0.0.1:"));
//! assert_eq!(provider.refresh_calls(), 0);
//! ```

mod emulators;
mod postgres;

pub use emulators::{Moto, free_port, have_tool};
pub use postgres::{POSTGRES_URL_VAR, TestDatabase};

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine as _;

/// How the provider answers refreshes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Success (RFC 6749 §5.1, or Slack's `ok: true` envelope on `/slack`).
    Ok,
    /// HTTP 400 `{"error": "invalid_grant"}` (Slack: HTTP 200 `ok: false`,
    /// `invalid_refresh_token`).
    InvalidGrant,
    /// This HTTP status with an empty JSON object.
    Status(u16),
    /// HTTP 429 with `Retry-After` in seconds.
    RateLimited(u64),
    /// HTTP 200 with a body that is not JSON.
    InvalidJson,
    /// HTTP 400 whose error description echoes the refresh token.
    EchoToken,
}

#[derive(Debug)]
struct State {
    mode: Mutex<Mode>,
    /// Issue a new refresh token on every refresh and reject reused ones.
    rotate: Mutex<bool>,
    expires_in: Mutex<Option<serde_json::Value>>,
    delay: Mutex<Duration>,
    client_id: String,
    client_secret: String,
    refresh_calls: AtomicUsize,
    counter: AtomicU64,
    used_refresh_tokens: Mutex<HashSet<String>>,
    revoked: Mutex<Vec<(String, String)>>,
    webhooks: Mutex<Vec<(String, String)>>,
    webhook_failures: AtomicUsize,
    logs: Mutex<Vec<serde_json::Value>>,
    logs_authorization: Mutex<Vec<String>>,
    logs_failures: AtomicUsize,
    logs_delay: Mutex<Duration>,
    webhook_delay: Mutex<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fake OAuth provider and webhook receiver on `127.0.0.1:<random port>`.
///
/// Routes: `POST /token` (RFC 6749 refresh, form or JSON body, Basic or
/// body client authentication), `POST /revoke` (RFC 7009),
/// `POST /slack/oauth.v2.access` and `POST /slack/auth.revoke` (Slack's
/// envelope), `POST /webhook` (records signed notifications).
#[derive(Debug, Clone)]
pub struct FakeProvider {
    base: String,
    state: Arc<State>,
}

/// The client id the provider expects.
pub const CLIENT_ID: &str = "vault-client";
/// The client secret the provider expects.
pub const CLIENT_SECRET: &str = "client-secret-MARKER-5e1d";

impl FakeProvider {
    /// Starts the provider on its own thread and runtime.
    pub fn start() -> Self {
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Ok),
            rotate: Mutex::new(true),
            expires_in: Mutex::new(Some(3600.into())),
            delay: Mutex::new(Duration::ZERO),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            refresh_calls: AtomicUsize::new(0),
            counter: AtomicU64::new(0),
            used_refresh_tokens: Mutex::default(),
            revoked: Mutex::default(),
            webhooks: Mutex::default(),
            webhook_failures: AtomicUsize::new(0),
            logs: Mutex::default(),
            logs_authorization: Mutex::default(),
            logs_failures: AtomicUsize::new(0),
            logs_delay: Mutex::new(Duration::ZERO),
            webhook_delay: Mutex::new(Duration::ZERO),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let server_state = Arc::clone(&state);
        std::thread::spawn(move || {
            let sys = actix_web::rt::System::new();
            sys.block_on(async move {
                let data = web::Data::from(server_state);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route("/token", web::post().to(token))
                        .route("/revoke", web::post().to(revoke))
                        .route("/slack/oauth.v2.access", web::post().to(slack_token))
                        .route("/slack/auth.revoke", web::post().to(slack_revoke))
                        .route("/webhook", web::post().to(webhook))
                        .route("/logs", web::post().to(logs))
                })
                .workers(2)
                .bind("127.0.0.1:0");
                let server = match server {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let addr = server.addrs()[0];
                let _ = tx.send(Ok(addr));
                let _ = server.run().await;
            });
        });
        let addr = rx
            .recv()
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("fake provider did not start"));
        Self {
            base: format!("http://{addr}"),
            state,
        }
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sets how refreshes are answered.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state.mode) = mode;
    }

    /// Whether refreshes rotate the refresh token (default: yes).
    pub fn set_rotate(&self, rotate: bool) {
        *lock(&self.state.rotate) = rotate;
    }

    /// `expires_in` of refreshed tokens (`None`: left out).
    pub fn set_expires_in(&self, secs: Option<u64>) {
        *lock(&self.state.expires_in) = secs.map(Into::into);
    }

    /// `expires_in` of refreshed tokens as any JSON value, for providers
    /// that answer something unusable (`-1`, `"soon"`, `true`).
    pub fn set_expires_in_json(&self, value: serde_json::Value) {
        *lock(&self.state.expires_in) = Some(value);
    }

    /// Delay before every refresh and revocation answer.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Refresh calls received so far.
    pub fn refresh_calls(&self) -> usize {
        self.state.refresh_calls.load(Ordering::SeqCst)
    }

    /// Tokens revoked so far, with the type hint (or `slack`).
    pub fn revoked(&self) -> Vec<(String, String)> {
        lock(&self.state.revoked).clone()
    }

    /// Webhooks received so far: (signature header, body).
    pub fn webhooks(&self) -> Vec<(String, String)> {
        lock(&self.state.webhooks).clone()
    }

    /// Delays every webhook answer by `delay` (the delivery is recorded
    /// when it is answered).
    pub fn set_webhook_delay(&self, delay: Duration) {
        *lock(&self.state.webhook_delay) = delay;
    }

    /// The next `n` webhook deliveries fail with HTTP 503.
    pub fn fail_webhooks(&self, n: usize) {
        self.state.webhook_failures.store(n, Ordering::SeqCst);
    }

    /// Usage records received at `/logs`, in arrival order (duplicates
    /// included: delivery is at least once).
    pub fn logged(&self) -> Vec<serde_json::Value> {
        lock(&self.state.logs).clone()
    }

    /// `Authorization` headers of the `/logs` batches received.
    pub fn logs_authorization(&self) -> Vec<String> {
        lock(&self.state.logs_authorization).clone()
    }

    /// The next `n` `/logs` batches fail with HTTP 503.
    pub fn fail_logs(&self, n: usize) {
        self.state.logs_failures.store(n, Ordering::SeqCst);
    }

    /// Delay before `/logs` answers (a stalled receiver).
    pub fn set_logs_delay(&self, delay: Duration) {
        *lock(&self.state.logs_delay) = delay;
    }
}

/// Parses a form or JSON body into key/value pairs.
fn fields(req: &HttpRequest, body: &[u8]) -> Vec<(String, String)> {
    let json = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .map(|m| {
                m.into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        web::Query::<Vec<(String, String)>>::from_query(&String::from_utf8_lossy(body))
            .map(|q| q.into_inner())
            .unwrap_or_default()
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Checks client authentication: HTTP Basic or body credentials.
fn client_ok(state: &State, req: &HttpRequest, fields: &[(String, String)]) -> bool {
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    if let Some(pair) = basic {
        return pair == format!("{}:{}", state.client_id, state.client_secret);
    }
    field(fields, "client_id") == Some(state.client_id.as_str())
        && field(fields, "client_secret") == Some(state.client_secret.as_str())
}

/// The shared refresh logic; `Ok(json)` or `Err((status, error code, json))`.
async fn do_refresh(
    state: &State,
    req: &HttpRequest,
    body: &[u8],
) -> Result<serde_json::Value, (u16, String, Option<u64>)> {
    state.refresh_calls.fetch_add(1, Ordering::SeqCst);
    let delay = *lock(&state.delay);
    if !delay.is_zero() {
        actix_web::rt::time::sleep(delay).await;
    }
    let f = fields(req, body);
    if !client_ok(state, req, &f) {
        return Err((401, "invalid_client".into(), None));
    }
    if field(&f, "grant_type") != Some("refresh_token") {
        return Err((400, "unsupported_grant_type".into(), None));
    }
    let Some(rt) = field(&f, "refresh_token").map(str::to_owned) else {
        return Err((400, "invalid_request".into(), None));
    };
    let mode = lock(&state.mode).clone();
    match mode {
        Mode::Ok => {}
        Mode::InvalidGrant => return Err((400, "invalid_grant".into(), None)),
        Mode::Status(s) => return Err((s, "server_error".into(), None)),
        Mode::RateLimited(after) => return Err((429, "rate_limited".into(), Some(after))),
        Mode::InvalidJson => return Err((200, "not json".into(), None)),
        Mode::EchoToken => return Err((400, format!("bad token {rt}"), None)),
    }
    let rotate = *lock(&state.rotate);
    if rotate && !lock(&state.used_refresh_tokens).insert(rt.clone()) {
        // OAuth 2.1 reuse detection: a used refresh token kills the grant.
        return Err((400, "invalid_grant".into(), None));
    }
    let n = state.counter.fetch_add(1, Ordering::SeqCst) + 1;
    let mut answer = serde_json::json!({
        "access_token": format!("at-refreshed-{n}"),
        "token_type": "Bearer",
        "scope": "chat:write users:read",
    });
    if rotate {
        answer["refresh_token"] = format!("rt-rotated-{n}").into();
    }
    if let Some(e) = lock(&state.expires_in).clone() {
        answer["expires_in"] = e;
    }
    Ok(answer)
}

fn error_response(status: u16, code: String, retry_after: Option<u64>) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::build(status);
    if let Some(after) = retry_after {
        res.insert_header(("Retry-After", after.to_string()));
    }
    if code == "not json" {
        return res.body("<html>surprise</html>");
    }
    if let Some(token) = code.strip_prefix("bad token ") {
        return res.json(serde_json::json!({
            "error": "invalid_request",
            "error_description": format!("refresh token {token} is malformed"),
        }));
    }
    res.json(serde_json::json!({ "error": code }))
}

async fn token(state: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    match do_refresh(&state, &req, &body).await {
        Ok(answer) => HttpResponse::Ok().json(answer),
        Err((status, code, after)) => error_response(status, code, after),
    }
}

async fn slack_token(state: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    match do_refresh(&state, &req, &body).await {
        Ok(mut answer) => {
            answer["ok"] = true.into();
            // Slack lists scopes with commas.
            answer["scope"] = "chat:write,users:read".into();
            answer["token_type"] = "bot".into();
            HttpResponse::Ok().json(answer)
        }
        Err((status, code, after)) if status >= 500 || status == 429 || code == "not json" => {
            error_response(status, code, after)
        }
        Err((_, code, _)) => {
            let code = if code == "invalid_grant" {
                "invalid_refresh_token".to_owned()
            } else {
                code
            };
            HttpResponse::Ok().json(serde_json::json!({ "ok": false, "error": code }))
        }
    }
}

async fn revoke(state: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let delay = *lock(&state.delay);
    if !delay.is_zero() {
        actix_web::rt::time::sleep(delay).await;
    }
    let f = fields(&req, &body);
    if let Mode::Status(s) = lock(&state.mode).clone() {
        return error_response(s, "server_error".into(), None);
    }
    let Some(token) = field(&f, "token") else {
        return error_response(400, "invalid_request".into(), None);
    };
    let hint = field(&f, "token_type_hint").unwrap_or("").to_owned();
    lock(&state.revoked).push((token.to_owned(), hint));
    HttpResponse::Ok().finish()
}

async fn slack_revoke(state: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let f = fields(&req, &body);
    let Some(token) = field(&f, "token") else {
        return HttpResponse::Ok().json(serde_json::json!({"ok": false, "error": "not_authed"}));
    };
    lock(&state.revoked).push((token.to_owned(), "slack".into()));
    HttpResponse::Ok().json(serde_json::json!({"ok": true, "revoked": true}))
}

async fn webhook(state: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let delay = *lock(&state.webhook_delay);
    if !delay.is_zero() {
        actix_web::rt::time::sleep(delay).await;
    }
    let failing = state
        .webhook_failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let signature = req
        .headers()
        .get("x-vault-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    lock(&state.webhooks).push((signature, String::from_utf8_lossy(&body).into_owned()));
    HttpResponse::Ok().finish()
}

async fn logs(state: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let delay = *lock(&state.logs_delay);
    if !delay.is_zero() {
        actix_web::rt::time::sleep(delay).await;
    }
    let failing = state
        .logs_failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let Ok(batch) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    if let Some(auth) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        lock(&state.logs_authorization).push(auth.to_owned());
    }
    if let Some(records) = batch["records"].as_array() {
        lock(&state.logs).extend(records.iter().cloned());
    }
    HttpResponse::Ok().finish()
}
