//! Password-based keys and segment sealing: PBKDF2 → HKDF subkeys → AES-256-GCM in the
//! STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015). Pure: no I/O.
//!
//! The byte-exact rules are in docs/FORMAT.md; a browser implementation must follow them.

use std::num::NonZeroU32;

use ring::aead::{self, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, pbkdf2};

use crate::core::error::CodecError;

/// Bytes of the random per-upload salt.
pub const SALT_LEN: usize = 16;
/// Bytes the AEAD tag adds to every sealed segment (and to the sealed metadata).
pub const TAG_LEN: usize = 16;
/// The smallest PBKDF2 iteration count p2pstore accepts, on upload or in a manifest.
pub const MIN_ITERATIONS: u32 = 100_000;
/// The default: OWASP's current advice for PBKDF2-HMAC-SHA256.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Above this a manifest is refused: deriving the key would take minutes (a cheap DoS).
pub const MAX_ITERATIONS: u32 = 50_000_000;

const INFO_SEGMENT: &[u8] = b"p2pstore/v1/segment-key";
const INFO_METADATA: &[u8] = b"p2pstore/v1/metadata-key";
const INFO_OWNER: &[u8] = b"p2pstore/v1/owner-token";

/// The per-upload random salt. It feeds PBKDF2, HKDF and every AEAD's associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Salt(pub [u8; SALT_LEN]);

impl Salt {
    pub fn random() -> Salt {
        let mut s = [0u8; SALT_LEN];
        SystemRandom::new().fill(&mut s).expect("the operating system's random generator failed");
        Salt(s)
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Salt> {
        let mut b = [0u8; SALT_LEN];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(Salt(b))
    }
}

/// What opens a file: its password, which PBKDF2 stretches on every use, or the key that
/// stretching made with the file's salt. A program that opens many files often keeps the
/// key, as secret as the password, so that PBKDF2 runs once per file instead of once per use.
/// A file no person ever opens (the S3 gateway's parts) needs no password at all: a random
/// key has full entropy, so there is nothing for stretching to protect ([`Secret::random_key`]).
#[derive(Clone)]
pub enum Secret {
    Password(Vec<u8>),
    Stretched { salt: Salt, key: [u8; 32] },
}

impl From<&[u8]> for Secret {
    fn from(password: &[u8]) -> Secret {
        Secret::Password(password.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for Secret {
    fn from(password: &[u8; N]) -> Secret {
        Secret::Password(password.to_vec())
    }
}

impl Secret {
    /// PBKDF2-HMAC-SHA256(password, salt, iterations): the key that opens a file sealed with
    /// `salt` by `password`, without stretching again.
    pub fn stretch(password: &[u8], salt: Salt, iterations: u32) -> Result<Secret, CodecError> {
        Ok(Secret::Stretched { salt, key: stretch(password, salt, iterations)? })
    }

    /// A fresh random key with a fresh salt, for a file only a program opens: it keeps the key
    /// and no password exists, so no PBKDF2 runs (17 ms a file, 2 CPU-s a GiB of 8 MiB parts).
    pub fn random_key() -> Secret {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).expect("the operating system's random generator failed");
        Secret::Stretched { salt: Salt::random(), key }
    }

    /// The salt a stretched key belongs to (a password fits any).
    pub fn salt(&self) -> Option<Salt> {
        match self {
            Secret::Password(_) => None,
            Secret::Stretched { salt, .. } => Some(*salt),
        }
    }
}

fn stretch(password: &[u8], salt: Salt, iterations: u32) -> Result<[u8; 32], CodecError> {
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(CodecError::InvalidParams(format!(
            "PBKDF2 iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}, got {iterations}"
        )));
    }
    let mut key = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations).expect("checked above"),
        &salt.0,
        password,
        &mut key,
    );
    Ok(key)
}

/// The keys of one upload, derived from the password and the upload's salt.
pub struct FileKeys {
    salt: Salt,
    segment: LessSafeKey,
    metadata: LessSafeKey,
    owner_token: [u8; 32],
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl FileKeys {
    /// PBKDF2-HMAC-SHA256(password, salt, iterations) → 32-byte master key, then
    /// HKDF-SHA256(salt = upload salt, ikm = master) expanded under three labels.
    pub fn derive(password: &[u8], salt: Salt, iterations: u32) -> Result<FileKeys, CodecError> {
        Ok(FileKeys::expand(&stretch(password, salt, iterations)?, salt))
    }

    /// The keys of the file sealed with `salt` and `iterations`, from `secret`. A stretched
    /// key of another salt opens nothing.
    pub fn from_secret(secret: &Secret, salt: Salt, iterations: u32) -> Result<FileKeys, CodecError> {
        match secret {
            Secret::Password(p) => FileKeys::derive(p, salt, iterations),
            Secret::Stretched { salt: s, key } if *s == salt => Ok(FileKeys::expand(key, salt)),
            Secret::Stretched { .. } => Err(CodecError::WrongPasswordOrTampered),
        }
    }

    fn expand(master: &[u8; 32], salt: Salt) -> FileKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt.0).extract(master);
        let expand = |info: &[u8]| -> [u8; 32] {
            let mut out = [0u8; 32];
            prk.expand(&[info], Len(32))
                .and_then(|okm| okm.fill(&mut out))
                .expect("32 bytes is within HKDF-SHA256's output limit");
            out
        };
        let aes =
            |bytes: [u8; 32]| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("32-byte AES-256 key"));
        FileKeys {
            salt,
            segment: aes(expand(INFO_SEGMENT)),
            metadata: aes(expand(INFO_METADATA)),
            owner_token: expand(INFO_OWNER),
        }
    }

    pub fn salt(&self) -> Salt {
        self.salt
    }

    /// Proves ownership of the file to the coordinator (which keeps only its hash).
    pub fn owner_token(&self) -> [u8; 32] {
        self.owner_token
    }

    /// Seals segment `index` in place: `buf` holds the plaintext and then `TAG_LEN` bytes of
    /// room for the tag. `last` marks the final segment.
    pub fn seal_segment(&self, index: u32, last: bool, buf: &mut [u8]) {
        let (plain, room) = buf.split_at_mut(buf.len().checked_sub(TAG_LEN).expect("room for the tag"));
        let tag = self
            .segment
            .seal_in_place_separate_tag(segment_nonce(index, last), Aad::from(&self.salt.0), plain)
            .expect("a segment is far below AES-GCM's length limit");
        room.copy_from_slice(tag.as_ref());
    }

    /// Opens a sealed segment in place; on success the plaintext is the start of `buf`, and
    /// its length is returned.
    pub fn open_segment(&self, index: u32, last: bool, buf: &mut [u8]) -> Result<usize, CodecError> {
        Ok(self
            .segment
            .open_in_place(segment_nonce(index, last), Aad::from(&self.salt.0), buf)
            .map_err(|_| CodecError::SegmentAuth { segment: index })?
            .len())
    }

    /// Seals the file's metadata. The metadata key seals exactly one message, so a fixed
    /// all-zero nonce is safe.
    pub fn seal_metadata(&self, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        self.metadata
            .seal_in_place_append_tag(zero_nonce(), Aad::from(&self.salt.0), &mut buf)
            .expect("metadata is far below AES-GCM's length limit");
        buf
    }

    pub fn open_metadata(&self, sealed: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut buf = sealed.to_vec();
        let len = self
            .metadata
            .open_in_place(zero_nonce(), Aad::from(&self.salt.0), &mut buf)
            .map_err(|_| CodecError::WrongPasswordOrTampered)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Whether `sealed` looks like AES-GCM output: bytes spread evenly over all 256 values. A
/// coordinator coding a browser's "sealed" segment cannot check it without the key, but it
/// can refuse what is plainly not ciphertext (text, zeros, structured data) rather than host
/// it for free. Chi-square of the byte histogram against uniform; ciphertext gives 255 ± 23,
/// the bound is ten standard deviations above. Below 4 KiB the test says nothing: true.
pub fn looks_sealed(sealed: &[u8]) -> bool {
    if sealed.len() < 4096 {
        return true;
    }
    let mut counts = [0u64; 256];
    for b in sealed {
        counts[*b as usize] += 1;
    }
    let expected = sealed.len() as f64 / 256.0;
    let chi2: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
    chi2 < 255.0 + 10.0 * (2.0f64 * 255.0).sqrt()
}

/// STREAM nonce: 7 zero bytes ‖ segment index (u32 big-endian) ‖ last-segment flag.
/// The key is unique to the upload (fresh salt), so the prefix need not be random.
pub fn segment_nonce(index: u32, last: bool) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[7..11].copy_from_slice(&index.to_be_bytes());
    n[11] = last as u8;
    Nonce::assume_unique_for_key(n)
}

fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; aead::NONCE_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(password: &str, salt: u8) -> FileKeys {
        FileKeys::derive(password.as_bytes(), Salt([salt; SALT_LEN]), MIN_ITERATIONS).unwrap()
    }

    #[test]
    fn a_stretched_key_opens_what_its_password_sealed_and_only_with_its_salt() {
        let salt = Salt([4; SALT_LEN]);
        let sealed = keys("pw", 4).seal_metadata(b"meta");
        let secret = Secret::stretch(b"pw", salt, MIN_ITERATIONS).unwrap();
        assert_eq!(secret.salt(), Some(salt));
        let opened = FileKeys::from_secret(&secret, salt, MIN_ITERATIONS).unwrap();
        assert_eq!(opened.open_metadata(&sealed).unwrap(), b"meta");
        assert_eq!(opened.owner_token(), keys("pw", 4).owner_token());
        let other_salt = Salt([5; SALT_LEN]);
        assert!(matches!(
            FileKeys::from_secret(&secret, other_salt, MIN_ITERATIONS),
            Err(CodecError::WrongPasswordOrTampered)
        ));
        assert!(Secret::stretch(b"pw", salt, MIN_ITERATIONS - 1).is_err());
    }

    #[test]
    fn a_random_key_opens_its_own_file_only() {
        let (a, b) = (Secret::random_key(), Secret::random_key());
        let salt = a.salt().unwrap();
        assert_ne!(Some(salt), b.salt());
        let sealed = FileKeys::from_secret(&a, salt, MIN_ITERATIONS).unwrap().seal_metadata(b"m");
        let again = FileKeys::from_secret(&a, salt, MIN_ITERATIONS).unwrap();
        assert_eq!(again.open_metadata(&sealed).unwrap(), b"m");
        let Secret::Stretched { key, .. } = b else { unreachable!() };
        let other = FileKeys::from_secret(&Secret::Stretched { salt, key }, salt, MIN_ITERATIONS).unwrap();
        assert!(other.open_metadata(&sealed).is_err());
    }

    #[test]
    fn segment_round_trip_and_position_binding() {
        let k = keys("pw", 1);
        let mut buf = b"hello world".to_vec();
        buf.resize(11 + TAG_LEN, 0);
        k.seal_segment(3, false, &mut buf);
        let sealed = buf.clone();

        let mut ok = sealed.clone();
        assert_eq!(k.open_segment(3, false, &mut ok).unwrap(), 11);
        assert_eq!(&ok[..11], b"hello world");

        // Reordered (other index) or truncated-stream (claimed last) opens fail.
        for (i, last) in [(2, false), (3, true), (4, false)] {
            let mut b = sealed.clone();
            assert!(matches!(
                k.open_segment(i, last, &mut b),
                Err(CodecError::SegmentAuth { segment }) if segment == i
            ));
        }
        // Another upload (other salt) or another password cannot open it.
        for other in [keys("pw", 2), keys("pw2", 1)] {
            let mut b = sealed.clone();
            assert!(other.open_segment(3, false, &mut b).is_err());
        }
    }

    #[test]
    fn metadata_wrong_password() {
        let sealed = keys("right", 9).seal_metadata(b"{\"name\":\"a\"}");
        assert_eq!(keys("right", 9).open_metadata(&sealed).unwrap(), b"{\"name\":\"a\"}");
        assert!(matches!(keys("wrong", 9).open_metadata(&sealed), Err(CodecError::WrongPasswordOrTampered)));
    }

    #[test]
    fn subkeys_are_distinct_and_iterations_bounded() {
        let a = keys("pw", 1);
        let b = keys("pw", 2);
        assert_ne!(a.owner_token(), b.owner_token());
        assert!(FileKeys::derive(b"pw", Salt([0; 16]), MIN_ITERATIONS - 1).is_err());
        assert!(FileKeys::derive(b"pw", Salt([0; 16]), MAX_ITERATIONS + 1).is_err());
    }

    #[test]
    fn ciphertext_looks_sealed_and_plaintext_does_not() {
        let k = keys("pw", 3);
        let mut buf = vec![b'a'; 64 * 1024];
        assert!(!looks_sealed(&buf), "text");
        buf.resize(64 * 1024 + TAG_LEN, 0);
        k.seal_segment(0, true, &mut buf);
        assert!(looks_sealed(&buf), "AES-GCM output");
        assert!(!looks_sealed(&[0u8; 8192]));
        let counting: Vec<u8> = (0..65536u32).map(|i| (i % 200) as u8).collect();
        assert!(!looks_sealed(&counting), "skewed bytes");
        assert!(looks_sealed(b"short"), "too short to judge");
    }

    #[test]
    fn nonce_layout() {
        let n = segment_nonce(0x01020304, true);
        assert_eq!(n.as_ref(), &[0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 1]);
    }
}
