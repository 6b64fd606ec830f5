//! Recording outcomes. A batch of outcomes is applied in one transaction,
//! each fenced by its task's lease token: the task rows, the resource changes
//! they cause, the release (or inline claim) of next steps, and at a chain's
//! end the operation's hook. The common outcomes (a step done, a state
//! transition, a chain's success) take one statement per batch, not per
//! task; the rarer ones are applied one by one in the same transaction.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::db;
use crate::db::operations::Operation;
use crate::db::resources::Owned;
use crate::db::tasks::{Claimed, Task};
use crate::domain::{OperationState, Queue, TaskState, Transition};
use crate::lifecycle::{self, Ending, Finished};
use crate::tasks::{self, JobOutcome, Outcome, StepOutcome};

/// What recording did with one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The outcome was applied.
    Applied,
    /// The lease had passed to another holder: the outcome was refused.
    Fenced,
}

/// One outcome to record.
#[derive(Debug, Clone)]
pub struct Item {
    /// The task.
    pub task_id: Uuid,
    /// The lease token it ran under.
    pub token: Uuid,
    /// What it produced.
    pub outcome: Outcome,
    /// Whether the runner goes on with the chain's next step at once, when
    /// that step is on the same queue.
    pub go_on: bool,
}

/// What recording a batch did.
#[derive(Debug, Default)]
pub struct Recording {
    /// Per item, in order: whether it was applied, and the next step claimed
    /// for the runner to run at once.
    pub results: Vec<(Recorded, Option<Claimed>)>,
    /// Queues that got ready tasks.
    pub ready: BTreeSet<Queue>,
    /// How the operations that ended did, for the log and the metrics once
    /// committed.
    ended: Finished,
    /// For the metrics, once committed: steps that wait for a throttle slot.
    throttle_waits: usize,
}

impl Recording {
    /// The operations that ended.
    pub fn finished(&self) -> &[Uuid] {
        &self.ended.operations
    }

    /// Frees the throttle slots of the operations that ended, once, before
    /// the commit ([`Finished::free_slots`]): however many rounds ended them.
    /// The queues their endings made ready join [`Recording::ready`].
    async fn free_slots(&mut self, tx: &mut PgConnection) -> sqlx::Result<()> {
        self.ended.free_slots(tx).await?;
        self.ready.extend(self.ended.ready.iter().copied());
        Ok(())
    }

    /// Logs and counts what the committed transaction did.
    fn count(&self) {
        self.ended.committed();
        for _ in 0..self.throttle_waits {
            crate::metrics::throttle_waited();
        }
    }
}

enum Decision {
    Done(Option<serde_json::Value>),
    Reschedule {
        delay_ms: i64,
        counts_as_attempt: bool,
        status: Option<String>,
        error: Option<String>,
    },
    Park(String),
    /// The message, and the backend's whole error when a call failed.
    Fail(String, Option<serde_json::Value>),
}

/// Who claims next steps inline: the runner and its lease.
#[derive(Debug, Clone, Copy)]
pub struct Continue<'a> {
    /// The lease to take on the next step.
    pub lease_ms: i64,
    /// The runner taking it.
    pub worker: &'a str,
}

/// Applies `outcome` of the task held under `token` in a transaction of its
/// own, then announces what it made ready or ended to every process.
pub async fn record(
    pool: &sqlx::PgPool,
    catalog: &Catalog,
    task_id: Uuid,
    token: Uuid,
    outcome: Outcome,
) -> anyhow::Result<Recorded> {
    let item = Item {
        task_id,
        token,
        outcome,
        go_on: false,
    };
    let mut conn = pool.acquire().await.context("taking a connection")?;
    let recording = record_batch(&mut conn, catalog, std::slice::from_ref(&item), None).await?;
    drop(conn);
    let ready: Vec<Queue> = recording.ready.iter().copied().collect();
    db::announce(pool, "-", &ready, recording.finished()).await?;
    Ok(recording.results.first().map_or(Recorded::Fenced, |r| r.0))
}

/// What [`record_all`] did.
#[derive(Debug, Default)]
pub struct Settled {
    /// Per item, in order: whether it was applied and the next step claimed
    /// for the runner; `None` if recording it failed (its lease then expires
    /// and the step runs again).
    pub results: Vec<Option<(Recorded, Option<Claimed>)>>,
    /// Queues that got ready tasks.
    pub ready: BTreeSet<Queue>,
    /// Operations that ended.
    pub finished: Vec<Uuid>,
}

/// Records `items` in one transaction on `held`, as [`record_batch`]; if
/// that transaction fails, records each alone, so one outcome that cannot be
/// recorded does not hold up the others. After a failure the connection goes
/// back to the pool (it may be the cause), and each retry takes a checked one.
pub async fn record_all(
    held: &mut db::Held,
    catalog: &Catalog,
    items: &[Item],
    cont: Option<Continue<'_>>,
) -> Settled {
    let mut settled = Settled::default();
    let e = match batch_on(held, catalog, items, cont).await {
        Ok(recording) => {
            settled.add(recording);
            return settled;
        }
        Err(e) => e,
    };
    if let [item] = items {
        tracing::warn!(task_id = %item.task_id, error = format!("{e:#}"), "recording failed; the lease will expire");
        settled.results.push(None);
        return settled;
    }
    tracing::warn!(
        count = items.len(),
        error = format!("{e:#}"),
        "recording a batch failed; recording its outcomes one by one"
    );
    for item in items {
        match batch_on(held, catalog, std::slice::from_ref(item), cont).await {
            Ok(recording) => settled.add(recording),
            Err(e) => {
                tracing::warn!(task_id = %item.task_id, error = format!("{e:#}"), "recording failed; the lease will expire");
                settled.results.push(None);
            }
        }
    }
    settled
}

/// [`record_batch`] on the connection `held`, which is given back to the
/// pool if recording fails.
async fn batch_on(
    held: &mut db::Held,
    catalog: &Catalog,
    items: &[Item],
    cont: Option<Continue<'_>>,
) -> anyhow::Result<Recording> {
    let done = async {
        let conn = held.get().await.context("taking a connection")?;
        record_batch(conn, catalog, items, cont).await
    }
    .await;
    if done.is_err() {
        held.release();
    }
    done
}

impl Settled {
    fn add(&mut self, recording: Recording) {
        self.finished.extend_from_slice(recording.finished());
        self.results.extend(recording.results.into_iter().map(Some));
        self.ready.extend(recording.ready);
    }
}

/// A step of an operation whose outcome is being recorded.
struct HeldStep<'a> {
    index: usize,
    task: Task,
    operation: &'a Operation,
    go_on: bool,
}

impl HeldStep<'_> {
    /// The resource the step acts on.
    fn resource_id(&self) -> Uuid {
        self.task.resource_id.unwrap_or(self.operation.resource_id)
    }
}

/// Applies the outcomes of `items` in one transaction. A step that succeeded
/// and whose item may go on has its next step claimed for `cont` when that
/// step runs on the same queue (a crash after the commit leaves it leased,
/// so it is not lost). The caller announces [`Recording::ready`] and
/// [`Recording::finished`] after the commit.
pub async fn record_batch(
    conn: &mut PgConnection,
    catalog: &Catalog,
    items: &[Item],
    cont: Option<Continue<'_>>,
) -> anyhow::Result<Recording> {
    // Its statements are written for index paths and run thousands of times
    // a second; PostgreSQL would plan some afresh at every call for a batch
    // of one (a custom plan for one row looks cheaper than the generic plan
    // for ten), which costs more than running them.
    let mut tx = conn
        .begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
        .await
        .context("beginning the outcome transaction")?;
    let mut rec = apply(&mut tx, catalog, items, cont).await?;
    settle_in_database(&mut tx, catalog, &mut rec, cont).await?;
    rec.free_slots(&mut tx).await?;
    tx.commit().await.context("committing the outcomes")?;
    rec.count();
    Ok(rec)
}

/// What a runner's claim took.
#[derive(Debug, Default)]
pub struct Claim {
    /// How many ready tasks it claimed.
    pub claimed: usize,
    /// The steps to run, each under its lease: the claimed ones that are not
    /// state transitions, and for a claimed transition the next step of its
    /// chain that is not, if it was claimed inline.
    pub run: Vec<Claimed>,
    /// Queues that got ready tasks.
    pub ready: BTreeSet<Queue>,
    /// Operations that ended.
    pub finished: Vec<Uuid>,
}

/// Claims up to `limit` due ready tasks of `queue` for `cont`, as
/// [`db::tasks::claim`] does, and runs and records in the same transaction
/// the claimed state transitions, as the recorder does for the next steps
/// it claims: a chain's first state transition (`begin_creating` …) costs
/// no outcome transaction of its own.
/// The caller announces [`Claim::ready`] and [`Claim::finished`].
///
/// The commit does not wait for its flush, as a claim's, unless an
/// operation ended in it: lost in a database crash, the steps are claimed
/// and recorded again, as a claim lost so is run again. If recording them
/// fails, the transaction is rolled back and the tasks are claimed as
/// before, to be run and recorded one by one (so a step that cannot be
/// recorded here uses up its attempts as it would otherwise).
pub async fn claim(
    conn: &mut PgConnection,
    catalog: &Catalog,
    queue: Queue,
    limit: i64,
    cont: Continue<'_>,
) -> anyhow::Result<Claim> {
    let settled = async {
        let mut tx = conn
            .begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
            .await?;
        let claimed = db::tasks::claim(&mut *tx, queue, limit, cont.lease_ms, cont.worker).await?;
        let mut rec = Recording {
            results: claimed
                .into_iter()
                .map(|c| (Recorded::Applied, Some(c)))
                .collect(),
            ..Recording::default()
        };
        let claimed = rec.results.len();
        settle_in_database(&mut tx, catalog, &mut rec, Some(cont)).await?;
        rec.free_slots(&mut tx).await?;
        if !rec.finished().is_empty() {
            sqlx::query("SET LOCAL synchronous_commit = on")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        rec.count();
        anyhow::Ok((claimed, rec))
    }
    .await;
    let (claimed, rec) = match settled {
        Ok(settled) => settled,
        Err(e) => {
            tracing::warn!(
                queue = queue.as_str(),
                error = format!("{e:#}"),
                "recording claimed state transitions failed; claiming them to run one by one"
            );
            let claimed =
                db::tasks::claim(&mut *conn, queue, limit, cont.lease_ms, cont.worker).await?;
            return Ok(Claim {
                claimed: claimed.len(),
                run: claimed,
                ..Claim::default()
            });
        }
    };
    Ok(Claim {
        claimed,
        run: rec.results.into_iter().filter_map(|r| r.1).collect(),
        ready: rec.ready,
        finished: rec.ended.operations,
    })
}

/// Most rounds of [`settle_in_database`] in one transaction: a chain whose
/// steps are all state transitions goes back to the runner after this many,
/// and goes on from there.
const MAX_SETTLED_IN_A_ROW: usize = 16;

/// The next steps claimed inline (in [`Recording::results`]) that are state
/// transitions are run at once and recorded in the same transaction, and so
/// are theirs in turn: the runner is handed the first other step (a backend
/// call, or a throttle: see [`tasks::run_in_database`]), and a chain's
/// transitions cost no round trip through the runner and the recorder of
/// their own.
async fn settle_in_database(
    tx: &mut PgConnection,
    catalog: &Catalog,
    rec: &mut Recording,
    cont: Option<Continue<'_>>,
) -> anyhow::Result<()> {
    if cont.is_none() {
        return Ok(());
    }
    for _ in 0..MAX_SETTLED_IN_A_ROW {
        let mut slots = Vec::new();
        let mut items = Vec::new();
        for (slot, (_, next)) in rec.results.iter().enumerate() {
            let Some(next) = next else { continue };
            let (Some(token), Some(outcome)) =
                (next.task.lease_token, tasks::run_in_database(&next.task))
            else {
                continue;
            };
            crate::metrics::task_ran(
                &next.task.task_type,
                Outcome::Step(outcome.clone()).label(),
                Duration::ZERO,
            );
            slots.push(slot);
            items.push(Item {
                task_id: next.task.id,
                token,
                outcome: Outcome::Step(outcome),
                go_on: true,
            });
        }
        if items.is_empty() {
            break;
        }
        let more = apply(tx, catalog, &items, cont).await?;
        for (slot, (_, next)) in slots.into_iter().zip(more.results) {
            rec.results[slot].1 = next;
        }
        rec.ready.extend(more.ready);
        rec.ended.extend(more.ended);
        rec.throttle_waits += more.throttle_waits;
    }
    Ok(())
}

/// Applies the outcomes of `items` in the transaction `tx`: the body of
/// [`record_batch`].
async fn apply(
    tx: &mut PgConnection,
    catalog: &Catalog,
    items: &[Item],
    cont: Option<Continue<'_>>,
) -> anyhow::Result<Recording> {
    let ids: Vec<Uuid> = items.iter().map(|i| i.task_id).collect();
    let tokens: Vec<Uuid> = items.iter().map(|i| i.token).collect();
    let mut held: HashMap<Uuid, (Task, Option<Operation>)> =
        db::tasks::lock_held_many(&mut *tx, &ids, &tokens)
            .await?
            .into_iter()
            .map(|h| (h.task.id, (h.task, h.operation.map(|o| o.0))))
            .collect();
    // A graph's steps may end at once in several transactions: its row is
    // locked (after the tasks, as everywhere) and read again, so that each
    // sees what the others did.
    let graphs: Vec<Uuid> = held
        .values()
        .filter_map(|(_, o)| o.as_ref().filter(|o| o.graph).map(|o| o.id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !graphs.is_empty() {
        let fresh: HashMap<Uuid, Operation> = db::operations::lock_many(&mut *tx, &graphs)
            .await?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        for (_, operation) in held.values_mut() {
            if let Some(o) = operation.as_mut()
                && let Some(f) = fresh.get(&o.id)
            {
                *o = f.clone();
            }
        }
    }
    // Throttle slots: a batch that takes some locks first, in name order,
    // every scope it may touch: those it takes slots of and those its
    // operations are in (read by the locking, after a graph's lock, which a
    // step of another process taking a slot for that graph may have held).
    // A batch that only frees slots locks their scopes as it frees them.
    let keys: Vec<String> = items
        .iter()
        .filter_map(|item| match &item.outcome {
            Outcome::Step(StepOutcome::Throttle { scope, .. }) => Some(scope.key()),
            _ => None,
        })
        .collect();
    if !keys.is_empty() {
        let operations: Vec<Uuid> = held
            .values()
            .filter_map(|(_, o)| o.as_ref().map(|o| o.id))
            .collect();
        db::throttle::lock_scopes(&mut *tx, &keys, &operations).await?;
    }
    let mut rec = Recording {
        results: vec![(Recorded::Fenced, None); items.len()],
        ..Recording::default()
    };
    let mut operations = Vec::new();
    let mut pending = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some((task, operation)) = held.remove(&item.task_id) else {
            continue;
        };
        rec.results[index].0 = Recorded::Applied;
        match (operation, &item.outcome) {
            (None, Outcome::Job(outcome)) if task.operation_id.is_none() => {
                record_job(&mut *tx, &task, outcome.clone()).await?;
            }
            (Some(operation), Outcome::Step(outcome)) => {
                operations.push(operation);
                pending.push((index, task, item.go_on, outcome.clone()));
            }
            (None, Outcome::Step(_)) => anyhow::bail!("the task's operation is missing"),
            (_, Outcome::Job(_)) => anyhow::bail!("a job's outcome for a step of an operation"),
        }
    }
    let steps = pending
        .into_iter()
        .zip(&operations)
        .map(|((index, task, go_on, outcome), operation)| {
            let step = HeldStep {
                index,
                task,
                operation,
                go_on,
            };
            (step, outcome)
        })
        .collect();
    let decided = decide_all(&mut *tx, steps).await?;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let mut undone = Vec::new();
    for (step, decision) in decided {
        match decision {
            Decision::Done(result) => done.push((step, result)),
            Decision::Reschedule {
                delay_ms,
                counts_as_attempt,
                status,
                error,
            } => {
                db::tasks::reschedule(
                    &mut *tx,
                    step.task.id,
                    delay_ms,
                    counts_as_attempt,
                    status.as_deref(),
                    error.as_deref(),
                )
                .await?;
                if delay_ms == 0 {
                    rec.ready.insert(step.task.queue);
                }
            }
            Decision::Park(status) => {
                db::tasks::park(&mut *tx, step.task.id, &status).await?;
                rec.throttle_waits += 1;
            }
            Decision::Fail(error, details) => {
                tracing::warn!(task_id = %step.task.id, operation_id = %step.operation.id, %error, "step failed");
                db::tasks::finish(
                    &mut *tx,
                    step.task.id,
                    TaskState::Failed,
                    None,
                    Some(&error),
                )
                .await?;
                if let Some(details) = &details {
                    db::tasks::set_error_details(&mut *tx, step.task.id, details).await?;
                }
                if step.task.undo {
                    // An undo that fails leaves its resource erred, with
                    // its own message, and the compensation goes on.
                    let ending = db::resources::Ending {
                        error_message: Some(&error),
                        task_id: Some(step.task.id),
                        ..db::resources::Ending::default()
                    };
                    let guard = db::resources::Guard::Operation(step.operation.id);
                    db::resources::transition(
                        &mut *tx,
                        step.resource_id(),
                        guard,
                        Transition::SetErred,
                        &ending,
                    )
                    .await?;
                    undone.push(step);
                } else {
                    failed.push((step.operation, step.task.id, error));
                }
            }
        }
    }
    let (succeeded, progressed) = if done.is_empty() && undone.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        steps_done(&mut *tx, done, undone, cont, &mut rec).await?
    };
    let failing: HashSet<Uuid> = failed.iter().map(|f| f.0.id).collect();
    let mut seen = HashSet::new();
    let endings: Vec<Ending<'_>> = failed
        .iter()
        .filter(|f| seen.insert(f.0.id))
        .map(|(operation, task_id, error)| Ending::Failed {
            operation,
            error,
            task_id: Some(*task_id),
        })
        .chain(
            succeeded
                .into_iter()
                .filter(|(operation, _)| !failing.contains(&operation.id))
                .map(|(operation, task_id)| Ending::Succeeded { operation, task_id }),
        )
        .chain(
            progressed
                .into_iter()
                .filter(|operation| !failing.contains(&operation.id))
                .map(|operation| Ending::Progressed { operation }),
        )
        .collect();
    if !endings.is_empty() {
        // Their ready queues join `rec.ready` when their slots are freed.
        let finished = lifecycle::end(&mut *tx, catalog, &endings).await?;
        rec.ended.extend(finished);
    }
    Ok(rec)
}

/// Turns outcomes into decisions. What backends reported is stored in one
/// statement per batch, and transitions are applied in one statement for
/// each kind of transition.
async fn decide_all<'a>(
    conn: &mut PgConnection,
    steps: Vec<(HeldStep<'a>, StepOutcome)>,
) -> anyhow::Result<Vec<(HeldStep<'a>, Decision)>> {
    let mut decided = Vec::with_capacity(steps.len());
    let mut transitions: Vec<(Transition, Vec<HeldStep<'a>>)> = Vec::new();
    let mut replies = Vec::new();
    for (step, outcome) in steps {
        if let StepOutcome::Transition(transition) = outcome {
            match transitions.iter_mut().find(|(t, _)| *t == transition) {
                Some((_, group)) => group.push(step),
                None => transitions.push((transition, vec![step])),
            }
            continue;
        }
        if let StepOutcome::Done(reply)
        | StepOutcome::Poll { reply, .. }
        | StepOutcome::Erred(reply, _) = &outcome
            && (reply.backend_id.is_some()
                || reply.runtime_state.is_some()
                || reply.status.is_some())
        {
            replies.push(db::resources::Reply {
                resource_id: step.resource_id(),
                backend_id: reply.backend_id.clone(),
                runtime_state: reply.runtime_state.clone(),
                status: reply.status.clone().map(serde_json::Value::Object),
            });
        }
        let decision = decide(conn, &step.task, step.operation, outcome).await?;
        decided.push((step, decision));
    }
    if !replies.is_empty() {
        db::resources::record_backend_replies(conn, replies).await?;
    }
    for (transition, group) in transitions {
        let rows: Vec<Owned<'_>> = group
            .iter()
            .map(|s| Owned {
                resource_id: s.resource_id(),
                operation_id: s.operation.id,
                task_id: s.task.id,
                runtime_state: None,
            })
            .collect();
        let applied: HashSet<Uuid> = db::resources::transition_many(conn, transition, false, &rows)
            .await?
            .into_iter()
            .collect();
        for step in group {
            let decision = if applied.contains(&step.resource_id()) {
                Decision::Done(None)
            } else {
                let state = db::resources::get(conn, step.resource_id())
                    .await?
                    .map_or_else(|| "gone".to_owned(), |r| r.state.to_string());
                Decision::Fail(
                    format!("{transition} is not allowed: the resource is {state}"),
                    None,
                )
            };
            decided.push((step, decision));
        }
    }
    Ok(decided)
}

/// Steps that succeeded (and undo steps that failed, which the
/// compensation goes on after): end the succeeded ones, and make the tasks
/// that wait for them wait for one fewer, claiming one inline per operation
/// or making them ready. Returns the chains that are done (operation and
/// last step), whose operations succeed, and the `compensating` operations
/// a step of which ended.
async fn steps_done<'a>(
    conn: &mut PgConnection,
    done: Vec<(HeldStep<'a>, Option<serde_json::Value>)>,
    undone: Vec<HeldStep<'a>>,
    cont: Option<Continue<'_>>,
    rec: &mut Recording,
) -> anyhow::Result<(Vec<(&'a Operation, Uuid)>, Vec<&'a Operation>)> {
    let (steps, results): (Vec<HeldStep<'_>>, Vec<Option<serde_json::Value>>) =
        done.into_iter().unzip();
    let task_ids: Vec<Uuid> = steps.iter().map(|s| s.task.id).collect();
    let winding = |o: &Operation| o.state == OperationState::Compensating;
    let mut inline_for: HashMap<Uuid, usize> = HashMap::new();
    let mut successors = Vec::new();
    for step in &steps {
        for (i, &position) in step.task.next.iter().enumerate() {
            let inline = (i == 0
                && cont.is_some()
                && step.go_on
                && !winding(step.operation)
                && !inline_for.contains_key(&step.operation.id))
            .then_some(step.task.queue);
            if inline.is_some() {
                inline_for.insert(step.operation.id, step.index);
            }
            successors.push(db::tasks::Successor {
                operation_id: step.operation.id,
                position,
                inline,
            });
        }
    }
    for step in &undone {
        successors.extend(step.task.next.iter().map(|&position| db::tasks::Successor {
            operation_id: step.operation.id,
            position,
            inline: None,
        }));
    }
    let (lease_ms, worker) = cont.map_or((0, ""), |c| (c.lease_ms, c.worker));
    let advanced =
        db::tasks::succeed_and_advance(conn, &task_ids, &results, &successors, lease_ms, worker)
            .await?;
    for next in advanced {
        if next.task.state != TaskState::Running {
            rec.ready.insert(next.task.queue);
            continue;
        }
        if let Some(&i) = next.task.operation_id.and_then(|id| inline_for.get(&id)) {
            rec.results[i].1 = Some(next);
        }
    }
    let mut progressed: Vec<&'a Operation> = Vec::new();
    let mut ends: Vec<(&'a Operation, Uuid)> = Vec::new();
    let mut graph_ends = Vec::new();
    for step in steps.iter().chain(&undone) {
        if winding(step.operation) {
            if !progressed.iter().any(|o| o.id == step.operation.id) {
                progressed.push(step.operation);
            }
        } else if step.task.next.is_empty() {
            if step.operation.graph {
                graph_ends.push((step.operation, step.task.id));
            } else {
                ends.push((step.operation, step.task.id));
            }
        }
    }
    if !graph_ends.is_empty() {
        // A graph is done when every one of its tasks has succeeded (its
        // row lock makes this the last of its steps to end).
        let ids: Vec<Uuid> = graph_ends.iter().map(|g| g.0.id).collect();
        let unfinished: HashSet<Uuid> = db::tasks::count_unsucceeded(conn, &ids)
            .await?
            .into_iter()
            .collect();
        let mut seen = HashSet::new();
        ends.extend(
            graph_ends
                .into_iter()
                .filter(|(o, _)| !unfinished.contains(&o.id) && seen.insert(o.id)),
        );
    }
    Ok((ends, progressed))
}

async fn decide(
    conn: &mut PgConnection,
    task: &Task,
    operation: &Operation,
    outcome: StepOutcome,
) -> anyhow::Result<Decision> {
    Ok(match outcome {
        StepOutcome::Throttle { scope, limit } => {
            let acquired =
                db::throttle::acquire(conn, &scope, operation.id, task.id, limit).await?;
            match acquired.waiting_status(&scope, limit) {
                None => Decision::Done(Some(json!({"scope": scope.name}))),
                Some(status) => Decision::Park(status),
            }
        }
        // Their replies are stored by `decide_all`, a batch at a time.
        StepOutcome::Done(reply) => Decision::Done(reply_json(&reply)),
        StepOutcome::Poll { delay, status, .. } => Decision::Reschedule {
            delay_ms: i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
            counts_as_attempt: false,
            status: Some(status),
            error: None,
        },
        StepOutcome::Retry { error, delay } => Decision::Reschedule {
            delay_ms: i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
            counts_as_attempt: true,
            status: Some(format!("retrying in {delay:.1?} after a transient failure")),
            error: Some(error),
        },
        StepOutcome::Fail(error) => Decision::Fail(error, None),
        StepOutcome::BackendFailed { error, details } => Decision::Fail(error, Some(details)),
        // Applied by `decide_all`, a batch at a time.
        StepOutcome::Transition(transition) => {
            Decision::Fail(format!("{transition} was not applied"), None)
        }
        StepOutcome::Erred(_, error) => Decision::Fail(error, None),
    })
}

fn reply_json(reply: &crate::backend::BackendReply) -> Option<serde_json::Value> {
    let mut out = serde_json::Map::new();
    if let Some(id) = &reply.backend_id {
        out.insert("backend_id".into(), json!(id));
    }
    if let Some(rs) = &reply.runtime_state {
        out.insert("runtime_state".into(), json!(rs));
    }
    if let Some(status) = &reply.status {
        out.insert("status".into(), json!(status));
    }
    if let Some(done) = reply.done {
        out.insert("done".into(), json!(done));
    }
    (!out.is_empty()).then_some(serde_json::Value::Object(out))
}

/// A periodic job's outcome: it has no operation, so only its row changes.
async fn record_job(
    conn: &mut PgConnection,
    task: &Task,
    outcome: JobOutcome,
) -> anyhow::Result<()> {
    match outcome {
        JobOutcome::Done(summary) => {
            db::tasks::finish(conn, task.id, TaskState::Succeeded, Some(&summary), None).await?;
        }
        JobOutcome::Retry { error, delay } => {
            let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            db::tasks::reschedule(conn, task.id, delay_ms, true, None, Some(&error)).await?;
        }
        JobOutcome::Fail(error) => {
            tracing::warn!(job = ?task.job, %error, "job failed");
            db::tasks::finish(conn, task.id, TaskState::Failed, None, Some(&error)).await?;
        }
    }
    Ok(())
}
