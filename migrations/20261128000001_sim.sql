-- The simulated backend's shared store (`Sim::shared`): the simulated cloud
-- itself, so every executord process on this database sees the same one.
-- Written only by src/backend/sim/shared.rs; nothing else reads it but tests.

-- Live simulated objects. A pending transition moves runtime_state to
-- next_state at next_at; next_state 'gone' means the object then disappears
-- (the end of a delete). Rows whose 'gone' is due count as gone even before
-- a call removes them.
CREATE TABLE sim_objects (
    backend_id     text PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('instance', 'volume')),
    tenant         text NOT NULL,
    runtime_state  text NOT NULL CHECK (runtime_state IN (
                       'BUILD', 'ACTIVE', 'SHUTOFF', 'REBOOT', 'RESIZE', 'DELETING', 'ERROR',
                       'creating', 'available', 'extending', 'deleting', 'error')),
    next_state     text CHECK (next_state IN (
                       'BUILD', 'ACTIVE', 'SHUTOFF', 'REBOOT', 'RESIZE', 'DELETING', 'ERROR',
                       'creating', 'available', 'extending', 'deleting', 'error', 'gone')),
    next_at        timestamptz,
    attributes     jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Counted in the tenant's creations in flight until a pull sees it built, or it is deleted.
    in_flight      boolean NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((next_state IS NULL) = (next_at IS NULL)),
    CHECK (NOT (in_flight AND next_state IS NOT DISTINCT FROM 'gone'))
);

-- The quota and the in-flight count are per tenant.
CREATE INDEX sim_objects_tenant ON sim_objects (tenant);

-- The first successful effect under each idempotency key, replayed on a
-- repeat. `applied` counts how many times it was applied: more than 1 is an
-- idempotency violation.
CREATE TABLE sim_effects (
    idempotency_key  uuid PRIMARY KEY,
    method           text NOT NULL CHECK (method <> ''),
    resource_id      uuid NOT NULL,
    reply            jsonb NOT NULL CHECK (jsonb_typeof(reply) = 'object'),
    applied          integer NOT NULL CHECK (applied >= 1),
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Injected transient failures (`attributes.sim.transient_failures`) already
-- given, per resource.
CREATE TABLE sim_transient (
    resource_id    uuid PRIMARY KEY,
    failures_seen  integer NOT NULL CHECK (failures_seen >= 0)
);

-- The most creations each tenant ever had in flight at once.
CREATE TABLE sim_tenants (
    tenant         text PRIMARY KEY,
    max_in_flight  integer NOT NULL CHECK (max_in_flight >= 0)
);
