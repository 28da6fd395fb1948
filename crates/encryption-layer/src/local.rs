//! Master keys held locally: a key file (a key ring that can rotate) or an
//! environment variable.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::provider::{DATA_KEY_LEN, DataKey, KeyProvider, WrappedKey};
use crate::{Error, Result};

const KEY_LEN: usize = 32;
const WRAP_AAD_PREFIX: &[u8] = b"vault-data-key-v1\0";

/// One 256-bit master key version.
///
/// The raw key bytes are zeroized as soon as the key schedule is built;
/// `ring` keeps its expanded schedule for the key's lifetime and does not
/// expose a way to zeroize it.
struct LocalKey {
    id: String,
    aead: LessSafeKey,
    derivation: hmac::Key,
}

impl LocalKey {
    fn new(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEY_LEN {
            return Err(Error::InvalidKey(format!(
                "master key must be {KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        let id_key = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let tag = hmac::sign(&id_key, b"vault-engine master key id v1");
        let id = format!("local-{}", hex(&tag.as_ref()[..8]));
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| Error::InvalidKey("bad key".into()))?;
        Ok(Self {
            id,
            aead: LessSafeKey::new(unbound),
            derivation: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    fn wrap_aad(&self) -> Vec<u8> {
        let mut aad = WRAP_AAD_PREFIX.to_vec();
        aad.extend_from_slice(self.id.as_bytes());
        aad
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The versions a local provider holds; the last one is active.
struct Ring {
    keys: Vec<LocalKey>,
    /// Bumped on every replacement, so that a reload that read the file
    /// before a rotation in this process cannot put the older ring back.
    generation: u64,
}

impl Ring {
    fn active(&self) -> &LocalKey {
        // Never empty: every constructor checks.
        &self.keys[self.keys.len() - 1]
    }

    fn find(&self, key_id: &str) -> Option<&LocalKey> {
        self.keys.iter().find(|k| {
            k.id.len() == key_id.len() && bool::from(k.id.as_bytes().ct_eq(key_id.as_bytes()))
        })
    }
}

/// Where the keys came from, which decides what rotation can do.
#[derive(Debug, Clone)]
enum Source {
    /// A key file that the provider may rewrite (rotation, retirement).
    File(PathBuf),
    /// An environment variable: read-only.
    Env(String),
    /// Keys given in memory (tests, examples): rotation stays in memory.
    Memory,
}

/// Master keys held in this process: a key ring of one or more 256-bit
/// versions from a key file, an environment variable or memory.
///
/// A key's id is derived from the key itself (`local-` and 16 hex digits of
/// an HMAC of a fixed label), so a different key under the same file name
/// is reported as a missing key id instead of as corrupt data.
///
/// A key file holds one base64 key per line (blank lines and `#` comments
/// ignored); the **last** key is the active one, the others stay usable for
/// unwrapping until retired. An environment variable holds the same list
/// separated by commas or white space. [`KeyProvider::rotate`] appends a
/// fresh key to the file (write to a temporary file, fsync, rename, under
/// an exclusive lock); [`KeyProvider::reload`] picks up a rotation another
/// process made.
///
/// Wrapped data key layout: `nonce(12) || AES-256-GCM(master, data key) ||
/// tag(16)`, with associated data `"vault-data-key-v1\0" || key id`.
pub struct LocalKeyProvider {
    ring: RwLock<Ring>,
    source: Source,
    rng: SystemRandom,
    retire_grace: std::time::Duration,
}

impl fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyProvider")
            .field("key_ids", &self.key_ids())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Parses a list of base64 keys (one per line or separated by commas or
/// white space; `#` starts a comment line). `source` names where they came
/// from, for error messages.
fn parse_keys(source: &str, text: &str) -> Result<Vec<LocalKey>> {
    let mut keys: Vec<LocalKey> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        for encoded in line.split(|c: char| c == ',' || c.is_whitespace()) {
            if encoded.is_empty() {
                continue;
            }
            let bytes = Zeroizing::new(BASE64.decode(encoded).map_err(|_| {
                Error::InvalidKey(format!("{source} line {}: not valid base64", n + 1))
            })?);
            let key = LocalKey::new(&bytes).map_err(|e| match e {
                Error::InvalidKey(msg) => {
                    Error::InvalidKey(format!("{source} line {}: {msg}", n + 1))
                }
                other => other,
            })?;
            if keys.iter().any(|k| k.id == key.id) {
                return Err(Error::InvalidKey(format!(
                    "{source}: key {} is listed twice",
                    key.id
                )));
            }
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(Error::InvalidKey(format!("{source} is empty")));
    }
    Ok(keys)
}

fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| Error::Random)?;
    Ok(bytes)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Replaces `path` with `contents` atomically: a 0600 temporary file in
/// the same directory, fsynced, renamed over it, and the directory fsynced.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    file.write_all(contents).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_error(path))?;
    sync_parent(path)
}

/// Syncs the directory holding `path`, so that a file created or renamed
/// there survives a crash along with its contents.
fn sync_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))?;
    }
    Ok(())
}

/// Holds an exclusive lock on `<key file>.lock` while alive, so that two
/// processes rotating at once cannot lose each other's key.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> Result<Self> {
        let lock_path = path.with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        file.lock().map_err(io_error(&lock_path))?;
        Ok(Self(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl LocalKeyProvider {
    fn with_keys(keys: Vec<LocalKey>, source: Source) -> Self {
        Self {
            ring: RwLock::new(Ring {
                keys,
                generation: 0,
            }),
            source,
            rng: SystemRandom::new(),
            retire_grace: std::time::Duration::ZERO,
        }
    }

    /// Refuses [`KeyProvider::retire`] until the key file has been left
    /// unchanged for `grace` (default: no wait).
    ///
    /// Other processes sharing the file (servers, the command-line tool)
    /// see a rotation only at their next [`KeyProvider::reload`]; until
    /// then they still seal new values under the key the rotation
    /// replaced. A retirement in that window would pass the "nothing is
    /// sealed under it" check and then lose what they seal. Set `grace`
    /// above the longest reload interval of any process using the file,
    /// plus the time a write takes to commit.
    pub fn with_retire_grace(mut self, grace: std::time::Duration) -> Self {
        self.retire_grace = grace;
        self
    }

    /// Refuses while the key file changed less than the grace ago (a clock
    /// gone backwards, or a modification time in the future, counts as
    /// just now).
    fn check_settled(&self, path: &Path, key_id: &str) -> Result<()> {
        if self.retire_grace.is_zero() {
            return Ok(());
        }
        let changed = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(io_error(path))?;
        let age = std::time::SystemTime::now()
            .duration_since(changed)
            .unwrap_or_default();
        if age < self.retire_grace {
            return Err(Error::Unsupported(format!(
                "the key file changed {} s ago; processes that have not reloaded it may still \
                 seal new values under {key_id}: retire it once the file has been unchanged for \
                 {} s (then anything they sealed shows up as still in use)",
                age.as_secs(),
                self.retire_grace.as_secs()
            )));
        }
        Ok(())
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        // A poisoned lock only means another thread panicked while holding
        // it; the ring itself is always consistent (replaced whole).
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    fn replace_ring(&self, keys: Vec<LocalKey>) {
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        ring.keys = keys;
        ring.generation += 1;
    }

    /// Replaces the ring only if nothing replaced it since `generation`.
    fn replace_ring_if(&self, keys: Vec<LocalKey>, generation: u64) -> bool {
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        if ring.generation != generation {
            return false;
        }
        ring.keys = keys;
        ring.generation += 1;
        true
    }

    /// A provider for the given raw key bytes (one version).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self::with_keys(vec![LocalKey::new(bytes)?], Source::Memory))
    }

    /// A provider for base64-encoded 32-byte keys (one per line, or
    /// separated by commas; the last is active). `source` names where they
    /// came from, for error messages.
    pub fn from_base64(source: &str, encoded: &str) -> Result<Self> {
        Ok(Self::with_keys(
            parse_keys(source, encoded)?,
            Source::Memory,
        ))
    }

    /// A provider with a fresh random key (for tests and examples).
    pub fn generate() -> Result<Self> {
        let bytes = random_key()?;
        Self::from_bytes(bytes.as_ref())
    }

    /// Reads base64 keys from the environment variable `var` (separated
    /// by commas or white space; the last is active).
    pub fn from_env(var: &str) -> Result<Self> {
        let value =
            Zeroizing::new(std::env::var(var).map_err(|_| {
                Error::InvalidKey(format!("environment variable {var} is not set"))
            })?);
        let keys = parse_keys(&format!("environment variable {var}"), &value)?;
        Ok(Self::with_keys(keys, Source::Env(var.to_owned())))
    }

    /// Reads the key file at `path`. When the file does not exist and
    /// `create` is true, a new random key is written there first (mode
    /// 0600, created exclusively, synced to disk with its directory entry:
    /// values sealed under it must never outlive the file).
    pub fn from_file(path: &Path, create: bool) -> Result<Self> {
        if create && !path.exists() {
            let bytes = random_key()?;
            let encoded = Zeroizing::new(format!("{}\n", BASE64.encode(bytes.as_ref())));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_error(path))?;
            file.write_all(encoded.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_error(path))?;
            sync_parent(path)?;
            tracing::info!(path = %path.display(), "generated a new master key file");
        }
        let keys = Self::read_file(path)?;
        Ok(Self::with_keys(keys, Source::File(path.to_owned())))
    }

    fn read_file(path: &Path) -> Result<Vec<LocalKey>> {
        let meta = std::fs::metadata(path).map_err(io_error(path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "master key file is readable by other users; chmod 600 it"
            );
        }
        let contents = Zeroizing::new(std::fs::read_to_string(path).map_err(io_error(path))?);
        parse_keys(&format!("key file {}", path.display()), &contents)
    }

    fn file_path(&self, what: &str) -> Result<&Path> {
        match &self.source {
            Source::File(path) => Ok(path),
            Source::Env(var) => Err(Error::Unsupported(format!(
                "the master keys come from environment variable {var}, which the vault cannot \
                 change: {what} by editing it (keys separated by commas, the last one active) \
                 and restarting"
            ))),
            Source::Memory => Err(Error::Unsupported(format!(
                "in-memory keys: {what} is not possible"
            ))),
        }
    }
}

/// Appends a key to a key file's text, with a comment naming its id.
fn append_key(contents: &str, id: &str, encoded: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(contents.len() + 128));
    out.push_str(contents);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "# {id} (active: the last key is the one in use)\n"
    ));
    out.push_str(encoded);
    out.push('\n');
    out
}

/// Drops the key with id `id` (and a comment line naming it) from a key
/// file's text.
fn remove_key(contents: &str, id: &str) -> Result<Zeroizing<String>> {
    let mut out = Zeroizing::new(String::with_capacity(contents.len()));
    let mut found = false;
    for line in contents.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && trimmed.contains(id) {
            continue;
        }
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            let keys = parse_keys("key file", trimmed)?;
            if keys.iter().any(|k| k.id == id) {
                found = true;
                // Several keys may share a line: only this one goes.
                let others: Vec<&str> = trimmed
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|encoded| !encoded.is_empty())
                    .filter(|encoded| {
                        parse_keys("key file", encoded).is_ok_and(|k| k.iter().all(|k| k.id != id))
                    })
                    .collect();
                if !others.is_empty() {
                    out.push_str(&others.join(","));
                    out.push('\n');
                }
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    if found {
        Ok(out)
    } else {
        Err(Error::UnknownKey {
            key_id: id.to_owned(),
        })
    }
}

#[async_trait]
impl KeyProvider for LocalKeyProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn active_key_id(&self) -> String {
        self.ring().active().id.clone()
    }

    fn key_ids(&self) -> Vec<String> {
        self.ring().keys.iter().map(|k| k.id.clone()).collect()
    }

    fn has_key(&self, key_id: &str) -> bool {
        self.ring().find(key_id).is_some()
    }

    async fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| Error::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + DATA_KEY_LEN + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(data_key.expose());
        let ring = self.ring();
        let key = ring.active();
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.wrap_aad()),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| Error::Encrypt)?;
        out.extend_from_slice(tag.as_ref());
        Ok(WrappedKey {
            key_id: key.id.clone(),
            bytes: out,
        })
    }

    async fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey> {
        let ring = self.ring();
        let key = ring.find(key_id).ok_or_else(|| Error::UnknownKey {
            key_id: key_id.to_owned(),
        })?;
        if wrapped.len() != NONCE_LEN + DATA_KEY_LEN + 16 {
            return Err(Error::Malformed("wrapped data key has the wrong length"));
        }
        let (nonce, ciphertext) = wrapped.split_at(NONCE_LEN);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(key.wrap_aad()),
                buf.as_mut_slice(),
            )
            .map_err(|_| Error::Decrypt)?;
        DataKey::from_slice(plain)
    }

    async fn derive(&self, label: &str) -> Result<DataKey> {
        // HMAC-SHA256(master, "vault-engine derive v1\0" || label): a PRF,
        // so derived keys say nothing of the master key or of each other.
        let mut input = b"vault-engine derive v1\0".to_vec();
        input.extend_from_slice(label.as_bytes());
        let tag = hmac::sign(&self.ring().active().derivation, &input);
        DataKey::from_slice(tag.as_ref())
    }

    async fn rotate(&self) -> Result<String> {
        let bytes = random_key()?;
        let key = LocalKey::new(bytes.as_ref())?;
        let id = key.id.clone();
        match self.file_path("rotate") {
            Ok(path) => {
                let _lock = FileLock::acquire(path)?;
                let contents =
                    Zeroizing::new(std::fs::read_to_string(path).map_err(io_error(path))?);
                let encoded = Zeroizing::new(BASE64.encode(bytes.as_ref()));
                let updated = append_key(&contents, &id, &encoded);
                // Parse what we are about to write: never replace a working
                // key file with one that does not load.
                let keys = parse_keys(&format!("key file {}", path.display()), &updated)?;
                write_atomically(path, updated.as_bytes())?;
                self.replace_ring(keys);
            }
            Err(e) if matches!(self.source, Source::Memory) => {
                let _ = e;
                let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
                ring.keys.push(key);
            }
            Err(e) => return Err(e),
        }
        tracing::info!(key_id = %id, "created a new master key version");
        Ok(id)
    }

    async fn retire(&self, key_id: &str) -> Result<()> {
        if self.active_key_id() == key_id {
            return Err(Error::Unsupported(format!(
                "{key_id} is the active master key; rotate first"
            )));
        }
        if self.ring().find(key_id).is_none() {
            return Err(Error::UnknownKey {
                key_id: key_id.to_owned(),
            });
        }
        match self.file_path("retire a key") {
            Ok(path) => {
                let _lock = FileLock::acquire(path)?;
                self.check_settled(path, key_id)?;
                let contents =
                    Zeroizing::new(std::fs::read_to_string(path).map_err(io_error(path))?);
                let updated = remove_key(&contents, key_id)?;
                let keys = parse_keys(&format!("key file {}", path.display()), &updated)?;
                write_atomically(path, updated.as_bytes())?;
                self.replace_ring(keys);
            }
            Err(_) if matches!(self.source, Source::Memory) => {
                let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
                ring.keys.retain(|k| k.id != key_id);
            }
            Err(e) => return Err(e),
        }
        tracing::info!(key_id, "retired a master key version");
        Ok(())
    }

    async fn reload(&self) -> Result<bool> {
        let Source::File(path) = &self.source else {
            return Ok(false);
        };
        let generation = self.ring().generation;
        let keys = Self::read_file(path)?;
        let changed = {
            let ring = self.ring();
            ring.keys.len() != keys.len() || ring.keys.iter().zip(&keys).any(|(a, b)| a.id != b.id)
        };
        if !changed {
            return Ok(false);
        }
        let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        // A rotation or retirement here since the read wrote a newer file
        // and installed it: what was read is older, and is dropped.
        if !self.replace_ring_if(keys, generation) {
            return Ok(false);
        }
        tracing::info!(key_ids = ?ids, "master key file changed; reloaded");
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
