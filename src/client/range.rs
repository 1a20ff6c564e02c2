//! Reading part of a file as a stream of chunks: only the segments that cover a byte range
//! are fetched, verified and opened (by [`OpenFile`]), so memory stays at a few segments
//! whatever the file's size. Also the calls on the account's private namespace
//! (`/v2/names/*`), which the S3 gateway keeps its encrypted names and records in.

use std::ops::Range;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;

use super::download::Sink;
use super::{Client, ClientError, OpenFile};
use crate::core::crypto::Secret;
use crate::core::manifest::FileId;
use crate::proto::*;
use crate::sys::pool::Buf;

/// A file opened for reading ranges: its checked manifest and keys, its segment table and
/// placements read a page at a time ([`OpenFile`]).
pub struct RangeReader {
    client: Client,
    file: Arc<OpenFile>,
}

impl RangeReader {
    /// The file's plaintext size.
    pub fn size(&self) -> u64 {
        self.file.size()
    }

    /// The plaintext of `range` (clamped to the file), as a stream of chunks of at most one
    /// segment, each sent once it authenticated. A failure ends the stream with the error.
    pub fn stream(&self, range: Range<u64>) -> tokio::sync::mpsc::Receiver<Result<Bytes, ClientError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (client, file) = (self.client.clone(), self.file.clone());
        tokio::spawn(async move {
            let out = Chunks(tx.clone());
            if let Err(e) = client.download_to(&file, range, out, None).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }
}

/// Hands each decoded segment on as a chunk, without a copy (from a blocking thread).
struct Chunks(tokio::sync::mpsc::Sender<Result<Bytes, ClientError>>);

impl Sink for Chunks {
    fn put(&mut self, plain: Buf, range: Range<usize>) -> std::io::Result<()> {
        self.0
            .blocking_send(Ok(plain.into_bytes().slice(range)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader went away"))
    }
}

impl Client {
    /// Opens `id` for range reads: the manifest (checked against the id), the password
    /// (checked by opening the sealed metadata) and the placements with read grants.
    pub async fn open_ranges(&self, id: &FileId, secret: impl Into<Secret>) -> Result<RangeReader, ClientError> {
        Ok(RangeReader { client: self.clone(), file: self.open(id, secret).await? })
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
