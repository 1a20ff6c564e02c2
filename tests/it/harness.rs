//! A real network in the test process: a coordinator and N nodes on OS-chosen 127.0.0.1
//! ports, each with its own data directory in a temporary folder.

use std::path::{Path, PathBuf};

use p2pstore::client::Client;
use p2pstore::config::Config;
use p2pstore::core::codec::EncodeParams;
use p2pstore::core::crypto::MIN_ITERATIONS;
use p2pstore::core::erasure::Shape;
use p2pstore::devnet::Devnet;
use p2pstore::sys::clock::Clock;

/// Small segments so tests cover many segments with little data.
pub const SEGMENT: u32 = 64 * 1024;
pub const PER_SEGMENT: usize = SEGMENT as usize - 16;

pub struct Cluster {
    pub net: Devnet,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(nodes: usize) -> Cluster {
        Cluster::start_with(nodes, Config::default()).await
    }

    pub async fn start_with(nodes: usize, config: Config) -> Cluster {
        Cluster::start_with_clock(nodes, config, Clock::system()).await
    }

    /// A cluster whose servers all read `clock`: a test moves time instead of waiting.
    pub async fn start_with_clock(nodes: usize, config: Config, clock: Clock) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let net = Devnet::start_with_clock(config, &dir.path().join("net"), 0, nodes, clock).await.unwrap();
        let client = Client::with_fresh_account(&net.url()).with_clock(net.clock.clone());
        Cluster { net, client, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The index of the node whose peer id is `peer`.
    pub fn node_of(&self, peer: &str) -> usize {
        (0..self.net.node_count())
            .find(|&i| p2pstore::store::identity::load_or_create(&self.net.node_dir(i)).unwrap().peer_id() == peer)
            .expect("a node of this cluster")
    }

    /// A placement plan asked for directly, as a client would before uploading.
    pub async fn plan(&self, size: u64, k: u8, n: u8) -> p2pstore::proto::Plan {
        self.client
            .plan(&p2pstore::proto::PlanRequest { size, k, n, segment_size: SEGMENT, stream: false })
            .await
            .unwrap()
    }

    /// Another client of this network, with an account of its own.
    pub fn other_client(&self) -> Client {
        Client::with_fresh_account(&self.net.url()).with_clock(self.net.clock.clone())
    }

    pub fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

pub fn params(k: u8, n: u8) -> EncodeParams {
    EncodeParams { shape: Shape::new(k, n).unwrap(), segment_size: SEGMENT, iterations: MIN_ITERATIONS }
}

/// Deterministic, incompressible-looking bytes.
/// Downloads `id` (password "pw") to `name` and checks it is `bytes`.
pub async fn downloads_intact(c: &Cluster, id: &p2pstore::core::manifest::FileId, bytes: &[u8], name: &str) {
    let out = c.path(name);
    c.client.download(id, b"pw", Some(&out), true, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes, "{name}: downloaded bytes differ");
}

pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// Every interval at one or two seconds, so audits, repair and collection happen in a test.
pub fn fast_config() -> Config {
    let mut c = Config::default();
    c.node.heartbeat_interval = 1;
    c.coordinator.heartbeat_timeout = 2;
    c.coordinator.upload_expiry = 3;
    c.coordinator.gc_interval = 1;
    c.audit.interval = 1;
    c.audit.timeout = 2;
    c.audit.vetting_audits = 2;
    c.repair.grace_period = 2;
    c.repair.check_interval = 1;
    c
}

/// Polls `check` every 200 ms until it holds; fails the test after `secs` seconds.
pub async fn until<F: std::future::Future<Output = bool>>(what: &str, secs: u64, mut check: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {secs} s waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The value of the sample `series` (name with labels, as printed) on `base`'s /metrics,
/// or 0 when it is not there yet.
pub async fn metric(base: &str, series: &str) -> f64 {
    let r = p2pstore::net::client::Client::default().get(&format!("{base}/metrics")).await.unwrap();
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// The shard files a node holds on disk.
pub fn shard_files(node_dir: &Path) -> usize {
    std::fs::read_dir(node_dir.join("shards"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum()
}

impl Cluster {
    /// The coordinator's own key, as its data directory holds it (tests forge with it).
    pub fn coordinator_key(&self) -> p2pstore::core::identity::Identity {
        p2pstore::store::identity::load_or_create(&self.net.dir.join("coordinator")).unwrap()
    }

    /// A read grant for every shard on `peer`, signed with the coordinator's key, as a header.
    pub fn grant_all(&self, peer: &str) -> String {
        use p2pstore::proto::{ReadGrant, Sign};
        let g = ReadGrant {
            peer_id: peer.to_owned(),
            upload_id: "*".into(),
            grantee: "test".into(),
            expires: self.net.clock.now() + 600,
        };
        serde_json::to_string(&self.coordinator_key().sign(&g)).unwrap()
    }

    /// GET of a shard from the node `peer` at `addr`, under a grant for all its shards.
    pub async fn get_shard(&self, addr: &str, peer: &str, id: &p2pstore::core::merkle::ShardId) -> Reply {
        let url = format!("{addr}/v2/shards/{id}");
        let grant = self.grant_all(peer);
        let req =
            p2pstore::net::client::request("GET", &url, &[(p2pstore::proto::GRANT_HEADER, &grant)], Default::default());
        p2pstore::net::client::Client::default().send(req.unwrap()).await.unwrap()
    }
}

pub use p2pstore::net::client::Reply;

impl Cluster {
    /// A newcomer: one more node beside the cluster's own, with a fresh data directory
    /// (`name`, in the cluster's folder) and so a fresh key, started on a free port. Returns
    /// its handle (keep it: dropping it does not stop the node, shutting it down does) and
    /// its peer id.
    pub async fn extra_node(&self, name: &str) -> (p2pstore::net::server::ServerHandle, String) {
        let dir = self.path(name);
        let config = &self.net.config;
        let bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let clock = self.net.clock.clone();
        let opts = p2pstore::node::NodeOptions::from_config(config, dir.clone(), bind, self.net.url(), clock).unwrap();
        let handle = p2pstore::node::spawn(opts).await.unwrap();
        let id = p2pstore::store::identity::load_or_create(&dir).unwrap().peer_id();
        (handle, id)
    }
}

/// The process's soft limit on open files raised to its hard limit (tests that hold many
/// sockets); returns the limit now in force.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid pointer to an rlimit we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// `n` TCP connections to `to` from the address `from` (any 127.x.y.z works on Linux), each
/// having sent `prefix` (a partial request) and then nothing: half-open requests. A
/// connection the server closed at once is kept too.
pub async fn half_open(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    n: usize,
    prefix: &[u8],
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let sock = if from.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
        let sock = sock.unwrap();
        sock.bind(std::net::SocketAddr::new(from, 0)).unwrap();
        let mut s = sock.connect(to).await.unwrap();
        let _ = s.write_all(prefix).await;
        held.push(s);
    }
    held
}

/// A field of /proc/PID/status in bytes (`VmRSS`, `VmHWM`).
pub fn proc_memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':')).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The real binary as a server process (`coordinator`, `node`), in `dir`, with no
/// configuration from the environment; killed when dropped. `shell_prefix` runs before it
/// in `sh -c` (`ulimit -n 64;`, say), the process keeping its pid through `exec`.
pub struct Process {
    pub child: std::process::Child,
    pub url: String,
}

impl Process {
    pub async fn start(dir: &Path, shell_prefix: &str, args: &[&str], port: u16) -> Process {
        let bin = env!("CARGO_BIN_EXE_p2pstore");
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!("{shell_prefix} exec '{bin}' {}", quoted.join(" "));
        let log = std::fs::File::create(dir.join(format!("server-{port}.log"))).unwrap();
        let child = std::process::Command::new("sh")
            .args(["-c", &script])
            .current_dir(dir)
            .env_remove("P2PSTORE_CONFIG")
            .env_remove("P2PSTORE_COORDINATOR")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Process { child, url: format!("http://127.0.0.1:{port}") };
        let h = p2pstore::net::client::Client::new(std::time::Duration::from_secs(1));
        let healthz = format!("{}/healthz", p.url);
        until("the server process answers /healthz", 30, || async { h.get(&healthz).await.is_ok() }).await;
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
