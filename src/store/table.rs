//! Typed, versioned records in key-value trees: the coordinator's metadata. The engine is
//! behind [`Tree`], so another one can replace sled without touching the coordinator.
//!
//! Every record is stored as `{"v": VERSION, "r": record}`. A record written before records
//! carried a version (a plain JSON object) is version 0. Reading never skips: a record that
//! does not decode is an error naming its table and key, counted in [`Table::decode_errors`],
//! so no caller can mistake a damaged record for an absent one.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A storage engine's error, as text: the engine is replaceable, its error types are not ours.
#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct DbError(pub String);

/// Opens (or creates) the sled database at `path` with a page cache of at most `cache` bytes
/// (sled's default, 1 GiB, fills as the database grows).
pub fn open_db(path: &std::path::Path, cache: u64) -> sled::Result<sled::Db> {
    sled::Config::new().path(path).cache_capacity(cache).open()
}

impl From<sled::Error> for DbError {
    fn from(e: sled::Error) -> DbError {
        DbError(e.to_string())
    }
}

/// Entries a [`Table::visit_prefix`] reads at a time.
pub const SCAN_PAGE: usize = 512;

/// A stored entry: key and value bytes.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The function an atomic update applies to the old value (None: absent; None back: remove).
pub type Updater<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

/// One ordered tree of byte keys and values: all a table needs from a storage engine.
pub trait Tree: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DbError>;
    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), DbError>;
    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DbError>;
    /// Atomically replaces the value with `f(old)` (None removes it); `f` may run more than
    /// once under contention. Returns the new value.
    fn update(&self, key: &[u8], f: &mut Updater<'_>) -> Result<Option<Vec<u8>>, DbError>;
    /// Entries whose keys start with `prefix` (every entry for an empty prefix), in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, DbError>;
    /// At most `limit` entries whose keys start with `prefix` and are at least `from`, in
    /// key order: a long scan a page at a time.
    fn scan_page(&self, prefix: &[u8], from: &[u8], limit: usize) -> Result<Vec<Entry>, DbError>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), DbError>>;
}

impl Tree for sled::Tree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        Ok(sled::Tree::get(self, key)?.map(|v| v.to_vec()))
    }
    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), DbError> {
        sled::Tree::insert(self, key, value)?;
        Ok(())
    }
    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        Ok(sled::Tree::remove(self, key)?.map(|v| v.to_vec()))
    }
    fn update(&self, key: &[u8], f: &mut Updater<'_>) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.update_and_fetch(key, f)?.map(|v| v.to_vec()))
    }
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, DbError> {
        self.scan_prefix(prefix).map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(DbError::from)).collect()
    }
    fn scan_page(&self, prefix: &[u8], from: &[u8], limit: usize) -> Result<Vec<Entry>, DbError> {
        self.range(from.max(prefix)..)
            .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
            .take(limit)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(DbError::from))
            .collect()
    }
    fn len(&self) -> usize {
        sled::Tree::len(self)
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), DbError>> {
        // sled's `flush_async` can leave concurrent callers waiting for ever
        // (tests/it/crash.rs `concurrent_table_flushes_all_return`); its blocking flush cannot.
        let tree = self.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || tree.flush()).await {
                Ok(r) => r.map(|_| ()).map_err(DbError::from),
                Err(e) => Err(DbError(format!("flush: {e}"))),
            }
        })
    }
}

/// A record type of a table: its current version, and how older versions are read.
pub trait Record: Serialize + DeserializeOwned {
    /// The version written now.
    const VERSION: u32;

    /// Today's form of a record stored at an older `version` (0: written before records
    /// carried a version). The default reads it as today's type, which suits records that
    /// only gained fields with serde defaults.
    fn upgrade(version: u32, value: serde_json::Value) -> Result<Self, serde_json::Error> {
        let _ = version;
        serde_json::from_value(value)
    }
}

/// A record that cannot be read: damaged, or written by a newer p2pstore.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "record `{key}` of table `{table}` cannot be read ({reason}); the database is damaged or was written by a \
         newer p2pstore. `p2pstore coordinator check` lists every such record"
    )]
    Undecodable { table: String, key: String, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Typed records of one [`Tree`].
pub struct Table<T> {
    name: String,
    tree: Arc<dyn Tree>,
    changes: AtomicU64,
    decode_errors: AtomicU64,
    reported: Mutex<HashSet<String>>,
    _t: PhantomData<fn() -> T>,
}

/// What a scan of a whole table found: the records that decode, and errors for the others.
pub struct Scan<T> {
    pub records: Vec<(String, T)>,
    pub errors: Vec<RecordError>,
}

impl<T: Record> Table<T> {
    pub fn new(name: &str, tree: Arc<dyn Tree>) -> Table<T> {
        Table {
            name: name.to_owned(),
            tree,
            changes: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            reported: Mutex::new(HashSet::new()),
            _t: PhantomData,
        }
    }

    pub fn open(db: &sled::Db, name: &str) -> Result<Table<T>, DbError> {
        Ok(Table::new(name, Arc::new(db.open_tree(name)?)))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts the writes made through this table: whoever derives something from all of it
    /// can keep that until the count moves (read the count first, then the records).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Reads that met a record that does not decode, since start.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::SeqCst)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    fn encode(value: &T) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "v": T::VERSION, "r": value })).expect("records serialize")
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<T, RecordError> {
        decode_versioned::<T>(bytes).map_err(|e| self.undecodable(key, e.to_string()))
    }

    /// Counts and reports (once per key) a record that does not decode.
    fn undecodable(&self, key: &[u8], reason: String) -> RecordError {
        let key = String::from_utf8_lossy(key).into_owned();
        self.decode_errors.fetch_add(1, Ordering::SeqCst);
        if self.reported.lock().expect("not poisoned").insert(key.clone()) {
            tracing::error!(table = %self.name, %key, %reason, "a stored record does not decode");
        }
        RecordError::Undecodable { table: self.name.clone(), key, reason }
    }

    pub fn get(&self, key: &str) -> Result<Option<T>, RecordError> {
        self.tree.get(key.as_bytes())?.map(|v| self.decode(key.as_bytes(), &v)).transpose()
    }

    pub fn insert(&self, key: &str, value: &T) -> Result<(), RecordError> {
        self.tree.insert(key.as_bytes(), Self::encode(value))?;
        self.changed();
        Ok(())
    }

    /// Atomically replaces the record under `key` with `f(old)` (None removes it); `f` may
    /// run more than once under contention. A stored record that does not decode is left as
    /// it is and the update fails: it is never treated as absent. Returns the new record.
    pub fn update(&self, key: &str, mut f: impl FnMut(Option<T>) -> Option<T>) -> Result<Option<T>, RecordError> {
        let mut failed = None;
        let new = self.tree.update(key.as_bytes(), &mut |old| {
            let old = match old.map(|b| decode_versioned::<T>(b)).transpose() {
                Ok(old) => old,
                Err(e) => {
                    failed = Some(e.to_string());
                    return old.map(<[u8]>::to_vec);
                }
            };
            failed = None;
            f(old).map(|v| Self::encode(&v))
        })?;
        if let Some(reason) = failed {
            return Err(self.undecodable(key.as_bytes(), reason));
        }
        self.changed();
        new.map(|v| self.decode(key.as_bytes(), &v)).transpose()
    }

    pub fn remove(&self, key: &str) -> Result<(), RecordError> {
        self.tree.remove(key.as_bytes())?;
        self.changed();
        Ok(())
    }

    /// Every record whose key starts with `prefix`, in key order, and an error for each one
    /// that does not decode.
    pub fn scan_prefix(&self, prefix: &str) -> Result<Scan<T>, DbError> {
        let mut scan = Scan { records: Vec::new(), errors: Vec::new() };
        for (k, v) in self.tree.scan(prefix.as_bytes())? {
            match self.decode(&k, &v) {
                Ok(r) => scan.records.push((String::from_utf8_lossy(&k).into_owned(), r)),
                Err(e) => scan.errors.push(e),
            }
        }
        Ok(scan)
    }

    /// Visits every record whose key starts with `prefix`, in key order, reading
    /// [`SCAN_PAGE`] entries at a time: memory stays at a page whatever the count. Stops at
    /// the first record that does not decode.
    pub fn visit_prefix(&self, prefix: &str, mut visit: impl FnMut(T)) -> Result<(), RecordError> {
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let page = self.tree.scan_page(prefix.as_bytes(), &from, SCAN_PAGE)?;
            let full = page.len() == SCAN_PAGE;
            for (k, v) in &page {
                visit(self.decode(k, v)?);
            }
            match page.into_iter().next_back() {
                Some((mut k, _)) if full => {
                    k.push(0); // the smallest key after the last one read
                    from = k;
                }
                _ => return Ok(()),
            }
        }
    }

    /// At most `limit` records whose keys start with `prefix` and are at least `from`, in
    /// key order, with their keys; an error for the first that does not decode.
    pub fn range(&self, prefix: &str, from: &str, limit: usize) -> Result<Vec<(String, T)>, RecordError> {
        let page = self.tree.scan_page(prefix.as_bytes(), from.as_bytes(), limit)?;
        page.iter().map(|(k, v)| Ok((String::from_utf8_lossy(k).into_owned(), self.decode(k, v)?))).collect()
    }

    /// Every record, and an error for each one that does not decode.
    pub fn scan(&self) -> Result<Scan<T>, DbError> {
        self.scan_prefix("")
    }

    /// Every record, or the first error: for callers that must not act on a partial view
    /// (garbage collection deletes by absence).
    pub fn all(&self) -> Result<Vec<(String, T)>, RecordError> {
        let mut scan = self.scan()?;
        match scan.errors.pop() {
            Some(e) => Err(e),
            None => Ok(scan.records),
        }
    }

    /// Every record that decodes; the others were logged and counted by the scan. For
    /// views that show what they can (dashboard, audits), never for decisions to delete.
    pub fn readable(&self) -> Vec<(String, T)> {
        match self.scan() {
            Ok(scan) => scan.records,
            Err(e) => {
                tracing::error!(table = %self.name, error = %e, "reading a table failed");
                Vec::new()
            }
        }
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn flush(&self) -> Result<(), DbError> {
        self.tree.flush().await
    }
}

/// A stored record: versioned, or from before versions (version 0).
fn decode_versioned<T: Record>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    use serde::de::Error;
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    let (version, record) = match value {
        serde_json::Value::Object(mut o) if o.len() == 2 && o.contains_key("v") && o.contains_key("r") => {
            let v =
                o.remove("v").and_then(|v| v.as_u64()).ok_or_else(|| Error::custom("its version is not a number"))?;
            (v, o.remove("r").expect("checked"))
        }
        other => (0, other),
    };
    let newer = || Error::custom(format!("version {version}, newer than this p2pstore's {}", T::VERSION));
    let version = u32::try_from(version).map_err(|_| newer())?;
    match version.cmp(&T::VERSION) {
        std::cmp::Ordering::Greater => Err(newer()),
        std::cmp::Ordering::Equal => serde_json::from_value(record),
        std::cmp::Ordering::Less => T::upgrade(version, record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        a: u32,
        #[serde(default)]
        b: String,
    }

    impl Record for Thing {
        const VERSION: u32 = 1;
    }

    fn table() -> (tempfile::TempDir, sled::Db, Table<Thing>) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let t = Table::open(&db, "things").unwrap();
        (dir, db, t)
    }

    #[test]
    fn tables_count_their_writes() {
        let (_d, _db, t) = table();
        t.insert("a", &Thing { a: 1, b: String::new() }).unwrap();
        t.update("a", |v| v.map(|v| Thing { a: v.a + 1, ..v })).unwrap();
        assert_eq!(t.get("a").unwrap().unwrap().a, 2);
        assert_eq!((t.all().unwrap().len(), t.changes()), (1, 2), "reads count nothing");
        t.remove("a").unwrap();
        assert_eq!(t.changes(), 3);
    }

    #[test]
    fn visits_cross_pages_and_stop_at_the_prefix() {
        let (_d, db, t) = table();
        let n = 2 * SCAN_PAGE + 7;
        for i in 0..n {
            t.insert(&format!("f/{i:010}"), &Thing { a: i as u32, b: String::new() }).unwrap();
        }
        for k in ["e/x", "f", "f0", "g/0"] {
            t.insert(k, &Thing { a: u32::MAX, b: String::new() }).unwrap();
        }
        let mut seen = Vec::new();
        t.visit_prefix("f/", |r| seen.push(r.a)).unwrap();
        assert_eq!(seen, (0..n as u32).collect::<Vec<_>>());
        let mut none = 0;
        t.visit_prefix("h/", |_| none += 1).unwrap();
        assert_eq!(none, 0);
        let window: Vec<u32> =
            t.range("f/", &format!("f/{:010}", n - 3), 10).unwrap().iter().map(|(_, r)| r.a).collect();
        assert_eq!(window, [n as u32 - 3, n as u32 - 2, n as u32 - 1], "a range stops at its prefix's end");
        assert_eq!(t.range("f/", "e", 2).unwrap().len(), 2, "a start before the prefix starts at the prefix");
        db.open_tree("things").unwrap().insert(format!("f/{:010}", SCAN_PAGE + 1), b"{".to_vec()).unwrap();
        assert!(t.visit_prefix("f/", |_| {}).is_err(), "a damaged record is an error, not a shorter visit");
    }

    #[test]
    fn records_from_before_versions_still_load() {
        let (_d, db, t) = table();
        // Exactly what the code before versioned records wrote: the bare JSON object.
        db.open_tree("things").unwrap().insert("old", br#"{"a":7}"#.to_vec()).unwrap();
        assert_eq!(t.get("old").unwrap(), Some(Thing { a: 7, b: String::new() }));
        t.update("old", |v| v.map(|v| Thing { a: v.a + 1, ..v })).unwrap();
        let raw = db.open_tree("things").unwrap().get("old").unwrap().unwrap();
        assert_eq!(&raw[..], br#"{"r":{"a":8,"b":""},"v":1}"#, "rewritten with its version");
    }

    #[test]
    fn undecodable_records_are_errors_never_absences() {
        let (_d, db, t) = table();
        t.insert("good", &Thing { a: 1, b: String::new() }).unwrap();
        let raw = db.open_tree("things").unwrap();
        raw.insert("bad", b"{\"a\":\"not a number\"}".to_vec()).unwrap();
        raw.insert("newer", br#"{"v":9,"r":{"a":1}}"#.to_vec()).unwrap();
        assert!(matches!(t.get("bad"), Err(RecordError::Undecodable { .. })));
        let e = t.get("newer").unwrap_err().to_string();
        assert!(e.contains("newer than this p2pstore") && e.contains("things"), "{e}");
        assert!(t.all().is_err(), "a whole-table read must not pretend the bad records are absent");
        let scan = t.scan().unwrap();
        assert_eq!((scan.records.len(), scan.errors.len()), (1, 2));
        // An update of a damaged record leaves it alone and fails.
        let mut called = false;
        assert!(
            t.update("bad", |_| {
                called = true;
                Some(Thing { a: 0, b: String::new() })
            })
            .is_err()
        );
        assert!(!called, "the update function never saw the damaged record as absent");
        assert_eq!(&raw.get("bad").unwrap().unwrap()[..], b"{\"a\":\"not a number\"}");
        assert!(t.decode_errors() >= 4);
    }
}
