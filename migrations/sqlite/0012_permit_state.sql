-- Kept in step with PostgreSQL's migration 0012, which splits its register
-- into permit_state and permit_details behind a `permits` view, as this
-- backend's migration 5 did: nothing changes here, and both backends
-- report the same schema version.
SELECT 1;
