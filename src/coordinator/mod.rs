//! The coordinator: tracks peers (signed heartbeats), hands out placement plans with signed
//! put orders, checks receipts before it records a file, serves manifests and placements,
//! and deletes for the owner. Its workers keep data alive: `audit` (proofs of
//! retrievability and reputation), `repair` (rebuilding lost shards) and `gc` (collecting
//! garbage on nodes). It never sees plaintext, keys or names; only repair handles shards,
//! which are ciphertext checked against their ids.

mod audit;
mod browser;
mod gc;
mod repair;
mod stats;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::erasure::Shape;
use crate::http::{self, ApiError, ApiResult, ServerError, ServerHandle, ok, read_json};
use crate::identity::{Identity, Signed};
use crate::manifest::{Manifest, segment_count};
use crate::merkle::ShardId;
use crate::metrics::Metrics;
use crate::placement::{self, Candidate};
use crate::proto::*;
use crate::reputation::Beta;
use crate::store::Table;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};
use rayon::prelude::*;

/// Spare peers planned per segment beyond n, for shards whose first peer fails.
const SPARES: usize = 3;
/// Heartbeat clocks may differ from ours by this much.
const CLOCK_SKEW: u64 = 300;

/// Everything the coordinator knows of a peer. Fields added after version 1 default, so
/// older records keep loading.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PeerRecord {
    public_key: String,
    address: String,
    capacity: u64,
    used: u64,
    shards: u64,
    last_heartbeat: u64,
    last_time: u64,
    #[serde(default)]
    status: PeerStatus,
    #[serde(default)]
    audit: Beta,
    #[serde(default)]
    online: Beta,
    #[serde(default)]
    audits_passed: u32,
    /// Shards whose last audit failed: not counted healthy until a later audit passes them.
    #[serde(default)]
    failed_shards: Vec<ShardId>,
    /// A challenge that timed out, asked again so going quiet cannot dodge an audit.
    #[serde(default)]
    pending: Option<Challenge>,
    #[serde(default)]
    timeouts: u32,
}

impl PeerRecord {
    fn new(public_key: String) -> PeerRecord {
        PeerRecord {
            public_key,
            address: String::new(),
            capacity: 0,
            used: 0,
            shards: 0,
            last_heartbeat: 0,
            last_time: 0,
            status: PeerStatus::Vetting,
            audit: Beta::default(),
            online: Beta::default(),
            audits_passed: 0,
            failed_shards: Vec::new(),
            pending: None,
            timeouts: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct UploadRecord {
    #[serde(default)]
    created: u64,
    expires: u64,
    size: u64,
    k: u8,
    n: u8,
    segment_size: u32,
    peers: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct FileRecord {
    manifest: String,
    placements: Vec<Vec<String>>,
    owner_hash: String,
    created: u64,
}

impl FileRecord {
    fn parsed(&self) -> Option<Manifest> {
        Manifest::from_bytes(&hex::decode(&self.manifest).ok()?).ok()
    }

    /// Every (shard id, peer) this file has placed.
    fn placed_shards(&self) -> Vec<(ShardId, String)> {
        let Some(m) = self.parsed() else { return Vec::new() };
        m.segments
            .iter()
            .zip(&self.placements)
            .flat_map(|(seg, peers)| seg.shard_ids.iter().copied().zip(peers.iter().cloned()))
            .collect()
    }
}

struct State {
    identity: Identity,
    config: Config,
    peers: Table<PeerRecord>,
    uploads: Table<UploadRecord>,
    files: Table<FileRecord>,
    audits: Table<AuditRecord>,
    /// (file id, segment) pairs waiting for or under repair.
    repair_queue: Mutex<HashSet<(String, usize)>>,
    /// Outcomes of the last minute's audits, for the dashboard (the stored history is per peer).
    recent_audits: Mutex<std::collections::VecDeque<(u64, AuditOutcome)>>,
    /// Uploads from browsers in progress.
    browser_uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<browser::Upload>>>>,
    http: http::Client,
    metrics: Arc<Metrics>,
    counters: Counters,
    _db: sled::Db,
}

/// What the workers count, for /metrics and /v1/stats.
struct Counters {
    audits: IntCounterVec,
    repaired_shards: IntCounter,
    network: IntGaugeVec,
}

impl Counters {
    fn new(m: &Metrics) -> Counters {
        Counters {
            audits: m
                .add(IntCounterVec::new(Opts::new("audits_total", "Audits by outcome"), &["outcome"]).expect("valid")),
            repaired_shards: m
                .add(IntCounter::new("repaired_shards_total", "Shards rebuilt and re-placed").expect("valid")),
            network: m.add(stats::gauge_vec()),
        }
    }
}

impl State {
    fn is_online(&self, p: &PeerRecord) -> bool {
        now().saturating_sub(p.last_heartbeat) <= self.config.coordinator.heartbeat_timeout
    }

    /// Whether a peer may receive new shards: online, in good standing, not leaving.
    fn accepts_data(&self, p: &PeerRecord) -> bool {
        self.is_online(p)
            && matches!(p.status, PeerStatus::Vetting | PeerStatus::Active)
            && p.audit.score() >= self.config.security.min_reputation
    }

    /// Every shard each peer should hold, with its length.
    fn shards_by_peer(&self) -> HashMap<String, Vec<(ShardId, usize)>> {
        let mut held: HashMap<String, Vec<(ShardId, usize)>> = HashMap::new();
        for (_, f) in self.files.all() {
            let Some(m) = f.parsed() else { continue };
            for (i, (seg, peers)) in m.segments.iter().zip(&f.placements).enumerate() {
                let len = m.shard_len(i);
                for (id, peer) in seg.shard_ids.iter().zip(peers) {
                    held.entry(peer.clone()).or_default().push((*id, len));
                }
            }
        }
        held
    }

    /// Placement candidates. A peer still being vetted offers a quarter of its free space,
    /// so it holds only a limited share of new data until it has proven itself.
    fn candidates(&self, peers: &[(String, PeerRecord)], exclude: &HashSet<&String>) -> Vec<Candidate> {
        peers
            .iter()
            .filter(|(id, p)| self.accepts_data(p) && !exclude.contains(id))
            .map(|(id, p)| {
                let free = p.capacity.saturating_sub(p.used);
                Candidate { peer_id: id.clone(), free: if p.status == PeerStatus::Vetting { free / 4 } else { free } }
            })
            .collect()
    }
}

/// Starts a coordinator on `bind` with its state in `data_dir`.
pub async fn spawn(config: Config, data_dir: PathBuf, bind: SocketAddr) -> Result<ServerHandle, ServerError> {
    std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir { dir: data_dir.clone(), source })?;
    let identity =
        Identity::load_or_create(&data_dir).map_err(|source| ServerError::DataDir { dir: data_dir.clone(), source })?;
    let db_err = |source| ServerError::Db { dir: data_dir.clone(), source };
    let db = sled::open(data_dir.join("db")).map_err(db_err)?;
    let metrics = Metrics::new("coordinator");
    let state = Arc::new(State {
        identity,
        config,
        peers: Table::open(&db, "peers").map_err(db_err)?,
        uploads: Table::open(&db, "uploads").map_err(db_err)?,
        files: Table::open(&db, "files").map_err(db_err)?,
        audits: Table::open(&db, "audits").map_err(db_err)?,
        repair_queue: Mutex::new(HashSet::new()),
        browser_uploads: Mutex::new(HashMap::new()),
        recent_audits: Mutex::new(std::collections::VecDeque::new()),
        http: http::Client::default(),
        counters: Counters::new(&metrics),
        metrics: metrics.clone(),
        _db: db,
    });
    let listener = TcpListener::bind(bind).await.map_err(|source| ServerError::Bind { addr: bind, source })?;
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "coordinator listening");
    let workers = vec![
        tokio::spawn(audit::run(state.clone())),
        tokio::spawn(repair::run(state.clone())),
        tokio::spawn(gc::run(state.clone())),
    ];
    Ok(http::serve(listener, metrics, move |req| route(state.clone(), req), workers))
}

async fn route(s: Arc<State>, req: Request<Incoming>) -> ApiResult {
    let path = http::path_segments(&req);
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match (req.method().clone(), p.as_slice()) {
        (Method::GET, ["metrics"]) => {
            stats::refresh_gauges(&s);
            Ok(http::metrics_text(&s.metrics))
        }
        (Method::GET, ["v1", "stats"]) => ok(&stats::compute(&s)),
        (Method::POST, ["v1", "heartbeat"]) => heartbeat(&s, read_json(req, 64 * 1024).await?),
        (Method::GET, ["v1", "peers"]) => ok(&peer_views(&s)),
        (Method::POST, ["v1", "peers", "exit"]) => exit(&s, read_json(req, 64 * 1024).await?),
        (Method::GET, ["v1", "audits"]) => {
            let q = http::query(&req);
            let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
            ok(&audit::history(&s, q.get("peer").map(String::as_str), limit))
        }
        (Method::POST, ["v1", "uploads"]) => plan(&s, read_json(req, 64 * 1024).await?),
        (Method::POST, ["v1", "uploads", id, "commit"]) => {
            let id = id.to_string();
            commit(&s, &id, read_json(req, MAX_JSON_BODY).await?).await
        }
        (Method::GET, ["v1", "files"]) => ok(&list_files(&s)),
        (Method::GET, ["v1", "files", id]) => ok(&file_view(&s, id)?),
        (Method::GET, ["v1", "files", id, "manifest"]) => {
            let rec = file_record(&s, id)?;
            let bytes = hex::decode(rec.manifest).map_err(ApiError::internal)?;
            Ok(http::bytes("application/octet-stream", Bytes::from(bytes)))
        }
        (Method::DELETE, ["v1", "files", id]) => {
            let token = req.headers().get(OWNER_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            delete_file(&s, id, &token).await
        }
        (Method::POST, ["v1", "browser", "uploads"]) => browser::start(&s, read_json(req, 64 * 1024).await?),
        (Method::PUT, ["v1", "browser", "uploads", id, "segments", i]) => {
            let (id, i) = (id.to_string(), i.parse().map_err(|_| ApiError::bad_request("segment index"))?);
            browser::put_segment(&s, &id, i, req).await
        }
        (Method::POST, ["v1", "browser", "uploads", id, "commit"]) => {
            let id = id.to_string();
            browser::commit(&s, &id, read_json(req, 64 * 1024).await?).await
        }
        (Method::GET, ["v1", "files", id, "segments", i]) => {
            let (id, i) = (id.to_string(), i.parse().map_err(|_| ApiError::bad_request("segment index"))?);
            browser::sealed_segment(&s, &id, i).await
        }
        (Method::GET, []) => crate::web::asset("").ok_or_else(|| ApiError::internal("the web UI is missing")),
        (Method::GET, [file]) if !file.starts_with("v1") => {
            crate::web::asset(file).ok_or_else(|| ApiError::not_found(format!("no page {file}")))
        }
        _ => Err(ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path()))),
    }
}

fn view(s: &State, id: &str, p: &PeerRecord, placed: u64) -> PeerView {
    PeerView {
        peer_id: id.to_owned(),
        address: p.address.clone(),
        state: if s.is_online(p) { PeerState::Online } else { PeerState::Offline },
        status: p.status,
        reputation: p.audit.score(),
        online_score: p.online.score(),
        audits_passed: p.audits_passed,
        placed,
        capacity: p.capacity,
        used: p.used,
        shards: p.shards,
        last_heartbeat: p.last_heartbeat,
    }
}

/// Shards placed per peer, over every file.
fn placed_counts(s: &State) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for (_, f) in s.files.all() {
        for peer in f.placements.into_iter().flatten() {
            *counts.entry(peer).or_insert(0) += 1;
        }
    }
    counts
}

fn peer_views(s: &State) -> Vec<PeerView> {
    let placed = placed_counts(s);
    s.peers.all().iter().map(|(id, p)| view(s, id, p, placed.get(id).copied().unwrap_or(0))).collect()
}

fn exit(s: &State, signed: Signed<ExitRequest>) -> ApiResult {
    let req = signed.open().ok_or_else(|| ApiError::forbidden("exit request signature does not verify"))?;
    let id = signed.signer_id();
    if req.time + CLOCK_SKEW < now() {
        return Err(ApiError::forbidden("stale exit request"));
    }
    let updated = s
        .peers
        .update(&id, |p| {
            p.map(|mut p| {
                if p.public_key == signed.signer && matches!(p.status, PeerStatus::Vetting | PeerStatus::Active) {
                    p.status = PeerStatus::Exiting;
                }
                p
            })
        })
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no peer {id}")))?;
    tracing::info!(peer = %id, status = ?updated.status, "graceful exit requested");
    ok(&view(s, &id, &updated, placed_counts(s).get(&id).copied().unwrap_or(0)))
}

fn heartbeat(s: &State, signed: Signed<Heartbeat>) -> ApiResult {
    let hb = signed.open().ok_or_else(|| ApiError::forbidden("heartbeat signature does not verify"))?;
    let id = signed.signer_id();
    let t = now();
    if hb.time + CLOCK_SKEW < t || hb.time > t + CLOCK_SKEW {
        return Err(ApiError::forbidden(format!(
            "heartbeat time {} is too far from ours ({t}); check the clock",
            hb.time
        )));
    }
    if !(hb.address.starts_with("http://") || hb.address.starts_with("https://")) {
        return Err(ApiError::bad_request("address must be an http:// URL"));
    }
    let old = s.peers.get(&id).map_err(ApiError::internal)?;
    match &old {
        Some(o) if hb.time < o.last_time => return Err(ApiError::forbidden("replayed heartbeat")),
        None if s.peers.len() >= s.config.coordinator.max_peers as usize => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the coordinator has max_peers peers already"));
        }
        None => tracing::info!(peer = %id, address = %hb.address, "peer registered"),
        _ => {}
    }
    // Read-modify-write in one step: the audit worker updates the same record.
    s.peers
        .update(&id, |old| {
            let mut p = old.unwrap_or_else(|| PeerRecord::new(signed.signer.clone()));
            p.address = hb.address.clone();
            p.capacity = hb.capacity;
            p.used = hb.used;
            p.shards = hb.shards;
            p.last_heartbeat = t;
            p.last_time = p.last_time.max(hb.time);
            Some(p)
        })
        .map_err(ApiError::internal)?;
    ok(&HeartbeatReply { peer_id: id, coordinator_key: s.identity.public_key_hex() })
}

fn plan(s: &State, req: PlanRequest) -> ApiResult {
    ok(&make_plan(s, req)?)
}

fn make_plan(s: &State, req: PlanRequest) -> Result<Plan, ApiError> {
    let shape = Shape::new(req.k, req.n).map_err(|e| ApiError::bad_request(e.to_string()))?;
    crate::manifest::check_segment_size(req.segment_size).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = s.config.security.max_upload_size_mb;
    if limit > 0 && req.size > limit << 20 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("file of {} bytes is over this network's limit of {limit} MB", req.size),
        ));
    }
    let peers = s.peers.all();
    let online = s.candidates(&peers, &HashSet::new());
    let need = req.n as usize;
    if online.len() < need {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} peers are online and in good standing, {need} are needed for {}-of-{need} coding",
                online.len(),
                req.k
            ),
        ));
    }
    let segments = segment_count(req.size, req.segment_size);
    let shard_len = shape.shard_len(req.segment_size as usize) as u64;
    let layout = placement::plan(&online, segments as usize, need, SPARES, shard_len).ok_or_else(|| {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("fewer than {need} online peers have room for this file"),
        )
    })?;
    let upload_id = hex::encode(crate::crypto::Salt::random().0);
    let expires = now() + s.config.coordinator.upload_expiry;
    let used: HashSet<&String> = layout.iter().flatten().collect();
    let mut orders = BTreeMap::new();
    let mut addresses = BTreeMap::new();
    for (id, p) in &peers {
        if used.contains(id) {
            let order =
                PutOrder { upload_id: upload_id.clone(), peer_id: id.clone(), max_shard_len: shard_len, expires };
            orders.insert(id.clone(), s.identity.sign(&order));
            addresses.insert(id.clone(), p.address.clone());
        }
    }
    let rec = UploadRecord {
        created: now(),
        expires,
        size: req.size,
        k: req.k,
        n: req.n,
        segment_size: req.segment_size,
        peers: orders.keys().cloned().collect(),
    };
    s.uploads.insert(&upload_id, &rec).map_err(ApiError::internal)?;
    Ok(Plan { upload_id, expires, orders, addresses, segments: layout })
}

async fn commit(s: &State, upload_id: &str, c: Commit) -> ApiResult {
    let up = s
        .uploads
        .get(upload_id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no pending upload {upload_id} (expired or committed)")))?;
    if up.expires < now() {
        return Err(ApiError::new(StatusCode::GONE, "the upload expired before it was committed; upload again"));
    }
    if c.upload_id != upload_id {
        return Err(ApiError::bad_request("upload id in the body differs from the path"));
    }
    let bytes = hex::decode(&c.manifest).map_err(|_| ApiError::bad_request("manifest is not hex"))?;
    let m = Manifest::from_bytes(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if m.plaintext_size != up.size || m.shape.k != up.k || m.shape.n != up.n || m.segment_size != up.segment_size {
        return Err(ApiError::bad_request("manifest does not match the planned size, k, n or segment size"));
    }
    if c.owner_hash.len() != 64 || hex::decode(&c.owner_hash).is_err() {
        return Err(ApiError::bad_request("owner_hash must be 64 hex digits"));
    }
    // Every valid receipt: (shard id, peer) pairs vouched for by the peer's own key. A 1 GiB
    // upload brings 2,560 P-256 signatures: checked on all cores, off the async threads.
    let mut keys = HashMap::new();
    for r in &c.receipts {
        if let Entry::Vacant(e) = keys.entry(r.signer_id()) {
            let peer = s.peers.get(e.key()).map_err(ApiError::internal)?;
            e.insert(peer.map(|p| p.public_key));
        }
    }
    let allowed: HashSet<String> = up.peers.iter().cloned().collect();
    let (receipts, upload) = (c.receipts, upload_id.to_owned());
    let stored = tokio::task::spawn_blocking(move || {
        receipts
            .par_iter()
            .map(|r| {
                let signer = r.signer_id();
                let rec = keys
                    .get(&signer)
                    .and_then(|k| r.open_by(k.as_deref()?))
                    .ok_or_else(|| ApiError::forbidden("a receipt is not signed by a registered peer"))?;
                if rec.upload_id != upload || rec.peer_id != signer || !allowed.contains(&rec.peer_id) {
                    return Err(ApiError::forbidden(format!(
                        "receipt from {} is not for this upload's orders",
                        rec.peer_id
                    )));
                }
                Ok((rec.shard_id, rec.peer_id))
            })
            .collect::<Result<HashSet<(ShardId, String)>, ApiError>>()
    })
    .await
    .map_err(ApiError::internal)??;
    if c.placements.len() != m.segments.len() {
        return Err(ApiError::bad_request("placements must list every segment"));
    }
    for (i, (seg, peers)) in m.segments.iter().zip(&c.placements).enumerate() {
        if peers.len() != seg.shard_ids.len() || peers.iter().collect::<HashSet<_>>().len() != peers.len() {
            return Err(ApiError::bad_request(format!(
                "segment {i} must sit on {} distinct peers",
                seg.shard_ids.len()
            )));
        }
        for (j, (id, peer)) in seg.shard_ids.iter().zip(peers).enumerate() {
            if !stored.contains(&(*id, peer.clone())) {
                return Err(ApiError::forbidden(format!(
                    "no valid receipt for shard {j} of segment {i} on peer {peer}"
                )));
            }
        }
    }
    let file_id = m.file_id().to_string();
    let rec = FileRecord { manifest: c.manifest, placements: c.placements, owner_hash: c.owner_hash, created: now() };
    s.files.insert(&file_id, &rec).map_err(ApiError::internal)?;
    s.uploads.remove(upload_id).map_err(ApiError::internal)?;
    s.files.flush().await.map_err(ApiError::internal)?;
    tracing::info!(file = %file_id, size = m.plaintext_size, segments = m.segments.len(), "file committed");
    ok(&CommitReply { file_id })
}

fn file_record(s: &State, id: &str) -> Result<FileRecord, ApiError> {
    s.files.get(id).map_err(ApiError::internal)?.ok_or_else(|| ApiError::not_found(format!("no file {id}")))
}

fn summary(id: &str, rec: &FileRecord) -> Option<FileSummary> {
    let m = rec.parsed()?;
    Some(FileSummary {
        file_id: id.to_owned(),
        size: m.plaintext_size,
        segments: m.segments.len() as u64,
        k: m.shape.k,
        n: m.shape.n,
        created: rec.created,
    })
}

fn list_files(s: &State) -> Vec<FileSummary> {
    s.files.all().iter().filter_map(|(id, r)| summary(id, r)).collect()
}

fn file_view(s: &State, id: &str) -> Result<FileView, ApiError> {
    let rec = file_record(s, id)?;
    let summary = summary(id, &rec).ok_or_else(|| ApiError::internal("stored manifest does not parse"))?;
    let wanted: HashSet<&String> = rec.placements.iter().flatten().collect();
    let peers =
        wanted.into_iter().filter_map(|pid| Some((pid.clone(), view(s, pid, &s.peers.get(pid).ok()??, 0)))).collect();
    let health = repair::file_health(s, id, &rec);
    let records: HashMap<String, PeerRecord> = s.peers.all().into_iter().collect();
    let shard_states = rec
        .parsed()
        .map(|m| {
            m.segments
                .iter()
                .zip(&rec.placements)
                .map(|(seg, ps)| {
                    seg.shard_ids.iter().zip(ps).map(|(sid, p)| repair::classify(s, records.get(p), sid)).collect()
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(FileView { summary, placements: rec.placements, peers, health, shard_states })
}

async fn delete_file(s: &State, id: &str, token_hex: &str) -> ApiResult {
    let rec = file_record(s, id)?;
    let token = hex::decode(token_hex).map_err(|_| ApiError::forbidden("the owner token is missing or not hex"))?;
    if hex::encode(digest(&SHA256, &token)) != rec.owner_hash {
        return Err(ApiError::forbidden("wrong password for this file: not deleted"));
    }
    s.files.remove(id).map_err(ApiError::internal)?;
    s.files.flush().await.map_err(ApiError::internal)?;
    // Shards still placed by another file on the same peer (identical padding shards) stay.
    let keep: HashSet<(ShardId, String)> = s.files.all().iter().flat_map(|(_, other)| other.placed_shards()).collect();
    let mut by_peer: BTreeMap<String, Vec<ShardId>> = BTreeMap::new();
    for (sid, peer) in rec.placed_shards() {
        if !keep.contains(&(sid, peer.clone())) {
            by_peer.entry(peer).or_default().push(sid);
        }
    }
    // Online peers are told now, all at once; the others get the next live list (gc).
    let tell = by_peer.into_iter().filter_map(|(peer, ids)| {
        let p = s.peers.get(&peer).ok().flatten().filter(|p| s.is_online(p))?;
        let order = s.identity.sign(&DeleteOrder { peer_id: peer.clone(), shard_ids: ids, expires: now() + 600 });
        let url = format!("{}/v1/shards/delete", p.address);
        Some(async move {
            if let Err(e) = s.http.post_json(&url, &order).await.and_then(|r| r.json::<serde_json::Value>()) {
                tracing::warn!(peer = %peer, error = %e, "could not tell the peer to delete shards");
            }
        })
    });
    futures::future::join_all(tell).await;
    tracing::info!(file = %id, "file deleted");
    ok(&serde_json::json!({ "deleted": id }))
}
