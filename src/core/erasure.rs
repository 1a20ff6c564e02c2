//! Reed-Solomon k-of-n coding of one sealed segment (reed-solomon-simd), with exact
//! lengths: shards 0..k are the segment itself cut in k equal parts (the last zero-padded),
//! shards k..n are recovery shards. Pure: no I/O.

pub use reed_solomon_simd::Error as ErasureError;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use crate::core::error::CodecError;
use crate::sys::pool::Buf;

/// The k and n of a file: any `k` of its `n` shards rebuild a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub k: u8,
    pub n: u8,
}

impl Shape {
    pub fn new(k: u8, n: u8) -> Result<Shape, CodecError> {
        if k == 0 || k >= n {
            return Err(CodecError::InvalidParams(format!(
                "need 1 ≤ k < n ≤ 255 (any k of n shards rebuild a segment), got k={k}, n={n}"
            )));
        }
        Ok(Shape { k, n })
    }

    pub fn k(self) -> usize {
        self.k as usize
    }

    pub fn n(self) -> usize {
        self.n as usize
    }

    /// Bytes of every shard of a segment of `sealed_len` bytes: ⌈sealed_len / k⌉ rounded up
    /// to even (reed-solomon-simd works on 16-bit symbols).
    pub fn shard_len(self, sealed_len: usize) -> usize {
        let l = sealed_len.div_ceil(self.k()).max(2);
        l + (l & 1)
    }
}

/// Encodes segments of one shape, reusing the encoder's working memory between segments.
pub struct Encoder {
    shape: Shape,
    rs: Option<ReedSolomonEncoder>,
}

impl Encoder {
    pub fn new(shape: Shape) -> Encoder {
        Encoder { shape, rs: None }
    }

    /// `data` holds the sealed segment zero-padded to k × shard_len bytes. Returns the n − k
    /// recovery shards, one after the other.
    pub fn recovery(&mut self, data: &[u8], shard_len: usize) -> Buf {
        let (k, m) = (self.shape.k(), self.shape.n() - self.shape.k());
        debug_assert_eq!(data.len(), k * shard_len);
        let rs = match &mut self.rs {
            Some(rs) => {
                rs.reset(k, m, shard_len).expect("shape and shard length were validated");
                rs
            }
            slot => {
                slot.insert(ReedSolomonEncoder::new(k, m, shard_len).expect("shape and shard length were validated"))
            }
        };
        for chunk in data.chunks_exact(shard_len) {
            rs.add_original_shard(chunk).expect("exactly k shards of equal length");
        }
        let out = rs.encode().expect("all original shards were added");
        let mut recovery = Buf::with_len(m * shard_len);
        for (dst, shard) in recovery.chunks_exact_mut(shard_len).zip(out.recovery_iter()) {
            dst.copy_from_slice(shard);
        }
        recovery
    }
}

/// Rebuilds the sealed segment (k × shard_len bytes, padding included) from any k shards,
/// given as (index, bytes). The caller has checked every shard against its id.
pub fn reconstruct(shape: Shape, shard_len: usize, shards: &[(usize, &[u8])]) -> Result<Buf, ErasureError> {
    let k = shape.k();
    // Every byte is overwritten: by a data shard, or by the one decoding restores.
    let mut data = Buf::with_len(k * shard_len);
    let mut missing = vec![true; k];
    for &(i, s) in shards.iter().filter(|(i, _)| *i < k) {
        data[i * shard_len..(i + 1) * shard_len].copy_from_slice(s);
        missing[i] = false;
    }
    if !missing.contains(&true) {
        return Ok(data); // all data shards arrived: no decoding needed
    }
    // One decoder per thread, reset for each segment: a new one allocates (and faults in)
    // tens of MiB of working memory, which measured as most of a degraded read's time.
    thread_local! {
        static DECODER: std::cell::RefCell<Option<ReedSolomonDecoder>> = const { std::cell::RefCell::new(None) };
    }
    DECODER.with_borrow_mut(|slot| {
        let m = shape.n() - k;
        let rs = match slot {
            Some(rs) => {
                rs.reset(k, m, shard_len)?;
                rs
            }
            None => slot.insert(ReedSolomonDecoder::new(k, m, shard_len)?),
        };
        for &(i, s) in shards {
            let r = if i < k { rs.add_original_shard(i, s) } else { rs.add_recovery_shard(i - k, s) };
            r?;
        }
        let restored = rs.decode()?;
        for (i, s) in restored.restored_original_iter() {
            data[i * shard_len..(i + 1) * shard_len].copy_from_slice(s);
        }
        Ok(data)
    })
}

/// All n shards from any k: the repair path, which must recreate recovery shards too.
pub fn all_shards(shape: Shape, shard_len: usize, shards: &[(usize, &[u8])]) -> Result<Vec<Vec<u8>>, ErasureError> {
    let data = reconstruct(shape, shard_len, shards)?;
    // Kept per thread for the same reason as the decoder (repairs rebuild segment after segment).
    thread_local! {
        static ENCODER: std::cell::RefCell<Option<Encoder>> = const { std::cell::RefCell::new(None) };
    }
    let recovery = ENCODER.with_borrow_mut(|slot| {
        let enc = match slot {
            Some(e) if e.shape == shape => e,
            slot => slot.insert(Encoder::new(shape)),
        };
        enc.recovery(&data, shard_len)
    });
    Ok(data.chunks_exact(shard_len).chain(recovery.chunks_exact(shard_len)).map(<[u8]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_bounds() {
        assert!(Shape::new(0, 5).is_err());
        assert!(Shape::new(5, 5).is_err());
        assert!(Shape::new(1, 2).is_ok());
        assert!(Shape::new(254, 255).is_ok());
    }

    #[test]
    fn shard_len_is_even_and_covers() {
        let s = Shape::new(8, 20).unwrap();
        assert_eq!(s.shard_len(16), 2);
        assert_eq!(s.shard_len(17), 4);
        assert_eq!(s.shard_len(8 << 20), 1 << 20);
        for len in 1..200 {
            assert!(s.shard_len(len) * 8 >= len && s.shard_len(len).is_multiple_of(2));
        }
    }

    #[test]
    fn any_k_rebuild_all() {
        let shape = Shape::new(3, 6).unwrap();
        let shard_len = 10;
        let data: Vec<u8> = (0..30).collect();
        let rec = Encoder::new(shape).recovery(&data, shard_len);
        let all: Vec<Vec<u8>> = data.chunks(10).chain(rec.chunks(10)).map(|c| c.to_vec()).collect();
        for pick in [[0, 1, 2], [3, 4, 5], [0, 4, 5], [2, 3, 1]] {
            let given: Vec<(usize, &[u8])> = pick.iter().map(|&i| (i, &all[i][..])).collect();
            assert_eq!(&reconstruct(shape, shard_len, &given).unwrap()[..], &data[..]);
            assert_eq!(all_shards(shape, shard_len, &given).unwrap(), all);
        }
        let two: Vec<(usize, &[u8])> = [4usize, 5].iter().map(|&i| (i, &all[i][..])).collect();
        assert!(reconstruct(shape, shard_len, &two).is_err());
    }
}
