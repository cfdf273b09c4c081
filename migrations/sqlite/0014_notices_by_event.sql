-- A night's notices are found through its events (`events_as_of`, then
-- each event's notice by the cycle key), not by an index of their own:
-- `notifications_as_of` cost every decision an entry, and every read by
-- night (the notification export, the reports, the metrics, revert,
-- requeue by date) now goes through the events. A notice takes its run's
-- as_of, its event's permit, cycle and kind, so the same notices are
-- found. The column stays. Applied in sqlx's transaction.
DROP INDEX notifications_as_of;
