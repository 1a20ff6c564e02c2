//! Committed files: the list, one file's placements and health, its manifest, and deletion
//! by its owner.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use ring::digest::{SHA256, digest};

use super::auth::Caller;
use super::state::{FileRecord, PeerRecord, State};
use super::{notices, repair};
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
        segments: m.segments.len() as u64,
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

/// A file's placements, health and read grants: for any admitted account that knows the id
/// (the id and the password are the capability to read a file).
pub(super) fn view(s: &State, caller: &Caller, id: &str) -> Result<FileView, ApiError> {
    view_for(s, &caller.id, id)
}

/// As [`view`], with grants issued to `grantee`.
pub(super) fn view_for(s: &State, grantee: &str, id: &str) -> Result<FileView, ApiError> {
    let rec = record(s, id)?;
    let summary = summary(id, &rec).ok_or_else(|| ApiError::internal(BadManifest))?;
    let records: HashMap<String, PeerRecord> = s.peers.readable().into_iter().collect();
    let peers =
        peers_of(&rec).into_iter().filter_map(|pid| Some((pid.clone(), s.view(&pid, records.get(&pid)?, 0)))).collect();
    let health = repair::file_health(s, &records, id, &rec);
    let rules = repair::Rules::of(s);
    let shard_states = rec
        .parsed()
        .map(|m| {
            m.segments
                .iter()
                .zip(&rec.placements)
                .map(|(seg, ps)| {
                    seg.shard_ids.iter().zip(ps).map(|(sid, p)| rules.classify(records.get(p), sid)).collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let grants = peers_of(&rec).into_iter().map(|p| (p.clone(), s.grant(&p, &rec.upload_id, grantee))).collect();
    Ok(FileView { summary, placements: rec.placements, peers, health, shard_states, grants })
}

/// The peers holding any shard of a file.
fn peers_of(rec: &FileRecord) -> HashSet<String> {
    rec.placements.iter().flatten().cloned().collect()
}

/// A stored manifest that does not parse (the record decoded, its manifest did not).
#[derive(Debug, thiserror::Error)]
#[error("the stored manifest does not parse")]
pub(super) struct BadManifest;

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
    // The notices go in the outbox with the deletion; nodes holding a shard another file
    // also needs (identical padding shards) keep it: they count files per shard.
    let keys = notices::deleted(s, id, &rec).map_err(ApiError::internal)?;
    s.files.remove(id).map_err(ApiError::internal)?;
    s.owned.remove(&format!("{}/{id}", rec.owner)).map_err(ApiError::internal)?;
    s.sync().await.map_err(ApiError::internal)?;
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
    let placed: Vec<crate::core::merkle::ShardId> = rec
        .placed_shards()
        .into_iter()
        .filter(|(sid, peer)| *peer == claim.peer_id && claim.shard_ids.contains(sid))
        .map(|(sid, _)| sid)
        .collect();
    if placed.is_empty() {
        return Err(ApiError::bad_request("none of those shards of this file is placed on that peer"));
    }
    let mut urgent = s.urgent_audits.lock().expect("not poisoned");
    if urgent.len() < super::audit::URGENT_QUEUE {
        urgent.push_back((claim.peer_id, placed));
    }
    ok(&Removed { removed: 0 })
}
