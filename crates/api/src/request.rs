//! Per-request plumbing: request ids, logging, credentials, bodies.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, web};
use ring::rand::{SecureRandom, SystemRandom};
use vault_access_resolver::EngineCredentials;
use vault_types::Secret;

use crate::{ApiError, MAX_BODY_BYTES};

/// The id of the current request, kept in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_ENGINE_ID: &str = "x-engine-id";

fn new_request_id() -> String {
    let mut bytes = [0u8; 12];
    // The id is for correlation, not security; a failing RNG (which would
    // also stop all sealing) leaves it all zeros rather than failing here.
    let _ = SystemRandom::new().fill(&mut bytes);
    hex::encode(bytes)
}

/// Middleware: gives every request an id (echoed in `X-Request-Id`), marks
/// every response `Cache-Control: no-store`, and logs one line per request
/// (method, path, status, duration; never headers or bodies).
pub(crate) async fn request_id_and_logging(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = new_request_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.path().to_owned();
    let started = Instant::now();
    let state = req.app_data::<web::Data<crate::ApiState>>().cloned();
    let mut res = next.call(req).await?;
    if let Some(state) = state {
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let status = res.status().as_u16().to_string();
        state.inner.http_requests.inc(&[
            ("route", route.as_str()),
            ("method", method_label(&method)),
            ("status", status.as_str()),
        ]);
        state
            .inner
            .http_latency
            .observe(&[("route", route.as_str())], started.elapsed());
    }
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(X_REQUEST_ID, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    tracing::debug!(
        request_id = %id,
        method = %method,
        path = %path,
        status = res.status().as_u16(),
        duration_us = started.elapsed().as_micros() as u64,
        "request"
    );
    Ok(res)
}

/// The method as a metrics label: one of the standard methods, or `OTHER`
/// (any token is a method to HTTP, and a label per distinct one would let
/// anybody grow the metrics without bound).
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The request id given by the middleware (a fresh one if it did not run).
pub(crate) fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(new_request_id)
}

/// The engine credentials in the headers, or `None` when they are missing
/// or malformed (which is answered as 401 without saying which part).
pub(crate) fn credentials(req: &HttpRequest) -> Option<EngineCredentials> {
    let engine_id = req.headers().get(X_ENGINE_ID)?.to_str().ok()?.trim();
    let auth = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    if engine_id.is_empty() || token.is_empty() {
        return None;
    }
    Some(EngineCredentials {
        engine_id: engine_id.to_owned(),
        token: Secret::from(token),
    })
}

/// Reads a JSON request body of at most [`MAX_BODY_BYTES`].
pub(crate) async fn json_body(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    let too_large = || {
        ApiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body exceeds 65536 bytes",
        )
    };
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::with_status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "request body must be application/json",
            ));
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match payload.to_bytes_limited(MAX_BODY_BYTES).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::with_status(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body could not be read",
        )),
        Err(_) => Err(too_large()),
    }
}

/// Parses JSON into `T`, with an error message that names what is wrong
/// without echoing the caller's values (which may be tokens).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = vault_token_manager::describe_json_error(&e);
        ApiError::new(
            vault_types::ErrorKind::InvalidInput,
            "invalid_json",
            format!(
                "invalid body: {what} (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })
}
