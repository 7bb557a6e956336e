//! `Verifier::verify` on arbitrary strings.
//!
//! Oracles: no panic; a token accepted under the fuzz key is refused under
//! any other key (the signature really is checked); an accepted token has a
//! non-empty `sub`; `Expired` is only reported for tokens whose signature
//! holds, so under the wrong key it never appears.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roostd::auth::{AuthError, Key, KeyRing, Verifier};

/// Seeds in seeds/token/ are minted with this secret (kid-less and kid "k2").
const SECRET: &[u8] = b"roostd-fuzz-secret-0123456789abcdef-0123";
const OTHER: &[u8] = b"roostd-fuzz-other--0123456789abcdef-0123";
/// Between the seeds' `iat` and `exp`.
const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let good = Verifier::new(
        KeyRing::new(vec![Key::new(None, SECRET.to_vec()), Key::new(Some("k2".into()), SECRET.to_vec())]),
        30,
        None,
    );
    let wrong = Verifier::new(
        KeyRing::new(vec![Key::new(None, OTHER.to_vec()), Key::new(Some("k2".into()), OTHER.to_vec())]),
        30,
        None,
    );
    let with_aud = Verifier::new(KeyRing::new(vec![Key::new(None, SECRET.to_vec())]), 0, Some("roostd".into()));
    let accepted = good.verify(token, NOW);
    let refused = wrong.verify(token, NOW);
    let _ = with_aud.verify(token, NOW);
    let _ = good.verify(token, 0);
    let _ = good.verify(token, u64::MAX);
    if let Ok(claims) = &accepted {
        assert!(!claims.sub.is_empty(), "accepted a token without sub");
    }
    assert!(refused.is_err(), "a token verified under the wrong key: {token:?}");
    assert!(!matches!(refused, Err(AuthError::Expired)), "Expired reported for a token with a bad signature");
});
