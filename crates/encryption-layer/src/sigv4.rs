//! AWS Signature Version 4, enough to sign the JSON requests AWS KMS takes.

use std::fmt;

use ring::{digest, hmac};
use time::OffsetDateTime;
use time::macros::format_description;
use zeroize::Zeroizing;

/// AWS credentials. The secret key and session token never print.
#[derive(Clone)]
pub struct AwsCredentials {
    /// The access key id (`AKIA…`); not a secret.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Zeroizing<String>,
    /// The session token of temporary credentials, if any.
    pub session_token: Option<Zeroizing<String>>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// A request to sign: everything that goes into the canonical request.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    /// `host` or `host:port`, as sent in the `Host` header.
    pub(crate) host: &'a str,
    /// The absolute path, already URI-encoded.
    pub(crate) path: &'a str,
    /// Query parameters, not yet encoded.
    pub(crate) query: &'a [(&'a str, &'a str)],
    /// Headers to sign besides `host`, `x-amz-date` and the session token.
    pub(crate) headers: &'a [(&'a str, &'a str)],
    pub(crate) body: &'a [u8],
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// RFC 3986 encoding of everything but the unreserved characters.
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The headers to add to `req` (`x-amz-date`, the session token if any,
/// `authorization`), signed for `region` and `service` at `now`.
pub(crate) fn sign(
    req: &Request<'_>,
    creds: &AwsCredentials,
    region: &str,
    service: &str,
    now: OffsetDateTime,
) -> Vec<(&'static str, String)> {
    let now = now.to_offset(time::UtcOffset::UTC);
    let amz_date = now
        .format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let date = &amz_date[..8.min(amz_date.len())];

    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    headers.push(("host".into(), req.host.to_owned()));
    headers.push(("x-amz-date".into(), amz_date.clone()));
    if let Some(token) = &creds.session_token {
        headers.push(("x-amz-security-token".into(), token.to_string()));
    }
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");

    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");

    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        canonical_query,
        canonical_headers,
        signed_headers,
        sha256_hex(req.body)
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );

    let secret = Zeroizing::new(format!("AWS4{}", creds.secret_access_key.as_str()));
    let k_date = hmac_sha256(secret.as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(k_date.as_ref(), region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), service.as_bytes());
    let k_signing = hmac_sha256(k_service.as_ref(), b"aws4_request");
    let signature = hex(hmac_sha256(k_signing.as_ref(), string_to_sign.as_bytes()).as_ref());

    let mut out = vec![("x-amz-date", amz_date)];
    if let Some(token) = &creds.session_token {
        out.push(("x-amz-security-token", token.to_string()));
    }
    out.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn example_creds(token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: token.map(|t| Zeroizing::new(t.to_owned())),
        }
    }

    fn authorization<'a>(headers: &'a [(&'static str, String)]) -> &'a str {
        &headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .expect("authorization header")
            .1
    }

    /// The worked example of AWS's Signature Version 4 documentation
    /// (IAM `ListUsers`, 2015-08-30T12:36:00Z).
    #[test]
    fn matches_the_documented_iam_example() {
        let req = Request {
            method: "GET",
            host: "iam.amazonaws.com",
            path: "/",
            query: &[("Version", "2010-05-08"), ("Action", "ListUsers")],
            headers: &[(
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            body: b"",
        };
        let headers = sign(
            &req,
            &example_creds(None),
            "us-east-1",
            "iam",
            datetime!(2015-08-30 12:36:00 UTC),
        );
        assert_eq!(
            authorization(&headers),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    /// A KMS request with a session token, checked against botocore's
    /// signer (an independent implementation) for the same inputs.
    #[test]
    fn matches_botocore_for_a_kms_request_with_a_session_token() {
        let req = Request {
            method: "POST",
            host: "127.0.0.1:4566",
            path: "/",
            query: &[],
            headers: &[
                ("Content-Type", "application/x-amz-json-1.1"),
                ("X-Amz-Target", "TrentService.Encrypt"),
            ],
            body: br#"{"KeyId":"alias/vault","Plaintext":"AAAA"}"#,
        };
        let headers = sign(
            &req,
            &example_creds(Some("session-token-example")),
            "eu-west-1",
            "kms",
            datetime!(2026-11-29 12:00:00 UTC),
        );
        assert_eq!(
            authorization(&headers),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261129/eu-west-1/kms/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
             Signature=c403fda4e3992a0784e0dde4a18690e55d781828f9d751a3e325159819a1536c"
        );
        assert!(headers.contains(&("x-amz-date", "20261129T120000Z".into())));
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let dbg = format!("{:?}", example_creds(Some("tok-secret")));
        assert!(dbg.contains("AKIDEXAMPLE"));
        assert!(!dbg.contains("EXAMPLEKEY"));
        assert!(!dbg.contains("tok-secret"));
    }
}
