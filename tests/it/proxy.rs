//! A fault-injecting TCP proxy on 127.0.0.1, for hostile-network tests (this machine has no
//! netem and no iptables). It forwards every connection it accepts to one upstream address
//! and, per connection, can delay what it forwards, limit bandwidth, reset the connection, or
//! stop forwarding after some bytes while keeping it open (a black hole). Faults are read
//! when a connection is accepted: connections opened before [`Proxy::set`] keep the old ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// What the proxy does to the connections it accepts. The default forwards faithfully.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Every chunk is delivered this long after it was read, in each direction (so a
    /// request and its answer take twice this).
    pub latency: Duration,
    /// Bytes per second in each direction, shared by all the proxy's connections: the
    /// link of the node behind it. None: as fast as loopback.
    pub bandwidth: Option<u64>,
    /// The chance (0 to 1) that a connection is reset (RST, both sides) after a random number
    /// of bytes, in both directions together, below `reset_within`.
    pub reset_chance: f64,
    pub reset_within: u64,
    /// A connection stops forwarding, in both directions, once this many bytes went one way;
    /// it stays open, answering nothing (its sockets close when the proxy stops).
    pub black_hole_after: Option<u64>,
}

/// What the proxy did, for tests to check that the faults happened.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    /// Bytes forwarded towards the upstream, and back.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub resets: AtomicU64,
    pub black_holed: AtomicU64,
}

impl Stats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A running proxy; it stops, closing every connection, when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    faults: Arc<Mutex<Faults>>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy on a free 127.0.0.1 port forwarding to `upstream`, faithfully until [`set`].
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(accept(listener, upstream, faults.clone(), stats.clone()));
        Proxy { addr, stats, faults, task }
    }

    /// The base URL a node behind this proxy advertises.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Faults for the connections accepted from now on.
    pub fn set(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }
}

/// The link's budget in one direction: each chunk waits for its turn at `rate` bytes per
/// second after the chunks before it, over all connections.
struct Shaper {
    next: Mutex<Instant>,
}

impl Shaper {
    async fn take(&self, bytes: usize, rate: u64) {
        let at = {
            let mut next = self.next.lock().unwrap();
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
            *next
        };
        tokio::time::sleep_until(at).await;
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, faults: Arc<Mutex<Faults>>, stats: Arc<Stats>) {
    let link = Arc::new([Shaper { next: Mutex::new(Instant::now()) }, Shaper { next: Mutex::new(Instant::now()) }]);
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut connections = JoinSet::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        while connections.try_join_next().is_some() {}
        let f = faults.lock().unwrap().clone();
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let mut draw = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let reset_at = (f.reset_chance > 0.0 && (draw() % 1_000_000) as f64 / 1e6 < f.reset_chance)
            .then(|| draw() % f.reset_within.max(1));
        connections.spawn(connection(client, upstream, f, link.clone(), stats.clone(), reset_at));
    }
}

/// What both directions of one connection share.
struct Conn {
    faults: Faults,
    stats: Arc<Stats>,
    link: Arc<[Shaper; 2]>,
    /// Bytes forwarded both ways, and where the connection is reset.
    total: AtomicU64,
    reset_at: Option<u64>,
    /// Set when the connection must end at once (reset) or freeze (black hole).
    reset: Notify,
    was_reset: AtomicBool,
    frozen: AtomicBool,
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    faults: Faults,
    link: Arc<[Shaper; 2]>,
    stats: Arc<Stats>,
    reset_at: Option<u64>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        if reset_at.is_some() {
            // Closed with a zero linger, a socket sends RST instead of FIN.
            let _ = s.set_zero_linger();
        }
    }
    let conn = Arc::new(Conn {
        faults,
        stats,
        link,
        total: AtomicU64::new(0),
        reset_at,
        reset: Notify::new(),
        was_reset: AtomicBool::new(false),
        frozen: AtomicBool::new(false),
    });
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, conn.clone(), 0);
    let down = pump(sr, cw, conn.clone(), 1);
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = conn.reset.notified() => {}
    }
}

/// Bytes read at once: small when the bandwidth is limited, so the shaping is smooth.
fn chunk_size(f: &Faults) -> usize {
    match f.bandwidth {
        Some(rate) => ((rate / 50) as usize).clamp(1024, 64 << 10),
        None => 64 << 10,
    }
}

/// Forwards one direction (`dir` 0: towards the upstream, 1: back): a reader that shapes and
/// time-stamps chunks, and a writer that delivers each when its latency has passed. Returns
/// when the source closes (the sink is shut down then), or never once the connection froze.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, c: Arc<Conn>, dir: usize) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let c2 = c.clone();
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        if c2.frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let _ = to.shutdown().await;
        drop(to);
    };
    let reader = async move {
        let mut forwarded = 0u64;
        let mut buf = vec![0u8; chunk_size(&c.faults)];
        loop {
            if c.frozen.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let mut len = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(len) => len,
            };
            if c.frozen.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if let Some(limit) = c.faults.black_hole_after
                && forwarded + len as u64 >= limit
            {
                len = (limit - forwarded.min(limit)) as usize;
                if !c.frozen.swap(true, Ordering::SeqCst) {
                    c.stats.black_holed.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some(rate) = c.faults.bandwidth {
                c.link[dir].take(len, rate).await;
            }
            forwarded += len as u64;
            let counter = if dir == 0 { &c.stats.bytes_up } else { &c.stats.bytes_down };
            counter.fetch_add(len as u64, Ordering::Relaxed);
            let total = c.total.fetch_add(len as u64, Ordering::SeqCst) + len as u64;
            if let Some(at) = c.reset_at
                && total >= at
            {
                if !c.was_reset.swap(true, Ordering::SeqCst) {
                    c.stats.resets.fetch_add(1, Ordering::Relaxed);
                }
                c.reset.notify_one();
                std::future::pending::<()>().await;
            }
            if len > 0 && tx.send((Instant::now() + c.faults.latency, buf[..len].to_vec())).await.is_err() {
                break;
            }
        }
        // The channel closes with the reader: the writer delivers what is queued and stops.
    };
    tokio::join!(reader, writer);
}
