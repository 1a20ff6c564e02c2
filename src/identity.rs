//! ECDSA P-256 identities (ring): a key pair kept in a role's data directory, the peer id
//! derived from its public key, and signed messages (`Signed<T>`) that carry the exact JSON
//! text they sign, so no canonical JSON is needed.

use std::path::Path;

use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A peer id: hex of the first 16 bytes of SHA-256 of the uncompressed public key.
pub fn peer_id(public_key: &[u8]) -> String {
    hex::encode(&digest(&SHA256, public_key).as_ref()[..16])
}

pub struct Identity {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Identity {
    /// Loads `dir/identity.p8`, or creates it (owner-only permissions) on first start.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Identity> {
        let path = dir.join("identity.p8");
        let rng = SystemRandom::new();
        let pkcs8 = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| std::io::Error::other("key generation failed"))?;
                crate::store::write_durably(&path, doc.as_ref())?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                }
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(e),
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: not a P-256 key: {e}", path.display()))
        })?;
        Ok(Identity { pair, rng })
    }

    /// A fresh identity kept only in memory (simulated peers in benchmarks).
    pub fn generate() -> Identity {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("P-256 key generation");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).expect("fresh key");
        Identity { pair, rng }
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key())
    }

    pub fn peer_id(&self) -> String {
        peer_id(self.public_key())
    }

    pub fn sign<T: Serialize>(&self, value: &T) -> Signed<T> {
        let body = serde_json::to_string(value).expect("wire types serialize");
        let sig = self.pair.sign(&self.rng, body.as_bytes()).expect("P-256 signing does not fail");
        Signed { body, signer: self.public_key_hex(), sig: hex::encode(sig.as_ref()), _t: Default::default() }
    }
}

/// A message and the signature of its exact JSON text by `signer` (hex public key).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    pub body: String,
    pub signer: String,
    pub sig: String,
    #[serde(skip)]
    _t: std::marker::PhantomData<T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed { body: self.body.clone(), signer: self.signer.clone(), sig: self.sig.clone(), _t: Default::default() }
    }
}

impl<T> std::fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signed({} by {})", self.body, self.signer)
    }
}

impl<T: DeserializeOwned> Signed<T> {
    /// The message, if the signature is valid for `signer`; the caller checks that the
    /// signer is who it must be.
    pub fn open(&self) -> Option<T> {
        let key = hex::decode(&self.signer).ok()?;
        let sig = hex::decode(&self.sig).ok()?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key).verify(self.body.as_bytes(), &sig).ok()?;
        serde_json::from_str(&self.body).ok()
    }

    /// The message, if it is validly signed by exactly `expected_signer`.
    pub fn open_by(&self, expected_signer: &str) -> Option<T> {
        if self.signer != expected_signer {
            return None;
        }
        self.open()
    }

    pub fn signer_id(&self) -> String {
        hex::decode(&self.signer).map(|k| peer_id(&k)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_signatures_verify() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_key(), again.public_key());
        assert_eq!(a.peer_id().len(), 32);

        let s = a.sign(&vec![1u32, 2, 3]);
        assert_eq!(s.open().unwrap(), vec![1, 2, 3]);
        assert!(s.open_by(&a.public_key_hex()).is_some());

        let other = Identity::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(s.open_by(&other.public_key_hex()).is_none());
        let mut forged = s.clone();
        forged.body = "[1,2,4]".into();
        assert!(forged.open().is_none());
        let mut resigned = s.clone();
        resigned.signer = other.public_key_hex();
        assert!(resigned.open().is_none());
    }
}
