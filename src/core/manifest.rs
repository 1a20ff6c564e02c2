//! The manifest: everything needed to find, check and decrypt a file, given the password.
//! Versioned, with one canonical binary encoding (docs/FORMAT.md); the file id is the
//! SHA-256 of that encoding. File name and type are sealed inside, so whoever stores the
//! manifest (the coordinator) learns sizes and shard ids only. Pure: no I/O.

use std::fmt;

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use crate::core::crypto::{MAX_ITERATIONS, MIN_ITERATIONS, SALT_LEN, Salt, TAG_LEN};
use crate::core::erasure::Shape;
use crate::core::error::CodecError;
use crate::core::merkle::ShardId;

pub const MAGIC: &[u8; 4] = b"P2PS";
/// The version written. Version 3 lists segments in pages named by hash in the root;
/// version 2 (every segment inline) is still read.
pub const FORMAT_VERSION: u16 = 3;
pub const OLDEST_READABLE_VERSION: u16 = 2;
/// KDF algorithm code 1: PBKDF2-HMAC-SHA256.
pub const KDF_PBKDF2_SHA256: u8 = 1;
pub const MIN_SEGMENT_SIZE: u32 = 4096;
pub const MAX_SEGMENT_SIZE: u32 = 64 << 20;
/// Sealed metadata larger than this is refused (a name and a type fit easily).
pub const MAX_META_LEN: usize = 64 * 1024;
/// Segments per page of a version-3 segment table: a page of 8-of-20 segments is 640 KiB,
/// so a download starts after the root and one page, whatever the file size.
pub const PAGE_SEGMENTS: u32 = 1024;
/// Pages a root may name: 2^32 segments at most.
const MAX_PAGES: u64 = (u32::MAX as u64).div_ceil(PAGE_SEGMENTS as u64);

/// Metadata sealed under the file's metadata key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub name: String,
    pub content_type: String,
}

/// One segment: its sealed length and the ids of its n shards, in shard order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    pub sealed_len: u32,
    pub shard_ids: Vec<ShardId>,
}

/// Where a manifest keeps its segment table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentTable {
    /// Version 2: every segment, inside the manifest.
    Inline(Vec<SegmentEntry>),
    /// Version 3: the SHA-256 of each page of [`PAGE_SEGMENTS`] segments (the last may be
    /// shorter); the pages themselves are fetched and checked one at a time.
    Paged(Vec<[u8; 32]>),
}

/// A manifest: what the file id is the hash of. For version 3 this is a small root (the
/// parameters, the sealed metadata and the page hashes); for version 2 it holds every
/// segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub plaintext_size: u64,
    /// Bytes of a full sealed segment; each carries `segment_size − 16` plaintext bytes.
    pub segment_size: u32,
    pub shape: Shape,
    pub iterations: u32,
    pub salt: Salt,
    pub sealed_meta: Vec<u8>,
    pub table: SegmentTable,
}

/// The hex SHA-256 of a manifest's canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub [u8; 32]);

impl FileId {
    pub fn parse(s: &str) -> Result<FileId, CodecError> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b)
            .map_err(|_| CodecError::InvalidParams(format!("`{s}` is not a file id (64 hex digits)")))?;
        Ok(FileId(b))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({self})")
    }
}

/// Plaintext bytes a full segment carries.
pub fn plain_per_segment(segment_size: u32) -> u64 {
    (segment_size as usize - TAG_LEN) as u64
}

/// Segments of a file: at least one (an empty file still has one sealed, authenticated segment).
pub fn segment_count(plaintext_size: u64, segment_size: u32) -> u64 {
    plaintext_size.div_ceil(plain_per_segment(segment_size)).max(1)
}

pub fn check_segment_size(segment_size: u32) -> Result<(), CodecError> {
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
        return Err(CodecError::InvalidParams(format!(
            "segment size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes, got {segment_size}"
        )));
    }
    Ok(())
}

/// Pages of a version-3 table of `segments` segments.
pub fn page_count(segments: u64) -> u64 {
    segments.div_ceil(PAGE_SEGMENTS as u64)
}

/// The page a segment is listed in, and the segments a page lists.
pub fn page_of(segment: u32) -> u32 {
    segment / PAGE_SEGMENTS
}

/// The canonical bytes of a page: its entries, each a big-endian sealed length and the
/// shard ids.
pub fn encode_page(entries: &[SegmentEntry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(entries.iter().map(|e| 4 + 32 * e.shard_ids.len()).sum());
    for e in entries {
        encode_entry(&mut b, e);
    }
    b
}

fn encode_entry(b: &mut Vec<u8>, e: &SegmentEntry) {
    b.extend_from_slice(&e.sealed_len.to_be_bytes());
    for id in &e.shard_ids {
        b.extend_from_slice(&id.0);
    }
}

pub fn page_hash(page: &[u8]) -> [u8; 32] {
    digest(&SHA256, page).as_ref().try_into().expect("32 bytes")
}

/// Builds a version-3 segment table one segment at a time, keeping only the page being
/// filled: memory stays at one page whatever the file size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageBuilder {
    /// Hashes of the full pages so far.
    pub hashes: Vec<[u8; 32]>,
    /// The entries of the page being filled.
    pub current: Vec<SegmentEntry>,
}

impl PageBuilder {
    /// Segments added so far.
    pub fn segments(&self) -> u64 {
        self.hashes.len() as u64 * PAGE_SEGMENTS as u64 + self.current.len() as u64
    }

    pub fn push(&mut self, entry: SegmentEntry) {
        self.current.push(entry);
        if self.current.len() == PAGE_SEGMENTS as usize {
            self.hashes.push(page_hash(&encode_page(&self.current)));
            self.current.clear();
        }
    }

    /// The page hashes of the whole table.
    pub fn finish(mut self) -> Vec<[u8; 32]> {
        if !self.current.is_empty() {
            self.hashes.push(page_hash(&encode_page(&self.current)));
        }
        self.hashes
    }
}

impl Manifest {
    pub fn file_id(&self) -> FileId {
        FileId(digest(&SHA256, &self.to_bytes()).as_ref().try_into().expect("32 bytes"))
    }

    pub fn version(&self) -> u16 {
        match self.table {
            SegmentTable::Inline(_) => 2,
            SegmentTable::Paged(_) => 3,
        }
    }

    pub fn segment_count(&self) -> u32 {
        segment_count(self.plaintext_size, self.segment_size) as u32
    }

    pub fn page_count(&self) -> u32 {
        match &self.table {
            SegmentTable::Inline(_) => page_count(self.segment_count() as u64) as u32,
            SegmentTable::Paged(h) => h.len() as u32,
        }
    }

    /// The segments page `p` lists.
    pub fn page_range(&self, p: u32) -> std::ops::Range<u32> {
        let first = p.saturating_mul(PAGE_SEGMENTS).min(self.segment_count());
        first..first.saturating_add(PAGE_SEGMENTS).min(self.segment_count())
    }

    /// Sealed length segment `i` must have, from the plaintext size alone.
    pub fn expected_sealed_len(&self, i: u32) -> u32 {
        let per = plain_per_segment(self.segment_size);
        let plain = if i + 1 == self.segment_count() { self.plaintext_size - per * i as u64 } else { per };
        (plain + TAG_LEN as u64) as u32
    }

    /// The length of each shard of segment `i`.
    pub fn shard_len(&self, segment: u32) -> usize {
        self.shape.shard_len(self.expected_sealed_len(segment) as usize)
    }

    /// Page `p` of the table: for version 2 from the manifest itself; for version 3 from
    /// `bytes` (as fetched from anyone), checked against the page's hash and the file's
    /// sizes.
    pub fn open_page(&self, p: u32, bytes: Option<&[u8]>) -> Result<Vec<SegmentEntry>, CodecError> {
        let range = self.page_range(p);
        if range.is_empty() {
            return Err(CodecError::Malformed(format!("the file has {} pages, not {}", self.page_count(), p + 1)));
        }
        match (&self.table, bytes) {
            (SegmentTable::Inline(all), _) => Ok(all[range.start as usize..range.end as usize].to_vec()),
            (SegmentTable::Paged(hashes), Some(b)) => {
                if page_hash(b) != hashes[p as usize] {
                    return Err(CodecError::Malformed(format!("page {p} does not match the file id")));
                }
                let mut r = Reader(b);
                let entries = self.read_entries(&mut r, range)?;
                r.end()?;
                Ok(entries)
            }
            (SegmentTable::Paged(_), None) => Err(CodecError::Malformed(format!("page {p} is needed"))),
        }
    }

    fn read_entries(&self, r: &mut Reader, range: std::ops::Range<u32>) -> Result<Vec<SegmentEntry>, CodecError> {
        range
            .map(|i| {
                let sealed_len = r.u32()?;
                let want = self.expected_sealed_len(i);
                if sealed_len != want {
                    return Err(CodecError::Malformed(format!(
                        "segment {i} is listed as {sealed_len} sealed bytes, expected {want}"
                    )));
                }
                let shard_ids = (0..self.shape.n)
                    .map(|_| Ok(ShardId(r.take(32)?.try_into().expect("32 bytes"))))
                    .collect::<Result<_, CodecError>>()?;
                Ok(SegmentEntry { sealed_len, shard_ids })
            })
            .collect()
    }

    /// The canonical encoding: big-endian integers, fields in this fixed order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128 + self.sealed_meta.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.version().to_be_bytes());
        b.extend_from_slice(&self.plaintext_size.to_be_bytes());
        b.extend_from_slice(&self.segment_size.to_be_bytes());
        b.push(self.shape.k);
        b.push(self.shape.n);
        b.push(KDF_PBKDF2_SHA256);
        b.extend_from_slice(&self.iterations.to_be_bytes());
        b.extend_from_slice(&self.salt.0);
        b.extend_from_slice(&(self.sealed_meta.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.sealed_meta);
        b.extend_from_slice(&self.segment_count().to_be_bytes());
        match &self.table {
            SegmentTable::Inline(all) => {
                for e in all {
                    encode_entry(&mut b, e);
                }
            }
            SegmentTable::Paged(hashes) => {
                b.extend_from_slice(&PAGE_SEGMENTS.to_be_bytes());
                for h in hashes {
                    b.extend_from_slice(h);
                }
            }
        }
        b
    }

    /// Parses and checks a canonical encoding; anything inconsistent is refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, CodecError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(CodecError::Malformed("not a p2pstore manifest (bad magic)".into()));
        }
        let version = r.u16()?;
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(CodecError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
        }
        let plaintext_size = r.u64()?;
        let segment_size = r.u32()?;
        check_segment_size(segment_size).map_err(|e| CodecError::Malformed(e.to_string()))?;
        let (k, n) = (r.u8()?, r.u8()?);
        let shape = Shape::new(k, n).map_err(|e| CodecError::Malformed(e.to_string()))?;
        let kdf = r.u8()?;
        if kdf != KDF_PBKDF2_SHA256 {
            return Err(CodecError::Malformed(format!("unknown key derivation algorithm {kdf}")));
        }
        let iterations = r.u32()?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(CodecError::Malformed(format!("PBKDF2 iteration count {iterations} out of range")));
        }
        let salt = Salt(r.take(SALT_LEN)?.try_into().expect("SALT_LEN bytes"));
        let meta_len = r.u32()? as usize;
        if !(TAG_LEN..=MAX_META_LEN).contains(&meta_len) {
            return Err(CodecError::Malformed(format!("sealed metadata of {meta_len} bytes")));
        }
        let sealed_meta = r.take(meta_len)?.to_vec();
        let count = r.u32()? as u64;
        let expected = segment_count(plaintext_size, segment_size);
        if count != expected {
            return Err(CodecError::Malformed(format!(
                "{count} segments listed, but a {plaintext_size}-byte file has {expected}"
            )));
        }
        let mut m = Manifest {
            plaintext_size,
            segment_size,
            shape,
            iterations,
            salt,
            sealed_meta,
            table: SegmentTable::Paged(Vec::new()),
        };
        if version == 2 {
            let entry = 4 + 32 * n as u64;
            if r.0.len() as u64 != count * entry {
                return Err(CodecError::Malformed(format!(
                    "segment table is {} bytes, expected {}",
                    r.0.len(),
                    count * entry
                )));
            }
            m.table = SegmentTable::Inline(m.read_entries(&mut r, 0..count as u32)?);
        } else {
            let per_page = r.u32()?;
            if per_page != PAGE_SEGMENTS {
                return Err(CodecError::Malformed(format!("pages of {per_page} segments (expected {PAGE_SEGMENTS})")));
            }
            let pages = page_count(count);
            debug_assert!(pages <= MAX_PAGES);
            if r.0.len() as u64 != pages * 32 {
                return Err(CodecError::Malformed(format!(
                    "{} bytes of page hashes, expected {}",
                    r.0.len(),
                    pages * 32
                )));
            }
            m.table = SegmentTable::Paged(
                (0..pages).map(|_| Ok(r.take(32)?.try_into().expect("32"))).collect::<Result<_, CodecError>>()?,
            );
        }
        r.end()?;
        Ok(m)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Malformed("truncated".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn end(&self) -> Result<(), CodecError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(CodecError::Malformed(format!("{n} bytes after the end"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest of `plaintext_size` bytes in 4 KiB segments, with its entries.
    fn sample(plaintext_size: u64) -> (Manifest, Vec<SegmentEntry>) {
        let segment_size = 4096;
        let count = segment_count(plaintext_size, segment_size) as u32;
        let mut m = Manifest {
            plaintext_size,
            segment_size,
            shape: Shape::new(2, 3).unwrap(),
            iterations: MIN_ITERATIONS,
            salt: Salt([7; 16]),
            sealed_meta: vec![1; 20],
            table: SegmentTable::Paged(Vec::new()),
        };
        let entries: Vec<SegmentEntry> = (0..count)
            .map(|i| SegmentEntry {
                sealed_len: m.expected_sealed_len(i),
                shard_ids: (0..3u8).map(|j| ShardId([(i % 251) as u8 ^ j; 32])).collect(),
            })
            .collect();
        let mut pages = PageBuilder::default();
        entries.iter().cloned().for_each(|e| pages.push(e));
        m.table = SegmentTable::Paged(pages.finish());
        (m, entries)
    }

    fn pages(m: &Manifest, entries: &[SegmentEntry]) -> Vec<Vec<u8>> {
        (0..m.page_count())
            .map(|p| encode_page(&entries[m.page_range(p).start as usize..m.page_range(p).end as usize]))
            .collect()
    }

    #[test]
    fn round_trip_and_id() {
        for size in [0, 1, 4080, 4081, 3 * 4080 + 5, 1024 * 4080, 1024 * 4080 + 1, 2500 * 4080] {
            let (m, entries) = sample(size);
            let b = m.to_bytes();
            assert_eq!(Manifest::from_bytes(&b).unwrap(), m);
            assert_eq!(m.file_id(), Manifest::from_bytes(&b).unwrap().file_id());
            assert_eq!(FileId::parse(&m.file_id().to_string()).unwrap(), m.file_id());
            // The root stays small whatever the size; the pages give back every entry.
            assert!(b.len() <= 128 + 32 * m.page_count() as usize);
            let opened: Vec<SegmentEntry> = pages(&m, &entries)
                .iter()
                .enumerate()
                .flat_map(|(p, bytes)| m.open_page(p as u32, Some(bytes)).unwrap())
                .collect();
            assert_eq!(opened, entries);
        }
    }

    #[test]
    fn pages_are_checked_against_the_root() {
        let (m, entries) = sample(2500 * 4080);
        let pages = pages(&m, &entries);
        assert_eq!(pages.len(), 3);
        // Another page, a page from its wrong place, a cut or extended page: all refused.
        assert!(m.open_page(0, Some(&pages[1])).is_err());
        let mut flipped = pages[2].clone();
        flipped[40] ^= 1;
        assert!(m.open_page(2, Some(&flipped)).is_err());
        assert!(m.open_page(2, Some(&pages[2][..pages[2].len() - 1])).is_err());
        assert!(m.open_page(3, Some(&pages[2])).is_err());
        assert!(m.open_page(1, None).is_err());
        // A page that hashes right but lists a wrong length cannot exist in a valid root.
        let (mut bad, mut e) = (m.clone(), entries.clone());
        e[5].sealed_len -= 1;
        let mut b = PageBuilder::default();
        e.iter().cloned().for_each(|x| b.push(x));
        bad.table = SegmentTable::Paged(b.finish());
        assert!(bad.open_page(0, Some(&encode_page(&e[..1024]))).is_err());
    }

    #[test]
    fn version_2_is_still_read() {
        let (mut m, entries) = sample(3 * 4080 + 5);
        m.table = SegmentTable::Inline(entries.clone());
        let b = m.to_bytes();
        assert_eq!(u16::from_be_bytes([b[4], b[5]]), 2);
        let back = Manifest::from_bytes(&b).unwrap();
        assert_eq!(back.version(), 2);
        assert_eq!(back.open_page(0, None).unwrap(), entries);
        let mut wrong_len = m.clone();
        if let SegmentTable::Inline(e) = &mut wrong_len.table {
            e[0].sealed_len -= 1;
        }
        assert!(Manifest::from_bytes(&wrong_len.to_bytes()).is_err());
        let mut dropped = m;
        if let SegmentTable::Inline(e) = &mut dropped.table {
            e.pop();
        }
        assert!(Manifest::from_bytes(&dropped.to_bytes()).is_err());
    }

    #[test]
    fn refuses_inconsistent_or_truncated() {
        let (m, _) = sample(10_000);
        let b = m.to_bytes();
        for cut in [0, 3, 10, 40, b.len() - 1] {
            assert!(matches!(Manifest::from_bytes(&b[..cut]), Err(CodecError::Malformed(_))), "cut {cut}");
        }
        let mut extra = b.clone();
        extra.push(0);
        assert!(Manifest::from_bytes(&extra).is_err());

        // Version 1 (SHA-256 shard ids) and a future version are both refused by name.
        for version in [1, FORMAT_VERSION + 1] {
            let mut other = b.clone();
            other[4..6].copy_from_slice(&version.to_be_bytes());
            let r = Manifest::from_bytes(&other);
            assert!(matches!(r, Err(CodecError::UnsupportedVersion { found, .. }) if found == version));
        }

        // A page hash dropped or added no longer matches the plaintext size.
        let mut dropped = m.clone();
        if let SegmentTable::Paged(h) = &mut dropped.table {
            h.push([0; 32]);
        }
        assert!(Manifest::from_bytes(&dropped.to_bytes()).is_err());
        let mut weak = m.clone();
        weak.iterations = 1000;
        assert!(Manifest::from_bytes(&weak.to_bytes()).is_err());
    }

    #[test]
    fn file_id_parse_errors() {
        assert!(FileId::parse("xyz").is_err());
        assert!(FileId::parse(&"a".repeat(63)).is_err());
    }
}
