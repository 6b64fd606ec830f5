-- executord: resources, the operations run on them, and their tasks (one row per step).
-- Every state column is CHECKed against the Rust enum of the same name.

CREATE TABLE resources (
    id                   uuid PRIMARY KEY,
    kind                 text NOT NULL,
    name                 text NOT NULL,
    state                text NOT NULL CHECK (state IN (
                             'creation_scheduled', 'creating', 'update_scheduled', 'updating',
                             'deletion_scheduled', 'deleting', 'ok', 'erred')),
    runtime_state        text,
    backend_id           text,
    attributes           jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(attributes) = 'object'),
    action               text,
    action_details       jsonb,
    error_message        text,
    error_details        jsonb,
    current_operation_id uuid,
    version              bigint NOT NULL DEFAULT 1,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX resources_kind_id ON resources (kind, id);
CREATE INDEX resources_state_id ON resources (state, id);

-- No foreign key to resources: a deleted resource keeps its operations.
CREATE TABLE operations (
    id              uuid PRIMARY KEY,
    resource_id     uuid NOT NULL,
    resource_kind   text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('create', 'update', 'delete', 'action')),
    action          text,
    state           text NOT NULL CHECK (state IN ('scheduled', 'running', 'succeeded', 'failed', 'cancelled')),
    request         jsonb NOT NULL DEFAULT '{}'::jsonb,
    error           text,
    step_count      integer NOT NULL CHECK (step_count >= 1),
    steps_done      integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    CHECK ((state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);

CREATE INDEX operations_resource_id ON operations (resource_id, id DESC);

CREATE TABLE tasks (
    id            uuid PRIMARY KEY,
    operation_id  uuid NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    position      integer NOT NULL CHECK (position >= 0),
    type          text NOT NULL CHECK (type IN (
                      'state_transition', 'backend_method', 'poll_runtime_state',
                      'poll_backend_check', 'throttle')),
    args          jsonb NOT NULL,
    queue         text NOT NULL CHECK (queue IN ('regular', 'heavy', 'background')),
    state         text NOT NULL CHECK (state IN ('waiting', 'ready', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL CHECK (max_attempts >= 1),
    run_at        timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz,
    lease_token   uuid,
    worker        text,
    status        text,
    last_error    text,
    result        jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    UNIQUE (operation_id, position),
    CHECK ((state = 'running') = (lease_token IS NOT NULL AND lease_until IS NOT NULL))
);

-- The hot path: only ready rows, so it stays small however much history exists.
CREATE INDEX tasks_ready ON tasks (queue, run_at) WHERE state = 'ready';
-- Lease expiry scans only running rows.
CREATE INDEX tasks_running_lease ON tasks (lease_until) WHERE state = 'running';

-- Throttle slots: a row per operation that holds or waits for a slot of a scope.
-- Granted in FIFO order (by seq) under a per-scope advisory lock.
CREATE TABLE throttle_slots (
    scope         text NOT NULL,
    operation_id  uuid NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    task_id       uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    slot_limit    integer NOT NULL CHECK (slot_limit >= 1),
    held          boolean NOT NULL,
    seq           bigserial NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, operation_id)
);

CREATE INDEX throttle_slots_waiting ON throttle_slots (scope, seq) WHERE NOT held;
CREATE INDEX throttle_slots_operation ON throttle_slots (operation_id);

-- Idempotency keys: the first successful response to a key, replayed on a repeat.
CREATE TABLE idempotency_keys (
    key           text PRIMARY KEY,
    request_hash  text NOT NULL,
    status        smallint,
    response      jsonb,
    location      text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
