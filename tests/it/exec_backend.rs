//! The exec driver: its contract with small scripts written into a temp
//! directory (called directly, and through the engine on a real database),
//! no process left behind by a timed-out, cancelled or shut-down call, no
//! secret in logs, errors or answers, and the PostgreSQL example of
//! `examples/catalogs/postgres` end to end through the real binary.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::app::{Engine, fast_runner_config};
use executord::backend::declared::{self, BackendDecl};
use executord::backend::exec::ExecBackend;
use executord::backend::sim::SimConfig;
use executord::backend::{
    Backend, BackendCall, BackendError, BackendReply, Backends, ResourceView,
};
use executord::catalog::Catalog;
use executord::domain::{OperationState, ResourceState};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// A temp directory for one test's scripts, removed when it drops.
pub(crate) struct Dir(pub(crate) PathBuf);

impl Dir {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "executord-exec-{}-{name}-{}",
            std::process::id(),
            Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes an executable `/bin/sh` script `name` with `body`.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap_or_default()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The backend a `[backends.box]` table declares, for a catalog in `dir`.
fn backend(dir: &Dir, table: &str) -> Result<Arc<dyn Backend>, String> {
    let decl: BackendDecl = toml::from_str(table).unwrap();
    declared::build("box", decl, &dir.0)
}

/// A declaration of `box` running `./run.sh`, with `extra` lines.
fn decl(extra: &str) -> String {
    format!(
        "driver = \"exec\"\ncommand = [\"./run.sh\"]\nruntime_states = [\"up\", \"down\"]\n\
         methods.create = {{ role = \"effect\" }}\n\
         methods.delete = {{ role = \"effect\", not_found = \"success\" }}\n\
         methods.pull = {{ role = \"pull\" }}\n\
         methods.gone = {{ role = \"check\", not_found = \"success\" }}\n{extra}"
    )
}

fn a_call() -> BackendCall {
    BackendCall {
        idempotency_key: Uuid::new_v4(),
        resource: ResourceView {
            id: Uuid::new_v4(),
            kind: "thing".into(),
            name: "thing-1".into(),
            backend_id: Some("b-0".into()),
            runtime_state: Some("up".into()),
            attributes: json!({"size": 3}),
            status: json!({"seen": 1}),
        },
        parent: None,
        params: json!({"limit": 5}),
    }
}

/// Runs `run.sh` with `body` as the `create` method.
async fn run(body: &str) -> Result<BackendReply, BackendError> {
    let dir = Dir::new("run");
    dir.script("run.sh", body);
    backend(&dir, &decl(""))
        .unwrap()
        .call("create", a_call())
        .await
}

#[tokio::test]
async fn a_call_gets_the_request_on_stdin_the_method_last_and_only_the_listed_environment() {
    let dir = Dir::new("request");
    dir.script(
        "run.sh",
        "cat > request.json\nenv > env.txt\nprintf '%s\\n' \"$@\" > argv.txt\npwd > pwd.txt\n\
         echo '{\"backend_id\": \"b-1\", \"runtime_state\": \"up\", \"status\": {\"k\": [1]}, \"done\": false}'\n",
    );
    let table = format!(
        "{}env = {{ GREETING = \"hello\" }}\n",
        decl("").replace("[\"./run.sh\"]", "[\"./run.sh\", \"--flag\"]")
    );
    let backend = backend(&dir, &table).unwrap();
    let call = a_call();
    let reply = backend.call("create", call.clone()).await.unwrap();
    assert_eq!(
        reply,
        BackendReply {
            backend_id: Some("b-1".into()),
            runtime_state: Some("up".into()),
            status: Some(json!({"k": [1]}).as_object().unwrap().clone()),
            done: Some(false),
        }
    );
    let request: Value = serde_json::from_str(&dir.read("request.json")).unwrap();
    assert_eq!(
        request,
        json!({
            "method": "create",
            "idempotency_key": call.idempotency_key,
            "resource": {
                "id": call.resource.id, "kind": "thing", "name": "thing-1", "backend_id": "b-0",
                "runtime_state": "up", "attributes": {"size": 3}, "status": {"seen": 1},
            },
            "params": {"limit": 5},
        })
    );
    assert_eq!(dir.read("argv.txt"), "--flag\ncreate\n");
    let mut env: Vec<String> = dir
        .read("env.txt")
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
        // The shell sets PWD itself.
        .filter(|k| k != "PWD")
        .collect();
    env.sort();
    assert_eq!(env, ["EXECUTORD_METHOD", "GREETING", "PATH"]);
    assert!(dir.read("env.txt").contains("EXECUTORD_METHOD=create\n"));
    assert!(dir.read("env.txt").contains("GREETING=hello\n"));
    let pwd = std::fs::canonicalize(dir.read("pwd.txt").trim()).unwrap();
    assert_eq!(
        pwd,
        std::fs::canonicalize(&dir.0).unwrap(),
        "runs in the catalog's directory"
    );
}

#[tokio::test]
async fn exit_statuses_are_classed_with_the_last_line_of_stderr_as_the_message() {
    assert_eq!(run("exit 0\n").await, Ok(BackendReply::default()));
    assert_eq!(
        run("echo 'try later' >&2\nexit 75\n").await,
        Err(BackendError::Transient("try later".into()))
    );
    assert_eq!(
        run("echo 'no such thing' >&2\nexit 79\n").await,
        Err(BackendError::NotFound("no such thing".into()))
    );
    assert_eq!(
        run("echo 'starting' >&2\necho '  quota exceeded: 0 left ' >&2\necho >&2\nexit 3\n").await,
        Err(BackendError::Permanent("quota exceeded: 0 left".into()))
    );
    assert_eq!(
        run("exit 2\n").await,
        Err(BackendError::Permanent(
            "create: exit status 2, and nothing on stderr".into()
        ))
    );
    let killed = run("kill -9 $$\n").await;
    assert!(
        matches!(&killed, Err(BackendError::Transient(m)) if m.contains("signal 9")),
        "{killed:?}"
    );
}

#[tokio::test]
async fn not_found_is_success_where_the_method_says_so() {
    let dir = Dir::new("not-found");
    dir.script("run.sh", "echo 'already gone' >&2\nexit 79\n");
    let backend = backend(&dir, &decl("")).unwrap();
    assert_eq!(
        backend.call("delete", a_call()).await,
        Ok(BackendReply::default())
    );
    // A check that finds nothing is done.
    assert_eq!(
        backend.call("gone", a_call()).await.unwrap().done,
        Some(true)
    );
    assert_eq!(
        backend.call("pull", a_call()).await,
        Err(BackendError::NotFound("already gone".into()))
    );
}

#[tokio::test]
async fn bad_replies_fail_permanently_saying_what_is_wrong() {
    let permanent = |r: Result<BackendReply, BackendError>| match r {
        Err(BackendError::Permanent(m)) => m,
        other => panic!("not a permanent failure: {other:?}"),
    };
    let message = permanent(run("echo '{\"backend_id\": '\n").await);
    assert!(
        message.starts_with("the reply of `create` is not valid JSON"),
        "{message}"
    );
    let message = permanent(run("echo '[1, 2]'\n").await);
    assert!(message.contains("is not a JSON object"), "{message}");
    let message = permanent(run("echo '{\"status\": 5}'\n").await);
    assert!(message.contains("is not a valid reply"), "{message}");
    let message = permanent(run("echo '{\"runtime_state\": \"exploded\"}'\n").await);
    assert_eq!(
        message,
        "the reply of `create` names runtime state `exploded`, which backend `box` does not \
         declare (declared: up, down); nothing from it is stored"
    );
    // Over 1 MiB: reading stops there, whatever the command would still write.
    let started = Instant::now();
    let message = permanent(run("yes '{}'\n").await);
    assert_eq!(
        message,
        "the reply of `create` is larger than 1 MiB; nothing from it is stored"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let message = permanent(run("head -c 1048577 /dev/zero | tr '\\0' ' '\n").await);
    assert!(message.contains("larger than 1 MiB"), "{message}");
    // Exactly 1 MiB is fine.
    let reply = run("printf '{}'\nhead -c 1048574 /dev/zero | tr '\\0' ' '\n").await;
    assert_eq!(reply, Ok(BackendReply::default()));
}

#[test]
fn a_catalog_whose_program_cannot_run_is_refused_at_start_up() {
    let dir = Dir::new("start-up");
    let refusal = |table: &str| backend(&dir, table).err().unwrap_or_default();
    let message = refusal(&decl(""));
    assert!(
        message.starts_with("command: cannot run `") && message.contains("run.sh"),
        "{message}"
    );
    std::fs::write(dir.0.join("run.sh"), "#!/bin/sh\n").unwrap();
    assert!(refusal(&decl("")).ends_with("run.sh` is not executable"));
    dir.script("run.sh", "exit 0\n");
    assert!(backend(&dir, &decl("")).is_ok());
    let bare = decl("").replace("./run.sh", "no-such-program-anywhere");
    assert_eq!(
        refusal(&bare),
        "command: no executable `no-such-program-anywhere` in PATH"
    );
    assert!(backend(&dir, &decl("").replace("./run.sh", "sh")).is_ok());
    assert_eq!(
        refusal(&decl("timeout_s = 0")),
        "timeout_s must be at least 1"
    );
    assert_eq!(
        refusal(&decl("max_concurrency = 0")),
        "max_concurrency must be at least 1"
    );
    let message = refusal(&decl(
        "env = { TOKEN = \"${env:EXECUTORD_TEST_SURELY_UNSET}\" }",
    ));
    assert_eq!(
        message,
        "env.TOKEN: the environment variable `EXECUTORD_TEST_SURELY_UNSET` is not set"
    );
    assert!(refusal(&decl("env = { EXECUTORD_METHOD = \"x\" }")).contains("set by executord"));
    assert!(refusal(&decl("env = { \"A-B\" = \"x\" }")).contains("not a valid variable name"));
    let http_only = decl("").replace(
        "methods.pull = { role = \"pull\" }",
        "methods.pull = { role = \"pull\", path = \"/p\" }",
    );
    assert!(refusal(&http_only).contains("`path` is for the http driver"));

    // Through a catalog file, relative to its directory, with the place named.
    let catalog = dir.0.join("catalog.toml");
    let text = format!(
        "[backends.box]\n{}\n[kinds.thing]\nbackend = \"box\"\nschema = {{ type = \"object\" }}\n",
        decl("").replace("./run.sh", "./missing.sh")
    );
    std::fs::write(&catalog, text).unwrap();
    let errors = Catalog::check_file(&catalog, &Backends::new()).unwrap_err();
    let message = errors[0].to_string();
    assert!(
        message.contains("backends.box: command: cannot run `") && message.contains("missing.sh"),
        "{message}"
    );
}

#[tokio::test]
async fn max_concurrency_holds_calls_back() {
    let dir = Dir::new("slots");
    dir.script(
        "run.sh",
        "echo start >> log.txt\nsleep 0.3\necho end >> log.txt\n",
    );
    let backend = backend(&dir, &decl("max_concurrency = 1")).unwrap();
    let (a, b) = tokio::join!(
        backend.call("create", a_call()),
        backend.call("create", a_call())
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(dir.read("log.txt"), "start\nend\nstart\nend\n");
}

/// A script that starts a grandchild `sleep 300` in its group, writes both
/// pids, and waits.
const HANG: &str = "sleep 300 &\necho $! > grandchild.pid\necho $$ > child.pid\nwait\n";

/// The pid in `file` once written (at most 10 s), checked to be alive.
async fn pid_in(dir: &Dir, file: &str) -> u32 {
    let started = Instant::now();
    loop {
        if let Ok(pid) = dir.read(file).trim().parse::<u32>() {
            assert!(!gone(pid), "{file}: {pid} is not running");
            return pid;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no {file}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` has ended (a zombie waiting for its parent has ended too).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Polls until every pid has ended, at most 5 s.
async fn assert_gone_soon(pids: &[u32]) {
    let started = Instant::now();
    while !pids.iter().all(|p| gone(*p)) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running: {:?}",
            pids.iter().filter(|p| !gone(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_cancelled_call_leaves_no_process_behind() {
    let dir = Dir::new("cancel");
    dir.script("run.sh", HANG);
    let backend = backend(&dir, &decl("")).unwrap();
    // The runner drops the call's future when its operation is cancelled.
    let call = tokio::spawn(async move { backend.call("create", a_call()).await });
    let pids = [
        pid_in(&dir, "child.pid").await,
        pid_in(&dir, "grandchild.pid").await,
    ];
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert_gone_soon(&pids).await;
}

#[tokio::test]
async fn a_command_that_exits_takes_what_it_left_running_with_it() {
    let dir = Dir::new("leftover");
    dir.script(
        "run.sh",
        "sleep 300 &\necho $! > grandchild.pid\necho '{}'\n",
    );
    let started = Instant::now();
    let reply = backend(&dir, &decl(""))
        .unwrap()
        .call("create", a_call())
        .await;
    assert_eq!(reply, Ok(BackendReply::default()));
    // The sleep held stdout open: the reply came when the group was killed.
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid = dir.read("grandchild.pid").trim().parse().unwrap();
    assert_gone_soon(&[pid]).await;
}

/// A catalog with one kind, `thing`, on the `box` backend running `program`.
fn catalog(program: &Path, create: &str) -> String {
    format!(
        "[backends.box]\n{}\n[kinds.thing]\nbackend = \"box\"\npull_method = \"pull\"\ncreate = [{create}]\n\
         [kinds.thing.schema]\ntype = \"object\"\nadditionalProperties = false\nproperties.size = {{ type = \"integer\" }}\n",
        decl("timeout_s = 1").replace("./run.sh", &program.display().to_string())
    )
}

fn engine(pool: PgPool, catalog: &str) -> Engine {
    Engine::with(
        pool,
        SimConfig::instant(),
        Some(catalog),
        fast_runner_config(),
    )
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_transient_exit_is_retried_and_the_reply_lands_in_status(pool: PgPool) {
    let dir = Dir::new("retry");
    let program = dir.script(
        "run.sh",
        "cd \"$(dirname \"$0\")\"\necho x >> runs\n\
         if [ \"$(wc -l < runs)\" -lt 2 ]; then echo 'busy, try later' >&2; exit 75; fi\n\
         echo '{\"backend_id\": \"obj-1\", \"runtime_state\": \"up\", \"status\": {\"size\": 99}}'\n",
    );
    let engine = engine(
        pool,
        &catalog(
            &program,
            "{ type = \"backend_method\", method = \"create\" }",
        ),
    );
    let applied = engine.create("thing", "t-1", json!({"size": 3})).await;
    engine.drain().await;
    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Ok);
    assert_eq!(resource.backend_id.as_deref(), Some("obj-1"));
    assert_eq!(resource.runtime_state.as_deref(), Some("up"));
    // Backend data goes to status; the user's attributes stay as given.
    assert_eq!(resource.status, json!({"size": 99}));
    assert_eq!(resource.attributes, json!({"size": 3}));
    let tasks = engine.tasks(applied.operation.id).await;
    let step = tasks
        .iter()
        .find(|t| t.task_type == "backend_method")
        .unwrap();
    assert_eq!(step.attempts, 2);
    assert_eq!(dir.read("runs").lines().count(), 2);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_permanent_exit_errs_the_resource_with_the_command_s_message(pool: PgPool) {
    let dir = Dir::new("permanent");
    let program = dir.script(
        "run.sh",
        "echo 'checking quota' >&2\necho 'quota exceeded: 0 of 10 left' >&2\nexit 1\n",
    );
    let engine = engine(
        pool,
        &catalog(
            &program,
            "{ type = \"backend_method\", method = \"create\" }",
        ),
    );
    let applied = engine.create("thing", "t-1", json!({})).await;
    engine.drain().await;
    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Erred);
    assert_eq!(
        resource.error_message.as_deref(),
        Some("quota exceeded: 0 of 10 left")
    );
    let step = engine.tasks(applied.operation.id).await;
    let step = step
        .iter()
        .find(|t| t.task_type == "backend_method")
        .unwrap();
    assert_eq!(step.attempts, 1, "a permanent failure is not retried");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_bad_reply_stores_nothing(pool: PgPool) {
    let dir = Dir::new("bad-reply");
    let program = dir.script(
        "run.sh",
        "echo '{\"backend_id\": \"obj-1\", \"runtime_state\": \"melted\", \"status\": {\"x\": 1}}'\n",
    );
    let engine = engine(
        pool,
        &catalog(
            &program,
            "{ type = \"backend_method\", method = \"create\" }",
        ),
    );
    let applied = engine.create("thing", "t-1", json!({})).await;
    engine.drain().await;
    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Erred);
    assert!(
        resource
            .error_message
            .as_deref()
            .unwrap()
            .contains("names runtime state `melted`")
    );
    assert_eq!(resource.backend_id, None);
    assert_eq!(resource.runtime_state, None);
    assert_eq!(resource.status, json!({}));
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_hung_call_is_cut_by_the_backend_s_timeout_and_leaves_no_process_behind(pool: PgPool) {
    let dir = Dir::new("timeout");
    let program = dir.script("run.sh", &format!("cd \"$(dirname \"$0\")\"\n{HANG}"));
    let engine = engine(
        pool,
        &catalog(
            &program,
            "{ type = \"backend_method\", method = \"create\", max_attempts = 1 }",
        ),
    );
    let applied = engine.create("thing", "t-1", json!({})).await;
    let started = Instant::now();
    let drained = tokio::spawn({
        let runner = engine.runner.clone();
        async move { runner.run_until_idle(Duration::from_secs(60)).await }
    });
    let pids = [
        pid_in(&dir, "child.pid").await,
        pid_in(&dir, "grandchild.pid").await,
    ];
    drained.await.unwrap().unwrap();
    // The catalog's timeout_s (1 s), not the runner's default (5 s).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_gone_soon(&pids).await;
    let operation = engine.operation(applied.operation.id).await;
    assert_eq!(operation.state, OperationState::Failed);
    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(
        resource.error_message.as_deref(),
        Some("create timed out after 1s")
    );
}

/// Captured `tracing` output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn a_secret_from_the_environment_never_reaches_a_log_or_an_error() {
    // A variable the test command always sets; its value plays the secret.
    let secret = std::env::var("DATABASE_URL").expect("DATABASE_URL is set");
    let dir = Dir::new("secret");
    dir.script(
        "run.sh",
        "case \"$1\" in\n\
         create) echo \"connecting with $TOKEN\" >&2; echo \"failed with $TOKEN\" >&2; exit 1 ;;\n\
         delete) echo \"{\\\"runtime_state\\\": \\\"$TOKEN\\\"}\" ;;\n\
         pull) [ \"$TOKEN\" = \"Bearer $SECRET_TWICE\" ] && echo '{}' ;;\n\
         esac\n",
    );
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let table = decl(
        "env = { TOKEN = \"Bearer ${env:DATABASE_URL}\", SECRET_TWICE = \"${env:DATABASE_URL}\" }",
    );
    let backend = backend(&dir, &table).unwrap();
    // The command gets the value itself.
    assert_eq!(
        backend.call("pull", a_call()).await,
        Ok(BackendReply::default())
    );
    // A command that prints it has it masked in its message.
    let error = backend.call("create", a_call()).await.unwrap_err();
    assert_eq!(
        error,
        BackendError::Permanent("failed with <redacted>".into())
    );
    let error = backend.call("delete", a_call()).await.unwrap_err();
    assert!(!error.to_string().contains(&secret), "{error}");
    assert!(error.to_string().contains("<redacted>"), "{error}");
    let decl = match toml::from_str(&table).unwrap() {
        BackendDecl::Exec(decl) => decl,
        BackendDecl::Http(_) => unreachable!(),
    };
    let shown = format!("{:?}", ExecBackend::new("box", decl, &dir.0).unwrap());
    assert!(
        shown.contains("TOKEN") && !shown.contains(&secret),
        "{shown}"
    );
    drop(_guard);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("exec backend call"),
        "the calls were logged: {text}"
    );
    assert!(!text.contains(&secret), "{text}");
}

/// `executord serve` on the database of `pool`, its log in `dir`; killed
/// when dropped.
pub(crate) struct Service {
    child: std::process::Child,
    pub(crate) port: u16,
    log: PathBuf,
}

impl Service {
    pub(crate) fn start(pool: &PgPool, dir: &Dir, catalog: &Path, env: &[(&str, &str)]) -> Self {
        let port = crate::support::process::free_port();
        let log = dir.0.join("executord.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_executord"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--catalog",
            ])
            .arg(catalog)
            .args([
                "--pull-interval-secs",
                "1",
                "--poll-interval-ms",
                "100",
                "--retry-base-ms",
                "100",
                "--shutdown-grace-secs",
                "1",
                "--log-format",
                "json",
            ])
            .env("DATABASE_URL", database_url(pool))
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut service = Self { child, port, log };
        let started = Instant::now();
        loop {
            let ready = crate::support::process::try_http(
                port,
                "GET",
                "/readyz",
                None,
                Duration::from_secs(5),
            );
            if ready.is_ok_and(|r| r.status == 200) {
                return service;
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!("executord exited ({status}): {}", service.log_text());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "executord not ready: {}",
                service.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> crate::support::process::Reply {
        crate::support::process::try_http(self.port, method, path, body, Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// SIGTERM, and its exit within `limit`.
    fn stop(&mut self, limit: Duration) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < limit,
                "executord still runs after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("executord's log ends with:");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL of `pool`'s database: `DATABASE_URL` with its database name.
fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").unwrap();
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let (head, query) = match base.split_once('?') {
        Some((head, query)) => (head, format!("?{query}")),
        None => (base.as_str(), String::new()),
    };
    let (server, _) = head.rsplit_once('/').unwrap();
    format!("{server}/{database}{query}")
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn shutting_down_kills_the_calls_in_flight(pool: PgPool) {
    let dir = Dir::new("shutdown");
    let program = dir.script("run.sh", &format!("cd \"$(dirname \"$0\")\"\n{HANG}"));
    let catalog = dir.0.join("catalog.toml");
    let text = catalog_text_with_timeout(&program, 300);
    std::fs::write(&catalog, text).unwrap();
    let mut service = Service::start(&pool, &dir, &catalog, &[]);
    let created = service.call(
        "POST",
        "/api/v1/resources",
        Some(&json!({"kind": "thing", "name": "t-1", "attributes": {}})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let pids = [
        pid_in(&dir, "child.pid").await,
        pid_in(&dir, "grandchild.pid").await,
    ];
    service.stop(Duration::from_secs(30));
    assert_gone_soon(&pids).await;
}

/// A catalog with `thing` whose create hangs, the backend's timeout `timeout_s`.
fn catalog_text_with_timeout(program: &Path, timeout_s: u64) -> String {
    catalog(
        program,
        "{ type = \"backend_method\", method = \"create\" }",
    )
    .replace("timeout_s = 1", &format!("timeout_s = {timeout_s}"))
}

/// The example catalog, as shipped.
const POSTGRES_CATALOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/catalogs/postgres/catalog.toml"
);

/// Databases and roles a test makes on the shared server, dropped at the
/// end whatever happens (they outlive the test's own database).
struct Leftovers {
    env: Vec<(&'static str, String)>,
    databases: Vec<String>,
    roles: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let quote = |name: &String| format!("\"{}\"", name.replace('"', "\"\""));
        let mut sql: Vec<String> = self
            .databases
            .iter()
            .map(|d| format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", quote(d)))
            .collect();
        sql.extend(
            self.roles
                .iter()
                .map(|r| format!("DROP ROLE IF EXISTS {};", quote(r))),
        );
        // Each `-c` its own transaction: DROP DATABASE refuses to be in one.
        let _ = std::process::Command::new("psql")
            .args(["-X", "-q", "-d", "postgres"])
            .args(sql.iter().flat_map(|s| ["-c", s.as_str()]))
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output();
    }
}

/// Waits for an operation to end (the API's long poll, at most 60 s).
pub(crate) fn finished(service: &Service, operation: &Value) -> Value {
    let id = operation.as_str().unwrap();
    let started = Instant::now();
    loop {
        let reply = service.call("GET", &format!("/api/v1/operations/{id}?wait=30"), None);
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.body["finished_at"].is_string() {
            return reply.body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            reply.body
        );
    }
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn the_postgres_example_manages_real_databases_and_roles(pool: PgPool) {
    let options = pool.connect_options();
    // Under the test server's trust authentication the password is not
    // checked: it stands for a secret that must never show.
    let secret = format!("pg-secret-{}", Uuid::new_v4().simple());
    let env: Vec<(&'static str, String)> = vec![
        ("PGHOST", options.get_host().to_owned()),
        ("PGPORT", options.get_port().to_string()),
        ("PGUSER", options.get_username().to_owned()),
        ("PGPASSWORD", secret.clone()),
    ];
    let suffix = &Uuid::new_v4().simple().to_string()[..10];
    let (db, renamed, role) = (
        format!("exd_db_{suffix}"),
        format!("exd db renamed {suffix}"),
        format!("exd_role_{suffix}"),
    );
    let _leftovers = Leftovers {
        env: env.clone(),
        databases: vec![db.clone(), renamed.clone()],
        roles: vec![role.clone()],
    };
    let dir = Dir::new("postgres");
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let service = Service::start(&pool, &dir, Path::new(POSTGRES_CATALOG), &env_refs);
    let mut answers = Vec::new();
    let mut call = |method: &str, path: &str, body: Option<Value>| {
        let reply = service.call(method, path, body.as_ref());
        answers.push(reply.body.to_string());
        reply
    };

    // A database: created, and there on the server, tagged as ours.
    let created = call(
        "POST",
        "/api/v1/resources",
        Some(json!({"kind": "database", "name": db, "attributes": {}})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let db_id = created.body["id"].as_str().unwrap().to_owned();
    let done = finished(&service, &created.body["current_operation_id"]);
    assert_eq!(done["state"], "succeeded", "{done}");
    let resource = call("GET", &format!("/api/v1/resources/{db_id}"), None).body;
    assert_eq!(resource["state"], "ok");
    assert_eq!(resource["runtime_state"], "online");
    assert_eq!(resource["status"]["database"], db.as_str());
    let (oid, comment): (String, Option<String>) = sqlx::query_as(
        "SELECT oid::text, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    )
    .bind(&db)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(resource["backend_id"], oid.as_str());
    assert_eq!(comment, Some(format!("executord:{db_id}")));

    // Renamed by an update of its name: the same database (OID) under the new name.
    let updated = call(
        "PATCH",
        &format!("/api/v1/resources/{db_id}"),
        Some(json!({"name": renamed})),
    );
    assert_eq!(updated.status, 202, "{}", updated.body);
    assert_eq!(
        finished(&service, &updated.body["id"])["state"],
        "succeeded"
    );
    let name: String =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE oid = $1::oid")
            .bind(&oid)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(name, renamed);

    // An action with a parameter.
    let action = call(
        "POST",
        &format!("/api/v1/resources/{db_id}/actions/set_connection_limit"),
        Some(json!({"limit": 7})),
    );
    assert_eq!(action.status, 202, "{}", action.body);
    assert_eq!(finished(&service, &action.body["id"])["state"], "succeeded");
    let limit: i32 = sqlx::query_scalar("SELECT datconnlimit FROM pg_database WHERE oid = $1::oid")
        .bind(&oid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(limit, 7);
    let resource = call("GET", &format!("/api/v1/resources/{db_id}"), None).body;
    assert_eq!(resource["status"]["connection_limit"], 7);
    assert_eq!(
        resource["attributes"],
        json!({}),
        "backend data stays in status"
    );

    // A role, with a password the service never sees: only its verifier.
    let verifier = scram_verifier("correct horse battery staple");
    let created = call(
        "POST",
        "/api/v1/resources",
        Some(json!({"kind": "role", "name": role, "attributes": {"password_verifier": verifier}})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let role_id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        finished(&service, &created.body["current_operation_id"])["state"],
        "succeeded"
    );
    let (login, stored): (bool, Option<String>) =
        sqlx::query_as("SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(&role)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(login);
    assert_eq!(
        stored.as_deref(),
        Some(verifier.as_str()),
        "stored as given, not hashed again"
    );
    let resource = call("GET", &format!("/api/v1/resources/{role_id}"), None).body;
    assert_eq!(resource["runtime_state"], "login");
    assert_eq!(resource["status"]["has_password"], true);
    // A new password (verifier) and no login, by an update.
    let rotated = scram_verifier("another password");
    let updated = call(
        "PATCH",
        &format!("/api/v1/resources/{role_id}"),
        Some(json!({"attributes": {"password_verifier": rotated, "login": false}})),
    );
    assert_eq!(updated.status, 202, "{}", updated.body);
    assert_eq!(
        finished(&service, &updated.body["id"])["state"],
        "succeeded"
    );
    let (login, stored): (bool, Option<String>) =
        sqlx::query_as("SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(&role)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!login);
    assert_eq!(stored, Some(rotated));
    // A password instead of a verifier is refused before anything runs.
    let refused = call(
        "POST",
        "/api/v1/resources",
        Some(
            json!({"kind": "role", "name": format!("{role}_x"), "attributes": {"password_verifier": "hunter2"}}),
        ),
    );
    assert_eq!(refused.status, 422, "{}", refused.body);

    // Dropped behind executord's back: the pull job notices and errs it.
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{renamed}\"")))
        .execute(&pool)
        .await
        .unwrap();
    let started = Instant::now();
    let erred = loop {
        let resource = call("GET", &format!("/api/v1/resources/{db_id}"), None).body;
        if resource["state"] == "erred" {
            break resource;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not erred: {resource}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let message = erred["error_message"].as_str().unwrap();
    assert!(
        message.starts_with("the backend object is gone: database"),
        "{message}"
    );

    // Deleting it succeeds (it is gone already), and so does the role.
    let deleted = call("DELETE", &format!("/api/v1/resources/{db_id}"), None);
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    assert_eq!(
        finished(&service, &deleted.body["id"])["state"],
        "succeeded"
    );
    let deleted = call("DELETE", &format!("/api/v1/resources/{role_id}"), None);
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    assert_eq!(
        finished(&service, &deleted.body["id"])["state"],
        "succeeded"
    );
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(&role)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(roles, 0);
    assert_eq!(
        call("GET", &format!("/api/v1/resources/{db_id}"), None).status,
        404
    );
    let operations = call(
        "GET",
        &format!("/api/v1/resources/{role_id}/operations"),
        None,
    );
    answers.push(operations.body.to_string());

    // Metrics per backend and method, named from the catalog.
    let text = get_text(service.port, "/metrics");
    for series in [
        "executord_backend_calls_total{backend=\"postgres\",method=\"create_database\"} 1",
        "executord_backend_call_errors_total{backend=\"postgres\",method=\"pull_database\",class=\"not_found\"}",
        "executord_backend_call_duration_seconds_count{backend=\"postgres\",method=\"create_role\"} 1",
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }

    // The secret reached the scripts (they ran), and nothing else.
    let log = service.log_text();
    assert!(log.contains("exec backend call"), "debug logs were on");
    assert!(!log.contains(&secret), "the secret is in executord's log");
    let answers = answers.join("\n");
    assert!(!answers.contains(&secret), "the secret is in an answer");
    for password in ["correct horse", "another password"] {
        assert!(!answers.contains(password), "a password is in an answer");
        assert!(!log.contains(password), "a password is in the log");
    }
}

/// The example's helper, as a user runs it: the password on stdin.
fn scram_verifier(password: &str) -> String {
    crate::support::process::run_example_helper("postgres/scram-verifier.py", password)
}

/// Runs the example's script once, as executord would, on the shared server.
fn example(method: &str, request: &Value, env: &[(&'static str, String)]) -> (i32, Value, String) {
    use std::io::Write;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/catalogs/postgres/postgres.py"
    );
    let mut child = std::process::Command::new(script)
        .arg(method)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let reply = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        reply,
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn the_postgres_example_s_create_may_run_again_after_a_crash(pool: PgPool) {
    let options = pool.connect_options();
    let env: Vec<(&'static str, String)> = vec![
        ("PGHOST", options.get_host().to_owned()),
        ("PGPORT", options.get_port().to_string()),
        ("PGUSER", options.get_username().to_owned()),
    ];
    let id = Uuid::new_v4();
    let name = format!("exd_again_{}", &id.simple().to_string()[..10]);
    let scratch = format!("executord_{}", id.simple());
    let stranger = format!("exd_stranger_{}", &id.simple().to_string()[..10]);
    let _leftovers = Leftovers {
        env: env.clone(),
        databases: vec![name.clone(), scratch.clone(), stranger.clone()],
        roles: vec![name.clone()],
    };
    let request = |kind: &str, name: &str| {
        json!({
            "method": "create", "idempotency_key": Uuid::new_v4(),
            "resource": {"id": id, "kind": kind, "name": name, "backend_id": null,
                         "runtime_state": null, "attributes": {}, "status": {}},
            "params": {},
        })
    };
    // A run cut right after CREATE DATABASE left the scratch database, untagged.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{scratch}\""
    )))
    .execute(&pool)
    .await
    .unwrap();
    let (code, first, stderr) = example("create_database", &request("database", &name), &env);
    assert_eq!(code, 0, "{stderr}");
    let (code, again, stderr) = example("create_database", &request("database", &name), &env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(first, again, "the same database, reported the same way");
    let databases: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname IN ($1, $2) ORDER BY 1",
    )
    .bind(&name)
    .bind(&scratch)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        databases,
        std::slice::from_ref(&name),
        "the scratch database became it"
    );

    // A role made twice is one role.
    let (code, first, stderr) = example("create_role", &request("role", &name), &env);
    assert_eq!(code, 0, "{stderr}");
    let (code, again, stderr) = example("create_role", &request("role", &name), &env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(first["backend_id"], again["backend_id"]);

    // A database executord did not make is never taken over.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{stranger}\""
    )))
    .execute(&pool)
    .await
    .unwrap();
    let other = json!({
        "method": "create", "idempotency_key": Uuid::new_v4(),
        "resource": {"id": Uuid::new_v4(), "kind": "database", "name": stranger, "backend_id": null,
                     "runtime_state": null, "attributes": {}, "status": {}},
        "params": {},
    });
    let (code, _, stderr) = example("create_database", &other, &env);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!("database `{stranger}` already exists and executord did not make it")
    );
    // Deleting twice: the second finds nothing (79, which the catalog calls success).
    let mut delete = request("database", &name);
    delete["resource"]["backend_id"] = first_database_oid(&pool, &name).await.into();
    assert_eq!(example("delete_database", &delete, &env).0, 0);
    let (code, _, stderr) = example("delete_database", &delete, &env);
    assert_eq!(code, 79, "{stderr}");
}

async fn first_database_oid(pool: &PgPool, name: &str) -> String {
    sqlx::query_scalar("SELECT oid::text FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The body of a GET answered with a length (`/metrics` is text, not JSON).
fn get_text(port: u16, path: &str) -> String {
    let reply = crate::support::process::try_http(port, "GET", path, None, Duration::from_secs(10))
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert!(
        !reply.head.to_ascii_lowercase().contains("chunked"),
        "{}",
        reply.head
    );
    reply.text
}
