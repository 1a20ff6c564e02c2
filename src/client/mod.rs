//! The client API the CLI is a thin layer over: upload (encode, plan, put shards straight to
//! nodes, commit receipts), download (verified manifest, parallel shard fetches preferring
//! data shards, atomic output), info, ls, peers, rm. Architecture invariant: a client talks
//! to the coordinator and the nodes only through `net`; it holds no server state.

mod download;
mod upload;

use std::path::PathBuf;

use bytes::Bytes;
use ring::digest::{SHA256, digest};

pub use download::DownloadReport;

use crate::core::crypto::FileKeys;
use crate::core::error::CodecError;
use crate::core::manifest::{FileId, Manifest};
use crate::net::client::{self as http, HttpError, request};
use crate::net::transfer::TransferError;
use crate::proto::*;
use crate::sys::fs::AtomicWriteError;

/// Why a client operation failed, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the coordinator at {url} ({reason}): is it running? Start one with `p2pstore coordinator` \
         or `p2pstore devnet`, or point --coordinator (P2PSTORE_COORDINATOR) at a running one"
    )]
    Unreachable { url: String, reason: String },
    #[error("coordinator {url}: {source}")]
    Coordinator { url: String, source: HttpError },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Transfer(TransferError),
    #[error("cannot read {path}")]
    Input { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Output(#[from] AtomicWriteError),
    #[error("the coordinator served a manifest that does not hash to file id {0}: refusing it")]
    ManifestMismatch(String),
    #[error("the coordinator committed the upload as {got}, not as {expected}: refusing the result")]
    CommitMismatch { expected: String, got: String },
    #[error("the stored file name `{0}` is not usable here; pass -o PATH")]
    UnusableName(String),
    #[error("a worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<TransferError> for ClientError {
    /// A codec verdict met while moving shards (too few intact shards) is the codec's.
    fn from(e: TransferError) -> ClientError {
        match e {
            TransferError::Codec(c) => ClientError::Codec(c),
            other => ClientError::Transfer(other),
        }
    }
}

impl ClientError {
    /// The status the coordinator answered with, when it refused.
    pub fn status(&self) -> Option<hyper::StatusCode> {
        match self {
            ClientError::Coordinator { source, .. } => source.status(),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: http::Client,
}

impl Client {
    pub fn new(coordinator: &str) -> Client {
        Client { base: coordinator.trim_end_matches('/').to_owned(), http: http::Client::default() }
    }

    /// A coordinator's failure to answer, or its refusal.
    fn coordinator_error(&self, e: HttpError) -> ClientError {
        match e {
            HttpError::Connect { reason, .. } => ClientError::Unreachable { url: self.base.clone(), reason },
            source => ClientError::Coordinator { url: self.base.clone(), source },
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let r = self.http.get(&format!("{}{path}", self.base)).await;
        r.and_then(http::Reply::json).map_err(|e| self.coordinator_error(e))
    }

    async fn post_json<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let r = self.http.post_json(&format!("{}{path}", self.base), body).await;
        r.and_then(http::Reply::json).map_err(|e| self.coordinator_error(e))
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
        let r = self.http.get(&format!("{}/v1/files/{id}/manifest", self.base)).await;
        let r = r.and_then(http::Reply::ok).map_err(|e| self.coordinator_error(e))?;
        if digest(&SHA256, &r.body).as_ref() != id.0 {
            return Err(ClientError::ManifestMismatch(id.to_string()));
        }
        Ok(Manifest::from_bytes(&r.body)?)
    }

    /// Deletes a file; the password proves ownership (its owner token), and the coordinator
    /// tells the nodes to drop the shards.
    pub async fn remove(&self, id: &FileId, password: &[u8]) -> Result<(), ClientError> {
        let m = self.manifest(id).await?;
        let password = password.to_vec();
        let keys = blocking(move || Ok(FileKeys::derive(&password, m.salt, m.iterations)?)).await?;
        let token = hex::encode(keys.owner_token());
        let url = format!("{}/v1/files/{id}", self.base);
        let req =
            request("DELETE", &url, &[(OWNER_HEADER, &token)], Bytes::new()).map_err(|e| self.coordinator_error(e))?;
        let r = self.http.send(req).await.and_then(http::Reply::json::<Deleted>);
        r.map(|_| ()).map_err(|e| self.coordinator_error(e))
    }
}

/// Runs CPU- or disk-bound work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(f).await?
}
