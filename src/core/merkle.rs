//! Shard ids and proofs of retrievability: a shard's id is its BLAKE3 hash (what `b3sum`
//! prints). BLAKE3 is itself a Merkle tree, so one 4 KiB chunk (four BLAKE3 chunks, always a
//! whole subtree) is proved by the chaining values of its siblings up to the root. Its tree
//! splits like RFC 6962's: the left subtree holds the largest power of two of chunks smaller
//! than the whole. Chosen over a SHA-256 tree because every shard is hashed by its encoder,
//! its node and its downloader: BLAKE3 is 3.4× faster here (shared/LIMITS.md). Pure: no I/O.

use std::fmt;

use blake3::hazmat::{ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};
use serde::{Deserialize, Serialize};

/// Bytes per proved chunk. 4 KiB keeps an audit answer (chunk + path) under 8 KiB for any
/// shard below 2^64 bytes.
pub const CHUNK: usize = 4096;

/// Hostile proofs claiming more chunks than this (a 4 PiB shard) are refused outright.
const MAX_LEAVES: u64 = 1 << 40;

/// A 32-byte BLAKE3 hash: the id of a shard.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub [u8; 32]);

impl ShardId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<ShardId> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(ShardId(b))
    }
}

impl From<blake3::Hash> for ShardId {
    fn from(h: blake3::Hash) -> ShardId {
        ShardId(*h.as_bytes())
    }
}

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardId({})", self.to_hex())
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for ShardId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ShardId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ShardId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("a shard id is 64 hex digits"))
    }
}

/// One chunk of a shard with the chaining values of its siblings up to the root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// Number of chunks in the shard: fixes the tree's shape.
    pub leaf_count: u64,
    #[serde(with = "hex_bytes")]
    pub chunk: Vec<u8>,
    /// Sibling chaining values, leaf level first.
    #[serde(with = "hex_hashes")]
    pub path: Vec<[u8; 32]>,
}

/// Number of chunks (leaves) in a shard of `len` bytes; an empty shard has one empty leaf.
pub fn leaf_count(len: usize) -> u64 {
    len.div_ceil(CHUNK).max(1) as u64
}

/// The id of a shard.
pub fn root(shard: &[u8]) -> ShardId {
    blake3::hash(shard).into()
}

/// The largest power of two smaller than `n` (n ≥ 2): where the tree splits `n` leaves.
fn left_leaves(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The chaining value of the subtree over chunks `lo..hi` (a subtree of a tree of more than
/// one chunk).
fn subtree(shard: &[u8], lo: u64, hi: u64) -> ChainingValue {
    let (start, end) = (lo as usize * CHUNK, (hi as usize * CHUNK).min(shard.len()));
    blake3::Hasher::new().set_input_offset(start as u64).update(&shard[start..end]).finalize_non_root()
}

/// A proof for chunk `index`, or None when the shard has no such chunk.
pub fn prove(shard: &[u8], index: u64) -> Option<Proof> {
    let count = leaf_count(shard.len());
    if index >= count {
        return None;
    }
    // Down from the root: at each split the other side is a sibling.
    let (mut lo, mut hi) = (0, count);
    let mut path = Vec::new();
    while hi - lo > 1 {
        let split = lo + left_leaves(hi - lo);
        if index < split {
            path.push(subtree(shard, split, hi));
            hi = split;
        } else {
            path.push(subtree(shard, lo, split));
            lo = split;
        }
    }
    path.reverse();
    let start = index as usize * CHUNK;
    let chunk = shard.get(start..(start + CHUNK).min(shard.len())).unwrap_or(&[]).to_vec();
    Some(Proof { leaf_count: count, chunk, path })
}

/// Whether `proof` shows that chunk `index` belongs to the shard with id `root`. The tree's
/// shape comes from `proof.leaf_count`; an auditor, who knows the shard's length from the
/// manifest, must also check that it equals `leaf_count(len)`.
pub fn verify(root: &ShardId, index: u64, proof: &Proof) -> bool {
    let count = proof.leaf_count;
    if index >= count || count > MAX_LEAVES || proof.path.len() > 64 {
        return false;
    }
    if count == 1 {
        return proof.path.is_empty() && proof.chunk.len() <= CHUNK && self::root(&proof.chunk) == *root;
    }
    // Every chunk but the last is full; the last is not empty.
    let last = index + 1 == count;
    let len_ok = if last { (1..=CHUNK).contains(&proof.chunk.len()) } else { proof.chunk.len() == CHUNK };
    if !len_ok {
        return false;
    }
    let mut h = blake3::Hasher::new().set_input_offset(index * CHUNK as u64).update(&proof.chunk).finalize_non_root();
    // Up level by level: an odd last node is carried up, which gives the same shape as
    // splitting top-down; the merge at width 2 is the root.
    let (mut i, mut width) = (index, count);
    let mut path = proof.path.iter();
    let merge = |l: &ChainingValue, r: &ChainingValue, width: u64| match width {
        2 => *merge_subtrees_root(l, r, Mode::Hash).as_bytes(),
        _ => merge_subtrees_non_root(l, r, Mode::Hash),
    };
    while width > 1 {
        if i % 2 == 1 {
            let Some(s) = path.next() else { return false };
            h = merge(s, &h, width);
        } else if i + 1 < width {
            let Some(s) = path.next() else { return false };
            h = merge(&h, s, width);
        }
        i /= 2;
        width = width.div_ceil(2);
    }
    path.next().is_none() && h == root.0
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod hex_hashes {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for h in v {
            seq.serialize_element(&hex::encode(h))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| {
                let mut b = [0u8; 32];
                hex::decode_to_slice(s, &mut b).map_err(serde::de::Error::custom)?;
                Ok(b)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_plain_blake3() {
        // The id anyone can recompute with `b3sum`: BLAKE3("abc").
        assert_eq!(root(b"abc").to_hex(), "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
    }

    #[test]
    fn proof_size_bound() {
        // 2^40 chunks (4 PiB shard) still needs only 40 hashes.
        let p = prove(&vec![1u8; 100 * CHUNK], 99).unwrap();
        assert!(serde_json::to_vec(&p).unwrap().len() < 16 * 1024); // hex doubles bytes
        assert!(p.chunk.len() + 32 * 64 < 8 * 1024);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_chunk_proves(len in 0usize..70 * CHUNK, seed in any::<u8>()) {
            let shard: Vec<u8> = (0..len).map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 11) as u8 ^ seed).collect();
            let id = root(&shard);
            let count = leaf_count(len);
            prop_assert!(prove(&shard, count).is_none());
            for i in 0..count {
                let p = prove(&shard, i).unwrap();
                prop_assert!(verify(&id, i, &p));
                // Another index, another root, a modified chunk, a cut path: all fail.
                if count > 1 {
                    prop_assert!(!verify(&id, (i + 1) % count, &p));
                }
                let mut other = id;
                other.0[0] ^= 1;
                prop_assert!(!verify(&other, i, &p));
                let mut bad = p.clone();
                if bad.chunk.is_empty() { bad.chunk.push(0) } else { bad.chunk[0] ^= 0x80 }
                prop_assert!(!verify(&id, i, &bad));
                if !p.path.is_empty() {
                    let mut cut = p.clone();
                    cut.path.pop();
                    prop_assert!(!verify(&id, i, &cut));
                }
            }
        }
    }
}
