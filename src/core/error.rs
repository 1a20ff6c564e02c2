//! Errors of the pure core. Each message says what happened and, where it can, what to do.

/// Errors of the codec: keys, sealing, erasure coding, manifests.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("wrong password, or the file's manifest was tampered with (AES-GCM cannot tell the two apart)")]
    WrongPasswordOrTampered,
    #[error(
        "segment {segment} failed authentication: the data was tampered with, or the password is wrong (AES-GCM cannot tell the two apart)"
    )]
    SegmentAuth { segment: u32 },
    #[error("not enough intact shards for segment {segment}: have {have}, need {need}")]
    NotEnoughShards { segment: u32, have: usize, need: usize },
    #[error("shard {index} of segment {segment} does not match its id (corrupted or wrong shard)")]
    ShardMismatch { segment: u32, index: usize },
    #[error(
        "unsupported manifest version {found}: this p2pstore reads version {supported} only; use the p2pstore version that uploaded the file"
    )]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("malformed manifest: {0}")]
    Malformed(String),
    #[error("Reed-Solomon decoding of segment {segment} failed")]
    Erasure { segment: u32, source: reed_solomon_simd::Error },
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    #[error("reading the input failed: {0}")]
    Read(std::io::Error),
    #[error("writing the output failed: {0}")]
    Write(std::io::Error),
}
