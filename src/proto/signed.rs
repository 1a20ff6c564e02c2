//! Signed messages: a message travels as the exact JSON text that was signed, with the
//! signer's public key, so no canonical JSON is needed. What is signed is the message's
//! purpose tag (`p2pstore/v2/<kind>` and a newline) followed by that text, so a signature
//! made for one kind of message never verifies as another kind, or under another protocol
//! version.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::core::identity::{self, Identity};

/// The protocol's domain: every purpose tag starts with it.
pub const DOMAIN: &str = "p2pstore/v2";

/// A kind of signed message: its purpose tag names it.
pub trait Message: Serialize + DeserializeOwned {
    /// The kind, as in the tag `p2pstore/v2/<KIND>`.
    const KIND: &'static str;
}

/// The bytes a signature of a `kind` message with JSON text `body` covers.
pub fn tagged(kind: &str, body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + kind.len() + 2 + body.len());
    m.extend_from_slice(DOMAIN.as_bytes());
    m.push(b'/');
    m.extend_from_slice(kind.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body.as_bytes());
    m
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

/// Signing wire messages with an identity.
pub trait Sign {
    fn sign<T: Message>(&self, value: &T) -> Signed<T>;
}

impl Sign for Identity {
    fn sign<T: Message>(&self, value: &T) -> Signed<T> {
        let body = serde_json::to_string(value).expect("wire types serialize");
        let sig = hex::encode(self.sign_bytes(&tagged(T::KIND, &body)));
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

impl<T: Message> Signed<T> {
    /// The message, if the signature is valid for `signer`; the caller checks that the
    /// signer is who it must be.
    pub fn open(&self) -> Option<T> {
        let key = hex::decode(&self.signer).ok()?;
        let sig = hex::decode(&self.sig).ok()?;
        if !identity::verify(&key, &tagged(T::KIND, &self.body), &sig) {
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

    /// The message, its signature not checked: for cheap checks before the costly one, never
    /// for trusting what it says.
    pub fn unverified(&self) -> Option<T> {
        serde_json::from_str(&self.body).ok()
    }

    pub fn signer_id(&self) -> String {
        hex::decode(&self.signer).map(|k| identity::peer_id(&k)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping(Vec<u32>);
    impl Message for Ping {
        const KIND: &'static str = "ping";
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pong(Vec<u32>);
    impl Message for Pong {
        const KIND: &'static str = "pong";
    }

    #[test]
    fn a_signature_for_one_kind_never_opens_as_another() {
        let a = Identity::generate();
        let ping = a.sign(&Ping(vec![1]));
        assert!(ping.open().is_some());
        // The same JSON text, presented as the other kind: the tag differs, so it fails.
        let as_pong: Signed<Pong> = serde_json::from_str(&serde_json::to_string(&ping).unwrap()).unwrap();
        assert_eq!(as_pong.body, ping.body);
        assert!(as_pong.open().is_none());
    }

    #[test]
    fn signatures_bind_body_and_signer() {
        let a = Identity::generate();
        let s = a.sign(&Ping(vec![1u32, 2, 3]));
        assert_eq!(s.open().unwrap(), Ping(vec![1, 2, 3]));
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
