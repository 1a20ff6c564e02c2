//! What an interrupted upload of a file leaves behind so that running it again continues it:
//! a small state file in the user's cache directory, named for the coordinator, the account,
//! the file's path and the coding parameters. It holds the upload id, the salt and the
//! segment table so far (never the password or a key), and is written after every batch the
//! coordinator recorded.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use crate::core::codec::EncodeParams;
use crate::core::manifest::PageBuilder;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadState {
    pub path: PathBuf,
    pub size: u64,
    /// Modification time in nanoseconds since the epoch: a file changed since is not resumed.
    pub modified: u128,
    pub upload_id: String,
    pub salt: String,
    pub iterations: u32,
    /// Hex SHA-256 of the owner token: the password must be the same.
    pub owner_hash: String,
    /// Segments the coordinator recorded, and their table.
    pub committed: u32,
    pub pages: PageBuilder,
}

/// The state file of one file's upload.
pub struct StateFile {
    path: PathBuf,
}

/// A file's size and modification time, as a resumed upload compares them.
pub fn stamp(file: &Path) -> std::io::Result<(u64, u128)> {
    let m = std::fs::metadata(file)?;
    let modified = m.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Ok((m.len(), modified))
}

impl StateFile {
    /// The state file for uploading `file` to `coordinator` as `account` with `params`, in
    /// `dir`.
    pub fn new(dir: &Path, coordinator: &str, account: &str, file: &Path, params: &EncodeParams) -> StateFile {
        let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
        let key = format!(
            "{coordinator}\n{account}\n{}\n{}-{}-{}",
            file.display(),
            params.shape.k,
            params.shape.n,
            params.segment_size
        );
        let name = hex::encode(&digest(&SHA256, key.as_bytes()).as_ref()[..16]);
        StateFile { path: dir.join(format!("{name}.json")) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, if there is a readable one (an unreadable one is dropped: the upload
    /// starts over, which is always safe).
    pub fn load(&self) -> Option<UploadState> {
        let text = std::fs::read(&self.path).ok()?;
        match serde_json::from_slice::<UploadState>(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "unreadable upload state; starting over");
                self.remove();
                None
            }
        }
    }

    pub fn save(&self, state: &UploadState) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            crate::sys::fs::create_private_dir(dir)?;
        }
        crate::sys::fs::write_private(&self.path, &serde_json::to_vec(state).expect("serializes"))
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where upload states live: `$XDG_CACHE_HOME/p2pstore/uploads` or `~/.cache/p2pstore/uploads`.
pub fn default_dir() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("p2pstore").join("uploads"))
}
