//! The vault's HTTP interface, on actix-web.
//!
//! Routes (all under `/vault` require `X-Engine-Id` and
//! `Authorization: Bearer …`):
//!
//! | route | method | what |
//! |---|---|---|
//! | `/vault/store` | POST | store (create or replace) a token; answers metadata only |
//! | `/vault/token/{project}/{platform}` | GET | a valid access token (`?env=`, `?scopes=a,b`, `?force_refresh=true`) |
//! | `/vault/refresh/{project}/{platform}` | POST | refresh now and answer the new token (`?env=`) |
//! | `/vault/status/{project}/{platform}` | GET | status and metadata, never a token (`?env=`) |
//! | `/vault/delete/{project}/{platform}` | DELETE | revoke at the provider and delete (`?env=`) |
//! | `/vault/delete/{project}` | DELETE | the same for every secret of the project the caller may delete |
//! | `/vault/audit` | GET | the usage log, newest first, paginated (`admin` grant) |
//! | `/healthz` | GET | liveness and storage health, no auth |
//! | `/readyz` | GET | readiness: database writable, master key usable; no auth |
//! | `/metrics` | GET | Prometheus text format; no auth, no secrets |
//! | `/openapi.json` | GET | this API's OpenAPI 3.1 document; no auth |
//! | `/vault/keys` | GET | master keys and the rewrap backlog (`admin` on every address) |
//! | `/vault/keys/rotate` | POST | a new master (or `?target=audit` usage-log) key version (`admin` on every address) |
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a
//! stable code; the status comes from the error's kind, mapped in one place
//! ([`ApiError`]). This crate wires nothing itself: it is handed a
//! [`TokenManager`] and an [`AccessResolver`] as trait objects.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn run(tokens: vault_token_manager::TokenManager,
//! #              access: Arc<dyn vault_access_resolver::AccessResolver>) -> std::io::Result<()> {
//! let state = vault_api::ApiState::new(tokens, access, "prod".into());
//! let listener = std::net::TcpListener::bind("127.0.0.1:8200")?;
//! vault_api::server(state, listener, 2, None)?.await
//! # }
//! ```

mod dto;
mod error;
mod handlers;
mod limits;
mod openapi;
mod request;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, middleware, web};
use vault_access_resolver::AccessResolver;
use vault_token_manager::TokenManager;
use vault_types::metrics::{CounterVec, HistogramVec};

pub use error::ApiError;
pub use limits::AccessLimits;
pub use openapi::ERROR_CODES;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything the handlers need, shared by all workers.
#[derive(Debug, Clone)]
pub struct ApiState {
    inner: Arc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    tokens: TokenManager,
    access: Arc<dyn AccessResolver>,
    default_environment: String,
    limiter: limits::Limiter,
    http_requests: CounterVec,
    http_latency: HistogramVec,
}

impl ApiState {
    /// State over a token manager and an access resolver; requests that name
    /// no environment use `default_environment`. Default abuse limits.
    pub fn new(
        tokens: TokenManager,
        access: Arc<dyn AccessResolver>,
        default_environment: String,
    ) -> Self {
        Self::with_limits(tokens, access, default_environment, AccessLimits::default())
    }

    /// [`ApiState::new`] with explicit abuse limits.
    pub fn with_limits(
        tokens: TokenManager,
        access: Arc<dyn AccessResolver>,
        default_environment: String,
        limits: AccessLimits,
    ) -> Self {
        Self {
            inner: Arc::new(StateInner {
                tokens,
                access,
                default_environment,
                limiter: limits::Limiter::new(limits),
                http_requests: CounterVec::new(
                    "vault_http_requests_total",
                    "HTTP requests by route, method and status.",
                ),
                http_latency: HistogramVec::new(
                    "vault_http_request_duration_seconds",
                    "HTTP request duration by route.",
                ),
            }),
        }
    }
}

/// Registers routes and remembers each (method, path), so the OpenAPI
/// document can be checked against what is really served.
struct Routes<'a> {
    cfg: &'a mut web::ServiceConfig,
    table: Vec<(&'static str, &'static str)>,
}

impl Routes<'_> {
    fn add<F, Args>(
        &mut self,
        method: actix_web::http::Method,
        path: &'static str,
        handler: F,
    ) -> &mut Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        let name = match method.as_str() {
            "GET" => "GET",
            "POST" => "POST",
            "DELETE" => "DELETE",
            _ => "OTHER",
        };
        self.table.push((name, path));
        // Every resource has one method: that is the whole `Allow` header
        // of its 405 answers (RFC 9110 §15.5.6).
        let allow = if name == "OTHER" { "" } else { name };
        self.cfg.service(
            web::resource(path)
                .route(web::method(method).to(handler))
                .default_service(web::to(move || handlers::method_not_allowed(allow))),
        );
        self
    }
}

/// Registers every route; returns the (method, path) table.
fn register(cfg: &mut web::ServiceConfig) -> Vec<(&'static str, &'static str)> {
    use actix_web::http::Method;
    let mut r = Routes {
        cfg,
        table: Vec::new(),
    };
    r.add(Method::GET, "/healthz", handlers::health)
        .add(Method::GET, "/readyz", handlers::ready)
        .add(Method::GET, "/metrics", handlers::metrics)
        .add(Method::GET, "/openapi.json", handlers::openapi)
        .add(Method::POST, "/vault/store", handlers::store)
        .add(
            Method::GET,
            "/vault/token/{project}/{platform}",
            handlers::fetch,
        )
        .add(
            Method::POST,
            "/vault/refresh/{project}/{platform}",
            handlers::refresh,
        )
        .add(
            Method::GET,
            "/vault/status/{project}/{platform}",
            handlers::status,
        )
        .add(
            Method::DELETE,
            "/vault/delete/{project}/{platform}",
            handlers::delete,
        )
        .add(Method::GET, "/vault/audit", handlers::audit)
        .add(Method::GET, "/vault/keys", handlers::keys_status)
        .add(Method::POST, "/vault/keys/rotate", handlers::keys_rotate)
        .add(
            Method::DELETE,
            "/vault/delete/{project}",
            handlers::delete_project,
        );
    r.table
}

/// Every route the server registers, as (method, path).
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    let mut table = Vec::new();
    let _app = App::new().configure(|cfg| table = register(cfg));
    table
}

/// The OpenAPI 3.1 document of this API (also served at `/openapi.json`).
pub fn openapi_document() -> serde_json::Value {
    openapi::document()
}

/// Registers the vault's routes on an actix `App` (for embedding in a
/// larger server, or for tests).
pub fn configure(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state));
        register(cfg);
        cfg.default_service(web::to(handlers::route_not_found));
    }
}

/// Binds the vault's HTTP server to `listener` with `workers` worker
/// threads, serving HTTPS when given a rustls configuration (which may
/// require client certificates). The returned server handles SIGINT/SIGTERM
/// with a graceful shutdown (in-flight requests finish, up to 30 s).
pub fn server(
    state: ApiState,
    listener: TcpListener,
    workers: usize,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        App::new()
            .wrap(middleware::from_fn(request::request_id_and_logging))
            .configure(configure(state.clone()))
    })
    .workers(workers.max(1))
    .shutdown_timeout(30)
    // Slow clients get a bounded time to send their headers.
    .client_request_timeout(std::time::Duration::from_secs(10));
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}
