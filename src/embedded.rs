//! The embedded default database: a private PostgreSQL cluster under the data
//! directory, used when the service is given no `DATABASE_URL`.
//!
//! The cluster lives in `<data_dir>/pg` and is kept across restarts: it is
//! initialised only when `PG_VERSION` is missing. The server listens on a unix
//! socket only (no TCP port), so several checkouts on one machine never clash.
//! A server left running by an earlier process (killed before it could stop
//! it) is adopted; a stale `postmaster.pid` after a crash is handled by
//! `pg_ctl` and the server itself.
//!
//! Several processes may use one cluster (a `serve`, a `tokens create` beside
//! it, a `worker`). Two file locks in the data directory keep them from
//! pulling it from under each other:
//! - `pg.users`: every process using the cluster holds it shared for as long
//!   as it does;
//! - `pg.owner`: one process holds it exclusively: the owner, which started
//!   the server (or adopted it from a process that is gone). Only the owner
//!   restarts a server that died ([`EmbeddedPostgres::supervise`]), and a
//!   process stops the server at exit only when it owns it and nobody else
//!   uses it. A process that outlives the owner takes ownership over, so the
//!   last one out stops the server and nothing is left running.
//!
//! Joining and leaving happen under a third lock, `pg.lock`, which also
//! serialises setting the cluster up, so a process never joins a server that
//! is being stopped.
//!
//! PostgreSQL refuses to run as root, so when this process is root the cluster
//! is owned by, and every PostgreSQL program runs as, the `postgres` system
//! user (through `runuser -u postgres --`).

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::Command;
use tokio::sync::watch;

/// The database the service uses, and the cluster's superuser.
const DB_NAME: &str = "executord";
/// The cluster's superuser (`initdb -U`).
const SUPERUSER: &str = "executord";
/// The port number; only used to name the socket file (no TCP listener).
const PORT: u16 = 5432;
/// The socket file PostgreSQL creates in its socket directory for [`PORT`].
const SOCKET_FILE: &str = ".s.PGSQL.5432";
/// The longest unix socket path (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Where the socket directory goes when the cluster path is too long.
const SHORT_SOCKET_BASE: &str = "/tmp";
/// The settings file this module owns, included from `postgresql.conf`.
const CONF_FILE: &str = "executord.conf";
/// The line that includes [`CONF_FILE`].
const INCLUDE_LINE: &str = "include_if_exists = 'executord.conf'";
/// The system user PostgreSQL runs as when this process is root.
const PG_SYSTEM_USER: &str = "postgres";
/// The server log is moved aside at start once it is this big.
const LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// How many lines of the server log an error shows.
const LOG_TAIL_LINES: usize = 40;
/// The longest any single PostgreSQL program may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for another process starting the same cluster.
const LOCK_TIMEOUT: Duration = Duration::from_secs(180);
/// The lock every process using the cluster holds shared.
const USERS_LOCK: &str = "pg.users";
/// The lock the owner of the server holds exclusively; it holds the owner's pid.
const OWNER_LOCK: &str = "pg.owner";
/// How often the owner looks whether its server still runs.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two restarts of a server that will not start.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// After this many failed restarts in a row the process reports itself not
/// alive (`/healthz` 503), so that whatever runs it can replace it.
const RESTARTS_BEFORE_UNHEALTHY: u32 = 3;
/// Environment variables that would redirect the PostgreSQL client programs.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLMODE",
    "PGDATA",
    "PGTARGETSESSIONATTRS",
    "PGCONNECT_TIMEOUT",
];

/// A private PostgreSQL cluster under the service's data directory, started,
/// adopted (left running by a process that is gone) or shared with the live
/// process that owns it.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    /// The paths and programs, shared with the supervisor.
    cluster: Arc<Cluster>,
    /// The supervisor, while one runs.
    supervisor: Option<Supervisor>,
    /// Whether this start made the cluster (it did not exist before).
    created: bool,
}

/// The supervisor task and the switch that ends it.
#[derive(Debug)]
struct Supervisor {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Whether the embedded database is alive as far as this process can tell:
/// `None` when it is, or the reason it is not and could not be brought back.
pub type Liveness = watch::Receiver<Option<String>>;

/// What this process holds of the cluster: its place among the users and,
/// maybe, its ownership.
#[derive(Debug)]
struct Claim {
    /// `pg.users`, locked shared.
    users: File,
    /// `pg.owner`, locked exclusively, when this process owns the server.
    owner: Option<File>,
}

/// The cluster's paths and programs, and this process's claim on it.
#[derive(Debug)]
struct Cluster {
    /// The service's data directory, absolute.
    data_dir: PathBuf,
    /// The directory holding `pg_ctl`, `initdb`, `psql`, ...
    bin_dir: PathBuf,
    /// `<data_dir>/pg`, absolute.
    cluster_dir: PathBuf,
    /// The directory the server's unix socket is in, absolute.
    socket_dir: PathBuf,
    /// `<data_dir>/pg.log`, absolute.
    log_file: PathBuf,
    /// Run the PostgreSQL programs as the `postgres` system user.
    as_postgres: bool,
    /// What [`EmbeddedPostgres::database_url`] returns.
    url: String,
    /// Taken at start, given up at stop.
    claim: std::sync::Mutex<Option<Claim>>,
}

impl EmbeddedPostgres {
    /// Initialises (the first time) and starts a cluster under `data_dir`
    /// (the cluster goes in `data_dir/pg`, its log in `data_dir/pg.log`), and
    /// returns once it accepts connections. A server still running on that
    /// cluster is used instead: adopted if the process that started it is
    /// gone, shared with it if it is alive.
    pub async fn start(data_dir: &Path) -> Result<Self> {
        tokio::fs::create_dir_all(data_dir)
            .await
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let data_dir = tokio::fs::canonicalize(data_dir)
            .await
            .with_context(|| format!("resolving data directory {}", data_dir.display()))?;
        if data_dir.to_str().is_none() {
            bail!(
                "the data directory {} is not valid UTF-8, which a database URL cannot hold; \
                 pass a --data-dir with a plain path, or set DATABASE_URL",
                data_dir.display()
            );
        }
        let cluster_dir = data_dir.join("pg");
        let bin_dir = find_bin_dir(&cluster_dir)?;
        let as_postgres = running_as_root();

        // Two processes of one checkout (say, the API and a worker) may start
        // at once: let one set the cluster up while the other waits.
        let _lock = lock_data_dir(&data_dir).await?;

        let (socket_dir, is_fallback) =
            choose_socket_dir(&cluster_dir, Path::new(SHORT_SOCKET_BASE));
        if is_fallback {
            tracing::debug!(
                socket_dir = %socket_dir.display(),
                cluster_dir = %cluster_dir.display(),
                "the cluster path is too long for a unix socket path ({MAX_SOCKET_PATH} bytes at most); using a short socket directory under {SHORT_SOCKET_BASE}"
            );
        }

        let pg = Cluster {
            url: socket_url(&socket_dir),
            bin_dir,
            log_file: data_dir.join("pg.log"),
            cluster_dir,
            socket_dir,
            as_postgres,
            data_dir,
            claim: std::sync::Mutex::new(None),
        };

        if pg.as_postgres {
            pg.check_postgres_can_reach(&pg.data_dir).await?;
        }
        pg.prepare_dirs(is_fallback).await?;

        let created = !pg.cluster_dir.join("PG_VERSION").exists();
        if created {
            pg.initdb().await?;
        }

        let users = open_lock_file(&pg.data_dir.join(USERS_LOCK))?;
        // Only a process leaving holds it exclusively, and it does so under
        // `pg.lock`, which this process holds now.
        users.try_lock_shared().map_err(|e| {
            anyhow!(
                "locking {} failed: {e}",
                pg.data_dir.join(USERS_LOCK).display()
            )
        })?;
        let owner = pg.try_own()?;
        let owns = owner.is_some();
        pg.set_claim(Claim { users, owner });

        if pg.is_running().await? {
            pg.wait_ready().await?;
            if owns {
                tracing::info!(
                    cluster = %pg.cluster_dir.display(),
                    socket_dir = %pg.socket_dir.display(),
                    "adopted the embedded PostgreSQL server left running by an earlier process"
                );
            } else {
                tracing::info!(
                    cluster = %pg.cluster_dir.display(),
                    owner = %pg.owner_pid(),
                    "using the embedded PostgreSQL server of another executord process; it stays running when this one exits"
                );
            }
        } else if owns {
            pg.write_config().await?;
            pg.pg_ctl_start().await?;
            tracing::info!(
                cluster = %pg.cluster_dir.display(),
                socket_dir = %pg.socket_dir.display(),
                log = %pg.log_file.display(),
                "started the embedded PostgreSQL server"
            );
        } else {
            bail!(
                "the embedded PostgreSQL server of {} is not running, and executord process {} owns it \
                 (it starts it again itself); try again in a few seconds",
                pg.cluster_dir.display(),
                pg.owner_pid()
            );
        }

        if pg.ensure_database().await? {
            tracing::info!(
                database = DB_NAME,
                "created the database in the embedded PostgreSQL"
            );
        }
        Ok(Self {
            cluster: Arc::new(pg),
            supervisor: None,
            created,
        })
    }

    /// A sqlx-compatible URL for the cluster's database, connecting over the
    /// unix socket, e.g.
    /// `postgres://executord@localhost:5432/executord?host=/abs/data/pg&sslmode=disable`.
    pub fn database_url(&self) -> String {
        self.cluster.url.clone()
    }

    /// Whether this start made a new, empty cluster.
    pub fn is_new(&self) -> bool {
        self.created
    }

    /// Whether this process owns the server (started or adopted it).
    pub fn owns_server(&self) -> bool {
        self.cluster.owns()
    }

    /// Watches the server for as long as this process uses it: every second
    /// the owner looks whether it still runs and, if it died or was stopped,
    /// starts it again, with a doubling back-off up to 30 s, logging each
    /// try. A process that does not own the server takes ownership when the
    /// owner is gone. The answer turns to `Some(reason)` after three failed
    /// restarts in a row, and back to `None` once the server runs again.
    pub fn supervise(&mut self) -> Liveness {
        let (health, liveness) = watch::channel(None);
        if let Some(old) = self.supervisor.take() {
            old.stop.send(true).ok();
        }
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(supervise(self.cluster.clone(), stopping, health));
        self.supervisor = Some(Supervisor { stop, task });
        liveness
    }

    /// Leaves the cluster. The server is stopped (`pg_ctl stop -m fast`) only
    /// if this process owns it, or can take ownership because the owner is
    /// gone, and no other process uses it; otherwise it stays running for
    /// those that do.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.stop.send(true).ok();
            supervisor.task.await.ok();
        }
        let pg = &self.cluster;
        let _lock = lock_data_dir(&pg.data_dir).await?;
        let Some(claim) = pg.take_claim() else {
            return Ok(());
        };
        let owner = match claim.owner {
            Some(owner) => Some(owner),
            None => pg.try_own()?,
        };
        let Some(_owner) = owner else {
            tracing::info!(
                cluster = %pg.cluster_dir.display(),
                owner = %pg.owner_pid(),
                "left the embedded PostgreSQL server running for the executord process that owns it"
            );
            return Ok(());
        };
        // Converting the shared lock to an exclusive one succeeds only when
        // no other process holds it; none can join while `pg.lock` is held.
        if claim.users.try_lock().is_err() {
            tracing::info!(
                cluster = %pg.cluster_dir.display(),
                "left the embedded PostgreSQL server running for the other executord processes using it"
            );
            return Ok(());
        }
        pg.stop_server().await
    }
}

/// The supervisor's loop (see [`EmbeddedPostgres::supervise`]).
async fn supervise(
    pg: Arc<Cluster>,
    mut stopping: watch::Receiver<bool>,
    health: watch::Sender<Option<String>>,
) {
    let mut failures = 0_u32;
    let mut wait = SUPERVISE_EVERY;
    loop {
        tokio::select! {
            _ = stopping.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = SUPERVISE_EVERY;
        if !pg.owns() {
            match pg.take_ownership() {
                Ok(true) => tracing::info!(
                    cluster = %pg.cluster_dir.display(),
                    "the executord process that owned the embedded PostgreSQL server is gone; this one owns it now"
                ),
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not look at the embedded PostgreSQL server's owner lock");
                    continue;
                }
            }
        }
        if pg.postmaster_alive().await {
            continue;
        }
        tracing::warn!(
            cluster = %pg.cluster_dir.display(),
            attempt = failures + 1,
            "the embedded PostgreSQL server is not running; starting it again"
        );
        // Stop waiting at shutdown: the process is leaving anyway.
        let restart = tokio::select! {
            _ = stopping.changed() => return,
            restart = pg.restart() => restart,
        };
        match restart {
            Ok(()) => {
                tracing::warn!(
                    cluster = %pg.cluster_dir.display(),
                    after_failures = failures,
                    "restarted the embedded PostgreSQL server"
                );
                failures = 0;
                health.send_replace(None);
            }
            Err(e) => {
                failures += 1;
                wait = restart_backoff(failures);
                tracing::error!(
                    cluster = %pg.cluster_dir.display(),
                    attempt = failures,
                    retry_in_s = wait.as_secs(),
                    error = %format!("{e:#}"),
                    "the embedded PostgreSQL server did not start again"
                );
                if failures >= RESTARTS_BEFORE_UNHEALTHY {
                    health.send_replace(Some(format!(
                        "the embedded PostgreSQL server this process owns is down and {failures} restarts \
                         in a row failed; last error: {e:#}"
                    )));
                }
            }
        }
    }
}

/// The wait after the `failures`-th failed restart in a row: 1 s, doubling,
/// at most [`RESTART_BACKOFF_MAX`].
fn restart_backoff(failures: u32) -> Duration {
    let secs = 1_u64 << failures.saturating_sub(1).min(16);
    Duration::from_secs(secs).min(RESTART_BACKOFF_MAX)
}

/// Opens (creating) a lock file in the data directory.
fn open_lock_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

impl Cluster {
    /// Takes `pg.owner` if no live process holds it, writing this process's
    /// pid into it; `None` when another process owns the server.
    fn try_own(&self) -> Result<Option<File>> {
        let path = self.data_dir.join(OWNER_LOCK);
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => {
                let pid = std::process::id().to_string();
                // Only for people and log lines; the lock is what counts.
                if let Err(e) = file
                    .set_len(0)
                    .and_then(|()| (&file).write_all(pid.as_bytes()))
                {
                    tracing::debug!(error = %e, "could not write the owner's pid");
                }
                Ok(Some(file))
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }

    /// Becomes the owner if the owner is gone; whether it did.
    fn take_ownership(&self) -> Result<bool> {
        let Some(owner) = self.try_own()? else {
            return Ok(false);
        };
        let mut claim = self.claim.lock().unwrap_or_else(PoisonError::into_inner);
        match claim.as_mut() {
            Some(claim) => {
                claim.owner = Some(owner);
                Ok(true)
            }
            // Already left: let the lock go again.
            None => Ok(false),
        }
    }

    fn set_claim(&self, claim: Claim) {
        *self.claim.lock().unwrap_or_else(PoisonError::into_inner) = Some(claim);
    }

    fn take_claim(&self) -> Option<Claim> {
        self.claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn owns(&self) -> bool {
        self.claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|c| c.owner.is_some())
    }

    /// The pid written in `pg.owner`, for messages.
    fn owner_pid(&self) -> String {
        std::fs::read_to_string(self.data_dir.join(OWNER_LOCK))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "?".to_owned())
    }

    /// Whether the postmaster named in `postmaster.pid` is a live process:
    /// a cheap look, made every second.
    async fn postmaster_alive(&self) -> bool {
        let pid_file = tokio::fs::read_to_string(self.cluster_dir.join("postmaster.pid"))
            .await
            .unwrap_or_default();
        let Some(pid) = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
        else {
            return false;
        };
        let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
            .await
            .unwrap_or_default();
        !matches!(stat_state(&stat), None | Some('Z'))
    }

    /// Starts the server again, under `pg.lock`, unless it runs already.
    async fn restart(&self) -> Result<()> {
        let _lock = lock_data_dir(&self.data_dir).await?;
        if !self.is_running().await? {
            self.write_config().await?;
            self.pg_ctl_start().await?;
        }
        self.ensure_database().await?;
        Ok(())
    }

    /// `pg_ctl stop -m fast`.
    async fn stop_server(&self) -> Result<()> {
        if !self.is_running().await? {
            tracing::info!(
                cluster = %self.cluster_dir.display(),
                "the embedded PostgreSQL server was already stopped"
            );
            return Ok(());
        }
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.cluster_dir)
            .args(["-m", "fast", "-w", "-t", "60", "-s"]);
        let out = run(&mut cmd, "pg_ctl stop").await?;
        if !out.status.success() {
            bail!(
                "stopping the embedded PostgreSQL server at {} failed: {}{}",
                self.cluster_dir.display(),
                output_text(&out),
                self.log_tail().await
            );
        }
        tracing::info!(cluster = %self.cluster_dir.display(), "stopped the embedded PostgreSQL server");
        Ok(())
    }

    /// A command running `program` from the binaries directory, as the
    /// `postgres` user when this process is root.
    fn pg_command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new(runuser());
            cmd.args(["-u", PG_SYSTEM_USER, "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        };
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        // The postgres user may not be able to enter our working directory.
        cmd.current_dir("/");
        cmd
    }

    /// Fails clearly when the `postgres` user cannot enter the data directory
    /// (say, it is under a home directory of mode 700).
    async fn check_postgres_can_reach(&self, data_dir: &Path) -> Result<()> {
        let mut cmd = Command::new(runuser());
        cmd.args(["-u", PG_SYSTEM_USER, "--", "test", "-x"])
            .arg(data_dir)
            .current_dir("/");
        let out = run(&mut cmd, "runuser").await.with_context(|| {
            "running as root, PostgreSQL must run as the `postgres` system user through `runuser`, which failed; \
             install the PostgreSQL server (e.g. `apt-get install postgresql`), or set DATABASE_URL to an existing server"
        })?;
        if !out.status.success() {
            if out.stderr.trim_ascii().is_empty() {
                bail!(
                    "running as root, the embedded PostgreSQL must run as the `postgres` user, but that user \
                     cannot reach the data directory {} (it or a parent directory is not searchable by others, \
                     e.g. mode 700); pass a --data-dir elsewhere (e.g. under /var/lib or /srv), or set DATABASE_URL \
                     to an existing server",
                    data_dir.display()
                );
            }
            bail!(
                "running as root, the embedded PostgreSQL must run as the `postgres` user, but checking that it can \
                 reach {} failed: {}; install the PostgreSQL server (e.g. `apt-get install postgresql`), pass \
                 a --data-dir elsewhere, or set DATABASE_URL to an existing server",
                data_dir.display(),
                output_text(&out)
            );
        }
        Ok(())
    }

    /// Creates the cluster and socket directories and the log file, owned by
    /// whoever runs the server.
    async fn prepare_dirs(&self, fallback_socket_dir: bool) -> Result<()> {
        make_private_dir(&self.cluster_dir).await?;
        if fallback_socket_dir {
            make_private_dir(&self.socket_dir).await?;
            if !self.as_postgres {
                let meta = tokio::fs::symlink_metadata(&self.socket_dir).await?;
                let mine = tokio::fs::metadata("/proc/self")
                    .await
                    .map(|m| m.uid())
                    .ok();
                if mine.is_some_and(|uid| uid != meta.uid()) {
                    bail!(
                        "the socket directory {} belongs to another user; remove it, or use a shorter --data-dir",
                        self.socket_dir.display()
                    );
                }
            }
        }

        // pg_ctl appends to the log forever: keep one old generation.
        if let Ok(meta) = tokio::fs::metadata(&self.log_file).await
            && meta.len() > LOG_ROTATE_BYTES
        {
            let old = self.log_file.with_extension("log.old");
            tokio::fs::rename(&self.log_file, &old)
                .await
                .with_context(|| format!("rotating {}", self.log_file.display()))?;
        }
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .await
            .with_context(|| format!("creating {}", self.log_file.display()))?;

        if self.as_postgres {
            // Recursive: a cluster copied in by another user still works.
            chown_to_postgres(&self.cluster_dir, true).await?;
            chown_to_postgres(&self.log_file, false).await?;
            if fallback_socket_dir {
                chown_to_postgres(&self.socket_dir, true).await?;
            }
        }
        Ok(())
    }

    /// Runs `initdb` on the (empty) cluster directory.
    async fn initdb(&self) -> Result<()> {
        let mut entries = tokio::fs::read_dir(&self.cluster_dir).await?;
        if entries.next_entry().await?.is_some() {
            bail!(
                "{} has no PG_VERSION but is not empty (an interrupted first start?); \
                 remove that directory to let executord initialise a new cluster there",
                self.cluster_dir.display()
            );
        }
        let help = run(self.pg_command("initdb").arg("--help"), "initdb --help").await?;
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D").arg(&self.cluster_dir).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]);
        if String::from_utf8_lossy(&help.stdout).contains("--no-instructions") {
            cmd.arg("--no-instructions");
        }
        let out = run(&mut cmd, "initdb").await?;
        if !out.status.success() {
            bail!(
                "initdb of the embedded PostgreSQL cluster at {} failed: {}",
                self.cluster_dir.display(),
                output_text(&out)
            );
        }
        tracing::info!(cluster = %self.cluster_dir.display(), "initialised the embedded PostgreSQL cluster");
        Ok(())
    }

    /// Writes this module's settings (rewritten at every start, so a moved
    /// data directory gets its new socket path) and includes them from
    /// `postgresql.conf`.
    async fn write_config(&self) -> Result<()> {
        let conf = config_text(&self.socket_dir);
        let conf_path = self.cluster_dir.join(CONF_FILE);
        tokio::fs::write(&conf_path, conf)
            .await
            .with_context(|| format!("writing {}", conf_path.display()))?;

        let main_conf = self.cluster_dir.join("postgresql.conf");
        let text = tokio::fs::read_to_string(&main_conf)
            .await
            .with_context(|| format!("reading {}", main_conf.display()))?;
        if !text.lines().any(|line| line.trim() == INCLUDE_LINE) {
            let mut text = text;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("\n# Settings managed by executord (rewritten at every start).\n");
            text.push_str(INCLUDE_LINE);
            text.push('\n');
            tokio::fs::write(&main_conf, text)
                .await
                .with_context(|| format!("writing {}", main_conf.display()))?;
        }
        if self.as_postgres {
            chown_to_postgres(&conf_path, false).await?;
        }
        Ok(())
    }

    /// Whether a server is running on the cluster (`pg_ctl status`). A
    /// postmaster killed with `kill -9` stays a zombie until its parent (often
    /// PID 1, as `pg_ctl` leaves it orphaned) reaps it, and meanwhile both
    /// `pg_ctl status` and the new server's lock-file check take it for alive:
    /// wait for it to be reaped.
    async fn is_running(&self) -> Result<bool> {
        let mut waited = false;
        for _ in 0..240 {
            let mut cmd = self.pg_command("pg_ctl");
            cmd.arg("status").arg("-D").arg(&self.cluster_dir);
            let out = run(&mut cmd, "pg_ctl status").await?;
            match out.status.code() {
                Some(0) => {}
                Some(3) => return Ok(false),
                _ => bail!(
                    "pg_ctl status on {} failed: {}",
                    self.cluster_dir.display(),
                    output_text(&out)
                ),
            }
            let pid_file = tokio::fs::read_to_string(self.cluster_dir.join("postmaster.pid"))
                .await
                .unwrap_or_default();
            let Some(pid) = pid_file.lines().next().map(str::trim) else {
                return Ok(true);
            };
            let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
                .await
                .unwrap_or_default();
            if stat_state(&stat) != Some('Z') {
                return Ok(true);
            }
            if !waited {
                tracing::info!(
                    pid,
                    cluster = %self.cluster_dir.display(),
                    "the previous embedded PostgreSQL server was killed; waiting for its zombie process to be reaped"
                );
                waited = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!(
            "the previous PostgreSQL server of {} was killed but its process is still a zombie that no \
             parent reaps, and PostgreSQL will not start while it exists; run executord under an init that \
             reaps orphans (e.g. `docker run --init`), or set DATABASE_URL to an existing server",
            self.cluster_dir.display()
        )
    }

    /// Waits until an adopted server accepts connections on our socket.
    async fn wait_ready(&self) -> Result<()> {
        for _ in 0..60 {
            let mut cmd = self.pg_command("pg_isready");
            cmd.arg("-q").arg("-h").arg(&self.socket_dir).args([
                "-p",
                &PORT.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
            ]);
            if run(&mut cmd, "pg_isready").await?.status.success() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!(
            "pg_ctl reports a server running on {} but it does not accept connections on {}; \
             if no postgres process is running, remove {} and start again{}",
            self.cluster_dir.display(),
            self.socket_dir.join(SOCKET_FILE).display(),
            self.cluster_dir.join("postmaster.pid").display(),
            self.log_tail().await
        )
    }

    /// `pg_ctl start`, retried once: just after a `kill -9` of the previous
    /// server its children may still hold the old shared memory for a moment.
    async fn pg_ctl_start(&self) -> Result<()> {
        let mut last = None;
        for attempt in 0..2 {
            if attempt > 0 {
                tracing::warn!(
                    cluster = %self.cluster_dir.display(),
                    "the embedded PostgreSQL server did not start; trying once more"
                );
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let mut cmd = self.pg_command("pg_ctl");
            cmd.arg("start")
                .arg("-D")
                .arg(&self.cluster_dir)
                .arg("-l")
                .arg(&self.log_file)
                .args(["-w", "-t", "60", "-s"]);
            let out = run(&mut cmd, "pg_ctl start").await?;
            if out.status.success() {
                return Ok(());
            }
            last = Some(out);
        }
        let detail = last.as_ref().map(output_text).unwrap_or_default();
        Err(anyhow!(
            "starting the embedded PostgreSQL server at {} failed: {detail}{}",
            self.cluster_dir.display(),
            self.log_tail().await
        ))
    }

    /// Creates the database unless it exists (checked every start, so an
    /// interrupted first start heals). Returns whether it created it.
    async fn ensure_database(&self) -> Result<bool> {
        let port = PORT.to_string();
        let mut cmd = self.pg_command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &port, "-U", SUPERUSER, "-d", "postgres", "-c"])
            .arg(format!(
                "SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"
            ));
        let out = run(&mut cmd, "psql").await?;
        if !out.status.success() {
            bail!(
                "querying the embedded PostgreSQL server over {} failed: {}",
                self.socket_dir.display(),
                output_text(&out)
            );
        }
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            return Ok(false);
        }
        let mut cmd = self.pg_command("createdb");
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &port, "-U", SUPERUSER, DB_NAME]);
        let out = run(&mut cmd, "createdb").await?;
        if !out.status.success() {
            bail!(
                "creating database {DB_NAME} in the embedded PostgreSQL server failed: {}",
                output_text(&out)
            );
        }
        Ok(true)
    }

    /// The end of the server log, for error messages ("" when unreadable).
    async fn log_tail(&self) -> String {
        match tokio::fs::read(&self.log_file).await {
            Ok(bytes) => {
                let tail = tail_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES);
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("\n--- end of {} ---\n{tail}", self.log_file.display())
                }
            }
            Err(_) => String::new(),
        }
    }
}

/// Whether this process runs as root (`/proc/self` belongs to its user).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `runuser`, from /usr/sbin when PATH lacks it.
fn runuser() -> &'static str {
    if Path::new("/usr/sbin/runuser").exists() {
        "/usr/sbin/runuser"
    } else {
        "runuser"
    }
}

/// Runs a command to completion, capturing its output, with a time limit.
async fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = cmd.output();
    match tokio::time::timeout(COMMAND_TIMEOUT, output).await {
        Ok(result) => result.with_context(|| format!("running {what}")),
        Err(_) => bail!(
            "{what} did not finish within {} s",
            COMMAND_TIMEOUT.as_secs()
        ),
    }
}

/// A command's stderr and stdout, trimmed, for error messages.
fn output_text(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = [stderr.trim(), stdout.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    if text.is_empty() {
        format!("({})", out.status)
    } else {
        text
    }
}

/// `chown [-R] postgres: path` (the user's own group).
async fn chown_to_postgres(path: &Path, recursive: bool) -> Result<()> {
    let mut cmd = Command::new("chown");
    if recursive {
        cmd.arg("-R");
    }
    cmd.arg(format!("{PG_SYSTEM_USER}:")).arg(path);
    let out = run(&mut cmd, "chown").await?;
    if !out.status.success() {
        bail!(
            "giving {} to the `{PG_SYSTEM_USER}` user failed: {}",
            path.display(),
            output_text(&out)
        );
    }
    Ok(())
}

/// Creates `dir` with mode 700 if missing, and makes sure it is a real
/// directory of mode 700 (PostgreSQL insists on that for its data directory).
async fn make_private_dir(dir: &Path) -> Result<()> {
    let dir_buf = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let dir = dir_buf.as_path();
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        let meta =
            std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        if !meta.is_dir() {
            bail!("{} exists but is not a directory", dir.display());
        }
        if meta.permissions().mode() & 0o777 != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private (mode 700)", dir.display()))?;
        }
        Ok(())
    })
    .await
    .context("creating a directory")?
}

/// Locks `<data_dir>/pg.lock` while the cluster is being set up.
async fn lock_data_dir(data_dir: &Path) -> Result<File> {
    let path = data_dir.join("pg.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let deadline = tokio::time::Instant::now() + LOCK_TIMEOUT;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "another process has held {} for {} s while starting the embedded PostgreSQL",
                        path.display(),
                        LOCK_TIMEOUT.as_secs()
                    );
                }
                if !told {
                    tracing::info!(lock = %path.display(), "waiting for another process starting the embedded PostgreSQL");
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// Finds the PostgreSQL server binaries: `$EXECUTORD_PG_BIN`, else the
/// version under `/usr/lib/postgresql/*/bin` that made the cluster (if it
/// exists) or the highest one, else `pg_ctl` on PATH.
fn find_bin_dir(cluster_dir: &Path) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("EXECUTORD_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| PathBuf::from(dir));
        if !is_server_bin_dir(&dir) {
            bail!(
                "EXECUTORD_PG_BIN is {} but that directory has no pg_ctl and initdb; point it at the \
                 PostgreSQL server's bin directory (e.g. /usr/lib/postgresql/15/bin), or unset it",
                dir.display()
            );
        }
        return Ok(dir);
    }

    let cluster_version = std::fs::read_to_string(cluster_dir.join("PG_VERSION"))
        .ok()
        .map(|v| v.trim().to_owned());
    let versions: Vec<String> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for version in order_versions(&versions, cluster_version.as_deref()) {
        let dir = Path::new("/usr/lib/postgresql").join(version).join("bin");
        if is_server_bin_dir(&dir) {
            return Ok(dir);
        }
    }

    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let pg_ctl = dir.join("pg_ctl");
            if pg_ctl.is_file() {
                let real = std::fs::canonicalize(&pg_ctl).unwrap_or(pg_ctl);
                if let Some(bin) = real.parent()
                    && is_server_bin_dir(bin)
                {
                    return Ok(bin.to_path_buf());
                }
            }
        }
    }

    bail!(
        "no DATABASE_URL is set and no PostgreSQL server binaries were found for the embedded database \
         (looked at $EXECUTORD_PG_BIN, /usr/lib/postgresql/*/bin and pg_ctl on PATH). Either install the \
         PostgreSQL server (e.g. `apt-get install postgresql`; or set EXECUTORD_PG_BIN to its bin directory), \
         or set DATABASE_URL to an existing server (e.g. postgres://user:password@host:5432/executord)"
    )
}

/// Whether `dir` holds the server programs this module runs.
fn is_server_bin_dir(dir: &Path) -> bool {
    [
        "pg_ctl",
        "initdb",
        "postgres",
        "psql",
        "createdb",
        "pg_isready",
    ]
    .iter()
    .all(|p| dir.join(p).is_file())
}

/// Orders the version directory names under `/usr/lib/postgresql`: the one
/// that made the existing cluster first (a newer major cannot open it), then
/// the others from the highest. Names that are not versions are dropped.
fn order_versions<'a>(names: &'a [String], cluster_version: Option<&str>) -> Vec<&'a str> {
    let mut versions: Vec<(Vec<u32>, &str)> = names
        .iter()
        .filter_map(|name| parse_version(name).map(|v| (v, name.as_str())))
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    let wanted = cluster_version.and_then(parse_version);
    versions.sort_by_key(|(v, _)| Some(v) != wanted.as_ref());
    versions.into_iter().map(|(_, name)| name).collect()
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`; anything else → `None`.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    if name.is_empty() {
        return None;
    }
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// The socket directory: the cluster directory itself when the socket path
/// fits, else a short directory under `short_base` named from a hash of the
/// cluster path. Returns whether it fell back.
fn choose_socket_dir(cluster_dir: &Path, short_base: &Path) -> (PathBuf, bool) {
    let socket_len = cluster_dir.as_os_str().len() + 1 + SOCKET_FILE.len();
    if socket_len <= MAX_SOCKET_PATH {
        return (cluster_dir.to_path_buf(), false);
    }
    let hash = fnv1a64(cluster_dir.as_os_str());
    (short_base.join(format!("executord-{hash:016x}")), true)
}

/// FNV-1a, 64 bits: stable across builds, so every process of one checkout
/// picks the same socket directory.
fn fnv1a64(data: &OsStr) -> u64 {
    data.as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// The URL of the database over the unix socket in `socket_dir`.
fn socket_url(socket_dir: &Path) -> String {
    let host = percent_encode(&socket_dir.to_string_lossy());
    format!("postgres://{SUPERUSER}@localhost:{PORT}/{DB_NAME}?host={host}&sslmode=disable")
}

/// Percent-encodes everything in a query value but unreserved characters
/// and `/`.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The settings file: unix socket only, in `socket_dir`.
///
/// Autovacuum looks every 5 s rather than every minute: it vacuums the
/// queue tables' dead row versions (every step leaves some) before they pile
/// up in the indexes. (Young tables' statistics are the runner's own
/// business: see [`crate::db::stats`].)
fn config_text(socket_dir: &Path) -> String {
    let socket_dir = socket_dir.to_string_lossy().replace('\'', "''");
    format!(
        "# Written by executord at every start of its embedded PostgreSQL; edits are lost.\n\
         listen_addresses = ''\n\
         port = {PORT}\n\
         unix_socket_directories = '{socket_dir}'\n\
         max_connections = 200\n\
         fsync = on\n\
         autovacuum_naptime = 5s\n"
    )
}

/// The state letter of a `/proc/<pid>/stat` line (`Z` for a zombie): the
/// first field after the command name, which is in parentheses and may itself
/// hold spaces and parentheses.
fn stat_state(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// The last `n` lines of `text`.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cluster_path_holds_the_socket() {
        let cluster = Path::new("/home/me/src/executord/.executord/pg");
        let (dir, fallback) = choose_socket_dir(cluster, Path::new("/tmp"));
        assert_eq!(dir, cluster);
        assert!(!fallback);
    }

    #[test]
    fn socket_path_limit_is_exact() {
        // 93 bytes of directory + "/" + 13 bytes of file name = 107: fits.
        let fits = format!("/{}", "a".repeat(92));
        assert_eq!(fits.len() + 1 + SOCKET_FILE.len(), MAX_SOCKET_PATH);
        assert!(!choose_socket_dir(Path::new(&fits), Path::new("/tmp")).1);
        let too_long = format!("/{}", "a".repeat(93));
        assert!(choose_socket_dir(Path::new(&too_long), Path::new("/tmp")).1);
    }

    #[test]
    fn long_cluster_path_falls_back_to_a_stable_short_dir() {
        let long = format!("/work/{}/.executord/pg", "deep/".repeat(30));
        let (dir, fallback) = choose_socket_dir(Path::new(&long), Path::new("/tmp"));
        assert!(fallback);
        assert!(dir.starts_with("/tmp"));
        assert!(dir.as_os_str().len() + 1 + SOCKET_FILE.len() <= MAX_SOCKET_PATH);
        // The same path always gives the same directory; another path another.
        assert_eq!(
            choose_socket_dir(Path::new(&long), Path::new("/tmp")).0,
            dir
        );
        let other = format!("{long}2");
        assert_ne!(
            choose_socket_dir(Path::new(&other), Path::new("/tmp")).0,
            dir
        );
    }

    #[test]
    fn fnv_hash_is_stable() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a64(OsStr::new("")), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(OsStr::new("a")), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn highest_version_first() {
        let names: Vec<String> = ["9.6", "15", "README", "16", "13", ""]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(order_versions(&names, None), vec!["16", "15", "13", "9.6"]);
    }

    #[test]
    fn the_clusters_own_version_comes_first() {
        let names: Vec<String> = ["15", "16", "17"].iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(order_versions(&names, Some("15")), vec!["15", "17", "16"]);
        // An unknown cluster version changes nothing.
        assert_eq!(order_versions(&names, Some("12")), vec!["17", "16", "15"]);
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("15beta"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn url_uses_the_socket_dir() {
        assert_eq!(
            socket_url(Path::new("/srv/app/.executord/pg")),
            "postgres://executord@localhost:5432/executord?host=/srv/app/.executord/pg&sslmode=disable"
        );
    }

    #[test]
    fn url_escapes_odd_characters() {
        assert_eq!(
            socket_url(Path::new("/home/a b/x+y&z#%")),
            "postgres://executord@localhost:5432/executord?host=/home/a%20b/x%2By%26z%23%25&sslmode=disable"
        );
    }

    #[test]
    fn config_quotes_the_socket_dir() {
        let text = config_text(Path::new("/srv/it's/pg"));
        assert!(text.contains("unix_socket_directories = '/srv/it''s/pg'\n"));
        assert!(text.contains("listen_addresses = ''\n"));
        assert!(text.contains("max_connections = 200\n"));
        assert!(text.contains("fsync = on\n"));
        assert!(text.contains("autovacuum_naptime = 5s\n"));
    }

    #[test]
    fn proc_stat_state_is_read_after_the_command_name() {
        assert_eq!(
            stat_state("12650 (postgres) Z 1 12650 12650 0 -1"),
            Some('Z')
        );
        assert_eq!(stat_state("7 (a) b) S 1 7"), Some('S'));
        assert_eq!(stat_state(""), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a\nb", 5), "a\nb");
        assert_eq!(tail_lines("", 3), "");
    }
}
