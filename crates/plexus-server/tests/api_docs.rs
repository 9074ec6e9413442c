//! The API documents of `docs/api/` against the code and a real server.
//!
//! - Both OpenAPI documents and the AsyncAPI document parse, have their spec's required fields,
//!   and every `$ref` resolves; every example in them fits its own schema.
//! - The routes the source mounts (every `.route(…)` in `src/`, read from the files themselves so
//!   a new route cannot be missed) are exactly the documented ones, per listener.
//! - Every documented operation is served by a real server on a loopback port (never the
//!   fallback 404 nor 405), answers a documented status with a documented content type, and its
//!   JSON bodies fit the documented schemas; signed routes answer 200 when signed.
//! - Every `pusher:` / `pusher_internal:` / `plexus:` event name in the code and every close code
//!   is in the AsyncAPI document, and real WebSocket and SSE frames fit its message schemas.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{data_of, TestClient, TestServer, WAIT};
use plexus_core::app::HistoryRule;
use plexus_core::App;
use plexus_protocol::signature;
use plexus_server::admin::{Admin, AdminConfig};
use plexus_server::config::MetricsConfig;
use plexus_server::logstream::LogStream;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ADMIN_TOKEN: &str = "docs-test-token";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn document(name: &str) -> Value {
    let path = workspace().join("docs/api").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// The development app, whose credentials the documents' examples use.
fn docs_app() -> App {
    let mut app = App::new("app-id", "app-key", "app-secret");
    app.enable_client_messages = true;
    app.history = vec![HistoryRule { prefix: "feed-".into(), size: 100, ttl_secs: 300 }];
    app
}

// ---------------------------------------------------------------------------------------------
// JSON pointers and schemas

fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {reference}"));
    doc.pointer(pointer).unwrap_or_else(|| panic!("$ref {reference} does not resolve"))
}

/// Follows `$ref` chains.
fn deref<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        value = resolve(doc, reference);
    }
    value
}

/// Every `$ref` anywhere in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

const ANNOTATIONS: &[&str] =
    &["description", "title", "example", "examples", "contentMediaType", "default", "format"];

/// A JSON Schema check for the keywords the documents use; a keyword it does not know fails the
/// test, so no part of a schema is silently unchecked.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        if schema == &Value::Bool(false) {
            errors.push(format!("{at}: no value allowed"));
        }
        return;
    };
    for (keyword, rule) in schema {
        match keyword.as_str() {
            "$ref" => validate(doc, resolve(doc, rule.as_str().unwrap()), value, at, errors),
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    other => other.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect(),
                };
                let fits = types.iter().any(|t| match *t {
                    "object" => value.is_object(),
                    "array" => value.is_array(),
                    "string" => value.is_string(),
                    "integer" => value.is_i64() || value.is_u64(),
                    "number" => value.is_number(),
                    "boolean" => value.is_boolean(),
                    "null" => value.is_null(),
                    other => panic!("unknown type {other}"),
                });
                if !fits {
                    errors.push(format!("{at}: {value} is not of type {rule}"));
                }
            }
            "const" if value != rule => errors.push(format!("{at}: {value} is not {rule}")),
            "enum" if !rule.as_array().unwrap().contains(value) => {
                errors.push(format!("{at}: {value} is not one of {rule}"))
            }
            "const" | "enum" => {}
            "pattern" => {
                if let Some(text) = value.as_str() {
                    let pattern = regex::Regex::new(rule.as_str().unwrap()).expect("pattern compiles");
                    if !pattern.is_match(text) {
                        errors.push(format!("{at}: {text:?} does not match {pattern}"));
                    }
                }
            }
            "minLength" | "maxLength" => {
                if let Some(text) = value.as_str() {
                    let (len, limit) = (text.chars().count() as u64, rule.as_u64().unwrap());
                    if (keyword == "minLength" && len < limit) || (keyword == "maxLength" && len > limit) {
                        errors.push(format!("{at}: length {len} breaks {keyword} {limit}"));
                    }
                }
            }
            "minimum" => {
                if value.as_f64().is_some_and(|n| n < rule.as_f64().unwrap()) {
                    errors.push(format!("{at}: {value} < {rule}"));
                }
            }
            "minItems" | "maxItems" => {
                if let Some(items) = value.as_array() {
                    let (len, limit) = (items.len() as u64, rule.as_u64().unwrap());
                    if (keyword == "minItems" && len < limit) || (keyword == "maxItems" && len > limit) {
                        errors.push(format!("{at}: {len} items breaks {keyword} {limit}"));
                    }
                }
            }
            "required" => {
                if let Some(object) = value.as_object() {
                    for name in rule.as_array().unwrap() {
                        if !object.contains_key(name.as_str().unwrap()) {
                            errors.push(format!("{at}: missing {name}"));
                        }
                    }
                }
            }
            "properties" => {
                if let Some(object) = value.as_object() {
                    for (name, property) in rule.as_object().unwrap() {
                        if let Some(child) = object.get(name) {
                            validate(doc, property, child, &format!("{at}.{name}"), errors);
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(object) = value.as_object() {
                    let known = schema.get("properties").and_then(Value::as_object);
                    for (name, child) in object {
                        if !known.is_some_and(|k| k.contains_key(name)) {
                            validate(doc, rule, child, &format!("{at}.{name}"), errors);
                        }
                    }
                }
            }
            "items" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    validate(doc, rule, item, &format!("{at}[{i}]"), errors);
                }
            }
            "allOf" => rule.as_array().unwrap().iter().for_each(|s| validate(doc, s, value, at, errors)),
            "oneOf" | "anyOf" => {
                let passing = rule
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|s| {
                        let mut inner = Vec::new();
                        validate(doc, s, value, at, &mut inner);
                        inner.is_empty()
                    })
                    .count();
                if passing == 0 || (keyword == "oneOf" && passing > 1) {
                    errors.push(format!("{at}: {value} matches {passing} of the {keyword} schemas"));
                }
            }
            "not" => {
                let mut inner = Vec::new();
                validate(doc, rule, value, at, &mut inner);
                if inner.is_empty() {
                    errors.push(format!("{at}: {value} matches a `not` schema"));
                }
            }
            // The schema of the JSON text inside a string (Pusher's double-encoded `data`).
            "x-decoded" => match value.as_str().map(serde_json::from_str::<Value>) {
                Some(Ok(decoded)) => validate(doc, rule, &decoded, &format!("{at}(decoded)"), errors),
                Some(Err(e)) => errors.push(format!("{at}: not JSON text: {e}")),
                None => {}
            },
            other if ANNOTATIONS.contains(&other) => {}
            other => panic!("{at}: schema keyword {other:?} is not checked by this test; teach validate()"),
        }
    }
}

fn assert_fits(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let mut errors = Vec::new();
    validate(doc, schema, value, "$", &mut errors);
    assert!(errors.is_empty(), "{what} does not fit its schema: {errors:#?}\nvalue: {value}");
}

// ---------------------------------------------------------------------------------------------
// Structure

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                out.push((method.to_owned(), path.clone(), operation));
            }
        }
    }
    out
}

fn template_params(path: &str) -> BTreeSet<String> {
    path.split('{').skip(1).filter_map(|rest| rest.split_once('}')).map(|(name, _)| name.to_owned()).collect()
}

fn check_openapi_structure(name: &str, doc: &Value) {
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{name}: openapi 3.1.x");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string(), "{name}: info");
    let mut all = Vec::new();
    refs(doc, &mut all);
    assert!(!all.is_empty());
    for reference in &all {
        resolve(doc, reference);
    }
    let schemes = doc["components"]["securitySchemes"].as_object().cloned().unwrap_or_default();
    let mut ids = BTreeSet::new();
    for (method, path, operation) in operations(doc) {
        let at = format!("{name} {method} {path}");
        assert!(path.starts_with('/'), "{at}: paths start with /");
        let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{at}: operationId"));
        assert!(ids.insert(id.to_owned()), "{at}: operationId {id} is used twice");
        assert!(operation["summary"].is_string(), "{at}: summary");
        let responses = operation["responses"].as_object().unwrap_or_else(|| panic!("{at}: responses"));
        assert!(!responses.is_empty(), "{at}: at least one response");
        for (status, response) in responses {
            assert!(
                status == "default"
                    || (status.len() == 3 && status.parse::<u16>().is_ok_and(|s| (100..600).contains(&s))),
                "{at}: status {status}"
            );
            let response = deref(doc, response);
            assert!(response["description"].is_string(), "{at} {status}: description");
            for (media, content) in response["content"].as_object().into_iter().flatten() {
                if let Some(example) = content.get("example") {
                    assert_fits(doc, &content["schema"], example, &format!("{at} {status} {media} example"));
                }
            }
        }
        let params: Vec<&Value> =
            operation["parameters"].as_array().into_iter().flatten().map(|p| deref(doc, p)).collect();
        for param in &params {
            assert!(param["name"].is_string() && param["schema"].is_object(), "{at}: parameter {param}");
            assert!(["path", "query", "header", "cookie"].contains(&param["in"].as_str().unwrap_or("")));
            if let Some(example) = param.get("example") {
                assert_fits(doc, &param["schema"], example, &format!("{at} parameter {}", param["name"]));
            }
        }
        let declared: BTreeSet<String> = params
            .iter()
            .filter(|p| p["in"] == "path")
            .inspect(|p| assert_eq!(p["required"], true, "{at}: path parameters are required"))
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(declared, template_params(&path), "{at}: path parameters match the template");
        if let Some(body) = operation.get("requestBody") {
            for (media, content) in body["content"].as_object().expect("requestBody content") {
                if let Some(example) = content.get("example") {
                    assert_fits(doc, &content["schema"], example, &format!("{at} request {media} example"));
                }
            }
        }
        for requirement in operation["security"].as_array().into_iter().flatten() {
            for scheme in requirement.as_object().unwrap().keys() {
                assert!(schemes.contains_key(scheme), "{at}: security scheme {scheme} is defined");
            }
        }
    }
}

#[test]
fn openapi_documents_are_valid_3_1_with_every_ref_resolving_and_examples_fitting() {
    check_openapi_structure("openapi.json", &document("openapi.json"));
    check_openapi_structure("openapi-admin.json", &document("openapi-admin.json"));
}

/// The messages of `channel` that its `send` (server → client) or `receive` operations list.
fn channel_messages<'a>(doc: &'a Value, channel: &str, action: &str) -> Vec<&'a Value> {
    let channel_ref = format!("#/channels/{channel}");
    doc["operations"]
        .as_object()
        .unwrap()
        .values()
        .filter(|op| op["action"] == action && op["channel"]["$ref"] == channel_ref.as_str())
        .flat_map(|op| op["messages"].as_array().unwrap())
        .map(|m| deref(doc, m))
        .collect()
}

#[test]
fn asyncapi_document_is_valid_3_0_with_every_ref_resolving_and_examples_fitting() {
    let doc = document("asyncapi.json");
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for reference in &all {
        resolve(&doc, reference);
    }
    for (name, server) in doc["servers"].as_object().unwrap() {
        assert!(server["host"].is_string() && server["protocol"].is_string(), "server {name}");
    }
    for (name, channel) in doc["channels"].as_object().unwrap() {
        let address = channel["address"].as_str().unwrap_or_else(|| panic!("channel {name}: address"));
        let declared: BTreeSet<String> =
            channel["parameters"].as_object().into_iter().flatten().map(|(k, _)| k.clone()).collect();
        assert_eq!(declared, template_params(address), "channel {name}: parameters match the address");
        for server in channel["servers"].as_array().into_iter().flatten() {
            assert!(server["$ref"].as_str().unwrap().starts_with("#/servers/"), "channel {name}: server ref");
        }
        for (key, message) in channel["messages"].as_object().unwrap() {
            let message = deref(&doc, message);
            assert!(message["name"].is_string(), "message {key}: name");
            assert!(message["payload"].is_object(), "message {key}: payload");
            for example in message["examples"].as_array().into_iter().flatten() {
                assert_fits(
                    &doc,
                    &message["payload"],
                    &example["payload"],
                    &format!("message {key} example"),
                );
            }
        }
    }
    assert!(!doc["operations"].as_object().unwrap().is_empty());
    for (name, operation) in doc["operations"].as_object().unwrap() {
        assert!(["send", "receive"].contains(&operation["action"].as_str().unwrap()), "{name}: action");
        let channel = operation["channel"]["$ref"].as_str().expect("operation channel is a $ref");
        assert!(channel.starts_with("#/channels/"), "{name}: channel ref");
        // AsyncAPI 3: an operation's messages must be messages of its channel.
        for message in operation["messages"].as_array().expect("operation messages") {
            let reference = message["$ref"].as_str().unwrap();
            assert!(reference.starts_with(&format!("{channel}/messages/")), "{name}: {reference}");
        }
    }
    for (code, entry) in doc["x-plexus-close-codes"].as_object().expect("close codes") {
        assert!(code.parse::<u16>().is_ok(), "close code {code}");
        assert!(entry["name"].is_string() && entry["reconnect"].is_string() && entry["when"].is_string());
    }
}

// ---------------------------------------------------------------------------------------------
// Routes in the source

/// Source files under `root` (paths relative to it), with `#[cfg(test)]` modules and line
/// comments removed.
fn sources(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code: String = text
                    .split("#[cfg(test)]")
                    .next()
                    .unwrap()
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                out.push((path.strip_prefix(root).unwrap().to_path_buf(), code));
            }
        }
    }
    out.sort();
    out
}

/// Skips a balanced `( … )` starting at `chars[i] == '('`, string literals included.
fn skip_parens(chars: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        match chars[i] {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            '"' => {
                i += 1;
                while chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced parentheses");
}

/// `(METHOD, path)` of every `.route("path", get(…).post(…))` in `code`.
fn routes_in(file: &Path, code: &str) -> Vec<(String, String)> {
    for unsupported in [".nest(", ".nest_service(", ".route_service("] {
        assert!(
            !code.contains(unsupported),
            "{}: {unsupported} is not read by this test; extend routes_in",
            file.display()
        );
    }
    let chars: Vec<char> = code.chars().collect();
    let text: String = chars.iter().collect();
    let mut out = Vec::new();
    for (start, _) in text.match_indices(".route(") {
        // match_indices gives byte offsets; the source is ASCII around routes, but map safely.
        let mut i = text[..start].chars().count() + ".route(".len();
        let skip_ws = |i: &mut usize| {
            while chars[*i].is_whitespace() {
                *i += 1;
            }
        };
        skip_ws(&mut i);
        assert_eq!(chars[i], '"', "{}: a route path must be a string literal", file.display());
        let end = i + 1 + chars[i + 1..].iter().position(|c| *c == '"').unwrap();
        let path: String = chars[i + 1..end].iter().collect();
        i = end + 1;
        skip_ws(&mut i);
        assert_eq!(chars[i], ',', "{}: route {path}", file.display());
        i += 1;
        loop {
            skip_ws(&mut i);
            let ident_end =
                i + chars[i..].iter().position(|c| !(c.is_alphanumeric() || *c == '_' || *c == ':')).unwrap();
            let ident: String = chars[i..ident_end].iter().collect();
            let method = ident.rsplit("::").next().unwrap().to_owned();
            assert!(
                METHODS.contains(&method.as_str()) || method == "any",
                "{}: route {path}: cannot read the method {ident:?}",
                file.display()
            );
            out.push((method.to_ascii_uppercase(), path.clone()));
            assert_eq!(chars[ident_end], '(', "{}: route {path}", file.display());
            i = skip_parens(&chars, ident_end);
            skip_ws(&mut i);
            if chars[i] == '.' {
                i += 1;
            } else {
                break;
            }
        }
    }
    out
}

/// `{name}` → `{}`, so a renamed path parameter is not a different route.
fn normalise(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            c => out.push(c),
        }
    }
    out
}

/// `(METHOD, normalised path)` pairs.
type Routes = BTreeSet<(String, String)>;

/// Routes the source mounts: (main port, admin and metrics listeners).
fn source_routes() -> (Routes, Routes) {
    let (mut main, mut operator) = (BTreeSet::new(), BTreeSet::new());
    for (file, code) in sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")) {
        let on_operator_listener = file.starts_with("admin") || file == Path::new("metrics.rs");
        for (method, path) in routes_in(&file, &code) {
            let route = (method, normalise(&path));
            if on_operator_listener {
                operator.insert(route)
            } else {
                main.insert(route)
            };
        }
    }
    (main, operator)
}

fn documented_routes(doc: &Value) -> Routes {
    operations(doc).into_iter().map(|(m, p, _)| (m.to_ascii_uppercase(), normalise(&p))).collect()
}

#[test]
fn the_route_reader_sees_multi_line_routes_and_method_chains() {
    let code = "Router::new()\n  .route(\"/a/{x}\", get(a))\n  .route(\n    \"/b\",\n    post(|| async { f(\"(\") }).get(b),\n  )\n";
    assert_eq!(
        routes_in(Path::new("t.rs"), code),
        [("GET".to_owned(), "/a/{x}".to_owned()), ("POST".into(), "/b".into()), ("GET".into(), "/b".into())]
    );
}

#[test]
fn every_mounted_route_is_documented_and_every_documented_route_is_mounted() {
    let (main, operator) = source_routes();
    assert!(main.contains(&("GET".into(), "/docs".into())), "the reader found the docs routes: {main:?}");
    let documented = documented_routes(&document("openapi.json"));
    assert_eq!(
        main.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "mounted on the main port but missing from docs/api/openapi.json"
    );
    assert_eq!(
        documented.difference(&main).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in docs/api/openapi.json but not mounted"
    );
    let documented = documented_routes(&document("openapi-admin.json"));
    assert_eq!(operator, documented, "admin and metrics routes vs docs/api/openapi-admin.json");
}

// ---------------------------------------------------------------------------------------------
// A real server answers what the documents say

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

/// One HTTP/1.1 request. A body without `Content-Length` (a stream) is not waited for.
async fn http(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    tokio::time::timeout(WAIT, reader.read_line(&mut status_line)).await.expect("status in time").unwrap();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let mut fields = HashMap::new();
    loop {
        let mut line = String::new();
        tokio::time::timeout(WAIT, reader.read_line(&mut line)).await.expect("headers in time").unwrap();
        if line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        fields.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let mut body = vec![0; fields.get("content-length").map_or(0, |l| l.parse().unwrap())];
    tokio::time::timeout(WAIT, reader.read_exact(&mut body)).await.expect("body in time").unwrap();
    let content_type = fields.get("content-type").cloned().unwrap_or_default();
    Reply { status, content_type, body: String::from_utf8(body).unwrap() }
}

fn is_auth_param(name: &str) -> bool {
    name.starts_with("auth_") || name == "body_md5"
}

/// The path with its parameters' examples, the example query parameters and the example body.
fn example_request(doc: &Value, path: &str, operation: &Value) -> (String, Vec<(String, String)>, String) {
    let mut target = path.to_owned();
    let mut query = Vec::new();
    for param in operation["parameters"].as_array().into_iter().flatten().map(|p| deref(doc, p)) {
        let name = param["name"].as_str().unwrap();
        let Some(example) = param["example"].as_str() else {
            assert!(param["in"] != "path", "{path}: path parameter {name} needs an example");
            continue;
        };
        match param["in"].as_str().unwrap() {
            "path" => {
                let encoded: String = form_urlencoded::byte_serialize(example.as_bytes()).collect();
                target = target.replace(&format!("{{{name}}}"), &encoded);
            }
            "query" if !is_auth_param(name) => query.push((name.to_owned(), example.to_owned())),
            _ => {}
        }
    }
    let body = operation["requestBody"]["content"]["application/json"]["example"].clone();
    let body = if body.is_null() { String::new() } else { body.to_string() };
    (target, query, body)
}

fn with_query(path: &str, query: &[(String, String)]) -> String {
    if query.is_empty() {
        return path.to_owned();
    }
    let encoded = form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
    format!("{path}?{encoded}")
}

/// The reply's status is documented for the operation, with its content type, and a JSON body
/// fits the documented schema.
fn check_reply(doc: &Value, what: &str, operation: &Value, reply: &Reply) {
    assert_ne!(reply.status, 405, "{what}: the documented method is not served");
    assert!(
        !(reply.status == 404
            && (reply.body.contains("no route for") || reply.body.contains("no such admin route"))),
        "{what}: the documented path is not served: {}",
        reply.body
    );
    let response = operation["responses"]
        .get(reply.status.to_string())
        .map(|r| deref(doc, r))
        .unwrap_or_else(|| panic!("{what}: status {} is not documented ({})", reply.status, reply.body));
    let Some(content) = response["content"].as_object() else { return };
    let media = reply.content_type.split(';').next().unwrap().trim();
    let documented = content
        .get(media)
        .unwrap_or_else(|| panic!("{what} {}: content type {media:?} is not documented", reply.status));
    if media == "application/json" {
        let body: Value =
            serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{what}: JSON body: {e}"));
        assert_fits(doc, &documented["schema"], &body, &format!("{what} {} body", reply.status));
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn every_documented_main_port_route_is_served_as_documented() {
    let doc = document("openapi.json");
    let server = TestServer::start(vec![docs_app()]).await;
    let app = docs_app();
    for (method, path, operation) in operations(&doc) {
        let what = format!("{} {path}", method.to_ascii_uppercase());
        let (target, query, body) = example_request(&doc, &path, operation);
        let method = method.to_ascii_uppercase();
        let plain = http(server.addr, &method, &with_query(&target, &query), &[], &body).await;
        check_reply(&doc, &what, operation, &plain);
        let signed = operation["security"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s.get("pusherSignature").is_some());
        if signed {
            assert_eq!(plain.status, 401, "{what}: unsigned requests are refused");
            let extra: Vec<(&str, &str)> = query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let signed_query = signature::sign_api_query(
                &app.key,
                &app.secret,
                &method,
                &target,
                body.as_bytes(),
                now(),
                &extra,
            );
            let reply = http(server.addr, &method, &format!("{target}?{signed_query}"), &[], &body).await;
            assert_eq!(reply.status, 200, "{what}: the signed example succeeds: {}", reply.body);
            check_reply(&doc, &what, operation, &reply);
        }
    }
    // The served documents are the files.
    for name in ["openapi.json", "openapi-admin.json", "asyncapi.json"] {
        let reply = http(server.addr, "GET", &format!("/docs/{name}"), &[], "").await;
        assert_eq!((reply.status, reply.content_type.as_str()), (200, "application/json"));
        assert_eq!(serde_json::from_str::<Value>(&reply.body).unwrap(), document(name), "/docs/{name}");
    }
    // A path that is documented nowhere is the fallback's 404, as the documents say.
    let missing = http(server.addr, "GET", "/apps/app-id/nothing-here", &[], "").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("no route for"), "{}", missing.body);
}

#[tokio::test]
async fn the_docs_page_lists_every_route_and_message_without_external_assets() {
    let server = TestServer::start(vec![docs_app()]).await;
    let page = http(server.addr, "GET", "/docs", &[], "").await;
    assert_eq!((page.status, page.content_type.as_str()), (200, "text/html; charset=utf-8"));
    for name in ["openapi.json", "openapi-admin.json"] {
        for (method, path, _) in operations(&document(name)) {
            assert!(page.body.contains(&format!("<code>{path}</code>")), "/docs lists {method} {path}");
        }
    }
    let asyncapi = document("asyncapi.json");
    for message in asyncapi["components"]["messages"].as_object().unwrap().values() {
        let name = message["name"].as_str().unwrap();
        assert!(page.body.contains(&format!("<code>{name}</code>")), "/docs lists message {name}");
    }
    for code in asyncapi["x-plexus-close-codes"].as_object().unwrap().keys() {
        assert!(page.body.contains(&format!("<td>{code}</td>")), "/docs lists close code {code}");
    }
    assert!(
        !page.body.contains("<script") && !page.body.contains("http://") && !page.body.contains("https://")
    );
}

#[tokio::test]
async fn every_documented_admin_and_metrics_route_is_served_as_documented() {
    let doc = document("openapi-admin.json");
    let server = TestServer::start(vec![docs_app()]).await;
    let admin = Arc::new(Admin {
        server: server.state.clone(),
        logs: LogStream::new(),
        token: ADMIN_TOKEN.into(),
        bridges: Vec::new(),
    });
    let config = AdminConfig { enabled: true, port: 0, ..AdminConfig::default() };
    let admin_addr = plexus_server::admin::start(&config, admin).await.expect("admin listener binds");
    let metrics_config = MetricsConfig { enabled: true, host: "127.0.0.1".into(), port: 0 };
    let metrics_addr = plexus_server::metrics::start(&metrics_config).await.expect("metrics listener binds");
    let default_url = doc["servers"][0]["url"].as_str().unwrap();
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for (method, path, operation) in operations(&doc) {
        let what = format!("{} {path}", method.to_ascii_uppercase());
        let url = operation["servers"][0]["url"].as_str().unwrap_or(default_url);
        let addr = match url {
            "http://127.0.0.1:9602" => admin_addr,
            "http://127.0.0.1:9601" => metrics_addr,
            other => panic!("{what}: unknown listener {other}"),
        };
        let (target, query, body) = example_request(&doc, &path, operation);
        let target = with_query(&target, &query);
        let method = method.to_ascii_uppercase();
        let reply = http(addr, &method, &target, &[("Authorization", &bearer)], &body).await;
        assert_eq!(reply.status, 200, "{what}: the example succeeds: {}", reply.body);
        check_reply(&doc, &what, operation, &reply);
        if operation.get("security").is_some() {
            let refused = http(addr, &method, &target, &[], &body).await;
            assert_eq!(refused.status, 401, "{what}: needs the token");
            check_reply(&doc, &what, operation, &refused);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AsyncAPI against the code and real frames

/// Every `"pusher:…"`, `"pusher_internal:…"` and `"plexus:…"` string literal in `code`.
fn event_names(code: &str, out: &mut BTreeSet<String>) {
    for prefix in ["\"pusher:", "\"pusher_internal:", "\"plexus:"] {
        for (start, _) in code.match_indices(prefix) {
            let rest = &code[start + 1..];
            let end = rest.find('"').unwrap_or(0);
            let name = &rest[..end];
            let suffix = &name[prefix.len() - 1..];
            if !suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                out.insert(name.to_owned());
            }
        }
    }
}

#[test]
fn every_event_name_and_close_code_in_the_code_is_in_the_asyncapi_document() {
    let doc = document("asyncapi.json");
    let documented: BTreeSet<&str> = doc["components"]["messages"]
        .as_object()
        .unwrap()
        .values()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    let mut names = BTreeSet::new();
    for krate in ["plexus-protocol", "plexus-core", "plexus-channels", "plexus-server"] {
        let dir = workspace().join("crates").join(krate).join("src");
        for (_, code) in sources(&dir) {
            event_names(&code, &mut names);
        }
    }
    for expected in ["pusher:connection_established", "plexus:resume", "plexus:reply", "pusher:subscribe"] {
        assert!(names.contains(expected), "the scan finds {expected}: {names:?}");
    }
    let missing: Vec<&String> = names.iter().filter(|n| !documented.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "event names the code uses but docs/api/asyncapi.json does not: {missing:?}");

    let close_codes = doc["x-plexus-close-codes"].as_object().unwrap();
    let source =
        std::fs::read_to_string(workspace().join("crates/plexus-protocol/src/close_code.rs")).unwrap();
    let mut seen = 0;
    for line in source.lines() {
        let Some((variant, code)) = line.trim().trim_end_matches(',').split_once(" = ") else { continue };
        let Ok(code) = code.parse::<u16>() else { continue };
        seen += 1;
        let entry =
            close_codes.get(&code.to_string()).unwrap_or_else(|| panic!("close code {code} is documented"));
        assert_eq!(entry["name"], variant, "close code {code}");
    }
    assert!(seen >= 10, "the close-code scan read the enum ({seen} codes)");
    let ws = std::fs::read_to_string(workspace().join("crates/plexus-server/src/ws/mod.rs")).unwrap();
    for (start, _) in ws.match_indices("(100") {
        let code = &ws[start + 1..start + 5];
        if code.parse::<u16>().is_ok() && ws[start + 5..].starts_with(',') {
            assert!(close_codes.contains_key(code), "WebSocket close code {code} is documented");
        }
    }
}

/// A frame the server sent on `channel` fits one of the documented messages of that name.
fn check_frame(doc: &Value, channel: &str, event: &str, payload: &Value) {
    let sent = channel_messages(doc, channel, "send");
    let mut candidates: Vec<&&Value> = sent.iter().filter(|m| m["name"] == event).collect();
    if candidates.is_empty() {
        let generic = if event.starts_with("client-") { "client-{event}" } else { "{event}" };
        candidates = sent.iter().filter(|m| m["name"] == generic).collect();
    }
    assert!(!candidates.is_empty(), "{channel}: no documented message for {event}");
    let failures: Vec<Vec<String>> = candidates
        .iter()
        .map(|m| {
            let mut errors = Vec::new();
            validate(doc, &m["payload"], payload, "$", &mut errors);
            errors
        })
        .collect();
    assert!(
        failures.iter().any(Vec::is_empty),
        "{channel} {event}: {payload} fits no message: {failures:#?}"
    );
}

async fn recv_checked(doc: &Value, client: &mut TestClient, event: &str) -> Value {
    let frame = client.expect(event).await;
    check_frame(doc, "pusher", event, &frame);
    frame
}

#[tokio::test]
async fn real_websocket_frames_fit_the_asyncapi_messages() {
    let doc = document("asyncapi.json");
    let app = docs_app();
    let server = TestServer::start(vec![app.clone()]).await;

    let mut alice = server.connect_raw("/app/app-key?protocol=7").await;
    let established = recv_checked(&doc, &mut alice, "pusher:connection_established").await;
    alice.socket_id = data_of(&established)["socket_id"].as_str().unwrap().to_owned();
    alice.send(json!({"event": "pusher:ping", "data": {}})).await;
    recv_checked(&doc, &mut alice, "pusher:pong").await;

    // History and resume.
    alice.send(json!({"event": "pusher:subscribe", "data": {"channel": "feed-1"}})).await;
    recv_checked(&doc, &mut alice, "pusher_internal:subscription_succeeded").await;
    server.trigger(&app, "feed-1", "created", "{\"id\":1}").await;
    let first = recv_checked(&doc, &mut alice, "created").await;
    server.trigger(&app, "feed-1", "created", "{\"id\":2}").await;
    recv_checked(&doc, &mut alice, "created").await;
    let mut bob = server.connect("app-key").await;
    bob.send(
        json!({"event": "pusher:subscribe", "data": {"channel": "feed-1", "position": first["position"]}}),
    )
    .await;
    recv_checked(&doc, &mut bob, "pusher_internal:subscription_succeeded").await;
    let replayed = recv_checked(&doc, &mut bob, "created").await;
    assert_eq!(replayed["data"], "{\"id\":2}");
    let resume = recv_checked(&doc, &mut bob, "plexus:resume").await;
    assert_eq!(data_of(&resume)["recovered"], true);

    // Refusals: a filter too large, a bad signature, a plexus frame without typed channels.
    let events: Vec<String> = (0..40).map(|i| format!("e{i}")).collect();
    bob.send(json!({"event": "pusher:subscribe", "data": {"channel": "news", "filter": {"events": events}}}))
        .await;
    recv_checked(&doc, &mut bob, "pusher:subscription_error").await;
    recv_checked(&doc, &mut bob, "pusher:error").await;
    bob.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-a", "auth": "app-key:00"}}))
        .await;
    recv_checked(&doc, &mut bob, "pusher:subscription_error").await;
    recv_checked(&doc, &mut bob, "pusher:error").await;
    bob.send(json!({"event": "plexus:open", "data": {"ref": "1", "channel": "chat"}})).await;
    recv_checked(&doc, &mut bob, "pusher:error").await;

    // Presence and client events.
    let joined = alice
        .subscribe_presence(&app, "presence-room", "{\"user_id\":\"1\",\"user_info\":{\"name\":\"Ann\"}}")
        .await;
    check_frame(&doc, "pusher", "pusher_internal:subscription_succeeded", &joined);
    let joined = bob.subscribe_presence(&app, "presence-room", "{\"user_id\":\"2\"}").await;
    check_frame(&doc, "pusher", "pusher_internal:subscription_succeeded", &joined);
    recv_checked(&doc, &mut alice, "pusher_internal:member_added").await;
    bob.send(json!({"event": "client-typing", "channel": "presence-room", "data": {"on": true}})).await;
    recv_checked(&doc, &mut alice, "client-typing").await;
    bob.close().await;
    recv_checked(&doc, &mut alice, "pusher_internal:member_removed").await;
}

/// Reads SSE events (`id`, `event`, `data`) from an HTTP/1.0 stream (no chunked framing).
struct SseReader {
    reader: BufReader<TcpStream>,
}

impl SseReader {
    async fn open(addr: SocketAddr, target: &str, last_event_id: Option<&str>) -> SseReader {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        stream
            .write_all(format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n{resume}\r\n").as_bytes())
            .await
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        tokio::time::timeout(WAIT, reader.read_line(&mut line)).await.expect("status in time").unwrap();
        assert!(line.contains(" 200 "), "{line}");
        loop {
            line.clear();
            tokio::time::timeout(WAIT, reader.read_line(&mut line)).await.expect("headers in time").unwrap();
            if line.trim().is_empty() {
                return SseReader { reader };
            }
        }
    }

    async fn next(&mut self) -> (Option<String>, String, Value) {
        let (mut id, mut event, mut data): (Option<String>, Option<String>, Option<String>) =
            (None, None, None);
        loop {
            let mut line = String::new();
            let read =
                tokio::time::timeout(WAIT, self.reader.read_line(&mut line)).await.expect("SSE in time");
            assert!(read.unwrap() > 0, "the stream is open");
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if let (Some(event), Some(data)) = (event.take(), data.take()) {
                    return (id, event, serde_json::from_str(&data).expect("SSE data is JSON"));
                }
                continue;
            }
            if let Some(value) = line.strip_prefix("id: ") {
                id = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("event: ") {
                event = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("data: ") {
                data = Some(value.to_owned());
            }
        }
    }

    async fn expect(&mut self, doc: &Value, name: &str) -> (Option<String>, Value) {
        let (id, event, data) = self.next().await;
        assert_eq!(event, name, "{data}");
        check_frame(doc, "sse", &event, &data);
        (id, data)
    }
}

#[tokio::test]
async fn real_sse_events_fit_the_asyncapi_messages_and_resume_by_last_event_id() {
    let doc = document("asyncapi.json");
    let app = docs_app();
    let server = TestServer::start(vec![app.clone()]).await;
    let target = "/apps/app-id/events/stream?channels=feed-2";
    let mut stream = SseReader::open(server.addr, target, None).await;
    stream.expect(&doc, "pusher_internal:subscription_succeeded").await;
    server.trigger(&app, "feed-2", "created", "{\"id\":1}").await;
    let (id, data) = stream.expect(&doc, "created").await;
    assert_eq!(id.as_deref(), data["position"].as_str(), "the SSE id is the position");
    server.trigger(&app, "feed-2", "created", "{\"id\":2}").await;
    stream.expect(&doc, "created").await;

    let mut resumed = SseReader::open(server.addr, target, id.as_deref()).await;
    resumed.expect(&doc, "pusher_internal:subscription_succeeded").await;
    let (_, replayed) = resumed.expect(&doc, "created").await;
    assert_eq!(replayed["data"], "{\"id\":2}");
    let (_, resume) = resumed.expect(&doc, "plexus:resume").await;
    assert_eq!(data_of(&resume)["recovered"], true);
}
