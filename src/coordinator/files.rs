//! Committed files: the list, one file's placements and health, its manifest, and deletion
//! by its owner.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use ring::digest::{SHA256, digest};

use super::auth::Caller;
use super::state::{FileRecord, PeerRecord, SegmentRow, State, row_key};
use super::stats::Kept;
use super::{notices, repair};
use crate::core::merkle::ShardId;
use crate::net::server::{self, ApiError, ApiResult, ok};
use crate::proto::*;

pub(super) fn record(s: &State, id: &str) -> Result<FileRecord, ApiError> {
    s.files.get(id).map_err(ApiError::internal)?.ok_or_else(|| ApiError::not_found(format!("no file {id}")))
}

fn summary(id: &str, rec: &FileRecord) -> Option<FileSummary> {
    let m = rec.parsed()?;
    Some(FileSummary {
        file_id: id.to_owned(),
        size: m.plaintext_size,
        segments: m.segment_count() as u64,
        k: m.shape.k,
        n: m.shape.n,
        created: rec.created,
    })
}

/// The caller's own files: nobody lists another account's file ids.
pub(super) fn list(s: &State, caller: &Caller) -> Result<Vec<FileSummary>, ApiError> {
    let owned = s.owned.scan_prefix(&format!("{}/", caller.id)).map_err(ApiError::internal)?;
    let mut out = Vec::with_capacity(owned.records.len());
    for (key, _) in owned.records {
        let id = key.rsplit('/').next().unwrap_or_default();
        if let Some(sum) = s.files.get(id).map_err(ApiError::internal)?.and_then(|r| summary(id, &r)) {
            out.push(sum);
        }
    }
    Ok(out)
}

pub(super) fn manifest(s: &State, id: &str) -> ApiResult {
    let bytes = hex::decode(record(s, id)?.manifest).map_err(ApiError::internal)?;
    Ok(server::bytes("application/octet-stream", Bytes::from(bytes)))
}

/// Which segments of a file a view covers, and whether it counts the whole file's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Window {
    pub first: u32,
    /// At most [`VIEW_SEGMENTS`].
    pub count: u32,
    /// Totals read every row of the file: `info` wants them, a download's windows do not.
    pub totals: bool,
}

/// A file's placements, health and read grants for a window of its segments, with health
/// totals over the whole file when asked: for any admitted account that knows the id (the id
/// and the password are the capability to read a file).
pub(super) fn view(s: &State, caller: &Caller, id: &str, w: Window) -> Result<FileView, ApiError> {
    view_for(s, &caller.id, id, w)
}

/// As [`view`], with grants issued to `grantee`.
pub(super) fn view_for(s: &State, grantee: &str, id: &str, w: Window) -> Result<FileView, ApiError> {
    let Window { first, count, totals } = w;
    let rec = record(s, id)?;
    let summary = summary(id, &rec).ok_or_else(|| ApiError::internal(BadManifest))?;
    let records: HashMap<String, PeerRecord> = s.peers.readable().into_iter().collect();
    let rules = repair::Rules::of(s);
    let window = s.rows_window(&rec, first, count.min(VIEW_SEGMENTS)).map_err(ApiError::internal)?;
    let totals = if totals { Some(file_totals(s, id, &rec, &records, &rules, summary.k)?) } else { None };
    let used: HashSet<String> =
        window.iter().flat_map(|r| r.placements.iter().cloned()).filter(|p| !p.is_empty()).collect();
    let peers = used.iter().filter_map(|pid| Some((pid.clone(), s.view(pid, records.get(pid)?, 0)))).collect();
    let health = repair::segments_health(s, &records, id, first, &window);
    let shard_states = window
        .iter()
        .map(|r| {
            r.entry.shard_ids.iter().zip(&r.placements).map(|(sid, p)| rules.classify(records.get(p), sid)).collect()
        })
        .collect();
    let grants = used.iter().map(|p| (p.clone(), s.grant(p, &rec.upload_id, grantee))).collect();
    let placements = window.iter().map(|r| r.placements.clone()).collect();
    Ok(FileView { summary, first, totals, placements, peers, health, shard_states, grants })
}

/// Files whose totals are kept at most (a new one beyond them starts the set over).
const TOTALS_KEPT: usize = 256;

/// A file's segments counted by health. Reading them walks every row of the file (seconds
/// for a terabyte) and any admitted account may ask, so they are [`Kept`] per file.
fn file_totals(
    s: &State,
    id: &str,
    rec: &FileRecord,
    peers: &HashMap<String, PeerRecord>,
    rules: &repair::Rules,
    k: u8,
) -> Result<HealthTotals, ApiError> {
    if let Some(t) = s.totals_cache.lock().expect("not poisoned").get(id).and_then(|c| c.get(s)) {
        return Ok(t);
    }
    let stamp = Kept::stamp(s);
    let mut t = HealthTotals { min_healthy: u32::MAX, ..HealthTotals::default() };
    s.visit_rows(rec, |_, row| {
        let n = row.placements.len();
        let healthy = n - rules.unhealthy(peers, &row).len();
        let threshold = (k as usize + s.config.repair.threshold as usize).min(n.saturating_sub(1));
        match healthy {
            h if h == n => t.healthy += 1,
            h if h < k as usize => t.unreadable += 1,
            h if h <= threshold => t.at_risk += 1,
            _ => t.degraded += 1,
        }
        t.min_healthy = t.min_healthy.min(healthy as u32);
    })
    .map_err(ApiError::internal)?;
    if t.min_healthy == u32::MAX {
        t.min_healthy = 0; // no segments
    }
    let mut kept = s.totals_cache.lock().expect("not poisoned");
    if kept.len() >= TOTALS_KEPT {
        kept.clear();
    }
    kept.insert(id.to_owned(), stamp(t));
    Ok(t)
}

/// `GET /v2/files/{id}/pages/{p}`: page `p` of a version 3 file's segment table, as its
/// manifest root names it by hash.
pub(super) fn page(s: &State, id: &str, p: u32) -> ApiResult {
    let rec = record(s, id)?;
    let m = rec.parsed().ok_or_else(|| ApiError::internal(BadManifest))?;
    if p >= m.page_count() {
        return Err(ApiError::not_found(format!("file {id} has {} pages", m.page_count())));
    }
    let mut entries = Vec::new();
    for i in m.page_range(p) {
        let row = s.row(&rec, i).map_err(ApiError::internal)?;
        entries.push(row.ok_or_else(|| ApiError::internal(MissingRow(i)))?.entry);
    }
    Ok(server::bytes("application/octet-stream", Bytes::from(crate::core::manifest::encode_page(&entries))))
}

/// A committed file without one of its segment rows.
#[derive(Debug, thiserror::Error)]
#[error("segment {0} of the file is not recorded")]
struct MissingRow(u32);

/// Moves the placements of records from before segment rows into rows (at start).
pub(super) fn move_placements_to_rows(s: &State) -> Result<(), crate::store::RecordError> {
    for (id, rec) in s.files.readable() {
        if rec.placements.is_empty() {
            continue;
        }
        let Some(m) = rec.parsed() else { continue };
        let rows = if rec.upload_id.is_empty() { id.clone() } else { String::new() };
        let moved = FileRecord { placements: Vec::new(), rows, ..rec.clone() };
        for (p, placements) in rec.placements.into_iter().enumerate() {
            let Ok(page) = m.open_page(crate::core::manifest::page_of(p as u32), None) else { continue };
            let entry = page[p % crate::core::manifest::PAGE_SEGMENTS as usize].clone();
            s.segments.insert(&row_key(moved.rows_prefix(), p as u32), &SegmentRow { entry, placements })?;
        }
        s.files.insert(&id, &moved)?;
        tracing::info!(file = %id, "placements moved into segment rows");
    }
    Ok(())
}

/// A stored manifest that does not parse (the record decoded, its manifest did not).
#[derive(Debug, thiserror::Error)]
#[error("the stored manifest does not parse")]
pub(super) struct BadManifest;

/// Records that file `id` was deleted: no manifest copy brings it back (`recovery`).
pub(super) fn tombstone(s: &State, id: &str) -> Result<(), crate::store::RecordError> {
    s.deleted.insert(id, &s.now().to_be_bytes()).map_err(crate::store::DbError::from)?;
    Ok(())
}

/// Forgets a file and queues the notices that tell its nodes; returns their outbox keys. Its
/// segment rows are the caller's to drop once this is durable.
pub(super) fn forget(s: &State, id: &str, rec: &FileRecord) -> Result<Vec<String>, crate::store::RecordError> {
    // The notices go in the outbox with the deletion; nodes holding a shard another file
    // also needs (identical padding shards) keep it: they count files per shard.
    let keys = notices::deleted(s, id, rec)?;
    tombstone(s, id)?;
    s.files.remove(id)?;
    super::accounts::disown(s, &rec.owner, id)?;
    Ok(keys)
}

/// Deletes a file for its owner: the owning account's signature and the password's owner
/// token, both required.
pub(super) async fn delete(s: &State, caller: &Caller, id: &str, req: DeleteRequest) -> ApiResult {
    let rec = record(s, id)?;
    if rec.owner != caller.id {
        return Err(ApiError::forbidden(format!("file {id} belongs to another account: not deleted")));
    }
    let token = hex::decode(&req.owner_token).map_err(|_| ApiError::forbidden("the owner token is not hex"))?;
    if hex::encode(digest(&SHA256, &token)) != rec.owner_hash {
        return Err(ApiError::forbidden("wrong password for this file: not deleted"));
    }
    let keys = forget(s, id, &rec).map_err(ApiError::internal)?;
    s.sync().await.map_err(ApiError::internal)?;
    s.drop_rows(rec.rows_prefix()).map_err(ApiError::internal)?;
    // Online peers are told now; the others when they are back.
    if let Err(e) = notices::deliver(s, Some(&keys)).await {
        tracing::warn!(error = %e, "delivering deletion notices failed; they stay queued");
    }
    tracing::info!(file = %id, "file deleted");
    ok(&Deleted { deleted: id.to_owned() })
}

/// A reader says a node served shards of this file that do not match their ids: that node is
/// audited at once, on those shards (the reader's word alone changes nothing).
pub(super) fn damage(s: &State, id: &str, claim: DamageClaim) -> ApiResult {
    let rec = record(s, id)?;
    let placed: Vec<ShardId> = if claim.segments.len() == claim.shard_ids.len() {
        // The claimed segments' rows, as they are now: one read each.
        let mut rows: HashMap<u32, Option<SegmentRow>> = HashMap::new();
        let mut placed = Vec::new();
        for (sid, &segment) in claim.shard_ids.iter().zip(&claim.segments) {
            let row = match rows.entry(segment) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(s.row(&rec, segment).map_err(ApiError::internal)?)
                }
            };
            let on = row.as_ref().and_then(|r| r.placements.get(r.entry.shard_ids.iter().position(|x| x == sid)?));
            if on.is_some_and(|p| *p == claim.peer_id) {
                placed.push(*sid);
            }
        }
        placed
    } else {
        // Among the peer's shards in the audit worker's index: a walk of the file's
        // placements cost up to a second per claim on a large file (anyone's).
        super::peers::index_placed(&s.held(), &claim.peer_id, &claim.shard_ids, |h| &*h.file == id)
    };
    if placed.is_empty() {
        return Err(ApiError::bad_request(
            "none of those shards of this file is placed on that peer (without their segments: as the coordinator \
             read its placements, at most seconds ago)",
        ));
    }
    s.audit_soon(claim.peer_id, placed);
    ok(&Removed { removed: 0 })
}
