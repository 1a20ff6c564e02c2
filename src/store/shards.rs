//! A node's shards: one file per shard under `shards/xx/<hex id>` (written to a temporary
//! name, synced, renamed) beside a sled index of shard id → length and time. Why files for
//! bodies: measured here, sled 0.34 writes 1 MiB values at ~300 MB/s, takes 2.9× their size
//! on disk and returns no space after deletes (shared/LIMITS.md), while a synced file per
//! shard writes at ~975 MB/s, takes 1.0× (plus the block tail) and frees its space on unlink.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::core::merkle::ShardId;
use crate::sys::fs::{read_whole, write_durably};

/// Where a node whose data directory is `data_dir` keeps shard `id`: `shards/xx/<hex id>`.
pub fn shard_file(data_dir: &Path, id: &ShardId) -> PathBuf {
    let hex = id.to_hex();
    data_dir.join("shards").join(&hex[..2]).join(hex)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("node is full: {used} of {capacity} bytes used, {wanted} more requested")]
    Full { used: u64, capacity: u64, wanted: u64 },
    #[error("shard store: {0}")]
    Io(#[from] io::Error),
    #[error("shard index: {0}")]
    Db(#[from] sled::Error),
}

/// A shard's index entry: its length and when it was stored (unix seconds).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Entry {
    len: u64,
    stored_at: u64,
}

impl Entry {
    fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.len.to_be_bytes());
        b[8..].copy_from_slice(&self.stored_at.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Entry> {
        Some(Entry {
            len: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            stored_at: u64::from_be_bytes(b.get(8..16)?.try_into().ok()?),
        })
    }
}

/// A node's shards: files under `shards/xx/`, indexed in sled.
pub struct ShardStore {
    dir: PathBuf,
    _db: sled::Db,
    index: sled::Tree,
    used: AtomicU64,
    capacity: u64,
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
                        on_disk.insert(id, Entry { len: meta.len(), stored_at: mtime.map_or(0, |d| d.as_secs()) });
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
        for (id, e) in &on_disk {
            // Keep the recorded time of shards the index knew; adopt the file's otherwise.
            let e = index.get(id.0)?.and_then(|v| Entry::decode(&v)).filter(|old| old.len == e.len).unwrap_or(*e);
            index.insert(id.0, &e.encode())?;
            used += e.len;
        }
        Ok(ShardStore { dir: dir.to_owned(), _db: db, index, used: AtomicU64::new(used), capacity })
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

    /// Stores a shard durably (blocking I/O: call from a blocking thread).
    pub fn put(&self, id: &ShardId, data: &[u8], now: u64) -> Result<(), StoreError> {
        if self.contains(id) {
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
            self.index.insert(id.0, &Entry { len, stored_at: now }.encode())?;
            Ok(())
        })();
        if r.is_err() {
            self.used.fetch_sub(len, Ordering::SeqCst);
        }
        r
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
            s.put(&a, &[7; 60], 1).unwrap();
            s.put(&a, &[7; 60], 1).unwrap(); // idempotent
            assert_eq!(s.used(), 60);
            assert!(matches!(s.put(&b, &[8; 50], 1), Err(StoreError::Full { used: 60, .. })));
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
        s.put(&a, &[1; 5], 1).unwrap();
        let live: std::collections::HashSet<ShardId> = [b].into_iter().collect();
        assert_eq!(s.collect_garbage(&live, 0).unwrap(), 0, "nothing is older than time 0");
        assert_eq!(s.collect_garbage(&live, u64::MAX).unwrap(), 1);
        assert!(s.contains(&b) && !s.contains(&a));
        assert_eq!(s.used(), 10);
    }
}
