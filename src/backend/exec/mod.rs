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

mod process;
mod reply;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Semaphore;

use self::process::{
    Group, check_variable, last_line, read_reply, read_tail, resolve, spawn_error,
};
use self::reply::{parse_reply, request_body};
use super::declared::{ExecDecl, MethodDecl, NotFound, Secret, expand, method_infos};
use super::{
    Backend, BackendCall, BackendError, BackendReply, CallDetails, MethodInfo, MethodRole,
    details_body,
};

/// The largest reply read from stdout; a longer one fails the call.
pub const MAX_REPLY: usize = 1024 * 1024;
/// The exit status of a transient failure (`EX_TEMPFAIL` in `sysexits.h`).
pub const EXIT_TRANSIENT: i32 = 75;
/// The exit status that means "no such object".
pub const EXIT_NOT_FOUND: i32 = 79;
/// The variable that names the method, besides the last argument.
pub const METHOD_VARIABLE: &str = "EXECUTORD_METHOD";

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

    /// A message to store: `text` with every expanded value of the
    /// environment replaced by `<redacted>` (a command that prints its own
    /// secret cannot put it in an error), then cut to [`MAX_MESSAGE`] bytes.
    fn message(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.masked {
            if text.contains(secret.expose()) {
                text = text.replace(secret.expose(), "<redacted>");
            }
        }
        if text.len() <= MAX_MESSAGE {
            return text;
        }
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
        text
    }

    /// Runs the command once and reads what it says.
    async fn run(&self, method: &str, decl: &MethodDecl, call: &BackendCall) -> Ran {
        let request = match request_body(method, call) {
            Ok(request) => request,
            Err(e) => return Ran::failed(BackendError::Permanent(e)),
        };
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
        let message = last_line(&err).map(|line| self.message(&line));
        let result = match status.code() {
            Some(0) => parse_reply(&out, method, &self.runtime_states, &self.name)
                .map_err(|e| BackendError::Permanent(self.message(&e))),
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
        // A command that ended with a status other than 0 explains itself
        // with it and its stderr.
        let result = match (result, status.code()) {
            (Err(e), Some(code)) if code != 0 => Err(e.with_details(CallDetails {
                http_status: None,
                exit_code: Some(code),
                body: details_body(&err),
            })),
            (result, _) => result,
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
        let outcome = ran.result.as_ref().map_or_else(error_class, |_| "ok");
        let elapsed = watch.started.elapsed();
        crate::metrics::backend_call(&self.name, method, outcome, elapsed);
        tracing::debug!(
            backend = %self.name,
            method = %method,
            exit = %ran.exit(),
            outcome,
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
            crate::metrics::backend_call(self.backend, self.method, "abandoned", elapsed);
            tracing::debug!(
                backend = %self.backend,
                method = %self.method,
                elapsed_ms = elapsed.as_millis() as u64,
                "exec backend call dropped; its process group is killed"
            );
        }
    }
}

fn error_class(error: &BackendError) -> &'static str {
    error.class().as_str()
}
