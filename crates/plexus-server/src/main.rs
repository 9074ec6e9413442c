//! The `plexus` command: `plexus serve` runs the server (`--tags` picks which wirings start),
//! `plexus migrate` prepares the app store, `plexus info` shows what a server is wired with.

use std::path::PathBuf;

/// jemalloc returns freed memory to the OS (background purging, see .cargo/config.toml), so RSS
/// falls after a crowd of connections leaves; glibc's malloc kept all of it (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use plexus_core::{App, AppStore, MemoryAppStore};
use plexus_server::config::{AppStoreDriver, Config, DEV_APP};
use plexus_server::logstream::LogStream;
use plexus_server::{webhook_sink, ServerState};

/// plexus — a self-hosted realtime server speaking the Pusher Channels protocol v7 and HTTP API.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. With no config file it serves one development app
    /// (app-id / app-key / app-secret) on 0.0.0.0:6001 with the in-memory hub.
    Serve(ServeArgs),
    /// Create or upgrade the PostgreSQL app store's schema ([app_store] in the config file).
    Migrate(MigrateArgs),
    /// Show what a server is wired with: apps, their channels, typed channels. Reads the config
    /// file, or asks a running server's admin listener with --url.
    Info(InfoArgs),
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
    #[arg(long, env = "PLEXUS_APP_STORE_URL")]
    url: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file ([server], [[apps]], [[apps.webhooks]]; see the README).
    #[arg(long, short, env = "PLEXUS_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides [server] host).
    #[arg(long, env = "PLEXUS_HOST")]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one (overrides [server] port).
    #[arg(long, env = "PLEXUS_PORT")]
    port: Option<u16>,
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
    /// Port of the admin listener (overrides [admin] port; 0 picks a free one).
    #[arg(long, env = "PLEXUS_ADMIN_PORT")]
    admin_port: Option<u16>,
    /// Start only the wirings ([[action_proxy]] routes, [[bridges]]) tagged with at least one of
    /// these, e.g. `--tags events,chat`; the Pusher protocol always runs. Without it, all run.
    #[arg(long, env = "PLEXUS_TAGS", value_delimiter = ',')]
    tags: Option<Vec<String>>,
}

fn main() -> std::process::ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let cli = Cli::parse();
    // Log lines go to stderr and, while someone watches the admin listener, to its log stream.
    let logs = LogStream::new();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(logs.layer())
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(args, logs),
        Command::Migrate(args) => migrate(args),
        Command::Info(args) => info(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("plexus: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let url = args
        .url
        .or(config.app_store.url.clone())
        .context("no database: pass --url or set [app_store] url in the config file")?;
    let table = config.app_store.table.clone();
    runtime()?.block_on(async move {
        plexus_pg::migrate(&url, &table).await.with_context(|| format!("migrating table {table}"))?;
        println!("plexus: app store schema is up to date (table {table})");
        Ok(())
    })
}

/// The app store `[app_store]` names, with its PostgreSQL handle (for the refresh) or its
/// in-memory one (for SIGHUP reloads).
type OpenedStore = (Arc<dyn AppStore>, Option<Arc<plexus_pg::PgAppStore>>, Option<Arc<MemoryAppStore>>);

/// Opens the app store `[app_store]` names.
async fn open_app_store(config: &Config) -> anyhow::Result<OpenedStore> {
    match config.app_store.driver {
        AppStoreDriver::Config => {
            let apps = Arc::new(MemoryAppStore::new(config.apps.clone()).context("invalid apps")?);
            Ok((apps.clone(), None, Some(apps)))
        }
        AppStoreDriver::Postgres => {
            let store = &config.app_store;
            let url = store.url.as_deref().context("[app_store] url is required")?;
            if store.migrate {
                plexus_pg::migrate(url, &store.table).await.context("migrating the app store")?;
            }
            let pg =
                plexus_pg::PgAppStore::connect(url, &store.table).await.context("opening the app store")?;
            tracing::info!(table = %store.table, apps = pg.list().len(), "apps from PostgreSQL");
            Ok((pg.clone(), Some(pg), None))
        }
    }
}

/// Applies app changes read from the database: a disabled or deleted app's connections close,
/// a changed app's revoked credentials close theirs.
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
            let mut config = match &args.config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
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

fn serve(args: ServeArgs, logs: Arc<LogStream>) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if args.dashboard {
        config.admin.enabled = true;
    }
    if let Some(port) = args.admin_port {
        config.admin.port = port;
    }
    if let Some(port) = args.metrics_port {
        config.metrics.port = port;
    }
    if let Some(host) = args.host {
        config.server.host = host;
    }
    if let Some(port) = args.port {
        config.server.port = port;
    }
    if let Some(tags) = &args.tags {
        select_by_tags(&mut config, tags);
    }
    let from_database = config.app_store.driver == AppStoreDriver::Postgres;
    let overrides = AppOverrides { id: args.app_id, key: args.app_key, secret: args.app_secret };
    if !from_database {
        config.apps = overrides.apply(std::mem::take(&mut config.apps), true);
    }
    let config_path = args.config.clone();

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
        let state = ServerState::assemble(config.server.clone(), apps, webhooks, node);
        if !config.action_proxy.is_empty() {
            let proxied = plexus_channels::proxy::channels(&config.action_proxy).context("action_proxy")?;
            state.install_channels(proxied);
        }
        if let Some(cluster) = cluster {
            plexus_server::cluster::start(cluster, &state).await;
        }
        if let Some(database) = database {
            let watched = state.clone();
            database.spawn_refresh(Duration::from_secs(config.app_store.refresh_secs), move |changes| {
                on_app_changes(&watched, changes)
            });
        }
        plexus_server::bridge::start(&config.bridges, &state).await?;
        plexus_server::mirror::start(&config.mirrors, &state).await?;
        let reload =
            Reload { tls: tls.clone(), apps: memory_apps, config_path, overrides, state: state.clone() };
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

/// The command line's `--app-id`, `--app-key`, `--app-secret` (and their variables).
#[derive(Debug)]
struct AppOverrides {
    id: Option<String>,
    key: Option<String>,
    secret: Option<String>,
}

impl AppOverrides {
    /// The apps to serve from a config file's `[[apps]]`: the development app when it has none,
    /// and the overrides applied to the first.
    fn apply(&self, mut apps: Vec<App>, warn: bool) -> Vec<App> {
        if apps.is_empty() {
            let (id, key, secret) = DEV_APP;
            let mut app = App::new(id, key, secret);
            app.enable_client_messages = true;
            apps.push(app);
            if warn && self.secret.is_none() {
                tracing::warn!(
                    "no apps configured: serving the development app id={id} key={key} secret={secret}; \
                     these are public development credentials, never use them in production"
                );
            }
        }
        if let Some(first) = apps.first_mut() {
            for (field, value) in
                [(&mut first.id, &self.id), (&mut first.key, &self.key), (&mut first.secret, &self.secret)]
            {
                if let Some(value) = value {
                    field.clone_from(value);
                }
            }
        }
        apps
    }
}

/// What SIGHUP re-reads: the TLS certificate files (new handshakes get the new certificate,
/// established connections keep theirs) and, when apps come from the config file, its
/// `[[apps]]`. Other settings need a restart. A bad file is logged and the old state stays.
#[derive(Debug)]
struct Reload {
    tls: Option<Arc<plexus_server::tls::Tls>>,
    apps: Option<Arc<MemoryAppStore>>,
    config_path: Option<PathBuf>,
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
        let (Some(store), Some(path)) = (&self.apps, &self.config_path) else { return };
        let apps = match Config::load(path) {
            Ok(config) => self.overrides.apply(config.apps, false),
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
