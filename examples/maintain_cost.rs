//! The cost of one retention pass next to many idle channels (nothing due):
//!
//! ```text
//! cargo run --release --example maintain_cost -- CHANNELS
//! ```
//!
//! Fills a store in a temp folder with one message in each of CHANNELS
//! channels, then times 20 `Store::maintain` passes, as the writer runs one
//! every 400 ms inside a write transaction (commits wait for it).

use std::time::{Duration, Instant};

use roostd::store::{Append, Retention, Store};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).expect("usage: maintain_cost CHANNELS");
    let dir = tempfile::tempdir().expect("a temp folder");
    let store = Store::open(dir.path(), 4 << 30).expect("opening the store");
    let week = |_: &str| Retention { messages: 10_000, age_ms: 7 * 86_400_000 };
    let names: Vec<String> = (0..n).map(|i| format!("fill-{i}")).collect();
    for chunk in names.chunks(10_000) {
        let batch: Vec<Append> = chunk
            .iter()
            .map(|ch| Append { ch: ch.clone(), from: "u".into(), data: "1".into(), id: None, key: None, event: None })
            .collect();
        store.append_batch(&batch, 1_000_000, 0, &week).expect("filling");
    }
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            store.maintain(2_000_000, 2000, &week).expect("a pass");
            t.elapsed()
        })
        .collect();
    times.sort();
    println!("{n} idle channels: one maintenance pass median {:?}, max {:?}", times[10], times[19]);
}
