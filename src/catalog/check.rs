//! Checking a catalog: the file as written (`Raw*`), each backend it
//! declares built, each kind checked against its backend, and every error
//! found named by its place.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{Action, CatalogError, Kind, Schema, Step, TENANT_SCOPE, error};
use crate::backend::declared::{self, BackendDecl};
use crate::backend::{Backends, MethodRole};
use crate::domain::{Queue, ResourceState};

/// Parses and checks catalog text (see `Catalog::check`): its kinds and the
/// backends it declares, or every error found.
pub(super) fn check(
    text: &str,
    backends: &Backends,
    dir: &Path,
) -> Result<(BTreeMap<String, Kind>, Backends), Vec<CatalogError>> {
    let raw: RawCatalog = toml::from_str(text).map_err(|e| vec![error("", e.to_string())])?;
    let mut errors = Vec::new();
    let mut declared = Backends::new();
    for (name, table) in raw.backends {
        match declare(&name, table, backends, dir) {
            Ok(backend) => declared = declared.with(&name, backend),
            Err(e) => errors.push(e),
        }
    }
    let all = backends.and(&declared);
    let mut kinds = BTreeMap::new();
    for (name, raw_kind) in raw.kinds {
        match check_name("kinds", "kind", &name).and_then(|()| check_kind(&name, raw_kind, &all)) {
            Ok(kind) => {
                kinds.insert(name, kind);
            }
            Err(e) => errors.push(e),
        }
    }
    if kinds.is_empty() && errors.is_empty() {
        errors.push(error("kinds", "the catalog defines no kind"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((kinds, declared))
}

/// Whether `name` may name a kind or an action. Names are path segments and
/// query values of the API (`/actions/{action}`, `?kind=`) and labels of
/// metrics, so they are kept plain: a lowercase ASCII letter, then up to 62
/// lowercase letters, digits, `_` or `-`.
fn is_plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn check_name(place: &str, what: &str, name: &str) -> Result<(), CatalogError> {
    if is_plain_name(name) {
        return Ok(());
    }
    Err(error(
        place,
        format!(
            "`{}` is not a valid {what} name: use a lowercase letter, then up to 62 \
             lowercase letters, digits, `_` or `-`",
            name.escape_debug()
        ),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    backends: BTreeMap<String, toml::Value>,
    kinds: BTreeMap<String, RawKind>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    #[serde(default)]
    description: String,
    backend: String,
    schema: Value,
    #[serde(default)]
    updatable: Vec<String>,
    #[serde(default)]
    pull_method: Option<String>,
    #[serde(default)]
    list_method: Option<String>,
    #[serde(default)]
    pull_interval_s: Option<u64>,
    #[serde(default)]
    import: Option<Vec<Step>>,
    #[serde(default)]
    queue: Option<Queue>,
    #[serde(default)]
    create: Vec<Step>,
    #[serde(default)]
    update: Vec<Step>,
    #[serde(default)]
    delete: Vec<Step>,
    #[serde(default)]
    actions: BTreeMap<String, RawAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    #[serde(default)]
    description: String,
    #[serde(default = "default_action_states")]
    states: Vec<ResourceState>,
    #[serde(default)]
    runtime_states: Vec<String>,
    #[serde(default)]
    runtime_state_on_success: Option<String>,
    #[serde(default = "empty_object_schema")]
    params: Value,
    #[serde(default)]
    increase_only: Vec<String>,
    #[serde(default)]
    queue: Option<Queue>,
    chain: Vec<Step>,
}

fn default_action_states() -> Vec<ResourceState> {
    vec![ResourceState::Ok, ResourceState::Erred]
}

fn empty_object_schema() -> Value {
    serde_json::json!({"type": "object", "additionalProperties": false})
}

/// Builds the backend a `[backends.NAME]` table declares.
fn declare(
    name: &str,
    table: toml::Value,
    builtin: &Backends,
    dir: &Path,
) -> Result<std::sync::Arc<dyn crate::backend::Backend>, CatalogError> {
    let place = format!("backends.{name}");
    check_name("backends", "backend", name)?;
    if builtin.get(name).is_some() {
        return Err(error(
            place,
            format!("`{name}` is a built-in backend's name"),
        ));
    }
    let decl: BackendDecl = table
        .try_into()
        .map_err(|e: toml::de::Error| error(&place, e.message().to_owned()))?;
    declared::build(name, decl, dir).map_err(|e| error(&place, e))
}

fn check_kind(name: &str, raw: RawKind, backends: &Backends) -> Result<Kind, CatalogError> {
    let place = format!("kinds.{name}");
    let backend = backends.get(&raw.backend).ok_or_else(|| {
        error(
            format!("{place}.backend"),
            format!(
                "unknown backend `{}` (known: {})",
                raw.backend,
                backends.names().join(", ")
            ),
        )
    })?;
    let checker = StepChecker {
        backend_name: &raw.backend,
        backend: backend.as_ref(),
    };
    let schema = Schema::compile(&format!("{place}.schema"), raw.schema)?;
    for field in &raw.updatable {
        if field != "name" && !schema.has_property(field) {
            return Err(error(
                format!("{place}.updatable"),
                format!("`{field}` is neither `name` nor an attribute of the schema"),
            ));
        }
    }
    if let Some(method) = &raw.pull_method {
        checker.method(&format!("{place}.pull_method"), method, MethodRole::Pull)?;
    }
    if let Some(method) = &raw.list_method {
        checker.method(&format!("{place}.list_method"), method, MethodRole::List)?;
    }
    if raw.pull_interval_s == Some(0) {
        return Err(error(
            format!("{place}.pull_interval_s"),
            "must be at least 1",
        ));
    }
    if let Some(import) = &raw.import {
        checker.chain(&format!("{place}.import"), import, &schema)?;
    } else if raw.pull_method.is_none() && raw.list_method.is_some() {
        return Err(error(
            format!("{place}.list_method"),
            "listing is for import, which needs a pull_method or an import chain",
        ));
    }
    for (chain_name, chain) in [
        ("create", &raw.create),
        ("update", &raw.update),
        ("delete", &raw.delete),
    ] {
        checker.chain(&format!("{place}.{chain_name}"), chain, &schema)?;
    }
    let queue = raw.queue.unwrap_or(Queue::Regular);
    let mut actions = BTreeMap::new();
    for (action_name, raw_action) in raw.actions {
        check_name(&format!("{place}.actions"), "action", &action_name)?;
        let place = format!("{place}.actions.{action_name}");
        let params = Schema::compile(&format!("{place}.params"), raw_action.params)?;
        checker.chain(&format!("{place}.chain"), &raw_action.chain, &schema)?;
        for state in raw_action
            .runtime_states
            .iter()
            .chain(&raw_action.runtime_state_on_success)
        {
            checker.runtime_state(&place, state)?;
        }
        if raw_action.states.is_empty() {
            return Err(error(
                format!("{place}.states"),
                "must name at least one state",
            ));
        }
        if let Some(bad) = raw_action.states.iter().find(|s| s.is_transitional()) {
            return Err(error(
                format!("{place}.states"),
                format!("`{bad}` is a transitional state; actions start from `ok` or `erred`"),
            ));
        }
        for field in &raw_action.increase_only {
            if !params.has_property(field) || !schema.has_property(field) {
                return Err(error(
                    format!("{place}.increase_only"),
                    format!("`{field}` must be both a parameter and an attribute"),
                ));
            }
        }
        actions.insert(
            action_name.clone(),
            Action {
                name: action_name,
                description: raw_action.description,
                states: raw_action.states,
                runtime_states: raw_action.runtime_states,
                runtime_state_on_success: raw_action.runtime_state_on_success,
                params,
                increase_only: raw_action.increase_only,
                queue: raw_action.queue.unwrap_or(queue),
                chain: raw_action.chain,
            },
        );
    }
    let (mut healthy, mut erred) = (Vec::new(), Vec::new());
    let chains = [&raw.create, &raw.update, &raw.delete]
        .into_iter()
        .chain(raw.import.as_ref())
        .chain(actions.values().map(|a: &Action| &a.chain));
    for step in chains.flatten() {
        if let Step::PollRuntimeState {
            success,
            erred: bad,
            ..
        } = step
        {
            healthy.extend(success.iter().cloned());
            erred.extend(bad.iter().cloned());
        }
    }
    healthy.extend(
        actions
            .values()
            .filter_map(|a| a.runtime_state_on_success.clone()),
    );
    for list in [&mut healthy, &mut erred] {
        list.sort();
        list.dedup();
    }
    Ok(Kind {
        name: name.to_owned(),
        healthy_runtime_states: healthy,
        erred_runtime_states: erred,
        description: raw.description,
        backend: raw.backend,
        schema,
        updatable: raw.updatable,
        pull_method: raw.pull_method,
        list_method: raw.list_method,
        pull_interval: raw.pull_interval_s.map(std::time::Duration::from_secs),
        import: raw.import,
        runtime_states: backend
            .runtime_states()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        queue,
        create: raw.create,
        update: raw.update,
        delete: raw.delete,
        actions,
    })
}

struct StepChecker<'a> {
    backend_name: &'a str,
    backend: &'a dyn crate::backend::Backend,
}

impl StepChecker<'_> {
    fn chain(&self, place: &str, chain: &[Step], attributes: &Schema) -> Result<(), CatalogError> {
        for (i, step) in chain.iter().enumerate() {
            let place = format!("{place}[{i}]");
            match step {
                Step::StateTransition { .. } => {}
                Step::BackendMethod {
                    method,
                    max_attempts,
                    ..
                } => {
                    self.method(&place, method, MethodRole::Effect)?;
                    if max_attempts.is_some_and(|n| n < 1) {
                        return Err(error(place, "max_attempts must be at least 1"));
                    }
                }
                Step::PollRuntimeState {
                    method,
                    success,
                    erred,
                    interval_ms,
                    ..
                } => {
                    self.method(&place, method, MethodRole::Pull)?;
                    if success.is_empty() {
                        return Err(error(place, "success must name at least one runtime state"));
                    }
                    for state in success.iter().chain(erred) {
                        self.runtime_state(&place, state)?;
                    }
                    check_interval(&place, *interval_ms)?;
                }
                Step::PollBackendCheck {
                    method,
                    interval_ms,
                    ..
                } => {
                    self.method(&place, method, MethodRole::Check)?;
                    check_interval(&place, *interval_ms)?;
                }
                Step::Throttle { scope, limit, .. } => {
                    if *limit < 1 {
                        return Err(error(place, "limit must be at least 1"));
                    }
                    if scope != TENANT_SCOPE && !attributes.has_property(scope) {
                        return Err(error(
                            place,
                            format!("scope `{scope}` is not an attribute of the schema"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn method(&self, place: &str, method: &str, role: MethodRole) -> Result<(), CatalogError> {
        match self.backend.methods().iter().find(|m| m.name == method) {
            None => Err(error(
                place,
                format!("backend `{}` has no method `{method}`", self.backend_name),
            )),
            Some(m) if m.role != role => Err(error(
                place,
                format!(
                    "`{method}` is {}; this step needs {}",
                    a_method(m.role),
                    a_method(role)
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    fn runtime_state(&self, place: &str, state: &str) -> Result<(), CatalogError> {
        if self.backend.runtime_states().contains(&state) {
            Ok(())
        } else {
            Err(error(
                place,
                format!(
                    "backend `{}` has no runtime state `{state}`",
                    self.backend_name
                ),
            ))
        }
    }
}

/// A role in words, with its article.
fn a_method(role: MethodRole) -> &'static str {
    match role {
        MethodRole::Effect => "an effect method",
        MethodRole::Pull => "a pull method",
        MethodRole::Check => "a check method",
        MethodRole::List => "a list method",
    }
}

fn check_interval(place: &str, interval_ms: u64) -> Result<(), CatalogError> {
    if interval_ms == 0 {
        return Err(error(place, "interval_ms must be at least 1"));
    }
    Ok(())
}
