//! What one commit of a message, a keyed message and a presence member
//! writes (docs/durability.md, "Keys, compacted channels, members and
//! webhook events"):
//!
//! ```text
//! cargo run --release --example keys_cost
//! ```
//!
//! Each case: a store in a temp folder warmed with 2,000 items in one
//! commit, then 200 one-item commits; prints the bytes the process wrote
//! (`wchar` of `/proc/self/io`: LMDB writes pages with `pwrite`/`writev`)
//! and the time per commit, and the map's use at the end.

use std::sync::Arc;
use std::time::Instant;

use roostd::store::{Append, Commit, Retention, Store, Write};

fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io (Linux)");
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

fn message(i: u64, key: Option<String>) -> Write {
    let data = format!("{{\"v\":{i}}}");
    Write::Message(Append { ch: "c".into(), from: "u".into(), data, id: None, key, event: None })
}

fn run(name: &str, compact: bool, make: &dyn Fn(u64) -> Write) {
    let keep = |_: &str| Retention { messages: u64::MAX, age_ms: u64::MAX };
    let dir = tempfile::tempdir().expect("a temp folder");
    let store = Store::open(dir.path(), 1 << 28).expect("opening the store");
    let store = store.with_compaction(Arc::new(move |_| compact), 100_000);
    let warm: Vec<Write> = (0..2000).map(make).collect();
    store.commit(&warm, 1, 0, &keep, Commit::default()).expect("warming up");
    let (before, started) = (written(), Instant::now());
    for i in 2000..2200 {
        store.commit(&[make(i)], 2, 60_000, &keep, Commit::default()).expect("a commit");
    }
    let took = started.elapsed() / 200;
    let (used, _) = store.usage();
    println!("{name}: {} bytes/commit, {took:?}/commit, map used {} KiB", (written() - before) / 200, used / 1024);
}

fn main() {
    run("message without key", false, &|i| message(i, None));
    run("keyed message, ordinary channel", false, &|i| message(i, Some(format!("sensor{:03}", i % 100))));
    run("keyed message, compacted, 100 keys", true, &|i| message(i, Some(format!("sensor{:03}", i % 100))));
    run("keyed message, compacted, every key new", true, &|i| message(i, Some(format!("sensor{i:05}"))));
    run("presence join", false, &|i| Write::Member {
        ch: "presence-r".into(),
        user: format!("user{i}"),
        info: Some("{\"name\":\"x\"}".into()),
        joined: true,
    });
}
