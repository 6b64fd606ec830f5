-- The closed sets of values (states, kinds, queues) and the simple ranges
-- move from table CHECK constraints to domains. The rule is the same; what
-- changes is its cost. PostgreSQL reads a table's CHECK constraints from
-- their stored text and plans them again at every INSERT or UPDATE statement
-- (once per statement, for all of them, whichever columns it sets): for
-- `tasks` that was about 60 µs per statement, most of it reading the
-- constants of the IN lists. A domain's constraint is read once per
-- connection and checked only where a value is assigned to such a column.
--
-- Each column becomes a domain without a constraint first (the table is not
-- rewritten; indexes on the column or naming it in their predicate are
-- rebuilt), then the domain gets its rule, which checks the rows already
-- there (a read).

CREATE DOMAIN resource_state AS text;
CREATE DOMAIN operation_kind AS text;
CREATE DOMAIN operation_state AS text;
CREATE DOMAIN operation_ending AS text;
CREATE DOMAIN task_type AS text;
CREATE DOMAIN task_queue AS text;
CREATE DOMAIN task_state AS text;
CREATE DOMAIN nonnegative_integer AS integer;
CREATE DOMAIN positive_integer AS integer;
CREATE DOMAIN json_object AS jsonb;
CREATE DOMAIN sim_kind AS text;
CREATE DOMAIN sim_runtime_state AS text;
CREATE DOMAIN sim_next_state AS text;
CREATE DOMAIN webhook_message_state AS text;
CREATE DOMAIN webhook_attempt_outcome AS text;

ALTER TABLE resources
    DROP CONSTRAINT resources_state_check,
    DROP CONSTRAINT resources_attributes_check,
    ALTER COLUMN state TYPE resource_state,
    ALTER COLUMN attributes TYPE json_object;

ALTER TABLE resource_events
    DROP CONSTRAINT resource_events_from_state_check,
    DROP CONSTRAINT resource_events_to_state_check,
    ALTER COLUMN from_state TYPE resource_state,
    ALTER COLUMN to_state TYPE resource_state;

ALTER TABLE operations
    DROP CONSTRAINT operations_kind_check,
    DROP CONSTRAINT operations_state_check,
    DROP CONSTRAINT operations_ends_as_check,
    DROP CONSTRAINT operations_step_count_check,
    ALTER COLUMN kind TYPE operation_kind,
    ALTER COLUMN state TYPE operation_state,
    ALTER COLUMN ends_as TYPE operation_ending,
    ALTER COLUMN step_count TYPE positive_integer;

ALTER TABLE tasks
    DROP CONSTRAINT tasks_type_check,
    DROP CONSTRAINT tasks_queue_check,
    DROP CONSTRAINT tasks_state_check,
    DROP CONSTRAINT tasks_position_check,
    DROP CONSTRAINT tasks_max_attempts_check,
    DROP CONSTRAINT tasks_blocked_by_check,
    ALTER COLUMN type TYPE task_type,
    ALTER COLUMN queue TYPE task_queue,
    ALTER COLUMN state TYPE task_state,
    ALTER COLUMN position TYPE nonnegative_integer,
    ALTER COLUMN max_attempts TYPE positive_integer,
    ALTER COLUMN blocked_by TYPE nonnegative_integer;

ALTER TABLE throttle_slots
    DROP CONSTRAINT throttle_slots_slot_limit_check,
    ALTER COLUMN slot_limit TYPE positive_integer;

ALTER TABLE sim_objects
    DROP CONSTRAINT sim_objects_kind_check,
    DROP CONSTRAINT sim_objects_runtime_state_check,
    DROP CONSTRAINT sim_objects_next_state_check,
    ALTER COLUMN kind TYPE sim_kind,
    ALTER COLUMN runtime_state TYPE sim_runtime_state,
    ALTER COLUMN next_state TYPE sim_next_state;

ALTER TABLE sim_effects
    DROP CONSTRAINT sim_effects_reply_check,
    DROP CONSTRAINT sim_effects_applied_check,
    ALTER COLUMN reply TYPE json_object,
    ALTER COLUMN applied TYPE positive_integer;

ALTER TABLE webhook_messages
    DROP CONSTRAINT webhook_messages_state_check,
    ALTER COLUMN state TYPE webhook_message_state;

ALTER TABLE webhook_attempts
    DROP CONSTRAINT webhook_attempts_outcome_check,
    ALTER COLUMN outcome TYPE webhook_attempt_outcome;

ALTER DOMAIN resource_state ADD CONSTRAINT resource_state_check CHECK (VALUE IN (
    'creation_scheduled', 'creating', 'update_scheduled', 'updating',
    'deletion_scheduled', 'deleting', 'ok', 'erred'));
ALTER DOMAIN operation_kind ADD CONSTRAINT operation_kind_check CHECK (VALUE IN (
    'create', 'update', 'delete', 'action', 'import', 'pull'));
ALTER DOMAIN operation_state ADD CONSTRAINT operation_state_check CHECK (VALUE IN (
    'scheduled', 'running', 'compensating', 'succeeded', 'failed', 'cancelled'));
ALTER DOMAIN operation_ending ADD CONSTRAINT operation_ending_check CHECK (VALUE IN ('failed', 'cancelled'));
ALTER DOMAIN task_type ADD CONSTRAINT task_type_check CHECK (VALUE IN (
    'state_transition', 'backend_method', 'poll_runtime_state', 'poll_backend_check', 'throttle', 'job'));
ALTER DOMAIN task_queue ADD CONSTRAINT task_queue_check CHECK (VALUE IN ('regular', 'heavy', 'background'));
ALTER DOMAIN task_state ADD CONSTRAINT task_state_check CHECK (VALUE IN (
    'waiting', 'ready', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER DOMAIN nonnegative_integer ADD CONSTRAINT nonnegative_integer_check CHECK (VALUE >= 0);
ALTER DOMAIN positive_integer ADD CONSTRAINT positive_integer_check CHECK (VALUE >= 1);
ALTER DOMAIN json_object ADD CONSTRAINT json_object_check CHECK (jsonb_typeof(VALUE) = 'object');
ALTER DOMAIN sim_kind ADD CONSTRAINT sim_kind_check CHECK (VALUE IN ('instance', 'volume', 'port', 'floating_ip'));
ALTER DOMAIN sim_runtime_state ADD CONSTRAINT sim_runtime_state_check CHECK (VALUE IN (
    'BUILD', 'ACTIVE', 'SHUTOFF', 'REBOOT', 'RESIZE', 'DELETING', 'ERROR',
    'creating', 'available', 'extending', 'deleting', 'error', 'in-use', 'DOWN'));
ALTER DOMAIN sim_next_state ADD CONSTRAINT sim_next_state_check CHECK (VALUE IN (
    'BUILD', 'ACTIVE', 'SHUTOFF', 'REBOOT', 'RESIZE', 'DELETING', 'ERROR',
    'creating', 'available', 'extending', 'deleting', 'error', 'in-use', 'DOWN', 'gone'));
ALTER DOMAIN webhook_message_state ADD CONSTRAINT webhook_message_state_check CHECK (VALUE IN (
    'pending', 'delivered', 'failed'));
ALTER DOMAIN webhook_attempt_outcome ADD CONSTRAINT webhook_attempt_outcome_check CHECK (VALUE IN (
    'delivered', 'failed', 'refused', 'gone'));
