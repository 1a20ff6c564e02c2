//! Signed-message verification on arbitrary structures: `Signed<T>::open` and `open_by`
//! for every message kind must never panic, must accept exactly the messages validly signed
//! for their kind whose body parses, and must refuse a signature made for another kind, by
//! another key, or altered.
//!
//! Input layout: byte 0 the kind opened (mod 13); byte 1 the signer field (mod 6); byte 2 the
//! signature (mod 8); byte 3 a position or value used by some choices; byte 4 what
//! `open_by` expects (mod 3); the rest is the body text (lossily UTF-8).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use p2pstore::core::identity::Identity;
use p2pstore::proto::*;

/// Three fixed keys made once per process.
fn keys() -> &'static [Identity; 3] {
    static KEYS: OnceLock<[Identity; 3]> = OnceLock::new();
    KEYS.get_or_init(|| std::array::from_fn(|_| Identity::generate()))
}

/// One case: the fields of the `Signed<T>` and what must come of opening it.
struct Case {
    signer: String,
    sig: String,
    /// The signature is a real one by the key in `signer`, for the kind opened.
    genuine: bool,
    expected: String,
}

fn open_as<T: Message>(body: String, c: &Case) {
    let json = serde_json::json!({ "body": body, "signer": c.signer, "sig": c.sig });
    let s: Signed<T> = serde_json::from_value(json).expect("any three strings make a Signed");
    let opened = s.open();
    let parses = serde_json::from_str::<T>(&body).is_ok();
    assert_eq!(opened.is_some(), c.genuine && parses, "open() of {} signed {}: {}", T::KIND, c.genuine, body);
    let by = s.open_by(&c.expected);
    assert_eq!(by.is_some(), opened.is_some() && c.expected == c.signer);
    let _ = s.signer_id();
    // The same message after a trip through its JSON opens the same way.
    let again: Signed<T> = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(again.open().is_some(), opened.is_some());
    if let Some(m) = opened {
        // What opened is what was signed.
        let text = serde_json::to_string(&m).unwrap();
        let reparsed: T = serde_json::from_str(&text).expect("an opened message re-encodes");
        let _ = reparsed;
    }
}

macro_rules! kinds {
    ($($t:ty),* $(,)?) => {
        const KINDS: &[&str] = &[$(<$t as Message>::KIND),*];
        const OPEN: &[fn(String, &Case)] = &[$(open_as::<$t>),*];
    };
}
kinds!(
    Heartbeat,
    ExitRequest,
    PutOrder,
    Receipt,
    Notice,
    ManifestCopy,
    InventoryRequest,
    Challenge,
    AuditAnswer,
    ReadGrant,
    Identified,
    AdminRequest,
    DamageReport,
);

fuzz_target!(|data: &[u8]| {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let body = String::from_utf8_lossy(data.get(5..).unwrap_or_default()).into_owned();
    let kind = byte(0) as usize % KINDS.len();
    let keys = keys();
    let key = &keys[byte(3) as usize % 3];
    let aux = byte(3);

    let signer = match byte(1) % 6 {
        0..=2 => keys[(byte(1) % 6) as usize].public_key_hex(),
        // Another valid-looking key: one bit of a real one flipped.
        3 => {
            let mut k = key.public_key().to_vec();
            let at = aux as usize % k.len();
            k[at] ^= 1 << (aux % 8);
            hex::encode(k)
        }
        4 => hex::encode(&data[..data.len().min(65)]),
        _ => String::from_utf8_lossy(&data[..data.len().min(8)]).into_owned(),
    };
    let signing_key = keys.iter().find(|k| k.public_key_hex() == signer);
    let for_kind = |k: &str| hex::encode(signing_key.unwrap_or(key).sign_bytes(&tagged(k, &body)));
    let (sig, genuine) = match byte(2) % 8 {
        0 | 1 => (for_kind(KINDS[kind]), signing_key.is_some()),
        // Signed for another kind of message.
        2 => (for_kind(KINDS[(kind + 1 + aux as usize % (KINDS.len() - 1)) % KINDS.len()]), false),
        // Signed by another key than the one named.
        3 => {
            let other = keys.iter().find(|k| k.public_key_hex() != signer).unwrap();
            (hex::encode(other.sign_bytes(&tagged(KINDS[kind], &body))), false)
        }
        // A genuine signature with one bit flipped.
        4 => {
            let mut s = hex::decode(for_kind(KINDS[kind])).unwrap();
            let at = aux as usize % s.len();
            s[at] ^= 1 << (aux % 8);
            (hex::encode(s), false)
        }
        // Cut short, or with a byte more.
        5 => {
            let mut s = hex::decode(for_kind(KINDS[kind])).unwrap();
            if aux % 2 == 0 {
                s.truncate(aux as usize % 64)
            } else {
                s.push(aux)
            }
            (hex::encode(s), false)
        }
        6 => (hex::encode(&data[..data.len().min(64)]), false),
        _ => (String::from_utf8_lossy(&data[..data.len().min(12)]).into_owned(), false),
    };
    let expected = match byte(4) % 3 {
        0 => signer.clone(),
        1 => keys[aux as usize % 3].public_key_hex(),
        _ => String::new(),
    };
    OPEN[kind](body, &Case { signer, sig, genuine, expected });
});
