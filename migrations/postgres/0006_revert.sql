-- `autosign revert RUN_ID` (docs/operations.md, "After a wrong date"); the
-- same tables, keys and meaning as migrations/sqlite/0006_revert.sql:
--
-- 1. runs: status 'reverted' (and reverted_at); a reverted run, like a
--    discarded one, does not hold its as_of.
-- 2. notifications: status 'withdrawn'; the one-notice-per-(permit, cycle,
--    kind) key (R8) over live notices only: `live` is 1, NULL once
--    withdrawn, and NULLs are distinct in a UNIQUE key.
-- 3. events: the applied-event index is no longer UNIQUE (a reverted event
--    stays, and the real date may decide the same cycle again); the live
--    notice of each applied event keeps one per cycle and kind.
--    prior_status: for a CANCELLED event, the status before (active or
--    suspended), which a revert restores.
-- 4. event_reverts: what a revert did with each event in effect (undone,
--    or not because the permit had changed since). Append-only.

ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('running', 'completed', 'held', 'discarded', 'reverted'));
ALTER TABLE runs ADD COLUMN reverted_at TEXT COLLATE "C";
DROP INDEX runs_as_of;
CREATE UNIQUE INDEX runs_as_of ON runs (as_of) WHERE status <> 'discarded' AND status <> 'reverted';

ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('queued', 'sent', 'failed', 'dead', 'undeliverable', 'withdrawn'));
ALTER TABLE notifications ADD COLUMN live SMALLINT DEFAULT 1 CHECK (live = 1);
ALTER TABLE notifications DROP CONSTRAINT notifications_permit_no_cycle_valid_until_kind_key;
ALTER TABLE notifications ADD CONSTRAINT notifications_cycle_key
    UNIQUE (permit_no, cycle_valid_until, kind, live);

DROP INDEX events_cycle;
CREATE INDEX events_cycle ON events (permit_no, valid_until, kind) WHERE NOT held;
ALTER TABLE events ADD COLUMN prior_status TEXT COLLATE "C";

CREATE TABLE event_reverts (
    event_id    BIGINT PRIMARY KEY,
    run_id      BIGINT NOT NULL,
    undone      BOOLEAN NOT NULL,
    reverted_at TEXT COLLATE "C" NOT NULL
);
CREATE TRIGGER event_reverts_append_only BEFORE UPDATE OR DELETE ON event_reverts
    FOR EACH ROW EXECUTE FUNCTION autosign_append_only();
CREATE TRIGGER event_reverts_no_truncate BEFORE TRUNCATE ON event_reverts
    FOR EACH STATEMENT EXECUTE FUNCTION autosign_append_only();
