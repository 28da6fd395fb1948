//! What the remote key providers share about an HTTP exchange.

/// The most a key service's answer may hold. Real answers are a few
/// hundred bytes (a wrapped data key, a key's version list); a server that
/// sends more is broken or hostile and is not read to the end.
pub(crate) const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The HTTP client of a remote key provider. Redirects are never
/// followed: reqwest would carry `X-Vault-Token`, the AWS session token
/// and a request body holding a data key to whatever host a `Location`
/// names.
pub(crate) fn client(timeout: std::time::Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("http client: {e}"))
}

/// The longest error text taken from a key service's answer.
const MAX_MESSAGE_BYTES: usize = 300;

/// `message` cut to at most [`MAX_MESSAGE_BYTES`] at a character boundary
/// (the text comes from the server's answer and may be any UTF-8).
pub(crate) fn short_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message.trim_end().to_owned()
}

/// Sends `request` and reads the answer's status and body, giving up as
/// soon as the body passes [`MAX_ANSWER_BYTES`] (a declared
/// `Content-Length` over it is refused before reading). A failure comes
/// back as the reason in words, without the URL: the caller names the
/// server. A redirect is refused (see [`client`]).
pub(crate) async fn exchange(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
    let too_large = || format!("answered with more than {MAX_ANSWER_BYTES} bytes");
    let mut response = request.send().await.map_err(|e| without_url(&e))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(format!(
            "answered {status}, a redirect, which is not followed"
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_messages_are_cut_at_a_character_boundary() {
        for pad in ["", "x", "xx"] {
            let long = format!("{pad}{}", "é€".repeat(200));
            let cut = short_message(long.clone());
            assert!(cut.len() <= MAX_MESSAGE_BYTES, "{}", cut.len());
            assert!(cut.len() > MAX_MESSAGE_BYTES - 4, "{}", cut.len());
            assert!(long.starts_with(&cut));
        }
        assert_eq!(short_message("short  ".to_owned()), "short");
    }
}
