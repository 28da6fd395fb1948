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

/// Registers the vault's routes on an actix `App` (for embedding in a
/// larger server, or for tests).
pub fn configure(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .service(
                web::resource("/healthz")
                    .route(web::get().to(handlers::health))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/readyz")
                    .route(web::get().to(handlers::ready))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/metrics")
                    .route(web::get().to(handlers::metrics))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/vault/store")
                    .route(web::post().to(handlers::store))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/vault/token/{project}/{platform}")
                    .route(web::get().to(handlers::fetch))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/vault/refresh/{project}/{platform}")
                    .route(web::post().to(handlers::refresh))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/vault/status/{project}/{platform}")
                    .route(web::get().to(handlers::status))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/vault/delete/{project}/{platform}")
                    .route(web::delete().to(handlers::delete))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/vault/audit")
                    .route(web::get().to(handlers::audit))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/vault/keys")
                    .route(web::get().to(handlers::keys_status))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/vault/keys/rotate")
                    .route(web::post().to(handlers::keys_rotate))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/vault/delete/{project}")
                    .route(web::delete().to(handlers::delete_project))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .default_service(web::to(handlers::route_not_found));
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
