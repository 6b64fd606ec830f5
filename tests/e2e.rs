//! End to end: the real binary on the embedded database, the README's curl
//! tour over a real socket, then a clean shutdown on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Service {
    child: Child,
    port: u16,
    data_dir: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Stop an embedded server a killed process left behind, then remove its files.
        let pg = self.data_dir.join("pg");
        if pg.join("postmaster.pid").exists() {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "pg_ctl=$(ls /usr/lib/postgresql/*/bin/pg_ctl | tail -n1); \
                     if [ \"$(id -u)\" = 0 ]; then runuser -u postgres -- $pg_ctl stop -D '{0}' -m immediate; \
                     else $pg_ctl stop -D '{0}' -m immediate; fi",
                    pg.display()
                ))
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request with `Connection: close`; returns status, headers and JSON body.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    let payload = body.map(Value::to_string).unwrap_or_default();
    let content_type = if body.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{content_type}Content-Length: {}\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (
        status,
        head.to_owned(),
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

fn start() -> Service {
    let port = free_port();
    let data_dir =
        std::env::temp_dir().join(format!("executord-e2e-{}-{port}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_executord"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--sim-transition-ms",
            "200",
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let service = Service {
        child,
        port,
        data_dir,
    };
    let started = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", None).0 == 200
        {
            return service;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the service did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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

    let terminated = Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = service.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no exit 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    assert!(
        !service.data_dir.join("pg/postmaster.pid").exists(),
        "the embedded PostgreSQL server was stopped"
    );
}
