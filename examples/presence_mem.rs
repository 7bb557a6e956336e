//! The hub's own memory per presence member (spec §7; issue #15's goal:
//! 10,000 members across channels under 2 MiB), counted by a global
//! allocator wrapper rather than read off RSS, which also holds freed
//! buffers (the join frames sent to the others) that malloc keeps.
//!
//!   cargo run --release --example presence_mem [USERS] [CHANNELS]
//!
//! USERS connections (default 100) join CHANNELS presence channels (default
//! 100) each: USERS x CHANNELS members. Printed: live heap bytes per plain
//! subscription, and per presence subscription with its member, so the
//! member's own cost is the difference.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use roostd::auth::{Claims, Patterns};
use roostd::hub::{Hub, Limits, Request, Rules, Start};
use roostd::proto::roost::ROOST;
use roostd::store::Store;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn main() {
    let arg = |n: usize, default: usize| std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (users, channels) = (arg(1, 100), arg(2, 100));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 26).unwrap();
    let limits = Limits { max_subscriptions: 2 * channels, publish_rate: 0, max_reply_bytes: 1 << 20 };
    let mut hub = Hub::with_rules(store.epoch(), limits, Rules { max_presence_members: users, ..Rules::default() });
    let now = Instant::now();
    let all = || Patterns::new(vec!["*".into()]);
    for u in 0..users {
        let claims =
            Claims { sub: format!("user-{u:03}"), exp: u64::MAX, read: all(), write: all(), api: false, info: None };
        hub.join(u, claims, ROOST, now);
    }
    let mut out = Vec::new();
    let mut subscribe = |hub: &mut Hub, prefix: &str| {
        let before = LIVE.load(Ordering::Relaxed);
        for u in 0..users {
            for c in 0..channels {
                let ch = format!("{prefix}{c}");
                hub.handle(u, None, Request::Sub { ch: &ch, start: Start::Now, state: false }, now, &store, &mut out);
                out.clear();
            }
        }
        // The members' writes, committed as the server would.
        for change in hub.take_changes() {
            hub.on_written(&change, true, now);
        }
        (LIVE.load(Ordering::Relaxed) - before) as f64 / (users * channels) as f64
    };
    let plain = subscribe(&mut hub, "plain-");
    let presence = subscribe(&mut hub, "presence-");
    let member = presence - plain;
    println!(
        "{users} users x {channels} channels: {plain:.0} B per plain subscription, {presence:.0} B per presence \
         subscription: {member:.0} B per member ({:.2} MiB for 10,000 members)",
        member * 10_000.0 / 1048576.0
    );
}
