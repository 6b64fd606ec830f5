//! Settings from flags and environment variables (every flag has both).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::sim::SimConfig;
use crate::domain::{Queue, Role};
use crate::runner::RunnerConfig;
use crate::runner::scheduler::ScheduleConfig;
use crate::server::ServerConfig;

/// Durable executors over a REST API.
#[derive(Debug, Parser)]
#[command(name = "executord", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, env = "EXECUTORD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API, and run tasks unless `--no-runner`.
    Serve(ServeArgs),
    /// Run tasks only (scale out by starting more of these).
    Worker(WorkerArgs),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Create, list and revoke API tokens.
    Tokens(TokensArgs),
    /// Print the OpenAPI document and exit.
    Openapi,
    /// Work with catalog files.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Serve the simulated cloud over the `http` driver's wire contract
    /// (for trying and testing `driver = "http"`).
    FakeCloud(FakeCloudArgs),
}

/// `executord fake-cloud`.
#[derive(Debug, Args)]
pub struct FakeCloudArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "EXECUTORD_FAKE_CLOUD_LISTEN",
        default_value = "127.0.0.1:9000"
    )]
    pub listen: SocketAddr,
    /// Keep the cloud in this PostgreSQL database (the `sim_*` tables, shared
    /// with every sim on it); without it, in this process's memory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Latency added to every call, in milliseconds.
    #[arg(long, env = "EXECUTORD_SIM_LATENCY_MS", default_value_t = 0)]
    pub sim_latency_ms: u64,
    /// How long objects take to change runtime state, in milliseconds.
    #[arg(long, env = "EXECUTORD_SIM_TRANSITION_MS", default_value_t = 1000)]
    pub sim_transition_ms: u64,
}

/// `executord serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "EXECUTORD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve the API only; leave tasks to `executord worker` processes.
    #[arg(long, env = "EXECUTORD_NO_RUNNER")]
    pub no_runner: bool,
    /// Require a token for `/metrics` too.
    #[arg(long, env = "EXECUTORD_PROTECT_METRICS")]
    pub protect_metrics: bool,
    /// Serve without tokens on a non-loopback address (anyone who can reach it may do anything).
    #[arg(long, env = "EXECUTORD_ALLOW_OPEN")]
    pub allow_open: bool,
    /// Seconds a client has to send a request's head, on a new connection and
    /// between requests on a kept-alive one; then the connection is closed.
    /// At most 30: a stalled client holds a connection this long.
    #[arg(long, env = "EXECUTORD_HEADER_READ_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=30))]
    pub header_read_timeout_secs: u64,
    /// Seconds a response may wait for a client that reads nothing (its
    /// socket full): then the connection is closed. Keeps a client that
    /// stops reading, an event stream's included, from holding a connection
    /// (and a stream slot) for ever.
    #[arg(long, env = "EXECUTORD_WRITE_STALL_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub write_stall_timeout_secs: u64,
    /// Most open client connections. At the cap a new connection closes the
    /// oldest idle one; when all are busy, new ones wait in the kernel's
    /// backlog. The default, 512, stays well under the common soft limit of
    /// 1024 open files, leaving room for the database pool, logs and the
    /// listener; raise it together with `ulimit -n`.
    #[arg(long, env = "EXECUTORD_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Runner settings.
    #[command(flatten)]
    pub runner: RunnerArgs,
    /// Catalog and backend settings.
    #[command(flatten)]
    pub catalog: CatalogArgs,
}

impl ServeArgs {
    /// The HTTP server's limits.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            write_stall_timeout: Duration::from_secs(self.write_stall_timeout_secs),
            max_connections: self.max_connections,
        }
    }
}

/// `executord worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Runner settings.
    #[command(flatten)]
    pub runner: RunnerArgs,
    /// Catalog and backend settings.
    #[command(flatten)]
    pub catalog: CatalogArgs,
}

/// `executord tokens`.
#[derive(Debug, Args)]
pub struct TokensArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: TokenAction,
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token and print it (once: only its hash is stored).
    Create {
        /// The tenant it acts for.
        #[arg(long)]
        tenant: String,
        /// `admin` (every tenant), `operator` (read and run executors) or `viewer` (read only).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A label for people.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List tokens (never the tokens themselves).
    List,
    /// Revoke a token by id or prefix.
    Revoke {
        /// The token's id, or the prefix `tokens list` shows.
        token: String,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("unknown role `{s}` (roles: admin, operator, viewer)"))
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL. Without it, an embedded cluster is started under `--data-dir`.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Directory of the embedded cluster.
    #[arg(
        long,
        env = "EXECUTORD_DATA_DIR",
        default_value = ".executord",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Most database connections this process opens.
    #[arg(
        long,
        env = "EXECUTORD_DB_CONNECTIONS",
        default_value_t = 32,
        global = true
    )]
    pub db_connections: u32,
}

/// How the runner behaves.
#[derive(Debug, Clone, Args)]
pub struct RunnerArgs {
    /// Queues this process runs (comma-separated).
    #[arg(long, env = "EXECUTORD_QUEUES", value_delimiter = ',', default_value = "regular,heavy,background", value_parser = parse_queue)]
    pub queues: Vec<Queue>,
    /// Concurrent tasks of the regular queue.
    #[arg(long, env = "EXECUTORD_REGULAR_CONCURRENCY", default_value_t = 16)]
    pub regular_concurrency: usize,
    /// Concurrent tasks of the heavy queue.
    #[arg(long, env = "EXECUTORD_HEAVY_CONCURRENCY", default_value_t = 4)]
    pub heavy_concurrency: usize,
    /// Concurrent tasks of the background queue.
    #[arg(long, env = "EXECUTORD_BACKGROUND_CONCURRENCY", default_value_t = 2)]
    pub background_concurrency: usize,
    /// Seconds a claim lasts without a heartbeat.
    #[arg(long, env = "EXECUTORD_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,
    /// Longest wait, in milliseconds, between looks at the queue when no notification arrives.
    #[arg(long, env = "EXECUTORD_POLL_INTERVAL_MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// Seconds a backend call may take before it counts as a transient failure.
    #[arg(long, env = "EXECUTORD_BACKEND_TIMEOUT_SECS", default_value_t = 60)]
    pub backend_timeout_secs: u64,
    /// First retry delay in milliseconds, doubled per attempt, with jitter.
    #[arg(long, env = "EXECUTORD_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,
    /// Seconds in-flight tasks may run on at shutdown before they are released.
    #[arg(long, env = "EXECUTORD_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Seconds between pulls of stable resources' runtime state (0 disables).
    #[arg(long, env = "EXECUTORD_PULL_INTERVAL_SECS", default_value_t = 60)]
    pub pull_interval_secs: u64,
    /// Seconds between sweeps for stranded resources (0 disables).
    #[arg(long, env = "EXECUTORD_SWEEP_INTERVAL_SECS", default_value_t = 60)]
    pub sweep_interval_secs: u64,
    /// Seconds between prunes of old history (0 disables).
    #[arg(long, env = "EXECUTORD_PRUNE_INTERVAL_SECS", default_value_t = 3600)]
    pub prune_interval_secs: u64,
    /// Days finished operations and resources' history are kept before pruning.
    #[arg(long, env = "EXECUTORD_RETENTION_DAYS", default_value_t = 7)]
    pub retention_days: u64,
    /// Webhook settings.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

/// How webhooks are checked and delivered.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Allow webhook URLs on loopback, link-local and private addresses
    /// (refused by default, so the service cannot be used to reach internal hosts).
    #[arg(long, env = "EXECUTORD_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// Seconds a receiver has to answer a delivery.
    #[arg(long, env = "EXECUTORD_WEBHOOK_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    pub webhook_timeout_secs: u64,
    /// First retry delay of a failed delivery in milliseconds, doubled per
    /// attempt, with jitter.
    #[arg(long, env = "EXECUTORD_WEBHOOK_RETRY_BASE_MS", default_value_t = 5000)]
    pub webhook_retry_base_ms: u64,
    /// Hours a message is retried before it is given up.
    #[arg(long, env = "EXECUTORD_WEBHOOK_RETRY_HOURS", default_value_t = 24)]
    pub webhook_retry_hours: u64,
}

impl WebhookArgs {
    /// The push settings.
    pub fn config(&self) -> crate::push::PushConfig {
        crate::push::PushConfig {
            allow_private: self.webhook_allow_private,
            timeout: Duration::from_secs(self.webhook_timeout_secs.max(1)),
            retry_base: Duration::from_millis(self.webhook_retry_base_ms.max(1)),
            retry_for: Duration::from_secs(self.webhook_retry_hours.saturating_mul(3600)),
        }
    }
}

fn every(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn parse_queue(s: &str) -> Result<Queue, String> {
    Queue::parse(s.trim())
        .ok_or_else(|| format!("unknown queue `{s}` (queues: regular, heavy, background)"))
}

impl RunnerArgs {
    /// The periodic jobs' schedule.
    pub fn schedule_config(&self) -> ScheduleConfig {
        ScheduleConfig {
            pull: every(self.pull_interval_secs),
            sweep: every(self.sweep_interval_secs),
            prune: every(self.prune_interval_secs),
            retention: Duration::from_secs(self.retention_days.saturating_mul(24 * 3600)),
            ..ScheduleConfig::default()
        }
    }

    /// The runner's configuration.
    pub fn runner_config(&self) -> RunnerConfig {
        RunnerConfig {
            regular: self.regular_concurrency,
            heavy: self.heavy_concurrency,
            background: self.background_concurrency,
            lease: Duration::from_secs(self.lease_secs.max(1)),
            poll_interval: Duration::from_millis(self.poll_interval_ms.max(1)),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        }
    }
}

/// `executord catalog …`.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Check a catalog and the backends it declares, without a database:
    /// exit 0, or print every error, each naming its place, and exit 1.
    Check {
        /// The catalog file; without it, the built-in catalog.
        #[arg(long, env = "EXECUTORD_CATALOG")]
        catalog: Option<PathBuf>,
    },
}

/// The catalog and the built-in backend.
#[derive(Debug, Clone, Args)]
pub struct CatalogArgs {
    /// A catalog file (TOML); without it, the built-in catalog.
    #[arg(long, env = "EXECUTORD_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Simulated backend: latency added to every call, in milliseconds.
    #[arg(long, env = "EXECUTORD_SIM_LATENCY_MS", default_value_t = 0)]
    pub sim_latency_ms: u64,
    /// Simulated backend: how long objects take to change runtime state, in milliseconds.
    #[arg(long, env = "EXECUTORD_SIM_TRANSITION_MS", default_value_t = 1000)]
    pub sim_transition_ms: u64,
}

impl CatalogArgs {
    /// The simulated backend's configuration.
    pub fn sim_config(&self) -> SimConfig {
        SimConfig {
            latency: Duration::from_millis(self.sim_latency_ms),
            transition_delay: Duration::from_millis(self.sim_transition_ms),
            ..SimConfig::default()
        }
    }
}
