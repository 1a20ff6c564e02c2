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
pub const FORMAT_VERSION: u16 = 2;
/// KDF algorithm code 1: PBKDF2-HMAC-SHA256.
pub const KDF_PBKDF2_SHA256: u8 = 1;
pub const MIN_SEGMENT_SIZE: u32 = 4096;
pub const MAX_SEGMENT_SIZE: u32 = 64 << 20;
/// Sealed metadata larger than this is refused (a name and a type fit easily).
pub const MAX_META_LEN: usize = 64 * 1024;

/// Metadata sealed under the file's metadata key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub name: String,
    pub content_type: String,
}

/// One segment: its sealed length and the ids of its n shards, in shard order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentEntry {
    pub sealed_len: u32,
    pub shard_ids: Vec<ShardId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub plaintext_size: u64,
    /// Bytes of a full sealed segment; each carries `segment_size − 16` plaintext bytes.
    pub segment_size: u32,
    pub shape: Shape,
    pub iterations: u32,
    pub salt: Salt,
    pub sealed_meta: Vec<u8>,
    pub segments: Vec<SegmentEntry>,
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

impl Manifest {
    pub fn file_id(&self) -> FileId {
        FileId(digest(&SHA256, &self.to_bytes()).as_ref().try_into().expect("32 bytes"))
    }

    /// Sealed length segment `i` must have, from the plaintext size alone.
    fn expected_sealed_len(&self, i: usize) -> u64 {
        let per = plain_per_segment(self.segment_size);
        let plain = if i + 1 == self.segments.len() { self.plaintext_size - per * i as u64 } else { per };
        plain + TAG_LEN as u64
    }

    pub fn shard_len(&self, segment: usize) -> usize {
        self.shape.shard_len(self.segments[segment].sealed_len as usize)
    }

    /// The canonical encoding: big-endian integers, fields in this fixed order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.shape.n();
        let mut b = Vec::with_capacity(64 + self.sealed_meta.len() + self.segments.len() * (4 + 32 * n));
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        b.extend_from_slice(&self.plaintext_size.to_be_bytes());
        b.extend_from_slice(&self.segment_size.to_be_bytes());
        b.push(self.shape.k);
        b.push(self.shape.n);
        b.push(KDF_PBKDF2_SHA256);
        b.extend_from_slice(&self.iterations.to_be_bytes());
        b.extend_from_slice(&self.salt.0);
        b.extend_from_slice(&(self.sealed_meta.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.sealed_meta);
        b.extend_from_slice(&(self.segments.len() as u32).to_be_bytes());
        for s in &self.segments {
            b.extend_from_slice(&s.sealed_len.to_be_bytes());
            for id in &s.shard_ids {
                b.extend_from_slice(&id.0);
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
        if version != FORMAT_VERSION {
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
        let entry = 4 + 32 * n as usize;
        if r.0.len() as u64 != count * entry as u64 {
            return Err(CodecError::Malformed(format!(
                "segment table is {} bytes, expected {}",
                r.0.len(),
                count * entry as u64
            )));
        }
        let mut m = Manifest {
            plaintext_size,
            segment_size,
            shape,
            iterations,
            salt,
            sealed_meta,
            segments: Vec::with_capacity(count as usize),
        };
        for _ in 0..count {
            let sealed_len = r.u32()?;
            let shard_ids = (0..n)
                .map(|_| Ok(ShardId(r.take(32)?.try_into().expect("32 bytes"))))
                .collect::<Result<_, CodecError>>()?;
            m.segments.push(SegmentEntry { sealed_len, shard_ids });
        }
        for i in 0..m.segments.len() {
            let want = m.expected_sealed_len(i);
            if m.segments[i].sealed_len as u64 != want {
                return Err(CodecError::Malformed(format!(
                    "segment {i} is listed as {} sealed bytes, expected {want}",
                    m.segments[i].sealed_len
                )));
            }
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(plaintext_size: u64) -> Manifest {
        let segment_size = 4096;
        let count = segment_count(plaintext_size, segment_size) as usize;
        let mut m = Manifest {
            plaintext_size,
            segment_size,
            shape: Shape::new(2, 3).unwrap(),
            iterations: MIN_ITERATIONS,
            salt: Salt([7; 16]),
            sealed_meta: vec![1; 20],
            segments: vec![SegmentEntry { sealed_len: 4096, shard_ids: vec![ShardId([3; 32]); 3] }; count],
        };
        let last = m.expected_sealed_len(count - 1) as u32;
        m.segments[count - 1].sealed_len = last;
        m
    }

    #[test]
    fn round_trip_and_id() {
        for size in [0, 1, 4080, 4081, 3 * 4080 + 5] {
            let m = sample(size);
            let b = m.to_bytes();
            assert_eq!(Manifest::from_bytes(&b).unwrap(), m);
            assert_eq!(m.file_id(), Manifest::from_bytes(&b).unwrap().file_id());
            assert_eq!(FileId::parse(&m.file_id().to_string()).unwrap(), m.file_id());
        }
    }

    #[test]
    fn refuses_inconsistent_or_truncated() {
        let m = sample(10_000);
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

        // A dropped last segment no longer matches the plaintext size.
        let mut dropped = m.clone();
        dropped.segments.pop();
        assert!(Manifest::from_bytes(&dropped.to_bytes()).is_err());
        let mut wrong_len = m.clone();
        wrong_len.segments[0].sealed_len -= 1;
        assert!(Manifest::from_bytes(&wrong_len.to_bytes()).is_err());
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
