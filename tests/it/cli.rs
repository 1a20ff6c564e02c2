//! The real binary: configuration precedence and refusals, exit codes.

use std::process::{Command, Output};

fn p2pstore(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_p2pstore"));
    c.current_dir(dir)
        .args(args)
        .env_remove("P2PSTORE_CONFIG")
        .env_remove("P2PSTORE_COORDINATOR")
        .env_remove("P2PSTORE_PASSWORD");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn precedence_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let coord = |o: &Output| {
        assert!(o.status.success(), "{}", stderr(o));
        let out = stdout(o);
        out.lines().find(|l| l.starts_with("coordinator = \"http")).unwrap().to_owned()
    };
    // Built-in default.
    let o = p2pstore(d, &["config"], &[]);
    assert_eq!(coord(&o), "coordinator = \"http://127.0.0.1:8000\"");
    assert!(stdout(&o).contains("built-in defaults"));
    // ./config.toml is picked up.
    std::fs::write(d.join("config.toml"), "[client]\ncoordinator = \"http://file:1\"\n").unwrap();
    assert_eq!(coord(&p2pstore(d, &["config"], &[])), "coordinator = \"http://file:1\"");
    // Environment beats the file, the flag beats the environment.
    let env = [("P2PSTORE_COORDINATOR", "http://env:2")];
    assert_eq!(coord(&p2pstore(d, &["config"], &env)), "coordinator = \"http://env:2\"");
    assert_eq!(
        coord(&p2pstore(d, &["config", "--coordinator", "http://flag:3"], &env)),
        "coordinator = \"http://flag:3\""
    );
    // P2PSTORE_CONFIG names another file; --config beats it.
    std::fs::write(d.join("other.toml"), "[client]\ncoordinator = \"http://other:4\"\n").unwrap();
    std::fs::write(d.join("third.toml"), "[client]\ncoordinator = \"http://third:5\"\n").unwrap();
    let env = [("P2PSTORE_CONFIG", "other.toml")];
    assert_eq!(coord(&p2pstore(d, &["config"], &env)), "coordinator = \"http://other:4\"");
    assert_eq!(coord(&p2pstore(d, &["--config", "third.toml", "config"], &env)), "coordinator = \"http://third:5\"");
}

#[test]
fn bad_config_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[node]\nshards_total = 8\nshards_required = 8\n").unwrap();
    let o = p2pstore(dir.path(), &["--config", "bad.toml", "config"], &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("bad.toml") && e.contains("node.shards_required"), "{e}");
    assert!(!e.contains("panicked") && !e.contains("backtrace"), "{e}");

    let o = p2pstore(dir.path(), &["--config", "missing.toml", "config"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.toml"));

    let o = p2pstore(dir.path(), &["config", "--coordinator", "ftp://x"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("client.coordinator"));
}

#[test]
fn unknown_command_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let o = p2pstore(dir.path(), &["frobnicate"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = p2pstore(dir.path(), &["--help"], &[]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("bench"));
}

#[test]
fn devnet_upload_download_through_the_binary() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut net = Command::new(env!("CARGO_BIN_EXE_p2pstore"))
        .current_dir(d)
        .args(["devnet", "--nodes", "4", "--port", "0", "--data-dir", "net"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(net.stdout.take().unwrap()).read_line(&mut url).unwrap();
    let url = url.trim().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let env = [("P2PSTORE_COORDINATOR", url.as_str()), ("P2PSTORE_PASSWORD", "pw")];

    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).chain([0u8; 100]).collect();
    std::fs::write(d.join("in.bin"), &bytes).unwrap();
    let up = p2pstore(d, &["upload", "in.bin", "-k", "2", "-n", "4"], &env);
    assert!(up.status.success(), "{}", stderr(&up));
    let id = stdout(&up).trim().to_owned();
    assert_eq!(id.len(), 64, "stdout must be only the file id: {id:?}");

    // Without -o the original name is used, and it is not overwritten without --force.
    std::fs::create_dir(d.join("dl")).unwrap();
    let down = p2pstore(&d.join("dl"), &["download", &id], &env);
    assert!(down.status.success(), "{}", stderr(&down));
    assert!(std::fs::read(d.join("dl/in.bin")).unwrap() == bytes);
    let again = p2pstore(&d.join("dl"), &["download", &id], &env);
    assert!(!again.status.success() && stderr(&again).contains("--force"));

    let wrong = p2pstore(d, &["download", &id, "-o", "w.bin"], &[env[0], ("P2PSTORE_PASSWORD", "nope")]);
    assert!(!wrong.status.success());
    assert!(stderr(&wrong).contains("wrong password"), "{}", stderr(&wrong));
    assert!(!d.join("w.bin").exists());

    let info = p2pstore(d, &["info", &id, "--json"], &env);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["size"], bytes.len());
    let peers = p2pstore(d, &["peers", "--json"], &env);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&peers.stdout).unwrap().as_array().unwrap().len(), 4);

    // No password and no terminal: a clear error.
    let none = p2pstore(d, &["download", &id, "-o", "x.bin"], &[env[0]]);
    assert!(!none.status.success() && stderr(&none).contains("no password"), "{}", stderr(&none));

    // The operator's commands find the running coordinator of a data directory on the port
    // it got, not on the configured one (8000 here).
    let backup = p2pstore(d, &["coordinator", "--data-dir", "net/coordinator", "backup", "bk"], &[]);
    assert!(backup.status.success(), "{}", stderr(&backup));
    assert!(std::fs::metadata(d.join("bk")).unwrap().len() > 0);

    net.kill().unwrap();
    net.wait().unwrap();
}

#[test]
fn errors_say_what_to_do_and_name_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let o = p2pstore(d, &["ls", "--coordinator", &url], &[]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(e.contains(&format!("cannot reach the coordinator at {url}")) && e.contains("p2pstore coordinator"), "{e}");
    assert_eq!(e.matches("Connection refused").count(), 1, "{e}");

    let o = p2pstore(d, &["upload", "/nonexistent", "--coordinator", &url], &[("P2PSTORE_PASSWORD", "pw")]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert_eq!(e.trim(), "error: cannot read /nonexistent: No such file or directory (os error 2)");
}
