//! The kinds catalog: what each kind of resource is, and the chains its
//! executors run. Kinds are data (TOML); a file that names an unknown task
//! type, backend method, runtime state or a broken schema is refused at
//! start-up with an error that names the place.

mod check;
mod form;
mod step;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::backend::Backends;
use crate::domain::{FieldError, Queue, ResourceState};

pub use form::{ChildChain, Form};
pub use step::{Job, JobArgs, Step, TENANT_SCOPE};

/// The catalog used when none is configured.
pub const DEFAULT_CATALOG: &str = include_str!("default.toml");

/// A catalog that cannot be used, and where, e.g. `catalog kinds.toml:
/// kinds.instance.create[1]: backend `sim` has no method `create_instanse``.
#[derive(Debug, thiserror::Error)]
pub struct CatalogError {
    /// The file, when the catalog was read from one.
    pub file: Option<PathBuf>,
    /// Where in the catalog, e.g. `kinds.instance.actions.stop.chain[1]`;
    /// empty when the whole file is at fault (it cannot be read or parsed).
    pub place: String,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("catalog")?;
        let file = self.file.as_ref().map(|p| p.display().to_string());
        let parts = file.iter().map(String::as_str).chain([self.place.as_str()]);
        for (i, part) in parts.filter(|p| !p.is_empty()).enumerate() {
            write!(f, "{}{part}", if i == 0 { " " } else { ": " })?;
        }
        write!(f, ": {}", self.message)
    }
}

pub(super) fn error(place: impl Into<String>, message: impl Into<String>) -> CatalogError {
    CatalogError {
        file: None,
        place: place.into(),
        message: message.into(),
    }
}

/// A compiled JSON Schema, kept with its source for the API to show.
pub struct Schema {
    source: Value,
    validator: jsonschema::Validator,
}

impl Schema {
    fn compile(place: &str, source: Value) -> Result<Self, CatalogError> {
        if source.get("type").and_then(Value::as_str) != Some("object") {
            return Err(error(
                place,
                "must be a JSON Schema with \"type\": \"object\"",
            ));
        }
        let validator = jsonschema::validator_for(&source).map_err(|e| {
            let pointer = e.instance_path().as_str();
            let at = if pointer.is_empty() { "/" } else { pointer };
            error(place, format!("invalid JSON Schema at {at}: {e}"))
        })?;
        Ok(Self { source, validator })
    }

    /// The schema as written.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Whether the schema declares a top-level property `name`.
    pub fn has_property(&self, name: &str) -> bool {
        self.source
            .get("properties")
            .and_then(|p| p.get(name))
            .is_some()
    }

    /// Every violation in `instance`, each with a JSON pointer under `prefix`.
    pub fn validate(&self, prefix: &str, instance: &Value) -> Vec<FieldError> {
        self.validator
            .iter_errors(instance)
            .map(|e| {
                FieldError::new(
                    format!("{prefix}{}", e.instance_path().as_str()),
                    e.to_string(),
                )
            })
            .collect()
    }
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

/// A kind of resource.
#[derive(Debug)]
pub struct Kind {
    /// The kind's name, e.g. `instance`.
    pub name: String,
    /// What it is, for people.
    pub description: String,
    /// The backend its chains call.
    pub backend: String,
    /// The JSON Schema of its attributes.
    pub schema: Schema,
    /// What an update may change: `name` and/or attribute names.
    pub updatable: Vec<String>,
    /// The backend method that reads an object's runtime state.
    pub pull_method: Option<String>,
    /// The backend method that lists its objects of this kind, for
    /// `GET /api/v1/kinds/{kind}/importable`.
    pub list_method: Option<String>,
    /// How often the periodic pull refreshes this kind's resources; `None`:
    /// every time the pull job runs.
    pub pull_interval: Option<std::time::Duration>,
    /// The import chain (after `begin_creating`); `None`: the pull alone.
    pub import: Option<Vec<Form>>,
    /// Every runtime state its backend declares.
    pub runtime_states: Vec<String>,
    /// The queue its create, update and delete chains run on.
    pub queue: Queue,
    /// Its children, by role: a composite kind (a server with its volumes)
    /// creates them with itself and deletes them with itself.
    pub children: BTreeMap<String, ChildDecl>,
    /// The create chain (after `begin_creating`).
    pub create: Vec<Form>,
    /// The update chain (after `begin_updating`).
    pub update: Vec<Form>,
    /// The delete chain (after `begin_deleting`).
    pub delete: Vec<Form>,
    /// What undoes a failed or cancelled create: run after its running steps
    /// have ended, each step skipped for a child that the backend never made,
    /// a failed step leaving its child `erred` without stopping the rest.
    pub compensate: Vec<Form>,
    /// Named actions, by name.
    pub actions: BTreeMap<String, Action>,
    /// Runtime states its chains wait for as success (and actions end in):
    /// a resource reporting one of these is healthy.
    pub healthy_runtime_states: Vec<String>,
    /// Runtime states its chains treat as failure: a resource reporting one is erred.
    pub erred_runtime_states: Vec<String>,
}

/// A named action on a kind (start, stop, resize, ...).
#[derive(Debug)]
pub struct Action {
    /// The action's name.
    pub name: String,
    /// What it does, for people.
    pub description: String,
    /// Resource states it may start from.
    pub states: Vec<ResourceState>,
    /// Runtime states it may start from; empty means any.
    pub runtime_states: Vec<String>,
    /// The runtime state recorded when it succeeds.
    pub runtime_state_on_success: Option<String>,
    /// The JSON Schema of its parameters.
    pub params: Schema,
    /// Parameters that must exceed the current value of the same name: the
    /// status the backend reported, else the attribute.
    pub increase_only: Vec<String>,
    /// The queue its chain runs on.
    pub queue: Queue,
    /// The chain (after `begin_updating`).
    pub chain: Vec<Form>,
}

/// A role of a composite kind's children (`[kinds.server.children.volumes]`).
#[derive(Debug, Clone)]
pub struct ChildDecl {
    /// The children's kind.
    pub kind: String,
    /// An array attribute of the parent: one child per element, whose
    /// attributes are the element (an object).
    pub each: Option<String>,
    /// A boolean attribute of the parent: one child when it is `true`.
    /// Without `each` or `when` there is always one child.
    pub when: Option<String>,
    /// Attributes of the parent copied into each child's.
    pub inherit: Vec<String>,
}

/// Every kind this process knows, and the backends the catalog declares.
#[derive(Debug)]
pub struct Catalog {
    kinds: BTreeMap<String, Kind>,
    declared: Backends,
}

impl Catalog {
    /// The built-in catalog, checked against `backends`.
    pub fn default_catalog(backends: &Backends) -> Result<Self, CatalogError> {
        Self::parse(DEFAULT_CATALOG, backends)
    }

    /// Reads and checks a catalog file; its errors name the file. Relative
    /// paths in it (an `exec` backend's command) are relative to the file.
    pub fn load(path: &Path, backends: &Backends) -> Result<Self, CatalogError> {
        Self::check_file(path, backends).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Reads and checks a catalog file as [`Catalog::check`] does: every
    /// error it finds, each naming the file.
    pub fn check_file(path: &Path, backends: &Backends) -> Result<Self, Vec<CatalogError>> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::read_to_string(path)
            .map_err(|e| vec![error("", format!("cannot read: {e}"))])
            .and_then(|text| Self::check(&text, backends, dir))
            .map_err(|errors| {
                errors
                    .into_iter()
                    .map(|e| CatalogError {
                        file: Some(path.to_owned()),
                        ..e
                    })
                    .collect()
            })
    }

    /// Parses and checks catalog text, its relative paths relative to the
    /// working directory.
    pub fn parse(text: &str, backends: &Backends) -> Result<Self, CatalogError> {
        Self::parse_in(text, backends, Path::new("."))
    }

    /// Parses and checks catalog text whose relative paths are relative to
    /// `dir`. Its kinds may use `backends` (the built-in ones) and the
    /// backends it declares itself. The error is the first of [`Catalog::check`]'s.
    pub fn parse_in(text: &str, backends: &Backends, dir: &Path) -> Result<Self, CatalogError> {
        Self::check(text, backends, dir).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Parses and checks catalog text, finding every error it can: one per
    /// broken backend or kind (a kind that names a broken backend is not
    /// checked further). Never an empty list.
    pub fn check(text: &str, backends: &Backends, dir: &Path) -> Result<Self, Vec<CatalogError>> {
        let (kinds, declared) = check::check(text, backends, dir)?;
        Ok(Self { kinds, declared })
    }

    /// The backends the catalog declares (`[backends.NAME]`), by name.
    pub fn declared_backends(&self) -> &Backends {
        &self.declared
    }

    /// The kind called `name`.
    pub fn kind(&self, name: &str) -> Option<&Kind> {
        self.kinds.get(name)
    }

    /// Every kind, by name.
    pub fn kinds(&self) -> impl Iterator<Item = &Kind> {
        self.kinds.values()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Catalog, DEFAULT_CATALOG};
    use crate::backend::Backends;
    use crate::backend::sim::{Sim, SimConfig};

    fn backends() -> Backends {
        Backends::new().with("sim", Arc::new(Sim::new(SimConfig::instant())))
    }

    fn refusal(text: &str) -> String {
        Catalog::parse(text, &backends()).unwrap_err().to_string()
    }

    #[test]
    fn the_default_catalog_has_instances_and_volumes() {
        let catalog = Catalog::default_catalog(&backends()).unwrap();
        let instance = catalog.kind("instance").unwrap();
        assert_eq!(
            instance
                .actions
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["resize", "restart", "start", "stop"]
        );
        assert_eq!(instance.updatable, ["name"]);
        assert_eq!(
            catalog.kind("volume").unwrap().actions["extend"].increase_only,
            ["size_gb"]
        );
    }

    #[test]
    fn an_unknown_task_type_is_refused_with_its_line() {
        let text = DEFAULT_CATALOG.replace(r#"{ type = "throttle","#, r#"{ type = "frobnicate","#);
        let message = refusal(&text);
        assert!(
            message.contains("frobnicate") && message.contains("line"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_backend_method_is_refused_naming_the_step() {
        let text = DEFAULT_CATALOG.replace("\"create_instance\"", "\"create_instanse\"");
        assert_eq!(
            refusal(&text),
            "catalog kinds.instance.create[1]: backend `sim` has no method `create_instanse`"
        );
    }

    #[test]
    fn a_method_of_the_wrong_role_is_refused() {
        let text = DEFAULT_CATALOG.replace(
            r#"{ type = "backend_method", method = "stop_instance" }"#,
            r#"{ type = "backend_method", method = "pull_instance" }"#,
        );
        assert_eq!(
            refusal(&text),
            "catalog kinds.instance.actions.stop.chain[0]: \
             `pull_instance` is a pull method; this step needs an effect method"
        );
    }

    #[test]
    fn every_role_is_named_with_its_article() {
        let effect_for_pull = DEFAULT_CATALOG.replacen(
            r#"method = "pull_instance", success"#,
            r#"method = "create_instance", success"#,
            1,
        );
        assert_eq!(
            refusal(&effect_for_pull),
            "catalog kinds.instance.create[2]: \
             `create_instance` is an effect method; this step needs a pull method"
        );
        let check_for_effect = DEFAULT_CATALOG.replace(
            r#"{ type = "backend_method", method = "delete_instance" }"#,
            r#"{ type = "backend_method", method = "is_instance_deleted" }"#,
        );
        assert_eq!(
            refusal(&check_for_effect),
            "catalog kinds.instance.delete[0]: \
             `is_instance_deleted` is a check method; this step needs an effect method"
        );
        let effect_for_check = DEFAULT_CATALOG.replace(
            r#"{ type = "poll_backend_check", method = "is_instance_deleted" }"#,
            r#"{ type = "poll_backend_check", method = "delete_instance" }"#,
        );
        assert_eq!(
            refusal(&effect_for_check),
            "catalog kinds.instance.delete[1]: \
             `delete_instance` is an effect method; this step needs a check method"
        );
    }

    #[test]
    fn a_toml_error_in_a_file_names_the_file() {
        let path =
            std::env::temp_dir().join(format!("executord-catalog-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, "[kinds.instance\nbackend = 1\n").unwrap();
        let message = Catalog::load(&path, &backends()).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(
            message.starts_with(&format!(
                "catalog {}: TOML parse error at line 1",
                path.display()
            )),
            "{message}"
        );
        let message = Catalog::load(std::path::Path::new("/nonexistent/kinds.toml"), &backends())
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("catalog /nonexistent/kinds.toml: cannot read"),
            "{message}"
        );
    }

    #[test]
    fn a_check_error_in_a_file_names_the_file_and_the_place() {
        let path =
            std::env::temp_dir().join(format!("executord-catalog-{}.toml", uuid::Uuid::new_v4()));
        let text = DEFAULT_CATALOG.replace("\"create_instance\"", "\"create_instanse\"");
        std::fs::write(&path, text).unwrap();
        let message = Catalog::load(&path, &backends()).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            message,
            format!(
                "catalog {}: kinds.instance.create[1]: backend `sim` has no method `create_instanse`",
                path.display()
            )
        );
    }

    #[test]
    fn a_bad_type_in_a_schema_names_the_json_pointer_of_the_property() {
        let text = DEFAULT_CATALOG.replace(
            "properties.image = { type = \"string\", maxLength = 255 }",
            "properties.image = { type = \"strung\" }",
        );
        let message = refusal(&text);
        assert!(
            message.starts_with(
                "catalog kinds.instance.schema: invalid JSON Schema at /properties/image/type: "
            ),
            "{message}"
        );
        // The last `minimum` is the one of volume.extend's parameters.
        let (head, tail) = DEFAULT_CATALOG.rsplit_once("minimum = 1,").unwrap();
        let text = format!("{head}minimum = \"one\",{tail}");
        let message = refusal(&text);
        assert!(
            message.starts_with(
                "catalog kinds.volume.actions.extend.params: invalid JSON Schema at /properties/size_gb/minimum: "
            ),
            "{message}"
        );
    }

    #[test]
    fn kind_and_action_names_must_be_url_path_segments() {
        for bad in [
            "\"\"",
            "\"re/boot\"",
            "\"Volume\"",
            "\"9lives\"",
            "\"a b\"",
            "\"a.b\"",
            "\"%2e\"",
        ] {
            let text = DEFAULT_CATALOG.replace("kinds.volume", &format!("kinds.{bad}"));
            let message = refusal(&text);
            assert!(message.starts_with("catalog kinds: "), "{bad}: {message}");
            assert!(
                message.contains("is not a valid kind name"),
                "{bad}: {message}"
            );
            let text = DEFAULT_CATALOG.replace("actions.restart", &format!("actions.{bad}"));
            let message = refusal(&text);
            assert!(
                message.starts_with("catalog kinds.instance.actions: "),
                "{bad}: {message}"
            );
            assert!(
                message.contains("is not a valid action name"),
                "{bad}: {message}"
            );
        }
        let long = "a".repeat(64);
        let text = DEFAULT_CATALOG.replace("actions.restart", &format!("actions.{long}"));
        assert!(refusal(&text).contains("is not a valid action name"));
        for good in ["hard_reboot", "hard-reboot", "v2", &"a".repeat(63)] {
            let text = DEFAULT_CATALOG
                .replace("kinds.volume", &format!("kinds.{good}"))
                .replace("kind = \"volume\"", &format!("kind = \"{good}\""))
                .replace("actions.restart", &format!("actions.{good}"));
            Catalog::parse(&text, &backends()).unwrap();
        }
    }

    #[test]
    fn an_unknown_runtime_state_is_refused_naming_the_action() {
        let text = DEFAULT_CATALOG.replace(
            r#"runtime_state_on_success = "SHUTOFF""#,
            r#"runtime_state_on_success = "OFF""#,
        );
        let message = refusal(&text);
        assert!(
            message.starts_with("catalog kinds.instance.actions."),
            "{message}"
        );
        assert!(
            message.ends_with("backend `sim` has no runtime state `OFF`"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_resource_state_is_refused() {
        let text = DEFAULT_CATALOG.replace(
            "[kinds.instance.actions.stop]\n",
            "[kinds.instance.actions.stop]\nstates = [\"okay\"]\n",
        );
        assert!(refusal(&text).contains("okay"));
        let text = DEFAULT_CATALOG.replace(
            "[kinds.instance.actions.stop]\n",
            "[kinds.instance.actions.stop]\nstates = [\"updating\"]\n",
        );
        assert!(refusal(&text).contains("transitional"));
    }

    #[test]
    fn a_broken_schema_is_refused_naming_it() {
        let text = DEFAULT_CATALOG.replace(
            "properties.image = { type = \"string\", maxLength = 255 }",
            "properties.image = { type = \"strung\" }",
        );
        assert!(refusal(&text).starts_with("catalog kinds.instance.schema: invalid JSON Schema"));
    }

    #[test]
    fn a_throttle_on_a_missing_attribute_and_an_unknown_backend_are_refused() {
        let text = DEFAULT_CATALOG.replace(r#"scope = "tenant""#, r#"scope = "project""#);
        assert_eq!(
            refusal(&text),
            "catalog kinds.instance.create[0]: scope `project` is not an attribute of the schema"
        );
        let text = DEFAULT_CATALOG.replacen("backend = \"sim\"", "backend = \"openstack\"", 1);
        assert!(
            refusal(&text)
                .starts_with("catalog kinds.instance.backend: unknown backend `openstack`")
        );
    }

    #[test]
    fn a_throttle_on_the_tenant_needs_no_tenant_attribute() {
        // It counts the resource's own tenant, not an attribute.
        let text = DEFAULT_CATALOG
            .replacen(r#"required = ["tenant", "flavor"]"#, r#"required = ["flavor"]"#, 1)
            .replacen(
                "properties.tenant = { type = \"string\", minLength = 1, maxLength = 255 }\nproperties.flavor",
                "properties.flavor",
                1,
            );
        assert_eq!(
            text.matches("properties.tenant").count(),
            DEFAULT_CATALOG.matches("properties.tenant").count() - 1,
            "only the instance's is gone"
        );
        Catalog::parse(&text, &backends()).unwrap();
    }
}
