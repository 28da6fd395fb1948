//! What the remote key providers share about reading an HTTP answer.

/// The most a key service's answer may hold. Real answers are a few
/// hundred bytes (a wrapped data key, a key's version list); a server that
/// sends more is broken or hostile and is not read to the end.
pub(crate) const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Why an answer could not be read.
pub(crate) enum ReadError {
    /// The connection failed or timed out mid-body.
    Transport(reqwest::Error),
    /// The body grew past [`MAX_ANSWER_BYTES`].
    TooLarge,
}

/// Reads `response`'s body, giving up as soon as it passes `limit` bytes
/// (a declared `Content-Length` over the limit is refused before reading).
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|declared| declared > limit as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl ReadError {
    /// The reason in words, for an error that already names the server.
    pub(crate) fn describe(&self) -> String {
        match self {
            ReadError::Transport(e) => without_url(e),
            ReadError::TooLarge => format!("answered with more than {MAX_ANSWER_BYTES} bytes"),
        }
    }
}

/// A reqwest error's text without the URL (which is already named).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        e.to_string()
    }
}
