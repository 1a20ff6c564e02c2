//! The streaming file codec: plaintext → sealed segments → shards with ids (and back), one
//! segment at a time so memory stays bounded by a few segments whatever the file size.
//! The network client drives it; it does no networking itself.

use std::io::{self, Read};

use bytes::Bytes;
use rayon::prelude::*;

use crate::core::crypto::{DEFAULT_ITERATIONS, FileKeys, Salt, Secret, TAG_LEN};
use crate::core::erasure::{self, Shape};
use crate::core::error::CodecError;
use crate::core::manifest::{
    FileMeta, MAX_META_LEN, Manifest, PageBuilder, SegmentEntry, SegmentTable, check_segment_size, plain_per_segment,
};
use crate::core::merkle::{self, ShardId};
use crate::sys::pool::Buf;

/// Default sealed segment size: 8 MiB. Measured here (docs/ARCHITECTURE.md, README), it is
/// the fastest end to end: 1 MiB segments multiply per-shard costs on nodes, 32 MiB ones
/// fall out of cache in Reed-Solomon coding and cost memory.
pub const DEFAULT_SEGMENT_SIZE: u32 = 8 << 20;

/// How a file is encoded.
#[derive(Clone, Copy, Debug)]
pub struct EncodeParams {
    pub shape: Shape,
    pub segment_size: u32,
    pub iterations: u32,
}

impl Default for EncodeParams {
    fn default() -> Self {
        EncodeParams {
            shape: Shape { k: 8, n: 20 },
            segment_size: DEFAULT_SEGMENT_SIZE,
            iterations: DEFAULT_ITERATIONS,
        }
    }
}

/// One encoded segment: its n shards (the first k are slices of the sealed segment) and ids.
pub struct EncodedSegment {
    pub index: u32,
    pub sealed_len: u32,
    pub shard_len: usize,
    data: Bytes,
    recovery: Bytes,
    pub ids: Vec<ShardId>,
}

impl EncodedSegment {
    /// Erasure-codes one sealed segment (ciphertext and tag) into shards with ids. This is
    /// all that needs no key: the coordinator does it for browsers, which seal themselves.
    pub fn code(index: u32, mut sealed: Buf, shape: Shape, rs: &mut erasure::Encoder) -> EncodedSegment {
        let sealed_len = sealed.len();
        let shard_len = shape.shard_len(sealed_len);
        sealed.resize(shape.k() * shard_len, 0);
        // Hash the data shards while Reed-Solomon computes the recovery shards, so both
        // cores are busy.
        let (recovery, mut ids) = rayon::join(
            || rs.recovery(&sealed, shard_len),
            || shard_ids(&sealed.chunks_exact(shard_len).collect::<Vec<_>>()),
        );
        ids.extend(shard_ids(&recovery.chunks_exact(shard_len).collect::<Vec<_>>()));
        let (data, recovery) = (sealed.into_bytes(), recovery.into_bytes());
        EncodedSegment { index, sealed_len: sealed_len as u32, shard_len, data, recovery, ids }
    }

    /// The manifest's row for this segment.
    pub fn entry(&self) -> SegmentEntry {
        SegmentEntry { sealed_len: self.sealed_len, shard_ids: self.ids.clone() }
    }

    pub fn shard(&self, i: usize) -> Bytes {
        let k = self.data.len() / self.shard_len;
        let (buf, j) = if i < k { (&self.data, i) } else { (&self.recovery, i - k) };
        buf.slice(j * self.shard_len..(j + 1) * self.shard_len)
    }

    /// The sealed segment (ciphertext and tag), before padding and coding.
    pub fn sealed(&self) -> Bytes {
        self.data.slice(..self.sealed_len as usize)
    }

    pub fn shard_count(&self) -> usize {
        self.ids.len()
    }
}

/// Shards' ids, hashed on all cores.
pub fn shard_ids(shards: &[&[u8]]) -> Vec<ShardId> {
    shards.par_iter().map(|s| merkle::root(s)).collect()
}

/// Reads plaintext and yields encoded segments; `finish` then gives the manifest.
pub struct Encoder<R> {
    reader: R,
    keys: FileKeys,
    params: EncodeParams,
    rs: erasure::Encoder,
    lookahead: Option<Buf>,
    done: bool,
    plaintext_size: u64,
    pages: PageBuilder,
}

impl<R: Read> Encoder<R> {
    pub fn new(reader: R, password: &[u8], params: EncodeParams, salt: Salt) -> Result<Self, CodecError> {
        Self::with_keys(reader, FileKeys::derive(password, salt, params.iterations)?, params)
    }

    /// An encoder sealing with `keys` (made for `params.iterations`).
    pub fn with_keys(reader: R, keys: FileKeys, params: EncodeParams) -> Result<Self, CodecError> {
        Shape::new(params.shape.k, params.shape.n)?;
        check_segment_size(params.segment_size)?;
        Ok(Encoder {
            reader,
            keys,
            params,
            rs: erasure::Encoder::new(params.shape),
            lookahead: None,
            done: false,
            plaintext_size: 0,
            pages: PageBuilder::default(),
        })
    }

    /// Continues an interrupted encoding after the segments `pages` holds, the reader being
    /// positioned just after their plaintext. The segments that follow come out exactly as
    /// they would have (a segment's sealing depends on its index and bytes only).
    pub fn resume(mut self, pages: PageBuilder) -> Self {
        self.plaintext_size = pages.segments() * plain_per_segment(self.params.segment_size);
        self.pages = pages;
        self
    }

    /// The segment table so far: what a resumed encoding starts from.
    pub fn pages(&self) -> &PageBuilder {
        &self.pages
    }

    pub fn keys(&self) -> &FileKeys {
        &self.keys
    }

    /// Reads up to one segment of plaintext, into a buffer with room for tag and padding.
    fn read_block(&mut self) -> Result<Buf, CodecError> {
        let plain = plain_per_segment(self.params.segment_size) as usize;
        let cap = self.params.shape.k() * self.params.shape.shard_len(self.params.segment_size as usize);
        let mut buf = Buf::with_len(cap);
        let mut filled = 0;
        while filled < plain {
            match self.reader.read(&mut buf[filled..plain]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CodecError::Read(e)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    pub fn next_segment(&mut self) -> Result<Option<EncodedSegment>, CodecError> {
        if self.done {
            return Ok(None);
        }
        let mut buf = match self.lookahead.take() {
            Some(b) => b,
            None => self.read_block()?,
        };
        // A segment is last when it is short, or when nothing follows it.
        let last = if (buf.len() as u64) < plain_per_segment(self.params.segment_size) {
            true
        } else {
            let next = self.read_block()?;
            let end = next.is_empty();
            self.lookahead = (!end).then_some(next);
            end
        };
        let index = u32::try_from(self.pages.segments())
            .map_err(|_| CodecError::InvalidParams("file too large: over 2^32 segments".into()))?;
        self.plaintext_size += buf.len() as u64;
        let len = buf.len();
        buf.resize(len + TAG_LEN, 0);
        self.keys.seal_segment(index, last, &mut buf);
        let seg = EncodedSegment::code(index, buf, self.params.shape, &mut self.rs);
        self.pages.push(seg.entry());
        self.done = last;
        Ok(Some(seg))
    }

    /// The manifest of everything encoded; call after `next_segment` returned None.
    pub fn finish(self, meta: &FileMeta) -> Result<Manifest, CodecError> {
        assert!(self.done, "finish() called before the last segment was encoded");
        let plain = serde_json::to_vec(meta).expect("FileMeta serializes");
        if plain.len() + TAG_LEN > MAX_META_LEN {
            return Err(CodecError::InvalidParams("file name or content type too long".into()));
        }
        Ok(Manifest {
            plaintext_size: self.plaintext_size,
            segment_size: self.params.segment_size,
            shape: self.params.shape,
            iterations: self.params.iterations,
            salt: self.keys.salt(),
            sealed_meta: self.keys.seal_metadata(&plain),
            table: SegmentTable::Paged(self.pages.finish()),
        })
    }
}

/// A shard whose bytes hash to the id the manifest lists for it: the only kind decoding takes.
#[derive(Clone, Debug)]
pub struct VerifiedShard {
    index: usize,
    bytes: Bytes,
}

impl VerifiedShard {
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl Manifest {
    /// The sealed segment `index` (still encrypted) from at least k verified shards of it.
    pub fn sealed_segment(&self, index: u32, shards: &[VerifiedShard]) -> Result<Buf, CodecError> {
        let k = self.shape.k();
        let mut seen = vec![false; self.shape.n()];
        let distinct: Vec<(usize, &[u8])> = shards
            .iter()
            .filter(|s| !std::mem::replace(&mut seen[s.index], true))
            .map(|s| (s.index, &s.bytes[..]))
            .take(k)
            .collect();
        if distinct.len() < k {
            return Err(CodecError::NotEnoughShards { segment: index, have: distinct.len(), need: k });
        }
        let mut buf = erasure::reconstruct(self.shape, self.shard_len(index), &distinct)
            .map_err(|source| CodecError::Erasure { segment: index, source })?;
        buf.truncate(self.expected_sealed_len(index) as usize);
        Ok(buf)
    }

    /// Checks shard `index` of segment `segment` (whose table entry is `entry`) against its
    /// id and length.
    pub fn verify_shard(
        &self,
        segment: u32,
        entry: &SegmentEntry,
        index: usize,
        bytes: Bytes,
    ) -> Result<VerifiedShard, CodecError> {
        match entry.shard_ids.get(index) {
            Some(id) if bytes.len() == self.shard_len(segment) && merkle::root(&bytes) == *id => {
                Ok(VerifiedShard { index, bytes })
            }
            _ => Err(CodecError::ShardMismatch { segment, index }),
        }
    }
}

/// Opens a file's segments with the password. Creating one checks the password (the sealed
/// metadata must open) before any shard is fetched.
pub struct Decoder {
    manifest: Manifest,
    keys: FileKeys,
    meta: FileMeta,
}

impl Decoder {
    pub fn new(manifest: Manifest, password: &[u8]) -> Result<Decoder, CodecError> {
        Decoder::with_secret(manifest, &Secret::from(password))
    }

    /// A decoder from the password or the key stretched from it.
    pub fn with_secret(manifest: Manifest, secret: &Secret) -> Result<Decoder, CodecError> {
        let keys = FileKeys::from_secret(secret, manifest.salt, manifest.iterations)?;
        let plain = keys.open_metadata(&manifest.sealed_meta)?;
        let meta = serde_json::from_slice(&plain)
            .map_err(|e| CodecError::Malformed(format!("sealed metadata is not valid: {e}")))?;
        Ok(Decoder { manifest, keys, meta })
    }

    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The plaintext of segment `index` from at least k verified shards of it.
    pub fn decode_segment(&self, index: u32, shards: &[VerifiedShard]) -> Result<Buf, CodecError> {
        let mut buf = self.manifest.sealed_segment(index, shards)?;
        let last = index + 1 == self.manifest.segment_count();
        let len = self.keys.open_segment(index, last, &mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // indices name shards and segments here
mod tests {
    use super::*;
    use crate::core::crypto::MIN_ITERATIONS;
    use proptest::prelude::*;

    fn params(k: u8, n: u8) -> EncodeParams {
        EncodeParams { shape: Shape::new(k, n).unwrap(), segment_size: 4096, iterations: MIN_ITERATIONS }
    }

    fn meta() -> FileMeta {
        FileMeta { name: "a.bin".into(), content_type: "application/octet-stream".into() }
    }

    /// The manifest, the segment table and every segment's shards.
    type Encoded = (Manifest, Vec<SegmentEntry>, Vec<Vec<Bytes>>);

    fn encode_all(data: &[u8], p: EncodeParams, salt: Salt) -> Encoded {
        let mut enc = Encoder::new(data, b"pw", p, salt).unwrap();
        let (mut entries, mut shards) = (Vec::new(), Vec::new());
        while let Some(s) = enc.next_segment().unwrap() {
            assert_eq!(s.index as usize, shards.len());
            entries.push(s.entry());
            shards.push((0..s.shard_count()).map(|i| s.shard(i)).collect());
        }
        (enc.finish(&meta()).unwrap(), entries, shards)
    }

    fn verified(m: &Manifest, e: &[SegmentEntry], seg: u32, shards: &[Bytes], pick: &[usize]) -> Vec<VerifiedShard> {
        pick.iter().map(|&i| m.verify_shard(seg, &e[seg as usize], i, shards[i].clone()).unwrap()).collect()
    }

    #[test]
    fn tail_zeros_and_exact_sizes_survive() {
        let per = 4096 - 16;
        for size in [0, 1, per - 1, per, per + 1, 3 * per] {
            let mut data = vec![0xabu8; size];
            if size > 2 {
                data[size - 2..].fill(0);
            }
            let (m, e, shards) = encode_all(&data, params(3, 5), Salt([1; 16]));
            assert_eq!(m.segment_count() as usize, size.div_ceil(per).max(1));
            assert_eq!(m.open_page(0, Some(&crate::core::manifest::encode_page(&e))).unwrap(), e);
            let d = Decoder::new(Manifest::from_bytes(&m.to_bytes()).unwrap(), b"pw").unwrap();
            assert_eq!(d.meta(), &meta());
            let mut out = Vec::new();
            for i in 0..m.segment_count() {
                out.extend_from_slice(
                    &d.decode_segment(i, &verified(&m, &e, i, &shards[i as usize], &[4, 1, 3])).unwrap(),
                );
            }
            assert_eq!(out, data, "size {size}");
        }
    }

    #[test]
    fn tampering_is_detected() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let (m, e, shards) = encode_all(&data, params(2, 4), Salt([2; 16]));
        let d = Decoder::new(m.clone(), b"pw").unwrap();

        // One flipped bit in any shard: that shard fails its id.
        for seg in 0..m.segment_count() {
            for i in 0..4 {
                let mut b = shards[seg as usize][i].to_vec();
                let bit = (seg as usize * 13 + i * 7) % (b.len() * 8);
                b[bit / 8] ^= 1 << (bit % 8);
                assert!(matches!(
                    m.verify_shard(seg, &e[seg as usize], i, Bytes::from(b)),
                    Err(CodecError::ShardMismatch { segment, index }) if segment == seg && index == i
                ));
            }
        }
        // Shards of another segment (swapped segments) do not verify as this one's.
        assert!(m.verify_shard(0, &e[0], 0, shards[1][0].clone()).is_err());
        // Fewer than k: a clear error naming the segment and the counts.
        let one = verified(&m, &e, 1, &shards[1], &[3]);
        assert!(matches!(d.decode_segment(1, &one), Err(CodecError::NotEnoughShards { segment: 1, have: 1, need: 2 })));
        // The same shard twice counts once.
        let dup = verified(&m, &e, 1, &shards[1], &[3, 3]);
        assert!(matches!(d.decode_segment(1, &dup), Err(CodecError::NotEnoughShards { have: 1, .. })));
        // Wrong password: refused before any segment is touched.
        assert!(matches!(Decoder::new(m.clone(), b"nope"), Err(CodecError::WrongPasswordOrTampered)));

        // Segments of another upload of the same bytes and password, grafted into this
        // table (a page that does not match the root is refused before; this is the
        // second line of defence).
        let (_, e2, shards2) = encode_all(&data, params(2, 4), Salt([3; 16]));
        let mut mixed = e.clone();
        mixed[1] = e2[1].clone();
        let v = verified(&m, &mixed, 1, &shards2[1], &[0, 1]);
        assert!(matches!(d.decode_segment(1, &v), Err(CodecError::SegmentAuth { segment: 1 })));

        // Swapped segments (table rows exchanged, lengths equal): authentication fails.
        let mut swapped = e.clone();
        swapped.swap(0, 1);
        let v = verified(&m, &swapped, 0, &shards[1], &[0, 1]);
        assert!(matches!(d.decode_segment(0, &v), Err(CodecError::SegmentAuth { segment: 0 })));
    }

    #[test]
    fn dropped_last_segment_is_detected() {
        // A file cut at a segment boundary: the manifest claims fewer bytes and one segment
        // less, so the old second-to-last segment must open as "last" and cannot.
        let per = 4096 - 16;
        let data = vec![5u8; 2 * per];
        let (m, e, shards) = encode_all(&data, params(2, 3), Salt([4; 16]));
        let mut cut = m.clone();
        cut.plaintext_size = per as u64;
        cut.table =
            SegmentTable::Paged(vec![crate::core::manifest::page_hash(&crate::core::manifest::encode_page(&e[..1]))]);
        let d = Decoder::new(Manifest::from_bytes(&cut.to_bytes()).unwrap(), b"pw").unwrap();
        let v = verified(&cut, &e, 0, &shards[0], &[0, 1]);
        assert!(matches!(d.decode_segment(0, &v), Err(CodecError::SegmentAuth { segment: 0 })));
    }

    #[test]
    fn a_resumed_encoding_is_the_uninterrupted_one() {
        let per = 4096 - 16;
        let data: Vec<u8> = (0..7 * per + 100).map(|i| (i * 31 % 251) as u8).collect();
        let (m, e, _) = encode_all(&data, params(2, 3), Salt([5; 16]));
        for stop in [1usize, 3, 7] {
            let mut first = Encoder::new(&data[..], b"pw", params(2, 3), Salt([5; 16])).unwrap();
            for _ in 0..stop {
                first.next_segment().unwrap();
            }
            let pages = first.pages().clone();
            let mut rest = Encoder::new(&data[stop * per..], b"pw", params(2, 3), Salt([5; 16])).unwrap().resume(pages);
            let mut tail = Vec::new();
            while let Some(seg) = rest.next_segment().unwrap() {
                tail.push((seg.index, seg.entry()));
            }
            assert_eq!(tail.first().map(|t| t.0), Some(stop as u32));
            assert!(tail.iter().all(|(i, entry)| e[*i as usize] == *entry));
            assert_eq!(rest.finish(&meta()).unwrap().file_id(), m.file_id(), "resumed after {stop}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_k_of_n_round_trip(size in 0usize..20_000, k in 1u8..6, extra in 1u8..6, seed in any::<u64>()) {
            let n = k + extra;
            let data: Vec<u8> = (0..size).map(|i| (i as u64).wrapping_mul(seed | 1).to_le_bytes()[3]).collect();
            let (m, e, shards) = encode_all(&data, params(k, n), Salt([9; 16]));
            let d = Decoder::new(m.clone(), b"pw").unwrap();
            let mut out = Vec::new();
            for seg in 0..m.segment_count() as usize {
                // A pseudo-random choice of k distinct shards for each segment.
                let mut idx: Vec<usize> = (0..n as usize).collect();
                let rot = (seed as usize).wrapping_add(seg * 7) % n as usize;
                idx.rotate_left(rot);
                if seed % 2 == 0 { idx.reverse() }
                let v = verified(&m, &e, seg as u32, &shards[seg], &idx[..k as usize]);
                out.extend_from_slice(&d.decode_segment(seg as u32, &v).unwrap());
                let short = verified(&m, &e, seg as u32, &shards[seg], &idx[..k as usize - 1]);
                let is_not_enough = matches!(d.decode_segment(seg as u32, &short), Err(CodecError::NotEnoughShards { .. }));
                prop_assert!(is_not_enough);
            }
            prop_assert_eq!(out, data);
        }
    }
}
