//! The one place where errors become HTTP responses.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use vault_types::ErrorKind;

/// An error as the API answers it: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

/// Every code the API answers is listed in the OpenAPI document; a test
/// build that produces another one fails at once.
fn check_documented(code: &str) {
    debug_assert!(
        crate::openapi::ERROR_CODES
            .iter()
            .any(|(c, _, _)| *c == code),
        "error code {code:?} is not in ERROR_CODES (the OpenAPI document)"
    );
}

/// The status for each error kind.
fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// An error of `kind` with a stable `code` and a message for the caller.
    ///
    /// For internal errors the message is replaced by a generic one and the
    /// given one is logged instead.
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::with_cause(kind, code, message.clone(), message)
    }

    /// Like [`ApiError::new`], with a separate `cause` for the log (the
    /// whole error chain; never a secret) for server-side errors.
    pub fn with_cause(
        kind: ErrorKind,
        code: &'static str,
        message: impl Into<String>,
        cause: impl Into<String>,
    ) -> Self {
        let status = status_of(kind);
        check_documented(code);
        let mut message = message.into();
        if status.is_server_error() {
            tracing::error!(code, cause = %cause.into(), "request failed");
        }
        if kind == ErrorKind::Internal {
            message = "internal error".to_owned();
        }
        Self {
            status,
            code,
            message,
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header (seconds).
    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// An error with an explicit status (for protocol-level errors with no
    /// domain kind: 405, 413, 415).
    pub(crate) fn with_status(status: StatusCode, code: &'static str, message: &str) -> Self {
        check_documented(code);
        Self {
            status,
            code,
            message: message.to_owned(),
            retry_after: None,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

/// Formats an error and its sources into one line for the log. Our error
/// types never carry secrets, so the chain is safe to log.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl From<vault_token_manager::Error> for ApiError {
    fn from(e: vault_token_manager::Error) -> Self {
        // Top-level messages are written for callers; sources are for the log.
        let err = Self::with_cause(e.kind(), e.code(), e.to_string(), chain(&e));
        match e {
            vault_token_manager::Error::RefreshRateLimited {
                retry_after_secs, ..
            } => err.retry_after(retry_after_secs),
            _ => err,
        }
    }
}

impl From<vault_access_resolver::Error> for ApiError {
    fn from(e: vault_access_resolver::Error) -> Self {
        use vault_access_resolver::Error as E;
        let code = match &e {
            E::Unauthenticated => "unauthenticated",
            E::Forbidden { .. } => "forbidden",
            E::Unavailable(_) => "access_resolver_unavailable",
            E::InvalidConfig(_) => "internal",
        };
        Self::with_cause(e.kind(), code, e.to_string(), chain(&e))
    }
}

impl From<vault_types::IdentifierError> for ApiError {
    fn from(e: vault_types::IdentifierError) -> Self {
        Self::new(ErrorKind::InvalidInput, "invalid_identifier", e.to_string())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let Some(seconds) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        res.json(Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
    }
}
