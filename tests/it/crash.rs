//! Crash tests: a network of separate processes (the real `p2pstore` binary: one coordinator,
//! `NODES` nodes, each with its own config.toml of one-to-two-second intervals) runs a
//! workload of uploads, downloads, deletes, aborted uploads, bare shard PUTs, repairs (a node
//! kept down past the grace period), garbage collection and one graceful exit, while the
//! coordinator or a node is SIGKILLed at a random moment and restarted (sometimes killed
//! again while it starts). After every round, once the network settled, the invariants hold:
//! every committed file downloads byte-identical; a deleted one stays deleted; every placement
//! points at a shard its node serves (under the coordinator's any-shard grant and under the
//! file's own grant) and knows the file needs; every acknowledged PUT is on disk; a node's
//! used counter and shard count match its shard files; no temporary file is left; no process
//! died on its own, and no notice was refused. At the end, what deleted files and abandoned
//! uploads held has left the nodes' shard directories.
//!
//! Every random choice comes from one seeded RNG; the seed is printed first and in every
//! failure. Runs:
//! ```text
//! cargo test --test it crash -- --nocapture                                   # CI: 3 rounds
//! P2PSTORE_CRASH_ROUNDS=100 cargo test --release --test it crash -- --nocapture  # longer
//! P2PSTORE_CRASH_SEED=1234 cargo test --test it crash -- --nocapture         # replay a seed
//! ```
//! (Timing is not replayed, only the choices: a seed replays the same kills and workload.)
//! A failing run keeps its directory (every process's log is `<name>.log` there).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pstore::client::Client;
use p2pstore::core::identity::Identity;
use p2pstore::core::manifest::FileId;
use p2pstore::core::merkle::{self, ShardId};
use p2pstore::net::client::{self as http, request};
use p2pstore::proto::*;

use crate::harness::{PER_SEGMENT, data, fast_config, params};

const NODES: usize = 7;
const PASSWORD: &[u8] = b"crash-pw";
/// Accounts the workload uploads with.
const ACCOUNTS: usize = 2;

// ---------------------------------------------------------------------------------------
// A seeded RNG (splitmix64): the same seed makes the same choices.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.next() as usize % items.len()]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

// ---------------------------------------------------------------------------------------
// Processes.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One process of the network: how to start it, and the running child.
struct Proc {
    name: String,
    args: Vec<String>,
    cwd: PathBuf,
    dir: PathBuf,
    url: String,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Proc {
    fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        writeln!(log, "==== start {} of {} ====", self.starts, self.name).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_p2pstore"));
        c.args(&self.args).current_dir(&self.cwd).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        for var in ["P2PSTORE_CONFIG", "P2PSTORE_COORDINATOR", "P2PSTORE_ACCOUNT", "P2PSTORE_PASSWORD", "RUST_LOG"] {
            c.env_remove(var);
        }
        // Info by default: the logs of a failing run tell what happened.
        c.env("RUST_LOG", std::env::var("P2PSTORE_CRASH_LOG").unwrap_or_else(|_| "info".into()));
        c.env("NO_COLOR", "1");
        // The child dies with the test (a test killed mid-run leaves no network behind).
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(c.spawn().unwrap());
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGINT (what Ctrl-C sends): the graceful stop.
    fn interrupt(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.wait();
        }
    }

    /// Whether it exited on its own (a crash, a panic): its status then.
    fn died(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let h = http::Client::new(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.died() {
                return Err(format!("{} exited at start ({st}):\n{}", self.name, self.log_tail(30)));
            }
            if h.get(&format!("{}/healthz", self.url)).await.is_ok_and(|r| r.status.is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready after 30 s:\n{}", self.name, self.log_tail(30)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Net {
    coordinator: Proc,
    nodes: Vec<Proc>,
    /// Peer id of each node, known once it started.
    peers: Vec<String>,
    /// Nodes that exited gracefully and were stopped for good.
    gone: Vec<bool>,
}

impl Net {
    fn new(root: &Path, nodes: usize) -> Net {
        let mut config = fast_config();
        // Every node registers from 127.0.0.1.
        config.limits.registrations_per_minute = 1000;
        let text = toml::to_string(&config).unwrap();
        let cport = free_port();
        let curl = format!("http://127.0.0.1:{cport}");
        let proc = |name: String, args: Vec<String>, dir: PathBuf, url: String| {
            let cfg = root.join(format!("{name}.toml"));
            std::fs::write(&cfg, &text).unwrap();
            let mut all = vec!["--config".to_owned(), cfg.display().to_string()];
            all.extend(args);
            Proc {
                log: root.join(format!("{name}.log")),
                name,
                args: all,
                cwd: root.to_owned(),
                dir,
                url,
                child: None,
                starts: 0,
            }
        };
        let cdir = root.join("coordinator");
        let coordinator = proc(
            "coordinator".into(),
            vec![
                "coordinator".into(),
                "--port".into(),
                cport.to_string(),
                "--data-dir".into(),
                cdir.display().to_string(),
            ],
            cdir,
            curl.clone(),
        );
        let nodes: Vec<Proc> = (0..nodes)
            .map(|i| {
                let port = free_port();
                let dir = root.join(format!("node-{i}"));
                let args = vec![
                    "--coordinator".into(),
                    curl.clone(),
                    "node".into(),
                    "--port".into(),
                    port.to_string(),
                    "--data-dir".into(),
                    dir.display().to_string(),
                    "--max-storage-gb".into(),
                    "1".into(),
                ];
                proc(format!("node-{i}"), args, dir, format!("http://127.0.0.1:{port}"))
            })
            .collect();
        let n = nodes.len();
        Net { coordinator, nodes, peers: vec![String::new(); n], gone: vec![false; n] }
    }

    fn url(&self) -> String {
        self.coordinator.url.clone()
    }

    fn proc(&mut self, v: Victim) -> &mut Proc {
        match v {
            Victim::Coordinator => &mut self.coordinator,
            Victim::Node(i) => &mut self.nodes[i],
        }
    }

    fn node_of(&self, peer: &str) -> Option<usize> {
        self.peers.iter().position(|p| p == peer)
    }

    fn live_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| !self.gone[i]).collect()
    }

    /// The coordinator's key, from its data directory (tests sign grants with it).
    fn coordinator_key(&self) -> Identity {
        p2pstore::store::identity::load_file(&self.coordinator.dir.join("identity.p8")).unwrap()
    }

    async fn start_all(&mut self) -> Result<(), String> {
        self.coordinator.start();
        self.coordinator.wait_ready().await?;
        for n in &mut self.nodes {
            n.start();
        }
        let h = http::Client::new(Duration::from_secs(5));
        for i in 0..self.nodes.len() {
            self.nodes[i].wait_ready().await?;
            let st: NodeStatus = h.get(&format!("{}/v2/status", self.nodes[i].url)).await.unwrap().json().unwrap();
            self.peers[i] = st.peer_id;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Coordinator,
    Node(usize),
}

// ---------------------------------------------------------------------------------------
// What the test knows the network must hold.

#[derive(Clone)]
struct Stored {
    id: FileId,
    owner: usize,
    bytes: Arc<Vec<u8>>,
}

#[derive(Clone)]
struct Gone {
    id: FileId,
    /// Its shard ids, read before the delete.
    shards: Vec<ShardId>,
}

/// A shard a node acknowledged with a receipt.
#[derive(Clone)]
struct Acked {
    node: usize,
    id: ShardId,
    bytes: Bytes,
}

#[derive(Default)]
struct Model {
    files: Vec<Stored>,
    deleted: Vec<Gone>,
    /// Uploads whose outcome the client did not see (an error, or aborted): committed or not.
    maybe_committed: Vec<(usize, Arc<Vec<u8>>)>,
    /// Deletes whose outcome the client did not see.
    maybe_deleted: Vec<(Stored, Gone)>,
    acked: Vec<Acked>,
    /// Violations seen during the workload itself (a wrong download).
    seen: Vec<String>,
}

/// What one round's workload did.
#[derive(Default)]
struct Outcome {
    committed: Vec<Stored>,
    maybe_committed: Vec<(usize, Arc<Vec<u8>>)>,
    deleted: Vec<Gone>,
    maybe_deleted: Vec<(Stored, Gone)>,
    acked: Vec<Acked>,
    violations: Vec<String>,
    log: Vec<String>,
    /// The node whose graceful exit was asked for.
    exit_requested: Option<usize>,
}

/// One round's choices, all drawn before it starts.
struct RoundPlan {
    uploads: Vec<(usize, usize, u64, (u8, u8))>,
    aborted: Option<(usize, usize, u64, u64)>,
    download: Option<usize>,
    delete: Option<usize>,
    probe_seed: Option<u64>,
    victim: Victim,
    kill_at: u64,
    down: u64,
    kill_again: Option<u64>,
    exit: Option<usize>,
}

const WORK_MS: u64 = 2500;

fn draw_round(rng: &mut Rng, net: &Net, model: &Model, exit_now: bool, exiting: Option<usize>) -> RoundPlan {
    let shapes = [(2u8, 4u8), (3, 5), (2, 5)];
    let size = |rng: &mut Rng| match rng.range(0, 5) {
        0 => rng.range(1, 100) as usize,
        1 => PER_SEGMENT * rng.range(1, 3) as usize,
        _ => rng.range(1, 4 * PER_SEGMENT as u64) as usize,
    };
    let uploads = (0..rng.range(1, 3))
        .map(|_| {
            let (owner, len, seed) = (rng.range(0, ACCOUNTS as u64 - 1) as usize, size(rng), rng.next());
            (owner, len, seed, rng.pick(&shapes))
        })
        .collect();
    let aborted =
        rng.chance(0.5).then(|| (rng.range(0, ACCOUNTS as u64 - 1) as usize, size(rng), rng.next(), rng.range(0, 600)));
    let n = model.files.len() as u64;
    let download = (n > 0).then(|| rng.range(0, n - 1) as usize);
    let delete = (n > 2 && rng.chance(0.5)).then(|| rng.range(0, n - 1) as usize);
    let probe_seed = rng.chance(0.7).then(|| rng.next());
    let live = net.live_nodes();
    let victim = if rng.chance(0.35) { Victim::Coordinator } else { Victim::Node(rng.pick(&live)) };
    let kill_at = rng.range(0, WORK_MS);
    let down = match (victim, rng.range(0, 9)) {
        (_, 0..=2) => 0,
        // Down past heartbeat timeout + grace period: its shards are repaired.
        (Victim::Node(_), 3..=5) => rng.range(4500, 6500),
        _ => rng.range(100, 1500),
    };
    let kill_again = rng.chance(0.2).then(|| rng.range(0, 400));
    let candidates: Vec<usize> = live.iter().copied().filter(|&i| Some(i) != exiting).collect();
    let exit = (exit_now && exiting.is_none()).then(|| rng.pick(&candidates));
    RoundPlan { uploads, aborted, download, delete, probe_seed, victim, kill_at, down, kill_again, exit }
}

// ---------------------------------------------------------------------------------------
// The workload.

async fn workload(
    clients: Arc<Vec<Client>>,
    files: Vec<Stored>,
    plan: Arc<RoundPlan>,
    url: String,
    node_dirs: Vec<PathBuf>,
    peers: Vec<String>,
    scratch: PathBuf,
) -> Outcome {
    let stop = Instant::now() + Duration::from_millis(WORK_MS);
    let uploads = async {
        let mut out = Outcome::default();
        for (k, &(owner, len, seed, (kk, nn))) in plan.uploads.iter().enumerate() {
            let bytes = Arc::new(data(len, seed));
            let path = scratch.join(format!("up-{seed}-{k}"));
            std::fs::write(&path, &*bytes).unwrap();
            match clients[owner].upload(&path, PASSWORD, params(kk, nn), None).await {
                Ok(id) => {
                    out.log.push(format!("uploaded {len} B {kk}-of-{nn} as {}", short(&id)));
                    out.committed.push(Stored { id, owner, bytes });
                }
                Err(e) => {
                    out.log.push(format!("upload of {len} B failed: {e}"));
                    out.maybe_committed.push((owner, bytes));
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        out
    };
    let others = async {
        let mut out = Outcome::default();
        if let Some((owner, len, seed, after)) = plan.aborted {
            let bytes = Arc::new(data(len, seed));
            let path = scratch.join(format!("abort-{seed}"));
            std::fs::write(&path, &*bytes).unwrap();
            let up = clients[owner].upload(&path, PASSWORD, params(2, 4), None);
            match tokio::time::timeout(Duration::from_millis(after), up).await {
                Ok(Ok(id)) => out.committed.push(Stored { id, owner, bytes }),
                Ok(Err(_)) | Err(_) => {
                    out.log.push(format!("upload of {len} B abandoned after {after} ms"));
                    out.maybe_committed.push((owner, bytes));
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        if let Some(i) = plan.download {
            let f = &files[i];
            let o = scratch.join("downloads").join(short(&f.id));
            match clients[f.owner].download(&f.id, PASSWORD, Some(&o), true, None).await {
                Ok(_) => {
                    if std::fs::read(&o).unwrap() != *f.bytes {
                        out.violations.push(format!("file {} downloaded with other bytes", f.id));
                    }
                    let _ = std::fs::remove_file(&o);
                    out.log.push(format!("downloaded {}", short(&f.id)));
                }
                Err(e) => out.log.push(format!("download of {} failed: {e}", short(&f.id))),
            }
        }
        if let Some(i) = plan.delete {
            let f = files[i].clone();
            if let Ok(m) = clients[f.owner].segments(&f.id).await {
                let gone = Gone { id: f.id, shards: m.iter().flat_map(|s| s.shard_ids.clone()).collect() };
                match clients[f.owner].remove(&f.id, PASSWORD).await {
                    Ok(()) => {
                        out.log.push(format!("deleted {}", short(&f.id)));
                        out.deleted.push(gone);
                    }
                    // Refused, or never sent: not deleted.
                    Err(e)
                        if matches!(e, p2pstore::client::ClientError::Unreachable { .. })
                            || e.status().is_some_and(|s| s.is_client_error()) =>
                    {
                        out.log.push(format!("delete of {} refused: {e}", short(&f.id)));
                    }
                    Err(e) => {
                        out.log.push(format!("delete of {} unanswered: {e}", short(&f.id)));
                        out.maybe_deleted.push((f, gone));
                    }
                }
            }
        }
        out
    };
    // Bare PUTs under a plan never committed: each receipt is a promise the shard is on disk.
    let probes = async {
        let mut out = Outcome::default();
        let Some(seed) = plan.probe_seed else { return out };
        let req = PlanRequest { size: 200_000, k: 2, n: 4, segment_size: crate::harness::SEGMENT, stream: false };
        let Ok(p) = clients[0].plan(&req).await else { return out };
        let h = http::Client::new(Duration::from_secs(5));
        let mut rng = Rng(seed);
        let mut n = 0;
        while Instant::now() < stop {
            let peer = p.orders.keys().nth(rng.range(0, p.orders.len() as u64 - 1) as usize).unwrap().clone();
            let len = rng.range(1, 32 * 1024) as usize;
            let body = Bytes::from(data(len, rng.next()));
            let id = merkle::root(&body);
            let order = serde_json::to_string(&p.orders[&peer]).unwrap();
            let url = format!("{}/v2/shards/{id}", p.addresses[&peer]);
            let req = request("PUT", &url, &[(ORDER_HEADER, &order)], body.clone()).unwrap();
            if let Ok(r) = h.send(req).await
                && r.status.is_success()
            {
                let receipt: Signed<Receipt> = r.json().unwrap();
                let rc = receipt.open().expect("a receipt opens");
                assert_eq!((rc.shard_id, &rc.peer_id), (id, &peer));
                let node = peers.iter().position(|p| *p == peer).expect("a node of this network");
                out.acked.push(Acked { node, id, bytes: body });
                n += 1;
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        out.log.push(format!("{n} bare PUTs acknowledged"));
        out
    };
    let exit = async {
        let mut out = Outcome::default();
        if let Some(i) = plan.exit {
            match p2pstore::node::request_exit(&node_dirs[i], &url, &p2pstore::sys::clock::Clock::system()).await {
                Ok(v) => {
                    out.log.push(format!("node-{i} asked to exit ({} shards to move)", v.placed));
                    out.exit_requested = Some(i);
                }
                Err(e) => out.log.push(format!("node-{i}'s exit request failed: {e}")),
            }
        }
        out
    };
    let (a, b, c, d) = tokio::join!(uploads, others, probes, exit);
    let mut out = Outcome::default();
    for o in [a, b, c, d] {
        out.committed.extend(o.committed);
        out.maybe_committed.extend(o.maybe_committed);
        out.deleted.extend(o.deleted);
        out.maybe_deleted.extend(o.maybe_deleted);
        out.acked.extend(o.acked);
        out.violations.extend(o.violations);
        out.log.extend(o.log);
        out.exit_requested = out.exit_requested.or(o.exit_requested);
    }
    out
}

fn short(id: &FileId) -> String {
    id.to_string()[..12].to_owned()
}

// ---------------------------------------------------------------------------------------
// Invariants.

/// What is on a node's disk.
#[derive(Default)]
struct Disk {
    shards: HashMap<ShardId, u64>,
    trash: HashSet<ShardId>,
    leftovers: Vec<String>,
}

/// Every file under `dir`, but in sled's own directories (`index` of a node, `db` of the
/// coordinator, at the top).
fn scan(dir: &Path, top: bool, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if !(top && matches!(p.file_name().and_then(|n| n.to_str()), Some("index" | "db"))) {
                scan(&p, false, out);
            }
        } else {
            out.push(p);
        }
    }
}

fn disk(dir: &Path) -> Disk {
    let mut d = Disk::default();
    let mut files = Vec::new();
    scan(dir, true, &mut files);
    for p in files {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".tmp-") || name.ends_with(".part") {
            d.leftovers.push(p.display().to_string());
            continue;
        }
        let parent = p.parent().unwrap();
        let id = ShardId::from_hex(&name);
        match id {
            Some(id) if parent.file_name().is_some_and(|n| n == "trash") => {
                d.trash.insert(id);
            }
            Some(id) if parent.parent().is_some_and(|pp| pp.file_name().is_some_and(|n| n == "shards")) => {
                if let Ok(m) = p.metadata() {
                    d.shards.insert(id, m.len());
                }
            }
            _ => {}
        }
    }
    d
}

fn shard_path(node_dir: &Path, id: &ShardId) -> PathBuf {
    let hex = id.to_hex();
    node_dir.join("shards").join(&hex[..2]).join(hex)
}

struct Checker<'a> {
    net: &'a mut Net,
    clients: &'a [Client],
    scratch: &'a Path,
    h: http::Client,
}

impl Checker<'_> {
    /// What the clients did not see the end of: an upload whose commit was not answered may
    /// have committed, and a delete not answered may have deleted; neither is promised, so
    /// neither is asserted, but what an account lists must be one of its uploads and download
    /// byte-identical. `Err` while the coordinator does not answer.
    async fn unacknowledged(&self, model: &Model) -> Result<Vec<String>, String> {
        let mut problems = Vec::new();
        let known: HashSet<FileId> = model
            .files
            .iter()
            .map(|f| f.id)
            .chain(model.deleted.iter().map(|g| g.id))
            .chain(model.maybe_deleted.iter().map(|(f, _)| f.id))
            .collect();
        for (owner, c) in self.clients.iter().enumerate() {
            let listed = c.list().await.map_err(|e| e.to_string())?;
            for s in listed {
                let id = FileId::parse(&s.file_id).unwrap();
                if known.contains(&id) {
                    continue;
                }
                let out = self.scratch.join("downloads").join(format!("unknown-{}", short(&id)));
                let got = c.download(&id, PASSWORD, Some(&out), true, None).await;
                let bytes = std::fs::read(&out).ok();
                let _ = std::fs::remove_file(&out);
                let ours = model
                    .maybe_committed
                    .iter()
                    .any(|(o, b)| *o == owner && b.len() as u64 == s.size && bytes.as_deref() == Some(&b[..]));
                match got {
                    Ok(_) if ours => {}
                    Ok(_) => problems.push(format!("account {owner} lists file {id}, which it never uploaded")),
                    Err(e) => problems.push(format!("account {owner} lists file {id}, which does not download: {e}")),
                }
            }
        }
        Ok(problems)
    }

    /// Every invariant that must hold once the network settled; the problems found.
    async fn check(&mut self, model: &mut Model) -> Vec<String> {
        let mut p = model.seen.clone();
        // Processes: none died on its own.
        for proc in std::iter::once(&mut self.net.coordinator).chain(self.net.nodes.iter_mut()) {
            if proc.child.is_some()
                && let Some(st) = proc.died()
            {
                p.push(format!("{} exited on its own ({st}):\n{}", proc.name, proc.log_tail(30)));
            }
        }
        match self.unacknowledged(model).await {
            Ok(more) => p.extend(more),
            Err(e) => {
                p.push(format!("the coordinator does not answer: {e}"));
                return p;
            }
        }
        // Every live node is online.
        match self.clients[0].peers().await {
            Ok(peers) => {
                for i in self.net.live_nodes() {
                    let v = peers.iter().find(|v| v.peer_id == self.net.peers[i]);
                    if !v.is_some_and(|v| v.state == PeerState::Online) {
                        p.push(format!("node-{i} is not online: {:?}", v.map(|v| (v.state, v.status))));
                    }
                }
            }
            Err(e) => p.push(format!("peers: {e}")),
        }
        let key = self.net.coordinator_key();
        let any_grant = |peer: &str| grant(&key, peer, ANY_UPLOAD);
        // What each node says it holds, and for which files.
        let mut held: Vec<Option<HashMap<ShardId, Vec<String>>>> = vec![None; self.net.nodes.len()];
        for i in self.net.live_nodes() {
            match inventory(&self.h, &key, &self.net.peers[i], &self.net.nodes[i].url).await {
                Ok(m) => held[i] = Some(m),
                Err(e) => p.push(format!("node-{i}'s inventory: {e}")),
            }
        }
        // Committed files: download byte-identical; every placement served and known.
        let mut live_shards = HashSet::new();
        for f in &model.files {
            let c = &self.clients[f.owner];
            let out = self.scratch.join("downloads").join(short(&f.id));
            match c.download(&f.id, PASSWORD, Some(&out), true, None).await {
                Ok(_) if std::fs::read(&out).unwrap() == *f.bytes => {}
                Ok(_) => p.push(format!("file {} downloads with other bytes", f.id)),
                Err(e) => p.push(format!("committed file {} does not download: {e}", f.id)),
            }
            let _ = std::fs::remove_file(&out);
            let (view, m) = match (c.info(&f.id).await, c.segments(&f.id).await) {
                (Ok(v), Ok(m)) => (v, m),
                (Err(e), _) | (_, Err(e)) => {
                    p.push(format!("committed file {}: info/manifest: {e}", f.id));
                    continue;
                }
            };
            for (s, seg) in m.iter().enumerate() {
                for (j, sid) in seg.shard_ids.iter().enumerate() {
                    live_shards.insert(*sid);
                    let peer = &view.placements[s][j];
                    let at = format!("file {} segment {s} shard {j} ({}) on", short(&f.id), &sid.to_hex()[..12]);
                    let Some(i) = self.net.node_of(peer) else {
                        p.push(format!("{at} unknown peer {peer}"));
                        continue;
                    };
                    if self.net.gone[i] {
                        p.push(format!("{at} node-{i}, which exited"));
                        continue;
                    }
                    let url = format!("{}/v2/shards/{sid}", self.net.nodes[i].url);
                    match self.get(&url, &any_grant(peer)).await {
                        Ok(b) if merkle::root(&b) == *sid => {}
                        Ok(_) => p.push(format!("{at} node-{i}: served bytes that are not the shard")),
                        Err(e) => p.push(format!("{at} node-{i}: not held: {e}")),
                    }
                    match view.grants.get(peer) {
                        Some(g) => {
                            if let Err(e) = self.get(&url, &serde_json::to_string(g).unwrap()).await {
                                p.push(format!("{at} node-{i}: held, but not readable under the file's grant: {e}"));
                            }
                        }
                        None => p.push(format!("{at} node-{i}: no grant for it in the file's view")),
                    }
                    if let Some(h) = &held[i] {
                        let fid = f.id.to_string();
                        match h.get(sid) {
                            Some(files) if files.contains(&fid) => {}
                            Some(files) => p.push(format!(
                                "{at} node-{i}: its index does not know the file needs it (files: {files:?})"
                            )),
                            None => p.push(format!("{at} node-{i}: not in its index")),
                        }
                    }
                }
            }
        }
        // Deleted files stay deleted.
        for g in &model.deleted {
            match self.clients[0].info(&g.id).await {
                Err(e) if e.status() == Some(hyper::StatusCode::NOT_FOUND) => {}
                Ok(_) => p.push(format!("deleted file {} is back", g.id)),
                Err(e) => p.push(format!("deleted file {}: {e}", g.id)),
            }
        }
        // Disks: acknowledged shards are there; counters match; no leftovers.
        let disks: Vec<Disk> = self.net.nodes.iter().map(|n| disk(&n.dir)).collect();
        for a in &model.acked {
            let dir = &self.net.nodes[a.node].dir;
            let hex = a.id.to_hex();
            let on_disk =
                std::fs::read(shard_path(dir, &a.id)).or_else(|_| std::fs::read(dir.join("trash").join(&hex)));
            match on_disk {
                Ok(b) if b == a.bytes[..] => {}
                Ok(b) => p.push(format!(
                    "node-{}: acknowledged shard {hex} has {} bytes on disk, not its {}",
                    a.node,
                    b.len(),
                    a.bytes.len()
                )),
                Err(_) => p.push(format!("node-{}: acknowledged shard {hex} is not on disk", a.node)),
            }
        }
        for i in self.net.live_nodes() {
            let d = &disks[i];
            let (bytes, count) = (d.shards.values().sum::<u64>(), d.shards.len() as u64);
            match self.h.get(&format!("{}/v2/status", self.net.nodes[i].url)).await.and_then(|r| r.json::<NodeStatus>())
            {
                Ok(st) if (st.used, st.shards) == (bytes, count) => {}
                Ok(st) => p.push(format!(
                    "node-{i}: status says used {} in {} shards, its shards/ holds {bytes} in {count} files",
                    st.used, st.shards
                )),
                Err(e) => p.push(format!("node-{i}: status: {e}")),
            }
        }
        for (d, name) in disks
            .iter()
            .map(|d| (&d.leftovers, "node"))
            .chain(std::iter::once((&disk(&self.net.coordinator.dir).leftovers, "coordinator")))
        {
            for l in d {
                p.push(format!("{name}: temporary file left: {l}"));
            }
        }
        for l in disk(&self.scratch.join("downloads")).leftovers {
            p.push(format!("download leftover: {l}"));
        }
        // Logs: no notice refused (a refusal stops a node's notices for good), no panic.
        for proc in std::iter::once(&self.net.coordinator).chain(self.net.nodes.iter()) {
            let text = std::fs::read_to_string(&proc.log).unwrap_or_default();
            for line in text.lines() {
                if line.contains("notice was refused")
                    || line.contains("notice from the coordinator was refused")
                    || line.contains("panicked")
                {
                    p.push(format!("{}: {line}", proc.name));
                }
            }
        }
        let _ = live_shards;
        p
    }

    async fn get(&self, url: &str, grant: &str) -> Result<Bytes, String> {
        get(&self.h, url, grant).await
    }

    /// What must have happened by the end: shards of deleted files and of abandoned uploads
    /// have left the shard directories of the nodes.
    async fn check_collected(&mut self, model: &mut Model) -> Vec<String> {
        let mut p = Vec::new();
        // Needed: the shards of every file an account lists (committed without its client
        // hearing too), and of those whose delete was not answered.
        let mut needed: HashSet<ShardId> = model.maybe_deleted.iter().flat_map(|(_, g)| g.shards.clone()).collect();
        for c in self.clients {
            let listed = match c.list().await {
                Ok(l) => l,
                Err(e) => return vec![format!("list: {e}")],
            };
            for s in listed {
                match c.segments(&FileId::parse(&s.file_id).unwrap()).await {
                    Ok(m) => needed.extend(m.iter().flat_map(|s| s.shard_ids.clone())),
                    Err(e) => return vec![format!("manifest of {}: {e}", s.file_id)],
                }
            }
        }
        let disks: Vec<Disk> = self.net.nodes.iter().map(|n| disk(&n.dir)).collect();
        for g in &model.deleted {
            for sid in g.shards.iter().filter(|s| !needed.contains(s)) {
                for i in self.net.live_nodes() {
                    if disks[i].shards.contains_key(sid) {
                        p.push(format!(
                            "node-{i} still holds shard {} of deleted file {}",
                            &sid.to_hex()[..12],
                            short(&g.id)
                        ));
                    }
                }
            }
        }
        for a in &model.acked {
            if !self.net.gone[a.node] && !needed.contains(&a.id) && disks[a.node].shards.contains_key(&a.id) {
                p.push(format!("node-{} still holds shard {} of an abandoned upload", a.node, &a.id.to_hex()[..12]));
            }
        }
        p
    }
}

/// A read grant for `upload` ("*": any shard) on `peer`, signed with the coordinator's key,
/// as a header.
fn grant(key: &Identity, peer: &str, upload: &str) -> String {
    let g = ReadGrant {
        peer_id: peer.to_owned(),
        upload_id: upload.into(),
        grantee: "crash-test".into(),
        expires: now() + 600,
    };
    serde_json::to_string(&key.sign(&g)).unwrap()
}

async fn get(h: &http::Client, url: &str, grant: &str) -> Result<Bytes, String> {
    let req = request("GET", url, &[(GRANT_HEADER, grant)], Bytes::new()).unwrap();
    let r = h.send(req).await.map_err(|e| e.to_string())?;
    r.ok().map(|r| r.body).map_err(|e| e.to_string())
}

/// Every shard the node `peer` at `url` lists in its index, with the files it says need it.
async fn inventory(
    h: &http::Client,
    key: &Identity,
    peer: &str,
    url: &str,
) -> Result<HashMap<ShardId, Vec<String>>, String> {
    let mut out = HashMap::new();
    let mut after = None;
    loop {
        let req = InventoryRequest { peer_id: peer.to_owned(), after, expires: now() + 600, deletions_after: None };
        let r = h.post_json(&format!("{url}/v2/inventory"), &key.sign(&req)).await;
        let inv: Inventory = r.and_then(|r| r.json()).map_err(|e| e.to_string())?;
        after = inv.shards.last().map(|s| s.shard_id);
        for s in inv.shards {
            out.insert(s.shard_id, s.files);
        }
        if !inv.more {
            return Ok(out);
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

// ---------------------------------------------------------------------------------------
// The test.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_lose_no_committed_file() {
    let seed = env_u64("P2PSTORE_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_007
    });
    let rounds = env_u64("P2PSTORE_CRASH_ROUNDS").unwrap_or(3);
    println!("crash test: seed {seed}, {rounds} rounds (replay: P2PSTORE_CRASH_SEED={seed})");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let result = run(seed, rounds, &root).await;
    if let Err(report) = result {
        let kept = tmp.keep();
        panic!(
            "crash test failed (seed {seed}; replay with P2PSTORE_CRASH_SEED={seed} P2PSTORE_CRASH_ROUNDS={rounds}); \
             logs and data kept in {}:\n{report}",
            kept.display()
        );
    }
}

async fn run(seed: u64, rounds: u64, root: &Path) -> Result<(), String> {
    let mut rng = Rng(seed);
    let started = Instant::now();
    let scratch = root.join("scratch");
    std::fs::create_dir_all(scratch.join("downloads")).unwrap();
    let mut net = Net::new(root, NODES);
    net.start_all().await?;
    let url = net.url();
    let clients: Arc<Vec<Client>> = Arc::new((0..ACCOUNTS).map(|_| Client::with_fresh_account(&url)).collect());
    let mut model = Model::default();
    let exit_round = (rounds >= 2).then(|| rng.range(0, rounds - 1));
    let mut exiting: Option<usize> = None;
    settle(&mut net, &clients, &scratch, &mut model, 60, 0, seed).await?;

    for round in 0..rounds {
        let exit_now = exit_round.is_some_and(|r| round >= r);
        let plan = Arc::new(draw_round(&mut rng, &net, &model, exit_now, exiting));
        let work = tokio::spawn(workload(
            clients.clone(),
            model.files.clone(),
            plan.clone(),
            url.clone(),
            net.nodes.iter().map(|n| n.dir.clone()).collect(),
            net.peers.clone(),
            scratch.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(plan.kill_at)).await;
        let victim = net.proc(plan.victim);
        victim.kill();
        tokio::time::sleep(Duration::from_millis(plan.down)).await;
        victim.start();
        if let Some(again) = plan.kill_again {
            tokio::time::sleep(Duration::from_millis(again)).await;
            victim.kill();
            victim.start();
        }
        victim.wait_ready().await?;
        let out = work.await.map_err(|e| format!("the workload panicked: {e}"))?;
        println!(
            "round {round} ({:.0} s): killed {:?} at {} ms, down {} ms{}; {}",
            started.elapsed().as_secs_f64(),
            plan.victim,
            plan.kill_at,
            plan.down,
            plan.kill_again.map(|a| format!(", killed again {a} ms after restart")).unwrap_or_default(),
            out.log.join("; ")
        );
        model.files.extend(out.committed);
        model.maybe_committed.extend(out.maybe_committed);
        let deleted: HashSet<FileId> =
            out.deleted.iter().map(|g| g.id).chain(out.maybe_deleted.iter().map(|(f, _)| f.id)).collect();
        model.files.retain(|f| !deleted.contains(&f.id));
        model.deleted.extend(out.deleted);
        model.maybe_deleted.extend(out.maybe_deleted);
        model.acked.extend(out.acked);
        model.seen.extend(out.violations);
        exiting = exiting.or(out.exit_requested);

        // A node that finished its graceful exit is stopped for good.
        if let Some(i) = exiting
            && !net.gone[i]
            && clients[0]
                .peers()
                .await
                .is_ok_and(|ps| ps.iter().any(|v| v.peer_id == net.peers[i] && v.status == PeerStatus::Exited))
        {
            net.nodes[i].interrupt();
            net.gone[i] = true;
            println!("round {round}: node-{i} has exited and is stopped");
        }
        settle(&mut net, &clients, &scratch, &mut model, 60, round, seed).await?;
    }

    // At the end: the exit completes, and what nobody needs has been collected.
    if let Some(i) = exiting
        && !net.gone[i]
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let exited = clients[0]
                .peers()
                .await
                .is_ok_and(|ps| ps.iter().any(|v| v.peer_id == net.peers[i] && v.status == PeerStatus::Exited));
            if exited {
                net.nodes[i].interrupt();
                net.gone[i] = true;
                println!("node-{i} has exited and is stopped");
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("node-{i} did not finish its graceful exit within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    settle(&mut net, &clients, &scratch, &mut model, 60, rounds, seed).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = Checker {
            net: &mut net,
            clients: &clients,
            scratch: &scratch,
            h: http::Client::new(Duration::from_secs(5)),
        };
        let p = c.check_collected(&mut model).await;
        if p.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("after all rounds, 60 s on:\n  {}", p.join("\n  ")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "crash test passed: seed {seed}, {rounds} rounds, {} files committed, {} deleted, {} bare PUTs, {:.0} s",
        model.files.len(),
        model.deleted.len(),
        model.acked.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Polls the invariants until they all hold; fails with the last problems after `secs`.
async fn settle(
    net: &mut Net,
    clients: &[Client],
    scratch: &Path,
    model: &mut Model,
    secs: u64,
    round: u64,
    seed: u64,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut c = Checker { net, clients, scratch, h: http::Client::new(Duration::from_secs(5)) };
        let p = c.check(model).await;
        if p.is_empty() {
            println!("round {round}: invariants hold ({:.1} s to settle)", start.elapsed().as_secs_f64());
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
            for x in &p {
                *by_kind.entry(x.clone()).or_default() += 1;
            }
            return Err(format!(
                "round {round} (seed {seed}): after {secs} s the invariants still fail:\n  {}",
                by_kind.into_keys().collect::<Vec<_>>().join("\n  ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Reductions of what the random test found, against the shard store alone.

/// Repair moves a shard off a node (released: trashed) and later back onto it (a fresh PUT
/// while the old copy is in the trash); the repair's notice then names it (`commit`).
#[test]
fn a_shard_stored_again_while_in_the_trash_is_counted_once() {
    use p2pstore::store::shards::ShardStore;
    let dir = tempfile::tempdir().unwrap();
    let s = ShardStore::open(dir.path(), 1 << 20).unwrap();
    let a = merkle::root(&[5; 1000]);
    s.put(&a, &[5; 1000], "u1", 1).unwrap();
    s.commit("u1", "f1", &[a], true, 2).unwrap();
    s.release("f1", &[a], 3).unwrap(); // repair moved it away
    assert_eq!((s.used(), s.trashed()), (0, 1000));
    s.put(&a, &[5; 1000], "u1", 4).unwrap(); // and back
    s.commit("u1", "f1", &[a], false, 5).unwrap(); // the repair's notice
    let on_disk = std::fs::metadata(shard_path(dir.path(), &a)).unwrap().len();
    assert_eq!((s.used(), s.count()), (on_disk, 1), "used counts the shard once");
}

// ---------------------------------------------------------------------------------------
// Directed crashes: one kill at the moment the random test found dangerous.

impl Net {
    /// Waits until every live node shows as online.
    async fn all_online(&self, c: &Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let peers = c.peers().await.unwrap_or_default();
            let online = |i: usize| peers.iter().any(|v| v.peer_id == self.peers[i] && v.state == PeerState::Online);
            if self.live_nodes().into_iter().all(online) {
                return;
            }
            assert!(Instant::now() < deadline, "nodes not online after 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs and restarts every node at once.
    async fn kill_and_restart_nodes(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for n in &mut self.nodes {
            n.start();
        }
        for n in &mut self.nodes {
            n.wait_ready().await.unwrap();
        }
    }

    async fn kill_and_restart_coordinator(&mut self) {
        self.coordinator.kill();
        self.coordinator.start();
        self.coordinator.wait_ready().await.unwrap();
    }

    /// Lines of every log that say a notice was refused.
    fn refusals(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in std::iter::once(&self.coordinator).chain(self.nodes.iter()) {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            out.extend(text.lines().filter(|l| l.contains("was refused")).map(|l| format!("{}: {l}", p.name)));
        }
        out
    }

    /// Shards in the nodes' shard directories (the trash not counted), and where.
    fn held_on_disk(&self) -> HashMap<ShardId, Vec<usize>> {
        let mut out: HashMap<ShardId, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for id in disk(&n.dir).shards.into_keys() {
                out.entry(id).or_default().push(i);
            }
        }
        out
    }
}

async fn small_net(root: &Path, nodes: usize) -> (Net, Client) {
    let mut net = Net::new(root, nodes);
    net.start_all().await.unwrap();
    let c = Client::with_fresh_account(&net.url());
    net.all_online(&c).await;
    (net, c)
}

/// Polls until `problems` is empty, for at most `secs`; the last problems, if any.
macro_rules! eventually {
    ($secs:expr, $problems:expr) => {{
        let deadline = Instant::now() + Duration::from_secs($secs);
        loop {
            let p: Vec<String> = $problems;
            if p.is_empty() || Instant::now() > deadline {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }};
}

/// A commit's notices reach its nodes within milliseconds of the reply to the client; what
/// the nodes change for them reaches sled's disk only at its next flush (every 500 ms). Nodes
/// killed in between must still serve the file and know it needs their shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_killed_right_after_a_commit_still_serve_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut net, c) = small_net(tmp.path(), 4).await;
    let bytes = data(3 * PER_SEGMENT, 11);
    let path = tmp.path().join("f");
    std::fs::write(&path, &bytes).unwrap();
    let id = c.upload(&path, PASSWORD, params(2, 4), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await; // the notices are delivered
    net.kill_and_restart_nodes().await;
    net.all_online(&c).await;

    let (view, m) = (c.info(&id).await.unwrap(), c.segments(&id).await.unwrap());
    let (key, h) = (net.coordinator_key(), http::Client::new(Duration::from_secs(5)));
    let out = tmp.path().join("f.out");
    let problems = eventually!(20, {
        let mut p = Vec::new();
        match c.download(&id, PASSWORD, Some(&out), true, None).await {
            Ok(_) => assert!(std::fs::read(&out).unwrap() == bytes),
            Err(e) => p.push(format!("the file does not download: {e}")),
        }
        for (s, seg) in m.iter().enumerate() {
            for (j, sid) in seg.shard_ids.iter().enumerate() {
                let peer = &view.placements[s][j];
                let i = net.node_of(peer).unwrap();
                let url = &net.nodes[i].url;
                let at = format!("segment {s} shard {j} on node-{i}");
                if let Err(e) =
                    get(&h, &format!("{url}/v2/shards/{sid}"), &serde_json::to_string(&view.grants[peer]).unwrap())
                        .await
                {
                    p.push(format!("{at}: not readable under the file's grant: {e}"));
                }
                match inventory(&h, &key, peer, url).await {
                    Ok(inv) if inv.get(sid).is_some_and(|f| f.contains(&id.to_string())) => {}
                    Ok(inv) => p.push(format!("{at}: its index says the files needing it are {:?}", inv.get(sid))),
                    Err(e) => p.push(format!("{at}: inventory: {e}")),
                }
            }
        }
        p
    });
    assert!(problems.is_empty(), "20 s after the restart:\n  {}", problems.join("\n  "));
}

/// A node acknowledges a shard with a receipt: killed right after, it must still know which
/// upload stored it (a read grant for that upload reads it; when the upload is abandoned, the
/// shard goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_right_after_a_receipt_knows_the_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut net, c) = small_net(tmp.path(), 4).await;
    let plan = c
        .plan(&PlanRequest { size: 100_000, k: 2, n: 4, segment_size: crate::harness::SEGMENT, stream: false })
        .await
        .unwrap();
    let h = http::Client::new(Duration::from_secs(5));
    let mut acked = Vec::new();
    for (peer, order) in &plan.orders {
        let body = Bytes::from(data(20_000, acked.len() as u64 + 1));
        let id = merkle::root(&body);
        let url = format!("{}/v2/shards/{id}", plan.addresses[peer]);
        let req = request("PUT", &url, &[(ORDER_HEADER, &serde_json::to_string(order).unwrap())], body).unwrap();
        assert!(h.send(req).await.unwrap().status.is_success());
        acked.push((net.node_of(peer).unwrap(), peer.clone(), id));
    }
    net.kill_and_restart_nodes().await;

    let key = net.coordinator_key();
    let mut problems = Vec::new();
    for (i, peer, id) in &acked {
        let url = format!("{}/v2/shards/{id}", net.nodes[*i].url);
        if let Err(e) = get(&h, &url, &grant(&key, peer, &plan.upload_id)).await {
            problems.push(format!("node-{i}: acknowledged shard not readable under its upload's grant: {e}"));
        }
    }
    // The upload expires (3 s) and is abandoned: nothing needs the shards any more.
    let leaked = eventually!(20, {
        let held = net.held_on_disk();
        acked
            .iter()
            .filter(|(_, _, id)| held.contains_key(id))
            .map(|(i, _, id)| format!("node-{i} still holds {id}"))
            .collect()
    });
    problems.extend(leaked.into_iter().map(|l| format!("20 s after the upload was abandoned, {l}")));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The coordinator delivers a commit's notices and is killed before sled wrote that they were
/// taken: it delivers them again, and the nodes must not stop taking notices from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_right_after_delivering_notices_still_gets_later_ones_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut net, c) = small_net(tmp.path(), 4).await;
    let path = tmp.path().join("f");
    std::fs::write(&path, data(PER_SEGMENT, 12)).unwrap();
    let id = c.upload(&path, PASSWORD, params(2, 4), None).await.unwrap();
    let m = c.segments(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await; // the notices are delivered
    net.kill_and_restart_coordinator().await;
    net.all_online(&c).await;
    // Deleting the file: its nodes hear it, and let its shards go.
    c.remove(&id, PASSWORD).await.unwrap();
    let shards: Vec<ShardId> = m.iter().flat_map(|s| s.shard_ids.clone()).collect();
    let left = eventually!(20, {
        let held = net.held_on_disk();
        shards.iter().filter_map(|s| held.get(s).map(|n| format!("shard {s} still on nodes {n:?}"))).collect()
    });
    assert!(
        left.is_empty() && net.refusals().is_empty(),
        "20 s after the delete:\n  {}\nrefusals:\n  {}",
        left.join("\n  "),
        net.refusals().join("\n  ")
    );
}

/// The coordinator is killed right after it answered a plan: the shards stored under it must
/// still be collected once the upload expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_right_after_a_plan_still_collects_the_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut net, c) = small_net(tmp.path(), 4).await;
    let plan = c
        .plan(&PlanRequest { size: 100_000, k: 2, n: 4, segment_size: crate::harness::SEGMENT, stream: false })
        .await
        .unwrap();
    net.kill_and_restart_coordinator().await;
    let h = http::Client::new(Duration::from_secs(5));
    let mut acked = Vec::new();
    for (peer, order) in &plan.orders {
        let body = Bytes::from(data(20_000, acked.len() as u64 + 100));
        let id = merkle::root(&body);
        let url = format!("{}/v2/shards/{id}", plan.addresses[peer]);
        let req = request("PUT", &url, &[(ORDER_HEADER, &serde_json::to_string(order).unwrap())], body).unwrap();
        assert!(h.send(req).await.unwrap().status.is_success());
        acked.push(id);
    }
    let leaked = eventually!(20, {
        let held = net.held_on_disk();
        acked.iter().filter_map(|id| held.get(id).map(|n| format!("{id} on nodes {n:?}"))).collect()
    });
    assert!(leaked.is_empty(), "20 s after the upload expired, still held:\n  {}", leaked.join("\n  "));
}

/// Repair moves a shard and tells its new holder at once; the coordinator is killed right
/// after. Notices numbered after the crash must still be taken by that node (a number it saw
/// must never be handed out again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_right_after_a_repair_still_gets_later_notices_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut net, c) = small_net(tmp.path(), 5).await;
    let path = tmp.path().join("f");
    std::fs::write(&path, data(2 * PER_SEGMENT, 13)).unwrap();
    let id = c.upload(&path, PASSWORD, params(2, 4), None).await.unwrap();
    let gone = net.node_of(&c.info(&id).await.unwrap().placements[0][0]).unwrap();
    net.nodes[gone].kill();
    // Repair moves its shards (past heartbeat timeout and grace period); the coordinator
    // dies as soon as the placements changed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let placements = c.info(&id).await.map(|v| v.placements).unwrap_or_default();
        if !placements.is_empty() && placements.iter().flatten().all(|p| *p != net.peers[gone]) {
            break;
        }
        assert!(Instant::now() < deadline, "no repair within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    net.kill_and_restart_coordinator().await;
    net.nodes[gone].start();
    net.nodes[gone].wait_ready().await.unwrap();
    net.all_online(&c).await;
    // Every node hears of a new file and of its deletion.
    std::fs::write(&path, data(PER_SEGMENT, 14)).unwrap();
    let id2 = c.upload(&path, PASSWORD, params(2, 4), None).await.unwrap();
    let m2 = c.segments(&id2).await.unwrap();
    c.remove(&id2, PASSWORD).await.unwrap();
    let shards: Vec<ShardId> = m2.iter().flat_map(|s| s.shard_ids.clone()).collect();
    let left = eventually!(20, {
        let held = net.held_on_disk();
        shards.iter().filter_map(|s| held.get(s).map(|n| format!("shard {s} still on nodes {n:?}"))).collect()
    });
    assert!(
        left.is_empty() && net.refusals().is_empty(),
        "20 s after the delete:\n  {}\nrefusals:\n  {}",
        left.join("\n  "),
        net.refusals().join("\n  ")
    );
}

/// Commits and deletes flush the coordinator's database; many at once must all return. (sled
/// 0.34's `flush_async` can lose the wake-up of concurrent callers: spacejam/sled#1308.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_and_deletes_all_return() {
    let c = crate::harness::Cluster::start(4).await;
    let uploads = (0..32).map(|i| {
        let client = c.other_client();
        let path = c.write(&format!("f{i}"), &data(1000 + i, i as u64));
        async move {
            let id = client.upload(&path, PASSWORD, params(2, 4), None).await.unwrap();
            client.remove(&id, PASSWORD).await.unwrap();
        }
    });
    let all = futures::future::join_all(uploads);
    if tokio::time::timeout(Duration::from_secs(60), all).await.is_err() {
        std::mem::forget(c); // dropping its database would wait on the stuck flushes
        panic!("32 concurrent uploads and deletes did not all return within 60 s");
    }
    c.net.shutdown().await;
}

/// The coordinator's tables flush through `store::Tree::flush`; callers flush at once
/// (commits, deletes, repairs, plans) and every one must return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_table_flushes_all_return() {
    use p2pstore::store::table::Tree;
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("db")).unwrap();
    let tree: Arc<dyn Tree> = Arc::new(db.open_tree("t").unwrap());
    for round in 0..20u8 {
        let flushes = (0..64u8).map(|i| {
            let tree = tree.clone();
            tokio::spawn(async move {
                tree.insert(&[round, i], vec![i; 100]).unwrap();
                tree.flush().await.unwrap();
            })
        });
        let all = futures::future::join_all(flushes);
        if tokio::time::timeout(Duration::from_secs(20), all).await.is_err() {
            // Dropping the last handle flushes, and would wait on the stuck flushes.
            std::mem::forget((db, tree));
            panic!("round {round}: 64 concurrent flushes did not all return within 20 s");
        }
    }
}
