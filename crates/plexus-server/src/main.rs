//! The `plexus` command: `plexus serve` runs the server (`--tags` picks which wirings start),
//! `plexus migrate` prepares the app store, `plexus info` shows what a server is wired with.

use std::path::PathBuf;

/// jemalloc returns freed memory to the OS (background purging, see .cargo/config.toml), so RSS
/// falls after a crowd of connections leaves; glibc's malloc kept all of it (BENCHMARKS.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use plexus_core::{App, AppStore, MemoryAppStore};
use plexus_server::config::{AppStoreDriver, Config, LogFormat, DEV_APP};
use plexus_server::layers::{Layers, Loaded, Override, Source};
use plexus_server::logstream::LogStream;
use plexus_server::{webhook_sink, ServerState};

/// plexus — a self-hosted realtime server speaking the Pusher Channels protocol v7 and HTTP API.
#[derive(Debug, Parser)]
#[command(name = "plexus", version, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Shown under the help of the commands that read settings.
const LAYERS_HELP: &str = "Settings come from, lowest first: defaults, the --config file, the environment, the flags. \
Every setting has a variable PLEXUS_<SECTION>__<FIELD> (e.g. PLEXUS_SERVER__PORT, PLEXUS_ADAPTER__URL; \
list entries by index: PLEXUS_APPS__0__SECRET) and a flag --set <section>.<field>=<value> \
(e.g. --set server.max_frame_bytes=131072, --set apps.0.secret=…). `plexus config print` shows where each came from.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. With no config file it serves one development app
    /// (app-id / app-key / app-secret) on 127.0.0.1:6001 with the in-memory hub (its secret is
    /// public, so it is never served on other addresses).
    #[command(after_help = LAYERS_HELP)]
    Serve(ServeArgs),
    /// Create or upgrade the PostgreSQL app store's schema ([app_store] in the config file).
    Migrate(MigrateArgs),
    /// Show what a server is wired with: apps, their channels, typed channels. Reads the config
    /// file, or asks a running server's admin listener with --url.
    Info(InfoArgs),
    /// Check or show the configuration `plexus serve` would run with (same flags and variables).
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration: exit 0 with a summary, or non-zero with the error, which names
    /// the setting and where its value came from.
    #[command(after_help = LAYERS_HELP)]
    Check(SettingsArgs),
    /// Print the effective configuration as TOML, secrets redacted, each value not at its default
    /// followed by where it came from (file, env VAR, flag).
    #[command(after_help = LAYERS_HELP)]
    Print(PrintArgs),
}

#[derive(Debug, Args)]
struct PrintArgs {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Print JSON: {"config": …, "sources": {"server.port": "env PLEXUS_SERVER__PORT", …}}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct InfoArgs {
    /// TOML configuration file (ignored with --url).
    #[arg(long, short, env = "PLEXUS_CONFIG")]
    config: Option<PathBuf>,
    /// A running server's admin listener, e.g. http://127.0.0.1:9602 (adds live channels).
    #[arg(long)]
    url: Option<String>,
    /// The admin token (for --url).
    #[arg(long, env = "PLEXUS_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Show only the wirings `plexus serve --tags` would start with these tags (with --config).
    #[arg(long, value_delimiter = ',')]
    tags: Option<Vec<String>>,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// TOML configuration file whose [app_store] names the database.
    #[arg(long, short, env = "PLEXUS_CONFIG")]
    config: Option<PathBuf>,
    /// PostgreSQL URL (overrides [app_store] url).
    #[arg(long, alias = "app-store-url", env = "PLEXUS_APP_STORE_URL", hide_env_values = true)]
    url: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Start only the wirings ([[action_proxy]] routes, [[bridges]]) tagged with at least one of
    /// these, e.g. `--tags events,chat`; the Pusher protocol always runs. Without it, all run.
    #[arg(long, env = "PLEXUS_TAGS", value_delimiter = ',')]
    tags: Option<Vec<String>>,
}

/// The settings flags `serve`, `config check` and `config print` share. A flag's own variable
/// (`PLEXUS_HOST` for `--host`) counts as the environment, above the PLEXUS_*__* variables.
#[derive(Debug, Args)]
struct SettingsArgs {
    /// TOML configuration file ([server], [[apps]], [[apps.webhooks]]; see the README).
    #[arg(long, short, env = "PLEXUS_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides [server] host).
    #[arg(long, env = "PLEXUS_HOST")]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one (overrides [server] port).
    #[arg(long, env = "PLEXUS_PORT")]
    port: Option<u16>,
    /// Address of the Prometheus `/metrics` listener (overrides [metrics] host).
    #[arg(long)]
    metrics_host: Option<String>,
    /// Port of the Prometheus `/metrics` listener (overrides [metrics] port; 0 picks a free one).
    #[arg(long, env = "PLEXUS_METRICS_PORT")]
    metrics_port: Option<u16>,
    /// App id of the first app (or of the development app when none is configured).
    #[arg(long, env = "PLEXUS_APP_ID")]
    app_id: Option<String>,
    /// App key of the first app (or of the development app).
    #[arg(long, env = "PLEXUS_APP_KEY")]
    app_key: Option<String>,
    /// App secret of the first app (or of the development app).
    #[arg(long, env = "PLEXUS_APP_SECRET", hide_env_values = true)]
    app_secret: Option<String>,
    /// Enable the admin listener ([admin]) and print the dashboard's URL with its token.
    #[arg(long)]
    dashboard: bool,
    /// Address of the admin listener (overrides [admin] host).
    #[arg(long)]
    admin_host: Option<String>,
    /// Port of the admin listener (overrides [admin] port; 0 picks a free one).
    #[arg(long, env = "PLEXUS_ADMIN_PORT")]
    admin_port: Option<u16>,
    /// Directory of the durable webhook queue (overrides [webhooks] data_dir); one per server.
    #[arg(long, env = "PLEXUS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// How log lines are written on stderr: text (default) or json, one object per line
    /// (overrides [server] log_format).
    #[arg(long, env = "PLEXUS_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// PostgreSQL URL of the app store (overrides [app_store] url; [app_store] driver must be
    /// "postgres" for apps to come from it).
    #[arg(long, env = "PLEXUS_APP_STORE_URL", hide_env_values = true)]
    app_store_url: Option<String>,
    /// Any setting by its path in the file, e.g. `--set server.max_frame_bytes=131072` or
    /// `--set apps.0.secret=…`; repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
}

impl SettingsArgs {
    /// The file, the PLEXUS_*__* variables and these flags (`matches` are the command's own, to
    /// tell a flag from its variable).
    fn layers(&self, matches: &ArgMatches) -> anyhow::Result<Layers> {
        use toml::Value;
        let source = |id: &str, flag: &str, var: Option<&str>| match (matches.value_source(id), var) {
            (Some(ValueSource::EnvVariable), Some(var)) => Source::Env(var.into()),
            _ => Source::Flag(flag.into()),
        };
        let mut named = Vec::new();
        let mut give = |path: &str, value: Value, source: Source| {
            named.push(Override { path: path.into(), value, source });
        };
        let text = |s: &str| Value::String(s.to_owned());
        if let Some(host) = &self.host {
            give("server.host", text(host), source("host", "--host", Some("PLEXUS_HOST")));
        }
        if let Some(port) = self.port {
            give("server.port", Value::Integer(port.into()), source("port", "--port", Some("PLEXUS_PORT")));
        }
        if let Some(host) = &self.metrics_host {
            give("metrics.host", text(host), source("metrics_host", "--metrics-host", None));
        }
        if let Some(port) = self.metrics_port {
            give(
                "metrics.port",
                Value::Integer(port.into()),
                source("metrics_port", "--metrics-port", Some("PLEXUS_METRICS_PORT")),
            );
        }
        if self.dashboard {
            give("admin.enabled", true.into(), source("dashboard", "--dashboard", None));
        }
        if let Some(host) = &self.admin_host {
            give("admin.host", text(host), source("admin_host", "--admin-host", None));
        }
        if let Some(port) = self.admin_port {
            give(
                "admin.port",
                Value::Integer(port.into()),
                source("admin_port", "--admin-port", Some("PLEXUS_ADMIN_PORT")),
            );
        }
        if let Some(dir) = &self.data_dir {
            let dir = dir.to_str().context("--data-dir / PLEXUS_DATA_DIR is not UTF-8")?;
            give("webhooks.data_dir", text(dir), source("data_dir", "--data-dir", Some("PLEXUS_DATA_DIR")));
        }
        if let Some(format) = self.log_format {
            let name = format.to_possible_value().expect("no variant is skipped");
            give(
                "server.log_format",
                text(name.get_name()),
                source("log_format", "--log-format", Some("PLEXUS_LOG_FORMAT")),
            );
        }
        if let Some(url) = &self.app_store_url {
            give(
                "app_store.url",
                text(url),
                source("app_store_url", "--app-store-url", Some("PLEXUS_APP_STORE_URL")),
            );
        }
        // Flags' own variables first, then --set, then the named flags: the command line wins.
        let (from_env, from_flags): (Vec<_>, Vec<_>) =
            named.into_iter().partition(|o| matches!(o.source, Source::Env(_)));
        let mut overrides = from_env;
        for setting in &self.set {
            let (path, value) = setting
                .split_once('=')
                .with_context(|| format!("--set {setting}: write PATH=VALUE, e.g. server.port=6001"))?;
            let path = path.trim();
            anyhow::ensure!(
                !path.is_empty() && path.split('.').all(|part| !part.is_empty()),
                "--set {setting}: the path is section.field, e.g. server.port or apps.0.secret"
            );
            overrides.push(Override {
                path: path.into(),
                value: text(value),
                source: Source::Flag(format!("--set {path}")),
            });
        }
        overrides.extend(from_flags);
        Ok(Layers { file: self.config.clone(), env: plexus_server::layers::settings_from_env()?, overrides })
    }

    /// The `--app-id`, `--app-key`, `--app-secret` given (or their variables).
    fn app_overrides(&self, matches: &ArgMatches) -> AppOverrides {
        let given = |value: &Option<String>, id: &str, flag: &str, var: &str| {
            value.clone().map(|value| {
                let source = match matches.value_source(id) {
                    Some(ValueSource::EnvVariable) => Source::Env(var.into()),
                    _ => Source::Flag(flag.into()),
                };
                (value, source)
            })
        };
        AppOverrides {
            id: given(&self.app_id, "app_id", "--app-id", "PLEXUS_APP_ID"),
            key: given(&self.app_key, "app_key", "--app-key", "PLEXUS_APP_KEY"),
            secret: given(&self.app_secret, "app_secret", "--app-secret", "PLEXUS_APP_SECRET"),
        }
    }

    /// The configuration `plexus serve` would run with, before `--tags` and the loopback rule.
    fn load(&self, matches: &ArgMatches) -> anyhow::Result<(Loaded, Layers, AppOverrides)> {
        let layers = self.layers(matches)?;
        let mut loaded = plexus_server::layers::load(&layers)?;
        let overrides = self.app_overrides(matches);
        if loaded.config.app_store.driver != AppStoreDriver::Postgres {
            overrides.apply_loaded(&mut loaded);
        }
        Ok((loaded, layers, overrides))
    }
}

/// Sets up log lines: to stderr in `format` and, while someone watches the admin listener, to its
/// log stream.
fn init_logging(format: LogFormat, logs: &Arc<LogStream>) {
    init_logging_at(format, logs, "info");
}

/// [`init_logging`] with `default` as the filter when `RUST_LOG` is unset.
fn init_logging_at(format: LogFormat, logs: &Arc<LogStream>, default: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with(plexus_server::logging::stderr_layer(format))
        .with(logs.layer())
        .init();
}

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    // The leaf subcommand's matches tell a flag from its variable.
    let mut leaf = &matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    let logs = LogStream::new();
    let mut json_logs = false;
    let result = match cli.command {
        Command::Serve(args) => args.settings.load(leaf).and_then(|(loaded, layers, overrides)| {
            json_logs = loaded.config.server.log_format == LogFormat::Json;
            init_logging(loaded.config.server.log_format, &logs);
            serve(args, loaded, layers, overrides, logs)
        }),
        Command::Migrate(args) => {
            init_logging(LogFormat::Text, &logs);
            migrate(args)
        }
        Command::Info(args) => {
            // The report is the output: what `--tags` left out is visible in it, so the INFO
            // lines saying so would only be noise next to it (on stderr; RUST_LOG=info shows them).
            init_logging_at(LogFormat::Text, &logs, "warn");
            info(args)
        }
        Command::Config(ConfigCommand::Check(settings)) => {
            init_logging(LogFormat::Text, &logs);
            config_check(&settings, leaf)
        }
        Command::Config(ConfigCommand::Print(args)) => {
            init_logging(LogFormat::Text, &logs);
            config_print(&args, leaf)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) if json_logs => {
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("plexus: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Warnings about settings that are legal but probably not what was meant.
fn second_thoughts(config: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    if config.app_store.url.is_some() && config.app_store.driver != AppStoreDriver::Postgres {
        notes.push(
            "app_store.url is set but app_store.driver is \"config\": apps come from [[apps]]; \
             set PLEXUS_APP_STORE__DRIVER=postgres (or [app_store] driver = \"postgres\") to read them from the database"
                .into(),
        );
    }
    notes
}

fn config_check(settings: &SettingsArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let (loaded, _, _) = settings.load(matches)?;
    let config = &loaded.config;
    for note in second_thoughts(config) {
        println!("note: {note}");
    }
    if config.apps.iter().any(|app| app.secret == DEV_APP.2) {
        println!("note: an app has the public development secret: `plexus serve` listens on 127.0.0.1 only");
    }
    let origin = match &settings.config {
        Some(path) => path.display().to_string(),
        None => "no config file".into(),
    };
    let apps = match config.app_store.driver {
        AppStoreDriver::Config => format!("{} app(s)", config.apps.len()),
        AppStoreDriver::Postgres => format!("apps from PostgreSQL table {}", config.app_store.table),
    };
    println!(
        "ok: {origin}: {apps}; listening on {}:{}; {} setting(s) from the file, environment or flags",
        config.server.host,
        config.server.port,
        loaded.sources.len()
    );
    Ok(())
}

fn config_print(args: &PrintArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let (loaded, _, _) = args.settings.load(matches)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&loaded.to_json())?);
    } else {
        print!("{}", loaded.to_toml());
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let layers = Layers {
        file: args.config.clone(),
        env: plexus_server::layers::settings_from_env()?,
        overrides: Vec::new(),
    };
    let config = plexus_server::layers::load(&layers)?.config;
    let url = args
        .url
        .or(config.app_store.url.clone())
        .context("no database: pass --url (PLEXUS_APP_STORE_URL) or set [app_store] url")?;
    let table = config.app_store.table.clone();
    let ca_file = config.app_store.ca_file.clone();
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (url, ca_file);
        anyhow::bail!("{NO_POSTGRES} (table {table})");
    }
    #[cfg(feature = "postgres")]
    runtime()?.block_on(async move {
        plexus_pg::migrate_with(&url, ca_file.as_deref(), &table)
            .await
            .with_context(|| format!("migrating table {table}"))?;
        println!("plexus: app store schema is up to date (table {table})");
        Ok(())
    })
}

#[cfg(not(feature = "postgres"))]
const NO_POSTGRES: &str =
    "this plexus was built without the `postgres` feature, so it cannot keep apps in PostgreSQL";

/// The PostgreSQL app store's handle, kept for its refresh.
#[cfg(feature = "postgres")]
type Database = Arc<plexus_pg::PgAppStore>;
/// Built without PostgreSQL: there is never a database handle.
#[cfg(not(feature = "postgres"))]
type Database = std::convert::Infallible;

/// The app store `[app_store]` names, with its PostgreSQL handle (for the refresh) or its
/// in-memory one (for SIGHUP reloads).
type OpenedStore = (Arc<dyn AppStore>, Option<Database>, Option<Arc<MemoryAppStore>>);

/// Opens the app store `[app_store]` names.
async fn open_app_store(config: &Config) -> anyhow::Result<OpenedStore> {
    match config.app_store.driver {
        AppStoreDriver::Config => {
            let apps = Arc::new(MemoryAppStore::new(config.apps.clone()).context("invalid apps")?);
            Ok((apps.clone(), None, Some(apps)))
        }
        #[cfg(not(feature = "postgres"))]
        AppStoreDriver::Postgres => anyhow::bail!("[app_store] driver = \"postgres\": {NO_POSTGRES}"),
        #[cfg(feature = "postgres")]
        AppStoreDriver::Postgres => {
            let store = &config.app_store;
            let url = store.url.as_deref().context("[app_store] url is required")?;
            let ca_file = store.ca_file.as_deref();
            if store.migrate {
                plexus_pg::migrate_with(url, ca_file, &store.table)
                    .await
                    .context("migrating the app store")?;
            }
            let pg = plexus_pg::PgAppStore::connect_with(url, ca_file, &store.table)
                .await
                .context("opening the app store")?;
            tracing::info!(table = %store.table, apps = pg.list().len(), "apps from PostgreSQL");
            Ok((pg.clone(), Some(pg), None))
        }
    }
}

/// Re-reads the apps from the database every `every`, applying what changed.
#[cfg(feature = "postgres")]
fn spawn_database_refresh(state: &Arc<ServerState>, database: Database, every: Duration) {
    let watched = state.clone();
    database.spawn_refresh(every, move |changes| on_app_changes(&watched, changes));
}

#[cfg(not(feature = "postgres"))]
fn spawn_database_refresh(_state: &Arc<ServerState>, database: Database, _every: Duration) {
    match database {}
}

/// Applies app changes read from the database: a disabled or deleted app's connections close,
/// a changed app's revoked credentials close theirs.
#[cfg(feature = "postgres")]
fn on_app_changes(state: &Arc<ServerState>, changes: Vec<plexus_pg::AppChange>) {
    use plexus_pg::AppChange;
    for change in changes {
        tracing::info!(?change, "app store changed");
        match change {
            AppChange::Disabled(id) | AppChange::Removed(id) | AppChange::Updated(id) => {
                state.app_changed(&id)
            }
            // `Updated` precedes these and already re-checks every live credential of the app;
            // the precise report (which keys) is for the log.
            AppChange::KeysRevoked { .. } | AppChange::TokensChanged(_) => {}
            AppChange::Added(_) | AppChange::Enabled(_) => {}
        }
    }
}

fn info(args: InfoArgs) -> anyhow::Result<()> {
    let info = match &args.url {
        Some(url) => {
            let token = args
                .token
                .as_deref()
                .context("--url needs the admin token (--token or PLEXUS_ADMIN_TOKEN)")?;
            runtime()?.block_on(fetch_info(url, token))?
        }
        None => {
            let layers = Layers {
                file: args.config.clone(),
                env: plexus_server::layers::settings_from_env()?,
                overrides: Vec::new(),
            };
            let mut config = plexus_server::layers::load(&layers)?.config;
            if config.apps.is_empty() {
                let (id, key, secret) = DEV_APP;
                config.apps.push(App::new(id, key, secret));
            }
            if let Some(tags) = &args.tags {
                select_by_tags(&mut config, tags);
            }
            // The same wiring `plexus serve` installs, described rather than served.
            let proxied = plexus_channels::proxy::channels(&config.action_proxy).context("action_proxy")?;
            plexus_server::introspect::describe_apps(
                &config.apps,
                &plexus_server::introspect::typed_channels(&proxied.describe()),
                &plexus_server::introspect::bridges(&config.bridges),
            )
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", plexus_server::introspect::render(&info));
    }
    Ok(())
}

/// Keeps the `[[action_proxy]]` routes and `[[bridges]]` tagged with at least one of `tags`
/// and logs the others. Selecting nothing is legal: the node serves the Pusher protocol only.
fn select_by_tags(config: &mut Config, tags: &[String]) {
    use plexus_channels::describe::tagged_with_any;
    let tags: Vec<&str> = tags.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).collect();
    config.action_proxy.retain(|route| {
        let keep = tagged_with_any(&route.tags, &tags);
        if !keep {
            tracing::info!(app_id = %route.app_id, channel = %route.channel, tags = ?route.tags,
                "action_proxy route left out: none of its tags is selected");
        }
        keep
    });
    config.bridges.retain(|bridge| {
        let keep = tagged_with_any(&bridge.tags, &tags);
        if !keep {
            tracing::info!(app = %bridge.app, subject = %bridge.subject, tags = ?bridge.tags,
                "bridge left out: none of its tags is selected");
        }
        keep
    });
    if config.action_proxy.is_empty() && config.bridges.is_empty() {
        tracing::info!(?tags, "no wiring carries a selected tag: serving the Pusher protocol only");
    } else {
        tracing::info!(
            ?tags,
            action_proxy = config.action_proxy.len(),
            bridges = config.bridges.len(),
            "wirings selected by tags"
        );
    }
}

/// `GET {url}/api/info` with the admin token, over plain HTTP (the admin listener is local).
async fn fetch_info(url: &str, token: &str) -> anyhow::Result<serde_json::Value> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri =
        format!("{}/api/info", url.trim_end_matches('/')).parse().context("invalid --url")?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = hyper::Request::get(uri)
        .header("Authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .context("no answer from the admin listener within 10 s")?
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{url} answered {status}: {}", String::from_utf8_lossy(&body));
    Ok(serde_json::from_slice(&body)?)
}

fn serve(
    args: ServeArgs,
    loaded: Loaded,
    layers: Layers,
    overrides: AppOverrides,
    logs: Arc<LogStream>,
) -> anyhow::Result<()> {
    // A host given by a variable or a flag is meant; one from the file or the default may move.
    let host_given = matches!(loaded.source_of("server.host"), Some(Source::Env(_) | Source::Flag(_)));
    let mut config = loaded.config;
    for note in second_thoughts(&config) {
        tracing::warn!("{note}");
    }
    if let Some(tags) = &args.tags {
        select_by_tags(&mut config, tags);
    }
    let from_database = config.app_store.driver == AppStoreDriver::Postgres;
    if !from_database {
        overrides.warn_if_development(&config.apps);
        keep_development_credentials_local(&mut config, host_given)?;
    }

    runtime()?.block_on(async move {
        let (apps, database, memory_apps) = open_app_store(&config).await?;
        // Before binding, so a bad certificate stops the start with the file named.
        let tls = match &config.server.tls {
            Some(files) => Some(plexus_server::tls::Tls::load(files)?),
            None => None,
        };
        // Installed now so a SIGHUP during start-up is not fatal; it acts once the state exists.
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let listener = plexus_server::bind(&config.server)
            .with_context(|| format!("cannot listen on {}:{}", config.server.host, config.server.port))?;
        let addr = listener.local_addr()?;
        for app in apps.list() {
            tracing::info!(id = %app.id, key = %app.key, enabled = app.enabled, "serving app");
        }
        let shutdown = shutdown_signal().context("installing signal handlers")?;
        if config.metrics.enabled {
            let metrics_addr = plexus_server::metrics::start(&config.metrics).await.with_context(|| {
                format!("cannot serve metrics on {}:{}", config.metrics.host, config.metrics.port)
            })?;
            println!("plexus metrics on {metrics_addr}");
        }
        // Apps read from a database may gain endpoints later, so delivery always runs then.
        let webhooks = if from_database || apps.list().iter().any(|app| !app.webhooks.is_empty()) {
            Some(
                plexus_server::webhooks::WebhookService::start(config.webhooks.clone(), apps.clone())
                    .context("starting webhook delivery")?,
            )
        } else {
            None
        };
        let cluster =
            plexus_server::cluster::connect(&config.adapter, webhook_sink(webhooks.as_ref())).await?;
        let node = cluster.as_ref().map(|c| c.node.clone());
        let history = cluster.as_ref().and_then(|c| c.history.clone());
        let state = ServerState::assemble_with_history(config.server.clone(), apps, webhooks, node, history);
        if !config.action_proxy.is_empty() {
            let proxied = plexus_channels::proxy::channels(&config.action_proxy).context("action_proxy")?;
            state.install_channels(proxied);
        }
        if let Some(cluster) = cluster {
            plexus_server::cluster::start(cluster, &state).await;
        }
        if let Some(database) = database {
            spawn_database_refresh(&state, database, Duration::from_secs(config.app_store.refresh_secs));
        }
        plexus_server::bridge::start(&config.bridges, &state).await?;
        plexus_server::mirror::start(&config.mirrors, &state).await?;
        let reload = Reload { tls: tls.clone(), apps: memory_apps, layers, overrides, state: state.clone() };
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                reload.run();
            }
        });
        // A stable line on stdout, printed last, that scripts and tests wait for.
        if config.admin.enabled {
            let token = match config.admin.token.as_str() {
                "" => plexus_server::admin::random_token(),
                token => token.to_owned(),
            };
            let admin = Arc::new(plexus_server::admin::Admin {
                server: state.clone(),
                logs,
                token: token.clone(),
                bridges: plexus_server::introspect::bridges(&config.bridges),
            });
            let admin_addr = plexus_server::admin::start(&config.admin, admin).await.with_context(|| {
                format!("cannot serve the admin listener on {}:{}", config.admin.host, config.admin.port)
            })?;
            println!("plexus dashboard on http://{admin_addr}/?token={token}");
        }
        if tls.is_some() {
            tracing::info!("TLS on: wss:// and https:// (SIGHUP reloads the certificate)");
        }
        println!("plexus listening on {addr}");
        plexus_server::serve_tls(listener, state, tls, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Whether `host` only reaches this machine.
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The development app's secret is published in the README, so anyone could sign with it: an app
/// that uses it is served on loopback only. A host from the config file or the default is moved
/// to 127.0.0.1 (with a warning); a non-loopback host asked for on the command line is refused.
fn keep_development_credentials_local(config: &mut Config, host_given: bool) -> anyhow::Result<()> {
    let (_, _, dev_secret) = DEV_APP;
    let Some(app) = config.apps.iter().find(|app| app.secret == dev_secret) else { return Ok(()) };
    if is_loopback(&config.server.host) {
        return Ok(());
    }
    let advice = "set a real secret (--app-secret, PLEXUS_APP_SECRET or [[apps]] in a config file) to listen on other addresses";
    if host_given {
        anyhow::bail!(
            "refusing to listen on {} with the public development secret of app {:?}: {advice}",
            config.server.host,
            app.id
        );
    }
    tracing::warn!(
        "app {:?} uses the public development secret: listening on 127.0.0.1 only, not {}; {advice}",
        app.id,
        config.server.host
    );
    config.server.host = "127.0.0.1".into();
    Ok(())
}

/// The command line's `--app-id`, `--app-key`, `--app-secret` (and their variables), each with
/// where it came from.
#[derive(Debug)]
struct AppOverrides {
    id: Option<(String, Source)>,
    key: Option<(String, Source)>,
    secret: Option<(String, Source)>,
}

impl AppOverrides {
    /// The apps to serve from the configuration's `[[apps]]`: the development app when it has
    /// none, and the overrides applied to the first.
    fn apply(&self, mut apps: Vec<App>) -> Vec<App> {
        if apps.is_empty() {
            let (id, key, secret) = DEV_APP;
            let mut app = App::new(id, key, secret);
            app.enable_client_messages = true;
            apps.push(app);
        }
        if let Some(first) = apps.first_mut() {
            for (field, value) in
                [(&mut first.id, &self.id), (&mut first.key, &self.key), (&mut first.secret, &self.secret)]
            {
                if let Some((value, _)) = value {
                    field.clone_from(value);
                }
            }
        }
        apps
    }

    /// [`AppOverrides::apply`] to a loaded configuration, recording where the values came from.
    fn apply_loaded(&self, loaded: &mut Loaded) {
        loaded.config.apps = self.apply(std::mem::take(&mut loaded.config.apps));
        for (field, value) in [("id", &self.id), ("key", &self.key), ("secret", &self.secret)] {
            if let Some((_, source)) = value {
                loaded.sources.insert(format!("apps.0.{field}"), source.clone());
            }
        }
    }

    /// Says so when the public development secret is served.
    fn warn_if_development(&self, apps: &[App]) {
        let (id, key, secret) = DEV_APP;
        if self.secret.is_none() && apps.iter().any(|app| app.secret == secret) {
            tracing::warn!(
                "no apps configured: serving the development app id={id} key={key} secret={secret}; \
                 these are public development credentials, never use them in production"
            );
        }
    }
}

/// What SIGHUP re-reads: the TLS certificate files (new handshakes get the new certificate,
/// established connections keep theirs) and, when apps come from the config file, its
/// `[[apps]]` (with the same environment and flags as at start). Other settings need a
/// restart. A bad file is logged and the old state stays.
#[derive(Debug)]
struct Reload {
    tls: Option<Arc<plexus_server::tls::Tls>>,
    apps: Option<Arc<MemoryAppStore>>,
    layers: Layers,
    overrides: AppOverrides,
    state: Arc<ServerState>,
}

impl Reload {
    fn run(&self) {
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(error) => tracing::error!(%error, "TLS reload failed; keeping the current certificate"),
            }
        }
        let (Some(store), Some(path)) = (&self.apps, &self.layers.file) else { return };
        let apps = match plexus_server::layers::load(&self.layers) {
            Ok(loaded) => self.overrides.apply(loaded.config.apps),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "reloading apps failed; keeping the current ones");
                return;
            }
        };
        match store.replace(apps) {
            Ok(changes) => {
                tracing::info!(?changes, "apps reloaded from {}", path.display());
                for id in changes.removed.iter().chain(&changes.changed) {
                    self.state.app_changed(id);
                }
            }
            Err(error) => tracing::error!(%error, "reloading apps failed; keeping the current ones"),
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now, so a signal that arrives as soon as we report
/// readiness already means "shut down gracefully" rather than the default "die".
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
