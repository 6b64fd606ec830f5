//! Checking a catalog: the file as written (`Raw*`), each backend it
//! declares built, each kind checked against its backend, and every error
//! found named by its place.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{Action, CatalogError, ChildDecl, Form, Kind, Schema, Step, TENANT_SCOPE, error};
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
    let others: BTreeMap<String, Other> = raw
        .kinds
        .iter()
        .map(|(name, k)| {
            let other = Other {
                backend: k.backend.clone(),
                composite: !k.children.is_empty(),
            };
            (name.clone(), other)
        })
        .collect();
    let mut kinds = BTreeMap::new();
    for (name, raw_kind) in raw.kinds {
        let checked = check_name("kinds", "kind", &name)
            .and_then(|()| check_kind(&name, raw_kind, &all, &others));
        match checked {
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
    import: Option<Vec<Form>>,
    #[serde(default)]
    queue: Option<Queue>,
    #[serde(default)]
    children: BTreeMap<String, RawChild>,
    #[serde(default)]
    create: Vec<Form>,
    #[serde(default)]
    update: Vec<Form>,
    #[serde(default)]
    delete: Vec<Form>,
    #[serde(default)]
    compensate: Vec<Form>,
    #[serde(default)]
    actions: BTreeMap<String, RawAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChild {
    kind: String,
    #[serde(default)]
    each: Option<String>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    inherit: Vec<String>,
}

/// What checking one kind needs to know of the others.
struct Other {
    backend: String,
    composite: bool,
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
    chain: Vec<Form>,
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

fn check_kind(
    name: &str,
    raw: RawKind,
    backends: &Backends,
    others: &BTreeMap<String, Other>,
) -> Result<Kind, CatalogError> {
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
    let schema = Schema::compile(&format!("{place}.schema"), raw.schema)?;
    let children = check_children(&place, raw.children, &schema, others)?;
    let checker = StepChecker {
        backend_name: &raw.backend,
        backend: backend.as_ref(),
        children: &children,
        backends,
        others,
    };
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
        ("compensate", &raw.compensate),
    ] {
        checker.chain(&format!("{place}.{chain_name}"), chain, &schema)?;
    }
    if !raw.compensate.is_empty() && children.is_empty() {
        return Err(error(
            format!("{place}.compensate"),
            "only a kind with children has something to compensate",
        ));
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
    for step in chains.flatten().flat_map(Form::own_steps) {
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
        children,
        create: raw.create,
        update: raw.update,
        delete: raw.delete,
        compensate: raw.compensate,
        actions,
    })
}

/// Checks a kind's children: each role names another kind that has no
/// children itself, and the attributes it reads are the parent's.
fn check_children(
    place: &str,
    raw: BTreeMap<String, RawChild>,
    schema: &Schema,
    others: &BTreeMap<String, Other>,
) -> Result<BTreeMap<String, ChildDecl>, CatalogError> {
    let mut children = BTreeMap::new();
    for (role, child) in raw {
        check_name(&format!("{place}.children"), "role", &role)?;
        let place = format!("{place}.children.{role}");
        match others.get(&child.kind) {
            None => {
                return Err(error(
                    format!("{place}.kind"),
                    format!("unknown kind `{}`", child.kind),
                ));
            }
            Some(other) if other.composite => {
                return Err(error(
                    format!("{place}.kind"),
                    format!(
                        "`{}` has children of its own; children do not nest",
                        child.kind
                    ),
                ));
            }
            Some(_) => {}
        }
        if child.each.is_some() && child.when.is_some() {
            return Err(error(place, "a role takes `each` or `when`, not both"));
        }
        for (field, attribute) in [("each", &child.each), ("when", &child.when)] {
            if let Some(attribute) = attribute
                && !schema.has_property(attribute)
            {
                return Err(error(
                    format!("{place}.{field}"),
                    format!("`{attribute}` is not an attribute of the schema"),
                ));
            }
        }
        if let Some(attribute) = child.inherit.iter().find(|a| !schema.has_property(a)) {
            return Err(error(
                format!("{place}.inherit"),
                format!("`{attribute}` is not an attribute of the schema"),
            ));
        }
        children.insert(
            role,
            ChildDecl {
                kind: child.kind,
                each: child.each,
                when: child.when,
                inherit: child.inherit,
            },
        );
    }
    Ok(children)
}

struct StepChecker<'a> {
    backend_name: &'a str,
    backend: &'a dyn crate::backend::Backend,
    children: &'a BTreeMap<String, ChildDecl>,
    backends: &'a Backends,
    others: &'a BTreeMap<String, Other>,
}

impl StepChecker<'_> {
    fn chain(&self, place: &str, chain: &[Form], attributes: &Schema) -> Result<(), CatalogError> {
        for (i, form) in chain.iter().enumerate() {
            let place = format!("{place}[{i}]");
            match form {
                Form::Step { step, on: None } => self.step(&place, step, attributes)?,
                Form::Step {
                    step,
                    on: Some(role),
                } => {
                    let child = self.role(&place, role)?;
                    if matches!(step, Step::Throttle { .. } | Step::StateTransition { .. }) {
                        return Err(error(
                            place,
                            "a throttle or state transition acts on the resource itself, not `on` its children",
                        ));
                    }
                    let other = &self.others[&child.kind];
                    let backend = self.backends.get(&other.backend).ok_or_else(|| {
                        error(&place, format!("unknown backend `{}`", other.backend))
                    })?;
                    let checker = StepChecker {
                        backend_name: &other.backend,
                        backend: backend.as_ref(),
                        ..*self
                    };
                    checker.step(&place, step, attributes)?;
                }
                Form::Children { role, .. } => {
                    self.role(&place, role)?;
                }
                Form::Parallel(branches) => {
                    for (b, branch) in branches.iter().enumerate() {
                        self.chain(&format!("{place}.parallel[{b}]"), branch, attributes)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn role(&self, place: &str, role: &str) -> Result<&ChildDecl, CatalogError> {
        self.children.get(role).ok_or_else(|| {
            let known: Vec<&str> = self.children.keys().map(String::as_str).collect();
            error(
                place,
                format!(
                    "the kind has no children `{role}` (its roles: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
    }

    fn step(&self, place: &str, step: &Step, attributes: &Schema) -> Result<(), CatalogError> {
        {
            let place = place.to_owned();
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
