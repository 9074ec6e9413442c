//! `/docs`: the API documents built into the binary, and a page that lists them readably.
//!
//! The documents themselves live in `docs/api/` at the workspace root, as JSON so that they are
//! read with serde_json like everything else:
//!
//! - `openapi.json` (OpenAPI 3.1): every HTTP route of the main port,
//! - `openapi-admin.json` (OpenAPI 3.1): the admin and metrics listeners,
//! - `asyncapi.json` (AsyncAPI 3.0): the WebSocket protocol of `/app/{key}` and the SSE events.
//!
//! This module only serves them: `GET /docs` is a self-contained HTML page (no scripts, no
//! external assets) rendered once from the documents, and `GET /docs/<name>.json` returns each
//! document as `application/json`. Nothing here is secret, so the routes need no auth and sit
//! outside the API's rate limits. `tests/api_docs.rs` keeps the documents honest: it checks
//! their structure, that they cover every route the server mounts (and that every documented
//! route is served), and every event name the code can send.

use std::fmt::Write as _;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;

pub const OPENAPI: &str = include_str!("../api/openapi.json");
pub const OPENAPI_ADMIN: &str = include_str!("../api/openapi-admin.json");
pub const ASYNCAPI: &str = include_str!("../api/asyncapi.json");

/// The `/docs` routes; merged into [`crate::router`].
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/docs", get(|| async { page() }))
        .route("/docs/openapi.json", get(|| async { json(OPENAPI) }))
        .route("/docs/openapi-admin.json", get(|| async { json(OPENAPI_ADMIN) }))
        .route("/docs/asyncapi.json", get(|| async { json(ASYNCAPI) }))
}

fn json(document: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

fn page() -> Response {
    static PAGE: LazyLock<String> = LazyLock::new(render);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE.as_str()).into_response()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// One table row per operation of an OpenAPI document.
fn routes_table(out: &mut String, document: &Value) {
    out.push_str("<table><tr><th>method</th><th>path</th><th>summary</th><th>statuses</th></tr>\n");
    let paths = document["paths"].as_object().into_iter().flatten();
    for (path, item) in paths {
        for method in METHODS {
            let Some(operation) = item.get(method) else { continue };
            let statuses: Vec<&str> =
                operation["responses"].as_object().into_iter().flatten().map(|(s, _)| s.as_str()).collect();
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                method.to_ascii_uppercase(),
                escape(path),
                escape(operation["summary"].as_str().unwrap_or("")),
                escape(&statuses.join(" ")),
            );
        }
    }
    out.push_str("</table>\n");
}

/// One table row per message of each AsyncAPI operation, resolving the operation's refs.
fn messages_table(out: &mut String, document: &Value) {
    out.push_str("<table><tr><th>direction</th><th>channel</th><th>event</th><th>summary</th></tr>\n");
    for operation in document["operations"].as_object().into_iter().flatten().map(|(_, o)| o) {
        let direction = match operation["action"].as_str() {
            Some("send") => "server → client",
            _ => "client → server",
        };
        let channel = resolve(document, &operation["channel"]);
        let address = channel["address"].as_str().unwrap_or("");
        for reference in operation["messages"].as_array().into_iter().flatten() {
            let message = resolve(document, reference);
            let _ = writeln!(
                out,
                "<tr><td>{direction}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>",
                escape(address),
                escape(message["name"].as_str().unwrap_or("")),
                escape(message["summary"].as_str().unwrap_or("")),
            );
        }
    }
    out.push_str("</table>\n");
}

/// Follows local `$ref`s (`#/a/b`) until a value without one.
fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    let mut current = value;
    for _ in 0..8 {
        match current["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => current = document.pointer(pointer).unwrap_or(&Value::Null),
            None => break,
        }
    }
    current
}

fn render() -> String {
    let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    let (openapi, admin, asyncapi) = (parse(OPENAPI), parse(OPENAPI_ADMIN), parse(ASYNCAPI));
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>plexus API</title>\n\
         <style>body{font:15px/1.4 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em}\
         table{border-collapse:collapse;width:100%;margin-bottom:2em}\
         td,th{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}\
         code{font-size:90%}</style></head><body>\n<h1>plexus API</h1>\n\
         <p>Machine-readable: <a href=\"/docs/openapi.json\">openapi.json</a> (this port), \
         <a href=\"/docs/openapi-admin.json\">openapi-admin.json</a> (admin and metrics listeners), \
         <a href=\"/docs/asyncapi.json\">asyncapi.json</a> (WebSocket and SSE protocol).</p>\n",
    );
    out.push_str("<h2>HTTP routes (main port)</h2>\n");
    routes_table(&mut out, &openapi);
    out.push_str("<h2>Admin and metrics listeners</h2>\n");
    routes_table(&mut out, &admin);
    out.push_str("<h2>WebSocket and SSE messages</h2>\n");
    messages_table(&mut out, &asyncapi);
    out.push_str("<h2>Close codes</h2>\n<table><tr><th>code</th><th>name</th><th>client should</th><th>when</th></tr>\n");
    for (code, entry) in asyncapi["x-plexus-close-codes"].as_object().into_iter().flatten() {
        let field = |name: &str| escape(entry[name].as_str().unwrap_or(""));
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(code),
            field("name"),
            field("reconnect"),
            field("when")
        );
    }
    out.push_str("</table>\n</body></html>\n");
    out
}
