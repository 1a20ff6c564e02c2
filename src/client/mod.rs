//! The client API the CLI is a thin layer over: upload (encode, plan, put shards straight to
//! nodes, commit receipts), download (verified manifest, parallel shard fetches preferring
//! data shards, atomic output), info, ls, peers, rm. Architecture invariant: a client talks
//! to the coordinator and the nodes only through `net`; it holds no server state.

mod download;
mod range;
mod resume;
mod upload;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use ring::digest::{SHA256, digest};
use tokio::sync::OnceCell;

pub use download::{DownloadReport, OpenFile};
pub use range::RangeReader;
pub use resume::default_dir as upload_state_dir;
pub use upload::{Source, UploadOptions};

use crate::core::crypto::{FileKeys, Salt, Secret};
use crate::core::error::CodecError;
use crate::core::identity::Identity;
use crate::core::manifest::{FileId, Manifest, SegmentEntry, SegmentTable};
use crate::net::client::{self as http, HttpError, request};
use crate::net::transfer::TransferError;
use crate::proto::*;
use crate::sys::clock::Clock;
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
    #[error("the stored file name \"{0}\" is not used as it is (a hidden file, or control characters); pass -o PATH")]
    UnusableName(String),
    #[error("the coordinator answered namespace key {0} with a value that is not base64")]
    BadNameValue(String),
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

/// A client of one coordinator, acting for one account: every request about the account's
/// files is signed with its key.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: http::Client,
    account: Arc<Identity>,
    clock: Clock,
    /// What the coordinator says of itself (its id signs every request), asked once.
    info: Arc<OnceCell<CoordinatorInfo>>,
}

impl Client {
    pub fn new(coordinator: &str, account: Arc<Identity>) -> Client {
        Client {
            base: coordinator.trim_end_matches('/').to_owned(),
            http: http::Client::default(),
            account,
            clock: Clock::system(),
            info: Arc::new(OnceCell::new()),
        }
    }

    /// A client acting for a new account kept only in memory (tests, benchmarks, public
    /// queries); it registers with its first signed request where accounts are open.
    pub fn with_fresh_account(coordinator: &str) -> Client {
        Client::new(coordinator, Arc::new(Identity::generate()))
    }

    /// A client whose request times come from `clock` (tests that move time).
    pub fn with_clock(mut self, clock: Clock) -> Client {
        self.clock = clock;
        self
    }

    /// The id of the account this client acts for.
    pub fn account_id(&self) -> String {
        self.account.peer_id()
    }

    /// What the coordinator says of itself.
    pub async fn coordinator_info(&self) -> Result<&CoordinatorInfo, ClientError> {
        self.info
            .get_or_try_init(|| async {
                let r = self.http.get(&format!("{}/v2/info", self.base)).await;
                r.and_then(http::Reply::json).map_err(|e| self.coordinator_error(e))
            })
            .await
    }

    /// A request to the coordinator signed by the account; the reply whatever its status.
    pub async fn send_signed(&self, method: &str, path: &str, body: Bytes) -> Result<http::Reply, ClientError> {
        let coordinator = self.coordinator_info().await?.coordinator_id.clone();
        let nonce = hex::encode(Salt::random().0);
        let auth = RequestAuth::sign(&self.account, &coordinator, method, path, (self.clock.now(), nonce), &body);
        let url = format!("{}{path}", self.base);
        let header = auth.header();
        let mut headers = vec![(AUTH_HEADER, header.as_str())];
        if !body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        let req = request(method, &url, &headers, body).map_err(|e| self.coordinator_error(e))?;
        self.http.send(req).await.map_err(|e| self.coordinator_error(e))
    }

    /// A request to the coordinator signed by the account; an error status is an error.
    async fn signed(&self, method: &str, path: &str, body: Bytes) -> Result<http::Reply, ClientError> {
        let r = self.send_signed(method, path, body).await?;
        r.ok().map_err(|e| self.coordinator_error(e))
    }

    async fn signed_json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, ClientError> {
        let bytes = body.map(|b| Bytes::from(serde_json::to_vec(b).expect("wire types serialize"))).unwrap_or_default();
        let r = self.signed(method, path, bytes).await?;
        r.json().map_err(|e| self.coordinator_error(e))
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
        self.signed_json("POST", path, Some(body)).await
    }

    async fn get_signed<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.signed_json("GET", path, None::<&()>).await
    }

    /// A placement plan for a file of `req.size` bytes (what an upload starts with).
    pub async fn plan(&self, req: &PlanRequest) -> Result<Plan, ClientError> {
        self.post_json("/v2/uploads", req).await
    }

    /// The account's quota and usage.
    pub async fn account(&self) -> Result<AccountView, ClientError> {
        self.get_signed("/v2/account").await
    }

    pub async fn peers(&self) -> Result<Vec<PeerView>, ClientError> {
        self.get_json("/v2/peers").await
    }

    /// The newest `limit` audits, of one peer or of all.
    pub async fn audits(&self, peer: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, ClientError> {
        match peer {
            Some(p) => self.get_json(&format!("/v2/audits?peer={p}&limit={limit}")).await,
            None => self.get_json(&format!("/v2/audits?limit={limit}")).await,
        }
    }

    /// The account's own files.
    pub async fn list(&self) -> Result<Vec<FileSummary>, ClientError> {
        self.get_signed("/v2/files").await
    }

    /// A file's summary, health, and the placements of its first segments (up to
    /// [`VIEW_SEGMENTS`]).
    pub async fn info(&self, id: &FileId) -> Result<FileView, ClientError> {
        self.get_signed(&format!("/v2/files/{id}")).await
    }

    /// The view of segments `first..first + count` of a file (at most [`VIEW_SEGMENTS`]),
    /// without the whole file's health totals (reading them costs the coordinator every row).
    pub async fn info_range(&self, id: &FileId, first: u32, count: u32) -> Result<FileView, ClientError> {
        self.get_signed(&format!("/v2/files/{id}?first={first}&count={count}&totals=false")).await
    }

    /// The manifest of `id`, checked against the id.
    pub async fn manifest(&self, id: &FileId) -> Result<Manifest, ClientError> {
        let r = self.signed("GET", &format!("/v2/files/{id}/manifest"), Bytes::new()).await?;
        if digest(&SHA256, &r.body).as_ref() != id.0 {
            return Err(ClientError::ManifestMismatch(id.to_string()));
        }
        Ok(Manifest::from_bytes(&r.body)?)
    }

    /// Page `p` of the segment table of `m` (the manifest of `id`), checked against it.
    pub async fn page(&self, id: &FileId, m: &Manifest, p: u32) -> Result<Vec<SegmentEntry>, ClientError> {
        match &m.table {
            SegmentTable::Inline(_) => Ok(m.open_page(p, None)?),
            SegmentTable::Paged(_) => {
                let r = self.signed("GET", &format!("/v2/files/{id}/pages/{p}"), Bytes::new()).await?;
                Ok(m.open_page(p, Some(&r.body))?)
            }
        }
    }

    /// The whole segment table of `id` (a page at a time: for tools and tests, not downloads).
    pub async fn segments(&self, id: &FileId) -> Result<Vec<SegmentEntry>, ClientError> {
        let m = self.manifest(id).await?;
        let mut all = Vec::with_capacity(m.segment_count() as usize);
        for p in 0..m.page_count() {
            all.extend(self.page(id, &m, p).await?);
        }
        Ok(all)
    }

    /// Deletes a file; the password proves ownership (its owner token), and the coordinator
    /// tells the nodes to drop the shards.
    pub async fn remove(&self, id: &FileId, secret: impl Into<Secret>) -> Result<(), ClientError> {
        let m = self.manifest(id).await?;
        let secret = secret.into();
        let keys = blocking(move || Ok(FileKeys::from_secret(&secret, m.salt, m.iterations)?)).await?;
        let req = DeleteRequest { owner_token: hex::encode(keys.owner_token()) };
        self.signed_json::<Deleted>("DELETE", &format!("/v2/files/{id}"), Some(&req)).await.map(|_| ())
    }
}

/// Runs CPU- or disk-bound work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(f).await?
}
