//! The sealed format and the envelope that produces it.

use std::fmt;
use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::provider::{DATA_KEY_LEN, DataKey, KeyProvider, WrappedKey};
use crate::{Error, Result};

/// The sealed-format version this build writes.
pub const FORMAT_VERSION: u8 = 1;

const MAGIC: &[u8; 2] = b"VE";
const TAG_LEN: usize = 16;
pub(crate) const MAX_KEY_ID_LEN: usize = 64;

// Sealed format, version 1 (all integers big endian):
//
//   offset      size  field
//   0           2     magic "VE"
//   2           1     format version (1)
//   3           1     K = length of the master key id (1..=64)
//   4           K     master key id (ASCII)
//   4+K         2     W = length of the wrapped data key
//   6+K         W     wrapped data key (opaque, owned by the key provider)
//   6+K+W       12    nonce (random per value)
//   18+K+W      n+16  AES-256-GCM ciphertext of the n-byte value, then tag
//
// The payload's associated data is `magic || format version || caller AAD`.
// The key id and wrapped data key are deliberately left out of it: rotating
// the master key rewraps the data key (changing both) without touching the
// payload. They are authenticated anyway, by the provider's own wrapping
// (the local provider binds the key id into the wrap's AAD), and a data key
// that unwraps to anything else cannot open the payload.

/// Seals and opens values with a fresh data key per value.
#[derive(Clone)]
pub struct Envelope {
    keys: Arc<dyn KeyProvider>,
    rng: SystemRandom,
    /// When an unknown master key last made this envelope reload its keys;
    /// held while it does, so that callers meeting the same key wait for
    /// that reload instead of failing beside it.
    reloaded_for_unknown: Arc<tokio::sync::Mutex<Option<std::time::Instant>>>,
}

/// The least time between two reloads for a value sealed under a master key
/// this process does not know.
const UNKNOWN_KEY_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

struct Parsed<'a> {
    key_id: &'a str,
    wrapped: &'a [u8],
    nonce: [u8; NONCE_LEN],
    ciphertext: &'a [u8],
}

fn parse(sealed: &[u8]) -> Result<Parsed<'_>> {
    let rest = sealed
        .strip_prefix(MAGIC.as_slice())
        .ok_or(Error::Malformed("bad magic"))?;
    let (&version, rest) = rest.split_first().ok_or(Error::Malformed("truncated"))?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat(version));
    }
    let (&key_id_len, rest) = rest.split_first().ok_or(Error::Malformed("truncated"))?;
    let key_id_len = usize::from(key_id_len);
    if key_id_len == 0 || key_id_len > MAX_KEY_ID_LEN || rest.len() < key_id_len {
        return Err(Error::Malformed("bad key id length"));
    }
    let (key_id, rest) = rest.split_at(key_id_len);
    let key_id = std::str::from_utf8(key_id).map_err(|_| Error::Malformed("key id not utf-8"))?;
    if rest.len() < 2 {
        return Err(Error::Malformed("truncated"));
    }
    let (wrapped_len, rest) = rest.split_at(2);
    let wrapped_len = usize::from(u16::from_be_bytes([wrapped_len[0], wrapped_len[1]]));
    if rest.len() < wrapped_len + NONCE_LEN + TAG_LEN {
        return Err(Error::Malformed("truncated"));
    }
    let (wrapped, rest) = rest.split_at(wrapped_len);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let mut nonce_bytes = [0u8; NONCE_LEN];
    nonce_bytes.copy_from_slice(nonce);
    Ok(Parsed {
        key_id,
        wrapped,
        nonce: nonce_bytes,
        ciphertext,
    })
}

/// The id of the master key a sealed value was wrapped under, without
/// opening it.
pub fn sealed_key_id(sealed: &[u8]) -> Result<&str> {
    parse(sealed).map(|p| p.key_id)
}

fn payload_aad(caller_aad: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(3 + caller_aad.len());
    aad.extend_from_slice(MAGIC);
    aad.push(FORMAT_VERSION);
    aad.extend_from_slice(caller_aad);
    aad
}

/// Starts a sealed value: the header up to and including the nonce, in a
/// buffer with room for `payload_len` more bytes.
fn header(wrapped: &WrappedKey, nonce: &[u8; NONCE_LEN], payload_len: usize) -> Result<Vec<u8>> {
    if wrapped.key_id.is_empty() || wrapped.key_id.len() > MAX_KEY_ID_LEN {
        return Err(Error::InvalidKey("key id must be 1 to 64 bytes".into()));
    }
    let wrapped_len = u16::try_from(wrapped.bytes.len())
        .map_err(|_| Error::InvalidKey("wrapped data key longer than 65535 bytes".into()))?;
    let mut out = Vec::with_capacity(
        6 + wrapped.key_id.len() + wrapped.bytes.len() + NONCE_LEN + payload_len,
    );
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    // Checked above: 1..=64 fits in a byte.
    out.push(wrapped.key_id.len() as u8);
    out.extend_from_slice(wrapped.key_id.as_bytes());
    out.extend_from_slice(&wrapped_len.to_be_bytes());
    out.extend_from_slice(&wrapped.bytes);
    out.extend_from_slice(nonce);
    Ok(out)
}

fn aead_key(data_key: &DataKey) -> Result<LessSafeKey> {
    let unbound = UnboundKey::new(&AES_256_GCM, data_key.expose()).map_err(|_| Error::Encrypt)?;
    Ok(LessSafeKey::new(unbound))
}

impl Envelope {
    /// An envelope whose data keys are wrapped by `keys`.
    pub fn new(keys: Arc<dyn KeyProvider>) -> Self {
        Self {
            keys,
            rng: SystemRandom::new(),
            reloaded_for_unknown: Arc::default(),
        }
    }

    /// Unwraps a data key. A master key this process does not know may have
    /// been added by another one sharing the key source (a rotation it has
    /// not picked up yet, which sealed this value): the keys are reloaded
    /// then, at most once a second, and the unwrap tried again (also when
    /// another caller's reload may have found the key meanwhile).
    async fn unwrap_key(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey> {
        match self.keys.unwrap(key_id, wrapped).await {
            Err(Error::UnknownKey { .. }) => {}
            other => return other,
        }
        let failed_at = std::time::Instant::now();
        {
            // Waits for a reload under way; one begun after this failure
            // has looked already.
            let mut last = self.reloaded_for_unknown.lock().await;
            let looked_since = last.is_some_and(|at| at >= failed_at);
            let due =
                last.is_none_or(|at| failed_at.duration_since(at) >= UNKNOWN_KEY_RELOAD_EVERY);
            if !looked_since && due {
                *last = Some(std::time::Instant::now());
                if let Err(e) = self.keys.reload().await {
                    tracing::warn!(error = %e, "reloading master keys for an unknown key failed");
                }
            }
        }
        self.keys.unwrap(key_id, wrapped).await
    }

    /// The key provider behind this envelope.
    pub fn key_provider(&self) -> &Arc<dyn KeyProvider> {
        &self.keys
    }

    /// Encrypts `plaintext` under a fresh data key, authenticating `aad`.
    pub async fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let mut raw = Zeroizing::new([0u8; DATA_KEY_LEN]);
        self.rng.fill(raw.as_mut()).map_err(|_| Error::Random)?;
        let data_key = DataKey::from_bytes(*raw);
        let wrapped = self.keys.wrap(&data_key).await?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| Error::Random)?;
        let mut out = header(&wrapped, &nonce, plaintext.len() + TAG_LEN)?;
        let payload_start = out.len();
        out.extend_from_slice(plaintext);

        let key = aead_key(&data_key)?;
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(payload_aad(aad)),
                &mut out[payload_start..],
            )
            .map_err(|_| Error::Encrypt)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Re-encrypts the data key of a sealed value under the active master
    /// key, leaving the payload (nonce, ciphertext, tag) as it is: the value
    /// itself is never decrypted, so no associated data is needed. The
    /// result opens with the same associated data as before.
    pub async fn rewrap(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        let parsed = parse(sealed)?;
        let data_key = self.unwrap_key(parsed.key_id, parsed.wrapped).await?;
        let wrapped = self.keys.wrap(&data_key).await?;
        let mut out = header(&wrapped, &parsed.nonce, parsed.ciphertext.len())?;
        out.extend_from_slice(parsed.ciphertext);
        Ok(out)
    }

    /// Decrypts a value sealed by [`Envelope::seal`] with the same `aad`.
    ///
    /// Any change to the sealed bytes or the associated data, or a master
    /// key other than the one that sealed it, fails with an error; the
    /// plaintext is returned in a buffer that is zeroized on drop.
    pub async fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let parsed = parse(sealed)?;
        let data_key = self.unwrap_key(parsed.key_id, parsed.wrapped).await?;
        let key = aead_key(&data_key)?;
        let mut buf = Zeroizing::new(parsed.ciphertext.to_vec());
        let len = key
            .open_in_place(
                Nonce::assume_unique_for_key(parsed.nonce),
                Aad::from(payload_aad(aad)),
                buf.as_mut_slice(),
            )
            .map_err(|_| Error::Decrypt)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests;
