//! Channel history in Redis Streams: a [`HistoryStore`] whose positions mean the same on every
//! node and across restarts of any of them (`docs/cluster.md`, §4.2).
//!
//! This module owns the key layout, the two scripts and the connection they run on.
//!
//! - Keys, per channel: the stream `{prefix}:h:{<app>:<channel>}` and its meta hash
//!   `{prefix}:hm:{<app>:<channel>}` (`e`: the epoch, `t`: the newest offset). The braces are a
//!   Redis Cluster hash tag, so both keys of a channel share a slot. A channel name holds no `:`,
//!   so no two channels share a key.
//! - Appending is one script, so concurrent appenders (every node of a cluster) never share an
//!   offset: it increments `t`, starts a new epoch when the channel held nothing, adds the entry
//!   with id `{offset}-0` (fields `p` payload, `t` Redis's time in ms, `i` the event's id),
//!   trims the stream to the rule's size and sets both keys to expire the rule's ttl after this
//!   append. A channel idle past its ttl therefore vanishes whole, and starts a new epoch.
//! - A retried append first looks for its id among the retained entries, so it stores nothing
//!   twice; a first append skips that look.
//! - Reading is one script too, returning the meta, Redis's clock and the entries after the
//!   client's offset, so the answer is of one instant and ages are measured on one clock. It
//!   reads no entries for a position that cannot be caught up (another epoch, past the newest,
//!   more than the rule's size behind).
//!   Whether the client is caught up is decided by
//!   [`plexus_core::history_store::read_after`], as for every store.
//! - The connection is opened on first use and again after it is lost; while Redis is away
//!   every call fails at once or within the response timeout with
//!   [`StoreError::Unavailable`].

use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use plexus_core::app::HistoryRule;
use plexus_core::history_store::{
    random_epoch, read_after, Attempt, ChannelKey, EventId, HistoryStore, Position, ReadAfter, StoreError,
    StoreFuture,
};
use redis::aio::MultiplexedConnection;
use redis::{Client, RedisError, Value};

use crate::{open_client, open_publisher, redact_url, TransportError};

const APPEND: &str = r#"
if ARGV[6] == '1' then
  local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[3])
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'i' and fields[i + 1] == ARGV[2] then
        return {redis.call('HGET', KEYS[2], 'e'), string.match(entry[1], '^(%d+)')}
      end
    end
  end
end
local clock = redis.call('TIME')
local ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local top = redis.call('HINCRBY', KEYS[2], 't', 1)
if top == 1 then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', ARGV[5])
end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], top .. '-0', 'p', ARGV[1], 't', ms, 'i', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {redis.call('HGET', KEYS[2], 'e'), tostring(top)}
"#;

const READ: &str = r#"
local meta = redis.call('HMGET', KEYS[2], 'e', 't')
if not meta[1] then return {} end
local clock = redis.call('TIME')
local ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local missed = tonumber(meta[2]) - tonumber(ARGV[1])
local entries = {}
if meta[1] == ARGV[3] and missed > 0 and missed < tonumber(ARGV[2]) then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
return {meta[1], meta[2], tostring(ms), entries}
"#;

/// History channels' events in Redis Streams, shared by every node on the same Redis and
/// prefix.
pub struct RedisHistory {
    client: Client,
    prefix: String,
    /// The open connection, if any; taken away when it fails, so the next call reconnects.
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisHistory").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisHistory {
    /// Opens the history of the cluster named `prefix` in the Redis at `url` (TLS as for
    /// [`crate::connect_with`]); checks that Redis answers.
    pub async fn connect(
        url: &str,
        ca_file: Option<&Path>,
        prefix: &str,
    ) -> Result<RedisHistory, TransportError> {
        crate::validate_prefix(prefix)?;
        let connect_error =
            |reason: String| TransportError::Connect { bus: "Redis", url: redact_url(url, false), reason };
        let client = open_client(url, ca_file).map_err(connect_error)?;
        let connection = open_publisher(&client).await.map_err(connect_error)?;
        Ok(RedisHistory { client, prefix: prefix.to_owned(), connection: Mutex::new(Some(connection)) })
    }

    fn keys(&self, key: &ChannelKey) -> [String; 2] {
        let tag = format!("{{{}:{}}}", key.app, key.channel);
        [format!("{}:h:{tag}", self.prefix), format!("{}:hm:{tag}", self.prefix)]
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(connection) = self.lock().clone() {
            return Ok(connection);
        }
        let connection = open_publisher(&self.client).await.map_err(StoreError::unavailable)?;
        *self.lock() = Some(connection.clone());
        Ok(connection)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `command`; a failure that means the connection is gone drops it for the next call.
    async fn query(&self, command: &redis::Cmd) -> Result<Value, StoreError> {
        let mut connection = self.connection().await?;
        command.query_async(&mut connection).await.map_err(|err: RedisError| {
            if err.is_io_error()
                || err.is_timeout()
                || err.is_connection_dropped()
                || err.is_unrecoverable_error()
            {
                self.lock().take();
            }
            StoreError::unavailable(err)
        })
    }

    async fn append(
        &self,
        key: &ChannelKey,
        id: EventId,
        payload: &[u8],
        rule: &HistoryRule,
        attempt: Attempt,
    ) -> Result<Position, StoreError> {
        let [stream, meta] = self.keys(key);
        let mut command = redis::cmd("EVAL");
        command
            .arg(APPEND)
            .arg(2)
            .arg(stream)
            .arg(meta)
            .arg(payload)
            .arg(id.to_string())
            .arg(rule.size.max(1))
            .arg(ttl_ms(rule))
            .arg(random_epoch())
            .arg(if attempt == Attempt::Retry { "1" } else { "0" });
        let reply = self.query(&command).await?;
        match &reply {
            Value::Array(items) if items.len() == 2 => {
                Ok(Position { epoch: number(&items[0])?, offset: number(&items[1])? })
            }
            _ => Err(unexpected(&reply)),
        }
    }

    async fn read_after(
        &self,
        key: &ChannelKey,
        after: Position,
        rule: &HistoryRule,
    ) -> Result<ReadAfter, StoreError> {
        let [stream, meta] = self.keys(key);
        let mut command = redis::cmd("EVAL");
        command
            .arg(READ)
            .arg(2)
            .arg(stream)
            .arg(meta)
            .arg(after.offset)
            .arg(rule.size.saturating_add(1))
            .arg(after.epoch);
        let reply = self.query(&command).await?;
        let Value::Array(items) = &reply else { return Err(unexpected(&reply)) };
        let [epoch, head, now_ms, Value::Array(entries)] = items.as_slice() else {
            return if items.is_empty() {
                Ok(ReadAfter::Gone { head: None })
            } else {
                Err(unexpected(&reply))
            };
        };
        let (epoch, head, now_ms): (u32, u64, u64) = (number(epoch)?, number(head)?, number(now_ms)?);
        let retained =
            entries.iter().map(|entry| retained_entry(entry, now_ms)).collect::<Result<Vec<_>, _>>()?;
        Ok(read_after(epoch, head, after, retained, rule))
    }

    async fn head(&self, key: &ChannelKey) -> Result<Option<Position>, StoreError> {
        let [_, meta] = self.keys(key);
        let mut command = redis::cmd("HMGET");
        command.arg(meta).arg("e").arg("t");
        let reply = self.query(&command).await?;
        match &reply {
            Value::Array(items) if items.len() == 2 && items.iter().all(|item| *item == Value::Nil) => {
                Ok(None)
            }
            Value::Array(items) if items.len() == 2 => {
                Ok(Some(Position { epoch: number(&items[0])?, offset: number(&items[1])? }))
            }
            _ => Err(unexpected(&reply)),
        }
    }
}

impl HistoryStore for RedisHistory {
    fn append<'a>(
        &'a self,
        key: &'a ChannelKey,
        id: EventId,
        payload: &'a [u8],
        rule: &'a HistoryRule,
        attempt: Attempt,
    ) -> StoreFuture<'a, Position> {
        Box::pin(self.append(key, id, payload, rule, attempt))
    }

    fn read_after<'a>(
        &'a self,
        key: &'a ChannelKey,
        after: Position,
        rule: &'a HistoryRule,
    ) -> StoreFuture<'a, ReadAfter> {
        Box::pin(self.read_after(key, after, rule))
    }

    fn head<'a>(&'a self, key: &'a ChannelKey, _rule: &'a HistoryRule) -> StoreFuture<'a, Option<Position>> {
        // Both keys expire a ttl after the newest event: what exists is retained.
        Box::pin(self.head(key))
    }
}

fn ttl_ms(rule: &HistoryRule) -> u64 {
    Duration::from_secs(rule.ttl_secs.max(1)).as_millis().try_into().unwrap_or(u64::MAX)
}

/// One stream entry, `[id, [field, value, …]]`, as `(offset, age, payload)`.
fn retained_entry(entry: &Value, now_ms: u64) -> Result<(u64, Duration, Bytes), StoreError> {
    let Value::Array(parts) = entry else { return Err(unexpected(entry)) };
    let [id, Value::Array(fields)] = parts.as_slice() else { return Err(unexpected(entry)) };
    let id = text(id)?;
    let offset = id.split_once('-').map_or(id.as_str(), |(offset, _)| offset);
    let offset: u64 = offset.parse().map_err(|_| unexpected(entry))?;
    let (mut payload, mut stored_ms) = (None, None);
    for pair in fields.chunks(2) {
        match (pair.first().map(text).transpose()?.as_deref(), pair.get(1)) {
            (Some("p"), Some(Value::BulkString(bytes))) => payload = Some(Bytes::copy_from_slice(bytes)),
            (Some("t"), Some(value)) => stored_ms = Some(number::<u64>(value)?),
            _ => {}
        }
    }
    let (Some(payload), Some(stored_ms)) = (payload, stored_ms) else { return Err(unexpected(entry)) };
    Ok((offset, Duration::from_millis(now_ms.saturating_sub(stored_ms)), payload))
}

fn text(value: &Value) -> Result<String, StoreError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(|_| unexpected(value)),
        Value::SimpleString(text) => Ok(text.clone()),
        Value::Int(number) => Ok(number.to_string()),
        _ => Err(unexpected(value)),
    }
}

fn number<T: std::str::FromStr>(value: &Value) -> Result<T, StoreError> {
    text(value)?.parse().map_err(|_| unexpected(value))
}

/// A reply our own scripts cannot give: another program wrote these keys.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
struct UnexpectedReply(String);

fn unexpected(value: &Value) -> StoreError {
    let mut shown = format!("{value:?}");
    shown.truncate(200);
    StoreError::refused(UnexpectedReply(shown))
}
