-- API tokens and tenants. Only a token's SHA-256 is stored; the token itself
-- is shown once, when it is created.
CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    tenant      text NOT NULL CHECK (tenant <> ''),
    role        text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    token_hash  text NOT NULL UNIQUE,
    prefix      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE INDEX api_tokens_active ON api_tokens (token_hash) WHERE revoked_at IS NULL;

-- Every resource, operation and event belongs to a tenant ('' while the
-- service runs open, without tokens).
ALTER TABLE resources ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE operations ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE resource_events ADD COLUMN tenant text NOT NULL DEFAULT '';
CREATE INDEX resources_tenant_id ON resources (tenant, id);
