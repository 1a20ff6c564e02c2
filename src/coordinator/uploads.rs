//! Uploads: placement plans with signed put orders, and commits. A commit is checked by the
//! pure [`verify_commit`] (plan, manifest, receipts and placements in; the file record or the
//! exact reason out) before the file is recorded.

use std::collections::{BTreeMap, HashMap, HashSet};

use hyper::StatusCode;
use rayon::prelude::*;

use super::auth::Caller;
use super::state::{FileRecord, OwnedRecord, State, UploadRecord};
use super::{accounts, notices};
use crate::core::erasure::Shape;
use crate::core::error::CodecError;
use crate::core::manifest::{self, Manifest, segment_count};
use crate::core::merkle::ShardId;
use crate::core::placement;
use crate::net::server::{ApiError, ApiResult, ok};
use crate::proto::*;

/// Segments one plan may cover, whatever the configuration: a plan's layout and orders are
/// held in memory and sent whole.
pub(super) const MAX_PLAN_SEGMENTS: u64 = 1 << 16;

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

pub(super) fn plan(s: &State, caller: &Caller, req: PlanRequest) -> Result<Plan, ApiError> {
    let shape = Shape::new(req.k, req.n).map_err(|e| ApiError::bad_request(e.to_string()))?;
    manifest::check_segment_size(req.segment_size).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Decided before anything is allocated for the plan: its layout grows with the segments.
    let limit = s.config.security.max_upload_size();
    if req.size > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a file of {} bytes is over this network's limit of {limit} bytes", req.size),
        ));
    }
    if segment_count(req.size, req.segment_size) > MAX_PLAN_SEGMENTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a plan covers at most {MAX_PLAN_SEGMENTS} segments; use larger segments"),
        ));
    }
    accounts::check_quota(s, caller, req.size)?;
    let pending = s.uploads.readable().iter().filter(|(_, u)| u.account == caller.id).count();
    if pending >= s.config.limits.pending_uploads {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{pending} uploads of this account are in progress, the most allowed; commit them or let them expire"
            ),
        ));
    }
    let peers = s.peers.readable();
    let online = s.candidates(&peers, &HashSet::new());
    let need = req.n as usize;
    if online.len() < need {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} peers are online and in good standing, {need} are needed for {}-of-{need} coding",
                online.len(),
                req.k
            ),
        ));
    }
    let segments = segment_count(req.size, req.segment_size);
    let shard_len = shape.shard_len(req.segment_size as usize) as u64;
    let rules = placement::Rules { n: need, spares: SPARES, shard_len, max_vetting: max_vetting(s, need) };
    let layout = placement::plan(&online, segments as usize, rules).ok_or_else(|| {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("fewer than {need} online peers in distinct failure domains have room for this file"),
        )
    })?;
    let upload_id = hex::encode(crate::core::crypto::Salt::random().0);
    let now = s.now();
    let expires = now + s.config.coordinator.upload_expiry;
    let used: HashSet<&String> = layout.iter().flatten().collect();
    let mut orders = BTreeMap::new();
    let mut addresses = BTreeMap::new();
    for (id, p) in &peers {
        if used.contains(id) {
            let order =
                PutOrder { upload_id: upload_id.clone(), peer_id: id.clone(), max_shard_len: shard_len, expires };
            orders.insert(id.clone(), s.identity.sign(&order));
            addresses.insert(id.clone(), p.address.clone());
        }
    }
    let rec = UploadRecord {
        account: caller.id.clone(),
        created: now,
        expires,
        size: req.size,
        k: req.k,
        n: req.n,
        segment_size: req.segment_size,
        peers: orders.keys().cloned().collect(),
        min_shards: min_shards(req.k, req.n, s.config.repair.threshold),
    };
    s.uploads.insert(&upload_id, &rec).map_err(ApiError::internal)?;
    let min_shards = rec.min_shards;
    Ok(Plan { upload_id, expires, orders, addresses, segments: layout, min_shards })
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
}

impl CommitRefusal {
    fn status(&self) -> StatusCode {
        match self {
            CommitRefusal::Expired => StatusCode::GONE,
            CommitRefusal::NotYours
            | CommitRefusal::UnsignedReceipt
            | CommitRefusal::ForeignReceipt(_)
            | CommitRefusal::NoReceipt { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<CommitRefusal> for ApiError {
    fn from(r: CommitRefusal) -> ApiError {
        ApiError::new(r.status(), r.to_string())
    }
}

/// Checks a commit against its plan: the upload is unexpired, the manifest parses and is the
/// planned one, every receipt is signed by a planned peer (`keys`: peer id → public key of
/// registered peers) for this upload, and each segment's placed shards (all n but those
/// given up as too slow, placed as "": at least the plan's `min_shards`) have receipts from
/// distinct peers. Pure; receipts are checked on all cores.
pub(super) fn verify_commit(
    (upload_id, up): (&str, &UploadRecord),
    account: &str,
    c: Commit,
    keys: &HashMap<String, String>,
    now: u64,
) -> Result<(Manifest, FileRecord), CommitRefusal> {
    if up.account != account {
        return Err(CommitRefusal::NotYours);
    }
    if up.expires < now {
        return Err(CommitRefusal::Expired);
    }
    if c.upload_id != upload_id {
        return Err(CommitRefusal::WrongUpload);
    }
    let bytes = hex::decode(&c.manifest).map_err(|_| CommitRefusal::ManifestNotHex)?;
    let m = Manifest::from_bytes(&bytes).map_err(CommitRefusal::BadManifest)?;
    if m.plaintext_size != up.size || m.shape.k != up.k || m.shape.n != up.n || m.segment_size != up.segment_size {
        return Err(CommitRefusal::NotAsPlanned);
    }
    if c.owner_hash.len() != 64 || hex::decode(&c.owner_hash).is_err() {
        return Err(CommitRefusal::BadOwnerHash);
    }
    let allowed: HashSet<&String> = up.peers.iter().collect();
    let stored = c
        .receipts
        .par_iter()
        .map(|r| {
            let signer = r.signer_id();
            let rec = keys.get(&signer).and_then(|k| r.open_by(k)).ok_or(CommitRefusal::UnsignedReceipt)?;
            if rec.upload_id != upload_id || rec.peer_id != signer || !allowed.contains(&rec.peer_id) {
                return Err(CommitRefusal::ForeignReceipt(rec.peer_id));
            }
            Ok((rec.shard_id, rec.peer_id))
        })
        .collect::<Result<HashSet<(ShardId, String)>, CommitRefusal>>()?;
    if c.placements.len() != m.segments.len() {
        return Err(CommitRefusal::MissingSegments);
    }
    let need = match up.min_shards {
        0 => up.n as usize,
        m => (m as usize).min(up.n as usize),
    };
    for (i, (seg, peers)) in m.segments.iter().zip(&c.placements).enumerate() {
        let placed: Vec<&String> = peers.iter().filter(|p| !p.is_empty()).collect();
        if peers.len() != seg.shard_ids.len() || placed.iter().collect::<HashSet<_>>().len() != placed.len() {
            return Err(CommitRefusal::NotDistinct(i, seg.shard_ids.len()));
        }
        if placed.len() < need {
            return Err(CommitRefusal::TooFewShards { segment: i, have: placed.len(), need });
        }
        for (j, (id, peer)) in seg.shard_ids.iter().zip(peers).enumerate() {
            if !peer.is_empty() && !stored.contains(&(*id, peer.clone())) {
                return Err(CommitRefusal::NoReceipt { segment: i, shard: j, peer: peer.clone() });
            }
        }
    }
    let record = FileRecord {
        manifest: c.manifest,
        placements: c.placements,
        owner_hash: c.owner_hash,
        created: now,
        owner: account.to_owned(),
        upload_id: upload_id.to_owned(),
        recovered_at: 0,
    };
    Ok((m, record))
}

/// A commit body's bytes beyond its segments: the envelope, the manifest's header and its
/// sealed metadata (at most 64 KiB, twice that in hex).
const COMMIT_FIXED: u64 = 256 << 10;
/// A commit body's bytes per shard, about twice what it takes: the shard id in the manifest
/// (64 hex digits), its placement (a peer id) and its receipt (a signed message of ~500 bytes).
const COMMIT_PER_SHARD: u64 = 1 << 10;

/// The largest commit body the upload `up` can need: bounded by its plan's segments and n,
/// and by [`MAX_JSON_BODY`].
pub(super) fn commit_body_limit(up: &UploadRecord) -> usize {
    let segments = segment_count(up.size, up.segment_size);
    let per_segment = up.n as u64 * COMMIT_PER_SHARD + 64;
    let bound = COMMIT_FIXED.saturating_add(segments.saturating_mul(per_segment));
    usize::try_from(bound).unwrap_or(usize::MAX).min(MAX_JSON_BODY)
}

/// The caller's pending upload `upload_id`, looked up before its commit body is read: a
/// commit for an upload that does not exist, is another account's or has expired is refused
/// unread.
pub(super) fn pending_upload(s: &State, caller: &Caller, upload_id: &str) -> Result<UploadRecord, ApiError> {
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

/// Commits the caller's pending upload `up` (from [`pending_upload`]).
pub(super) async fn commit(s: &State, caller: &Caller, upload_id: &str, up: UploadRecord, c: Commit) -> ApiResult {
    let mut keys = HashMap::new();
    for r in &c.receipts {
        let signer = r.signer_id();
        if let std::collections::hash_map::Entry::Vacant(e) = keys.entry(signer)
            && let Some(p) = s.peers.get(e.key()).map_err(ApiError::internal)?
        {
            e.insert(p.public_key);
        }
    }
    // A 1 GiB upload brings 2,560 P-256 signatures: checked off the async threads.
    let (now, id, account) = (s.now(), upload_id.to_owned(), caller.id.clone());
    let (m, rec) = tokio::task::spawn_blocking(move || verify_commit((&id, &up), &account, c, &keys, now))
        .await
        .map_err(ApiError::internal)??;
    let file_id = m.file_id().to_string();
    record_file(s, &file_id, rec, m.plaintext_size)?;
    s.uploads.remove(upload_id).map_err(ApiError::internal)?;
    s.files.flush().await.map_err(ApiError::internal)?;
    tracing::info!(file = %file_id, size = m.plaintext_size, segments = m.segments.len(), "file committed");
    ok(&CommitReply { file_id })
}

/// Records a committed file for its owner. A file id is committed once: the same account
/// committing the same manifest again is a no-op (a retried commit); anything else is 409.
fn record_file(s: &State, file_id: &str, rec: FileRecord, size: u64) -> Result<(), ApiError> {
    let owner = rec.owner.clone();
    let mut clash = None;
    s.files
        .update(file_id, |old| match old {
            Some(old) => {
                clash = Some(old.owner != rec.owner || old.manifest != rec.manifest);
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
        Some(false) => Ok(()),
        None => {
            s.owned.insert(&format!("{owner}/{file_id}"), &OwnedRecord { size }).map_err(ApiError::internal)?;
            notices::committed(s, file_id, &rec).map_err(ApiError::internal)
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
        while let Some(seg) = enc.next_segment().unwrap() {
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
        };
        let commit = Commit {
            upload_id: "u".into(),
            manifest: hex::encode(m.to_bytes()),
            owner_hash: "00".repeat(32),
            placements: vec![ids.clone(), ids.clone()],
            receipts,
        };
        let keys = peers.iter().map(|p| (p.peer_id(), p.public_key_hex())).collect();
        (up, commit, keys, peers)
    }

    #[test]
    fn a_valid_commit_is_accepted() {
        let (up, c, keys, _) = scene();
        let (m, rec) = verify_commit(("u", &up), "me", c, &keys, 50).unwrap();
        assert_eq!(m.segments.len(), 2);
        assert_eq!((rec.created, rec.owner.as_str(), rec.upload_id.as_str()), (50, "me", "u"));
    }

    #[test]
    fn each_flaw_is_refused_with_its_reason() {
        let (up, c, keys, peers) = scene();
        let refused = |up: &UploadRecord, c: Commit, keys: &HashMap<String, String>, now| {
            verify_commit(("u", up), "me", c, keys, now).unwrap_err()
        };
        assert!(matches!(verify_commit(("u", &up), "you", c.clone(), &keys, 0), Err(CommitRefusal::NotYours)));
        assert!(matches!(refused(&up, c.clone(), &keys, 101), CommitRefusal::Expired));
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
        let (_, rec) = verify_commit(("u", &lenient), "me", gave_up.clone(), &keys, 50).unwrap();
        assert_eq!(rec.placements[1][2], "");
        // Two holes are one too many; and holes do not make a peer count twice.
        let mut two = gave_up.clone();
        two.placements[1][1] = String::new();
        assert!(matches!(refused_at(&lenient, two, &keys), CommitRefusal::TooFewShards { have: 1, need: 2, .. }));
        let mut twice = gave_up;
        twice.placements[1][1] = twice.placements[1][0].clone();
        assert!(matches!(refused_at(&lenient, twice, &keys), CommitRefusal::NotDistinct(1, 3)));
    }

    fn refused_at(up: &UploadRecord, c: Commit, keys: &HashMap<String, String>) -> CommitRefusal {
        verify_commit(("u", up), "me", c, keys, 50).unwrap_err()
    }

    #[test]
    fn a_commit_fits_its_plans_bound_and_the_bound_grows_with_the_plan() {
        let (up, c, _, _) = scene();
        let len = serde_json::to_vec(&c).unwrap().len();
        let per_shard = (len - c.manifest.len()) / (2 * 3);
        assert!(per_shard as u64 * 2 <= COMMIT_PER_SHARD + 64, "{per_shard} bytes per shard");
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
