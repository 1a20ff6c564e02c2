//! A node's routes, parsed into [`Route`] before dispatch, and their handlers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::State;
use crate::core::merkle::{self, ShardId};
use crate::net::server::{self, ApiError, ApiResult, ok, read_body_aligned, read_json};
use crate::proto::*;
use crate::store::shards::{StoreError, Take};

/// Every request a node answers (besides `/healthz`, which the server loop answers).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    Metrics,
    Status,
    PutShard(ShardId),
    GetShard(ShardId),
    Notice,
    Inventory,
    Audit,
    Identify,
}

impl Route {
    /// The route's name in metrics.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Route::Metrics => "/metrics",
            Route::Status => "/v2/status",
            Route::PutShard(_) | Route::GetShard(_) => "/v2/shards/:id",
            Route::Notice => "/v2/notices",
            Route::Inventory => "/v2/inventory",
            Route::Audit => "/v2/audit",
            Route::Identify => "/v2/identify",
        }
    }

    /// The route of a request, `Err` with the answer for paths that name none.
    pub(super) fn parse(method: &Method, path: &str) -> Result<Route, ApiError> {
        let p: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let shard =
            |hex: &str| ShardId::from_hex(hex).ok_or_else(|| ApiError::bad_request("a shard id is 64 hex digits"));
        Ok(match (method, p.as_slice()) {
            (&Method::GET, ["metrics"]) => Route::Metrics,
            (&Method::GET, ["v2", "status"]) => Route::Status,
            (&Method::POST, ["v2", "notices"]) => Route::Notice,
            (&Method::POST, ["v2", "inventory"]) => Route::Inventory,
            (&Method::PUT, ["v2", "shards", id]) => Route::PutShard(shard(id)?),
            (&Method::GET, ["v2", "shards", id]) => Route::GetShard(shard(id)?),
            (&Method::POST, ["v2", "audit"]) => Route::Audit,
            (&Method::POST, ["v2", "identify"]) => Route::Identify,
            _ => return Err(ApiError::not_found(format!("no route {method} {path}"))),
        })
    }
}

/// The metrics label of a request: its route's, or `other`.
pub(super) fn label(method: &Method, path: &str) -> &'static str {
    Route::parse(method, path).map_or("other", |r| r.label())
}

pub(super) async fn route(s: Arc<State>, req: Request<Incoming>) -> ApiResult {
    match Route::parse(req.method(), req.uri().path())? {
        Route::Metrics => {
            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            s.shards.set(clamp(s.store.count()));
            s.used_bytes.set(clamp(s.store.used()));
            s.capacity_bytes.set(clamp(s.store.capacity()));
            Ok(server::metrics_text(&s.metrics))
        }
        Route::Status => ok(&NodeStatus {
            peer_id: s.identity.peer_id(),
            address: s.address.clone(),
            capacity: s.store.capacity(),
            used: s.store.used(),
            shards: s.store.count(),
        }),
        Route::PutShard(id) => put_shard(&s, id, req).await,
        Route::GetShard(id) => get_shard(&s, id, &req).await,
        Route::Notice => {
            let body = notice_body(&s, req).await?;
            let signed =
                serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
            drop(body);
            notice(&s, signed).await
        }
        Route::Inventory => inventory(&s, read_json(req, 64 * 1024).await?).await,
        Route::Audit => audit(&s, read_json(req, 64 * 1024).await?).await,
        Route::Identify => {
            // Anyone may ask: the answer proves only that this key listens at this address.
            let c: IdentifyChallenge = read_json(req, 4096).await?;
            let answer = Identified { coordinator: c.coordinator, nonce: c.nonce, address: s.address.clone() };
            ok(&s.identity.sign(&answer))
        }
    }
}

/// Runs disk- or CPU-bound work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?
}

fn coordinator_key(s: &State) -> Result<&str, ApiError> {
    s.coordinator_key.get().map(String::as_str).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this node has not registered with a coordinator yet")
    })
}

async fn get_shard<B>(s: &Arc<State>, id: ShardId, req: &Request<B>) -> ApiResult {
    let header = req.headers().get(GRANT_HEADER).and_then(|v| v.to_str().ok()).ok_or_else(|| {
        ApiError::forbidden(format!("a shard GET needs a read grant from the coordinator in {GRANT_HEADER}"))
    })?;
    let grant = read_grant(s, header)?;
    let s2 = s.clone();
    let upload = grant.upload_id.clone();
    if !blocking(move || Ok(s2.store.readable_by(&id, &upload))).await? {
        // Absent, or held for uploads the grant does not cover: the same answer, so a grant
        // for one file does not reveal which other shards are here.
        return Err(ApiError::not_found(format!("no shard {id} here for upload {}", grant.upload_id)));
    }
    let s2 = s.clone();
    let data = blocking(move || s2.store.get(&id).map_err(ApiError::internal)).await?;
    let b = data.ok_or_else(|| ApiError::not_found(format!("no shard {id} here")))?;
    s.bytes_out.inc_by(b.len() as u64);
    Ok(server::bytes("application/octet-stream", b))
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
    let len = body.len() as u64;
    let counted = order.max_bytes > 0 && take_budget(s, &order, &id, len)?;
    let s2 = s.clone();
    let now = s.clock.now();
    let upload = order.upload_id.clone();
    let stored = blocking(move || {
        s2.store.put(&id, &body, &upload, now).map_err(|e| match e {
            StoreError::Full { .. } => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
            other => ApiError::internal(other),
        })
    })
    .await;
    if let Err(e) = stored {
        if counted {
            give_back_budget(s, &order.upload_id, &id, len);
        }
        return Err(e);
    }
    s.bytes_in.inc_by(len);
    let receipt = Receipt { upload_id: order.upload_id, shard_id: id, len, peer_id: s.identity.peer_id() };
    ok(&s.identity.sign(&receipt))
}

/// Counts shard `id` of `len` bytes as stored under `order`'s upload (once, however often it
/// is sent: retries and hedges), or refuses it past the order's `max_bytes` (403): an order
/// is not a licence to fill the node. Whether it was counted now.
fn take_budget(s: &State, order: &PutOrder, id: &ShardId, len: u64) -> Result<bool, ApiError> {
    let now = s.clock.now();
    let mut used = s.upload_bytes.lock().expect("not poisoned");
    if used.len() >= MAX_KNOWN && !used.contains_key(&order.upload_id) {
        used.retain(|_, u| u.expires >= now);
    }
    let u = used
        .entry(order.upload_id.clone())
        .or_insert_with(|| UploadBytes { expires: order.expires, ..Default::default() });
    u.expires = u.expires.max(order.expires);
    if u.shards.contains(id) {
        return Ok(false);
    }
    let cost = PutOrder::cost(len);
    if u.bytes + cost > order.max_bytes {
        return Err(ApiError::forbidden(format!(
            "upload {} has stored {} bytes here; its orders allow {}",
            order.upload_id, u.bytes, order.max_bytes
        )));
    }
    u.bytes += cost;
    u.shards.insert(*id);
    Ok(true)
}

fn give_back_budget(s: &State, upload: &str, id: &ShardId, len: u64) {
    if let Some(u) = s.upload_bytes.lock().expect("not poisoned").get_mut(upload)
        && u.shards.remove(id)
    {
        u.bytes = u.bytes.saturating_sub(PutOrder::cost(len));
    }
}

/// What a node has taken under one upload's orders since it started.
#[derive(Default)]
pub(super) struct UploadBytes {
    bytes: u64,
    expires: u64,
    shards: std::collections::HashSet<ShardId>,
}

/// The put order in `header`, checked once and remembered until it expires.
fn put_order(s: &State, header: &str) -> Result<PutOrder, ApiError> {
    remembered(s, &s.orders, header, "put order")
}

/// The read grant in `header`, checked once and remembered until it expires.
fn read_grant(s: &State, header: &str) -> Result<ReadGrant, ApiError> {
    remembered(s, &s.grants, header, "read grant")
}

/// A coordinator instruction carried in a header: checked by [`addressed_to_me`] the first
/// time, then found in `known` by its exact text until it expires.
fn remembered<T: Message + ForPeer + Clone>(
    s: &State,
    known: &Mutex<HashMap<String, T>>,
    header: &str,
    what: &str,
) -> Result<T, ApiError> {
    let now = s.clock.now();
    let cached = known.lock().expect("not poisoned").get(header).cloned();
    let m = match cached {
        Some(m) => m,
        None => {
            let signed: Signed<T> =
                serde_json::from_str(header).map_err(|e| ApiError::forbidden(format!("malformed {what}: {e}")))?;
            let m = addressed_to_me(s, &signed, what)?;
            let mut known = known.lock().expect("not poisoned");
            if known.len() >= MAX_KNOWN {
                known.retain(|_, m| m.valid_until() >= now);
                if known.len() >= MAX_KNOWN {
                    known.clear();
                }
            }
            known.insert(header.to_owned(), m.clone());
            m
        }
    };
    if m.valid_until() < now {
        return Err(ApiError::forbidden(format!("the {what} has expired")));
    }
    Ok(m)
}

/// Bytes of deletion notices an inventory carries at most (the coordinator reads its first
/// page up to 256 MiB).
const DELETIONS_PAGE: usize = 64 << 20;

/// Orders or grants remembered at once: far more than uploads running at the same time.
const MAX_KNOWN: usize = 1024;

/// Opens a message only if this node's coordinator signed it, for this peer, and it is
/// still valid: every instruction a node acts on passes here.
fn addressed_to_me<T: Message + ForPeer>(s: &State, signed: &Signed<T>, what: &str) -> Result<T, ApiError> {
    let m = signed
        .open_by(coordinator_key(s)?)
        .ok_or_else(|| ApiError::forbidden(format!("the {what} is not signed by this node's coordinator")))?;
    if m.peer_id() != s.identity.peer_id() {
        return Err(ApiError::forbidden(format!("the {what} is for another peer")));
    }
    if m.valid_until() < s.clock.now() {
        return Err(ApiError::forbidden(format!("the {what} has expired")));
    }
    Ok(m)
}

/// Answers a coordinator's challenge with a Merkle proof per chunk (None: not held), signed.
async fn audit(s: &Arc<State>, signed: Signed<Challenge>) -> ApiResult {
    let c = addressed_to_me(s, &signed, "challenge")?;
    let s2 = s.clone();
    let items = c.items.clone();
    let (proofs, released) = blocking(move || {
        let proofs: Vec<_> = items
            .iter()
            .map(|item| s2.store.get(&item.shard_id).ok().flatten().and_then(|b| merkle::prove(&b, item.chunk)))
            .collect();
        // Let go on a notice (a coordinator restored from an older backup still places it
        // here): said so, since this node holds it no longer for readers.
        let released = (0..items.len() as u32)
            .filter(|&i| proofs[i as usize].is_none() && s2.store.let_go(&items[i as usize].shard_id))
            .collect();
        Ok((proofs, released))
    })
    .await?;
    ok(&s.identity.sign(&AuditAnswer { nonce: c.nonce, proofs, released }))
}

/// Takes a notice of what became of an upload or a file: shards no file needs any more go
/// to the trash. A deletion from a coordinator database this node does not know, or from one
/// that went back in time, is refused (409): such a database may not know what is committed.
async fn notice(s: &Arc<State>, signed: Signed<Notice>) -> ApiResult {
    let n = addressed_to_me(s, &signed, "notice")?;
    let digest = blake3::hash(signed.body.as_bytes()).to_hex().to_string();
    // One at a time, from the check of its number until what it changed is durable with the
    // number taken: the answer promises both (a node killed before answering takes it again).
    let _one_at_a_time = s.notices.lock().await;
    let mut mark = s.store.mark().map_err(ApiError::internal)?;
    match mark.accept(&n.generation, n.seq, &digest) {
        Err(why) => {
            tracing::error!(reason = %why, "a notice from the coordinator was refused");
            return Err(ApiError::new(StatusCode::CONFLICT, why));
        }
        Ok(Take::Again) => {
            // Its coordinator was stopped before it noted that this node took it.
            tracing::info!(seq = n.seq, "a notice taken before came again: answered as taken");
            let s2 = s.clone();
            blocking(move || s2.store.sync().map_err(ApiError::internal)).await?;
            return ok(&Removed { removed: 0 });
        }
        Ok(Take::New) => {}
    }
    let (s2, now) = (s.clone(), s.clock.now());
    // Kept signed: a coordinator restored from a backup older than the deletion learns of it.
    let deletion = matches!(n.event, NoticeEvent::Released { deleted: true, .. })
        .then(|| serde_json::to_vec(&signed).expect("serializes"));
    let removed = blocking(move || {
        let st = &s2.store;
        let r = (|| {
            let removed = match n.event {
                NoticeEvent::Committed { upload_id, file_id, shard_ids, complete, manifest } => {
                    if let Some(copy) = manifest {
                        st.keep_manifest(&file_id, serde_json::to_vec(&copy).expect("serializes").as_slice())?;
                    }
                    st.commit(&upload_id, &file_id, &shard_ids, complete, now)?
                }
                NoticeEvent::Abandoned { upload_id } => match st.abandon(&upload_id, now) {
                    Err(StoreError::Committed(u)) => {
                        tracing::warn!(upload = %u, "asked to abandon an upload this node knows committed: kept");
                        0
                    }
                    r => r?,
                },
                NoticeEvent::Released { file_id, shard_ids, deleted } => {
                    if let Some(signed) = deletion.filter(|_| deleted) {
                        st.drop_manifest(&file_id)?;
                        st.keep_deletion(n.seq, &file_id, now, &signed)?;
                    }
                    st.release(&file_id, &shard_ids, now)?
                }
            };
            // The number after what it changed: sled recovers a prefix of its writes, so a
            // number found after a crash always comes with the notice's changes.
            st.set_mark(&mark)?;
            st.sync()?;
            Ok::<_, StoreError>(removed)
        })();
        r.map_err(ApiError::internal)
    })
    .await?;
    if removed > 0 {
        tracing::info!(removed, "shards moved to the trash");
    }
    ok(&Removed { removed })
}

/// Largest notice body: 8,192 shard ids and a manifest copy (a 64 GiB file's manifest is 10
/// MB of hex).
const NOTICE_BODY: usize = 16 << 20;

/// Bytes of notice bodies its coordinator vouched for (a `NoticeTicket`) read at once: it
/// sends a node one notice at a time, so this is room for it and one more.
pub(super) const NOTICE_BUDGET: usize = 2 * NOTICE_BODY;

/// Bytes of notice bodies nobody vouched for read at once (coordinators before tickets): a
/// lane of their own, which strangers may fill.
pub(super) const UNVOUCHED_BUDGET: usize = NOTICE_BODY;

/// How long a notice waits for room in [`NOTICE_BUDGET`] before it is answered 503 (the
/// coordinator delivers it again later).
const NOTICE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A notice's body, read only after what is cheap was checked: the body declares its length
/// (a coordinator always does; a chunked body is refused unread, 411), the length is at most
/// [`NOTICE_BODY`] (413), this node has a coordinator (503), a ticket in the header, if any,
/// is its coordinator's for this body (403), and that many bytes fit in the lane's budget
/// with the notices being read (503 after [`NOTICE_WAIT`]): [`NOTICE_BUDGET`] for vouched
/// bodies, [`UNVOUCHED_BUDGET`] for the rest. The notice's signature is inside the body, so
/// this is what bounds what strangers can make a node hold (16 MiB), and strangers who hold
/// their lane (round 5 of the attacks: two connections sending a byte every 20 s blocked a
/// node's notices for as long as they liked) hold nobody's notices but their own.
async fn notice_body(s: &State, req: Request<Incoming>) -> Result<bytes::Bytes, ApiError> {
    let declared = server::declared_len(req.headers()).ok_or_else(|| {
        ApiError::new(StatusCode::LENGTH_REQUIRED, "a notice must declare its length (Content-Length)")
    })?;
    if declared > NOTICE_BODY as u64 {
        // Refused from the declared length alone.
        return server::read_body(req, NOTICE_BODY).await;
    }
    coordinator_key(s)?;
    let ticket = match req.headers().get(NOTICE_HEADER) {
        Some(h) => {
            let signed: Signed<NoticeTicket> = serde_json::from_slice(h.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("malformed notice ticket: {e}")))?;
            let t = addressed_to_me(s, &signed, "notice ticket")?;
            if t.len != declared {
                return Err(ApiError::bad_request("the notice's length is not its ticket's"));
            }
            // Once: a copied ticket (anyone who reads the plain traffic) held the vouched room
            // with slow bodies, a hundred copies at a time (round 6 of the attacks).
            let now = s.clock.now();
            let mut used = s.tickets.lock().expect("not poisoned");
            used.retain(|_, expires| *expires >= now);
            if used.insert(signed.sig.clone(), t.expires).is_some() {
                return Err(ApiError::new(StatusCode::CONFLICT, "this notice ticket was used already"));
            }
            Some(t)
        }
        None => None,
    };
    let lane = if ticket.is_some() { &s.notice_bytes } else { &s.unvouched_notice_bytes };
    let busy = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many notices are being read; try again later");
    let want = u32::try_from(declared).expect("at most NOTICE_BODY");
    let _room = tokio::time::timeout(NOTICE_WAIT, lane.acquire_many(want))
        .await
        .map_err(|_| busy())?
        .map_err(ApiError::internal)?;
    let body = match &ticket {
        // A vouched body comes before its ticket expires, or never.
        Some(t) => {
            let left = std::time::Duration::from_secs(t.expires.saturating_sub(s.clock.now()));
            tokio::time::timeout(left, server::read_body(req, declared as usize)).await.map_err(|_| {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "the notice's body came after its ticket expired")
            })??
        }
        None => server::read_body(req, declared as usize).await?,
    };
    if ticket.is_some_and(|t| t.digest != blake3::hash(&body).to_hex().as_str()) {
        return Err(ApiError::bad_request("the notice's body is not its ticket's"));
    }
    Ok(body)
}

/// Shards in one inventory page.
const INVENTORY_PAGE: usize = 10_000;

/// A page of what this node holds, for a coordinator rebuilding its database.
async fn inventory(s: &Arc<State>, signed: Signed<InventoryRequest>) -> ApiResult {
    let req = addressed_to_me(s, &signed, "inventory request")?;
    let s2 = s.clone();
    let page = blocking(move || {
        let st = &s2.store;
        let held = st.inventory(req.after.as_ref(), INVENTORY_PAGE + 1).map_err(ApiError::internal)?;
        let more = held.len() > INVENTORY_PAGE;
        let shards = held
            .into_iter()
            .take(INVENTORY_PAGE)
            .map(|(shard_id, e)| HeldShard { shard_id, len: e.len, files: e.files })
            .collect();
        let manifests = match req.after {
            None => st
                .manifests()
                .map_err(ApiError::internal)?
                .iter()
                .filter_map(|m| serde_json::from_slice(m).ok())
                .collect(),
            Some(_) => Vec::new(),
        };
        let deletions = match (req.after, req.deletions_after) {
            (None, Some(after)) => st
                .deletions_after(after, DELETIONS_PAGE)
                .map_err(ApiError::internal)?
                .iter()
                .filter_map(|d| serde_json::from_slice(d).ok())
                .collect(),
            _ => Vec::new(),
        };
        let mark = st.mark().map_err(ApiError::internal)?;
        Ok(Inventory { shards, manifests, generation: mark.generation, last_notice: mark.last_notice, more, deletions })
    })
    .await?;
    ok(&page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_any_scope_agrees_with_the_protocol() {
        assert_eq!(crate::store::shards::ANY, ANY_UPLOAD);
    }

    #[test]
    fn routes_parse_before_dispatch() {
        let id = ShardId([0xab; 32]);
        let path = format!("/v2/shards/{id}");
        assert_eq!(Route::parse(&Method::PUT, &path).unwrap(), Route::PutShard(id));
        assert_eq!(Route::parse(&Method::GET, &path).unwrap(), Route::GetShard(id));
        assert_eq!(Route::parse(&Method::POST, "/v2/notices").unwrap(), Route::Notice);
        assert_eq!(Route::parse(&Method::GET, "//metrics").unwrap(), Route::Metrics);
        assert_eq!(Route::parse(&Method::GET, "/v2/shards/zz").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(Route::parse(&Method::DELETE, &path).unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(Route::parse(&Method::GET, "/v2/shards").unwrap_err().status, StatusCode::NOT_FOUND);
    }
}
