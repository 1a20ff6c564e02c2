//! Never losing a committed file: a coordinator that lost its database deletes nothing and
//! rebuilds it from the network; one restored from an older backup deletes nothing until it
//! has caught up; concurrent writes of one shard agree.

use bytes::Bytes;
use p2pstore::net::client::{self as http, request};
use p2pstore::proto::*;

use crate::harness::*;

/// Shard files on disk, per node (the trash not counted).
fn holdings(c: &Cluster) -> Vec<usize> {
    (0..c.net.node_count()).map(|i| shard_files(&c.net.node_dir(i))).collect()
}

async fn rounds(c: &Cluster, worker: &str, more: f64) {
    let url = c.net.url();
    let series = format!("p2pstore_coordinator_worker_rounds_total{{outcome=\"done\",worker=\"{worker}\"}}");
    let start = metric(&url, &series).await;
    until(&format!("{more} more {worker} rounds"), 60, || async { metric(&url, &series).await >= start + more }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_deletes_nothing_and_is_rebuilt_from_the_network() {
    let mut c = Cluster::start_with(6, fast_config()).await;
    let a = data(3 * PER_SEGMENT + 100, 1);
    let b = data(PER_SEGMENT / 2, 2);
    let ia = c.client.upload(&c.write("a", &a), b"pw", params(3, 6), None).await.unwrap();
    let ib = c.client.upload(&c.write("b", &b), b"pw", params(3, 6), None).await.unwrap();
    let before = holdings(&c);

    // The operator loses the database (the key is kept).
    c.net.stop_coordinator().await;
    let db = c.net.dir.join("coordinator").join("db");
    std::fs::rename(&db, c.path("lost-db")).unwrap();
    c.net.start_coordinator().await.unwrap();

    // The nodes come back, are asked what they hold, and the files are back.
    until("both files recovered", 60, || async {
        c.client.info(&ia).await.is_ok_and(|v| v.placements.iter().flatten().all(|p| !p.is_empty()))
            && c.client.info(&ib).await.is_ok()
    })
    .await;
    rounds(&c, "gc", 3.0).await;
    assert_eq!(holdings(&c), before, "no shard was deleted");
    for (id, bytes, name) in [(&ia, &a, "a.out"), (&ib, &b, "b.out")] {
        let out = c.path(name);
        c.client.download(id, b"pw", Some(&out), true, None).await.unwrap();
        assert!(std::fs::read(&out).unwrap() == *bytes, "{name}");
    }
    // Owners come back too: the owner lists its files and deletes one.
    assert_eq!(c.client.list().await.unwrap().len(), 2);
    c.client.remove(&ib, b"pw").await.unwrap();
    until("the deleted file's shards are trashed", 30, || async {
        holdings(&c).iter().sum::<usize>() < before.iter().sum()
    })
    .await;
    c.net.shutdown().await;
}

/// A backup of the coordinator's database, taken while it is stopped (a copy of its directory).
async fn backup(c: &mut Cluster) -> std::path::PathBuf {
    c.net.stop_coordinator().await;
    let backup = c.path("backup-db");
    copy_dir(&c.net.dir.join("coordinator").join("db"), &backup);
    c.net.start_coordinator().await.unwrap();
    backup
}

/// The operator restores `backup` in place of the coordinator's database.
async fn restore(c: &mut Cluster, backup: &std::path::Path) {
    c.net.stop_coordinator().await;
    let db = c.net.dir.join("coordinator").join("db");
    std::fs::remove_dir_all(&db).unwrap();
    copy_dir(backup, &db);
    c.net.start_coordinator().await.unwrap();
}

/// The operator's `coordinator recover`, against the running coordinator.
async fn recover(c: &Cluster) -> RecoveryReport {
    let signed =
        p2pstore::coordinator::admin_request(&c.net.dir.join("coordinator"), AdminAction::Recover, &c.net.clock)
            .unwrap();
    let r = http::Client::default().post_json(&format!("{}/v2/admin", c.net.url()), &signed).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.error_message());
    r.json::<AdminReply>().unwrap().recovery.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_from_an_older_backup_deletes_nothing_until_it_caught_up() {
    let mut c = Cluster::start_with(5, fast_config()).await;
    let x = data(2 * PER_SEGMENT, 3);
    let ix = c.client.upload(&c.write("x", &x), b"pw", params(2, 5), None).await.unwrap();
    let backup = backup(&mut c).await;
    // Work after the backup: a file committed, which the backup does not know.
    let y = data(PER_SEGMENT + 7, 4);
    let iy = c.client.upload(&c.write("y", &y), b"pw", params(2, 5), None).await.unwrap();
    rounds(&c, "repair", 2.0).await; // heartbeats have carried the counter to the nodes
    let before = holdings(&c);

    restore(&mut c, &backup).await;
    // Its deletions are refused: the owner's delete of x is recorded, the shards stay.
    c.client.remove(&ix, b"pw").await.unwrap();
    rounds(&c, "gc", 3.0).await;
    assert_eq!(holdings(&c), before, "nothing deleted by a database that went back in time");
    // Recovery brings y back, and moves the counter past what the nodes saw: the deletion
    // of x, still queued, is taken then.
    recover(&c).await;
    let out = c.path("y.out");
    until("y recovered", 30, || async { c.client.info(&iy).await.is_ok() }).await;
    c.client.download(&iy, b"pw", Some(&out), false, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == y);
    until("x's shards trashed once the counter caught up", 60, || async {
        holdings(&c).iter().sum::<usize>() < before.iter().sum()
    })
    .await;
    c.net.shutdown().await;
}

/// The owner deleted a file after the backup the operator restores. The restored database
/// still listed it and audited the nodes for its shards, which they had let go (to their
/// trash) on its own notice: every honest node failed, and all were disqualified within
/// seconds of the restore (found by an attacker helper). Nodes now prove what their trash
/// holds, and keep the deletion notices they took: recovery learns the deletion from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_after_the_backup_costs_the_nodes_nothing_and_stays_deleted() {
    let mut c = Cluster::start_with(5, fast_config()).await;
    let x = data(PER_SEGMENT + 3, 7);
    let z = data(2 * PER_SEGMENT, 8);
    let ix = c.client.upload(&c.write("x", &x), b"pw", params(2, 5), None).await.unwrap();
    let iz = c.client.upload(&c.write("z", &z), b"pw", params(2, 5), None).await.unwrap();
    let backup = backup(&mut c).await;
    let before = holdings(&c).iter().sum::<usize>();
    c.client.remove(&iz, b"pw").await.unwrap();
    until("z's shards trashed", 30, || async { holdings(&c).iter().sum::<usize>() < before }).await;

    restore(&mut c, &backup).await;
    // Audits of z's shards are answered from the trash: nobody loses reputation.
    let passed = |peers: Vec<PeerView>| peers.iter().map(|p| p.audits_passed as u64).sum::<u64>();
    let start = passed(c.client.peers().await.unwrap());
    until("audits of every peer", 60, || async { passed(c.client.peers().await.unwrap()) >= start + 15 }).await;
    for p in c.client.peers().await.unwrap() {
        assert!(p.reputation > 0.999 && p.status != PeerStatus::Disqualified, "{p:?}");
    }
    // A file committed before the operator runs `recover`: its notices take numbers the
    // nodes took from the lost timeline (they refuse them, and they wait).
    let iw = c.client.upload(&c.write("w", &data(100, 9)), b"pw", params(2, 5), None).await.unwrap();
    // Recovery learns the deletion from the nodes' signed notices: z is gone, x is whole.
    assert_eq!(recover(&c).await.files_deleted, 1);
    let mut listed: Vec<String> = c.client.list().await.unwrap().into_iter().map(|f| f.file_id).collect();
    listed.sort();
    let mut want = vec![ix.to_string(), iw.to_string()];
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(c.client.account().await.unwrap().files, 2);
    let out = c.path("x.out");
    c.client.download(&ix, b"pw", Some(&out), true, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == x);
    c.net.shutdown().await;
}

/// Nodes that kept a deleted file's manifest copy (a malicious node does not drop it) and
/// registered with new keys were asked what they hold, as every new peer was, and the file
/// came back in its owner's account, unreadable and charged (found by an attacker helper).
/// A database that did not lose its records asks only when its operator runs `recover`, and
/// never brings a deleted file back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_kept_a_deleted_files_manifest_do_not_bring_it_back() {
    let mut c = Cluster::start_with(4, fast_config()).await;
    let ix = c.client.upload(&c.write("x", &data(PER_SEGMENT, 9)), b"pw", params(2, 4), None).await.unwrap();
    let kept: Vec<_> = (0..4).map(|i| c.path(&format!("kept-{i}"))).collect();
    for (i, k) in kept.iter().enumerate() {
        c.net.stop_node(i).await;
        copy_dir(&c.net.node_dir(i), k);
        c.net.start_node(i).await.unwrap();
    }
    c.client.remove(&ix, b"pw").await.unwrap();
    // Every node comes back as it was before the deletion, under a new key.
    for (i, k) in kept.iter().enumerate() {
        c.net.stop_node(i).await;
        std::fs::remove_dir_all(c.net.node_dir(i)).unwrap();
        copy_dir(k, &c.net.node_dir(i));
        std::fs::remove_file(c.net.node_dir(i).join("identity.p8")).unwrap();
        c.net.start_node(i).await.unwrap();
    }
    until("the new peers registered", 30, || async { c.client.peers().await.unwrap().len() == 8 }).await;
    rounds(&c, "repair", 2.0).await;
    assert!(c.client.list().await.unwrap().is_empty());
    assert_eq!(recover(&c).await.files_recovered, 0);
    assert!(c.client.list().await.unwrap().is_empty());
    assert_eq!(c.client.account().await.unwrap().files, 0);
    c.net.shutdown().await;
}

/// An operator deleted the index of three of four nodes (sled reported corruption, or only
/// the shard files were restored): each node adopts its shard files without knowing who
/// needs them. Every read was refused ("no shard here for upload"), while audits, which read
/// under the coordinator's grant, passed: the file was lost to readers and nothing repaired it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_lost_their_index_still_serve_their_shards() {
    let mut c = Cluster::start_with(4, fast_config()).await;
    let x = data(2 * PER_SEGMENT + 5, 6);
    let ix = c.client.upload(&c.write("x", &x), b"pw", params(2, 4), None).await.unwrap();
    for i in 0..3 {
        c.net.stop_node(i).await;
        std::fs::remove_dir_all(c.net.node_dir(i).join("index")).unwrap();
        c.net.start_node(i).await.unwrap();
    }
    c.net.stop_node(3).await;
    let out = c.path("x.out");
    c.client.download(&ix, b"pw", Some(&out), true, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == x);
    c.net.shutdown().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_one_shard_all_succeed_and_count_once() {
    let c = Cluster::start(4).await;
    let plan = c.plan(20_000, 2, 4).await;
    let peer = plan.segments[0][0].clone();
    let body = Bytes::from(data(9_000, 5));
    let sid = p2pstore::core::merkle::root(&body);
    let order = serde_json::to_string(&plan.orders[&peer]).unwrap();
    let url = format!("{}/v2/shards/{sid}", plan.addresses[&peer]);
    let h = http::Client::default();
    let puts = (0..24).map(|_| {
        let req = request("PUT", &url, &[(ORDER_HEADER, &order)], body.clone()).unwrap();
        let h = h.clone();
        async move { h.send(req).await.unwrap().status.as_u16() }
    });
    let statuses = futures::future::join_all(puts).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let node = c.node_of(&peer);
    let status: NodeStatus = h.get(&format!("{}/v2/status", plan.addresses[&peer])).await.unwrap().json().unwrap();
    assert_eq!((status.used, status.shards), (9_000, 1), "stored and counted once");
    let dir = c.net.node_dir(node).join("shards").join(&sid.to_hex()[..2]);
    assert_eq!(files_in(&dir), vec![sid.to_hex()], "no temporary file left");
    c.net.shutdown().await;
}
