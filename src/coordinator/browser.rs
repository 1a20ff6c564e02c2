//! Uploads and downloads for browsers. A browser seals and opens segments itself (WebCrypto,
//! `assets/crypto.js`, in exactly the format of docs/FORMAT.md) and leaves erasure coding and
//! shard transfer to the coordinator, which so sees sealed segments only: never a key, a
//! password or plaintext. A file uploaded this way is byte for byte what the CLI would make.

use std::sync::{Arc, Mutex};

use hyper::StatusCode;
use hyper::body::Incoming;

use super::auth::Caller;
use super::state::State;
use super::{files, uploads};
use crate::core::codec::EncodedSegment;
use crate::core::crypto::{SALT_LEN, Salt, TAG_LEN};
use crate::core::erasure::{self, Shape};
use crate::core::manifest::{
    FileId, Manifest, PageBuilder, SegmentEntry, SegmentTable, plain_per_segment, segment_count,
};
use crate::net::server::{self, ApiError, ApiResult, ok};
use crate::net::transfer;
use crate::proto::*;
use crate::sys::pool::Buf;

/// Segments of a browser upload at most: its progress is held in memory.
const BROWSER_SEGMENTS: u64 = 1 << 16;

pub(super) struct Upload {
    /// The account that started it: only it may send segments and commit.
    account: String,
    plan: Arc<Plan>,
    size: u64,
    shape: Shape,
    segment_size: u32,
    /// Per segment, once stored: its manifest row and the peer of each shard.
    segments: Vec<Option<(SegmentEntry, Vec<String>)>>,
    receipts: Vec<Signed<Receipt>>,
}

pub(super) async fn start(s: &State, caller: &Caller, req: PlanRequest) -> ApiResult {
    let shape = Shape::new(req.k, req.n).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (size, segment_size) = (req.size, req.segment_size);
    if segment_count(size, segment_size) > BROWSER_SEGMENTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a browser upload has at most {BROWSER_SEGMENTS} segments; use the command line for bigger files"),
        ));
    }
    let plan = uploads::plan(s, caller, req).await?;
    let count = segment_count(size, segment_size).max(1) as usize;
    let upload_id = plan.upload_id.clone();
    let upload = Upload {
        account: caller.id.clone(),
        plan: Arc::new(plan),
        size,
        shape,
        segment_size,
        segments: vec![None; count],
        receipts: Vec::new(),
    };
    let mut uploads = s.browser_uploads.lock().expect("not poisoned");
    let now = s.now();
    uploads.retain(|_, u| u.try_lock().map_or(true, |u| u.plan.expires >= now));
    uploads.insert(upload_id.clone(), Arc::new(tokio::sync::Mutex::new(upload)));
    ok(&BrowserStarted { upload_id, segments: count })
}

/// The browser upload `id`, locked, if the caller started it.
async fn upload(s: &State, caller: &Caller, id: &str) -> Result<tokio::sync::OwnedMutexGuard<Upload>, ApiError> {
    let up = s.browser_uploads.lock().expect("not poisoned").get(id).cloned();
    let up = up.ok_or_else(|| ApiError::not_found(format!("no browser upload {id} (expired or committed)")))?;
    let up = up.lock_owned().await;
    if up.account != caller.id {
        return Err(ApiError::forbidden("the upload was started by another account"));
    }
    Ok(up)
}

/// Codes one sealed segment and stores its shards on the planned peers.
pub(super) async fn put_segment(s: &State, caller: &Caller, id: &str, index: usize, body: Incoming) -> ApiResult {
    let mut up = upload(s, caller, id).await?;
    if index >= up.segments.len() {
        return Err(ApiError::bad_request(format!(
            "segment {index} is past the file's {} segments",
            up.segments.len()
        )));
    }
    let per = plain_per_segment(up.segment_size);
    let plain = if index + 1 == up.segments.len() { up.size - per * index as u64 } else { per };
    let expected = (plain + TAG_LEN as u64) as usize;
    let _turn = s.browser_turns.acquire().await.map_err(ApiError::internal)?;
    let sealed = caller.body(body, expected).await?;
    if !crate::core::crypto::looks_sealed(&sealed) {
        return Err(ApiError::bad_request(format!(
            "segment {index} is not ciphertext: the page must seal segments (AES-256-GCM) before sending them"
        )));
    }
    if sealed.len() != expected {
        return Err(ApiError::bad_request(format!(
            "segment {index} must be {expected} sealed bytes, got {}",
            sealed.len()
        )));
    }
    let window = up.plan.first as usize..up.plan.first as usize + up.plan.segments.len();
    if !window.contains(&index) {
        let first = index as u32 / LAYOUT_SEGMENTS * LAYOUT_SEGMENTS;
        up.plan = Arc::new(uploads::relayout(s, caller, id, LayoutRequest { first, count: LAYOUT_SEGMENTS }).await?);
    }
    let shape = up.shape;
    let seg = tokio::task::spawn_blocking(move || {
        EncodedSegment::code(index as u32, Buf::copy_of(&sealed), shape, &mut erasure::Encoder::new(shape))
    })
    .await
    .map_err(ApiError::internal)?;
    let entry = seg.entry();
    let stored = transfer::put_segment(s.http.clone(), up.plan.clone(), seg)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    up.receipts.extend(stored.receipts);
    up.segments[index] = Some((entry, stored.peers));
    ok(&BrowserStored { stored: index })
}

/// Builds the manifest from the stored segments and the browser's sealed metadata, and
/// commits it with the receipts, exactly as a CLI upload commits.
pub(super) async fn commit(s: &State, caller: &Caller, id: &str, c: BrowserCommit) -> ApiResult {
    let up = upload(s, caller, id).await?;
    let mut salt = [0u8; SALT_LEN];
    hex::decode_to_slice(&c.salt, &mut salt).map_err(|_| ApiError::bad_request("salt must be 32 hex digits"))?;
    let sealed_meta = hex::decode(&c.sealed_meta).map_err(|_| ApiError::bad_request("sealed_meta is not hex"))?;
    let mut rows = Vec::with_capacity(up.segments.len());
    let mut placements = Vec::with_capacity(up.segments.len());
    let mut pages = PageBuilder::default();
    for (i, seg) in up.segments.iter().enumerate() {
        let (entry, peers) = seg.clone().ok_or_else(|| ApiError::bad_request(format!("segment {i} was never sent")))?;
        pages.push(entry.clone());
        rows.push(entry);
        placements.push(peers);
    }
    let manifest = Manifest {
        plaintext_size: up.size,
        segment_size: up.segment_size,
        shape: up.shape,
        iterations: c.iterations,
        salt: Salt(salt),
        sealed_meta,
        table: SegmentTable::Paged(pages.finish()),
    };
    // The same checks as any manifest read from the network.
    let bytes = manifest.to_bytes();
    Manifest::from_bytes(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let commit = Commit {
        upload_id: id.to_owned(),
        manifest: hex::encode(bytes),
        owner_hash: c.owner_hash,
        placements,
        segments: rows,
        receipts: up.receipts.clone(),
    };
    drop(up);
    let reply = uploads::commit(s, caller, id, commit).await?;
    s.browser_uploads.lock().expect("not poisoned").remove(id);
    Ok(reply)
}

/// Segment `index` of a file, rebuilt from verified shards but still sealed.
pub(super) async fn sealed_segment(s: &State, caller: &Caller, id: &str, index: u32) -> ApiResult {
    FileId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let rec = files::record(s, id)?;
    let m = Arc::new(rec.parsed().ok_or_else(|| ApiError::internal(files::BadManifest))?);
    if index >= m.segment_count() {
        return Err(ApiError::not_found(format!("file {id} has {} segments", m.segment_count())));
    }
    let view = Arc::new(files::view(s, caller, id, files::Window { first: index, count: 1, totals: false })?);
    let entry =
        s.row(&rec, index).map_err(ApiError::internal)?.ok_or_else(|| ApiError::internal(files::BadManifest))?.entry;
    // The segment stays in memory until the browser has read it: all such segments share a
    // budget (100 idle readers of a 9 MB file took 1.2 GB before), of which one account holds
    // a quarter at most (one account's idle readers held it all: everyone else got 503).
    let mib = m.segment_size.div_ceil(1 << 20).clamp(1, ACCOUNT_SHARE_MIB);
    let mine = {
        let mut shares = s.segment_shares.lock().expect("not poisoned");
        if shares.len() >= 1024 {
            shares.retain(|_, sem| Arc::strong_count(sem) > 1);
        }
        let share = shares.entry(caller.id.clone());
        share.or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(ACCOUNT_SHARE_MIB as usize))).clone()
    };
    let busy = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many segments are being read through the coordinator at once; try again shortly",
        )
    };
    let turns = async {
        let own = mine.acquire_many_owned(mib).await?;
        let all = s.segment_budget.clone().acquire_many_owned(mib).await?;
        Ok::<_, tokio::sync::AcquireError>((own, all))
    };
    let turn = tokio::time::timeout(TURN_WAIT, turns).await.map_err(|_| busy())?.map_err(ApiError::internal)?;
    let problems = Arc::new(Mutex::new(transfer::Problems::default()));
    let shards = transfer::fetch_segment(s.http.clone(), m.clone(), view, entry, problems.clone(), index).await;
    // Peers that served bytes not matching their shards' ids are audited at once, on those.
    for (peer, id, _) in std::mem::take(&mut problems.lock().expect("not poisoned").mismatched) {
        s.audit_soon(peer, vec![id]);
    }
    let shards = shards.map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let sealed = m.sealed_segment(index, &shards).map_err(ApiError::internal)?;
    Ok(server::bytes("application/octet-stream", bytes::Bytes::from_owner(Held { sealed, _turn: turn })))
}

/// MiB of sealed segments the coordinator holds for browsers at once.
pub(super) const SEGMENT_BUDGET_MIB: u32 = 256;

/// MiB of that one account holds at most.
const ACCOUNT_SHARE_MIB: u32 = SEGMENT_BUDGET_MIB / 4;

/// How long a segment read waits for room in the budget before 503.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A sealed segment on its way out, holding its share of the budget until it is dropped.
struct Held {
    sealed: crate::sys::pool::Buf,
    _turn: (tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit),
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        self.sealed.as_ref()
    }
}
