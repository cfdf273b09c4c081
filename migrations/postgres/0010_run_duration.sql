-- How long a run's last attempt took, in seconds; the same column and
-- meaning as migrations/sqlite/0010_run_duration.sql: measured by the
-- process that ran it with a monotonic clock, NULL while the run is in
-- progress and for runs completed before this migration. Adding a
-- nullable column rewrites no row.
ALTER TABLE runs ADD COLUMN duration_secs DOUBLE PRECISION;
