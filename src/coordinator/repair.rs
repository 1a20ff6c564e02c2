//! Repair: every `[repair] check_interval` the checker counts each segment's healthy shards
//! (on a peer in good standing, reachable or offline for less than the grace period, and not
//! failed in its last audit). Segments at or below k + `[repair] threshold` — and every
//! segment with a shard on a peer that is leaving — are repaired, most endangered first,
//! `[repair] concurrency` at a time: k shards are fetched and checked against their ids, the
//! missing ones rebuilt with Reed-Solomon and checked against the manifest's ids (a repair
//! can never introduce different data), stored on new peers with signed orders and receipts,
//! and only then do the placements change, in one atomic update. No password is needed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::notices;
use super::state::{PeerRecord, SegmentRow, State, row_key};
use crate::core::codec::VerifiedShard;
use crate::core::erasure;
use crate::core::manifest::Manifest;
use crate::core::merkle::{self, ShardId};
use crate::core::placement;
use crate::net::server::Shutdown;
use crate::net::transfer::{TransferError, fetch_shard, store_shard};
use crate::proto::*;
use crate::store::RecordError;

/// Spare peers asked per repair, for targets that fail.
const SPARES: usize = 3;

/// What decides a shard's state: the time, and how long silence is tolerated.
#[derive(Clone, Copy, Debug)]
pub(super) struct Rules {
    pub now: u64,
    pub heartbeat_timeout: u64,
    pub grace_period: u64,
}

impl Rules {
    pub fn of(s: &State) -> Rules {
        Rules {
            now: s.now(),
            heartbeat_timeout: s.config.coordinator.heartbeat_timeout,
            grace_period: s.config.repair.grace_period,
        }
    }

    /// What the shard `id` on peer `p` is worth now.
    pub fn classify(&self, p: Option<&PeerRecord>, id: &ShardId) -> ShardState {
        let Some(p) = p else { return ShardState::Lost };
        match p.status {
            PeerStatus::Disqualified | PeerStatus::Exited => return ShardState::Lost,
            PeerStatus::Exiting => return ShardState::Leaving,
            PeerStatus::Vetting | PeerStatus::Active => {}
        }
        if p.failed_shards.contains(id) {
            return ShardState::Failed;
        }
        let silent = self.now.saturating_sub(p.last_heartbeat);
        let suspended = p.suspended_since.map(|t| self.now.saturating_sub(t));
        if silent > self.heartbeat_timeout + self.grace_period || suspended.is_some_and(|d| d > self.grace_period) {
            ShardState::Lost
        } else if silent > self.heartbeat_timeout || suspended.is_some() {
            ShardState::Offline
        } else {
            ShardState::Healthy
        }
    }

    /// Healthy: on a peer in good standing, not failed in its last audit, and online or
    /// offline for less than the grace period.
    fn healthy(&self, p: Option<&PeerRecord>, id: &ShardId) -> bool {
        matches!(self.classify(p, id), ShardState::Healthy | ShardState::Offline)
    }

    /// Indices of a segment's shards that are not healthy.
    pub fn unhealthy(&self, peers: &HashMap<String, PeerRecord>, row: &SegmentRow) -> Vec<usize> {
        row.entry
            .shard_ids
            .iter()
            .zip(&row.placements)
            .enumerate()
            .filter(|(_, (id, peer))| !self.healthy(peers.get(*peer), id))
            .map(|(j, _)| j)
            .collect()
    }
}

/// The health of segments `first..` of a file, whose rows are `rows`.
pub(super) fn segments_health(
    s: &State,
    peers: &HashMap<String, PeerRecord>,
    file_id: &str,
    first: u32,
    rows: &[SegmentRow],
) -> Vec<SegmentHealth> {
    let rules = Rules::of(s);
    let queue = s.repair_queue.lock().expect("not poisoned");
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let total = row.placements.len() as u32;
            SegmentHealth {
                healthy: total - rules.unhealthy(peers, row).len() as u32,
                total,
                repair_queued: queue.contains(&(file_id.to_owned(), first as usize + i)),
            }
        })
        .collect()
}

pub(super) async fn run(s: Arc<State>, mut shutdown: Shutdown) {
    let interval = Duration::from_secs(s.config.repair.check_interval);
    while !shutdown.sleep(interval).await {
        check(&s).await;
        s.counters.rounds.with_label_values(&["repair", "done"]).inc();
    }
}

/// One round: find endangered segments, repair them, and let drained leaving peers go.
async fn check(s: &Arc<State>) {
    let peers: HashMap<String, PeerRecord> = s.peers.readable().into_iter().collect();
    let rules = Rules::of(s);
    let mut queue = Vec::new();
    for (file_id, f) in s.files.readable() {
        let Some(m) = f.parsed() else { continue };
        let (k, n) = (m.shape.k(), m.shape.n());
        let threshold = (k + s.config.repair.threshold as usize).min(n - 1);
        let walked = s.visit_rows(&f, |seg, row| {
            let bad = rules.unhealthy(&peers, &row);
            let leaving = row.placements.iter().any(|p| peers.get(p).is_some_and(|p| p.status == PeerStatus::Exiting));
            if !bad.is_empty() && (n - bad.len() <= threshold || leaving) {
                queue.push((n - bad.len(), file_id.clone(), seg as usize));
            }
        });
        if let Err(e) = walked {
            tracing::warn!(file = %file_id, error = %e, "a segment row cannot be read; repair skips the rest of the file");
        }
    }
    queue.sort();
    *s.repair_queue.lock().expect("not poisoned") = queue.iter().map(|(_, f, seg)| (f.clone(), *seg)).collect();
    futures::stream::iter(queue)
        .for_each_concurrent(s.config.repair.concurrency as usize, |(healthy, file_id, seg)| {
            let s = s.clone();
            async move {
                match repair_segment(&s, &file_id, seg).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(file = %file_id, segment = seg, was_healthy = healthy, rebuilt = n, "segment repaired"),
                    Err(e) => tracing::warn!(file = %file_id, segment = seg, error = %e, "repair failed; will retry"),
                }
                s.repair_queue.lock().expect("not poisoned").remove(&(file_id, seg));
            }
        })
        .await;
    // A leaving peer that holds nothing any more has left.
    let placed = s.placed_counts();
    for (id, p) in &peers {
        if p.status == PeerStatus::Exiting && !placed.contains_key(id) {
            let _ = s.peers.update(id, |r| {
                r.map(|mut r| {
                    r.status = PeerStatus::Exited;
                    r
                })
            });
            tracing::info!(peer = %id, "peer has exited: none of its shards are needed any more");
        }
    }
}

/// Why a segment was not repaired this round.
#[derive(Debug, thiserror::Error)]
enum RepairError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("the stored manifest does not parse")]
    BadManifest,
    #[error("only {got} of the {k} shards needed could be fetched")]
    TooFewSources { got: usize, k: usize },
    #[error("rebuilding the segment")]
    Rebuild(#[from] crate::core::erasure::ErasureError),
    #[error("rebuilt shard {0} does not match its id: refusing to place it")]
    Mismatch(usize),
    #[error("fewer than {0} peers can take the rebuilt shards")]
    NoTargets(usize),
    #[error("no peer accepted rebuilt shard {shard}: {last}")]
    Refused { shard: usize, last: TransferError },
    #[error("a worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Db(#[from] crate::store::DbError),
}

/// Rebuilds and re-places the unhealthy shards of one segment; returns how many.
async fn repair_segment(s: &Arc<State>, file_id: &str, seg: usize) -> Result<usize, RepairError> {
    let Some(f) = s.files.get(file_id)? else { return Ok(0) };
    let m = f.parsed().ok_or(RepairError::BadManifest)?;
    let peers_all = s.peers.readable();
    let peers: HashMap<String, PeerRecord> = peers_all.iter().cloned().collect();
    let Some(row) = s.row(&f, seg as u32)? else { return Ok(0) };
    let bad = Rules::of(s).unhealthy(&peers, &row);
    if bad.is_empty() {
        return Ok(0);
    }
    let holders = &row.placements;
    let got = fetch_sources(s, &peers, &m, &row, seg, &bad).await?;
    let (shape, shard_len) = (m.shape, m.shard_len(seg as u32));
    let rebuilt = tokio::task::spawn_blocking(move || {
        let refs: Vec<(usize, &[u8])> = got.iter().map(|v| (v.index(), &v.bytes()[..])).collect();
        erasure::all_shards(shape, shard_len, &refs)
    })
    .await??;
    let ids = &row.entry.shard_ids;
    for &j in &bad {
        if merkle::root(&rebuilt[j]) != ids[j] {
            return Err(RepairError::Mismatch(j));
        }
    }
    // New homes: peers in good standing, in no failure domain that holds (or held) a shard of
    // this segment.
    let taken: HashSet<String> = holders.iter().filter_map(|h| peers.get(h).map(|p| s.domain(h, p))).collect();
    let candidates = s.candidates(&peers_all, &taken);
    let rules = placement::Rules {
        n: bad.len(),
        spares: SPARES,
        shard_len: shard_len as u64,
        max_vetting: super::uploads::max_vetting(s, m.shape.n()),
    };
    let targets =
        placement::plan(&candidates, 1, rules).and_then(|mut p| p.pop()).ok_or(RepairError::NoTargets(bad.len()))?;
    // Rebuilt shards join the file's upload on their new nodes, so its read grants cover them.
    let upload_id = if f.upload_id.is_empty() { format!("repair-{file_id}-{seg}") } else { f.upload_id.clone() };
    let placed = place_rebuilt(s, &peers, &upload_id, targets, &bad, &rebuilt, ids).await?;
    let moved: Vec<(usize, String, String)> =
        placed.into_iter().map(|(j, target)| (j, holders[j].clone(), target)).collect();
    // Placements change only now, and only where nobody else changed them meanwhile.
    let mut changed = Vec::new();
    s.segments.update(&row_key(f.rows_prefix(), seg as u32), |r| {
        changed.clear();
        r.map(|mut r| {
            for (j, old, new) in &moved {
                if r.placements.get(*j) == Some(old) {
                    r.placements[*j] = new.clone();
                    changed.push((ids[*j], old.clone(), new.clone()));
                }
            }
            r
        })
    })?;
    // The new holders keep their copies for the file; the old ones may let theirs go. Queued
    // before the flush, so the new placements and their notices become durable together.
    for (sid, old, new) in changed {
        let upload_id = f.upload_id.clone();
        let kept = NoticeEvent::Committed {
            upload_id,
            file_id: file_id.to_owned(),
            shard_ids: vec![sid],
            complete: false,
            manifest: None,
        };
        notices::queue(s, &new, kept)?;
        let freed = NoticeEvent::Released { file_id: file_id.to_owned(), shard_ids: vec![sid], deleted: false };
        notices::queue(s, &old, freed)?;
    }
    s.sync().await?;
    s.counters.repaired_shards.inc_by(moved.len() as u64);
    Ok(moved.len())
}

/// At least k verified shards of the segment: healthy holders first, then the others (they
/// may still answer); every one is checked against its id.
async fn fetch_sources(
    s: &State,
    peers: &HashMap<String, PeerRecord>,
    m: &Manifest,
    row: &SegmentRow,
    seg: usize,
    bad: &[usize],
) -> Result<Vec<VerifiedShard>, RepairError> {
    let holders = &row.placements;
    let k = m.shape.k();
    let mut order: Vec<usize> = (0..holders.len()).filter(|j| !bad.contains(j)).collect();
    order.extend(bad);
    let mut got = Vec::new();
    let mut next = order.into_iter();
    while got.len() < k {
        let batch: Vec<usize> = next.by_ref().take(k - got.len()).collect();
        if batch.is_empty() {
            return Err(RepairError::TooFewSources { got: got.len(), k });
        }
        let len = m.shard_len(seg as u32);
        let fetched = futures::future::join_all(batch.into_iter().map(|j| {
            let addr = peers.get(&holders[j]).map(|p| p.address.clone()).unwrap_or_default();
            let id = row.entry.shard_ids[j];
            let grant = s.grant(&holders[j], ANY_UPLOAD, &s.id());
            async move { (j, fetch_shard(&s.http, &addr, &id, len, Some(&grant)).await) }
        }))
        .await;
        for (j, r) in fetched {
            if let Ok(v) = r.map(|b| m.verify_shard(seg as u32, &row.entry, j, b)) {
                got.extend(v);
            }
        }
    }
    Ok(got)
}

/// Stores each rebuilt shard `j` of `bad` on its own target at once, a refused one on the
/// next spare; returns (shard, new peer) pairs, each confirmed by a receipt.
async fn place_rebuilt(
    s: &State,
    peers: &HashMap<String, PeerRecord>,
    upload_id: &str,
    targets: Vec<String>,
    bad: &[usize],
    rebuilt: &[Vec<u8>],
    ids: &[ShardId],
) -> Result<Vec<(usize, String)>, RepairError> {
    let shard_len = rebuilt[0].len() as u64;
    let expires = s.now() + 600;
    let put = |j: usize, target: String| {
        let order = s.identity.sign(&PutOrder {
            upload_id: upload_id.to_owned(),
            peer_id: target.clone(),
            max_shard_len: shard_len,
            expires,
            max_bytes: 0,
        });
        let addr = peers.get(&target).map(|p| p.address.clone()).unwrap_or_default();
        let data = Bytes::from(rebuilt[j].clone());
        async move {
            let r = store_shard(&s.http, &addr, &order, &target, ids[j], data).await;
            (j, target, r)
        }
    };
    let mut targets = targets.into_iter();
    let first = futures::future::join_all(bad.iter().map(|&j| put(j, targets.next().unwrap_or_default()))).await;
    let mut placed = Vec::new();
    for (j, mut target, mut result) in first {
        while let Err(e) = result {
            tracing::warn!(peer = %target, error = %e, "repair target refused a shard");
            let Some(spare) = targets.next() else {
                return Err(RepairError::Refused { shard: j, last: e });
            };
            (_, target, result) = put(j, spare).await;
        }
        placed.push((j, target));
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_offline_then_lost_after_the_grace_period() {
        let rules = |now| Rules { now, heartbeat_timeout: 60, grace_period: 300 };
        let mut p = PeerRecord::new("k".into());
        p.last_heartbeat = 1000;
        p.status = PeerStatus::Active;
        let id = ShardId([1; 32]);
        assert_eq!(rules(1060).classify(Some(&p), &id), ShardState::Healthy);
        assert_eq!(rules(1061).classify(Some(&p), &id), ShardState::Offline);
        assert!(rules(1360).healthy(Some(&p), &id), "offline within the grace period still counts");
        assert_eq!(rules(1361).classify(Some(&p), &id), ShardState::Lost);
        p.failed_shards.push(id);
        assert_eq!(rules(1000).classify(Some(&p), &id), ShardState::Failed);
        p.status = PeerStatus::Exiting;
        assert_eq!(rules(1000).classify(Some(&p), &id), ShardState::Leaving);
        p.status = PeerStatus::Active;
        p.failed_shards.clear();
        p.suspended_since = Some(1000);
        assert_eq!(rules(1050).classify(Some(&p), &id), ShardState::Offline, "suspended, within the grace period");
        assert_eq!(rules(1301).classify(Some(&p), &id), ShardState::Lost, "suspended past it: repaired");
        p.status = PeerStatus::Disqualified;
        assert_eq!(rules(1000).classify(Some(&p), &id), ShardState::Lost);
        assert_eq!(rules(1000).classify(None, &id), ShardState::Lost);
    }
}
