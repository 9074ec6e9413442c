//! What a [`Client`](crate::Client) and its streams are configured with.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::Filter;

/// How to reach the server and how to present ourselves to it.
///
/// ```
/// use std::time::Duration;
/// use plexus_realtime_client::{Backoff, ClientOptions, Credentials};
///
/// let options = ClientOptions::new("ws://127.0.0.1:6001", "app-key")
///     .credentials(Credentials::api_key("sk_live_…"))
///     .backoff(Backoff { initial: Duration::from_millis(500), ..Backoff::default() });
/// # let _ = options;
/// ```
///
/// or as a struct, with [`Default`] (the development server: `ws://127.0.0.1:6001`, app key
/// `app-key`) for what is left out:
///
/// ```
/// use plexus_realtime_client::{ClientOptions, Credentials};
///
/// let options = ClientOptions {
///     url: "ws://127.0.0.1:6001".into(),
///     app_key: "app-key".into(),
///     credentials: Credentials::api_key("sk_live_…"),
///     ..ClientOptions::default()
/// };
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server: `ws://host:port` (`http://` is taken as `ws://`). `wss://` needs TLS, which
    /// this crate is built without: put a TLS-terminating proxy in front or use plain `ws://`.
    pub url: String,
    /// The app's key (`/app/{app_key}` in the connection URL).
    pub app_key: String,
    /// Sent as `?api_key=` or `?token=`, as the TypeScript client sends them.
    pub credentials: Credentials,
    /// Reconnect delays; [`EventsOptions::backoff`] overrides it per stream.
    pub backoff: Backoff,
    /// Silence after which we ping the server: the smaller of this and the server's
    /// `activity_timeout`. Default `None`: the server's.
    pub activity_timeout: Option<Duration>,
    /// How long to wait for any frame after our ping before taking the connection for dead, and
    /// for a connection attempt (TCP and the WebSocket upgrade). Default 30 s.
    pub pong_timeout: Duration,
}

impl Default for ClientOptions {
    /// The development server (`plexus serve` without a config): `ws://127.0.0.1:6001`, `app-key`.
    fn default() -> Self {
        ClientOptions::new("ws://127.0.0.1:6001", "app-key")
    }
}

impl ClientOptions {
    /// Options for the app `app_key` at `url`, without credentials, with the default backoff
    /// and timeouts.
    pub fn new(url: impl Into<String>, app_key: impl Into<String>) -> Self {
        ClientOptions {
            url: url.into(),
            app_key: app_key.into(),
            credentials: Credentials::None,
            backoff: Backoff::default(),
            activity_timeout: None,
            pong_timeout: Duration::from_secs(30),
        }
    }

    /// Sets [`ClientOptions::credentials`].
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Sets [`ClientOptions::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`ClientOptions::activity_timeout`].
    pub fn activity_timeout(mut self, timeout: Duration) -> Self {
        self.activity_timeout = Some(timeout);
        self
    }

    /// Sets [`ClientOptions::pong_timeout`].
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = timeout;
        self
    }
}

/// How a connection proves it may read: an app with `[[apps.api_keys]]` or tokens enabled
/// refuses connections without one (HTTP 401 at the upgrade).
#[derive(Clone, Default)]
pub enum Credentials {
    /// Nothing: public channels of an app that needs no credentials.
    #[default]
    None,
    /// An API key, sent as `?api_key=`.
    ApiKey(String),
    /// A signed token (JWT), sent as `?token=`.
    Token(String),
    /// A function asked for a fresh token before every connection attempt. With it, a close with
    /// 4009 (token expired, revoked) and an upgrade refused with 401 or 403 are reasons to fetch
    /// a new token and reconnect (after a backoff) rather than final.
    TokenFn(TokenFn),
}

impl Credentials {
    /// [`Credentials::ApiKey`].
    pub fn api_key(key: impl Into<String>) -> Self {
        Credentials::ApiKey(key.into())
    }

    /// [`Credentials::Token`].
    pub fn token(token: impl Into<String>) -> Self {
        Credentials::Token(token.into())
    }

    /// [`Credentials::TokenFn`] from an async function:
    ///
    /// ```
    /// use plexus_realtime_client::Credentials;
    ///
    /// async fn fetch_token() -> Result<String, std::io::Error> {
    ///     Ok("eyJ…".to_owned())
    /// }
    /// let credentials = Credentials::token_fn(fetch_token);
    /// # let _ = credentials;
    /// ```
    pub fn token_fn<F, Fut, E>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        Credentials::TokenFn(TokenFn::new(fetch))
    }
}

impl fmt::Debug for Credentials {
    /// Secrets are not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::TokenFn(_) => f.write_str("TokenFn(..)"),
        }
    }
}

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// An async function that returns a fresh token; see [`Credentials::token_fn`].
#[derive(Clone)]
pub struct TokenFn(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenFn {
    /// Wraps `fetch`; its error is reported as [`Error::Token`](crate::Error::Token).
    pub fn new<F, Fut, E>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        TokenFn(Arc::new(move || {
            let future = fetch();
            Box::pin(async move { future.await.map_err(|e| e.to_string()) })
        }))
    }

    pub(crate) async fn fetch(&self) -> Result<String, String> {
        (self.0)().await
    }
}

impl fmt::Debug for TokenFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenFn(..)")
    }
}

/// Reconnect delays: `initial` doubling up to `max` (1, 2, 4, 8, 16, 30, 30 … s by default),
/// starting over once a connection is established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay. Default 1 s.
    pub initial: Duration,
    /// The largest delay. Default 30 s.
    pub max: Duration,
    /// Draw each delay from the upper half of its ceiling (`ceiling / 2 ..= ceiling`), so a
    /// crowd of clients spreads out. Default `true`; `false` waits exactly the ceilings.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(30), jitter: true }
    }
}

impl Backoff {
    /// The ceiling of the delay before reconnect attempt `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(30);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before reconnect attempt `attempt` (0-based): the ceiling, or with `jitter` a
    /// draw from its upper half. `random` is in `[0, 1)`.
    pub(crate) fn delay(&self, attempt: u32, random: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        if self.jitter {
            ceiling.mul_f64(0.5 + random.clamp(0.0, 1.0) / 2.0)
        } else {
            ceiling
        }
    }
}

/// A uniform draw from `[0, 1)` from the OS generator (the upper end if it fails).
pub(crate) fn random_unit() -> f64 {
    match getrandom::u64() {
        Ok(bits) => (bits >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 1.0,
    }
}

/// What one [`EventStream`](crate::EventStream) reads.
///
/// ```
/// use plexus_realtime_client::{EventsOptions, Filter};
///
/// let options = EventsOptions::new(["instance-inst_1"])
///     .filters(Filter::new().events(["message.received"]).where_eq("chat.id", "c1"));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
pub struct EventsOptions {
    /// The channels to subscribe, in order (duplicates are ignored). At least one.
    pub channels: Vec<String>,
    /// Sent with every subscription; the stream also checks it itself (README "Server-side
    /// filters").
    pub filters: Option<Filter>,
    /// Overrides [`ClientOptions::backoff`] for this stream.
    pub backoff: Option<Backoff>,
}

impl EventsOptions {
    /// A stream of `channels`, unfiltered.
    pub fn new<I, S>(channels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EventsOptions {
            channels: channels.into_iter().map(Into::into).collect(),
            filters: None,
            backoff: None,
        }
    }

    /// Sets [`EventsOptions::filters`].
    pub fn filters(mut self, filter: Filter) -> Self {
        self.filters = Some(filter);
        self
    }

    /// Sets [`EventsOptions::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_backoff_doubles_to_30_seconds() {
        let backoff = Backoff { jitter: false, ..Backoff::default() };
        let secs: Vec<u64> = (0..8).map(|n| backoff.delay(n, 0.3).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_draws_from_the_upper_half() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(backoff.delay(2, 0.5), Duration::from_secs(3));
        assert!(backoff.delay(2, 0.999_999) <= Duration::from_secs(4));
        let r = random_unit();
        assert!((0.0..=1.0).contains(&r));
    }
}
