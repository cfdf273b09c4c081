-- Kept in step with SQLite's migration 0004, which rewrote the CHECKs of
-- permits and notifications without IN lists because SQLite builds a
-- temporary B-tree for every row it checks against a list of three values
-- or more (issue #2). PostgreSQL tests IN lists directly: nothing changes
-- here, and both backends report the same schema version.
SELECT 1;
