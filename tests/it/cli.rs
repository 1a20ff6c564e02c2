//! The real binary: configuration precedence and refusals, exit codes.

use std::process::{Command, Output};

fn p2pstore(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_p2pstore"));
    c.current_dir(dir).args(args).env_remove("P2PSTORE_CONFIG").env_remove("P2PSTORE_COORDINATOR");
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
