//! The JSON HTTP API of `foldhost serve`: the router, starting a server on a data directory,
//! and its graceful shutdown.
//!
//! | Method | Path | |
//! |---|---|---|
//! | POST | `/streams/{stream}/events` | append events |
//! | GET | `/streams/{stream}/events?from_version=&limit=` | read a stream |
//! | GET | `/events?from_position=&limit=` | read the global log |
//! | GET | `/events/live?from_position=` | the global log as Server-Sent Events, then live |
//! | POST | `/aggregates/{plugin}/{id}/commands` | run a command |
//! | GET | `/aggregates/{plugin}/{id}?at_version=` | an aggregate's state, now or in the past |
//! | GET | `/projections/{plugin}` | a projection's state |
//! | GET | `/projections/{plugin}/query/{name}?k=v` | a projection's own query |
//! | GET | `/plugins` | loaded plugins, then those queued or compiling |
//! | PUT / DELETE | `/plugins/{name}` | install / unload a plugin (admin token) |
//! | DELETE | `/streams/{stream}[?hard=true]` | soft-delete a stream; hard-delete (admin token) |
//! | GET / PUT | `/streams/{stream}/metadata` | a stream's retention rules |
//! | POST | `/admin/scavenge` | remove hidden events, compact (admin token) |
//! | GET | `/admin/backup` | a consistent copy of the redb journal, streamed (admin token) |
//! | GET | `/admin/uploads`, `/admin/uploads/{name}` | the uploaded plugins kept (admin token) |
//! | GET | `/plugins/{name}/parked?after=&limit=` | events a projection could not fold |
//! | POST | `/plugins/{name}/parked/replay`, `/restart`, `/reset` | projection recovery (admin) |
//! | PUT | `/plugins/{name}/policy` | `park` or `stop` on an event it cannot fold (admin) |
//! | GET | `/streams?prefix=&limit=&after=` | streams, most recently written first |
//! | GET | `/health`, `/metrics`, `/stats` | liveness, Prometheus metrics, an overview as JSON |
//! | GET | `/openapi.json` | this API as OpenAPI 3.1 |
//! | GET | `/`, `/ui/{file}` | the web console |

mod admin;
mod aggregates;
mod append_body;
mod bodies;
mod body_budget;
mod clients;
mod console;
mod errors;
mod extract;
pub mod json;
mod lifecycle;
mod linger;
mod listener;
mod listing;
mod live;
mod live_feeds;
pub mod metrics;
pub mod openapi;
mod origins;
mod plugins;
mod projections;
mod responses;
mod shares;
mod stats;
mod streams;
mod unread;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Request, Uri};
use axum::response::IntoResponse;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use admin::BACKUP_POSITION;
use errors::ApiError;

use crate::journal::{Journal, JournalConfig};
use crate::runtime::{
    AggregateConfig, FailurePolicy, LimitPolicy, Runtime, RuntimeConfig,
    plugin_dir::{self, StartupLoad},
};

/// The journal's file name inside a data directory.
pub const JOURNAL_FILE: &str = "journal.redb";
/// The compiled-plugin cache's folder inside a data directory.
pub const COMPILE_CACHE: &str = "cache";
/// The data directory's subdirectory of uploaded plugins, loaded again at start.
pub const UPLOADS: &str = "uploads";
/// Largest JSON request body (appends, commands).
pub const MAX_JSON_BODY: usize = 8 << 20;
/// Largest plugin upload.
pub const MAX_PLUGIN_BODY: usize = 64 << 20;

/// How long a graceful shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    runtime: Arc<Runtime>,
    admin_token: Option<Arc<str>>,
    metrics: Option<PrometheusHandle>,
    /// Cancelled when the server stops: ends live feeds so shutdown does not wait on them.
    shutdown: CancellationToken,
    /// The data directory (backups are staged there).
    data_dir: Arc<std::path::Path>,
    /// One backup at a time: each stages a copy of the whole journal on the journal's
    /// filesystem. A permit is held from the copy's start until its download ends or is
    /// abandoned, and until a copy whose client went away ends.
    backups: Arc<tokio::sync::Semaphore>,
    /// The live feeds open, in all and by each client.
    live_feeds: Arc<live_feeds::LiveFeeds>,
    limits: ClientLimits,
    /// The bounds of request bodies, with the budget they share and each client's share of it.
    bodies: bodies::BodyBounds,
    /// Which web pages may reach the server through a browser.
    origins: origins::Origins,
    /// How far the plugins directory has loaded at start (see [`after_startup_load`]).
    plugins_loaded: watch::Receiver<StartupLoad>,
    /// When the server started (`GET /stats` shows the uptime).
    started: std::time::Instant,
}

/// Every route with its OpenAPI description (see [`openapi`]).
///
/// Add a route only here, as a handler annotated with `#[utoipa::path(...)]` and registered
/// with `routes!` (handlers of one path go in the same `routes!`), never with axum's `route`: the
/// annotation is where the router takes the path and method from, so the route and its
/// documentation cannot drift apart (`tests/tests/openapi.rs` checks both ways).
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(projections::state))
        .routes(routes!(projections::query))
        .routes(
            routes!(plugins::put, plugins::delete).layer(DefaultBodyLimit::max(MAX_PLUGIN_BODY)),
        )
        .routes(routes!(plugins::parked))
        .routes(routes!(plugins::replay_parked))
        .routes(routes!(plugins::restart))
        .routes(routes!(plugins::reset))
        .routes(routes!(plugins::set_policy))
        // The routes above wait for the whole plugins directory's load at start.
        .route_layer(axum::middleware::from_fn(after_startup_load))
        .routes(routes!(listing::list))
        .routes(routes!(streams::append, streams::read_stream))
        .routes(routes!(lifecycle::delete))
        .routes(routes!(lifecycle::metadata, lifecycle::put_metadata))
        .routes(routes!(admin::scavenge))
        .routes(routes!(admin::backup))
        .routes(routes!(admin::uploads))
        .routes(routes!(admin::upload))
        .routes(routes!(streams::read_all))
        .routes(routes!(live::live))
        .routes(routes!(aggregates::command))
        .routes(routes!(aggregates::state))
        // The routes above wait until the directory's upcasters and aggregates have loaded (not
        // its projections, which they never depend on); those below answer at once.
        .route_layer(axum::middleware::from_fn(after_aggregates_load))
        .routes(routes!(console::index))
        .routes(routes!(console::asset))
        .routes(routes!(openapi::serve))
        .routes(routes!(health))
        .routes(routes!(stats::stats))
        .routes(routes!(metrics::render))
        .routes(routes!(plugins::list))
}

/// The server's routes over `state`, with the layers every request passes through.
fn router(state: AppState) -> Router {
    let (routes, _document) = api().split_for_parts();
    routes
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.bodies.clone(),
            bodies::bound,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.bodies.clone(),
            responses::hold,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.origins.clone(),
            origins::guard,
        ))
        .layer(axum::middleware::from_fn(unread::close_if_unread))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "the server failed while handling this request",
            )
            .into_response()
        }))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    uri = %request.uri(),
                    stream = tracing::field::Empty,
                    plugin = tracing::field::Empty,
                    id = tracing::field::Empty,
                )
            }),
        )
        .layer(axum::Extension(state.plugins_loaded.clone()))
        .layer(axum::Extension(state.shutdown.clone()))
        .with_state(state)
}

/// Holds a request until the plugins directory has loaded at start, as Akka stashes the
/// commands of an entity that is still recovering: a query of a projection still compiling
/// must not answer "unknown plugin".
async fn after_startup_load(
    axum::Extension(progress): axum::Extension<watch::Receiver<StartupLoad>>,
    axum::Extension(shutdown): axum::Extension<CancellationToken>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match held_until(progress, StartupLoad::Loaded, shutdown).await {
        Ok(()) => next.run(request).await,
        Err(stopping) => stopping.into_response(),
    }
}

/// Holds a request until the plugins directory's upcasters and aggregates have loaded at
/// start: a command for an aggregate still compiling must not answer "unknown plugin", nor an
/// append to its streams skip its check, nor a read miss an upcaster. Projections may still be
/// loading.
async fn after_aggregates_load(
    axum::Extension(progress): axum::Extension<watch::Receiver<StartupLoad>>,
    axum::Extension(shutdown): axum::Extension<CancellationToken>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match held_until(progress, StartupLoad::AggregatesLoaded, shutdown).await {
        Ok(()) => next.run(request).await,
        Err(stopping) => stopping.into_response(),
    }
}

/// Waits until the load at start reached `stage`; a request still waiting when the server
/// starts stopping is answered 503 at once instead of holding up the shutdown.
async fn held_until(
    mut progress: watch::Receiver<StartupLoad>,
    stage: StartupLoad,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    if *progress.borrow() >= stage {
        return Ok(());
    }
    tokio::select! {
        // An error means the loading task is gone (the server is stopping): go on.
        _ = progress.wait_for(|reached| *reached >= stage) => Ok(()),
        () = shutdown.cancelled() => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the server is stopping before its plugins directory finished loading",
        )),
    }
}

/// The body of `GET /health`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`, or `failed` after a storage fault.
    status: &'static str,
    head_position: u64,
    /// True while the plugins directory still loads at start.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    loading_plugins: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `GET /health`: the server answers, and how far the journal has got (with
/// `"loading_plugins": true` while the plugins directory still loads at start); 503 once a
/// storage fault stopped the journal (the host then exits, see [`Server::faulted`]).
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health), (status = 503, description = "Failed", body = Health)))]
async fn health(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::response::Response {
    let journal = state.runtime.journal();
    let head_position = journal.head_position();
    match journal.fault() {
        None => Json(Health {
            status: "ok",
            head_position,
            loading_plugins: *state.plugins_loaded.borrow() != StartupLoad::Loaded,
            error: None,
        })
        .into_response(),
        Some(fault) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "failed",
                head_position,
                loading_plugins: false,
                error: Some(format!(
                    "the journal stopped writing after a storage fault: {fault}"
                )),
            }),
        )
            .into_response(),
    }
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Runs journal reads and plugin calls on the blocking pool; a panic there becomes a 500.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, error))?
}

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Holds `journal.redb` and the compiled-component cache `cache/`; created if missing.
    pub data_dir: PathBuf,
    /// A PostgreSQL journal shared with other hosts instead of `journal.redb` in `data_dir`.
    pub journal_url: Option<String>,
    /// Start on a PostgreSQL server that does not flush commits durably, with a warning (see
    /// [`JournalConfig::accept_non_durable_postgres`]).
    pub accept_non_durable_postgres: bool,
    /// Every `*.wasm` in it is loaded at start, smallest first, in the background: the server
    /// already listens, `GET /plugins` shows each file queued or compiling, and other requests
    /// wait until all are loaded (commands, appends and reads only for the upcasters and
    /// aggregates, which load before the projections). One that fails to load is logged and skipped. Files added or
    /// changed later are loaded while serving.
    pub plugins_dir: Option<PathBuf>,
    /// Port 0 picks a free port: see [`Server::local_addr`].
    pub listen: SocketAddr,
    /// Enables `PUT`/`DELETE /plugins/{name}` for requests bearing it.
    pub admin_token: Option<String>,
    /// Serves `/metrics` from this recorder (see [`metrics::install`]).
    pub metrics: Option<PrometheusHandle>,
    /// What projections do with an event they cannot fold, unless set per plugin.
    pub failure_policy: FailurePolicy,
    /// What clients may make the server hold.
    pub limits: ClientLimits,
    /// What confines each plugin: time, memory and fuel per call, answer sizes, log rates.
    pub plugin_limits: LimitPolicy,
    /// Most bytes the cached live aggregate states hold together (see
    /// [`AggregateConfig::cache_bytes`]).
    pub aggregate_cache_bytes: usize,
    /// Most bytes of the redb journal's pages held in memory (see
    /// [`JournalConfig::cache_bytes`]).
    pub journal_cache_bytes: usize,
    /// The `foldhost` binary that compiles plugins in a child process, so that the server
    /// keeps none of the compiler's memory (see
    /// [`PluginEngine::compile_in_child`](crate::runtime::PluginEngine::compile_in_child));
    /// none: in this process.
    pub compiler: Option<PathBuf>,
    /// How long a live aggregate state may go unused before it is dropped (see
    /// [`AggregateConfig::passivate_after`]).
    pub passivate_after: Option<Duration>,
}

/// Bounds on what clients (authenticated or not) may make the server hold, and which web pages
/// may reach it.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Most `GET /events/live` feeds open at once; past it a feed is refused with 503.
    pub max_live_feeds: usize,
    /// Most of `max_live_feeds` one client (an IP address, an IPv6 /64) holds open at once;
    /// past it its feed is refused with 429 and `Retry-After`. None: a quarter of
    /// `max_live_feeds` (see [`ClientLimits::live_feed_share`]); 0: no share.
    pub live_feeds_per_client: Option<usize>,
    /// Most bytes of events a live feed reads ahead of what its client has taken.
    pub live_buffer_bytes: usize,
    /// A connection on which nothing could be written for this long (its client stopped
    /// reading) is closed.
    pub write_stall_timeout: Duration,
    /// A connection whose client has not sent a request's headers this long after it opened
    /// or after its previous response (idle, or sending them a byte at a time) is closed; a
    /// request body of which nothing arrives for this long is refused with 408.
    pub read_timeout: Duration,
    /// Bytes per second a request body must average, counted from its first read, once
    /// `read_timeout` has passed since then; one slower is refused with 408 (0: any rate).
    pub body_min_rate: usize,
    /// Most bytes of request bodies held at once, being received or handled; a body that
    /// would go past it is refused with 503 and `Retry-After`, one larger than it with 413.
    pub body_budget: usize,
    /// Most bytes of `body_budget` the bodies of one client (an IP address, an IPv6 /64) hold
    /// at once; a body that would go past it is refused with 429 and `Retry-After`, one larger
    /// than it with 413. None: a quarter of `body_budget` (see [`ClientLimits::body_share`]);
    /// 0: no share.
    pub body_budget_per_client: Option<usize>,
    /// Most writes queued for the journal; past it appends and commands get 503 with
    /// `Retry-After`.
    pub max_queued_writes: usize,
    /// Host names, besides the server's own address, that requests may be addressed to and
    /// browsers' pages may come from (see [`origins`]): a reverse proxy's public name.
    pub allowed_hosts: Vec<String>,
}

impl ClientLimits {
    /// The bytes of the body budget one client may hold: `body_budget_per_client`, by default
    /// a quarter of `body_budget`. A quarter, because one client then leaves at least three
    /// quarters of the budget to the others, and it takes four addresses rather than one to
    /// hold all of it; while with the default budget a client may still send the largest body
    /// the server takes (a 64 MiB plugin upload) or eight of the largest JSON bodies (8 MiB)
    /// at once. A half would leave the others one client's worth; an eighth would refuse the
    /// largest uploads.
    pub fn body_share(&self) -> usize {
        self.body_budget_per_client.unwrap_or(self.body_budget / 4)
    }

    /// The live feeds one client may hold open: `live_feeds_per_client`, by default a quarter
    /// of `max_live_feeds` (at least one), for the reason [`ClientLimits::body_share`] gives:
    /// one client, 1,024 feeds waiting at the head and sending only keep-alives, left every
    /// other client 503 for as long as it liked.
    pub fn live_feed_share(&self) -> usize {
        (self.live_feeds_per_client).unwrap_or((self.max_live_feeds / 4).max(1))
    }
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_live_feeds: 1024,
            live_feeds_per_client: None,
            live_buffer_bytes: 1 << 20,
            write_stall_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            body_min_rate: 8 << 10,
            body_budget: 256 << 20,
            body_budget_per_client: None,
            max_queued_writes: JournalConfig::default().max_queued_writes,
            allowed_hosts: Vec::new(),
        }
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    runtime: Arc<Runtime>,
    shutdown: CancellationToken,
    serving: JoinHandle<()>,
    /// Loads the plugin directory's files at start, then watches it for files added or
    /// changed: its output is the watcher, kept alive in the handle until shutdown.
    loading: Option<JoinHandle<Option<plugin_dir::DirWatcher>>>,
}

impl Server {
    /// Opens the journal, binds the listener, starts serving and loading the plugins directory
    /// (see [`ServerConfig::plugins_dir`]).
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        let data = config.data_dir;
        crate::durable::create_dir_all(&data)
            .with_context(|| format!("creating the data directory {}", data.display()))?;
        let journal_config = JournalConfig {
            max_queued_writes: config.limits.max_queued_writes,
            cache_bytes: config.journal_cache_bytes,
            ..JournalConfig::default()
        };
        let journal = match &config.journal_url {
            Some(url) => {
                let journal = JournalConfig {
                    accept_non_durable_postgres: config.accept_non_durable_postgres,
                    ..journal_config
                };
                Journal::open_postgres(url, journal)
                    .await
                    .context("connecting to the PostgreSQL journal")?
            }
            None => {
                let path = data.join(JOURNAL_FILE);
                tokio::task::spawn_blocking(move || {
                    Journal::open(&path, journal_config)
                        .with_context(|| format!("opening the journal {}", path.display()))
                })
                .await??
            }
        };
        let runtime = Runtime::new(
            journal,
            RuntimeConfig {
                cache_dir: Some(data.join(COMPILE_CACHE)),
                uploads_dir: Some(data.join(UPLOADS)),
                compiler: config.compiler,
                failure_policy: config.failure_policy,
                limits: config.plugin_limits,
                aggregates: AggregateConfig {
                    cache_bytes: config.aggregate_cache_bytes,
                    passivate_after: config.passivate_after,
                    ..AggregateConfig::default()
                },
                ..RuntimeConfig::default()
            },
        )?;
        let uploads = runtime
            .kept_uploads()
            .with_context(|| format!("reading the uploaded plugins in {}", data.display()))?;
        let (plugins_loaded, loaded) =
            watch::channel(match (&config.plugins_dir, uploads.is_empty()) {
                (None, true) => StartupLoad::Loaded,
                _ => StartupLoad::Loading,
            });
        // Watched before it is listed, so that a file written while the others load is loaded
        // after them.
        let watching = config.plugins_dir.as_deref().and_then(|dir| {
            plugin_dir::start_watching(dir)
                .inspect_err(|error| tracing::error!(%error, "cannot watch the plugin directory"))
                .ok()
        });
        let files = match &config.plugins_dir {
            Some(dir) => plugin_dir::list(dir)
                .with_context(|| format!("reading the plugin directory {}", dir.display()))?,
            None => Vec::new(),
        };
        let loading = (config.plugins_dir.is_some() || !uploads.is_empty()).then(|| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let mut read = plugin_dir::Read::default();
                let loaded =
                    plugin_dir::load_all(&runtime, &files, &uploads, &plugins_loaded, &mut read)
                        .await;
                tracing::info!(loaded, uploads = uploads.len(), "loaded plugins");
                watching.map(|watching| watching.load_changes(runtime, read))
            })
        });
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        if let Some(handle) = &config.metrics {
            tokio::spawn(metrics::upkeep(handle.clone(), shutdown.clone()));
        }
        let app = router(AppState {
            runtime: runtime.clone(),
            admin_token: config.admin_token.map(Arc::from),
            metrics: config.metrics,
            shutdown: shutdown.clone(),
            data_dir: Arc::from(data.as_path()),
            backups: Arc::new(tokio::sync::Semaphore::new(1)),
            live_feeds: Arc::new(live_feeds::LiveFeeds::new(
                config.limits.max_live_feeds,
                config.limits.live_feed_share(),
            )),
            limits: config.limits.clone(),
            bodies: bodies::BodyBounds::new(
                config.limits.read_timeout,
                config.limits.body_min_rate,
                body_budget::BodyBudget::new(config.limits.body_budget, config.limits.body_share()),
            ),
            origins: origins::Origins::new(addr.ip(), &config.limits.allowed_hosts),
            plugins_loaded: loaded,
            started: std::time::Instant::now(),
        });
        let serving = tokio::spawn(listener::serve(
            listener,
            app,
            config.limits.write_stall_timeout,
            config.limits.read_timeout,
            shutdown.clone(),
        ));
        tracing::info!(%addr, "serving");
        Ok(Server {
            addr,
            runtime,
            shutdown,
            serving,
            loading,
        })
    }

    /// The runtime (and through it the journal) the server serves.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Resolves with the fault once a storage fault stops the journal writing. From then on
    /// `/health` answers 503 and writes are refused; the host should stop and be restarted
    /// (fail-stop), which reopens and if need be repairs the journal.
    pub async fn faulted(&self) -> Arc<str> {
        self.runtime.journal().faulted().await
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish (live feeds end; requests still
    /// running after [`SHUTDOWN_GRACE`] are cut off), then stops the plugins and closes the
    /// journal. Appends are acknowledged only once durable, and the journal commits every
    /// append already queued before it closes, so none that was acknowledged is lost.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.serving).await {
            Ok(served) => served.context("the server task failed")?,
            Err(_) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still running: cutting them off");
                self.serving.abort();
            }
        }
        if let Some(loading) = self.loading.take() {
            loading.abort();
            // The watcher, if the load had finished: dropping it stops watching.
            drop(loading.await);
        }
        self.runtime.shutdown().await;
        let journal = self.runtime.journal().clone();
        drop(self.runtime);
        // The last handle closes the journal: its writer drains its queue and stops.
        tokio::task::spawn_blocking(move || drop(journal)).await?;
        tracing::info!("stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_share_of_the_body_budget_takes_the_largest_body_the_server_takes() {
        let limits = ClientLimits::default();
        assert_eq!(limits.body_share(), MAX_PLUGIN_BODY);
        assert_eq!(limits.body_share() / MAX_JSON_BODY, 8);
        let off = ClientLimits {
            body_budget_per_client: Some(0),
            ..limits
        };
        assert_eq!(off.body_share(), 0);
    }

    #[test]
    fn the_default_share_of_live_feeds_is_a_quarter_of_them_and_at_least_one() {
        let limits = ClientLimits::default();
        assert_eq!(limits.live_feed_share(), 256);
        let few = ClientLimits {
            max_live_feeds: 3,
            ..limits.clone()
        };
        assert_eq!(few.live_feed_share(), 1);
        let off = ClientLimits {
            live_feeds_per_client: Some(0),
            ..limits
        };
        assert_eq!(off.live_feed_share(), 0);
    }
}
