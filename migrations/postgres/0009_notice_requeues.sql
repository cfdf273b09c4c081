-- `autosign requeue`; the same table, keys and meaning as
-- migrations/sqlite/0009_notice_requeues.sql: one row per notice an
-- operator queued again (dead or failed before), with when, the OS user,
-- the reason and the notice's status, attempts and last error before.
-- `requeue_id` is one command. Append-only.
CREATE TABLE notice_requeues (
    requeue_id        BIGINT NOT NULL,
    notification_id   BIGINT NOT NULL,
    requeued_at       TEXT COLLATE "C" NOT NULL,
    os_user           TEXT COLLATE "C" NOT NULL,
    reason            TEXT COLLATE "C" NOT NULL,
    previous_status   TEXT COLLATE "C" NOT NULL,
    previous_attempts BIGINT NOT NULL,
    previous_error    TEXT COLLATE "C",
    PRIMARY KEY (requeue_id, notification_id)
);
CREATE INDEX notice_requeues_notice ON notice_requeues (notification_id);
CREATE TRIGGER notice_requeues_append_only BEFORE UPDATE OR DELETE ON notice_requeues
    FOR EACH ROW EXECUTE FUNCTION autosign_append_only();
CREATE TRIGGER notice_requeues_no_truncate BEFORE TRUNCATE ON notice_requeues
    FOR EACH STATEMENT EXECUTE FUNCTION autosign_append_only();
