//! Garbage collection: every `[coordinator] gc_interval`, expired uploads are forgotten and
//! each online peer gets a signed list of the shards it should keep. A node deletes what is
//! not listed and older than `keep_newer_than`: the shards of deleted files, of uploads never
//! committed, and of shards repair moved away. Anything younger than an upload may take is
//! kept, so no upload or repair in progress loses a shard.
//!
//! Nodes delete by absence from the list, so a list must be complete: a round in which any
//! file record cannot be read is skipped, with an error, rather than sent without its shards.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::state::State;
use crate::net::server::Shutdown;
use crate::proto::*;
use crate::store::RecordError;

pub(super) async fn run(s: Arc<State>, mut shutdown: Shutdown) {
    let interval = Duration::from_secs(s.config.coordinator.gc_interval);
    while !shutdown.sleep(interval).await {
        let outcome = match collect(&s).await {
            Ok(()) => "done",
            Err(e) => {
                tracing::error!(error = %e, "garbage collection skipped this round: nothing was deleted");
                "skipped"
            }
        };
        s.counters.rounds.with_label_values(&["gc", outcome]).inc();
    }
}

/// One round; an error when the files cannot all be read (then no node is told anything).
pub(super) async fn collect(s: &State) -> Result<(), RecordError> {
    let files = s.files.all()?;
    let t = s.now();
    let mut oldest_pending = t;
    for (id, u) in s.uploads.all()? {
        if u.expires < t {
            s.uploads.remove(&id)?;
        } else {
            oldest_pending = oldest_pending.min(u.created);
        }
    }
    super::auth::prune_nonces(s)?;
    s.limits.forget_idle();
    forget_peers(s, &files)?;
    let keep_newer_than = t.saturating_sub(s.config.coordinator.upload_expiry).min(oldest_pending);
    let held = s.shards_by_peer(&files);
    let online: Vec<_> = s.peers.readable().into_iter().filter(|(_, p)| s.is_admitted(p)).collect();
    futures::stream::iter(online)
        .for_each_concurrent(CONCURRENCY, |(id, p)| {
            let list = LiveList {
                peer_id: id.clone(),
                shard_ids: held.get(&id).map(|v| v.iter().map(|(sid, _)| *sid).collect()).unwrap_or_default(),
                keep_newer_than,
                expires: t + 600,
            };
            async move {
                match s.http.post_json(&format!("{}/v2/gc", p.address), &s.identity.sign(&list)).await {
                    Ok(r) if r.status.is_success() => {}
                    Ok(r) => tracing::warn!(peer = %id, status = %r.status, "garbage collection refused"),
                    Err(e) => tracing::warn!(peer = %id, error = %e, "garbage collection failed"),
                }
            }
        })
        .await;
    Ok(())
}

/// Peers visited at once.
const CONCURRENCY: usize = 16;

/// Disqualified peers remembered at most; the oldest are forgotten first.
const MAX_BANNED: usize = 100_000;

/// Forgets peers silent for longer than `[coordinator] forget_after` that hold nothing any
/// file needs; a disqualified one is remembered (in a bounded table) so it cannot return.
fn forget_peers(s: &State, files: &[(String, super::state::FileRecord)]) -> Result<(), RecordError> {
    let horizon = s.config.coordinator.forget_after.saturating_mul(86_400);
    let now = s.now();
    let holding: std::collections::HashSet<&String> =
        files.iter().flat_map(|(_, f)| f.placements.iter().flatten()).collect();
    for (id, p) in s.peers.all()? {
        if now.saturating_sub(p.last_heartbeat) <= horizon || holding.contains(&id) {
            continue;
        }
        if p.status == PeerStatus::Disqualified {
            s.banned.insert(&id, &super::state::BannedPeer { since: now })?;
        }
        s.peers.remove(&id)?;
        tracing::info!(peer = %id, "peer forgotten after a long silence");
    }
    let mut banned = s.banned.all()?;
    if banned.len() > MAX_BANNED {
        banned.sort_by_key(|(_, b)| b.since);
        for (id, _) in &banned[..banned.len() - MAX_BANNED] {
            s.banned.remove(id)?;
        }
    }
    Ok(())
}
