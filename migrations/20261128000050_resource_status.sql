-- What backends report about a resource lives apart from the attributes its
-- users gave: a reported key can never break the attributes' schema.
ALTER TABLE resources ADD COLUMN status jsonb NOT NULL DEFAULT '{}'::jsonb;
