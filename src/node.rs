//! A storage node: stores shards that come with a valid coordinator-signed put order,
//! checks them against their ids, answers with signed receipts, serves them back, and sends
//! signed heartbeats. It pins the coordinator's key on first registration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::OnceCell;

use crate::http::{self, ApiError, ApiResult, ServerError, ServerHandle, ok, read_body_aligned, read_json};
use crate::identity::{Identity, Signed};
use crate::merkle::{self, ShardId};
use crate::metrics::Metrics;
use crate::proto::*;
use crate::store::{ShardStore, StoreError, write_durably};
use prometheus::{IntCounter, IntGaugeVec, Opts};

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
    metrics: Arc<Metrics>,
    /// Put orders already checked, by their exact header: one order covers every shard an
    /// upload sends here, and a P-256 check per shard was a tenth of a node's CPU.
    orders: Mutex<HashMap<String, PutOrder>>,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    gauges: IntGaugeVec,
}

/// Starts a node. Returns once it is listening and, if the coordinator answers, registered.
pub async fn spawn(opts: NodeOptions) -> Result<ServerHandle, ServerError> {
    let dir = opts.data_dir.clone();
    let dir_err = |source| ServerError::DataDir { dir: dir.clone(), source };
    std::fs::create_dir_all(&dir).map_err(dir_err)?;
    let identity = Identity::load_or_create(&dir).map_err(dir_err)?;
    let store = ShardStore::open(&dir, opts.capacity).map_err(|e| match e {
        StoreError::Db(source) => ServerError::Db { dir: dir.clone(), source },
        other => ServerError::DataDir { dir: dir.clone(), source: std::io::Error::other(other.to_string()) },
    })?;
    let listener =
        TcpListener::bind(opts.bind).await.map_err(|source| ServerError::Bind { addr: opts.bind, source })?;
    let addr = listener.local_addr().map_err(dir_err)?;
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
        address: opts.advertise.unwrap_or_else(|| format!("http://{addr}")),
        key_file,
        coordinator_key: pinned,
        http: http::Client::new(Duration::from_secs(10)),
        orders: Mutex::new(HashMap::new()),
        bytes_in: metrics.add(IntCounter::new("shard_bytes_in_total", "Shard bytes stored").expect("valid")),
        bytes_out: metrics.add(IntCounter::new("shard_bytes_out_total", "Shard bytes served").expect("valid")),
        gauges: metrics.add(
            IntGaugeVec::new(Opts::new("store", "Shards held and bytes used and offered"), &["what"]).expect("valid"),
        ),
        metrics: metrics.clone(),
    });
    if let Err(e) = heartbeat(&state).await {
        tracing::warn!(error = %e, "first heartbeat failed; retrying in the background");
    }
    let hb_state = state.clone();
    let beat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(opts.heartbeat_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = heartbeat(&hb_state).await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    });
    tracing::info!(peer = %state.identity.peer_id(), %addr, "node listening");
    Ok(http::serve(listener, metrics, move |req| route(state.clone(), req), vec![beat]))
}

/// Sends one signed heartbeat and pins (or checks) the coordinator's key.
async fn heartbeat(s: &State) -> Result<(), String> {
    let hb = Heartbeat {
        address: s.address.clone(),
        capacity: s.store.capacity(),
        used: s.store.used(),
        shards: s.store.count(),
        time: now(),
    };
    let reply: HeartbeatReply =
        s.http.post_json(&format!("{}/v1/heartbeat", s.coordinator), &s.identity.sign(&hb)).await?.json()?;
    match s.coordinator_key.get() {
        Some(k) if *k != reply.coordinator_key => Err(format!(
            "the coordinator at {} has key {}, not the {} this node registered with; refusing it \
             (delete {} only if the coordinator was replaced on purpose)",
            s.coordinator,
            reply.coordinator_key,
            k,
            s.key_file.display()
        )),
        Some(_) => Ok(()),
        None => {
            write_durably(&s.key_file, reply.coordinator_key.as_bytes()).map_err(|e| e.to_string())?;
            let _ = s.coordinator_key.set(reply.coordinator_key);
            Ok(())
        }
    }
}

/// Runs disk- or CPU-bound work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?
}

fn shard_id(hex: &str) -> Result<ShardId, ApiError> {
    ShardId::from_hex(hex).ok_or_else(|| ApiError::bad_request("a shard id is 64 hex digits"))
}

async fn route(s: Arc<State>, req: Request<Incoming>) -> ApiResult {
    let path = http::path_segments(&req);
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match (req.method().clone(), p.as_slice()) {
        (Method::GET, ["metrics"]) => {
            s.gauges.with_label_values(&["shards"]).set(s.store.count() as i64);
            s.gauges.with_label_values(&["used_bytes"]).set(s.store.used() as i64);
            s.gauges.with_label_values(&["capacity_bytes"]).set(s.store.capacity() as i64);
            Ok(http::metrics_text(&s.metrics))
        }
        (Method::GET, ["v1", "status"]) => ok(&serde_json::json!({
            "peer_id": s.identity.peer_id(),
            "address": s.address,
            "capacity": s.store.capacity(),
            "used": s.store.used(),
            "shards": s.store.count(),
        })),
        (Method::PUT, ["v1", "shards", id]) => {
            let id = shard_id(id)?;
            put_shard(&s, id, req).await
        }
        (Method::GET, ["v1", "shards", id]) => {
            let id = shard_id(id)?;
            let s2 = s.clone();
            let data = blocking(move || s2.store.get(&id).map_err(ApiError::internal)).await?;
            data.map(|b| {
                s.bytes_out.inc_by(b.len() as u64);
                http::bytes("application/octet-stream", b)
            })
            .ok_or_else(|| ApiError::not_found(format!("no shard {id} here")))
        }
        (Method::POST, ["v1", "shards", "delete"]) => delete(&s, read_json(req, MAX_JSON_BODY).await?).await,
        (Method::POST, ["v1", "audit"]) => audit(&s, read_json(req, 64 * 1024).await?).await,
        (Method::POST, ["v1", "gc"]) => collect_garbage(&s, read_json(req, MAX_JSON_BODY).await?).await,
        _ => Err(ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path()))),
    }
}

fn coordinator_key(s: &State) -> Result<&str, ApiError> {
    s.coordinator_key.get().map(String::as_str).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this node has not registered with a coordinator yet")
    })
}

async fn put_shard(s: &Arc<State>, id: ShardId, req: Request<Incoming>) -> ApiResult {
    let header = req
        .headers()
        .get(ORDER_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::forbidden(format!("a shard PUT needs a signed put order in {ORDER_HEADER}")))?;
    let order = put_order(s, header)?;
    let limit = usize::try_from(order.max_shard_len).unwrap_or(usize::MAX);
    // Hashed as it arrives (BLAKE3 runs at ~6 GB/s, so no frame holds a thread for long).
    let mut hasher = blake3::Hasher::new();
    let body = read_body_aligned(req, limit, |d| {
        hasher.update(d);
    })
    .await?;
    if ShardId::from(hasher.finalize()) != id {
        return Err(ApiError::bad_request(format!("the bytes do not hash to shard id {id}")));
    }
    let s2 = s.clone();
    let len = body.len() as u64;
    blocking(move || {
        s2.store.put(&id, &body).map_err(|e| match e {
            StoreError::Full { .. } => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
            other => ApiError::internal(other),
        })
    })
    .await?;
    s.bytes_in.inc_by(len);
    let receipt = Receipt { upload_id: order.upload_id, shard_id: id, len, peer_id: s.identity.peer_id() };
    ok(&s.identity.sign(&receipt))
}

/// The put order in `header`, checked by [`addressed_to_me`] once and remembered until it
/// expires.
fn put_order(s: &State, header: &str) -> Result<PutOrder, ApiError> {
    let known = s.orders.lock().expect("not poisoned").get(header).cloned();
    let order = match known {
        Some(o) => o,
        None => {
            let signed: Signed<PutOrder> =
                serde_json::from_str(header).map_err(|e| ApiError::forbidden(format!("malformed put order: {e}")))?;
            let o = addressed_to_me(s, &signed, "put order")?;
            let mut orders = s.orders.lock().expect("not poisoned");
            if orders.len() >= MAX_KNOWN_ORDERS {
                let t = now();
                orders.retain(|_, o| o.valid_until() >= t);
                if orders.len() >= MAX_KNOWN_ORDERS {
                    orders.clear();
                }
            }
            orders.insert(header.to_owned(), o.clone());
            o
        }
    };
    if order.valid_until() < now() {
        return Err(ApiError::forbidden("the put order has expired"));
    }
    Ok(order)
}

/// Put orders remembered at once: far more than uploads running at the same time.
const MAX_KNOWN_ORDERS: usize = 1024;

/// Opens a message only if this node's coordinator signed it, for this peer, and it is
/// still valid: every instruction a node acts on passes here.
fn addressed_to_me<T: serde::de::DeserializeOwned + ForPeer>(
    s: &State,
    signed: &Signed<T>,
    what: &str,
) -> Result<T, ApiError> {
    let m = signed
        .open_by(coordinator_key(s)?)
        .ok_or_else(|| ApiError::forbidden(format!("the {what} is not signed by this node's coordinator")))?;
    if m.peer_id() != s.identity.peer_id() {
        return Err(ApiError::forbidden(format!("the {what} is for another peer")));
    }
    if m.valid_until() < now() {
        return Err(ApiError::forbidden(format!("the {what} has expired")));
    }
    Ok(m)
}

/// Answers a coordinator's challenge with a Merkle proof per chunk (None: not held), signed.
async fn audit(s: &Arc<State>, signed: Signed<Challenge>) -> ApiResult {
    let c = addressed_to_me(s, &signed, "challenge")?;
    let s2 = s.clone();
    let items = c.items.clone();
    let proofs = blocking(move || {
        Ok(items
            .iter()
            .map(|item| s2.store.get(&item.shard_id).ok().flatten().and_then(|b| merkle::prove(&b, item.chunk)))
            .collect())
    })
    .await?;
    ok(&s.identity.sign(&AuditAnswer { nonce: c.nonce, proofs }))
}

/// Drops every shard the coordinator no longer lists, once it is old enough.
async fn collect_garbage(s: &Arc<State>, signed: Signed<LiveList>) -> ApiResult {
    let list = addressed_to_me(s, &signed, "live list")?;
    let s2 = s.clone();
    let removed = blocking(move || {
        let live = list.shard_ids.into_iter().collect();
        s2.store.collect_garbage(&live, list.keep_newer_than).map_err(ApiError::internal)
    })
    .await?;
    if removed > 0 {
        tracing::info!(removed, "garbage shards deleted");
    }
    ok(&serde_json::json!({ "removed": removed }))
}

/// Asks the coordinator to let the node whose identity is in `data_dir` leave: its shards
/// are moved to other peers, after which it shows as `exited`.
pub async fn request_exit(data_dir: &std::path::Path, coordinator: &str) -> Result<PeerView, String> {
    let identity = Identity::load_or_create(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let url = format!("{}/v1/peers/exit", coordinator.trim_end_matches('/'));
    http::Client::default().post_json(&url, &identity.sign(&ExitRequest { time: now() })).await?.json()
}

async fn delete(s: &Arc<State>, signed: Signed<DeleteOrder>) -> ApiResult {
    let order = addressed_to_me(s, &signed, "delete order")?;
    let s2 = s.clone();
    let removed = blocking(move || {
        Ok(order.shard_ids.iter().map(|id| s2.store.delete(id)).filter(|r| matches!(r, Ok(true))).count())
    })
    .await?;
    ok(&serde_json::json!({ "removed": removed }))
}
