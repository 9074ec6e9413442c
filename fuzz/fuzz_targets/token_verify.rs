//! Signed tokens (JWT) at the upgrade: `plexus_server::tokens::verify` on any string, and on
//! tokens signed by keys an app does and does not trust.
//!
//! Apps: HS256 only (`enable_tokens` + secret), RS256 + ES256 public keys only, and all three
//! with `kid`s. Signers: the app secret, another secret, the RSA/EC public key's PEM used as an
//! HMAC secret (algorithm confusion), the configured RSA/EC private keys and strangers' keys, or
//! no signature at all. Fresh RSA signatures cost a millisecond, so RS256 tokens come from a
//! table signed once at start-up; HS256 and ES256 tokens are signed per input.
//!
//! Invariants:
//! - `verify` never panics (claims, header and times are arbitrary, `exp` up to 2^64−1);
//! - a token verifies only if a key the app configures for its algorithm signed it, unaltered,
//!   and its `exp` is after `now` and its `nbf` (when an integer) not after `now`;
//! - a clean token from a trusted signer, with an in-range `exp` after `now`, does verify, and
//!   carries its `sub`, `channels`, `scopes` and `exp`.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use plexus_core::app::TokenKey;
use plexus_core::App;
use plexus_server::tokens;
use serde_json::{json, Map, Value};

const RSA_CONFIGURED: &str = include_str!("../keys/rsa_configured.key.pem");
const RSA_CONFIGURED_PUB: &str = include_str!("../keys/rsa_configured.pub.pem");
const RSA_STRANGER: &str = include_str!("../keys/rsa_stranger.key.pem");
const EC_CONFIGURED: &str = include_str!("../keys/ec_configured.key.pem");
const EC_CONFIGURED_PUB: &str = include_str!("../keys/ec_configured.pub.pem");
const EC_STRANGER: &str = include_str!("../keys/ec_stranger.key.pem");
const SECRET: &str = "hs-app-secret";

struct Fixture {
    apps: Vec<App>,
    ec_configured: EncodingKey,
    ec_stranger: EncodingKey,
    /// RS256 tokens signed once: (configured signer?, kid, claims, token).
    rsa_table: Vec<(bool, Option<&'static str>, Value, String)>,
}

fn token_key(algorithm: &str, pem: &str, kid: Option<&str>) -> TokenKey {
    TokenKey { algorithm: algorithm.into(), public_key: pem.into(), kid: kid.map(Into::into) }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut hs = App::new("hs", "hs-key", SECRET);
        hs.enable_tokens = true;
        let mut keys = App::new("pk", "pk-key", SECRET);
        keys.token_keys = vec![
            token_key("RS256", RSA_CONFIGURED_PUB, None),
            token_key("ES256", EC_CONFIGURED_PUB, Some("ec-1")),
        ];
        let mut all = App::new("all", "all-key", SECRET);
        all.enable_tokens = true;
        all.token_keys = vec![
            token_key("RS256", RSA_CONFIGURED_PUB, Some("rsa-1")),
            token_key("ES256", EC_CONFIGURED_PUB, None),
        ];
        let none = App::new("none", "none-key", SECRET);
        for app in [&hs, &keys, &all] {
            tokens::check_keys(app).expect("the embedded keys parse");
        }
        let rsa_configured = EncodingKey::from_rsa_pem(RSA_CONFIGURED.as_bytes()).unwrap();
        let rsa_stranger = EncodingKey::from_rsa_pem(RSA_STRANGER.as_bytes()).unwrap();
        let mut rsa_table = Vec::new();
        let claim_sets = [
            json!({"exp": 4_102_444_800u64, "sub": "u1", "channels": ["feed-*"], "scopes": ["events:read"]}),
            json!({"exp": 1_000}),
            json!({"exp": 4_102_444_800u64, "nbf": 4_000_000_000u64}),
            json!({"exp": u64::MAX}),
            json!({"exp": 1u64 << 62}),
            json!({"sub": "no-exp"}),
            json!({"exp": 4_102_444_800u64, "channels": "not-a-list"}),
        ];
        for (configured, key) in [(true, &rsa_configured), (false, &rsa_stranger)] {
            for kid in [None, Some("rsa-1"), Some("other")] {
                for claims in &claim_sets {
                    let header = header_json("RS256", kid, &[]);
                    let token = sign(&header, &claims.to_string(), Some((key, Algorithm::RS256)));
                    rsa_table.push((configured, kid, claims.clone(), token));
                }
            }
        }
        Fixture {
            apps: vec![hs, keys, all, none],
            ec_configured: EncodingKey::from_ec_pem(EC_CONFIGURED.as_bytes()).unwrap(),
            ec_stranger: EncodingKey::from_ec_pem(EC_STRANGER.as_bytes()).unwrap(),
            rsa_table,
        }
    })
}

fn header_json(alg: &str, kid: Option<&str>, extra: &[(String, String)]) -> String {
    let mut header = Map::new();
    header.insert("alg".into(), alg.into());
    header.insert("typ".into(), "JWT".into());
    if let Some(kid) = kid {
        header.insert("kid".into(), kid.into());
    }
    // Extra fields are unregistered names: a registered one (`kid`, `x5c`, …) would change which
    // key the header selects or make it invalid, and the harness must know which. Registered
    // fields with any value are reached by `Tamper::Header`.
    const REGISTERED: [&str; 10] =
        ["typ", "alg", "cty", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256"];
    for (k, v) in extra.iter().filter(|(k, _)| !REGISTERED.contains(&k.as_str())) {
        header.entry(k.clone()).or_insert_with(|| v.clone().into());
    }
    Value::Object(header).to_string()
}

fn sign(header: &str, claims: &str, key: Option<(&EncodingKey, Algorithm)>) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let signature = match key {
        Some((key, alg)) => jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("signing works"),
        None => String::new(),
    };
    format!("{input}.{signature}")
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw {
        app: u8,
        token: String,
        now: Now,
    },
    /// An HS256 or ES256 token signed now.
    Built {
        app: u8,
        signer: Signer,
        alg: AlgName,
        kid: Option<Kid>,
        header_extra: Vec<(String, String)>,
        claims: Claims,
        now: Now,
        tamper: Tamper,
    },
    /// An RS256 token from the table.
    Rsa {
        app: u8,
        index: u8,
        now: Now,
        tamper: Tamper,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Signer {
    AppSecret,
    OtherSecret,
    /// HS256 keyed with the configured RSA public key's PEM: the classic confusion attack.
    RsaPemAsSecret,
    EcPemAsSecret,
    EcConfigured,
    EcStranger,
    Unsigned,
    /// Only in the RS256 table (a fresh RSA signature per input would cost a millisecond).
    RsaConfigured,
    RsaStranger,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum AlgName {
    /// The algorithm the signer signs with.
    Matching,
    Named(u8),
}

const ALG_NAMES: [&str; 10] =
    ["none", "HS256", "RS256", "ES256", "HS384", "RS512", "ES384", "PS256", "EdDSA", "hs256"];

#[derive(Arbitrary, Debug, Clone, PartialEq)]
enum Kid {
    Ec1,
    Rsa1,
    Other(String),
}

impl Kid {
    fn text(&self) -> &str {
        match self {
            Kid::Ec1 => "ec-1",
            Kid::Rsa1 => "rsa-1",
            Kid::Other(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Claims {
    exp: Option<Number>,
    nbf: Option<Number>,
    sub: Option<String>,
    channels: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    extra: Vec<(String, String)>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Number {
    /// Near the fixed clock of `Now::Near`, either side.
    Near(i32),
    Any(u64),
    Max,
    Negative(i64),
    Float(f64),
    Text(u64),
}

const NEAR: u64 = 1_750_000_000;

impl Number {
    fn value(self) -> Value {
        match self {
            Number::Near(d) => Value::from(NEAR.saturating_add_signed(d as i64)),
            Number::Any(n) => Value::from(n),
            Number::Max => Value::from(u64::MAX),
            Number::Negative(n) => Value::from(-1 - (n.unsigned_abs() >> 1) as i64),
            Number::Float(f) if f.is_finite() => Value::from(f),
            Number::Float(_) => Value::Null,
            Number::Text(n) => Value::from(n.to_string()),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Now {
    Near(i32),
    Any(u64),
}

impl Now {
    fn secs(self) -> u64 {
        match self {
            Now::Near(d) => NEAR.saturating_add_signed(d as i64),
            Now::Any(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Tamper {
    None,
    /// XOR one byte of the token (anywhere: header, claims, signature, dots).
    Xor {
        at: u16,
        with: u8,
    },
    Truncate {
        at: u16,
    },
    /// Replace the claims part, keeping header and signature.
    Claims(String),
    /// Replace the header part, keeping claims and signature.
    Header(String),
    DropSignature,
    Append(String),
}

impl Tamper {
    /// The token after tampering, and whether its bytes changed.
    fn apply(&self, token: &str) -> (String, bool) {
        let mut bytes = token.as_bytes().to_vec();
        let parts: Vec<&str> = token.splitn(3, '.').collect();
        match self {
            Tamper::None => {}
            Tamper::Xor { at, with } => {
                let at = *at as usize % bytes.len();
                bytes[at] ^= with;
            }
            Tamper::Truncate { at } => bytes.truncate(*at as usize % bytes.len()),
            Tamper::Claims(claims) if parts.len() == 3 => {
                bytes = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims), parts[2]).into_bytes()
            }
            Tamper::Header(header) if parts.len() == 3 => {
                bytes = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header), parts[1], parts[2]).into_bytes()
            }
            Tamper::Claims(_) | Tamper::Header(_) => {}
            Tamper::DropSignature => {
                if let Some(dot) = token.rfind('.') {
                    bytes.truncate(dot + 1);
                }
            }
            Tamper::Append(tail) => bytes.extend_from_slice(tail.as_bytes()),
        }
        let tampered = String::from_utf8_lossy(&bytes).into_owned();
        let changed = tampered != token;
        (tampered, changed)
    }
}

/// What the harness knows of a token it made.
struct Made {
    /// Whether `app` trusts the signer for the algorithm the header names (and the `kid` picks it).
    trusted: bool,
    claims: Value,
}

/// Whether `app` has a key for `alg` that the header's `kid` selects and that `signer` holds.
fn trusts(app: &App, signer: Signer, alg: &str, kid: Option<&str>) -> bool {
    let key_for = |name: &str| {
        app.token_keys
            .iter()
            .filter(|k| k.algorithm.eq_ignore_ascii_case(name))
            .find(|k| k.kid.is_none() || k.kid.as_deref() == kid)
            .is_some()
    };
    match (signer, alg) {
        (Signer::AppSecret, "HS256") => app.enable_tokens,
        (Signer::RsaConfigured, "RS256") => key_for("RS256"),
        (Signer::EcConfigured, "ES256") => key_for("ES256"),
        _ => false,
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH.checked_add(Duration::from_secs(secs)).unwrap_or(UNIX_EPOCH)
}

fn check(app: &App, token: &str, now: u64, made: Option<(Made, bool)>) {
    let result = tokens::verify(app, token, at(now));
    let now = if at(now) == UNIX_EPOCH { 0 } else { now };
    if let Ok(verified) = &result {
        assert!(app.accepts_tokens());
        let exp = verified.expires_at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(exp > now, "verified a token whose exp {exp} is not after now {now}");
    }
    let Some((made, tampered)) = made else { return };
    if result.is_ok() {
        assert!(made.trusted, "a token from an untrusted signer verified: {token}");
        assert!(!tampered, "a tampered token verified: {token}");
        let nbf = made.claims.get("nbf").and_then(Value::as_u64);
        assert!(nbf.is_none_or(|nbf| nbf <= now), "verified before its nbf");
    }
    // The converse: a clean, trusted, current token is accepted with what it claims.
    let claims = &made.claims;
    let exp = claims.get("exp").and_then(Value::as_u64);
    // An `exp` past `tokens::LATEST_SECS` means that second, so a `now` after it (the fuzzer's clock may be
    // anything) has outlived every token.
    let in_range = exp.is_some_and(|exp| exp.min(tokens::LATEST_SECS) > now && exp <= i64::MAX as u64);
    let nbf_ok = claims.get("nbf").and_then(Value::as_u64).is_none_or(|nbf| nbf <= now);
    let typed = |name: &str, list: bool| match claims.get(name) {
        None => true,
        Some(Value::Null) => !list,
        Some(Value::String(_)) => !list,
        Some(Value::Array(items)) => list && items.iter().all(Value::is_string),
        Some(_) => false,
    };
    if made.trusted
        && !tampered
        && in_range
        && nbf_ok
        && typed("sub", false)
        && typed("channels", true)
        && typed("scopes", true)
    {
        let verified = result.unwrap_or_else(|e| panic!("a good token was refused ({e}): {token}"));
        assert_eq!(verified.user_id.as_deref(), claims.get("sub").and_then(Value::as_str));
        // The documented contract: an `exp` past 9999-12-31T23:59:59Z means that second.
        assert_eq!(verified.expires_at, at(exp.unwrap().min(tokens::LATEST_SECS)));
        let list = |name: &str| -> Vec<String> {
            claims
                .get(name)
                .and_then(Value::as_array)
                .map_or_else(Vec::new, |items| items.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        };
        assert_eq!(verified.grant.channels, list("channels"));
        assert_eq!(verified.grant.scopes, list("scopes"));
    }
}

fuzz_target!(|input: Input| {
    let fixture = fixture();
    let app_of = |i: u8| &fixture.apps[i as usize % fixture.apps.len()];
    match input {
        Input::Raw { app, token, now } => {
            let _ = tokens::looks_like_token(&token);
            check(app_of(app), &token, now.secs(), None);
        }
        Input::Rsa { app, index, now, tamper } => {
            let (configured, kid, claims, token) =
                &fixture.rsa_table[index as usize % fixture.rsa_table.len()];
            let app = app_of(app);
            let signer = if *configured { Signer::RsaConfigured } else { Signer::RsaStranger };
            let (token, tampered) = tamper.apply(token);
            let made = Made { trusted: trusts(app, signer, "RS256", *kid), claims: claims.clone() };
            check(app, &token, now.secs(), Some((made, tampered)));
        }
        Input::Built { app, signer, alg, kid, header_extra, claims, now, tamper } => {
            let app = app_of(app);
            let (key, signing_alg) = match signer {
                Signer::AppSecret => (EncodingKey::from_secret(SECRET.as_bytes()), Some(Algorithm::HS256)),
                Signer::OtherSecret => (EncodingKey::from_secret(b"not-the-secret"), Some(Algorithm::HS256)),
                Signer::RsaPemAsSecret => {
                    (EncodingKey::from_secret(RSA_CONFIGURED_PUB.as_bytes()), Some(Algorithm::HS256))
                }
                Signer::EcPemAsSecret => {
                    (EncodingKey::from_secret(EC_CONFIGURED_PUB.as_bytes()), Some(Algorithm::HS256))
                }
                Signer::EcConfigured => (fixture.ec_configured.clone(), Some(Algorithm::ES256)),
                Signer::EcStranger => (fixture.ec_stranger.clone(), Some(Algorithm::ES256)),
                Signer::Unsigned | Signer::RsaConfigured | Signer::RsaStranger => {
                    (EncodingKey::from_secret(b""), None)
                }
            };
            let alg_name = match (alg, signing_alg) {
                (AlgName::Matching, Some(Algorithm::HS256)) => "HS256",
                (AlgName::Matching, Some(Algorithm::RS256)) => "RS256",
                (AlgName::Matching, Some(_)) => "ES256",
                (AlgName::Matching, None) => "none",
                (AlgName::Named(i), _) => ALG_NAMES[i as usize % ALG_NAMES.len()],
            };
            let kid = kid.as_ref().map(Kid::text);
            let mut body = Map::new();
            for (name, number) in [("exp", claims.exp), ("nbf", claims.nbf)] {
                if let Some(number) = number {
                    body.insert(name.into(), number.value());
                }
            }
            if let Some(sub) = claims.sub {
                body.insert("sub".into(), sub.into());
            }
            for (name, list) in [("channels", claims.channels), ("scopes", claims.scopes)] {
                if let Some(list) = list {
                    body.insert(name.into(), list.into());
                }
            }
            for (k, v) in claims.extra {
                body.entry(k).or_insert(v.into());
            }
            let claims = Value::Object(body);
            let header = header_json(alg_name, kid, &header_extra);
            let token = sign(&header, &claims.to_string(), signing_alg.map(|alg| (&key, alg)));
            let (token, tampered) = tamper.apply(&token);
            // Trusted only if the header as sent names the signer's algorithm (extra header
            // fields cannot replace `alg`: it is inserted first).
            let trusted = signing_alg.is_some() && trusts(app, signer, alg_name, kid);
            check(app, &token, now.secs(), Some((Made { trusted, claims }, tampered)));
        }
    }
});
