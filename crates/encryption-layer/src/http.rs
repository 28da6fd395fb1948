//! What the remote key providers share about an HTTP exchange.

/// The most a key service's answer may hold. Real answers are a few
/// hundred bytes (a wrapped data key, a key's version list); a server that
/// sends more is broken or hostile and is not read to the end.
pub(crate) const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Sends `request` and reads the answer's status and body, giving up as
/// soon as the body passes [`MAX_ANSWER_BYTES`] (a declared
/// `Content-Length` over it is refused before reading). A failure comes
/// back as the reason in words, without the URL: the caller names the
/// server.
pub(crate) async fn exchange(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
    let too_large = || format!("answered with more than {MAX_ANSWER_BYTES} bytes");
    let mut response = request.send().await.map_err(|e| without_url(&e))?;
    let status = response.status();
    if response
        .content_length()
        .is_some_and(|declared| declared > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| without_url(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// A reqwest error's text without the URL (which is already named).
fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        e.to_string()
    }
}
