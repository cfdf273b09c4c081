-- How long a run's last attempt took, in seconds, measured by the process
-- that ran it with a monotonic clock (`autosign_last_successful_run_duration_seconds`).
-- `started_at` and `finished_at` are whole seconds and follow the injected
-- clock of a rehearsal: their difference says 0 for a short run. NULL
-- while the run is in progress, and for runs completed before this
-- migration (the metric then falls back to the timestamps). Adding a
-- nullable column rewrites no row.
ALTER TABLE runs ADD COLUMN duration_secs REAL;
