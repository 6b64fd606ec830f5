//! Turns a kind's chain, as the catalog writes it ([`Form`]s), into an
//! operation's task graph: one task per step and resource, each knowing the
//! tasks that wait for it (`next`) and how many it waits for (`blocked_by`).
//!
//! A chain is a sequence; an element that acts on several resources (a step
//! `on` a role with two volumes, the children of a role running their own
//! chains, the branches of `parallel`) fans out from the tasks before it, and
//! the element after it waits for every one of its tails.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{ExecutorError, new_task};
use crate::catalog::{Catalog, ChildChain, Form, Kind, Step};
use crate::db::tasks::NewTask;
use crate::domain::{Queue, Transition};

/// A composite resource's children, by role, in creation order.
pub type Children = BTreeMap<String, Vec<Uuid>>;

/// Builds one operation's task graph.
pub struct Planner<'a> {
    catalog: &'a Catalog,
    children: &'a Children,
    queue: Queue,
    undo: bool,
    first_position: usize,
    tasks: Vec<(NewTask, Vec<usize>)>,
}

impl<'a> Planner<'a> {
    /// A planner for a resource with `children`, whose tasks run on `queue`.
    pub fn new(catalog: &'a Catalog, children: &'a Children, queue: Queue) -> Self {
        Self {
            catalog,
            children,
            queue,
            undo: false,
            first_position: 0,
            tasks: Vec::new(),
        }
    }

    /// A planner for the compensation of an operation that already has
    /// `existing` tasks: its tasks are undo steps (skipped for a resource the
    /// backend never made, a failure not stopping the rest), numbered after them.
    pub fn compensation(
        catalog: &'a Catalog,
        children: &'a Children,
        queue: Queue,
        existing: usize,
    ) -> Self {
        Self {
            undo: true,
            first_position: existing,
            ..Self::new(catalog, children, queue)
        }
    }

    /// Adds `begin` on `me` (none in a compensation), then `forms` of `kind`
    /// after it.
    pub fn chain(
        &mut self,
        me: Uuid,
        kind: &Kind,
        begin: Option<Transition>,
        forms: &[Form],
    ) -> Result<(), ExecutorError> {
        let frontier = match begin {
            Some(transition) => {
                vec![self.push(&Step::StateTransition { transition }, me, &[])?]
            }
            None => Vec::new(),
        };
        self.forms(me, kind, forms, frontier)?;
        Ok(())
    }

    /// The tasks, in position order, with `next` positions and `blocked_by` counts.
    pub fn finish(self) -> Vec<NewTask> {
        let first = self.first_position;
        let mut next: Vec<Vec<i32>> = vec![Vec::new(); self.tasks.len()];
        for (i, (_, preds)) in self.tasks.iter().enumerate() {
            for &p in preds {
                next[p].push(position(first + i));
            }
        }
        self.tasks
            .into_iter()
            .zip(next)
            .map(|((mut task, preds), next)| {
                task.blocked_by = i32::try_from(preds.len()).unwrap_or(i32::MAX);
                task.next = next;
                task
            })
            .collect()
    }

    fn push(
        &mut self,
        step: &Step,
        resource: Uuid,
        preds: &[usize],
    ) -> Result<usize, ExecutorError> {
        let mut task = new_task(step, self.queue)?;
        task.resource_id = resource;
        task.undo = self.undo;
        let mut preds = preds.to_vec();
        preds.sort_unstable();
        preds.dedup();
        self.tasks.push((task, preds));
        Ok(self.tasks.len() - 1)
    }

    /// Adds `forms` acting on `me` (of `kind`) after `frontier`; returns the
    /// tasks the next element waits for.
    fn forms(
        &mut self,
        me: Uuid,
        kind: &Kind,
        forms: &[Form],
        mut frontier: Vec<usize>,
    ) -> Result<Vec<usize>, ExecutorError> {
        for form in forms {
            frontier = self.form(me, kind, form, frontier)?;
        }
        Ok(frontier)
    }

    fn form(
        &mut self,
        me: Uuid,
        kind: &Kind,
        form: &Form,
        frontier: Vec<usize>,
    ) -> Result<Vec<usize>, ExecutorError> {
        match form {
            Form::Step { step, on: None } => Ok(vec![self.push(step, me, &frontier)?]),
            Form::Step {
                step,
                on: Some(role),
            } => {
                let mut tails = Vec::new();
                for &child in self.members(role) {
                    tails.push(self.push(step, child, &frontier)?);
                }
                Ok(if tails.is_empty() { frontier } else { tails })
            }
            Form::Children { role, run } => {
                let decl = kind.children.get(role).ok_or_else(|| {
                    ExecutorError::Conflict(format!("the kind has no children `{role}`"))
                })?;
                let child_kind = self.catalog.kind(&decl.kind).ok_or_else(|| {
                    ExecutorError::Conflict(format!("kind `{}` is not in the catalog", decl.kind))
                })?;
                let mut tails = Vec::new();
                for &child in self.members(role) {
                    tails.extend(self.child(child, child_kind, *run, &frontier)?);
                }
                Ok(if tails.is_empty() { frontier } else { tails })
            }
            Form::Parallel(branches) => {
                let mut tails = Vec::new();
                for branch in branches {
                    tails.extend(self.forms(me, kind, branch, frontier.clone())?);
                }
                tails.sort_unstable();
                tails.dedup();
                Ok(tails)
            }
        }
    }

    /// A child's own chain: `begin_creating`, its kind's create chain and
    /// `set_ok`; or `begin_deleting` and its delete chain (the row goes when
    /// the operation ends). Its throttles are left out: the parent's govern.
    /// In a compensation only the backend steps run.
    fn child(
        &mut self,
        child: Uuid,
        kind: &Kind,
        run: ChildChain,
        frontier: &[usize],
    ) -> Result<Vec<usize>, ExecutorError> {
        let (begin, forms, end) = match run {
            ChildChain::Create => (
                Transition::BeginCreating,
                &kind.create,
                Some(Transition::SetOk),
            ),
            ChildChain::Delete => (Transition::BeginDeleting, &kind.delete, None),
        };
        let mut tail = frontier.to_vec();
        if !self.undo {
            tail = vec![self.push(&Step::StateTransition { transition: begin }, child, &tail)?];
        }
        let forms: Vec<Form> = forms
            .iter()
            .filter(|f| {
                !matches!(
                    f,
                    Form::Step {
                        step: Step::Throttle { .. },
                        ..
                    }
                )
            })
            .cloned()
            .collect();
        tail = self.forms(child, kind, &forms, tail)?;
        if let Some(transition) = end.filter(|_| !self.undo) {
            tail = vec![self.push(&Step::StateTransition { transition }, child, &tail)?];
        }
        Ok(tail)
    }

    fn members(&self, role: &str) -> &'a [Uuid] {
        self.children.get(role).map_or(&[], Vec::as_slice)
    }
}

fn position(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}
