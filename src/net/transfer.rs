//! Moving shards between a process and the nodes: storing a shard under a put order (and
//! checking the receipt), fetching one (bounded by its length), storing a whole segment with
//! spares and long-tail cancellation, and fetching the k shards of a segment with long-tail
//! hedging. Peers that were slow lately are remembered (per process) so neither waits for
//! them twice. The client, repair and the browser path all move shards through here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{AbortHandle, abortable};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use super::client::{self as http, HttpError, request};
use crate::core::codec::{EncodedSegment, VerifiedShard};
use crate::core::error::CodecError;
use crate::core::manifest::{Manifest, SegmentEntry};
use crate::core::merkle::ShardId;
use crate::proto::*;

/// Ask one more peer for a segment's shards when nothing arrived for this long.
const HEDGE_AFTER: Duration = Duration::from_secs(2);

/// Why shards could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("peer {peer} answered with an invalid receipt")]
    BadReceipt { peer: String },
    #[error("peer {peer} is not in the upload's plan")]
    NotPlanned { peer: String },
    #[error("the plan has no segment {0}")]
    NoSuchSegment(usize),
    #[error("shard {index} of segment {segment} could not be stored on any planned peer: {last_error}")]
    Placement { segment: u32, index: usize, last_error: Box<TransferError> },
    #[error("no planned peer answered")]
    Unanswered,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("a worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A stored segment: the peer of every shard (empty where a slow shard was given up), the
/// receipts, and the plaintext bytes covered.
pub struct StoredSegment {
    pub peers: Vec<String>,
    pub receipts: Vec<Signed<Receipt>>,
    pub plain_bytes: u64,
}

/// Once a segment has enough shards stored, the others are waited for this share of the time
/// that took, before they are sent to a spare peer or given up...
const TAIL_SHARE: f64 = 0.5;
/// ... but at least this long, unless their peer was slow lately: then only this share.
const TAIL_FLOOR: Duration = Duration::from_millis(200);
const SLOW_TAIL_SHARE: f64 = 0.2;

/// How long stragglers are waited for once the tail began `took` after the start.
fn tail_wait(took: Duration, slow: bool) -> Duration {
    match slow {
        true => took.mul_f64(SLOW_TAIL_SHARE),
        false => took.mul_f64(TAIL_SHARE).max(TAIL_FLOOR),
    }
}

/// Peers that lately made a segment wait (a shard of theirs was given up, or another peer's
/// copy won the race), and since when. Uploads still send them their shards but wait less
/// for them once a segment has enough, and downloads ask them last; an answer in time, or
/// `SLOW_FOR` without another mark, clears the mark.
static SLOW: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Default::default);
const SLOW_FOR: Duration = Duration::from_secs(600);
/// Peers remembered as slow at most (a bound on the memory; forgetting is harmless).
const MAX_SLOW: usize = 4096;

fn is_slow(peer: &str) -> bool {
    SLOW.lock().expect("not poisoned").get(peer).is_some_and(|at| at.elapsed() < SLOW_FOR)
}

fn mark_slow(peer: &str, slow: bool) {
    let mut marks = SLOW.lock().expect("not poisoned");
    match slow {
        true => {
            if marks.len() >= MAX_SLOW {
                marks.retain(|_, at| at.elapsed() < SLOW_FOR);
                if marks.len() >= MAX_SLOW {
                    marks.clear();
                }
            }
            if marks.insert(peer.to_owned(), Instant::now()).is_none() {
                tracing::debug!(peer, "peer marked slow");
            }
        }
        false => {
            marks.remove(peer);
        }
    }
}

/// One attempt at storing a shard: its peer, when it began, and its cancel switch.
struct Try {
    peer: String,
    began: Instant,
    cancel: AbortHandle,
}

/// One shard of a segment being stored.
#[derive(Default)]
struct PutSlot {
    stored: Option<(String, Signed<Receipt>)>,
    tries: Vec<Try>,
    given_up: bool,
    /// When to act if it is still not stored: send it to a spare, or give it up.
    deadline: Option<Instant>,
    error: Option<TransferError>,
}

impl PutSlot {
    fn open(&self) -> bool {
        self.stored.is_none() && !self.given_up
    }

    /// Stops waiting for this shard: its attempts are cancelled and their peers remembered
    /// as slow.
    fn give_up(&mut self) {
        for t in self.tries.drain(..) {
            t.cancel.abort();
            mark_slow(&t.peer, true);
        }
        self.given_up = true;
        self.deadline = None;
    }
}

/// Puts a segment's n shards on its planned peers, with long-tail cancellation (as Storj's
/// uplink does): all n puts start at once; a failed put moves to a spare peer; once the
/// segment has enough shards stored (what the commit needs, `Plan::min_shards`, or n less
/// the spares left if that is fewer), the others get a little more time (half the time that
/// took, at least 200 ms; a fifth of it if their peer was slow lately), then go to a spare peer as
/// well (whichever copy lands first is kept; again after as long while spares are left), and
/// are given up once no spare is left if the commit can do without them. Before the tail,
/// nothing is timed: a stalled put moves to a spare when it fails (the client's timeout).
pub async fn put_segment(
    http: http::Client,
    plan: Arc<Plan>,
    seg: EncodedSegment,
) -> Result<StoredSegment, TransferError> {
    let i = seg.index as usize;
    let n = seg.shard_count();
    let row = i
        .checked_sub(plan.first as usize)
        .and_then(|w| plan.segments.get(w))
        .filter(|r| r.len() >= n)
        .ok_or(TransferError::NoSuchSegment(i))?;
    let need = match plan.min_shards as usize {
        0 => n,
        m => m.min(n),
    };
    let mut spares: VecDeque<String> = row[n..].iter().cloned().collect();
    let mut slots: Vec<PutSlot> = (0..n).map(|_| PutSlot::default()).collect();
    let begun = Instant::now();
    let launch = |j: usize, peer: String, slot: &mut PutSlot| {
        let (http, plan, id, data) = (http.clone(), plan.clone(), seg.ids[j], seg.shard(j));
        let p = peer.clone();
        let (put, cancel) = abortable(async move { put_planned(&http, &plan, &p, id, data).await });
        slot.tries.push(Try { peer: peer.clone(), began: Instant::now(), cancel });
        async move { (j, peer, put.await) }
    };
    let mut running = FuturesUnordered::new();
    for (j, slot) in slots.iter_mut().enumerate() {
        running.push(launch(j, row[j].clone(), slot));
    }
    // When the tail began (enough shards stored), after the start.
    let mut tail: Option<Duration> = None;
    loop {
        let stored = slots.iter().filter(|s| s.stored.is_some()).count();
        let open = slots.iter().filter(|s| s.open()).count();
        if stored + open < need || running.is_empty() && open > 0 {
            return Err(unplaceable(i, slots));
        }
        if open == 0 {
            break;
        }
        let tail_from = need.min(n.saturating_sub(spares.len())).max(1);
        if tail.is_none() && stored >= tail_from {
            let took = begun.elapsed();
            tail = Some(took);
            let now = Instant::now();
            for s in slots.iter_mut().filter(|s| s.open()) {
                let slow = s.tries.iter().all(|t| is_slow(&t.peer));
                let at = now + tail_wait(took, slow);
                s.deadline = Some(s.deadline.map_or(at, |d| d.min(at)));
            }
        }
        let now = Instant::now();
        let mut gave_up = false;
        for (j, s) in slots.iter_mut().enumerate() {
            if !s.open() || s.deadline.is_none_or(|d| d > now) {
                continue;
            }
            if let Some(spare) = next_spare(&mut spares) {
                tracing::debug!(segment = i, shard = j, spare = %spare, "slow shard put; sending it to a spare too");
                s.deadline = Some(now + tail_wait(tail.unwrap_or_default(), false));
                running.push(launch(j, spare, s));
            } else if stored >= need {
                tracing::debug!(segment = i, shard = j, "slow shard put given up: the segment has enough");
                s.give_up();
                gave_up = true;
            } else {
                s.deadline = None; // nothing to do but wait for its attempts
            }
        }
        if gave_up {
            continue;
        }
        let next = slots.iter().filter(|s| s.open()).filter_map(|s| s.deadline).min();
        let sleep = async move {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((j, peer, r)) = running.next() => {
                let Ok(r) = r else { continue }; // cancelled here
                put_done(&mut slots[j], i, j, peer, r, &mut spares, |peer, slot| running.push(launch(j, peer, slot)));
            }
            _ = sleep => {}
        }
    }
    let missing = slots.iter().filter(|s| s.stored.is_none()).count();
    if missing > 0 {
        tracing::info!(segment = i, missing, "segment stored without its slowest shards");
    }
    let plain_bytes = seg.sealed_len as u64 - crate::core::crypto::TAG_LEN as u64;
    let mut peers = Vec::with_capacity(n);
    let mut receipts = Vec::with_capacity(n);
    for s in slots {
        match s.stored {
            Some((peer, receipt)) => {
                peers.push(peer);
                receipts.push(receipt);
            }
            None => peers.push(String::new()),
        }
    }
    Ok(StoredSegment { peers, receipts, plain_bytes })
}

/// Takes the outcome of one put of shard `j`: the first receipt wins and cancels the other
/// attempts (a peer that started before the winner is remembered as slow); a failure moves
/// the shard to a spare when no other attempt is left, and gives it up when no spare is.
fn put_done(
    s: &mut PutSlot,
    i: usize,
    j: usize,
    peer: String,
    r: Result<Signed<Receipt>, TransferError>,
    spares: &mut VecDeque<String>,
    mut relaunch: impl FnMut(String, &mut PutSlot),
) {
    let began = s.tries.iter().find(|t| t.peer == peer).map(|t| t.began);
    s.tries.retain(|t| t.peer != peer);
    if !s.open() {
        return; // a late answer for a shard given up: the node keeps a copy nobody needs
    }
    match r {
        Ok(receipt) => {
            mark_slow(&peer, false);
            for t in s.tries.drain(..) {
                t.cancel.abort();
                if began.is_some_and(|b| t.began < b) {
                    mark_slow(&t.peer, true);
                }
            }
            s.stored = Some((peer, receipt));
            s.deadline = None;
        }
        Err(e) => {
            tracing::warn!(segment = i, shard = j, peer = %peer, error = %e, "shard put failed");
            s.error = Some(e);
            if !s.tries.is_empty() {
                return;
            }
            match next_spare(spares) {
                Some(spare) => {
                    tracing::info!(segment = i, shard = j, spare = %spare, "trying a spare peer");
                    relaunch(spare, s);
                }
                None => s.given_up = true,
            }
        }
    }
}

/// The next spare peer to try: the first not slow lately, else the first.
fn next_spare(spares: &mut VecDeque<String>) -> Option<String> {
    let at = spares.iter().position(|p| !is_slow(p)).unwrap_or(0);
    spares.remove(at)
}

/// The error of a segment that cannot have enough shards stored: the first shard given up,
/// with its last error.
fn unplaceable(i: usize, slots: Vec<PutSlot>) -> TransferError {
    let (index, last) = slots
        .into_iter()
        .enumerate()
        .filter(|(_, s)| s.stored.is_none())
        .find_map(|(j, s)| s.error.map(|e| (j, e)))
        .unwrap_or((0, TransferError::Unanswered));
    TransferError::Placement { segment: i as u32, index, last_error: Box::new(last) }
}

async fn put_planned(
    http: &http::Client,
    plan: &Plan,
    peer: &str,
    id: ShardId,
    data: Bytes,
) -> Result<Signed<Receipt>, TransferError> {
    let not_planned = || TransferError::NotPlanned { peer: peer.to_owned() };
    let order = plan.orders.get(peer).ok_or_else(not_planned)?;
    let addr = plan.addresses.get(peer).ok_or_else(not_planned)?;
    store_shard(http, addr, order, peer, id, data).await
}

/// Stores one shard on the node `peer` at `addr` under a put order; returns its receipt,
/// checked to be for this shard and signed by that peer.
pub async fn store_shard(
    http: &http::Client,
    addr: &str,
    order: &Signed<PutOrder>,
    peer: &str,
    id: ShardId,
    data: Bytes,
) -> Result<Signed<Receipt>, TransferError> {
    let header = serde_json::to_string(order).expect("orders serialize");
    let url = format!("{addr}/v2/shards/{id}");
    let r = http.send(request("PUT", &url, &[(ORDER_HEADER, &header)], data)?).await?;
    let receipt: Signed<Receipt> = r.json()?;
    match receipt.open() {
        Some(rc) if rc.shard_id == id && rc.peer_id == peer && receipt.signer_id() == peer => Ok(receipt),
        _ => Err(TransferError::BadReceipt { peer: peer.to_owned() }),
    }
}

/// A shard's bytes from the node at `addr`, not yet checked against the id, under a read
/// grant for that node. A node that sends more than the shard's `len` bytes is cut off.
pub async fn fetch_shard(
    http: &http::Client,
    addr: &str,
    id: &ShardId,
    len: usize,
    grant: Option<&Signed<ReadGrant>>,
) -> Result<Bytes, HttpError> {
    let url = format!("{addr}/v2/shards/{id}");
    let header = grant.map(|g| serde_json::to_string(g).expect("grants serialize"));
    let headers: Vec<(&str, &str)> = header.iter().map(|h| (GRANT_HEADER, h.as_str())).collect();
    Ok(http.send_limited(request("GET", &url, &headers, Bytes::new())?, len).await?.ok()?.body)
}

/// A shard fetch under way: its peer, and when to ask one more peer if it is still running.
struct Fetching {
    peer: String,
    deadline: Option<Instant>,
    /// Its deadline passed: another peer was asked in its place.
    overdue: bool,
}

/// What reads found wrong on the way: a line for each peer that served bad or no data, and
/// the shards served with bytes that do not match their ids, with their peers.
#[derive(Debug, Default)]
pub struct Problems {
    pub notes: Vec<String>,
    /// (peer, shard, segment).
    pub mismatched: Vec<(String, ShardId, u32)>,
}

/// Why a shard fetch gave nothing usable.
enum Bad {
    /// Bytes that do not match the shard's id: the peer is reported.
    Mismatch(ShardId, String),
    Other(String),
}

impl From<String> for Bad {
    fn from(e: String) -> Bad {
        Bad::Other(e)
    }
}

impl From<&str> for Bad {
    fn from(e: &str) -> Bad {
        Bad::Other(e.to_owned())
    }
}

/// Fetches at least k verified shards of segment `i`: data shards first (no decoding
/// needed), peers online and not slow lately first, another peer for each one missing or
/// corrupt. Slow ones are hedged as uploads are: once most of the k have arrived, a shard
/// still on its way after half the time that took (at least 200 ms; a fifth of it if its peer
/// was slow lately) makes one more peer asked, and the first k to arrive are used; and 2 s
/// without any answer asks one more in any case. Every peer that served bad or no data is
/// described in `problems`, and every shard served with bytes that do not match its id is
/// listed there with its peer (a reader reports them: `POST /v2/files/{id}/damage`).
pub async fn fetch_segment(
    http: http::Client,
    manifest: Arc<Manifest>,
    view: Arc<FileView>,
    entry: SegmentEntry,
    problems: Arc<Mutex<Problems>>,
    i: u32,
) -> Result<Vec<VerifiedShard>, TransferError> {
    let m = &manifest;
    let k = m.shape.k();
    let placement =
        i.checked_sub(view.first).and_then(|w| view.placements.get(w as usize)).cloned().unwrap_or_default();
    let entry = Arc::new(entry);
    let peer_of = |j: usize| placement.get(j).map(String::as_str).unwrap_or_default();
    // Online peers not slow lately, then slow ones, then offline ones; data shards before
    // recovery shards within each group (the sort is stable). Shards given up at upload
    // (no peer) are not asked for.
    let rank = |j: &usize| match view.peers.get(peer_of(*j)) {
        Some(p) if p.state == PeerState::Online => is_slow(peer_of(*j)) as u8,
        _ => 2,
    };
    let mut order: Vec<usize> = (0..m.shape.n()).filter(|&j| !peer_of(j).is_empty()).collect();
    order.sort_by_key(rank);
    let mut candidates: VecDeque<usize> = order.into();
    let mut got = Vec::with_capacity(k);
    let mut pending = FuturesUnordered::new();
    let mut fetching: HashMap<usize, Fetching> = HashMap::new();
    let start = |j: usize| {
        let http = http.clone();
        let m2 = manifest.clone();
        let peer = peer_of(j).to_owned();
        let addr = view.peers.get(&peer).map(|p| p.address.clone());
        let grant = view.grants.get(&peer).cloned();
        let entry = entry.clone();
        async move {
            let Some(addr) = addr else { return (j, peer, Err("peer unknown to the coordinator".into())) };
            let Some(id) = entry.shard_ids.get(j).copied() else {
                return (j, peer, Err("no such shard in the segment's entry".into()));
            };
            let r = match fetch_shard(&http, &addr, &id, m2.shard_len(i), grant.as_ref()).await {
                Ok(b) => b,
                Err(e) => return (j, peer, Err(e.to_string().into())),
            };
            let v = tokio::task::spawn_blocking(move || m2.verify_shard(i, &entry, j, r)).await;
            let v = match v {
                Ok(Err(e @ CodecError::ShardMismatch { .. })) => Err(Bad::Mismatch(id, e.to_string())),
                Ok(r) => r.map_err(|e| e.to_string().into()),
                Err(e) => Err(e.to_string().into()),
            };
            (j, peer, v)
        }
    };
    let mut ask_next = |fetching: &mut HashMap<usize, Fetching>, pending: &mut FuturesUnordered<_>| {
        if let Some(j) = candidates.pop_front() {
            fetching.insert(j, Fetching { peer: peer_of(j).to_owned(), deadline: None, overdue: false });
            pending.push(start(j));
        }
    };
    for _ in 0..k {
        ask_next(&mut fetching, &mut pending);
    }
    let begun = Instant::now();
    let mut tail = false;
    let mut last_event = begun;
    while got.len() < k {
        if pending.is_empty() {
            return Err(CodecError::NotEnoughShards { segment: i, have: got.len(), need: k }.into());
        }
        if !tail && got.len() >= k - (k / 4).max(1) {
            tail = true;
            let now = Instant::now();
            let took = begun.elapsed();
            for f in fetching.values_mut() {
                f.deadline = Some(now + tail_wait(took, is_slow(&f.peer)));
            }
        }
        let now = Instant::now();
        let due: Vec<usize> =
            fetching.iter().filter(|(_, f)| f.deadline.is_some_and(|d| d <= now)).map(|(j, _)| *j).collect();
        for j in due {
            if let Some(f) = fetching.get_mut(&j) {
                f.deadline = None;
                f.overdue = true;
            }
            ask_next(&mut fetching, &mut pending);
        }
        let next = fetching.values().filter_map(|f| f.deadline).min().unwrap_or(last_event + HEDGE_AFTER);
        tokio::select! {
            Some((j, peer, r)) = pending.next() => {
                last_event = Instant::now();
                fetching.remove(&j);
                match r {
                    Ok(v) => {
                        mark_slow(&peer, false);
                        got.push(v);
                    }
                    Err(bad) => {
                        let mut p = problems.lock().expect("not poisoned");
                        let e = match bad {
                            Bad::Mismatch(id, e) => {
                                p.mismatched.push((peer.clone(), id, i));
                                e
                            }
                            Bad::Other(e) => e,
                        };
                        p.notes.push(format!("peer {peer}, shard {j} of segment {i}: {e}"));
                        drop(p);
                        ask_next(&mut fetching, &mut pending);
                    }
                }
            },
            _ = tokio::time::sleep_until(next.min(last_event + HEDGE_AFTER)) => {
                if Instant::now() >= last_event + HEDGE_AFTER {
                    last_event = Instant::now();
                    ask_next(&mut fetching, &mut pending);
                }
            }
        }
    }
    // Whoever is still sending after being hedged is slow.
    for f in fetching.values().filter(|f| f.overdue) {
        mark_slow(&f.peer, true);
    }
    Ok(got)
}
