//! Backends declared in the catalog (`[backends.NAME]`), driven over HTTP
//! or by running a command: any system that speaks HTTP, or that a command
//! can drive, without a line of Rust. The wire contract is published in
//! `docs/BACKENDS.md`; the catalog keys in `docs/CATALOG.md`.
//!
//! Both drivers share the method and runtime-state declarations, so the
//! catalog's kinds are checked against them at start-up exactly as against
//! a built-in backend.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::{Backend, MethodInfo, MethodRole};

/// One `[backends.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(tag = "driver", rename_all = "snake_case")]
pub enum BackendDecl {
    /// `driver = "http"`.
    Http(HttpDecl),
    /// `driver = "exec"`.
    Exec(ExecDecl),
}

/// A backend reached over HTTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDecl {
    /// Where its methods live, e.g. `http://127.0.0.1:9000/v1` (may hold
    /// `${env:X}` and `${file:/path}`).
    pub base_url: String,
    /// Headers sent with every call (values may hold `${env:X}` and
    /// `${file:/path}`; they are never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest one call may take, in seconds (a step's own `timeout_s` still wins).
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Calls in flight to this backend, per process.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// The runtime states its objects can report; a reply naming another
    /// fails the step.
    #[serde(default)]
    pub runtime_states: Vec<String>,
    /// Its methods, by name.
    pub methods: BTreeMap<String, MethodDecl>,
}

/// A backend driven by running a command, once per call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecDecl {
    /// The program and its first arguments; a relative program path is
    /// relative to the catalog file. The method name is added last.
    pub command: Vec<String>,
    /// The environment of the command, besides `PATH` (values may hold
    /// `${env:X}` and `${file:/path}`; they are never logged).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Longest one call may take, in seconds (a step's own `timeout_s` still wins).
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Calls in flight to this backend, per process.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// The runtime states its objects can report; a reply naming another
    /// fails the step.
    #[serde(default)]
    pub runtime_states: Vec<String>,
    /// Its methods, by name.
    pub methods: BTreeMap<String, MethodDecl>,
}

/// One method of a declared backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodDecl {
    /// What it is for: `effect`, `pull` or `check`.
    pub role: MethodRole,
    /// HTTP: the path under `base_url` (default `/<method>`).
    #[serde(default)]
    pub path: Option<String>,
    /// What "not found" means for this method: an error (the default) or
    /// success (a delete of an object already gone).
    #[serde(default)]
    pub not_found: NotFound,
    /// HTTP: how to call an API that does not speak the generic contract.
    #[serde(default)]
    pub request: Option<RequestDecl>,
    /// HTTP with `request`: where the reply's fields come from.
    #[serde(default)]
    pub reply: Option<ReplyDecl>,
    /// HTTP: status code (`"404"`) → what it means, overriding the default classes.
    #[serde(default)]
    pub statuses: BTreeMap<String, StatusClass>,
}

/// How an `http` method calls an API that does not speak the generic
/// contract. Its strings are templates: `{resource.name}`, `{params.x.y}`,
/// ... (see `docs/BACKENDS.md`), checked when the backend is built.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDecl {
    /// The HTTP method, e.g. `PUT`.
    pub method: String,
    /// The path under `base_url`; placeholders in it are URL-encoded.
    pub path: String,
    /// Query parameters, name → template; values are URL-encoded.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// The JSON body: its strings are templates, and a string that is one
    /// placeholder alone takes the value's JSON type.
    #[serde(default)]
    pub body: Option<Value>,
}

/// Where the fields of a templated method's reply come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyDecl {
    /// The backend's id of the object.
    #[serde(default)]
    pub backend_id: Option<ReplySource>,
    /// The object's runtime state (one the backend declares).
    #[serde(default)]
    pub runtime_state: Option<ReplySource>,
    /// For check methods: whether the condition holds (a boolean).
    #[serde(default)]
    pub done: Option<ReplySource>,
    /// Keys merged into the resource's status.
    #[serde(default)]
    pub status: BTreeMap<String, ReplySource>,
}

/// Where one field of a reply comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Value")]
pub enum ReplySource {
    /// A template string over the call (`"{resource.name}"`).
    Template(String),
    /// `{ pointer = "/json/pointer" }`: an RFC 6901 pointer into the response body.
    Pointer(String),
    /// `{ value = … }`: a constant.
    Value(Value),
}

impl TryFrom<Value> for ReplySource {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, String> {
        const EXPECTED: &str =
            "expected a template string, `{ pointer = \"/json/pointer\" }` or `{ value = … }`";
        match value {
            Value::String(text) => Ok(Self::Template(text)),
            Value::Object(mut table) if table.len() == 1 => {
                match (table.remove("pointer"), table.remove("value")) {
                    (Some(Value::String(pointer)), _) => Ok(Self::Pointer(pointer)),
                    (Some(_), _) => Err("`pointer` must be a string".to_owned()),
                    (None, Some(value)) => Ok(Self::Value(value)),
                    (None, None) => Err(EXPECTED.to_owned()),
                }
            }
            other => Err(format!("{EXPECTED}, not `{other}`")),
        }
    }
}

/// What an HTTP status means for a method (`statuses = { 404 = "success" }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusClass {
    /// The call succeeded.
    Success,
    /// A check method: the condition holds.
    Done,
    /// A check method: not yet.
    NotDone,
    /// The object is gone (the method's `not_found` still applies).
    NotFound,
    /// Worth retrying (honouring `Retry-After`).
    Transient,
    /// Retrying cannot help: the step fails.
    Permanent,
}

/// What a "not found" answer means for a method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotFound {
    /// The object is gone: an error (a pull errs the resource).
    #[default]
    Error,
    /// Done: the object is already gone, as a delete wanted.
    Success,
}

/// Declared methods as [`Backend::methods`] lists them.
pub fn method_infos(methods: &BTreeMap<String, MethodDecl>) -> Vec<MethodInfo> {
    methods
        .iter()
        .map(|(name, m)| MethodInfo {
            name: name.clone().into(),
            role: m.role,
        })
        .collect()
}

/// A value from the catalog that may hold a secret: shown as `<redacted>`
/// in every `Debug` and `Display`, so it cannot reach a log or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself, to send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Expands `${env:NAME}` and `${file:/path}` in `text` (at start-up). A
/// missing variable or unreadable file is an error that names it, never a
/// value; a file's trailing newline is dropped. `$$` is a literal `$`.
pub fn expand(text: &str) -> Result<Secret, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(inner) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = inner
            .find('}')
            .ok_or_else(|| "an unclosed `${` (write `$$` for a literal `$`)".to_owned())?;
        let (source, name) = inner[..end].split_once(':').ok_or_else(|| {
            format!(
                "`${{{}}}` names no source: use `${{env:NAME}}` or `${{file:/path}}`",
                &inner[..end]
            )
        })?;
        match source {
            "env" => out.push_str(
                &std::env::var(name)
                    .map_err(|_| format!("the environment variable `{name}` is not set"))?,
            ),
            "file" => {
                let text = std::fs::read_to_string(name)
                    .map_err(|e| format!("cannot read the file `{name}`: {e}"))?;
                out.push_str(text.strip_suffix('\n').unwrap_or(&text));
            }
            other => {
                return Err(format!(
                    "unknown source `{other}` in `${{{other}:…}}`: use `env` or `file`"
                ));
            }
        }
        rest = &inner[end + 1..];
    }
    out.push_str(rest);
    Ok(Secret(out))
}

/// Builds the backend `name` declares, for a catalog file in `dir`;
/// the error says what is wrong (its place is the caller's to add).
pub fn build(name: &str, decl: BackendDecl, dir: &Path) -> Result<Arc<dyn Backend>, String> {
    match decl {
        BackendDecl::Http(decl) => Ok(Arc::new(super::http::HttpBackend::new(name, decl)?)),
        BackendDecl::Exec(decl) => Ok(Arc::new(super::exec::ExecBackend::new(name, decl, dir)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::{BackendDecl, Secret, expand};

    #[test]
    fn a_declaration_with_an_unknown_key_is_refused() {
        let good =
            "driver = \"exec\"\ncommand = [\"./b.sh\"]\nmethods.create = { role = \"effect\" }\n";
        let decl: BackendDecl = toml::from_str(good).unwrap();
        assert!(matches!(decl, BackendDecl::Exec(_)));
        let typo = format!("{good}timout_s = 3\n");
        assert!(toml::from_str::<BackendDecl>(&typo).is_err());
        let method_typo = good.replace("role =", "rol =");
        assert!(toml::from_str::<BackendDecl>(&method_typo).is_err());
    }

    #[test]
    fn environment_and_files_are_expanded_and_never_shown() {
        let name = "EXECUTORD_TEST_EXPAND_TOKEN";
        let file = std::env::temp_dir().join(format!("executord-expand-{}", std::process::id()));
        std::fs::write(&file, "from-a-file\n").unwrap();
        let text = format!("Bearer ${{file:{}}} $$5 ${{env:PATH}}", file.display());
        let secret = expand(&text).unwrap();
        assert!(secret.expose().starts_with("Bearer from-a-file $5 /"));
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        let missing = expand(&format!("${{env:{name}}}")).unwrap_err();
        assert!(missing.contains(name), "{missing}");
        assert!(expand("${nope}").is_err());
        assert!(expand("${vault:x}").is_err());
        assert!(expand("${env:UNCLOSED").is_err());
        assert_eq!(expand("a $ b").unwrap(), Secret("a $ b".into()));
        std::fs::remove_file(file).unwrap();
    }
}
