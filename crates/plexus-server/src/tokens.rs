//! Signed tokens (JWT) as connection credentials: HS256 signed with the app secret
//! (`enable_tokens`), RS256 / ES256 verified with the app's `[[apps.token_keys]]`.
//!
//! A token must carry `exp`; it may carry `nbf`, `sub` (the user id, shown in logs), `channels`
//! (patterns the connection may subscribe to; none means no channel) and `scopes` (as an API
//! key's). An app with `token_audience` also requires `aud` to name it (the claim's string, or
//! one of its array's), and one with `token_issuer` requires `iss` to equal it, both compared
//! exactly; without them `aud` and `iss` are not looked at, like the other claims (`iat`, `jti`,
//! …), which are accepted and ignored. There is no clock
//! leeway: a token is valid until its `exp` second, and the server closes a connection opened
//! with it at that moment.
//!
//! An RS256 / ES256 token is checked with every configured key of its algorithm whose `kid` is
//! the header's `kid` or that has none, in the order listed; it verifies if any of them verifies
//! it. A key whose `kid` differs from the header's (or that has one when the header has none) is
//! never tried.
//!
//! `exp` and `nbf` later than [`LATEST_SECS`] (9999-12-31T23:59:59Z) are read as that second:
//! issuers write "never" as 2^64−1 or `i64::MAX`, and no time that far out fits a `SystemTime`
//! on every platform, nor a timer. A token valid until the year 9999 is one that never expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use plexus_core::access::Grant;
use plexus_core::App;
use serde::Deserialize;

/// What a verified token allows, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub user_id: Option<String>,
    pub grant: Grant,
    pub expires_at: SystemTime,
}

/// Why a token was refused. Its text is the reason the client is told: the body of the
/// upgrade's 401, or the close reason of a connection whose token no longer verifies.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("this app does not accept tokens")]
    NotAccepted,
    #[error("invalid token: HS256 tokens are not enabled for this app")]
    Hs256NotEnabled,
    #[error("invalid token: algorithm {0:?} is not accepted")]
    AlgorithmNotAccepted(Algorithm),
    /// No configured key of the token's algorithm has its `kid` (or none).
    #[error("invalid token: no {algorithm} key configured for it")]
    NoKey { algorithm: &'static str },
    /// Every key tried was unusable (a PEM that does not parse as the algorithm's key).
    #[error("invalid token: the configured {algorithm} key is unusable: {cause}")]
    UnusableKey { algorithm: &'static str, cause: jsonwebtoken::errors::Error },
    /// Malformed, signed by none of the keys tried, or without `exp`.
    #[error("invalid token: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    /// A claim this server reads has the wrong type (`exp` not a number, `channels` not a list).
    #[error("invalid token claims: {0}")]
    Claims(serde_json::Error),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,
    /// The app has `token_audience` and the token has no `aud`.
    #[error("invalid token: aud is missing and this app requires one")]
    AudienceMissing,
    /// The app has `token_audience` and the token's `aud` does not name it.
    #[error("invalid token: aud does not name this app's audience")]
    WrongAudience,
    /// The app has `token_issuer` and the token has no `iss`.
    #[error("invalid token: iss is missing and this app requires one")]
    IssuerMissing,
    /// The app has `token_issuer` and the token's `iss` is another.
    #[error("invalid token: iss is not this app's issuer")]
    WrongIssuer,
}

/// The latest second a token's `exp` or `nbf` is taken to mean (9999-12-31T23:59:59Z); later
/// values are clamped to it, so `UNIX_EPOCH + exp` and the expiry timer never overflow.
pub const LATEST_SECS: u64 = 253_402_300_799;

#[derive(Debug, Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Whether `text` has the shape of a JWT (three base64url parts), so a bearer value can be told
/// from an API key without trying to verify it.
pub fn looks_like_token(text: &str) -> bool {
    let mut parts = text.split('.');
    let shaped = |part: Option<&str>| {
        part.is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    text.starts_with("eyJ")
        && shaped(parts.next())
        && shaped(parts.next())
        && shaped(parts.next())
        && parts.next().is_none()
}

/// Verifies `token` for `app` at `now`.
pub fn verify(app: &App, token: &str, now: SystemTime) -> Result<VerifiedToken, TokenError> {
    if !app.accepts_tokens() {
        return Err(TokenError::NotAccepted);
    }
    let header = decode_header(token).map_err(TokenError::Invalid)?;
    let keys: Vec<Result<DecodingKey, TokenError>> = match header.alg {
        Algorithm::HS256 if app.enable_tokens => vec![Ok(DecodingKey::from_secret(app.secret.as_bytes()))],
        Algorithm::HS256 => return Err(TokenError::Hs256NotEnabled),
        Algorithm::RS256 | Algorithm::ES256 => {
            let name = if header.alg == Algorithm::RS256 { "RS256" } else { "ES256" };
            // Every key of the algorithm that the header's `kid` does not rule out, in the order
            // configured: while an identity provider rotates, tokens signed with the old key and
            // with the new one are both in use, and neither need name a `kid`.
            let keys: Vec<_> = app
                .token_keys
                .iter()
                .filter(|k| k.algorithm.eq_ignore_ascii_case(name))
                .filter(|k| k.kid.is_none() || k.kid == header.kid)
                .map(|configured| {
                    let pem = configured.public_key.as_bytes();
                    let parsed = if header.alg == Algorithm::RS256 {
                        DecodingKey::from_rsa_pem(pem)
                    } else {
                        DecodingKey::from_ec_pem(pem)
                    };
                    parsed.map_err(|cause| TokenError::UnusableKey { algorithm: name, cause })
                })
                .collect();
            if keys.is_empty() {
                return Err(TokenError::NoKey { algorithm: name });
            }
            keys
        }
        other => return Err(TokenError::AlgorithmNotAccepted(other)),
    };
    let mut validation = Validation::new(header.alg);
    validation.leeway = 0;
    validation.validate_aud = false;
    // Expiry is checked below against `now`, so tests and the revocation sweep share one clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims = ["exp".to_owned()].into_iter().collect();
    let mut verified = None;
    let mut failure = None;
    for key in keys {
        let key = match key {
            Ok(key) => key,
            // A key that does not parse (a bad row in the database) must not keep the others
            // from verifying; it is the reason given only when nothing better is known.
            Err(unusable) => {
                failure.get_or_insert(unusable);
                continue;
            }
        };
        match decode::<serde_json::Value>(token, &key, &validation) {
            Ok(data) => {
                verified = Some(data);
                break;
            }
            // Not this key's signature: the next one may have made it.
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                failure = Some(TokenError::Invalid(e))
            }
            // Malformed, or signed by this key but with claims missing: no other key changes that.
            Err(e) => return Err(TokenError::Invalid(e)),
        }
    }
    let Some(data) = verified else {
        return Err(failure.expect("at least one key was tried"));
    };
    // The token is authentic; whether it was issued for this app comes before whether it is
    // current, since a token meant for another service is refused whatever its times.
    if let Some(audience) = &app.token_audience {
        check_audience(data.claims.get("aud"), audience)?;
    }
    if let Some(issuer) = &app.token_issuer {
        check_issuer(data.claims.get("iss"), issuer)?;
    }
    let nbf = data.claims.get("nbf").and_then(serde_json::Value::as_u64).map(|nbf| nbf.min(LATEST_SECS));
    let claims: Claims = serde_json::from_value(data.claims).map_err(TokenError::Claims)?;
    let exp = claims.exp.min(LATEST_SECS);
    let seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if exp <= seconds {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > seconds) {
        return Err(TokenError::NotYetValid);
    }
    Ok(VerifiedToken {
        user_id: claims.sub,
        grant: Grant { source: "the token", scopes: claims.scopes, channels: claims.channels },
        // Cannot overflow: `exp` is at most LATEST_SECS, which every platform's SystemTime holds.
        expires_at: UNIX_EPOCH + Duration::from_secs(exp),
    })
}

/// Whether `aud` names `audience`: RFC 7519 allows one string or an array of them.
fn check_audience(aud: Option<&serde_json::Value>, audience: &str) -> Result<(), TokenError> {
    use serde_json::Value;
    match aud {
        None | Some(Value::Null) => Err(TokenError::AudienceMissing),
        Some(Value::String(aud)) if aud == audience => Ok(()),
        Some(Value::Array(auds)) if auds.iter().any(|aud| aud.as_str() == Some(audience)) => Ok(()),
        Some(_) => Err(TokenError::WrongAudience),
    }
}

/// Whether `iss` is `issuer`.
fn check_issuer(iss: Option<&serde_json::Value>, issuer: &str) -> Result<(), TokenError> {
    use serde_json::Value;
    match iss {
        None | Some(Value::Null) => Err(TokenError::IssuerMissing),
        Some(Value::String(iss)) if iss == issuer => Ok(()),
        Some(_) => Err(TokenError::WrongIssuer),
    }
}

/// Whether every `[[apps.token_keys]]` entry parses as a key of its algorithm, so a bad key
/// stops the start rather than refusing every token later.
pub fn check_keys(app: &App) -> Result<(), String> {
    for key in &app.token_keys {
        let pem = key.public_key.as_bytes();
        let parsed = match key.algorithm.as_str() {
            "RS256" => DecodingKey::from_rsa_pem(pem),
            _ => DecodingKey::from_ec_pem(pem),
        };
        parsed.map_err(|e| format!("the {} public key does not parse: {e}", key.algorithm))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use plexus_core::app::TokenKey;
    use serde_json::json;

    fn app() -> App {
        let mut app = App::new("1", "key", "secret");
        app.enable_tokens = true;
        app
    }

    fn hs256(claims: serde_json::Value, secret: &str) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    /// Why `verify` refuses, as the client is told.
    fn refused(app: &App, token: &str, now: SystemTime) -> String {
        verify(app, token, now).unwrap_err().to_string()
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn hs256_tokens_carry_user_grants_and_expiry() {
        let token = hs256(
            json!({"exp": 2000, "sub": "u1", "channels": ["feed-*"], "scopes": ["events:read"]}),
            "secret",
        );
        assert!(looks_like_token(&token));
        let verified = verify(&app(), &token, at(1000)).unwrap();
        assert_eq!(verified.user_id.as_deref(), Some("u1"));
        assert_eq!(verified.grant.channels, vec!["feed-*".to_string()]);
        assert_eq!(verified.expires_at, at(2000));
        assert_eq!(refused(&app(), &token, at(2000)), "token expired");
    }

    #[test]
    fn refusals_name_the_reason() {
        let good = hs256(json!({"exp": 2000}), "secret");
        let mut no_tokens = app();
        no_tokens.enable_tokens = false;
        assert_eq!(refused(&no_tokens, &good, at(1)), "this app does not accept tokens");
        let forged = hs256(json!({"exp": 2000}), "other-secret");
        assert!(refused(&app(), &forged, at(1)).contains("invalid token"));
        let no_exp = hs256(json!({"sub": "u"}), "secret");
        assert!(refused(&app(), &no_exp, at(1)).contains("exp"));
        let early = hs256(json!({"exp": 2000, "nbf": 1500}), "secret");
        assert!(refused(&app(), &early, at(1000)).contains("not valid yet"));
        assert!(refused(&app(), "eyJ.not.atoken", at(1)).contains("invalid token"));
        assert!(!looks_like_token("sk_live_123") && !looks_like_token("a.b.c"));
    }

    /// A fresh P-256 key pair: the signing key and the `[[apps.token_keys]]` entry for it.
    fn es256_pair(kid: Option<&str>) -> (EncodingKey, TokenKey) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let configured = TokenKey {
            algorithm: "ES256".into(),
            public_key: pair.public_key_pem(),
            kid: kid.map(Into::into),
        };
        (signing, configured)
    }

    fn es256(claims: serde_json::Value, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(Into::into);
        encode(&header, &claims, key).unwrap()
    }

    #[test]
    fn every_key_the_kid_allows_is_tried_so_rotation_works() {
        let (old_signing, old_key) = es256_pair(None);
        let (new_signing, new_key) = es256_pair(None);
        let (_, unrelated) = es256_pair(None);
        let mut app = App::new("1", "key", "secret");
        app.token_keys = vec![old_key, new_key];
        let claims = json!({"exp": 2000});
        // Both keys configured during a rotation: a token by either verifies, the second's too.
        assert!(verify(&app, &es256(claims.clone(), None, &old_signing), at(1)).is_ok());
        assert!(verify(&app, &es256(claims.clone(), None, &new_signing), at(1)).is_ok());
        // A key that does not parse does not hide the ones after it.
        app.token_keys.insert(0, TokenKey { public_key: "-----BEGIN PUBLIC KEY-----".into(), ..unrelated });
        assert!(verify(&app, &es256(claims.clone(), None, &new_signing), at(1)).is_ok());
        // A token signed by neither is refused for its signature.
        app.token_keys.remove(2);
        let reason = refused(&app, &es256(claims, None, &new_signing), at(1));
        assert!(reason.contains("InvalidSignature"), "{reason}");
    }

    #[test]
    fn a_kid_selects_its_key_and_keys_without_one_never_a_key_with_another() {
        let (a_signing, a_key) = es256_pair(Some("a"));
        let (b_signing, b_key) = es256_pair(Some("b"));
        let (any_signing, any_key) = es256_pair(None);
        let mut app = App::new("1", "key", "secret");
        app.token_keys = vec![a_key, b_key];
        let claims = json!({"exp": 2000});
        assert!(verify(&app, &es256(claims.clone(), Some("a"), &a_signing), at(1)).is_ok());
        assert!(verify(&app, &es256(claims.clone(), Some("b"), &b_signing), at(1)).is_ok());
        // Key a's signature under kid b is checked against b alone, and fails.
        let reason = refused(&app, &es256(claims.clone(), Some("b"), &a_signing), at(1));
        assert!(reason.contains("InvalidSignature"), "{reason}");
        // Keys with a kid are not tried for a token without one, or naming another.
        let reason = refused(&app, &es256(claims.clone(), None, &a_signing), at(1));
        assert!(reason.contains("no ES256 key"), "{reason}");
        let reason = refused(&app, &es256(claims.clone(), Some("c"), &a_signing), at(1));
        assert!(reason.contains("no ES256 key"), "{reason}");
        // A key without a kid is tried for every token of its algorithm, whatever its kid.
        app.token_keys.push(any_key);
        assert!(verify(&app, &es256(claims.clone(), Some("a"), &any_signing), at(1)).is_ok());
        assert!(verify(&app, &es256(claims.clone(), None, &any_signing), at(1)).is_ok());
        let reason = refused(&app, &es256(claims, None, &a_signing), at(1));
        assert!(reason.contains("InvalidSignature"), "{reason}");
    }

    #[test]
    fn audience_and_issuer_are_checked_only_when_the_app_sets_them() {
        let claims = |extra: serde_json::Value| {
            let mut claims = json!({"exp": 2000});
            claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            hs256(claims, "secret")
        };
        // Unset: neither claim is looked at, whatever it holds.
        for extra in [json!({}), json!({"aud": "other", "iss": "elsewhere"}), json!({"aud": 5, "iss": []})] {
            assert!(verify(&app(), &claims(extra.clone()), at(1)).is_ok(), "{extra}");
        }

        let mut strict = app();
        strict.token_audience = Some("plexus".into());
        strict.token_issuer = Some("https://idp.example".into());
        let iss = "https://idp.example";
        for good in [json!({"aud": "plexus", "iss": iss}), json!({"aud": ["billing", "plexus"], "iss": iss})]
        {
            assert!(verify(&strict, &claims(good.clone()), at(1)).is_ok(), "{good}");
        }
        for (bad, reason) in [
            // A token the same identity provider issued for another service, same key.
            (json!({"aud": "billing", "iss": iss}), "invalid token: aud does not name this app's audience"),
            (json!({"aud": ["billing"], "iss": iss}), "invalid token: aud does not name this app's audience"),
            (json!({"aud": [], "iss": iss}), "invalid token: aud does not name this app's audience"),
            (json!({"aud": "Plexus", "iss": iss}), "invalid token: aud does not name this app's audience"),
            (
                json!({"aud": {"plexus": true}, "iss": iss}),
                "invalid token: aud does not name this app's audience",
            ),
            (json!({"iss": iss}), "invalid token: aud is missing and this app requires one"),
            (json!({"aud": null, "iss": iss}), "invalid token: aud is missing and this app requires one"),
            (
                json!({"aud": "plexus", "iss": "https://other.example"}),
                "invalid token: iss is not this app's issuer",
            ),
            (
                json!({"aud": "plexus", "iss": ["https://idp.example"]}),
                "invalid token: iss is not this app's issuer",
            ),
            (json!({"aud": "plexus"}), "invalid token: iss is missing and this app requires one"),
        ] {
            assert_eq!(refused(&strict, &claims(bad.clone()), at(1)), reason, "{bad}");
        }
        // Each setting works alone.
        let mut audience_only = app();
        audience_only.token_audience = Some("plexus".into());
        assert!(verify(&audience_only, &claims(json!({"aud": "plexus"})), at(1)).is_ok());
        let mut issuer_only = app();
        issuer_only.token_issuer = Some(iss.into());
        assert!(verify(&issuer_only, &claims(json!({"iss": iss, "aud": "anything"})), at(1)).is_ok());
        assert!(refused(&issuer_only, &claims(json!({"aud": "plexus"})), at(1)).contains("iss"));
    }

    #[test]
    fn exp_and_nbf_far_in_the_future_are_clamped_not_overflowed() {
        // 2^64−1 used to panic in `UNIX_EPOCH + Duration::from_secs(exp)`.
        for exp in [u64::MAX, i64::MAX as u64, LATEST_SECS + 1] {
            let token = hs256(json!({"exp": exp}), "secret");
            let verified = verify(&app(), &token, at(1000)).unwrap();
            assert_eq!(verified.expires_at, at(LATEST_SECS), "exp {exp}");
            // The expiry timer's arithmetic, as `Admission::attach` does it.
            assert!(verified.expires_at.duration_since(SystemTime::now()).is_ok());
        }
        let exact = hs256(json!({"exp": LATEST_SECS}), "secret");
        assert_eq!(verify(&app(), &exact, at(1000)).unwrap().expires_at, at(LATEST_SECS));
        // An nbf that far out is still in the future, so the token is not valid yet.
        for nbf in [u64::MAX, i64::MAX as u64] {
            let token = hs256(json!({"exp": u64::MAX, "nbf": nbf}), "secret");
            assert!(refused(&app(), &token, at(1000)).contains("not valid yet"), "nbf {nbf}");
        }
    }
}
