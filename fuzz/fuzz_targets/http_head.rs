//! `http::parse_head` on arbitrary bytes with the default 8 KiB limit, and
//! the functions that take a parsed head apart.
//!
//! Oracles: no panic; a complete head lies within the input and the limit;
//! parsing exactly the bytes it took gives the same head (self-delimiting).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roostd::http::{self, HeadError};

const LIMIT: usize = 8192;

fuzz_target!(|data: &[u8]| {
    match http::parse_head(data, LIMIT) {
        Ok(Some(head)) => {
            assert!(head.len <= data.len() && head.len <= LIMIT, "head.len {} of {}", head.len, data.len());
            assert_eq!(http::parse_head(&data[..head.len], LIMIT), Ok(Some(head.clone())));
            let _ = http::upgrade_request(&head);
            let _ = http::query_param(&head.query, "token");
            let _ = http::percent_decode_path(&head.path);
            if let Some(origin) = &head.origin {
                let _ = http::origin_allowed(origin, head.host.as_deref(), &[]);
                let _ = http::origin_allowed(origin, head.host.as_deref(), &["http://pi.local:8080".into()]);
            }
            let _ = http::has_token(head.connection.as_deref(), "upgrade");
        }
        Ok(None) => assert!(data.len() <= LIMIT, "an incomplete head over the limit must be refused"),
        Err(HeadError::TooLarge) | Err(HeadError::Malformed) => {}
    }
});
