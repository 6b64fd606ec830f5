//! Crash-test harness: a private PostgreSQL cluster per test, the real
//! `executord` binary as API and worker processes on it, a raw HTTP/1.1
//! client, and the database checks every crash test ends with.
//!
//! Everything a test starts is stopped when its value drops, also when the
//! test panics: children get SIGKILL, the cluster `pg_ctl stop -m immediate`.
//! A failed test prints the last lines of every log; with `CRASH_KEEP_DIR`
//! set it also keeps its directory (logs, cluster) for a closer look.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use executord::embedded::EmbeddedPostgres;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::runtime::Runtime;
use uuid::Uuid;

/// Lease length given to every process, in seconds.
pub const LEASE_SECS: u64 = 3;
/// Grace period at shutdown, in seconds.
pub const GRACE_SECS: u64 = 1;

/// Flags every process of a test gets: short timings, and the same sim flags.
const COMMON_FLAGS: &[&str] = &[
    "--lease-secs",
    "3",
    "--poll-interval-ms",
    "200",
    "--sim-latency-ms",
    "300",
    "--sim-transition-ms",
    "300",
    "--retry-base-ms",
    "100",
    "--shutdown-grace-secs",
    "1",
    "--log-format",
    "json",
];

/// The log filter of every child: warnings, plus the lines of process
/// start and stop and of tasks released at shutdown (the harness waits for
/// "runner started"; the numbers in docs/RELIABILITY.md count the rest).
const RUST_LOG: &str = "warn,executord::app=info,executord::runner=info,executord::runner::record=warn,executord::runner::scheduler=warn";

/// Crash tests measure recovery times; running them one at a time keeps
/// those numbers about the service rather than about each other.
static SERIAL: Mutex<()> = Mutex::new(());

/// One test's world: its temp directory, PostgreSQL cluster and a pool on it.
pub struct Harness {
    pub name: String,
    pub dir: PathBuf,
    pub url: String,
    pub pool: PgPool,
    rt: Runtime,
    cluster: Option<EmbeddedPostgres>,
    /// Environment given to every process started after it is set.
    env: Vec<(String, String)>,
    _serial: MutexGuard<'static, ()>,
}

impl Harness {
    /// A fresh cluster under `<tmp>/executord-crash-<pid>-<name>`.
    pub fn new(name: &str) -> Self {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let dir =
            std::env::temp_dir().join(format!("executord-crash-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cluster = rt.block_on(EmbeddedPostgres::start(&dir)).unwrap();
        let url = cluster.database_url();
        let pool = rt
            .block_on(
                PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&url),
            )
            .unwrap();
        Self {
            name: name.to_owned(),
            dir,
            url,
            pool,
            rt,
            cluster: Some(cluster),
            env: Vec::new(),
            _serial: serial,
        }
    }

    /// Runs a future (a query) on this harness's runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    /// Crashes the cluster (`pg_ctl stop -m immediate`): no shutdown
    /// checkpoint, sessions cut, and commits that did not wait for their
    /// flush may be lost, as when the database's machine dies.
    pub fn crash_db(&mut self) {
        let _cluster = self.cluster.take().expect("the cluster is running");
        stop_immediately(&self.dir.join("pg"));
    }

    /// Starts the cluster again on the same directory (same socket, same URL).
    pub fn start_db(&mut self) {
        assert!(self.cluster.is_none(), "the cluster is already running");
        let cluster = self
            .rt
            .block_on(EmbeddedPostgres::start(&self.dir))
            .unwrap();
        assert_eq!(cluster.database_url(), self.url);
        self.cluster = Some(cluster);
    }

    /// Sets `key` in the environment of every process started from now on
    /// (after the harness's own, so `RUST_LOG` may be changed too).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// `serve --no-runner` on a free port, once `/readyz` answers 200.
    pub fn api(&self, name: &str) -> Api {
        self.api_with(name, &[])
    }

    /// [`Harness::api`] with `extra` flags.
    pub fn api_with(&self, name: &str, extra: &[&str]) -> Api {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let proc = self.spawn(name, &["serve", "--no-runner", "--listen", &listen], extra);
        let api = Api { proc, port };
        wait_until(Duration::from_secs(60), "the API to become ready", || {
            try_http(port, "GET", "/readyz", None, Duration::from_secs(5))
                .is_ok_and(|r| r.status == 200)
        });
        api
    }

    /// `worker` with `extra` flags, once its runner has started.
    pub fn worker(&self, name: &str, extra: &[&str]) -> Proc {
        let proc = self.spawn(name, &["worker"], extra);
        wait_until(
            Duration::from_secs(60),
            "the worker's runner to start",
            || proc.log_text().contains("runner started"),
        );
        proc
    }

    fn spawn(&self, name: &str, command: &[&str], extra: &[&str]) -> Proc {
        let args: Vec<&str> = command
            .iter()
            .chain(COMMON_FLAGS)
            .chain(extra)
            .copied()
            .collect();
        self.spawn_plain(name, &args)
    }

    /// `executord` with exactly `args` (no common flags), its log under `logs/`.
    pub fn spawn_plain(&self, name: &str, args: &[&str]) -> Proc {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let stderr = File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_executord"))
            .args(args)
            .env("DATABASE_URL", &self.url)
            .env("RUST_LOG", RUST_LOG)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Proc {
            name: name.to_owned(),
            child,
            log,
            exited: None,
        }
    }

    /// The database's clock (the one task timestamps use).
    pub fn db_now(&self) -> chrono::DateTime<chrono::Utc> {
        self.block_on(sqlx::query_scalar("SELECT now()").fetch_one(&self.pool))
            .unwrap()
    }

    /// A `count(*)`-like scalar.
    pub fn count(&self, sql: &'static str) -> i64 {
        self.block_on(sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool))
            .unwrap()
    }

    /// Ids of the tasks a worker process holds (`running`, leased by it).
    pub fn running_of(&self, worker: &Proc) -> Vec<(Uuid, String)> {
        self.block_on(
            sqlx::query_as(
                "SELECT id, type FROM tasks WHERE state = 'running' AND worker LIKE $1 ORDER BY id",
            )
            .bind(worker.worker_pattern())
            .fetch_all(&self.pool),
        )
        .unwrap()
    }

    /// Operations not yet finished.
    pub fn unfinished_operations(&self) -> i64 {
        self.count("SELECT count(*) FROM operations WHERE finished_at IS NULL")
    }

    /// Waits until every operation has finished; returns how long that took.
    pub fn wait_all_finished(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let left = self.unfinished_operations();
            if left == 0 {
                return started.elapsed();
            }
            if started.elapsed() > limit {
                panic!(
                    "{left} operations still unfinished after {limit:?}; tasks not done:\n{}",
                    self.describe_live_tasks()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The live tasks, one line each, for failure messages.
    pub fn describe_live_tasks(&self) -> String {
        type Row = (Uuid, String, String, i32, Option<String>, Option<String>);
        let rows: Vec<Row> = self
            .block_on(
                sqlx::query_as(
                    "SELECT id, type, state, attempts, worker, status FROM tasks
                     WHERE state IN ('waiting', 'ready', 'running') ORDER BY created_at LIMIT 40",
                )
                .fetch_all(&self.pool),
            )
            .unwrap_or_default();
        rows.iter()
            .map(|(id, ty, state, attempts, worker, status)| {
                format!(
                    "  {id} {ty} {state} attempts={attempts} worker={worker:?} status={status:?}"
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The end-of-test checks shared by every crash test; panics with every
    /// violation found. Returns what it counted.
    pub fn assert_settled(&self) -> Settled {
        let mut problems = Vec::new();
        let states: Vec<(String, i64)> = self
            .block_on(
                sqlx::query_as(
                    "SELECT state, count(*) FROM operations GROUP BY state ORDER BY state",
                )
                .fetch_all(&self.pool),
            )
            .unwrap();
        let operations: i64 = states.iter().map(|(_, n)| n).sum();
        if states.iter().any(|(state, _)| state != "succeeded") {
            problems.push(format!("operations not all succeeded: {states:?}"));
        }
        let bad_tasks: Vec<(Uuid, String, String, Option<String>)> = self
            .block_on(
                sqlx::query_as(
                    "SELECT id, type, state, coalesce(last_error, status) FROM tasks
                     WHERE operation_id IS NOT NULL AND state <> 'succeeded' LIMIT 20",
                )
                .fetch_all(&self.pool),
            )
            .unwrap();
        if !bad_tasks.is_empty() {
            problems.push(format!("operation tasks not succeeded: {bad_tasks:?}"));
        }
        let stranded = self.count("SELECT count(*) FROM tasks WHERE state = 'running'");
        if stranded > 0 {
            problems.push(format!("{stranded} tasks still running"));
        }
        let resources: Vec<(Uuid, String)> = self
            .block_on(
                sqlx::query_as("SELECT id, state FROM resources WHERE state <> 'ok'")
                    .fetch_all(&self.pool),
            )
            .unwrap();
        if !resources.is_empty() {
            problems.push(format!("resources not ok: {resources:?}"));
        }
        let repeated: Vec<(Uuid, String, i32)> = self
            .block_on(
                sqlx::query_as(
                    "SELECT idempotency_key, method, applied FROM sim_effects WHERE applied > 1",
                )
                .fetch_all(&self.pool),
            )
            .unwrap();
        if !repeated.is_empty() {
            problems.push(format!("effects applied more than once: {repeated:?}"));
        }
        let effects = self.count("SELECT count(*) FROM sim_effects");
        let backend_tasks = self.count(
            "SELECT count(*) FROM tasks WHERE type = 'backend_method' AND operation_id IS NOT NULL",
        );
        let unmatched = self.count(
            "SELECT count(*) FROM tasks t LEFT JOIN sim_effects e ON e.idempotency_key = t.id
             WHERE t.type = 'backend_method' AND t.operation_id IS NOT NULL
               AND e.applied IS DISTINCT FROM 1",
        );
        let orphan_effects = self.count(
            "SELECT count(*) FROM sim_effects e
             WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = e.idempotency_key)",
        );
        if unmatched > 0 || orphan_effects > 0 {
            problems.push(format!(
                "{unmatched} backend calls without exactly one effect, {orphan_effects} effects without a task"
            ));
        }
        // One simulated object per live resource with a backend id, none extra:
        // a create applied twice would leave a second object.
        let objects =
            self.count("SELECT count(*) FROM sim_objects WHERE next_state IS DISTINCT FROM 'gone'");
        let backed = self
            .count("SELECT count(DISTINCT backend_id) FROM resources WHERE backend_id IS NOT NULL");
        if objects != backed {
            problems.push(format!(
                "{objects} live simulated objects for {backed} resources with a backend object"
            ));
        }
        problems.extend(self.history_violations());
        assert!(
            problems.is_empty(),
            "{}:\n{}",
            self.name,
            problems.join("\n")
        );
        Settled {
            operations,
            tasks: self.count("SELECT count(*) FROM tasks WHERE operation_id IS NOT NULL"),
            effects,
            backend_calls: backend_tasks,
            reclaimed: self.count(
                "SELECT count(*) FROM tasks WHERE operation_id IS NOT NULL AND attempts > 1",
            ),
        }
    }

    /// Breaks in the resources' state histories: per resource, ordered by
    /// `seq`, the first event starts from nothing, each later event starts
    /// where the previous one ended, and the last one ends in the
    /// resource's current state (nothing, once it is deleted).
    pub fn history_violations(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let breaks: Vec<(Uuid, i64, Option<String>, Option<String>)> = self
            .block_on(
                sqlx::query_as(
                    "SELECT resource_id, seq, from_state, prev_to FROM (
                         SELECT resource_id, seq, from_state,
                                lag(to_state) OVER w AS prev_to, row_number() OVER w AS n
                         FROM resource_events WINDOW w AS (PARTITION BY resource_id ORDER BY seq)
                     ) e
                     WHERE (n = 1 AND from_state IS NOT NULL)
                        OR (n > 1 AND from_state IS DISTINCT FROM prev_to)
                     LIMIT 20",
                )
                .fetch_all(&self.pool),
            )
            .unwrap();
        for (resource, seq, from, prev) in breaks {
            problems.push(format!(
                "history of {resource} breaks at event {seq}: from {from:?} after {prev:?}"
            ));
        }
        let ends: Vec<(Uuid, Option<String>, Option<String>)> = self
            .block_on(
                sqlx::query_as(
                    "SELECT l.resource_id, l.to_state, r.state FROM (
                         SELECT DISTINCT ON (resource_id) resource_id, to_state
                         FROM resource_events ORDER BY resource_id, seq DESC
                     ) l LEFT JOIN resources r ON r.id = l.resource_id
                     WHERE l.to_state IS DISTINCT FROM r.state
                     LIMIT 20",
                )
                .fetch_all(&self.pool),
            )
            .unwrap();
        for (resource, last, now) in ends {
            problems.push(format!(
                "history of {resource} ends in {last:?} but the resource is {now:?}"
            ));
        }
        let silent = self.count(
            "SELECT count(*) FROM resources r
             WHERE NOT EXISTS (SELECT 1 FROM resource_events e WHERE e.resource_id = r.id)",
        );
        if silent > 0 {
            problems.push(format!("{silent} resources without history"));
        }
        problems
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log_tails(&self.dir);
        }
        self.rt.block_on(self.pool.close());
        if self.cluster.take().is_some() || self.dir.join("pg/postmaster.pid").exists() {
            stop_immediately(&self.dir.join("pg"));
        }
        if std::thread::panicking() && std::env::var_os("CRASH_KEEP_DIR").is_some() {
            eprintln!("kept {} (CRASH_KEEP_DIR is set)", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What [`Harness::assert_settled`] counted.
#[derive(Debug)]
pub struct Settled {
    pub operations: i64,
    pub tasks: i64,
    pub effects: i64,
    pub backend_calls: i64,
    /// Tasks claimed more than once (a lease expired, or a retry).
    pub reclaimed: i64,
}

/// `pg_ctl stop -m immediate`, as the `postgres` user when root.
pub fn stop_immediately(cluster: &Path) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "pg_ctl=$(ls /usr/lib/postgresql/*/bin/pg_ctl | tail -n1); \
             if [ \"$(id -u)\" = 0 ]; then runuser -u postgres -- $pg_ctl stop -D '{0}' -m immediate; \
             else $pg_ctl stop -D '{0}' -m immediate; fi",
            cluster.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last lines of every child's log and the server log, for a failed test.
fn print_log_tails(dir: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("logs"))
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.push(dir.join("pg.log"));
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        eprintln!("--- last lines of {} ---\n{tail}", file.display());
    }
}

/// A child process, SIGKILLed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `LIKE` pattern of this process's runner names in `tasks.worker`
    /// (`<pid>:<random>`).
    pub fn worker_pattern(&self) -> String {
        format!("{}:%", self.pid())
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.exited = Some(self.child.wait().unwrap());
    }

    /// `kill -TERM`.
    pub fn term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exited = Some(status);
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it still runs.
    pub fn is_alive(&mut self) -> bool {
        self.exited.is_none() && self.child.try_wait().unwrap().is_none()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The API process and its port.
pub struct Api {
    pub proc: Proc,
    pub port: u16,
}

impl Api {
    /// A request that must get an answer within 30 s.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        try_http(self.port, method, path, body, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Creates an instance; returns (resource id, operation id).
    pub fn create_instance(&self, name: &str, attributes: &Value) -> (String, String) {
        let reply = self.call(
            "POST",
            "/api/v1/resources",
            Some(&serde_json::json!({"kind": "instance", "name": name, "attributes": attributes})),
        );
        assert_eq!(reply.status, 201, "create {name}: {}", reply.body);
        (
            reply.body["id"].as_str().unwrap().to_owned(),
            reply.body["current_operation_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    }
}

/// A free TCP port on the loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    /// The body as JSON; `Null` if it is not JSON.
    pub body: Value,
    /// The body as text (dechunked).
    pub text: String,
    /// From connecting to the end of the answer.
    pub elapsed: Duration,
}

/// One HTTP/1.1 request with `Connection: close`, answered within `timeout`
/// (else an error of kind `WouldBlock` or `TimedOut`: the service hung).
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> std::io::Result<Reply> {
    try_http_with(port, method, path, body, "", timeout)
}

/// [`try_http`] with extra header lines (each ending in `\r\n`).
pub fn try_http_with(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &str,
    timeout: Duration,
) -> std::io::Result<Reply> {
    let started = Instant::now();
    let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    exchange_with(stream, method, path, body, headers, timeout).map(|mut reply| {
        reply.elapsed = started.elapsed();
        reply
    })
}

/// Sends one request on an open connection and reads the answer (see [`try_http`]).
pub fn exchange(
    stream: TcpStream,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> std::io::Result<Reply> {
    exchange_with(stream, method, path, body, "", timeout)
}

/// [`exchange`] with extra header lines (each ending in `\r\n`).
pub fn exchange_with(
    mut stream: TcpStream,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &str,
    timeout: Duration,
) -> std::io::Result<Reply> {
    let started = Instant::now();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let content_type = if body.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}{content_type}Content-Length: {}\r\n\r\n{payload}",
        payload.len()
    )?;
    read_reply(stream, started)
}

/// Sends `request` as it is on a new connection and reads the answer until
/// the server closes the connection (see [`try_http`]).
pub fn try_raw(port: u16, request: &[u8], timeout: Duration) -> std::io::Result<Reply> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // A server that refuses the head may answer and close before reading it all.
    let _ = stream.write_all(request);
    read_reply(stream, started)
}

/// Reads an answer until the server closes the connection.
fn read_reply(mut stream: TcpStream, started: Instant) -> std::io::Result<Reply> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other(format!("no HTTP answer: {raw:?}")));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Reply {
        status,
        head: head.to_owned(),
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        text: body,
        elapsed: started.elapsed(),
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest.get(n + 2..).unwrap_or_default();
    }
    out
}

/// Polls `done` every 50 ms until it holds; panics after `limit`. Returns the time it took.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if done() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Seconds with one decimal, for the summaries.
pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Runs a helper script of `examples/catalogs/` as a user would, with `input`
/// on its stdin, and returns what it printed (trimmed).
pub fn run_example_helper(script: &str, input: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/catalogs")
        .join(script);
    let mut child = Command::new(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{input}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script}: {}", out.status);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
