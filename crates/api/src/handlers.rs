//! Route handlers.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use vault_access_resolver::{AccessRequest, Action, Principal};
use vault_token_manager::{AuditAction, AuditOutcome, RequestContext, StoreBody};
use vault_types::{ErrorKind, SecretAddress};

use crate::dto::{
    AuditEntryBody, AuditPageBody, AuditParams, DeleteBody, DeleteProjectBody, EnvQuery,
    KeyStatusBody, ScopedQuery, SecretInfoBody, TokenBody, TokenQuery,
};
use crate::openapi::ErrorBody;
use crate::request::{credentials, json_body, parse_json, request_id};
use crate::{ApiError, ApiState};

/// An authenticated caller.
struct Caller {
    ctx: RequestContext,
    principal: Principal,
}

fn audit_action(action: Action) -> AuditAction {
    match action {
        Action::Store => AuditAction::Store,
        Action::Read => AuditAction::Read,
        Action::Delete => AuditAction::Delete,
        Action::Admin => AuditAction::Admin,
    }
}

/// Records a refused request in the usage log and returns its error. A
/// failure to record is logged; the request is refused either way.
async fn refuse(
    state: &ApiState,
    ctx: &RequestContext,
    action: Action,
    address: Option<&SecretAddress>,
    err: ApiError,
) -> ApiError {
    let outcome = match err.code() {
        "unauthenticated" | "forbidden" | "engine_mismatch" | "insufficient_scope"
        | "too_many_failures" | "rate_limited" => AuditOutcome::Denied,
        _ => AuditOutcome::Failed,
    };
    if let Err(audit_err) = state
        .inner
        .tokens
        .record_event(ctx, audit_action(action), address, outcome, err.code())
        .await
    {
        tracing::error!(error = %audit_err, request_id = %ctx.request_id, "could not record a refused request");
    }
    err
}

/// Identifies the caller (401 when it cannot be; 429 while its engine id
/// or address is locked out after repeated failures, or while the engine
/// is over its request rate).
async fn authenticate(
    state: &ApiState,
    req: &HttpRequest,
    action: Action,
) -> Result<Caller, ApiError> {
    let request_id = request_id(req);
    let anonymous = RequestContext::new(request_id.clone(), None);
    let creds = credentials(req);
    let limiter = &state.inner.limiter;
    let keys = crate::limits::keys(
        creds.as_ref().map(|c| c.engine_id.as_str()),
        req.peer_addr().map(|a| a.ip()),
    );
    let attempt = match limiter.attempt(keys) {
        Ok(attempt) => attempt,
        Err(wait) => {
            // Not recorded: the lockout itself was, and a locked-out client
            // must not be able to flood the usage log.
            return Err(ApiError::new(
                ErrorKind::RateLimited,
                "too_many_failures",
                "too many failed authentications; retry later",
            )
            .retry_after(wait));
        }
    };
    let result = match &creds {
        Some(creds) => state.inner.access.authenticate(creds).await,
        None => Err(vault_access_resolver::Error::Unauthenticated),
    };
    match result {
        Ok(principal) => {
            attempt.succeed();
            let caller = Caller {
                ctx: RequestContext::new(request_id, Some(principal.engine_id.clone())),
                principal,
            };
            if let Err(throttled) = limiter.admit(&caller.principal.engine_id) {
                let err = ApiError::new(
                    ErrorKind::RateLimited,
                    "rate_limited",
                    "this engine is over its request rate; retry later",
                )
                .retry_after(throttled.wait_secs);
                // Recorded once per run of refusals: an engine over its rate
                // must not cost a database write per refused request.
                if !throttled.first {
                    return Err(err);
                }
                return Err(refuse(state, &caller.ctx, action, None, err).await);
            }
            Ok(caller)
        }
        Err(e) => {
            let unavailable = matches!(e, vault_access_resolver::Error::Unavailable(_));
            // The claimed engine id is not logged: a caller that swapped its
            // headers would put its token there.
            tracing::warn!(request_id = %request_id, "authentication failed");
            let err: ApiError = e.into();
            if unavailable {
                attempt.abandon();
                return Err(refuse(state, &anonymous, action, None, err).await);
            }
            // Counted before the refusal is recorded, so a client that
            // hangs up meanwhile is counted all the same.
            let locked_out = attempt.fail();
            let err = refuse(state, &anonymous, action, None, err).await;
            if locked_out {
                tracing::warn!(request_id = %request_id, "authentication lockout started");
                let locked = ApiError::new(ErrorKind::RateLimited, "too_many_failures", "lockout");
                drop(refuse(state, &anonymous, action, None, locked).await);
            }
            Err(err)
        }
    }
}

/// Checks the caller's grant for `action` on `address`, reads requiring
/// `scopes` (403 when missing; 503 when no decision can be had).
async fn authorize(
    state: &ApiState,
    caller: &Caller,
    action: Action,
    address: &SecretAddress,
    scopes: &[String],
) -> Result<(), ApiError> {
    let request = AccessRequest {
        action,
        address,
        scopes,
    };
    match state
        .inner
        .access
        .authorize(&caller.principal, &request)
        .await
    {
        Ok(()) => Ok(()),
        Err(e) => Err(refuse(state, &caller.ctx, action, Some(address), e.into()).await),
    }
}

fn invalid_query() -> ApiError {
    ApiError::new(
        ErrorKind::InvalidInput,
        "invalid_query",
        "the query string is invalid; see the API documentation for the parameters of this route",
    )
}

/// Builds the address from path segments and an optional environment.
fn path_address(
    state: &ApiState,
    req: &HttpRequest,
    env: Option<&str>,
) -> Result<SecretAddress, ApiError> {
    let project = req.match_info().get("project").unwrap_or("");
    let platform = req.match_info().get("platform").unwrap_or("");
    let env = env.unwrap_or(&state.inner.default_environment);
    Ok(SecretAddress::new(env, project, platform)?)
}

/// `POST /vault/store`.
#[utoipa::path(
    post, path = "/vault/store", tag = "secrets",
    request_body = vault_token_manager::StoreBody,
    responses(
        (status = 201, description = "Stored; metadata only, never a token", body = SecretInfoBody),
        (status = 409, description = "Changed concurrently", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        CommonErrors
    ),
    security(("engine_id" = [], "engine_token" = []))
)]
pub(crate) async fn store(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let action = Action::Store;
    let caller = authenticate(&state, &req, action).await?;
    let parsed = async {
        let bytes = json_body(&req, payload).await?;
        parse_json::<StoreBody>(&bytes)
    }
    .await;
    let body = match parsed {
        Ok(b) => b,
        Err(e) => return Err(refuse(&state, &caller.ctx, action, None, e).await),
    };
    if body
        .engine_id
        .as_deref()
        .is_some_and(|id| id != caller.principal.engine_id)
    {
        let err = ApiError::new(
            ErrorKind::Forbidden,
            "engine_mismatch",
            "engine_id in the body differs from the authenticated engine",
        );
        return Err(refuse(&state, &caller.ctx, action, None, err).await);
    }
    let request = match body.into_request(&state.inner.default_environment) {
        Ok(r) => r,
        Err(e) => return Err(refuse(&state, &caller.ctx, action, None, e.into()).await),
    };
    authorize(&state, &caller, action, &request.address, &[]).await?;
    let info = state.inner.tokens.store(&caller.ctx, request).await?;
    Ok(HttpResponse::Created().json(SecretInfoBody::from(info)))
}

/// The query string as `Q`, or `invalid_query`, recorded as refused.
async fn parse_query<Q: serde::de::DeserializeOwned>(
    state: &ApiState,
    req: &HttpRequest,
    caller: &Caller,
    action: Action,
) -> Result<Q, ApiError> {
    match web::Query::<Q>::from_query(req.query_string()) {
        Ok(q) => Ok(q.into_inner()),
        Err(_) => Err(refuse(state, &caller.ctx, action, None, invalid_query()).await),
    }
}

/// How far an administrative route reaches.
#[derive(Clone, Copy)]
enum AdminReach {
    /// The usage log: what each grant covers is filtered per record, so
    /// `admin` anywhere will do.
    Filtered,
    /// The keys act on the whole vault: `admin` on every address.
    WholeVault,
}

/// The authenticated caller of an administrative route, if it holds the
/// `admin` grant `reach` needs; otherwise the refusal, recorded.
async fn admin_caller(
    state: &ApiState,
    req: &HttpRequest,
    reach: AdminReach,
) -> Result<Caller, ApiError> {
    let action = Action::Admin;
    let caller = authenticate(state, req, action).await?;
    let access = &state.inner.access;
    let allowed = match reach {
        AdminReach::Filtered => access.authorize_admin(&caller.principal).await,
        AdminReach::WholeVault => access.authorize_vault_admin(&caller.principal).await,
    };
    if let Err(e) = allowed {
        return Err(refuse(state, &caller.ctx, action, None, e.into()).await);
    }
    Ok(caller)
}

/// Authenticates, parses the query, builds the address from the path and
/// checks the grant (for the scopes the query requires): the common start
/// of the per-secret routes. Also returns the required scopes, checked.
async fn secret_request<Q: serde::de::DeserializeOwned + Query>(
    state: &ApiState,
    req: &HttpRequest,
    action: Action,
) -> Result<(Caller, Q, SecretAddress, Vec<String>), ApiError> {
    let caller = authenticate(state, req, action).await?;
    let query: Q = parse_query(state, req, &caller, action).await?;
    let address = match path_address(state, req, query.env()) {
        Ok(a) => a,
        Err(e) => return Err(refuse(state, &caller.ctx, action, None, e).await),
    };
    let scopes = match query.scopes() {
        Ok(s) => s,
        Err(e) => return Err(refuse(state, &caller.ctx, action, Some(&address), e).await),
    };
    authorize(state, &caller, action, &address, &scopes).await?;
    Ok((caller, query, address, scopes))
}

/// What the per-secret routes read from their query strings.
pub(crate) trait Query {
    /// `?env=`.
    fn env(&self) -> Option<&str>;
    /// `?scopes=`, split at commas and checked.
    fn scopes(&self) -> Result<Vec<String>, ApiError> {
        Ok(Vec::new())
    }
}

impl Query for EnvQuery {
    fn env(&self) -> Option<&str> {
        self.env.as_deref()
    }
}

impl Query for TokenQuery {
    fn env(&self) -> Option<&str> {
        self.env.as_deref()
    }

    fn scopes(&self) -> Result<Vec<String>, ApiError> {
        scope_query(self.scopes.as_deref())
    }
}

impl Query for ScopedQuery {
    fn env(&self) -> Option<&str> {
        self.env.as_deref()
    }

    fn scopes(&self) -> Result<Vec<String>, ApiError> {
        scope_query(self.scopes.as_deref())
    }
}

/// `?scopes=`, split at commas and checked.
fn scope_query(scopes: Option<&str>) -> Result<Vec<String>, ApiError> {
    vault_token_manager::scope_list(scopes.unwrap_or("")).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidInput,
            "invalid_query",
            format!("scopes: {e}"),
        )
    })
}

/// `GET /vault/token/{project}/{platform}`.
#[utoipa::path(
    get, path = "/vault/token/{project}/{platform}", tag = "secrets",
    params(("project" = String, Path), ("platform" = String, Path), TokenQuery),
    responses(
        (status = 200, description = "A valid access token", body = TokenBody),
        (status = 404, description = "No secret at the address", body = ErrorBody),
        (status = 409, description = "Expired and not refreshable, or re-authorization required", body = ErrorBody),
        CommonErrors
    ),
    security(("engine_id" = [], "engine_token" = []))
)]
pub(crate) async fn fetch(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (caller, query, address, required) =
        secret_request::<TokenQuery>(&state, &req, Action::Read).await?;
    let token = state
        .inner
        .tokens
        .fetch_with(
            &caller.ctx,
            &address,
            &required,
            query.force_refresh.unwrap_or(false),
        )
        .await?;
    Ok(HttpResponse::Ok().json(TokenBody::new(token, &address)))
}

/// `POST /vault/refresh/{project}/{platform}`: refresh now (the engine saw
/// the provider reject its token) and answer the new token.
#[utoipa::path(
    post, path = "/vault/refresh/{project}/{platform}", tag = "secrets",
    params(("project" = String, Path), ("platform" = String, Path), ScopedQuery),
    responses(
        (status = 200, description = "The refreshed token", body = TokenBody),
        (status = 404, description = "No secret at the address", body = ErrorBody),
        (status = 409, description = "Not refreshable, or re-authorization required", body = ErrorBody),
        CommonErrors
    ),
    security(("engine_id" = [], "engine_token" = []))
)]
pub(crate) async fn refresh(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (caller, _, address, required) =
        secret_request::<ScopedQuery>(&state, &req, Action::Read).await?;
    let token = state
        .inner
        .tokens
        .fetch_with(&caller.ctx, &address, &required, true)
        .await?;
    Ok(HttpResponse::Ok().json(TokenBody::new(token, &address)))
}

/// `GET /vault/status/{project}/{platform}`: metadata, never a token.
#[utoipa::path(
    get, path = "/vault/status/{project}/{platform}", tag = "secrets",
    params(("project" = String, Path), ("platform" = String, Path), ScopedQuery),
    responses(
        (status = 200, description = "Status and metadata", body = SecretInfoBody),
        (status = 404, description = "No secret at the address", body = ErrorBody),
        CommonErrors
    ),
    security(("engine_id" = [], "engine_token" = []))
)]
pub(crate) async fn status(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (caller, _, address, _) = secret_request::<ScopedQuery>(&state, &req, Action::Read).await?;
    let info = state.inner.tokens.status(&caller.ctx, &address).await?;
    Ok(HttpResponse::Ok().json(SecretInfoBody::from(info)))
}

/// `DELETE /vault/delete/{project}/{platform}`.
#[utoipa::path(
    delete, path = "/vault/delete/{project}/{platform}", tag = "secrets",
    params(("project" = String, Path), ("platform" = String, Path), EnvQuery),
    responses(
        (status = 200, description = "Revoked where possible, then deleted", body = DeleteBody),
        (status = 404, description = "No secret at the address", body = ErrorBody),
        CommonErrors
    ),
    security(("engine_id" = [], "engine_token" = []))
)]
pub(crate) async fn delete(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (caller, _, address, _) = secret_request::<EnvQuery>(&state, &req, Action::Delete).await?;
    let outcome = state.inner.tokens.delete(&caller.ctx, &address).await?;
    Ok(HttpResponse::Ok().json(DeleteBody::from(outcome)))
}

/// `DELETE /vault/delete/{project}`: every platform and environment of a
/// project that the caller may delete (for the Cleanup Engine). Secrets the
/// caller has no grant for are neither deleted nor mentioned.
#[utoipa::path(
    delete, path = "/vault/delete/{project}", tag = "secrets",
    params(("project" = String, Path)),
    responses(
        (status = 200, description = "Every secret of the project the caller may delete", body = DeleteProjectBody),
        (status = 404, description = "No secret of the project that the caller may delete", body = ErrorBody),
        CommonErrors
    ),
    security(("engine_id" = [], "engine_token" = []))
)]
pub(crate) async fn delete_project(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let action = Action::Delete;
    let caller = authenticate(&state, &req, action).await?;
    let _: EmptyQuery = parse_query(&state, &req, &caller, action).await?;
    let project = req.match_info().get("project").unwrap_or("");
    if let Err(e) = vault_types::validate_identifier("project", project) {
        return Err(refuse(&state, &caller.ctx, action, None, e.into()).await);
    }
    let mut deleted = Vec::new();
    for address in state.inner.tokens.list_project(project).await? {
        let allowed = state
            .inner
            .access
            .authorize(&caller.principal, &AccessRequest::new(action, &address))
            .await;
        match allowed {
            Ok(()) => {}
            Err(vault_access_resolver::Error::Forbidden { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        match state.inner.tokens.delete(&caller.ctx, &address).await {
            Ok(outcome) => deleted.push(DeleteBody::from(outcome)),
            // Deleted concurrently: nothing left to report.
            Err(vault_token_manager::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if deleted.is_empty() {
        let err = ApiError::new(
            ErrorKind::NotFound,
            "not_found",
            format!("no secret of project {project} that this engine may delete"),
        );
        return Err(refuse(&state, &caller.ctx, action, None, err).await);
    }
    Ok(HttpResponse::Ok().json(DeleteProjectBody {
        project: project.to_owned(),
        deleted,
    }))
}

/// `GET /vault/audit`: the usage log, newest first, for engines with an
/// `admin` grant; each sees the records of the addresses its admin grants
/// cover (and records about no address, such as refused logins).
#[utoipa::path(
    get, path = "/vault/audit", tag = "admin",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of usage records, newest first", body = AuditPageBody),
        CommonErrors
    ),
    security(("engine_id" = [], "engine_token" = []))
)]
pub(crate) async fn audit(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let action = Action::Admin;
    let caller = admin_caller(&state, &req, AdminReach::Filtered).await?;
    let params: AuditParams = parse_query(&state, &req, &caller, action).await?;
    let query = match audit_query(params) {
        Ok(q) => q,
        Err(e) => return Err(refuse(&state, &caller.ctx, action, None, e).await),
    };
    let page = state.inner.tokens.query_audit(query).await?;
    let next_cursor = page.next_before;
    let mut records = Vec::with_capacity(page.entries.len());
    for e in page.entries {
        let r = &e.record;
        let visible = match (&r.environment, &r.project, &r.platform) {
            (Some(env), Some(project), Some(platform)) => {
                match SecretAddress::new(env, project, platform) {
                    // A resolver that cannot answer fails the page (503):
                    // hiding the record would hand out a short page whose
                    // cursor skips past it.
                    Ok(address) => match state
                        .inner
                        .access
                        .authorize(&caller.principal, &AccessRequest::new(action, &address))
                        .await
                    {
                        Ok(()) => true,
                        Err(vault_access_resolver::Error::Forbidden { .. }) => false,
                        Err(e) => return Err(e.into()),
                    },
                    Err(_) => false,
                }
            }
            _ => true,
        };
        if visible {
            records.push(AuditEntryBody::from(e));
        }
    }
    state
        .inner
        .tokens
        .record_event(
            &caller.ctx,
            AuditAction::Admin,
            None,
            AuditOutcome::Success,
            "audit_query",
        )
        .await?;
    Ok(HttpResponse::Ok().json(AuditPageBody {
        records,
        next_cursor,
    }))
}

fn audit_query(p: AuditParams) -> Result<vault_token_manager::AuditQuery, ApiError> {
    let bad = |what: &str| {
        ApiError::new(
            ErrorKind::InvalidInput,
            "invalid_query",
            format!("{what} is invalid"),
        )
    };
    let time = |v: Option<String>, what: &str| -> Result<Option<time::OffsetDateTime>, ApiError> {
        v.map(|s| {
            time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| bad(what))
        })
        .transpose()
    };
    for (what, v) in [
        ("project", &p.project),
        ("platform", &p.platform),
        ("environment", &p.environment),
        ("engine", &p.engine),
    ] {
        if let Some(v) = v {
            vault_types::validate_identifier("filter", v).map_err(|_| bad(what))?;
        }
    }
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(bad("limit (1 to 1000)"));
    }
    if p.cursor.is_some_and(|c| c <= 0) {
        return Err(bad("cursor"));
    }
    Ok(vault_token_manager::AuditQuery {
        environment: p.environment,
        project: p.project,
        platform: p.platform.map(|s| s.to_ascii_lowercase()),
        engine_id: p.engine,
        action: p
            .action
            .map(|a| AuditAction::parse(&a).ok_or_else(|| bad("action")))
            .transpose()?,
        since: time(p.since, "since (RFC 3339)")?,
        until: time(p.until, "until (RFC 3339)")?,
        before_seq: p.cursor,
        limit,
        scan: Some(AUDIT_SCAN),
    })
}

/// Most usage records one audit page examines: the log has no index on its
/// filters, so a filter that matches little returns short (even empty)
/// pages with a cursor instead of walking the whole log in one request.
const AUDIT_SCAN: u32 = 100_000;

/// A query that must be empty.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyQuery {}

/// `GET /healthz`: no auth; 503 when storage cannot answer.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "Alive: {\"status\": \"ok\"}", body = Object),
        (status = 503, description = "Storage cannot answer", body = ErrorBody)
    )
)]
pub(crate) async fn health(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    match state.inner.tokens.secret_store().health().await {
        Ok(()) => Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))),
        Err(e) => Err(ApiError::new(
            e.kind(),
            "storage_unavailable",
            format!("health check failed: {e}"),
        )),
    }
}

/// `GET /readyz`: 200 when the vault can serve (database writable, master
/// key usable), else 503 naming the failing checks; no auth.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready: {\"status\": \"ready\", \"checks\": {…}}", body = Object),
        (status = 503, description = "Not ready; each failing check names its error code", body = Object)
    )
)]
pub(crate) async fn ready(state: web::Data<ApiState>) -> HttpResponse {
    let checks = state.inner.tokens.readiness().await;
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, serde_json::Value> = checks
        .iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(()) => "ok".to_owned(),
                Err(e) => {
                    tracing::warn!(check = name, error = %e, "readiness check failed");
                    e.code().to_owned()
                }
            };
            ((*name).to_owned(), serde_json::Value::String(v))
        })
        .collect();
    let json =
        serde_json::json!({ "status": if ok { "ready" } else { "not_ready" }, "checks": body });
    if ok {
        HttpResponse::Ok().json(json)
    } else {
        HttpResponse::ServiceUnavailable().json(json)
    }
}

/// `GET /metrics`: Prometheus text format; no auth (no secrets in it).
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 503, description = "Storage unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn metrics(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let mut out = String::new();
    state.inner.http_requests.render(&mut out);
    state.inner.http_latency.render(&mut out);
    state.inner.tokens.render_metrics(&mut out).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out))
}

/// `GET /openapi.json`: this API's OpenAPI 3.1 document; no auth.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub(crate) async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(crate::openapi::document())
}

/// Any method a route does not support; `allow` is the one it does.
pub(crate) async fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut res = ApiError::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not support that method",
    )
    .error_response();
    res.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static(allow),
    );
    res
}

/// Any path that is not a route.
pub(crate) async fn route_not_found() -> HttpResponse {
    ApiError::with_status(StatusCode::NOT_FOUND, "route_not_found", "no such route")
        .error_response()
}

/// `GET /vault/keys`: the master keys, what each seals and the rewrap
/// backlog (ids and counts only), for engines with an `admin` grant.
#[utoipa::path(
    get, path = "/vault/keys", tag = "admin",
    responses(
        (status = 200, description = "Key status: ids and counts only", body = KeyStatusBody),
        CommonErrors
    ),
    security(("engine_id" = [], "engine_token" = []))
)]
pub(crate) async fn keys_status(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin_caller(&state, &req, AdminReach::WholeVault).await?;
    let status = state.inner.tokens.key_status().await?;
    Ok(HttpResponse::Ok().json(KeyStatusBody::from(status)))
}

/// `POST /vault/keys/rotate`: a new master key version (new values are
/// sealed under it at once; stored ones are rewrapped in the background).
/// `?target=audit` rotates the usage-log key instead.
#[utoipa::path(
    post, path = "/vault/keys/rotate", tag = "admin",
    params(RotateParams),
    responses(
        (status = 200, description = "Rotated: {\"rotated\": \"master\", \"key_id\": …} or {\"rotated\": \"audit\", \"version\": …}", body = Object),
        (status = 409, description = "The key provider cannot rotate (keys in an environment variable, AWS KMS)", body = ErrorBody),
        CommonErrors
    ),
    security(("engine_id" = [], "engine_token" = []))
)]
pub(crate) async fn keys_rotate(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let action = Action::Admin;
    let caller = admin_caller(&state, &req, AdminReach::WholeVault).await?;
    let target = parse_query::<RotateParams>(&state, &req, &caller, action)
        .await?
        .target;
    let tokens = &state.inner.tokens;
    let body = match target.as_deref() {
        None | Some("master") => {
            let key_id = tokens.rotate_master_key(&caller.ctx).await?;
            serde_json::json!({ "rotated": "master", "key_id": key_id })
        }
        Some("audit") => {
            let version = tokens.rotate_audit_key(&caller.ctx).await?;
            serde_json::json!({ "rotated": "audit", "version": version })
        }
        Some(_) => {
            let e = ApiError::new(
                ErrorKind::InvalidInput,
                "invalid_query",
                "target must be `master` or `audit`",
            );
            return Err(refuse(&state, &caller.ctx, action, None, e).await);
        }
    };
    Ok(HttpResponse::Ok().json(body))
}

/// The refusals every `/vault` route can answer (for the OpenAPI document).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum CommonErrors {
    #[response(status = 400, description = "Invalid path, query or body")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "Missing or wrong credentials")]
    Unauthenticated(ErrorBody),
    #[response(status = 403, description = "No grant for this")]
    Forbidden(ErrorBody),
    #[response(status = 429, description = "Locked out or rate limited (Retry-After)")]
    TooMany(ErrorBody),
    #[response(
        status = 503,
        description = "Storage, key, usage log or access resolver unavailable"
    )]
    Unavailable(ErrorBody),
}

/// Query of `POST /vault/keys/rotate`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateParams {
    /// `master` (the default) or `audit`.
    target: Option<String>,
}
