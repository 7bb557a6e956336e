//! `wire::parse` on arbitrary UTF-8.
//!
//! Oracles: no panic; an accepted frame is one JSON object by the grammar;
//! its channel is valid; its `id` is a string or number of at most 128 bytes
//! and echoes into a reply that is still JSON; `data` is JSON; `hist` limits
//! are 1..=1000; `sub` with `since > 0` has an epoch; and when serde_json's
//! `Value` can hold the frame, the parsed fields equal the tree's.
//!
//! The grammar check is `IgnoredAny`, not `Value`: the JSON grammar (and
//! roostd, which passes `data` through as raw text) allows lone surrogate
//! escapes (`"\ud800"`) and numbers beyond f64 (`1e999`) that `Value` refuses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roostd::wire::{self, Request, MAX_HIST_LIMIT, MAX_ID_BYTES};
use serde::de::IgnoredAny;
use serde_json::Value;

fn grammatical(t: &str) -> bool {
    serde_json::from_str::<IgnoredAny>(t).is_ok()
}

fuzz_target!(|text: &str| {
    let frame = match wire::parse(text) {
        Ok(frame) => frame,
        Err(e) => {
            assert!(grammatical(&wire::err(e.code, e.msg, e.id)), "err reply is not JSON");
            return;
        }
    };
    assert!(text.trim_start().starts_with('{') && grammatical(text), "accepted, not JSON");
    let ch = frame.req.channel();
    assert!(wire::valid_channel(ch));
    if let Some(id) = frame.id {
        assert!(id.len() <= MAX_ID_BYTES);
        assert!(grammatical(&wire::ack(Some(id), ch, 1)), "the echoed id breaks the reply");
    }
    match &frame.req {
        Request::Pub { data, .. } => assert!(grammatical(data)),
        Request::Hist { limit, .. } => assert!((1..=MAX_HIST_LIMIT).contains(limit)),
        Request::Sub { since, epoch, .. } => assert!(since.unwrap_or(0) == 0 || epoch.is_some()),
        Request::Unsub { .. } => {}
    }
    let Ok(v) = serde_json::from_str::<Value>(text) else { return };
    assert!(v.is_object());
    assert_eq!(v["ch"].as_str(), Some(ch));
    if let Some(id) = frame.id {
        let id: Value = serde_json::from_str(id).expect("id is JSON");
        assert!(id.is_string() || id.is_number());
        assert_eq!(id, v["id"]);
    }
    if let Request::Pub { data, .. } = frame.req {
        assert_eq!(serde_json::from_str::<Value>(data).expect("data is JSON"), v["data"]);
    }
});
