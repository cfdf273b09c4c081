-- no-transaction
-- Issue #2: the run's tables, rebuilt for speed; the same rows and ids.
--
-- 1. CHECK constraints written without IN lists. SQLite evaluates
--    `x IN ('a', 'b', 'c')` (three values or more) in a CHECK by building a
--    temporary B-tree of the list for every row it writes: the permits
--    import and the nightly run (which updates permits and queues a notice
--    per decision) spent ~5-8 % of their time opening and closing them. A
--    chain of `=` tests accepts exactly the same values and costs a few
--    comparisons.
-- 2. events and notifications without AUTOINCREMENT. It made SQLite read
--    and rewrite sqlite_sequence for every inserted row: ~8 % of a first
--    night's run. Neither table ever loses a row (events refuse DELETE,
--    a purge keeps the notice row), so a plain rowid primary key gives the
--    same ids: one above the largest.
--
-- SQLite cannot alter a CHECK or a primary key, so permits, notifications
-- and events are rebuilt (SQLite's "other kinds of table schema changes"
-- procedure): every row, column, notification_id and event_id is kept, and
-- the indexes and append-only triggers are made again. event_releases
-- references events: with foreign keys on, dropping the old events table
-- would count every referencing row as a violation, so, as in migration 2,
-- foreign keys are off for this migration, which runs outside sqlx's
-- transaction and opens its own. Applying it twice (a crash after its
-- COMMIT, before sqlx records it) rebuilds the same tables again.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE permits_new (
    permit_no         TEXT PRIMARY KEY,
    id_number         TEXT NOT NULL,
    name              TEXT NOT NULL,
    phone             TEXT,
    email             TEXT,
    district_code     TEXT NOT NULL,
    street_code       TEXT NOT NULL,
    address           TEXT NOT NULL,
    valid_until       TEXT NOT NULL,
    status            TEXT NOT NULL
        CHECK (status = 'active' OR status = 'suspended' OR status = 'cancelled'),
    employer_uscc     TEXT NOT NULL DEFAULT '',
    si_status         TEXT NOT NULL CHECK (si_status = 'paying' OR si_status = 'not_paying'),
    marital_status    TEXT NOT NULL,
    import_id         INTEGER NOT NULL,
    import_line       INTEGER NOT NULL DEFAULT 0,
    prior_valid_until TEXT,
    prior_status      TEXT
) WITHOUT ROWID;
INSERT INTO permits_new
    SELECT permit_no, id_number, name, phone, email, district_code, street_code, address,
           valid_until, status, employer_uscc, si_status, marital_status, import_id,
           import_line, prior_valid_until, prior_status
    FROM permits;
DROP TABLE permits;
ALTER TABLE permits_new RENAME TO permits;

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
               OR status = 'undeliverable'),
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   TEXT,
    last_error        TEXT,
    provider_ref      TEXT,
    created_at        TEXT NOT NULL,
    sent_at           TEXT,
    UNIQUE (permit_no, cycle_valid_until, kind)
);
INSERT INTO notifications_new
    SELECT notification_id, run_id, as_of, permit_no, cycle_valid_until, kind, channel,
           recipient, message, status, attempts, next_attempt_at, last_error, provider_ref,
           created_at, sent_at
    FROM notifications;
DROP TABLE notifications;
ALTER TABLE notifications_new RENAME TO notifications;
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX notifications_as_of ON notifications (as_of, permit_no);

CREATE TABLE events_new (
    event_id             INTEGER PRIMARY KEY,
    run_id               INTEGER NOT NULL REFERENCES runs (run_id),
    as_of                TEXT NOT NULL,
    permit_no            TEXT NOT NULL,
    id_number            TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    reasons              TEXT NOT NULL DEFAULT '',
    valid_until          TEXT NOT NULL,
    new_valid_until      TEXT,
    residence_visited_on TEXT,
    residence_result     TEXT,
    si_month             TEXT,
    si_status            TEXT,
    si_employer_uscc     TEXT,
    marital_status       TEXT,
    decided_at           TEXT NOT NULL,
    -- 1: written by a run the brake held (not applied when written).
    held                 INTEGER NOT NULL DEFAULT 0 CHECK (held = 0 OR held = 1)
);
INSERT INTO events_new
    SELECT event_id, run_id, as_of, permit_no, id_number, kind, reasons, valid_until,
           new_valid_until, residence_visited_on, residence_result, si_month, si_status,
           si_employer_uscc, marital_status, decided_at, held
    FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
-- As made by migration 2.
CREATE UNIQUE INDEX events_cycle ON events (permit_no, valid_until, kind) WHERE held = 0;
CREATE UNIQUE INDEX events_held_cycle ON events (permit_no, valid_until, kind, run_id) WHERE held = 1;
CREATE INDEX events_as_of ON events (as_of, permit_no);
CREATE INDEX events_held_run ON events (run_id) WHERE held = 1;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: a correction is a new row');
END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: a correction is a new row');
END;

-- The rebuilt tables no longer keep a row in sqlite_sequence.
DELETE FROM sqlite_sequence WHERE name IN ('events', 'notifications');

COMMIT;
PRAGMA foreign_keys = ON;
