//! Header values and other text a server takes apart before any body: the account signature
//! header (`RequestAuth::parse`), advertised peer addresses (`core::address::parse`), ids in
//! paths, query strings, and the signed put order / read grant a node reads from headers.
//! The first byte picks the parser, the rest is the text. Nothing may panic, and what parses
//! must print back to text that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pstore::core::address;
use p2pstore::core::manifest::FileId;
use p2pstore::core::merkle::ShardId;
use p2pstore::net::server::parse_query;
use p2pstore::proto::{PutOrder, ReadGrant, RequestAuth, Signed};

fn auth(text: &str) {
    let Some(a) = RequestAuth::parse(text) else { return };
    assert_eq!(RequestAuth::parse(&a.header()).as_ref(), Some(&a), "header() does not parse back");
    assert_eq!(a.body.len(), 64);
    assert!((16..=64).contains(&a.nonce.len()));
    let _ = a.account_id();
    // Not signed by anyone, so it cannot verify (the odds of a forged P-256 signature aside).
    assert!(!a.verify("c", "GET", "/v2/files"), "an unsigned header verifies: {text}");
}

fn peer_address(text: &str) {
    let Ok(a) = address::parse(text) else { return };
    assert_ne!(a.port, 0);
    assert!(!a.host.is_empty());
    let host = if a.host.contains(':') { format!("[{}]", a.host) } else { a.host.clone() };
    let scheme = if a.https { "https" } else { "http" };
    let again = format!("{scheme}://{host}:{}", a.port);
    assert_eq!(address::parse(&again), Ok(a.clone()), "{text} → {again}");
    if let Ok(ip) = a.host.parse::<std::net::IpAddr>() {
        let _ = address::is_public(ip);
    }
}

fn ids(text: &str) {
    if let Some(id) = ShardId::from_hex(text) {
        assert_eq!(ShardId::from_hex(&id.to_hex()), Some(id));
    }
    if let Ok(id) = FileId::parse(text) {
        assert_eq!(FileId::parse(&id.to_string()).unwrap(), id);
    }
}

fn query(text: &str) {
    let q = parse_query(Some(text));
    assert!(q.len() <= text.len());
}

fn order(text: &str) {
    if let Ok(s) = serde_json::from_str::<Signed<PutOrder>>(text) {
        let _ = s.open();
        let _ = s.signer_id();
    }
}

fn grant(text: &str) {
    if let Ok(s) = serde_json::from_str::<Signed<ReadGrant>>(text) {
        let _ = s.open();
        let _ = s.signer_id();
    }
}

const PARSERS: &[fn(&str)] = &[auth, peer_address, ids, query, order, grant];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    PARSERS[which as usize % PARSERS.len()](text);
});
