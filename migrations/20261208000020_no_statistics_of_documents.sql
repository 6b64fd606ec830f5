-- No planner statistics of the JSON documents the service stores: steps'
-- arguments and results, requests, attributes, replies, payloads. No
-- statement filters, joins, groups or sorts on them, and they were most of
-- what an `ANALYZE` cost: of `tasks` with 8,000 rows, 92 ms with them and 28
-- ms without; of `webhook_events`, 55 ms and 22 ms. The runners analyze
-- young tables as they double (`db::stats`), and autovacuum analyzes them
-- all their life: each such pass is CPU taken from the steps.
--
-- `SET STATISTICS` takes a lock that does not block reads or writes, so
-- this runs beside a live service.

ALTER TABLE tasks
    ALTER COLUMN args SET STATISTICS 0,
    ALTER COLUMN result SET STATISTICS 0,
    ALTER COLUMN error_details SET STATISTICS 0;

ALTER TABLE operations
    ALTER COLUMN request SET STATISTICS 0;

ALTER TABLE resources
    ALTER COLUMN attributes SET STATISTICS 0,
    ALTER COLUMN action_details SET STATISTICS 0,
    ALTER COLUMN error_details SET STATISTICS 0,
    ALTER COLUMN status SET STATISTICS 0;

ALTER TABLE resource_events
    ALTER COLUMN details SET STATISTICS 0;

ALTER TABLE idempotency_keys
    ALTER COLUMN response SET STATISTICS 0;

ALTER TABLE sim_objects
    ALTER COLUMN attributes SET STATISTICS 0;

ALTER TABLE sim_effects
    ALTER COLUMN reply SET STATISTICS 0;

ALTER TABLE webhook_events
    ALTER COLUMN payload SET STATISTICS 0;

ALTER TABLE webhook_messages
    ALTER COLUMN payload SET STATISTICS 0;
