//! Collection: every `[coordinator] gc_interval`, expired uploads are forgotten and their
//! planned peers hear they were abandoned (`notices`); stale request nonces, idle rate
//! limiter keys and long-silent peers are forgotten. Nodes delete only what notices name
//! (deleted files, abandoned uploads, moved shards), never by absence from a list.
//!
//! A round in which any file record cannot be read is skipped, with an error: a damaged
//! database is reported, never acted on.

use std::sync::Arc;
use std::time::Duration;

use super::notices;
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
    for (id, u) in s.uploads.all()? {
        if u.expires < t {
            // Its planned peers may let go of what they stored for it (unless they know it
            // committed): the notice is queued before the record goes.
            for peer in &u.peers {
                notices::queue(s, peer, NoticeEvent::Abandoned { upload_id: id.clone() })?;
            }
            s.uploads.remove(&id)?;
            s.drop_rows(&id)?;
        }
    }
    super::auth::prune_nonces(s)?;
    s.limits.forget_idle();
    forget_peers(s, &files)?;
    Ok(())
}

/// Disqualified peers remembered at most; the oldest are forgotten first.
const MAX_BANNED: usize = 100_000;

/// Forgets peers silent for longer than `[coordinator] forget_after` that hold nothing any
/// file needs; a disqualified one is remembered (in a bounded table) so it cannot return.
fn forget_peers(s: &State, files: &[(String, super::state::FileRecord)]) -> Result<(), RecordError> {
    let horizon = s.config.coordinator.forget_after.saturating_mul(86_400);
    let now = s.now();
    let mut holding = std::collections::HashSet::new();
    for (_, f) in files {
        s.visit_rows(f, |_, row| holding.extend(row.placements))?;
    }
    for (id, p) in s.peers.all()? {
        if now.saturating_sub(p.last_heartbeat) <= horizon || holding.contains(&id) {
            continue;
        }
        if p.status == PeerStatus::Disqualified {
            s.banned.insert(&id, &super::state::BannedPeer { since: now })?;
        }
        s.peers.remove(&id)?;
        notices::drop_for(s, &id)?;
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
