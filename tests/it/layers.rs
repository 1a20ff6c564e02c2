//! The architecture, checked: each folder of `src/` is a layer that uses only the layers
//! below it, and the pure core touches no files, sockets or clock (docs/ARCHITECTURE.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each layer and the crate modules it may use (besides itself).
const LAYERS: &[(&str, &[&str])] = &[
    ("sys", &[]),
    ("core", &["sys"]),
    ("proto", &["core"]),
    ("store", &["core", "sys"]),
    ("net", &["core", "proto", "sys"]),
    ("config", &["core", "proto"]),
    ("node", &["config", "core", "net", "proto", "store", "sys"]),
    ("coordinator", &["config", "core", "net", "proto", "store", "sys"]),
    ("client", &["core", "net", "proto", "sys"]),
    ("gateway", &["client", "core", "net", "sys"]),
    ("devnet", &["config", "coordinator", "net", "node", "sys"]),
    ("bench", &["client", "config", "coordinator", "core", "devnet", "net", "proto", "store", "sys"]),
    (
        "cli",
        &[
            "bench",
            "client",
            "config",
            "coordinator",
            "core",
            "devnet",
            "gateway",
            "net",
            "node",
            "proto",
            "store",
            "sys",
        ],
    ),
];

/// What the pure core must not name: files, sockets, the clock, threads that sleep.
const IMPURE: &[&str] = &[
    "std::fs",
    "TcpListener",
    "UdpSocket",
    "ToSocketAddrs",
    "lookup_host",
    "tokio",
    "hyper",
    "sled",
    "SystemTime",
    "Instant::now",
    "std::thread::sleep",
    "File::",
    "TcpStream",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The layer a source file belongs to: its folder under src/, or its file stem.
fn layer_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// Code without its `#[cfg(test)]` module: tests may use anything.
fn non_test_code(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// The crate modules a file names through `crate::x`.
fn crate_uses(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(i, _)| code[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn layers_only_use_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let layer = layer_of(&src, f);
        if layer == "lib" || layer == "main" {
            continue;
        }
        let Some((_, allowed)) = LAYERS.iter().find(|(l, _)| *l == layer) else {
            wrong.push(format!("{}: a module that is no layer; add it to LAYERS", f.display()));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for used in crate_uses(non_test_code(&text)) {
            if used != layer && !allowed.contains(&used.as_str()) {
                wrong.push(format!("{}: `{layer}` uses `{used}`", f.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_core_is_pure() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src.join("core"), &mut files);
    sources(&src.join("proto"), &mut files);
    assert!(files.len() > 5);
    let mut wrong = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for word in IMPURE {
            if non_test_code(&text).contains(word) {
                wrong.push(format!("{} names `{word}`", f.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "the pure core does I/O:\n{}", wrong.join("\n"));
}

#[test]
fn the_layer_table_has_no_cycle() {
    // Every layer's allowed dependencies appear before it in LAYERS: the order is a
    // topological order, so no cycle is possible.
    for (i, (layer, allowed)) in LAYERS.iter().enumerate() {
        for dep in *allowed {
            let j = LAYERS.iter().position(|(l, _)| l == dep).unwrap();
            assert!(j < i, "`{layer}` may use `{dep}`, which comes later");
        }
    }
}
