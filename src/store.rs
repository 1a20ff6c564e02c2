//! On-disk state. A node keeps shard bodies as files (written to a temporary name, synced,
//! renamed) beside a sled index of shard id → length; the coordinator keeps typed records in
//! sled trees. Why files for bodies: measured here, sled 0.34 writes 1 MiB values at ~300
//! MB/s, takes 2.9× their size on disk and returns no space after deletes (shared/LIMITS.md),
//! while a synced file per shard writes at ~975 MB/s, takes 1.0× (plus the block tail) and
//! frees its space on unlink.

use std::fs;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::merkle::ShardId;
use crate::pool::{Buf, DIRECT_ALIGN};

fn is_aligned(data: &[u8]) -> bool {
    !data.is_empty() && data.len().is_multiple_of(DIRECT_ALIGN) && (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
}

/// Writes `path` so that after return it is on disk whole or not at all: a temporary file,
/// synced, then renamed, and the directory synced. Page-aligned data goes with O_DIRECT:
/// measured here, copying cold shard bytes into the page cache cost over half of a node's
/// CPU during uploads, and a node never reads a shard back soon enough for the cache to pay
/// (audits read a few chunks). Filesystems without O_DIRECT (tmpfs) get the buffered path.
pub fn write_durably(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let aligned = is_aligned(data);
    match write_synced(&tmp, data, if aligned { libc::O_DIRECT } else { 0 }) {
        Err(e) if aligned && e.raw_os_error() == Some(libc::EINVAL) => write_synced(&tmp, data, 0)?,
        r => r?,
    }
    fs::rename(&tmp, path)?;
    // The new name is durable only once its directory is: a crash could otherwise undo the
    // rename after the caller was told the data is safe (a node's receipt).
    fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Writes a long stream to a file past the page cache: bytes gather in an aligned buffer
/// whose full blocks a writer thread sends out with O_DIRECT (so the disk's latency overlaps
/// the caller's work), and the unaligned tail goes through the cache at
/// [`DirectWriter::finish`]. Measured here, copying a 1 GiB download into the page cache took
/// half of the client's CPU. Filesystems without O_DIRECT (tmpfs) get plain writes.
pub struct DirectWriter {
    buf: Buf,
    blocks: Option<mpsc::SyncSender<Buf>>,
    writer: Option<std::thread::JoinHandle<io::Result<fs::File>>>,
}

/// Bytes per direct write: one disk round trip per segment.
const DIRECT_BLOCK: usize = 8 << 20;

impl DirectWriter {
    /// Starts writing at the beginning of `file`, which must be empty.
    pub fn new(file: &fs::File) -> io::Result<DirectWriter> {
        let mut file = file.try_clone()?; // shares the file offset and flags
        let (tx, rx) = mpsc::sync_channel::<Buf>(1);
        let writer = std::thread::Builder::new().name("direct-writer".into()).spawn(move || {
            let mut direct = set_direct(&file, true).is_ok();
            for block in rx {
                match file.write_all(&block) {
                    // Some filesystems accept the flag and refuse the write: go on without it.
                    Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                        set_direct(&file, false)?;
                        direct = false;
                        file.write_all(&block)?;
                    }
                    r => r?,
                }
            }
            if direct {
                set_direct(&file, false)?;
            }
            Ok(file)
        })?;
        Ok(DirectWriter { buf: Buf::with_capacity(DIRECT_BLOCK), blocks: Some(tx), writer: Some(writer) })
    }

    /// Waits for the blocks sent so far, then writes the tail through the cache.
    pub fn finish(mut self) -> io::Result<()> {
        let mut file = self.stop()?;
        file.write_all(&self.buf)
    }

    /// Ends the writer thread; its file, or the error that stopped it.
    fn stop(&mut self) -> io::Result<fs::File> {
        self.blocks = None;
        let writer = self.writer.take().ok_or_else(|| io::Error::other("the writer has already stopped"))?;
        writer.join().map_err(|_| io::Error::other("the writer thread panicked"))?
    }
}

impl Write for DirectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(DIRECT_BLOCK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == DIRECT_BLOCK {
            let block = std::mem::replace(&mut self.buf, Buf::with_capacity(DIRECT_BLOCK));
            let sent = self.blocks.as_ref().is_some_and(|b| b.send(block).is_ok());
            if !sent {
                // The thread ended early: its error says why.
                self.stop()?;
                return Err(io::Error::other("the writer thread stopped"));
            }
        }
        Ok(n)
    }

    /// Only whole blocks can leave early; the rest waits for `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for DirectWriter {
    /// A download that failed midway still waits for its writes, so nothing touches the file
    /// after it is gone.
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.stop();
        }
    }
}

/// Turns O_DIRECT on or off for an open file.
fn set_direct(file: &fs::File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we hold open, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a whole file; page-aligned sizes bypass the page cache, as they were written.
fn read_whole(path: &Path) -> io::Result<Bytes> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let len = fs::metadata(path)?.len() as usize;
    if len == 0 || !len.is_multiple_of(DIRECT_ALIGN) {
        return fs::read(path).map(Bytes::from);
    }
    let mut f = match fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return fs::read(path).map(Bytes::from),
        r => r?,
    };
    let mut buf = Buf::with_len(len);
    f.read_exact(&mut buf)?;
    Ok(buf.into_bytes())
}

fn write_synced(path: &Path, data: &[u8], flags: i32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(flags).open(path)?;
    f.write_all(data)?;
    f.sync_data()
}

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
    pub fn put(&self, id: &ShardId, data: &[u8]) -> Result<(), StoreError> {
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
            self.index.insert(id.0, &Entry { len, stored_at: crate::proto::now() }.encode())?;
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

/// A sled tree of JSON values under string keys: the coordinator's record store.
pub struct Table<T> {
    tree: sled::Tree,
    changes: AtomicU64,
    _t: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> Table<T> {
    pub fn open(db: &sled::Db, name: &str) -> sled::Result<Table<T>> {
        Ok(Table { tree: db.open_tree(name)?, changes: AtomicU64::new(0), _t: PhantomData })
    }

    /// Counts the writes made through this table: whoever derives something from all of it
    /// can keep that until the count moves (read the count first, then the records).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    pub fn get(&self, key: &str) -> sled::Result<Option<T>> {
        Ok(self.tree.get(key)?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn insert(&self, key: &str, value: &T) -> sled::Result<()> {
        self.tree.insert(key, serde_json::to_vec(value).expect("records serialize"))?;
        self.changed();
        Ok(())
    }

    /// Atomically replaces the value under `key` with `f(old)` (None removes it); `f` may run
    /// more than once under contention. Returns the new value.
    pub fn update(&self, key: &str, mut f: impl FnMut(Option<T>) -> Option<T>) -> sled::Result<Option<T>> {
        let new = self.tree.update_and_fetch(key, |old| {
            let old = old.and_then(|v| serde_json::from_slice(v).ok());
            f(old).map(|v| serde_json::to_vec(&v).expect("records serialize"))
        })?;
        self.changed();
        Ok(new.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Records whose keys start with `prefix`, in key order.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, T)> {
        self.tree
            .scan_prefix(prefix)
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Some((String::from_utf8(k.to_vec()).ok()?, serde_json::from_slice(&v).ok()?)))
            .collect()
    }

    pub fn remove(&self, key: &str) -> sled::Result<Option<T>> {
        let old = self.tree.remove(key)?;
        self.changed();
        Ok(old.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn all(&self) -> Vec<(String, T)> {
        self.tree
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Some((String::from_utf8(k.to_vec()).ok()?, serde_json::from_slice(&v).ok()?)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    pub async fn flush(&self) -> sled::Result<()> {
        self.tree.flush_async().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::AlignedBuf;

    /// A directory on the disk and, where there is one, on tmpfs, which refuses O_DIRECT and
    /// so takes the fallback paths.
    fn disk_and_tmpfs() -> Vec<tempfile::TempDir> {
        let shm = Path::new("/dev/shm");
        [tempfile::tempdir().ok(), shm.is_dir().then(|| tempfile::tempdir_in(shm).ok()).flatten()]
            .into_iter()
            .flatten()
            .collect()
    }

    #[test]
    fn direct_writer_writes_every_byte_in_order() {
        for dir in &disk_and_tmpfs() {
            // Pieces of awkward sizes crossing block boundaries, like 8 MiB segments minus tags.
            for total in [0, 1, DIRECT_ALIGN, DIRECT_BLOCK, DIRECT_BLOCK + 1, 2 * DIRECT_BLOCK + 12345] {
                let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
                let p = dir.path().join(format!("out-{total}"));
                let f = fs::File::create(&p).unwrap();
                let mut w = DirectWriter::new(&f).unwrap();
                for piece in data.chunks(DIRECT_BLOCK - 16) {
                    w.write_all(piece).unwrap();
                }
                w.finish().unwrap();
                assert!(fs::read(&p).unwrap() == data, "{} {total}", dir.path().display());
            }
        }
    }

    #[test]
    fn direct_and_buffered_writes_read_back() {
        for dir in &disk_and_tmpfs() {
            let mut aligned = AlignedBuf::with_capacity(DIRECT_ALIGN, 3 * DIRECT_ALIGN);
            aligned.extend_from_slice(&[5u8; 3 * DIRECT_ALIGN]);
            for (name, data) in [("a", &aligned[..]), ("b", &[6u8; 100][..]), ("c", &aligned[1..])] {
                let p = dir.path().join(name);
                write_durably(&p, data).unwrap();
                assert_eq!(&read_whole(&p).unwrap()[..], data, "{} {name}", dir.path().display());
            }
        }
    }

    #[test]
    fn table_counts_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let t: Table<u32> = Table::open(&db, "t").unwrap();
        t.insert("a", &1).unwrap();
        t.update("a", |v| v.map(|v| v + 1)).unwrap();
        assert_eq!((t.get("a").unwrap(), t.all().len(), t.changes()), (Some(2), 1, 2), "reads count nothing");
        t.remove("a").unwrap();
        assert_eq!(t.changes(), 3);
    }

    #[test]
    fn put_get_delete_capacity_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = ShardId([1; 32]);
        let b = ShardId([2; 32]);
        {
            let s = ShardStore::open(dir.path(), 100).unwrap();
            s.put(&a, &[7; 60]).unwrap();
            s.put(&a, &[7; 60]).unwrap(); // idempotent
            assert_eq!(s.used(), 60);
            assert!(matches!(s.put(&b, &[8; 50]), Err(StoreError::Full { used: 60, .. })));
            assert_eq!(s.get(&a).unwrap().unwrap().len(), 60);
            assert!(s.get(&b).unwrap().is_none());
        }
        // A leftover temporary file is cleaned; a file missing from the index is adopted.
        let hex = b.to_hex();
        fs::create_dir_all(dir.path().join("shards").join(&hex[..2])).unwrap();
        fs::write(dir.path().join("shards").join(&hex[..2]).join(&hex), [9; 10]).unwrap();
        fs::write(dir.path().join("shards").join(&hex[..2]).join("x.tmp-1"), [9; 10]).unwrap();
        let s = ShardStore::open(dir.path(), 100).unwrap();
        assert_eq!(s.used(), 70);
        assert_eq!(s.count(), 2);
        assert!(s.delete(&a).unwrap());
        assert!(!s.delete(&a).unwrap());
        assert_eq!(s.used(), 10);
        assert!(!shard_file(dir.path(), &a).exists());
        // Garbage collection keeps live and recent shards.
        s.put(&a, &[1; 5]).unwrap();
        let live: std::collections::HashSet<ShardId> = [b].into_iter().collect();
        assert_eq!(s.collect_garbage(&live, 0).unwrap(), 0, "nothing is older than time 0");
        assert_eq!(s.collect_garbage(&live, u64::MAX).unwrap(), 1);
        assert!(s.contains(&b) && !s.contains(&a));
        assert_eq!(s.used(), 10);
    }
}
