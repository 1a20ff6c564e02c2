//! Download: the manifest (checked against the id), the password (checked by opening the
//! sealed metadata), then segment after segment fetched a few ahead, verified, decoded and
//! written past the page cache to a temporary file renamed into place only when complete.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;

use super::{Client, ClientError, blocking};
use crate::core::codec::Decoder;
use crate::core::error::CodecError;
use crate::core::manifest::FileId;
use crate::net::transfer::fetch_segment;
use crate::sys::fs::{DirectWriter, write_atomically};

/// Segments whose shards are fetched ahead of the one being decoded.
const DOWNLOAD_AHEAD: usize = 4;

/// What a download found on the way.
#[derive(Debug, Default)]
pub struct DownloadReport {
    pub path: PathBuf,
    /// One sentence per peer that served bad or no data.
    pub problems: Vec<String>,
}

impl Client {
    /// Downloads `id` to `out` (or the original name in the current directory), writing
    /// nothing unless every segment authenticated.
    pub async fn download(
        &self,
        id: &FileId,
        password: &[u8],
        out: Option<&Path>,
        overwrite: bool,
        progress: Option<ProgressBar>,
    ) -> Result<DownloadReport, ClientError> {
        let manifest = self.manifest(id).await?;
        if let Some(p) = &progress {
            p.set_length(manifest.plaintext_size);
        }
        let password = password.to_vec();
        // The key derivation (0.1 s by design) and the placements query overlap.
        let (decoder, view) = tokio::join!(blocking(move || Ok(Decoder::new(manifest, &password)?)), self.info(id));
        let (decoder, view) = (decoder?, Arc::new(view?));
        let path = match out {
            Some(p) => p.to_owned(),
            None => safe_name(&decoder.meta().name)?,
        };
        let problems = Arc::new(Mutex::new(Vec::new()));
        let manifest = Arc::new(decoder.manifest().clone());
        let (http, probs, dec) = (self.http.clone(), problems.clone(), decoder);
        let rt = tokio::runtime::Handle::current();
        let target = path.clone();
        blocking(move || {
            write_atomically(&target, overwrite, |file| -> Result<(), ClientError> {
                let mut out = DirectWriter::new(file).map_err(CodecError::Write)?;
                let count = dec.manifest().segments.len() as u32;
                let mut ahead = VecDeque::new();
                for i in 0..count {
                    while ahead.len() < DOWNLOAD_AHEAD && i + (ahead.len() as u32) < count {
                        let j = i + ahead.len() as u32;
                        let fetch = fetch_segment(http.clone(), manifest.clone(), view.clone(), probs.clone(), j);
                        ahead.push_back(rt.spawn(fetch));
                    }
                    let shards = rt.block_on(ahead.pop_front().expect("queued"))??;
                    let plain = dec.decode_segment(i, &shards)?;
                    out.write_all(&plain).map_err(CodecError::Write)?;
                    if let Some(p) = &progress {
                        p.inc(plain.len() as u64)
                    }
                }
                Ok(out.finish().map_err(CodecError::Write)?)
            })
        })
        .await?;
        let problems = problems.lock().expect("not poisoned").clone();
        Ok(DownloadReport { path, problems })
    }
}

/// The original name, reduced to a plain file name in the current directory. The uploader
/// chose it, so anything a name should not do is refused rather than followed: a path
/// (only its last part is kept), a leading dot (hidden files, `.bashrc`), control characters
/// (terminal escapes). `-o PATH` names the file instead.
pub(crate) fn safe_name(name: &str) -> Result<PathBuf, ClientError> {
    let base = Path::new(name).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let unusable = base.is_empty() || base.starts_with('.') || base.chars().any(char::is_control);
    if unusable {
        return Err(ClientError::UnusableName(name.escape_default().to_string()));
    }
    Ok(PathBuf::from(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_cannot_escape_hide_or_control_the_terminal() {
        assert_eq!(safe_name("photo.jpg").unwrap(), PathBuf::from("photo.jpg"));
        assert_eq!(safe_name("/etc/cron.d/evil").unwrap(), PathBuf::from("evil"));
        assert_eq!(safe_name("../../x").unwrap(), PathBuf::from("x"));
        for bad in ["", ".", "..", ".bashrc", "dir/.ssh", "a\u{1b}[31mred", "tab\there", "new\nline", "x\u{7f}"] {
            let e = safe_name(bad).unwrap_err().to_string();
            assert!(!e.chars().any(char::is_control), "the message itself is escaped: {e:?}");
            assert!(e.contains("-o PATH"), "{e}");
        }
    }
}
