//! Requests signed by an account. A request that reads or changes an account's state carries
//! the header `x-p2pstore-auth: account=<hex public key> time=<unix s> nonce=<hex>
//! body=<hex SHA-256 of the body> sig=<hex>`, where `sig` is the account's P-256 signature
//! (r‖s) of [`request_message`]: the purpose tag, the coordinator's id, the method, the path
//! with its query, time, nonce and body hash, one per line. So a captured request cannot be
//! sent to another coordinator, another route or with another body, and the coordinator
//! refuses a nonce it has seen and a time outside its skew window, so it cannot be replayed.
//! The signature is checked from the header alone, before any body is read.

use ring::digest::{SHA256, digest};

use super::signed::DOMAIN;
use crate::core::identity::{self, Identity};

/// The header that carries a request's signature.
pub const AUTH_HEADER: &str = "x-p2pstore-auth";

/// A request's signature, as parsed from its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestAuth {
    /// Hex of the account's uncompressed P-256 public key.
    pub account: String,
    pub time: u64,
    pub nonce: String,
    /// Hex SHA-256 of the body the request carries.
    pub body: String,
    pub sig: String,
}

/// What an account signs for one request.
pub fn request_message(coordinator: &str, method: &str, path: &str, time: u64, nonce: &str, body: &str) -> String {
    format!("{DOMAIN}/request\n{coordinator}\n{method}\n{path}\n{time}\n{nonce}\n{body}")
}

/// Hex SHA-256 of a body.
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(digest(&SHA256, body))
}

impl RequestAuth {
    /// Signs a request to the coordinator whose id is `coordinator`; `path` includes the query.
    pub fn sign(
        account: &Identity,
        coordinator: &str,
        method: &str,
        path: &str,
        (time, nonce): (u64, String),
        body: &[u8],
    ) -> RequestAuth {
        let body = body_hash(body);
        let sig = account.sign_bytes(request_message(coordinator, method, path, time, &nonce, &body).as_bytes());
        RequestAuth { account: account.public_key_hex(), time, nonce, body, sig: hex::encode(sig) }
    }

    pub fn header(&self) -> String {
        format!("account={} time={} nonce={} body={} sig={}", self.account, self.time, self.nonce, self.body, self.sig)
    }

    /// Parses a header value; None when a field is missing, repeated or malformed.
    pub fn parse(header: &str) -> Option<RequestAuth> {
        let mut fields = std::collections::HashMap::new();
        for part in header.split_ascii_whitespace() {
            let (k, v) = part.split_once('=')?;
            if !v.bytes().all(|b| b.is_ascii_hexdigit()) || fields.insert(k, v).is_some() {
                return None;
            }
        }
        let field = |k: &str| fields.get(k).map(|v| v.to_string());
        let auth = RequestAuth {
            account: field("account")?,
            time: field("time")?.parse().ok()?,
            nonce: field("nonce")?,
            body: field("body")?,
            sig: field("sig")?,
        };
        (fields.len() == 5 && auth.nonce.len() >= 16 && auth.nonce.len() <= 64 && auth.body.len() == 64).then_some(auth)
    }

    /// Whether the signature is the account's, for this coordinator, method and path.
    pub fn verify(&self, coordinator: &str, method: &str, path: &str) -> bool {
        let (Ok(key), Ok(sig)) = (hex::decode(&self.account), hex::decode(&self.sig)) else { return false };
        let m = request_message(coordinator, method, path, self.time, &self.nonce, &self.body);
        identity::verify(&key, m.as_bytes(), &sig)
    }

    /// The account's id (as a peer id: hex of the first 16 bytes of SHA-256 of the key).
    pub fn account_id(&self) -> String {
        hex::decode(&self.account).map(|k| identity::peer_id(&k)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_binds_coordinator_route_and_body() {
        let a = Identity::generate();
        let auth = RequestAuth::sign(&a, "c1", "POST", "/v2/uploads", (100, "ab".repeat(16)), b"{}");
        let parsed = RequestAuth::parse(&auth.header()).unwrap();
        assert_eq!(parsed, auth);
        assert!(parsed.verify("c1", "POST", "/v2/uploads"));
        assert_eq!(parsed.body, body_hash(b"{}"));
        assert_eq!(parsed.account_id(), a.peer_id());
        for (c, m, p) in [("c2", "POST", "/v2/uploads"), ("c1", "GET", "/v2/uploads"), ("c1", "POST", "/v2/files")] {
            assert!(!parsed.verify(c, m, p), "{c} {m} {p}");
        }
        let other_body = RequestAuth { body: body_hash(b"[]"), ..parsed.clone() };
        assert!(!other_body.verify("c1", "POST", "/v2/uploads"));
        let later = RequestAuth { time: 101, ..parsed };
        assert!(!later.verify("c1", "POST", "/v2/uploads"));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = RequestAuth::sign(&Identity::generate(), "c", "GET", "/", (1, "00".repeat(16)), b"").header();
        assert!(RequestAuth::parse(&good).is_some());
        for bad in [
            "",
            "account=zz time=1 nonce=00 body=00 sig=00",
            &format!("{good} time=2"),
            &good.replace("time=1", "time=x1"),
            &good.replace(&"00".repeat(16), "00"),
        ] {
            assert!(RequestAuth::parse(bad).is_none(), "{bad}");
        }
    }
}
