//! A node's shards: one file per shard under `shards/xx/<hex id>` (written to a temporary
//! name, synced, renamed) beside a sled index. Why files for bodies: measured here, sled 0.34
//! writes 1 MiB values at ~300 MB/s, takes 2.9× their size on disk and returns no space after
//! deletes (shared/LIMITS.md), while a synced file per shard writes at ~975 MB/s, takes 1.0×
//! (plus the block tail) and frees its space on unlink.
//!
//! The index remembers, per shard, the uploads that stored it and the committed files that
//! need it; per upload, whether it is pending, committed or abandoned. A shard is garbage
//! only when no file needs it and every upload that stored it has ended (committed without
//! it, or abandoned): never because something is missing from a list. Garbage goes to a
//! trash (`trash/<hex id>`) first, and is removed only after the retention time; a commit
//! that names a trashed shard brings it back.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::core::merkle::ShardId;
use crate::sys::fs::{TEMP_MARK, read_whole, write_durably};

/// The scope of a read grant that covers every shard (the coordinator's, for repair).
pub const ANY: &str = "*";

/// Where a node whose data directory is `data_dir` keeps shard `id`: `shards/xx/<hex id>`.
pub fn shard_file(data_dir: &Path, id: &ShardId) -> PathBuf {
    let hex = id.to_hex();
    data_dir.join("shards").join(&hex[..2]).join(hex)
}

fn trash_file(data_dir: &Path, id: &ShardId) -> PathBuf {
    data_dir.join("trash").join(id.to_hex())
}

/// A file's bytes, or None when it is not there.
fn read_if_there(path: &Path) -> io::Result<Option<Bytes>> {
    match read_whole(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("node is full: {used} of {capacity} bytes used, {wanted} more requested")]
    Full { used: u64, capacity: u64, wanted: u64 },
    #[error("upload {0} was committed: it is not abandoned")]
    Committed(String),
    #[error("shard store")]
    Io(#[from] io::Error),
    #[error("shard index")]
    Db(#[from] sled::Error),
}

/// Uploads and files listed in a shard's entry; more (identical shards, such as the zero
/// padding of tiny files, are shared by many) are rows of their own in the `refs` tree, so
/// the entry read on every access stays small and no reference is ever dropped to make room.
const MAX_REFS: usize = 64;

/// The kinds of reference rows: a file that needs the shard, an upload that stored it.
const FILE_REF: u8 = b'f';
const UPLOAD_REF: u8 = b'u';

fn ref_key(id: &ShardId, kind: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(33 + name.len());
    k.extend_from_slice(&id.0);
    k.push(kind);
    k.extend_from_slice(name.as_bytes());
    k
}

/// A shard's index entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub len: u64,
    /// When it was last stored (unix seconds).
    pub stored_at: u64,
    /// Uploads whose put orders stored it.
    #[serde(default)]
    pub uploads: Vec<String>,
    /// Committed files that need it.
    #[serde(default)]
    pub files: Vec<String>,
    /// Whether more references than the lists hold are in the `refs` tree.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

impl Entry {
    /// Whether nothing is known of who needs the shard: an entry adopted from a file found
    /// without one (the index lost or restored older than the shards). Such a shard is read
    /// under any grant and never taken for garbage until a notice names its file again (a
    /// lost index made every read of a healthy node fail while its audits passed).
    fn references_unknown(&self) -> bool {
        self.uploads.is_empty() && self.files.is_empty() && !self.more
    }

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
            ..Entry::default()
        })
    }
}

/// Where an upload stands, as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    Pending,
    Committed,
    Abandoned,
}

/// What a node knows of its coordinator's database: the generation it was made with, and
/// the sequence number of the last notice it took (notices to one node are numbered one
/// after the other and delivered in order), with a digest of each of the last few it took:
/// a coordinator killed after a node took a notice but before its outbox said so delivers
/// that notice again, and the node answers it as taken instead of refusing it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorMark {
    pub generation: Option<String>,
    pub last_notice: u64,
    /// (sequence number, BLAKE3 of the signed text) of the last [`RECENT_NOTICES`] taken.
    /// Kept in a tree of their own, a row per notice (earlier versions wrote them here: 20 KB
    /// rewritten with each notice), so they are read from here only to be moved there.
    #[serde(default, skip_serializing)]
    pub recent: Vec<(u64, String)>,
}

/// Notices taken that a node recognises when they come again. A coordinator makes its outbox
/// durable at least every `RECENT_NOTICES / 4` notices it delivers to a node, so no more than
/// that can come again.
pub const RECENT_NOTICES: usize = 256;

/// What a heartbeat reply told a node about its coordinator's database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    Known,
    /// Another database than the one this node registered with (lost, or replaced).
    OtherDatabase,
}

/// Whether a notice is to be acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// A new notice: act on it.
    New,
    /// One already taken, delivered again: answer it as taken, change nothing.
    Again,
}

impl CoordinatorMark {
    /// Takes the generation a heartbeat reply names: the first one is remembered.
    pub fn observe(&mut self, generation: &str) -> Observation {
        match &self.generation {
            _ if generation.is_empty() => Observation::Known,
            None => {
                self.generation = Some(generation.to_owned());
                Observation::Known
            }
            Some(g) if g != generation => Observation::OtherDatabase,
            Some(_) => Observation::Known,
        }
    }

    /// Takes a notice numbered `seq` from the database `generation`, whose signed text hashes
    /// to `digest`, or says why not: from another database (lost and replaced: it may not know
    /// what is committed), or not newer than the last one taken and not one of the last taken
    /// (a replay of an old one, or a database restored from an older backup, which numbers
    /// other notices with numbers already used).
    pub fn accept(&mut self, generation: &str, seq: u64, digest: &str) -> Result<Take, String> {
        if let Some(g) = &self.generation
            && g != generation
        {
            return Err(format!(
                "the notice comes from another coordinator database (generation {generation}, not {g}): refused until \
                 the coordinator is recovered from the network (p2pstore coordinator recover)"
            ));
        }
        if seq <= self.last_notice {
            if self.recent.iter().any(|(n, d)| *n == seq && d == digest) {
                return Ok(Take::Again);
            }
            return Err(format!(
                "notice {seq} is not newer than the last one taken ({}): a replay, or a coordinator database restored \
                 from an older backup; refused until it is recovered from the network (p2pstore coordinator recover)",
                self.last_notice
            ));
        }
        self.generation = Some(generation.to_owned());
        self.last_notice = seq;
        self.recent.push((seq, digest.to_owned()));
        if self.recent.len() > RECENT_NOTICES {
            let extra = self.recent.len() - RECENT_NOTICES;
            self.recent.drain(..extra);
        }
        Ok(Take::New)
    }
}

/// A trashed shard: what its entry was, and when it was trashed.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Trashed {
    entry: Entry,
    at: u64,
}

/// Locks per group of shard ids: a write, a delete and a "store if absent" of one shard
/// never interleave.
const STRIPES: usize = 64;

/// A node's shards: files under `shards/xx/`, indexed in sled, and the trash.
pub struct ShardStore {
    dir: PathBuf,
    db: sled::Db,
    /// Flushes of `db` shared by concurrent writers.
    group: std::sync::Arc<crate::store::GroupCommit>,
    index: sled::Tree,
    uploads: sled::Tree,
    /// `upload id ‖ 0 ‖ shard id` for every shard an upload stored.
    by_upload: sled::Tree,
    trash: sled::Tree,
    /// Signed manifest copies kept for a coordinator's recovery, by file id.
    manifests: sled::Tree,
    /// What this node knows of its coordinator's database (generation, sequence numbers).
    meta: sled::Tree,
    /// Shards dropped as damaged that the coordinator has not yet been told of.
    unreported: sled::Tree,
    /// References past an entry's lists: `shard id ‖ kind ‖ name` (see [`MAX_REFS`]).
    refs: sled::Tree,
    /// The mark's recent notices: sequence number (big-endian) → digest.
    recent: sled::Tree,
    /// Deletion notices taken: `seq (20 digits)/file id` → when (8 bytes, big-endian) and the
    /// signed notice, for a coordinator restored from a backup older than the deletion.
    deletions: sled::Tree,
    /// Shards emptied from the trash → when they were trashed (8 bytes, big-endian): let go
    /// on a notice, as [`ShardStore::let_go`] says; forgotten with old deletion notices.
    emptied: sled::Tree,
    /// The mark as last read or written: taking a notice reads it, and it changes only here.
    mark: Mutex<Option<CoordinatorMark>>,
    used: AtomicU64,
    trashed: AtomicU64,
    capacity: u64,
    stripes: [Mutex<()>; STRIPES],
}

/// Every shard file in `dir` (and its subdirectories), by id, with its length and mtime;
/// interrupted writes (temporary names) are removed.
fn files_in(dir: &Path) -> Result<Vec<(ShardId, u64, u64)>, StoreError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(files_in(&p)?);
            continue;
        }
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match ShardId::from_hex(name) {
            Some(id) => {
                let meta = p.metadata()?;
                let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                out.push((id, meta.len(), mtime.map_or(0, |d| d.as_secs())));
            }
            None if name.contains(TEMP_MARK) || name.ends_with(".tmp") => fs::remove_file(&p)?,
            None => {}
        }
    }
    Ok(out)
}

fn key(id: &ShardId) -> [u8; 32] {
    id.0
}

fn id_of(k: &[u8]) -> ShardId {
    ShardId(k.try_into().unwrap_or([0; 32]))
}

impl ShardStore {
    /// Opens the store and reconciles the index and the trash with the files actually
    /// present (a crash may have left either one ahead of the other).
    pub fn open(dir: &Path, capacity: u64) -> Result<ShardStore, StoreError> {
        let root = dir.join("shards");
        // All 256 fan-out directories up front, so no shard write waits on a mkdir.
        for b in 0..=255u8 {
            fs::create_dir_all(root.join(hex::encode([b])))?;
        }
        fs::create_dir_all(dir.join("trash"))?;
        fs::File::open(&root)?.sync_all()?;
        // A node's index entries are small; millions of shards need no more cache than this.
        let db = super::open_db(&dir.join("index"), 64 << 20)?;
        let (index, trash) = (db.open_tree("shards")?, db.open_tree("trash")?);
        let used = reconcile(&index, files_in(&root)?, |len, at| Entry { len, stored_at: at, ..Entry::default() })?;
        let trashed = reconcile(&trash, files_in(&dir.join("trash"))?, |len, at| Trashed {
            entry: Entry { len, stored_at: at, ..Entry::default() },
            at,
        })?;
        Ok(ShardStore {
            dir: dir.to_owned(),
            index,
            uploads: db.open_tree("uploads")?,
            by_upload: db.open_tree("by_upload")?,
            trash,
            manifests: db.open_tree("manifests")?,
            meta: db.open_tree("meta")?,
            unreported: db.open_tree("unreported_damage")?,
            recent: db.open_tree("recent_notices")?,
            refs: db.open_tree("refs")?,
            deletions: db.open_tree("deletions")?,
            emptied: db.open_tree("emptied")?,
            mark: Mutex::new(None),
            db,
            group: crate::store::GroupCommit::new(),
            used: AtomicU64::new(used),
            trashed: AtomicU64::new(trashed),
            capacity,
            stripes: std::array::from_fn(|_| Mutex::new(())),
        })
    }

    fn path(&self, id: &ShardId) -> PathBuf {
        shard_file(&self.dir, id)
    }

    /// Bytes of the shards held (not counting the trash).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes in the trash, freed when it is emptied.
    pub fn trashed(&self) -> u64 {
        self.trashed.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn count(&self) -> u64 {
        self.index.len() as u64
    }

    pub fn contains(&self, id: &ShardId) -> bool {
        self.index.contains_key(key(id)).unwrap_or(false)
    }

    fn lock(&self, id: &ShardId) -> std::sync::MutexGuard<'_, ()> {
        // No invariant a panicking holder could break: the index and files are re-checked.
        self.stripes[id.0[0] as usize % STRIPES].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn entry(&self, id: &ShardId) -> Result<Option<Entry>, StoreError> {
        Ok(self.index.get(key(id))?.and_then(|v| Entry::decode(&v)))
    }

    pub fn upload_state(&self, upload: &str) -> Result<Option<UploadState>, StoreError> {
        Ok(self.uploads.get(upload)?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    fn set_upload_state(&self, upload: &str, state: UploadState) -> Result<(), StoreError> {
        self.uploads.insert(upload, serde_json::to_vec(&state).expect("states serialize"))?;
        Ok(())
    }

    fn link(&self, upload: &str, id: &ShardId) -> Result<(), StoreError> {
        let mut k = upload.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(&id.0);
        self.by_upload.insert(k, &[])?;
        Ok(())
    }

    /// The shards `upload` stored here.
    fn shards_of(&self, upload: &str) -> Result<Vec<ShardId>, StoreError> {
        let mut prefix = upload.as_bytes().to_vec();
        prefix.push(0);
        let n = prefix.len();
        self.by_upload.scan_prefix(&prefix).map(|kv| Ok(id_of(&kv?.0[n..]))).collect()
    }

    /// Makes every change made so far durable (blocking: call from a blocking thread). Callers
    /// that finish at the same time share one flush of the index.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.group.sync(|| self.db.flush().map(|_| ()))?;
        Ok(())
    }

    /// Stores a shard durably for `upload`, its file and its index entry both (blocking I/O:
    /// call from a blocking thread): once this returns, a receipt may go out. A shard already
    /// here is not written again: the node remembers the upload and the time.
    pub fn put(&self, id: &ShardId, data: &[u8], upload: &str, now: u64) -> Result<(), StoreError> {
        self.put_unsynced(id, data, upload, now)?;
        // Outside the shard's lock: concurrent puts share the flush.
        self.sync()
    }

    fn put_unsynced(&self, id: &ShardId, data: &[u8], upload: &str, now: u64) -> Result<(), StoreError> {
        let _guard = self.lock(id);
        if self.upload_state(upload)?.is_none() {
            self.set_upload_state(upload, UploadState::Pending)?;
        }
        self.link(upload, id)?;
        self.restore_locked(id)?; // a trashed copy comes back rather than being counted twice
        if let Some(mut e) = self.entry(id)? {
            self.add_ref(&mut e, id, UPLOAD_REF, upload)?;
            e.stored_at = e.stored_at.max(now);
            self.index.insert(key(id), e.encode())?;
            return Ok(());
        }
        let len = data.len() as u64;
        let before = self.used.fetch_add(len, Ordering::SeqCst);
        let held = before + self.trashed();
        if held + len > self.capacity {
            self.used.fetch_sub(len, Ordering::SeqCst);
            return Err(StoreError::Full { used: held, capacity: self.capacity, wanted: len });
        }
        let r = (|| {
            write_durably(&self.path(id), data)?;
            let mut e = Entry { len, stored_at: now, ..Entry::default() };
            self.add_ref(&mut e, id, UPLOAD_REF, upload)?;
            self.index.insert(key(id), e.encode())?;
            Ok(())
        })();
        if r.is_err() {
            self.used.fetch_sub(len, Ordering::SeqCst);
        }
        r
    }

    /// Whether a read grant for `upload` covers shard `id` (`ANY`: every shard).
    pub fn readable_by(&self, id: &ShardId, upload: &str) -> bool {
        self.entry(id).ok().flatten().is_some_and(|e| {
            upload == ANY || e.references_unknown() || self.has_ref(&e, id, UPLOAD_REF, upload).unwrap_or(false)
        })
    }

    fn list(e: &mut Entry, kind: u8) -> &mut Vec<String> {
        if kind == FILE_REF { &mut e.files } else { &mut e.uploads }
    }

    /// Adds a reference to `e` (written with it by the caller), or a row past its lists.
    fn add_ref(&self, e: &mut Entry, id: &ShardId, kind: u8, name: &str) -> Result<(), StoreError> {
        if self.has_ref(e, id, kind, name)? {
            return Ok(());
        }
        let list = Self::list(e, kind);
        if list.len() < MAX_REFS {
            list.push(name.to_owned());
        } else {
            self.refs.insert(ref_key(id, kind, name), &[])?;
            e.more = true;
        }
        Ok(())
    }

    fn has_ref(&self, e: &Entry, id: &ShardId, kind: u8, name: &str) -> Result<bool, StoreError> {
        let list = if kind == FILE_REF { &e.files } else { &e.uploads };
        Ok(list.iter().any(|x| x == name) || (e.more && self.refs.contains_key(ref_key(id, kind, name))?))
    }

    fn drop_ref(&self, e: &mut Entry, id: &ShardId, kind: u8, name: &str) -> Result<(), StoreError> {
        Self::list(e, kind).retain(|x| x != name);
        if e.more {
            self.refs.remove(ref_key(id, kind, name))?;
        }
        Ok(())
    }

    /// The references of `kind` past the entry's list.
    fn more_refs(&self, e: &Entry, id: &ShardId, kind: u8) -> impl Iterator<Item = Result<String, StoreError>> {
        let mut prefix = id.0.to_vec();
        prefix.push(kind);
        let rows = e.more.then(|| self.refs.scan_prefix(prefix));
        rows.into_iter().flatten().map(|kv| Ok(String::from_utf8_lossy(&kv?.0[33..]).into_owned()))
    }

    /// Forgets every reference row of a shard gone for good.
    fn drop_more_refs(&self, e: &Entry, id: &ShardId) -> Result<(), StoreError> {
        if e.more {
            for k in self.refs.scan_prefix(id.0).keys() {
                self.refs.remove(k?)?;
            }
        }
        Ok(())
    }

    pub fn get(&self, id: &ShardId) -> io::Result<Option<Bytes>> {
        if !self.contains(id) {
            return Ok(None);
        }
        read_if_there(&self.path(id))
    }

    /// Whether this node let the shard go on a notice: in the trash, or emptied from it within
    /// the time deletion notices are kept (a database restored from an older backup may audit
    /// it long after; round 7 of the attacks: a failure a trash retention later).
    pub fn let_go(&self, id: &ShardId) -> bool {
        self.trash.contains_key(key(id)).unwrap_or(false) || self.emptied.contains_key(key(id)).unwrap_or(false)
    }

    /// `upload` was committed as `file`, which needs `shards` from this node. A shard it
    /// names that was trashed comes back. When the upload is `complete`, its shards that no
    /// file needs are garbage. Returns the shards trashed.
    pub fn commit(
        &self,
        upload: &str,
        file: &str,
        shards: &[ShardId],
        complete: bool,
        now: u64,
    ) -> Result<usize, StoreError> {
        for id in shards {
            let _guard = self.lock(id);
            self.restore_locked(id)?;
            if let Some(mut e) = self.entry(id)? {
                self.add_ref(&mut e, id, FILE_REF, file)?;
                self.add_ref(&mut e, id, UPLOAD_REF, upload)?;
                self.index.insert(key(id), e.encode())?;
                self.link(upload, id)?;
            }
        }
        self.set_upload_state(upload, UploadState::Committed)?;
        if !complete {
            return Ok(0);
        }
        self.trash_garbage(&self.shards_of(upload)?, now)
    }

    /// `upload` was never committed: its shards that nothing else needs are garbage. An
    /// upload this node knows as committed is not abandoned (a coordinator restored from an
    /// old backup may think so). Returns the shards trashed.
    pub fn abandon(&self, upload: &str, now: u64) -> Result<usize, StoreError> {
        if self.upload_state(upload)? == Some(UploadState::Committed) {
            return Err(StoreError::Committed(upload.to_owned()));
        }
        self.set_upload_state(upload, UploadState::Abandoned)?;
        self.trash_garbage(&self.shards_of(upload)?, now)
    }

    /// `file` was deleted (or its shards here moved): it no longer needs `shards`. Returns
    /// the shards trashed.
    pub fn release(&self, file: &str, shards: &[ShardId], now: u64) -> Result<usize, StoreError> {
        for id in shards {
            let _guard = self.lock(id);
            if let Some(mut e) = self.entry(id)? {
                self.drop_ref(&mut e, id, FILE_REF, file)?;
                self.index.insert(key(id), e.encode())?;
            }
        }
        self.trash_garbage(shards, now)
    }

    /// Trashes those of `shards` that are garbage: no file needs them and every upload that
    /// stored them has ended.
    fn trash_garbage(&self, shards: &[ShardId], now: u64) -> Result<usize, StoreError> {
        let mut trashed = 0;
        for id in shards {
            let _guard = self.lock(id);
            let Some(e) = self.entry(id)? else { continue };
            if e.references_unknown()
                || !e.files.is_empty()
                || self.more_refs(&e, id, FILE_REF).next().transpose()?.is_some()
            {
                continue;
            }
            let mut ended = true;
            for u in e.uploads.iter().cloned().map(Ok).chain(self.more_refs(&e, id, UPLOAD_REF)) {
                ended &= matches!(self.upload_state(&u?)?, Some(UploadState::Committed | UploadState::Abandoned));
            }
            if ended {
                fs::rename(self.path(id), trash_file(&self.dir, id))?;
                self.trash
                    .insert(key(id), serde_json::to_vec(&Trashed { entry: e.clone(), at: now }).expect("serializes"))?;
                self.index.remove(key(id))?;
                self.used.fetch_sub(e.len, Ordering::SeqCst);
                self.trashed.fetch_add(e.len, Ordering::SeqCst);
                trashed += 1;
            }
        }
        Ok(trashed)
    }

    /// Brings a trashed shard back (caller holds its lock); true if it was in the trash.
    fn restore_locked(&self, id: &ShardId) -> Result<bool, StoreError> {
        let Some(v) = self.trash.get(key(id))? else { return Ok(false) };
        let t: Trashed = serde_json::from_slice(&v).unwrap_or(Trashed { entry: Entry::default(), at: 0 });
        fs::rename(trash_file(&self.dir, id), self.path(id))?;
        self.index.insert(key(id), t.entry.encode())?;
        self.trash.remove(key(id))?;
        self.trashed.fetch_sub(t.entry.len, Ordering::SeqCst);
        self.used.fetch_add(t.entry.len, Ordering::SeqCst);
        Ok(true)
    }

    /// Brings trashed shards back: those named, or all. Returns how many.
    pub fn restore(&self, shards: Option<&[ShardId]>) -> Result<usize, StoreError> {
        let ids: Vec<ShardId> = match shards {
            Some(s) => s.to_vec(),
            None => self.trash.iter().keys().map(|k| Ok(id_of(&k?))).collect::<Result<_, StoreError>>()?,
        };
        let mut n = 0;
        for id in &ids {
            let _guard = self.lock(id);
            n += self.restore_locked(id)? as usize;
        }
        Ok(n)
    }

    /// Removes for good what was trashed before `older_than` (unix seconds); returns how many.
    pub fn empty_trash(&self, older_than: u64) -> Result<usize, StoreError> {
        let mut doomed = Vec::new();
        for kv in self.trash.iter() {
            let (k, v) = kv?;
            if serde_json::from_slice::<Trashed>(&v).is_ok_and(|t| t.at < older_than) {
                doomed.push(id_of(&k));
            }
        }
        for id in &doomed {
            let _guard = self.lock(id);
            let Some(v) = self.trash.remove(key(id))? else { continue };
            let trashed = serde_json::from_slice::<Trashed>(&v).ok();
            self.emptied.insert(key(id), &trashed.as_ref().map_or(0, |t| t.at).to_be_bytes())?;
            let entry = trashed.map(|t| t.entry).unwrap_or_default();
            self.drop_more_refs(&entry, id)?;
            let len = entry.len;
            match fs::remove_file(trash_file(&self.dir, id)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
            self.trashed.fetch_sub(len, Ordering::SeqCst);
        }
        Ok(doomed.len())
    }

    /// Whether shard `id` is still what its id says (re-read and re-hashed): None when it is
    /// not held.
    pub fn verify(&self, id: &ShardId) -> Result<Option<bool>, StoreError> {
        if !self.contains(id) {
            return Ok(None);
        }
        match read_whole(&self.path(id)) {
            Ok(b) => Ok(Some(ShardId::from(blake3::hash(&b)) == *id)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(false)),
            Err(e) => Err(e.into()),
        }
    }

    /// Drops a shard found damaged: it is of no use to anyone, so it goes for good, and is
    /// listed among the [`unreported`](Self::unreported) until the coordinator takes the news.
    pub fn quarantine(&self, id: &ShardId) -> Result<(), StoreError> {
        let _guard = self.lock(id);
        let Some(e) = self.entry(id)? else { return Ok(()) };
        self.unreported.insert(key(id), &[])?;
        self.db.flush()?;
        self.drop_more_refs(&e, id)?;
        self.index.remove(key(id))?;
        match fs::remove_file(self.path(id)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err.into()),
            _ => {}
        }
        self.used.fetch_sub(e.len, Ordering::SeqCst);
        Ok(())
    }

    /// Shards dropped as damaged and not yet reported, at most `limit`.
    pub fn unreported(&self, limit: usize) -> Result<Vec<ShardId>, StoreError> {
        self.unreported.iter().keys().take(limit).map(|k| Ok(id_of(&k?))).collect()
    }

    /// Takes shards off the unreported list: the coordinator has them.
    pub fn reported(&self, ids: &[ShardId]) -> Result<(), StoreError> {
        for id in ids {
            self.unreported.remove(key(id))?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Keeps a (signed, JSON) manifest copy of `file`.
    pub fn keep_manifest(&self, file: &str, copy: &[u8]) -> Result<(), StoreError> {
        self.manifests.insert(file, copy)?;
        Ok(())
    }

    pub fn drop_manifest(&self, file: &str) -> Result<(), StoreError> {
        self.manifests.remove(file)?;
        Ok(())
    }

    /// Keeps the signed deletion notice number `seq` of `file` (its JSON), taken at `at`.
    pub fn keep_deletion(&self, seq: u64, file: &str, at: u64, notice: &[u8]) -> Result<(), StoreError> {
        let mut v = at.to_be_bytes().to_vec();
        v.extend_from_slice(notice);
        self.deletions.insert(format!("{seq:020}/{file}"), v)?;
        Ok(())
    }

    /// The deletion notices kept that are numbered after `after`, in order, up to about
    /// `max_bytes` of them.
    pub fn deletions_after(&self, after: u64, max_bytes: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let (mut out, mut bytes) = (Vec::new(), 0);
        for kv in self.deletions.range(format!("{:020}", after.saturating_add(1)).as_bytes()..) {
            let v = kv?.1;
            if bytes + v.len() > max_bytes {
                break;
            }
            bytes += v.len();
            out.push(v.get(8..).unwrap_or_default().to_vec());
        }
        Ok(out)
    }

    /// Forgets the deletion notices taken, and the shards emptied from the trash that were
    /// trashed, before `older_than`; returns how many deletion notices.
    pub fn forget_deletions(&self, older_than: u64) -> Result<usize, StoreError> {
        let old =
            |v: &[u8]| v.get(..8).is_some_and(|at| u64::from_be_bytes(at.try_into().expect("8 bytes")) < older_than);
        for kv in self.emptied.iter() {
            let (k, v) = kv?;
            if old(&v) {
                self.emptied.remove(k)?;
            }
        }
        let mut n = 0;
        for kv in self.deletions.iter() {
            let (k, v) = kv?;
            if old(&v) {
                self.deletions.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every manifest copy kept.
    pub fn manifests(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.manifests.iter().values().map(|v| Ok(v?.to_vec())).collect()
    }

    /// What this node knows of its coordinator's database.
    pub fn mark(&self) -> Result<CoordinatorMark, StoreError> {
        let mut cached = self.mark.lock().expect("not poisoned");
        if let Some(m) = &*cached {
            return Ok(m.clone());
        }
        let mut m: CoordinatorMark =
            self.meta.get("coordinator")?.and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or_default();
        if !m.recent.is_empty() {
            // Written by an earlier version: moved to their tree, durably, before the mark
            // is written without them.
            self.write_recent(&m.recent)?;
            self.db.flush()?;
            self.meta.insert("coordinator", serde_json::to_vec(&m).expect("serializes"))?;
            self.db.flush()?;
        }
        m.recent = self
            .recent
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or_default());
                Ok((seq, String::from_utf8_lossy(&v).into_owned()))
            })
            .collect::<Result<_, StoreError>>()?;
        *cached = Some(m.clone());
        Ok(m)
    }

    /// Records `mark`: durable with the next `sync`, together with what the notice changed.
    /// Callers take notices one at a time.
    pub fn set_mark(&self, mark: &CoordinatorMark) -> Result<(), StoreError> {
        let mut cached = self.mark.lock().expect("not poisoned");
        let written = cached.as_ref().and_then(|m| m.recent.last()).map_or(0, |r| r.0);
        let result = (|| {
            self.write_recent(mark.recent.iter().filter(|r| r.0 > written))?;
            self.meta.insert("coordinator", serde_json::to_vec(mark).expect("serializes"))?;
            let oldest = mark.recent.first().map_or(0, |r| r.0);
            while let Some((k, _)) = self.recent.first()? {
                if k.as_ref() >= oldest.to_be_bytes().as_slice() {
                    break;
                }
                self.recent.remove(k)?;
            }
            Ok(())
        })();
        // Read again after a failed write: the tree may hold part of it.
        *cached = result.is_ok().then(|| mark.clone());
        result
    }

    fn write_recent<'a>(&self, entries: impl IntoIterator<Item = &'a (u64, String)>) -> Result<(), StoreError> {
        for (seq, digest) in entries {
            self.recent.insert(seq.to_be_bytes(), digest.as_bytes())?;
        }
        Ok(())
    }

    /// Every shard held, with its entry, `after` a shard id (exclusive), at most `limit`: an
    /// inventory in pages.
    pub fn inventory(&self, after: Option<&ShardId>, limit: usize) -> Result<Vec<(ShardId, Entry)>, StoreError> {
        let start = after.map(|a| {
            let mut k = a.0.to_vec();
            k.push(0);
            k
        });
        let range = match &start {
            Some(s) => self.index.range(s.as_slice()..),
            None => self.index.iter(),
        };
        range
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                let (id, mut e) = (id_of(&k), Entry::decode(&v).unwrap_or_default());
                let more: Vec<String> = self.more_refs(&e, &id, FILE_REF).collect::<Result<_, _>>()?;
                e.files.extend(more);
                Ok((id, e))
            })
            .collect()
    }
}

/// Makes `tree` list exactly the files found (id, length, mtime): entries whose file is gone
/// are dropped, files the tree did not know are adopted with `adopt(len, mtime)`. Returns the
/// bytes of the files.
fn reconcile<T: Serialize + serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    found: Vec<(ShardId, u64, u64)>,
    adopt: impl Fn(u64, u64) -> T,
) -> Result<u64, StoreError> {
    let present: std::collections::HashSet<ShardId> = found.iter().map(|(id, ..)| *id).collect();
    for kv in tree.iter() {
        let (k, _) = kv?;
        if !present.contains(&id_of(&k)) {
            tree.remove(k)?;
        }
    }
    let mut bytes = 0;
    for (id, len, mtime) in found {
        if !tree.contains_key(key(&id))? {
            tree.insert(key(&id), serde_json::to_vec(&adopt(len, mtime)).expect("serializes"))?;
        }
        bytes += len;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_from_another_or_an_older_database_are_refused() {
        let mut m = CoordinatorMark::default();
        assert_eq!(m.observe("g1"), Observation::Known);
        assert_eq!((m.accept("g1", 1, "a"), m.accept("g1", 2, "b")), (Ok(Take::New), Ok(Take::New)));
        assert_eq!(m.accept("g1", 2, "b"), Ok(Take::Again), "delivered again: taken, nothing done");
        assert_eq!(m.accept("g1", 1, "a"), Ok(Take::Again));
        assert!(m.accept("g1", 2, "x").is_err(), "another notice under a number already used");
        assert!(m.accept("g1", 1, "b").is_err(), "an older database");
        assert!(m.accept("g2", 9, "c").is_err(), "another database");
        assert_eq!(m.observe("g2"), Observation::OtherDatabase);
        assert_eq!(m.accept("g1", 3, "c"), Ok(Take::New));
        assert_eq!(m.last_notice, 3);
        for n in 4..4 + RECENT_NOTICES as u64 {
            m.accept("g1", n, &n.to_string()).unwrap();
        }
        assert_eq!(m.recent.len(), RECENT_NOTICES);
        assert!(m.accept("g1", 3, "c").is_err(), "too old to be a redelivery");
    }

    #[test]
    fn the_mark_is_kept_across_restarts_and_moved_from_the_old_layout() {
        let dir = tempfile::tempdir().unwrap();
        let taken = |m: &mut CoordinatorMark, n: u64| m.accept("g", n, &format!("d{n}")).unwrap();
        {
            let s = ShardStore::open(dir.path(), 1 << 20).unwrap();
            // The layout before: every recent digest inside the mark's JSON.
            let mut old = CoordinatorMark { generation: Some("g".into()), ..Default::default() };
            (1..=10).for_each(|n| assert_eq!(taken(&mut old, n), Take::New));
            let json = serde_json::json!({"generation": "g", "last_notice": 10, "recent": old.recent});
            s.meta.insert("coordinator", serde_json::to_vec(&json).unwrap()).unwrap();
            let mut m = s.mark().unwrap();
            assert_eq!(m, old);
            assert!(s.meta.get("coordinator").unwrap().unwrap().len() < 100, "the digests moved out");
            for n in 11..=11 + RECENT_NOTICES as u64 {
                taken(&mut m, n);
                s.set_mark(&m).unwrap();
            }
            s.sync().unwrap();
        }
        let s = ShardStore::open(dir.path(), 1 << 20).unwrap();
        let mut m = s.mark().unwrap();
        assert_eq!((m.last_notice, m.recent.len()), (11 + RECENT_NOTICES as u64, RECENT_NOTICES));
        assert_eq!(s.recent.len(), RECENT_NOTICES, "older digests are removed as newer come");
        let last = m.last_notice;
        assert_eq!(m.accept("g", last, &format!("d{last}")), Ok(Take::Again));
        assert!(m.accept("g", 11, "d11").is_err(), "too old to be a redelivery");
    }

    /// An entry used to forget its oldest references past 64: 64 commits of the same shards
    /// by a stranger pushed a file out, and deleting them sent its shards to the trash.
    #[test]
    fn no_reference_is_dropped_however_many_share_a_shard() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), 1 << 20).unwrap();
        let id = ShardId([3; 32]);
        s.put(&id, &[1; 10], "victim-upload", 1).unwrap();
        s.commit("victim-upload", "victim", &[id], true, 1).unwrap();
        let others = 3 * MAX_REFS;
        for i in 0..others {
            s.put(&id, &[1; 10], &format!("u{i}"), 2).unwrap();
            s.commit(&format!("u{i}"), &format!("f{i}"), &[id], true, 2).unwrap();
        }
        assert!(s.index.get(key(&id)).unwrap().unwrap().len() < 16 << 10, "the entry stays small");
        assert!(s.readable_by(&id, "victim-upload") && s.readable_by(&id, "u0"));
        assert_eq!(s.inventory(None, 10).unwrap()[0].1.files.len(), others + 1);
        for i in 0..others {
            assert_eq!(s.release(&format!("f{i}"), &[id], 3).unwrap(), 0, "the victim's file still needs it");
        }
        assert!(s.contains(&id) && s.readable_by(&id, "victim-upload"));
        assert_eq!(s.release("victim", &[id], 3).unwrap(), 1);
        assert!(!s.contains(&id));
        assert_eq!(s.empty_trash(4).unwrap(), 1);
        assert!(s.refs.is_empty(), "rows go with the shard");
    }

    #[test]
    fn put_get_capacity_and_reopen() {
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
        fs::write(dir.path().join("shards").join(&hex[..2]).join(&hex), [9; 10]).unwrap();
        fs::write(dir.path().join("shards").join(&hex[..2]).join(format!("{hex}{TEMP_MARK}1-0")), [9; 10]).unwrap();
        let s = ShardStore::open(dir.path(), 100).unwrap();
        assert_eq!((s.used(), s.count()), (70, 2));
        assert_eq!(crate::sys::fs::TEMP_MARK, TEMP_MARK);
        assert_eq!(fs::read_dir(dir.path().join("shards").join(&hex[..2])).unwrap().count(), 1);
        // Who needs an adopted shard is not known: any grant reads it, and a file's release
        // does not make it garbage; a notice naming its file makes it an ordinary entry.
        assert!(s.readable_by(&b, "u9"));
        assert_eq!(s.release("f1", &[b], 9).unwrap(), 0);
        assert!(s.contains(&b));
        s.commit("u9", "f9", &[b], false, 9).unwrap();
        assert!(s.readable_by(&b, "u9") && !s.readable_by(&b, "u8"));
    }

    #[test]
    fn deletion_notices_are_kept_in_order_and_forgotten_when_old() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), 100).unwrap();
        for (seq, file, at) in [(3, "f3", 30), (12, "f12", 120), (7, "f7", 70)] {
            s.keep_deletion(seq, file, at, file.as_bytes()).unwrap();
        }
        assert_eq!(s.deletions_after(0, 1 << 20).unwrap(), [b"f3".to_vec(), b"f7".to_vec(), b"f12".to_vec()]);
        assert_eq!(s.deletions_after(7, 1 << 20).unwrap(), [b"f12".to_vec()]);
        assert_eq!(s.deletions_after(0, 20).unwrap().len(), 2, "bounded in bytes");
        assert_eq!(s.forget_deletions(100).unwrap(), 2);
        assert_eq!(s.deletions_after(0, 1 << 20).unwrap(), [b"f12".to_vec()]);
    }

    #[test]
    fn a_shard_let_go_is_known_as_such_after_the_trash_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), 1000).unwrap();
        let a = ShardId([4; 32]);
        s.put(&a, &[4; 10], "u1", 1).unwrap();
        s.commit("u1", "f1", &[a], true, 2).unwrap();
        assert!(!s.let_go(&a));
        assert_eq!(s.release("f1", &[a], 5).unwrap(), 1);
        assert!(s.let_go(&a), "in the trash");
        assert_eq!(s.empty_trash(6).unwrap(), 1);
        assert!(s.let_go(&a), "emptied from the trash");
        s.forget_deletions(6).unwrap();
        assert!(!s.let_go(&a), "forgotten with old deletion notices");
    }

    #[test]
    fn a_lost_index_keeps_every_shard_readable() {
        let dir = tempfile::tempdir().unwrap();
        let a = ShardId([1; 32]);
        {
            let s = ShardStore::open(dir.path(), 100).unwrap();
            s.put(&a, &[7; 60], "u1", 1).unwrap();
            s.commit("u1", "f1", &[a], true, 2).unwrap();
        }
        fs::remove_dir_all(dir.path().join("index")).unwrap();
        let s = ShardStore::open(dir.path(), 100).unwrap();
        assert!(s.readable_by(&a, "u1"), "the upload a reader's grant names");
        assert_eq!(s.release("f2", &[a], 3).unwrap(), 0, "another file's release");
        assert_eq!(s.get(&a).unwrap().unwrap().len(), 60);
    }

    #[test]
    fn only_shards_nothing_needs_are_trashed_and_they_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), 1000).unwrap();
        let (a, b, c, pad) = (ShardId([1; 32]), ShardId([2; 32]), ShardId([3; 32]), ShardId([9; 32]));
        s.put(&a, &[1; 10], "u1", 1).unwrap();
        s.put(&b, &[2; 10], "u1", 1).unwrap(); // a PUT the client thought failed: not in the file
        s.put(&pad, &[0; 10], "u1", 1).unwrap();
        s.put(&pad, &[0; 10], "u2", 2).unwrap(); // the same padding shard in another upload
        s.put(&c, &[3; 10], "u2", 2).unwrap();
        // u1 commits with a and pad here: b is garbage, a and pad are not.
        assert_eq!(s.commit("u1", "f1", &[a, pad], true, 10).unwrap(), 1);
        assert!(s.contains(&a) && s.contains(&pad) && !s.contains(&b));
        assert_eq!((s.used(), s.trashed()), (30, 10));
        // A committed upload is never abandoned; an abandoned one frees what only it held.
        assert!(matches!(s.abandon("u1", 11), Err(StoreError::Committed(_))));
        assert_eq!(s.abandon("u2", 11).unwrap(), 1, "c goes, pad stays for f1");
        assert!(s.contains(&pad) && !s.contains(&c));
        // Deleting f1 frees a and pad.
        assert_eq!(s.release("f1", &[a, pad], 12).unwrap(), 2);
        assert_eq!((s.used(), s.trashed()), (0, 40));
        // A later commit naming a trashed shard brings it back; the rest can be restored.
        s.commit("u3", "f3", &[a], false, 13).unwrap();
        assert!(s.contains(&a) && s.get(&a).unwrap().unwrap()[..] == [1; 10]);
        assert_eq!(s.restore(Some(&[b])).unwrap(), 1);
        assert_eq!(s.used(), 20);
        // Emptying the trash removes only what is older than the retention.
        assert_eq!(s.empty_trash(12).unwrap(), 1, "c, trashed at 11");
        assert_eq!(s.empty_trash(100).unwrap(), 1, "pad, trashed at 12");
        assert_eq!(s.trashed(), 0);
        // The trash survives a restart.
        s.release("f3", &[a], 20).unwrap();
        drop(s);
        let s = ShardStore::open(dir.path(), 1000).unwrap();
        assert_eq!((s.trashed(), s.restore(None).unwrap()), (10, 1));
        assert!(s.contains(&a));
    }
}
