//! Peers: registration and liveness by signed heartbeats, graceful exit, and the peer list.

use std::collections::HashSet;

use super::state::{HeldIndex, PeerRecord, State};
use super::{admission, notices};
use crate::core::merkle::ShardId;
use crate::net::server::{ApiError, ApiResult, ok};
use crate::proto::*;
use crate::store::RecordError;

pub(super) fn views(s: &State) -> Vec<PeerView> {
    let placed = s.placed_counts();
    s.peers.readable().iter().map(|(id, p)| s.view(id, p, placed.get(id).copied().unwrap_or(0))).collect()
}

pub(super) fn exit(s: &State, signed: Signed<ExitRequest>) -> ApiResult {
    let req = signed.open().ok_or_else(|| ApiError::forbidden("exit request signature does not verify"))?;
    let id = signed.signer_id();
    if req.time.abs_diff(s.now()) > CLOCK_SKEW {
        return Err(ApiError::forbidden("stale exit request"));
    }
    if req.coordinator != s.id() {
        return Err(ApiError::forbidden("the exit request is for another coordinator"));
    }
    let mut replayed = false;
    let updated = s
        .peers
        .update(&id, |p| {
            p.map(|mut p| {
                replayed = req.seq <= p.last_exit_seq;
                if !replayed && p.public_key == signed.signer {
                    p.last_exit_seq = req.seq;
                    if matches!(p.status, PeerStatus::Vetting | PeerStatus::Active) {
                        p.status = PeerStatus::Exiting;
                    }
                }
                p
            })
        })
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no peer {id}")))?;
    if replayed {
        return Err(ApiError::forbidden("replayed exit request"));
    }
    tracing::info!(peer = %id, status = ?updated.status, "graceful exit requested");
    ok(&s.view(&id, &updated, s.placed_counts().get(&id).copied().unwrap_or(0)))
}

pub(super) async fn heartbeat(s: &State, signed: Signed<Heartbeat>, remote: Option<std::net::IpAddr>) -> ApiResult {
    let hb = signed.open().ok_or_else(|| ApiError::forbidden("heartbeat signature does not verify"))?;
    let id = signed.signer_id();
    let t = s.now();
    if hb.time.abs_diff(t) > CLOCK_SKEW {
        return Err(ApiError::forbidden(format!(
            "heartbeat time {} is too far from ours ({t}); check the clock",
            hb.time
        )));
    }
    // A record that cannot be read is an error here, never a reason to register afresh:
    // that would undo a disqualification.
    let old = s.peers.get(&id).map_err(ApiError::internal)?;
    match &old {
        Some(o) if hb.seq <= o.last_seq => return Err(ApiError::forbidden("replayed heartbeat")),
        Some(_) => {}
        None => admission::check_new_peer(s, &id, &hb, &signed.signer)?,
    }
    let reached = match admission::needs_dial_back(old.as_ref(), &hb.address) {
        true => Some(admission::dial_back(s, &hb.address, &signed.signer, remote).await?),
        false => None,
    };
    if old.is_none() {
        // Only registrations that got this far count against the address: an attacker's
        // unreachable identities do not use up the registrations of its neighbours.
        s.limits.registration(remote)?;
        tracing::info!(peer = %id, address = %hb.address, "peer registered");
    }
    let new = old.is_none();
    // Read-modify-write in one step: the audit worker updates the same record.
    let mut replayed = false;
    s.peers
        .update(&id, |old| {
            replayed = old.as_ref().is_some_and(|o| hb.seq <= o.last_seq);
            if replayed {
                return old;
            }
            let mut p = old.unwrap_or_else(|| PeerRecord::new(signed.signer.clone()));
            p.address = hb.address.clone();
            if let Some(r) = &reached {
                p.verified_address = hb.address.clone();
                (p.ip, p.port) = (Some(r.ip), r.port);
            }
            p.capacity = hb.capacity;
            p.used = hb.used;
            p.shards = hb.shards;
            p.last_heartbeat = t;
            p.last_seq = hb.seq;
            Some(p)
        })
        .map_err(ApiError::internal)?;
    if replayed {
        return Err(ApiError::forbidden("replayed heartbeat"));
    }
    if new && s.started_empty {
        // What it holds may be files this database lost (recovery). A database that did not
        // lose them takes files from commits only (and from `recover`, which an operator
        // runs): a node that kept deleted files' manifest copies brought them back by
        // registering with a new key (round 6 of the attacks).
        let _ = s.recovery_queue.send(id.clone());
    }
    let generation = notices::generation(s).map_err(ApiError::internal)?;
    ok(&HeartbeatReply { peer_id: id, coordinator_key: s.identity.public_key_hex(), generation })
}

/// A node reports shards its scrubbing found damaged (and dropped): they are marked failed,
/// so repair rebuilds them elsewhere; no audit failure is counted (the node told the truth).
pub(super) fn damage(s: &State, signed: Signed<DamageReport>) -> ApiResult {
    let report = signed.open().ok_or_else(|| ApiError::forbidden("damage report signature does not verify"))?;
    if report.shard_ids.len() > MAX_DAMAGE_IDS {
        return Err(ApiError::new(
            hyper::StatusCode::PAYLOAD_TOO_LARGE,
            format!("a damage report names at most {MAX_DAMAGE_IDS} shards; send several"),
        ));
    }
    let id = signed.signer_id();
    if report.time.abs_diff(s.now()) > CLOCK_SKEW || report.coordinator != s.id() {
        return Err(ApiError::forbidden("the damage report is stale or for another coordinator"));
    }
    // Only a known peer's report is weighed, and against the audit worker's index of who
    // holds what: walking every placement for each report let anyone with a key pair make
    // the coordinator read its whole database per request.
    match s.peers.get(&id).map_err(ApiError::internal)? {
        Some(p) if p.public_key == signed.signer => {}
        _ => return Err(ApiError::not_found(format!("no peer {id}"))),
    }
    let (marked, unknown) = mark_damaged(s, &id, &s.held(), &report.shard_ids).map_err(ApiError::internal)?;
    if !unknown.is_empty() {
        // Placed since the index was read, or never: weighed at the audit worker's next reading.
        let mut later = s.damage_later.lock().expect("not poisoned");
        let waiting = later.entry(id.clone()).or_default();
        for sid in unknown {
            if waiting.len() < DAMAGE_LATER && !waiting.contains(&sid) {
                waiting.push(sid);
            }
        }
    }
    tracing::warn!(peer = %id, reported = report.shard_ids.len(), "a node reported damaged shards; they will be repaired");
    ok(&Removed { removed: marked })
}

/// Those of `shards` that `index` places on `peer`, among its shards that pass `keep`.
pub(super) fn index_placed(
    index: &HeldIndex,
    peer: &str,
    shards: &[ShardId],
    keep: impl Fn(&super::state::HeldShard) -> bool,
) -> Vec<ShardId> {
    let wanted: HashSet<&ShardId> = shards.iter().collect();
    index.get(peer).into_iter().flatten().filter(|h| keep(h) && wanted.contains(&h.id)).map(|h| h.id).collect()
}

/// Reported shards kept per peer until the audit worker's next reading of who holds what.
const DAMAGE_LATER: usize = 4 * MAX_DAMAGE_IDS;

/// Marks those of `reported` that `index` places on `peer` as failed (repair rebuilds them
/// elsewhere). Returns how many of the peer's shards are marked failed now, and the reported
/// shards `index` does not place on it.
pub(super) fn mark_damaged(
    s: &State,
    peer: &str,
    index: &HeldIndex,
    reported: &[ShardId],
) -> Result<(usize, Vec<ShardId>), RecordError> {
    let placed: HashSet<ShardId> = index_placed(index, peer, reported, |_| true).into_iter().collect();
    let marked = s.peers.update(peer, |p| {
        p.map(|mut p| {
            for sid in reported.iter().filter(|sid| placed.contains(sid)) {
                if !p.failed_shards.contains(sid) {
                    p.failed_shards.push(*sid);
                }
            }
            p
        })
    })?;
    let unknown = reported.iter().filter(|sid| !placed.contains(sid)).copied().collect();
    Ok((marked.map_or(0, |p| p.failed_shards.len()), unknown))
}
