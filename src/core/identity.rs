//! ECDSA P-256 key pairs (ring) and the ids derived from public keys. Pure: the key's bytes
//! come from the caller (`store::identity` keeps them in a role's data directory).

use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};

/// A peer id: hex of the first 16 bytes of SHA-256 of the uncompressed public key.
pub fn peer_id(public_key: &[u8]) -> String {
    hex::encode(&digest(&SHA256, public_key).as_ref()[..16])
}

/// A P-256 key pair that signs; its public half names a peer, a coordinator or an account.
pub struct Identity {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

/// The key bytes are not a P-256 key in PKCS#8.
#[derive(Debug, thiserror::Error)]
#[error("not a P-256 private key in PKCS#8: {0}")]
pub struct BadKey(String);

impl std::fmt::Debug for Identity {
    /// The public half only: a private key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.peer_id())
    }
}

impl Identity {
    /// A new private key, PKCS#8-encoded, for [`Identity::from_pkcs8`].
    pub fn generate_pkcs8() -> Vec<u8> {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("P-256 key generation does not fail")
            .as_ref()
            .to_vec()
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Identity, BadKey> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| BadKey(e.to_string()))?;
        Ok(Identity { pair, rng })
    }

    /// A fresh identity kept only in memory (simulated peers, throwaway test keys).
    pub fn generate() -> Identity {
        Identity::from_pkcs8(&Identity::generate_pkcs8()).expect("a fresh key parses")
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

    /// The fixed-size (r‖s) signature of `message`.
    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(&self.rng, message).expect("P-256 signing does not fail").as_ref().to_vec()
    }
}

/// The proof-of-work an identity carries: the leading zero bits of
/// SHA-256("p2pstore/v2/pow\n" ‖ public key ‖ nonce as 8 big-endian bytes). A coordinator asks
/// new peers for a number of bits, so a key costs about 2^bits hashes to make usable (Storj
/// asks the same of node ids); one key is found in milliseconds, thousands are not.
pub fn pow_bits(public_key: &[u8], nonce: u64) -> u32 {
    let mut m = Vec::with_capacity(16 + public_key.len() + 8);
    m.extend_from_slice(b"p2pstore/v2/pow\n");
    m.extend_from_slice(public_key);
    m.extend_from_slice(&nonce.to_be_bytes());
    let d = digest(&SHA256, &m);
    let mut bits = 0;
    for b in d.as_ref() {
        if *b == 0 {
            bits += 8;
        } else {
            bits += b.leading_zeros();
            break;
        }
    }
    bits
}

/// The first nonce whose proof-of-work has at least `bits` bits (about 2^bits tries).
pub fn solve_pow(public_key: &[u8], bits: u32) -> u64 {
    (0..).find(|&n| pow_bits(public_key, n) >= bits).expect("a nonce exists below 2^64")
}

/// Whether `sig` is `public_key`'s signature of `message`.
pub fn verify(public_key: &[u8], message: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key).verify(message, sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_signatures_verify() {
        let pkcs8 = Identity::generate_pkcs8();
        let a = Identity::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(a.public_key(), Identity::from_pkcs8(&pkcs8).unwrap().public_key());
        assert_eq!(a.peer_id().len(), 32);
        let sig = a.sign_bytes(b"m");
        assert!(verify(a.public_key(), b"m", &sig));
        assert!(!verify(a.public_key(), b"n", &sig));
        assert!(!verify(Identity::generate().public_key(), b"m", &sig));
        assert!(Identity::from_pkcs8(b"junk").is_err());
    }

    #[test]
    fn proofs_of_work_are_found_and_checked() {
        let a = Identity::generate();
        let n = solve_pow(a.public_key(), 12);
        assert!(pow_bits(a.public_key(), n) >= 12);
        assert!(pow_bits(Identity::generate().public_key(), n) < 12 || n == 0, "bound to the key");
    }
}
