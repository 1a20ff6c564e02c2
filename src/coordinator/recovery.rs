//! Rebuilding the coordinator's database from the network. Every node keeps, per shard, the
//! files that need it, and a few nodes of every file keep the file's manifest copy signed by
//! the coordinator (with its owner). Each peer that registers is asked for its inventory, in
//! pages; a manifest copy is taken when the coordinator's own key signed it and the manifest
//! hashes to the file id, and a file's placements are filled in as the peers holding its
//! shards report. So a coordinator that lost its database (its key kept) gets every file back
//! as its nodes come back, and `p2pstore coordinator recover` asks every peer again.
//!
//! A fresh database adopts the generation its nodes remember, and every peer's notice
//! counter continues above the last notice that peer took, so the nodes take its notices
//! again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ring::digest::{SHA256, digest};
use tokio::sync::mpsc;

use super::notices;
use super::state::{FileRecord, SegmentRow, State, row_key};
use crate::core::manifest::{FileId, Manifest};
use crate::core::merkle::ShardId;
use crate::net::client::request;
use crate::net::server::Shutdown;
use crate::proto::*;
use crate::store::RecordError;

/// Why a peer's inventory was not taken.
#[derive(Debug, thiserror::Error)]
enum RecoveryError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Http(#[from] crate::net::client::HttpError),
}

/// Inventories peers as they are queued: every newly registered peer, and every peer when
/// an operator asks (`recover`).
pub(super) async fn run(s: Arc<State>, mut queue: mpsc::UnboundedReceiver<String>, mut shutdown: Shutdown) {
    loop {
        let peer = tokio::select! {
            _ = shutdown.wait() => break,
            p = queue.recv() => match p { Some(p) => p, None => break },
        };
        // A node takes the coordinator's requests once it has read the reply to its first
        // heartbeat (it pins the key then): a few tries, a second apart.
        for attempt in 1..=ATTEMPTS {
            match take_inventory(&s, &peer).await {
                Ok(r) => {
                    if r.files_recovered + r.placements_filled > 0 {
                        tracing::info!(peer = %peer, files = r.files_recovered, placements = r.placements_filled, "recovered from a peer's inventory");
                    }
                    break;
                }
                Err(e) if attempt == ATTEMPTS => {
                    tracing::warn!(peer = %peer, error = %e, "taking a peer's inventory failed")
                }
                Err(_) => {
                    if shutdown.sleep(std::time::Duration::from_secs(1)).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Tries at taking a new peer's inventory.
const ATTEMPTS: u32 = 5;

/// Asks every known peer for its inventory now; returns what was found.
pub(super) async fn recover_all(s: &State) -> Result<RecoveryReport, RecordError> {
    let mut total = RecoveryReport::default();
    for (peer, _) in s.peers.readable() {
        match take_inventory(s, &peer).await {
            Ok(r) => {
                total.peers += 1;
                total.shards += r.shards;
                total.files_recovered += r.files_recovered;
                total.placements_filled += r.placements_filled;
                total.files_deleted += r.files_deleted;
            }
            Err(e) => tracing::warn!(peer = %peer, error = %e, "taking a peer's inventory failed"),
        }
    }
    Ok(total)
}

/// Bytes of an inventory's first page read at most: it carries every manifest copy the node
/// keeps (the protocol does not page them), so only the client's general bound applies.
const FIRST_PAGE_LIMIT: usize = 256 << 20;
/// Bytes of each later page read at most: 10,000 shards and the files that need them.
const PAGE_LIMIT: usize = 16 << 20;

/// Shards taken from one peer beyond what it declared in its heartbeat (it may have stored
/// more since): one node page.
const SHARDS_BEYOND_DECLARED: u64 = 10_000;

/// Reads one peer's inventory and merges it, a page at a time: manifests it keeps become
/// files (when unknown), and its shards fill the empty placements of the known files that
/// need them. Nothing is kept from one page to the next, each page is read at a bound, and a
/// peer is read for no more shards than it declared (or holds here) and one page more: an
/// endless inventory costs the coordinator a few pages.
async fn take_inventory(s: &State, peer: &str) -> Result<RecoveryReport, RecoveryError> {
    let Some(p) = s.peers.get(peer)? else { return Ok(RecoveryReport::default()) };
    let mut report = RecoveryReport { peers: 1, ..RecoveryReport::default() };
    let placed = s.placed_counts().get(peer).copied().unwrap_or(0);
    let most = p.shards.max(placed).saturating_add(SHARDS_BEYOND_DECLARED);
    let mut after = None;
    let mut taken = 0u64;
    let handed_out = notices::last_seq(s, peer)?;
    // Deletions taken from a lost timeline are numbered after what the backup had handed out:
    // before the notices that wait (refused) if there are any (round 6 of the attacks: notices
    // queued before `recover` had moved the counter past every deletion).
    let deletions_after = notices::before_waiting(s, peer)?.map_or(handed_out, |b| b.min(handed_out));
    loop {
        let req = InventoryRequest {
            peer_id: peer.to_owned(),
            after,
            expires: s.now() + 600,
            deletions_after: after.is_none().then_some(deletions_after),
        };
        let body = bytes::Bytes::from(serde_json::to_vec(&s.identity.sign(&req)).expect("wire types serialize"));
        let url = format!("{}/v2/inventory", p.address);
        let http_req = request("POST", &url, &[("content-type", "application/json")], body)?;
        let limit = if after.is_none() { FIRST_PAGE_LIMIT } else { PAGE_LIMIT };
        let page: Inventory = s.http.send_limited(http_req, limit).await?.json()?;
        if after.is_none() {
            adopt_generation(s, page.generation.as_deref())?;
            for d in &page.deletions {
                report.files_deleted += forget_deleted(s, peer, handed_out, d)? as usize;
            }
            notices::catch_up(s, peer, page.last_notice)?;
            for copy in &page.manifests {
                report.files_recovered += recover_file(s, copy)? as usize;
            }
        }
        report.shards += page.shards.len();
        taken = taken.saturating_add(page.shards.len() as u64);
        after = page.shards.last().map(|h| h.shard_id);
        let more = page.more;
        let mut held: HashMap<String, HashSet<ShardId>> = HashMap::new();
        for h in page.shards {
            // Only file ids (64 hex digits): anything else needs nothing here.
            for f in h.files.into_iter().filter(|f| f.len() == 64 && FileId::parse(f).is_ok()) {
                held.entry(f).or_default().insert(h.shard_id);
            }
        }
        for (file, shards) in held {
            report.placements_filled += fill_placements(s, &file, peer, &shards)?;
        }
        if !more || after.is_none() {
            break;
        }
        if taken >= most {
            tracing::warn!(peer = %peer, taken, declared = p.shards, "a peer's inventory goes on past what it holds; stopped reading it");
            break;
        }
    }
    s.sync().await.map_err(RecordError::from)?;
    Ok(report)
}

/// Forgets the file a deletion notice in a peer's inventory proves deleted after this
/// database's backup (the owner deleted it; the restored database still listed it, and its
/// audits failed the honest nodes that had let its shards go). Whether it was known.
fn forget_deleted(s: &State, peer: &str, handed_out: u64, notice: &Signed<Notice>) -> Result<bool, RecordError> {
    let Some(id) = notices::proven_deletion(s, peer, handed_out, notice) else { return Ok(false) };
    let Some(rec) = s.files.get(&id)? else {
        // Not known (yet): a copy of its manifest that another peer still keeps brings
        // nothing back.
        super::files::tombstone(s, &id)?;
        return Ok(false);
    };
    super::files::forget(s, &id, &rec)?;
    s.drop_rows(rec.rows_prefix())?;
    tracing::info!(file = %id, peer = %peer, "a file deleted after this database's backup is forgotten");
    Ok(true)
}

/// A fresh database takes the generation its nodes remember.
fn adopt_generation(s: &State, generation: Option<&str>) -> Result<(), RecordError> {
    if let Some(g) = generation
        && s.recovering.swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        tracing::info!(generation = %g, "an empty database takes the generation its nodes remember");
        s.meta.insert("generation", &notices::MetaRecord::Generation(g.to_owned()))?;
    }
    Ok(())
}

/// Records the file of a manifest copy the coordinator signed, if it is not known; its
/// placements are filled in as peers report the shards. Returns whether it was new.
fn recover_file(s: &State, copy: &Signed<ManifestCopy>) -> Result<bool, RecordError> {
    let Some(c) = copy.open_by(&s.identity.public_key_hex()) else { return Ok(false) };
    let Ok(bytes) = hex::decode(&c.manifest) else { return Ok(false) };
    if hex::encode(digest(&SHA256, &bytes)) != c.file_id {
        return Ok(false); // altered: the file id is the manifest's hash
    }
    let Ok(m) = Manifest::from_bytes(&bytes) else { return Ok(false) };
    if s.files.get(&c.file_id)?.is_some() || s.deleted.contains_key(&c.file_id).map_err(crate::store::DbError::from)? {
        return Ok(false);
    }
    // The segment table: inside a version 2 manifest, in the copy's pages for version 3.
    let mut entries = Vec::new();
    for p in 0..m.page_count() {
        let page = c.pages.get(p as usize).and_then(|h| hex::decode(h).ok());
        match m.open_page(p, page.as_deref()) {
            Ok(e) => entries.extend(e),
            Err(_) => return Ok(false), // a copy without its pages cannot place shards
        }
    }
    let rec = FileRecord {
        manifest: c.manifest.clone(),
        placements: Vec::new(),
        owner_hash: c.owner_hash.clone(),
        created: c.created,
        owner: c.owner.clone(),
        upload_id: c.upload_id.clone(),
        recovered_at: s.now(),
        rows: if c.upload_id.is_empty() { c.file_id.clone() } else { String::new() },
    };
    for (i, entry) in entries.into_iter().enumerate() {
        let placements = vec![String::new(); entry.shard_ids.len()];
        s.segments.insert(&row_key(rec.rows_prefix(), i as u32), &SegmentRow { entry, placements })?;
    }
    s.files.insert(&c.file_id, &rec)?;
    if !c.owner.is_empty() {
        super::accounts::own(s, &c.owner, &c.file_id, super::accounts::charge(m.plaintext_size, m.shape.k))?;
    }
    Ok(true)
}

/// Puts `peer` in the empty placements of `file` whose shards it holds (one shard of a
/// segment per peer). Returns how many placements were filled.
fn fill_placements(s: &State, file: &str, peer: &str, held: &HashSet<ShardId>) -> Result<usize, RecordError> {
    let Some(rec) = s.files.get(file)? else { return Ok(0) };
    let mut filled = 0;
    for (key, row) in s.segments.scan_prefix(&format!("{}/", rec.rows_prefix()))?.records {
        if row.placements.iter().any(|p| p == peer) || !row.entry.shard_ids.iter().any(|id| held.contains(id)) {
            continue;
        }
        let mut done = false;
        s.segments.update(&key, |r| {
            done = false;
            r.map(|mut r| {
                let ids = &r.entry.shard_ids;
                if !r.placements.iter().any(|p| p == peer)
                    && let Some(j) =
                        (0..r.placements.len()).find(|&j| r.placements[j].is_empty() && held.contains(&ids[j]))
                {
                    r.placements[j] = peer.to_owned();
                    done = true;
                }
                r
            })
        })?;
        filled += done as usize;
    }
    Ok(filled)
}
