-- no-transaction
-- `autosign revert RUN_ID`: a completed run whose notices have not gone out
-- can be undone after an operator ran a wrong date (docs/operations.md,
-- "After a wrong date"). The trail stays append-only: the run is marked
-- 'reverted', what the revert did with each event is a new row in
-- event_reverts, and the run's unsent notices become 'withdrawn' (never
-- deleted).
--
-- 1. runs: status 'reverted' (and reverted_at). A reverted run, like a
--    discarded one, does not hold its as_of: the real date may run again.
-- 2. notifications: status 'withdrawn', and the one-notice-per-(permit,
--    cycle, kind) key (R8) over live notices only. A withdrawn notice has
--    `live` NULL, and NULLs are distinct in a UNIQUE key, so a later run may
--    queue a fresh notice for the same cycle. Kept as a full UNIQUE key
--    rather than a partial index: its prefix (permit_no, cycle_valid_until,
--    kind) is what the audit export's join and the run's writes use.
-- 3. events: the one-applied-event-per-(permit, cycle, kind) index is no
--    longer UNIQUE (a reverted event stays, and the real date may decide
--    the same cycle again; an event row can never be changed to say it was
--    reverted). One live event per cycle and kind is kept by the run (a
--    decided cycle is never a candidate, C8) and by the live notice each
--    applied event queues in the same transaction (2. above).
--    prior_status: for a CANCELLED event, the status the permit had before
--    (active or suspended, R3/C1), which a revert restores; NULL for other
--    kinds and for events written before this migration.
-- 4. event_reverts: what a revert did with each event in effect: undone (the
--    permit set back, the cycle open again) or not (the permit had changed
--    since the run, e.g. a later valid_until from an import). Append-only.
--
-- SQLite cannot alter a CHECK or a UNIQUE key, so runs and notifications
-- are rebuilt (every row and id kept); as in migrations 2 and 4, foreign
-- keys are off and the migration opens its own transaction.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE runs_new (
    run_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    as_of        TEXT NOT NULL,
    status       TEXT NOT NULL
        CHECK (status = 'running' OR status = 'completed' OR status = 'held'
               OR status = 'discarded' OR status = 'reverted'),
    attempts     INTEGER NOT NULL DEFAULT 1,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    pending      INTEGER NOT NULL DEFAULT 0,
    brake        TEXT,
    import_mark  INTEGER,
    released_at  TEXT,
    discarded_at TEXT,
    reverted_at  TEXT
);
INSERT INTO runs_new (run_id, as_of, status, attempts, started_at, finished_at, pending, brake,
        import_mark, released_at, discarded_at)
    SELECT run_id, as_of, status, attempts, started_at, finished_at, pending, brake, import_mark,
        released_at, discarded_at FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
-- One live run per as_of: neither a discarded nor a reverted run holds its
-- date (C8 applies to completed runs).
CREATE UNIQUE INDEX runs_as_of ON runs (as_of) WHERE status <> 'discarded' AND status <> 'reverted';

CREATE TABLE notifications_new (
    notification_id   INTEGER PRIMARY KEY,
    run_id            INTEGER NOT NULL REFERENCES runs (run_id),
    as_of             TEXT NOT NULL,
    permit_no         TEXT NOT NULL,
    cycle_valid_until TEXT NOT NULL,
    kind              TEXT NOT NULL,
    channel           TEXT NOT NULL
        CHECK (channel = 'sms' OR channel = 'email' OR channel = 'none'),
    recipient         TEXT NOT NULL DEFAULT '',
    message           TEXT NOT NULL,
    status            TEXT NOT NULL
        CHECK (status = 'queued' OR status = 'sent' OR status = 'failed' OR status = 'dead'
               OR status = 'undeliverable' OR status = 'withdrawn'),
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   TEXT,
    last_error        TEXT,
    provider_ref      TEXT,
    created_at        TEXT NOT NULL,
    sent_at           TEXT,
    -- 1 for a live notice, NULL once withdrawn.
    live              INTEGER DEFAULT 1 CHECK (live = 1),
    UNIQUE (permit_no, cycle_valid_until, kind, live)
);
INSERT INTO notifications_new (notification_id, run_id, as_of, permit_no, cycle_valid_until, kind,
        channel, recipient, message, status, attempts, next_attempt_at, last_error, provider_ref,
        created_at, sent_at)
    SELECT notification_id, run_id, as_of, permit_no, cycle_valid_until, kind, channel,
           recipient, message, status, attempts, next_attempt_at, last_error, provider_ref,
           created_at, sent_at
    FROM notifications;
DROP TABLE notifications;
ALTER TABLE notifications_new RENAME TO notifications;
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX notifications_as_of ON notifications (as_of, permit_no);

DROP INDEX events_cycle;
CREATE INDEX events_cycle ON events (permit_no, valid_until, kind) WHERE held = 0;
ALTER TABLE events ADD COLUMN prior_status TEXT;

CREATE TABLE event_reverts (
    event_id    INTEGER PRIMARY KEY REFERENCES events (event_id),
    run_id      INTEGER NOT NULL REFERENCES runs (run_id),
    undone      INTEGER NOT NULL CHECK (undone = 0 OR undone = 1),
    reverted_at TEXT NOT NULL
);
CREATE TRIGGER event_reverts_no_update BEFORE UPDATE ON event_reverts
BEGIN
    SELECT RAISE(ABORT, 'event_reverts is append-only');
END;
CREATE TRIGGER event_reverts_no_delete BEFORE DELETE ON event_reverts
BEGIN
    SELECT RAISE(ABORT, 'event_reverts is append-only');
END;

COMMIT;
PRAGMA foreign_keys = ON;
