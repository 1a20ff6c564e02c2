//! HTTPS end to end: a network whose coordinator and nodes serve TLS with certificates from a
//! private CA; clients verify them (the CA trusted through `[tls] ca_file`) and refuse a
//! server whose certificate they cannot verify.

use std::path::{Path, PathBuf};

use crate::harness::*;

/// A CA, and a certificate it signed for 127.0.0.1 and localhost: (ca.pem, cert.pem, key.pem).
pub fn make_ca_and_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca = p2pstore::net::tls::local_ca(&dir.join(name)).unwrap();
    (ca.ca, ca.cert, ca.key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_over_tls_end_to_end() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_ca_and_cert(certs.path(), "good");
    p2pstore::net::tls::trust_ca_file(&ca).unwrap();
    let mut config = p2pstore::config::Config::default();
    config.tls.cert = Some(cert);
    config.tls.key = Some(key);
    let c = Cluster::start_with(5, config).await;
    assert!(c.net.url().starts_with("https://"));
    let peers = c.client.peers().await.unwrap();
    assert_eq!(peers.len(), 5, "every node registered over HTTPS");
    assert!(peers.iter().all(|p| p.address.starts_with("https://")), "nodes advertise https");
    let bytes = data(3 * PER_SEGMENT + 11, 31);
    let id = c.client.upload(&c.write("t", &bytes), b"pw", params(3, 5), None).await.unwrap();
    let out = c.path("t.out");
    c.client.download(&id, b"pw", Some(&out), false, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);

    // Plain HTTP to a TLS port gets nothing.
    let plain = c.net.url().replace("https://", "http://");
    assert!(p2pstore::net::client::Client::default().get(&format!("{plain}/healthz")).await.is_err());

    // The CLI, told to trust the CA, uses the network over HTTPS too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pstore"))
        .args(["download", &id.to_string(), "--password-file"])
        .arg(c.write("pwfile", b"pw"))
        .arg("-o")
        .arg(c.path("cli.out"))
        .args(["--coordinator", &c.net.url(), "--account"])
        .arg(c.path("cli-account.p8"))
        .arg("--tls-ca")
        .arg(&ca)
        .output()
        .unwrap();
    // A new account may read a file by its id; it is created by `account new` first.
    assert!(!out.status.success(), "an account file named on the command line must exist");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_p2pstore"))
        .args(["account", "new", "--out"])
        .arg(c.path("cli-account.p8"))
        .output()
        .unwrap();
    assert!(made.status.success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pstore"))
        .args(["download", &id.to_string(), "--password-file"])
        .arg(c.path("pwfile"))
        .arg("-o")
        .arg(c.path("cli.out"))
        .args(["--coordinator", &c.net.url(), "--account"])
        .arg(c.path("cli-account.p8"))
        .arg("--tls-ca")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(c.path("cli.out")).unwrap() == bytes);
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = make_ca_and_cert(certs.path(), "untrusted");
    let mut config = p2pstore::config::Config::default();
    config.tls.cert = Some(cert);
    config.tls.key = Some(key);
    let c = Cluster::start_with(1, config).await;
    let e = c.client.peers().await.unwrap_err().to_string();
    assert!(e.contains("certificate") || e.contains("Unknown"), "{e}");
    c.net.shutdown().await;
}
