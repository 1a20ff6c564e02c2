//! Backups of the coordinator's database: every record of every table as JSON text, taken
//! from a running coordinator (`p2pstore coordinator backup FILE`, through its operator API)
//! and written into an empty database by `restore`. Each record is read whole, so a backup is
//! consistent per record; files committed while it is taken may be missing from it, and come
//! back from the network (recovery) if the backup is ever restored. What must be kept safe is
//! the coordinator's key (`identity.p8`): without it nodes refuse the coordinator; everything
//! else can be rebuilt from the network.

use std::path::Path;

use crate::proto::BackupRecord;
use crate::store::DbError;

/// Every record of every table of `db`.
pub(super) fn dump(db: &sled::Db) -> Result<Vec<BackupRecord>, DbError> {
    let mut out = Vec::new();
    for name in db.tree_names() {
        let table = String::from_utf8_lossy(&name).into_owned();
        if table == "__sled__default" {
            continue;
        }
        for kv in db.open_tree(&name)?.iter() {
            let (k, v) = kv?;
            let (key, value) = (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned());
            out.push(BackupRecord { table: table.clone(), key, value });
        }
    }
    Ok(out)
}

/// Why a backup was not restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "the database in {0} is not empty: restore into a new data directory (with the coordinator's identity.p8 copied in)"
    )]
    NotEmpty(String),
    #[error("reading the backup {path}")]
    Read { path: String, source: std::io::Error },
    #[error("line {line} of the backup is not a record: {reason}")]
    Malformed { line: usize, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Writes the records of a backup file (JSON lines of `BackupRecord`) into the empty database
/// of the coordinator whose data directory is `data_dir`; returns how many.
pub fn restore(data_dir: &Path, backup: &Path) -> Result<usize, RestoreError> {
    let text = std::fs::read_to_string(backup)
        .map_err(|source| RestoreError::Read { path: backup.display().to_string(), source })?;
    let db = super::open_db(data_dir)?;
    if db.tree_names().iter().any(|n| &n[..] != b"__sled__default" && db.open_tree(n).is_ok_and(|t| !t.is_empty())) {
        return Err(RestoreError::NotEmpty(data_dir.display().to_string()));
    }
    let mut n = 0;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let r: BackupRecord =
            serde_json::from_str(line).map_err(|e| RestoreError::Malformed { line: i + 1, reason: e.to_string() })?;
        db.open_tree(&r.table)
            .map_err(DbError::from)?
            .insert(r.key.as_bytes(), r.value.as_bytes())
            .map_err(DbError::from)?;
        n += 1;
    }
    db.flush().map_err(DbError::from)?;
    Ok(n)
}
