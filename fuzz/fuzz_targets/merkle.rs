//! Audit proofs. `verify` on anything a node may answer must not panic; with the leaf count
//! an auditor expects, a proof verifies only for the very chunk of the shard at that index;
//! and `prove` of any shard gives proofs that verify.
//!
//! Input layout: byte 0 the mode (mod 3); then
//! - 0, prove: bytes 1–2 the shard length (little-endian u16, times 2: up to 32 chunks),
//!   byte 3 its content seed; every chunk (or 5 of them) is proved and verified, and each
//!   proof is refused for another index, another root, or with its chunk altered;
//! - 1, tamper: as 0 for the shard, byte 4 the index proved, then 3 bytes per change made
//!   to the proof (op, a, b); if it still verifies with the right leaf count, its chunk must
//!   be the shard's chunk at the index verified;
//! - 2, arbitrary: root (32 bytes), index (u64 LE), leaf count (u64 LE), path length (1
//!   byte, up to 70), the path's hashes, then the chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pstore::core::merkle::{CHUNK, Proof, ShardId, leaf_count, prove, root, verify};

/// Deterministic bytes, different in every chunk.
fn shard(len: usize, seed: u8) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn chunk_of(data: &[u8], index: u64) -> &[u8] {
    let start = (index as usize * CHUNK).min(data.len());
    &data[start..(start + CHUNK).min(data.len())]
}

fn prove_all(data: &[u8]) {
    let id = root(data);
    let count = leaf_count(data.len());
    assert!(prove(data, count).is_none());
    let step = count.div_ceil(4).max(1);
    let indices = (0..count).step_by(step as usize).chain([count - 1]);
    for i in indices {
        let p = prove(data, i).expect("every chunk has a proof");
        assert_eq!(p.leaf_count, count);
        assert_eq!(p.chunk, chunk_of(data, i));
        assert!(verify(&id, i, &p), "proof of chunk {i} of {count} fails");
        // Through JSON, as a node sends it.
        let back: Proof = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert!(verify(&id, i, &back));
        if count > 1 {
            assert!(!verify(&id, (i + 1) % count, &p), "proof of chunk {i} verifies for another");
        }
        let mut other = id;
        other.0[31] ^= 1;
        assert!(!verify(&other, i, &p));
        let mut bad = p.clone();
        match bad.chunk.last_mut() {
            Some(b) => *b ^= 1,
            None => bad.chunk.push(0),
        }
        assert!(!verify(&id, i, &bad));
    }
}

fn tamper(data: &[u8], index: u64, changes: &[u8]) {
    let id = root(data);
    let count = leaf_count(data.len());
    let mut index = index % count;
    let mut p = prove(data, index).unwrap();
    for c in changes.chunks_exact(3) {
        let (op, a, b) = (c[0], c[1] as usize, c[2]);
        match op % 8 {
            0 if !p.chunk.is_empty() => {
                let i = (a * 256 + b as usize) % p.chunk.len();
                p.chunk[i] ^= 1 << (b % 8);
            }
            1 => p.chunk.truncate(a * 16),
            2 => p.chunk.extend(std::iter::repeat_n(b, a)),
            3 if !p.path.is_empty() => {
                let i = a % p.path.len();
                p.path[i] = *blake3::hash(&[b]).as_bytes();
            }
            4 if !p.path.is_empty() => {
                p.path.remove(a % p.path.len());
            }
            5 => {
                let at = a % (p.path.len() + 1);
                p.path.insert(at, *blake3::hash(&[b]).as_bytes());
            }
            6 => index ^= 1 << (b % 64),
            7 => p.leaf_count ^= 1 << (b % 64),
            _ => {}
        }
    }
    let ok = verify(&id, index, &p);
    if ok && p.leaf_count == count {
        assert!(index < count);
        assert_eq!(p.chunk, chunk_of(data, index), "a changed proof verifies for chunk {index} of {count}");
    }
}

fn arbitrary(rest: &[u8]) {
    if rest.len() < 32 + 8 + 8 + 1 {
        return;
    }
    let id = ShardId(rest[..32].try_into().unwrap());
    let index = u64::from_le_bytes(rest[32..40].try_into().unwrap());
    let leaf_count = u64::from_le_bytes(rest[40..48].try_into().unwrap());
    let n = rest[48] as usize % 71;
    let mut rest = &rest[49..];
    let mut path = Vec::new();
    for _ in 0..n {
        let Some((h, more)) = rest.split_first_chunk::<32>() else { break };
        path.push(*h);
        rest = more;
    }
    let p = Proof { leaf_count, chunk: rest.to_vec(), path };
    if verify(&id, index, &p) && leaf_count == 1 {
        assert_eq!(root(&p.chunk), id);
    }
}

fuzz_target!(|data: &[u8]| {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let len = u16::from_le_bytes([byte(1), byte(2)]) as usize * 2;
    match byte(0) % 3 {
        0 => prove_all(&shard(len, byte(3))),
        1 => tamper(&shard(len, byte(3)), byte(4) as u64, data.get(5..).unwrap_or_default()),
        _ => arbitrary(data.get(1..).unwrap_or_default()),
    }
});
