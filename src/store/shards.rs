//! A node's shards: one file per shard under `shards/xx/<hex id>` (written to a temporary
//! name, synced, renamed) beside a sled index of shard id → length and time. Why files for
//! bodies: measured here, sled 0.34 writes 1 MiB values at ~300 MB/s, takes 2.9× their size
//! on disk and returns no space after deletes (shared/LIMITS.md), while a synced file per
//! shard writes at ~975 MB/s, takes 1.0× (plus the block tail) and frees its space on unlink.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Mutex;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::core::merkle::ShardId;
use crate::sys::fs::{read_whole, write_durably};

/// The scope of a read grant that covers every shard (the coordinator's, for repair).
pub const ANY: &str = "*";

/// Where a node whose data directory is `data_dir` keeps shard `id`: `shards/xx/<hex id>`.
pub fn shard_file(data_dir: &Path, id: &ShardId) -> PathBuf {
    let hex = id.to_hex();
    data_dir.join("shards").join(&hex[..2]).join(hex)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("node is full: {used} of {capacity} bytes used, {wanted} more requested")]
    Full { used: u64, capacity: u64, wanted: u64 },
    #[error("shard store")]
    Io(#[from] io::Error),
    #[error("shard index")]
    Db(#[from] sled::Error),
}

/// Uploads remembered per shard: identical shards (zero padding of small files) are shared
/// by many uploads, and the most recent ones are what read grants name.
const MAX_UPLOADS: usize = 64;

/// A shard's index entry: its length, when it was last stored (unix seconds), and the
/// uploads it was stored for (from their put orders).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    len: u64,
    stored_at: u64,
    #[serde(default)]
    uploads: Vec<String>,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("entries serialize")
    }

    /// JSON, or the 16-byte form of entries written before uploads were remembered.
    fn decode(b: &[u8]) -> Option<Entry> {
        if b.first() == Some(&b'{') {
            return serde_json::from_slice(b).ok();
        }
        Some(Entry {
            len: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            stored_at: u64::from_be_bytes(b.get(8..16)?.try_into().ok()?),
            uploads: Vec::new(),
        })
    }

    fn remember(&mut self, upload: &str, now: u64) {
        self.stored_at = self.stored_at.max(now);
        self.uploads.retain(|u| u != upload);
        self.uploads.push(upload.to_owned());
        if self.uploads.len() > MAX_UPLOADS {
            self.uploads.remove(0);
        }
    }
}

/// Locks per group of shard ids: a write, a delete and a "store if absent" of one shard
/// never interleave.
const STRIPES: usize = 64;

/// A node's shards: files under `shards/xx/`, indexed in sled.
pub struct ShardStore {
    dir: PathBuf,
    _db: sled::Db,
    index: sled::Tree,
    used: AtomicU64,
    capacity: u64,
    stripes: [Mutex<()>; STRIPES],
}

impl ShardStore {
    /// Opens the store and reconciles the index with the files actually present (a crash
    /// may have left either one ahead of the other).
    pub fn open(dir: &Path, capacity: u64) -> Result<ShardStore, StoreError> {
        let root = dir.join("shards");
        // All 256 fan-out directories up front, so no shard write waits on a mkdir.
        for b in 0..=255u8 {
            fs::create_dir_all(root.join(hex::encode([b])))?;
        }
        fs::File::open(&root)?.sync_all()?;
        let db = sled::open(dir.join("index"))?;
        let index = db.open_tree("shards")?;
        let mut on_disk = std::collections::HashMap::new();
        for sub in fs::read_dir(&root)? {
            let sub = sub?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in fs::read_dir(&sub)? {
                let p = f?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                match ShardId::from_hex(name) {
                    Some(id) => {
                        let meta = p.metadata()?;
                        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                        let stored_at = mtime.map_or(0, |d| d.as_secs());
                        on_disk.insert(id, Entry { len: meta.len(), stored_at, uploads: Vec::new() });
                    }
                    None => fs::remove_file(&p)?, // an interrupted write
                }
            }
        }
        for item in index.iter() {
            let (k, _) = item?;
            let id = ShardId(k.as_ref().try_into().unwrap_or([0; 32]));
            if !on_disk.contains_key(&id) {
                index.remove(k)?;
            }
        }
        let mut used = 0;
        for (id, e) in on_disk {
            // Keep what the index knew of shards it had; adopt the file's time otherwise.
            let e = index.get(id.0)?.and_then(|v| Entry::decode(&v)).filter(|old| old.len == e.len).unwrap_or(e);
            index.insert(id.0, e.encode())?;
            used += e.len;
        }
        let stripes = std::array::from_fn(|_| Mutex::new(()));
        Ok(ShardStore { dir: dir.to_owned(), _db: db, index, used: AtomicU64::new(used), capacity, stripes })
    }

    fn path(&self, id: &ShardId) -> PathBuf {
        shard_file(&self.dir, id)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn count(&self) -> u64 {
        self.index.len() as u64
    }

    pub fn contains(&self, id: &ShardId) -> bool {
        self.index.contains_key(id.0).unwrap_or(false)
    }

    fn lock(&self, id: &ShardId) -> std::sync::MutexGuard<'_, ()> {
        // No invariant a panicking holder could break: the index and files are re-checked.
        self.stripes[id.0[0] as usize % STRIPES].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, id: &ShardId) -> Result<Option<Entry>, StoreError> {
        Ok(self.index.get(id.0)?.and_then(|v| Entry::decode(&v)))
    }

    /// Stores a shard durably for `upload` (blocking I/O: call from a blocking thread). A
    /// shard already here is not written again: the node remembers the upload and the time.
    pub fn put(&self, id: &ShardId, data: &[u8], upload: &str, now: u64) -> Result<(), StoreError> {
        let _guard = self.lock(id);
        if let Some(mut e) = self.entry(id)? {
            e.remember(upload, now);
            self.index.insert(id.0, e.encode())?;
            return Ok(());
        }
        let len = data.len() as u64;
        let before = self.used.fetch_add(len, Ordering::SeqCst);
        if before + len > self.capacity {
            self.used.fetch_sub(len, Ordering::SeqCst);
            return Err(StoreError::Full { used: before, capacity: self.capacity, wanted: len });
        }
        let r = (|| {
            write_durably(&self.path(id), data)?;
            let mut e = Entry { len, stored_at: now, uploads: Vec::new() };
            e.remember(upload, now);
            self.index.insert(id.0, e.encode())?;
            Ok(())
        })();
        if r.is_err() {
            self.used.fetch_sub(len, Ordering::SeqCst);
        }
        r
    }

    /// Whether a read grant for `upload` covers shard `id` (`ANY`: every shard).
    pub fn readable_by(&self, id: &ShardId, upload: &str) -> bool {
        self.entry(id).ok().flatten().is_some_and(|e| upload == ANY || e.uploads.iter().any(|u| u == upload))
    }

    pub fn get(&self, id: &ShardId) -> io::Result<Option<Bytes>> {
        if !self.contains(id) {
            return Ok(None);
        }
        match read_whole(&self.path(id)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes every shard not in `live` that was stored before `older_than` (unix seconds);
    /// returns how many went.
    pub fn collect_garbage(
        &self,
        live: &std::collections::HashSet<ShardId>,
        older_than: u64,
    ) -> Result<usize, StoreError> {
        let mut doomed = Vec::new();
        for item in self.index.iter() {
            let (k, v) = item?;
            let id = ShardId(k.as_ref().try_into().unwrap_or([0; 32]));
            if !live.contains(&id) && Entry::decode(&v).is_some_and(|e| e.stored_at < older_than) {
                doomed.push(id);
            }
        }
        let mut removed = 0;
        for id in doomed {
            removed += self.delete(&id)? as usize;
        }
        Ok(removed)
    }

    /// Removes a shard; its space is free again at once.
    pub fn delete(&self, id: &ShardId) -> Result<bool, StoreError> {
        let _guard = self.lock(id);
        let Some(v) = self.index.remove(id.0)? else { return Ok(false) };
        let len = Entry::decode(&v).map_or(0, |e| e.len);
        match fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.used.fetch_sub(len, Ordering::SeqCst);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete_capacity_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = ShardId([1; 32]);
        let b = ShardId([2; 32]);
        {
            let s = ShardStore::open(dir.path(), 100).unwrap();
            s.put(&a, &[7; 60], "u1", 1).unwrap();
            s.put(&a, &[7; 60], "u2", 5).unwrap(); // stored once, remembered for both
            assert_eq!(s.used(), 60);
            assert!(s.readable_by(&a, "u1") && s.readable_by(&a, "u2") && s.readable_by(&a, ANY));
            assert!(!s.readable_by(&a, "u3") && !s.readable_by(&b, ANY));
            assert!(matches!(s.put(&b, &[8; 50], "u1", 1), Err(StoreError::Full { used: 60, .. })));
            assert_eq!(s.get(&a).unwrap().unwrap().len(), 60);
            assert!(s.get(&b).unwrap().is_none());
        }
        // A leftover temporary file is cleaned; a file missing from the index is adopted.
        let hex = b.to_hex();
        fs::create_dir_all(dir.path().join("shards").join(&hex[..2])).unwrap();
        fs::write(dir.path().join("shards").join(&hex[..2]).join(&hex), [9; 10]).unwrap();
        fs::write(dir.path().join("shards").join(&hex[..2]).join("x.tmp-1-0"), [9; 10]).unwrap();
        let s = ShardStore::open(dir.path(), 100).unwrap();
        assert_eq!(s.used(), 70);
        assert_eq!(s.count(), 2);
        assert!(s.delete(&a).unwrap());
        assert!(!s.delete(&a).unwrap());
        assert_eq!(s.used(), 10);
        assert!(!shard_file(dir.path(), &a).exists());
        // Garbage collection keeps live and recent shards.
        s.put(&a, &[1; 5], "u", 1).unwrap();
        let live: std::collections::HashSet<ShardId> = [b].into_iter().collect();
        assert_eq!(s.collect_garbage(&live, 0).unwrap(), 0, "nothing is older than time 0");
        assert_eq!(s.collect_garbage(&live, u64::MAX).unwrap(), 1);
        assert!(s.contains(&b) && !s.contains(&a));
        assert_eq!(s.used(), 10);
    }
}
