//! The HTTP API's request signature: `ApiRequest::verify` on anything, and differentially
//! against the crate's own signer (`sign_api_query`).
//!
//! Invariants:
//! - `verify` never panics, and accepts only a request that carries the app's `auth_key`, a
//!   timestamp within 600 s of the server's clock and an `auth_signature` that is the HMAC of
//!   the string to sign;
//! - a request signed with `sign_api_query`, read back the way the server reads a query
//!   (`form_urlencoded`), verifies anywhere in the window, in any parameter order;
//! - any single mutation of that request fails: another method, path or body, a parameter
//!   changed, renamed, removed or added, or the clock moved outside the window. What the
//!   Pusher scheme leaves unsigned by design is exempt and listed at [`Mutation::expect_refused`].

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plexus_protocol::limits::API_TIMESTAMP_WINDOW_SECS;
use plexus_protocol::signature::{api_string_to_sign, sign_api_query, sign_hex, ApiAuthError, ApiRequest};

#[derive(Arbitrary, Debug)]
enum Input {
    /// Whatever a client sends.
    Raw {
        method: String,
        path: String,
        params: Vec<(String, String)>,
        body: Vec<u8>,
        key: String,
        secret: String,
        now: u64,
    },
    /// A request signed as our clients sign it, then changed once.
    Signed(Signed),
}

#[derive(Arbitrary, Debug)]
struct Signed {
    key: String,
    secret: String,
    method: Method,
    path: String,
    body: Vec<u8>,
    timestamp: u64,
    /// Where the server's clock is within the window.
    skew: i16,
    extra: Vec<(String, String)>,
    /// Parameter order is not signed; rotating the list must not matter.
    rotate: u8,
    mutation: Mutation,
}

#[derive(Arbitrary, Debug)]
enum Method {
    Get,
    Post,
    Other(String),
}

impl Method {
    fn text(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Other(m) => m,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    None,
    Method(String),
    Path(String),
    Body(Vec<u8>),
    Value {
        index: u8,
        value: String,
    },
    Rename {
        index: u8,
        key: String,
    },
    Remove {
        index: u8,
    },
    Add {
        at: u8,
        key: String,
        value: String,
    },
    /// Seconds beyond the window's edge, before or after.
    Clock {
        past: bool,
        beyond: u32,
    },
}

fn params_of(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// A key `sign_api_query` can carry: it writes keys unencoded (every real key is a fixed
/// lowercase name), so keep only characters that mean nothing in a query string.
fn plain_key(key: &str) -> String {
    key.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect()
}

fn check_raw(
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    key: &str,
    secret: &str,
    now: u64,
) {
    let request = ApiRequest { method, path, params, body };
    if request.verify(key, secret, now).is_ok() {
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(param("auth_key"), Some(key));
        let timestamp: u64 = param("auth_timestamp").unwrap().parse().unwrap();
        assert!(timestamp.abs_diff(now) <= API_TIMESTAMP_WINDOW_SECS);
        let expected = sign_hex(secret, api_string_to_sign(method, path, params).as_bytes());
        let presented = param("auth_signature").unwrap();
        assert!(
            presented.eq_ignore_ascii_case(&expected),
            "accepted signature {presented:?}, HMAC is {expected}"
        );
    }
}

impl Mutation {
    /// Whether the mutated request must be refused. The exemptions are the Pusher scheme's own
    /// rules, not plexus choices: the method is upper-cased and keys lower-cased before signing,
    /// hex digits may be either case, and parameters named `auth_signature` in any case are not
    /// signed, so a second one after the real one is ignored.
    fn expect_refused(&self, method: &str, params: &[(String, String)]) -> bool {
        let index = |i: &u8| (*i as usize) % params.len();
        match self {
            Mutation::None => false,
            Mutation::Method(m) => !m.eq_ignore_ascii_case(method),
            Mutation::Path(_) | Mutation::Body(_) | Mutation::Remove { .. } | Mutation::Clock { .. } => true,
            Mutation::Value { index: i, value } => {
                let (key, old) = &params[index(i)];
                if key == "auth_signature" {
                    !value.eq_ignore_ascii_case(old)
                } else {
                    value != old
                }
            }
            Mutation::Rename { index: i, key } => !key.eq_ignore_ascii_case(&params[index(i)].0),
            Mutation::Add { key, .. } => !key.eq_ignore_ascii_case("auth_signature"),
        }
    }
}

fn check_signed(s: Signed) {
    if s.key.is_empty() {
        return;
    }
    // Extra parameters never repeat the ones the signer writes itself.
    let extra: Vec<(String, String)> = s
        .extra
        .iter()
        .map(|(k, v)| (plain_key(k), v.clone()))
        .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("auth_") && k != "body_md5")
        .collect();
    let extra_refs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let method = s.method.text();
    let query = sign_api_query(&s.key, &s.secret, method, &s.path, &s.body, s.timestamp, &extra_refs);
    let mut params = params_of(&query);
    let skew = s.skew as i64 % (API_TIMESTAMP_WINDOW_SECS as i64 + 1);
    let now = s.timestamp.saturating_add_signed(skew);
    if now.abs_diff(s.timestamp) > API_TIMESTAMP_WINDOW_SECS {
        return;
    }
    let signed = ApiRequest { method, path: &s.path, params: &params, body: &s.body };
    assert_eq!(signed.verify(&s.key, &s.secret, now), Ok(()), "a request signed by sign_api_query: {query}");

    let rotate = s.rotate as usize % params.len();
    params.rotate_left(rotate);
    let reordered = ApiRequest { method, path: &s.path, params: &params, body: &s.body };
    assert_eq!(reordered.verify(&s.key, &s.secret, now), Ok(()), "reordered parameters refused");

    let refused = s.mutation.expect_refused(method, &params);
    let (mut method, mut path, mut body, mut now) = (method.to_owned(), s.path.clone(), s.body.clone(), now);
    let len = params.len();
    match &s.mutation {
        Mutation::None => {}
        Mutation::Method(m) => method = m.clone(),
        Mutation::Path(p) => {
            if *p == path {
                return;
            }
            path = p.clone();
        }
        Mutation::Body(b) => {
            if *b == body {
                return;
            }
            body = b.clone();
        }
        Mutation::Value { index, value } => params[*index as usize % len].1 = value.clone(),
        Mutation::Rename { index, key } => params[*index as usize % len].0 = key.clone(),
        Mutation::Remove { index } => {
            params.remove(*index as usize % len);
        }
        Mutation::Add { at, key, value } => {
            params.insert(*at as usize % (len + 1), (key.clone(), value.clone()))
        }
        Mutation::Clock { past, beyond } => {
            let distance = API_TIMESTAMP_WINDOW_SECS + 1 + *beyond as u64;
            now = if *past { s.timestamp.checked_sub(distance) } else { s.timestamp.checked_add(distance) }
                .unwrap_or_else(|| if *past { u64::MAX } else { 0 });
            if now.abs_diff(s.timestamp) <= API_TIMESTAMP_WINDOW_SECS {
                return;
            }
        }
    }
    let mutated = ApiRequest { method: &method, path: &path, params: &params, body: &body };
    let verdict = mutated.verify(&s.key, &s.secret, now);
    check_raw(&method, &path, &params, &body, &s.key, &s.secret, now);
    if refused {
        assert!(verdict.is_err(), "{:?} still verifies: {method} {path} {params:?}", s.mutation);
    }
    if let Mutation::Clock { .. } = s.mutation {
        assert!(matches!(verdict, Err(ApiAuthError::TimestampExpired { .. })), "{verdict:?}");
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw { method, path, params, body, key, secret, now } => {
            check_raw(&method, &path, &params, &body, &key, &secret, now)
        }
        Input::Signed(signed) => check_signed(signed),
    }
});
