//! Any size, any source: uploads committed in batches of segments over many layouts and
//! pages, interrupted uploads resumed (SIGKILL at random points), pipes in and out.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use p2pstore::core::codec::EncodeParams;
use p2pstore::core::crypto::MIN_ITERATIONS;
use p2pstore::core::erasure::Shape;
use p2pstore::core::manifest::PAGE_SEGMENTS;
use p2pstore::proto::LAYOUT_SEGMENTS;

/// A file of more segments than a layout, a batch and a page hold: it commits in batches,
/// reads back byte-identical, and its table comes in pages that each check against the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_many_batches_and_pages_round_trips() {
    let c = Cluster::start(4).await;
    let params = EncodeParams { shape: Shape::new(2, 4).unwrap(), segment_size: 4096, iterations: MIN_ITERATIONS };
    let segments = PAGE_SEGMENTS as usize + LAYOUT_SEGMENTS as usize + 7;
    let bytes = data(segments * (4096 - 16) - 5, 21);
    let src = c.write("many.bin", &bytes);
    let id = c.client.upload(&src, b"pw", params, None).await.unwrap();
    let m = c.client.manifest(&id).await.unwrap();
    assert_eq!((m.segment_count() as usize, m.page_count()), (segments, 2));
    // The root stays small: page hashes, not the table.
    assert!(m.to_bytes().len() < 512, "root of {} bytes", m.to_bytes().len());
    assert_eq!(c.client.segments(&id).await.unwrap().len(), segments);
    let view = c.client.info(&id).await.unwrap();
    assert_eq!(view.totals.unwrap().healthy, segments as u64);
    assert_eq!(view.placements.len(), p2pstore::proto::VIEW_SEGMENTS as usize);
    // A download's window: its rows only, and no totals (they cost every row).
    let later = c.client.info_range(&id, PAGE_SEGMENTS, 10).await.unwrap();
    assert_eq!((later.first, later.placements.len(), later.totals), (PAGE_SEGMENTS, 10, None));
    let tail = c.client.info_range(&id, segments as u32 - 3, 10).await.unwrap();
    assert_eq!(tail.placements.len(), 3, "a window stops at the file's end");
    downloads_intact(&c, &id, &bytes, "many.out").await;
    // A range inside the second page, fetched alone.
    let file = c.client.open(&id, b"pw").await.unwrap();
    let start = (PAGE_SEGMENTS as u64 + 3) * (4096 - 16) + 100;
    let (out, _) = c.client.download_to(&file, start..start + 10_000, Vec::new(), None).await.unwrap();
    assert!(out == bytes[start as usize..start as usize + 10_000]);
    c.net.shutdown().await;
}

fn p2pstore(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_p2pstore"));
    c.current_dir(dir)
        .args(args)
        .env_remove("P2PSTORE_CONFIG")
        .env_remove("P2PSTORE_COORDINATOR")
        .env_remove("P2PSTORE_PASSWORD")
        .env("XDG_CACHE_HOME", dir.join("cache"));
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    p2pstore(dir, args, env).output().unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether a run said it resumes (not "not resuming").
fn resumes(o: &Output) -> bool {
    err(o).lines().any(|l| l.starts_with("resuming the interrupted upload"))
}

/// A devnet process, killed when dropped (a failed assertion must not leave it running).
struct Devnet(Child);

impl Drop for Devnet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A devnet of 4 nodes from the real binary, and its URL; the client configuration
/// (`p2pstore.toml`, [`SMALL`]) is written beside it.
fn devnet(d: &Path) -> (Devnet, String) {
    std::fs::write(d.join("p2pstore.toml"), SMALL).unwrap();
    let mut net = p2pstore(d, &["devnet", "--nodes", "4", "--port", "0", "--data-dir", "net"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(net.stdout.take().unwrap()).read_line(&mut url).unwrap();
    (Devnet(net), url.trim().to_owned())
}

/// The environment of a client command against the devnet at `url`.
fn cli_env(url: &str) -> [(&'static str, &str); 3] {
    [("P2PSTORE_COORDINATOR", url), ("P2PSTORE_PASSWORD", "pw"), ("P2PSTORE_CONFIG", "p2pstore.toml")]
}

/// Small segments, so a few MB make thousands of them, and the fewest KDF iterations.
const SMALL: &str = "[client]\nsegment_size = 4096\nkdf_iterations = 100000\n";

/// The segments an interrupted upload recorded, from its state file (0: none yet).
fn recorded(cache: &Path) -> u64 {
    let Ok(dir) = std::fs::read_dir(cache.join("p2pstore/uploads")) else { return 0 };
    // Only finished state files: a kill can leave a temporary one behind.
    dir.flatten()
        .filter(|e| {
            e.path().extension().is_some_and(|x| x == "json") && !e.file_name().to_string_lossy().starts_with('.')
        })
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter_map(|v| v["committed"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_killed_upload_resumes_and_a_changed_file_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_net, url) = devnet(d);
    let env = cli_env(&url);
    let bytes = data(3000 * 4080 + 11, 5);
    std::fs::write(d.join("big.bin"), &bytes).unwrap();
    let upload = || p2pstore(d, &["upload", "big.bin", "-k", "2", "-n", "4"], &env);

    // SIGKILL at a few points, each after more segments were recorded; every rerun resumes.
    let mut resumed = 0;
    let mut id = None;
    for round in 0..4u64 {
        let mut child = upload().stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let target = recorded(&d.join("cache")) + 64 * (1 + round % 2);
        let deadline = Instant::now() + Duration::from_secs(60);
        while recorded(&d.join("cache")) < target && Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
        }
        let out = child.wait_with_output().unwrap();
        if resumes(&out) {
            resumed += 1;
        }
        if out.status.success() {
            id = Some(String::from_utf8_lossy(&out.stdout).trim().to_owned());
            break;
        }
    }
    let id = id.unwrap_or_else(|| {
        let out = upload().output().unwrap();
        assert!(out.status.success(), "{}", err(&out));
        if resumes(&out) {
            resumed += 1;
        }
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    });
    assert!(resumed >= 1, "no run resumed");
    assert_eq!(recorded(&d.join("cache")), 0, "a finished upload leaves no state behind");
    let down = run(d, &["download", &id, "-o", "back.bin"], &env);
    assert!(down.status.success(), "{}", err(&down));
    assert!(std::fs::read(d.join("back.bin")).unwrap() == bytes);

    // Killed again, then the file changes: the rerun says so and starts over.
    let mut child = upload().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded(&d.join("cache")) < 64 && Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let mut changed = bytes.clone();
    changed.extend_from_slice(b"more");
    std::fs::write(d.join("big.bin"), &changed).unwrap();
    let out = upload().output().unwrap();
    assert!(out.status.success(), "{}", err(&out));
    if recorded(&d.join("cache")) > 0 || err(&out).contains("not resuming") {
        assert!(err(&out).contains("the file changed since"), "{}", err(&out));
    }
    assert!(!resumes(&out), "{}", err(&out));
    let id2 = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let down = run(d, &["download", &id2, "-o", "changed.bin"], &env);
    assert!(down.status.success(), "{}", err(&down));
    assert!(std::fs::read(d.join("changed.bin")).unwrap() == changed);
    // --restart throws an attempt away.
    let out = run(d, &["upload", "big.bin", "-k", "2", "-n", "4", "--restart"], &env);
    assert!(out.status.success() && !resumes(&out), "{}", err(&out));
}

#[test]
fn pipes_in_and_out_and_a_wrong_password_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_net, url) = devnet(d);
    let env = cli_env(&url);
    let bytes = data(700 * 4080 + 3, 9);

    let mut up = p2pstore(d, &["upload", "-", "--name", "backup.tar", "-k", "2", "-n", "4"], &env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = up.stdin.take().unwrap();
    let feed = bytes.clone();
    let writer = std::thread::spawn(move || {
        for chunk in feed.chunks(10_000) {
            stdin.write_all(chunk).unwrap();
        }
    });
    let out = up.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{}", err(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let info = run(d, &["info", &id, "--json"], &env);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["size"], bytes.len());

    let down = run(d, &["download", &id, "-o", "-"], &env);
    assert!(down.status.success(), "{}", err(&down));
    assert!(down.stdout == bytes, "stdout differs ({} bytes of {})", down.stdout.len(), bytes.len());
    // The sealed name came from --name.
    let named = run(d, &["download", &id], &env);
    assert!(named.status.success(), "{}", err(&named));
    assert!(std::fs::read(d.join("backup.tar")).unwrap() == bytes);

    let wrong = run(d, &["download", &id, "-o", "-"], &[env[0], ("P2PSTORE_PASSWORD", "nope"), env[2]]);
    assert!(!wrong.status.success());
    assert!(wrong.stdout.is_empty(), "{} bytes written with a wrong password", wrong.stdout.len());
    assert!(err(&wrong).contains("wrong password"), "{}", err(&wrong));

    // An empty stream is a file too.
    let empty = p2pstore(d, &["upload", "-", "-k", "2", "-n", "4"], &env).stdin(Stdio::null()).output().unwrap();
    assert!(empty.status.success(), "{}", err(&empty));
    let id = String::from_utf8_lossy(&empty.stdout).trim().to_owned();
    let back = run(d, &["download", &id, "-o", "-"], &env);
    assert!(back.status.success() && back.stdout.is_empty(), "{}", err(&back));
}
