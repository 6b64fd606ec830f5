//! Resource states and the named transitions between them (Waldur's state machine).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a resource stands. Stored as snake_case text with a CHECK constraint
/// that lists exactly these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ResourceState {
    /// Row created by the create executor's request; left by the first step (`begin_creating`).
    CreationScheduled,
    /// The create chain runs; left by the operation's end (`set_ok` or `set_erred`).
    Creating,
    /// An update or action was accepted (`schedule_updating`); left by `begin_updating`.
    UpdateScheduled,
    /// An update or action chain runs; left by `set_ok` or `set_erred`.
    Updating,
    /// A delete was accepted (`schedule_deleting`); left by `begin_deleting`.
    DeletionScheduled,
    /// The delete chain runs; success deletes the row, failure is `set_erred`.
    Deleting,
    /// Stable. Left when an update, action or delete is accepted.
    Ok,
    /// The last operation failed (`error_message` says why). Left like `ok`, or by `recover`.
    Erred,
}

impl ResourceState {
    /// Every state, in the order of the table in the docs.
    pub const ALL: [ResourceState; 8] = [
        Self::CreationScheduled,
        Self::Creating,
        Self::UpdateScheduled,
        Self::Updating,
        Self::DeletionScheduled,
        Self::Deleting,
        Self::Ok,
        Self::Erred,
    ];

    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreationScheduled => "creation_scheduled",
            Self::Creating => "creating",
            Self::UpdateScheduled => "update_scheduled",
            Self::Updating => "updating",
            Self::DeletionScheduled => "deletion_scheduled",
            Self::Deleting => "deleting",
            Self::Ok => "ok",
            Self::Erred => "erred",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether an operation is in flight while the resource is in this state.
    pub fn is_transitional(self) -> bool {
        !matches!(self, Self::Ok | Self::Erred)
    }
}

impl std::fmt::Display for ResourceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named state change. Each is applied as a compare-and-set in SQL:
/// `UPDATE resources SET state = target WHERE id = $1 AND state = ANY(sources)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// `creation_scheduled → creating`: the first step of a create chain.
    BeginCreating,
    /// `update_scheduled → updating`: the first step of an update or action chain.
    BeginUpdating,
    /// `deletion_scheduled → deleting`: the first step of a delete chain.
    BeginDeleting,
    /// `ok | erred → update_scheduled`: an update or action was accepted.
    ScheduleUpdating,
    /// `ok | erred → deletion_scheduled`: a delete was accepted.
    ScheduleDeleting,
    /// `creating | updating → ok`: a create, update or action chain succeeded.
    SetOk,
    /// `any → erred`: a chain failed.
    SetErred,
    /// `erred → ok`: the backend is healthy again.
    Recover,
}

impl Transition {
    /// Every transition.
    pub const ALL: [Transition; 8] = [
        Self::BeginCreating,
        Self::BeginUpdating,
        Self::BeginDeleting,
        Self::ScheduleUpdating,
        Self::ScheduleDeleting,
        Self::SetOk,
        Self::SetErred,
        Self::Recover,
    ];

    /// The states this transition may start from.
    pub fn sources(self) -> &'static [ResourceState] {
        use ResourceState as S;
        match self {
            Self::BeginCreating => &[S::CreationScheduled],
            Self::BeginUpdating => &[S::UpdateScheduled],
            Self::BeginDeleting => &[S::DeletionScheduled],
            Self::ScheduleUpdating | Self::ScheduleDeleting => &[S::Ok, S::Erred],
            Self::SetOk => &[S::Creating, S::Updating],
            Self::SetErred => &S::ALL,
            Self::Recover => &[S::Erred],
        }
    }

    /// The state this transition leads to.
    pub fn target(self) -> ResourceState {
        use ResourceState as S;
        match self {
            Self::BeginCreating => S::Creating,
            Self::BeginUpdating => S::Updating,
            Self::BeginDeleting => S::Deleting,
            Self::ScheduleUpdating => S::UpdateScheduled,
            Self::ScheduleDeleting => S::DeletionScheduled,
            Self::SetOk => S::Ok,
            Self::SetErred => S::Erred,
            Self::Recover => S::Ok,
        }
    }

    /// The target state if the transition is allowed from `from`.
    pub fn apply(self, from: ResourceState) -> Option<ResourceState> {
        self.sources().contains(&from).then(|| self.target())
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BeginCreating => "begin_creating",
            Self::BeginUpdating => "begin_updating",
            Self::BeginDeleting => "begin_deleting",
            Self::ScheduleUpdating => "schedule_updating",
            Self::ScheduleDeleting => "schedule_deleting",
            Self::SetOk => "set_ok",
            Self::SetErred => "set_erred",
            Self::Recover => "recover",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The source states as text, for SQL `state = ANY($n)` parameters.
    pub fn source_names(self) -> Vec<&'static str> {
        self.sources().iter().map(|s| s.as_str()).collect()
    }
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::{ResourceState as S, Transition as T};

    /// The whole table: every (transition, state) pair, legal and illegal.
    #[test]
    fn transition_table_matches_waldur() {
        let legal: &[(T, S, S)] = &[
            (T::BeginCreating, S::CreationScheduled, S::Creating),
            (T::BeginUpdating, S::UpdateScheduled, S::Updating),
            (T::BeginDeleting, S::DeletionScheduled, S::Deleting),
            (T::ScheduleUpdating, S::Ok, S::UpdateScheduled),
            (T::ScheduleUpdating, S::Erred, S::UpdateScheduled),
            (T::ScheduleDeleting, S::Ok, S::DeletionScheduled),
            (T::ScheduleDeleting, S::Erred, S::DeletionScheduled),
            (T::SetOk, S::Creating, S::Ok),
            (T::SetOk, S::Updating, S::Ok),
            (T::Recover, S::Erred, S::Ok),
        ];
        let mut checked = 0;
        for t in T::ALL {
            for s in S::ALL {
                let expected = if t == T::SetErred {
                    Some(S::Erred)
                } else {
                    legal
                        .iter()
                        .find(|(lt, ls, _)| *lt == t && *ls == s)
                        .map(|(_, _, to)| *to)
                };
                assert_eq!(t.apply(s), expected, "{t} from {s}");
                checked += 1;
            }
        }
        assert_eq!(checked, 64);
    }

    #[test]
    fn spellings_round_trip() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for t in T::ALL {
            assert_eq!(T::parse(t.as_str()), Some(t));
        }
        assert_eq!(S::parse("OK"), None);
    }
}
