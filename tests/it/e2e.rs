//! End to end: the real binary on the embedded database, the README's curl
//! tour over a real socket, then a clean shutdown on SIGTERM; CLI commands
//! and workers beside a live service on the same embedded cluster; the
//! embedded server's supervision; a taken address.
#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::process::{free_port, stop_immediately, try_http_with};

struct Service {
    child: Child,
    port: u16,
    data_dir: PathBuf,
    /// The service's log (`info` for executord).
    log: PathBuf,
    _cleanup: Cleanup,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops an embedded server a killed process left behind, then removes its
/// files (dropped after the processes using them are gone).
struct Cleanup {
    data_dir: PathBuf,
    log: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let pg = self.data_dir.join("pg");
        if pg.join("postmaster.pid").exists() {
            stop_immediately(&pg);
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One HTTP/1.1 request; returns status, headers and JSON body.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, String, Value) {
    http_with(port, method, path, body, "")
}

/// [`http`] with extra header lines (each ending in `\r\n`).
fn http_with(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &str,
) -> (u16, String, Value) {
    let reply = try_http_with(port, method, path, body, headers, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (reply.status, reply.head, reply.body)
}

fn start() -> Service {
    let port = free_port();
    let data_dir =
        std::env::temp_dir().join(format!("executord-e2e-{}-{port}", std::process::id()));
    let log = data_dir.with_extension("log");
    let child = executord(&data_dir, &log)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--sim-transition-ms",
            "200",
        ])
        .spawn()
        .unwrap();
    let service = Service {
        child,
        port,
        _cleanup: Cleanup {
            data_dir: data_dir.clone(),
            log: log.clone(),
        },
        data_dir,
        log,
    };
    wait(
        Duration::from_secs(60),
        "the service to become ready",
        || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http(port, "GET", "/readyz", None).0 == 200
        },
    );
    service
}

/// The binary on the embedded cluster under `data_dir` (never a
/// `DATABASE_URL` from the environment), logging to `log`.
fn executord(data_dir: &Path, log: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_executord"));
    command
        .arg("--log-format")
        .arg("json")
        .env("EXECUTORD_DATA_DIR", data_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn,executord=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        );
    command
}

/// Polls `done` every 100 ms; panics after `limit`.
fn wait(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid of the cluster's postmaster, if its `postmaster.pid` is there.
fn postmaster(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("pg/postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Sends SIGTERM and waits for a successful exit.
fn terminate(child: &mut Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no exit 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
}

fn wait_for(port: u16, operation: &str) -> Value {
    let (status, _, body) = http(
        port,
        "GET",
        &format!("/api/v1/operations/{operation}?wait=30"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "succeeded", "{body}");
    body
}

#[test]
fn the_binary_serves_the_curl_tour_on_the_embedded_database_and_stops_cleanly() {
    let mut service = start();
    let port = service.port;

    let (status, head, created) = http(
        port,
        "POST",
        "/api/v1/resources",
        Some(
            &json!({"kind": "instance", "name": "web-1", "attributes": {"tenant": "acme", "flavor": "small", "image": "debian-12"}}),
        ),
    );
    assert_eq!(status, 201, "{created}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: /api/v1/resources/")
    );
    let id = created["id"].as_str().unwrap().to_owned();
    wait_for(port, created["current_operation_id"].as_str().unwrap());
    let (_, _, resource) = http(port, "GET", &format!("/api/v1/resources/{id}"), None);
    assert_eq!(
        (
            resource["state"].as_str(),
            resource["runtime_state"].as_str()
        ),
        (Some("ok"), Some("ACTIVE"))
    );

    for (action, params, runtime) in [
        ("stop", json!({}), "SHUTOFF"),
        ("resize", json!({"flavor": "large"}), "SHUTOFF"),
        ("start", json!({}), "ACTIVE"),
    ] {
        let (status, _, operation) = http(
            port,
            "POST",
            &format!("/api/v1/resources/{id}/actions/{action}"),
            Some(&params),
        );
        assert_eq!(status, 202, "{action}: {operation}");
        wait_for(port, operation["id"].as_str().unwrap());
        let (_, _, resource) = http(port, "GET", &format!("/api/v1/resources/{id}"), None);
        assert_eq!(resource["runtime_state"], runtime, "after {action}");
    }

    let (status, _, deleting) = http(port, "DELETE", &format!("/api/v1/resources/{id}"), None);
    assert_eq!(status, 202);
    wait_for(port, deleting["id"].as_str().unwrap());
    assert_eq!(
        http(port, "GET", &format!("/api/v1/resources/{id}"), None).0,
        404
    );
    assert_eq!(http(port, "GET", "/docs/", None).0, 200);

    terminate(&mut service.child);
    assert!(
        !service.data_dir.join("pg/postmaster.pid").exists(),
        "the embedded PostgreSQL server was stopped"
    );
}

/// Runs a CLI command of the binary on `service`'s cluster, to completion.
fn cli(service: &Service, args: &[&str]) -> std::process::Output {
    let output = executord(&service.data_dir, &service.log)
        .args(args)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "executord {args:?}: {}; log:\n{}",
        output.status,
        std::fs::read_to_string(&service.log).unwrap_or_default()
    );
    output
}

#[test]
fn cli_commands_and_a_worker_beside_a_live_service_leave_its_database_to_it() {
    let mut service = start();
    let port = service.port;
    let server = postmaster(&service.data_dir).expect("the service started its cluster");

    // The commands of the README's authentication section, and a migration,
    // on the service's data directory while it runs.
    let created = cli(
        &service,
        &["tokens", "create", "--tenant", "acme", "--role", "operator"],
    );
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("exd_"), "{token}");
    cli(&service, &["tokens", "list"]);
    cli(&service, &["migrate"]);

    // The same server, never stopped nor started again, and the service
    // answers with the token the CLI made.
    assert_eq!(postmaster(&service.data_dir), Some(server));
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let (status, _, body) = http_with(port, "GET", "/api/v1/resources", None, &bearer);
    assert_eq!(status, 200, "{body}");
    assert_eq!(http(port, "GET", "/healthz", None).0, 200);
    let log = std::fs::read_to_string(&service.log).unwrap();
    assert!(
        !log.contains("starting it again") && !log.contains("stopped the embedded"),
        "{log}"
    );

    // A worker joins; the service leaves first: the server stays up for the
    // worker, which takes it over, runs tasks on it, and stops it last.
    let mut worker = executord(&service.data_dir, &service.log)
        .arg("worker")
        .spawn()
        .unwrap();
    wait(Duration::from_secs(60), "the worker's runner", || {
        std::fs::read_to_string(&service.log)
            .unwrap()
            .contains("runner started")
    });
    terminate(&mut service.child);
    assert_eq!(postmaster(&service.data_dir), Some(server));
    wait(
        Duration::from_secs(10),
        "the worker to take the server over",
        || {
            std::fs::read_to_string(&service.log)
                .unwrap()
                .contains("this one owns it now")
        },
    );

    // An API on the same cluster, without a runner: the worker runs the chain.
    let api_port = free_port();
    let mut api = executord(&service.data_dir, &service.log)
        .args([
            "serve",
            "--no-runner",
            "--listen",
            &format!("127.0.0.1:{api_port}"),
        ])
        .spawn()
        .unwrap();
    wait(Duration::from_secs(60), "the second API", || {
        TcpStream::connect(("127.0.0.1", api_port)).is_ok()
            && http(api_port, "GET", "/readyz", None).0 == 200
    });
    let (status, _, created) = http_with(
        api_port,
        "POST",
        "/api/v1/resources",
        Some(
            &json!({"kind": "volume", "name": "data-1", "attributes": {"tenant": "acme", "size_gb": 1}}),
        ),
        &bearer,
    );
    assert_eq!(status, 201, "{created}");
    let operation = created["current_operation_id"].as_str().unwrap();
    let (_, _, done) = http_with(
        api_port,
        "GET",
        &format!("/api/v1/operations/{operation}?wait=30"),
        None,
        &bearer,
    );
    assert_eq!(done["state"], "succeeded", "{done}");

    terminate(&mut api);
    assert_eq!(
        postmaster(&service.data_dir),
        Some(server),
        "the worker still uses it"
    );
    terminate(&mut worker);
    assert_eq!(
        postmaster(&service.data_dir),
        None,
        "the last process out stopped the server"
    );
}

#[test]
fn the_service_restarts_its_embedded_database_and_reports_one_it_cannot_bring_back() {
    let mut service = start();
    let port = service.port;
    let first = postmaster(&service.data_dir).unwrap();

    // Someone stops the server (immediate shutdown, as after a crash).
    let quit = Command::new("kill")
        .args(["-QUIT", &first.to_string()])
        .status()
        .unwrap();
    assert!(quit.success());
    wait(Duration::from_secs(60), "the server to run again", || {
        postmaster(&service.data_dir).is_some_and(|pid| pid != first)
            && http(port, "GET", "/api/v1/resources", None).0 == 200
    });
    assert_eq!(http(port, "GET", "/healthz", None).0, 200);
    // The supervisor says so once its restart is through (the API may
    // answer a moment before).
    wait(Duration::from_secs(30), "the restart in the log", || {
        std::fs::read_to_string(&service.log)
            .unwrap()
            .contains("restarted the embedded PostgreSQL server")
    });

    // A cluster that cannot start: liveness says so, and heals with it.
    let version = service.data_dir.join("pg/PG_VERSION");
    let away = service.data_dir.join("pg/PG_VERSION.away");
    std::fs::rename(&version, &away).unwrap();
    let second = postmaster(&service.data_dir).unwrap();
    let quit = Command::new("kill")
        .args(["-QUIT", &second.to_string()])
        .status()
        .unwrap();
    assert!(quit.success());
    wait(Duration::from_secs(60), "/healthz to answer 503", || {
        http(port, "GET", "/healthz", None).0 == 503
    });
    let (status, head, problem) = http(port, "GET", "/healthz", None);
    assert_eq!(status, 503);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{head}"
    );
    assert_eq!(problem["status"], 503, "{problem}");
    std::fs::rename(&away, &version).unwrap();
    wait(
        Duration::from_secs(60),
        "/healthz to answer 200 again",
        || http(port, "GET", "/healthz", None).0 == 200,
    );
    assert_eq!(http(port, "GET", "/api/v1/resources", None).0, 200);

    terminate(&mut service.child);
    assert_eq!(postmaster(&service.data_dir), None);
}

#[test]
fn a_taken_address_fails_before_the_embedded_database_starts() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data_dir =
        std::env::temp_dir().join(format!("executord-e2e-{}-{port}-taken", std::process::id()));
    let log = data_dir.with_extension("log");
    let _cleanup = Cleanup {
        data_dir: data_dir.clone(),
        log: log.clone(),
    };
    let mut child = executord(&data_dir, &log)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .spawn()
        .unwrap();
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve on a taken address did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!exit.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("listening on 127.0.0.1:{port}")),
        "{text}"
    );
    assert_eq!(postmaster(&data_dir), None, "{text}");
    drop(taken);
}
