//! Hostile networks: some nodes behind a fault-injecting proxy (`proxy.rs`) that delays,
//! throttles, resets or black-holes their connections. Uploads give up (or move to spare
//! peers) the shards of peers too slow to wait for, downloads ask other peers in their
//! place, and every file comes back byte for byte.

use std::time::{Duration, Instant};

use p2pstore::client::Client;
use p2pstore::config::Config;
use p2pstore::core::codec::EncodeParams;
use p2pstore::core::crypto::MIN_ITERATIONS;
use p2pstore::core::erasure::Shape;
use p2pstore::core::manifest::FileId;
use p2pstore::net::server::ServerHandle;
use p2pstore::node::{self, NodeOptions};

use crate::harness::*;
use crate::proxy::{Faults, Proxy, Stats};

/// Larger segments than the harness's, so a shard is long enough to stall in the middle of
/// and to take a while at 1 MB/s (128 KiB shards at 8-of-20).
const BIG_SEGMENT: u32 = 1 << 20;

fn params_with(k: u8, n: u8, segment_size: u32) -> EncodeParams {
    EncodeParams { shape: Shape::new(k, n).unwrap(), segment_size, iterations: MIN_ITERATIONS }
}

/// Nodes heartbeat every second, so one restarted behind a proxy is re-admitted quickly.
fn config() -> Config {
    let mut c = Config::default();
    c.node.heartbeat_interval = 1;
    c
}

/// A node of the cluster restarted behind a proxy: same data, same port, but it advertises
/// the proxy's URL, and the coordinator has verified it there (dial-back through the proxy).
struct Proxied {
    proxy: Proxy,
    node: ServerHandle,
    peer: String,
}

async fn behind_proxy(c: &mut Cluster, i: usize) -> Proxied {
    let peer = p2pstore::store::identity::load_or_create(&c.net.node_dir(i)).unwrap().peer_id();
    let peers = c.client.peers().await.unwrap();
    let own = &peers.iter().find(|p| p.peer_id == peer).expect("registered").address;
    let addr: std::net::SocketAddr = own.strip_prefix("http://").unwrap().parse().unwrap();
    c.net.stop_node(i).await;
    let proxy = Proxy::start(addr).await;
    let mut opts =
        NodeOptions::from_config(&c.net.config, c.net.node_dir(i), addr, c.net.url(), c.net.clock.clone()).unwrap();
    opts.advertise = Some(proxy.url());
    let node = node::spawn(opts).await.unwrap();
    let (client, url) = (&c.client, proxy.url());
    until("the coordinator knows the node at its proxy's address", 30, || async {
        let peers = client.peers().await.unwrap();
        peers.iter().any(|p| p.peer_id == peer && p.address == url && p.state == p2pstore::proto::PeerState::Online)
    })
    .await;
    Proxied { proxy, node, peer }
}

async fn stop(c: Cluster, proxied: Vec<Proxied>) {
    for p in proxied {
        // The proxy first: its stalled connections close, so the node need not wait for them.
        drop(p.proxy);
        p.node.shutdown().await;
    }
    c.net.shutdown().await;
}

/// Shards placed nowhere (given up at upload), over the file's segments.
async fn unplaced(client: &Client, id: &FileId) -> Vec<usize> {
    let view = client.info(id).await.unwrap();
    view.placements.iter().map(|seg| seg.iter().filter(|p| p.is_empty()).count()).collect()
}

async fn download_matches(client: &Client, c: &Cluster, id: &FileId, bytes: &[u8], name: &str) -> Vec<String> {
    let out = c.path(name);
    let report = client.download(id, b"pw", Some(&out), false, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes, "{name}: downloaded bytes differ");
    report.problems
}

fn latency(ms: u64) -> Faults {
    Faults { latency: Duration::from_millis(ms), ..Faults::default() }
}

fn bandwidth(bytes_per_second: u64) -> Faults {
    Faults { bandwidth: Some(bytes_per_second), ..Faults::default() }
}

fn black_hole(after: u64) -> Faults {
    Faults { black_hole_after: Some(after), ..Faults::default() }
}

/// The scene: 8-of-20 on 20 nodes, 3 of them 200 ms away, one on a 1 MB/s link, one
/// that stops answering in the middle of its second shard on a connection. No spare peers
/// exist (every node holds a shard of every segment), so the upload gives up the shards it
/// cannot wait for, within what the commit allows (18 of 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_downloads_complete_through_slow_and_silent_nodes() {
    let mut c = Cluster::start_with(20, config()).await;
    let mut proxied = Vec::new();
    for i in 0..5 {
        proxied.push(behind_proxy(&mut c, i).await);
    }
    let shard = Shape::new(8, 20).unwrap().shard_len(BIG_SEGMENT as usize) as u64;
    for (p, f) in proxied.iter().zip([latency(200), latency(200), latency(200), bandwidth(1_000_000)]) {
        p.proxy.set(f);
    }
    proxied[4].proxy.set(black_hole(shard * 3 / 2));

    let bytes = data(9 * BIG_SEGMENT as usize / 2, 61); // four and a half segments
    let src = c.write("hostile.bin", &bytes);
    let client = c.other_client();
    let upload = client.upload(&src, b"pw", params_with(8, 20, BIG_SEGMENT), None);
    let id = tokio::time::timeout(Duration::from_secs(120), upload).await.expect("the upload finishes").unwrap();
    let holes = unplaced(&client, &id).await;
    assert_eq!(holes.len(), 5);
    assert!(holes.iter().all(|&h| h <= 2), "at most 2 of 20 shards of a segment given up: {holes:?}");
    assert!(Stats::get(&proxied[4].proxy.stats.black_holed) >= 1, "the silent node was reached");
    // The slow links carried data, and the silent node is in no segment's placements where
    // its put stalled.
    assert!(Stats::get(&proxied[3].proxy.stats.bytes_up) > 0);

    let download = download_matches(&client, &c, &id, &bytes, "hostile.out");
    tokio::time::timeout(Duration::from_secs(120), download).await.expect("the download finishes");
    // A client that never met these peers (no memory of who is slow) reads it too.
    let fresh = c.other_client();
    let download = download_matches(&fresh, &c, &id, &bytes, "hostile-fresh.out");
    tokio::time::timeout(Duration::from_secs(120), download).await.expect("the download finishes");
    stop(c, proxied).await;
}

/// With more nodes than a segment's n, slow shards are not given up: they go to spare peers
/// (a copy on whichever peer answers first is kept), so every segment keeps all 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_shards_move_to_spare_peers_when_there_are_some() {
    let mut c = Cluster::start_with(24, config()).await;
    let mut proxied = Vec::new();
    for i in 0..2 {
        proxied.push(behind_proxy(&mut c, i).await);
    }
    let shard = Shape::new(8, 20).unwrap().shard_len(BIG_SEGMENT as usize) as u64;
    proxied[0].proxy.set(black_hole(shard / 2));
    proxied[1].proxy.set(bandwidth(200_000));

    let bytes = data(5 * (BIG_SEGMENT as usize - 16), 62); // five full segments
    let src = c.write("spares.bin", &bytes);
    let client = c.other_client();
    let upload = client.upload(&src, b"pw", params_with(8, 20, BIG_SEGMENT), None);
    let id = tokio::time::timeout(Duration::from_secs(120), upload).await.expect("the upload finishes").unwrap();
    let holes = unplaced(&client, &id).await;
    assert!(holes.len() == 5 && holes.iter().all(|&h| h == 0), "every shard placed: {holes:?}");
    let view = client.info(&id).await.unwrap();
    let on_silent = view.placements.iter().flatten().filter(|p| **p == proxied[0].peer).count();
    assert_eq!(on_silent, 0, "no shard is placed on the node that never finishes one");
    let download = download_matches(&client, &c, &id, &bytes, "spares.out");
    tokio::time::timeout(Duration::from_secs(120), download).await.expect("the download finishes");
    stop(c, proxied).await;
}

/// A file stored on a healthy network is read back after five of its nodes turned bad, the
/// ones holding its first five data shards (those a download asks first): one silent in the
/// middle of a shard, one on a 100 kB/s link, one resetting every connection, two 200 ms
/// away. Only bad peers are reported; the bytes are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_route_around_nodes_that_turn_bad() {
    let mut c = Cluster::start_with(20, config()).await;
    let bytes = data(6 * BIG_SEGMENT as usize + 1234, 63);
    let src = c.write("turns.bin", &bytes);
    let id = c.client.upload(&src, b"pw", params_with(8, 20, BIG_SEGMENT), None).await.unwrap();
    let first = c.client.info(&id).await.unwrap().placements[0].clone();
    let mut proxied = Vec::new();
    for peer in &first[..5] {
        let i = c.node_of(peer);
        proxied.push(behind_proxy(&mut c, i).await);
    }
    let shard = Shape::new(8, 20).unwrap().shard_len(BIG_SEGMENT as usize) as u64;
    proxied[0].proxy.set(black_hole(shard / 2));
    proxied[1].proxy.set(bandwidth(100_000));
    proxied[2].proxy.set(Faults { reset_chance: 1.0, reset_within: shard, ..Faults::default() });
    proxied[3].proxy.set(latency(200));
    proxied[4].proxy.set(latency(200));
    // Another client: its connections are opened now, through the faults.
    let reader = c.other_client();
    let download = download_matches(&reader, &c, &id, &bytes, "turns.out");
    let problems = tokio::time::timeout(Duration::from_secs(120), download).await.expect("the download finishes");
    assert!(Stats::get(&proxied[0].proxy.stats.black_holed) >= 1, "the silent node was asked");
    assert!(problems.iter().any(|p| p.contains(&proxied[2].peer)), "the resetting node is reported: {problems:?}");
    // The silent and slow ones were overtaken rather than failed: only bad peers are reported.
    for p in &problems {
        assert!(proxied.iter().any(|x| p.contains(&x.peer)), "a healthy peer reported: {p}");
    }
    stop(c, proxied).await;
}

/// The proxy itself: latency, bandwidth, resets and black holes, on a plain echo server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_injects_each_fault() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let proxy = Proxy::start(upstream).await;
    let round_trip = |len: usize| {
        let addr = proxy.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let t = Instant::now();
            let sent = data(len, 5);
            let (mut r, mut w) = s.split();
            let mut back = vec![0u8; len];
            let (wrote, read) = tokio::join!(w.write_all(&sent), r.read_exact(&mut back));
            let ok = wrote.is_ok() && read.is_ok() && back == sent;
            (ok, t.elapsed())
        }
    };
    let (ok, fast) = round_trip(1000).await;
    assert!(ok);
    proxy.set(latency(100));
    let (ok, slow) = round_trip(1000).await;
    assert!(ok && slow >= Duration::from_millis(200), "two crossings of 100 ms: {slow:?} (without: {fast:?})");
    proxy.set(bandwidth(200_000));
    let (ok, took) = round_trip(100_000).await;
    assert!(ok && took >= Duration::from_millis(400), "100 kB at 200 kB/s: {took:?}");
    proxy.set(Faults { reset_chance: 1.0, reset_within: 50_000, ..Faults::default() });
    let (ok, _) = round_trip(100_000).await;
    assert!(!ok, "reset before the end");
    assert_eq!(Stats::get(&proxy.stats.resets), 1);
    proxy.set(black_hole(10_000));
    let stalled = tokio::time::timeout(Duration::from_millis(500), round_trip(100_000)).await;
    assert!(stalled.is_err(), "a black hole answers nothing and closes nothing");
    assert_eq!(Stats::get(&proxy.stats.black_holed), 1);
}

/// Measurement, not a test (speed is checked by benchmarks, never by timed tests): a 256 MiB
/// upload (8-of-20, 8 MiB segments, 20 nodes) with one node on a 1 MB/s link against the
/// same upload without it, and upload and download under a "WAN" profile (3 nodes 200 ms
/// away, one at 1 MB/s, one silent mid-shard), next to loopback. Run on a release build,
/// alone (the benchmark lock):
/// `flock /tmp/p2pstore-bench.lock target/release/deps/it-* hostile::measure --ignored --nocapture`
/// (`P2PSTORE_HOSTILE_MIB`, `P2PSTORE_HOSTILE_ROUNDS` change the size and the rounds).
#[ignore]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_slow_node_and_wan_profile() {
    let mib: usize = std::env::var("P2PSTORE_HOSTILE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let rounds: usize = std::env::var("P2PSTORE_HOSTILE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let segment = 8 << 20;
    let mut c = Cluster::start_with(20, config()).await;
    let mut proxied = Vec::new();
    for i in 0..5 {
        proxied.push(behind_proxy(&mut c, i).await);
    }
    let shard = Shape::new(8, 20).unwrap().shard_len(segment as usize) as u64;
    let bytes = data(mib << 20, 64);
    let src = c.write("measure.bin", &bytes);
    let profiles: [(&str, Vec<Faults>); 3] = [
        ("loopback", vec![Faults::default(); 5]),
        (
            "one node at 1 MB/s",
            vec![bandwidth(1_000_000), Faults::default(), Faults::default(), Faults::default(), Faults::default()],
        ),
        ("WAN", vec![latency(200), latency(200), latency(200), bandwidth(1_000_000), black_hole(shard * 3 / 2)]),
    ];
    let mut times: Vec<Vec<(f64, f64, usize)>> = vec![Vec::new(); profiles.len()];
    for round in 0..rounds {
        for (p, (name, faults)) in profiles.iter().enumerate() {
            for (px, f) in proxied.iter().zip(faults) {
                px.proxy.set(f.clone());
            }
            let client = c.other_client(); // connections opened under these faults
            let t = Instant::now();
            let id = client.upload(&src, b"pw", params_with(8, 20, segment), None).await.unwrap();
            let up = t.elapsed().as_secs_f64();
            let holes: usize = unplaced(&client, &id).await.iter().sum();
            let out = c.path("measure.out");
            let t = Instant::now();
            client.download(&id, b"pw", Some(&out), true, None).await.unwrap();
            let down = t.elapsed().as_secs_f64();
            assert!(std::fs::read(&out).unwrap() == bytes, "{name}: downloaded bytes differ");
            client.remove(&id, b"pw").await.unwrap();
            let mb = (mib << 20) as f64 / 1e6;
            println!(
                "round {round} {name:<20} upload {:>6.1} MB/s ({up:.2} s, {holes} shards given up)  download {:>6.1} MB/s ({down:.2} s)",
                mb / up,
                mb / down
            );
            times[p].push((up, down, holes));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mb = (mib << 20) as f64 / 1e6;
    println!("\n{mib} MiB, 8-of-20, 8 MiB segments, 20 in-process nodes (5 behind proxies), medians of {rounds}:");
    for (p, (name, _)) in profiles.iter().enumerate() {
        let up = median(times[p].iter().map(|t| t.0).collect());
        let down = median(times[p].iter().map(|t| t.1).collect());
        println!("{name:<20} upload {:>6.1} MB/s ({up:.2} s)  download {:>6.1} MB/s ({down:.2} s)", mb / up, mb / down);
    }
    let base = median(times[0].iter().map(|t| t.0).collect());
    let slow = median(times[1].iter().map(|t| t.0).collect());
    println!("upload with one node at 1 MB/s / without: {:.2} (target at most 1.25)", slow / base);
    stop(c, proxied).await;
}
