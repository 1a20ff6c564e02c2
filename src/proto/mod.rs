//! Every wire type of protocol version 1, in one place (docs/PROTOCOL.md mirrors it).
//! All routes live under `/v1/`; bodies are JSON unless they are shard or manifest bytes.
//! Messages that authorise or attest something travel as `Signed<T>`. Pure: no I/O.

mod signed;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::merkle::{Proof, ShardId};
pub use signed::{Sign, Signed};

pub const VERSION: u32 = 1;
/// Header carrying a `Signed<PutOrder>` (JSON) on a shard PUT.
pub const ORDER_HEADER: &str = "x-p2pstore-order";
/// Header carrying the hex owner token on a file DELETE.
pub const OWNER_HEADER: &str = "x-p2pstore-owner";
/// Largest JSON body any route accepts (a commit of a ~100 GiB file fits).
pub const MAX_JSON_BODY: usize = 64 << 20;

/// Node → coordinator, signed by the node, every heartbeat interval. The first one registers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Base URL where clients reach the node.
    pub address: String,
    pub capacity: u64,
    pub used: u64,
    pub shards: u64,
    /// Unix seconds; must increase, and be near the coordinator's clock.
    pub time: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub peer_id: String,
    /// Hex public key of the coordinator; a node pins it on first registration.
    pub coordinator_key: String,
}

/// Client → coordinator: a placement plan for a file of `size` bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlanRequest {
    pub size: u64,
    pub k: u8,
    pub n: u8,
    pub segment_size: u32,
}

/// The coordinator's answer: per segment, n distinct peers then a few spares.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub upload_id: String,
    pub expires: u64,
    /// One put order per peer used anywhere in the plan.
    pub orders: BTreeMap<String, Signed<PutOrder>>,
    /// Peer id → base URL.
    pub addresses: BTreeMap<String, String>,
    pub segments: Vec<Vec<String>>,
}

/// Coordinator → node (through the client): store shards of this upload, each at most
/// `max_shard_len` bytes, until `expires`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PutOrder {
    pub upload_id: String,
    pub peer_id: String,
    pub max_shard_len: u64,
    pub expires: u64,
}

/// Node → client (→ coordinator): this shard is durably stored here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub upload_id: String,
    pub shard_id: ShardId,
    pub len: u64,
    pub peer_id: String,
}

/// Client → coordinator: the manifest (hex of its canonical bytes) and a receipt for every
/// shard of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Commit {
    pub upload_id: String,
    pub manifest: String,
    /// Hex SHA-256 of the owner token (docs/FORMAT.md); the token itself never leaves the client.
    pub owner_hash: String,
    /// `placements[segment][shard]` = the peer that stored it.
    pub placements: Vec<Vec<String>>,
    pub receipts: Vec<Signed<Receipt>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitReply {
    pub file_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Online,
    Offline,
}

/// Where a peer stands with the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerStatus {
    /// New: audited more often, offered less new data, until it passed `vetting_audits`.
    #[default]
    Vetting,
    Active,
    /// Failed too many audits; gets nothing, its shards count as lost. Final.
    Disqualified,
    /// Leaving gracefully: its shards are being moved elsewhere.
    Exiting,
    /// Left; holds nothing the network needs.
    Exited,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerView {
    pub peer_id: String,
    pub address: String,
    pub state: PeerState,
    pub status: PeerStatus,
    /// Audit reputation, 0..1 (see `reputation`).
    pub reputation: f64,
    /// Reachability score from audits, 0..1.
    pub online_score: f64,
    pub audits_passed: u32,
    /// Shards the coordinator has placed on this peer.
    pub placed: u64,
    pub capacity: u64,
    pub used: u64,
    pub shards: u64,
    pub last_heartbeat: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileSummary {
    pub file_id: String,
    pub size: u64,
    pub segments: u64,
    pub k: u8,
    pub n: u8,
    pub created: u64,
}

/// A file's placements and the peers holding them: what download and `info` need.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileView {
    #[serde(flatten)]
    pub summary: FileSummary,
    /// `placements[segment][shard]` = peer id.
    pub placements: Vec<Vec<String>>,
    pub peers: BTreeMap<String, PeerView>,
    /// Per segment: healthy shards (see `coordinator::repair`) and whether repair is queued.
    pub health: Vec<SegmentHealth>,
    /// `shard_states[segment][shard]`.
    pub shard_states: Vec<Vec<ShardState>>,
}

/// What one placed shard is worth now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardState {
    Healthy,
    /// Its peer is offline, still within the grace period: counted healthy for now.
    Offline,
    /// Its last audit failed.
    Failed,
    /// Its peer is leaving; it is being moved.
    Leaving,
    /// Its peer is disqualified, gone, or offline past the grace period.
    Lost,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegmentHealth {
    pub healthy: u32,
    pub total: u32,
    pub repair_queued: bool,
}

/// The network at a glance: what the dashboard and `/metrics` show.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetworkStats {
    pub peers_online: u64,
    pub peers_offline: u64,
    pub peers_disqualified: u64,
    pub peers_exiting: u64,
    pub capacity: u64,
    pub used: u64,
    pub files: u64,
    /// Plaintext bytes of all files.
    pub stored_bytes: u64,
    /// `[healthy shards, segments with that many]`, ascending.
    pub health: Vec<(u32, u64)>,
    pub audits_last_minute: u64,
    /// Passed share of the last minute's audits (1 when there were none).
    pub audit_pass_rate: f64,
    pub repair_queue: u64,
    pub repaired_shards: u64,
}

/// Coordinator → node: prove you hold these chunks, signing over the nonce, by `deadline`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    pub peer_id: String,
    pub nonce: String,
    pub items: Vec<ChallengeItem>,
    pub deadline: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChallengeItem {
    pub shard_id: ShardId,
    pub chunk: u64,
}

/// Node → coordinator, signed by the node: one proof per item, None for "don't have it".
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditAnswer {
    pub nonce: String,
    pub proofs: Vec<Option<Proof>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    Success,
    /// Wrong bytes, bad proof, bad signature, or "don't have it".
    Failure,
    /// No answer by the deadline.
    Offline,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditRecord {
    pub peer_id: String,
    pub time: u64,
    pub outcome: AuditOutcome,
    pub shards: usize,
    pub detail: String,
    /// Audit reputation after this audit.
    pub reputation: f64,
}

/// Coordinator → node: every shard you should keep. Shards not listed and stored before
/// `keep_newer_than` are garbage (deleted files, abandoned uploads, moved shards).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LiveList {
    pub peer_id: String,
    pub shard_ids: Vec<ShardId>,
    pub keep_newer_than: u64,
    pub expires: u64,
}

/// Node → coordinator, signed: this peer wants to leave; move its shards first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExitRequest {
    pub time: u64,
}

/// Coordinator → node: drop these shards (after `rm`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteOrder {
    pub peer_id: String,
    pub shard_ids: Vec<ShardId>,
    pub expires: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A coordinator instruction addressed to one peer, valid until a time.
pub trait ForPeer {
    fn peer_id(&self) -> &str;
    /// Unix seconds after which the instruction is void.
    fn valid_until(&self) -> u64;
}

macro_rules! for_peer {
    ($t:ty, $until:ident) => {
        impl ForPeer for $t {
            fn peer_id(&self) -> &str {
                &self.peer_id
            }
            fn valid_until(&self) -> u64 {
                self.$until
            }
        }
    };
}
for_peer!(PutOrder, expires);
for_peer!(Challenge, deadline);
for_peer!(LiveList, expires);
for_peer!(DeleteOrder, expires);

/// A node's own view of itself (`GET /v1/status` on a node).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub peer_id: String,
    pub address: String,
    pub capacity: u64,
    pub used: u64,
    pub shards: u64,
}

/// How many shards a node removed (delete orders, live lists).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Removed {
    pub removed: usize,
}

/// The file a delete removed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: String,
}

/// A browser upload has begun: send its `segments` sealed segments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrowserStarted {
    pub upload_id: String,
    pub segments: usize,
}

/// A browser's sealed segment is coded and stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrowserStored {
    pub stored: usize,
}

/// What only the browser can make, to end its upload: the sealed metadata and the key
/// parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrowserCommit {
    pub salt: String,
    pub iterations: u32,
    pub sealed_meta: String,
    pub owner_hash: String,
}
