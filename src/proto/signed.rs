//! Signed messages: a message travels as the exact JSON text that was signed, with the
//! signer's public key, so no canonical JSON is needed.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::core::identity::{self, Identity};

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

/// Signing wire messages with an identity.
pub trait Sign {
    fn sign<T: Serialize>(&self, value: &T) -> Signed<T>;
}

impl Sign for Identity {
    fn sign<T: Serialize>(&self, value: &T) -> Signed<T> {
        let body = serde_json::to_string(value).expect("wire types serialize");
        let sig = hex::encode(self.sign_bytes(body.as_bytes()));
        Signed { body, signer: self.public_key_hex(), sig, _t: Default::default() }
    }
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
        if !identity::verify(&key, self.body.as_bytes(), &sig) {
            return None;
        }
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
        hex::decode(&self.signer).map(|k| identity::peer_id(&k)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_body_and_signer() {
        let a = Identity::generate();
        let s = a.sign(&vec![1u32, 2, 3]);
        assert_eq!(s.open().unwrap(), vec![1, 2, 3]);
        assert!(s.open_by(&a.public_key_hex()).is_some());
        assert_eq!(s.signer_id(), a.peer_id());

        let other = Identity::generate();
        assert!(s.open_by(&other.public_key_hex()).is_none());
        let mut forged = s.clone();
        forged.body = "[1,2,4]".into();
        assert!(forged.open().is_none());
        let mut resigned = s.clone();
        resigned.signer = other.public_key_hex();
        assert!(resigned.open().is_none());
    }
}
