-- `autosign requeue` (docs/operations.md, "After a gateway outage"): dead
-- or failed notices are queued again by an operator. The notice keeps its
-- row, id and idempotency key (derived from permit, cycle and kind); its
-- status, attempts and next_attempt_at change. What it was before, and
-- when, by which OS user and why it was requeued, is a row here, one per
-- notice and requeue; `requeue_id` is one operator command (all its rows
-- share it). Append-only, as the audit trail: the triggers refuse UPDATE
-- and DELETE.
CREATE TABLE notice_requeues (
    requeue_id        INTEGER NOT NULL,
    notification_id   INTEGER NOT NULL REFERENCES notifications (notification_id),
    requeued_at       TEXT NOT NULL,
    os_user           TEXT NOT NULL,
    reason            TEXT NOT NULL,
    previous_status   TEXT NOT NULL,
    previous_attempts INTEGER NOT NULL,
    previous_error    TEXT,
    PRIMARY KEY (requeue_id, notification_id)
);
CREATE INDEX notice_requeues_notice ON notice_requeues (notification_id);
CREATE TRIGGER notice_requeues_no_update BEFORE UPDATE ON notice_requeues
BEGIN
    SELECT RAISE(ABORT, 'notice_requeues is append-only');
END;
CREATE TRIGGER notice_requeues_no_delete BEFORE DELETE ON notice_requeues
BEGIN
    SELECT RAISE(ABORT, 'notice_requeues is append-only');
END;
