-- Resource history, periodic jobs, and what cancel and retry need.

-- Every state transition of a resource: from, to, by which operation and
-- task, when, and why. Kept after the resource is deleted.
CREATE TABLE resource_events (
    seq           bigserial PRIMARY KEY,
    resource_id   uuid NOT NULL,
    operation_id  uuid,
    task_id       uuid,
    transition    text NOT NULL,
    from_state    text CHECK (from_state IN (
                      'creation_scheduled', 'creating', 'update_scheduled', 'updating',
                      'deletion_scheduled', 'deleting', 'ok', 'erred')),
    to_state      text CHECK (to_state IN (
                      'creation_scheduled', 'creating', 'update_scheduled', 'updating',
                      'deletion_scheduled', 'deleting', 'ok', 'erred')),
    reason        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (from_state IS NOT NULL OR to_state IS NOT NULL)
);

CREATE INDEX resource_events_resource ON resource_events (resource_id, seq);

-- Periodic jobs are tasks without an operation. At most one pending or
-- running task per job name: the database, not the scheduler, enforces it.
ALTER TABLE tasks ALTER COLUMN operation_id DROP NOT NULL;
ALTER TABLE tasks ADD COLUMN job text;
ALTER TABLE tasks ADD CONSTRAINT tasks_job_or_operation CHECK ((job IS NULL) <> (operation_id IS NULL));
ALTER TABLE tasks DROP CONSTRAINT tasks_type_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_type_check CHECK (type IN (
    'state_transition', 'backend_method', 'poll_runtime_state', 'poll_backend_check', 'throttle', 'job'));
CREATE UNIQUE INDEX tasks_one_live_job ON tasks (job) WHERE job IS NOT NULL AND state IN ('waiting', 'ready', 'running');
CREATE INDEX tasks_finished_jobs ON tasks (finished_at) WHERE job IS NOT NULL;

-- When each periodic job was last enqueued, so a new leader keeps the rhythm.
CREATE TABLE job_schedule (
    job              text PRIMARY KEY,
    last_enqueued_at timestamptz NOT NULL
);

-- Finished operations, oldest first, for pruning.
CREATE INDEX operations_finished ON operations (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
