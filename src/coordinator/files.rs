//! Committed files: the list, one file's placements and health, its manifest, and deletion
//! by its owner.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use ring::digest::{SHA256, digest};

use super::auth::Caller;
use super::repair;
use super::state::{FileRecord, PeerRecord, State};
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
    s.files.remove(id).map_err(ApiError::internal)?;
    s.owned.remove(&format!("{}/{id}", rec.owner)).map_err(ApiError::internal)?;
    s.files.flush().await.map_err(ApiError::internal)?;
    // Shards still placed by another file on the same peer (identical padding shards) stay.
    let keep: HashSet<(ShardId, String)> =
        s.files.readable().iter().flat_map(|(_, other)| other.placed_shards()).collect();
    let mut by_peer: BTreeMap<String, Vec<ShardId>> = BTreeMap::new();
    for (sid, peer) in rec.placed_shards() {
        if !keep.contains(&(sid, peer.clone())) {
            by_peer.entry(peer).or_default().push(sid);
        }
    }
    // Online peers are told now, all at once; the others get the next live list (gc).
    let expires = s.now() + 600;
    let tell = by_peer.into_iter().filter_map(|(peer, ids)| {
        let p = s.peers.get(&peer).ok().flatten().filter(|p| s.is_online(p))?;
        let order = s.identity.sign(&DeleteOrder { peer_id: peer.clone(), shard_ids: ids, expires });
        let url = format!("{}/v2/shards/delete", p.address);
        Some(async move {
            if let Err(e) = s.http.post_json(&url, &order).await.and_then(|r| r.json::<Removed>()) {
                tracing::warn!(peer = %peer, error = %e, "could not tell the peer to delete shards");
            }
        })
    });
    futures::future::join_all(tell).await;
    tracing::info!(file = %id, "file deleted");
    ok(&Deleted { deleted: id.to_owned() })
}
