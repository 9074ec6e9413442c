//! The attacks. Each attacker is given one attack and repeats it until the phase ends, so every
//! attack runs all the time, from several clients at once. What the server did each time is
//! tallied by outcome (`http_401`, `close_1002`, `reset`, `held_open`, …) with the time it took
//! to react.
//!
//! Attackers hold app A's public key (it is in every web page) or nothing; they never see A's or
//! B's secret. Attacks that need a signature are run as a *tenant*: the owner of another app on
//! the same server (`--tenant`, `--token-tenant`), who holds that app's secret and uses it to
//! hurt the other tenants. They are skipped (and reported as skipped) without those flags.
//!
//! Every wait ends: quick attacks within [`QUICK`], holding attacks at `--hold-secs` (or the
//! phase's end).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use plexus_protocol::signature::{md5_hex, sign_hex};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::raw::{connect, head_status, hold, io_outcome, read_status, request, Reaction};
use crate::http::{parse_response, HttpConn, Signer};
use crate::pusher::{answer_ping, error_reason, event_name, Session};
use crate::rbuf::ReadBuf;
use crate::stats::{Errors, Latencies};
use crate::target::Target;
use crate::ws::{Flow, WsConn, WsError};

/// Longest wait for a quick attack's answer.
pub const QUICK: Duration = Duration::from_secs(5);
/// Marker put after `%0A` in URLs: a server log line starting with it was forged.
pub const FORGED_MARKER: &str = "PLEXUS_BENCH_FORGED_LOG_LINE";

/// What an attack needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing but the server's address.
    Nothing,
    /// App A's public key (or id).
    PublicKey,
    /// Its own app on the server, secret included (`--tenant`).
    Tenant,
    /// Its own app that accepts HS256 tokens (`--token-tenant`).
    TokenTenant,
}

impl Needs {
    fn name(self) -> &'static str {
        match self {
            Needs::Nothing => "nothing",
            Needs::PublicKey => "a_public_key",
            Needs::Tenant => "tenant_secret",
            Needs::TokenTenant => "token_tenant_secret",
        }
    }
}

macro_rules! attacks {
    ($($variant:ident $name:literal $needs:ident $expect:literal;)*) => {
        /// Every attack.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Attack { $($variant),* }

        impl Attack {
            pub const ALL: &'static [Attack] = &[$(Attack::$variant),*];

            pub fn name(self) -> &'static str {
                match self { $(Attack::$variant => $name),* }
            }

            pub fn needs(self) -> Needs {
                match self { $(Attack::$variant => Needs::$needs),* }
            }

            /// What a hardened server does.
            pub fn expect(self) -> &'static str {
                match self { $(Attack::$variant => $expect),* }
            }
        }
    };
}

attacks! {
    WsFragmentLen2e64 "ws_fragment_len_2e64" PublicKey "close 1002 (64-bit length with the top bit set), at once";
    WsClose999 "ws_close_999" PublicKey "close 1002 (999 is not a valid close code)";
    WsClose1005 "ws_close_1005" PublicKey "close 1002 (1005 must never be sent)";
    WsClose1006 "ws_close_1006" PublicKey "close 1002 (1006 must never be sent)";
    WsClose5000 "ws_close_5000" PublicKey "close 1002 (5000 is outside 1000-4999)";
    WsBadVersion "ws_bad_version" PublicKey "426 with Sec-WebSocket-Version: 13 (or 400)";
    WsBadKey "ws_bad_key" PublicKey "400 (the key is not 16 bytes of base64)";
    TcpIdle "tcp_idle" Nothing "closed by the server after a short idle timeout";
    SlowHeadersApi "slow_headers_api" Nothing "closed (or 408) after a header read timeout";
    SlowHeadersWs "slow_headers_ws" PublicKey "closed (or 408) after a header read timeout";
    ApiUnsigned "api_unsigned" PublicKey "401, without spending app A's API rate limit";
    ApiBadSignature "api_bad_signature" PublicKey "401, without spending app A's API rate limit";
    SsePrivateNoKey "sse_private_no_key" PublicKey "401/403, no stream";
    SsePrivateWithKey "sse_private_with_key" PublicKey "401/403, no stream (the public key is no credential)";
    ChannelHoard "channel_hoard" PublicKey "a per-connection channel limit refuses further subscriptions";
    ChannelChurn "channel_churn" PublicKey "throttled; app B's webhooks unaffected";
    Body1MibUnknownApp "body_1mib_unknown_app" Nothing "404 before the last byte";
    Body1MibAppA "body_1mib_app_a" PublicKey "401 or 413 before the last byte (or a body timeout)";
    Expect100UnknownApp "expect_100_unknown_app" Nothing "404 or 417, never 100 Continue";
    ClientEventCrlf "client_event_crlf" Tenant "pusher:error 4301: event names with CR/LF refused";
    ApiEventCrlfSse "api_event_crlf_sse" Tenant "400 for a name with CR/LF; no forged SSE field";
    SseStalledReader "sse_stalled_reader" Nothing "dropped (plexus:closed 4100) once max_queued_bytes behind";
    SseStalledTenant "sse_stalled_tenant" Tenant "dropped (plexus:closed 4100) once max_queued_bytes behind, memory bounded";
    CacheFlood "cache_flood" Tenant "bounded cache memory (entries capped or refused)";
    LogForgingKey "log_forging_key" PublicKey "4001/404 and no forged log line";
    HttpNoHost "http_no_host" Nothing "400 (HTTP/1.1 requires Host)";
    HttpTwoHosts "http_two_hosts" Nothing "400 (two Host headers)";
    PresenceBigIds "presence_big_ids" Tenant "ids kept exact (or refused), never merged";
    JwtExpMax "jwt_exp_max" TokenTenant "401 or a capped expiry, never a crash";
}

/// One attack's tally.
#[derive(Debug, Default)]
pub struct Tally {
    pub runs: u64,
    pub outcomes: Errors,
    /// How long the server took to react, when it did.
    pub reaction: Latencies,
    /// Attack-specific sums (channels subscribed, bytes, …).
    pub counters: BTreeMap<&'static str, u64>,
    /// Attack-specific maxima.
    pub maxima: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn react(&mut self, (outcome, reaction): Reaction) {
        self.outcomes.add(outcome);
        if let Some(d) = reaction {
            self.reaction.record(d);
        }
    }

    fn count(&mut self, name: &'static str, n: u64) {
        *self.counters.entry(name).or_default() += n;
    }

    fn max(&mut self, name: &'static str, n: u64) {
        let m = self.maxima.entry(name).or_default();
        *m = (*m).max(n);
    }

    pub fn merge(&mut self, other: Tally) {
        self.runs += other.runs;
        self.outcomes.merge(other.outcomes);
        self.reaction.merge(other.reaction);
        for (k, v) in other.counters {
            *self.counters.entry(k).or_default() += v;
        }
        for (k, v) in other.maxima {
            self.max(k, v);
        }
    }

    pub fn into_json(self, attack: Attack, attackers: usize) -> Value {
        let reaction = self.reaction.summary();
        json!({
            "needs": attack.needs().name(),
            "expect": attack.expect(),
            "attackers": attackers,
            "runs": self.runs,
            "outcomes": self.outcomes.to_json(),
            "reaction_ms": {"samples": reaction["samples"], "p50": reaction["p50"], "p99": reaction["p99"], "max": reaction["max"]},
            "counters": self.counters,
            "maxima": self.maxima,
        })
    }
}

/// Everything attackers know and how hard they push.
#[derive(Debug)]
pub struct AttackEnv {
    pub addr: SocketAddr,
    pub host: String,
    /// App A as the attacker knows it: id and key, no secret.
    pub a: Target,
    pub tenant: Option<Target>,
    pub token_tenant: Option<Target>,
    /// A's honest channels (public names, as any page shows them).
    pub honest_channels: Vec<String>,
    pub sources: Vec<IpAddr>,
    pub hold: Duration,
    pub trickle: Duration,
    pub slow_sockets: usize,
    pub pause: Duration,
    pub api_burst: usize,
    pub hoard_cap: usize,
    pub churn_ops: usize,
    pub phase_end: Instant,
}

impl AttackEnv {
    /// Whether `attack` can run with what was given.
    pub fn can_run(&self, attack: Attack) -> bool {
        match attack.needs() {
            Needs::Nothing | Needs::PublicKey => true,
            Needs::Tenant => self.tenant.is_some(),
            Needs::TokenTenant => self.token_tenant.is_some(),
        }
    }
}

/// Runs `attack` over and over until the phase ends.
pub async fn attacker(env: Arc<AttackEnv>, index: usize, attack: Attack) -> Tally {
    let mut tally = Tally::default();
    let source = Some(env.sources[index % env.sources.len()]);
    let mut seq = 0u64;
    // Stagger the attackers of one attack.
    tokio::time::sleep(Duration::from_millis((index as u64 * 13) % 250)).await;
    while Instant::now() + Duration::from_millis(100) < env.phase_end {
        let id = Run { index, seq, source };
        run_once(&env, attack, id, &mut tally).await;
        tally.runs += 1;
        seq += 1;
        let pause_until = (Instant::now() + env.pause).min(env.phase_end);
        tokio::time::sleep_until(pause_until.into()).await;
    }
    tally
}

/// Which run this is: names stay unique across attackers and runs.
#[derive(Debug, Clone, Copy)]
struct Run {
    index: usize,
    seq: u64,
    source: Option<IpAddr>,
}

impl Run {
    fn tag(&self) -> String {
        format!("{}-{}", self.index, self.seq)
    }

    fn seed(&self) -> u32 {
        (self.index as u32).wrapping_mul(2_654_435_761) ^ (self.seq as u32)
    }
}

async fn run_once(env: &Arc<AttackEnv>, attack: Attack, run: Run, t: &mut Tally) {
    let quick = (Instant::now() + QUICK).min(env.phase_end + QUICK);
    let hold_until = (Instant::now() + env.hold).min(env.phase_end);
    match attack {
        Attack::WsFragmentLen2e64 => {
            let mut frames = masked(false, 0x1, b"x");
            frames.extend_from_slice(&[0x80, 0xFF]);
            frames.extend_from_slice(&u64::MAX.to_be_bytes());
            frames.extend_from_slice(&[0, 0, 0, 0]);
            frames.extend_from_slice(&[b'y'; 4096]);
            ws_send_and_watch(env, run, &frames, quick, t).await;
        }
        Attack::WsClose999 => ws_close(env, run, 999, quick, t).await,
        Attack::WsClose1005 => ws_close(env, run, 1005, quick, t).await,
        Attack::WsClose1006 => ws_close(env, run, 1006, quick, t).await,
        Attack::WsClose5000 => ws_close(env, run, 5000, quick, t).await,
        Attack::WsBadVersion => {
            let req = upgrade_request(&env.a.ws_path(), &env.host, "dGhlIHNhbXBsZSBub25jZQ==", "8", "");
            t.react(request(env.addr, run.source, req.as_bytes(), quick).await);
        }
        Attack::WsBadKey => {
            let req = upgrade_request(&env.a.ws_path(), &env.host, "not a key!", "13", "");
            t.react(request(env.addr, run.source, req.as_bytes(), quick).await);
        }
        Attack::TcpIdle => {
            hold_many(env, run, hold_until, t, |_| Vec::new(), None).await;
        }
        Attack::SlowHeadersApi => {
            let first = format!("POST /apps/{}/events HTTP/1.1\r\n", env.a.app_id);
            hold_many(env, run, hold_until, t, move |_| first.clone().into_bytes(), Some(env.trickle)).await;
        }
        Attack::SlowHeadersWs => {
            let first = format!("GET {} HTTP/1.1\r\n", env.a.ws_path());
            hold_many(env, run, hold_until, t, move |_| first.clone().into_bytes(), Some(env.trickle)).await;
        }
        Attack::ApiUnsigned => {
            let path = format!("/apps/{}/events", env.a.app_id);
            api_burst(env, run, &path, "", quick, t).await;
        }
        Attack::ApiBadSignature => {
            let path = format!("/apps/{}/events", env.a.app_id);
            let query = format!(
                "?auth_key={}&auth_timestamp={}&auth_version=1.0&body_md5={}&auth_signature={}",
                env.a.key,
                unix_secs(),
                md5_hex(API_BODY.as_bytes()),
                "0".repeat(64)
            );
            api_burst(env, run, &path, &query, quick, t).await;
        }
        Attack::SsePrivateNoKey | Attack::SsePrivateWithKey => {
            let mut path = format!("/apps/{}/events/stream?channels=private-x,presence-y", env.a.app_id);
            let mut extra = String::new();
            if attack == Attack::SsePrivateWithKey {
                // Alternately as a query parameter and as a bearer credential.
                if run.seq.is_multiple_of(2) {
                    path.push_str(&format!("&api_key={}", env.a.key));
                } else {
                    extra = format!("Authorization: Bearer {}\r\n", env.a.key);
                }
            }
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{extra}\r\n",
                env.host
            );
            t.react(request(env.addr, run.source, req.as_bytes(), quick).await);
        }
        Attack::ChannelHoard => channel_hoard(env, run, hold_until, t).await,
        Attack::ChannelChurn => channel_churn(env, run, quick, t).await,
        Attack::Body1MibUnknownApp => {
            body_withheld(env, run, "/apps/no-such-app/events", hold_until, t).await
        }
        Attack::Body1MibAppA => {
            let path = format!("/apps/{}/events", env.a.app_id);
            body_withheld(env, run, &path, hold_until, t).await;
        }
        Attack::Expect100UnknownApp => {
            let req = format!(
                "POST /apps/no-such-app/events HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: 1048576\r\nExpect: 100-continue\r\n\r\n",
                env.host
            );
            t.react(request(env.addr, run.source, req.as_bytes(), quick).await);
        }
        Attack::ClientEventCrlf => client_event_crlf(env, run, quick, t).await,
        Attack::ApiEventCrlfSse => api_event_crlf_sse(env, run, quick, t).await,
        Attack::SseStalledReader => sse_stalled(env, run, t).await,
        Attack::SseStalledTenant => sse_stalled_tenant(env, run, t).await,
        Attack::CacheFlood => cache_flood(env, run, quick, t).await,
        Attack::LogForgingKey => {
            if run.seq.is_multiple_of(2) {
                let path = format!("/app/{}%0A{FORGED_MARKER}%20via%20ws%20key?protocol=7", env.a.key);
                let conn = WsConn::connect(env.addr, run.source, &env.host, &path, run.seed(), 4096, false);
                match tokio::time::timeout_at(quick.into(), conn).await {
                    Ok(Ok(mut ws)) => {
                        let started = Instant::now();
                        t.react(ws_reaction(&mut ws, started, quick).await);
                    }
                    Ok(Err(e)) => t.react((format!("upgrade_{}", e.reason()), None)),
                    Err(_) => t.react(("no_response".into(), None)),
                }
            } else {
                let req = format!(
                    "GET /apps/{}%0A{FORGED_MARKER}%20via%20api%20path/channels HTTP/1.1\r\nHost: {}\r\n\r\n",
                    env.a.app_id, env.host
                );
                t.react(request(env.addr, run.source, req.as_bytes(), quick).await);
            }
        }
        Attack::HttpNoHost => {
            t.react(request(env.addr, run.source, b"GET /health HTTP/1.1\r\n\r\n", quick).await);
        }
        Attack::HttpTwoHosts => {
            let req = b"GET /health HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n";
            t.react(request(env.addr, run.source, req, quick).await);
        }
        Attack::PresenceBigIds => presence_big_ids(env, run, quick, t).await,
        Attack::JwtExpMax => jwt_exp_max(env, run, quick, t).await,
    }
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A client frame with an all-zero mask (valid, and the payload stays readable).
fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

fn upgrade_request(path: &str, host: &str, key: &str, version: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    )
}

/// Reads from an open WebSocket until the server closes it (`close_1002`), hangs up (`eof`,
/// `reset`) or `until` passes (`no_reaction`); pings are answered.
async fn ws_reaction(ws: &mut WsConn, started: Instant, until: Instant) -> Reaction {
    loop {
        let drained = ws.drain(|text, out| {
            answer_ping(text, out);
            Flow::Continue
        });
        let failure = match drained {
            Ok(()) => match tokio::time::timeout_at(until.into(), ws.fill()).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => return ("no_reaction".into(), None),
            },
            Err(e) => e,
        };
        let outcome = match failure {
            WsError::Closed(Some(code)) => format!("close_{code}"),
            WsError::Closed(None) => "close_without_code".into(),
            WsError::Eof => "eof".into(),
            WsError::Io(e) => io_outcome(&e),
            other => format!("server_{}", other.reason()),
        };
        return (outcome, Some(started.elapsed()));
    }
}

/// Opens a Pusher connection to A, writes `bytes` raw and watches the reaction.
async fn ws_send_and_watch(env: &AttackEnv, run: Run, bytes: &[u8], until: Instant, t: &mut Tally) {
    let mut s = match Session::open(&env.a, run.source, run.seed(), 4096, until).await {
        Ok(s) => s,
        Err(reason) => return t.react((format!("setup_{reason}"), None)),
    };
    let started = Instant::now();
    if let Err(e) = s.ws.write_raw(bytes).await {
        return t.react((format!("write_{}", e.reason()), Some(started.elapsed())));
    }
    t.react(ws_reaction(&mut s.ws, started, until).await);
}

async fn ws_close(env: &AttackEnv, run: Run, code: u16, until: Instant, t: &mut Tally) {
    ws_send_and_watch(env, run, &masked(true, 0x8, &code.to_be_bytes()), until, t).await;
}

/// Opens `--slow-sockets` connections, writes `first` on each (if any), then holds them,
/// trickling a header line every `trickle`.
async fn hold_many(
    env: &Arc<AttackEnv>,
    run: Run,
    until: Instant,
    t: &mut Tally,
    first: impl Fn(usize) -> Vec<u8>,
    trickle: Option<Duration>,
) {
    let mut set = JoinSet::new();
    for k in 0..env.slow_sockets {
        let (addr, source, bytes) = (env.addr, run.source, first(k));
        set.spawn(async move {
            let mut stream = match connect(addr, source, None, (Instant::now() + QUICK).min(until)).await {
                Ok(s) => s,
                Err(reason) => return (reason, None),
            };
            let started = Instant::now();
            if !bytes.is_empty() {
                if let Err(e) = stream.write_all(&bytes).await {
                    return (io_outcome(&e), Some(started.elapsed()));
                }
            }
            let line = |n: u64| format!("X-Slow-{n}: {n}\r\n").into_bytes();
            hold(&mut stream, started, until, trickle.map(|every| (every, &line as &super::raw::LineFn)))
                .await
        });
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok(reaction) => t.react(reaction),
            Err(_) => t.react(("task_failed".into(), None)),
        }
    }
}

const API_BODY: &str = r#"{"name":"attack","channels":["honest-0"],"data":"{\"seq\":0}"}"#;

/// `--api-burst` pipelined `POST`s on one keep-alive connection; every response is tallied.
async fn api_burst(env: &AttackEnv, run: Run, path: &str, query: &str, until: Instant, t: &mut Tally) {
    let mut stream = match connect(env.addr, run.source, None, until).await {
        Ok(s) => s,
        Err(reason) => return t.react((reason, None)),
    };
    let one = format!(
        "POST {path}{query} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{API_BODY}",
        env.host,
        API_BODY.len()
    );
    let burst = one.repeat(env.api_burst.max(1));
    let started = Instant::now();
    if let Err(e) = stream.write_all(burst.as_bytes()).await {
        return t.react((io_outcome(&e), Some(started.elapsed())));
    }
    let mut rx = ReadBuf::new(16 * 1024);
    let mut answered = 0;
    while answered < env.api_burst.max(1) {
        match parse_response(rx.data()) {
            Ok(Some(r)) => {
                rx.consume(r.total_len);
                answered += 1;
                t.react((format!("http_{}", r.status), Some(started.elapsed())));
                t.count("requests", 1);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                t.react((e.reason(), Some(started.elapsed())));
                return;
            }
        }
        let left = (env.api_burst.max(1) - answered) as u64;
        match tokio::time::timeout_at(until.into(), rx.fill(&mut stream)).await {
            Ok(Ok(0)) => return t.outcomes.add_n("eof_unanswered", left),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return t.outcomes.add_n(format!("{}_unanswered", io_outcome(&e)), left),
            Err(_) => return t.outcomes.add_n("no_response", left),
        }
    }
}

/// What came back for subscriptions sent in bulk.
#[derive(Debug, Default)]
struct Acks {
    succeeded: u64,
    refused: Option<String>,
}

fn count_acks(ws: &mut WsConn, acks: &mut Acks) -> Result<(), WsError> {
    ws.drain(|text, out| {
        if answer_ping(text, out) {
            return Flow::Continue;
        }
        match event_name(text) {
            Some(b"pusher_internal:subscription_succeeded") => acks.succeeded += 1,
            Some(b"pusher:subscription_error") => {
                acks.refused.get_or_insert_with(|| "subscription_error".into());
            }
            Some(b"pusher:error") => {
                acks.refused.get_or_insert_with(|| error_reason(text));
            }
            _ => {}
        }
        Flow::Continue
    })
}

fn subscribe_frame(channel: &str) -> String {
    json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string()
}

/// One connection subscribing to as many distinct channels as the server lets it (up to
/// `--hoard-cap`), then holding them until the hold ends.
async fn channel_hoard(env: &AttackEnv, run: Run, until: Instant, t: &mut Tally) {
    let setup_until = (Instant::now() + QUICK).min(until.max(Instant::now() + Duration::from_millis(100)));
    let mut s = match Session::open(&env.a, run.source, run.seed(), 16 * 1024, setup_until).await {
        Ok(s) => s,
        Err(reason) => return t.react((format!("setup_{reason}"), None)),
    };
    let started = Instant::now();
    let mut acks = Acks::default();
    let mut sent = 0usize;
    let outcome: Reaction = loop {
        if let Some(reason) = &acks.refused {
            break (format!("refused_{reason}"), Some(started.elapsed()));
        }
        if acks.succeeded as usize >= env.hoard_cap {
            break (format!("all_{}_accepted", env.hoard_cap), None);
        }
        while sent < env.hoard_cap && sent - acks.succeeded as usize <= 1000 {
            for _ in 0..200.min(env.hoard_cap - sent) {
                s.ws.send_text(subscribe_frame(&format!("hoard-{}-{sent}", run.tag())).as_bytes());
                sent += 1;
            }
        }
        if let Err(e) = s.ws.flush().await {
            break (format!("write_{}", e.reason()), Some(started.elapsed()));
        }
        let wait = (Instant::now() + QUICK).min(until);
        match tokio::time::timeout_at(wait.into(), s.ws.fill()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break (ws_end(e), Some(started.elapsed())),
            Err(_) if Instant::now() >= until => break ("hold_ended".into(), None),
            Err(_) => break ("stalled".into(), None),
        }
        if let Err(e) = count_acks(&mut s.ws, &mut acks) {
            break (ws_end(e), Some(started.elapsed()));
        }
    };
    t.count("channels_subscribed", acks.succeeded);
    t.max("most_channels_one_connection", acks.succeeded);
    t.react(outcome);
    // Keep them until the hold ends (answering pings), then let them all go at once.
    while Instant::now() < until {
        match tokio::time::timeout_at(until.into(), s.ws.fill()).await {
            Ok(Ok(())) => {
                if count_acks(&mut s.ws, &mut acks).is_err() || s.ws.flush().await.is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
}

fn ws_end(e: WsError) -> String {
    match e {
        WsError::Closed(Some(code)) => format!("close_{code}"),
        WsError::Eof => "eof".into(),
        WsError::Io(e) => io_outcome(&e),
        other => other.reason(),
    }
}

/// `--churn-ops` subscribe/unsubscribe pairs on distinct channels, pipelined: each pair is a
/// `channel_occupied` and a `channel_vacated` webhook for app A.
async fn channel_churn(env: &AttackEnv, run: Run, until: Instant, t: &mut Tally) {
    let mut s = match Session::open(&env.a, run.source, run.seed(), 16 * 1024, until).await {
        Ok(s) => s,
        Err(reason) => return t.react((format!("setup_{reason}"), None)),
    };
    let started = Instant::now();
    let mut acks = Acks::default();
    let mut sent = 0usize;
    let outcome: Reaction = loop {
        if let Some(reason) = &acks.refused {
            break (format!("refused_{reason}"), Some(started.elapsed()));
        }
        if acks.succeeded as usize >= env.churn_ops {
            break ("all_accepted".into(), None);
        }
        while sent < env.churn_ops && sent - acks.succeeded as usize <= 500 {
            for _ in 0..100.min(env.churn_ops - sent) {
                let channel = format!("churn-{}-{sent}", run.tag());
                s.ws.send_text(subscribe_frame(&channel).as_bytes());
                let unsubscribe = json!({"event": "pusher:unsubscribe", "data": {"channel": channel}});
                s.ws.send_text(unsubscribe.to_string().as_bytes());
                sent += 1;
            }
        }
        if let Err(e) = s.ws.flush().await {
            break (format!("write_{}", e.reason()), Some(started.elapsed()));
        }
        match tokio::time::timeout_at(until.into(), s.ws.fill()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break (ws_end(e), Some(started.elapsed())),
            Err(_) => break ("stalled".into(), None),
        }
        if let Err(e) = count_acks(&mut s.ws, &mut acks) {
            break (ws_end(e), Some(started.elapsed()));
        }
    };
    t.count("subscribe_unsubscribe_pairs", acks.succeeded);
    t.react(outcome);
    s.ws.close(1000, Duration::from_millis(200)).await;
}

/// `--slow-sockets` connections, each sending a 1 MiB body but its last byte, then waiting
/// for an answer until the hold ends.
async fn body_withheld(env: &Arc<AttackEnv>, run: Run, path: &str, until: Instant, t: &mut Tally) {
    const LEN: usize = 1 << 20;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {LEN}\r\n\r\n",
        env.host
    );
    let body: Arc<[u8]> = vec![b' '; LEN - 1].into();
    let mut set = JoinSet::new();
    for _ in 0..env.slow_sockets {
        let (addr, source, head, body) = (env.addr, run.source, head.clone(), body.clone());
        set.spawn(async move {
            let mut stream = match connect(addr, source, None, (Instant::now() + QUICK).min(until)).await {
                Ok(s) => s,
                Err(reason) => return ((reason, None), false),
            };
            let started = Instant::now();
            let (mut rd, mut wr) = stream.split();
            let write = async {
                wr.write_all(head.as_bytes()).await?;
                wr.write_all(&body).await
            };
            tokio::pin!(write);
            let mut wrote = false;
            let mut rx = ReadBuf::new(4096);
            loop {
                tokio::select! {
                    w = &mut write, if !wrote => {
                        wrote = true;
                        if let Err(e) = w {
                            return ((io_outcome(&e), Some(started.elapsed())), false);
                        }
                    }
                    r = rx.fill(&mut rd) => match r {
                        Ok(0) => return (("closed_eof".into(), Some(started.elapsed())), wrote),
                        Ok(_) => if let Some((status, _)) = head_status(rx.data()) {
                            return ((format!("http_{status}"), Some(started.elapsed())), wrote);
                        },
                        Err(e) => return ((io_outcome(&e), Some(started.elapsed())), wrote),
                    },
                    () = tokio::time::sleep_until(until.into()) => {
                        let outcome = if wrote { "held_open_waiting_for_last_byte" } else { "held_open_body_unread" };
                        return ((outcome.into(), None), wrote);
                    }
                }
            }
        });
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok((reaction, wrote)) => {
                t.react(reaction);
                if wrote {
                    t.count("bodies_sent_but_last_byte", 1);
                }
            }
            Err(_) => t.react(("task_failed".into(), None)),
        }
    }
}

fn tenant(env: &AttackEnv) -> &Target {
    env.tenant.as_ref().expect("tenant attacks run only with --tenant")
}

/// Opens a connection to the tenant's app and subscribes it to private channel `channel`.
async fn tenant_private(
    env: &AttackEnv,
    run: Run,
    channel: &str,
    seed: u32,
    until: Instant,
) -> Result<Session, String> {
    let c = tenant(env);
    let mut s = Session::open(c, run.source, seed, 8192, until).await?;
    s.subscribe(c, channel, true, until).await?;
    Ok(s)
}

/// Client events whose names carry CR/LF, between two connections of the tenant's app.
async fn client_event_crlf(env: &AttackEnv, run: Run, until: Instant, t: &mut Tally) {
    let channel = format!("private-crlf-{}", run.tag());
    let (mut receiver, mut sender) = match tokio::try_join!(
        tenant_private(env, run, &channel, run.seed(), until),
        tenant_private(env, run, &channel, run.seed() ^ 0xffff, until),
    ) {
        Ok(pair) => pair,
        Err(reason) => return t.react((format!("setup_{reason}"), None)),
    };
    let names = ["client-a\nevent: forged", "client-b\r\ndata: forged"];
    for name in names {
        let frame = json!({"event": name, "channel": channel, "data": {"x": 1}}).to_string();
        sender.ws.send_text(frame.as_bytes());
    }
    let started = Instant::now();
    if let Err(e) = sender.ws.flush().await {
        return t.react((format!("write_{}", e.reason()), None));
    }
    // Up to 2 s for each side to see something.
    let wait = (Instant::now() + Duration::from_secs(2)).min(until);
    let (mut delivered, mut refused) = (0u64, None::<String>);
    while Instant::now() < wait && delivered < names.len() as u64 && refused.is_none() {
        tokio::select! {
            r = receiver.ws.fill() => if r.is_err() { break },
            r = sender.ws.fill() => if r.is_err() { break },
            () = tokio::time::sleep_until(wait.into()) => break,
        }
        let _ = receiver.ws.drain(|text, out| {
            if !answer_ping(text, out) {
                let name: Option<String> = serde_json::from_slice::<Value>(text)
                    .ok()
                    .and_then(|v| v["event"].as_str().map(str::to_owned));
                if name.is_some_and(|n| n.contains('\n') || n.contains('\r')) {
                    delivered += 1;
                }
            }
            Flow::Continue
        });
        let _ = sender.ws.drain(|text, out| {
            if !answer_ping(text, out) && event_name(text) == Some(b"pusher:error") {
                refused.get_or_insert_with(|| error_reason(text));
            }
            Flow::Continue
        });
        let _ = receiver.ws.flush().await;
        let _ = sender.ws.flush().await;
    }
    let outcome = match (delivered, refused) {
        (0, Some(reason)) => format!("refused_{reason}"),
        (0, None) => "dropped_silently".into(),
        (_, _) => "delivered_with_crlf_name".into(),
    };
    t.count("crlf_events_delivered", delivered);
    t.react((outcome, Some(started.elapsed())));
    receiver.ws.close(1000, Duration::from_millis(100)).await;
    sender.ws.close(1000, Duration::from_millis(100)).await;
}

/// A stream reader (no key) on a public channel of the tenant's app, and an event published
/// there through the tenant's signed API with a name that would add a field to the stream.
async fn api_event_crlf_sse(env: &AttackEnv, run: Run, until: Instant, t: &mut Tally) {
    let c = tenant(env);
    let channel = format!("sse-inject-{}", run.tag());
    let mut stream = match connect(env.addr, run.source, None, until).await {
        Ok(s) => s,
        Err(reason) => return t.react((reason, None)),
    };
    let req = format!(
        "GET /apps/{}/events/stream?channels={channel} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        c.app_id, env.host
    );
    let mut rx = ReadBuf::new(8192);
    let opened = async {
        stream.write_all(req.as_bytes()).await.map_err(|e| io_outcome(&e))?;
        read_status(&mut stream, &mut rx, until).await
    };
    match opened.await {
        Ok(200) => {}
        Ok(status) => return t.react((format!("stream_http_{status}"), None)),
        Err(reason) => return t.react((format!("stream_{reason}"), None)),
    }
    let name = "evt\nevent: forged-by-bench\ndata: {\"forged\":true}\n";
    let mut body = Vec::new();
    let _ = write!(body, "{}", json!({"name": name, "channels": [channel], "data": "{}"}));
    let mut request_bytes = Vec::new();
    Signer::new(c).post("events", &body, &mut request_bytes);
    let started = Instant::now();
    let mut api = HttpConn::from_source(env.addr, run.source);
    let status = match tokio::time::timeout_at(until.into(), api.round_trip(&request_bytes)).await {
        Ok(Ok(status)) => status,
        Ok(Err(reason)) => return t.react((format!("publish_{reason}"), None)),
        Err(_) => return t.react(("publish_no_response".into(), None)),
    };
    if status != 200 {
        return t.react((format!("refused_http_{status}"), Some(started.elapsed())));
    }
    let wait = (Instant::now() + Duration::from_secs(2)).min(until);
    let outcome = loop {
        if crate::ws::find(rx.data(), b"\nevent: forged-by-bench").is_some() {
            break "sse_field_injected";
        }
        if crate::ws::find(rx.data(), b"forged-by-bench").is_some()
            && crate::ws::find(rx.data(), b"\n\n").is_some()
        {
            break "delivered_escaped";
        }
        match tokio::time::timeout_at(wait.into(), rx.fill(&mut stream)).await {
            Ok(Ok(0)) => break "stream_ended",
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break "stream_reset",
            Err(_) => break "accepted_not_seen",
        }
    };
    t.react((outcome.into(), Some(started.elapsed())));
}

/// `--slow-sockets` streams of every honest channel that never read (small receive buffers),
/// held until the phase ends; then whatever is buffered tells whether the server dropped them.
async fn sse_stalled(env: &Arc<AttackEnv>, run: Run, t: &mut Tally) {
    let channels = env.honest_channels.iter().take(100).cloned().collect::<Vec<_>>().join(",");
    let req = format!(
        "GET /apps/{}/events/stream?channels={channels} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        env.a.app_id, env.host
    );
    let readers = stalled_readers(env, run, req, env.slow_sockets);
    collect_stalled(readers, t).await;
}

/// The same with traffic the tenant makes itself: stalled streams of one of its channels, and
/// ~450 KB/s of events published there, so a server that keeps what a stalled reader cannot
/// take shows it in its memory within seconds.
async fn sse_stalled_tenant(env: &Arc<AttackEnv>, run: Run, t: &mut Tally) {
    let c = tenant(env);
    let channel = format!("sse-stall-{}", run.tag());
    let req = format!(
        "GET /apps/{}/events/stream?channels={channel} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        c.app_id, env.host
    );
    let readers = stalled_readers(env, run, req, env.slow_sockets.min(5));
    // Let the streams open before publishing.
    tokio::time::sleep_until((Instant::now() + Duration::from_secs(1)).min(env.phase_end).into()).await;
    let signer = Signer::new(c);
    let mut conn = HttpConn::from_source(env.addr, run.source);
    let data = "s".repeat(9 * 1024);
    let batch: Vec<Value> =
        (0..10).map(|_| json!({"name": "stall", "channel": channel, "data": data})).collect();
    let body = json!({ "batch": batch }).to_string();
    let mut next = Instant::now();
    while next < env.phase_end {
        tokio::time::sleep_until(next.into()).await;
        next += Duration::from_millis(200);
        let mut req = Vec::with_capacity(body.len() + 512);
        signer.post("batch_events", body.as_bytes(), &mut req);
        match tokio::time::timeout_at(env.phase_end.into(), conn.round_trip(&req)).await {
            Ok(Ok(200)) => t.count("bytes_published", 10 * data.len() as u64),
            Ok(Ok(status)) => t.count(if status == 429 { "publishes_429" } else { "publishes_refused" }, 1),
            Ok(Err(_)) | Err(_) => t.count("publishes_failed", 1),
        }
    }
    collect_stalled(readers, t).await;
}

/// Reader tasks of [`sse_stalled`]: each opens the stream with `req`, then reads nothing until
/// the phase ends, then reads for up to 2 s: `dropped_4100` when the server's last word was
/// `plexus:closed`, `closed_eof`/`reset` when it hung up, `still_open` when it did neither.
fn stalled_readers(env: &AttackEnv, run: Run, req: String, n: usize) -> JoinSet<(Reaction, u64)> {
    let until = env.phase_end;
    let mut set = JoinSet::new();
    for _ in 0..n {
        let (addr, source, req) = (env.addr, run.source, req.clone());
        set.spawn(async move {
            let quick = (Instant::now() + QUICK).min(until);
            let mut stream = match connect(addr, source, Some(2048), quick).await {
                Ok(s) => s,
                Err(reason) => return ((reason, None), 0),
            };
            let mut rx = ReadBuf::new(4096);
            if let Err(e) = stream.write_all(req.as_bytes()).await {
                return ((io_outcome(&e), None), 0);
            }
            match read_status(&mut stream, &mut rx, quick).await {
                Ok(200) => {}
                Ok(status) => return ((format!("http_{status}"), None), 0),
                Err(reason) => return ((reason, None), 0),
            }
            // Stall: read nothing until the phase ends.
            tokio::time::sleep_until(until.into()).await;
            // Then read what is there for up to 2 s (at most 64 MiB).
            let look_until = Instant::now() + Duration::from_secs(2);
            let mut seen = 0u64;
            let mut tail: Vec<u8> = Vec::new();
            loop {
                let data = rx.data();
                seen += data.len() as u64;
                tail.extend_from_slice(data);
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 8192);
                }
                let n = data.len();
                rx.consume(n);
                if let Some(at) = crate::ws::find(&tail, b"plexus:closed") {
                    let code = crate::pusher::scan_u64(&tail[at..], b"code").unwrap_or(0);
                    return ((format!("dropped_{code}"), None), seen);
                }
                if seen > 64 << 20 {
                    return (("still_streaming".into(), None), seen);
                }
                match tokio::time::timeout_at(look_until.into(), rx.fill(&mut stream)).await {
                    Ok(Ok(0)) => return (("closed_eof".into(), None), seen),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return ((io_outcome(&e), None), seen),
                    Err(_) => return (("still_open".into(), None), seen),
                }
            }
        });
    }
    set
}

async fn collect_stalled(mut readers: JoinSet<(Reaction, u64)>, t: &mut Tally) {
    while let Some(done) = readers.join_next().await {
        match done {
            Ok((reaction, bytes)) => {
                t.react(reaction);
                t.count("bytes_read_after_stall", bytes);
                t.max("most_bytes_one_reader_after_stall", bytes);
            }
            Err(_) => t.react(("task_failed".into(), None)),
        }
    }
}

/// Batches of events (almost the payload limit each) to distinct cache channels of the
/// tenant's app: each is kept for `cache_ttl_secs` even though nobody subscribes.
async fn cache_flood(env: &AttackEnv, run: Run, until: Instant, t: &mut Tally) {
    let c = tenant(env);
    let signer = Signer::new(c);
    let mut conn = HttpConn::from_source(env.addr, run.source);
    let data = "x".repeat(9 * 1024);
    let started = Instant::now();
    for b in 0..20 {
        if Instant::now() >= until {
            break;
        }
        let batch: Vec<Value> = (0..10)
            .map(|k| json!({"name": "flood", "channel": format!("cache-flood-{}-{b}-{k}", run.tag()), "data": data}))
            .collect();
        let body = json!({ "batch": batch }).to_string();
        let mut req = Vec::with_capacity(body.len() + 512);
        signer.post("batch_events", body.as_bytes(), &mut req);
        match tokio::time::timeout_at(until.into(), conn.round_trip(&req)).await {
            Ok(Ok(status)) => {
                if status == 200 {
                    t.count("cache_entries_accepted", 10);
                    t.count("cache_bytes_accepted", 10 * data.len() as u64);
                }
                t.react((format!("http_{status}"), Some(started.elapsed())));
            }
            Ok(Err(reason)) => return t.react((reason, None)),
            Err(_) => return t.react(("no_response".into(), None)),
        }
    }
}

/// Three members of one presence channel of the tenant's app, with numeric user ids beyond
/// 2^53 (and beyond 2^64, where a float would merge the last two).
async fn presence_big_ids(env: &AttackEnv, run: Run, until: Instant, t: &mut Tally) {
    let c = tenant(env);
    let channel = format!("presence-big-{}", run.tag());
    let ids = [
        ("2^53+1", "9007199254740993"),
        ("2^64", "18446744073709551616"),
        ("2^64+1", "18446744073709551617"),
    ];
    let mut sessions = Vec::new();
    for (k, (label, id)) in ids.iter().enumerate() {
        let mut s = match Session::open(c, run.source, run.seed() ^ k as u32, 8192, until).await {
            Ok(s) => s,
            Err(reason) => return t.react((format!("setup_{reason}"), None)),
        };
        let data = format!(r#"{{"user_id":{id},"user_info":{{}}}}"#);
        let started = Instant::now();
        let outcome = match s.join_presence(c, &channel, &data, until).await {
            Err(reason) => format!("{label}:refused_{reason}"),
            Ok(frame) => {
                let presence = presence_of(&frame);
                let count = presence["count"].as_u64().unwrap_or(0);
                let exact =
                    presence["ids"].as_array().is_some_and(|a| a.iter().any(|v| v.as_str() == Some(id)));
                if (count as usize) < k + 1 {
                    format!("{label}:merged_with_an_earlier_member")
                } else if exact {
                    format!("{label}:kept_exact")
                } else {
                    format!("{label}:altered")
                }
            }
        };
        t.react((outcome, Some(started.elapsed())));
        sessions.push(s);
    }
    for s in sessions {
        s.ws.close(1000, Duration::from_millis(100)).await;
    }
}

/// The `presence` object of a `subscription_succeeded` frame (its data is a JSON string).
fn presence_of(frame: &str) -> Value {
    let v: Value = serde_json::from_str(frame).unwrap_or_default();
    let data = match &v["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or_default(),
        other => other.clone(),
    };
    data["presence"].clone()
}

/// An HS256 token (signed with `secret`) for `claims`.
pub fn hs256(claims: &Value, secret: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input =
        format!("{}.{}", b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#), b64.encode(claims.to_string()));
    let mac = sign_hex(secret, signing_input.as_bytes());
    let raw: Vec<u8> =
        (0..mac.len()).step_by(2).filter_map(|i| u8::from_str_radix(&mac[i..i + 2], 16).ok()).collect();
    format!("{signing_input}.{}", b64.encode(raw))
}

/// A token that expires at second 2^64 − 1, signed by the token tenant, presented at the
/// WebSocket upgrade and (every other run) on a stream.
async fn jwt_exp_max(env: &AttackEnv, run: Run, until: Instant, t: &mut Tally) {
    let d = env.token_tenant.as_ref().expect("token attacks run only with --token-tenant");
    let token = hs256(&json!({"exp": u64::MAX, "sub": "attacker", "channels": ["*"]}), &d.secret);
    let req = if run.seq.is_multiple_of(2) {
        let path = format!("{}&token={token}", d.ws_path());
        upgrade_request(&path, &env.host, "dGhlIHNhbXBsZSBub25jZQ==", "13", "")
    } else {
        format!(
            "GET /apps/{}/events/stream?channels=feed&token={token} HTTP/1.1\r\nHost: {}\r\n\r\n",
            d.app_id, env.host
        )
    };
    let (outcome, reaction) = request(env.addr, run.source, req.as_bytes(), until).await;
    let via = if run.seq.is_multiple_of(2) { "ws" } else { "sse" };
    t.react((format!("{via}_{outcome}"), reaction));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attack_has_a_unique_name() {
        let mut names: Vec<_> = Attack::ALL.iter().map(|a| a.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Attack::ALL.len());
    }

    #[test]
    fn masked_frames_are_well_formed() {
        assert_eq!(masked(true, 0x8, &1005u16.to_be_bytes()), vec![0x88, 0x82, 0, 0, 0, 0, 0x03, 0xED]);
        assert_eq!(masked(false, 0x1, b"x"), vec![0x01, 0x81, 0, 0, 0, 0, b'x']);
    }

    #[test]
    fn tokens_have_three_parts_and_verify() {
        let token = hs256(&json!({"exp": u64::MAX}), "s");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(token.starts_with("eyJ"));
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["exp"], json!(u64::MAX));
        let mac = b64.decode(parts[2]).unwrap();
        let expected = sign_hex("s", format!("{}.{}", parts[0], parts[1]).as_bytes());
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn presence_ids_are_read_from_string_data() {
        let frame = r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-x","data":"{\"presence\":{\"ids\":[\"9007199254740993\"],\"hash\":{},\"count\":1}}"}"#;
        let p = presence_of(frame);
        assert_eq!(p["count"], 1);
        assert_eq!(p["ids"][0], "9007199254740993");
    }
}
