//! Known-answer vectors: fixed password, salt and input → the exact manifest, file id,
//! sealed segments and shard ids, so the format cannot change by accident. Regenerate only
//! on purpose, with P2PSTORE_BLESS=1 (and a new format version).

use p2pstore::core::codec::{EncodeParams, Encoder};
use p2pstore::core::crypto::{FileKeys, Salt};
use p2pstore::core::erasure::Shape;
use p2pstore::core::manifest::{FileMeta, Manifest, PAGE_SEGMENTS, encode_page};
use ring::digest::{SHA256, digest};
use serde_json::{Value, json};

/// Input byte i of a vector: easy to reproduce in any language.
fn input(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + 3) % 256) as u8).collect()
}

fn compute(v: &Value) -> Value {
    let salt: [u8; 16] = hex::decode(v["salt"].as_str().unwrap()).unwrap().try_into().unwrap();
    let params = EncodeParams {
        shape: Shape::new(v["k"].as_u64().unwrap() as u8, v["n"].as_u64().unwrap() as u8).unwrap(),
        segment_size: v["segment_size"].as_u64().unwrap() as u32,
        iterations: v["iterations"].as_u64().unwrap() as u32,
    };
    let data = input(v["input_len"].as_u64().unwrap() as usize);
    let password = v["password"].as_str().unwrap().as_bytes();
    let mut enc = Encoder::new(&data[..], password, params, Salt(salt)).unwrap();
    let mut sealed = Vec::new();
    let mut ids = Vec::new();
    let mut entries = Vec::new();
    while let Some(s) = enc.next_segment().unwrap() {
        sealed.push(hex::encode(digest(&SHA256, &s.sealed())));
        ids.push(s.ids.iter().map(|i| i.to_hex()).collect::<Vec<_>>());
        entries.push(s.entry());
    }
    let pages: Vec<String> =
        entries.chunks(PAGE_SEGMENTS as usize).map(|page| hex::encode(encode_page(page))).collect();
    let meta =
        FileMeta { name: v["name"].as_str().unwrap().into(), content_type: v["content_type"].as_str().unwrap().into() };
    let m = enc.finish(&meta).unwrap();
    let keys = FileKeys::derive(password, Salt(salt), params.iterations).unwrap();
    json!({
        "file_id": m.file_id().to_string(),
        "manifest": hex::encode(m.to_bytes()),
        "pages": pages,
        "owner_token": hex::encode(keys.owner_token()),
        "sealed_segments_sha256": sealed,
        "shard_ids": ids,
    })
}

#[test]
fn known_answers() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");
    let bless = std::env::var_os("P2PSTORE_BLESS").is_some();
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let got = compute(&v);
        if bless {
            v["expected"] = got;
            std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
        } else {
            assert_eq!(v["expected"], got, "{} no longer matches: the format changed", path.display());
            // The stored manifest parses back to the same id.
            let m = Manifest::from_bytes(&hex::decode(v["expected"]["manifest"].as_str().unwrap()).unwrap()).unwrap();
            assert_eq!(m.file_id().to_string(), v["expected"]["file_id"].as_str().unwrap());
            for (p, page) in v["expected"]["pages"].as_array().unwrap().iter().enumerate() {
                m.open_page(p as u32, Some(&hex::decode(page.as_str().unwrap()).unwrap())).unwrap();
            }
        }
        seen += 1;
    }
    assert!(seen >= 3, "expected at least three vectors in {dir}");
}

/// Version 2 manifests (the segment table inline) blessed before version 3 are still read:
/// they hash to their id and list the same shards.
#[test]
fn version_2_manifests_are_still_read() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/v2");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        let m = Manifest::from_bytes(&hex::decode(v["manifest"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(m.version(), 2);
        assert_eq!(m.file_id().to_string(), v["file_id"].as_str().unwrap());
        let listed: Vec<Vec<String>> = (0..m.page_count())
            .flat_map(|p| m.open_page(p, None).unwrap())
            .map(|e| e.shard_ids.iter().map(|i| i.to_hex()).collect())
            .collect();
        assert_eq!(serde_json::to_value(listed).unwrap(), v["shard_ids"]);
        seen += 1;
    }
    assert!(seen >= 3);
}
