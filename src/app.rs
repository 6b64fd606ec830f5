//! Process assembly: the database (given or embedded), the catalog, the
//! runner, the router, and a graceful start and stop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use sqlx::PgPool;
use tokio::sync::watch;
use tower::util::MapRequestLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::api;
use crate::api::auth::Auth;
use crate::api::error::problem;
use crate::backend::Backends;
use crate::backend::sim::Sim;
use crate::catalog::Catalog;
use std::io::Write;

use crate::config::{
    CatalogArgs, DatabaseArgs, RunnerArgs, ServeArgs, TokenAction, TokensArgs, WorkerArgs,
};
use crate::db;
use crate::embedded::{EmbeddedPostgres, Liveness};
use crate::events::Events;
use crate::runner::Runner;
use crate::runner::scheduler::Scheduler;
use crate::tasks::TaskContext;

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What every handler shares: a handle on [`Shared`], cloned for every
/// request (one reference count).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

/// The API's settings and handles, behind [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// The database.
    pub pool: PgPool,
    /// The connections requests use, kept between them (see [`db::Kept`]).
    pub conns: db::Kept,
    /// The kinds.
    pub catalog: Arc<Catalog>,
    /// Wake-ups (finished operations, for `?wait`).
    pub events: Events,
    /// Authentication settings and cache.
    pub auth: Auth,
    /// Whether the process's own database is alive (`/healthz`).
    pub liveness: Liveness,
    /// Webhook settings (which URLs subscriptions may use).
    pub push: crate::push::PushConfig,
    /// The backends, for what the API asks of them directly (the
    /// importable objects of a kind).
    pub backends: Backends,
}

impl Shared {
    /// The state of an API over `pool`, with `/metrics` public, open until
    /// it sees a token.
    pub fn new(pool: PgPool, catalog: Arc<Catalog>, events: Events) -> Self {
        Self {
            backends: catalog.declared_backends().clone(),
            conns: db::Kept::new(pool.clone(), kept_connections(&pool)),
            pool,
            catalog,
            events,
            auth: Auth::new(false, false),
            liveness: watch::channel(None).1,
            push: crate::push::PushConfig::default(),
        }
    }
}

/// How many connections the API keeps between requests: a quarter of the
/// pool's (at least one), so the runner and the deliverer always find theirs.
fn kept_connections(pool: &PgPool) -> usize {
    (pool.options().get_max_connections() as usize / 4).max(1)
}

/// The whole HTTP application: API, OpenAPI document, docs, and layers.
pub fn router(state: AppState) -> Router {
    crate::metrics::install();
    let (api, doc) = api::routes();
    let request_id = api::request_id::HEADER;
    api.merge(api::docs::router(doc))
        .merge(crate::ui::router())
        .fallback(|| async { problem(StatusCode::NOT_FOUND, Some("no such route".into()), Vec::new()) })
        .method_not_allowed_fallback(|| async {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                Some("this route does not take that method".into()),
                Vec::new(),
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(limit_time))
        .layer(axum::middleware::from_fn_with_state(state.clone(), api::auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(state.conns.clone(), settle_connections))
        .layer(axum::middleware::from_fn(api::metrics::track))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get(api::request_id::HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_response(|res: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(status = res.status().as_u16(), latency_ms = latency.as_millis() as u64, "response");
                }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        // First of all: a client's id that is not safe to echo and log is dropped.
        .layer(MapRequestLayer::new(api::request_id::keep_only_acceptable))
        .with_state(state)
}

/// After a request that failed with a 5xx, gives the connections the API
/// keeps back to the pool to be checked: one of them may be broken (see
/// [`db::Kept`]). Outside authentication, whose token look-up uses one too.
async fn settle_connections(
    State(conns): State<db::Kept>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    if response.status().is_server_error() {
        conns.give_all_back();
    }
    response
}

/// The longest a request may take; long polls end at 60 s, well before.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);

/// Answers 503 instead of keeping a client waiting past [`REQUEST_TIMEOUT`].
async fn limit_time(request: Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(format!(
                "the request took longer than {} s",
                REQUEST_TIMEOUT.as_secs()
            )),
            Vec::new(),
        ),
    }
}

/// A started process: its database, catalog, backends and wake-ups.
struct Node {
    pool: PgPool,
    catalog: Arc<Catalog>,
    backends: Backends,
    events: Events,
    embedded: Option<EmbeddedPostgres>,
    /// Whether the embedded database is alive (always, with `DATABASE_URL`).
    liveness: Liveness,
}

impl Node {
    async fn start(database: &DatabaseArgs, catalog: &CatalogArgs) -> anyhow::Result<Self> {
        // The catalog is checked before the database starts: a bad file fails fast.
        let check = Backends::new().with("sim", Arc::new(Sim::new(catalog.sim_config())));
        let parsed = match &catalog.catalog {
            Some(path) => Catalog::load(path, &check)?,
            None => Catalog::default_catalog(&check)?,
        };
        let (pool, mut embedded) = open_database(database).await?;
        if let Err(e) = db::migrate(&pool).await {
            close_database(pool, embedded).await.ok();
            return Err(e);
        }
        let liveness = match embedded.as_mut() {
            Some(embedded) => embedded.supervise(),
            None => watch::channel(None).1,
        };
        // The simulated cloud lives in the database, so every process sees the same one.
        let backends = Backends::new()
            .with(
                "sim",
                Arc::new(Sim::shared_with_the_service(
                    catalog.sim_config(),
                    pool.clone(),
                )),
            )
            .and(parsed.declared_backends());
        let events = Events::new();
        tokio::spawn(events.clone().listen(pool.clone()));
        Ok(Self {
            pool,
            catalog: Arc::new(parsed),
            backends,
            events,
            embedded,
            liveness,
        })
    }

    /// The runner's pools and the periodic-job scheduler, until `stopping` turns true.
    fn run_tasks(
        &self,
        args: &RunnerArgs,
        stopping: &watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let runner = self.runner(args);
        tracing::info!(worker = runner.worker(), queues = ?args.queues, "runner started");
        let scheduler = Scheduler::new(self.pool.clone(), args.schedule_config());
        let deliverer = crate::push::Deliverer::new(self.pool.clone(), args.webhooks.config());
        let (pools, jobs) = (
            runner.run(args.queues.clone(), stopping.clone()),
            scheduler.run(stopping.clone()),
        );
        let until = stopping.clone();
        let webhooks = async move {
            match deliverer {
                Ok(deliverer) => deliverer.run(until).await,
                Err(e) => tracing::error!(error = %e, "webhook deliverer not started"),
            }
        };
        tokio::spawn(async move {
            tokio::join!(pools, jobs, webhooks);
        })
    }

    fn runner(&self, args: &RunnerArgs) -> Runner {
        let ctx = TaskContext {
            pool: self.pool.clone(),
            catalog: self.catalog.clone(),
            backends: self.backends.clone(),
            backend_timeout: Duration::from_secs(args.backend_timeout_secs.max(1)),
            retry_base: Duration::from_millis(args.retry_base_ms.max(1)),
        };
        Runner::new(ctx, args.runner_config(), self.events.clone())
    }

    async fn stop(self) -> anyhow::Result<()> {
        close_database(self.pool, self.embedded).await
    }
}

/// Connects to `DATABASE_URL`, or starts (or joins) the embedded cluster.
pub async fn open_database(
    args: &DatabaseArgs,
) -> anyhow::Result<(PgPool, Option<EmbeddedPostgres>)> {
    match &args.database_url {
        Some(url) => Ok((db::connect(url, args.db_connections).await?, None)),
        None => {
            let embedded = EmbeddedPostgres::start(&args.data_dir).await?;
            match db::connect(&embedded.database_url(), args.db_connections).await {
                Ok(pool) => Ok((pool, Some(embedded))),
                Err(e) => {
                    embedded.stop().await.ok();
                    Err(e)
                }
            }
        }
    }
}

/// Closes the pool and leaves the embedded cluster (which stops it only if
/// no other process uses it).
pub async fn close_database(
    pool: PgPool,
    embedded: Option<EmbeddedPostgres>,
) -> anyhow::Result<()> {
    pool.close().await;
    match embedded {
        Some(embedded) => embedded.stop().await,
        None => Ok(()),
    }
}

/// `executord serve`: the API, and the runner unless disabled, until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // The address first: a taken one fails before anything has started.
    let listener = crate::server::bind(args.listen)
        .with_context(|| format!("listening on {}", args.listen))?;
    let node = Node::start(&args.database, &args.catalog).await?;
    // Every way out, an error included, leaves the database as it found it.
    let served = serve_on(&node, listener, &args).await;
    let stopped = node.stop().await;
    served.and(stopped)
}

async fn serve_on(
    node: &Node,
    listener: tokio::net::TcpListener,
    args: &ServeArgs,
) -> anyhow::Result<()> {
    // Whether the service runs open is decided here, once: see `api::auth`.
    let tokens = db::tokens::any_active(&node.pool).await?;
    if !tokens {
        if !args.listen.ip().is_loopback() && !args.allow_open {
            anyhow::bail!(
                "refusing to serve {} without API tokens: create one with `executord tokens create`, \
                 listen on loopback, or pass --allow-open",
                args.listen
            );
        }
        tracing::warn!(
            address = %args.listen,
            "no API tokens exist: the API is open to anyone who can reach it (fine for local use; \
             create a token with `executord tokens create` to require authentication)"
        );
    }
    let (stop, stopping) = watch::channel(false);
    let runner = (!args.no_runner).then(|| node.run_tasks(&args.runner, &stopping));
    let state = AppState::from(Shared {
        auth: Auth::new(args.protect_metrics, tokens),
        liveness: node.liveness.clone(),
        push: args.runner.webhooks.config(),
        backends: node.backends.clone(),
        ..Shared::new(node.pool.clone(), node.catalog.clone(), node.events.clone())
    });
    let app = router(state);
    tracing::info!(address = %args.listen, runner = !args.no_runner, "executord serving; docs at /docs");
    let mut until_stop = stopping.clone();
    let server = crate::server::serve(listener, app, args.server_config(), async move {
        let _ = until_stop.wait_for(|s| *s).await;
    });
    let server = tokio::spawn(server);
    shutdown_signal().await;
    tracing::info!("shutting down");
    // Long polls answer now with what they have, so the server can stop.
    node.events.begin_shutdown();
    stop.send(true).ok();
    if let Some(runner) = runner {
        runner.await.ok();
    }
    match tokio::time::timeout(Duration::from_secs(70), server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("requests still open after 70 s; closing"),
    }
    Ok(())
}

/// `executord worker`: the runner only, until SIGINT or SIGTERM.
pub async fn work(args: WorkerArgs) -> anyhow::Result<()> {
    let node = Node::start(&args.database, &args.catalog).await?;
    let (stop, stopping) = watch::channel(false);
    let running = node.run_tasks(&args.runner, &stopping);
    shutdown_signal().await;
    tracing::info!("shutting down");
    stop.send(true).ok();
    running.await.ok();
    node.stop().await
}

/// `executord catalog check`: checks a catalog file (or the built-in one)
/// and the backends it declares, without a database. A line that says what
/// it holds, or every error found.
pub fn check_catalog(
    path: Option<&std::path::Path>,
) -> Result<String, Vec<crate::catalog::CatalogError>> {
    let builtin = Backends::new().with(
        "sim",
        Arc::new(Sim::new(crate::backend::sim::SimConfig::default())),
    );
    let (catalog, name) = match path {
        Some(path) => (
            Catalog::check_file(path, &builtin)?,
            path.display().to_string(),
        ),
        None => (
            Catalog::default_catalog(&builtin).map_err(|e| vec![e])?,
            "the built-in catalog".to_owned(),
        ),
    };
    Ok(format!(
        "{name}: ok ({} kinds; declared backends: {})",
        catalog.kinds().count(),
        match catalog.declared_backends().names() {
            names if names.is_empty() => "none".to_owned(),
            names => names.join(", "),
        }
    ))
}

/// `executord migrate`.
pub async fn migrate(args: DatabaseArgs) -> anyhow::Result<()> {
    let (pool, embedded) = open_database(&args).await?;
    let result = db::migrate(&pool).await;
    close_database(pool, embedded).await?;
    result?;
    tracing::info!("migrations applied");
    Ok(())
}

/// SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// `executord tokens …`.
pub async fn tokens(args: TokensArgs) -> anyhow::Result<()> {
    let (pool, embedded) = open_database(&args.database).await?;
    if let Some(new) = embedded.as_ref().filter(|e| e.is_new()) {
        tracing::warn!(
            data_dir = %args.database.data_dir.display(),
            url = %new.database_url(),
            "made a new, empty embedded database for this command: a service running elsewhere does not \
             see it; give this command that service's --data-dir (or its DATABASE_URL)"
        );
    }
    let result = async {
        db::migrate(&pool).await?;
        let mut out = std::io::stdout().lock();
        match args.action {
            TokenAction::Create { tenant, role, name } => {
                anyhow::ensure!(!tenant.trim().is_empty(), "--tenant must not be empty");
                let (token, hash, prefix) = crate::auth::new_token();
                let mut conn = pool.acquire().await?;
                let row = db::tokens::insert(&mut conn, &name, tenant.trim(), role.as_str(), &hash, &prefix).await?;
                tracing::info!(id = %row.id, tenant = %row.tenant, role = %row.role, "token created; it is shown once");
                writeln!(out, "{token}")?;
            }
            TokenAction::List => {
                writeln!(out, "{:<36}  {:<12}  {:<16}  {:<8}  {:<20}  name", "id", "prefix", "tenant", "role", "revoked")?;
                for t in db::tokens::list(&pool).await? {
                    let revoked = t.revoked_at.map(|r| r.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default();
                    writeln!(out, "{:<36}  {:<12}  {:<16}  {:<8}  {:<20}  {}", t.id, t.prefix, t.tenant, t.role, revoked, t.name)?;
                }
            }
            TokenAction::Revoke { token } => {
                let n = db::tokens::revoke(&pool, &token).await?;
                anyhow::ensure!(n > 0, "no active token has id or prefix `{token}`");
                writeln!(out, "revoked {n} token(s)")?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    close_database(pool, embedded).await?;
    result
}
