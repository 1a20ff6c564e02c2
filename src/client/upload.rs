//! Upload: plan, encode on a blocking thread, put every segment's shards straight to the
//! planned nodes (two segments in flight), record the segments with the coordinator in
//! batches as they complete, then commit the small manifest root. A file's upload keeps a
//! state file after each batch so that running it again resumes it (`resume`).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::ProgressBar;
use ring::digest::{SHA256, digest};

use super::resume::{StateFile, UploadState, stamp};
use super::{Client, ClientError};
use crate::core::codec::{EncodeParams, EncodedSegment, Encoder};
use crate::core::crypto::{FileKeys, Salt, Secret};
use crate::core::error::CodecError;
use crate::core::manifest::{FileId, FileMeta, Manifest, PageBuilder, SegmentEntry, plain_per_segment};
use crate::net::transfer::{StoredSegment, put_segment};
use crate::proto::*;

/// Segments being uploaded at once.
const UPLOAD_AHEAD: usize = 2;
/// A batch of stored segments is recorded with the coordinator when it holds this many, or
/// after this long: what an interrupted upload loses at most.
const BATCH_SEGMENTS: usize = 64;
const BATCH_EVERY: Duration = Duration::from_secs(5);

/// What to upload.
pub enum Source {
    /// A file: its size is known, and an interrupted upload of it can resume.
    File(PathBuf),
    /// A stream read to its end, stored under `name`; `size` when it is known (an S3 body):
    /// planned as a file of that size, not charged a stream's window of quota.
    Stream { reader: Box<dyn Read + Send>, name: String, size: Option<u64> },
}

/// How to upload.
pub struct UploadOptions<'a> {
    pub params: EncodeParams,
    pub progress: Option<ProgressBar>,
    /// The name sealed into the manifest (default: the file's name).
    pub name: Option<String>,
    /// Where a file's upload keeps its state to resume (None: it does not).
    pub state_dir: Option<PathBuf>,
    /// Throw away the state of an interrupted upload of the same file and start over.
    pub restart: bool,
    /// Told, in a sentence, what became of an interrupted upload (resumed, or why not).
    pub say: &'a (dyn Fn(String) + Sync),
}

impl<'a> UploadOptions<'a> {
    pub fn new(params: EncodeParams) -> UploadOptions<'a> {
        UploadOptions { params, progress: None, name: None, state_dir: None, restart: false, say: &|_| {} }
    }
}

enum Input {
    File(std::fs::File, PathBuf),
    Stream(Box<dyn Read + Send>),
}

/// Where an upload starts: fresh, or after the segments an interrupted one recorded.
struct Start {
    upload_id: Option<String>,
    salt: Salt,
    pages: PageBuilder,
}

impl Client {
    /// Uploads a file; returns its id.
    pub async fn upload(
        &self,
        path: &Path,
        password: &[u8],
        params: EncodeParams,
        progress: Option<ProgressBar>,
    ) -> Result<FileId, ClientError> {
        let opts = UploadOptions { progress, ..UploadOptions::new(params) };
        self.upload_from(Source::File(path.to_owned()), password, opts).await
    }

    /// Uploads `size` bytes read from `reader` (a stream, on a blocking thread, a segment at
    /// a time) as a file named by `meta`; returns its id. A read error stops the upload
    /// before anything is committed. A stretched key seals with its own salt.
    pub async fn upload_reader(
        &self,
        reader: impl Read + Send + 'static,
        size: u64,
        meta: FileMeta,
        secret: Secret,
        params: EncodeParams,
        progress: Option<ProgressBar>,
    ) -> Result<FileId, ClientError> {
        if let Some(p) = &progress {
            p.set_length(size);
        }
        let opts = UploadOptions { progress, ..UploadOptions::new(params) };
        self.upload_from(Source::Stream { reader: Box::new(reader), name: meta.name, size: Some(size) }, secret, opts)
            .await
    }

    /// Uploads a file or a stream; returns its id.
    pub async fn upload_from(
        &self,
        source: Source,
        secret: impl Into<Secret>,
        opts: UploadOptions<'_>,
    ) -> Result<FileId, ClientError> {
        let secret = secret.into();
        let params = opts.params;
        let (input, size, name, state): (Input, Option<u64>, String, _) = match source {
            Source::File(path) => {
                let io = |source| ClientError::Input { path: path.clone(), source };
                let (size, modified) = stamp(&path).map_err(io)?;
                let file = std::fs::File::open(&path).map_err(io)?;
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let state = match &opts.state_dir {
                    Some(dir) => {
                        let account = self.account_id();
                        Some((StateFile::new(dir, &self.base, &account, &path, &params), size, modified, path.clone()))
                    }
                    None => None,
                };
                (Input::File(file, path), Some(size), name, state)
            }
            Source::Stream { reader, name, size } => (Input::Stream(reader), size, name, None),
        };
        let name = opts.name.clone().unwrap_or(name);
        if let Some(p) = &opts.progress {
            p.set_length(size.unwrap_or(0));
        }

        let mut start =
            Start { upload_id: None, salt: secret.salt().unwrap_or_else(Salt::random), pages: PageBuilder::default() };
        if let Some((file, size, modified, path)) = &state {
            if opts.restart {
                file.remove();
            } else if let Some(saved) = file.load() {
                match self.resumable(&saved, *size, *modified, &secret, params).await {
                    Ok(()) => {
                        let done = saved.committed as u64 * plain_per_segment(params.segment_size);
                        (opts.say)(format!(
                            "resuming the interrupted upload of {} from segment {} ({} of {} bytes already stored)",
                            path.display(),
                            saved.committed,
                            done.min(*size),
                            size
                        ));
                        start = Start {
                            upload_id: Some(saved.upload_id),
                            salt: Salt::from_hex(&saved.salt).expect("checked"),
                            pages: saved.pages,
                        };
                    }
                    Err(why) => {
                        (opts.say)(format!(
                            "not resuming the interrupted upload of {}: {why}; starting over",
                            path.display()
                        ));
                        file.remove();
                    }
                }
            }
        }
        let first = start.pages.segments() as u32;
        let reader: Box<dyn Read + Send> = match input {
            Input::File(mut file, path) => {
                let skip = first as u64 * plain_per_segment(params.segment_size);
                file.seek(SeekFrom::Start(skip)).map_err(|source| ClientError::Input { path, source })?;
                Box::new(file)
            }
            Input::Stream(reader) => reader,
        };

        let plan = match &start.upload_id {
            None => {
                let req = PlanRequest {
                    size: size.unwrap_or(0),
                    k: params.shape.k,
                    n: params.shape.n,
                    segment_size: params.segment_size,
                    stream: size.is_none(),
                };
                self.plan(&req).await?
            }
            Some(id) => self.layout(id, first).await?,
        };
        let upload_id = plan.upload_id.clone();
        let salt = start.salt;

        // Encoding runs on a blocking thread and hands segments over a short queue, so memory
        // stays at a few segments.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<EncodedSegment>(1);
        let encoder_secret = secret.clone();
        let pages = start.pages.clone();
        let encoder = tokio::task::spawn_blocking(move || -> Result<(Manifest, [u8; 32]), CodecError> {
            let reader = std::io::BufReader::with_capacity(1 << 20, reader);
            let keys = FileKeys::from_secret(&encoder_secret, salt, params.iterations)?;
            let mut enc = Encoder::with_keys(reader, keys, params)?.resume(pages);
            while let Some(seg) = enc.next_segment()? {
                if tx.blocking_send(seg).is_err() {
                    // The network side failed and reports its own error; nothing to finish.
                    return Err(CodecError::Write(std::io::Error::other("the upload stopped")));
                }
            }
            let token = enc.keys().owner_token();
            Ok((enc.finish(&FileMeta { name, content_type: "application/octet-stream".into() })?, token))
        });

        let mut batch = Batch::new(first, start.pages);
        let mut layout = Arc::new(plan);
        let mut in_flight = futures::stream::FuturesOrdered::new();
        let mut done = false;
        let mut owner_hash = None;
        while !done || !in_flight.is_empty() {
            tokio::select! {
                seg = rx.recv(), if !done && in_flight.len() < UPLOAD_AHEAD => match seg {
                    Some(seg) => {
                        if seg.index as usize >= layout.first as usize + layout.segments.len() {
                            layout = Arc::new(self.layout(&upload_id, seg.index).await?);
                        }
                        let entry = seg.entry();
                        let put = put_segment(self.http.clone(), layout.clone(), seg);
                        in_flight.push_back(async move { put.await.map(|s| (entry, s)) });
                    }
                    None => done = true,
                },
                Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                    let (entry, StoredSegment { peers, receipts, plain_bytes }) = r?;
                    batch.add(entry, peers, receipts);
                    if let Some(p) = &opts.progress { p.inc(plain_bytes) }
                    if batch.due() && !done {
                        self.record(&upload_id, &mut batch).await?;
                        if let Some((file, size, modified, path)) = &state {
                            let owner = match &owner_hash {
                                Some(h) => h,
                                None => owner_hash.insert(owner_hash_of(&secret, salt, params.iterations).await?),
                            };
                            let saved = UploadState {
                                path: path.clone(),
                                size: *size,
                                modified: *modified,
                                upload_id: upload_id.clone(),
                                salt: salt.to_hex(),
                                iterations: params.iterations,
                                owner_hash: owner.clone(),
                                committed: batch.first,
                                pages: batch.pages.clone(),
                            };
                            if let Err(e) = file.save(&saved) {
                                tracing::warn!(path = %file.path().display(), error = %e, "cannot save the upload's state");
                            }
                        }
                    }
                }
            }
        }
        let (manifest, token) = encoder.await??;
        let commit = Commit {
            upload_id: upload_id.clone(),
            manifest: hex::encode(manifest.to_bytes()),
            owner_hash: hex::encode(digest(&SHA256, &token)),
            placements: batch.placements,
            segments: batch.segments,
            receipts: batch.receipts,
        };
        let reply: CommitReply = self.post_json(&format!("/v2/uploads/{upload_id}/commit"), &commit).await?;
        if let Some((file, ..)) = &state {
            file.remove();
        }
        let id = manifest.file_id();
        if reply.file_id != id.to_string() {
            return Err(ClientError::CommitMismatch { expected: id.to_string(), got: reply.file_id });
        }
        Ok(id)
    }

    /// Why a saved upload cannot be resumed, if it cannot.
    async fn resumable(
        &self,
        saved: &UploadState,
        size: u64,
        modified: u128,
        secret: &Secret,
        params: EncodeParams,
    ) -> Result<(), String> {
        if saved.size != size || saved.modified != modified {
            return Err("the file changed since".into());
        }
        let Some(salt) = Salt::from_hex(&saved.salt) else { return Err("its state is damaged".into()) };
        if saved.iterations != params.iterations {
            return Err("the key derivation settings changed".into());
        }
        let hash = owner_hash_of(secret, salt, params.iterations).await.map_err(|e| e.to_string())?;
        if hash != saved.owner_hash {
            return Err("the password is not the one it was started with".into());
        }
        match self.upload_status(&saved.upload_id).await {
            Ok(s) if s.committed >= saved.committed => Ok(()),
            Ok(s) => Err(format!("the coordinator recorded {} segments of it, not {}", s.committed, saved.committed)),
            Err(e) => Err(format!("the coordinator no longer has it ({e})")),
        }
    }

    /// Peers and fresh orders for the segments from `first` of an upload.
    pub async fn layout(&self, upload_id: &str, first: u32) -> Result<Plan, ClientError> {
        let req = LayoutRequest { first, count: LAYOUT_SEGMENTS };
        self.post_json(&format!("/v2/uploads/{upload_id}/layout"), &req).await
    }

    /// How far an upload got.
    pub async fn upload_status(&self, upload_id: &str) -> Result<UploadStatus, ClientError> {
        self.get_signed(&format!("/v2/uploads/{upload_id}")).await
    }

    /// Records a batch with the coordinator and starts the next.
    async fn record(&self, upload_id: &str, batch: &mut Batch) -> Result<(), ClientError> {
        let body = SegmentBatch {
            first: batch.first,
            segments: std::mem::take(&mut batch.segments),
            placements: std::mem::take(&mut batch.placements),
            receipts: std::mem::take(&mut batch.receipts),
        };
        let count = body.segments.len() as u32;
        let _: UploadStatus = self.post_json(&format!("/v2/uploads/{upload_id}/segments"), &body).await?;
        batch.first += count;
        batch.since = Instant::now();
        Ok(())
    }
}

/// Stored segments not yet recorded with the coordinator, and the table of all of them.
struct Batch {
    first: u32,
    segments: Vec<SegmentEntry>,
    placements: Vec<Vec<String>>,
    receipts: Vec<Signed<Receipt>>,
    pages: PageBuilder,
    since: Instant,
}

impl Batch {
    fn new(first: u32, pages: PageBuilder) -> Batch {
        Batch {
            first,
            segments: Vec::new(),
            placements: Vec::new(),
            receipts: Vec::new(),
            pages,
            since: Instant::now(),
        }
    }

    fn add(&mut self, entry: SegmentEntry, peers: Vec<String>, receipts: Vec<Signed<Receipt>>) {
        self.pages.push(entry.clone());
        self.segments.push(entry);
        self.placements.push(peers);
        self.receipts.extend(receipts);
    }

    fn due(&self) -> bool {
        self.segments.len() >= BATCH_SEGMENTS || (!self.segments.is_empty() && self.since.elapsed() >= BATCH_EVERY)
    }
}

async fn owner_hash_of(secret: &Secret, salt: Salt, iterations: u32) -> Result<String, ClientError> {
    let secret = secret.clone();
    super::blocking(move || {
        let keys = FileKeys::from_secret(&secret, salt, iterations)?;
        Ok(hex::encode(digest(&SHA256, &keys.owner_token())))
    })
    .await
}
