//! A storage node: stores shards that come with a valid coordinator-signed put order,
//! checks them against their ids, answers with signed receipts, serves them back, answers
//! audits, deletes (into a trash) only what numbered coordinator notices name, scrubs its
//! shards, and sends signed heartbeats. It pins the coordinator's key on first registration. Routes and their handlers are in `routes`.

mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::OnceCell;

use crate::core::identity::Identity;
use crate::net::client::{self as http, HttpError};
use crate::net::metrics::Metrics;
use crate::net::server::{self, ServerError, ServerHandle, Shutdown};
use crate::proto::*;
use crate::store::identity as keyfile;
use crate::store::shards::{Observation, ShardStore, StoreError};
use crate::sys::clock::Clock;
use crate::sys::fs::write_durably;
use prometheus::{IntCounter, IntGauge};

/// What a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    /// Base URL clients use to reach this node; default `http://<bound address>`.
    pub advertise: Option<String>,
    pub coordinator: String,
    pub capacity: u64,
    pub heartbeat_interval: Duration,
    pub clock: Clock,
    /// Serve HTTPS with this configuration (see `net::tls`); None: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub limits: server::ConnectionLimits,
    /// Seconds a deleted shard stays in the trash, restorable, before it is removed.
    pub trash_retention: u64,
    /// Seconds to re-hash every shard once.
    pub scrub_interval: u64,
}

impl NodeOptions {
    /// Options from a configuration: capacity, intervals, TLS, limits, trash and scrubbing
    /// as `[node]`, `[tls]` and `[limits]` say; where the node keeps its data, listens and
    /// finds its coordinator as given.
    pub fn from_config(
        config: &crate::config::Config,
        data_dir: PathBuf,
        bind: SocketAddr,
        coordinator: String,
        clock: Clock,
    ) -> Result<NodeOptions, ServerError> {
        Ok(NodeOptions {
            data_dir,
            bind,
            advertise: None,
            coordinator,
            capacity: crate::config::gb_to_bytes(config.node.max_storage_gb),
            heartbeat_interval: Duration::from_secs(config.node.heartbeat_interval),
            clock,
            tls: crate::net::tls::server_config_from(config.tls.cert.as_deref(), config.tls.key.as_deref())?,
            limits: server::ConnectionLimits::from_parts(config.limits.connections()),
            trash_retention: config.node.trash_retention.saturating_mul(86_400),
            scrub_interval: config.node.scrub_interval,
        })
    }
}

struct State {
    identity: Identity,
    store: ShardStore,
    coordinator: String,
    address: String,
    key_file: PathBuf,
    /// The coordinator's public key (hex), pinned at first registration.
    coordinator_key: OnceCell<String>,
    http: http::Client,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Put orders already checked, by their exact header: one order covers every shard an
    /// upload sends here, and a P-256 check per shard was a tenth of a node's CPU.
    orders: Mutex<HashMap<String, PutOrder>>,
    /// Bytes stored under each upload since start, and when its orders expire (`PutOrder::max_bytes`).
    upload_bytes: Mutex<HashMap<String, routes::UploadBytes>>,
    /// Read grants already checked, by their exact header, for the same reason.
    grants: Mutex<HashMap<String, ReadGrant>>,
    /// Bits of proof-of-work the coordinator asks of a node key, once known.
    pow_bits: OnceCell<u32>,
    /// The coordinator's id (what reports name), once known.
    coordinator_id: OnceCell<String>,
    /// Notices are taken one at a time: each must be newer than the last.
    notices: tokio::sync::Mutex<()>,
    /// Bytes of notice bodies being read at once (see `routes::NOTICE_BUDGET`).
    notice_bytes: tokio::sync::Semaphore,
    /// Bytes of notice bodies nobody vouched for being read at once (see `routes::UNVOUCHED_BUDGET`).
    unvouched_notice_bytes: tokio::sync::Semaphore,
    /// Notice tickets taken (their signatures) until they expire: each is good once.
    tickets: Mutex<HashMap<String, u64>>,
    /// The last heartbeat's `seq`: each one is strictly greater.
    seq: std::sync::atomic::AtomicU64,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    shards: IntGauge,
    used_bytes: IntGauge,
    capacity_bytes: IntGauge,
}

/// The nonce of this node's proof-of-work, as strong as its coordinator asks: found once (on
/// a blocking thread) and kept in `identity.pow` beside the key.
async fn proof_of_work(s: &State) -> Result<u64, HeartbeatError> {
    let bits = match s.pow_bits.get() {
        Some(b) => *b,
        None => {
            let info: CoordinatorInfo = s.http.get(&format!("{}/v2/info", s.coordinator)).await?.json()?;
            let _ = s.coordinator_id.set(info.coordinator_id);
            *s.pow_bits.get_or_init(|| async { info.node_pow_bits }).await
        }
    };
    let file = s.key_file.with_file_name("identity.pow");
    let stored = std::fs::read_to_string(&file).ok().and_then(|t| t.trim().parse::<u64>().ok());
    let key = s.identity.public_key().to_vec();
    if let Some(n) = stored.filter(|n| crate::core::identity::pow_bits(&key, *n) >= bits) {
        return Ok(n);
    }
    let nonce = tokio::task::spawn_blocking(move || crate::core::identity::solve_pow(&key, bits))
        .await
        .map_err(|e| HeartbeatError::Pin { file: file.clone(), source: std::io::Error::other(e) })?;
    write_durably(&file, nonce.to_string().as_bytes()).map_err(|source| HeartbeatError::Pin { file, source })?;
    Ok(nonce)
}

/// Why a heartbeat did not register this node.
#[derive(Debug, thiserror::Error)]
enum HeartbeatError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(
        "the coordinator at {url} has key {found}, not the {pinned} this node registered with; refusing it \
         (delete {file} only if the coordinator was replaced on purpose)"
    )]
    WrongCoordinator { url: String, found: String, pinned: String, file: PathBuf },
    #[error("writing {file}")]
    Pin { file: PathBuf, source: std::io::Error },
}

/// Starts a node. Returns once it is listening and, if the coordinator answers, registered.
pub async fn spawn(opts: NodeOptions) -> Result<ServerHandle, ServerError> {
    let dir = opts.data_dir.clone();
    let dir_err = |source: Box<dyn std::error::Error + Send + Sync>| ServerError::DataDir { dir: dir.clone(), source };
    crate::sys::fs::create_private_dir(&dir).map_err(|e| dir_err(e.into()))?;
    let identity = keyfile::load_or_create(&dir).map_err(|e| dir_err(e.into()))?;
    let store = ShardStore::open(&dir, opts.capacity).map_err(|e| match e {
        StoreError::Db(source) => ServerError::Db { dir: dir.clone(), source: source.into() },
        other => dir_err(other.into()),
    })?;
    let tcp = TcpListener::bind(opts.bind).await.map_err(|source| ServerError::Bind { addr: opts.bind, source })?;
    let listener = server::Listener { tcp, tls: opts.tls, limits: opts.limits };
    let addr = listener.tcp.local_addr().map_err(|e| dir_err(e.into()))?;
    let key_file = dir.join("coordinator.pub");
    let pinned = OnceCell::new();
    if let Ok(k) = std::fs::read_to_string(&key_file) {
        let _ = pinned.set(k.trim().to_owned());
    }
    let metrics = Metrics::new("node");
    let state = Arc::new(State {
        identity,
        store,
        coordinator: opts.coordinator.trim_end_matches('/').to_owned(),
        address: opts.advertise.unwrap_or_else(|| format!("{}://{addr}", listener.scheme())),
        key_file,
        coordinator_key: pinned,
        http: http::Client::new(Duration::from_secs(10)),
        clock: opts.clock,
        orders: Mutex::new(HashMap::new()),
        upload_bytes: Mutex::new(HashMap::new()),
        grants: Mutex::new(HashMap::new()),
        seq: std::sync::atomic::AtomicU64::new(0),
        notices: tokio::sync::Mutex::new(()),
        notice_bytes: tokio::sync::Semaphore::new(routes::NOTICE_BUDGET),
        unvouched_notice_bytes: tokio::sync::Semaphore::new(routes::UNVOUCHED_BUDGET),
        tickets: Mutex::new(HashMap::new()),
        pow_bits: OnceCell::new(),
        coordinator_id: OnceCell::new(),
        bytes_in: metrics.add(IntCounter::new("shard_bytes_in_total", "Shard bytes stored").expect("valid")),
        bytes_out: metrics.add(IntCounter::new("shard_bytes_out_total", "Shard bytes served").expect("valid")),
        shards: metrics.add(IntGauge::new("shards", "Shards held").expect("valid")),
        used_bytes: metrics.add(IntGauge::new("used_bytes", "Bytes of shards held").expect("valid")),
        capacity_bytes: metrics.add(IntGauge::new("capacity_bytes", "Bytes offered").expect("valid")),
        metrics: metrics.clone(),
    });
    let signal = server::shutdown_signal();
    let beats = heartbeats(state.clone(), opts.heartbeat_interval, signal.1.clone());
    let trash = empty_trash(state.clone(), opts.trash_retention, signal.1.clone());
    let scrubbing = scrub(state.clone(), opts.scrub_interval, signal.1.clone());
    tracing::info!(peer = %state.identity.peer_id(), %addr, "node listening");
    let s2 = state.clone();
    let handle = server::serve(
        listener,
        (metrics, routes::label),
        move |req| routes::route(s2.clone(), req),
        signal,
        vec![Box::pin(beats), Box::pin(trash), Box::pin(scrubbing)],
    );
    // Registering needs the node to answer the coordinator's dial-back: it serves first.
    if let Err(e) = heartbeat(&state).await {
        tracing::warn!(error = %e, "first heartbeat failed; retrying in the background");
    }
    Ok(handle)
}

/// Sends a heartbeat every `interval` until shutdown.
async fn heartbeats(s: Arc<State>, interval: Duration, mut shutdown: Shutdown) {
    while !shutdown.sleep(interval).await {
        match heartbeat(&s).await {
            Ok(()) => report_damage(&s).await,
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Sends one signed heartbeat and pins (or checks) the coordinator's key.
async fn heartbeat(s: &Arc<State>) -> Result<(), HeartbeatError> {
    let pow = proof_of_work(s).await?;
    let time = s.clock.now();
    let next = |last: u64| Some((last + 1).max(time * 1000));
    let seq = s.seq.fetch_update(Ordering::SeqCst, Ordering::SeqCst, next).map_or(0, |last| next(last).unwrap_or(0));
    let hb = Heartbeat {
        address: s.address.clone(),
        capacity: s.store.capacity(),
        // The trash takes room until it is emptied: a coordinator that did not count it
        // placed shards on nodes full of a week's junk.
        used: s.store.used() + s.store.trashed(),
        shards: s.store.count(),
        time,
        seq,
        pow,
    };
    let reply: HeartbeatReply =
        s.http.post_json(&format!("{}/v2/heartbeat", s.coordinator), &s.identity.sign(&hb)).await?.json()?;
    observe_coordinator(s, &reply).await;
    match s.coordinator_key.get() {
        Some(k) if *k != reply.coordinator_key => Err(HeartbeatError::WrongCoordinator {
            url: s.coordinator.clone(),
            found: reply.coordinator_key,
            pinned: k.clone(),
            file: s.key_file.clone(),
        }),
        Some(_) => Ok(()),
        None => {
            write_durably(&s.key_file, reply.coordinator_key.as_bytes())
                .map_err(|source| HeartbeatError::Pin { file: s.key_file.clone(), source })?;
            let _ = s.coordinator_key.set(reply.coordinator_key);
            Ok(())
        }
    }
}

/// Remembers the coordinator database's generation the first reply names; a later one naming
/// another database is reported (its deletions are refused).
async fn observe_coordinator(s: &Arc<State>, reply: &HeartbeatReply) {
    // Notices change the mark too: one at a time.
    let _one_at_a_time = s.notices.lock().await;
    let Ok(mut mark) = s.store.mark() else { return };
    let before = mark.clone();
    if mark.observe(&reply.generation) == Observation::OtherDatabase {
        tracing::error!(
            generation = %reply.generation,
            "the coordinator's database is not the one this node registered with: its notices are refused until it \
             is recovered from the network (p2pstore coordinator recover)"
        );
    }
    if mark == before {
        return;
    }
    let s2 = s.clone();
    let stored = tokio::task::spawn_blocking(move || s2.store.set_mark(&mark).and_then(|()| s2.store.sync())).await;
    if let Err(e) = stored.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
        tracing::warn!(error = %e, "could not record the coordinator's generation");
    }
}

/// Bytes per second scrubbing reads at most.
const SCRUB_RATE: u64 = 50_000_000;

/// Re-reads and re-hashes every shard once per `interval` (paced, and at most
/// [`SCRUB_RATE`]): shards found missing or corrupt are dropped and reported, so the
/// coordinator rebuilds them elsewhere before an audit or a reader trips on them.
async fn scrub(s: Arc<State>, interval: u64, mut shutdown: Shutdown) {
    loop {
        let count = s.store.count().max(1);
        let pace = Duration::from_secs_f64(interval as f64 / count as f64);
        let mut after = None;
        let mut damaged = false;
        loop {
            let s2 = s.clone();
            let page = tokio::task::spawn_blocking(move || s2.store.inventory(after.as_ref(), 256)).await;
            let Ok(Ok(page)) = page else { break };
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            for (id, e) in page {
                let read = Duration::from_secs_f64(e.len as f64 / SCRUB_RATE as f64);
                if shutdown.sleep(pace.max(read)).await {
                    return;
                }
                let s2 = s.clone();
                if let Ok(Ok(Some(false))) = tokio::task::spawn_blocking(move || s2.store.verify(&id)).await {
                    tracing::warn!(shard = %id, "scrubbing found a damaged shard; dropped, and reported for repair");
                    if let Err(e) = s.store.quarantine(&id) {
                        tracing::warn!(shard = %id, error = %e, "could not drop a damaged shard");
                    }
                    damaged = true;
                }
            }
            if std::mem::take(&mut damaged) {
                report_damage(&s).await;
            }
        }
        if shutdown.sleep(pace).await {
            return;
        }
    }
}

/// Tells the coordinator which shards were found damaged here, [`MAX_DAMAGE_IDS`] at most
/// per report, until it has taken them all: the store keeps the list, so a report lost while
/// the coordinator was away goes again with a later heartbeat (or after a restart).
async fn report_damage(s: &State) {
    let Some(coordinator) = s.coordinator_id.get() else { return };
    let url = format!("{}/v2/peers/damage", s.coordinator);
    loop {
        let shard_ids = match s.store.unreported(MAX_DAMAGE_IDS) {
            Ok(ids) if ids.is_empty() => return,
            Ok(ids) => ids,
            Err(e) => return tracing::warn!(error = %e, "could not read the damaged shards to report"),
        };
        let report = DamageReport { coordinator: coordinator.clone(), shard_ids, time: s.clock.now() };
        if let Err(e) = s.http.post_json(&url, &s.identity.sign(&report)).await.and_then(|r| r.ok()) {
            return tracing::warn!(error = %e, "reporting damaged shards failed; trying again with a later heartbeat");
        }
        if let Err(e) = s.store.reported(&report.shard_ids) {
            return tracing::warn!(error = %e, "could not record the damaged shards as reported");
        }
    }
}

/// How long a node keeps the deletion notices it took: a coordinator restored from a backup
/// at most this old learns from them what was deleted since (`coordinator recover`).
const DELETIONS_KEPT: u64 = 90 * 86_400;

/// Empties the trash of what was put there longer ago than the retention, and forgets
/// deletion notices older than [`DELETIONS_KEPT`], every hour.
async fn empty_trash(s: Arc<State>, retention: u64, mut shutdown: Shutdown) {
    while !shutdown.sleep(Duration::from_secs(3600).min(Duration::from_secs(retention.max(1)))).await {
        let s2 = s.clone();
        let (cutoff, forget) = (s.clock.now().saturating_sub(retention), s.clock.now().saturating_sub(DELETIONS_KEPT));
        let emptied = move || s2.store.forget_deletions(forget).and_then(|_| s2.store.empty_trash(cutoff));
        match tokio::task::spawn_blocking(emptied).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "trash emptied"),
            Ok(Err(e)) => tracing::warn!(error = %e, "emptying the trash failed"),
            Err(e) => tracing::warn!(error = %e, "emptying the trash failed"),
        }
    }
}

/// Why a node's request to leave was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    #[error(transparent)]
    Identity(#[from] keyfile::IdentityError),
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// Asks the coordinator to let the node whose identity is in `data_dir` leave: its shards
/// are moved to other peers, after which it shows as `exited`.
pub async fn request_exit(data_dir: &Path, coordinator: &str, clock: &Clock) -> Result<PeerView, ExitError> {
    let identity = keyfile::load_or_create(data_dir)?;
    let base = coordinator.trim_end_matches('/');
    let h = http::Client::default();
    let info: CoordinatorInfo = h.get(&format!("{base}/v2/info")).await?.json()?;
    let time = clock.now();
    let req = ExitRequest { coordinator: info.coordinator_id, time, seq: time };
    Ok(h.post_json(&format!("{base}/v2/peers/exit"), &identity.sign(&req)).await?.json()?)
}
