//! Time without a real-time clock (spec §10): the effective time is
//! `max(system time, floor)`, and only a synchronized clock moves the
//! floor. `ROOSTD_TEST_CLOCK_SYNCED` stands in for the kernel's answer; the
//! floor is written into the store through the library before the server
//! starts, as a server whose clock once jumped a day ahead would have left it.

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use roostd::store::{Append, Retention, Store};
use serde_json::json;

use crate::support::*;

const DAY_MS: u64 = 86_400_000;
/// Smaller than the server's map on purpose: LMDB saves a larger map size
/// into the file, and a server with a smaller one would fail (MDB_MAP_RESIZED).
const MAP: u64 = 1 << 24;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A server whose store holds 5 messages on `log` committed at the real
/// time, and a saved clock floor a day ahead of it. Returns the floor.
fn server_with_a_floor_a_day_ahead(synced: &str, args: &[&str]) -> (TestServer, u64) {
    let mut server = TestServer::options().args(args).env("ROOSTD_TEST_CLOCK_SYNCED", synced).start();
    assert!(server.terminate().success());
    let floor = now_ms() + DAY_MS;
    {
        let store = Store::open(server.data_dir(), MAP).unwrap();
        let batch: Vec<Append> = (0..5)
            .map(|i| Append {
                ch: "log".into(),
                from: "past".into(),
                data: i.to_string(),
                id: None,
                key: None,
                event: None,
            })
            .collect();
        let keep = |_: &str| Retention { messages: u64::MAX, age_ms: u64::MAX };
        store.append_batch(&batch, now_ms(), 0, &keep).unwrap();
        store.save_clock_floor(floor).unwrap();
    }
    server.start_again();
    (server, floor)
}

fn saved_floor(server: &TestServer) -> u64 {
    Store::open(server.data_dir(), MAP).unwrap().clock_floor().unwrap()
}

#[test]
fn a_synchronized_clock_lowers_a_floor_a_day_ahead_so_tokens_work_and_history_stays() {
    let (server, floor) = server_with_a_floor_a_day_ahead("1", &["--retention-age", "1h"]);
    // A fresh token (an hour from the real time) would be expired at the floor.
    let mut ws = server.ws(&token_all("fresh"));
    // The writer saves the lowered floor in the maintenance pass that then
    // trims by age: once it is saved, retention has judged by the real time.
    let deadline = Instant::now() + io_timeout();
    while saved_floor(&server) > now_ms() + 60_000 {
        assert!(Instant::now() < deadline, "the lowered floor was never saved; log:\n{}", server.log_tail(10));
        thread::sleep(Duration::from_millis(20));
    }
    let history = ws.history("log", 0);
    assert_eq!(history.len(), 5, "retention (1h) kept the history written just now: {history:?}");
    assert_eq!(ws.publish("log", json!("new")), 6);
    let ts = ws.history("log", 5)[0]["ts"].as_u64().unwrap();
    assert!(ts < floor - DAY_MS / 2, "ts {ts} is the real time again, not the floor {floor}");
}

#[test]
fn an_unsynchronized_clock_keeps_the_floor_and_ts_never_goes_back() {
    let (mut server, floor) = server_with_a_floor_a_day_ahead("0", &[]);
    // Tokens are checked at the floor: one valid for an hour from the system time has expired.
    let (status, body) = server.try_ws(&token_all("fresh")).err().expect("refused");
    assert_eq!((status, body.contains("token_expired")), (401, true), "{body}");
    let late = mint_claims(&json!({"sub": "late", "exp": now_secs() + 2 * 86_400, "read": ["*"], "write": ["*"]}));
    let mut ws = server.ws(&late);
    ws.publish("log", json!("a"));
    ws.publish("log", json!("b"));
    let ts: Vec<u64> = ws.history("log", 0).iter().map(|m| m["ts"].as_u64().unwrap()).collect();
    assert_eq!(ts.len(), 7, "nothing trimmed: {ts:?}");
    assert!(ts[4] < floor && ts[5] >= floor && ts[6] >= ts[5], "ts never goes below the floor: {ts:?} (floor {floor})");
    drop(ws);
    assert!(server.terminate().success());
    assert_eq!(saved_floor(&server), floor, "an unsynchronized clock neither raises nor lowers the saved floor");
}
