-- Composite resources and task graphs.
--
-- A resource may be part of another (a server's volumes, port and floating
-- IP): `parent_id` and its `role` there. An operation's tasks form a graph,
-- not only a line: each task names the resource it acts on, the positions
-- of the tasks that wait for it (`next`) and how many tasks it still waits
-- for (`blocked_by`, decremented as each of them succeeds). A chain that is
-- a line has `next = {position + 1}` and `blocked_by = 1` after its first
-- step, which is what every existing row gets here.

ALTER TABLE resources
    ADD COLUMN parent_id uuid,
    ADD COLUMN role text,
    ADD CONSTRAINT resources_child_has_role CHECK ((parent_id IS NULL) = (role IS NULL));
CREATE INDEX resources_parent ON resources (parent_id, id) WHERE parent_id IS NOT NULL;

ALTER TABLE tasks
    ADD COLUMN resource_id uuid,
    ADD COLUMN next integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN blocked_by integer NOT NULL DEFAULT 0 CHECK (blocked_by >= 0),
    ADD COLUMN undo boolean NOT NULL DEFAULT false;

UPDATE tasks t
SET resource_id = o.resource_id,
    next = CASE WHEN t.position + 1 < o.step_count THEN ARRAY[t.position + 1] ELSE '{}'::integer[] END,
    blocked_by = CASE WHEN t.position > 0 AND EXISTS (
                     SELECT 1 FROM tasks p
                     WHERE p.operation_id = t.operation_id AND p.position = t.position - 1
                       AND p.state <> 'succeeded') THEN 1 ELSE 0 END
FROM operations o
WHERE o.id = t.operation_id;

ALTER TABLE tasks ADD CONSTRAINT tasks_step_has_resource CHECK ((operation_id IS NULL) = (resource_id IS NULL));

-- An operation whose tasks are not a line (they fan out, or act on more than
-- one resource) is a `graph`: its recordings lock its row, so that two steps
-- ending at once agree on what is left to run.
ALTER TABLE operations ADD COLUMN graph boolean NOT NULL DEFAULT false;

-- An operation whose step failed (or that was cancelled) while others still
-- ran, or whose kind undoes a failed create, is `compensating` until those
-- have ended and its compensation has run; it then ends as `ends_as` says.
-- `compensation_at` is the position of its first compensation task.
ALTER TABLE operations DROP CONSTRAINT operations_state_check;
ALTER TABLE operations ADD CONSTRAINT operations_state_check CHECK (state IN (
    'scheduled', 'running', 'compensating', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE operations
    ADD COLUMN ends_as text CHECK (ends_as IN ('failed', 'cancelled')),
    ADD COLUMN compensation_at integer,
    ADD CONSTRAINT operations_compensating_ends CHECK ((state = 'compensating') <= (ends_as IS NOT NULL));
