-- Kept in step with PostgreSQL's migration 0013, which gives its events
-- the index over held events by run_id that this backend's migration 2
-- made, in place of a full one: nothing changes here, and both backends
-- report the same schema version.
SELECT 1;
