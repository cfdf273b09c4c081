-- The events' indexes made the same on both backends: PostgreSQL had a
-- full index on run_id from its first schema, where SQLite has had, since
-- its migration 2, one over the held events only (`release` reads a held
-- run's events by run_id; every other read of a run's events goes by
-- as_of, permit_no or the cycle). The full index cost every event written
-- an entry (a first night at 10M permits writes 2.4 million events) and
-- served no query the others do not.
--
-- Building the partial index reads the events table once; held events
-- are few, so it is small. Applied in sqlx's transaction.
DROP INDEX events_run_id;
CREATE INDEX events_held_run ON events (run_id) WHERE held;
