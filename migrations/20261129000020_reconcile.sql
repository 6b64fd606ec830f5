-- Adopt and reconcile (import, pull on demand, drift, operator overrides,
-- errors explained).

-- A failed step's full backend error: message, class, HTTP status or exit
-- code, and the start of the reply's body.
ALTER TABLE tasks ADD COLUMN error_details jsonb;

-- More about an event than its reason: a drift's before and after, an
-- override's actor.
ALTER TABLE resource_events ADD COLUMN details jsonb;

-- Two new executors: import (adopt an existing backend object) and pull
-- (refresh a resource's runtime state and status now).
ALTER TABLE operations DROP CONSTRAINT operations_kind_check;
ALTER TABLE operations ADD CONSTRAINT operations_kind_check
    CHECK (kind IN ('create', 'update', 'delete', 'action', 'import', 'pull'));

-- Finding a kind's resource by its backend id: the duplicate check of an
-- import (made under an advisory lock) and the importable list. Not unique:
-- a backend may hand out an id again once its object is gone, and a kind's
-- objects are the backend's to name.
CREATE INDEX resources_kind_backend_id ON resources (kind, backend_id) WHERE backend_id IS NOT NULL;

-- When the periodic pull last pulled each kind, so a kind's `pull_interval_s`
-- holds across processes and leaders.
CREATE TABLE kind_pulls (
    kind       text PRIMARY KEY,
    pulled_at  timestamptz NOT NULL
);
