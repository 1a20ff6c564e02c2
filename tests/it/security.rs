//! Strangers on the network (docs/SECURITY.md): other accounts, captured and replayed
//! messages, nodes asked for shards without a grant, operators admitting accounts. Each
//! attack that once worked is performed here through the public API, and must fail.

use bytes::Bytes;
use p2pstore::core::identity::Identity;
use p2pstore::net::client::{self as http, request};
use p2pstore::proto::*;
use p2pstore::store::identity::load_or_create;

use crate::harness::*;

async fn upload(
    c: &Cluster,
    client: &p2pstore::Client,
    name: &str,
    len: usize,
) -> (p2pstore::core::manifest::FileId, Vec<u8>) {
    let bytes = data(len, len as u64 + name.len() as u64);
    let id = client.upload(&c.write(name, &bytes), b"pw", params(2, 4), None).await.unwrap();
    (id, bytes)
}

async fn downloads(c: &Cluster, client: &p2pstore::Client, id: &p2pstore::core::manifest::FileId, bytes: &[u8]) {
    let out = c.path(&format!("{id}.{}", client.account_id()));
    client.download(id, b"pw", Some(&out), true, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
}

fn status(e: &p2pstore::client::ClientError) -> u16 {
    e.status().map(|s| s.as_u16()).unwrap_or_else(|| panic!("no status in {e}"))
}

/// The take-over that once worked: the attacker reads the victim's manifest and shards,
/// stores the shards again under its own plan and commits the victim's manifest as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_cannot_take_over_list_or_delete_a_file() {
    let c = Cluster::start(5).await;
    let victim = &c.client;
    let (id, bytes) = upload(&c, victim, "mine", 2 * PER_SEGMENT + 7).await;
    let mallory = c.other_client();

    // Mallory knows the id (ids are capabilities to read, with the password): the manifest
    // and placements are readable, so it can try to restore the shards itself.
    let manifest = mallory.manifest(&id).await.unwrap();
    let segments = mallory.segments(&id).await.unwrap();
    let view = mallory.info(&id).await.unwrap();
    let plan = mallory
        .plan(&PlanRequest { size: manifest.plaintext_size, k: 2, n: 4, segment_size: SEGMENT, stream: false })
        .await
        .unwrap();
    let h = http::Client::default();
    let mut receipts = Vec::new();
    let mut placements = Vec::new();
    for (seg, entry) in segments.iter().enumerate() {
        let mut peers = Vec::new();
        for (j, sid) in entry.shard_ids.iter().enumerate() {
            let holder = &view.placements[seg][j];
            let grant = serde_json::to_string(&view.grants[holder]).unwrap();
            let url = format!("{}/v2/shards/{sid}", view.peers[holder].address);
            let r = h.send(request("GET", &url, &[(GRANT_HEADER, &grant)], Bytes::new()).unwrap()).await.unwrap();
            assert_eq!(r.status, 200, "a grant from info reads the shard");
            let target = plan.segments[seg][j].clone();
            let order = serde_json::to_string(&plan.orders[&target]).unwrap();
            let url = format!("{}/v2/shards/{sid}", plan.addresses[&target]);
            let r = h.send(request("PUT", &url, &[(ORDER_HEADER, &order)], r.body).unwrap()).await.unwrap();
            receipts.push(r.json::<Signed<Receipt>>().unwrap());
            peers.push(target);
        }
        placements.push(peers);
    }
    let commit = Commit {
        upload_id: plan.upload_id.clone(),
        manifest: hex::encode(manifest.to_bytes()),
        owner_hash: "11".repeat(32),
        placements,
        segments,
        receipts,
    };
    let body = Bytes::from(serde_json::to_vec(&commit).unwrap());
    let r = mallory.send_signed("POST", &format!("/v2/uploads/{}/commit", plan.upload_id), body).await.unwrap();
    assert_eq!(r.status, 409, "{}", r.error_message());

    // Nor can it list, delete, or commit the victim's own pending upload.
    assert!(mallory.list().await.unwrap().is_empty(), "a stranger's file ids are not listed");
    assert_eq!(victim.list().await.unwrap().len(), 1);
    assert_eq!(status(&mallory.remove(&id, b"pw").await.unwrap_err()), 403);
    let theirs =
        victim.plan(&PlanRequest { size: 10, k: 2, n: 4, segment_size: SEGMENT, stream: false }).await.unwrap();
    let empty = Commit { upload_id: theirs.upload_id.clone(), ..commit };
    let body = Bytes::from(serde_json::to_vec(&empty).unwrap());
    let r = mallory.send_signed("POST", &format!("/v2/uploads/{}/commit", theirs.upload_id), body).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.error_message());

    // The owner still reads, and deletes with the password (not without it).
    downloads(&c, victim, &id, &bytes).await;
    assert_eq!(status(&victim.remove(&id, b"not the password").await.unwrap_err()), 403);
    victim.remove(&id, b"pw").await.unwrap();
    assert_eq!(status(&victim.info(&id).await.unwrap_err()), 404);
    c.net.shutdown().await;
}

/// Messages signed for one purpose, presented for another, or presented twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_messages_are_refused_on_every_other_route_and_when_replayed() {
    let c = Cluster::start(4).await;
    let (id, bytes) = upload(&c, &c.client, "f", 3 * PER_SEGMENT).await;
    let coordinator = c.coordinator_key();
    let peers = c.client.peers().await.unwrap();
    let node = &peers[0];
    let node_key = load_or_create(&c.net.node_dir(c.node_of(&node.peer_id))).unwrap();
    let held: Vec<_> = {
        let m = c.client.segments(&id).await.unwrap();
        let v = c.client.info(&id).await.unwrap();
        m.iter()
            .zip(&v.placements)
            .flat_map(|(s, p)| s.shard_ids.iter().zip(p).filter(|(_, p)| **p == node.peer_id).map(|(i, _)| *i))
            .collect()
    };
    assert!(!held.is_empty());
    let later = c.net.clock.now() + 600;

    // What an eavesdropper sees, made with the same keys: a deletion notice, an inventory
    // request, a challenge, a put order and a read grant from the coordinator; a heartbeat and
    // an exit request from the node.
    let file_id = id.to_string();
    let release = NoticeEvent::Released { file_id, shard_ids: held.clone(), deleted: true };
    let notice = Notice { peer_id: node.peer_id.clone(), generation: "g".into(), seq: 1, event: release };
    let inventory =
        InventoryRequest { peer_id: node.peer_id.clone(), after: None, expires: later, deletions_after: None };
    let challenge = Challenge { peer_id: node.peer_id.clone(), nonce: "n".into(), items: Vec::new(), deadline: later };
    let coord_msgs: Vec<(&str, String)> = vec![
        ("notice", serde_json::to_string(&coordinator.sign(&notice)).unwrap()),
        ("inventory request", serde_json::to_string(&coordinator.sign(&inventory)).unwrap()),
        ("challenge", serde_json::to_string(&coordinator.sign(&challenge)).unwrap()),
    ];
    let h = http::Client::default();
    let post = |url: String, body: String| {
        let h = h.clone();
        async move {
            let req = request("POST", &url, &[("content-type", "application/json")], Bytes::from(body)).unwrap();
            h.send(req).await.unwrap()
        }
    };
    let node_routes = [("notices", "notice"), ("inventory", "inventory request"), ("audit", "challenge")];
    for (route, meant) in node_routes {
        for (kind, msg) in &coord_msgs {
            if *kind == meant {
                continue;
            }
            let r = post(format!("{}/v2/{route}", node.address), msg.clone()).await;
            assert_eq!(r.status, 403, "a {kind} sent to /v2/{route}: {}", r.error_message());
        }
    }
    // Nothing was deleted: every shard the node held is still readable.
    for sid in &held {
        assert_eq!(c.get_shard(&node.address, &node.peer_id, sid).await.status, 200);
    }

    // The node's heartbeat, replayed as is and as an exit request.
    let info: CoordinatorInfo = h.get(&format!("{}/v2/info", c.net.url())).await.unwrap().json().unwrap();
    let now = c.net.clock.now();
    let hb = Heartbeat {
        address: node.address.clone(),
        capacity: 1 << 40,
        used: 0,
        shards: 0,
        time: now,
        seq: u64::MAX / 2,
        pow: 0,
    };
    let hb = serde_json::to_string(&node_key.sign(&hb)).unwrap();
    assert_eq!(post(format!("{}/v2/heartbeat", c.net.url()), hb.clone()).await.status, 200);
    assert_eq!(post(format!("{}/v2/heartbeat", c.net.url()), hb.clone()).await.status, 403, "replayed heartbeat");
    assert_eq!(post(format!("{}/v2/peers/exit", c.net.url()), hb).await.status, 403, "heartbeat as exit");
    let exit = ExitRequest { coordinator: info.coordinator_id.clone(), time: now, seq: now };
    let exit = serde_json::to_string(&node_key.sign(&exit)).unwrap();
    let other = ExitRequest { coordinator: "00".repeat(16), time: now, seq: now + 1 };
    let other = serde_json::to_string(&node_key.sign(&other)).unwrap();
    assert_eq!(post(format!("{}/v2/peers/exit", c.net.url()), other).await.status, 403, "for another coordinator");
    assert_eq!(post(format!("{}/v2/peers/exit", c.net.url()), exit.clone()).await.status, 200);
    assert_eq!(post(format!("{}/v2/peers/exit", c.net.url()), exit).await.status, 403, "replayed exit");

    // Anything else either side signs, sent to the coordinator's signed-body routes.
    let receipt = Receipt { upload_id: "u".into(), shard_id: held[0], len: 1, peer_id: node.peer_id.clone() };
    let answer = AuditAnswer { nonce: "n".into(), proofs: Vec::new(), released: Vec::new() };
    let order = PutOrder {
        upload_id: "u".into(),
        peer_id: node.peer_id.clone(),
        max_shard_len: 1,
        expires: later,
        max_bytes: 0,
    };
    let grant = ReadGrant { peer_id: node.peer_id.clone(), upload_id: "*".into(), grantee: "g".into(), expires: later };
    let others: Vec<(&str, String)> = vec![
        ("receipt", serde_json::to_string(&node_key.sign(&receipt)).unwrap()),
        ("audit answer", serde_json::to_string(&node_key.sign(&answer)).unwrap()),
        ("put order", serde_json::to_string(&coordinator.sign(&order)).unwrap()),
        ("read grant", serde_json::to_string(&coordinator.sign(&grant)).unwrap()),
    ];
    for (kind, msg) in others.iter().chain(&coord_msgs) {
        for route in ["heartbeat", "peers/exit", "admin"] {
            let r = post(format!("{}/v2/{route}", c.net.url()), msg.clone()).await;
            assert!(matches!(r.status.as_u16(), 400 | 403), "a {kind} sent to /v2/{route}: {}", r.status);
        }
    }

    // A request signed by an account, sent again, or to another route.
    let acct = Identity::generate();
    let auth = RequestAuth::sign(&acct, &info.coordinator_id, "GET", "/v2/files", (now, "ab".repeat(16)), b"");
    let signed_get = |path: &str| {
        let url = format!("{}{path}", c.net.url());
        let header = auth.header();
        let h = h.clone();
        async move { h.send(request("GET", &url, &[(AUTH_HEADER, &header)], Bytes::new()).unwrap()).await.unwrap() }
    };
    assert_eq!(signed_get("/v2/files").await.status, 200);
    assert_eq!(signed_get("/v2/files").await.status, 401, "replayed request");
    let fresh = RequestAuth::sign(&acct, &info.coordinator_id, "GET", "/v2/files", (now, "cd".repeat(16)), b"");
    let url = format!("{}/v2/account", c.net.url());
    let r = h.send(request("GET", &url, &[(AUTH_HEADER, &fresh.header())], Bytes::new()).unwrap()).await.unwrap();
    assert_eq!(r.status, 401, "redirected to another route");
    let stale = RequestAuth::sign(&acct, &info.coordinator_id, "GET", "/v2/files", (now - 1000, "ef".repeat(16)), b"");
    let url = format!("{}/v2/files", c.net.url());
    let r = h.send(request("GET", &url, &[(AUTH_HEADER, &stale.header())], Bytes::new()).unwrap()).await.unwrap();
    assert_eq!(r.status, 401, "outside the clock skew");

    downloads(&c, &c.client, &id, &bytes).await;
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_a_shard_only_under_a_valid_grant() {
    let c = Cluster::start(4).await;
    let (id, _) = upload(&c, &c.client, "g", PER_SEGMENT).await;
    let view = c.client.info(&id).await.unwrap();
    let m = c.client.segments(&id).await.unwrap();
    let (peer, sid) = (&view.placements[0][0], m[0].shard_ids[0]);
    let addr = &view.peers[peer].address;
    let h = http::Client::default();
    let get = |grant: Option<String>| {
        let url = format!("{addr}/v2/shards/{sid}");
        let h = h.clone();
        async move {
            let headers: Vec<(&str, &str)> = grant.iter().map(|g| (GRANT_HEADER, g.as_str())).collect();
            h.send(request("GET", &url, &headers, Bytes::new()).unwrap()).await.unwrap().status.as_u16()
        }
    };
    let grant = view.grants[peer].clone();
    assert_eq!(get(Some(serde_json::to_string(&grant).unwrap())).await, 200);
    assert_eq!(get(None).await, 403, "no grant");
    let g = grant.open().unwrap();
    let coordinator = c.coordinator_key();
    let forge = |g: ReadGrant, key: &Identity| serde_json::to_string(&key.sign(&g)).unwrap();
    let now = c.net.clock.now();
    assert_eq!(get(Some(forge(ReadGrant { expires: now - 1, ..g.clone() }, &coordinator))).await, 403, "expired");
    let other_peer = view.placements[0][1].clone();
    assert_eq!(
        get(Some(forge(ReadGrant { peer_id: other_peer, ..g.clone() }, &coordinator))).await,
        403,
        "another peer's"
    );
    assert_eq!(get(Some(forge(g.clone(), &Identity::generate()))).await, 403, "not the coordinator's");
    let elsewhere = ReadGrant { upload_id: "another upload".into(), ..g.clone() };
    assert_eq!(get(Some(forge(elsewhere, &coordinator))).await, 404, "a grant for another file reads nothing here");
    // A put order is no grant, though signed by the same key for the same peer.
    let order = PutOrder {
        upload_id: g.upload_id.clone(),
        peer_id: g.peer_id.clone(),
        max_shard_len: 1,
        expires: now + 60,
        max_bytes: 0,
    };
    assert_eq!(get(Some(serde_json::to_string(&coordinator.sign(&order)).unwrap())).await, 403);
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_invitations() {
    let mut config = p2pstore::config::Config::default();
    config.security.default_quota_gb = 100_000.0 / 1e9; // 100 kB
    let c = Cluster::start_with(4, config).await;
    let (small, _) = upload(&c, &c.client, "small", 60_000).await;
    let e = c.client.upload(&c.write("big", &data(60_000, 1)), b"pw", params(2, 4), None).await.unwrap_err();
    assert_eq!(status(&e), 403);
    let msg = e.to_string();
    assert!(msg.contains("over quota") && msg.contains("100000"), "{msg}");
    let me = c.client.account().await.unwrap();
    assert_eq!((me.quota, me.stored, me.files), (100_000, 60_000, 1));
    // A deletion gives the room back at once, and the next commit takes it (usage is kept in
    // step with commits and deletions, not summed per request).
    c.client.remove(&small, b"pw").await.unwrap();
    assert_eq!(c.client.account().await.unwrap().stored, 0);
    upload(&c, &c.client, "big", 60_000).await;
    let me = c.client.account().await.unwrap();
    assert_eq!((me.stored, me.files), (60_000, 1));
    // A tiny file is charged what its shards take on disk at least: k blocks of 4 KiB (its n
    // shards are n files on nodes), so 1-byte files cannot be made by the million.
    upload(&c, &c.client, "tiny", 1).await;
    let me = c.client.account().await.unwrap();
    assert_eq!((me.stored, me.files), (60_000 + 2 * 4096, 2));
    c.net.shutdown().await;

    // Invitations only: a stranger is refused with its id, until the operator adds it.
    let mut config = p2pstore::config::Config::default();
    config.security.accounts = AccountAdmission::Invite;
    let mut c = Cluster::start_with(4, config.clone()).await;
    let e = c.client.list().await.unwrap_err();
    assert_eq!(status(&e), 403);
    assert!(e.to_string().contains(&c.client.account_id()), "{e}");
    // Running: the operator's request, signed with the coordinator's key.
    let dir = c.net.dir.join("coordinator");
    let add = AdminAction::AddAccount { account: c.client.account_id(), quota: Some(1 << 30) };
    let signed = p2pstore::coordinator::admin_request(&dir, add, &c.net.clock).unwrap();
    let h = http::Client::default();
    let url = format!("{}/v2/admin", c.net.url());
    let r = h.post_json(&url, &signed).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(h.post_json(&url, &signed).await.unwrap().status, 401, "a replayed admin request");
    let forged = Identity::generate().sign(&signed.open().unwrap());
    assert_eq!(h.post_json(&url, &forged).await.unwrap().status, 403, "not signed by the coordinator");
    upload(&c, &c.client, "invited", 1000).await;
    // Stopped: the same command on its database.
    let other = c.other_client();
    c.net.stop_coordinator().await;
    let add = AdminAction::AddAccount { account: other.account_id(), quota: None };
    p2pstore::coordinator::admin_offline(&dir, add, &config, &c.net.clock).unwrap();
    let listed = p2pstore::coordinator::admin_offline(&dir, AdminAction::ListAccounts, &config, &c.net.clock).unwrap();
    assert_eq!(listed.accounts.len(), 2);
    c.net.start_coordinator().await.unwrap();
    assert!(other.list().await.unwrap().is_empty());
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_data_directories_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::start(2).await;
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    let coordinator = c.net.dir.join("coordinator");
    assert_eq!(mode(coordinator.join("identity.p8")), 0o600);
    assert_eq!(mode(coordinator.clone()), 0o700);
    assert_eq!(mode(c.net.node_dir(0).join("identity.p8")), 0o600);
    assert_eq!(mode(c.net.node_dir(0)), 0o700);
    c.net.shutdown().await;
}
