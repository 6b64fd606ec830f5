//! A chain as the catalog writes it: steps on the resource itself or on its
//! children, children running their own kind's chains, and branches that
//! run at once. An executor turns it into the operation's task graph
//! ([`crate::executor::plan`]).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value, json};

use super::Step;

/// One element of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// A step, on the resource itself (`on` absent) or on each child of the
    /// role `on`; a step on several children runs on all of them at once.
    Step {
        /// The step.
        step: Step,
        /// The role of the children it acts on.
        on: Option<String>,
    },
    /// Each child of `role` runs its own kind's `run` chain (with its own
    /// `begin_*` and success transitions), all children at once.
    Children {
        /// The children's role.
        role: String,
        /// Which of their kind's chains.
        run: ChildChain,
    },
    /// Branches that run at once; the chain goes on when every branch is done.
    Parallel(Vec<Vec<Form>>),
}

/// The chain a child runs in a [`Form::Children`] element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildChain {
    /// Its kind's create chain, between `begin_creating` and `set_ok`.
    Create,
    /// Its kind's delete chain, after `begin_deleting`.
    Delete,
}

impl Form {
    /// The steps this element runs on the resource itself, however nested.
    pub fn own_steps(&self) -> Vec<&Step> {
        match self {
            Self::Step { step, on: None } => vec![step],
            Self::Step { .. } | Self::Children { .. } => Vec::new(),
            Self::Parallel(branches) => branches
                .iter()
                .flatten()
                .flat_map(Self::own_steps)
                .collect(),
        }
    }
}

impl<'de> Deserialize<'de> for Form {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = Map::<String, Value>::deserialize(deserializer)?;
        if table.contains_key("parallel") {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Raw {
                parallel: Vec<Value>,
            }
            let raw: Raw =
                serde_json::from_value(Value::Object(table)).map_err(D::Error::custom)?;
            if raw.parallel.len() < 2 {
                return Err(D::Error::custom("parallel needs at least two branches"));
            }
            let branches = raw
                .parallel
                .into_iter()
                .enumerate()
                .map(|(i, branch)| {
                    let forms = match branch {
                        Value::Array(_) => serde_json::from_value(branch),
                        one => serde_json::from_value(one).map(|form| vec![form]),
                    };
                    forms.map_err(|e| D::Error::custom(format!("parallel[{i}]: {e}")))
                })
                .collect::<Result<_, _>>()?;
            return Ok(Self::Parallel(branches));
        }
        if table.contains_key("children") {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Raw {
                children: String,
                run: ChildChain,
            }
            let raw: Raw =
                serde_json::from_value(Value::Object(table)).map_err(D::Error::custom)?;
            return Ok(Self::Children {
                role: raw.children,
                run: raw.run,
            });
        }
        let on = match table.remove("on") {
            None => None,
            Some(Value::String(role)) => Some(role),
            Some(_) => {
                return Err(D::Error::custom(
                    "`on` must name a role of the kind's children",
                ));
            }
        };
        let step: Step = serde_json::from_value(Value::Object(table)).map_err(D::Error::custom)?;
        Ok(Self::Step { step, on })
    }
}

impl Serialize for Form {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let value = match self {
            Self::Step { step, on } => {
                let mut value = serde_json::to_value(step).map_err(serde::ser::Error::custom)?;
                if let (Some(role), Value::Object(map)) = (on, &mut value) {
                    map.insert("on".into(), json!(role));
                }
                value
            }
            Self::Children { role, run } => json!({"children": role, "run": run}),
            Self::Parallel(branches) => json!({"parallel": branches}),
        };
        value.serialize(serializer)
    }
}
