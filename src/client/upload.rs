//! Upload: plan, encode on a blocking thread, put every segment's shards straight to the
//! planned nodes (two segments in flight), then commit the manifest with every receipt.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use indicatif::ProgressBar;
use ring::digest::{SHA256, digest};

use super::{Client, ClientError};
use crate::core::codec::{EncodeParams, EncodedSegment, Encoder};
use crate::core::crypto::Salt;
use crate::core::error::CodecError;
use crate::core::manifest::{FileId, FileMeta, Manifest};
use crate::net::transfer::{StoredSegment, put_segment};
use crate::proto::*;

/// Segments being uploaded at once.
const UPLOAD_AHEAD: usize = 2;

impl Client {
    /// Uploads a file; returns its id.
    pub async fn upload(
        &self,
        path: &Path,
        password: &[u8],
        params: EncodeParams,
        progress: Option<ProgressBar>,
    ) -> Result<FileId, ClientError> {
        let io = |source| ClientError::Input { path: path.to_owned(), source };
        let size = std::fs::metadata(path).map_err(io)?.len();
        let file = std::fs::File::open(path).map_err(io)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let meta = FileMeta { name, content_type: "application/octet-stream".into() };
        let reader = std::io::BufReader::with_capacity(1 << 20, file);
        self.upload_reader(reader, size, meta, password, params, progress).await
    }

    /// Uploads exactly `size` bytes read from `reader` (read on a blocking thread, one
    /// segment at a time) as a file described by `meta`; returns its id. A read error stops
    /// the upload before anything is committed.
    pub async fn upload_reader(
        &self,
        reader: impl std::io::Read + Send + 'static,
        size: u64,
        meta: FileMeta,
        password: &[u8],
        params: EncodeParams,
        progress: Option<ProgressBar>,
    ) -> Result<FileId, ClientError> {
        if let Some(p) = &progress {
            p.set_length(size);
        }
        let req = PlanRequest { size, k: params.shape.k, n: params.shape.n, segment_size: params.segment_size };
        let plan = Arc::new(self.plan(&req).await?);

        // Encoding runs on a blocking thread and hands segments over a short queue, so memory
        // stays at a few segments.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<EncodedSegment>(1);
        let password = password.to_vec();
        let encoder = tokio::task::spawn_blocking(move || -> Result<(Manifest, [u8; 32]), CodecError> {
            let mut enc = Encoder::new(reader, &password, params, Salt::random())?;
            while let Some(seg) = enc.next_segment()? {
                if tx.blocking_send(seg).is_err() {
                    break; // the network side failed; its error is reported
                }
            }
            let token = enc.keys().owner_token();
            Ok((enc.finish(&meta)?, token))
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
                    let StoredSegment { peers, receipts: rs, plain_bytes } = r?;
                    placements.push(peers);
                    receipts.extend(rs);
                    if let Some(p) = &progress { p.inc(plain_bytes) }
                }
            }
        }
        let (manifest, token) = encoder.await??;
        let commit = Commit {
            upload_id: plan.upload_id.clone(),
            manifest: hex::encode(manifest.to_bytes()),
            owner_hash: hex::encode(digest(&SHA256, &token)),
            placements,
            receipts,
        };
        let reply: CommitReply = self.post_json(&format!("/v2/uploads/{}/commit", plan.upload_id), &commit).await?;
        let id = manifest.file_id();
        if reply.file_id != id.to_string() {
            return Err(ClientError::CommitMismatch { expected: id.to_string(), got: reply.file_id });
        }
        Ok(id)
    }
}
