//! Peers: registration and liveness by signed heartbeats, graceful exit, and the peer list.

use super::state::{PeerRecord, State};
use super::{admission, notices};
use crate::net::server::{ApiError, ApiResult, ok};
use crate::proto::*;

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
    if new {
        // What it holds may be files this database does not know (recovery).
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
    let placed: std::collections::HashSet<crate::core::merkle::ShardId> =
        s.shards_by_peer(&s.files.readable()).remove(&id).unwrap_or_default().into_iter().map(|h| h.id).collect();
    let marked = s
        .peers
        .update(&id, |p| {
            p.map(|mut p| {
                if p.public_key == signed.signer {
                    for sid in report.shard_ids.iter().filter(|sid| placed.contains(sid)) {
                        if !p.failed_shards.contains(sid) {
                            p.failed_shards.push(*sid);
                        }
                    }
                }
                p
            })
        })
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no peer {id}")))?;
    tracing::warn!(peer = %id, reported = report.shard_ids.len(), "a node reported damaged shards; they will be repaired");
    ok(&Removed { removed: marked.failed_shards.len() })
}
