//! The coordinator: tracks peers (signed heartbeats), hands out placement plans with signed
//! put orders, checks receipts before it records a file, serves manifests and placements,
//! and deletes for the owner. Its workers keep data alive: `audit` (proofs of
//! retrievability and reputation), `repair` (rebuilding lost shards) and `gc` (collecting
//! garbage on nodes). It never sees plaintext, keys or names; only repair and the browser
//! path handle shards, which are ciphertext checked against their ids.
//!
//! Layout: `state` (what it knows, and the questions asked of it), `routes` (requests parsed
//! into a `Route`, then dispatched), one module per kind of handler (`peers`, `uploads`,
//! `files`, `browser`, `stats`, `web`), and one per worker (`audit`, `repair`, `gc`).

mod accounts;
mod admission;
mod audit;
mod auth;
mod backup;
mod browser;
mod files;
mod gc;
mod limits;
mod names;
mod notices;
mod peers;
mod recovery;
mod repair;
mod routes;
mod state;
mod stats;
mod uploads;
mod web;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

use crate::config::Config;
use crate::net::client as http;
use crate::net::metrics::Metrics;
use crate::net::server::{self, ServerError, ServerHandle};
use crate::store::{Table, identity as keyfile};
use crate::sys::clock::Clock;
use state::{Counters, State};

pub use accounts::AdminError;
pub use audit::AUDIT_ITEMS;
pub use backup::restore;

/// Applies an operator's account command to the database of the coordinator whose data
/// directory is `data_dir`, which must not be running (see [`admin_request`] for one that is).
pub fn admin_offline(
    data_dir: &Path,
    action: crate::proto::AdminAction,
    config: &Config,
    clock: &Clock,
) -> Result<crate::proto::AdminReply, AdminError> {
    let db_err = |e: crate::store::DbError| AdminError::Record(e.into());
    let db = open_db(data_dir).map_err(db_err)?;
    let accounts = Table::open(&db, "accounts").map_err(db_err)?;
    let owned = Table::open(&db, "owned").map_err(db_err)?;
    let nodes = Table::open(&db, "allowed_nodes").map_err(db_err)?;
    let tables = accounts::AdminTables { accounts: &accounts, owned: &owned, uploads: None, nodes: &nodes, db: &db };
    accounts::apply(&tables, action, config.security.default_quota(), clock.now())
}

/// An operator's account command for the running coordinator whose data directory (and so
/// key) is `data_dir`, signed with that key.
pub fn admin_request(
    data_dir: &Path,
    action: crate::proto::AdminAction,
    clock: &Clock,
) -> Result<crate::proto::Signed<crate::proto::AdminRequest>, keyfile::IdentityError> {
    use crate::proto::Sign;
    let key = keyfile::load_or_create(data_dir)?;
    let nonce = hex::encode(crate::core::crypto::Salt::random().0);
    Ok(key.sign(&crate::proto::AdminRequest { action, time: clock.now(), nonce }))
}

/// The file in a running coordinator's data directory that holds the port it listens on.
pub const LISTENING: &str = "listening";

/// Starts a coordinator on `bind` with its state in `data_dir`, reading time from `clock`.
pub async fn spawn(
    config: Config,
    data_dir: PathBuf,
    bind: SocketAddr,
    clock: Clock,
) -> Result<ServerHandle, ServerError> {
    let dir_err =
        |source: Box<dyn std::error::Error + Send + Sync>| ServerError::DataDir { dir: data_dir.clone(), source };
    crate::sys::fs::create_private_dir(&data_dir).map_err(|e| dir_err(e.into()))?;
    let identity = keyfile::load_or_create(&data_dir).map_err(|e| dir_err(e.into()))?;
    let db_err = |e: crate::store::DbError| ServerError::Db { dir: data_dir.clone(), source: e.into() };
    let db = open_db(&data_dir).map_err(db_err)?;
    let metrics = Metrics::new("coordinator");
    let config_limits = config.limits.clone();
    let fresh = db.open_tree("meta").map_err(|e| db_err(e.into()))?.is_empty()
        && db.open_tree("files").map_err(|e| db_err(e.into()))?.is_empty();
    let (recovery_queue, recovery_rx) = tokio::sync::mpsc::unbounded_channel();
    let audit_timeout = std::time::Duration::from_secs(config.audit.timeout);
    let state = Arc::new(State {
        identity,
        config,
        clock,
        peers: Table::open(&db, "peers").map_err(db_err)?,
        uploads: Table::open(&db, "uploads").map_err(db_err)?,
        files: Table::open(&db, "files").map_err(db_err)?,
        segments: Table::open(&db, "segments").map_err(db_err)?,
        audits: Table::open(&db, "audits").map_err(db_err)?,
        accounts: Table::open(&db, "accounts").map_err(db_err)?,
        owned: Table::open(&db, "owned").map_err(db_err)?,
        nonces: Table::open(&db, "nonces").map_err(db_err)?,
        allowed_nodes: Table::open(&db, "allowed_nodes").map_err(db_err)?,
        banned: Table::open(&db, "banned").map_err(db_err)?,
        meta: Table::open(&db, "meta").map_err(db_err)?,
        outbox: Table::open(&db, "outbox").map_err(db_err)?,
        names: db.open_tree("names").map_err(|e| db_err(e.into()))?,
        receipts: Arc::default(),
        outbox_ready: tokio::sync::Notify::new(),
        delivering: Mutex::new(HashMap::new()),
        recovering: std::sync::atomic::AtomicBool::new(fresh),
        started_empty: fresh,
        deleted: db.open_tree("deleted").map_err(|e| db_err(e.into()))?,
        recovery_queue,
        db: db.clone(),
        durable: crate::store::GroupCommit::new(),
        repair_queue: Mutex::new(HashSet::new()),
        browser_uploads: Mutex::new(HashMap::new()),
        recent_audits: Mutex::new(VecDeque::new()),
        audit_log: Mutex::new(VecDeque::new()),
        urgent_audits: Mutex::new(VecDeque::new()),
        http: http::Client::default(),
        audit_http: http::Client::new(audit_timeout),
        counters: Counters::new(&metrics),
        metrics: metrics.clone(),
        placed_cache: Mutex::new(None),
        held_index: Mutex::new(None),
        usage_kept: Mutex::new((0, HashMap::new())),
        names_kept: Mutex::new(HashMap::new()),
        damage_later: Mutex::new(HashMap::new()),
        placed_walk: Mutex::new(()),
        health_cache: Mutex::new(None),
        totals_cache: Mutex::new(HashMap::new()),
        dial_backs: admission::DialBacks::new(),
        limits: limits::Limits::new(&config_limits),
        browser_turns: tokio::sync::Semaphore::new(2),
        segment_budget: Arc::new(tokio::sync::Semaphore::new(browser::SEGMENT_BUDGET_MIB as usize)),
        segment_shares: Mutex::new(HashMap::new()),
    });
    audit::load_log(&state);
    files::move_placements_to_rows(&state).map_err(|e| ServerError::Db { dir: data_dir.clone(), source: e.into() })?;
    notices::generation(&state).map_err(|e| ServerError::Db { dir: data_dir.clone(), source: e.into() })?;
    // Nodes remember the generation the first heartbeat reply names: it is durable first.
    state.sync().await.map_err(|e| ServerError::Db { dir: data_dir.clone(), source: e.into() })?;
    let tls = crate::net::tls::server_config_from(state.config.tls.cert.as_deref(), state.config.tls.key.as_deref())?;
    let tcp = TcpListener::bind(bind).await.map_err(|source| ServerError::Bind { addr: bind, source })?;
    let limits = server::ConnectionLimits::from_parts(state.config.limits.connections());
    let listener = server::Listener { tcp, tls, limits };
    let addr = listener.tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%addr, scheme = listener.scheme(), "coordinator listening");
    // Where the operator's commands for this data directory find it (whatever port it got).
    if let Ok(a) = listener.tcp.local_addr() {
        std::fs::write(data_dir.join(LISTENING), a.port().to_string()).map_err(|e| dir_err(e.into()))?;
    }
    let signal = server::shutdown_signal();
    let stop = &signal.1;
    let workers = vec![
        Box::pin(audit::run(state.clone(), stop.clone())) as _,
        Box::pin(repair::run(state.clone(), stop.clone())) as _,
        Box::pin(gc::run(state.clone(), stop.clone())) as _,
        Box::pin(notices::run(state.clone(), stop.clone())) as _,
        Box::pin(recovery::run(state.clone(), recovery_rx, stop.clone())) as _,
    ];
    // Blocking steps of aborted tasks (a flush, a scan) may still hold the state, and with it
    // the database's lock, when the tasks have ended: a restart in the same process waits.
    let held = Arc::downgrade(&state);
    let released = async move {
        for _ in 0..1000 {
            if held.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::warn!("shutdown: the database is still in use after 10 s");
    };
    let handler = move |req| routes::route(state.clone(), req);
    Ok(server::serve(listener, (metrics, routes::label), handler, signal, workers).then(released))
}

/// The coordinator's page cache: its hot rows (peers, pending uploads, the files being read
/// or repaired) fit many times over; the rest is read from disk when a worker scans it.
const DB_CACHE: u64 = 128 << 20;

fn open_db(data_dir: &Path) -> Result<sled::Db, crate::store::DbError> {
    Ok(crate::store::open_db(&data_dir.join("db"), DB_CACHE)?)
}

/// What `p2pstore coordinator check` found: a line per table and per unreadable record.
pub struct CheckReport {
    pub lines: Vec<String>,
    pub undecodable: usize,
}

/// Reads every record of the coordinator whose data directory is `data_dir` (which must not
/// be running: the database admits one process).
pub fn check(data_dir: &Path) -> Result<CheckReport, crate::store::DbError> {
    let db = open_db(data_dir)?;
    let mut report = CheckReport { lines: Vec::new(), undecodable: 0 };
    macro_rules! scan {
        ($t:ty, $name:literal) => {{
            let table: Table<$t> = Table::open(&db, $name)?;
            let scan = table.scan()?;
            report.lines.push(format!(
                "{:<8} {} records, {} unreadable",
                $name,
                scan.records.len() + scan.errors.len(),
                scan.errors.len()
            ));
            report.undecodable += scan.errors.len();
            report.lines.extend(scan.errors.iter().map(|e| format!("  {e}")));
        }};
    }
    scan!(state::PeerRecord, "peers");
    scan!(state::FileRecord, "files");
    scan!(state::SegmentRow, "segments");
    scan!(state::UploadRecord, "uploads");
    scan!(crate::proto::AuditRecord, "audits");
    scan!(state::AccountRecord, "accounts");
    scan!(state::OwnedRecord, "owned");
    scan!(state::NonceRecord, "nonces");
    scan!(state::AllowedNode, "allowed_nodes");
    scan!(state::BannedPeer, "banned");
    scan!(notices::MetaRecord, "meta");
    scan!(notices::OutboxRecord, "outbox");
    Ok(report)
}
