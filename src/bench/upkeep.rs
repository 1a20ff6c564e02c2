//! Upkeep measurements: how fast repair rebuilds shards, and how many audits a coordinator
//! sustains against many peers (simulated in this process: one HTTP server answers for all
//! of them with real keys, real shards and real Merkle proofs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use hyper::{Method, StatusCode};
use tokio::net::TcpListener;

use super::{PatternReader, cpu_seconds};
use crate::client::Client;
use crate::config::Config;
use crate::core::codec::EncodeParams;
use crate::core::erasure::Shape;
use crate::core::identity::Identity;
use crate::core::merkle::{self, ShardId};
use crate::devnet::Devnet;
use crate::net::client as http;
use crate::net::server::{self, ApiError, read_body, read_json};
use crate::proto::*;
use crate::store::identity as keyfile;
use crate::sys::clock::Clock;

/// Config for a network whose workers run every second.
fn brisk(mut c: Config) -> Config {
    c.placement.spread = crate::core::placement::Spread::None;
    c.security.node_pow_bits = 0;
    c.limits.registrations_per_minute = 1_000_000;
    c.limits.plans_per_minute = 1_000_000;
    c.node.heartbeat_interval = 1;
    c.coordinator.heartbeat_timeout = 2;
    c.audit.vetting_audits = 0;
    c.repair.grace_period = 0;
    c.repair.check_interval = 1;
    c
}

fn write_input(path: &std::path::Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)?;
    std::io::copy(&mut PatternReader::new(size), &mut f)?;
    Ok(f.sync_all()?)
}

/// Uploads `size` bytes to `nodes` nodes (8-of-20, 8 MiB segments), stops `stop` of them and
/// times repair until every segment is whole again.
pub async fn repair(nodes: usize, stop: usize, size: u64, dir: &std::path::Path) -> anyhow::Result<String> {
    let mut config = brisk(Config::default());
    config.repair.threshold = 11; // repair any segment with a lost shard
    config.repair.concurrency = 2;
    config.audit.interval = 3600;
    config.node.max_storage_gb = 1e6;
    let mut net = Devnet::start(config, &dir.join("net"), 0, nodes).await?;
    let client = Client::with_fresh_account(&net.url());
    let src = dir.join("input.bin");
    write_input(&src, size)?;
    let mut params = EncodeParams { iterations: crate::core::crypto::MIN_ITERATIONS, ..EncodeParams::default() };
    params.shape = Shape::new(8, 20)?;
    let id = client.upload(&src, b"bench", params, None).await?;
    let before = client.info(&id).await?;
    let shard_len = client.manifest(&id).await?.shard_len(0) as u64;
    let peer_ids: Vec<String> = client.peers().await?.into_iter().map(|p| p.peer_id).collect();
    let mut stopped = Vec::new();
    for i in 0..nodes {
        if stopped.len() == stop {
            break;
        }
        let id = keyfile::load_or_create(&net.node_dir(i))?.peer_id();
        if peer_ids.contains(&id) {
            net.stop_node(i).await;
            stopped.push(id);
        }
    }
    let lost: usize = before.placements.iter().flatten().filter(|p| stopped.contains(p)).count();
    let t0 = Instant::now();
    let cpu0 = cpu_seconds("self");
    let mut started = None;
    loop {
        let v = client.info(&id).await?;
        if started.is_none() && v.health.iter().any(|h| h.repair_queued || h.healthy < h.total) {
            started = Some(t0.elapsed());
        }
        if started.is_some() && v.placements.iter().flatten().all(|p| !stopped.contains(p)) {
            break;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(600), "repair did not finish in 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = t0.elapsed();
    let work = total - started.unwrap_or_default();
    let mb = (lost as u64 * shard_len) as f64 / 1e6;
    net.shutdown().await;
    std::fs::remove_file(&src)?;
    Ok(format!(
        "repair: {stop} of {nodes} nodes stopped, {lost} shards ({mb:.0} MB) rebuilt and re-placed in {:.2} s after detection \
         ({:.2} s in all): {:.0} MB/s of rebuilt shards, {:.1} CPU-s for the whole process\n",
        work.as_secs_f64(),
        total.as_secs_f64(),
        mb / work.as_secs_f64(),
        cpu_seconds("self") - cpu0
    ))
}

/// Many peers behind one server: `/p/{i}/…` is peer i.
struct Simulated {
    ids: Vec<Identity>,
    /// The server's base URL: peer i is `{base}/p/{i}`.
    base: String,
    shards: Mutex<HashMap<ShardId, Bytes>>,
}

async fn simulated_route(sim: Arc<Simulated>, req: hyper::Request<hyper::body::Incoming>) -> server::ApiResult {
    let path = req.uri().path().to_owned();
    let p: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let who = |i: &str| {
        i.parse::<usize>().ok().filter(|i| *i < sim.ids.len()).ok_or_else(|| ApiError::not_found("no such peer"))
    };
    match (req.method().clone(), p.as_slice()) {
        (Method::POST, ["p", i, "v2", "audit"]) => {
            let me = &sim.ids[who(i)?];
            let signed: Signed<Challenge> = read_json(req, 64 * 1024).await?;
            let c = signed.open().ok_or_else(|| ApiError::forbidden("bad challenge"))?;
            let shards = sim.shards.lock().expect("not poisoned");
            let proofs =
                c.items.iter().map(|it| shards.get(&it.shard_id).and_then(|b| merkle::prove(b, it.chunk))).collect();
            server::ok(&me.sign(&AuditAnswer { nonce: c.nonce, proofs }))
        }
        (Method::PUT, ["p", i, "v2", "shards", id]) => {
            let me = &sim.ids[who(i)?];
            let id = ShardId::from_hex(id).ok_or_else(|| ApiError::bad_request("bad id"))?;
            let order: Signed<PutOrder> = req
                .headers()
                .get(ORDER_HEADER)
                .and_then(|h| serde_json::from_slice(h.as_bytes()).ok())
                .ok_or_else(|| ApiError::forbidden("no order"))?;
            let order = order.open().ok_or_else(|| ApiError::forbidden("bad order"))?;
            let body = read_body(req, order.max_shard_len as usize).await?;
            if merkle::root(&body) != id {
                return Err(ApiError::bad_request("wrong bytes"));
            }
            let len = body.len() as u64;
            sim.shards.lock().expect("not poisoned").insert(id, body);
            server::ok(&me.sign(&Receipt { upload_id: order.upload_id, shard_id: id, len, peer_id: me.peer_id() }))
        }
        (Method::POST, ["p", _, "v2", "gc"]) => server::ok(&Removed { removed: 0 }),
        (Method::POST, ["p", i, "v2", "identify"]) => {
            let n = who(i)?;
            let c: IdentifyChallenge = read_json(req, 4096).await?;
            let address = format!("{}/p/{n}", sim.base);
            server::ok(&sim.ids[n].sign(&Identified { coordinator: c.coordinator, nonce: c.nonce, address }))
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no route")),
    }
}

/// Audits the coordinator has completed (passed, all), from its /metrics.
async fn audits_counted(h: &http::Client, url: &str) -> anyhow::Result<(u64, u64)> {
    let text = String::from_utf8_lossy(&h.get(&format!("{url}/metrics")).await?.body).into_owned();
    let mut counts = (0, 0);
    for line in text.lines().filter(|l| l.starts_with("p2pstore_coordinator_audits_total{")) {
        let n: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
        counts.1 += n;
        if line.contains("outcome=\"success\"") {
            counts.0 += n;
        }
    }
    Ok(counts)
}

/// Registers `peers` simulated peers with one coordinator, stores a file of `segments`
/// segments on them, then counts the audits completed in `secs` seconds.
pub async fn audits(peers: usize, segments: u64, secs: u64, dir: &std::path::Path) -> anyhow::Result<String> {
    let mut config = brisk(Config::default());
    config.coordinator.max_peers = peers as u32 + 10;
    config.coordinator.heartbeat_timeout = 120;
    config.audit.interval = 1; // ask as often as the coordinator can
    config.repair.check_interval = 3600;
    let bind = ([127, 0, 0, 1], 0).into();
    let coordinator = crate::coordinator::spawn(config, dir.join("coordinator"), bind, Clock::system()).await?;
    let url = format!("http://{}", coordinator.addr);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let sim = Arc::new(Simulated {
        ids: (0..peers).map(|_| Identity::generate()).collect(),
        base: base.clone(),
        shards: Mutex::new(HashMap::new()),
    });
    let s2 = sim.clone();
    let server = server::serve(
        server::Listener::plain(listener),
        (crate::net::metrics::Metrics::new("simulated"), |_, _| "simulated"),
        move |req| simulated_route(s2.clone(), req),
        server::shutdown_signal(),
        Vec::new(),
    );
    let h = http::Client::default();
    let registered = futures::stream::iter(0..peers)
        .map(|i| {
            let time = Clock::system().now();
            let hb = Heartbeat {
                address: format!("{base}/p/{i}"),
                capacity: 1 << 40,
                used: 0,
                shards: 0,
                time,
                seq: 1,
                pow: 0,
            };
            let signed = sim.ids[i].sign(&hb);
            let (h, url) = (h.clone(), url.clone());
            async move { h.post_json(&format!("{url}/v2/heartbeat"), &signed).await.map(|r| r.status.is_success()) }
        })
        .buffer_unordered(32)
        .filter(|r| futures::future::ready(matches!(r, Ok(true))))
        .count()
        .await;
    anyhow::ensure!(registered == peers, "only {registered} of {peers} simulated peers registered");

    // Small segments spread shards over every peer: 20 shards of 512 bytes per segment.
    let src = dir.join("input.bin");
    write_input(&src, segments * 4080)?;
    let params =
        EncodeParams { shape: Shape::new(8, 20)?, segment_size: 4096, iterations: crate::core::crypto::MIN_ITERATIONS };
    Client::with_fresh_account(&url).upload(&src, b"bench", params, None).await.context("storing the audited file")?;
    let stored = segments * 20;

    // Measure over a window once audits are flowing, by the coordinator's own counters.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok0, all0) = audits_counted(&h, &url).await?;
    let cpu0 = cpu_seconds("self");
    tokio::time::sleep(Duration::from_secs(secs - 1)).await;
    let (ok1, all1) = audits_counted(&h, &url).await?;
    let (done, failed) = (all1 - all0, (all1 - all0) - (ok1 - ok0));
    let cpu = cpu_seconds("self") - cpu0;
    coordinator.shutdown().await;
    server.shutdown().await;
    std::fs::remove_file(&src)?;
    Ok(format!(
        "audits: {peers} simulated peers, {stored} stored shards: {:.0} audits/s over {} s ({failed} not passed), \
         {:.1} CPU-s for coordinator and simulator together ({:.2} ms per audit)\n",
        done as f64 / (secs - 1) as f64,
        secs - 1,
        cpu,
        cpu * 1e3 / done.max(1) as f64
    ))
}
