//! W3 over HTTP: a load generator in the shape of `loadgen.py` (same
//! clients, same loop, same figures and JSON field names), on plain tokio
//! sockets with HTTP/1.1 keep-alive, for when Python is the bottleneck.
//!
//! Each of `clients` connections loops: POST a resource, then GET it every
//! `poll_ms` until its state is `ok` (or `erred`, or `timeout_s` passes),
//! until `total` resources were created.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::stats::{Latency, percentile, sorted};

/// W3 against a running service.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct W3Args {
    /// The service, e.g. http://127.0.0.1:8080 (plain HTTP only). Several,
    /// comma-separated, spread the clients over them round-robin (client i
    /// talks to URL i mod n), as a simple load balancer in front of several
    /// API processes would.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) base_url: String,
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Resources created in the measured part.
    #[arg(long, default_value_t = 2000)]
    pub(crate) total: usize,
    /// Time between GETs of one resource.
    #[arg(long, default_value_t = 20)]
    pub(crate) poll_interval_ms: u64,
    /// Not W3 as specified: instead of polling, each GET long-polls with
    /// `?wait=N` until the resource settles (0: poll).
    #[arg(long, default_value_t = 0)]
    pub(crate) wait_s: u64,
    /// A resource not `ok` this long after its POST counts as lost.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) timeout_s: f64,
    /// Resources created (and not counted) first.
    #[arg(long, default_value_t = 64)]
    pub(crate) warmup: usize,
    /// A process whose RSS is sampled (and whose VmHWM is reported).
    #[arg(long)]
    pub(crate) watch_pid: Option<u32>,
    /// Write the JSON result here as well.
    #[arg(long)]
    pub(crate) out: Option<std::path::PathBuf>,
    /// A label for the result.
    #[arg(long, default_value = "W3 (rust generator)")]
    pub(crate) label: String,
    /// The service's database: profile it during the measured part
    /// (pg_stat_statements if preloaded, and what its connections wait on).
    #[arg(long)]
    pub(crate) profile_url: Option<String>,
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    addr: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            stream: None,
        }
    }

    /// Sends one request and reads the whole response: status and body.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>)> {
        let result = self.try_request(method, path, body).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            stream.set_nodelay(true)?;
            self.stream = Some(BufReader::new(stream));
        }
        let stream = self.stream.as_mut().context("no connection")?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\naccept: application/json\r\n",
            self.addr
        );
        if let Some(body) = body {
            head.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        stream.get_mut().write_all(&bytes).await?;

        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                bail!("the server closed the connection mid-headers");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = Some(value.parse::<usize>()?),
                    "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                stream.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
                let mut chunk = vec![0; size + 2];
                stream.read_exact(&mut chunk).await?;
                chunk.truncate(size);
                body.extend_from_slice(&chunk);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            stream.read_exact(&mut body).await?;
        } else {
            stream.read_to_end(&mut body).await?;
            close = true;
        }
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

/// What happened to one resource.
#[derive(Debug, Default)]
struct Record {
    t_post: f64,
    t_post_done: Option<f64>,
    t_ok: Option<f64>,
    polls: usize,
    error: Option<String>,
}

/// Everything one client saw.
#[derive(Debug, Default)]
struct Seen {
    records: Vec<Record>,
    post_latency: Vec<f64>,
    get_latency: Vec<f64>,
    statuses: std::collections::BTreeMap<String, usize>,
    transport_errors: std::collections::BTreeMap<String, usize>,
}

struct Shared {
    args: W3Args,
    addrs: Vec<String>,
    next: AtomicUsize,
    total: usize,
    origin: Instant,
    prefix: String,
}

impl Shared {
    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }
}

async fn one(shared: &Shared, conn: &mut Conn, n: usize, seen: &mut Seen) -> Record {
    let a = &shared.args;
    let t0 = shared.now();
    let mut rec = Record {
        t_post: t0,
        ..Record::default()
    };
    let body = json!({
        "kind": "instance",
        "name": format!("b-{n}"),
        "attributes": {"tenant": format!("{}-{n}", shared.prefix), "flavor": "small"},
    })
    .to_string();
    let reply = conn
        .request("POST", "/api/v1/resources", Some(body.as_bytes()))
        .await;
    let t1 = shared.now();
    rec.t_post_done = Some(t1);
    let (status, bytes) = match reply {
        Ok(r) => r,
        Err(e) => {
            rec.error = Some(format!("POST transport error: {e}"));
            return rec;
        }
    };
    *seen.statuses.entry(format!("POST {status}")).or_default() += 1;
    seen.post_latency.push(t1 - t0);
    if status / 100 != 2 {
        rec.error = Some(format!("POST {status}"));
        return rec;
    }
    let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let Some(id) = doc.get("id").and_then(Value::as_str) else {
        rec.error = Some("POST response has no id".to_owned());
        return rec;
    };
    if doc.get("state").and_then(Value::as_str) == Some("ok") {
        rec.t_ok = Some(t1);
        return rec;
    }
    let path = match a.wait_s {
        0 => format!("/api/v1/resources/{id}"),
        wait => format!("/api/v1/resources/{id}?wait={wait}"),
    };
    let deadline = t0 + a.timeout_s;
    loop {
        if a.wait_s == 0 {
            tokio::time::sleep(Duration::from_millis(a.poll_interval_ms)).await;
        }
        if shared.now() > deadline {
            rec.error = Some("timeout".to_owned());
            return rec;
        }
        let g0 = shared.now();
        match conn.request("GET", &path, None).await {
            Ok((status, bytes)) => {
                let g1 = shared.now();
                rec.polls += 1;
                seen.get_latency.push(g1 - g0);
                *seen.statuses.entry(format!("GET {status}")).or_default() += 1;
                if status / 100 != 2 {
                    continue;
                }
                let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                match doc.get("state").and_then(Value::as_str) {
                    Some("ok") => {
                        rec.t_ok = Some(g1);
                        return rec;
                    }
                    Some("erred") => {
                        rec.error = Some("state erred".to_owned());
                        return rec;
                    }
                    _ => {}
                }
            }
            Err(e) => {
                let kind = e.to_string().chars().take(60).collect::<String>();
                *seen
                    .transport_errors
                    .entry(format!("GET {kind}"))
                    .or_default() += 1;
            }
        }
    }
}

async fn client(shared: Arc<Shared>, addr: String) -> Seen {
    let mut conn = Conn::new(&addr);
    let mut seen = Seen::default();
    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if n >= shared.total {
            return seen;
        }
        let rec = one(&shared, &mut conn, n, &mut seen).await;
        seen.records.push(rec);
    }
}

async fn go(args: &W3Args, addrs: &[String], total: usize, prefix: &str) -> Result<(Seen, f64)> {
    let shared = Arc::new(Shared {
        args: args.clone(),
        addrs: addrs.to_vec(),
        next: AtomicUsize::new(0),
        total,
        origin: Instant::now(),
        prefix: prefix.to_owned(),
    });
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..args.concurrency.min(total).max(1) {
        let addr = shared.addrs[i % shared.addrs.len()].clone();
        clients.spawn(client(shared.clone(), addr));
    }
    let mut all = Seen::default();
    while let Some(seen) = clients.join_next().await {
        let seen = seen.context("a client panicked")?;
        all.records.extend(seen.records);
        all.post_latency.extend(seen.post_latency);
        all.get_latency.extend(seen.get_latency);
        for (k, v) in seen.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        for (k, v) in seen.transport_errors {
            *all.transport_errors.entry(k).or_default() += v;
        }
    }
    let wall = shared.now();
    Ok((all, wall))
}

/// Connects to the service's database and starts profiling it.
async fn profiler(url: &str) -> Result<crate::env::Profiler> {
    let options: sqlx::postgres::PgConnectOptions = url.parse().context("parsing --profile-url")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.application_name("executord-bench"))
        .await
        .context("connecting to --profile-url")?;
    let loaded: String = sqlx::query_scalar("SHOW shared_preload_libraries")
        .fetch_one(&pool)
        .await?;
    let pgss = loaded.contains("pg_stat_statements");
    if pgss {
        sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await?;
    } else {
        eprintln!("bench: pg_stat_statements is not preloaded there; sampling waits only");
    }
    crate::env::Profiler::start(pool, pgss).await
}

/// A `/proc/<pid>/status` field in kB, as MiB.
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

fn summary_ms(values: &[f64]) -> Value {
    let l = Latency::of(values.iter().map(|s| s * 1000.0).collect());
    let mean = if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64 * 1000.0
    };
    let round = |v: f64| {
        if v.is_nan() {
            Value::Null
        } else {
            json!((v * 100.0).round() / 100.0)
        }
    };
    json!({
        "n": l.n, "p50_ms": round(l.p50), "p95_ms": round(l.p95), "p99_ms": round(l.p99),
        "max_ms": round(l.max), "mean_ms": round(mean),
    })
}

/// Runs W3 once and prints loadgen.py's JSON (and one summary line on stderr).
/// The `host:port` of a plain-HTTP base URL.
fn host_port(url: &str) -> Result<String> {
    url.trim()
        .trim_end_matches('/')
        .strip_prefix("http://")
        .map(str::to_owned)
        .context("every --base-url must start with http://")
}

pub(crate) async fn w3(args: &W3Args) -> Result<()> {
    let addrs = args
        .base_url
        .split(',')
        .map(host_port)
        .collect::<Result<Vec<String>>>()?;
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    if args.warmup > 0 {
        let (seen, _) = go(args, &addrs, args.warmup, &format!("{prefix}-warm")).await?;
        let bad = seen.records.iter().filter(|r| r.t_ok.is_none()).count();
        eprintln!("warm-up: {} resources, {bad} not OK", args.warmup);
    }
    let peak = Arc::new(std::sync::Mutex::new(0.0_f64));
    let sampler = args.watch_pid.map(|pid| {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(rss) = status_mib(pid, "VmRSS")
                    && let Ok(mut p) = peak.lock()
                {
                    *p = p.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let profiler = match &args.profile_url {
        Some(url) => Some(profiler(url).await?),
        None => None,
    };
    let cpu0 = crate::env::process_cpu(None);
    let (seen, wall) = go(args, &addrs, args.total, &prefix).await?;
    let cpu = crate::env::process_cpu(None) - cpu0;
    if let Some(s) = sampler {
        s.abort();
    }
    let ok: Vec<&Record> = seen.records.iter().filter(|r| r.t_ok.is_some()).collect();
    let failed: Vec<&Record> = seen.records.iter().filter(|r| r.t_ok.is_none()).collect();
    let t_first = seen
        .records
        .iter()
        .map(|r| r.t_post)
        .fold(f64::INFINITY, f64::min);
    let t_last_post = seen
        .records
        .iter()
        .map(|r| r.t_post_done.unwrap_or(r.t_post))
        .fold(0.0, f64::max);
    let t_last_ok = ok.iter().filter_map(|r| r.t_ok).fold(f64::NAN, f64::max);
    let posts: usize = seen
        .statuses
        .iter()
        .filter(|(k, _)| k.starts_with("POST"))
        .map(|(_, v)| v)
        .sum();
    let gets = seen.get_latency.len();
    let latencies: Vec<f64> = ok
        .iter()
        .filter_map(|r| r.t_ok.map(|t| t - r.t_post))
        .collect();
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for r in &failed {
        *reasons
            .entry(r.error.clone().unwrap_or_else(|| "?".to_owned()))
            .or_default() += 1;
    }
    let polls: usize = seen.records.iter().map(|r| r.polls).sum();
    let ok_per_s = if t_last_ok.is_nan() {
        0.0
    } else {
        ok.len() as f64 / (t_last_ok - t_first)
    };
    let post_to_ok = summary_ms(&latencies);
    let peak_rss = args.watch_pid.and_then(|_| peak.lock().ok().map(|p| *p));
    let hwm = args.watch_pid.and_then(|pid| status_mib(pid, "VmHWM"));
    let out = json!({
        "label": args.label,
        "generator": "examples/bench.rs w3",
        "config": {
            "base_url": args.base_url, "concurrency": args.concurrency, "total": args.total,
            "poll_interval_ms": args.poll_interval_ms, "wait_s": args.wait_s,
            "timeout_s": args.timeout_s, "warmup": args.warmup,
        },
        "resources": seen.records.len(),
        "ok": ok.len(),
        "not_ok": failed.len(),
        "failure_reasons": reasons,
        "http_status": seen.statuses,
        "transport_errors": seen.transport_errors,
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "post_rps": ((posts as f64 / (t_last_post - t_first)) * 10.0).round() / 10.0,
        "ok_per_s": (ok_per_s * 10.0).round() / 10.0,
        "first_post_to_last_ok_s": if t_last_ok.is_nan() { Value::Null } else { json!(t_last_ok - t_first) },
        "gets": gets,
        "get_rps": ((gets as f64 / wall) * 10.0).round() / 10.0,
        "polls_per_resource_mean": polls as f64 / seen.records.len().max(1) as f64,
        "post_to_ok": post_to_ok,
        "post_latency": summary_ms(&seen.post_latency),
        "get_latency": summary_ms(&seen.get_latency),
        "loadgen_cpu_s": (cpu * 100.0).round() / 100.0,
        "peak_rss_mib": peak_rss,
        "vm_hwm_mib": hwm,
    });
    if let Some(profiler) = profiler {
        eprint!(
            "{}",
            profiler.finish(ok.len().max(1) as f64, "resource").await?
        );
    }
    let text = serde_json::to_string_pretty(&out)?;
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{text}");
    let s = sorted(latencies.iter().map(|v| v * 1000.0).collect());
    eprintln!(
        "{}: {}/{} OK, not_ok={}, POST {:.1}/s, OK {:.1}/s, POST->OK p50/p95/p99 {:.1}/{:.1}/{:.1} ms, \
         generator CPU {:.1} s of {:.1} s wall",
        args.label,
        ok.len(),
        seen.records.len(),
        failed.len(),
        posts as f64 / (t_last_post - t_first),
        ok_per_s,
        percentile(&s, 50.0),
        percentile(&s, 95.0),
        percentile(&s, 99.0),
        cpu,
        wall
    );
    Ok(())
}

/// `bench gets`: what one GET of a resource costs the service and
/// PostgreSQL, apart from everything else W3 does.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct GetsArgs {
    /// The service, e.g. http://127.0.0.1:8080 (plain HTTP only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) base_url: String,
    /// Concurrent clients, each with its own keep-alive connection, each
    /// GETting the resource back to back.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// How long the measured part lasts (one second of warm-up comes first).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// The service's process: its CPU per GET is reported.
    #[arg(long)]
    pub(crate) service_pid: Option<u32>,
    /// PostgreSQL's postmaster: the CPU of it and its children per GET is reported.
    #[arg(long)]
    pub(crate) pg_pid: Option<u32>,
    /// Write the JSON result here as well.
    #[arg(long)]
    pub(crate) out: Option<std::path::PathBuf>,
}

/// Creates one resource, waits until it is `ok`, then GETs it from
/// `concurrency` clients for `seconds`: GETs per second and the CPU per GET
/// of the service and of PostgreSQL.
pub(crate) async fn gets(args: &GetsArgs) -> Result<()> {
    let addr = host_port(&args.base_url)?;
    let mut conn = Conn::new(&addr);
    let tenant = format!("gets-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let body = json!({"kind": "instance", "name": "gets", "attributes": {"tenant": tenant, "flavor": "small"}});
    let (status, bytes) = conn
        .request(
            "POST",
            "/api/v1/resources",
            Some(body.to_string().as_bytes()),
        )
        .await?;
    anyhow::ensure!(status == 201, "POST answered {status}");
    let doc: Value = serde_json::from_slice(&bytes)?;
    let id = doc
        .get("id")
        .and_then(Value::as_str)
        .context("the POST's answer has no id")?;
    let path = format!("/api/v1/resources/{id}");
    let settled = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, bytes) = conn.request("GET", &path, None).await?;
        let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status == 200 && doc.get("state").and_then(Value::as_str) == Some("ok") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < settled,
            "the resource is not ok after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = Arc::new(path);
    let run = |seconds: f64| {
        let clients: Vec<_> = (0..args.concurrency)
            .map(|_| {
                let (addr, path) = (addr.clone(), path.clone());
                tokio::spawn(async move {
                    let mut conn = Conn::new(&addr);
                    let until = Instant::now() + Duration::from_secs_f64(seconds);
                    let (mut ok, mut other) = (0_u64, 0_u64);
                    while Instant::now() < until {
                        match conn.request("GET", &path, None).await {
                            Ok((200, _)) => ok += 1,
                            _ => other += 1,
                        }
                    }
                    (ok, other)
                })
            })
            .collect();
        async move {
            let (mut ok, mut other) = (0, 0);
            for c in clients {
                let (o, x) = c.await.unwrap_or((0, 1));
                ok += o;
                other += x;
            }
            (ok, other)
        }
    };
    run(1.0).await;
    let cpu = |pid: Option<u32>| pid.and_then(crate::env::tree_cpu);
    let (service0, pg0, own0) = (
        cpu(args.service_pid),
        cpu(args.pg_pid),
        crate::env::process_cpu(None),
    );
    let started = Instant::now();
    let (ok, other) = run(args.seconds).await;
    let wall = started.elapsed().as_secs_f64();
    let (service1, pg1, own1) = (
        cpu(args.service_pid),
        cpu(args.pg_pid),
        crate::env::process_cpu(None),
    );
    let per_get_ms = |a: Option<f64>, b: Option<f64>| {
        a.zip(b)
            .filter(|_| ok > 0)
            .map(|(a, b)| ((b - a) / ok as f64 * 1e6).round() / 1e3)
    };
    let result = json!({
        "gets": ok,
        "not_200": other,
        "seconds": (wall * 100.0).round() / 100.0,
        "gets_per_s": (ok as f64 / wall * 10.0).round() / 10.0,
        "service_cpu_per_get_ms": per_get_ms(service0, service1),
        "postgres_cpu_per_get_ms": per_get_ms(pg0, pg1),
        "generator_cpu_s": ((own1 - own0) * 100.0).round() / 100.0,
        "concurrency": args.concurrency,
    });
    eprintln!(
        "gets: {ok} GETs ({other} not 200) in {wall:.1} s: {:.0}/s; CPU per GET: service {} ms, PostgreSQL {} ms",
        ok as f64 / wall,
        result["service_cpu_per_get_ms"],
        result["postgres_cpu_per_get_ms"]
    );
    let text = serde_json::to_string_pretty(&result)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{text}");
    Ok(())
}
