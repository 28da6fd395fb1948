//! The OpenAPI 3.1 document, generated from the handlers and bodies.
//!
//! Paths come from each handler's `#[utoipa::path]`, schemas from the body
//! types themselves; the error codes and security schemes are added here.
//! Tests check that the document describes exactly the routes the server
//! registers and that `docs/openapi.json` is the current document.

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::dto::{
    AuditEntryBody, AuditPageBody, DeleteBody, DeleteProjectBody, KeyStatusBody, RevocationBody,
    SecretInfoBody, TokenBody,
};

/// Every error code the API answers, with its status and meaning.
pub const ERROR_CODES: &[(&str, u16, &str)] = &[
    (
        "invalid_json",
        400,
        "the body is not valid JSON or not the expected shape",
    ),
    (
        "invalid_identifier",
        400,
        "an environment, project or platform is not 1–128 of [A-Za-z0-9._:-]",
    ),
    (
        "invalid_request",
        400,
        "the request is well formed but invalid (the message says how)",
    ),
    ("invalid_query", 400, "unknown or invalid query parameters"),
    (
        "unauthenticated",
        401,
        "missing, unknown or wrong credentials (never says which)",
    ),
    ("forbidden", 403, "the engine has no grant for this"),
    (
        "engine_mismatch",
        403,
        "the body's engine_id is not the authenticated engine",
    ),
    (
        "insufficient_scope",
        403,
        "the stored token lacks a required scope",
    ),
    ("not_found", 404, "no secret at the address"),
    ("route_not_found", 404, "no such route"),
    (
        "method_not_allowed",
        405,
        "the route does not support the method",
    ),
    (
        "token_expired",
        409,
        "the token expired and cannot be refreshed",
    ),
    (
        "reauth_required",
        409,
        "the provider rejected the grant: the user must reconnect",
    ),
    (
        "not_refreshable",
        409,
        "no refresh token or no provider configured",
    ),
    ("conflict", 409, "changed concurrently; retry"),
    (
        "unsupported",
        409,
        "the key provider cannot do this (e.g. rotate keys held in the environment)",
    ),
    ("payload_too_large", 413, "body over 64 KiB"),
    (
        "unsupported_media_type",
        415,
        "the body is not application/json",
    ),
    (
        "refresh_rate_limited",
        429,
        "a forced refresh came too soon (Retry-After)",
    ),
    (
        "too_many_failures",
        429,
        "locked out after repeated failed logins (Retry-After)",
    ),
    (
        "rate_limited",
        429,
        "the engine's request rate is exceeded (Retry-After)",
    ),
    (
        "internal",
        500,
        "a bug or unexpected state; details are in the server log only",
    ),
    (
        "decryption_failed",
        500,
        "a stored value does not open (tampered or corrupt)",
    ),
    (
        "refresh_failed",
        503,
        "the token needed a refresh and the provider failed; retry",
    ),
    (
        "storage_unavailable",
        503,
        "the database cannot answer; retry",
    ),
    (
        "key_unavailable",
        503,
        "the master key or KMS is unavailable; retry",
    ),
    (
        "audit_unavailable",
        503,
        "the usage record could not be written, so nothing was served",
    ),
    (
        "access_resolver_unavailable",
        503,
        "no access decision could be had (fail closed)",
    ),
];

/// Every error: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// A stable code (see the list in the document's description).
    code: String,
    /// A message for people; never a token.
    message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vault Engine",
        description = "Stores third-party credentials encrypted at rest and hands valid tokens to the engines allowed to have them. Every /vault route takes `X-Engine-Id` and `Authorization: Bearer <engine token>`. Every response carries `X-Request-Id` and `Cache-Control: no-store`."
    ),
    paths(
        crate::handlers::store,
        crate::handlers::fetch,
        crate::handlers::refresh,
        crate::handlers::status,
        crate::handlers::delete,
        crate::handlers::delete_project,
        crate::handlers::audit,
        crate::handlers::keys_status,
        crate::handlers::keys_rotate,
        crate::handlers::health,
        crate::handlers::ready,
        crate::handlers::metrics,
        crate::handlers::openapi,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        SecretInfoBody,
        TokenBody,
        DeleteBody,
        RevocationBody,
        DeleteProjectBody,
        AuditEntryBody,
        AuditPageBody,
        KeyStatusBody,
        vault_token_manager::StoreBody,
        vault_token_manager::TokenData,
    ))
)]
struct ApiDoc;

/// The OpenAPI document as JSON: the generated paths and schemas, plus the
/// security schemes and every error code.
pub(crate) fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    doc["paths"]["/vault/store"]["post"]["responses"]["201"]["links"] = store_links();
    constrain(&mut doc);
    doc["components"]["securitySchemes"] = serde_json::json!({
        "engine_id": {
            "type": "apiKey", "in": "header", "name": "X-Engine-Id",
            "description": "The calling engine's id"
        },
        "engine_token": {
            "type": "http", "scheme": "bearer",
            "description": "The engine's token"
        }
    });
    let codes: Vec<&str> = ERROR_CODES.iter().map(|(c, _, _)| *c).collect();
    doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"] =
        serde_json::json!(codes);
    let table: String = ERROR_CODES
        .iter()
        .map(|(c, status, what)| format!("\n| `{c}` | {status} | {what} |"))
        .collect();
    doc["components"]["schemas"]["ErrorDetail"]["description"] = serde_json::Value::String(
        format!("The error.\n\n| code | status | meaning |\n|---|---|---|{table}"),
    );
    doc
}

/// Characters of one scope: RFC 6749 §3.3 without the comma.
const SCOPE_CHARS: &str = r"\x21\x23-\x2b\x2d-\x5b\x5d-\x7e";

/// Writes the rules the handlers enforce into the document, so that a
/// request generated from it is accepted exactly when the server accepts
/// it (the schemathesis suite holds the two to that).
fn constrain(doc: &mut serde_json::Value) {
    use serde_json::{Value, json};
    use vault_token_manager::limits;
    let identifier = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": vault_types::MAX_IDENTIFIER_LEN,
        "pattern": "^[A-Za-z0-9._:-]+$",
    });
    let nullable = |schema: &Value| {
        let mut s = schema.clone();
        s["type"] = json!(["string", "null"]);
        s
    };
    let scope = format!("[{SCOPE_CHARS}]{{1,{}}}", limits::MAX_SCOPE_BYTES);
    let keep_description = |target: &mut Value, schema: Value| {
        let description = target.get("description").cloned();
        *target = schema;
        if let Some(d) = description {
            target["description"] = d;
        }
    };
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                    continue;
                };
                for p in params {
                    let name = p["name"].as_str().unwrap_or_default().to_owned();
                    let schema = match name.as_str() {
                        "project" | "platform" | "env" | "environment" | "engine" => {
                            identifier.clone()
                        }
                        "scopes" => json!({
                            "type": "string",
                            "pattern": format!(
                                "^({scope}(,{scope}){{0,{}}})?$",
                                limits::MAX_SCOPES - 1
                            ),
                        }),
                        "action" => json!({
                            "type": "string",
                            "enum": ["store", "read", "delete", "refresh", "revoke", "status", "admin"],
                        }),
                        "since" | "until" => json!({"type": "string", "format": "date-time"}),
                        "limit" => json!({"type": "integer", "minimum": 1, "maximum": 1000}),
                        "cursor" => json!({"type": "integer", "format": "int64", "minimum": 1}),
                        "target" => json!({"type": "string", "enum": ["master", "audit"]}),
                        _ => continue,
                    };
                    keep_description(&mut p["schema"], schema);
                }
            }
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    let store = &mut schemas["StoreBody"]["properties"];
    keep_description(&mut store["project_id"], identifier.clone());
    keep_description(&mut store["platform"], identifier.clone());
    keep_description(&mut store["environment"], nullable(&identifier));
    keep_description(&mut store["engine_id"], nullable(&identifier));
    let token = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": limits::MAX_TOKEN_BYTES,
        "pattern": "^[\\x20-\\x7e]+$",
    });
    let data = &mut schemas["TokenData"]["properties"];
    keep_description(&mut data["access_token"], token.clone());
    keep_description(&mut data["refresh_token"], nullable(&token));
    data["expires_in"]["maximum"] = json!(limits::MAX_EXPIRES_IN);
    data["scopes"]["maxItems"] = json!(limits::MAX_SCOPES);
    data["scopes"]["items"] = json!({"type": "string", "pattern": format!("^{scope}$")});
    keep_description(
        &mut data["token_type"],
        json!({
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": limits::MAX_TOKEN_TYPE_BYTES,
            "pattern": "^[A-Za-z0-9._-]+$",
        }),
    );
}

/// OpenAPI links from a stored secret to the operations on it, so that
/// clients and stateful testers can follow a store with a read, a status,
/// a refresh and a delete of the same address.
fn store_links() -> serde_json::Value {
    let address = serde_json::json!({
        "path.project": "$response.body#/project",
        "path.platform": "$response.body#/platform",
        "query.env": "$response.body#/environment",
    });
    let link = |operation: &str, description: &str| {
        serde_json::json!({
            "operationId": operation,
            "parameters": address,
            "description": description,
        })
    };
    serde_json::json!({
        "FetchToken": link("fetch", "Read the token just stored"),
        "Status": link("status", "The stored secret's status"),
        "Refresh": link("refresh", "Refresh the token just stored"),
        "Delete": link("delete", "Delete (and revoke) the secret just stored"),
        "DeleteProject": {
            "operationId": "delete_project",
            "parameters": { "path.project": "$response.body#/project" },
            "description": "Delete every secret of the project",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a store body with this `token_data` passes the server's
    /// checks.
    fn stored(token_data: serde_json::Value) -> bool {
        let body =
            serde_json::json!({"project_id": "p", "platform": "x", "token_data": token_data});
        serde_json::from_value::<vault_token_manager::StoreBody>(body)
            .ok()
            .and_then(|b| b.into_request("production").ok())
            .is_some_and(|r| r.check().is_ok())
    }

    /// The character rules the document states as patterns are the ones
    /// the server checks with code: every ASCII character, and two beyond,
    /// is accepted by both or by neither.
    #[test]
    fn the_documented_character_rules_are_the_checks() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let pattern = |schema: &serde_json::Value| {
            regex_lite::Regex::new(schema["pattern"].as_str().expect("a pattern"))
                .expect("a valid pattern")
        };
        let identifier = pattern(&schemas["StoreBody"]["properties"]["project_id"]);
        let scope = pattern(&schemas["TokenData"]["properties"]["scopes"]["items"]);
        let token = pattern(&schemas["TokenData"]["properties"]["access_token"]);
        let token_type = pattern(&schemas["TokenData"]["properties"]["token_type"]);
        for c in (0u8..=0x7f).map(char::from).chain(['é', '€']) {
            let s = c.to_string();
            assert_eq!(
                identifier.is_match(&s),
                vault_types::validate_identifier("x", &s).is_ok(),
                "identifier {c:?}"
            );
            assert_eq!(
                scope.is_match(&s),
                vault_token_manager::scope_list(&s).is_ok(),
                "scope {c:?}"
            );
            assert_eq!(
                token.is_match(&s),
                stored(serde_json::json!({"access_token": s})),
                "access token {c:?}"
            );
            assert_eq!(
                token_type.is_match(&s),
                stored(serde_json::json!({"access_token": "t", "token_type": s})),
                "token type {c:?}"
            );
        }
    }

    fn documented_routes(doc: &serde_json::Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_document_describes_exactly_the_registered_routes() {
        let mut registered: Vec<(String, String)> = crate::route_table()
            .into_iter()
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        registered.sort();
        assert_eq!(
            documented_routes(&document()),
            registered,
            "a route was added or changed without its #[utoipa::path] (or the other way round)"
        );
    }

    #[test]
    fn store_links_name_real_operations_and_parameters() {
        let doc = document();
        let mut operations = std::collections::HashMap::new();
        for item in doc["paths"].as_object().expect("paths").values() {
            for op in item.as_object().expect("path item").values() {
                let params: Vec<String> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                format!(
                                    "{}.{}",
                                    p["in"].as_str().unwrap_or(""),
                                    p["name"].as_str().unwrap_or("")
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                operations.insert(op["operationId"].as_str().unwrap_or("").to_owned(), params);
            }
        }
        let links = doc["paths"]["/vault/store"]["post"]["responses"]["201"]["links"]
            .as_object()
            .expect("links");
        let body = &doc["components"]["schemas"]["SecretInfoBody"]["properties"];
        assert_eq!(links.len(), 5);
        for (name, link) in links {
            let params = &operations[link["operationId"].as_str().expect("operationId")];
            for (param, source) in link["parameters"].as_object().expect("parameters") {
                assert!(params.contains(param), "{name}: no parameter {param}");
                let field = source
                    .as_str()
                    .and_then(|s| s.strip_prefix("$response.body#/"))
                    .expect("a body field");
                assert!(body.get(field).is_some(), "{name}: no field {field}");
            }
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_error_code() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().unwrap_or("").starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let codes = doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
            .as_array()
            .expect("code enum")
            .len();
        assert_eq!(codes, ERROR_CODES.len());
        // The store body comes from the type the handler parses.
        let store = &doc["components"]["schemas"]["StoreBody"]["properties"];
        for field in [
            "project_id",
            "platform",
            "token_data",
            "environment",
            "metadata",
        ] {
            assert!(store.get(field).is_some(), "StoreBody lacks {field}");
        }
    }

    #[test]
    fn every_token_manager_error_code_is_documented() {
        use vault_encryption_layer::Error as K;
        use vault_secret_store::Error as S;
        use vault_token_manager::Error as E;
        let p = || "slack".to_owned();
        let errors = [
            E::InvalidInput("x".into()),
            E::NotFound("x".into()),
            E::InsufficientScope { missing: vec![] },
            E::TokenExpired { platform: p() },
            E::ReauthRequired { platform: p() },
            E::RefreshFailed {
                platform: p(),
                kind: "timeout".into(),
            },
            E::RefreshRateLimited {
                platform: p(),
                retry_after_secs: 1,
            },
            E::NotRefreshable { platform: p() },
            E::Conflict,
            E::AuditUnavailable(S::Invalid("x")),
            E::Store(S::Conflict {
                expected: None,
                found: None,
            }),
            E::Store(S::Invalid("x")),
            E::Store(S::Corrupt("x".into())),
            E::Crypto(K::UnknownKey { key_id: "k".into() }),
            E::Crypto(K::Decrypt),
            E::Crypto(K::Kms("down".into())),
            E::Crypto(K::Unsupported("no".into())),
            E::Crypto(K::Malformed("bad")),
        ];
        for e in errors {
            let code = e.code();
            assert!(
                ERROR_CODES.iter().any(|(c, _, _)| *c == code),
                "{code} (from {e:?}) is not documented"
            );
        }
    }

    /// `docs/openapi.json` is the current document: a change to a route or
    /// a body without regenerating it (`VAULT_UPDATE_OPENAPI=1 cargo test
    /// -p vault-api`) fails here, so the change shows in review.
    #[test]
    fn docs_openapi_json_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let current = format!(
            "{}\n",
            serde_json::to_string_pretty(&document()).expect("serialize")
        );
        if std::env::var_os("VAULT_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &current).expect("write docs/openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/openapi.json is out of date: run VAULT_UPDATE_OPENAPI=1 cargo test -p vault-api"
        );
    }
}
