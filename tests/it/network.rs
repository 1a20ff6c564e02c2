//! Upload and download through a real network of in-process servers.

use bytes::Bytes;
use p2pstore::client::ClientError;
use p2pstore::core::error::CodecError;
use p2pstore::core::identity::Identity;
use p2pstore::core::manifest::FileId;
use p2pstore::net::client::{self as http, request};
use p2pstore::proto::*;
use p2pstore::store::identity::load_or_create;
use p2pstore::sys::clock::Clock;

use crate::harness::*;

async fn round_trip(c: &Cluster, name: &str, bytes: &[u8], k: u8, n: u8) -> FileId {
    let src = c.write(name, bytes);
    let id = c.client.upload(&src, b"pw", params(k, n), None).await.unwrap();
    let out = c.path(&format!("{name}.out"));
    let report = c.client.download(&id, b"pw", Some(&out), false, None).await.unwrap();
    assert_eq!(report.path, out);
    assert!(std::fs::read(&out).unwrap() == bytes, "{name}: downloaded bytes differ");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interesting_sizes_round_trip() {
    let c = Cluster::start(6).await;
    for (i, size) in [0, 1, PER_SEGMENT - 1, PER_SEGMENT, PER_SEGMENT + 1, 5 * PER_SEGMENT + 17].into_iter().enumerate()
    {
        round_trip(&c, &format!("f{i}"), &data(size, i as u64), 3, 5).await;
    }
    // Listing and info see every file.
    assert_eq!(c.client.list().await.unwrap().len(), 6);
    // The original name comes back when no output path is given.
    let id = round_trip(&c, "named.txt", b"hello", 2, 4).await;
    let m = c.client.manifest(&id).await.unwrap();
    assert_eq!(m.plaintext_size, 5);
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_twelve_of_twenty_lost_and_fails_cleanly_at_thirteen() {
    let mut c = Cluster::start(20).await;
    let mut bytes = data(40 * PER_SEGMENT + 1000, 7);
    let len = bytes.len();
    bytes[len - 5000..].fill(0); // trailing zeros must survive
    let src = c.write("big.bin", &bytes);
    let id = c.client.upload(&src, b"pw", params(8, 20), None).await.unwrap();
    for i in 0..12 {
        c.net.stop_node(i).await;
    }
    let out = c.path("big.out");
    c.client.download(&id, b"pw", Some(&out), false, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);

    c.net.stop_node(12).await;
    let out2 = c.path("big2.out");
    let err = c.client.download(&id, b"pw", Some(&out2), false, None).await.unwrap_err();
    match err {
        ClientError::Codec(CodecError::NotEnoughShards { have, need: 8, .. }) => assert_eq!(have, 7),
        other => panic!("expected NotEnoughShards, got {other}"),
    }
    assert!(err_mentions_segment(&c, &id).await);
    assert!(!out2.exists(), "a failed download left output behind");
    assert!(!files_in(c.dir.path()).iter().any(|f| f.ends_with(".part")), "temporary file left behind");
    c.net.shutdown().await;
}

async fn err_mentions_segment(c: &Cluster, id: &FileId) -> bool {
    let e = c.client.download(id, b"pw", Some(&c.path("again.out")), false, None).await.unwrap_err().to_string();
    e.contains("segment") && e.contains("have 7, need 8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_shard_is_skipped_and_reported() {
    let mut c = Cluster::start(5).await;
    let bytes = data(3 * PER_SEGMENT, 3);
    let src = c.write("c.bin", &bytes);
    let id = c.client.upload(&src, b"pw", params(2, 5), None).await.unwrap();
    let m = c.client.segments(&id).await.unwrap();
    let view = c.client.info(&id).await.unwrap();
    // Corrupt every shard on the peer holding data shard 0 of segment 0, while it is stopped.
    let victim = view.placements[0][0].clone();
    let node = (0..5).find(|&i| load_or_create(&c.net.node_dir(i)).unwrap().peer_id() == victim).unwrap();
    c.net.stop_node(node).await;
    let file = p2pstore::store::shards::shard_file(&c.net.node_dir(node), &m[0].shard_ids[0]);
    let mut b = std::fs::read(&file).unwrap();
    b[10] ^= 1;
    std::fs::write(&file, b).unwrap();
    c.net.start_node(node).await.unwrap();

    let out = c.path("c.out");
    let report = c.client.download(&id, b"pw", Some(&out), false, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
    assert!(
        report.problems.iter().any(|p| p.contains(&victim) && p.contains("does not match")),
        "{:?}",
        report.problems
    );
    // The reader told the coordinator, which audits the peer at once on that shard (regular
    // audits are minutes apart here), even though the file is seconds old.
    until("the peer that served a bad shard is audited and fails", 30, || async {
        c.client.audits(Some(&victim), 50).await.unwrap().iter().any(|a| a.outcome == AuditOutcome::Failure)
    })
    .await;
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_rm() {
    let c = Cluster::start(4).await;
    let src = c.write("s.bin", &data(100_000, 1));
    let id = c.client.upload(&src, b"right", params(2, 4), None).await.unwrap();
    let out = c.path("s.out");
    let e = c.client.download(&id, b"wrong", Some(&out), false, None).await.unwrap_err();
    assert!(matches!(e, ClientError::Codec(CodecError::WrongPasswordOrTampered)), "{e}");
    assert!(!out.exists());

    let e = c.client.remove(&id, b"wrong").await.unwrap_err();
    assert!(e.to_string().contains("wrong password"), "{e}");
    c.client.download(&id, b"right", Some(&out), false, None).await.unwrap();
    // Existing output is not overwritten without `overwrite`.
    assert!(c.client.download(&id, b"right", Some(&out), false, None).await.is_err());

    c.client.remove(&id, b"right").await.unwrap();
    assert!(c.client.info(&id).await.is_err());
    // Every node dropped its shards: no shard files remain.
    for i in 0..4 {
        let shards = c.net.node_dir(i).join("shards");
        let count: usize =
            std::fs::read_dir(&shards).unwrap().map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count()).sum();
        assert_eq!(count, 0, "node {i} still holds shards");
    }
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_orders_and_receipts_are_refused() {
    // A manual clock: the order's expiry is reached by moving it, not by waiting.
    let clock = Clock::manual(Clock::system().now());
    let c = Cluster::start_with_clock(4, p2pstore::config::Config::default(), clock.clone()).await;
    let now = || clock.now();
    let h = http::Client::default();
    let peers = c.client.peers().await.unwrap();
    let target = &peers[0];
    let body = Bytes::from_static(b"0123456789");
    let id = p2pstore::core::merkle::root(&body);
    let url = format!("{}/v2/shards/{id}", target.address);

    // No order.
    let r = h.send(request("PUT", &url, &[], body.clone()).unwrap()).await.unwrap();
    assert_eq!(r.status, 403);
    // An order signed by someone else.
    let mallory = Identity::generate();
    let order = PutOrder {
        upload_id: "u".into(),
        peer_id: target.peer_id.clone(),
        max_shard_len: 100,
        expires: now() + 60,
        max_bytes: 0,
    };
    let forged = serde_json::to_string(&mallory.sign(&order)).unwrap();
    let r = h.send(request("PUT", &url, &[(ORDER_HEADER, &forged)], body.clone()).unwrap()).await.unwrap();
    assert_eq!(r.status, 403);
    // An expired order, really signed by the coordinator.
    let coord = load_or_create(&c.net.dir.join("coordinator")).unwrap();
    let expired = PutOrder { expires: now() - 1, ..order.clone() };
    let hdr = serde_json::to_string(&coord.sign(&expired)).unwrap();
    let r = h.send(request("PUT", &url, &[(ORDER_HEADER, &hdr)], body.clone()).unwrap()).await.unwrap();
    assert_eq!(r.status, 403);
    // An order for another peer.
    let other = PutOrder { peer_id: peers[1].peer_id.clone(), ..order.clone() };
    let hdr = serde_json::to_string(&coord.sign(&other)).unwrap();
    let r = h.send(request("PUT", &url, &[(ORDER_HEADER, &hdr)], body.clone()).unwrap()).await.unwrap();
    assert_eq!(r.status, 403);
    // A valid order, but bytes that do not hash to the id; then too many bytes.
    let good = serde_json::to_string(&coord.sign(&order)).unwrap();
    let r = h
        .send(request("PUT", &url, &[(ORDER_HEADER, &good)], Bytes::from_static(b"other bytes")).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r =
        h.send(request("PUT", &url, &[(ORDER_HEADER, &good)], Bytes::from(vec![0u8; 1000])).unwrap()).await.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(h.get(&url).await.unwrap().status, 403, "a read needs a grant");
    assert_eq!(c.get_shard(&target.address, &target.peer_id, &id).await.status, 404, "nothing was stored");
    // The valid put works and returns a receipt signed by the node.
    let r = h.send(request("PUT", &url, &[(ORDER_HEADER, &good)], body.clone()).unwrap()).await.unwrap();
    assert_eq!(r.status, 200);
    // Nodes remember checked orders, but not past their expiry.
    let brief = serde_json::to_string(&coord.sign(&PutOrder { expires: now() + 1, ..order.clone() })).unwrap();
    let put_other = |bytes: &'static [u8]| {
        let url = format!("{}/v2/shards/{}", target.address, p2pstore::core::merkle::root(bytes));
        request("PUT", &url, &[(ORDER_HEADER, &brief)], Bytes::from_static(bytes)).unwrap()
    };
    assert_eq!(h.send(put_other(b"first")).await.unwrap().status, 200);
    clock.advance(2); // past the order's expiry
    assert_eq!(h.send(put_other(b"second")).await.unwrap().status, 403);

    // Commits: a receipt from the wrong key, and a missing receipt, are refused.
    let plan = c.plan(10, 2, 4).await;
    let commit_path = format!("/v2/uploads/{}/commit", plan.upload_id);
    let client = &c.client;
    let send_commit = |commit: &Commit| {
        let body = Bytes::from(serde_json::to_vec(commit).unwrap());
        let path = commit_path.clone();
        async move { client.send_signed("POST", &path, body).await.unwrap() }
    };
    let fake_receipt =
        mallory.sign(&Receipt { upload_id: plan.upload_id.clone(), shard_id: id, len: 10, peer_id: mallory.peer_id() });
    let src = c.write("x", b"0123456789");
    // Build a real manifest by uploading elsewhere, then try to commit it without receipts.
    let real = c.client.upload(&src, b"pw", params(2, 4), None).await.unwrap();
    let manifest = c.client.manifest(&real).await.unwrap();
    let view = c.client.info(&real).await.unwrap();
    let mut commit = Commit {
        upload_id: plan.upload_id.clone(),
        manifest: hex::encode(manifest.to_bytes()),
        owner_hash: "00".repeat(32),
        placements: view.placements.clone(),
        segments: c.client.segments(&real).await.unwrap(),
        receipts: vec![fake_receipt],
    };
    let r = send_commit(&commit).await;
    assert_eq!(r.status, 403, "{}", r.error_message());
    commit.receipts.clear();
    let r = send_commit(&commit).await;
    assert_eq!(r.status, 403, "{}", r.error_message());
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lose_nothing() {
    let mut c = Cluster::start(5).await;
    let bytes = data(4 * PER_SEGMENT + 3, 11);
    let src = c.write("r.bin", &bytes);
    let id = c.client.upload(&src, b"pw", params(3, 5), None).await.unwrap();
    c.net.stop_coordinator().await;
    c.net.start_coordinator().await.unwrap();
    let out = c.path("r1.out");
    c.client.download(&id, b"pw", Some(&out), false, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
    for i in 0..5 {
        c.net.stop_node(i).await;
    }
    for i in 0..5 {
        c.net.start_node(i).await.unwrap();
    }
    let out = c.path("r2.out");
    c.client.download(&id, b"pw", Some(&out), false, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses_and_servers_keep_serving() {
    let c = Cluster::start(3).await;
    let h = http::Client::default();
    let base = c.net.url();
    let node = c.client.peers().await.unwrap()[0].address.clone();
    let cases: Vec<(&str, String, Bytes, u16)> = vec![
        ("GET", format!("{base}/nope"), Bytes::new(), 404),
        ("POST", format!("{base}/v2/uploads"), Bytes::from_static(b"{not json"), 401),
        (
            "POST",
            format!("{base}/v2/heartbeat"),
            Bytes::from_static(b"{\"body\":\"{}\",\"signer\":\"00\",\"sig\":\"00\"}"),
            403,
        ),
        ("GET", format!("{base}/v2/files/xyz"), Bytes::new(), 401),
        ("DELETE", format!("{base}/v2/files/xyz"), Bytes::new(), 401),
        ("GET", format!("{node}/v2/shards/zz"), Bytes::new(), 400),
        ("GET", format!("{node}/v2/shards/{}", "ab".repeat(32)), Bytes::new(), 403),
        ("POST", format!("{node}/v2/notices"), Bytes::from_static(b"[]"), 400),
        ("DELETE", format!("{node}/v2/shards"), Bytes::new(), 404),
    ];
    for (method, url, body, want) in cases {
        let r = h.send(request(method, &url, &[], body).unwrap()).await.unwrap();
        assert_eq!(r.status.as_u16(), want, "{method} {url}: {}", r.error_message());
    }
    // The same mistakes, signed by an account. A commit's upload is looked up before its body
    // is read: for an upload that does not exist the answer is 404 whatever the body, and a
    // malformed body is 400 for a pending one.
    let pending = c.plan(1000, 2, 3).await.upload_id;
    let signed: Vec<(&str, String, Bytes, u16)> = vec![
        ("POST", "/v2/uploads".into(), Bytes::from_static(b"{not json"), 400),
        ("POST", "/v2/uploads".into(), Bytes::from_static(b"{\"size\":1,\"k\":5,\"n\":5,\"segment_size\":65536}"), 400),
        ("POST", "/v2/uploads".into(), Bytes::from(vec![b' '; 200_000]), 413),
        ("POST", "/v2/uploads/abc/commit".into(), Bytes::from_static(b"{}"), 404),
        ("POST", format!("/v2/uploads/{pending}/commit"), Bytes::from_static(b"{}"), 400),
        ("POST", format!("/v2/uploads/{pending}/commit"), Bytes::from(vec![b' '; 1 << 20]), 413),
        ("GET", "/v2/files/xyz".into(), Bytes::new(), 404),
        ("DELETE", "/v2/files/xyz".into(), Bytes::from_static(b"{\"owner_token\":\"00\"}"), 404),
    ];
    for (method, path, body, want) in signed {
        let r = c.client.send_signed(method, &path, body).await.unwrap();
        assert_eq!(r.status.as_u16(), want, "{method} {path}: {}", r.error_message());
    }
    // Too few peers for the requested n: the message says how many are online and needed.
    let e = c.client.upload(&c.write("t", b"x"), b"pw", params(3, 5), None).await.unwrap_err().to_string();
    assert!(e.contains("3 peers are online and in good standing, 5 are needed"), "{e}");
    assert_eq!(h.get(&format!("{base}/healthz")).await.unwrap().status, 200);
    assert_eq!(h.get(&format!("{node}/healthz")).await.unwrap().status, 200);
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients() {
    let c = Cluster::start(6).await;
    let (a, b) = (data(3 * PER_SEGMENT + 5, 21), data(2 * PER_SEGMENT + 9, 22));
    let (pa, pb) = (c.write("a", &a), c.write("b", &b));
    let (ia, ib) =
        tokio::join!(c.client.upload(&pa, b"pa", params(3, 6), None), c.client.upload(&pb, b"pb", params(3, 6), None));
    let (ia, ib) = (ia.unwrap(), ib.unwrap());
    let (oa, ob) = (c.path("a.out"), c.path("b.out"));
    let (ra, rb) = tokio::join!(
        c.client.download(&ia, b"pa", Some(&oa), false, None),
        c.client.download(&ib, b"pb", Some(&ob), false, None)
    );
    ra.unwrap();
    rb.unwrap();
    assert!(std::fs::read(&oa).unwrap() == a && std::fs::read(&ob).unwrap() == b);
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_file_ending_in_zeros() {
    let c = Cluster::start(6).await;
    let params = p2pstore::core::codec::EncodeParams {
        segment_size: p2pstore::core::codec::DEFAULT_SEGMENT_SIZE,
        ..params(4, 6)
    };
    let mut bytes = p2pstore::bench::PatternReader::new(256 << 20);
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut bytes, &mut v).unwrap();
    let len = v.len();
    v[len - 1_000_000..].fill(0);
    let src = c.write("large.bin", &v);
    let id = c.client.upload(&src, b"pw", params, None).await.unwrap();
    let out = c.path("large.out");
    c.client.download(&id, b"pw", Some(&out), false, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == v, "a 256 MiB file ending in zeros came back different");
    c.net.shutdown().await;
}
