//! Shard ids and proofs of retrievability: a shard's id is the root of a binary SHA-256
//! Merkle tree over its 4 KiB chunks, with the leaf/node domain separation of RFC 6962
//! (leaf = H(0x00 ‖ chunk), node = H(0x01 ‖ left ‖ right); an unpaired last node is carried
//! up a level). A proof of one chunk lets anyone check it against the id alone. Pure: no I/O.

use std::fmt;

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

/// Bytes per Merkle leaf. 4 KiB keeps per-leaf overhead under 3% of hashing time and an
/// audit answer (chunk + path) under 8 KiB for any shard below 2^64 bytes.
pub const CHUNK: usize = 4096;

/// A 32-byte Merkle root: the id of a shard.
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

/// One chunk of a shard with the sibling hashes from its leaf up to the root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// Number of chunks in the shard: fixes the tree's shape.
    pub leaf_count: u64,
    #[serde(with = "hex_bytes")]
    pub chunk: Vec<u8>,
    /// Sibling hashes, leaf level first.
    #[serde(with = "hex_hashes")]
    pub path: Vec<[u8; 32]>,
}

fn leaf_hash(chunk: &[u8]) -> [u8; 32] {
    let mut c = Context::new(&SHA256);
    c.update(&[0]);
    c.update(chunk);
    c.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut c = Context::new(&SHA256);
    c.update(&[1]);
    c.update(l);
    c.update(r);
    c.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn leaves(shard: &[u8]) -> Vec<[u8; 32]> {
    if shard.is_empty() {
        return vec![leaf_hash(&[])];
    }
    shard.chunks(CHUNK).map(leaf_hash).collect()
}

/// The next level up: pairs hashed, an odd last node carried unchanged.
fn parent_level(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level.chunks(2).map(|p| if p.len() == 2 { node_hash(&p[0], &p[1]) } else { p[0] }).collect()
}

/// Number of chunks (leaves) in a shard of `len` bytes; an empty shard has one empty leaf.
pub fn leaf_count(len: usize) -> u64 {
    len.div_ceil(CHUNK).max(1) as u64
}

/// The id of a shard.
pub fn root(shard: &[u8]) -> ShardId {
    let mut level = leaves(shard);
    while level.len() > 1 {
        level = parent_level(&level);
    }
    ShardId(level[0])
}

/// A proof for chunk `index`, or None when the shard has no such chunk.
pub fn prove(shard: &[u8], index: u64) -> Option<Proof> {
    let count = leaf_count(shard.len());
    if index >= count {
        return None;
    }
    let mut level = leaves(shard);
    let mut i = index as usize;
    let mut path = Vec::new();
    while level.len() > 1 {
        let sib = i ^ 1;
        if sib < level.len() {
            path.push(level[sib]);
        }
        level = parent_level(&level);
        i /= 2;
    }
    let start = index as usize * CHUNK;
    let chunk = shard.get(start..(start + CHUNK).min(shard.len())).unwrap_or(&[]).to_vec();
    Some(Proof { leaf_count: count, chunk, path })
}

/// Whether `proof` shows that chunk `index` belongs to the shard with id `root`. The tree's
/// shape comes from `proof.leaf_count`; an auditor, who knows the shard's length from the
/// manifest, must also check that it equals `leaf_count(len)`.
pub fn verify(root: &ShardId, index: u64, proof: &Proof) -> bool {
    if index >= proof.leaf_count || proof.path.len() > 64 {
        return false;
    }
    // Every chunk but the last is full; the last is non-empty unless the shard is.
    let last = index + 1 == proof.leaf_count;
    let len_ok = if last {
        proof.chunk.len() <= CHUNK && (proof.leaf_count == 1 || !proof.chunk.is_empty())
    } else {
        proof.chunk.len() == CHUNK
    };
    if !len_ok {
        return false;
    }
    let mut h = leaf_hash(&proof.chunk);
    let (mut i, mut width) = (index, proof.leaf_count);
    let mut path = proof.path.iter();
    while width > 1 {
        if i % 2 == 1 {
            let Some(s) = path.next() else { return false };
            h = node_hash(s, &h);
        } else if i + 1 < width {
            let Some(s) = path.next() else { return false };
            h = node_hash(&h, s);
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

    /// RFC 6962's recursive definition, to check the level-by-level construction against.
    fn mth(chunks: &[&[u8]]) -> [u8; 32] {
        match chunks.len() {
            0 => leaf_hash(&[]),
            1 => leaf_hash(chunks[0]),
            n => {
                // The largest power of two smaller than n.
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node_hash(&mth(&chunks[..k]), &mth(&chunks[k..]))
            }
        }
    }

    #[test]
    fn matches_rfc6962_definition() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * CHUNK + 7, 13 * CHUNK] {
            let shard: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let chunks: Vec<&[u8]> = shard.chunks(CHUNK).collect();
            assert_eq!(root(&shard).0, mth(&chunks), "len {len}");
        }
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
        fn every_chunk_proves(len in 0usize..20 * CHUNK, seed in any::<u8>()) {
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
