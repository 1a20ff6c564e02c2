//! Download: the manifest root (checked against the id), the password (checked by opening
//! the sealed metadata), then, a page of the segment table at a time (each checked against
//! the root) with the placements for that page, segment after segment fetched a few ahead,
//! verified, decoded and written: past the page cache to a temporary file renamed into place
//! only when complete, or in order to a stream, or only the segments a byte range needs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;

use super::{Client, ClientError, blocking};
use crate::core::codec::Decoder;
use crate::core::crypto::Secret;
use crate::core::error::CodecError;
use crate::core::manifest::{FileId, FileMeta, Manifest, PAGE_SEGMENTS, SegmentEntry, page_of, plain_per_segment};
use crate::core::merkle::ShardId;
use crate::net::transfer::{Problems, fetch_segment};
use crate::proto::{DamageClaim, FileView};
use crate::sys::fs::{DirectWriter, write_atomically};
use crate::sys::pool::Buf;

/// Segments whose shards are fetched ahead of the one being decoded.
const DOWNLOAD_AHEAD: usize = 4;

/// Where a download's plaintext goes, a segment at a time: `range` of the decoded `plain`.
/// A writer copies it; a sink that keeps the segment itself saves that copy (the range
/// reader hands it to the S3 gateway's response as it is).
pub trait Sink {
    fn put(&mut self, plain: Buf, range: Range<usize>) -> std::io::Result<()>;
    /// After the last segment.
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Sink for W {
    fn put(&mut self, plain: Buf, range: Range<usize>) -> std::io::Result<()> {
        self.write_all(&plain[range])
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

/// What a download found on the way.
#[derive(Debug, Default)]
pub struct DownloadReport {
    pub path: PathBuf,
    /// One sentence per peer that served bad or no data.
    pub problems: Vec<String>,
}

/// A file opened for reading: its checked root, its keys, and the pages of its segment
/// table fetched so far.
pub struct OpenFile {
    client: Client,
    id: FileId,
    decoder: Arc<Decoder>,
    manifest: Arc<Manifest>,
    pages: Mutex<HashMap<u32, Arc<Page>>>,
    problems: Arc<Mutex<Problems>>,
}

/// One page of a file's segment table and the placements of its segments.
struct Page {
    entries: Vec<SegmentEntry>,
    view: Arc<FileView>,
}

impl OpenFile {
    pub fn meta(&self) -> &FileMeta {
        self.decoder.meta()
    }

    pub fn size(&self) -> u64 {
        self.decoder.manifest().plaintext_size
    }

    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Page `p`: the segment table (checked against the root) and the view of its segments.
    async fn page(&self, p: u32) -> Result<Arc<Page>, ClientError> {
        if let Some(page) = self.pages.lock().expect("not poisoned").get(&p) {
            return Ok(page.clone());
        }
        let (id, c) = (self.id, &self.client);
        let first = p * PAGE_SEGMENTS;
        let view = c.info_range(&id, first, PAGE_SEGMENTS);
        let entries = c.page(&id, self.manifest(), p);
        let (view, entries) = tokio::join!(view, entries);
        let page = Arc::new(Page { entries: entries?, view: Arc::new(view?) });
        let mut pages = self.pages.lock().expect("not poisoned");
        if pages.len() >= 4 {
            pages.retain(|&q, _| q + 1 >= p); // keep memory at a few pages
        }
        pages.insert(p, page.clone());
        Ok(page)
    }

    /// Writes the plaintext bytes `range` (clamped to the file) to `out`, a segment at a
    /// time, each written only once it authenticated. Runs on a blocking thread.
    fn write_range(
        self: &Arc<Self>,
        range: Range<u64>,
        out: &mut dyn Sink,
        progress: Option<&ProgressBar>,
        rt: &tokio::runtime::Handle,
    ) -> Result<(), ClientError> {
        let size = self.size();
        let (start, end) = (range.start.min(size), range.end.min(size));
        if start >= end && !(start == 0 && size == 0) {
            return Ok(());
        }
        let per = plain_per_segment(self.manifest().segment_size);
        let first = (start / per) as u32;
        let last = if size == 0 { 0 } else { ((end - 1) / per) as u32 };
        let mut ahead = VecDeque::new();
        for i in first..=last {
            while ahead.len() < DOWNLOAD_AHEAD && i + (ahead.len() as u32) <= last {
                let j = i + ahead.len() as u32;
                let file = self.clone();
                ahead.push_back(rt.spawn(async move {
                    let page = file.page(page_of(j)).await?;
                    let entry = page.entries[(j % PAGE_SEGMENTS) as usize].clone();
                    let http = file.client.http.clone();
                    let (m, view) = (file.manifest.clone(), page.view.clone());
                    let shards = fetch_segment(http, m, view, entry, file.problems.clone(), j).await;
                    file.report_damage().await;
                    Ok::<_, ClientError>(shards?)
                }));
            }
            let shards = rt.block_on(ahead.pop_front().expect("queued"))??;
            let plain = self.decoder.decode_segment(i, &shards)?;
            let seg_start = i as u64 * per;
            let from = start.saturating_sub(seg_start) as usize;
            let to = ((end - seg_start) as usize).min(plain.len());
            out.put(plain, from..to).map_err(CodecError::Write)?;
            if let Some(p) = progress {
                p.inc((to - from) as u64)
            }
        }
        Ok(())
    }

    /// Tells the coordinator which peers served bytes that do not match their shards' ids, so
    /// that it audits them at once. Best effort: the read goes on, from other peers, whatever
    /// the answer.
    async fn report_damage(&self) {
        let bad = std::mem::take(&mut self.problems.lock().expect("not poisoned").mismatched);
        let mut by_peer: BTreeMap<String, (Vec<ShardId>, Vec<u32>)> = BTreeMap::new();
        for (peer, id, segment) in bad {
            let (ids, segments) = by_peer.entry(peer).or_default();
            ids.push(id);
            segments.push(segment);
        }
        for (peer_id, (shard_ids, segments)) in by_peer {
            let claim = serde_json::to_vec(&DamageClaim { peer_id, shard_ids, segments }).expect("serializes");
            let path = format!("/v2/files/{}/damage", self.id);
            match self.client.send_signed("POST", &path, claim.into()).await {
                Ok(r) if r.status.is_success() => {}
                Ok(r) => tracing::debug!(status = %r.status, error = %r.error_message(), "damage claim not taken"),
                Err(e) => tracing::debug!(error = %e, "damage claim not sent"),
            }
        }
    }

    fn problems(&self) -> Vec<String> {
        self.problems.lock().expect("not poisoned").notes.clone()
    }
}

impl Client {
    /// Opens `id` for reading: fetches its manifest root (checked against the id) and checks
    /// the password.
    pub async fn open(&self, id: &FileId, secret: impl Into<Secret>) -> Result<Arc<OpenFile>, ClientError> {
        let manifest = self.manifest(id).await?;
        let secret = secret.into();
        let decoder = blocking(move || Ok(Decoder::with_secret(manifest, &secret)?)).await?;
        Ok(Arc::new(OpenFile {
            client: self.clone(),
            id: *id,
            manifest: Arc::new(decoder.manifest().clone()),
            decoder: Arc::new(decoder),
            pages: Mutex::new(HashMap::new()),
            problems: Arc::new(Mutex::new(Problems::default())),
        }))
    }

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
        // The key derivation (0.1 s by design) and the first page's queries overlap.
        let file = self.open(id, password).await?;
        if let Some(p) = &progress {
            p.set_length(file.size());
        }
        let path = match out {
            Some(p) => p.to_owned(),
            None => safe_name(&file.meta().name)?,
        };
        let rt = tokio::runtime::Handle::current();
        let (target, f) = (path.clone(), file.clone());
        blocking(move || {
            write_atomically(&target, overwrite, |fd| -> Result<(), ClientError> {
                let mut out = DirectWriter::new(fd).map_err(CodecError::Write)?;
                f.write_range(0..u64::MAX, &mut out, progress.as_ref(), &rt)?;
                Ok(out.finish().map_err(CodecError::Write)?)
            })
        })
        .await?;
        Ok(DownloadReport { path, problems: file.problems() })
    }

    /// Writes the bytes `range` of `id` (all of it: `0..u64::MAX`) to `out` in order. Not
    /// atomic: what authenticated is written, segment by segment, and an error stops it
    /// before any byte of the segment that failed.
    pub async fn download_to<W: Sink + Send + 'static>(
        &self,
        file: &Arc<OpenFile>,
        range: Range<u64>,
        mut out: W,
        progress: Option<ProgressBar>,
    ) -> Result<(W, Vec<String>), ClientError> {
        let rt = tokio::runtime::Handle::current();
        let f = file.clone();
        let out = blocking(move || {
            f.write_range(range, &mut out, progress.as_ref(), &rt)?;
            out.finish().map_err(CodecError::Write)?;
            Ok(out)
        })
        .await?;
        Ok((out, file.problems()))
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
