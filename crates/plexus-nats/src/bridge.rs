//! The NATS subject bridge: messages on configured subjects become channel events.
//!
//! A [`SubjectRule`] names the tokens of a subject pattern and builds a channel and an event name
//! from them: `omni.events.{instance}.{type}` with channel `instance-{instance}` and event
//! `{type}` turns a message on `omni.events.inst_1.message_received` into event
//! `message_received` on channel `instance-inst_1`. `{name}` matches one token; a final
//! `{name...}` matches the rest of the subject (one or more tokens, kept with their dots).
//!
//! Two sources:
//! - **core subjects**, subscribed in a queue group, so in a cluster each message is taken by one
//!   node (which then publishes it to the whole cluster) — at most once, nothing kept while
//!   plexus is down;
//! - **a JetStream durable pull consumer** on an existing stream, acknowledged only after the
//!   event has been handed to every subscriber's queue, so a message that plexus had not fanned
//!   out when it stopped is delivered after it restarts; nodes of a cluster share the durable.
//!
//! A message that cannot become an event (not UTF-8, no matching rule, a refused channel or
//! event name, too large) is counted in `plexus_bridge_rejected_total`, logged, and (JetStream)
//! terminated so it is not redelivered forever. Nothing a bus message holds can stop the bridge.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::{Client, ConnectOptions};
use futures_util::StreamExt;
use plexus_core::cluster::{redact_url, TransportError};

/// One token of a subject pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Capture(String),
    /// The rest of the subject; only last.
    Rest(String),
}

/// A subject pattern with named tokens, and the channel and event templates built from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectRule {
    tokens: Vec<Token>,
    channel: String,
    event: String,
}

/// Why a bridge's subject pattern or templates were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("unclosed '{{' in {template:?}")]
    Unclosed { template: String },
    #[error("{{{name}...}} must be the last token of {subject:?}")]
    RestNotLast { name: String, subject: String },
    #[error("bad token {token:?} in subject {subject:?}")]
    BadToken { token: String, subject: String },
    #[error("{template:?} uses {{{name}}}, which subject {subject:?} does not capture")]
    NotCaptured { template: String, name: String, subject: String },
}

fn placeholders(template: &str) -> Result<Vec<&str>, RuleError> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end =
            rest[start..].find('}').ok_or_else(|| RuleError::Unclosed { template: template.to_owned() })?
                + start;
        names.push(&rest[start + 1..end]);
        rest = &rest[end + 1..];
    }
    Ok(names)
}

impl SubjectRule {
    /// Parses `subject` (e.g. `omni.events.{instance}.{type}`) and checks that the channel and
    /// event templates only use names the subject captures.
    pub fn parse(subject: &str, channel: &str, event: &str) -> Result<Self, RuleError> {
        // `{name...}` holds dots of its own: mark it before splitting into tokens.
        const REST: char = '\u{1}';
        let marked = subject.replace("...}", &format!("{REST}}}"));
        let parts: Vec<&str> = marked.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) if name.ends_with(REST) => {
                    let name = name.trim_end_matches(REST);
                    if i + 1 != parts.len() {
                        return Err(RuleError::RestNotLast {
                            name: name.to_owned(),
                            subject: subject.to_owned(),
                        });
                    }
                    Token::Rest(name.to_owned())
                }
                Some(name) if !name.is_empty() && !name.contains(['{', '}']) => {
                    Token::Capture(name.to_owned())
                }
                _ if part.is_empty() || part.contains(['*', '>', '{', '}', ' ']) => {
                    return Err(RuleError::BadToken {
                        token: part.replace(REST, "..."),
                        subject: subject.to_owned(),
                    });
                }
                _ => Token::Literal((*part).to_owned()),
            };
            tokens.push(token);
        }
        let captured: Vec<&str> = tokens
            .iter()
            .filter_map(|t| match t {
                Token::Capture(n) | Token::Rest(n) => Some(n.as_str()),
                Token::Literal(_) => None,
            })
            .collect();
        for template in [channel, event] {
            for name in placeholders(template)? {
                if !captured.contains(&name) {
                    return Err(RuleError::NotCaptured {
                        template: template.to_owned(),
                        name: name.to_owned(),
                        subject: subject.to_owned(),
                    });
                }
            }
        }
        Ok(SubjectRule { tokens, channel: channel.to_owned(), event: event.to_owned() })
    }

    /// The NATS subscription subject (`{x}` → `*`, `{x...}` → `>`).
    pub fn subscription(&self) -> String {
        self.tokens
            .iter()
            .map(|t| match t {
                Token::Literal(l) => l.as_str(),
                Token::Capture(_) => "*",
                Token::Rest(_) => ">",
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The channel and event for a message on `subject`, if the subject matches.
    pub fn map(&self, subject: &str) -> Option<(String, String)> {
        let parts: Vec<&str> = subject.split('.').collect();
        let mut bound: Vec<(&str, String)> = Vec::new();
        for (i, token) in self.tokens.iter().enumerate() {
            match token {
                Token::Literal(l) => (parts.get(i)? == l).then_some(())?,
                Token::Capture(name) => bound.push((name, (*parts.get(i)?).to_owned())),
                Token::Rest(name) => {
                    if parts.len() <= i {
                        return None;
                    }
                    bound.push((name, parts[i..].join(".")));
                    return Some((fill(&self.channel, &bound), fill(&self.event, &bound)));
                }
            }
        }
        (parts.len() == self.tokens.len()).then(|| (fill(&self.channel, &bound), fill(&self.event, &bound)))
    }
}

fn fill(template: &str, bound: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in bound {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// Where the bridge reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Core subjects, in queue group `group`.
    Core { group: String },
    /// A durable pull consumer named `durable` on JetStream stream `stream`.
    JetStream { stream: String, durable: String },
}

/// A message that became an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgedEvent {
    pub subject: String,
    pub channel: String,
    pub event: String,
    pub data: String,
}

/// Why a message was not published; the bridge counts and logs it (and with JetStream
/// terminates it, so it is not redelivered forever).
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("a plexus [[mirrors]] entry published it (its subject overlaps this bridge's)")]
    Mirrored,
    #[error("the subject does not match the rule")]
    NoMatch,
    #[error("the payload is not UTF-8")]
    NotUtf8,
    #[error("app {0:?} is not served")]
    UnknownApp(String),
    #[error("app {0:?} is disabled")]
    AppDisabled(String),
    /// The hub refused the event (its name, size or channel).
    #[error(transparent)]
    Refused(#[from] plexus_core::hub::PublishError),
}

fn rejected(subject: &str, reason: &Rejection) {
    metrics::counter!("plexus_bridge_rejected_total").increment(1);
    tracing::warn!(subject, %reason, "bridge: message not published");
}

/// The event a bus message becomes, or why it is refused.
fn bridged(rule: &SubjectRule, message: &async_nats::Message) -> Result<BridgedEvent, Rejection> {
    if message.headers.as_ref().is_some_and(|h| h.get(crate::mirror::MIRROR_HEADER).is_some()) {
        return Err(Rejection::Mirrored);
    }
    to_event(rule, &message.subject, &message.payload)
}

fn to_event(rule: &SubjectRule, subject: &str, payload: &[u8]) -> Result<BridgedEvent, Rejection> {
    let (channel, event) = rule.map(subject).ok_or(Rejection::NoMatch)?;
    let data = std::str::from_utf8(payload).map_err(|_| Rejection::NotUtf8)?.to_owned();
    Ok(BridgedEvent { subject: subject.to_owned(), channel, event, data })
}

/// Connects to `url` and bridges messages matching `rule` from `source` until the process ends,
/// handing each event to `deliver` (which fans it out and returns once it is queued to every
/// subscriber). Returns an error only if the first connection or the consumer setup fails.
///
/// `ca_file`: TLS required, verified against that PEM file's CA certificates (see
/// [`crate::tls_options`]; a `tls://` URL alone verifies against the system's roots).
pub async fn run(
    url: &str,
    ca_file: Option<&std::path::Path>,
    rule: SubjectRule,
    source: Source,
    deliver: Arc<dyn Fn(BridgedEvent) -> Result<(), Rejection> + Send + Sync>,
) -> Result<(), TransportError> {
    let shown = redact_url(url, true);
    let connect_error = |reason: String| TransportError::Connect { bus: "NATS", url: shown.clone(), reason };
    let options = || crate::tls_options(ConnectOptions::new(), url, ca_file).map_err(connect_error);
    // One plain attempt first: a refused certificate will not get better by retrying, and the
    // retrying connect below would report only its timeout, not the TLS reason.
    let first = tokio::time::timeout(Duration::from_secs(6), options()?.connect(url)).await;
    let client: Client = match first {
        Ok(Ok(client)) => client,
        Ok(Err(err)) if plexus_tls::hint(&err).is_some() => {
            return Err(connect_error(plexus_tls::describe(&err)))
        }
        _ => tokio::time::timeout(Duration::from_secs(6), options()?.retry_on_initial_connect().connect(url))
            .await
            .map_err(|_| connect_error("not connected within 6 s".into()))?
            .map_err(|e| connect_error(e.to_string()))?,
    };
    let subject = rule.subscription();
    match source {
        Source::Core { group } => {
            let mut messages = client
                .queue_subscribe(subject.clone(), group)
                .await
                .map_err(|e| connect_error(format!("subscribe {subject}: {e}")))?;
            tracing::info!(%subject, "bridge: reading core NATS subjects");
            tokio::spawn(async move {
                while let Some(message) = messages.next().await {
                    let outcome = bridged(&rule, &message).and_then(|e| deliver(e));
                    if let Err(reason) = outcome {
                        rejected(&message.subject, &reason);
                    }
                }
            });
        }
        Source::JetStream { stream, durable } => {
            let context = jetstream::new(client);
            let found = context
                .get_stream(&stream)
                .await
                .map_err(|e| connect_error(format!("JetStream stream {stream:?}: {e}")))?;
            let consumer: jetstream::consumer::Consumer<pull::Config> = found
                .get_or_create_consumer(
                    &durable,
                    pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: subject.clone(),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| connect_error(format!("JetStream consumer {durable:?}: {e}")))?;
            let mut messages =
                consumer.messages().await.map_err(|e| connect_error(format!("JetStream consume: {e}")))?;
            tracing::info!(%subject, %stream, %durable, "bridge: reading a JetStream durable consumer");
            tokio::spawn(async move {
                while let Some(next) = messages.next().await {
                    let message = match next {
                        Ok(message) => message,
                        Err(error) => {
                            tracing::warn!(%error, "bridge: JetStream consumer error; retrying");
                            continue;
                        }
                    };
                    let outcome = bridged(&rule, &message).and_then(|e| deliver(e));
                    // Acknowledged only now that the event sits in every subscriber's queue.
                    let ack = match &outcome {
                        Ok(()) => message.ack().await,
                        Err(reason) => {
                            rejected(&message.subject, reason);
                            message.ack_with(AckKind::Term).await
                        }
                    };
                    if let Err(error) = ack {
                        tracing::warn!(%error, "bridge: acknowledging a JetStream message failed (it will be redelivered)");
                    }
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_channel_and_event() {
        let rule =
            SubjectRule::parse("omni.events.{instance}.{type}", "instance-{instance}", "{type}").unwrap();
        assert_eq!(rule.subscription(), "omni.events.*.*");
        assert_eq!(
            rule.map("omni.events.inst_1.message_received"),
            Some(("instance-inst_1".into(), "message_received".into()))
        );
        assert_eq!(rule.map("omni.events.inst_1"), None, "too few tokens");
        assert_eq!(rule.map("omni.events.a.b.c"), None, "too many tokens");
        assert_eq!(rule.map("omni.other.a.b"), None, "literal differs");
    }

    #[test]
    fn a_rest_token_keeps_the_tail() {
        let rule = SubjectRule::parse("logs.{service}.{path...}", "logs-{service}", "{path}").unwrap();
        assert_eq!(rule.subscription(), "logs.*.>");
        assert_eq!(rule.map("logs.api.http.request"), Some(("logs-api".into(), "http.request".into())));
        assert_eq!(rule.map("logs.api"), None);
    }

    #[test]
    fn bad_rules_are_refused_with_a_reason() {
        assert!(SubjectRule::parse("a.{x}", "c-{y}", "e").unwrap_err().to_string().contains("{y}"));
        assert!(SubjectRule::parse("a.*.b", "c", "e").is_err());
        assert!(matches!(
            SubjectRule::parse("a.{rest...}.b", "c", "e"),
            Err(RuleError::RestNotLast { name, .. }) if name == "rest"
        ));
        assert!(SubjectRule::parse("a..b", "c", "e").is_err());
        assert!(SubjectRule::parse("a.{x}", "c-{x", "e").is_err());
    }

    #[test]
    fn payloads_must_be_text() {
        let rule = SubjectRule::parse("s.{x}", "c-{x}", "e").unwrap();
        assert!(to_event(&rule, "s.1", b"\xff").is_err());
        assert_eq!(to_event(&rule, "s.1", b"{}").unwrap().channel, "c-1");
    }
}
