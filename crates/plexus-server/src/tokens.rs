//! Signed tokens (JWT) as connection credentials: HS256 signed with the app secret
//! (`enable_tokens`), RS256 / ES256 verified with the app's `[[apps.token_keys]]`.
//!
//! A token must carry `exp`; it may carry `nbf`, `sub` (the user id, shown in logs), `channels`
//! (patterns the connection may subscribe to; none means no channel) and `scopes` (as an API
//! key's). Other claims (`iat`, `iss`, `aud`, …) are accepted and ignored. There is no clock
//! leeway: a token is valid until its `exp` second, and the server closes a connection opened
//! with it at that moment.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Verifies `token` for `app` at `now`; the error is the reason a client is told.
pub fn verify(app: &App, token: &str, now: SystemTime) -> Result<VerifiedToken, String> {
    if !app.accepts_tokens() {
        return Err("this app does not accept tokens".into());
    }
    let header = decode_header(token).map_err(|e| format!("invalid token: {e}"))?;
    let key = match header.alg {
        Algorithm::HS256 if app.enable_tokens => DecodingKey::from_secret(app.secret.as_bytes()),
        Algorithm::HS256 => return Err("invalid token: HS256 tokens are not enabled for this app".into()),
        Algorithm::RS256 | Algorithm::ES256 => {
            let name = if header.alg == Algorithm::RS256 { "RS256" } else { "ES256" };
            let configured = app
                .token_keys
                .iter()
                .filter(|k| k.algorithm.eq_ignore_ascii_case(name))
                .find(|k| k.kid.is_none() || k.kid == header.kid)
                .ok_or_else(|| format!("invalid token: no {name} key configured for it"))?;
            let pem = configured.public_key.as_bytes();
            let parsed = if header.alg == Algorithm::RS256 {
                DecodingKey::from_rsa_pem(pem)
            } else {
                DecodingKey::from_ec_pem(pem)
            };
            parsed.map_err(|e| format!("invalid token: the configured {name} key is unusable: {e}"))?
        }
        other => return Err(format!("invalid token: algorithm {other:?} is not accepted")),
    };
    let mut validation = Validation::new(header.alg);
    validation.leeway = 0;
    validation.validate_aud = false;
    // Expiry is checked below against `now`, so tests and the revocation sweep share one clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims = ["exp".to_owned()].into_iter().collect();
    let data =
        decode::<serde_json::Value>(token, &key, &validation).map_err(|e| format!("invalid token: {e}"))?;
    let nbf = data.claims.get("nbf").and_then(serde_json::Value::as_u64);
    let claims: Claims =
        serde_json::from_value(data.claims).map_err(|e| format!("invalid token claims: {e}"))?;
    let seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if claims.exp <= seconds {
        return Err("token expired".into());
    }
    if nbf.is_some_and(|nbf| nbf > seconds) {
        return Err("token not valid yet (nbf is in the future)".into());
    }
    Ok(VerifiedToken {
        user_id: claims.sub,
        grant: Grant { source: "the token", scopes: claims.scopes, channels: claims.channels },
        expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
    })
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
    use serde_json::json;

    fn app() -> App {
        let mut app = App::new("1", "key", "secret");
        app.enable_tokens = true;
        app
    }

    fn hs256(claims: serde_json::Value, secret: &str) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
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
        assert_eq!(verify(&app(), &token, at(2000)).unwrap_err(), "token expired");
    }

    #[test]
    fn refusals_name_the_reason() {
        let good = hs256(json!({"exp": 2000}), "secret");
        let mut no_tokens = app();
        no_tokens.enable_tokens = false;
        assert_eq!(verify(&no_tokens, &good, at(1)).unwrap_err(), "this app does not accept tokens");
        let forged = hs256(json!({"exp": 2000}), "other-secret");
        assert!(verify(&app(), &forged, at(1)).unwrap_err().contains("invalid token"));
        let no_exp = hs256(json!({"sub": "u"}), "secret");
        assert!(verify(&app(), &no_exp, at(1)).unwrap_err().contains("exp"));
        let early = hs256(json!({"exp": 2000, "nbf": 1500}), "secret");
        assert!(verify(&app(), &early, at(1000)).unwrap_err().contains("not valid yet"));
        assert!(verify(&app(), "eyJ.not.atoken", at(1)).unwrap_err().contains("invalid token"));
        assert!(!looks_like_token("sk_live_123") && !looks_like_token("a.b.c"));
    }
}
