//! Every signature the protocol uses: channel authorization, user sign-in, the HTTP API's request
//! signature and webhook signing. All are lowercase-hex HMAC-SHA256 with the app secret; every
//! check decodes the presented hex and compares in constant time (`Mac::verify_slice`).
//!
//! Strings to sign (digest §6.1, §9.1, §10.1):
//! - private / encrypted channel: `{socket_id}:{channel}`
//! - presence channel: `{socket_id}:{channel}:{channel_data}`
//! - user sign-in: `{socket_id}::user::{user_data}`
//! - HTTP API: `METHOD\nPATH\nsorted lower-cased decoded query without auth_signature`

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::limits::API_TIMESTAMP_WINDOW_SECS;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length")
}

/// Lowercase hex HMAC-SHA256 of `message` keyed with `secret`.
pub fn sign_hex(secret: &str, message: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(message);
    hex::encode(m.finalize().into_bytes())
}

/// Whether `signature_hex` is the HMAC of `message`, compared in constant time.
pub fn verify_hex(secret: &str, message: &[u8], signature_hex: &str) -> bool {
    let Ok(presented) = hex::decode(signature_hex) else {
        return false;
    };
    let mut m = mac(secret);
    m.update(message);
    m.verify_slice(&presented).is_ok()
}

/// String to sign for a channel subscription.
pub fn channel_string_to_sign(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// String to sign for a user sign-in.
pub fn user_string_to_sign(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// The `auth` token an app's auth endpoint returns: `{key}:{hex signature}`.
pub fn auth_token(key: &str, secret: &str, string_to_sign: &str) -> String {
    format!("{key}:{}", sign_hex(secret, string_to_sign.as_bytes()))
}

/// Checks an `auth` token: the key prefix must be this app's key and the signature must match.
pub fn verify_auth_token(key: &str, secret: &str, string_to_sign: &str, token: &str) -> bool {
    match token.split_once(':') {
        Some((presented_key, signature)) => {
            presented_key == key && verify_hex(secret, string_to_sign.as_bytes(), signature)
        }
        None => false,
    }
}

/// `X-Pusher-Signature` for a webhook body: HMAC of the exact bytes sent.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    sign_hex(secret, body)
}

/// Lowercase hex MD5 of a request body (`body_md5`).
pub fn md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The HTTP API's string to sign: method, raw path, then every query parameter but
/// `auth_signature`, keys lower-cased and sorted, values decoded.
pub fn api_string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    pairs.sort();
    let query = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    format!("{}\n{path}\n{query}", method.to_ascii_uppercase())
}

/// Why a signed HTTP API request was refused (each maps to 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiAuthError {
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    #[error("auth_key does not match the app")]
    WrongKey,
    #[error("unsupported auth_version {0:?}; expected 1.0")]
    WrongVersion(String),
    #[error("Timestamp expired: given timestamp ({given}) not within {API_TIMESTAMP_WINDOW_SECS}s of server time ({now})")]
    TimestampExpired { given: String, now: u64 },
    #[error("body_md5 does not match the MD5 of the request body")]
    BodyMd5Mismatch,
    #[error("Invalid signature: expected HMAC SHA256 hex digest of the string to sign")]
    InvalidSignature {
        /// The string we signed, for operators who enable debug echoing. Never the secret.
        string_to_sign: String,
    },
}

/// A signed HTTP API request, as received.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    pub method: &'a str,
    /// The raw request path (`/apps/{id}/...`), not percent-decoded.
    pub path: &'a str,
    /// Decoded query parameters, in the order received.
    pub params: &'a [(String, String)],
    pub body: &'a [u8],
}

impl ApiRequest<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Verifies the request against an app's key and secret at time `now_secs` (Unix seconds):
    /// the query ([`ApiRequest::verify_query`]), then the body against its MD5.
    pub fn verify(&self, key: &str, secret: &str, now_secs: u64) -> Result<(), ApiAuthError> {
        self.verify_query(key, secret, now_secs)?;
        self.verify_body()
    }

    /// Verifies everything the query carries — key, timestamp window, version and, in constant
    /// time, the signature — without looking at the body. The signature covers `body_md5`, so a
    /// server can authenticate a request before reading its body, then check the body with
    /// [`ApiRequest::verify_body`].
    pub fn verify_query(&self, key: &str, secret: &str, now_secs: u64) -> Result<(), ApiAuthError> {
        let auth_key = self.param("auth_key").ok_or(ApiAuthError::Missing("auth_key"))?;
        if auth_key != key {
            return Err(ApiAuthError::WrongKey);
        }
        let timestamp = self.param("auth_timestamp").ok_or(ApiAuthError::Missing("auth_timestamp"))?;
        let within =
            timestamp.parse::<u64>().is_ok_and(|t| t.abs_diff(now_secs) <= API_TIMESTAMP_WINDOW_SECS);
        if !within {
            return Err(ApiAuthError::TimestampExpired {
                given: timestamp.chars().take(20).collect(),
                now: now_secs,
            });
        }
        match self.param("auth_version") {
            Some("1.0") | None => {}
            Some(other) => return Err(ApiAuthError::WrongVersion(other.chars().take(20).collect())),
        }
        let signature = self.param("auth_signature").ok_or(ApiAuthError::Missing("auth_signature"))?;
        let string_to_sign = api_string_to_sign(self.method, self.path, self.params);
        if verify_hex(secret, string_to_sign.as_bytes(), signature) {
            Ok(())
        } else {
            Err(ApiAuthError::InvalidSignature { string_to_sign })
        }
    }

    /// Whether `body` is the one the signed query describes: its MD5 is `body_md5`, or there is
    /// no body and no `body_md5`.
    pub fn verify_body(&self) -> Result<(), ApiAuthError> {
        match self.param("body_md5") {
            Some(md5) if md5 != md5_hex(self.body) => Err(ApiAuthError::BodyMd5Mismatch),
            None if !self.body.is_empty() => Err(ApiAuthError::Missing("body_md5")),
            _ => Ok(()),
        }
    }
}

/// Builds the signed query string for an API request (used by our clients, the load generator
/// and tests; the Pusher SDKs do the same).
pub fn sign_api_query(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: u64,
    extra: &[(&str, &str)],
) -> String {
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), key.into()),
        ("auth_timestamp".into(), timestamp.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), md5_hex(body)));
    }
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let signature = sign_hex(secret, api_string_to_sign(method, path, &params).as_bytes());
    params.push(("auth_signature".into(), signature));
    params.iter().map(|(k, v)| format!("{k}={}", percent_encode_query(v))).collect::<Vec<_>>().join("&")
}

fn percent_encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The digest's §14 test vectors.
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const TS: u64 = 1353088179;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn v1_private_channel() {
        let sts = channel_string_to_sign("1234.1234", "private-foobar", None);
        assert_eq!(sts, "1234.1234:private-foobar");
        let token = auth_token(KEY, SECRET, &sts);
        assert_eq!(
            token,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(verify_auth_token(KEY, SECRET, &sts, &token));
    }

    #[test]
    fn v2_presence_channel() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let sts = channel_string_to_sign("1234.1234", "presence-foobar", Some(data));
        assert_eq!(sts, format!("1234.1234:presence-foobar:{data}"));
        assert_eq!(
            sign_hex(SECRET, sts.as_bytes()),
            "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
    }

    #[test]
    fn v3_and_v4_user_signin() {
        let sts = user_string_to_sign("1234.1234", r#"{"id":"12345"}"#);
        assert_eq!(sts, r#"1234.1234::user::{"id":"12345"}"#);
        assert_eq!(
            auth_token(KEY, SECRET, &sts),
            "278d425bdf160c739803:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
        let sts = user_string_to_sign(
            "1234.1234",
            r#"{"id":"12345","user_info":{"name":"Ann"},"watchlist":["7","8"]}"#,
        );
        assert_eq!(
            sign_hex(SECRET, sts.as_bytes()),
            "457903950ee8bf92facc2372905dd3625e3635904fdc107f0f6374b64ca49b4e"
        );
    }

    #[test]
    fn v5_presence_cache_string_user_id() {
        let sts = channel_string_to_sign(
            "123.456",
            "presence-cache-room",
            Some(r#"{"user_id":"42","user_info":{"name":"Ann"}}"#),
        );
        assert_eq!(
            sign_hex(SECRET, sts.as_bytes()),
            "c06f55e6780dd2904effd47a8eeab42691a4b999f6c91ec021978d87dbcd450f"
        );
    }

    #[test]
    fn v6_encrypted_channel_signature_and_shared_secret() {
        let sts = channel_string_to_sign("1234.1234", "private-encrypted-foobar", None);
        assert_eq!(
            sign_hex(SECRET, sts.as_bytes()),
            "e6a18892d037c5d5e76a2265df4f086ffc38631605530dfd214aa5bff495f533"
        );
        // The server never computes the shared secret, but the vector pins our understanding of it.
        use base64::Engine;
        let master: Vec<u8> = (0u8..32).collect();
        let mut h = sha2::Sha256::new();
        sha2::Digest::update(&mut h, b"private-encrypted-foobar");
        sha2::Digest::update(&mut h, &master);
        let secret = base64::engine::general_purpose::STANDARD.encode(sha2::Digest::finalize(h));
        assert_eq!(secret, "g3Au6SZ+UCU+IMfFsFva0rq+Gi4tzSHR6WCcWZbS9sY=");
    }

    #[test]
    fn wrong_key_prefix_or_garbage_tokens_fail() {
        let sts = "1234.1234:private-foobar";
        let sig = sign_hex(SECRET, sts.as_bytes());
        assert!(!verify_auth_token(KEY, SECRET, sts, &format!("otherkey:{sig}")));
        assert!(!verify_auth_token(KEY, SECRET, sts, &sig));
        assert!(!verify_auth_token(KEY, SECRET, sts, &format!("{KEY}:zz")));
        assert!(!verify_auth_token(KEY, SECRET, sts, ""));
        assert!(!verify_auth_token(KEY, SECRET, "1234.1234:private-other", &format!("{KEY}:{sig}")));
    }

    #[test]
    fn v7_trigger() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body), "ec365a775a4cd0599faeb73354201b6f");
        let p = params(&[
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
        ]);
        let sts = api_string_to_sign("POST", "/apps/3/events", &p);
        assert_eq!(sts, "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f");
        let sig = sign_hex(SECRET, sts.as_bytes());
        assert_eq!(sig, "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c");
        let mut signed = p.clone();
        signed.push(("auth_signature".into(), sig));
        let req = ApiRequest { method: "POST", path: "/apps/3/events", params: &signed, body };
        assert_eq!(req.verify(KEY, SECRET, TS + 10), Ok(()));
    }

    #[test]
    fn v8_v9_v10_queries() {
        let base = [("auth_key", KEY), ("auth_timestamp", "1353088179"), ("auth_version", "1.0")];
        let with = |extra: &[(&str, &str)]| {
            let mut p = params(&base);
            p.extend(params(extra));
            p
        };
        let sts = api_string_to_sign(
            "GET",
            "/apps/3/channels",
            &with(&[("filter_by_prefix", "presence-"), ("info", "user_count")]),
        );
        assert_eq!(
            sign_hex(SECRET, sts.as_bytes()),
            "16819168891cb5dfd72b5c7a5d3d602605b26c6ba1930033b5e2eeeb65010291"
        );
        let sts = api_string_to_sign(
            "GET",
            "/apps/3/channels/presence-foobar",
            &with(&[("info", "user_count,subscription_count")]),
        );
        assert_eq!(
            sign_hex(SECRET, sts.as_bytes()),
            "377ee9260ea002a70c0d40cd887d55cb36db9f7f821297f5efacbcce66be356d"
        );
        let sts = api_string_to_sign("GET", "/apps/3/channels/presence-foobar/users", &with(&[]));
        assert_eq!(
            sign_hex(SECRET, sts.as_bytes()),
            "5567dd30e7f8575e66be615d2aac3f608a0c311c31ddab8513a278b022e9597e"
        );
    }

    #[test]
    fn v11_v12_bodies() {
        assert_eq!(md5_hex(b"{}"), "99914b932bd37a50b983c5e7c90ae93b");
        let p = params(&[
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "99914b932bd37a50b983c5e7c90ae93b"),
        ]);
        let sts = api_string_to_sign("POST", "/apps/3/users/user-42/terminate_connections", &p);
        assert_eq!(
            sign_hex(SECRET, sts.as_bytes()),
            "b015dc6fb54a3d4c2a53d561518acc77cc56e706d12995c620722cdc549fcdba"
        );
        let body = br#"{"batch":[{"channel":"a","name":"e1","data":"{}"},{"channel":"b","name":"e2","data":"{}","info":"subscription_count"}]}"#;
        assert_eq!(md5_hex(body), "2a7845c0b501334b0ce7bfeb164b520c");
        let p = params(&[
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "2a7845c0b501334b0ce7bfeb164b520c"),
        ]);
        let sts = api_string_to_sign("POST", "/apps/3/batch_events", &p);
        assert_eq!(
            sign_hex(SECRET, sts.as_bytes()),
            "1fa018360e814e51fb36d1b6b7388ae78dcf87915e675ba4aedd74b3ca0714f1"
        );
    }

    #[test]
    fn v13_webhook() {
        let body =
            br#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"test_channel"}]}"#;
        assert_eq!(
            webhook_signature(SECRET, body),
            "709fdb84c03664445f7698120b0edf0acc1ab1c8c6e93a0368c61841d6b998aa"
        );
    }

    fn signed(method: &str, path: &str, body: &[u8], ts: u64) -> Vec<(String, String)> {
        let query =
            sign_api_query(KEY, SECRET, method, path, body, ts, &[("info", "user_count,subscription_count")]);
        form_pairs(&query)
    }

    fn form_pairs(query: &str) -> Vec<(String, String)> {
        query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.replace("%2C", ","))
            })
            .collect()
    }

    #[test]
    fn v14_timestamp_outside_600s_is_rejected_and_inside_accepted() {
        let p = signed("GET", "/apps/3/channels", b"", TS);
        let req = ApiRequest { method: "GET", path: "/apps/3/channels", params: &p, body: b"" };
        assert_eq!(req.verify(KEY, SECRET, TS + 600), Ok(()));
        assert!(matches!(req.verify(KEY, SECRET, TS + 601), Err(ApiAuthError::TimestampExpired { .. })));
        assert!(matches!(req.verify(KEY, SECRET, TS - 601), Err(ApiAuthError::TimestampExpired { .. })));
    }

    #[test]
    fn tampered_body_path_or_key_is_rejected() {
        let body = br#"{"name":"a"}"#;
        let p = signed("POST", "/apps/3/events", body, TS);
        let ok = ApiRequest { method: "POST", path: "/apps/3/events", params: &p, body };
        assert_eq!(ok.verify(KEY, SECRET, TS), Ok(()));
        let other_body = ApiRequest { body: br#"{"name":"b"}"#, ..ok };
        assert_eq!(other_body.verify(KEY, SECRET, TS), Err(ApiAuthError::BodyMd5Mismatch));
        let other_path = ApiRequest { path: "/apps/4/events", ..ok };
        assert!(matches!(other_path.verify(KEY, SECRET, TS), Err(ApiAuthError::InvalidSignature { .. })));
        assert_eq!(ok.verify("another-key", SECRET, TS), Err(ApiAuthError::WrongKey));
        assert!(matches!(ok.verify(KEY, "wrong-secret", TS), Err(ApiAuthError::InvalidSignature { .. })));
    }

    #[test]
    fn body_md5_on_an_empty_get_body_is_accepted_like_pusher_http_python_sends_it() {
        let p = signed("GET", "/apps/3/channels", b"", TS);
        let mut with_md5: Vec<(String, String)> =
            p.iter().filter(|(k, _)| k != "auth_signature").cloned().collect();
        with_md5.push(("body_md5".into(), md5_hex(b"")));
        let sig = sign_hex(SECRET, api_string_to_sign("GET", "/apps/3/channels", &with_md5).as_bytes());
        with_md5.push(("auth_signature".into(), sig));
        let req = ApiRequest { method: "GET", path: "/apps/3/channels", params: &with_md5, body: b"" };
        assert_eq!(req.verify(KEY, SECRET, TS), Ok(()));
    }
}
