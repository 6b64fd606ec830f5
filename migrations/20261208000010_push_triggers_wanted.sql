-- The outbox's triggers look for a subscription that wants their own
-- event types before they do any work. They fire on every change of their
-- table (each statement that updates operations, each that inserts
-- resource events) and looked for any enabled subscription: with
-- subscriptions to operation endings only, every resource event still ran
-- the resource trigger's insert, to write nothing. A trigger's types are
-- those of its prefix (`operation.`, `resource.`): no list of names is
-- repeated here.

CREATE OR REPLACE FUNCTION webhook_operations_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks w, unnest(w.events) t
                   WHERE w.enabled AND t LIKE 'operation.%') THEN
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
    IF NOT EXISTS (SELECT 1 FROM webhooks w, unnest(w.events) t
                   WHERE w.enabled AND t LIKE 'resource.%') THEN
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
