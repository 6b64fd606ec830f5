//! The `exec` driver: a declared backend driven by running a command, once
//! per call (see `docs/BACKENDS.md`).
//!
//! A call runs `command… METHOD` in a process group of its own, with the
//! request as JSON on stdin and `EXECUTORD_METHOD` set, and reads the reply
//! from stdout once the command exits: 0 is success, 75 (`EX_TEMPFAIL`) a
//! transient failure, 79 "not found", anything else a permanent failure
//! whose message is the last line of stderr. The group is killed when the
//! command exits (nothing a call starts outlives it) and when the call's
//! future is dropped (its time is up, its operation was cancelled, the
//! process shuts down), so no orphan survives.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::Semaphore;

use super::declared::{ExecDecl, MethodDecl, NotFound, Secret, expand, method_infos};
use super::{Backend, BackendCall, BackendError, BackendReply, MethodInfo, MethodRole};

/// The largest reply read from stdout; a longer one fails the call.
pub const MAX_REPLY: usize = 1024 * 1024;
/// The exit status of a transient failure (`EX_TEMPFAIL` in `sysexits.h`).
pub const EXIT_TRANSIENT: i32 = 75;
/// The exit status that means "no such object".
pub const EXIT_NOT_FOUND: i32 = 79;
/// The variable that names the method, besides the last argument.
pub const METHOD_VARIABLE: &str = "EXECUTORD_METHOD";

/// How much of stderr is kept (its end) to find the last line in.
const STDERR_TAIL: usize = 64 * 1024;
/// The longest error message taken from stderr, in bytes.
const MAX_MESSAGE: usize = 1000;
/// `PATH` for the command when executord itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Expanded values shorter than this are not masked in messages: a mask
/// on every `1` would garble them, and a secret that short is no secret.
const MIN_MASKED: usize = 4;

/// A backend driven by running a command.
#[derive(Debug)]
pub struct ExecBackend {
    name: String,
    /// The program, absolute, and its first arguments.
    program: PathBuf,
    args: Vec<String>,
    /// Where the command runs: the catalog file's directory.
    dir: PathBuf,
    /// executord's own `PATH`, passed on unless `env` sets another.
    path: String,
    /// The environment the catalog lists, expanded.
    env: Vec<(String, Secret)>,
    /// Values that came from `${env:…}` or `${file:…}`: masked in messages.
    masked: Vec<Secret>,
    timeout: Option<Duration>,
    slots: Option<Semaphore>,
    runtime_states: Vec<String>,
    methods: Vec<MethodInfo>,
    decls: BTreeMap<String, MethodDecl>,
}

impl ExecBackend {
    /// The backend `name` declares, for a catalog file in `dir`: its program
    /// must exist and be executable, and its environment is expanded now.
    /// The error says what is wrong with the declaration.
    pub fn new(name: &str, decl: ExecDecl, dir: &Path) -> Result<Self, String> {
        let ExecDecl {
            command,
            env,
            timeout_s,
            max_concurrency,
            runtime_states,
            methods,
        } = decl;
        let mut command = command.into_iter();
        let program = command
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("command: must name a program")?;
        let dir = std::path::absolute(dir)
            .map_err(|e| format!("cannot resolve the catalog's directory: {e}"))?;
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned());
        let mut expanded: Vec<(String, Secret)> = Vec::new();
        let mut masked = Vec::new();
        for (key, text) in env {
            check_variable(&key)?;
            let value = expand(&text).map_err(|e| format!("env.{key}: {e}"))?;
            if value.expose().contains('\0') {
                return Err(format!("env.{key}: the value holds a NUL byte"));
            }
            if value.expose() != text && value.expose().len() >= MIN_MASKED {
                masked.push(value.clone());
            }
            expanded.push((key, value));
        }
        let search = expanded
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(path.as_str(), |(_, v)| v.expose());
        let program = resolve(&program, &dir, search).map_err(|e| format!("command: {e}"))?;
        if timeout_s == Some(0) {
            return Err("timeout_s must be at least 1".into());
        }
        if max_concurrency == Some(0) {
            return Err("max_concurrency must be at least 1".into());
        }
        for (method, m) in &methods {
            let http_only = [
                ("path", m.path.is_some()),
                ("request", m.request.is_some()),
                ("reply", m.reply.is_some()),
                ("statuses", !m.statuses.is_empty()),
            ];
            if let Some((key, _)) = http_only.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "methods.{method}: `{key}` is for the http driver; an exec method has only `role` and `not_found`"
                ));
            }
        }
        // Longest first, so a secret that holds another is masked whole.
        masked.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        Ok(Self {
            name: name.to_owned(),
            program,
            args: command.collect(),
            dir,
            path,
            env: expanded,
            masked,
            timeout: timeout_s.map(Duration::from_secs),
            slots: max_concurrency.map(Semaphore::new),
            runtime_states,
            methods: method_infos(&methods),
            decls: methods,
        })
    }

    /// `text` with every expanded value of the environment replaced by
    /// `<redacted>`: a command that prints its own secret cannot put it in
    /// a stored message.
    fn mask(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.masked {
            if text.contains(secret.expose()) {
                text = text.replace(secret.expose(), "<redacted>");
            }
        }
        text
    }

    /// Runs the command once and reads what it says.
    async fn run(&self, method: &str, decl: &MethodDecl, call: &BackendCall) -> Ran {
        let request = request_body(method, call);
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .arg(method)
            .env_clear()
            .env("PATH", &self.path)
            .envs(self.env.iter().map(|(k, v)| (k, v.expose())))
            .env(METHOD_VARIABLE, method)
            .current_dir(&self.dir)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return Ran::failed(spawn_error(&self.program, &e)),
        };
        let group = Group::of(child.id());
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A command that does not read its request closes the pipe: fine.
                let _ = stdin.write_all(&request).await;
            }
            Ok(())
        };
        let exited = async {
            let status = child.wait().await;
            // Whatever the command left running in its group goes with it,
            // and so its copies of stdout and stderr close.
            group.kill();
            status.map_err(|e| BackendError::Transient(format!("waiting for the command: {e}")))
        };
        let io = tokio::try_join!(
            feed,
            read_reply(stdout, method),
            async { Ok(read_tail(stderr).await) },
            exited,
        );
        let (out, err, status) = match io {
            Ok(((), out, err, status)) => (out, err, status),
            Err(e) => {
                group.kill();
                let _ = child.wait().await;
                return Ran::failed(e);
            }
        };
        let message = last_line(&err).map(|line| self.mask(&line));
        let result = match status.code() {
            Some(0) => parse_reply(&out, method, &self.runtime_states, &self.name)
                .map_err(|e| BackendError::Permanent(self.mask(&e))),
            Some(EXIT_TRANSIENT) => Err(BackendError::Transient(message.unwrap_or_else(|| {
                format!("{method}: temporary failure (exit status {EXIT_TRANSIENT})")
            }))),
            Some(EXIT_NOT_FOUND) => match decl.not_found {
                NotFound::Success => Ok(BackendReply {
                    done: (decl.role == MethodRole::Check).then_some(true),
                    ..BackendReply::default()
                }),
                NotFound::Error => Err(BackendError::NotFound(message.unwrap_or_else(|| {
                    format!("{method}: not found (exit status {EXIT_NOT_FOUND})")
                }))),
            },
            Some(code) => Err(BackendError::Permanent(message.unwrap_or_else(|| {
                format!("{method}: exit status {code}, and nothing on stderr")
            }))),
            None => Err(BackendError::Transient(format!(
                "{method}: the command was killed by signal {}",
                status.signal().unwrap_or_default()
            ))),
        };
        Ran {
            status: Some(status),
            result,
        }
    }
}

#[async_trait]
impl Backend for ExecBackend {
    fn methods(&self) -> &[MethodInfo] {
        &self.methods
    }

    fn runtime_states(&self) -> Vec<&str> {
        self.runtime_states.iter().map(String::as_str).collect()
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    async fn call(&self, method: &str, call: BackendCall) -> Result<BackendReply, BackendError> {
        // Only a method of the catalog runs, so metric labels stay its names.
        let Some((method, decl)) = self.decls.get_key_value(method) else {
            return Err(BackendError::Permanent(format!(
                "backend `{}` has no method `{method}`",
                self.name
            )));
        };
        let _slot = match &self.slots {
            Some(slots) => Some(slots.acquire().await.map_err(|_| {
                BackendError::Transient(format!("backend `{}` is closed", self.name))
            })?),
            None => None,
        };
        let mut watch = Watch {
            backend: &self.name,
            method,
            started: Instant::now(),
            done: false,
        };
        let ran = self.run(method, decl, &call).await;
        watch.done = true;
        let class = ran.result.as_ref().err().map(error_class);
        let elapsed = watch.started.elapsed();
        crate::metrics::backend_call(&self.name, method, class, elapsed);
        tracing::debug!(
            backend = %self.name,
            method = %method,
            exit = %ran.exit(),
            error = class.unwrap_or("none"),
            elapsed_ms = elapsed.as_millis() as u64,
            "exec backend call"
        );
        ran.result
    }
}

/// What one run of the command gave.
struct Ran {
    /// How the command ended, if it ran.
    status: Option<ExitStatus>,
    result: Result<BackendReply, BackendError>,
}

impl Ran {
    fn failed(error: BackendError) -> Self {
        Self {
            status: None,
            result: Err(error),
        }
    }

    /// The exit status in words, for the log.
    fn exit(&self) -> String {
        match self.status {
            None => "none".to_owned(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => code.to_string(),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => "unknown".to_owned(),
            },
        }
    }
}

/// Counts a call dropped before it ended (its time was up, its operation
/// cancelled, or the process shut down); the group is killed by [`Group`].
struct Watch<'a> {
    backend: &'a str,
    method: &'a str,
    started: Instant,
    done: bool,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.done {
            let elapsed = self.started.elapsed();
            crate::metrics::backend_call(self.backend, self.method, Some("dropped"), elapsed);
            tracing::debug!(
                backend = %self.backend,
                method = %self.method,
                elapsed_ms = elapsed.as_millis() as u64,
                "exec backend call dropped; its process group is killed"
            );
        }
    }
}

/// A call's process group, killed (SIGKILL) when this drops.
struct Group(Option<Pid>);

impl Group {
    fn of(pid: Option<u32>) -> Self {
        Self(
            pid.and_then(|p| i32::try_from(p).ok())
                .filter(|p| *p > 1)
                .map(Pid::from_raw),
        )
    }

    fn kill(&self) {
        if let Some(group) = self.0 {
            // ESRCH: the group is empty already.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

fn error_class(error: &BackendError) -> &'static str {
    match error {
        BackendError::Transient(_) => "transient",
        BackendError::Permanent(_) => "permanent",
        BackendError::NotFound(_) => "not_found",
    }
}

/// The request on stdin: the same JSON as the HTTP driver's generic contract.
fn request_body(method: &str, call: &BackendCall) -> Vec<u8> {
    let r = &call.resource;
    let body = json!({
        "method": method,
        "idempotency_key": call.idempotency_key,
        "resource": {
            "id": r.id,
            "kind": r.kind,
            "name": r.name,
            "backend_id": r.backend_id,
            "runtime_state": r.runtime_state,
            "attributes": r.attributes,
            "status": r.status,
        },
        "params": call.params,
    });
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

/// Reads stdout to its end, failing as soon as it passes [`MAX_REPLY`].
async fn read_reply(
    stdout: Option<impl AsyncRead + Unpin>,
    method: &str,
) -> Result<Vec<u8>, BackendError> {
    let mut out = Vec::new();
    if let Some(stdout) = stdout {
        stdout
            .take(MAX_REPLY as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| BackendError::Transient(format!("reading the reply: {e}")))?;
    }
    if out.len() > MAX_REPLY {
        return Err(BackendError::Permanent(format!(
            "the reply of `{method}` is larger than 1 MiB; nothing from it is stored"
        )));
    }
    Ok(out)
}

/// Reads stderr to its end, keeping the last [`STDERR_TAIL`] bytes.
async fn read_tail(stderr: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut tail = Vec::new();
    let Some(mut stderr) = stderr else {
        return tail;
    };
    let mut chunk = [0u8; 8192];
    while let Ok(n @ 1..) = stderr.read(&mut chunk).await {
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > 2 * STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
    }
    tail
}

/// The last line of `stderr` with more than blanks, at most [`MAX_MESSAGE`] bytes.
fn last_line(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    if line.len() <= MAX_MESSAGE {
        return Some(line.to_owned());
    }
    let mut end = MAX_MESSAGE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}…", &line[..end]))
}

/// The reply's fields; other keys are ignored.
#[derive(Deserialize)]
struct WireReply {
    #[serde(default)]
    backend_id: Option<String>,
    #[serde(default)]
    runtime_state: Option<String>,
    #[serde(default)]
    status: Option<Map<String, Value>>,
    #[serde(default)]
    done: Option<bool>,
}

/// Reads a reply from stdout; the error says exactly what is wrong with it.
fn parse_reply(
    out: &[u8],
    method: &str,
    runtime_states: &[String],
    backend: &str,
) -> Result<BackendReply, String> {
    if out.iter().all(u8::is_ascii_whitespace) {
        return Ok(BackendReply::default());
    }
    let nothing = "nothing from it is stored";
    let value: Value = serde_json::from_slice(out)
        .map_err(|e| format!("the reply of `{method}` is not valid JSON ({e}); {nothing}"))?;
    if !value.is_object() {
        return Err(format!(
            "the reply of `{method}` is not a JSON object; {nothing}"
        ));
    }
    let reply: WireReply = serde_json::from_value(value)
        .map_err(|e| format!("the reply of `{method}` is not a valid reply ({e}); {nothing}"))?;
    if let Some(state) = &reply.runtime_state
        && !runtime_states.contains(state)
    {
        let mut shown: String = state.chars().take(100).collect();
        if shown.len() < state.len() {
            shown.push('…');
        }
        return Err(format!(
            "the reply of `{method}` names runtime state `{}`, which backend `{backend}` does not declare (declared: {}); {nothing}",
            shown.escape_debug(),
            if runtime_states.is_empty() {
                "none".to_owned()
            } else {
                runtime_states.join(", ")
            }
        ));
    }
    Ok(BackendReply {
        backend_id: reply.backend_id,
        runtime_state: reply.runtime_state,
        status: reply.status,
        done: reply.done,
    })
}

/// The program to run, absolute: a path with a `/` is relative to `dir`,
/// a bare name is looked up in `path`. It must be an executable file.
fn resolve(program: &str, dir: &Path, path: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        let file = dir.join(program);
        return match std::fs::metadata(&file) {
            Ok(meta) if !meta.is_file() => Err(format!("`{}` is not a file", file.display())),
            Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
                Err(format!("`{}` is not executable", file.display()))
            }
            Ok(_) => Ok(file),
            Err(e) => Err(format!("cannot run `{}`: {e}", file.display())),
        };
    }
    std::env::split_paths(path)
        .map(|d| d.join(program))
        .find(|f| {
            std::fs::metadata(f).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| format!("no executable `{program}` in PATH"))
}

/// An environment variable's name must be plain, and not one executord sets.
fn check_variable(key: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain {
        return Err(format!(
            "env: `{}` is not a valid variable name (letters, digits and `_`, not starting with a digit)",
            key.escape_debug()
        ));
    }
    if key == METHOD_VARIABLE {
        return Err(format!("env: `{METHOD_VARIABLE}` is set by executord"));
    }
    Ok(())
}

fn spawn_error(program: &Path, e: &std::io::Error) -> BackendError {
    let message = format!("cannot run `{}`: {e}", program.display());
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            BackendError::Permanent(message)
        }
        _ => BackendError::Transient(message),
    }
}

#[cfg(test)]
mod tests {
    use super::{last_line, parse_reply};
    use crate::backend::BackendReply;

    #[test]
    fn a_reply_is_read_or_refused_with_its_reason() {
        let states = vec!["online".to_owned()];
        let parse = |text: &str| parse_reply(text.as_bytes(), "m", &states, "b");
        assert_eq!(parse(" \n"), Ok(BackendReply::default()));
        let reply = parse(r#"{"backend_id": "x", "runtime_state": "online", "status": {"a": 1}, "done": true, "extra": 1}"#).unwrap();
        assert_eq!(reply.backend_id.as_deref(), Some("x"));
        assert_eq!(reply.done, Some(true));
        assert!(parse("{").unwrap_err().contains("is not valid JSON"));
        assert!(parse("[]").unwrap_err().contains("is not a JSON object"));
        assert!(
            parse(r#"{"done": "yes"}"#)
                .unwrap_err()
                .contains("is not a valid reply")
        );
        let message = parse(r#"{"runtime_state": "gone"}"#).unwrap_err();
        assert!(
            message.contains(
                "names runtime state `gone`, which backend `b` does not declare (declared: online)"
            ),
            "{message}"
        );
    }

    #[test]
    fn the_message_is_the_last_line_with_text() {
        assert_eq!(last_line(b"first\nsecond\n  \n\n"), Some("second".into()));
        assert_eq!(last_line(b" \n"), None);
        let long = "é".repeat(800);
        let line = last_line(long.as_bytes()).unwrap();
        assert!(line.len() <= 1000 + '…'.len_utf8() && line.ends_with('…'));
    }
}
