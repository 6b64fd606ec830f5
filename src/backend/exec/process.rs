//! One command run: its process group, what it writes, and finding its program.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{MAX_REPLY, METHOD_VARIABLE};
use crate::backend::BackendError;

/// How much of stderr is kept (its end) to find the last line in.
const STDERR_TAIL: usize = 64 * 1024;

/// A call's process group, killed (SIGKILL) once: when the command exits,
/// or when this drops (the call's future was dropped mid-run). Once is
/// enough: a process being killed cannot fork any more, and the group's
/// number is not killed again after it may have become free for reuse.
pub(super) struct Group(AtomicI32);

impl Group {
    pub(super) fn of(pid: Option<u32>) -> Self {
        let pgid = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1);
        Self(AtomicI32::new(pgid.unwrap_or(0)))
    }

    pub(super) fn kill(&self) {
        let pgid = self.0.swap(0, Ordering::SeqCst);
        if pgid > 1 {
            // ESRCH: the group is empty already.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads stdout to its end, failing as soon as it passes [`MAX_REPLY`].
pub(super) async fn read_reply(
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
pub(super) async fn read_tail(stderr: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
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

/// The last line of `stderr` with more than blanks.
pub(super) fn last_line(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_owned)
}

/// The program to run, absolute: a path with a `/` is relative to `dir`,
/// a bare name is looked up in `path`. It must be an executable file.
pub(super) fn resolve(program: &str, dir: &Path, path: &str) -> Result<PathBuf, String> {
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
pub(super) fn check_variable(key: &str) -> Result<(), String> {
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

pub(super) fn spawn_error(program: &Path, e: &std::io::Error) -> BackendError {
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
    use super::last_line;

    #[test]
    fn the_message_is_the_last_line_with_text() {
        assert_eq!(
            last_line(b"first\nsecond\n  \n\n").as_deref(),
            Some("second")
        );
        assert_eq!(last_line(b" \n"), None);
        assert_eq!(
            last_line(b"bad \xff byte\n").as_deref(),
            Some("bad \u{fffd} byte")
        );
    }
}
