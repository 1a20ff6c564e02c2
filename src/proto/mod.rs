//! Every wire type of protocol version 2, in one place (docs/PROTOCOL.md mirrors it).
//! All routes live under `/v2/`; bodies are JSON unless they are shard or manifest bytes.
//! Messages that authorise or attest something travel as `Signed<T>` with a purpose tag per
//! kind (`signed`); requests made for an account carry its signature in a header (`auth`).
//! Pure: no I/O.

mod auth;
mod signed;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::merkle::{Proof, ShardId};
pub use auth::{AUTH_HEADER, RequestAuth, body_hash, request_message};
pub use signed::{DOMAIN, Message, Sign, Signed, tagged};

pub const VERSION: u32 = 2;
/// Header carrying a `Signed<PutOrder>` (JSON) on a shard PUT.
pub const ORDER_HEADER: &str = "x-p2pstore-order";
/// Header carrying a `Signed<ReadGrant>` (JSON) on a shard GET.
pub const GRANT_HEADER: &str = "x-p2pstore-grant";
/// Header carrying a `Signed<NoticeTicket>` (JSON) on a notice's POST.
pub const NOTICE_HEADER: &str = "x-p2pstore-notice";
/// A signed request's time may differ from the receiver's clock by this many seconds.
pub const CLOCK_SKEW: u64 = 300;
/// Largest JSON body any route accepts (a commit of a ~100 GiB file fits).
pub const MAX_JSON_BODY: usize = 64 << 20;
/// Shard ids one damage report (`POST /v2/peers/damage`) names at most; a node reports more
/// in several.
pub const MAX_DAMAGE_IDS: usize = 4096;
/// Largest damage report body: [`MAX_DAMAGE_IDS`] ids (68 bytes each once escaped inside the
/// signed body) and the envelope, with room to spare.
pub const DAMAGE_BODY: usize = 512 << 10;

/// Node → coordinator, signed by the node, every heartbeat interval. The first one registers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Base URL where clients reach the node.
    pub address: String,
    pub capacity: u64,
    /// Bytes taking room: the shards held and the trash.
    pub used: u64,
    pub shards: u64,
    /// Unix seconds; must be near the coordinator's clock.
    pub time: u64,
    /// Strictly increasing over the node's heartbeats: a captured one is never accepted again.
    pub seq: u64,
    /// The nonce of the key's proof-of-work (`core::identity::pow_bits`), checked at
    /// registration against the coordinator's `node_pow_bits`.
    #[serde(default)]
    pub pow: u64,
}

/// Coordinator → node, unsigned (`POST /v2/identify`): prove you hold your key and listen at
/// the address you advertise, by signing this nonce.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentifyChallenge {
    pub coordinator: String,
    pub nonce: String,
}

/// Node → coordinator, signed: the answer to an [`IdentifyChallenge`] (the dial-back).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identified {
    pub coordinator: String,
    pub nonce: String,
    pub address: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub peer_id: String,
    /// Hex public key of the coordinator; a node pins it on first registration.
    pub coordinator_key: String,
    /// The coordinator database's generation: a node that knows another one refuses its
    /// notices.
    #[serde(default)]
    pub generation: String,
}

/// Client → coordinator: a placement plan for a file of `size` bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlanRequest {
    /// The file's size; for a `stream`, the most it may grow to (0: up to the coordinator's
    /// `max_upload_size_mb`).
    pub size: u64,
    pub k: u8,
    pub n: u8,
    pub segment_size: u32,
    /// The size is not known in advance (standard input): the quota is charged as segments
    /// are laid out, and the final size is the manifest's.
    #[serde(default)]
    pub stream: bool,
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
    /// Peers for segments `first..first + segments.len()` (at most [`LAYOUT_SEGMENTS`]),
    /// n of them then a few spares each; `POST /v2/uploads/{id}/layout` lays out more.
    pub segments: Vec<Vec<String>>,
    /// Shards of each segment that must be stored for the commit to be accepted; the others
    /// may be given up when their peers are slow (placed as ""). 0: all n (coordinators
    /// before this field).
    #[serde(default)]
    pub min_shards: u8,
    #[serde(default)]
    pub first: u32,
}

/// Segments a plan or layout lays out, and a batch commits, at most.
pub const LAYOUT_SEGMENTS: u32 = 256;

/// Client → coordinator (`POST /v2/uploads/{id}/layout`): peers for segments
/// `first..first + count` of an upload. The answer is a [`Plan`] for them, with fresh put
/// orders.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayoutRequest {
    pub first: u32,
    pub count: u32,
}

/// Client → coordinator (`POST /v2/uploads/{id}/segments`): segments `first..` stored, with
/// their table entries, where each shard went, and the receipts. Batches come in order; a
/// batch repeating segments already recorded (a retry, a resumed upload) must repeat their
/// entries, and only the new ones are taken.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegmentBatch {
    pub first: u32,
    pub segments: Vec<crate::core::manifest::SegmentEntry>,
    /// `placements[i][shard]` = the peer that stored it ("" where a slow shard was given up).
    pub placements: Vec<Vec<String>>,
    pub receipts: Vec<Signed<Receipt>>,
}

/// An upload in progress: segments recorded so far (contiguous from 0) and when it expires
/// (each batch extends it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadStatus {
    pub upload_id: String,
    pub committed: u32,
    pub expires: u64,
}

/// Coordinator → node (through the client): store shards of this upload, each at most
/// `max_shard_len` bytes, until `expires`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PutOrder {
    pub upload_id: String,
    pub peer_id: String,
    pub max_shard_len: u64,
    pub expires: u64,
    /// Bytes the peer stores under the upload at most, over all its orders (0: no bound, as
    /// in orders before this field and the coordinator's own for repair).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_bytes: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl PutOrder {
    /// What storing a shard of `len` bytes takes of `max_bytes`: a disk block at least, so
    /// tiny shards do not fill a node's index for next to nothing.
    pub fn cost(len: u64) -> u64 {
        len.max(4096)
    }

    /// `max_bytes` for `segments` segments of shards of `shard_len` bytes. A peer holds one
    /// shard of each segment; twice that leaves room for hedges that bring it a second.
    pub fn budget(segments: u64, shard_len: u64) -> u64 {
        2 * segments.max(1) * Self::cost(shard_len)
    }
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
    /// Hex of the manifest root (docs/FORMAT.md §6): its page hashes must be those of the
    /// segments recorded by the upload's batches.
    pub manifest: String,
    /// Hex SHA-256 of the owner token (docs/FORMAT.md); the token itself never leaves the client.
    pub owner_hash: String,
    /// Segments not yet sent in a batch (a last batch, from the first unrecorded segment):
    /// `placements[i][shard]` = the peer that stored it.
    #[serde(default)]
    pub placements: Vec<Vec<String>>,
    #[serde(default)]
    pub segments: Vec<crate::core::manifest::SegmentEntry>,
    #[serde(default)]
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
    /// Suspended (no new data) after too many answers that proved nothing.
    #[serde(default)]
    pub suspended: bool,
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
    /// The first segment the lists below cover (`GET /v2/files/{id}?first=F&count=C`; at
    /// most [`VIEW_SEGMENTS`] segments a view).
    #[serde(default)]
    pub first: u32,
    /// Segments the file has in each health state, over the whole file; absent when the view
    /// was asked without them (`&totals=false`: a download's windows, which need only their
    /// own segments, whatever the file's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<HealthTotals>,
    /// `placements[segment - first][shard]` = peer id.
    pub placements: Vec<Vec<String>>,
    pub peers: BTreeMap<String, PeerView>,
    /// Per segment: healthy shards (see `coordinator::repair`) and whether repair is queued.
    pub health: Vec<SegmentHealth>,
    /// `shard_states[segment][shard]`.
    pub shard_states: Vec<Vec<ShardState>>,
    /// A read grant for every peer holding a shard of the file, issued to the caller.
    #[serde(default)]
    pub grants: BTreeMap<String, Signed<ReadGrant>>,
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

/// Segments a view covers at most (one manifest page).
pub const VIEW_SEGMENTS: u32 = crate::core::manifest::PAGE_SEGMENTS;

/// A whole file's segments counted by health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthTotals {
    /// Every shard healthy.
    pub healthy: u64,
    /// Some shard not healthy, but above the repair threshold.
    pub degraded: u64,
    /// At or below the repair threshold (queued for repair).
    pub at_risk: u64,
    /// Fewer than k healthy shards.
    pub unreadable: u64,
    /// The fewest healthy shards of any segment.
    pub min_healthy: u32,
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
    /// Items (indices) the node let go on the coordinator's own notice (they are in its
    /// trash): a database restored from an older backup still places them here. They count
    /// as lost here (repair rebuilds them elsewhere), not as failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    Success,
    /// Wrong bytes, bad proof, bad signature, or "don't have it".
    Failure,
    /// No answer by the deadline.
    Offline,
    /// An answer that proves nothing either way (an error status, a reply that does not
    /// parse): counts towards suspension, not disqualification.
    Unknown,
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

/// Node → coordinator, signed: this peer wants to leave; move its shards first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExitRequest {
    /// The id of the coordinator it is meant for.
    pub coordinator: String,
    pub time: u64,
    /// Strictly increasing over the node's exit requests (their own sequence: another
    /// process signs them).
    pub seq: u64,
}

/// Coordinator → client (→ node): the holder may read shards of the upload `upload_id` from
/// node `peer_id` until `expires`. `upload_id` "*" (any shard) is issued only for the
/// coordinator's own use (repair).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadGrant {
    pub peer_id: String,
    pub upload_id: String,
    /// The account (or the coordinator) it was issued to, for the record.
    pub grantee: String,
    pub expires: u64,
}

/// The scope of a grant that reads any shard: the coordinator's own (repair).
pub const ANY_UPLOAD: &str = "*";

/// Client → coordinator, in a signed `DELETE /v2/files/{id}`: the owner token proves the
/// password besides the account's signature.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub owner_token: String,
}

/// What anyone may ask a coordinator about itself (`GET /v2/info`): clients sign their
/// requests for `coordinator_id`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    pub protocol: u32,
    pub coordinator_id: String,
    pub coordinator_key: String,
    /// `open`: any account may register; `invite`: only accounts an operator added.
    pub accounts: AccountAdmission,
    /// Bits of proof-of-work a new node's key must carry (`Heartbeat::pow`).
    #[serde(default)]
    pub node_pow_bits: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountAdmission {
    #[default]
    Open,
    Invite,
}

/// An account as the coordinator knows it (`GET /v2/account`, `account list`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountView {
    pub account_id: String,
    /// Bytes of files it may keep (plaintext sizes), committed and planned together.
    pub quota: u64,
    /// Plaintext bytes of its committed files.
    pub stored: u64,
    /// Plaintext bytes of its uploads planned but not yet committed.
    pub pending: u64,
    pub files: u64,
    pub created: u64,
    /// Bytes of its private namespace on the coordinator (the S3 gateway's encrypted names
    /// and records), counted against the quota with its files (0 in the operator's listing).
    #[serde(default)]
    pub names: u64,
}

/// An operator's request to a running coordinator, signed with the coordinator's own key
/// (only who holds its data directory can make one).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminRequest {
    pub action: AdminAction,
    pub time: u64,
    pub nonce: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "do")]
pub enum AdminAction {
    AddAccount {
        account: String,
        quota: Option<u64>,
    },
    RemoveAccount {
        account: String,
    },
    ListAccounts,
    AllowNode {
        peer: String,
    },
    DisallowNode {
        peer: String,
    },
    ListNodes,
    /// Ask every peer what it holds and rebuild what the database does not know.
    Recover,
    /// Every record of the database, to keep as a backup.
    Backup,
}

/// What an operator's command concerns: accounts, allowed node ids, or what a recovery found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AdminReply {
    pub accounts: Vec<AccountView>,
    pub nodes: Vec<String>,
    #[serde(default)]
    pub recovery: Option<RecoveryReport>,
    /// Every record, for `Backup`.
    #[serde(default)]
    pub backup: Vec<BackupRecord>,
}

/// One record of a coordinator's database, as a backup keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupRecord {
    pub table: String,
    pub key: String,
    /// The stored JSON text.
    pub value: String,
}

/// What a recovery from the network found: peers asked, shards they hold, files rebuilt from
/// manifest copies, placements filled in, and files found deleted after the database's
/// backup (by deletion notices of its own that nodes kept).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecoveryReport {
    pub peers: usize,
    pub shards: usize,
    pub files_recovered: usize,
    pub placements_filled: usize,
    #[serde(default)]
    pub files_deleted: usize,
}

/// Node → coordinator under `[security] node_admission = "allowlist"`: who may register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeAdmission {
    #[default]
    Open,
    Allowlist,
}

/// Coordinator → node (`POST /v2/notices`): what became of an upload or a file. Nodes
/// delete only what notices name, and only what nothing else needs (`store::shards`). Each
/// carries the coordinator's database generation (a random id made with the database) and
/// the next number of this node's own sequence: a node takes notices only from the database
/// it knows, and only newer than the last it took (no replay; nothing from a database
/// restored from an older backup until it is recovered).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Notice {
    pub peer_id: String,
    pub generation: String,
    pub seq: u64,
    pub event: NoticeEvent,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum NoticeEvent {
    /// The upload committed as the file, which needs these of its shards from this node;
    /// when `complete`, no more of the upload's shards will be named. Some nodes also keep
    /// the file's signed manifest copy, from which a coordinator can be rebuilt.
    Committed {
        upload_id: String,
        file_id: String,
        shard_ids: Vec<ShardId>,
        complete: bool,
        manifest: Option<Signed<ManifestCopy>>,
    },
    /// The upload expired without a commit.
    Abandoned { upload_id: String },
    /// The file no longer needs these of its shards from this node: it was `deleted` (then
    /// its manifest copy goes too), or repair moved them and their new copies are confirmed.
    Released { file_id: String, shard_ids: Vec<ShardId>, deleted: bool },
}

/// A committed file as the coordinator recorded it, signed by the coordinator and kept by a
/// few of its nodes: with the manifest (checked against the file id when read back) and
/// what only the coordinator knew, its owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestCopy {
    pub file_id: String,
    /// Hex of the canonical manifest.
    pub manifest: String,
    pub owner: String,
    pub owner_hash: String,
    pub upload_id: String,
    pub created: u64,
    /// Hex of each page of a version 3 manifest's segment table, when they fit
    /// ([`COPY_PAGES_BYTES`]): what recovery needs to place the shards again.
    #[serde(default)]
    pub pages: Vec<String>,
}

/// Bytes of segment-table pages a manifest copy carries at most (a file of up to about 6,000
/// segments); bigger files' copies carry only the root.
pub const COPY_PAGES_BYTES: usize = 4 << 20;

/// Node → coordinator, signed (`POST /v2/peers/damage`): shards its own scrubbing found
/// missing or corrupt (and dropped). The coordinator repairs them; it is no audit failure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DamageReport {
    pub coordinator: String,
    pub shard_ids: Vec<ShardId>,
    pub time: u64,
}

/// Client → coordinator, account-signed (`POST /v2/files/{id}/damage`): a node served these
/// shards of the file with bytes that do not match their ids. The coordinator audits it at
/// once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DamageClaim {
    pub peer_id: String,
    pub shard_ids: Vec<ShardId>,
    /// The segment of each shard, in the same order (optional: without it the coordinator
    /// looks the shards up in its index of who holds what, read at most seconds ago).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<u32>,
}

/// Coordinator → node, signed (`POST /v2/inventory`): a page of what you hold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InventoryRequest {
    pub peer_id: String,
    /// Shards after this id (None: from the start).
    pub after: Option<ShardId>,
    pub expires: u64,
    /// Also send the deletion notices kept that are numbered after this (first page only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletions_after: Option<u64>,
}

/// Node → coordinator: a page of its shards and the files that need them, the manifest
/// copies it keeps (first page only), and the coordinator generation and the last notice
/// number it took.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Inventory {
    pub shards: Vec<HeldShard>,
    pub manifests: Vec<Signed<ManifestCopy>>,
    pub generation: Option<String>,
    pub last_notice: u64,
    /// Whether more pages follow.
    pub more: bool,
    /// Deletion notices this node took numbered after the request's `deletions_after`: a
    /// coordinator restored from an older backup learns from them what was deleted since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletions: Vec<Signed<Notice>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldShard {
    pub shard_id: ShardId,
    pub len: u64,
    pub files: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

macro_rules! message {
    ($($t:ty => $kind:literal),* $(,)?) => {
        $(impl Message for $t {
            const KIND: &'static str = $kind;
        })*
    };
}
message! {
    Heartbeat => "heartbeat",
    ExitRequest => "exit",
    PutOrder => "put-order",
    Receipt => "receipt",
    Notice => "notice",
    NoticeTicket => "notice-ticket",
    ManifestCopy => "manifest-copy",
    InventoryRequest => "inventory",
    Challenge => "audit-challenge",
    AuditAnswer => "audit-answer",
    ReadGrant => "read-grant",
    Identified => "identify",
    DamageReport => "damage",
    AdminRequest => "admin",
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
for_peer!(InventoryRequest, expires);
for_peer!(ReadGrant, expires);

/// Coordinator → node, signed, in the header of a notice's POST: the body that follows, by
/// length and BLAKE3 hash (hex). A node reads bodies so vouched for with room of their own,
/// so strangers who declare large notice bodies and send them slowly do not hold notices up
/// (the notice's own signature is inside its body).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NoticeTicket {
    pub peer_id: String,
    pub len: u64,
    pub digest: String,
    pub expires: u64,
}

for_peer!(NoticeTicket, expires);

impl ForPeer for Notice {
    fn peer_id(&self) -> &str {
        &self.peer_id
    }
    /// Notices do not expire: the coordinator delivers them until they are taken, and taking
    /// one twice changes nothing.
    fn valid_until(&self) -> u64 {
        u64::MAX
    }
}

/// A node's own view of itself (`GET /v2/status` on a node).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub peer_id: String,
    pub address: String,
    pub capacity: u64,
    pub used: u64,
    pub shards: u64,
}

/// How many shards a request concerned (trashed by a notice, reported damaged).
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

/// The longest key of an account's namespace (`/v2/names/*`), in bytes: room for any S3 key
/// (1,024 bytes, every `/`-separated component encrypted on its own: about 40 bytes for
/// each, so 4,096 refused keys of 120 components).
pub const MAX_NAME_KEY: usize = 48 << 10;
/// The longest value of an account's namespace, in bytes (before base64).
pub const MAX_NAME_VALUE: usize = 4 << 20;
/// The most entries one namespace listing answers with.
pub const MAX_NAME_LIST: u32 = 1000;

/// One entry of an account's private namespace: an opaque key and an opaque value (base64).
/// The gateway keeps its encrypted bucket and object names and sealed records here; the
/// coordinator stores them without being able to read them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NameEntry {
    pub key: String,
    pub value: String,
}

/// `POST /v2/names/put`: stores `value` under `key`; with `if_absent`, only when the key is free.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NamePut {
    pub key: String,
    pub value: String,
    #[serde(default)]
    pub if_absent: bool,
}

/// The answer to a namespace put: whether the key was new.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NamePutReply {
    pub created: bool,
}

/// `POST /v2/names/get`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NameGet {
    pub key: String,
}

/// `POST /v2/names/list`: entries whose key starts with `prefix`, after `start_after`, in key
/// order, at most `limit` (≤ [`MAX_NAME_LIST`]); `keys_only` leaves the values empty.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NameList {
    pub prefix: String,
    #[serde(default)]
    pub start_after: String,
    pub limit: u32,
    #[serde(default)]
    pub keys_only: bool,
}

/// A page of a namespace listing; `more` when entries remain after the last one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NameListing {
    pub entries: Vec<NameEntry>,
    pub more: bool,
}

/// `POST /v2/names/delete`: removes these keys (at most [`MAX_NAME_LIST`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NameDelete {
    pub keys: Vec<String>,
}
