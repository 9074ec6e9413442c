//! The server's own log lines, live, for the admin listener's `GET /api/logs` (SSE) and the
//! dashboard.
//!
//! [`LogStream::layer`] is a `tracing-subscriber` layer installed next to the stderr formatter.
//! While nobody watches, each log event costs it one relaxed atomic load. While someone does,
//! each line is formatted once and sent into a bounded broadcast buffer ([`BUFFER`] lines);
//! sending never waits. Each viewer ([`LogViewer`]) reads at its own pace and filters by level
//! and target (component) itself; a viewer that falls a whole buffer behind is dropped
//! ([`Next::Dropped`]) rather than slowing anything. Lines below the process's own filter
//! (`RUST_LOG`, default `info`) never reach the stream.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines buffered for viewers; one that falls this far behind is dropped.
pub const BUFFER: usize = 512;

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at_ms: u64,
    pub level: Level,
    /// The module path that logged it, e.g. `plexus_server::webhooks::delivery`.
    pub target: String,
    /// The message followed by its fields (`key=value`).
    pub text: String,
}

impl LogLine {
    pub fn to_json(&self) -> serde_json::Value {
        json!({"at_ms": self.at_ms, "level": self.level.as_str(), "target": self.target, "text": self.text})
    }
}

/// Which lines a viewer wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    /// The most verbose level shown (`info` shows info, warn and error).
    pub level: Level,
    /// Only targets starting with this (a component such as `plexus_server::ws`), if given.
    pub target: Option<String>,
}

impl Default for LogFilter {
    fn default() -> Self {
        LogFilter { level: Level::TRACE, target: None }
    }
}

impl LogFilter {
    /// From the query values `level` (error, warn, info, debug, trace) and `target`.
    pub fn parse(level: Option<&str>, target: Option<&str>) -> Result<LogFilter, String> {
        let level = match level.filter(|l| !l.is_empty()) {
            None => Level::TRACE,
            Some(text) => text
                .parse()
                .map_err(|_| format!("unknown level {text:?}; use error, warn, info, debug or trace"))?,
        };
        Ok(LogFilter { level, target: target.filter(|t| !t.is_empty()).map(str::to_owned) })
    }

    pub fn accepts(&self, line: &LogLine) -> bool {
        // `Level` orders ERROR < WARN < … < TRACE by verbosity.
        line.level <= self.level
            && self.target.as_deref().is_none_or(|prefix| line.target.starts_with(prefix))
    }
}

/// The broadcast behind the layer and the viewers.
#[derive(Debug)]
pub struct LogStream {
    viewers: AtomicUsize,
    tx: broadcast::Sender<Arc<LogLine>>,
}

impl Default for LogStream {
    fn default() -> Self {
        LogStream { viewers: AtomicUsize::new(0), tx: broadcast::channel(BUFFER).0 }
    }
}

impl LogStream {
    pub fn new() -> Arc<LogStream> {
        Arc::default()
    }

    /// The layer that feeds this stream.
    pub fn layer(self: &Arc<Self>) -> StreamLayer {
        StreamLayer { stream: self.clone() }
    }

    /// A new viewer with its filter.
    pub fn view(self: &Arc<Self>, filter: LogFilter) -> LogViewer {
        let rx = self.tx.subscribe();
        self.viewers.fetch_add(1, Ordering::Relaxed);
        LogViewer { rx, filter, stream: self.clone() }
    }

    fn watched(&self) -> bool {
        self.viewers.load(Ordering::Relaxed) > 0
    }
}

/// What a viewer gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Line(Arc<LogLine>),
    /// The viewer fell `BUFFER` lines behind and is cut off; `missed` lines were lost.
    Dropped {
        missed: u64,
    },
}

/// One viewer of the stream.
#[derive(Debug)]
pub struct LogViewer {
    rx: broadcast::Receiver<Arc<LogLine>>,
    filter: LogFilter,
    stream: Arc<LogStream>,
}

impl LogViewer {
    /// The next line that passes the filter.
    pub async fn next(&mut self) -> Next {
        loop {
            match self.rx.recv().await {
                Ok(line) if self.filter.accepts(&line) => return Next::Line(line),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => return Next::Dropped { missed },
                // The sender lives in the stream we hold.
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

impl Drop for LogViewer {
    fn drop(&mut self) {
        self.stream.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The `tracing` layer; see the module docs.
#[derive(Debug)]
pub struct StreamLayer {
    stream: Arc<LogStream>,
}

/// Writes the message first, then the other fields as `key=value`, control characters escaped
/// as on stderr (see [`crate::logging`]): a viewer shows one line per log line, whatever a client
/// put into a field.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn push(&mut self, field: &Field, value: &str) {
        let out = if field.name() == "message" {
            &mut self.message
        } else {
            let _ = write!(self.fields, " {}=", field.name());
            &mut self.fields
        };
        let _ = crate::logging::write_escaped(out, value);
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.push(field, value);
        } else {
            self.push(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, &format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for StreamLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !self.stream.watched() {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        text.message.push_str(&text.fields);
        let meta = event.metadata();
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let line =
            LogLine { at_ms, level: *meta.level(), target: meta.target().to_owned(), text: text.message };
        // Fails only when the last viewer left in between.
        let _ = self.stream.tx.send(Arc::new(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn with_stream(stream: &Arc<LogStream>, body: impl FnOnce()) {
        let subscriber = tracing_subscriber::registry().with(stream.layer());
        tracing::subscriber::with_default(subscriber, body);
    }

    #[tokio::test]
    async fn viewers_see_only_their_level_and_component() {
        let stream = LogStream::new();
        let filter = LogFilter::parse(Some("warn"), Some("plexus_server::ws")).unwrap();
        let mut ws_warnings = stream.view(filter);
        let mut everything = stream.view(LogFilter::default());
        with_stream(&stream, || {
            tracing::warn!(target: "plexus_server::webhooks", "not this component");
            tracing::info!(target: "plexus_server::ws", "too verbose");
            tracing::error!(target: "plexus_server::ws::shared_frames", code = 1002, "socket failed");
        });
        match ws_warnings.next().await {
            Next::Line(line) => {
                assert_eq!(line.target, "plexus_server::ws::shared_frames");
                assert_eq!(line.level, Level::ERROR);
                assert_eq!(line.text, "socket failed code=1002");
            }
            other => panic!("{other:?}"),
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            if let Next::Line(line) = everything.next().await {
                seen.push(line.text.clone());
            }
        }
        assert_eq!(seen, ["not this component", "too verbose", "socket failed code=1002"]);
        assert!(LogFilter::parse(Some("loud"), None).unwrap_err().contains("loud"));
    }

    #[tokio::test]
    async fn a_slow_viewer_is_dropped_and_neither_the_logger_nor_other_viewers_wait() {
        let stream = LogStream::new();
        let mut slow = stream.view(LogFilter::default());
        let mut fast = stream.view(LogFilter::default());
        let total = BUFFER * 3;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            for _ in 0..total {
                match fast.next().await {
                    Next::Line(line) => tx.send(line.text.clone()).unwrap(),
                    Next::Dropped { .. } => panic!("the fast viewer keeps up"),
                }
            }
        });
        // The logger writes three buffers' worth while `slow` reads nothing; every call returns
        // (a blocking send would hang this test). The fast viewer is fed in lockstep.
        for n in 0..total {
            with_stream(&stream, || tracing::info!("line {n}"));
            assert_eq!(rx.recv().await.unwrap(), format!("line {n}"));
        }
        reader.await.unwrap();
        assert_eq!(slow.next().await, Next::Dropped { missed: (total - BUFFER) as u64 });
        drop(slow);
        assert!(!stream.watched(), "dropped viewers stop the formatting");
    }
}
