//! Reading part of a file: only the segments that cover a byte range are fetched, verified
//! and opened, a few ahead of the one being handed out, so memory stays at a few segments
//! whatever the file's size. Also the calls on the account's private namespace
//! (`/v2/names/*`), which the S3 gateway keeps its encrypted names and records in.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;

use super::{Client, ClientError, blocking};
use crate::core::codec::Decoder;
use crate::core::manifest::{FileId, plain_per_segment};
use crate::net::transfer::fetch_segment;
use crate::proto::*;

/// Segments fetched ahead of the one being handed out.
const RANGE_AHEAD: usize = 3;

/// A file opened for reading ranges: its checked manifest, keys and placements.
pub struct RangeReader {
    client: Client,
    decoder: Arc<Decoder>,
    view: Arc<FileView>,
}

impl RangeReader {
    /// The file's plaintext size.
    pub fn size(&self) -> u64 {
        self.decoder.manifest().plaintext_size
    }

    /// The plaintext of `range` (clamped to the file), as a stream of chunks; a chunk is at
    /// most one segment. A failure ends the stream with the error.
    pub fn stream(&self, range: Range<u64>) -> tokio::sync::mpsc::Receiver<Result<Bytes, ClientError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let end = range.end.min(self.size());
        let start = range.start.min(end);
        let per = plain_per_segment(self.decoder.manifest().segment_size);
        let (decoder, view, http) = (self.decoder.clone(), self.view.clone(), self.client.http.clone());
        tokio::spawn(async move {
            if start == end {
                return;
            }
            let first = (start / per) as u32;
            let last = ((end - 1) / per) as u32;
            let manifest = Arc::new(decoder.manifest().clone());
            let problems = Arc::new(Mutex::new(Vec::new()));
            let mut ahead = VecDeque::new();
            for i in first..=last {
                while ahead.len() < RANGE_AHEAD && i + (ahead.len() as u32) <= last {
                    let j = i + ahead.len() as u32;
                    let fetch = fetch_segment(http.clone(), manifest.clone(), view.clone(), problems.clone(), j);
                    ahead.push_back(tokio::spawn(fetch));
                }
                let Some(next) = ahead.pop_front() else { break };
                let dec = decoder.clone();
                let plain = async move {
                    let shards = next.await??;
                    blocking(move || Ok(dec.decode_segment(i, &shards)?)).await
                };
                let chunk = match plain.await {
                    Ok(buf) => {
                        let seg_start = i as u64 * per;
                        let from = start.saturating_sub(seg_start) as usize;
                        let to = ((end - seg_start) as usize).min(buf.len());
                        Ok(Bytes::copy_from_slice(&buf[from.min(to)..to]))
                    }
                    Err(e) => Err(e),
                };
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    break; // the reader went away, or the error is delivered
                }
            }
            for t in ahead {
                t.abort();
            }
        });
        rx
    }
}

impl Client {
    /// Opens `id` for range reads: the manifest (checked against the id), the password
    /// (checked by opening the sealed metadata) and the placements with read grants.
    pub async fn open_ranges(&self, id: &FileId, password: &[u8]) -> Result<RangeReader, ClientError> {
        let manifest = self.manifest(id).await?;
        let password = password.to_vec();
        let (decoder, view) = tokio::join!(blocking(move || Ok(Decoder::new(manifest, &password)?)), self.info(id));
        Ok(RangeReader { client: self.clone(), decoder: Arc::new(decoder?), view: Arc::new(view?) })
    }

    /// Stores `value` under `key` in the account's namespace; with `if_absent` only when the
    /// key is free (a taken key is a 409 refusal). Whether the key was new.
    pub async fn name_put(&self, key: &str, value: &[u8], if_absent: bool) -> Result<bool, ClientError> {
        let req = NamePut { key: key.to_owned(), value: B64.encode(value), if_absent };
        let r: NamePutReply = self.post_json("/v2/names/put", &req).await?;
        Ok(r.created)
    }

    /// The value under `key` in the account's namespace, if any.
    pub async fn name_get(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let body = Bytes::from(serde_json::to_vec(&NameGet { key: key.to_owned() }).expect("serializes"));
        let r = self.send_signed("POST", "/v2/names/get", body).await?;
        if r.status == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let entry: NameEntry = r.ok().and_then(|r| r.json()).map_err(|e| self.coordinator_error(e))?;
        Ok(Some(decode_value(&entry)?))
    }

    /// A page of the account's namespace: keys starting with `prefix`, after `start_after`.
    pub async fn name_list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
        keys_only: bool,
    ) -> Result<(Vec<(String, Vec<u8>)>, bool), ClientError> {
        let req = NameList { prefix: prefix.to_owned(), start_after: start_after.to_owned(), limit, keys_only };
        let page: NameListing = self.post_json("/v2/names/list", &req).await?;
        let entries =
            page.entries.iter().map(|e| Ok((e.key.clone(), decode_value(e)?))).collect::<Result<_, ClientError>>()?;
        Ok((entries, page.more))
    }

    /// Removes keys from the account's namespace; how many existed.
    pub async fn name_delete(&self, keys: &[String]) -> Result<usize, ClientError> {
        let r: Removed = self.post_json("/v2/names/delete", &NameDelete { keys: keys.to_vec() }).await?;
        Ok(r.removed)
    }
}

fn decode_value(e: &NameEntry) -> Result<Vec<u8>, ClientError> {
    B64.decode(e.value.as_bytes()).map_err(|_| ClientError::BadNameValue(e.key.clone()))
}
