//! Proofs of retrievability. Every `[audit] interval` (a quarter of it while a peer is being
//! vetted, ±25% jitter; the first at a random time within one) each online peer is asked for random chunks of random shards it
//! should hold, with a fresh nonce and a deadline; it answers with Merkle proofs signed by
//! its key, checked against the shard ids alone. A peer without recent heartbeats is not
//! asked; each audit it misses lowers its online score. Every challenged chunk is one outcome for
//! the peer's reputation, so a peer that lost much data falls as fast as the evidence comes
//! in; a challenge that timed out is asked again, and repeated timeouts count as failures.
//! Shards already known lost (failed before, or reported damaged by the peer) are no new
//! failure: they wait for repair.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::task::JoinSet;

use super::state::{HeldIndex, HeldShard, Pace, PeerRecord, State, UrgentAudit};
use crate::core::merkle::{self, ShardId};
use crate::net::client as http;
use crate::net::server::Shutdown;
use crate::proto::*;

/// Readers' damage reports waiting at most; more are dropped until the queue drains.
pub(super) const URGENT_QUEUE: usize = 1024;

/// Audits running at once.
const CONCURRENCY: usize = 16;
/// Chunks asked for in one audit.
pub const AUDIT_ITEMS: usize = 3;
/// Consecutive unanswered audits that count as one failure.
const TIMEOUTS_AS_FAILURE: u32 = 3;
/// Bytes of an audit answer read at most: AUDIT_ITEMS proofs of a 4 KiB chunk (hex in JSON) with
/// their paths, and room to spare.
const ANSWER_LIMIT: usize = 64 << 10;

/// Audit records kept per peer.
const HISTORY: usize = 200;

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    SystemRandom::new().fill(&mut b).expect("the operating system's random generator failed");
    u64::from_le_bytes(b)
}

pub(super) async fn run(s: Arc<State>, mut shutdown: Shutdown) {
    let mut due: HashMap<String, Instant> = HashMap::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Peers are re-read on each tick, not on each finished audit; who holds what (every
    // placement of every file) only when the files changed and a walk is due.
    let mut peers: Vec<(String, PeerRecord)> = Vec::new();
    let mut held: Arc<HeldIndex> = Arc::default();
    let mut held_at: Option<((u64, u64), Pace)> = None;
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tick.tick() => {
                peers = s.peers.readable();
                let changes = (s.files.changes(), s.segments.changes());
                let reports_wait = !s.damage_later.lock().expect("not poisoned").is_empty();
                if held_at.is_none_or(|(at, pace)| (at != changes || reports_wait) && pace.due()) {
                    // Reports taken before the reading are weighed against it; later ones wait.
                    let reports = std::mem::take(&mut *s.damage_later.lock().expect("not poisoned"));
                    let started = Instant::now();
                    held = Arc::new(s.shards_by_peer(&s.files.readable()));
                    held_at = Some((changes, Pace::since(started)));
                    *s.held_index.lock().expect("not poisoned") = Some(held.clone());
                    for (peer, shards) in reports {
                        if let Err(e) = super::peers::mark_damaged(&s, &peer, &held, &shards) {
                            tracing::warn!(peer = %peer, error = %e, "reported damage could not be marked");
                        }
                    }
                }
            }
            Some(Ok(done)) = tasks.join_next(), if !tasks.is_empty() => {
                running.remove(&done);
            }
        }
        while let Some(Ok(done)) = tasks.try_join_next() {
            running.remove(&done);
        }
        let now_i = Instant::now();
        // Peers readers reported first, at once, on the shards reported.
        let urgent: Vec<UrgentAudit> = s.urgent_audits.lock().expect("not poisoned").drain(..).collect();
        // Shards the index does not know wait for a reading that started after they were
        // reported (a file read right after its upload), as does a peer being audited now.
        let read_at = held_at.map(|(_, pace)| pace.started());
        let mut later = Vec::new();
        for (id, suspect, since) in urgent {
            let peer = peers.iter().find(|(pid, _)| *pid == id).map(|(_, p)| p.clone());
            let Some(p) = peer else { continue };
            let shards = held.get(&id).map(Vec::as_slice).unwrap_or_default();
            let unread = read_at.is_none_or(|at| at < since) && {
                let known: HashSet<ShardId> = shards.iter().map(|h| h.id).collect();
                !suspect.iter().all(|sid| known.contains(sid))
            };
            if unread || running.contains(&id) {
                later.push((id, suspect, since));
            } else if !shards.is_empty() {
                running.insert(id.clone());
                tasks.spawn(audit_peer(s.clone(), id, p, shards.to_vec(), suspect));
            }
        }
        if !later.is_empty() {
            let mut queue = s.urgent_audits.lock().expect("not poisoned");
            for u in later.into_iter().rev() {
                if queue.len() < URGENT_QUEUE {
                    queue.push_front(u);
                }
            }
        }
        for (id, p) in &peers {
            if running.len() >= CONCURRENCY {
                break;
            }
            let gone = matches!(p.status, PeerStatus::Disqualified | PeerStatus::Exited);
            if gone || running.contains(id) || due.get(id).is_some_and(|t| *t > now_i) {
                continue;
            }
            let base = s.config.audit.interval as f64 / if p.status == PeerStatus::Vetting { 4.0 } else { 1.0 };
            // A peer first seen by this worker (just registered, or the coordinator just
            // started) is first audited at a random time within an interval: not all at once,
            // and mostly after a heartbeat in which it reports what it found lost meanwhile.
            let first = !due.contains_key(id);
            let share = (random_u64() % 1000) as f64 / 1000.0;
            let wait = base * if first { share } else { 0.75 + share / 2.0 };
            due.insert(id.clone(), now_i + Duration::from_secs_f64(wait.max(0.5)));
            if first {
                continue;
            }
            if !s.is_online(p) {
                // A peer whose heartbeats stopped is not asked, but each audit it misses counts
                // against its online score, as an unanswered one would.
                let _ = s.peers.update(id, |old| {
                    old.map(|mut p| {
                        p.online.record(false);
                        p
                    })
                });
                continue;
            }
            let Some(shards) = held.get(id).filter(|v| !v.is_empty()) else { continue }; // nothing to prove yet
            running.insert(id.clone());
            tasks.spawn(audit_peer(s.clone(), id.clone(), p.clone(), shards.clone(), Vec::new()));
        }
    }
    // Audits in flight finish and record their outcome.
    while tasks.join_next().await.is_some() {}
}

/// A challenge of `AUDIT_ITEMS` random chunks of the peer's shards: first of the `suspect` shards
/// (reported damaged), then of any.
fn new_challenge(peer: &str, shards: &[HeldShard], suspect: &[ShardId], deadline: u64) -> Challenge {
    let lens: HashMap<ShardId, usize> = shards.iter().map(|h| (h.id, h.len)).collect();
    let chosen = suspect
        .iter()
        .filter_map(|id| Some((*id, *lens.get(id)?)))
        .chain((0..).map(|_| {
            let h = &shards[(random_u64() % shards.len() as u64) as usize];
            (h.id, h.len)
        }))
        .take(AUDIT_ITEMS.min(shards.len()));
    let items =
        chosen.map(|(id, len)| ChallengeItem { shard_id: id, chunk: random_u64() % merkle::leaf_count(len) }).collect();
    Challenge {
        peer_id: peer.to_owned(),
        nonce: format!("{:016x}{:016x}", random_u64(), random_u64()),
        items,
        deadline,
    }
}

/// Checks an answer: signed by the peer, for this nonce, one valid proof per item.
/// Returns the shards that failed and those of them the peer let go on a notice (see
/// `AuditAnswer::released`), or why the whole answer is void.
fn check(
    p: &PeerRecord,
    c: &Challenge,
    lens: &HashMap<ShardId, usize>,
    a: &Signed<AuditAnswer>,
) -> Result<(Vec<ShardId>, Vec<ShardId>), String> {
    let answer = a.open_by(&p.public_key).ok_or("the answer is not signed by the peer")?;
    if answer.nonce != c.nonce || answer.proofs.len() != c.items.len() {
        return Err("the answer is for another challenge".into());
    }
    let released = answer.released.iter().filter_map(|&i| c.items.get(i as usize)).map(|i| i.shard_id).collect();
    let failed = c
        .items
        .iter()
        .zip(&answer.proofs)
        .filter(|(item, proof)| {
            let expected = lens.get(&item.shard_id).map(|&l| merkle::leaf_count(l));
            !proof
                .as_ref()
                .is_some_and(|pr| Some(pr.leaf_count) == expected && merkle::verify(&item.shard_id, item.chunk, pr))
        })
        .map(|(item, _)| item.shard_id)
        .collect();
    Ok((failed, released))
}

/// Applies one outcome to a peer's record (pure bookkeeping, unit-tested).
/// What an outcome is weighed against.
#[derive(Clone, Copy)]
struct Standards {
    vetting_audits: u32,
    disqualify_below: f64,
    suspend_below: f64,
    now: u64,
}

/// `failed`: the challenged shards that failed. Those the peer's record already lists as
/// lost (failed before, or reported damaged by the peer itself) are counted neither way:
/// they were counted once, or confessed, and stay listed until repair moves them.
fn apply(p: &mut PeerRecord, outcome: AuditOutcome, failed: &[ShardId], c: &Challenge, st: Standards) {
    let known = |id: &ShardId| failed.contains(id) && p.failed_shards.contains(id);
    let counted: Vec<bool> =
        c.items.iter().filter(|i| !known(&i.shard_id)).map(|i| !failed.contains(&i.shard_id)).collect();
    match outcome {
        AuditOutcome::Success => {
            for passed in counted {
                p.audit.record(passed);
            }
            p.online.record(true);
            p.audits_passed += 1;
            p.pending = None;
            p.timeouts = 0;
            p.failed_shards.retain(|f| failed.contains(f) || !c.items.iter().any(|i| i.shard_id == *f));
        }
        AuditOutcome::Failure => {
            for passed in counted {
                p.audit.record(passed);
            }
            p.online.record(true);
            p.pending = None;
            p.timeouts = 0;
            for f in failed {
                if !p.failed_shards.contains(f) {
                    p.failed_shards.push(*f);
                }
            }
        }
        AuditOutcome::Offline => {
            // The same challenge is asked again: going quiet on the chunks one lost does not
            // dodge them (containment, as Storj does).
            p.online.record(false);
            p.timeouts += 1;
            p.pending = Some(c.clone());
            if p.timeouts >= TIMEOUTS_AS_FAILURE {
                p.audit.record(false);
                p.timeouts = 0;
            }
        }
        AuditOutcome::Unknown => {
            p.online.record(true);
            p.suspension.record(false);
        }
    }
    if matches!(outcome, AuditOutcome::Success | AuditOutcome::Failure) {
        p.suspension.record(true);
    }
    match (p.suspension.score() < st.suspend_below, p.suspended_since) {
        (true, None) => p.suspended_since = Some(st.now),
        (false, Some(_)) => p.suspended_since = None,
        _ => {}
    }
    if p.status == PeerStatus::Vetting && p.audits_passed >= st.vetting_audits {
        p.status = PeerStatus::Active;
    }
    if p.audit.score() < st.disqualify_below && p.status != PeerStatus::Exited {
        p.status = PeerStatus::Disqualified;
    }
}

/// Audits one peer; returns its id when done.
async fn audit_peer(s: Arc<State>, id: String, p: PeerRecord, shards: Vec<HeldShard>, suspect: Vec<ShardId>) -> String {
    let timeout = s.config.audit.timeout;
    let lens: HashMap<ShardId, usize> = shards.iter().map(|h| (h.id, h.len)).collect();
    // A challenge that went unanswered is asked again, as long as the shards are still there.
    let deadline = s.now() + timeout;
    let challenge = match p.pending.clone() {
        Some(c) if c.items.iter().all(|i| lens.contains_key(&i.shard_id)) => Challenge { deadline, ..c },
        _ => new_challenge(&id, &shards, &suspect, deadline),
    };
    let url = format!("{}/v2/audit", p.address);
    let body = bytes::Bytes::from(serde_json::to_vec(&s.identity.sign(&challenge)).expect("wire types serialize"));
    let req = http::request("POST", &url, &[("content-type", "application/json")], body);
    // An answer is a few proofs of one 4 KiB chunk each: read no more than that.
    let sent = match req {
        Ok(req) => s.audit_http.send_limited(req, ANSWER_LIMIT).await,
        Err(e) => Err(e),
    };
    let (outcome, failed, detail) = match sent {
        Err(e @ (http::HttpError::Timeout { .. } | http::HttpError::Connect { .. })) => {
            tracing::info!(peer = %id, error = %e, "audit got no answer");
            (AuditOutcome::Offline, Vec::new(), e.summary())
        }
        Err(e) => {
            tracing::info!(peer = %id, error = %e, "audit answer proves nothing");
            (AuditOutcome::Unknown, Vec::new(), e.summary())
        }
        Ok(r) if !r.status.is_success() => (AuditOutcome::Unknown, Vec::new(), format!("HTTP {}", r.status)),
        Ok(r) => match r
            .json::<Signed<AuditAnswer>>()
            .map_err(|e| e.summary())
            .and_then(|a| check(&p, &challenge, &lens, &a))
        {
            // The index the challenge came from may be seconds old: shards deleted or moved
            // since are no longer the peer's to prove (it may have dropped them already).
            // Shards it let go on a notice this database does not remember (restored from an
            // older backup) are lost here, as if it reported them damaged: repair moves them.
            Ok((failed, released)) => {
                if !released.is_empty()
                    && let Err(e) = super::peers::mark_damaged(&s, &id, &s.held(), &released)
                {
                    tracing::warn!(peer = %id, error = %e, "could not mark shards let go on a notice as lost");
                }
                match still_owed(&s, &id, &shards, failed) {
                    failed if failed.is_empty() => (AuditOutcome::Success, failed, String::new()),
                    failed => {
                        // Shards already known lost (failed before, or reported damaged by the
                        // peer itself) wait for repair: no new failure (see `apply`).
                        let known = s.peers.get(&id).ok().flatten().map(|p| p.failed_shards).unwrap_or_default();
                        let outcome = if failed.iter().all(|f| known.contains(f)) {
                            AuditOutcome::Success
                        } else {
                            AuditOutcome::Failure
                        };
                        let detail = format!("{} of {} chunks missing or wrong", failed.len(), challenge.items.len());
                        (outcome, failed, detail)
                    }
                }
            }
            Err(e) => (AuditOutcome::Failure, challenge.items.iter().map(|i| i.shard_id).collect(), e),
        },
    };
    let st = Standards {
        vetting_audits: s.config.audit.vetting_audits,
        disqualify_below: s.config.reputation.disqualify_below,
        suspend_below: s.config.reputation.suspend_below,
        now: s.now(),
    };
    let updated = s.peers.update(&id, |rec| {
        rec.map(|mut rec| {
            apply(&mut rec, outcome, &failed, &challenge, st);
            rec
        })
    });
    let Ok(Some(rec)) = updated else { return id };
    {
        let mut recent = s.recent_audits.lock().expect("not poisoned");
        let now = s.now();
        recent.push_back((now, outcome));
        while recent.front().is_some_and(|(t, _)| *t + 60 < now) {
            recent.pop_front();
        }
    }
    let label = format!("{outcome:?}").to_lowercase();
    s.counters.audits.with_label_values(&[label.as_str()]).inc();
    if outcome != AuditOutcome::Success {
        tracing::warn!(peer = %id, ?outcome, %detail, reputation = rec.audit.score(), "audit not passed");
    }
    if rec.status == PeerStatus::Disqualified && p.status != PeerStatus::Disqualified {
        tracing::warn!(peer = %id, reputation = rec.audit.score(), "peer disqualified; its shards will be repaired");
    }
    let record = AuditRecord {
        peer_id: id.clone(),
        time: s.now(),
        outcome,
        shards: challenge.items.len(),
        detail,
        reputation: rec.audit.score(),
    };
    let _ = s.audits.insert(&format!("{id}/{:020}/{}", record.time, challenge.nonce), &record);
    {
        let mut log = s.audit_log.lock().expect("not poisoned");
        log.push_back(record);
        if log.len() > LOG {
            log.pop_front();
        }
    }
    let mine = s.audits.scan_prefix(&format!("{id}/")).map(|scan| scan.records).unwrap_or_default();
    for (key, _) in mine.iter().take(mine.len().saturating_sub(HISTORY)) {
        let _ = s.audits.remove(key);
    }
    id
}

/// Those of `failed` the peer still has to hold (a failed audit is rare: the walk is too).
fn still_owed(s: &State, peer: &str, shards: &[HeldShard], failed: Vec<ShardId>) -> Vec<ShardId> {
    if failed.is_empty() {
        return failed;
    }
    failed
        .into_iter()
        .filter(|sid| shards.iter().find(|h| h.id == *sid).is_none_or(|h| s.still_placed(h, peer)))
        .collect()
}

/// Audits of all peers the log shows, newest first.
const LOG: usize = 1000;

/// Fills the all-peers log with the newest stored audits (at start).
pub(super) fn load_log(s: &State) {
    let mut all: Vec<AuditRecord> = s.audits.readable().into_iter().map(|(_, r)| r).collect();
    all.sort_by_key(|a| a.time);
    let keep = all.len().saturating_sub(LOG);
    *s.audit_log.lock().expect("not poisoned") = all.into_iter().skip(keep).collect();
}

/// The newest `limit` audits (at most [`LOG`]), of one peer (its stored history) or of all
/// (the log kept in memory): a bounded read whatever is asked.
pub(super) fn history(s: &State, peer: Option<&str>, limit: usize) -> Vec<AuditRecord> {
    let limit = limit.min(LOG);
    let mut all: Vec<AuditRecord> = match peer {
        Some(p) => s
            .audits
            .scan_prefix(&format!("{p}/"))
            .map(|scan| scan.records)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, r)| r)
            .collect(),
        None => s.audit_log.lock().expect("not poisoned").iter().cloned().collect(),
    };
    all.sort_by_key(|a| std::cmp::Reverse(a.time));
    all.truncate(limit);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge() -> Challenge {
        Challenge {
            peer_id: "p".into(),
            nonce: "n".into(),
            items: vec![ChallengeItem { shard_id: ShardId([1; 32]), chunk: 0 }],
            deadline: 0,
        }
    }

    const ST: Standards = Standards { vetting_audits: 3, disqualify_below: 0.96, suspend_below: 0.6, now: 100 };

    #[test]
    fn shards_known_lost_are_not_counted_again_and_stay_listed() {
        let mut p = PeerRecord::new("k".into());
        let lost = ShardId([1; 32]);
        p.failed_shards.push(lost); // reported damaged by the peer itself
        let c = Challenge {
            items: vec![
                ChallengeItem { shard_id: lost, chunk: 0 },
                ChallengeItem { shard_id: ShardId([2; 32]), chunk: 0 },
            ],
            ..challenge()
        };
        apply(&mut p, AuditOutcome::Success, &[lost], &c, ST);
        assert!(p.audit.score() >= PeerRecord::new("k".into()).audit.score(), "only the other shard counted");
        assert_eq!(p.failed_shards, vec![lost], "still lost: repair has not moved it yet");
        let before = p.audit.score();
        apply(&mut p, AuditOutcome::Success, &[lost], &Challenge { items: vec![c.items[0].clone()], ..c.clone() }, ST);
        assert_eq!(p.audit.score(), before, "a known loss is counted neither way");
        apply(&mut p, AuditOutcome::Success, &[], &c, ST);
        assert!(p.failed_shards.is_empty(), "proved again: cleared");
    }

    #[test]
    fn outcomes_move_standing() {
        let mut p = PeerRecord::new("k".into());
        let c = challenge();
        for _ in 0..3 {
            apply(&mut p, AuditOutcome::Success, &[], &c, ST);
        }
        assert_eq!(p.status, PeerStatus::Active);
        apply(&mut p, AuditOutcome::Failure, &[ShardId([1; 32])], &c, ST);
        assert_eq!(p.failed_shards, vec![ShardId([1; 32])]);
        apply(&mut p, AuditOutcome::Success, &[], &c, ST);
        assert!(p.failed_shards.is_empty(), "a passed audit clears the shard");
        // Two timeouts keep the challenge pending; the third counts as a failure.
        let before = p.audit.score();
        apply(&mut p, AuditOutcome::Offline, &[], &c, ST);
        apply(&mut p, AuditOutcome::Offline, &[], &c, ST);
        assert_eq!(p.pending.as_ref(), Some(&c));
        assert_eq!(p.audit.score(), before);
        apply(&mut p, AuditOutcome::Offline, &[], &c, ST);
        assert!(p.audit.score() < before);
        // Failing on and on ends in disqualification, for good (each shard counted once).
        for n in 0..20 {
            let lost = ShardId([10 + n; 32]);
            let c = Challenge { items: vec![ChallengeItem { shard_id: lost, chunk: 0 }], ..c.clone() };
            apply(&mut p, AuditOutcome::Failure, &[lost], &c, ST);
        }
        assert_eq!(p.status, PeerStatus::Disqualified);
        for _ in 0..50 {
            apply(&mut p, AuditOutcome::Success, &[], &c, ST);
        }
        assert_eq!(p.status, PeerStatus::Disqualified);
    }

    #[test]
    fn answers_that_prove_nothing_suspend_instead_of_disqualifying() {
        let mut p = PeerRecord::new("k".into());
        let c = challenge();
        for _ in 0..200 {
            apply(&mut p, AuditOutcome::Unknown, &[], &c, ST);
        }
        assert!(p.suspended_since == Some(100) && p.status == PeerStatus::Vetting, "suspended, not disqualified");
        assert_eq!(p.audit.score(), 1.0, "the audit score is untouched");
        let later = Standards { now: 200, ..ST };
        for _ in 0..200 {
            apply(&mut p, AuditOutcome::Success, &[], &c, later);
        }
        assert_eq!(p.suspended_since, None, "lifted when the answers prove the data again");
    }
}
