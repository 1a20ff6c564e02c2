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
use crate::net::client::{self as http, Reply};
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

/// Many peers simulated in this process, each with a key of its own and a port of its own
/// (an advertised address is `http://host:port`, nothing after), all answered by one handler.
struct Simulated {
    ids: Vec<Identity>,
    /// Peer i's advertised address.
    addresses: Vec<String>,
    shards: Mutex<HashMap<ShardId, Bytes>>,
    /// Inventories the coordinator took (one per registration): none holds anything.
    inventories: std::sync::atomic::AtomicUsize,
}

/// `peers` simulated peers, each served on a free port of 127.0.0.1; stopped when the
/// handles are shut down. This process needs a file descriptor per peer.
async fn simulate(peers: usize) -> anyhow::Result<(Arc<Simulated>, Vec<server::ServerHandle>)> {
    let open_files = crate::net::server::raise_fd_limit() as u64;
    anyhow::ensure!(
        open_files >= peers as u64 + 4096,
        "simulating {peers} peers needs {} open files (a port each, and connections); this process may have {open_files} \
         (ulimit -Hn)",
        peers + 4096
    );
    let mut listeners = Vec::with_capacity(peers);
    let mut addresses = Vec::with_capacity(peers);
    for _ in 0..peers {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        addresses.push(format!("http://{}", l.local_addr()?));
        listeners.push(l);
    }
    let sim = Arc::new(Simulated {
        ids: (0..peers).map(|_| Identity::generate()).collect(),
        addresses,
        shards: Mutex::new(HashMap::new()),
        inventories: Default::default(),
    });
    let metrics = crate::net::metrics::Metrics::new("simulated");
    let servers = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let s2 = sim.clone();
            server::serve(
                server::Listener::plain(l),
                (metrics.clone(), |_, _| "simulated"),
                move |req| simulated_route(s2.clone(), i, req),
                server::shutdown_signal(),
                Vec::new(),
            )
        })
        .collect();
    Ok((sim, servers))
}

async fn simulated_route(
    sim: Arc<Simulated>,
    i: usize,
    req: hyper::Request<hyper::body::Incoming>,
) -> server::ApiResult {
    let path = req.uri().path().to_owned();
    let p: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let me = &sim.ids[i];
    match (req.method().clone(), p.as_slice()) {
        (Method::POST, ["v2", "audit"]) => {
            let signed: Signed<Challenge> = read_json(req, 64 * 1024).await?;
            let c = signed.open().ok_or_else(|| ApiError::forbidden("bad challenge"))?;
            let shards = sim.shards.lock().expect("not poisoned");
            let proofs =
                c.items.iter().map(|it| shards.get(&it.shard_id).and_then(|b| merkle::prove(b, it.chunk))).collect();
            server::ok(&me.sign(&AuditAnswer { nonce: c.nonce, proofs, released: Vec::new() }))
        }
        (Method::PUT, ["v2", "shards", id]) => {
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
        (Method::POST, ["v2", "gc"]) => server::ok(&Removed { removed: 0 }),
        (Method::POST, ["v2", "notices"]) => server::ok(&Removed { removed: 0 }),
        (Method::POST, ["v2", "inventory"]) => {
            sim.inventories.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let empty = Inventory {
                shards: Vec::new(),
                manifests: Vec::new(),
                generation: None,
                last_notice: 0,
                more: false,
                deletions: Vec::new(),
            };
            server::ok(&empty)
        }
        (Method::POST, ["v2", "identify"]) => {
            let c: IdentifyChallenge = read_json(req, 4096).await?;
            let address = sim.addresses[i].clone();
            server::ok(&me.sign(&Identified { coordinator: c.coordinator, nonce: c.nonce, address }))
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
    config.coordinator.heartbeat_timeout = 3600; // simulated peers beat once; a big file takes minutes
    config.audit.interval = 1; // ask as often as the coordinator can
    config.repair.check_interval = 3600;
    // A process of its own, so that its memory is its own (the simulated peers keep every
    // shard in this process's memory).
    let (coordinator, url) = coordinator_process(dir, &toml::to_string(&config)?).await?;
    let pid = coordinator.0[0].id().to_string();
    let (sim, servers) = simulate(peers).await?;
    let h = http::Client::default();
    let registered = futures::stream::iter(0..peers)
        .map(|i| {
            let time = Clock::system().now();
            let hb = Heartbeat {
                address: sim.addresses[i].clone(),
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
    let client = Client::with_fresh_account(&url);
    let t = Instant::now();
    let id = client.upload(&src, b"bench", params, None).await.context("storing the audited file")?;
    let upload_secs = t.elapsed().as_secs_f64();
    let stored = segments * 20;
    // What a reader needs before its first shard request (simulated peers serve no shards):
    // the root, the key, the first page and the view of its segments.
    let t = Instant::now();
    let m = client.manifest(&id).await?;
    let (page, window) = tokio::join!(client.page(&id, &m, 0), client.info_range(&id, 0, 1024));
    anyhow::ensure!(page?.len() == window?.placements.len(), "the first page and its view differ");
    let first_byte = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let view = client.info(&id).await?;
    let info_secs = t.elapsed().as_secs_f64();
    let big = format!(
        "a file of {segments} segments ({} pages): stored and committed in batches in {upload_secs:.1} s; \
         ready to fetch the first segment after {:.0} ms (root, first page and its view; the KDF, {} iterations, runs alongside); info (totals + first {} segments) in {:.0} ms; \
         coordinator process {} MB resident then, {} MB at its peak (VmHWM)\n",
        crate::core::manifest::page_count(segments),
        first_byte * 1e3,
        crate::core::crypto::MIN_ITERATIONS,
        view.placements.len(),
        info_secs * 1e3,
        resident(&pid) >> 20,
        memory(&pid, "VmHWM") >> 20,
    );

    // Measure over a window once audits are flowing, by the coordinator's own counters.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok0, all0) = audits_counted(&h, &url).await?;
    let cpu0 = cpu_seconds(&pid) + cpu_seconds("self");
    tokio::time::sleep(Duration::from_secs(secs - 1)).await;
    let (ok1, all1) = audits_counted(&h, &url).await?;
    let (done, failed) = (all1 - all0, (all1 - all0) - (ok1 - ok0));
    let cpu = cpu_seconds(&pid) + cpu_seconds("self") - cpu0;
    drop(coordinator);
    for s in servers {
        s.shutdown().await;
    }
    std::fs::remove_file(&src)?;
    Ok(big
        + &format!(
            "audits: {peers} simulated peers, {stored} stored shards: {:.0} audits/s over {} s ({failed} not passed), \
         {:.1} CPU-s for coordinator and simulator together ({:.2} ms per audit)\n",
            done as f64 / (secs - 1) as f64,
            secs - 1,
            cpu,
            cpu * 1e3 / done.max(1) as f64
        ))
}

/// What a benchmark of admission and cost may be asked to do.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionRun {
    /// Simulated peers that register and send heartbeats.
    pub peers: usize,
    /// Accounts that ask for plans.
    pub accounts: usize,
    /// Seconds each rate is measured for (at most).
    pub secs: u64,
    /// Half-open connections held while the coordinator's memory is read.
    pub half_open: usize,
}

/// Segments of the plans measured for their rate: 8 MiB segments, 8-of-20.
const PLAN_SEGMENTS: u64 = 8;

/// The most segments one plan may cover (the coordinator's bound).
const MAX_PLAN_SEGMENTS: u64 = 1 << 16;

/// Concurrent requests the benchmark keeps in flight.
const IN_FLIGHT: usize = 64;

/// The coordinator as a process of this binary (so its CPU and memory are its own) with
/// `config` as its configuration file; killed when dropped.
async fn coordinator_process(dir: &std::path::Path, config: &str) -> anyhow::Result<(super::Children, String)> {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().context("finding the p2pstore executable")?;
    let port = super::free_ports(1)?[0];
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, config)?;
    let child = Command::new(exe)
        .arg("--config")
        .arg(&path)
        .args(["-q", "coordinator", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.join("coordinator"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the coordinator process")?;
    let mut children = super::Children(vec![child]);
    let url = format!("http://127.0.0.1:{port}");
    let h = http::Client::new(Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.get(&format!("{url}/healthz")).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the coordinator did not answer within 30 s");
        if let Some(status) = children.0[0].try_wait()? {
            anyhow::bail!("the coordinator exited during start-up ({status})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((children, url))
}

/// A memory figure of a process from /proc/PID/status (`VmRSS`, `VmHWM`), in bytes.
fn memory(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse::<u64>().ok());
    kb.unwrap_or(0) * 1024
}

/// Resident memory of a process (VmRSS), in bytes.
fn resident(pid: &str) -> u64 {
    memory(pid, "VmRSS")
}

/// How a batch of requests went: answers by status, the time it took and the coordinator's
/// CPU seconds meanwhile.
struct Batch {
    ok: usize,
    refused: std::collections::BTreeMap<u16, usize>,
    failed: usize,
    /// The first refusal's or failure's message.
    first_error: Option<String>,
    secs: f64,
    cpu: f64,
    /// Answers per second late in the run (from 80% to 90% of them).
    late_rate: f64,
}

impl Batch {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    /// Coordinator CPU milliseconds per answered request.
    fn cpu_ms(&self) -> f64 {
        self.cpu * 1e3 / (self.ok + self.refused.values().sum::<usize>()).max(1) as f64
    }

    /// The answers other than 200, by status, and the requests that failed.
    fn counts(&self) -> String {
        let mut parts: Vec<String> = self.refused.iter().map(|(s, n)| format!("{n} × {s}")).collect();
        if self.failed > 0 {
            parts.push(format!("{} failed", self.failed));
        }
        parts.join(", ")
    }

    fn refusals(&self) -> String {
        match &self.first_error {
            Some(e) => format!(" (not answered 200: {}; the first: {e})", self.counts()),
            None => String::new(),
        }
    }
}

/// Sends requests, made (and signed) as they are needed, `IN_FLIGHT` at a time, until they
/// run out or `secs` pass.
async fn send_batch(
    h: &http::Client,
    pid: &str,
    requests: impl Iterator<Item = hyper::Request<http::Body>>,
    secs: u64,
) -> Batch {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (t, cpu0) = (Instant::now(), cpu_seconds(pid));
    let statuses: Vec<(Instant, Result<Reply, String>)> = futures::stream::iter(requests)
        .take_while(|_| futures::future::ready(Instant::now() < deadline))
        .map(|req| async move {
            let r = h.send(req).await.map_err(|e| e.to_string());
            (Instant::now(), r)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut b =
        Batch { ok: 0, refused: Default::default(), failed: 0, first_error: None, secs: 0.0, cpu: 0.0, late_rate: 0.0 };
    b.secs = t.elapsed().as_secs_f64();
    b.cpu = cpu_seconds(pid) - cpu0;
    // Between 80% and 90% of the answers: late in the run, before the last ones in flight drain.
    let tenth = statuses.len() / 10;
    if tenth > 1 {
        let (from, to) = (statuses[8 * tenth].0, statuses[9 * tenth].0);
        b.late_rate = tenth as f64 / (to - from).as_secs_f64().max(1e-6);
    }
    for (_, s) in statuses {
        match s {
            Ok(r) if r.status == StatusCode::OK => b.ok += 1,
            Ok(r) => {
                *b.refused.entry(r.status.as_u16()).or_default() += 1;
                b.first_error.get_or_insert_with(|| r.error_message());
            }
            Err(e) => {
                b.failed += 1;
                b.first_error.get_or_insert(e);
            }
        }
    }
    b
}

/// A signed plan request of `req` by `account`, ready to send.
fn signed_plan(url: &str, coordinator_id: &str, account: &Identity, req: &PlanRequest) -> hyper::Request<http::Body> {
    let body = serde_json::to_vec(req).expect("wire types serialize");
    let nonce = hex::encode(crate::core::crypto::Salt::random().0);
    let time = Clock::system().now();
    let auth = RequestAuth::sign(account, coordinator_id, "POST", "/v2/uploads", (time, nonce), &body);
    let header = auth.header();
    let headers = [(AUTH_HEADER, header.as_str()), ("content-type", "application/json")];
    http::request("POST", &format!("{url}/v2/uploads"), &headers, Bytes::from(body)).expect("a valid request")
}

/// A signed heartbeat to the coordinator at `url`, ready to send.
fn signed_heartbeat(url: &str, key: &Identity, address: &str, seq: u64) -> hyper::Request<http::Body> {
    let time = Clock::system().now();
    let hb = Heartbeat { address: address.to_owned(), capacity: 1 << 40, used: 0, shards: 0, time, seq, pow: 0 };
    let body = Bytes::from(serde_json::to_vec(&key.sign(&hb)).expect("wire types serialize"));
    let headers = [("content-type", "application/json")];
    http::request("POST", &format!("{url}/v2/heartbeat"), &headers, body).expect("a valid request")
}

/// What the coordinator sustains from strangers: registrations and heartbeats of `peers`
/// simulated peers (one server in this process answers for all of them), upload plans signed
/// by `accounts` accounts, the largest plan the protocol allows, and its memory while
/// `half_open` connections are held. The coordinator is a process of this binary.
pub async fn admission(run: AdmissionRun, dir: &std::path::Path) -> anyhow::Result<String> {
    let config = format!(
        "[coordinator]\nmax_peers = {}\nheartbeat_timeout = 3600\ngc_interval = 3600\n\
         [security]\nnode_pow_bits = 0\n\
         [limits]\nplans_per_minute = 1000000\nregistrations_per_minute = 1000000\npending_uploads = 100000\n\
         [audit]\ninterval = 86400\n[repair]\ncheck_interval = 86400\n",
        run.peers + 10
    );
    let (children, url) = coordinator_process(dir, &config).await?;
    let pid = children.0[0].id().to_string();
    let mut out = format!(
        "admission benchmark: a coordinator process, {} simulated peers (each on a port of its own), {} accounts, \
         proof-of-work off\n",
        run.peers, run.accounts
    );

    let (sim, servers) = simulate(run.peers).await?;
    let h = http::Client::new(Duration::from_secs(120));
    // Registrations: each a dial-back, then (in the background) an inventory.
    let first = (0..run.peers).map(|i| signed_heartbeat(&url, &sim.ids[i], &sim.addresses[i], 1));
    let (t, cpu0) = (Instant::now(), cpu_seconds(&pid));
    let reg = send_batch(&h, &pid, first, 3600).await;
    anyhow::ensure!(reg.ok == run.peers, "only {} of {} peers registered{}", reg.ok, run.peers, reg.refusals());
    let deadline = Instant::now() + Duration::from_secs(600);
    while sim.inventories.load(std::sync::atomic::Ordering::Relaxed) < run.peers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (all_secs, all_cpu) = (t.elapsed().as_secs_f64(), cpu_seconds(&pid) - cpu0);
    out += &format!(
        "registrations: {:.0}/s answered ({:.0}/s from the 80th to the 90th percent of them; {:.2} coordinator \
         CPU-ms each, dial-back included); with the inventory each new peer is asked for: {:.0}/s, {:.2} CPU-ms each\n",
        reg.rate(),
        reg.late_rate,
        reg.cpu_ms(),
        run.peers as f64 / all_secs,
        all_cpu * 1e3 / run.peers as f64
    );

    // Throwaway identities: fresh keys advertising an address where nothing listens (the
    // discard port), each refused once its dial-back fails.
    let throwaways =
        (0..run.peers.min(10_000)).map(|_| signed_heartbeat(&url, &Identity::generate(), "http://127.0.0.1:9", 1));
    let thrown = send_batch(&h, &pid, throwaways, run.secs).await;
    out += &format!(
        "throwaway identities (fresh key, nothing listening at the address), with {} peers registered: {:.0}/s \
         answered, {:.2} coordinator CPU-ms each ({})\n",
        run.peers,
        (thrown.ok + thrown.refused.values().sum::<usize>()) as f64 / thrown.secs,
        thrown.cpu_ms(),
        thrown.counts()
    );

    // Heartbeats of registered peers (signed as they are sent, by this process).
    let beats = (0..4u64)
        .flat_map(|r| (0..run.peers).map(move |i| (i, 2 + r)))
        .map(|(i, seq)| signed_heartbeat(&url, &sim.ids[i], &sim.addresses[i], seq));
    let hb = send_batch(&h, &pid, beats, run.secs).await;
    out += &format!(
        "heartbeats: {:.0}/s from {} registered peers over {:.1} s, {:.2} coordinator CPU-ms each{}\n",
        hb.rate(),
        run.peers,
        hb.secs,
        hb.cpu_ms(),
        hb.refusals()
    );

    // Plans from many accounts (each registers with its first request).
    let info: CoordinatorInfo = h.get(&format!("{url}/v2/info")).await?.json()?;
    let accounts: Vec<Identity> = (0..run.accounts).map(|_| Identity::generate()).collect();
    let segment_size = crate::core::codec::DEFAULT_SEGMENT_SIZE;
    let size = PLAN_SEGMENTS * crate::core::manifest::plain_per_segment(segment_size);
    let req = PlanRequest { size, k: 8, n: 20, segment_size, stream: false };
    let per_account = 8;
    let plans =
        (0..per_account).flat_map(|_| accounts.iter()).map(|a| signed_plan(&url, &info.coordinator_id, a, &req));
    let pl = send_batch(&h, &pid, plans, run.secs).await;
    out += &format!(
        "plans ({PLAN_SEGMENTS} segments of 8 MiB, 8-of-20, {} peers online), from {} accounts: {:.0}/s over {:.1} s, \
         {:.2} coordinator CPU-ms each{}\n",
        run.peers,
        run.accounts,
        pl.rate(),
        pl.secs,
        pl.cpu_ms(),
        pl.refusals()
    );

    // Memory while half-open connections are held, at most 200 from one address.
    let before = resident(&pid);
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse()?;
    let mut held = Vec::with_capacity(run.half_open);
    for i in 0..run.half_open {
        let from = std::net::Ipv4Addr::new(127, 0, 1, 1 + (i / 200) as u8);
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind((from, 0).into())?;
        let mut s = sock.connect(addr).await?;
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /v2/pe").await?;
        held.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = resident(&pid);
    let t = Instant::now();
    h.get(&format!("{url}/healthz")).await?.ok()?;
    let healthz = t.elapsed();
    drop(held);
    out += &format!(
        "{} half-open connections held (from {} addresses): coordinator VmRSS {:.1} → {:.1} MiB ({:.1} KiB each); \
         /healthz meanwhile in {:.1} ms\n",
        run.half_open,
        run.half_open.div_ceil(200),
        before as f64 / (1 << 20) as f64,
        during as f64 / (1 << 20) as f64,
        during.saturating_sub(before) as f64 / 1024.0 / run.half_open.max(1) as f64,
        healthz.as_secs_f64() * 1e3
    );

    // The largest plan the protocol allows: one alone, then one per core at once (from as many
    // accounts), with /healthz asked every 100 ms meanwhile.
    let biggest = PlanRequest {
        size: MAX_PLAN_SEGMENTS * crate::core::manifest::plain_per_segment(4096),
        k: 8,
        n: 20,
        segment_size: 4096,
        stream: false,
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    for at_once in [1, cores] {
        let reqs: Vec<_> =
            accounts.iter().take(at_once).map(|a| signed_plan(&url, &info.coordinator_id, a, &biggest)).collect();
        let (rss0, hwm0) = (resident(&pid), memory(&pid, "VmHWM"));
        let (t, cpu0) = (Instant::now(), cpu_seconds(&pid));
        let worst_us = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (w2, u2) = (worst_us.clone(), url.clone());
        let prober = tokio::spawn(async move {
            let quick = http::Client::new(Duration::from_secs(600));
            loop {
                let t = Instant::now();
                let _ = quick.get(&format!("{u2}/healthz")).await;
                w2.fetch_max(t.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let big = http::Client::new(Duration::from_secs(600));
        let replies = futures::future::join_all(reqs.into_iter().map(|r| big.send(r))).await;
        let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds(&pid) - cpu0);
        prober.abort();
        let worst = Duration::from_micros(worst_us.load(std::sync::atomic::Ordering::Relaxed));
        let peak = memory(&pid, "VmHWM").max(hwm0).max(rss0);
        let answers: Vec<String> = replies
            .iter()
            .map(|r| match r {
                Ok(r) => format!("HTTP {} ({:.1} MB)", r.status.as_u16(), r.body.len() as f64 / 1e6),
                Err(e) => format!("no answer ({e})"),
            })
            .collect();
        out += &format!(
            "largest plan allowed (65,536 segments of 4 KiB, 8-of-20, {} peers online), {at_once} at once: {} in \
             {secs:.2} s, {cpu:.2} coordinator CPU-s, VmRSS {:.0} MiB before, peak {:.0} MiB; /healthz meanwhile at worst \
             {:.0} ms\n",
            run.peers,
            answers.join(", "),
            rss0 as f64 / (1 << 20) as f64,
            peak as f64 / (1 << 20) as f64,
            worst.as_secs_f64() * 1e3
        );
    }
    drop(children);
    for s in servers {
        s.shutdown().await;
    }
    Ok(out)
}
