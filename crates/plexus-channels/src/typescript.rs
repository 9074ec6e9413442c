//! TypeScript client generation (cargo feature `typescript`): the wired channels' opening data,
//! welcome, action inputs and outputs and topic events, exported from the Rust types with
//! `ts-rs`, plus a `Channels` type that the `@plexus/channels` runtime (`clients/js`) turns into a
//! typed client: `client.channel("todos").send("create", { text })` returns the output type, and
//! a wrong action name or field does not compile.
//!
//! A channel records TypeScript types when wired with the `ts_*` methods of [`Channel`]
//! (`ts_action`, `ts_topic`, `ts_on_connect`, `ts_opening`); [`Channels::typescript`] refuses to
//! generate a client while an action or topic lacks them, so the client cannot silently fall
//! behind the server.

use std::any::TypeId;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use ts_rs::{TypeVisitor, TS};

use crate::context::Ctx;
use crate::error::ActionError;
use crate::runtime::Channels;
use crate::wire::{Action, Channel};

/// One Rust type as TypeScript: how to name it, and the declarations it needs.
#[derive(Debug, Clone)]
pub(crate) struct TsType {
    name: String,
    /// (type name, `type X = …;`) for every named type it mentions.
    decls: Vec<(String, String)>,
}

struct Collect {
    seen: HashSet<TypeId>,
    decls: Vec<(String, String)>,
}

impl TypeVisitor for Collect {
    fn visit<T: TS + 'static + ?Sized>(&mut self) {
        if !self.seen.insert(TypeId::of::<T>()) {
            return;
        }
        // Types with an output path are the user's named types; the rest (numbers, Vec, Option…)
        // are written inline by name.
        if T::output_path().is_some() {
            self.decls.push((T::ident(), T::decl()));
        }
        T::visit_dependencies(self);
        T::visit_generics(self);
    }
}

impl TsType {
    pub(crate) fn of<T: TS + 'static + ?Sized>() -> Self {
        let mut collect = Collect { seen: HashSet::new(), decls: Vec::new() };
        collect.visit::<T>();
        // `()` is "nothing": no input to pass, no output to read.
        let name = if TypeId::of::<T>() == TypeId::of::<()>() { "void".to_owned() } else { T::name() };
        TsType { name, decls: collect.decls }
    }
}

/// What a channel recorded for TypeScript.
#[derive(Debug, Clone, Default)]
pub(crate) struct TsChannel {
    pub(crate) opening: Option<TsType>,
    pub(crate) welcome: Option<TsType>,
    pub(crate) actions: BTreeMap<String, (TsType, TsType)>,
    pub(crate) topics: BTreeMap<String, TsType>,
}

impl<S, U, O> Channel<S, U, O>
where
    S: Send + Sync + 'static,
    U: Send + Sync + 'static,
    O: DeserializeOwned + Send + Sync + 'static,
{
    /// [`action`](Channel::action), recording `In` and `Out` for the TypeScript client.
    pub fn ts_action<In, Out>(mut self, name: impl Into<String>, action: Action<S, U, O, In, Out>) -> Self
    where
        In: DeserializeOwned + TS + Send + Sync + 'static,
        Out: Serialize + TS + 'static,
    {
        let name = name.into();
        self.ts_mut().actions.insert(name.clone(), (TsType::of::<In>(), TsType::of::<Out>()));
        self.action(name, action)
    }

    /// [`topic`](Channel::topic), recording `T` for the TypeScript client.
    pub fn ts_topic<T: Serialize + TS + 'static>(mut self, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        self.ts_mut().topics.insert(topic.clone(), TsType::of::<T>());
        self.topic::<T>(topic)
    }

    /// [`on_connect`](Channel::on_connect), recording the welcome type `W`.
    pub fn ts_on_connect<F, Fut, W>(mut self, f: F) -> Self
    where
        F: Fn(Ctx<S, U, O>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<W, ActionError>> + Send + 'static,
        W: Serialize + TS + 'static,
    {
        self.ts_mut().welcome = Some(TsType::of::<W>());
        self.on_connect(f)
    }

    /// Records the opening data type `O` as the type of the client's `params`.
    pub fn ts_opening(mut self) -> Self
    where
        O: TS + 'static,
    {
        self.ts_mut().opening = Some(TsType::of::<O>());
        self
    }
}

/// Why no client was generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot generate the TypeScript client: {}", .missing.join("; "))]
pub struct CodegenError {
    /// Each action or topic without recorded types, and how to record them.
    pub missing: Vec<String>,
}

/// A TypeScript string literal (JSON's string syntax is TypeScript's).
fn literal(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A topic key: a name, or a `prefix*` family as a template-literal index signature.
fn topic_key(topic: &str) -> String {
    match topic.strip_suffix('*') {
        Some(prefix) => {
            let escaped = prefix.replace('\\', "\\\\").replace('`', "\\`").replace("${", "\\${");
            format!("[topic: `{escaped}${{string}}`]")
        }
        None => literal(topic),
    }
}

impl<S: Send + Sync + 'static, U: Send + Sync + 'static> Channels<S, U> {
    /// The TypeScript module for these channels. It imports the runtime from `runtime` (e.g.
    /// `"@plexus/channels"`) and exports every type, the `Channels` map and `connect(url)`.
    pub fn typescript(&self, runtime: &str) -> Result<String, CodegenError> {
        let mut missing = Vec::new();
        let mut decls: BTreeMap<String, String> = BTreeMap::new();
        let mut map = String::new();
        for wiring in self.wirings_sorted() {
            let ts = &wiring.ts;
            let mut add = |t: &TsType| {
                for (name, decl) in &t.decls {
                    decls.entry(name.clone()).or_insert_with(|| decl.clone());
                }
                t.name.clone()
            };
            let params = ts.opening.as_ref().map_or("Record<string, unknown>".to_owned(), &mut add);
            let welcome = match (&ts.welcome, wiring.on_connect.is_some()) {
                (Some(t), _) => add(t),
                (None, false) => "void".to_owned(),
                (None, true) => {
                    missing
                        .push(format!("{}: on_connect has no welcome type (use ts_on_connect)", wiring.name));
                    "unknown".to_owned()
                }
            };
            let _ = writeln!(map, "  {}: {{", literal(&wiring.name));
            let _ = writeln!(map, "    params: {params};");
            let _ = writeln!(map, "    welcome: {welcome};");
            let _ = writeln!(map, "    actions: {{");
            for name in wiring.actions.keys() {
                match ts.actions.get(name) {
                    Some((input, output)) => {
                        let (input, output) = (add(input), add(output));
                        let _ =
                            writeln!(map, "      {}: {{ input: {input}; output: {output} }};", literal(name));
                    }
                    None => missing.push(format!("{}.{name}: wire it with ts_action", wiring.name)),
                }
            }
            let _ = writeln!(map, "    }};");
            let _ = writeln!(map, "    topics: {{");
            for topic in wiring.topics.keys() {
                match ts.topics.get(topic) {
                    Some(t) => {
                        let t = add(t);
                        let _ = writeln!(map, "      {}: {t};", topic_key(topic));
                    }
                    None => {
                        missing.push(format!("{} topic {topic:?}: declare it with ts_topic", wiring.name))
                    }
                }
            }
            let _ = writeln!(map, "    }};");
            let _ = writeln!(map, "  }};");
        }
        if !missing.is_empty() {
            return Err(CodegenError { missing });
        }
        let mut out = String::new();
        out.push_str("// Generated by plexus-channels from the Rust wiring. Do not edit: regenerate.\n");
        let _ = writeln!(out, "import {{ Client, type ClientOptions }} from {};\n", literal(runtime));
        for decl in decls.values() {
            let _ = writeln!(out, "export {decl}\n");
        }
        let _ = writeln!(out, "/** Every wired channel: opening params, welcome, actions, topics. */");
        let _ = writeln!(out, "export type Channels = {{\n{map}}};\n");
        out.push_str("/** A typed client for these channels. */\n");
        out.push_str("export function connect(url: string, options?: ClientOptions): Client<Channels> {\n");
        out.push_str("  return new Client<Channels>(url, options);\n}\n");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_families_become_template_literal_keys() {
        assert_eq!(topic_key("todos:updated"), "\"todos:updated\"");
        assert_eq!(topic_key("room:*"), "[topic: `room:${string}`]");
        assert_eq!(topic_key("a`b*"), "[topic: `a\\`b${string}`]");
    }
}
