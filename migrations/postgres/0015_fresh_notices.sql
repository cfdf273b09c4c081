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
-- On this backend `notifications_due` becomes a partial index that
-- leaves fresh notices out (and sent, withdrawn and undeliverable ones,
-- whose `next_attempt_at` is NULL): it holds the notices a claim, a
-- retry or a requeue has scheduled, and the dead ones the backlog
-- counts. Every notice of a night took an entry in it, all at the same
-- end of the index: 5-14 % of a first night's run at 1M permits
-- (docs/benchmarks-postgres.md). SQLite keeps the whole index, which its
-- count by status reads instead of the table.
--
-- The notices already queued keep their `next_attempt_at`, so the marks
-- start at the largest id. Applied in sqlx's transaction; the index is
-- built from the table once.
CREATE TABLE delivery_marks (
    channel     TEXT COLLATE "C" PRIMARY KEY CHECK (channel IN ('sms', 'email')),
    fresh_after BIGINT NOT NULL
);
INSERT INTO delivery_marks (channel, fresh_after)
    SELECT c.channel, (SELECT coalesce(max(notification_id), 0) FROM notifications)
    FROM (VALUES ('sms'), ('email')) AS c (channel);
DROP INDEX notifications_due;
CREATE INDEX notifications_due ON notifications (status, next_attempt_at)
    WHERE status = 'dead' OR next_attempt_at IS NOT NULL;
