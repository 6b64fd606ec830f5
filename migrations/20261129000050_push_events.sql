-- Push: one outbox row per event, fanned out to its subscriptions by the
-- deliverer, instead of one row per event and subscription written in the
-- step's transaction.
--
-- The triggers now write a `webhook_events` row (once per event, whatever
-- the number of subscriptions). The deliverer claims events in order per
-- resource, sends each to every enabled subscription that wants it, and
-- records the attempts; `webhook_messages` keeps only what the first send
-- did not finish: a failed send waiting for its retry, a send still running
-- after a short grace, a message queued behind one of those (order per
-- resource and subscription), and redeliveries. A delivered message is its
-- event row plus its attempt row.

-- A message's `webhook-id` (its uuid), the same on every attempt and after
-- a crash: derived from its event and its subscription.
CREATE FUNCTION webhook_message_id(event uuid, webhook uuid) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN md5(event::text || webhook::text)::uuid;

CREATE TABLE webhook_events (
    seq            bigserial PRIMARY KEY,
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    tenant         text NOT NULL,
    resource_id    uuid NOT NULL,
    event_type     text NOT NULL,
    payload        jsonb NOT NULL,
    -- Held by the deliverer fanning it out; a crash lets it run out, and
    -- the event is sent again (the same `webhook-id`s).
    lease_until    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    fanned_out_at  timestamptz
) WITH (fillfactor = 80);

-- What the deliverer claims, oldest first; and order per resource: an event
-- waits for every earlier one of its resource. Both as small as what is
-- still to fan out.
CREATE INDEX webhook_events_pending ON webhook_events (seq) WHERE fanned_out_at IS NULL;
CREATE INDEX webhook_events_order ON webhook_events (resource_id, seq) WHERE fanned_out_at IS NULL;

-- An attempt names its event (to send it again by request); a message row
-- exists only for what was not delivered at once, so attempts no longer
-- reference one, and a subscription's attempts are deleted with it by the
-- service (no foreign-key check per attempt written).
ALTER TABLE webhook_attempts
    DROP CONSTRAINT webhook_attempts_message_id_fkey,
    DROP CONSTRAINT webhook_attempts_webhook_id_fkey,
    ADD COLUMN event_seq bigint;
DROP INDEX webhook_attempts_message;

CREATE OR REPLACE FUNCTION webhook_operations_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (tenant, resource_id, event_type, payload)
    SELECT n.tenant, n.resource_id, e.type,
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
    WHERE n.state IN ('succeeded', 'failed', 'cancelled') AND o.state NOT IN ('succeeded', 'failed', 'cancelled')
      AND EXISTS (SELECT 1 FROM webhooks w
                  WHERE w.tenant = n.tenant AND w.enabled AND e.type = ANY (w.events))
    ORDER BY n.id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION webhook_resource_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (tenant, resource_id, event_type, payload)
    SELECT n.tenant, n.resource_id, e.type,
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
    WHERE EXISTS (SELECT 1 FROM webhooks w
                  WHERE w.tenant = n.tenant AND w.enabled AND e.type = ANY (w.events))
    ORDER BY n.seq;
    RETURN NULL;
END $$;
