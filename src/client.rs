//! The client API the CLI is a thin layer over: upload (encode, plan, put shards straight to
//! nodes, commit receipts), download (verified manifest, parallel shard fetches preferring
//! data shards, atomic output), info, ls, peers, rm.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::ProgressBar;
use ring::digest::{SHA256, digest};

use crate::codec::{Decoder, EncodeParams, EncodedSegment, Encoder, VerifiedShard, write_atomically};
use crate::crypto::{FileKeys, Salt};
use crate::error::CodecError;
use crate::http::{self, request};
use crate::identity::Signed;
use crate::manifest::{FileId, FileMeta, Manifest};
use crate::proto::*;
use crate::store::DirectWriter;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("coordinator {url}: {message}")]
    Coordinator { url: String, message: String },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the coordinator served a manifest that does not hash to file id {0}: refusing it")]
    ManifestMismatch(String),
    #[error("shard {index} of segment {segment} could not be stored on any planned peer: {last_error}")]
    Placement { segment: u32, index: usize, last_error: String },
    #[error("{0}")]
    Other(String),
}

/// Segments whose shards are fetched ahead of the one being decoded.
const DOWNLOAD_AHEAD: usize = 4;
/// Segments being uploaded at once.
const UPLOAD_AHEAD: usize = 2;
/// Ask one more peer for a segment when it is not complete after this long.
const HEDGE_AFTER: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Client {
    base: String,
    http: http::Client,
}

/// What a download found on the way.
#[derive(Debug, Default)]
pub struct DownloadReport {
    pub path: PathBuf,
    /// One sentence per peer that served bad or no data.
    pub problems: Vec<String>,
}

impl Client {
    pub fn new(coordinator: &str) -> Client {
        Client { base: coordinator.trim_end_matches('/').to_owned(), http: http::Client::default() }
    }

    fn err(&self, message: impl Into<String>) -> ClientError {
        ClientError::Coordinator { url: self.base.clone(), message: message.into() }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let r = self.http.get(&format!("{}{path}", self.base)).await.map_err(|e| self.err(e))?;
        r.json().map_err(|e| self.err(e))
    }

    pub async fn peers(&self) -> Result<Vec<PeerView>, ClientError> {
        self.get_json("/v1/peers").await
    }

    /// The newest `limit` audits, of one peer or of all.
    pub async fn audits(&self, peer: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, ClientError> {
        match peer {
            Some(p) => self.get_json(&format!("/v1/audits?peer={p}&limit={limit}")).await,
            None => self.get_json(&format!("/v1/audits?limit={limit}")).await,
        }
    }

    pub async fn list(&self) -> Result<Vec<FileSummary>, ClientError> {
        self.get_json("/v1/files").await
    }

    pub async fn info(&self, id: &FileId) -> Result<FileView, ClientError> {
        self.get_json(&format!("/v1/files/{id}")).await
    }

    /// The manifest of `id`, checked against the id.
    pub async fn manifest(&self, id: &FileId) -> Result<Manifest, ClientError> {
        let r = self.http.get(&format!("{}/v1/files/{id}/manifest", self.base)).await.map_err(|e| self.err(e))?;
        if !r.status.is_success() {
            return Err(self.err(r.error_message()));
        }
        if digest(&SHA256, &r.body).as_ref() != id.0 {
            return Err(ClientError::ManifestMismatch(id.to_string()));
        }
        Ok(Manifest::from_bytes(&r.body)?)
    }

    /// Uploads a file; returns its id.
    pub async fn upload(
        &self,
        path: &Path,
        password: &[u8],
        params: EncodeParams,
        progress: Option<ProgressBar>,
    ) -> Result<FileId, ClientError> {
        let io = |source| ClientError::Io { path: path.to_owned(), source };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if let Some(p) = &progress {
            p.set_length(size);
        }
        let file = std::fs::File::open(path).map_err(io)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let req = PlanRequest { size, k: params.shape.k, n: params.shape.n, segment_size: params.segment_size };
        let plan: Plan = self
            .http
            .post_json(&format!("{}/v1/uploads", self.base), &req)
            .await
            .map_err(|e| self.err(e))?
            .json()
            .map_err(|e| self.err(e))?;
        let plan = Arc::new(plan);

        // Encoding runs on a blocking thread and hands segments over a short queue, so memory
        // stays at a few segments.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<EncodedSegment>(1);
        let password = password.to_vec();
        let encoder = tokio::task::spawn_blocking(move || -> Result<(Manifest, [u8; 32]), CodecError> {
            let mut enc =
                Encoder::new(std::io::BufReader::with_capacity(1 << 20, file), &password, params, Salt::random())?;
            while let Some(seg) = enc.next_segment()? {
                if tx.blocking_send(seg).is_err() {
                    break; // the network side failed; its error is reported
                }
            }
            let token = enc.keys().owner_token();
            Ok((enc.finish(&FileMeta { name, content_type: "application/octet-stream".into() })?, token))
        });

        let mut placements = Vec::new();
        let mut receipts = Vec::new();
        let mut in_flight = futures::stream::FuturesOrdered::new();
        let mut done = false;
        while !done || !in_flight.is_empty() {
            tokio::select! {
                seg = rx.recv(), if !done && in_flight.len() < UPLOAD_AHEAD => match seg {
                    Some(seg) => in_flight.push_back(put_segment(self.http.clone(), plan.clone(), seg)),
                    None => done = true,
                },
                Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                    let (peers, rs, bytes) = r?;
                    placements.push(peers);
                    receipts.extend(rs);
                    if let Some(p) = &progress { p.inc(bytes) }
                }
            }
        }
        let (manifest, token) = joined(encoder.await)?;
        let commit = Commit {
            upload_id: plan.upload_id.clone(),
            manifest: hex::encode(manifest.to_bytes()),
            owner_hash: hex::encode(digest(&SHA256, &token)),
            placements,
            receipts,
        };
        let url = format!("{}/v1/uploads/{}/commit", self.base, plan.upload_id);
        let reply: CommitReply =
            self.http.post_json(&url, &commit).await.map_err(|e| self.err(e))?.json().map_err(|e| self.err(e))?;
        if reply.file_id != manifest.file_id().to_string() {
            return Err(self.err("the commit answered with another file id"));
        }
        Ok(manifest.file_id())
    }

    /// Downloads `id` to `out` (or the original name in `dir`), writing nothing unless every
    /// segment authenticated.
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
                        ahead.push_back(rt.spawn(fetch_segment(
                            http.clone(),
                            manifest.clone(),
                            view.clone(),
                            probs.clone(),
                            j,
                        )));
                    }
                    let shards = joined(rt.block_on(ahead.pop_front().expect("queued")))?;
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

    /// Deletes a file; the password proves ownership (its owner token), and the coordinator
    /// tells the nodes to drop the shards.
    pub async fn remove(&self, id: &FileId, password: &[u8]) -> Result<(), ClientError> {
        let m = self.manifest(id).await?;
        let password = password.to_vec();
        let keys = blocking(move || Ok(FileKeys::derive(&password, m.salt, m.iterations)?)).await?;
        let token = hex::encode(keys.owner_token());
        let req = request("DELETE", &format!("{}/v1/files/{id}", self.base), &[(OWNER_HEADER, &token)], Bytes::new())
            .map_err(|e| self.err(e))?;
        let r = self.http.send(req).await.map_err(|e| self.err(e))?;
        r.json::<serde_json::Value>().map(|_| ()).map_err(|e| self.err(e))
    }
}

/// The result of a finished task, a task that panicked or was cancelled being an error too.
fn joined<T, E: Into<ClientError>>(r: Result<Result<T, E>, tokio::task::JoinError>) -> Result<T, ClientError> {
    r.map_err(|e| ClientError::Other(format!("a worker task failed: {e}")))?.map_err(Into::into)
}

/// Runs CPU- or disk-bound work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    joined(tokio::task::spawn_blocking(f).await)
}

/// The original name, reduced to a plain file name in the current directory.
fn safe_name(name: &str) -> Result<PathBuf, ClientError> {
    let base = Path::new(name).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if base.is_empty() || base == "." || base == ".." {
        return Err(ClientError::Other(format!("the stored file name `{name}` is not usable; pass -o PATH")));
    }
    Ok(PathBuf::from(base))
}

/// Puts a segment's n shards on its planned peers, moving a shard to a spare when its peer
/// fails. Returns the peer of every shard, the receipts, and the plaintext bytes covered.
pub(crate) async fn put_segment(
    http: http::Client,
    plan: Arc<Plan>,
    seg: EncodedSegment,
) -> Result<(Vec<String>, Vec<Signed<Receipt>>, u64), ClientError> {
    let i = seg.index as usize;
    let peers = plan.segments.get(i).ok_or_else(|| ClientError::Other(format!("the plan has no segment {i}")))?;
    let n = seg.shard_count();
    let attempts = (0..n).map(|j| {
        let (http, plan) = (http.clone(), plan.clone());
        let (peer, id, data) = (peers[j].clone(), seg.ids[j], seg.shard(j));
        async move { (j, put_shard(&http, &plan, &peer, id, data).await.map(|r| (peer, r))) }
    });
    let results: Vec<_> = futures::future::join_all(attempts).await;
    let mut placed: Vec<Option<String>> = vec![None; n];
    let mut receipts = Vec::new();
    let mut failed = Vec::new();
    for (j, r) in results {
        match r {
            Ok((peer, receipt)) => {
                placed[j] = Some(peer);
                receipts.push(receipt);
            }
            Err(e) => failed.push((j, e)),
        }
    }
    let mut spares: VecDeque<&String> = peers[n.min(peers.len())..].iter().collect();
    for (j, mut last_error) in failed {
        tracing::warn!(segment = i, shard = j, error = %last_error, "shard put failed; trying a spare peer");
        loop {
            let Some(spare) = spares.pop_front() else {
                return Err(ClientError::Placement { segment: i as u32, index: j, last_error });
            };
            match put_shard(&http, &plan, spare, seg.ids[j], seg.shard(j)).await {
                Ok(r) => {
                    placed[j] = Some(spare.clone());
                    receipts.push(r);
                    break;
                }
                Err(e) => last_error = e,
            }
        }
    }
    let plain = seg.sealed_len as u64 - crate::crypto::TAG_LEN as u64;
    Ok((placed.into_iter().map(|p| p.expect("every shard placed")).collect(), receipts, plain))
}

async fn put_shard(
    http: &http::Client,
    plan: &Plan,
    peer: &str,
    id: crate::merkle::ShardId,
    data: Bytes,
) -> Result<Signed<Receipt>, String> {
    let order = plan.orders.get(peer).ok_or("no order for this peer")?;
    let addr = plan.addresses.get(peer).ok_or("no address for this peer")?;
    store_shard(http, addr, order, peer, id, data).await
}

/// Stores one shard on the node `peer` at `addr` under a put order; returns its receipt,
/// checked to be for this shard and signed by that peer.
pub(crate) async fn store_shard(
    http: &http::Client,
    addr: &str,
    order: &Signed<PutOrder>,
    peer: &str,
    id: crate::merkle::ShardId,
    data: Bytes,
) -> Result<Signed<Receipt>, String> {
    let header = serde_json::to_string(order).expect("orders serialize");
    let url = format!("{addr}/v1/shards/{id}");
    let r = http.send(request("PUT", &url, &[(ORDER_HEADER, &header)], data)?).await?;
    let receipt: Signed<Receipt> = r.json()?;
    match receipt.open() {
        Some(rc) if rc.shard_id == id && rc.peer_id == peer && receipt.signer_id() == peer => Ok(receipt),
        _ => Err(format!("peer {peer} answered with an invalid receipt")),
    }
}

/// A shard's bytes from the node at `addr`, not yet checked against the id. A node that
/// sends more than the shard's `len` bytes is cut off.
pub(crate) async fn fetch_shard(
    http: &http::Client,
    addr: &str,
    id: &crate::merkle::ShardId,
    len: usize,
) -> Result<Bytes, String> {
    match http.get_limited(&format!("{addr}/v1/shards/{id}"), len).await? {
        r if r.status.is_success() => Ok(r.body),
        r => Err(r.error_message()),
    }
}

/// Fetches at least k verified shards of segment `i`: data shards first (no decoding
/// needed), another peer for each one missing, corrupt or slow.
pub(crate) async fn fetch_segment(
    http: http::Client,
    manifest: Arc<Manifest>,
    view: Arc<FileView>,
    problems: Arc<Mutex<Vec<String>>>,
    i: u32,
) -> Result<Vec<VerifiedShard>, ClientError> {
    let m = &manifest;
    let k = m.shape.k();
    let placement = view.placements.get(i as usize).cloned().unwrap_or_default();
    let online =
        |j: &usize| placement.get(*j).and_then(|p| view.peers.get(p)).is_some_and(|p| p.state == PeerState::Online);
    // Online peers first, data shards before recovery shards within each group.
    let (mut candidates, offline): (VecDeque<usize>, VecDeque<usize>) = (0..m.shape.n()).partition(online);
    candidates.extend(offline);
    let mut got = Vec::with_capacity(k);
    let mut pending = FuturesUnordered::new();
    let start = |j: usize, pending: &mut FuturesUnordered<_>| {
        let http = http.clone();
        let m2 = manifest.clone();
        let peer = placement.get(j).cloned().unwrap_or_default();
        let addr = view.peers.get(&peer).map(|p| p.address.clone());
        let id = m.segments[i as usize].shard_ids[j];
        pending.push(async move {
            let Some(addr) = addr else { return (j, peer, Err("peer unknown to the coordinator".to_string())) };
            let r = match fetch_shard(&http, &addr, &id, m2.shard_len(i as usize)).await {
                Ok(b) => b,
                Err(e) => return (j, peer, Err(e)),
            };
            let v = tokio::task::spawn_blocking(move || m2.verify_shard(i, j, r)).await;
            (j, peer, v.map_err(|e| e.to_string()).and_then(|v| v.map_err(|e| e.to_string())))
        });
    };
    for _ in 0..k {
        if let Some(j) = candidates.pop_front() {
            start(j, &mut pending);
        }
    }
    while got.len() < k {
        if pending.is_empty() {
            return Err(CodecError::NotEnoughShards { segment: i, have: got.len(), need: k }.into());
        }
        tokio::select! {
            Some((j, peer, r)) = pending.next() => match r {
                Ok(v) => got.push(v),
                Err(e) => {
                    problems.lock().expect("not poisoned").push(format!("peer {peer}, shard {j} of segment {i}: {e}"));
                    if let Some(next) = candidates.pop_front() {
                        start(next, &mut pending);
                    }
                }
            },
            _ = tokio::time::sleep(HEDGE_AFTER) => {
                if let Some(next) = candidates.pop_front() {
                    start(next, &mut pending);
                }
            }
        }
    }
    Ok(got)
}
