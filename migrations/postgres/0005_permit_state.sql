-- Kept in step with SQLite's migration 0005, which split the register into
-- permit_state (what a run changes) and permit_details, joined by a view
-- named permits, so that a SQLite run rewrites a narrow table instead of
-- the whole register through its WAL (issue #2). PostgreSQL writes a new
-- row version for an UPDATE whatever the table's width and is unchanged
-- here; both backends report the same schema version.
SELECT 1;
