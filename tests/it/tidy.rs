//! The rules of docs/ARCHITECTURE.md, checked: which module may use which
//! crate, where the clock is read, where `unsafe` lives, and that every
//! source file says what it owns.

use std::fs;
use std::path::{Path, PathBuf};

fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
            (name, fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The code of a file without its `#[cfg(test)]` tail and comment lines.
fn code(text: &str) -> String {
    let body = text.split("#[cfg(test)]").next().unwrap_or(text);
    body.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

#[test]
fn every_source_file_says_what_it_owns() {
    for (name, text) in sources() {
        if name == "hub/tests.rs" {
            assert!(text.starts_with("//!"), "{name} starts without a //! doc");
            continue;
        }
        assert!(text.starts_with("//!"), "{name} starts without a //! line saying what it owns");
    }
}

#[test]
fn crates_stay_in_their_modules() {
    // crate → the modules that may name it
    let rules: &[(&str, &[&str])] = &[
        ("heed::", &["store.rs"]),
        ("hmac::", &["auth.rs"]),
        ("md5::", &["auth.rs"]),
        ("sha2::", &["auth.rs", "tls.rs"]),
        ("rcgen::", &["tls.rs"]),
        ("httparse::", &["http/mod.rs"]),
        // server names tungstenite's config and payload types; framing and
        // its I/O are net's (the stream under it knows nothing of it).
        ("tungstenite::", &["net/conn.rs", "net/counted.rs", "net/frame.rs", "server/mod.rs"]),
        // The TLS stream is net's; tls builds the config, server holds it;
        // outbound is the client side (https:// webhooks).
        ("rustls::", &["net/stream.rs", "tls.rs", "server/mod.rs", "outbound.rs"]),
        // Only the stream under a connection knows its socket is mio's.
        ("mio::", &["net/stream.rs", "server/mod.rs"]),
    ];
    for (name, text) in sources() {
        let code = code(&text);
        for (krate, allowed) in rules {
            if code.contains(krate) {
                assert!(
                    allowed.contains(&name.as_str()),
                    "{name} uses {krate}; only {allowed:?} may (docs/ARCHITECTURE.md)"
                );
            }
        }
    }
}

#[test]
fn pure_modules_do_not_read_the_clock() {
    for (name, text) in sources() {
        // Whole folders are pure: the hub, the protocols, HTTP.
        let pure_folder =
            ["hub/", "proto/", "http/"].iter().any(|f| name.starts_with(f)) && !name.ends_with("tests.rs");
        if !pure_folder && !["auth.rs", "config.rs", "metrics.rs", "clock.rs", "channel.rs"].contains(&name.as_str()) {
            continue;
        }
        let code = code(&text);
        for clock in ["Instant::now", "SystemTime::now"] {
            assert!(!code.contains(clock), "{name} reads the clock ({clock}); pass the time in");
        }
    }
}

#[test]
fn unsafe_code_is_only_the_lmdb_open_and_adjtimex() {
    for (name, text) in sources() {
        let n = code(&text).matches("unsafe {").count();
        match name.as_str() {
            "store.rs" => assert_eq!(n, 1, "store.rs should hold exactly one unsafe block (the LMDB open)"),
            // Asking the kernel whether the clock is synchronized (spec §10):
            // std has no safe `adjtimex`, and no dependency wraps it.
            "writer.rs" => assert_eq!(n, 1, "writer.rs should hold exactly one unsafe block (adjtimex)"),
            _ => assert_eq!(n, 0, "{name} has an unsafe block"),
        }
    }
}

#[test]
fn no_test_is_ignored_or_expects_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts: Vec<(String, String)> = sources();
    for dir in ["tests", "tests/it"] {
        for entry in fs::read_dir(root.join(dir)).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "rs") && !p.ends_with("tidy.rs") {
                texts.push((p.display().to_string(), fs::read_to_string(&p).unwrap()));
            }
        }
    }
    for (name, text) in texts {
        for banned in ["#[ignore", "#[should_panic"] {
            assert!(!text.contains(banned), "{name} uses {banned}]");
        }
    }
}

/// The modules a source file names through `crate::` (`use crate::a::b`,
/// `use crate::{a, b::c}`, `crate::a::f()`), its tests left out.
fn crate_edges(text: &str) -> Vec<String> {
    let code = code(text);
    let mut edges = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let group = match rest.strip_prefix('{') {
            Some(inner) => &inner[..inner.find('}').unwrap_or(inner.len())],
            None => rest,
        };
        for item in group.split(',') {
            let name: String = item.trim().chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if !name.is_empty() && name != "self" {
                edges.push(name);
            }
            if !rest.starts_with('{') {
                break; // a plain path names one module
            }
        }
    }
    edges.sort();
    edges.dedup();
    edges
}

/// The code map of docs/ARCHITECTURE.md: module → the modules it may use
/// (`None`: any), read from the table's backticked names.
fn code_map() -> Vec<(String, Option<Vec<String>>)> {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ARCHITECTURE.md")).unwrap();
    let section = doc.split("## Code map").nth(1).expect("a Code map section").split("\n## ").next().unwrap();
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`').skip(1).step_by(2).map(|t| t.split("::").next().unwrap().to_string()).collect()
    };
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let module = ticked(cells[0])[0].trim_end_matches(".rs").to_string();
            let may = cells.last().unwrap();
            let any = may.contains("everything") || may.contains("all of the above");
            (module, (!any).then(|| ticked(may)))
        })
        .collect()
}

#[test]
fn modules_use_only_what_the_code_map_allows() {
    let map = code_map();
    assert!(map.len() > 10, "the code map table was not found: {map:?}");
    for (name, text) in sources() {
        if name.ends_with("tests.rs") || name == "lib.rs" {
            continue;
        }
        // A file of a folder may have a row of its own (`http/api.rs`);
        // otherwise the folder's row speaks for it.
        let file = name.trim_end_matches(".rs");
        let folder = name.split('/').next().unwrap().trim_end_matches(".rs");
        let module = if map.iter().any(|(m, _)| m == file) { file } else { folder };
        let Some((_, allowed)) = map.iter().find(|(m, _)| m == module) else {
            panic!("src/{name}: module `{module}` has no row in the code map of docs/ARCHITECTURE.md");
        };
        let Some(allowed) = allowed else { continue };
        for used in crate_edges(&text) {
            assert!(
                used == folder || allowed.contains(&used),
                "src/{name} uses crate::{used}, which the code map in docs/ARCHITECTURE.md does not allow \
                 `{module}` (it may use {allowed:?}): change the code, or the map first"
            );
        }
    }
}

#[test]
fn crate_edges_are_read_from_every_form_of_path() {
    let text = "use crate::a::X;\nuse crate::{b, c::Y, self};\nfn f() { crate::d::g(); }\n// crate::e\n";
    assert_eq!(crate_edges(text), ["a", "b", "c", "d"]);
}
