//! Where each setting comes from: defaults < the TOML file < the environment < the command line.
//!
//! Every setting has a variable, by one rule: `PLEXUS_` then the setting's path in the file with
//! `__` between the parts, upper case: `[server] port` is `PLEXUS_SERVER__PORT`,
//! `[server.tls] cert` is `PLEXUS_SERVER__TLS__CERT`, and list entries go by index:
//! `PLEXUS_APPS__0__SECRET` is the first `[[apps]]`' secret (an index within the list changes
//! that entry, the next index adds one). A `PLEXUS_` variable with `__` in its name that names no
//! setting is an error naming it; variables without `__` are left alone (the older short ones,
//! `PLEXUS_HOST` and the like, belong to their flags; other tools use the prefix too).
//!
//! The layers are merged as TOML values here, then read into [`Config`] once with figment's
//! lossy extraction, so `"6001"` from a variable fills a `u16` and `"true"` a `bool`, while a
//! numeric-looking app id stays the string it is. figment's own `Env` provider is not used: it
//! parses `12345` into a number (failing `id: String`) and replaces a file's list wholesale
//! instead of changing one entry. Strings in the file may name variables: `${APP_SECRET}` is
//! replaced by its value (an unset one is an error naming it), `$${` writes `${`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use toml::Value;

use crate::config::{Config, ConfigError};

/// Where a setting's value came from (not at its default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The config file, with the variables its `${…}` took.
    File { path: String, vars: Vec<String> },
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File { path, vars } => {
                write!(f, "file {path}")?;
                for (i, var) in vars.iter().enumerate() {
                    write!(f, "{} ${{{var}}}", if i == 0 { " via" } else { "," })?;
                }
                Ok(())
            }
            Source::Env(var) => write!(f, "env {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One setting given on the command line, or by a flag's own variable.
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted path, `server.port`, `apps.0.secret`.
    pub path: String,
    pub value: Value,
    pub source: Source,
}

/// What a configuration is read from.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    pub file: Option<PathBuf>,
    /// `PLEXUS_*__*` variables, name and value (see [`settings_from_env`]).
    pub env: Vec<(String, String)>,
    /// Flags, lowest first: a later one for the same path wins.
    pub overrides: Vec<Override>,
}

/// A configuration and, for every setting not at its default, where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// By dotted path (`server.port`, `apps.0.secret`); a list of plain values set whole is
    /// recorded at the list's path.
    pub sources: BTreeMap<String, Source>,
}

impl Loaded {
    /// Where the setting at `path` came from; `None` for a default.
    pub fn source_of(&self, path: &str) -> Option<&Source> {
        self.sources.get(path)
    }
}

/// The process's `PLEXUS_` variables that name settings: those with `__` in their name.
pub fn settings_from_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut found = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("PLEXUS_") || !name.contains("__") {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::Variable {
            var: name.to_owned(),
            reason: "its value is not UTF-8".into(),
        })?;
        found.push((name.to_owned(), value));
    }
    Ok(found)
}

/// Reads the layers into a checked configuration.
pub fn load(layers: &Layers) -> Result<Loaded, ConfigError> {
    let (tree, sources, origin) = match &layers.file {
        Some(path) => {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
            let (tree, sources) = file_layer(&text, &shown)?;
            (tree, sources, shown)
        }
        None => (toml::Table::new(), BTreeMap::new(), "the configuration".to_owned()),
    };
    merge(tree, sources, &origin, &layers.env, &layers.overrides)
}

/// Parses TOML text as the file layer alone (no variables, no flags); `origin` names it.
pub fn parse(text: &str, origin: &str) -> Result<Loaded, ConfigError> {
    let (tree, sources) = file_layer(text, origin)?;
    merge(tree, sources, origin, &[], &[])
}

/// The file's table with `${VAR}`s replaced, and a source for each of its values.
fn file_layer(text: &str, origin: &str) -> Result<(toml::Table, BTreeMap<String, Source>), ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse { path: origin.into(), message: e.to_string() })?;
    let mut value = Value::Table(table);
    let mut sources = BTreeMap::new();
    interpolate_tree(&mut value, &mut Vec::new(), origin, &mut sources)?;
    let Value::Table(table) = value else { unreachable!("a table stays a table") };
    Ok((table, sources))
}

/// Replaces `${VAR}` in every string of `value` and records each leaf's source.
fn interpolate_tree(
    value: &mut Value,
    path: &mut Vec<String>,
    origin: &str,
    sources: &mut BTreeMap<String, Source>,
) -> Result<(), ConfigError> {
    match value {
        Value::Table(table) => {
            for (key, child) in table.iter_mut() {
                path.push(key.clone());
                interpolate_tree(child, path, origin, sources)?;
                path.pop();
            }
        }
        Value::Array(items) if items.iter().any(|v| v.is_table()) => {
            for (i, child) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                interpolate_tree(child, path, origin, sources)?;
                path.pop();
            }
        }
        leaf => {
            let mut vars = Vec::new();
            interpolate_leaf(leaf, &mut vars).map_err(|reason| ConfigError::Interpolation {
                path: origin.into(),
                field: path.join("."),
                reason,
            })?;
            sources.insert(path.join("."), Source::File { path: origin.into(), vars });
        }
    }
    Ok(())
}

fn interpolate_leaf(value: &mut Value, vars: &mut Vec<String>) -> Result<(), String> {
    match value {
        Value::String(text) => *text = interpolate(text, vars)?,
        Value::Array(items) => {
            for item in items {
                interpolate_leaf(item, vars)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `text` with each `${NAME}` replaced by the variable's value and `$${` by `${`; other `$`s
/// stay. The names used are added to `vars`.
pub fn interpolate(text: &str, vars: &mut Vec<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in {text:?} (write $${{ for a literal ${{)"))?;
            let name = &tail[..end];
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("\"${{{name}}}\" is not a variable name (letters, digits, '_'; write $${{ for a literal ${{)"));
            }
            match std::env::var(name) {
                Ok(found) => out.push_str(&found),
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!(
                        "environment variable {name} is not set (write $${{ for a literal ${{)"
                    ))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("environment variable {name} is not UTF-8"))
                }
            }
            if !vars.iter().any(|v| v == name) {
                vars.push(name.to_owned());
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The path a `PLEXUS_…` variable names: `PLEXUS_APPS__0__SECRET` → `apps`, `0`, `secret`.
fn env_path(var: &str) -> Result<Vec<String>, ConfigError> {
    let parts: Vec<String> =
        var.trim_start_matches("PLEXUS_").split("__").map(|part| part.to_ascii_lowercase()).collect();
    if parts.iter().any(|part| part.is_empty()) {
        return Err(ConfigError::Variable {
            var: var.to_owned(),
            reason: "an empty part: write PLEXUS_SECTION__FIELD, e.g. PLEXUS_SERVER__PORT".into(),
        });
    }
    Ok(parts)
}

fn is_index(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())
}

/// Orders paths so that list entries are added in index order (`2` before `10`).
fn path_order(a: &[String], b: &[String]) -> std::cmp::Ordering {
    let key = |part: &String| match part.parse::<u64>() {
        Ok(n) if is_index(part) => (0, n, String::new()),
        _ => (1, 0, part.clone()),
    };
    a.iter().map(key).cmp(b.iter().map(key))
}

/// Puts `value` at `path` in `root`, making sections and list entries on the way.
fn set(root: &mut toml::Table, path: &[String], value: Value) -> Result<(), String> {
    let (first, rest) = path.split_first().ok_or("no setting named")?;
    if rest.is_empty() {
        root.insert(first.clone(), value);
        return Ok(());
    }
    let child = root.entry(first.clone()).or_insert_with(|| container_for(&rest[0]));
    set_in(child, first, rest, value)
}

fn container_for(next: &str) -> Value {
    if is_index(next) {
        Value::Array(Vec::new())
    } else {
        Value::Table(toml::Table::new())
    }
}

fn set_in(node: &mut Value, name: &str, path: &[String], value: Value) -> Result<(), String> {
    let (first, rest) = path.split_first().expect("set_in is called with a path");
    let child = match node {
        Value::Table(table) => {
            if rest.is_empty() {
                table.insert(first.clone(), value);
                return Ok(());
            }
            table.entry(first.clone()).or_insert_with(|| container_for(&rest[0]))
        }
        Value::Array(items) => {
            let index: usize = first.parse().ok().filter(|_| is_index(first)).ok_or_else(|| {
                format!("{name} is a list: the next part must be an index (0, 1, …), not {first:?}")
            })?;
            if index > items.len() {
                return Err(format!(
                    "{name} has {} entries: index {index} would leave a gap (the next one is {})",
                    items.len(),
                    items.len()
                ));
            }
            if index == items.len() {
                items.push(match rest.first() {
                    Some(next) => container_for(next),
                    None => value.clone(),
                });
            }
            if rest.is_empty() {
                items[index] = value;
                return Ok(());
            }
            &mut items[index]
        }
        _ => return Err(format!("{name} is a single value, not a section or a list")),
    };
    set_in(child, first, rest, value)
}

/// Adds the environment and flag layers to the file's and reads the result into a [`Config`].
fn merge(
    mut tree: toml::Table,
    mut sources: BTreeMap<String, Source>,
    origin: &str,
    env: &[(String, String)],
    overrides: &[Override],
) -> Result<Loaded, ConfigError> {
    let mut vars = Vec::new();
    for (var, value) in env {
        vars.push((env_path(var)?, var, value));
    }
    vars.sort_by(|a, b| path_order(&a.0, &b.0));
    for (path, var, value) in vars {
        set(&mut tree, &path, Value::String(value.clone()))
            .map_err(|reason| ConfigError::Variable { var: var.clone(), reason })?;
        forget_below(&mut sources, &path.join("."));
        sources.insert(path.join("."), Source::Env(var.clone()));
    }
    for given in overrides {
        let path: Vec<String> = given.path.split('.').map(str::to_owned).collect();
        set(&mut tree, &path, given.value.clone()).map_err(|reason| ConfigError::Setting {
            field: given.path.clone(),
            origin: given.source.to_string(),
            message: reason,
        })?;
        forget_below(&mut sources, &given.path);
        sources.insert(given.path.clone(), given.source.clone());
    }
    let figment = figment::Figment::from(figment::providers::Serialized::defaults(Value::Table(tree)));
    let config: Config = figment.extract_lossy().map_err(|error| extraction_error(error, &sources))?;
    config.check(origin)?;
    Ok(Loaded { config, sources })
}

/// A value replaced whole takes the place of what was below it.
fn forget_below(sources: &mut BTreeMap<String, Source>, path: &str) {
    let below = format!("{path}.");
    sources.retain(|key, _| !key.starts_with(&below));
}

/// The source recorded for `path`, else for the nearest thing that set it: a whole list or
/// section above it, or the entries of the section around it (for a field that is missing).
fn source_near<'a>(sources: &'a BTreeMap<String, Source>, path: &str) -> Option<&'a Source> {
    if let Some(source) = sources.get(path) {
        return Some(source);
    }
    let below = format!("{path}.");
    if let Some((_, source)) = sources.range(below.clone()..).next().filter(|(k, _)| k.starts_with(&below)) {
        return Some(source);
    }
    let mut at = path;
    while let Some((parent, _)) = at.rsplit_once('.') {
        if let Some(source) = sources.get(parent) {
            return Some(source);
        }
        let inside = format!("{parent}.");
        if let Some((_, source)) =
            sources.range(inside.clone()..).next().filter(|(k, _)| k.starts_with(&inside))
        {
            return Some(source);
        }
        at = parent;
    }
    None
}

/// figment's error as ours: the setting's dotted path and where its value came from.
fn extraction_error(error: figment::Error, sources: &BTreeMap<String, Source>) -> ConfigError {
    use figment::error::Kind;
    let mut field = error.path.clone();
    let named = match &error.kind {
        Kind::UnknownField(name, _) => Some(name.clone()),
        Kind::MissingField(name) => Some(name.to_string()),
        _ => None,
    };
    if let Some(name) = named {
        if field.last() != Some(&name) {
            field.push(name);
        }
    }
    let field = field.join(".");
    let origin = match source_near(sources, &field) {
        Some(source) => source.to_string(),
        None => "defaults".into(),
    };
    let message = match &error.kind {
        Kind::UnknownField(name, expected) => {
            format!("unknown field `{name}`, expected one of: {}", expected.join(", "))
        }
        Kind::UnknownVariant(name, expected) => {
            format!("unknown value `{name}`, expected one of: {}", expected.join(", "))
        }
        kind => kind.to_string(),
    };
    ConfigError::Setting { field, origin, message }
}

/// What stands for a secret in `plexus config print`.
pub const REDACTED: &str = "<redacted>";

impl Loaded {
    /// The configuration as JSON with its secrets replaced by [`REDACTED`]: app secrets, API
    /// keys, the admin token, passwords (and NATS tokens) in URLs.
    pub fn redacted(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.config).expect("the configuration serializes");
        redact(&mut value, &mut Vec::new());
        value
    }

    /// `plexus config print --json`: `config` (redacted) and `sources`, the origin of every
    /// setting not at its default.
    pub fn to_json(&self) -> serde_json::Value {
        let sources: serde_json::Map<String, serde_json::Value> =
            self.sources.iter().map(|(path, source)| (path.clone(), source.to_string().into())).collect();
        serde_json::json!({ "config": self.redacted(), "sources": sources })
    }

    /// `plexus config print`: the configuration as a TOML file (redacted), each value not at its
    /// default followed by a comment saying where it came from.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if let serde_json::Value::Object(table) = self.redacted() {
            write_table(&mut out, &table, "", "", &self.sources);
        }
        out
    }
}

fn redact(value: &mut serde_json::Value, path: &mut Vec<String>) {
    use serde_json::Value as J;
    match value {
        J::Object(map) => {
            for (key, child) in map.iter_mut() {
                path.push(key.clone());
                redact(child, path);
                path.pop();
            }
        }
        J::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                redact(child, path);
                path.pop();
            }
        }
        J::String(text) => {
            let key = path.last().map(String::as_str).unwrap_or("");
            let api_key = key == "key" && path.len() >= 3 && path[path.len() - 3] == "api_keys";
            if (matches!(key, "secret" | "token") || key.contains("password") || api_key) && !text.is_empty()
            {
                *text = REDACTED.into();
            } else if text.contains("://") {
                *text = redact_url(text);
            }
        }
        _ => {}
    }
}

/// A URL without its password, its NATS token or secret-looking query parameters.
pub fn redact_url(url: &str) -> String {
    let lone_user_is_secret = url.starts_with("nats://") || url.starts_with("tls://");
    let masked = plexus_core::cluster::redact_url(url, lone_user_is_secret).replace("***", REDACTED);
    let Some((base, query)) = masked.split_once('?') else { return masked };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _))
                if ["password", "pass", "pwd", "secret", "token", "sslpassword"]
                    .contains(&name.to_ascii_lowercase().as_str()) =>
            {
                format!("{name}={REDACTED}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// TOML for one table: its plain values, then its sections, then its lists of sections.
fn write_table(
    out: &mut String,
    table: &serde_json::Map<String, serde_json::Value>,
    path: &str,
    header: &str,
    sources: &BTreeMap<String, Source>,
) {
    use serde_json::Value as J;
    use std::fmt::Write;
    let join = |base: &str, key: &str| if base.is_empty() { key.to_owned() } else { format!("{base}.{key}") };
    let is_section = |v: &J| v.is_object();
    let is_section_list =
        |v: &J| matches!(v, J::Array(items) if !items.is_empty() && items.iter().all(J::is_object));
    for (key, value) in table {
        if is_section(value) || is_section_list(value) || value.is_null() {
            continue;
        }
        let Some(shown) = toml_value(value) else { continue };
        let _ = write!(out, "{} = {shown}", toml_key(key));
        let here = join(path, key);
        let source = sources.get(&here).or_else(|| {
            let below = format!("{here}.");
            sources.range(below.clone()..).next().filter(|(k, _)| k.starts_with(&below)).map(|(_, s)| s)
        });
        if let Some(source) = source {
            let _ = write!(out, "  # {source}");
        }
        out.push('\n');
    }
    for (key, value) in table {
        if let J::Object(section) = value {
            let header = join(header, &toml_key(key));
            let _ = write!(out, "\n[{header}]\n");
            write_table(out, section, &join(path, key), &header, sources);
        }
    }
    for (key, value) in table {
        if let (true, J::Array(items)) = (is_section_list(value), value) {
            let header = join(header, &toml_key(key));
            for (i, item) in items.iter().enumerate() {
                let _ = write!(out, "\n[[{header}]]\n");
                if let J::Object(section) = item {
                    write_table(out, section, &format!("{}.{i}", join(path, key)), &header, sources);
                }
            }
        }
    }
}

fn toml_key(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        key.to_owned()
    } else {
        serde_json::Value::String(key.to_owned()).to_string()
    }
}

/// An inline TOML value; `None` for a null (an unset optional setting is left out).
fn toml_value(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value as J;
    Some(match value {
        J::Null => return None,
        J::Bool(b) => b.to_string(),
        J::Number(n) => n.to_string(),
        J::String(s) => Value::String(s.clone()).to_string(),
        J::Array(items) => {
            let items: Vec<String> = items.iter().filter_map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        J::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .filter_map(|(k, v)| toml_value(v).map(|v| format!("{} = {v}", toml_key(k))))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn layered(file: &str, vars: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let (tree, sources) = file_layer(file, "t.toml")?;
        merge(tree, sources, "t.toml", &env(vars), &[])
    }

    #[test]
    fn interpolation_replaces_variables_and_keeps_escapes_and_lone_dollars() {
        let mut vars = Vec::new();
        // PATH is set in any test environment.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(interpolate("a ${PATH} b", &mut vars).unwrap(), format!("a {path} b"));
        assert_eq!(vars, ["PATH"]);
        assert_eq!(interpolate("$${PATH} $PATH $ 5$", &mut vars).unwrap(), "${PATH} $PATH $ 5$");
        let e = interpolate("${PLEXUS_SURELY_UNSET_VARIABLE}", &mut vars).unwrap_err();
        assert!(e.contains("PLEXUS_SURELY_UNSET_VARIABLE") && e.contains("not set"), "{e}");
        assert!(interpolate("${unclosed", &mut vars).unwrap_err().contains("unclosed"));
        assert!(interpolate("${1x}", &mut vars).unwrap_err().contains("not a variable name"));
    }

    #[test]
    fn list_entries_are_changed_or_added_by_index_in_numeric_order() {
        let file = "[[apps]]\nid=\"1\"\nkey=\"a\"\nsecret=\"s\"\n";
        let mut vars: Vec<(String, String)> = Vec::new();
        for i in 1..=10 {
            for (field, value) in [("ID", format!("{i}x")), ("KEY", format!("k{i}")), ("SECRET", "s".into())]
            {
                vars.push((format!("PLEXUS_APPS__{i}__{field}"), value));
            }
        }
        vars.push(("PLEXUS_APPS__0__ID".into(), "12345".into()));
        let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let loaded = layered(file, &refs).unwrap();
        assert_eq!(loaded.config.apps.len(), 11);
        assert_eq!(loaded.config.apps[0].id, "12345", "a numeric-looking id stays a string");
        assert_eq!(loaded.config.apps[10].key, "k10");
        assert_eq!(
            loaded.source_of("apps.0.key"),
            Some(&Source::File { path: "t.toml".into(), vars: vec![] })
        );
        assert_eq!(loaded.source_of("apps.0.id"), Some(&Source::Env("PLEXUS_APPS__0__ID".into())));

        let e = layered(file, &[("PLEXUS_APPS__2__ID", "x")]).unwrap_err().to_string();
        assert!(e.contains("PLEXUS_APPS__2__ID") && e.contains("gap"), "{e}");
        let e = layered(file, &[("PLEXUS_APPS__ID", "x")]).unwrap_err().to_string();
        assert!(e.contains("PLEXUS_APPS__ID") && e.contains("index"), "{e}");
        let e = layered("", &[("PLEXUS_SERVER__PORT__X", "1")]).unwrap_err().to_string();
        assert!(e.contains("PLEXUS_SERVER__PORT__X"), "{e}");
        let e = layered("", &[("PLEXUS_SERVER____PORT", "1")]).unwrap_err().to_string();
        assert!(e.contains("PLEXUS_SERVER____PORT"), "{e}");
    }

    #[test]
    fn strings_from_variables_fill_numbers_booleans_lists_and_options() {
        let loaded = layered(
            "",
            &[
                ("PLEXUS_SERVER__PORT", "7000"),
                ("PLEXUS_SERVER__REQUIRE_PROTOCOL_VERSION", "true"),
                ("PLEXUS_SERVER__MAX_CONNECTIONS", "50"),
                ("PLEXUS_SERVER__RATE_LIMITS__API_PER_IP_PER_SEC", "9"),
                ("PLEXUS_SERVER__TLS__CERT", "/c.pem"),
                ("PLEXUS_SERVER__TLS__KEY", "/k.pem"),
                ("PLEXUS_BRIDGES__0__APP", "1"),
                ("PLEXUS_BRIDGES__0__SUBJECT", "a.{x}"),
                ("PLEXUS_BRIDGES__0__CHANNEL", "c-{x}"),
                ("PLEXUS_BRIDGES__0__EVENT", "e"),
                ("PLEXUS_BRIDGES__0__TAGS__0", "events"),
                ("PLEXUS_BRIDGES__0__TAGS__1", "ops"),
            ],
        )
        .unwrap();
        let server = &loaded.config.server;
        assert_eq!(server.port, 7000);
        assert!(server.require_protocol_version);
        assert_eq!(server.max_connections, Some(50));
        assert_eq!(server.rate_limits.api_per_ip_per_sec, 9);
        assert_eq!(server.tls.as_ref().unwrap().key, PathBuf::from("/k.pem"));
        assert_eq!(loaded.config.bridges[0].tags, ["events", "ops"]);
    }

    #[test]
    fn urls_lose_passwords_tokens_and_secret_query_parameters() {
        assert_eq!(redact_url("postgres://u:pw@db/x"), "postgres://u:<redacted>@db/x");
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:<redacted>@h:6379");
        assert_eq!(redact_url("nats://tok@h:4222"), "nats://<redacted>@h:4222");
        assert_eq!(
            redact_url("postgres://db/x?sslmode=require&password=pw"),
            "postgres://db/x?sslmode=require&password=<redacted>"
        );
        assert_eq!(redact_url("http://127.0.0.1:7001/hook"), "http://127.0.0.1:7001/hook");
    }
}
