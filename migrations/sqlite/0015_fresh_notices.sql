-- A notice queued by a run or a release is written without a
-- `next_attempt_at`: NULL on a queued notice means due since it was
-- created (the exports and `status` show its `created_at`, as before).
-- The delivery worker finds such fresh notices by id, from a mark per
-- channel: every notice of the channel with `notification_id <=
-- fresh_after` has been claimed at least once or was never queued. A
-- claim moves the mark up to the first fresh notice left
-- (`src/db/outbox.rs`); once claimed, a notice's `next_attempt_at` is its
-- lease, and the worker finds it by `notifications_due` as before.
--
-- On PostgreSQL `notifications_due` leaves fresh notices out (a partial
-- index), so a night's notices cost it no entry. Here it keeps every
-- notice: the outbox's count by status reads it instead of the table,
-- and the entry costs this backend nothing measurable (docs/
-- benchmarks-postgres.md).
--
-- The notices already queued keep their `next_attempt_at`, so the marks
-- start at the largest id. Applied in sqlx's transaction.
CREATE TABLE delivery_marks (
    channel     TEXT PRIMARY KEY CHECK (channel IN ('sms', 'email')),
    fresh_after INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO delivery_marks (channel, fresh_after)
    SELECT c.channel, (SELECT coalesce(max(notification_id), 0) FROM notifications)
    FROM (SELECT 'sms' AS channel UNION ALL SELECT 'email') AS c;
