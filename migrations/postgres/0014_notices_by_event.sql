-- A night's notices are found through its events (`events_as_of`, then
-- each event's notice by the cycle key), not by an index of their own:
-- `notifications_as_of` cost every decision an entry, and every read by
-- night (the notification export, the reports, the metrics, revert,
-- requeue by date) now goes through the events. A notice takes its run's
-- as_of, its event's permit, cycle and kind, so the same notices are
-- found. The column stays.
--
-- `events_as_of` becomes a BRIN index on this backend (SQLite keeps its
-- B-tree on (as_of, permit_no), whose order its audit export reads
-- without a sort; SQLite has no BRIN). Events are only ever appended —
-- no statement updates or deletes one — and a run writes its night's
-- events together, so the heap lies in as_of order and a summary per
-- 128 pages finds a night's rows; each event costs it next to nothing,
-- where the B-tree took an entry (with `notifications_as_of`, 0.6-0.8 s
-- of a 4.4-4.9 s first night at 1M permits; docs/benchmarks-postgres.md).
-- This server sorts the audit export's rows instead. `autosummarize`
-- has a range of pages summarized once the next is written to, so the
-- reads of a night do not wait for a vacuum to skip the ranges before.
--
-- Applied in sqlx's transaction; building the index reads the events
-- table once.
DROP INDEX notifications_as_of;
DROP INDEX events_as_of;
CREATE INDEX events_as_of ON events USING brin (as_of) WITH (autosummarize = on);
