//! Telling nodes what became of uploads and files. Nodes delete nothing by absence: they drop
//! a shard only when a notice says the file that needed it was deleted (or repair moved it),
//! or that the upload that stored it was abandoned, and nothing else needs it (see
//! `store::shards`). Notices go through an outbox in the database and are delivered until a
//! node takes them, so a node that was offline hears them later.
//!
//! Every notice carries the database's generation (a random id made with the database) and
//! the next number of its node's own sequence; notices to a node are delivered one at a time,
//! in order. A node takes a notice only from the database it knows and only newer than the
//! last it took: a replay is refused, and so is everything from a database restored from an
//! older backup, until recovery has moved its sequences past what the nodes saw.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::state::{FileRecord, State};
use crate::core::merkle::ShardId;
use crate::net::server::Shutdown;
use crate::proto::*;
use crate::store::shards::RECENT_NOTICES;
use crate::store::{Record, RecordError};

/// The database's identity under "generation"; each peer's notice counter under
/// "seq/<peer id>".
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum MetaRecord {
    Generation(String),
    Seq(u64),
}

impl Record for MetaRecord {
    const VERSION: u32 = 1;
}

/// A notice waiting to be taken, under `<peer id>/<seq, 20 digits>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct OutboxRecord {
    pub notice: Signed<Notice>,
}

impl Record for OutboxRecord {
    const VERSION: u32 = 1;
}

/// This database's generation, made on first use.
pub(super) fn generation(s: &State) -> Result<String, RecordError> {
    let fresh = hex::encode(crate::core::crypto::Salt::random().0);
    let rec = s.meta.update("generation", |old| Some(old.unwrap_or(MetaRecord::Generation(fresh.clone()))))?;
    match rec {
        Some(MetaRecord::Generation(g)) => Ok(g),
        _ => Ok(fresh),
    }
}

/// Moves `peer`'s counter past `taken` (the last number the node took) and numbers anew,
/// in order, its waiting notices it would refuse as old: what recovery does for each node.
pub(super) fn catch_up(s: &State, peer: &str, taken: u64) -> Result<(), RecordError> {
    s.meta.update(&format!("seq/{peer}"), |old| match old {
        Some(MetaRecord::Seq(n)) => Some(MetaRecord::Seq(n.max(taken))),
        _ => Some(MetaRecord::Seq(taken)),
    })?;
    let waiting = s.outbox.scan_prefix(&format!("{peer}/"))?.records;
    if !waiting.iter().any(|(_, r)| r.notice.open().is_some_and(|n| n.seq <= taken)) {
        return Ok(());
    }
    for (key, rec) in waiting {
        if let Some(n) = rec.notice.open() {
            s.outbox.remove(&key)?;
            queue(s, peer, n.event)?;
        }
    }
    Ok(())
}

/// The last number handed out to `peer`'s notices (0: none yet).
pub(super) fn last_seq(s: &State, peer: &str) -> Result<u64, RecordError> {
    Ok(match s.meta.get(&format!("seq/{peer}"))? {
        Some(MetaRecord::Seq(n)) => n,
        _ => 0,
    })
}

/// The number before the first of `peer`'s notices still waiting in the outbox, if any: a
/// database restored from an older backup hands out again numbers its peers took from the
/// lost one, and they refuse those notices, which wait there.
pub(super) fn before_waiting(s: &State, peer: &str) -> Result<Option<u64>, RecordError> {
    let prefix = format!("{peer}/");
    Ok(s.outbox
        .range(&prefix, &prefix, 1)?
        .first()
        .and_then(|(k, _)| k.strip_prefix(&prefix)?.parse::<u64>().ok())
        .map(|first| first.saturating_sub(1)))
}

/// The file a deletion notice from `peer`'s inventory proves deleted without this database
/// knowing: one this database signed, under its generation, for that peer, that it did not
/// hand out as it is now: numbered past `handed_out` (the last number it gave the peer), or
/// under a number its outbox holds another notice for (given out again after it was restored
/// from an older backup, and refused). A notice it handed out itself took its file away
/// with it.
pub(super) fn proven_deletion(s: &State, peer: &str, handed_out: u64, notice: &Signed<Notice>) -> Option<String> {
    let n = notice.open_by(&s.identity.public_key_hex())?;
    let NoticeEvent::Released { file_id, deleted: true, .. } = n.event else { return None };
    if n.peer_id != peer || generation(s).ok()? != n.generation {
        return None;
    }
    let unknown = n.seq > handed_out
        || s.outbox.get(&format!("{peer}/{:020}", n.seq)).ok()?.is_some_and(|mine| mine.notice.body != notice.body);
    unknown.then_some(file_id)
}

fn next_seq(s: &State, peer: &str) -> Result<u64, RecordError> {
    let rec = s.meta.update(&format!("seq/{peer}"), |old| match old {
        Some(MetaRecord::Seq(n)) => Some(MetaRecord::Seq(n + 1)),
        _ => Some(MetaRecord::Seq(1)),
    })?;
    Ok(match rec {
        Some(MetaRecord::Seq(n)) => n,
        _ => 1,
    })
}

/// Puts a notice for `peer` in the outbox; returns its key. A shard given up at upload is
/// placed on no peer (""): nobody to tell, nothing queued (an empty key).
pub(super) fn queue(s: &State, peer: &str, event: NoticeEvent) -> Result<String, RecordError> {
    if peer.is_empty() {
        return Ok(String::new());
    }
    let seq = next_seq(s, peer)?;
    let notice = Notice { peer_id: peer.to_owned(), generation: generation(s)?, seq, event };
    let key = format!("{peer}/{seq:020}");
    s.outbox.insert(&key, &OutboxRecord { notice: s.identity.sign(&notice) })?;
    s.outbox_ready.notify_one();
    Ok(key)
}

/// Copies of a file's manifest kept on this many of its nodes (for recovery).
const MANIFEST_COPIES: usize = 3;

/// The shards of a file on each of its peers.
fn shards_by_peer(s: &State, rec: &FileRecord) -> Result<BTreeMap<String, Vec<ShardId>>, RecordError> {
    let mut by_peer: BTreeMap<String, Vec<ShardId>> = BTreeMap::new();
    s.visit_placed(rec, |sid, peer| by_peer.entry(peer).or_default().push(sid))?;
    Ok(by_peer)
}

/// Hex of each page of a version 3 file's segment table, when they fit in a manifest copy.
fn copy_pages(s: &State, rec: &FileRecord) -> Result<Vec<String>, RecordError> {
    let Some(m) = rec.parsed().filter(|m| m.version() >= 3) else { return Ok(Vec::new()) };
    let page_bytes = 4 + m.shape.n() * 32;
    if m.segment_count() as usize * page_bytes > COPY_PAGES_BYTES / 2 {
        return Ok(Vec::new());
    }
    let rows = s.rows(rec)?;
    Ok((0..m.page_count())
        .map(|p| {
            let range = m.page_range(p);
            let entries: Vec<_> =
                rows[range.start as usize..range.end as usize].iter().map(|r| r.entry.clone()).collect();
            hex::encode(crate::core::manifest::encode_page(&entries))
        })
        .collect())
}

/// Queues the notices of a commit: every peer of the file hears which of its shards the file
/// needs; the first few keep a signed copy of the manifest.
pub(super) fn committed(s: &State, file_id: &str, rec: &FileRecord) -> Result<(), RecordError> {
    let copy = s.identity.sign(&ManifestCopy {
        file_id: file_id.to_owned(),
        manifest: rec.manifest.clone(),
        owner: rec.owner.clone(),
        owner_hash: rec.owner_hash.clone(),
        upload_id: rec.upload_id.clone(),
        created: rec.created,
        pages: copy_pages(s, rec)?,
    });
    for (i, (peer, shard_ids)) in shards_by_peer(s, rec)?.into_iter().enumerate() {
        let chunks: Vec<&[ShardId]> = shard_ids.chunks(NOTICE_SHARDS).collect();
        for (c, chunk) in chunks.iter().enumerate() {
            let last = c + 1 == chunks.len();
            let event = NoticeEvent::Committed {
                upload_id: rec.upload_id.clone(),
                file_id: file_id.to_owned(),
                shard_ids: chunk.to_vec(),
                complete: last,
                manifest: (last && i < MANIFEST_COPIES).then(|| copy.clone()),
            };
            queue(s, &peer, event)?;
        }
    }
    Ok(())
}

/// Shard ids named by one notice at most, so every notice is a small body.
const NOTICE_SHARDS: usize = 8192;

/// Queues the notices of a deletion; returns the keys, to deliver at once.
pub(super) fn deleted(s: &State, file_id: &str, rec: &FileRecord) -> Result<Vec<String>, RecordError> {
    let mut keys = Vec::new();
    for (peer, shard_ids) in shards_by_peer(s, rec)? {
        for chunk in shard_ids.chunks(NOTICE_SHARDS) {
            let event = NoticeEvent::Released { file_id: file_id.to_owned(), shard_ids: chunk.to_vec(), deleted: true };
            keys.push(queue(s, &peer, event)?);
        }
    }
    Ok(keys)
}

/// Notices delivered at once per round.
const CONCURRENCY: usize = 16;

/// Delivers waiting notices: when some are queued, and every few seconds for those that
/// could not be delivered yet.
pub(super) async fn run(s: Arc<State>, mut shutdown: Shutdown) {
    let retry = Duration::from_secs(s.config.coordinator.gc_interval.clamp(1, 30));
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = s.outbox_ready.notified() => {}
            _ = tokio::time::sleep(retry) => {}
        }
        if let Err(e) = deliver(&s, None).await {
            tracing::warn!(error = %e, "delivering notices failed");
        }
    }
}

/// Delivers the waiting notices of every peer (only of the peers of `only`'s keys, when
/// given) that is online: one peer's in order, one at a time; each one taken leaves the
/// outbox.
pub(super) async fn deliver(s: &State, only: Option<&[String]>) -> Result<(), RecordError> {
    // Every known peer when not told whom: reading the outbox for its peers' names would
    // read every waiting notice (hundreds of MB after the commit of a 1 TiB file).
    let peers: BTreeMap<String, ()> = match only {
        Some(keys) => keys.iter().filter_map(|k| Some((k.split_once('/')?.0.to_owned(), ()))).collect(),
        None => s.peers.readable().into_iter().map(|(id, _)| (id, ())).collect(),
    };
    futures::stream::iter(peers.into_keys())
        .for_each_concurrent(CONCURRENCY, |peer| async move {
            if let Err(e) = deliver_to(s, &peer).await {
                tracing::warn!(peer = %peer, error = %e, "delivering notices failed");
            }
        })
        .await;
    Ok(())
}

/// Delivers `peer`'s waiting notices in order, stopping at the first not taken.
async fn deliver_to(s: &State, peer: &str) -> Result<(), RecordError> {
    let prefix = format!("{peer}/");
    if s.outbox.range(&prefix, &prefix, 1)?.is_empty() {
        return Ok(());
    }
    let turn = s.delivering.lock().expect("not poisoned").entry(peer.to_owned()).or_default().clone();
    let _one_at_a_time = turn.lock().await;
    let Some(p) = s.peers.get(peer)?.filter(|p| s.is_admitted(p)) else { return Ok(()) };
    // What a node takes must outlive a crash here: the notice's number (the node refuses it
    // and every other notice numbered so again) and what it tells (the commit, the deletion,
    // the expired upload, the repair it follows from).
    s.sync().await?;
    let mut unsynced = 0;
    'pages: loop {
        // A page at a time: a peer away for long may have many waiting.
        let waiting = s.outbox.range(&prefix, &prefix, DELIVERY_PAGE)?;
        if waiting.is_empty() {
            break 'pages;
        }
        for (key, rec) in waiting {
            match send(s, peer, &p.address, &rec.notice).await {
                Ok(r) if r.status.is_success() => {
                    s.outbox.remove(&key)?;
                    // Nodes recognise the last RECENT_NOTICES they took when they come again
                    // after a crash here: the removals are made durable well before that many.
                    unsynced += 1;
                    if unsynced >= RECENT_NOTICES / 4 {
                        s.sync().await?;
                        unsynced = 0;
                    }
                }
                Ok(r) => {
                    tracing::warn!(peer = %peer, status = %r.status, error = %r.error_message(), "a notice was refused");
                    break 'pages;
                }
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "a notice could not be delivered; later");
                    break 'pages;
                }
            }
        }
    }
    if unsynced > 0 {
        s.sync().await?;
    }
    Ok(())
}

/// How long a notice's ticket is good for: its delivery.
const TICKET_LIFE: u64 = 120;

/// Posts a notice to `peer` at `address`, with a ticket vouching for its body.
async fn send(
    s: &State,
    peer: &str,
    address: &str,
    notice: &Signed<Notice>,
) -> Result<crate::net::client::Reply, crate::net::client::HttpError> {
    let body = bytes::Bytes::from(serde_json::to_vec(notice).expect("wire types serialize"));
    let ticket = s.identity.sign(&NoticeTicket {
        peer_id: peer.to_owned(),
        len: body.len() as u64,
        digest: blake3::hash(&body).to_hex().to_string(),
        expires: s.now() + TICKET_LIFE,
    });
    let ticket = serde_json::to_string(&ticket).expect("wire types serialize");
    let headers = [("content-type", "application/json"), (NOTICE_HEADER, ticket.as_str())];
    s.http.send(crate::net::client::request("POST", &format!("{address}/v2/notices"), &headers, body)?).await
}

/// Waiting notices read from the outbox at a time.
const DELIVERY_PAGE: usize = 64;

/// Forgets the waiting notices of a peer that is gone for good.
pub(super) fn drop_for(s: &State, peer: &str) -> Result<(), RecordError> {
    for (key, _) in s.outbox.scan_prefix(&format!("{peer}/"))?.records {
        s.outbox.remove(&key)?;
    }
    Ok(())
}
