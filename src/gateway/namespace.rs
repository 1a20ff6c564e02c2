//! The gateway's private namespace, kept on the coordinator (`/v2/names/*`) so that any
//! gateway with the same account and password sees the same buckets and objects.
//!
//! **Names.** A bucket name or object key is split at `/` and each component is encrypted
//! on its own, deterministically: AES-256-GCM with a nonce that is an HMAC of the component
//! and of everything before it (the encrypted parent path), then base64url. The same path
//! always encrypts to the same string, so the coordinator can list a "directory" by prefix
//! without learning any name; equal names in different directories look unrelated. What it
//! sees: how many components a key has, their approximate lengths, and which objects share a
//! directory (as Storj's path encryption does).
//!
//! **Records** (an object's parts with their p2pstore file ids and per-object passwords,
//! sizes, ETag, content type, user metadata) are JSON sealed with AES-256-GCM under a random
//! nonce, the storage key as associated data (a record cannot be moved to another name).
//!
//! Both keys come from the account password: PBKDF2-HMAC-SHA256 (600,000 iterations) with a
//! salt bound to the account id, then HKDF-SHA256.
//!
//! Layout (`<B>` an encrypted bucket name, `<C…>` encrypted key components):
//! `b/<B>` a bucket, `o/<B>/<C1>/<C2>…` an object, `u/<B>/<upload id>` a multipart upload in
//! progress, `p/<upload id>/<part number, 5 digits>` one of its parts.

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hkdf, hmac, pbkdf2};
use serde::{Serialize, de::DeserializeOwned};

use super::GatewayError;

const KDF_ITERATIONS: u32 = 600_000;
const TAG: usize = 16;

/// The keys that hide one account's names and records.
pub struct NameKeys {
    names: LessSafeKey,
    nonces: hmac::Key,
    records: LessSafeKey,
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl NameKeys {
    /// Derives the keys from the password and the account id (0.1 s: call once at start).
    pub fn derive(password: &[u8], account_id: &str) -> NameKeys {
        let salt = digest::digest(&digest::SHA256, format!("p2pstore/gateway/v1\n{account_id}").as_bytes());
        let mut master = [0u8; 32];
        let iterations = NonZeroU32::new(KDF_ITERATIONS).expect("non-zero");
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt.as_ref(), password, &mut master);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt.as_ref()).extract(&master);
        let expand = |info: &[u8]| -> [u8; 32] {
            let mut out = [0u8; 32];
            prk.expand(&[info], Len(32)).and_then(|okm| okm.fill(&mut out)).expect("32 bytes fit HKDF-SHA256");
            out
        };
        let aes = |k: [u8; 32]| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).expect("32-byte key"));
        NameKeys {
            names: aes(expand(b"p2pstore/gateway/v1/name-key")),
            nonces: hmac::Key::new(hmac::HMAC_SHA256, &expand(b"p2pstore/gateway/v1/name-nonce-key")),
            records: aes(expand(b"p2pstore/gateway/v1/record-key")),
        }
    }

    /// One component, encrypted under the encrypted path before it (`parent`).
    pub fn seal_component(&self, parent: &str, component: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.nonces);
        ctx.update(&(parent.len() as u64).to_be_bytes());
        ctx.update(parent.as_bytes());
        ctx.update(component.as_bytes());
        let tag = ctx.sign();
        let nonce: [u8; NONCE_LEN] = tag.as_ref()[..NONCE_LEN].try_into().expect("12 bytes");
        let mut buf = component.as_bytes().to_vec();
        self.names
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(parent.as_bytes()), &mut buf)
            .expect("a name fits AES-GCM");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        B64URL.encode(out)
    }

    /// The component `token` encrypts, checked against its parent path.
    pub fn open_component(&self, parent: &str, token: &str) -> Result<String, GatewayError> {
        let bad = || GatewayError::Namespace(format!("the encrypted name {token} does not open"));
        let raw = B64URL.decode(token.as_bytes()).map_err(|_| bad())?;
        if raw.len() < NONCE_LEN + TAG {
            return Err(bad());
        }
        let nonce = Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN]).map_err(|_| bad())?;
        let mut buf = raw[NONCE_LEN..].to_vec();
        let plain = self.names.open_in_place(nonce, Aad::from(parent.as_bytes()), &mut buf).map_err(|_| bad())?;
        String::from_utf8(plain.to_vec()).map_err(|_| bad())
    }

    /// `prefix` followed by every component of `path` (split at `/`) encrypted, each under
    /// what precedes it, joined by `/`.
    pub fn seal_path(&self, prefix: &str, path: &str) -> String {
        let mut out = prefix.to_owned();
        for (i, c) in path.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            let token = self.seal_component(&out, c);
            out.push_str(&token);
        }
        out
    }

    /// The plaintext path of the components after `prefix` in `sealed` (the inverse of
    /// [`NameKeys::seal_path`]).
    pub fn open_path(&self, prefix: &str, sealed: &str) -> Result<String, GatewayError> {
        let rest = sealed
            .strip_prefix(prefix)
            .ok_or_else(|| GatewayError::Namespace(format!("{sealed} is not under {prefix}")))?;
        let mut parent = prefix.to_owned();
        let mut out = String::new();
        for (i, token) in rest.split('/').enumerate() {
            if i > 0 {
                parent.push('/');
                out.push('/');
            }
            out.push_str(&self.open_component(&parent, token)?);
            parent.push_str(token);
        }
        Ok(out)
    }

    /// A record sealed for storage under `key`.
    pub fn seal_record<T: Serialize>(&self, key: &str, record: &T) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("the operating system's random generator failed");
        let mut buf = serde_json::to_vec(record).expect("records serialize");
        self.records
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.as_bytes()), &mut buf)
            .expect("a record fits AES-GCM");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    /// The record stored under `key`, authenticated.
    pub fn open_record<T: DeserializeOwned>(&self, key: &str, sealed: &[u8]) -> Result<T, GatewayError> {
        let bad = |why: &str| GatewayError::Namespace(format!("the record under {key} {why}"));
        if sealed.len() < NONCE_LEN + TAG {
            return Err(bad("is too short"));
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).map_err(|_| bad("has no nonce"))?;
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let plain = self
            .records
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf)
            .map_err(|_| bad("does not open with this password"))?;
        serde_json::from_slice(plain).map_err(|e| bad(&format!("is not a valid record: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_hide_their_names() {
        let k = NameKeys::derive(b"pw", "acct");
        for path in ["a", "dir/file.txt", "dir/", "/lead", "a//b", "spaces and+plus/ü"] {
            let sealed = k.seal_path("o/B/", path);
            assert_eq!(sealed, k.seal_path("o/B/", path), "deterministic");
            assert!(!sealed.contains("file") && !sealed.contains("dir/"), "{sealed}");
            assert_eq!(k.open_path("o/B/", &sealed).unwrap(), path);
        }
        // A shared directory shares its encrypted prefix; the same name elsewhere does not.
        let (a, b) = (k.seal_path("o/B/", "d/x"), k.seal_path("o/B/", "d/y"));
        let dir = k.seal_path("o/B/", "d");
        assert!(a.starts_with(&format!("{dir}/")) && b.starts_with(&format!("{dir}/")));
        assert_ne!(k.seal_path("o/B/", "d/x").rsplit('/').next(), k.seal_path("o/B/", "e/x").rsplit('/').next());
        let other = NameKeys::derive(b"other", "acct");
        assert!(other.open_path("o/B/", &a).is_err());
    }

    #[test]
    fn records_are_bound_to_their_key() {
        let k = NameKeys::derive(b"pw", "acct");
        let sealed = k.seal_record("o/x", &vec![1, 2, 3]);
        assert_eq!(k.open_record::<Vec<i32>>("o/x", &sealed).unwrap(), vec![1, 2, 3]);
        assert!(k.open_record::<Vec<i32>>("o/y", &sealed).is_err());
    }
}
