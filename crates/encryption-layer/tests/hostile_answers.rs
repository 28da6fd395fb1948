//! Key services that answer badly: an endless or oversized body is not
//! read to the end (the providers stop at a fixed cap and fail with a
//! clear error), a redirect is not followed (it would carry the token and
//! the data key to another host), and an error text in any UTF-8 is cut
//! short without a panic. The server here is a plain loopback HTTP/1.1
//! server that counts the requests it got and how much of its answer the
//! client took.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use vault_encryption_layer::{
    AwsCredentials, AwsKmsConfig, AwsKmsProvider, DataKey, Error, KeyProvider, TransitConfig,
    TransitProvider,
};
use zeroize::Zeroizing;

/// How much the server offers: far more than any client should take.
const OFFERED: usize = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

#[derive(Clone)]
enum Answer {
    /// `Transfer-Encoding: chunked`, no length given, `{"a":"aaaa…` forever.
    Endless,
    /// A `Content-Length` of this many bytes, which are then sent.
    Declared(usize),
    /// This whole answer, head and body.
    Raw(String),
}

struct Server {
    url: String,
    /// Body bytes the server managed to write before the client hung up.
    written: Arc<AtomicUsize>,
    /// Requests received.
    requests: Arc<AtomicUsize>,
}

fn read_request(stream: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return;
        }
        seen.extend_from_slice(&buf[..n]);
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&seen[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut have = seen.len() - header_end;
    while have < length {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return;
        }
        have += n;
    }
}

fn serve(answer: Answer) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let written = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&written);
    let received = Arc::clone(&requests);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counter = Arc::clone(&counter);
            let received = Arc::clone(&received);
            let answer = answer.clone();
            thread::spawn(move || {
                read_request(&mut stream);
                received.fetch_add(1, Ordering::SeqCst);
                let head = match &answer {
                    Answer::Raw(whole) => {
                        let _ = stream.write_all(whole.as_bytes());
                        return;
                    }
                    Answer::Endless => "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                        transfer-encoding: chunked\r\n\r\n"
                        .to_owned(),
                    Answer::Declared(n) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {n}\r\n\r\n"
                    ),
                };
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let total = match answer {
                    Answer::Endless => OFFERED,
                    Answer::Declared(n) => n,
                    Answer::Raw(_) => 0,
                };
                let mut chunk = vec![b'a'; CHUNK];
                chunk[..6].copy_from_slice(b"{\"a\":\"");
                let mut sent = 0;
                while sent < total {
                    let part = &chunk[..CHUNK.min(total - sent)];
                    let ok = match answer {
                        Answer::Endless => stream
                            .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                            .and_then(|()| stream.write_all(part))
                            .and_then(|()| stream.write_all(b"\r\n")),
                        Answer::Declared(_) | Answer::Raw(_) => stream.write_all(part),
                    };
                    if ok.is_err() {
                        break;
                    }
                    sent += part.len();
                    counter.store(sent, Ordering::SeqCst);
                }
            });
        }
    });
    Server {
        url,
        written,
        requests,
    }
}

fn kms(url: &str) -> AwsKmsProvider {
    AwsKmsProvider::new(AwsKmsConfig {
        endpoint: url.to_owned(),
        region: "us-east-1".into(),
        key_id: "alias/vault".into(),
        previous_key_ids: Vec::new(),
        credentials: AwsCredentials {
            access_key_id: "AKIDTEST".into(),
            secret_access_key: Zeroizing::new("test-secret".into()),
            session_token: None,
        },
        timeout: Duration::from_secs(20),
    })
    .unwrap()
}

fn transit(url: &str) -> TransitConfig {
    TransitConfig {
        address: url.to_owned(),
        mount: "transit".into(),
        key_name: "vault".into(),
        token: Zeroizing::new("s.test-token".into()),
        timeout: Duration::from_secs(20),
    }
}

fn assert_refused_as_too_large(err: Error, server: &Server) {
    let text = err.to_string();
    assert!(matches!(err, Error::Kms(_)), "{text}");
    assert!(text.contains("more than 1048576 bytes"), "{text}");
    assert!(
        text.contains(&server.url),
        "the error names the server: {text}"
    );
    // The client hung up long before the end: at most the cap plus what
    // the socket buffers held when it did.
    let written = server.written.load(Ordering::SeqCst);
    assert!(
        written < OFFERED / 4,
        "read {written} bytes of an endless answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kms_stops_reading_an_endless_answer() {
    let server = serve(Answer::Endless);
    let err = kms(&server.url)
        .wrap(&DataKey::generate().unwrap())
        .await
        .unwrap_err();
    // Give the server's writer a moment to notice the closed socket.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_refused_as_too_large(err, &server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kms_refuses_a_declared_length_over_the_cap() {
    let server = serve(Answer::Declared(8 * 1024 * 1024));
    let err = kms(&server.url)
        .unwrap(&kms(&server.url).active_key_id(), b"wrapped")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("more than 1048576 bytes"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_stops_reading_an_endless_answer() {
    let server = serve(Answer::Endless);
    let err = TransitProvider::connect(transit(&server.url))
        .await
        .expect_err("an endless answer is not a key");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_refused_as_too_large(err, &server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_under_the_cap_are_read_and_judged_on_their_content() {
    // Just under the cap: read whole, then refused as not a key answer
    // rather than as too large.
    let server = serve(Answer::Declared(1024 * 1024 - 1));
    let err = TransitProvider::connect(transit(&server.url))
        .await
        .expect_err("not a key answer");
    let text = err.to_string();
    assert!(text.contains("unexpected body"), "{text}");
    assert_eq!(server.written.load(Ordering::SeqCst), 1024 * 1024 - 1);
}

/// An answer of `status` with a JSON `body`.
fn answer(status: &str, body: &str) -> Answer {
    Answer::Raw(format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// A server that sends every request on to `target` with a 307, which
/// keeps the method and the body.
fn redirecting_to(target: &Server) -> Server {
    serve(Answer::Raw(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: {}/\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n",
        target.url
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_with_the_data_key_or_the_token() {
    let elsewhere = serve(answer("200 OK", "{}"));
    let server = redirecting_to(&elsewhere);
    let err = kms(&server.url)
        .wrap(&DataKey::generate().unwrap())
        .await
        .unwrap_err();
    let refused = |err: Error| {
        let text = err.to_string();
        assert!(
            text.contains("307") && text.contains("not followed"),
            "{text}"
        );
    };
    refused(err);
    refused(
        TransitProvider::connect(transit(&server.url))
            .await
            .expect_err("a redirect is not a key"),
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        elsewhere.requests.load(Ordering::SeqCst),
        0,
        "the other host was asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_text_in_any_utf8_is_cut_short_without_a_panic() {
    // Two- and three-byte characters, shifted by one and two bytes, so
    // that the cut falls inside a character at least once.
    for pad in ["", "x", "xx"] {
        let text = format!("{pad}{}", "é€".repeat(200));
        let kms_body = serde_json::json!({"__type": "KMSInternalException", "message": text});
        let server = serve(answer("400 Bad Request", &kms_body.to_string()));
        let err = kms(&server.url)
            .wrap(&DataKey::generate().unwrap())
            .await
            .unwrap_err();
        let cut_short = |err: Error| {
            let message = err.to_string();
            assert!(
                message.contains("400") && message.contains("é€"),
                "{message}"
            );
            assert!(message.len() < 400, "{}", message.len());
        };
        cut_short(err);

        let transit_body = serde_json::json!({"errors": [text]});
        let server = serve(answer("400 Bad Request", &transit_body.to_string()));
        cut_short(
            TransitProvider::connect(transit(&server.url))
                .await
                .expect_err("an error is not a key"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapped_key_kms_does_not_recognise_is_a_decryption_failure_not_an_outage() {
    for kind in [
        "InvalidCiphertextException",
        "com.amazonaws.kms#IncorrectKeyException",
    ] {
        let body = serde_json::json!({"__type": kind, "message": "no"});
        let server = serve(answer("400 Bad Request", &body.to_string()));
        let provider = kms(&server.url);
        let err = provider
            .unwrap(&provider.active_key_id(), b"changed")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Decrypt), "{kind}: {err}");
    }
    // Anything else stays the service's failure.
    let body = serde_json::json!({"__type": "KMSInternalException", "message": "busy"});
    let server = serve(answer("400 Bad Request", &body.to_string()));
    let provider = kms(&server.url);
    let err = provider
        .unwrap(&provider.active_key_id(), b"changed")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Kms(_)), "{err}");
}
