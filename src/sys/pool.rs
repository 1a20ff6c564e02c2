//! Reusable page-aligned buffers for the data path. Segments and shards are megabytes,
//! allocated and freed hundreds of times a second; a fresh allocation of that size comes
//! from the kernel as untouched pages, so every use paid page faults and zeroing (measured:
//! about a tenth of all CPU in an upload). Buffers come from one process-wide pool and go
//! back to it when the last view of them drops. Page alignment lets them go to O_DIRECT.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use aligned_vec::{AVec, ConstAlign};
use bytes::Bytes;

/// Alignment of buffer address and length that lets I/O bypass the page cache.
pub const DIRECT_ALIGN: usize = 4096;

/// A buffer aligned for direct I/O.
pub type AlignedBuf = AVec<u8, ConstAlign<DIRECT_ALIGN>>;

/// Buffers smaller than this are cheap to allocate and not worth keeping.
const MIN_POOLED: usize = 256 << 10;

/// At most this many bytes wait in the pool: a few segments' worth, so a process that once
/// moved many segments at a time does not keep their memory.
const MAX_RETAINED: usize = 64 << 20;

struct Pool {
    free: Vec<AlignedBuf>,
    retained: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { free: Vec::new(), retained: 0 });

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    // The pool holds no invariant a panicking holder could break: keep using it.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pooled buffer; it returns to the pool when dropped.
pub struct Buf(AlignedBuf);

impl Buf {
    /// An empty buffer with room for at least `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Buf {
        let mut b = Buf::take(capacity);
        b.0.clear();
        b
    }

    /// A buffer of `len` bytes whose contents are whatever it last held (zeros when new):
    /// for callers that overwrite every byte.
    pub fn with_len(len: usize) -> Buf {
        let mut b = Buf::take(len);
        if b.0.len() >= len {
            b.0.truncate(len);
        } else {
            b.0.resize(len, 0);
        }
        b
    }

    /// A buffer holding a copy of `data`.
    pub fn copy_of(data: &[u8]) -> Buf {
        let mut b = Buf::with_capacity(data.len());
        b.extend_from_slice(data);
        b
    }

    /// The smallest free buffer that fits without wasting more than 3/4 of itself, else a
    /// new one.
    fn take(capacity: usize) -> Buf {
        if capacity >= MIN_POOLED {
            let mut p = pool();
            let fit = (0..p.free.len())
                .filter(|&i| (capacity..=capacity * 4).contains(&p.free[i].capacity()))
                .min_by_key(|&i| p.free[i].capacity());
            if let Some(i) = fit {
                let b = p.free.swap_remove(i);
                p.retained -= b.capacity();
                return Buf(b);
            }
        }
        Buf(AlignedBuf::with_capacity(DIRECT_ALIGN, capacity.next_multiple_of(DIRECT_ALIGN)))
    }

    /// A shareable view; the buffer returns to the pool when the last clone drops.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let cap = self.0.capacity();
        if cap < MIN_POOLED {
            return;
        }
        let mut p = pool();
        if p.retained + cap <= MAX_RETAINED {
            p.retained += cap;
            p.free.push(std::mem::replace(&mut self.0, AlignedBuf::new(DIRECT_ALIGN)));
        }
    }
}

impl Deref for Buf {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        &mut self.0
    }
}

impl AsRef<[u8]> for Buf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buf({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_aligned_and_sized() {
        let len = 3 * MIN_POOLED + 5;
        let mut a = Buf::with_len(len);
        a.fill(7);
        let ptr = a.as_ptr();
        drop(a.into_bytes()); // back to the pool through its last Bytes view
        let b = Buf::with_len(len - 5);
        assert_eq!(b.len(), len - 5);
        assert!((b.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN));
        // Reuse is the point, but other tests share the pool: only check when it is ours.
        if b.as_ptr() == ptr {
            assert!(b.iter().all(|&x| x == 7));
        }
        let c = Buf::with_capacity(len);
        assert!(c.is_empty() && c.capacity() >= len);
        assert_eq!(Buf::with_len(10).len(), 10);
    }
}
