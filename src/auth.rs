//! Client authentication: verification (and minting) of HS256 JSON Web Tokens.
//!
//! Why by hand: roostd only ever needs one JWS algorithm (HMAC-SHA256), and
//! general JWT crates bring algorithm negotiation, key-type juggling and many
//! dependencies to a Raspberry Pi daemon. Accepting exactly one shape of token
//! is both smaller and safer: the classic JWT attacks (`alg: none`, algorithm
//! confusion, `crit` extensions we do not understand) are rejected simply
//! because anything other than the one expected shape is refused.
//!
//! What is checked, in this order, so that nothing from the payload is
//! trusted before the signature has been verified:
//!
//! 1. size (at most [`MAX_TOKEN_BYTES`], before any decoding) and exactly
//!    three dot-separated parts;
//! 2. every part is canonical unpadded base64url (no `=`, no stray trailing
//!    bits), so one token has exactly one spelling;
//! 3. the header is a JSON object with `alg` exactly `HS256`, `typ` absent
//!    or `JWT`, no `crit`, and a `kid` that names a key of the ring (no `kid`
//!    selects the default key);
//! 4. the HMAC over the ASCII `header.payload` text, compared in constant
//!    time by [`Mac::verify_slice`];
//! 5. only then the claims: `sub`, `exp`, `nbf`, `iat`, `aud`, `read`,
//!    `write`, `api`, with time checks tolerant of `leeway_secs` of clock skew.
//!
//! The key is the UTF-8 bytes of the configured secret, exactly as PyJWT and
//! php-jwt use it, so tokens minted by other services verify here.
//!
//! Tokens are bearer credentials: nothing in this module logs a token or puts
//! any part of one into an error. Errors carry only a [`Reason`] code.
//! The module never reads the clock either; callers pass `now_unix`, which
//! keeps verification deterministic and testable.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted. Legitimate tokens are a few hundred bytes; the
/// limit bounds the work an unauthenticated peer can make us do.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The only JWS algorithm accepted or produced.
const ALG: &str = "HS256";
/// The only `typ` value accepted (when `typ` is present at all).
const TYP: &str = "JWT";

/// One HMAC key; `id` is the `kid` that selects it.
#[derive(Clone)]
pub struct Key {
    pub id: Option<String>,
    secret: Vec<u8>,
}

impl Key {
    /// `secret` is used as the raw HMAC key; for a configured secret string
    /// pass its UTF-8 bytes (`s.as_bytes().to_vec()`), as PyJWT does.
    pub fn new(id: Option<String>, secret: Vec<u8>) -> Key {
        Key { id, secret }
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

// Hand-written so that a stray `{:?}` of a config or verifier can never leak
// the secret into a log.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The key ring: the first key is the default (used when a token has no
/// `kid`); any key is selectable by its id. Holding several keys at once is
/// what makes rotation possible: old and new keys both verify during the
/// changeover. If two keys share an id, the first one wins.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// Infallible on purpose: an empty ring is a valid (if useless) ring
    /// that rejects every token with [`Reason::NoKey`].
    pub fn new(keys: Vec<Key>) -> KeyRing {
        KeyRing { keys }
    }

    pub fn default_key(&self) -> Option<&Key> {
        self.keys.first()
    }

    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id.as_deref() == Some(kid))
    }
}

/// Channel patterns of one kind (read or write).
///
/// A pattern is either an exact channel name or a prefix followed by `*`:
/// `room:*` matches every channel starting with `room:` (including `room:`
/// itself), and `*` alone matches every channel. A `*` anywhere but at the
/// end is an ordinary character.
///
/// Every open connection keeps its token's patterns, so they are stored
/// tight: the rest in one boxed slice, and `*` (the common grant) as no
/// slice at all, in the same 16 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patterns {
    /// `None`: every channel.
    list: Option<Box<[Box<str>]>>,
}

impl Default for Patterns {
    /// No channel at all.
    fn default() -> Patterns {
        Patterns { list: Some(Box::default()) }
    }
}

impl Patterns {
    pub fn new(p: Vec<String>) -> Patterns {
        if p.iter().any(|p| p == "*") {
            // `*` grants every channel: the other patterns add nothing.
            return Patterns { list: None };
        }
        Patterns { list: Some(p.into_iter().map(String::into_boxed_str).collect()) }
    }

    pub fn allows(&self, channel: &str) -> bool {
        match &self.list {
            None => true,
            Some(list) => list.iter().any(|p| crate::channel::matches(p, channel)),
        }
    }

    /// True iff the patterns contain `*` itself, i.e. grant every channel.
    pub fn allows_all(&self) -> bool {
        self.list.is_none()
    }

    /// The patterns (`["*"]` when they grant every channel).
    pub fn to_vec(&self) -> Vec<&str> {
        match &self.list {
            None => vec!["*"],
            Some(list) => list.iter().map(|p| &**p).collect(),
        }
    }
}

/// What a verified token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Client identity.
    pub sub: String,
    /// Expiry, seconds since the epoch (fractional `exp` values are floored).
    pub exp: u64,
    pub read: Patterns,
    pub write: Patterns,
    /// `"api": true`: the main application's own token, the only kind the
    /// HTTP API accepts (spec §5). Client tokens leave it out.
    pub api: bool,
    /// The `info` claim as JSON text, shown to others in presence (spec §7).
    /// Any JSON is accepted here; the hub refuses a presence subscription
    /// whose `info` is not an object of at most 1 KiB.
    pub info: Option<Box<str>>,
}

/// Why a token was judged invalid. Deliberately coarse and content-free so it
/// can go into logs and metrics without leaking anything about the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not exactly three dot-separated parts.
    BadFormat,
    /// Longer than [`MAX_TOKEN_BYTES`].
    TooLong,
    /// A part is not canonical unpadded base64url.
    BadBase64,
    /// Header or payload is not a JSON object (or repeats a member).
    BadJson,
    /// `alg` missing or not `HS256`.
    BadAlg,
    /// `typ` present but not `JWT`.
    BadTyp,
    /// A `crit` header is present; we understand no extensions.
    Crit,
    /// `kid` names no key of the ring (or is not a string).
    UnknownKid,
    /// No usable key: empty ring, or the selected key has an empty secret.
    NoKey,
    /// The MAC does not match.
    BadSignature,
    /// No `sub` claim.
    MissingSub,
    /// No `exp` claim.
    MissingExp,
    /// `nbf` is later than now plus leeway.
    NotYetValid,
    /// `iat` is later than now plus leeway.
    IssuedInFuture,
    /// `aud` missing or not matching the configured audience.
    BadAudience,
    /// A claim has the wrong type or value (e.g. `read` not a string array).
    BadClaims,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::BadFormat => "bad_format",
            Reason::TooLong => "too_long",
            Reason::BadBase64 => "bad_base64",
            Reason::BadJson => "bad_json",
            Reason::BadAlg => "bad_alg",
            Reason::BadTyp => "bad_typ",
            Reason::Crit => "crit",
            Reason::UnknownKid => "unknown_kid",
            Reason::NoKey => "no_key",
            Reason::BadSignature => "bad_signature",
            Reason::MissingSub => "missing_sub",
            Reason::MissingExp => "missing_exp",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::BadAudience => "bad_audience",
            Reason::BadClaims => "bad_claims",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outcome of a failed verification. `Expired` is kept apart from `Invalid`
/// because it is the one failure a well-behaved client fixes by fetching a
/// fresh token; it is only reported for tokens whose signature is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid(Reason),
    Expired,
}

impl AuthError {
    /// Stable code for the wire protocol.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Invalid(_) => "token_invalid",
            AuthError::Expired => "token_expired",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str("no token given"),
            AuthError::Invalid(reason) => write!(f, "invalid token ({reason})"),
            AuthError::Expired => f.write_str("token expired"),
        }
    }
}

impl std::error::Error for AuthError {}

impl From<Reason> for AuthError {
    fn from(reason: Reason) -> AuthError {
        AuthError::Invalid(reason)
    }
}

/// Verifies tokens against a key ring, a clock-skew leeway and an optional
/// expected audience.
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: KeyRing,
    leeway_secs: u64,
    audience: Option<String>,
}

impl Verifier {
    pub fn new(keys: KeyRing, leeway_secs: u64, audience: Option<String>) -> Verifier {
        Verifier { keys, leeway_secs, audience }
    }

    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// The default key's secret: what roostd signs with (webhooks, spec §9).
    pub fn default_secret(&self) -> &[u8] {
        self.keys.default_key().map_or(&[], Key::secret)
    }

    /// Verifies `token` at time `now_unix` (seconds since the epoch).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Reason::TooLong.into());
        }
        let (header_b64, payload_b64, signature_b64) = split_token(token)?;

        let header = decode_object(header_b64)?;
        let key = self.select_key(&header)?;
        let signature = decode_b64(signature_b64)?;
        verify_mac(key, header_b64, payload_b64, &signature)?;

        // From here on the payload is authentic, merely not yet acceptable.
        let payload = decode_object(payload_b64)?;
        self.check_claims(&payload, now_unix)
    }

    /// Checks the header and picks the key it asks for.
    fn select_key(&self, header: &Map<String, Value>) -> Result<&Key, Reason> {
        if header.get("alg").and_then(Value::as_str) != Some(ALG) {
            return Err(Reason::BadAlg);
        }
        if let Some(typ) = header.get("typ") {
            if typ.as_str() != Some(TYP) {
                return Err(Reason::BadTyp);
            }
        }
        // RFC 7515 4.1.11: extensions we do not understand must be refused,
        // and we understand none.
        if header.contains_key("crit") {
            return Err(Reason::Crit);
        }
        let key = match header.get("kid") {
            None => self.keys.default_key().ok_or(Reason::NoKey)?,
            Some(kid) => {
                let kid = kid.as_str().ok_or(Reason::UnknownKid)?;
                self.keys.get(kid).ok_or(Reason::UnknownKid)?
            }
        };
        // An empty secret is almost certainly a configuration slip, and a
        // MAC under it is forgeable by anyone; refuse rather than trust it.
        if key.secret.is_empty() {
            return Err(Reason::NoKey);
        }
        Ok(key)
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<Claims, AuthError> {
        let sub = match claims.get("sub") {
            None => return Err(Reason::MissingSub.into()),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(Reason::BadClaims.into()),
        };
        let exp = match claims.get("exp") {
            None => return Err(Reason::MissingExp.into()),
            Some(v) => numeric_date(v)?,
        };
        let nbf = claims.get("nbf").map(numeric_date).transpose()?;
        let iat = claims.get("iat").map(numeric_date).transpose()?;
        let read = patterns(claims.get("read"))?;
        let write = patterns(claims.get("write"))?;
        let api = api_flag(claims.get("api"))?;
        let info = claims.get("info").map(|v| v.to_string().into_boxed_str());
        self.check_audience(claims.get("aud"))?;

        // Saturating: a huge exp or leeway must not wrap into the past.
        let latest_start = now.saturating_add(self.leeway_secs);
        if nbf.is_some_and(|nbf| nbf > latest_start) {
            return Err(Reason::NotYetValid.into());
        }
        if iat.is_some_and(|iat| iat > latest_start) {
            return Err(Reason::IssuedInFuture.into());
        }
        // Expiry last: `Expired` invites the client to refresh, which is
        // only useful if nothing else is wrong with the token.
        if now > exp.saturating_add(self.leeway_secs) {
            return Err(AuthError::Expired);
        }
        Ok(Claims { sub, exp, read, write, api, info })
    }

    fn check_audience(&self, aud: Option<&Value>) -> Result<(), Reason> {
        let Some(expected) = self.audience.as_deref() else {
            return Ok(());
        };
        let matches = match aud {
            Some(Value::String(a)) => a == expected,
            Some(Value::Array(list)) => {
                // A malformed entry spoils the whole claim rather than being
                // skipped: we do not guess what the issuer meant.
                let mut found = false;
                for item in list {
                    match item.as_str() {
                        Some(a) => found |= a == expected,
                        None => return Err(Reason::BadAudience),
                    }
                }
                found
            }
            _ => false,
        };
        if matches {
            Ok(())
        } else {
            Err(Reason::BadAudience)
        }
    }
}

/// Splits into exactly three parts; a fourth dot is as wrong as a missing one.
fn split_token(token: &str) -> Result<(&str, &str, &str), Reason> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Ok((h, p, s)),
        _ => Err(Reason::BadFormat),
    }
}

/// Strict base64url: the `URL_SAFE_NO_PAD` engine refuses `=` and non-zero
/// trailing bits, so every byte string has exactly one accepted spelling and
/// a token cannot be altered without changing what it decodes to.
fn decode_b64(part: &str) -> Result<Vec<u8>, Reason> {
    // Belt and braces: refuse padding explicitly, independent of the
    // engine's configured padding mode.
    if part.contains('=') {
        return Err(Reason::BadBase64);
    }
    URL_SAFE_NO_PAD.decode(part).map_err(|_| Reason::BadBase64)
}

fn decode_object(part: &str) -> Result<Map<String, Value>, Reason> {
    let bytes = decode_b64(part)?;
    serde_json::from_slice::<UniqueObject>(&bytes).map(|o| o.0).map_err(|_| Reason::BadJson)
}

fn verify_mac(key: &Key, header_b64: &str, payload_b64: &str, sig: &[u8]) -> Result<(), Reason> {
    let mut mac = HmacSha256::new_from_slice(&key.secret).map_err(|_| Reason::NoKey)?;
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(payload_b64.as_bytes());
    // verify_slice compares in constant time; never compare MACs with `==`.
    mac.verify_slice(sig).map_err(|_| Reason::BadSignature)
}

/// A JWT NumericDate: non-negative seconds, integer or float, floored.
fn numeric_date(value: &Value) -> Result<u64, Reason> {
    let Value::Number(n) = value else {
        return Err(Reason::BadClaims);
    };
    if let Some(secs) = n.as_u64() {
        return Ok(secs);
    }
    match n.as_f64() {
        // `as` saturates, so absurdly large dates become u64::MAX ("never").
        Some(f) if f.is_finite() && f >= 0.0 => Ok(f.floor() as u64),
        _ => Err(Reason::BadClaims),
    }
}

/// `read`/`write`: absent means no access; anything but an array of strings
/// is refused rather than half-understood.
fn patterns(value: Option<&Value>) -> Result<Patterns, Reason> {
    let Some(value) = value else {
        return Ok(Patterns::default());
    };
    let Value::Array(items) = value else {
        return Err(Reason::BadClaims);
    };
    items
        .iter()
        .map(|item| item.as_str().map(str::to_owned).ok_or(Reason::BadClaims))
        .collect::<Result<Vec<_>, _>>()
        .map(Patterns::new)
}

/// `api`: absent or `false` is a client token. Anything but a boolean
/// (`"true"`, `1`) is refused rather than guessed at: the claim grants the
/// HTTP API, and an issuer that wrote it some other way should hear so at
/// once instead of finding its API calls answered 403.
fn api_flag(value: Option<&Value>) -> Result<bool, Reason> {
    match value {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Reason::BadClaims),
    }
}

/// A JSON object that refuses duplicate members. RFC 7515 allows parsers to
/// keep the last duplicate, but two parsers disagreeing about which `alg` or
/// `sub` a token carries is exactly how confusion attacks start.
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueObjectVisitor)
    }
}

struct UniqueObjectVisitor;

impl<'de> Visitor<'de> for UniqueObjectVisitor {
    type Value = UniqueObject;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object without duplicate members")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            let value = access.next_value::<Value>()?;
            if map.contains_key(&name) {
                return Err(de::Error::custom("duplicate member"));
            }
            map.insert(name, value);
        }
        Ok(UniqueObject(map))
    }
}

/// Header as minted; field order gives the conventional `alg, typ, kid`.
#[derive(Serialize)]
struct MintHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

/// Mints a token (for `roostd token`, examples and tests): header
/// `{"alg":"HS256","typ":"JWT"}` plus `"kid"` when `key.id` is set.
///
/// No claim is added or checked: the caller sets `sub`, `exp` and the rest.
///
/// # Panics
///
/// If `claims` is not a JSON object; that is a programming error, as such a
/// token could never verify.
pub fn mint(claims: &serde_json::Value, key: &Key) -> String {
    assert!(claims.is_object(), "JWT claims must be a JSON object");
    let header = MintHeader { alg: ALG, typ: TYP, kid: key.id.as_deref() };
    let header_json = serde_json::to_vec(&header).expect("a struct of strings always serializes");
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header_json), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut mac = HmacSha256::new_from_slice(&key.secret).expect("HMAC takes keys of any length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// `hex(HMAC-SHA256(key, msg))`, lower-case: the signature webhooks carry
/// (`X-Roost-Signature`) and the one the Pusher protocol checks and makes
/// (channel auth, the signed HTTP API). Comparing one with a received value
/// must use [`hex_eq`], never `==`.
pub fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(msg);
    hex(&mac.finalize().into_bytes())
}

/// Constant-time equality of two signatures as text (their lengths are public).
pub fn hex_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `hex(MD5(body))`, lower-case: the Pusher HTTP API's `body_md5`. Not a
/// security primitive here: the signature covers this digest, and the
/// digest ties the signed query to the one body it was made for, so a
/// signed URL cannot carry another body within its ±600 s.
pub fn md5_hex(body: &[u8]) -> String {
    use md5::Digest as _;
    hex(&md5::Md5::digest(body))
}

/// Lower-case hex, as both Pusher digests are written.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::alphabet;
    use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = b"test secret, at least 32 bytes long!";

    fn key() -> Key {
        Key::new(None, SECRET.to_vec())
    }

    fn verifier() -> Verifier {
        Verifier::new(KeyRing::new(vec![key()]), 30, None)
    }

    fn with_audience(aud: &str) -> Verifier {
        Verifier::new(KeyRing::new(vec![key()]), 30, Some(aud.to_owned()))
    }

    /// Minimal claims that verify at `NOW`.
    fn base_claims() -> Value {
        json!({"sub": "alice", "exp": NOW + 3600})
    }

    /// `base_claims` with `edit` applied (a `null` value removes the claim).
    fn claims_with(edit: Value) -> Value {
        let mut claims = base_claims();
        let map = claims.as_object_mut().unwrap();
        for (k, v) in edit.as_object().unwrap() {
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
        claims
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn hmac_sha256_hex_matches_rfc_4231_case_2() {
        let got = hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(got, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(hex_eq(&got, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
        assert!(!hex_eq(&got, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3844"));
        assert!(!hex_eq(&got, "5bdc"));
    }

    #[test]
    fn md5_hex_matches_rfc_1321() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    fn sign(signing_input: &str, secret: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(signing_input.as_bytes());
        b64(mac.finalize().into_bytes())
    }

    /// A correctly signed token from arbitrary segment text, so each negative
    /// test fails only for the property it is about, never for the MAC.
    fn signed_segments(header_b64: &str, payload_b64: &str) -> String {
        let input = format!("{header_b64}.{payload_b64}");
        let sig = sign(&input, SECRET);
        format!("{input}.{sig}")
    }

    /// A correctly signed token from raw header and payload JSON text.
    fn signed_raw(header_json: &str, payload_json: &str) -> String {
        signed_segments(&b64(header_json), &b64(payload_json))
    }

    fn signed(header: Value, claims: Value) -> String {
        signed_raw(&header.to_string(), &claims.to_string())
    }

    fn hs256() -> Value {
        json!({"alg": "HS256", "typ": "JWT"})
    }

    fn invalid(reason: Reason) -> Result<(), AuthError> {
        Err(AuthError::Invalid(reason))
    }

    /// Verifies and reduces the result to what the table rows compare.
    fn outcome(v: &Verifier, token: &str) -> Result<(), AuthError> {
        v.verify(token, NOW).map(|_| ())
    }

    fn check(cases: &[(&str, String, Result<(), AuthError>)]) {
        check_with(&verifier(), cases);
    }

    fn check_with(v: &Verifier, cases: &[(&str, String, Result<(), AuthError>)]) {
        for (name, token, expected) in cases {
            assert_eq!(&outcome(v, token), expected, "case {name}");
        }
    }

    #[test]
    fn round_trip() {
        let claims = json!({
            "sub": "alice",
            "exp": NOW + 60,
            "read": ["room:*", "news"],
            "write": ["room:1"],
        });
        let token = mint(&claims, &key());
        let got = verifier().verify(&token, NOW).unwrap();
        assert_eq!(
            got,
            Claims {
                sub: "alice".into(),
                exp: NOW + 60,
                read: Patterns::new(vec!["room:*".into(), "news".into()]),
                write: Patterns::new(vec!["room:1".into()]),
                api: false,
                info: None,
            }
        );
        let with_info = mint(&json!({"sub": "bob", "exp": NOW + 60, "info": {"name": "Bob"}}), &key());
        assert_eq!(verifier().verify(&with_info, NOW).unwrap().info.as_deref(), Some(r#"{"name":"Bob"}"#));
        assert!(got.read.allows("room:42"));
        assert!(got.read.allows("news"));
        assert!(!got.read.allows("newsroom"));
        assert!(got.write.allows("room:1"));
        assert!(!got.write.allows("room:2"));
        assert!(!got.read.allows_all());
    }

    #[test]
    fn mint_header_shape() {
        let token = mint(&base_claims(), &Key::new(Some("k1".into()), SECRET.to_vec()));
        let header = token.split('.').next().unwrap();
        let header = URL_SAFE_NO_PAD.decode(header).unwrap();
        assert_eq!(header, br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
        let token = mint(&base_claims(), &key());
        let header = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
        assert_eq!(header, br#"{"alg":"HS256","typ":"JWT"}"#);
    }

    /// Tokens computed outside Rust (python3 hmac/hashlib/base64, PyJWT's
    /// encoding: sorted compact header, compact payload, unpadded base64url).
    #[test]
    fn external_tokens_verify() {
        let pyjwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
            eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiaWF0IjoxNzAwMDAwMDAwLCJyZWFkIjpbInJvb206KiIsIm5ld3MiXSwid3JpdGUiOlsicm9vbToxIl19.\
            yOvhKUb5XpRY-n7R-D5rQokJtvHkKqLc6pRge7N6omk";
        let key = Key::new(None, b"correct horse battery staple".to_vec());
        let v = Verifier::new(KeyRing::new(vec![key]), 30, None);
        let claims = v.verify(pyjwt, NOW).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.exp, 2_000_000_000);
        assert_eq!(claims.read.to_vec(), ["room:*", "news"]);
        assert_eq!(claims.write.to_vec(), ["room:1"]);

        // kid, float exp (floored), audience array, and a non-ASCII secret
        // used as its UTF-8 bytes.
        let with_kid = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjIwMjQtMDYiLCJ0eXAiOiJKV1QifQ.\
            eyJzdWIiOiJib2IiLCJleHAiOjE5MDAwMDAwMDAuNzUsImF1ZCI6WyJyb29zdCIsIm90aGVyIl0sInJlYWQiOlsiKiJdfQ.\
            c-BXGoPbFE8M4fohMa0tdj3NiEgc-4HIegeyefMKfb0";
        let old = Key::new(Some("2023-12".into()), b"old".to_vec());
        let new = Key::new(Some("2024-06".into()), "sécrèt-ünicode".as_bytes().to_vec());
        let v = Verifier::new(KeyRing::new(vec![old, new]), 30, Some("roost".into()));
        let claims = v.verify(with_kid, NOW).unwrap();
        assert_eq!(claims.sub, "bob");
        assert_eq!(claims.exp, 1_900_000_000);
        assert!(claims.read.allows_all());
        assert!(claims.write.to_vec().is_empty());
    }

    #[test]
    fn wrong_key_is_bad_signature() {
        let token = mint(&base_claims(), &Key::new(None, b"another secret".to_vec()));
        assert_eq!(outcome(&verifier(), &token), invalid(Reason::BadSignature));
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let token = mint(&claims_with(json!({"read": ["*"]})), &key());
        let v = verifier();
        assert!(v.verify(&token, NOW).is_ok());
        let mut tried = 0;
        for pos in 0..token.len() {
            for bit in 0..8 {
                let mut bytes = token.clone().into_bytes();
                bytes[pos] ^= 1 << bit;
                // Flipping the top bit of ASCII is not valid UTF-8 and so
                // cannot reach `verify(&str)` at all.
                let Ok(flipped) = String::from_utf8(bytes) else {
                    continue;
                };
                tried += 1;
                assert!(
                    matches!(v.verify(&flipped, NOW), Err(AuthError::Invalid(_))),
                    "flip of bit {bit} at byte {pos} accepted"
                );
            }
        }
        assert_eq!(tried, token.len() * 7);
    }

    #[test]
    fn algorithms() {
        let claims = base_claims().to_string();
        let input = |alg: &str| format!(r#"{{"alg":{alg},"typ":"JWT"}}"#);
        let unsigned = format!("{}.{}.", b64(input(r#""none""#)), b64(&claims));
        check(&[
            ("HS256", signed_raw(&input(r#""HS256""#), &claims), Ok(())),
            ("none signed", signed_raw(&input(r#""none""#), &claims), invalid(Reason::BadAlg)),
            ("none unsigned", unsigned, invalid(Reason::BadAlg)),
            ("HS384", signed_raw(&input(r#""HS384""#), &claims), invalid(Reason::BadAlg)),
            ("RS256", signed_raw(&input(r#""RS256""#), &claims), invalid(Reason::BadAlg)),
            ("lowercase", signed_raw(&input(r#""hs256""#), &claims), invalid(Reason::BadAlg)),
            ("number", signed_raw(&input("256"), &claims), invalid(Reason::BadAlg)),
            ("null", signed_raw(&input("null"), &claims), invalid(Reason::BadAlg)),
            ("missing", signed_raw(r#"{"typ":"JWT"}"#, &claims), invalid(Reason::BadAlg)),
        ]);
    }

    #[test]
    fn header_fields() {
        let claims = base_claims();
        check(&[
            ("typ absent", signed(json!({"alg": "HS256"}), claims.clone()), Ok(())),
            ("typ JWS", signed(json!({"alg": "HS256", "typ": "JWS"}), claims.clone()), invalid(Reason::BadTyp)),
            ("typ jwt", signed(json!({"alg": "HS256", "typ": "jwt"}), claims.clone()), invalid(Reason::BadTyp)),
            ("typ number", signed(json!({"alg": "HS256", "typ": 1}), claims.clone()), invalid(Reason::BadTyp)),
            ("crit", signed(json!({"alg": "HS256", "crit": ["exp"]}), claims.clone()), invalid(Reason::Crit)),
            ("crit empty", signed(json!({"alg": "HS256", "crit": []}), claims.clone()), invalid(Reason::Crit)),
            (
                "unknown kid",
                signed(json!({"alg": "HS256", "kid": "nope"}), claims.clone()),
                invalid(Reason::UnknownKid),
            ),
            ("kid number", signed(json!({"alg": "HS256", "kid": 1}), claims.clone()), invalid(Reason::UnknownKid)),
        ]);
    }

    #[test]
    fn duplicate_header_member_is_rejected() {
        let claims = base_claims().to_string();
        check(&[
            ("alg twice", signed_raw(r#"{"alg":"none","alg":"HS256"}"#, &claims), invalid(Reason::BadJson)),
            (
                "sub twice",
                signed_raw(r#"{"alg":"HS256"}"#, &format!(r#"{{"sub":"a","sub":"b","exp":{}}}"#, NOW + 60)),
                invalid(Reason::BadJson),
            ),
        ]);
    }

    #[test]
    fn json_shape() {
        let header = hs256().to_string();
        let claims = base_claims().to_string();
        check(&[
            ("header not JSON", signed_raw("not json", &claims), invalid(Reason::BadJson)),
            ("header array", signed_raw(r#"["alg","HS256"]"#, &claims), invalid(Reason::BadJson)),
            ("header string", signed_raw(r#""HS256""#, &claims), invalid(Reason::BadJson)),
            ("header trailing data", signed_raw(&format!("{header}{{}}"), &claims), invalid(Reason::BadJson)),
            ("header empty", signed_segments("", &b64(&claims)), invalid(Reason::BadJson)),
            ("payload not JSON", signed_raw(&header, "{sub: alice}"), invalid(Reason::BadJson)),
            ("payload array", signed_raw(&header, "[1,2]"), invalid(Reason::BadJson)),
            ("payload null", signed_raw(&header, "null"), invalid(Reason::BadJson)),
            (
                "payload bad UTF-8",
                signed_segments(&b64(&header), &b64(b"{\"sub\":\"\xff\"}")),
                invalid(Reason::BadJson),
            ),
        ]);
    }

    #[test]
    fn structure() {
        let token = mint(&base_claims(), &key());
        let parts: Vec<&str> = token.split('.').collect();
        check(&[
            ("valid", token.clone(), Ok(())),
            ("empty", String::new(), Err(AuthError::Missing)),
            ("one part", parts[0].to_owned(), invalid(Reason::BadFormat)),
            ("two parts", format!("{}.{}", parts[0], parts[1]), invalid(Reason::BadFormat)),
            ("four parts", format!("{token}.{}", parts[2]), invalid(Reason::BadFormat)),
            ("trailing dot", format!("{token}."), invalid(Reason::BadFormat)),
            ("only dots", "..".to_owned(), invalid(Reason::BadJson)),
            ("space", format!(" {token}"), invalid(Reason::BadBase64)),
            ("bearer prefix", format!("Bearer {token}"), invalid(Reason::BadBase64)),
            ("no signature", format!("{}.{}.", parts[0], parts[1]), invalid(Reason::BadSignature)),
        ]);
    }

    #[test]
    fn size_limit() {
        let v = verifier();
        // Rejected on length alone, before anything is decoded.
        assert_eq!(outcome(&v, &"a".repeat(MAX_TOKEN_BYTES + 1)), invalid(Reason::TooLong));
        assert_eq!(outcome(&v, &"a".repeat(10)), invalid(Reason::BadFormat));

        // A valid token of exactly the limit passes; one byte more does not.
        // Not every length is reachable by growing one claim (base64 skips
        // lengths), so also vary the kid.
        let exact = (1..4)
            .flat_map(|kid_len| (0..MAX_TOKEN_BYTES).map(move |n| (kid_len, n)))
            .map(|(kid_len, n)| {
                let key = Key::new(Some("k".repeat(kid_len)), SECRET.to_vec());
                (key.clone(), mint(&claims_with(json!({"pad": "x".repeat(n)})), &key))
            })
            .find(|(_, token)| token.len() == MAX_TOKEN_BYTES)
            .expect("some padding reaches the limit exactly");
        let (key, token) = exact;
        let v = Verifier::new(KeyRing::new(vec![key]), 30, None);
        assert_eq!(outcome(&v, &token), Ok(()));
        assert_eq!(outcome(&v, &format!("{token}A")), invalid(Reason::TooLong));
    }

    /// A header whose base64 does not end on a 4-char boundary, so it has
    /// both a padded spelling and unused trailing bits to play with.
    const ODD_HEADER: &str = r#"{"alg":"HS256","typ":"JWT" }"#;

    fn pad(seg: &str) -> String {
        format!("{seg}{}", "=".repeat((4 - seg.len() % 4) % 4))
    }

    #[test]
    fn padding_is_rejected() {
        let token = mint(&base_claims(), &key());
        let (h, p, s) = split_token(&token).unwrap();
        // The 32-byte MAC encodes to 43 chars; with "=" it is the correctly
        // padded encoding of the very same bytes.
        assert_eq!(s.len(), 43);
        let header = b64(ODD_HEADER);
        assert_ne!(pad(&header), header);
        assert_ne!(pad(p), p);
        check(&[
            ("unpadded (control)", signed_segments(&header, p), Ok(())),
            ("signature", format!("{h}.{p}.{}", pad(s)), invalid(Reason::BadBase64)),
            ("header (re-signed)", signed_segments(&pad(&header), p), invalid(Reason::BadBase64)),
            ("payload (re-signed)", signed_segments(h, &pad(p)), invalid(Reason::BadBase64)),
            ("excess padding (re-signed)", signed_segments(h, &format!("{p}====")), invalid(Reason::BadBase64)),
        ]);
    }

    /// Replaces the last char of `seg` by one that differs only in the unused
    /// trailing bits, and proves a lenient decoder reads the same bytes.
    fn with_trailing_bits(seg: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = *seg.as_bytes().last().unwrap();
        let index = ALPHABET.iter().position(|&c| c == last).unwrap();
        assert_eq!(index & 1, 0, "canonical last char has zero trailing bits");
        let changed = format!("{}{}", &seg[..seg.len() - 1], ALPHABET[index | 1] as char);
        let lenient = GeneralPurpose::new(
            &alphabet::URL_SAFE,
            GeneralPurposeConfig::new()
                .with_encode_padding(false)
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
        );
        assert_eq!(lenient.decode(&changed).unwrap(), lenient.decode(seg).unwrap());
        changed
    }

    #[test]
    fn non_canonical_base64_is_rejected() {
        let token = mint(&base_claims(), &key());
        let (h, p, s) = split_token(&token).unwrap();
        let header = b64(ODD_HEADER);
        // Standard-alphabet spelling of a payload whose encoding needs '+'/'/'.
        let claims = claims_with(json!({"sub": "???>>>"})).to_string();
        let standard = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&claims);
        assert!(standard.contains(['+', '/']), "test needs '+' or '/'");
        check(&[
            ("control", signed_segments(&header, &b64(&claims)), Ok(())),
            ("signature trailing bits", format!("{h}.{p}.{}", with_trailing_bits(s)), invalid(Reason::BadBase64)),
            (
                "header trailing bits (re-signed)",
                signed_segments(&with_trailing_bits(&header), p),
                invalid(Reason::BadBase64),
            ),
            ("standard alphabet (re-signed)", signed_segments(h, &standard), invalid(Reason::BadBase64)),
            ("impossible length", format!("{h}.{p}.{s}AA"), invalid(Reason::BadBase64)),
        ]);
    }

    #[test]
    fn claims_shape() {
        let t = |edit: Value| mint(&claims_with(edit), &key());
        check(&[
            ("base", t(json!({})), Ok(())),
            ("sub missing", t(json!({"sub": null})), invalid(Reason::MissingSub)),
            ("sub number", t(json!({"sub": 7})), invalid(Reason::BadClaims)),
            ("sub empty", t(json!({"sub": ""})), invalid(Reason::BadClaims)),
            ("sub array", t(json!({"sub": ["alice"]})), invalid(Reason::BadClaims)),
            ("exp missing", t(json!({"exp": null})), invalid(Reason::MissingExp)),
            ("exp string", t(json!({"exp": (NOW + 60).to_string()})), invalid(Reason::BadClaims)),
            ("exp negative", t(json!({"exp": -1})), invalid(Reason::BadClaims)),
            ("exp huge float", t(json!({"exp": 1e300})), Ok(())),
            ("nbf string", t(json!({"nbf": "0"})), invalid(Reason::BadClaims)),
            ("iat bool", t(json!({"iat": true})), invalid(Reason::BadClaims)),
            ("read string", t(json!({"read": "room:*"})), invalid(Reason::BadClaims)),
            ("read numbers", t(json!({"read": [1]})), invalid(Reason::BadClaims)),
            ("read mixed", t(json!({"read": ["a", null]})), invalid(Reason::BadClaims)),
            ("write object", t(json!({"write": {"room": 1}})), invalid(Reason::BadClaims)),
            ("write true", t(json!({"write": true})), invalid(Reason::BadClaims)),
            ("read empty", t(json!({"read": []})), Ok(())),
            ("api true", t(json!({"api": true})), Ok(())),
            ("api false", t(json!({"api": false})), Ok(())),
            ("api string", t(json!({"api": "true"})), invalid(Reason::BadClaims)),
            ("api number", t(json!({"api": 1})), invalid(Reason::BadClaims)),
            ("api array", t(json!({"api": [true]})), invalid(Reason::BadClaims)),
        ]);
        // Explicit null is a present-but-wrong claim, not an absent one.
        let explicit_null =
            signed_raw(&hs256().to_string(), &format!(r#"{{"sub":"a","exp":{},"read":null}}"#, NOW + 60));
        assert_eq!(outcome(&verifier(), &explicit_null), invalid(Reason::BadClaims));
    }

    #[test]
    fn only_api_true_marks_the_main_applications_token() {
        let api = |edit: Value| verifier().verify(&mint(&claims_with(edit), &key()), NOW).unwrap().api;
        assert!(api(json!({"api": true})));
        assert!(!api(json!({"api": false})));
        assert!(!api(json!({})), "a token without the claim is a client token");
    }

    #[test]
    fn missing_patterns_grant_nothing() {
        let claims = verifier().verify(&mint(&base_claims(), &key()), NOW).unwrap();
        assert_eq!(claims.read, Patterns::default());
        assert!(!claims.read.allows("anything"));
        assert!(!claims.write.allows(""));
    }

    #[test]
    fn float_exp_is_floored() {
        let token = mint(&claims_with(json!({"exp": NOW as f64 + 0.999})), &key());
        assert_eq!(verifier().verify(&token, NOW).unwrap().exp, NOW);
        // Floored, so one second past it (and the leeway) is expired.
        assert_eq!(verifier().verify(&token, NOW + 31), Err(AuthError::Expired));
    }

    #[test]
    fn time_claims_with_leeway() {
        let t = |edit: Value| mint(&claims_with(edit), &key());
        check(&[
            ("exp now", t(json!({"exp": NOW})), Ok(())),
            ("exp within leeway", t(json!({"exp": NOW - 30})), Ok(())),
            ("exp past leeway", t(json!({"exp": NOW - 31})), Err(AuthError::Expired)),
            ("exp zero", t(json!({"exp": 0})), Err(AuthError::Expired)),
            ("nbf now", t(json!({"nbf": NOW})), Ok(())),
            ("nbf within leeway", t(json!({"nbf": NOW + 30})), Ok(())),
            ("nbf future", t(json!({"nbf": NOW + 31})), invalid(Reason::NotYetValid)),
            ("iat past", t(json!({"iat": NOW - 1000})), Ok(())),
            ("iat within leeway", t(json!({"iat": NOW + 30})), Ok(())),
            ("iat future", t(json!({"iat": NOW + 31})), invalid(Reason::IssuedInFuture)),
        ]);
        let strict = Verifier::new(KeyRing::new(vec![key()]), 0, None);
        assert_eq!(strict.leeway_secs(), 0);
        check_with(
            &strict,
            &[
                ("exp now", t(json!({"exp": NOW})), Ok(())),
                ("exp one second ago", t(json!({"exp": NOW - 1})), Err(AuthError::Expired)),
                ("nbf next second", t(json!({"nbf": NOW + 1})), invalid(Reason::NotYetValid)),
            ],
        );
        // Overflow must not wrap an absurd leeway into rejecting everything.
        let lax = Verifier::new(KeyRing::new(vec![key()]), u64::MAX, None);
        assert_eq!(outcome(&lax, &t(json!({"exp": u64::MAX}))), Ok(()));
    }

    #[test]
    fn expired_only_reported_for_authentic_tokens() {
        let expired = claims_with(json!({"exp": NOW - 1000}));
        let forged = mint(&expired, &Key::new(None, b"attacker".to_vec()));
        assert_eq!(outcome(&verifier(), &forged), invalid(Reason::BadSignature));
        let authentic = mint(&expired, &key());
        assert_eq!(outcome(&verifier(), &authentic), Err(AuthError::Expired));
    }

    #[test]
    fn audience() {
        let t = |edit: Value| mint(&claims_with(edit), &key());
        check_with(
            &with_audience("roost"),
            &[
                ("string match", t(json!({"aud": "roost"})), Ok(())),
                ("array match", t(json!({"aud": ["other", "roost"]})), Ok(())),
                ("string mismatch", t(json!({"aud": "other"})), invalid(Reason::BadAudience)),
                ("array mismatch", t(json!({"aud": ["other", "roost2"]})), invalid(Reason::BadAudience)),
                ("empty array", t(json!({"aud": []})), invalid(Reason::BadAudience)),
                ("case differs", t(json!({"aud": "Roost"})), invalid(Reason::BadAudience)),
                ("array with non-string", t(json!({"aud": ["roost", 1]})), invalid(Reason::BadAudience)),
                ("number", t(json!({"aud": 1})), invalid(Reason::BadAudience)),
                ("missing", t(json!({})), invalid(Reason::BadAudience)),
            ],
        );
        check(&[
            ("unconfigured ignores aud", t(json!({"aud": "other"})), Ok(())),
            ("unconfigured ignores odd aud", t(json!({"aud": 1})), Ok(())),
        ]);
    }

    #[test]
    fn key_rotation() {
        let new = Key::new(Some("new".into()), b"new secret".to_vec());
        let old = Key::new(Some("old".into()), b"old secret".to_vec());
        let anonymous_new = Key::new(None, new.secret().to_vec());
        let anonymous_old = Key::new(None, old.secret().to_vec());
        let v = Verifier::new(KeyRing::new(vec![new.clone(), old.clone()]), 30, None);
        let forged_kid = {
            // Claims kid "old" but is signed with the new key.
            let token = mint(&base_claims(), &new);
            let (_, p, s) = split_token(&token).unwrap();
            let header = b64(json!({"alg": "HS256", "typ": "JWT", "kid": "old"}).to_string());
            format!("{header}.{p}.{s}")
        };
        check_with(
            &v,
            &[
                ("kid selects first key", mint(&base_claims(), &new), Ok(())),
                ("kid selects second key", mint(&base_claims(), &old), Ok(())),
                ("no kid uses default (first)", mint(&base_claims(), &anonymous_new), Ok(())),
                ("no kid never tries others", mint(&base_claims(), &anonymous_old), invalid(Reason::BadSignature)),
                ("kid with other key's MAC", forged_kid, invalid(Reason::BadSignature)),
                (
                    "unknown kid",
                    mint(&base_claims(), &Key::new(Some("older".into()), b"old secret".to_vec())),
                    invalid(Reason::UnknownKid),
                ),
            ],
        );
    }

    #[test]
    fn key_ring_lookup() {
        let ring = KeyRing::new(vec![
            Key::new(None, b"a".to_vec()),
            Key::new(Some("x".into()), b"b".to_vec()),
            Key::new(Some("x".into()), b"c".to_vec()),
        ]);
        assert_eq!(ring.default_key().unwrap().secret(), b"a");
        assert_eq!(ring.get("x").unwrap().secret(), b"b");
        assert!(ring.get("").is_none());
        assert!(KeyRing::new(vec![]).default_key().is_none());
    }

    #[test]
    fn unusable_keys_reject_everything() {
        let empty = Verifier::new(KeyRing::new(vec![]), 30, None);
        assert_eq!(outcome(&empty, &mint(&base_claims(), &key())), invalid(Reason::NoKey));
        let blank = Key::new(None, Vec::new());
        let v = Verifier::new(KeyRing::new(vec![blank.clone()]), 30, None);
        assert_eq!(outcome(&v, &mint(&base_claims(), &blank)), invalid(Reason::NoKey));
    }

    #[test]
    fn patterns() {
        let p = Patterns::new(vec!["lobby".into(), "room:*".into(), "a*b".into()]);
        let cases = [
            ("lobby", true),
            ("lobby2", false),
            ("lobb", false),
            ("room:1", true),
            ("room:lobby", true),
            ("room:", true),
            ("room", false),
            ("roomx", false),
            ("xroom:1", false),
            ("a*b", true),
            ("axb", false),
            ("", false),
        ];
        for (channel, expected) in cases {
            assert_eq!(p.allows(channel), expected, "channel {channel:?}");
        }
        assert!(!p.allows_all());

        let all = Patterns::new(vec!["*".into()]);
        assert!(all.allows_all());
        for channel in ["", "x", "room:1", "*"] {
            assert!(all.allows(channel), "channel {channel:?}");
        }
        // A prefix pattern is not "all", even one that happens to be short.
        assert!(!Patterns::new(vec!["**".into()]).allows_all());
        assert!(!Patterns::default().allows("x"));
        assert_eq!(all.to_vec(), ["*"]);
    }

    #[test]
    fn errors_are_content_free() {
        let token = mint(&base_claims(), &key());
        let secret_text = String::from_utf8_lossy(SECRET).into_owned();
        let v = Verifier::new(KeyRing::new(vec![Key::new(Some("k".into()), SECRET.to_vec())]), 30, None);
        let err = v.verify(&format!("{token}x"), NOW).unwrap_err();
        for shown in [err.to_string(), format!("{err:?}"), format!("{v:?}")] {
            assert!(!shown.contains(&token[..20]), "{shown}");
            assert!(!shown.contains(&secret_text), "{shown}");
        }
        assert!(format!("{:?}", key()).starts_with("Key { id: None"));
        assert_eq!(AuthError::Missing.code(), "token_missing");
        assert_eq!(AuthError::Invalid(Reason::BadAlg).code(), "token_invalid");
        assert_eq!(AuthError::Expired.code(), "token_expired");
        assert_eq!(AuthError::Invalid(Reason::BadAlg).to_string(), "invalid token (bad_alg)");
        assert_eq!(Reason::IssuedInFuture.as_str(), "issued_in_future");
    }

    #[test]
    fn mint_refuses_non_object_claims() {
        let k = key();
        let refused = std::panic::catch_unwind(|| mint(&json!(["sub"]), &k));
        assert!(refused.is_err(), "a token whose payload is not an object could never verify");
    }
}
