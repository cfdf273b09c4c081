-- Kept in step with SQLite's migration 0011, which makes its feed tables
-- keyed, one row per key, as PostgreSQL's have always been: nothing
-- changes here, and both backends report the same schema version.
SELECT 1;
