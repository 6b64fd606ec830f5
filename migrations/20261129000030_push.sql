-- Push: webhook subscriptions, their outbox, and the indexes of the
-- fleet-wide lists.

-- Fleet-wide lists: a tenant's operations newest first, and by state.
CREATE INDEX operations_tenant_id ON operations (tenant, id DESC);
CREATE INDEX operations_state_id ON operations (state, id DESC);

-- A webhook subscription. `secret` is `whsec_` and base64 of 24 random
-- bytes; it is shown once, when the subscription is made.
CREATE TABLE webhooks (
    id               uuid PRIMARY KEY,
    tenant           text NOT NULL,
    url              text NOT NULL,
    secret           text NOT NULL,
    events           text[] NOT NULL CHECK (cardinality(events) >= 1 AND events <@ ARRAY[
                         'operation.succeeded', 'operation.failed', 'operation.cancelled',
                         'resource.state_changed', 'resource.deleted']::text[]),
    description      text NOT NULL DEFAULT '',
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhooks_tenant_id ON webhooks (tenant, id DESC);

-- The outbox: one message per event and subscription, written by the
-- triggers below in the transaction of the change it reports. `id` is the
-- `webhook-id` header: the same on every attempt, and after a crash.
CREATE TABLE webhook_messages (
    seq              bigserial PRIMARY KEY,
    id               uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    webhook_id       uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    tenant           text NOT NULL,
    resource_id      uuid NOT NULL,
    event_type       text NOT NULL,
    payload          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Set when it is sent again by request: retries then run from here.
    requeued_at      timestamptz,
    finished_at      timestamptz,
    CHECK ((state = 'pending') = (finished_at IS NULL))
);

-- What the deliverer claims, oldest first; kept as small as what is pending.
CREATE INDEX webhook_messages_pending ON webhook_messages (next_attempt_at) WHERE state = 'pending';
-- Order per resource: a message waits for every earlier pending one of its
-- subscription and resource.
CREATE INDEX webhook_messages_order ON webhook_messages (webhook_id, resource_id, seq) WHERE state = 'pending';
CREATE INDEX webhook_messages_finished ON webhook_messages (finished_at) WHERE state <> 'pending';

-- Each delivery attempt: what the receiver answered, and how fast.
CREATE TABLE webhook_attempts (
    id            uuid PRIMARY KEY,
    webhook_id    uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    message_id    uuid NOT NULL REFERENCES webhook_messages (id) ON DELETE CASCADE,
    event_type    text NOT NULL,
    outcome       text NOT NULL CHECK (outcome IN ('delivered', 'failed', 'refused', 'gone')),
    status_code   integer,
    duration_ms   bigint NOT NULL,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_attempts_webhook ON webhook_attempts (webhook_id, id DESC);
CREATE INDEX webhook_attempts_message ON webhook_attempts (message_id);

-- Operation endings become messages for every enabled subscription of the
-- operation's tenant that wants them. A statement trigger, so a batch of
-- endings costs one look at `webhooks`, and nothing more when there is no
-- subscription at all.
CREATE FUNCTION webhook_operations_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_messages (webhook_id, tenant, resource_id, event_type, payload)
    SELECT w.id, n.tenant, n.resource_id, e.type,
           jsonb_build_object(
               'type', e.type,
               'version', 1,
               'timestamp', to_jsonb(n.finished_at),
               'data', jsonb_build_object(
                   'id', n.id, 'resource_id', n.resource_id, 'resource_kind', n.resource_kind,
                   'kind', n.kind, 'action', n.action, 'state', n.state, 'error', n.error,
                   'created_at', n.created_at, 'started_at', n.started_at,
                   'finished_at', n.finished_at))
    FROM new_rows n
    JOIN old_rows o ON o.id = n.id
    CROSS JOIN LATERAL (SELECT 'operation.' || n.state AS type) e
    JOIN webhooks w ON w.tenant = n.tenant AND w.enabled AND e.type = ANY (w.events)
    WHERE n.state IN ('succeeded', 'failed', 'cancelled') AND o.state NOT IN ('succeeded', 'failed', 'cancelled')
    ORDER BY n.id, w.id;
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_operations_ended
    AFTER UPDATE ON operations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_operations_ended();

-- Resource transitions (every one writes a `resource_events` row in the
-- statement that makes it) become messages the same way.
CREATE FUNCTION webhook_resource_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_messages (webhook_id, tenant, resource_id, event_type, payload)
    SELECT w.id, n.tenant, n.resource_id, e.type,
           jsonb_build_object(
               'type', e.type,
               'version', 1,
               'timestamp', to_jsonb(n.created_at),
               'data', jsonb_build_object(
                   'seq', n.seq, 'resource_id', n.resource_id,
                   'resource_kind', COALESCE(
                       (SELECT r.kind FROM resources r WHERE r.id = n.resource_id),
                       (SELECT op.resource_kind FROM operations op WHERE op.id = n.operation_id)),
                   'transition', n.transition, 'from_state', n.from_state, 'to_state', n.to_state,
                   'reason', n.reason, 'operation_id', n.operation_id, 'task_id', n.task_id,
                   'created_at', n.created_at))
    FROM new_rows n
    CROSS JOIN LATERAL (SELECT CASE WHEN n.to_state IS NULL THEN 'resource.deleted'
                                    ELSE 'resource.state_changed' END AS type) e
    JOIN webhooks w ON w.tenant = n.tenant AND w.enabled AND e.type = ANY (w.events)
    ORDER BY n.seq, w.id;
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_resource_events
    AFTER INSERT ON resource_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_resource_events();
