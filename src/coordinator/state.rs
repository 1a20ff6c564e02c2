//! The coordinator's state: its key, configuration, clock, tables and in-memory queues, the
//! records its tables hold, and the questions every handler and worker asks of them (is a
//! peer online, may it take data, who holds what).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};
use serde::{Deserialize, Serialize};

use super::browser;
use crate::config::Config;
use crate::core::identity::Identity;
use crate::core::manifest::{Manifest, SegmentEntry};
use crate::core::merkle::ShardId;
use crate::core::placement::{self, Candidate};
use crate::core::reputation::Beta;
use crate::net::client as http;
use crate::net::metrics::Metrics;
use crate::proto::*;
use crate::store::{Record, Table};
use crate::sys::clock::Clock;

/// Everything the coordinator knows of a peer. Version 0 records (before versions) had the
/// same fields, some missing: they load with their defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct PeerRecord {
    pub public_key: String,
    pub address: String,
    pub capacity: u64,
    pub used: u64,
    pub shards: u64,
    pub last_heartbeat: u64,
    /// The `seq` of the last heartbeat accepted: the next must exceed it.
    #[serde(default)]
    pub last_seq: u64,
    /// The same for exit requests, which another process (`node exit`) signs.
    #[serde(default)]
    pub last_exit_seq: u64,
    #[serde(default)]
    pub status: PeerStatus,
    #[serde(default)]
    pub audit: Beta,
    #[serde(default)]
    pub online: Beta,
    #[serde(default)]
    pub audits_passed: u32,
    /// The score of answers that prove nothing either way (errors): below `[reputation]
    /// suspend_below` the peer is suspended.
    #[serde(default)]
    pub suspension: Beta,
    /// Since when it is suspended.
    #[serde(default)]
    pub suspended_since: Option<u64>,
    /// Shards whose last audit failed: not counted healthy until a later audit passes them.
    #[serde(default)]
    pub failed_shards: Vec<ShardId>,
    /// The address the coordinator reached the peer at and got its signature from (dial-back);
    /// until it equals `address`, the peer is not online.
    #[serde(default)]
    pub verified_address: String,
    /// The IP address and port `verified_address` resolved to: its failure domain.
    #[serde(default)]
    pub ip: Option<std::net::IpAddr>,
    #[serde(default)]
    pub port: u16,
    /// A challenge that timed out, asked again so going quiet cannot dodge an audit.
    #[serde(default)]
    pub pending: Option<Challenge>,
    #[serde(default)]
    pub timeouts: u32,
}

impl Record for PeerRecord {
    const VERSION: u32 = 1;
}

impl PeerRecord {
    pub fn new(public_key: String) -> PeerRecord {
        PeerRecord {
            public_key,
            address: String::new(),
            capacity: 0,
            used: 0,
            shards: 0,
            last_heartbeat: 0,
            last_seq: 0,
            last_exit_seq: 0,
            status: PeerStatus::Vetting,
            audit: Beta::default(),
            online: Beta::default(),
            audits_passed: 0,
            suspension: Beta::default(),
            suspended_since: None,
            failed_shards: Vec::new(),
            verified_address: String::new(),
            ip: None,
            port: 0,
            pending: None,
            timeouts: 0,
        }
    }
}

/// An account: its key, and how much it may store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct AccountRecord {
    pub public_key: String,
    /// Plaintext bytes of files it may keep, committed and planned together.
    pub quota: u64,
    pub created: u64,
    /// Added by an operator (`account add`), rather than registered by itself.
    pub invited: bool,
}

impl Record for AccountRecord {
    const VERSION: u32 = 1;
}

/// A file an account owns, under the key `<account id>/<file id>`: listing and quota read
/// these, not every file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct OwnedRecord {
    /// Plaintext bytes.
    pub size: u64,
}

impl Record for OwnedRecord {
    const VERSION: u32 = 1;
}

/// A node id an operator allowed to register (`[security] node_admission = "allowlist"`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct AllowedNode {
    pub added: u64,
}

impl Record for AllowedNode {
    const VERSION: u32 = 1;
}

/// A peer that was disqualified and then forgotten: it may not register again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct BannedPeer {
    pub since: u64,
}

impl Record for BannedPeer {
    const VERSION: u32 = 1;
}

/// A request nonce seen, under `<account id>/<nonce>`, until it is too old to be replayed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct NonceRecord {
    pub time: u64,
}

impl Record for NonceRecord {
    const VERSION: u32 = 1;
}

/// A planned upload, until it is committed or expires.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct UploadRecord {
    /// The account that planned it; only it may commit it.
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub created: u64,
    pub expires: u64,
    pub size: u64,
    pub k: u8,
    pub n: u8,
    pub segment_size: u32,
    pub peers: Vec<String>,
    /// Shards of each segment the commit must place (0: all n, as planned before this field).
    #[serde(default)]
    pub min_shards: u8,
    /// Its size is not known in advance (`size` is the most it may grow to; 0: no bound but
    /// the coordinator's).
    #[serde(default)]
    pub stream: bool,
    /// Segments recorded so far (rows `0..committed` of the segments table).
    #[serde(default)]
    pub committed: u32,
    /// A stream's segments laid out so far (`0..window_end`): charged to the quota while it
    /// is pending, as a file's size is.
    #[serde(default)]
    pub window_end: u32,
    /// Segments laid out on each peer so far (as one of the n or a spare): its put orders
    /// allow bytes for these only (`PutOrder::budget`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub laid_out: BTreeMap<String, u32>,
}

impl UploadRecord {
    /// Bytes the upload holds of its account's quota while pending: a file's charge, or a
    /// stream's segments laid out or recorded.
    pub fn pending_bytes(&self) -> u64 {
        if self.stream {
            self.window_end.max(self.committed) as u64 * crate::core::manifest::plain_per_segment(self.segment_size)
        } else {
            super::accounts::charge(self.size, self.k)
        }
    }
}

impl Record for UploadRecord {
    const VERSION: u32 = 1;
}

/// A committed file: its manifest (for version 3, the root) and who owns it. Its segments
/// and where each shard is are rows of the `segments` table (see [`SegmentRow`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct FileRecord {
    pub manifest: String,
    /// Only in records from before segment rows: moved into rows when the coordinator starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<Vec<String>>,
    pub owner_hash: String,
    pub created: u64,
    /// The account that committed it (empty: committed before accounts, owned by nobody).
    #[serde(default)]
    pub owner: String,
    /// The upload its shards were stored under: read grants name it (empty: before grants).
    #[serde(default)]
    pub upload_id: String,
    /// When it was rebuilt from the network (0: committed here): its placements not yet
    /// filled in are not repaired during the grace period, while peers come back.
    #[serde(default)]
    pub recovered_at: u64,
    /// The key prefix of its segment rows (empty: its upload id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rows: String,
}

impl Record for FileRecord {
    const VERSION: u32 = 1;
}

impl Record for AuditRecord {
    const VERSION: u32 = 1;
}

/// One segment of an upload or file, under `<upload id>/<index, 10 digits>`: its table
/// entry and the peer holding each shard ("" where none does). Uploads record them batch by
/// batch; the commit makes them a file's; repair and recovery change the placements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct SegmentRow {
    pub entry: SegmentEntry,
    pub placements: Vec<String>,
}

impl Record for SegmentRow {
    const VERSION: u32 = 1;
}

pub(super) fn row_key(prefix: &str, index: u32) -> String {
    format!("{prefix}/{index:010}")
}

impl FileRecord {
    pub fn parsed(&self) -> Option<Manifest> {
        Manifest::from_bytes(&hex::decode(&self.manifest).ok()?).ok()
    }

    /// The prefix of its segment rows' keys.
    pub fn rows_prefix(&self) -> &str {
        if self.rows.is_empty() { &self.upload_id } else { &self.rows }
    }
}

pub(super) struct State {
    pub identity: Identity,
    pub config: Config,
    pub clock: Clock,
    pub peers: Table<PeerRecord>,
    pub uploads: Table<UploadRecord>,
    pub files: Table<FileRecord>,
    pub segments: Table<SegmentRow>,
    pub audits: Table<AuditRecord>,
    pub accounts: Table<AccountRecord>,
    pub owned: Table<OwnedRecord>,
    pub nonces: Table<NonceRecord>,
    pub allowed_nodes: Table<AllowedNode>,
    pub banned: Table<BannedPeer>,
    pub meta: Table<super::notices::MetaRecord>,
    pub outbox: Table<super::notices::OutboxRecord>,
    /// Accounts' private namespaces (`<account id>/<key>` → opaque value): raw bytes, not
    /// records, since the coordinator cannot read them.
    pub names: sled::Tree,
    /// Receipts found validly signed (`uploads::VerifiedReceipts`).
    pub receipts: Arc<super::uploads::VerifiedReceipts>,
    /// Woken when a notice is queued.
    pub outbox_ready: tokio::sync::Notify,
    /// One delivery at a time per peer, so its notices arrive in order.
    pub delivering: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Whether this database started empty (then it adopts its nodes' generation).
    pub recovering: std::sync::atomic::AtomicBool,
    /// Whether this database was empty when this process started: then every peer that
    /// registers is asked what it holds (files may come back from its manifest copies).
    pub started_empty: bool,
    /// Files deleted (file id → unix seconds, big-endian): never recovered from a manifest
    /// copy again (a node that kept a deleted file's copy brought it back by registering anew).
    pub deleted: sled::Tree,
    /// Peers whose inventory the recovery worker is to take.
    pub recovery_queue: tokio::sync::mpsc::UnboundedSender<String>,
    /// The database the tables live in (backups read all of it).
    pub db: sled::Db,
    /// Flushes of `db` shared by concurrent callers (see [`State::sync`]).
    pub durable: Arc<crate::store::GroupCommit>,
    /// (file id, segment) pairs waiting for or under repair.
    pub repair_queue: Mutex<HashSet<(String, usize)>>,
    /// Outcomes of the last minute's audits, for the dashboard (the stored history is per peer).
    pub recent_audits: Mutex<VecDeque<(u64, AuditOutcome)>>,
    /// Peers to audit at once on these shards (readers reported them damaged).
    pub urgent_audits: Mutex<VecDeque<UrgentAudit>>,
    /// The newest audits of all peers, newest last: what the audit log shows without
    /// reading every peer's history.
    pub audit_log: Mutex<VecDeque<AuditRecord>>,
    /// Uploads from browsers in progress.
    pub browser_uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<browser::Upload>>>>,
    pub http: http::Client,
    /// The audit worker's client: its timeout is `[audit] timeout`.
    pub audit_http: http::Client,
    pub metrics: Arc<Metrics>,
    pub counters: Counters,
    /// Stored bytes and files per account, with the owned table's change count they are
    /// in step with (`accounts::usage`).
    pub usage_kept: Mutex<(u64, HashMap<String, Usage>)>,
    /// Bytes of each account's namespace (`names::held`), in step with its puts and deletes.
    pub names_kept: Mutex<HashMap<String, u64>>,
    /// Who holds what as the audit worker last read it (None until it has): damage reports
    /// check the shards they name against it.
    pub held_index: Mutex<Option<Arc<HeldIndex>>>,
    /// Shards peers reported damaged that the index did not place on them when reported
    /// (placed since it was read, or never): weighed at its next reading, a few per peer.
    pub damage_later: Mutex<HashMap<String, Vec<ShardId>>>,
    /// `placed_bytes` as last walked; the second lock is held by the one walk at a time.
    pub placed_cache: Mutex<Option<PlacedKept>>,
    pub placed_walk: Mutex<()>,
    /// The network's segment-health histogram, files and bytes (`/v2/stats`, `/metrics`),
    /// see `stats::walk`.
    pub health_cache: Mutex<Option<super::stats::Kept<super::stats::Walked>>>,
    /// Health totals of the files asked for lately (`files::file_totals`), at most
    /// `files::TOTALS_KEPT`.
    pub totals_cache: Mutex<HashMap<String, super::stats::Kept<crate::proto::HealthTotals>>>,
    /// Turns for dial-backs, in all and per address.
    pub dial_backs: super::admission::DialBacks,
    pub limits: super::limits::Limits,
    /// Turns for coding browsers' segments: each holds a segment and its shards in memory.
    pub browser_turns: tokio::sync::Semaphore,
    /// MiB of sealed segments held for browsers until they read them (`browser::sealed_segment`).
    pub segment_budget: Arc<tokio::sync::Semaphore>,
    /// Each account's share of it.
    pub segment_shares: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// What the workers count, for /metrics and /v2/stats.
pub(super) struct Counters {
    pub audits: IntCounterVec,
    pub repaired_shards: IntCounter,
    pub network: super::stats::Gauges,
    /// Reads that met a stored record that does not decode, by table.
    pub undecodable: IntGaugeVec,
    /// Rounds of the periodic workers, by worker and outcome (`done`, `skipped`).
    pub rounds: IntCounterVec,
}

impl Counters {
    pub fn new(m: &Metrics) -> Counters {
        Counters {
            audits: m
                .add(IntCounterVec::new(Opts::new("audits_total", "Audits by outcome"), &["outcome"]).expect("valid")),
            repaired_shards: m
                .add(IntCounter::new("repaired_shards_total", "Shards rebuilt and re-placed").expect("valid")),
            network: super::stats::Gauges::new(m),
            undecodable: m.add(
                IntGaugeVec::new(
                    Opts::new("undecodable_record_reads", "Reads that met a stored record that does not decode"),
                    &["table"],
                )
                .expect("valid"),
            ),
            rounds: m.add(
                IntCounterVec::new(
                    Opts::new("worker_rounds_total", "Rounds of the periodic workers by outcome"),
                    &["worker", "outcome"],
                )
                .expect("valid"),
            ),
        }
    }
}

impl State {
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Makes every write to the database so far durable: called before anything that
    /// promises them is answered or sent (a reply to a client, a notice to a node). One
    /// flush covers every table (sled flushes its whole log); concurrent callers share it.
    pub async fn sync(&self) -> Result<(), crate::store::DbError> {
        self.durable.sync_db(&self.db).await
    }

    /// The id requests are signed for: the peer id of the coordinator's key.
    pub fn id(&self) -> String {
        self.identity.peer_id()
    }

    /// A read grant for `peer`, for the shards of `upload_id`, issued to `grantee`.
    pub fn grant(&self, peer: &str, upload_id: &str, grantee: &str) -> Signed<ReadGrant> {
        let upload_id = if upload_id.is_empty() { ANY_UPLOAD } else { upload_id };
        self.identity.sign(&ReadGrant {
            peer_id: peer.to_owned(),
            upload_id: upload_id.to_owned(),
            grantee: grantee.to_owned(),
            expires: self.now() + GRANT_LIFETIME,
        })
    }

    pub fn is_online(&self, p: &PeerRecord) -> bool {
        is_online(p, self.now(), self.config.coordinator.heartbeat_timeout)
    }

    /// Online, and reached at the address it advertises (dial-back): what placement needs.
    pub fn is_admitted(&self, p: &PeerRecord) -> bool {
        self.is_online(p) && !p.address.is_empty() && p.verified_address == p.address
    }

    /// Whether a peer may receive new shards: online, in good standing, not leaving.
    pub fn accepts_data(&self, p: &PeerRecord) -> bool {
        self.is_admitted(p)
            && p.suspended_since.is_none()
            && matches!(p.status, PeerStatus::Vetting | PeerStatus::Active)
            && p.audit.score() >= self.config.security.min_reputation
    }

    /// A file's segment rows, in order; an error when one does not decode.
    pub fn rows(&self, f: &FileRecord) -> Result<Vec<SegmentRow>, crate::store::RecordError> {
        let mut scan = self.segments.scan_prefix(&format!("{}/", f.rows_prefix()))?;
        match scan.errors.pop() {
            Some(e) => Err(e),
            None => Ok(scan.records.into_iter().map(|(_, r)| r).collect()),
        }
    }

    /// Visits the segment rows of a file in index order, a page at a time: a file may have
    /// millions, and the workers that walk every file each round must not hold them all.
    pub fn visit_rows(
        &self,
        f: &FileRecord,
        mut visit: impl FnMut(u32, SegmentRow),
    ) -> Result<(), crate::store::RecordError> {
        let mut index = 0;
        self.segments.visit_prefix(&format!("{}/", f.rows_prefix()), |row| {
            visit(index, row);
            index += 1;
        })
    }

    /// At most `count` segment rows of a file from segment `first` on, read without the rest.
    pub fn rows_window(
        &self,
        f: &FileRecord,
        first: u32,
        count: u32,
    ) -> Result<Vec<SegmentRow>, crate::store::RecordError> {
        let rows =
            self.segments.range(&format!("{}/", f.rows_prefix()), &row_key(f.rows_prefix(), first), count as usize)?;
        Ok(rows.into_iter().map(|(_, r)| r).collect())
    }

    /// One segment row of a file.
    pub fn row(&self, f: &FileRecord, index: u32) -> Result<Option<SegmentRow>, crate::store::RecordError> {
        self.segments.get(&row_key(f.rows_prefix(), index))
    }

    /// Removes the segment rows under `prefix` (a deleted file's, an abandoned upload's).
    pub fn drop_rows(&self, prefix: &str) -> Result<(), crate::store::RecordError> {
        for (key, _) in self.segments.scan_prefix(&format!("{prefix}/"))?.records {
            self.segments.remove(&key)?;
        }
        Ok(())
    }

    /// Visits every (shard id, peer) a file has placed, a page of rows at a time.
    pub fn visit_placed(
        &self,
        f: &FileRecord,
        mut visit: impl FnMut(ShardId, String),
    ) -> Result<(), crate::store::RecordError> {
        self.visit_rows(f, |_, row| {
            for (sid, peer) in row.entry.shard_ids.into_iter().zip(row.placements).filter(|(_, p)| !p.is_empty()) {
                visit(sid, peer);
            }
        })
    }

    /// Every shard each peer should hold, with its length and where it was placed, over the
    /// files that can be read (damaged records are reported by the scan).
    pub fn shards_by_peer(&self, files: &[(String, FileRecord)]) -> HeldIndex {
        let mut held: HeldIndex = HashMap::new();
        for (key, f) in files {
            let Some(m) = f.parsed() else { continue };
            let file: Arc<str> = Arc::from(key.as_str());
            let _ = self.visit_rows(f, |i, row| {
                let len = m.shard_len(i);
                for (id, peer) in row.entry.shard_ids.into_iter().zip(row.placements) {
                    if !peer.is_empty() {
                        held.entry(peer).or_default().push(HeldShard { id, len, file: file.clone(), segment: i });
                    }
                }
            });
        }
        held
    }

    /// Queues an audit of `peer` on `shards` at once (the queue is bounded: past
    /// `audit::URGENT_QUEUE` a claim waits for the peer's next regular audit).
    pub fn audit_soon(&self, peer: String, shards: Vec<ShardId>) {
        let mut urgent = self.urgent_audits.lock().expect("not poisoned");
        if urgent.len() < super::audit::URGENT_QUEUE {
            urgent.push_back((peer, shards, std::time::Instant::now()));
        }
    }

    /// Who holds what as the audit worker last read it; read here once if it has not yet
    /// (just after start).
    pub fn held(&self) -> Arc<HeldIndex> {
        if let Some(index) = self.held_index.lock().expect("not poisoned").clone() {
            return index;
        }
        let index = Arc::new(self.shards_by_peer(&self.files.readable()));
        *self.held_index.lock().expect("not poisoned") = Some(index.clone());
        index
    }

    /// Whether `peer` should still hold `shard`: its file is there and the segment's row
    /// still places it on `peer` (a database error says yes: nothing is excused on it).
    pub fn still_placed(&self, shard: &HeldShard, peer: &str) -> bool {
        let row = match self.files.get(&shard.file) {
            Ok(Some(f)) => self.row(&f, shard.segment),
            Ok(None) => return false,
            Err(_) => return true,
        };
        match row {
            Ok(Some(row)) => {
                let at = row.entry.shard_ids.iter().position(|id| *id == shard.id);
                at.is_some_and(|i| row.placements.get(i).is_some_and(|p| p == peer))
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Placement candidates, except peers in `exclude_domains`: each with the capacity it
    /// declares as a limit and the capacity it has earned as its weight (`core::placement`).
    pub fn candidates(&self, peers: &[(String, PeerRecord)], exclude_domains: &HashSet<String>) -> Vec<Candidate> {
        let placed = self.placed_bytes();
        let credit = crate::config::gb_to_bytes(self.config.placement.new_peer_credit_gb);
        peers
            .iter()
            .filter(|(_, p)| self.accepts_data(p))
            .map(|(id, p)| {
                let free = p.capacity.saturating_sub(p.used);
                let vetted = p.status == PeerStatus::Active;
                let held = placed.get(id).copied().unwrap_or(0);
                Candidate {
                    peer_id: id.clone(),
                    free,
                    weight: placement::believed(free, held, vetted, credit),
                    domain: self.domain(id, p),
                    vetting: !vetted,
                }
            })
            .filter(|c| !exclude_domains.contains(&c.domain))
            .collect()
    }

    /// A peer's failure domain under `[placement] spread`.
    pub fn domain(&self, id: &str, p: &PeerRecord) -> String {
        placement::domain(id, p.ip, p.port, self.config.placement.spread)
    }

    /// Shard bytes the coordinator has placed on each peer, over every readable file. Every
    /// upload's plan asks, and the walk costs time in proportion to all that is stored, so
    /// the figures are kept until the files change and, while uploads keep changing them,
    /// until a walk is due again ([`Pace`]); one caller walks while the others use the kept
    /// figures. They
    /// weigh placement (`core::placement::believed`), where a few seconds' lag only leaves a
    /// peer's newest shards out of what it has earned.
    pub fn placed_bytes(&self) -> PlacedBytes {
        let kept = |s: &Self| {
            let changes = s.files.changes() + s.segments.changes();
            let cache = s.placed_cache.lock().expect("not poisoned");
            let fresh = cache.as_ref().filter(|k| k.changes == changes || !k.pace.due());
            (fresh.map(|k| k.map.clone()), cache.as_ref().map(|k| k.map.clone()))
        };
        let (fresh, stale) = kept(self);
        if let Some(map) = fresh {
            return map;
        }
        let _walk = match (self.placed_walk.try_lock(), stale) {
            (Ok(walk), _) => walk,
            (Err(_), Some(stale)) => return stale,
            (Err(_), None) => {
                let walk = self.placed_walk.lock().expect("not poisoned");
                if let Some(map) = kept(self).0 {
                    return map;
                }
                walk
            }
        };
        let (changes, at) = (self.files.changes() + self.segments.changes(), std::time::Instant::now());
        let mut map = HashMap::new();
        for (_, f) in self.files.readable() {
            let Some(m) = f.parsed() else { continue };
            let _ = self.visit_rows(&f, |i, row| {
                let len = m.shard_len(i) as u64;
                for peer in row.placements.into_iter().filter(|p| !p.is_empty()) {
                    *map.entry(peer).or_insert(0u64) += len;
                }
            });
        }
        let map = Arc::new(map);
        *self.placed_cache.lock().expect("not poisoned") =
            Some(PlacedKept { changes, pace: Pace::since(at), map: map.clone() });
        map
    }

    /// A peer as clients and the web UI see it.
    pub fn view(&self, id: &str, p: &PeerRecord, placed: u64) -> PeerView {
        PeerView {
            peer_id: id.to_owned(),
            address: p.address.clone(),
            state: if self.is_online(p) { PeerState::Online } else { PeerState::Offline },
            status: p.status,
            reputation: p.audit.score(),
            online_score: p.online.score(),
            audits_passed: p.audits_passed,
            suspended: p.suspended_since.is_some(),
            placed,
            capacity: p.capacity,
            used: p.used,
            shards: p.shards,
            last_heartbeat: p.last_heartbeat,
        }
    }

    /// Shards placed per peer, over every readable file.
    pub fn placed_counts(&self) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for (_, f) in self.files.readable() {
            let _ = self.visit_rows(&f, |_, row| {
                for peer in row.placements.into_iter().filter(|p| !p.is_empty()) {
                    *counts.entry(peer).or_insert(0) += 1;
                }
            });
        }
        counts
    }
}

/// Shard bytes placed per peer.
pub(super) type PlacedBytes = Arc<HashMap<String, u64>>;

/// A peer to audit at once on some of its shards, and since when it waits.
pub type UrgentAudit = (String, Vec<ShardId>, std::time::Instant);

/// An account's stored bytes and files.
pub type Usage = (u64, u64);

/// Every shard each peer should hold, by peer id.
pub type HeldIndex = HashMap<String, Vec<HeldShard>>;

/// A shard a peer should hold ([`State::shards_by_peer`]): its length, and its file and
/// segment, to check later that it still should ([`State::still_placed`]).
#[derive(Clone, Debug)]
pub struct HeldShard {
    pub id: ShardId,
    pub len: usize,
    pub file: Arc<str>,
    pub segment: u32,
}

/// [`State::placed_bytes`] as walked: at what change count and when.
pub struct PlacedKept {
    changes: u64,
    pace: Pace,
    map: PlacedBytes,
}

/// When a figure made by walking every segment row may be walked again while files keep
/// changing: 5 s after the last walk, or ten times as long as that walk took, so that such
/// walks use at most a tenth of a core however much is stored. Uploads change files many
/// times a second; walking on every change made each upload cost time in proportion to all
/// that is stored.
#[derive(Clone, Copy)]
pub struct Pace {
    at: std::time::Instant,
    took: std::time::Duration,
}

impl Pace {
    const MIN: std::time::Duration = std::time::Duration::from_secs(5);

    /// The pace of a walk that started at `at` and just ended.
    pub fn since(at: std::time::Instant) -> Pace {
        Pace { at, took: at.elapsed() }
    }

    /// When the walk started: it saw what was stored then.
    pub fn started(&self) -> std::time::Instant {
        self.at
    }

    pub fn due(&self) -> bool {
        self.at.elapsed() >= (self.took * 10).max(Self::MIN)
    }
}

/// Seconds a read grant stays valid: long enough for a large download's placements query to
/// serve it whole.
pub(super) const GRANT_LIFETIME: u64 = 3600;

/// Whether a peer last heard of at `p.last_heartbeat` counts as online at `now`.
pub(super) fn is_online(p: &PeerRecord, now: u64, heartbeat_timeout: u64) -> bool {
    now.saturating_sub(p.last_heartbeat) <= heartbeat_timeout
}
