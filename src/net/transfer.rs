//! Moving shards between a process and the nodes: storing a shard under a put order (and
//! checking the receipt), fetching one (bounded by its length), storing a whole segment with
//! spares, and fetching the k shards of a segment with long-tail hedging. The client, repair
//! and the browser path all move shards through here.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};

use super::client::{self as http, HttpError, request};
use crate::core::codec::{EncodedSegment, VerifiedShard};
use crate::core::error::CodecError;
use crate::core::manifest::Manifest;
use crate::core::merkle::ShardId;
use crate::proto::*;

/// Ask one more peer for a segment when it is not complete after this long.
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
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("a worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A stored segment: the peer of every shard, the receipts, and the plaintext bytes covered.
pub struct StoredSegment {
    pub peers: Vec<String>,
    pub receipts: Vec<Signed<Receipt>>,
    pub plain_bytes: u64,
}

/// Puts a segment's n shards on its planned peers, moving a shard to a spare when its peer
/// fails.
pub async fn put_segment(
    http: http::Client,
    plan: Arc<Plan>,
    seg: EncodedSegment,
) -> Result<StoredSegment, TransferError> {
    let i = seg.index as usize;
    let peers = plan.segments.get(i).ok_or(TransferError::NoSuchSegment(i))?;
    let n = seg.shard_count();
    let attempts = (0..n).map(|j| {
        let (http, plan) = (http.clone(), plan.clone());
        let (peer, id, data) = (peers[j].clone(), seg.ids[j], seg.shard(j));
        async move { (j, put_planned(&http, &plan, &peer, id, data).await.map(|r| (peer, r))) }
    });
    let results: Vec<_> = futures::future::join_all(attempts).await;
    let mut placed: Vec<Option<String>> = vec![None; n];
    let mut receipts = Vec::new();
    let mut failed = Vec::new();
    for (j, r) in results {
        match r {
            Ok((peer, receipt)) => {
                placed[j] = Some(peer);
                receipts.push(receipt);
            }
            Err(e) => failed.push((j, e)),
        }
    }
    let mut spares: VecDeque<&String> = peers[n.min(peers.len())..].iter().collect();
    for (j, mut last_error) in failed {
        tracing::warn!(segment = i, shard = j, error = %last_error, "shard put failed; trying a spare peer");
        loop {
            let Some(spare) = spares.pop_front() else {
                return Err(TransferError::Placement { segment: i as u32, index: j, last_error: Box::new(last_error) });
            };
            match put_planned(&http, &plan, spare, seg.ids[j], seg.shard(j)).await {
                Ok(r) => {
                    placed[j] = Some(spare.clone());
                    receipts.push(r);
                    break;
                }
                Err(e) => last_error = e,
            }
        }
    }
    let plain_bytes = seg.sealed_len as u64 - crate::core::crypto::TAG_LEN as u64;
    let peers = placed.into_iter().map(|p| p.expect("every shard placed")).collect();
    Ok(StoredSegment { peers, receipts, plain_bytes })
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

/// Fetches at least k verified shards of segment `i`: data shards first (no decoding
/// needed), another peer for each one missing, corrupt or slow. Every peer that served bad
/// or no data is described in `problems`.
pub async fn fetch_segment(
    http: http::Client,
    manifest: Arc<Manifest>,
    view: Arc<FileView>,
    problems: Arc<Mutex<Vec<String>>>,
    i: u32,
) -> Result<Vec<VerifiedShard>, TransferError> {
    let m = &manifest;
    let k = m.shape.k();
    let placement = view.placements.get(i as usize).cloned().unwrap_or_default();
    let online =
        |j: &usize| placement.get(*j).and_then(|p| view.peers.get(p)).is_some_and(|p| p.state == PeerState::Online);
    // Online peers first, data shards before recovery shards within each group.
    let (mut candidates, offline): (VecDeque<usize>, VecDeque<usize>) = (0..m.shape.n()).partition(online);
    candidates.extend(offline);
    let mut got = Vec::with_capacity(k);
    let mut pending = FuturesUnordered::new();
    let start = |j: usize, pending: &mut FuturesUnordered<_>| {
        let http = http.clone();
        let m2 = manifest.clone();
        let peer = placement.get(j).cloned().unwrap_or_default();
        let addr = view.peers.get(&peer).map(|p| p.address.clone());
        let grant = view.grants.get(&peer).cloned();
        let id = m.segments[i as usize].shard_ids[j];
        pending.push(async move {
            let Some(addr) = addr else { return (j, peer, Err("peer unknown to the coordinator".to_string())) };
            let r = match fetch_shard(&http, &addr, &id, m2.shard_len(i as usize), grant.as_ref()).await {
                Ok(b) => b,
                Err(e) => return (j, peer, Err(e.to_string())),
            };
            let v = tokio::task::spawn_blocking(move || m2.verify_shard(i, j, r)).await;
            (j, peer, v.map_err(|e| e.to_string()).and_then(|v| v.map_err(|e| e.to_string())))
        });
    };
    for _ in 0..k {
        if let Some(j) = candidates.pop_front() {
            start(j, &mut pending);
        }
    }
    while got.len() < k {
        if pending.is_empty() {
            return Err(CodecError::NotEnoughShards { segment: i, have: got.len(), need: k }.into());
        }
        tokio::select! {
            Some((j, peer, r)) = pending.next() => match r {
                Ok(v) => got.push(v),
                Err(e) => {
                    problems.lock().expect("not poisoned").push(format!("peer {peer}, shard {j} of segment {i}: {e}"));
                    if let Some(next) = candidates.pop_front() {
                        start(next, &mut pending);
                    }
                }
            },
            _ = tokio::time::sleep(HEDGE_AFTER) => {
                if let Some(next) = candidates.pop_front() {
                    start(next, &mut pending);
                }
            }
        }
    }
    Ok(got)
}
