//! Start-up cost of the in-memory dedupe index at its bound: fills a store
//! with `store::MAX_DEDUPE_IDS_IN_MEMORY` publishes with ids inside the
//! window (as the writer commits them: batches of up to 4096), reopens it and
//! times `Store::load_dedupe`, the writer's first-turn rebuild, with the
//! heap it holds afterwards and the store pages it mapped.
//!
//! ```text
//! cargo run --release --example dedupe_load -- [DIR]
//! ```

use std::time::Instant;

use roostd::store::{Append, Retention, Store, MAX_DEDUPE_IDS_IN_MEMORY};

/// A `/proc/self/status` field in KiB: `RssAnon` is the heap (the index),
/// `RssFile` the store's pages mapped while reading the log.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = std::env::args().nth(1).map(Into::into).unwrap_or_else(|| tmp.path().to_path_buf());
    let (window, now) = (600_000, 1_000_000);
    let keep = |_: &str| Retention { messages: 10_000, age_ms: u64::MAX };
    let n = MAX_DEDUPE_IDS_IN_MEMORY;
    {
        let store = Store::open(&dir, 1 << 32).expect("open");
        let mut i = 0;
        while i < n {
            let batch: Vec<Append> = (i..(i + 4096).min(n))
                .map(|j| Append {
                    ch: format!("room:{}", j % 100),
                    from: format!("loadgen-{}", j % 50),
                    data: format!("{{\"t\":{j}}}"),
                    id: Some(format!("\"{j:016x}-0123456789\"")),
                    key: None,
                    event: None,
                })
                .collect();
            store.append_batch(&batch, now + (i / 1000) as u64, window, &keep).expect("commit");
            i += batch.len();
        }
    }
    let file = std::fs::metadata(dir.join("data.mdb")).map(|m| m.len()).unwrap_or(0);
    let (anon, file_mapped) = (status_kib("RssAnon:"), status_kib("RssFile:"));
    let started = Instant::now();
    let store = Store::open(&dir, 1 << 32).expect("reopen");
    store.load_dedupe(now + 1000, window).expect("load");
    let took = started.elapsed();
    println!(
        "{n} ids in the window, data.mdb {:.1} MiB: open + load_dedupe {:.0} ms, heap +{:.1} MiB \
         (peak RSS {:.1} MiB), store pages mapped +{:.1} MiB",
        file as f64 / 1048576.0,
        took.as_secs_f64() * 1000.0,
        status_kib("RssAnon:").saturating_sub(anon) as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0,
        status_kib("RssFile:").saturating_sub(file_mapped) as f64 / 1024.0
    );
}
