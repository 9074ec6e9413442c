//! `cargo run --release -p todos-example [-- --port PORT]`: a shared todo list on typed channels,
//! served from the application's own axum router (plexus embedded as a library) on
//! 127.0.0.1:PORT (default 6003; 0 picks a free port; a bare `PORT` works too), app key
//! `app-key`. Prints `todos listening on ADDR` once it accepts connections.
//!
//! - `todos` channel: `authenticate {name}` (any name: a demo), `list` (no session needed),
//!   `create {text}`, `toggle {id}` and `delete {id}` (owners only; `delete` also for `admin`).
//!   Every change is published to the `todos:changed` topic, which each connection follows on open.
//! - Middleware: every action is timed in the log; outgoing events get a `sent_at` timestamp.
//! - `GET /todos` (the application's own route) lists them over HTTP; `POST /todos/clear` clears
//!   them and tells every connection through the event hub.
//! - `--tags chat` (or `PLEXUS_TAGS=chat`) leaves the `todos` channel (tags `todos`, `events`)
//!   out, as `plexus serve --tags` does for its wirings: the node then serves the Pusher
//!   protocol only.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use plexus_channels::{
    around, check_sync, Action, ActionError, ActionInfo, Channel, Channels, Ctx, Installed, Next, Permissions,
};
use plexus_core::{App, MemoryAppStore};
use plexus_server::config::ServerConfig;
use plexus_server::ServerState;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Default)]
struct Todos {
    items: Mutex<Vec<Todo>>,
}

#[derive(Debug)]
struct User {
    name: String,
}

#[derive(Debug, Clone, Serialize)]
struct Todo {
    id: u64,
    text: String,
    done: bool,
    owner: String,
}

/// What `todos:changed` carries.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Change {
    Created { todo: Todo },
    Updated { todo: Todo },
    Deleted { id: u64 },
    Cleared,
}

#[derive(Debug, Deserialize)]
struct Authenticate {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Create {
    text: String,
}

#[derive(Debug, Deserialize)]
struct ById {
    id: u64,
}

type TodoCtx = Ctx<Todos, User>;
const TOPIC: &str = "todos:changed";

async fn authenticate(ctx: TodoCtx, input: Authenticate) -> Result<serde_json::Value, ActionError> {
    let name = input.name.trim();
    if name.is_empty() {
        return Err(ActionError::invalid_input("name must not be empty"));
    }
    ctx.set_session(User { name: name.to_owned() });
    Ok(json!({"user": name}))
}

async fn list(ctx: TodoCtx, (): ()) -> Result<Vec<Todo>, ActionError> {
    Ok(ctx.services().items.lock().expect("todos lock").clone())
}

async fn create(ctx: TodoCtx, input: Create) -> Result<Todo, ActionError> {
    let owner = ctx.session().ok_or_else(ActionError::unauthenticated)?.name.clone();
    let todo = {
        let mut items = ctx.services().items.lock().expect("todos lock");
        let id = items.iter().map(|t| t.id).max().unwrap_or(0) + 1;
        let todo = Todo { id, text: input.text, done: false, owner };
        items.push(todo.clone());
        todo
    };
    ctx.event_hub().publish(TOPIC, &Change::Created { todo: todo.clone() })?;
    Ok(todo)
}

async fn toggle(ctx: TodoCtx, input: ById) -> Result<Todo, ActionError> {
    let todo = {
        let mut items = ctx.services().items.lock().expect("todos lock");
        let todo = items.iter_mut().find(|t| t.id == input.id).ok_or_else(|| not_found(input.id))?;
        todo.done = !todo.done;
        todo.clone()
    };
    ctx.event_hub().publish(TOPIC, &Change::Updated { todo: todo.clone() })?;
    Ok(todo)
}

async fn delete(ctx: TodoCtx, input: ById) -> Result<(), ActionError> {
    ctx.services().items.lock().expect("todos lock").retain(|t| t.id != input.id);
    ctx.event_hub().publish(TOPIC, &Change::Deleted { id: input.id })?;
    Ok(())
}

fn not_found(id: u64) -> ActionError {
    ActionError::new("not_found", format!("no todo {id}"))
}

/// The caller owns the todo (a missing todo passes, so the handler can answer `not_found`).
fn owns(todos: &Todos, input: &ById, user: Option<&User>) -> bool {
    let items = todos.items.lock().expect("todos lock");
    match (items.iter().find(|t| t.id == input.id), user) {
        (Some(todo), Some(user)) => todo.owner == user.name,
        (None, Some(_)) => true,
        (_, None) => false,
    }
}

fn owner_only() -> Permissions<Todos, User, ById> {
    Permissions::new().group("owner", [check_sync(owns)])
}

fn todos_channel() -> Channel<Todos, User> {
    let toggle = Action::new(toggle).permissions(owner_only());
    // The same definition, wired with a wider permission set: admins may delete anything.
    let is_admin =
        check_sync(|_: &Todos, _: &ById, user: Option<&User>| user.is_some_and(|u| u.name == "admin"));
    let delete = Action::new(delete).permissions(owner_only().group("admin", [is_admin]));
    Channel::new("todos")
        .tags(["todos", "events"])
        .topic::<serde_json::Value>(TOPIC)
        .on_connect(|ctx: TodoCtx| async move {
            ctx.subscribe(TOPIC)?;
            Ok(json!({"todos": ctx.services().items.lock().expect("todos lock").len()}))
        })
        .action("authenticate", Action::new(authenticate).auth(false))
        .action("list", Action::new(list).auth(false))
        .action("create", Action::new(create))
        .action("toggle", toggle)
        .action("delete", delete)
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// The todos example: a shared todo list on typed channels, plexus embedded in the
/// application's own axum router (app key `app-key`).
#[derive(Debug, Parser)]
#[command(name = "todos-example")]
struct Cli {
    /// Port on 127.0.0.1 to listen on (0 picks a free one).
    #[arg(long, short, value_name = "PORT", default_value_t = 6003)]
    port: u16,
    /// The same as --port (for scripts that pass the port alone).
    #[arg(value_name = "PORT", conflicts_with = "port")]
    bare_port: Option<u16>,
    /// Serve only the channels carrying one of these tags, as `plexus serve --tags` does.
    #[arg(long, env = "PLEXUS_TAGS", value_delimiter = ',', value_name = "TAG,…")]
    tags: Option<Vec<String>>,
}

#[derive(Clone)]
struct Http {
    todos: Arc<Todos>,
    channels: Installed,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let port = cli.bare_port.unwrap_or(cli.port);
    let config = ServerConfig { host: "127.0.0.1".into(), port, ..ServerConfig::default() };
    let listener = plexus_server::bind(&config)?;
    let addr = listener.local_addr()?;
    let apps = MemoryAppStore::new([App::new("app-id", "app-key", "app-secret")])?;
    let state = ServerState::new(config, Arc::new(apps));

    // The services are shared with the application's own HTTP routes.
    let todos = Arc::new(Todos::default());
    let timing = around(|info: ActionInfo<User>, next: Next| async move {
        let started = std::time::Instant::now();
        let result = next.run().await;
        let user = info.session.as_ref().map(|u| u.name.as_str()).unwrap_or("-");
        tracing::info!(channel = %info.channel, action = ?info.action, user, elapsed = ?started.elapsed(), ok = result.is_ok(), "action");
        result
    });
    let channels = Channels::with_services(todos.clone())
        .middleware(timing)
        .outgoing("todos", |_, mut event| {
            event["sent_at"] = json!(now_ms());
            Some(event)
        })
        .wire(todos_channel());
    // `--tags a,b`, as for `plexus serve --tags`: only the channels carrying one of them.
    let channels = match cli.tags {
        Some(tags) => channels.only_tags(tags.iter().map(|t| t.trim()).filter(|t| !t.is_empty())),
        None => channels,
    };
    let installed = state.install_channels(channels);

    let http = Http { todos, channels: installed };
    let routes = Router::new()
        .route(
            "/todos",
            get(|State(http): State<Http>| async move {
                Json(http.todos.items.lock().expect("todos lock").clone())
            }),
        )
        .route(
            "/todos/clear",
            post(|State(http): State<Http>| async move {
                http.todos.items.lock().expect("todos lock").clear();
                let delivered =
                    http.channels.event_hub("app-id").publish(TOPIC, &Change::Cleared).unwrap_or(0);
                Json(json!({"cleared": true, "delivered": delivered}))
            }),
        )
        .with_state(http);
    let app = plexus_server::router(state.clone()).merge(routes);
    println!("todos listening on {addr}");
    plexus_server::serve_router(listener, state, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
