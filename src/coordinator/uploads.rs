//! Uploads: placement plans laid out a window of segments at a time with signed put orders,
//! segment batches recorded as they are stored, and commits. Batches are checked by the pure
//! [`verify_segments`] (receipts and placements against the plan) and a commit by
//! [`verify_commit`] (its manifest root against the recorded segments) before anything is
//! recorded. Only the commit makes a file.

use std::collections::{BTreeMap, HashMap, HashSet};

use hyper::StatusCode;
use rayon::prelude::*;

use super::auth::Caller;
use super::state::{FileRecord, SegmentRow, State, UploadRecord, row_key};
use super::{accounts, notices};
use crate::core::crypto::TAG_LEN;
use crate::core::erasure::Shape;
use crate::core::error::CodecError;
use crate::core::manifest::{self, Manifest, SegmentEntry, SegmentTable, segment_count};
use crate::core::merkle::ShardId;
use crate::core::placement;
use crate::net::server::{ApiError, ApiResult, ok};
use crate::proto::*;

/// Segments one upload may have, whatever the configuration (with 8 MiB segments, 128 TiB):
/// one row each is kept while it is stored.
pub(super) const MAX_UPLOAD_SEGMENTS: u64 = 1 << 24;

/// Spare peers planned per segment beyond n, for shards whose first peer fails.
const SPARES: usize = 3;

/// Shards of an n-shard segment a commit may leave unplaced (their peers were too slow: the
/// uploader gave them up), as a share of n.
const MAY_GIVE_UP: f64 = 0.1;

/// Shards of each segment a commit must place: n less a tenth (18 of 20), but never so few
/// that the segment starts at or below the repair threshold (k + `[repair] threshold`).
pub(super) fn min_shards(k: u8, n: u8, repair_threshold: u32) -> u8 {
    let above_repair = (k as u32 + repair_threshold + 1).min(n as u32) as u8;
    let tail = (n as f64 * MAY_GIVE_UP) as u8;
    (n - tail).max(above_repair)
}

/// Plans an upload. The upload's record is durable before the plan is answered: nodes store
/// shards under its put orders, and only a coordinator that remembers the upload tells them,
/// when it expires, to let the shards go.
pub(super) async fn plan(s: &State, caller: &Caller, req: PlanRequest) -> Result<Plan, ApiError> {
    Shape::new(req.k, req.n).map_err(|e| ApiError::bad_request(e.to_string()))?;
    manifest::check_segment_size(req.segment_size).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Decided before anything is allocated for the plan: its layout grows with the segments.
    let limit = s.config.security.max_upload_size();
    if req.size > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a file of {} bytes is over this network's limit of {limit} bytes", req.size),
        ));
    }
    if segment_count(req.size, req.segment_size) > MAX_UPLOAD_SEGMENTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("an upload has at most {MAX_UPLOAD_SEGMENTS} segments; use larger segments"),
        ));
    }
    // A stream's size is not known: its quota is charged as its segments are laid out.
    accounts::check_quota(s, caller, if req.stream { 0 } else { accounts::charge(req.size, req.k) })?;
    let pending = s.uploads.readable().iter().filter(|(_, u)| u.account == caller.id).count();
    if pending >= s.config.limits.pending_uploads {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{pending} uploads of this account are in progress, the most allowed; commit them or let them expire"
            ),
        ));
    }
    let upload_id = hex::encode(crate::core::crypto::Salt::random().0);
    let now = s.now();
    let mut rec = UploadRecord {
        account: caller.id.clone(),
        created: now,
        expires: now + s.config.coordinator.upload_expiry,
        size: req.size,
        k: req.k,
        n: req.n,
        segment_size: req.segment_size,
        peers: Vec::new(),
        min_shards: min_shards(req.k, req.n, s.config.repair.threshold),
        stream: req.stream,
        committed: 0,
        window_end: 0,
        laid_out: BTreeMap::new(),
    };
    let plan = lay_out(s, caller, &upload_id, &mut rec, 0, LAYOUT_SEGMENTS)?;
    s.uploads.insert(&upload_id, &rec).map_err(ApiError::internal)?;
    s.sync().await.map_err(ApiError::internal)?;
    Ok(plan)
}

/// Peers and fresh put orders for segments `first..first + count` of an upload (fewer at
/// the end of a file of known size, or where a stream's account has room for fewer); the
/// peers join the upload's.
fn lay_out(
    s: &State,
    caller: &Caller,
    upload_id: &str,
    up: &mut UploadRecord,
    first: u32,
    count: u32,
) -> Result<Plan, ApiError> {
    let shape = Shape::new(up.k, up.n).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let peers = s.peers.readable();
    let online = s.candidates(&peers, &HashSet::new());
    let need = up.n as usize;
    if online.len() < need {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} peers are online and in good standing, {need} are needed for {}-of-{need} coding",
                online.len(),
                up.k
            ),
        ));
    }
    let total = if up.stream { MAX_UPLOAD_SEGMENTS } else { segment_count(up.size, up.segment_size).max(1) };
    let mut count = (count.min(LAYOUT_SEGMENTS) as u64).min(total.saturating_sub(first as u64));
    let laid_before = up.window_end;
    if up.stream {
        // Segments past those already charged take room in the quota, as a file's size does.
        let charged = up.window_end.max(up.committed) as u64;
        let per = manifest::plain_per_segment(up.segment_size);
        let fits = accounts::room(s, caller)? / per;
        count = count.min((charged + fits).saturating_sub(first as u64));
        if count == 0 {
            accounts::check_quota(s, caller, per)?;
        }
    }
    // The largest segment of a file of known size may be smaller than a whole one.
    let largest =
        if up.stream { up.segment_size } else { (up.size + TAG_LEN as u64).min(up.segment_size as u64) as u32 };
    let shard_len = shape.shard_len(largest as usize) as u64;
    let rules = placement::Rules { n: need, spares: SPARES, shard_len, max_vetting: max_vetting(s, need) };
    let layout = placement::plan(&online, count as usize, rules).ok_or_else(|| {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("fewer than {need} online peers in distinct failure domains have room for this file"),
        )
    })?;
    let expires = up.expires;
    // A peer's orders allow bytes for the segments laid out on it, not the whole upload's
    // (without a bound, one plan of a 1-byte file let an account fill nodes with made-up
    // shards; with the upload's, one plan gave every peer of a network room for all of it).
    // Segments laid out again (a resume, a retry) add nothing: repeated layouts of one window
    // raised every peer's allowance without bound.
    let mut here: HashMap<&String, u64> = HashMap::new();
    for (i, seg) in layout.iter().enumerate() {
        let new = first + i as u32 >= laid_before;
        for id in seg {
            *here.entry(id).or_default() += 1;
            if new {
                *up.laid_out.entry(id.clone()).or_default() += 1;
            }
        }
    }
    up.window_end = up.window_end.max((first as u64 + count) as u32);
    let mut orders = BTreeMap::new();
    let mut addresses = BTreeMap::new();
    for (id, p) in &peers {
        if let Some(&on_it) = here.get(id) {
            let segments = (up.laid_out.get(id).copied().unwrap_or(0) as u64).max(on_it);
            let order = PutOrder {
                upload_id: upload_id.to_owned(),
                peer_id: id.clone(),
                max_shard_len: shard_len,
                expires,
                max_bytes: PutOrder::budget(segments, shard_len),
            };
            orders.insert(id.clone(), s.identity.sign(&order));
            addresses.insert(id.clone(), p.address.clone());
            if !up.peers.contains(id) {
                up.peers.push(id.clone());
            }
        }
    }
    Ok(Plan {
        upload_id: upload_id.to_owned(),
        expires,
        orders,
        addresses,
        segments: layout,
        min_shards: up.min_shards,
        first,
    })
}

/// The upload `upload_id` of `caller`, unexpired.
pub(super) fn pending(s: &State, caller: &Caller, upload_id: &str) -> Result<UploadRecord, ApiError> {
    let up = s
        .uploads
        .get(upload_id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no pending upload {upload_id} (expired or committed)")))?;
    if up.account != caller.id {
        return Err(CommitRefusal::NotYours.into());
    }
    if up.expires < s.now() {
        return Err(CommitRefusal::Expired.into());
    }
    Ok(up)
}

/// `POST /v2/uploads/{id}/layout`: more segments of an upload laid out.
pub(super) async fn layout(s: &State, caller: &Caller, upload_id: &str, req: LayoutRequest) -> Result<Plan, ApiError> {
    let up = pending(s, caller, upload_id)?;
    // A stream's windows follow each other: each is charged as it is laid out.
    let ahead =
        if up.stream { up.window_end.max(up.committed) } else { up.committed.saturating_add(4 * LAYOUT_SEGMENTS) };
    if req.first > ahead {
        return Err(ApiError::bad_request(format!(
            "segment {} is far ahead of the {} recorded and {} laid out: record batches first",
            req.first, up.committed, up.window_end
        )));
    }
    relayout(s, caller, upload_id, req).await
}

/// As [`layout`], for uploads whose segments the coordinator itself stores (browsers'),
/// which record them all at the commit. The new peers are durable before the plan is
/// answered, as for a plan.
pub(super) async fn relayout(
    s: &State,
    caller: &Caller,
    upload_id: &str,
    req: LayoutRequest,
) -> Result<Plan, ApiError> {
    let mut up = pending(s, caller, upload_id)?;
    let plan = lay_out(s, caller, upload_id, &mut up, req.first, req.count)?;
    let peers = up.peers.clone();
    s.uploads
        .update(upload_id, |old| {
            old.map(|mut u| {
                for p in &peers {
                    if !u.peers.contains(p) {
                        u.peers.push(p.clone());
                    }
                }
                u.window_end = u.window_end.max(up.window_end);
                for (p, n) in &up.laid_out {
                    let kept = u.laid_out.entry(p.clone()).or_default();
                    *kept = (*kept).max(*n);
                }
                u
            })
        })
        .map_err(ApiError::internal)?;
    s.sync().await.map_err(ApiError::internal)?;
    Ok(plan)
}

/// `GET /v2/uploads/{id}`: how far an upload got.
pub(super) fn status(s: &State, caller: &Caller, upload_id: &str) -> Result<UploadStatus, ApiError> {
    let up = pending(s, caller, upload_id)?;
    Ok(UploadStatus { upload_id: upload_id.to_owned(), committed: up.committed, expires: up.expires })
}

/// Shards of an n-shard segment that may go to peers being vetted: `[placement]
/// vetting_share` of n, at least one.
pub(super) fn max_vetting(s: &State, n: usize) -> usize {
    ((n as f64 * s.config.placement.vetting_share) as usize).max(1)
}

/// Why a commit was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum CommitRefusal {
    #[error("the upload expired before it was committed; upload again")]
    Expired,
    #[error("upload id in the body differs from the path")]
    WrongUpload,
    #[error("the upload was planned by another account")]
    NotYours,
    #[error("manifest is not hex")]
    ManifestNotHex,
    #[error(transparent)]
    BadManifest(CodecError),
    #[error("manifest does not match the planned size, k, n or segment size")]
    NotAsPlanned,
    #[error("owner_hash must be 64 hex digits")]
    BadOwnerHash,
    #[error("a receipt is not signed by a registered peer")]
    UnsignedReceipt,
    #[error("receipt from {0} is not for this upload's orders")]
    ForeignReceipt(String),
    #[error("placements must list every segment")]
    MissingSegments,
    #[error("segment {0} must sit on {1} distinct peers")]
    NotDistinct(usize, usize),
    #[error("segment {segment} places {have} shards; at least {need} must be placed")]
    TooFewShards { segment: usize, have: usize, need: usize },
    #[error("no valid receipt for shard {shard} of segment {segment} on peer {peer}")]
    NoReceipt { segment: usize, shard: usize, peer: String },
    #[error(
        "shard {shard} of segment {segment} was stored on peer {peer} as {len} bytes; the segment's shards have {want}"
    )]
    WrongLength { segment: usize, shard: usize, peer: String, len: u64, want: u64 },
}

impl CommitRefusal {
    fn status(&self) -> StatusCode {
        match self {
            CommitRefusal::Expired => StatusCode::GONE,
            CommitRefusal::NotYours
            | CommitRefusal::UnsignedReceipt
            | CommitRefusal::ForeignReceipt(_)
            | CommitRefusal::NoReceipt { .. }
            | CommitRefusal::WrongLength { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<CommitRefusal> for ApiError {
    fn from(r: CommitRefusal) -> ApiError {
        ApiError::new(r.status(), r.to_string())
    }
}

/// Checks a batch of stored segments against its upload: each entry has the planned shape,
/// every receipt is signed by a peer of the upload (`keys`: peer id → public key of
/// registered peers) for this upload, and each segment's placed shards (all n but those given
/// up as too slow, placed as "": at least the plan's `min_shards`) have receipts from
/// distinct peers, for shards of the length the segment's entry implies (the commit checks
/// the entries' lengths against the manifest): audits expect that length, so a shorter
/// shard would count against the honest peer holding it. Pure; signatures are checked last,
/// only for the receipts the placements need, on all cores, and each valid one once
/// (`verified` remembers them: a batch sent again costs no signature checks).
pub(super) fn verify_segments(
    (upload_id, up): (&str, &UploadRecord),
    first: u32,
    segments: &[SegmentEntry],
    placements: &[Vec<String>],
    receipts: &[Signed<Receipt>],
    keys: &HashMap<String, String>,
    verified: &VerifiedReceipts,
) -> Result<(), CommitRefusal> {
    if placements.len() != segments.len() {
        return Err(CommitRefusal::MissingSegments);
    }
    let shape = Shape::new(up.k, up.n).map_err(|_| CommitRefusal::NotAsPlanned)?;
    let need = match up.min_shards {
        0 => up.n as usize,
        m => (m as usize).min(up.n as usize),
    };
    let mut needed: HashSet<(ShardId, &str)> = HashSet::new();
    for (i, (seg, peers)) in segments.iter().zip(placements).enumerate() {
        let i = first as usize + i;
        if seg.shard_ids.len() != up.n as usize || seg.sealed_len > up.segment_size || seg.sealed_len < 16 {
            return Err(CommitRefusal::NotAsPlanned);
        }
        let placed: Vec<&String> = peers.iter().filter(|p| !p.is_empty()).collect();
        if peers.len() != seg.shard_ids.len() || placed.iter().collect::<HashSet<_>>().len() != placed.len() {
            return Err(CommitRefusal::NotDistinct(i, seg.shard_ids.len()));
        }
        if placed.len() < need {
            return Err(CommitRefusal::TooFewShards { segment: i, have: placed.len(), need });
        }
        needed.extend(seg.shard_ids.iter().zip(peers).filter(|(_, p)| !p.is_empty()).map(|(id, p)| (*id, p.as_str())));
    }
    // What is cheap first, on every receipt: a registered signer, this upload, its own
    // receipt. Receipts nothing needs are not checked further; copies are checked once.
    let allowed: HashSet<&String> = up.peers.iter().collect();
    let mut seen = HashSet::new();
    let mut candidates = Vec::new();
    for r in receipts {
        let signer = r.signer_id();
        if keys.get(&signer) != Some(&r.signer) {
            return Err(CommitRefusal::UnsignedReceipt);
        }
        let rec = r.unverified().ok_or(CommitRefusal::UnsignedReceipt)?;
        if rec.upload_id != upload_id || rec.peer_id != signer || !allowed.contains(&rec.peer_id) {
            return Err(CommitRefusal::ForeignReceipt(rec.peer_id));
        }
        if needed.contains(&(rec.shard_id, rec.peer_id.as_str())) && seen.insert(r.body.as_str()) {
            candidates.push((r, rec));
        }
    }
    let stored = candidates
        .into_par_iter()
        .map(|(r, rec)| {
            if !verified.check(r) {
                return Err(CommitRefusal::UnsignedReceipt);
            }
            Ok(((rec.shard_id, rec.peer_id), rec.len))
        })
        .collect::<Result<HashMap<(ShardId, String), u64>, CommitRefusal>>()?;
    for (i, (seg, peers)) in segments.iter().zip(placements).enumerate() {
        let i = first as usize + i;
        let want = shape.shard_len(seg.sealed_len as usize) as u64;
        for (j, (id, peer)) in seg.shard_ids.iter().zip(peers).enumerate() {
            if peer.is_empty() {
                continue;
            }
            match stored.get(&(*id, peer.clone())) {
                None => return Err(CommitRefusal::NoReceipt { segment: i, shard: j, peer: peer.clone() }),
                Some(&len) if len != want => {
                    return Err(CommitRefusal::WrongLength { segment: i, shard: j, peer: peer.clone(), len, want });
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Receipts whose signatures were found valid, by digest, so none is checked twice (round 4
/// of the attacks re-sent one batch of 5,120 genuine receipts and a bad one: 0.36 s of CPU
/// each time). Holds at most [`VERIFIED_KEPT`]; forgotten all at once past that, since only
/// genuine receipts enter, and each took a stored shard to get.
#[derive(Default)]
pub(super) struct VerifiedReceipts(std::sync::Mutex<HashSet<[u8; 32]>>);

/// Receipts remembered at most: 20 shards of 13,000 segments (8 MiB each: 100 GiB), 10 MB.
const VERIFIED_KEPT: usize = 1 << 18;

impl VerifiedReceipts {
    /// Whether `r`'s signature is valid for its signer (the caller checked who that is).
    fn check(&self, r: &Signed<Receipt>) -> bool {
        let mut h = blake3::Hasher::new();
        for part in [&r.signer, &r.sig, &r.body] {
            h.update(&(part.len() as u64).to_le_bytes()).update(part.as_bytes());
        }
        let digest = *h.finalize().as_bytes();
        if self.0.lock().expect("not poisoned").contains(&digest) {
            return true;
        }
        if r.open().is_none() {
            return false;
        }
        let mut kept = self.0.lock().expect("not poisoned");
        if kept.len() >= VERIFIED_KEPT {
            kept.clear();
        }
        kept.insert(digest);
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A commit body's bytes beyond its segments: the envelope, the manifest root and its
/// sealed metadata (at most 64 KiB, twice that in hex).
const COMMIT_FIXED: u64 = 256 << 10;
/// A commit body's bytes per shard, with a margin: the shard id in the segment
/// entry (64 hex digits), its placement (a peer id) and its receipt (a signed message of ~500
/// bytes).
const COMMIT_PER_SHARD: u64 = 1 << 10;

/// The largest commit body the upload `up` can need: its segments not yet recorded (a
/// stream's last batch: at most [`LAYOUT_SEGMENTS`]) at n shards each, and at most
/// [`MAX_JSON_BODY`].
pub(super) fn commit_body_limit(up: &UploadRecord) -> usize {
    let segments = if up.stream { LAYOUT_SEGMENTS as u64 } else { segment_count(up.size, up.segment_size) };
    let segments = segments.saturating_sub(up.committed as u64).max(1);
    let per_segment = up.n as u64 * COMMIT_PER_SHARD + 64;
    let bound = COMMIT_FIXED.saturating_add(segments.saturating_mul(per_segment));
    usize::try_from(bound).unwrap_or(usize::MAX).min(MAX_JSON_BODY)
}

/// Checks a commit's manifest against its plan: it parses, has the planned shape, and (for
/// a file of known size) the planned size. Pure.
pub(super) fn verify_commit((upload_id, up): (&str, &UploadRecord), c: &Commit) -> Result<Manifest, CommitRefusal> {
    if c.upload_id != upload_id {
        return Err(CommitRefusal::WrongUpload);
    }
    let bytes = hex::decode(&c.manifest).map_err(|_| CommitRefusal::ManifestNotHex)?;
    let m = Manifest::from_bytes(&bytes).map_err(CommitRefusal::BadManifest)?;
    let size_ok = if up.stream { m.plaintext_size <= up.size || up.size == 0 } else { m.plaintext_size == up.size };
    if !size_ok || m.shape.k != up.k || m.shape.n != up.n || m.segment_size != up.segment_size {
        return Err(CommitRefusal::NotAsPlanned);
    }
    if c.owner_hash.len() != 64 || hex::decode(&c.owner_hash).is_err() {
        return Err(CommitRefusal::BadOwnerHash);
    }
    Ok(m)
}

/// The public keys of the peers that signed `receipts`.
fn signer_keys(s: &State, receipts: &[Signed<Receipt>]) -> Result<HashMap<String, String>, ApiError> {
    let mut keys = HashMap::new();
    for r in receipts {
        let signer = r.signer_id();
        if let std::collections::hash_map::Entry::Vacant(e) = keys.entry(signer)
            && let Some(p) = s.peers.get(e.key()).map_err(ApiError::internal)?
        {
            e.insert(p.public_key);
        }
    }
    Ok(keys)
}

/// Checks and records a batch of segments: in order from at most the first not yet recorded;
/// segments already recorded (a retried batch, a resumed upload) must repeat their entries
/// and are otherwise left as they are. Each batch extends the upload's life.
async fn record_batch(s: &State, caller: &Caller, upload_id: &str, b: SegmentBatch) -> Result<UploadStatus, ApiError> {
    let up = pending(s, caller, upload_id)?;
    if b.segments.len() > LAYOUT_SEGMENTS as usize || b.receipts.len() > b.segments.len() * up.n as usize {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a batch holds at most {LAYOUT_SEGMENTS} segments and one receipt per shard"),
        ));
    }
    if b.first > up.committed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("segments from {} are recorded next, not {}", up.committed, b.first),
        ));
    }
    let end = b.first as u64 + b.segments.len() as u64;
    let total = if up.stream { MAX_UPLOAD_SEGMENTS } else { segment_count(up.size, up.segment_size).max(1) };
    if end > total {
        return Err(ApiError::bad_request(format!("the upload has {total} segments, not {end}")));
    }
    for (i, seg) in b.segments.iter().enumerate().take((up.committed - b.first) as usize) {
        let key = row_key(upload_id, b.first + i as u32);
        if s.segments.get(&key).map_err(ApiError::internal)?.map(|r| r.entry) != Some(seg.clone()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("segment {} was recorded with another entry", b.first as usize + i),
            ));
        }
    }
    let charged = up.window_end.max(up.committed) as u64;
    if up.stream && end > charged {
        let new = (end - charged) * manifest::plain_per_segment(up.segment_size);
        accounts::check_quota(s, caller, new)?;
    }
    // Segments recorded before (a retried batch) were checked then; their entries match.
    let (mut b, first) = (b, up.committed);
    let skip = (first - b.first) as usize;
    b.segments.drain(..skip.min(b.segments.len()));
    b.placements.drain(..skip.min(b.placements.len()));
    let keys = signer_keys(s, &b.receipts)?;
    let (id, up2, verified) = (upload_id.to_owned(), up.clone(), s.receipts.clone());
    let b = tokio::task::spawn_blocking(move || {
        verify_segments((&id, &up2), first, &b.segments, &b.placements, &b.receipts, &keys, &verified).map(|()| b)
    })
    .await
    .map_err(ApiError::internal)??;
    for (i, (entry, placements)) in b.segments.into_iter().zip(b.placements).enumerate() {
        let row = SegmentRow { entry, placements };
        s.segments.insert(&row_key(upload_id, first + i as u32), &row).map_err(ApiError::internal)?;
    }
    let expires = s.now() + s.config.coordinator.upload_expiry;
    let committed = end.max(up.committed as u64) as u32;
    let up = s
        .uploads
        .update(upload_id, |old| {
            old.map(|mut u| {
                u.committed = u.committed.max(committed);
                u.expires = u.expires.max(expires);
                u
            })
        })
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("upload {upload_id} ended meanwhile")))?;
    s.sync().await.map_err(ApiError::internal)?;
    Ok(UploadStatus { upload_id: upload_id.to_owned(), committed: up.committed, expires: up.expires })
}

/// `POST /v2/uploads/{id}/segments`.
pub(super) async fn segments(s: &State, caller: &Caller, upload_id: &str, b: SegmentBatch) -> ApiResult {
    ok(&record_batch(s, caller, upload_id, b).await?)
}

/// `POST /v2/uploads/{id}/commit`: the last segments, then the manifest, whose segment table
/// must be the recorded segments' (each page of a version 3 root hashes to its recorded
/// segments; a version 2 manifest lists them).
pub(super) async fn commit(s: &State, caller: &Caller, upload_id: &str, mut c: Commit) -> ApiResult {
    let up = pending(s, caller, upload_id)?;
    let m = verify_commit((upload_id, &up), &c).map_err(ApiError::from)?;
    // Clients before batches sent every segment's placements with a version 2 manifest.
    if let SegmentTable::Inline(all) = &m.table
        && c.segments.is_empty()
        && !c.placements.is_empty()
    {
        c.segments = all.get(up.committed as usize..).unwrap_or_default().to_vec();
    }
    let mut committed = up.committed;
    // The rest, in batches of the usual bound.
    let (mut segments, mut placements, receipts) = (c.segments, c.placements, c.receipts);
    if !segments.is_empty() {
        let keys = signer_keys(s, &receipts)?;
        let (id, up2, first, verified) = (upload_id.to_owned(), up.clone(), committed, s.receipts.clone());
        let (segs, places) = (std::mem::take(&mut segments), std::mem::take(&mut placements));
        let (segs, places) = tokio::task::spawn_blocking(move || {
            verify_segments((&id, &up2), first, &segs, &places, &receipts, &keys, &verified).map(|()| (segs, places))
        })
        .await
        .map_err(ApiError::internal)??;
        for (i, (entry, placements)) in segs.into_iter().zip(places).enumerate() {
            s.segments
                .insert(&row_key(upload_id, first + i as u32), &SegmentRow { entry, placements })
                .map_err(ApiError::internal)?;
            committed += 1;
        }
    }
    if committed as u64 != m.segment_count() as u64 {
        return Err(ApiError::bad_request(format!(
            "the manifest has {} segments and {committed} were recorded",
            m.segment_count()
        )));
    }
    if up.stream {
        accounts::check_quota(s, caller, 0)?;
    }
    check_table(s, upload_id, &m)?;
    let file_id = m.file_id().to_string();
    let rec = FileRecord {
        manifest: c.manifest,
        placements: Vec::new(),
        owner_hash: c.owner_hash,
        created: s.now(),
        owner: caller.id.clone(),
        upload_id: upload_id.to_owned(),
        recovered_at: 0,
        rows: String::new(),
    };
    match record_file(s, &file_id, rec, accounts::charge(m.plaintext_size, m.shape.k))? {
        // The same file committed before from another upload: this one stored copies (or
        // anything under its orders) that no file will name, so it ends as an expired one
        // does, its peers told to let go, its rows dropped. Only the commit answer is shared.
        Some(first) if first != upload_id => {
            for peer in &up.peers {
                notices::queue(s, peer, NoticeEvent::Abandoned { upload_id: upload_id.to_owned() })
                    .map_err(ApiError::internal)?;
            }
            s.uploads.remove(upload_id).map_err(ApiError::internal)?;
            s.drop_rows(upload_id).map_err(ApiError::internal)?;
        }
        _ => s.uploads.remove(upload_id).map_err(ApiError::internal)?,
    }
    s.sync().await.map_err(ApiError::internal)?;
    tracing::info!(file = %file_id, size = m.plaintext_size, segments = m.segment_count(), "file committed");
    ok(&CommitReply { file_id })
}

/// The manifest's segment table is the one recorded, page by page.
fn check_table(s: &State, upload_id: &str, m: &Manifest) -> Result<(), ApiError> {
    for p in 0..m.page_count() {
        let mut entries = Vec::new();
        for i in m.page_range(p) {
            let row = s.segments.get(&row_key(upload_id, i)).map_err(ApiError::internal)?;
            entries.push(row.ok_or_else(|| ApiError::bad_request(format!("segment {i} was not recorded")))?.entry);
        }
        let same = match &m.table {
            SegmentTable::Paged(hashes) => manifest::page_hash(&manifest::encode_page(&entries)) == hashes[p as usize],
            SegmentTable::Inline(_) => m.open_page(p, None).is_ok_and(|listed| listed == entries),
        };
        if !same {
            return Err(ApiError::bad_request(format!(
                "page {p} of the manifest's segment table differs from the segments recorded"
            )));
        }
        for (i, e) in m.page_range(p).zip(&entries) {
            if e.sealed_len != m.expected_sealed_len(i) {
                return Err(ApiError::bad_request(format!("segment {i} does not have the manifest's length")));
            }
        }
    }
    Ok(())
}

/// Records a committed file for its owner, charged `size` bytes. A file id is committed once: the same account
/// committing the same manifest again is a no-op (a retried commit); anything else is 409.
/// Returns the upload the file was first committed from, when it was before.
fn record_file(s: &State, file_id: &str, rec: FileRecord, size: u64) -> Result<Option<String>, ApiError> {
    let owner = rec.owner.clone();
    let mut clash = None;
    let mut first_upload = None;
    s.files
        .update(file_id, |old| match old {
            Some(old) => {
                clash = Some(old.owner != rec.owner || old.manifest != rec.manifest);
                first_upload = Some(old.upload_id.clone());
                Some(old)
            }
            None => {
                clash = None;
                Some(rec.clone())
            }
        })
        .map_err(ApiError::internal)?;
    match clash {
        Some(true) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("file {file_id} is already stored, by another account or with other data: refused"),
        )),
        Some(false) => Ok(first_upload),
        None => {
            // Committed again after a deletion (the same manifest): no longer deleted.
            s.deleted.remove(file_id).map_err(|e| ApiError::internal(crate::store::DbError::from(e)))?;
            accounts::own(s, &owner, file_id, size).map_err(ApiError::internal)?;
            notices::committed(s, file_id, &rec).map_err(ApiError::internal)?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::codec::{EncodeParams, Encoder};
    use crate::core::crypto::{MIN_ITERATIONS, Salt};
    use crate::core::identity::Identity;
    use crate::core::manifest::FileMeta;

    /// A two-segment file of 2-of-3 shards, three peers, and a valid commit for it.
    fn scene() -> (UploadRecord, Commit, HashMap<String, String>, Vec<Identity>) {
        let params = EncodeParams { shape: Shape::new(2, 3).unwrap(), segment_size: 4096, iterations: MIN_ITERATIONS };
        let data = vec![7u8; 5000];
        let mut enc = Encoder::new(&data[..], b"pw", params, Salt([1; 16])).unwrap();
        let peers: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();
        let ids: Vec<String> = peers.iter().map(Identity::peer_id).collect();
        let mut receipts = Vec::new();
        let mut segments = Vec::new();
        while let Some(seg) = enc.next_segment().unwrap() {
            segments.push(seg.entry());
            for (j, sid) in seg.ids.iter().enumerate() {
                let len = seg.shard_len as u64;
                let r = Receipt { upload_id: "u".into(), shard_id: *sid, len, peer_id: ids[j].clone() };
                receipts.push(peers[j].sign(&r));
            }
        }
        let m = enc.finish(&FileMeta { name: "f".into(), content_type: String::new() }).unwrap();
        let up = UploadRecord {
            account: "me".into(),
            created: 0,
            expires: 100,
            size: 5000,
            k: 2,
            n: 3,
            segment_size: 4096,
            peers: ids.clone(),
            min_shards: 0,
            stream: false,
            committed: 0,
            window_end: 0,
            laid_out: BTreeMap::new(),
        };
        let commit = Commit {
            upload_id: "u".into(),
            manifest: hex::encode(m.to_bytes()),
            owner_hash: "00".repeat(32),
            placements: vec![ids.clone(), ids.clone()],
            segments,
            receipts,
        };
        let keys = peers.iter().map(|p| (p.peer_id(), p.public_key_hex())).collect();
        (up, commit, keys, peers)
    }

    /// The commit's manifest checked, then its segments as one batch.
    fn check(up: &UploadRecord, c: &Commit, keys: &HashMap<String, String>) -> Result<Manifest, CommitRefusal> {
        let m = verify_commit(("u", up), c)?;
        verify_segments(("u", up), 0, &c.segments, &c.placements, &c.receipts, keys, &VerifiedReceipts::default())?;
        Ok(m)
    }

    #[test]
    fn a_valid_commit_is_accepted() {
        let (up, c, keys, _) = scene();
        let m = check(&up, &c, &keys).unwrap();
        assert_eq!(m.segment_count(), 2);
    }

    #[test]
    fn each_flaw_is_refused_with_its_reason() {
        let (up, c, keys, peers) = scene();
        let refused =
            |up: &UploadRecord, c: Commit, keys: &HashMap<String, String>, _now: u64| check(up, &c, keys).unwrap_err();
        assert!(matches!(
            refused(&up, Commit { upload_id: "v".into(), ..c.clone() }, &keys, 0),
            CommitRefusal::WrongUpload
        ));
        let bigger = UploadRecord { size: 5001, ..up.clone() };
        assert!(matches!(refused(&bigger, c.clone(), &keys, 0), CommitRefusal::NotAsPlanned));
        assert!(matches!(
            refused(&up, Commit { owner_hash: "xy".into(), ..c.clone() }, &keys, 0),
            CommitRefusal::BadOwnerHash
        ));
        // A receipt from a key the coordinator does not know.
        let mut stranger = c.clone();
        let mallory = Identity::generate();
        stranger.receipts[0] = mallory.sign(&stranger.receipts[0].open().unwrap());
        assert!(matches!(refused(&up, stranger, &keys, 0), CommitRefusal::UnsignedReceipt));
        // A receipt for another upload.
        let mut other = c.clone();
        let r = Receipt { upload_id: "w".into(), ..other.receipts[0].open().unwrap() };
        other.receipts[0] = peers[0].sign(&r);
        assert!(matches!(refused(&up, other, &keys, 0), CommitRefusal::ForeignReceipt(_)));
        // A missing receipt, and a segment placed twice on one peer.
        let mut missing = c.clone();
        missing.receipts.pop();
        assert!(matches!(refused(&up, missing, &keys, 0), CommitRefusal::NoReceipt { segment: 1, shard: 2, .. }));
        let mut twice = c.clone();
        twice.placements[0][1] = twice.placements[0][0].clone();
        assert!(matches!(refused(&up, twice, &keys, 0), CommitRefusal::NotDistinct(0, 3)));
        // A peer's receipt for a shorter shard than the segment's (an uploader sending one
        // byte and its hash as the shard id): audits would expect the full length from the
        // peer, and blame it.
        let mut cut = c.clone();
        let r = Receipt { len: 1, ..cut.receipts[3].open().unwrap() };
        cut.receipts[3] = peers[0].sign(&r);
        assert!(matches!(
            refused(&up, cut, &keys, 0),
            CommitRefusal::WrongLength { segment: 1, shard: 0, len: 1, want: 468, .. }
        ));
        let short = Commit { placements: vec![c.placements[0].clone()], ..c };
        assert!(matches!(refused(&up, short, &keys, 0), CommitRefusal::MissingSegments));
    }

    #[test]
    fn slow_shards_may_be_left_unplaced_down_to_the_plans_minimum() {
        let (up, c, keys, _) = scene();
        // Shard 2 of segment 1 given up by the uploader: its receipt left out, placed as "".
        let mut gave_up = c.clone();
        gave_up.placements[1][2] = String::new();
        gave_up.receipts.pop();
        // Refused where the plan asks for every shard (as before this rule)...
        assert!(matches!(
            refused_at(&up, gave_up.clone(), &keys),
            CommitRefusal::TooFewShards { segment: 1, have: 2, need: 3 }
        ));
        // ... accepted where it asks for two of three, with the hole kept.
        let lenient = UploadRecord { min_shards: 2, ..up.clone() };
        check(&lenient, &gave_up, &keys).unwrap();
        // Two holes are one too many; and holes do not make a peer count twice.
        let mut two = gave_up.clone();
        two.placements[1][1] = String::new();
        assert!(matches!(refused_at(&lenient, two, &keys), CommitRefusal::TooFewShards { have: 1, need: 2, .. }));
        let mut twice = gave_up;
        twice.placements[1][1] = twice.placements[1][0].clone();
        assert!(matches!(refused_at(&lenient, twice, &keys), CommitRefusal::NotDistinct(1, 3)));
    }

    #[test]
    fn a_receipt_signature_is_checked_once_and_only_when_needed() {
        let (up, c, keys, peers) = scene();
        let verified = VerifiedReceipts::default();
        let run =
            |c: &Commit| verify_segments(("u", &up), 0, &c.segments, &c.placements, &c.receipts, &keys, &verified);
        // A genuine receipt nothing placed needs is not checked, and a bad signature is refused.
        let mut bad = c.clone();
        let stray = Receipt { shard_id: ShardId([9; 32]), ..c.receipts[0].open().unwrap() };
        bad.receipts.push(peers[0].sign(&stray));
        let mut sig = bad.receipts[5].sig.clone().into_bytes();
        sig[10] = if sig[10] == b'0' { b'1' } else { b'0' };
        bad.receipts[5].sig = String::from_utf8(sig).unwrap();
        assert!(matches!(run(&bad), Err(CommitRefusal::UnsignedReceipt)));
        assert!(verified.len() <= 5, "only valid receipts are remembered");
        // Mended, it passes; sent again, nothing new is checked; a forged copy of a remembered
        // receipt's body is still refused.
        bad.receipts[5] = c.receipts[5].clone();
        run(&bad).unwrap();
        assert_eq!(verified.len(), 6);
        run(&bad).unwrap();
        assert_eq!(verified.len(), 6);
        let mut forged = c.clone();
        forged.receipts[0].sig = forged.receipts[1].sig.clone();
        assert!(matches!(run(&forged), Err(CommitRefusal::UnsignedReceipt)));
    }

    fn refused_at(up: &UploadRecord, c: Commit, keys: &HashMap<String, String>) -> CommitRefusal {
        check(up, &c, keys).unwrap_err()
    }

    #[test]
    fn a_commit_fits_its_plans_bound_and_the_bound_grows_with_the_plan() {
        let (up, c, _, _) = scene();
        let len = serde_json::to_vec(&c).unwrap().len();
        let per_shard = (len - c.manifest.len()) / (2 * 3);
        assert!(per_shard as u64 <= COMMIT_PER_SHARD, "{per_shard} bytes per shard");
        assert!(len <= commit_body_limit(&up));
        // 8,192 segments of 8-of-20 (a 64 GiB file in 8 MiB segments): 160 MiB, held to the
        // protocol's bound; a one-segment file: under 300 KiB.
        let big = UploadRecord { size: 64 << 30, segment_size: 8 << 20, k: 8, n: 20, ..up.clone() };
        assert_eq!(commit_body_limit(&big), MAX_JSON_BODY);
        let small = UploadRecord { size: 1000, k: 8, n: 20, ..up };
        assert!(commit_body_limit(&small) < 300 << 10);
    }

    #[test]
    fn the_minimum_leaves_a_tenth_but_stays_above_the_repair_threshold() {
        assert_eq!(min_shards(8, 20, 4), 18);
        assert_eq!(min_shards(14, 20, 4), 19);
        assert_eq!(min_shards(2, 3, 4), 3);
        assert_eq!(min_shards(29, 80, 4), 72);
        assert_eq!(min_shards(1, 2, 0), 2);
    }
}
