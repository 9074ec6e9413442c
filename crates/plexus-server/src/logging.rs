//! How plexus writes its own log lines on stderr: text, with every field a client can influence
//! escaped, and colours only when stderr is a terminal; or JSON, one object per line
//! (`--log-format json`), where the JSON encoding escapes control characters itself.
//!
//! Client input reaches log lines — an app key from a URL, a channel or event name, a refusal's
//! reason. Written raw, a `%0A` in a URL would end the line and let the rest pose as a log line
//! of its own (with a forged timestamp and level), and an escape sequence could drive the
//! operator's terminal. [`EscapedFields`] formats every field and message like
//! `tracing-subscriber`'s default formatter, but writes line breaks, tabs and other control
//! characters as escapes (`\n`, `\u{1b}`), at every level.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

use crate::config::LogFormat;

/// Field formatting that escapes control characters (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor { writer, result: Ok(()), first: true };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    result: fmt::Result,
    first: bool,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, text: &str) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(' ')?;
            }
            if field.name() != "message" {
                write!(self.writer, "{}=", field.name())?;
            }
            write_escaped(&mut self.writer, text)
        })();
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // As the default formatter does: a plain string field is shown quoted.
        self.write(field, &format!("{value:?}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// Writes `text` with control characters as escapes.
pub fn write_escaped(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control() => write!(out, "\\u{{{:x}}}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// The stderr layer. Text: escaped fields, colours only on a terminal (a file or a pipe gets
/// plain text, not ANSI codes). JSON: one object per line with `timestamp`, `level`, `target`,
/// `message` and the event's fields at the top, and its spans (`span`, `spans`).
pub fn stderr_layer<S>(format: LogFormat) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .fmt_fields(EscapedFields)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        ),
        LogFormat::Json => {
            Box::new(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_forged_line_in_a_field_or_message_stays_on_one_line() {
        let captured = Captured::default();
        let sink = captured.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(EscapedFields)
            .with_ansi(false)
            .with_writer(move || sink.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        let key = "x\n2026-12-07T00:00:00.000000Z  INFO plexus_server: admin logged in\u{1b}[31m";
        tracing::subscriber::with_default(subscriber, || {
            let message = format!("App key {key} does not exist");
            tracing::debug!(%message, key, "connection refused: {key}");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("x\\n2026-12-07"), "{text}");
        assert!(text.contains("\\u{1b}[31m"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn json_lines_carry_the_message_and_fields_and_stay_one_line() {
        let captured = Captured::default();
        let sink = captured.clone();
        let layer =
            tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(move || sink.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(key = "x\nforged", "refused: {}", "a\u{1b}[31m");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "refused: a\u{1b}[31m");
        assert_eq!(line["key"], "x\nforged");
        assert!(line["timestamp"].is_string() && line["target"].is_string(), "{line}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
