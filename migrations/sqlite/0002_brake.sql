-- no-transaction
-- The safety brake and an append-only audit trail (issue #6, items 4 and 6).
--
-- - A run the brake stops is recorded with status 'held': its events are
--   written with held = 1, nothing is applied to the permits and no notice
--   is queued. `autosign release` applies them (event_releases says which)
--   and marks the run 'completed'; `autosign discard` marks it 'discarded'
--   and its events are void, so the same as_of may run again.
-- - events are append-only: triggers refuse any UPDATE or DELETE. Whether
--   an event is applied, held, void or was not applied at release is the
--   state of its run and of event_releases, never of the event row.
--
-- SQLite cannot drop an inline UNIQUE or CHECK, so runs and events are
-- rebuilt (SQLite's "other kinds of table schema changes" procedure).
-- notifications and events reference runs: with foreign keys on, dropping
-- the old runs table would count every referencing row as a violation
-- (deferred or not: the copy is made before, under another name), so
-- foreign keys are off for this migration, which is why it runs outside
-- sqlx's transaction and opens its own. The rebuilt tables keep every
-- run_id and event_id.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE runs_new (
    run_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    as_of        TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('running', 'completed', 'held', 'discarded')),
    attempts     INTEGER NOT NULL DEFAULT 1,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    pending      INTEGER NOT NULL DEFAULT 0,
    -- Why the safety brake held this run (one line); NULL for a run it let
    -- through. Set before the run writes its first event.
    brake        TEXT,
    -- The newest import this run saw (after its inbox): the row-count
    -- check compares only imports newer than the last completed run's.
    import_mark  INTEGER,
    released_at  TEXT,
    discarded_at TEXT
);
INSERT INTO runs_new (run_id, as_of, status, attempts, started_at, finished_at, pending)
    SELECT run_id, as_of, status, attempts, started_at, finished_at, pending FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
-- One live run per as_of: a discarded run does not block running it again
-- (C8 applies to completed runs).
CREATE UNIQUE INDEX runs_as_of ON runs (as_of) WHERE status <> 'discarded';

CREATE TABLE events_new (
    event_id             INTEGER PRIMARY KEY AUTOINCREMENT,
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
    held                 INTEGER NOT NULL DEFAULT 0 CHECK (held IN (0, 1))
);
INSERT INTO events_new (event_id, run_id, as_of, permit_no, id_number, kind, reasons, valid_until,
        new_valid_until, residence_visited_on, residence_result, si_month, si_status,
        si_employer_uscc, marital_status, decided_at)
    SELECT event_id, run_id, as_of, permit_no, id_number, kind, reasons, valid_until,
        new_valid_until, residence_visited_on, residence_result, si_month, si_status,
        si_employer_uscc, marital_status, decided_at FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
-- One applied event per (permit, cycle, kind), as before; held events are
-- unique within their run, so a discarded run's do not block fresh ones.
-- Both serve the decided-cycle probe (by permit_no, valid_until).
CREATE UNIQUE INDEX events_cycle ON events (permit_no, valid_until, kind) WHERE held = 0;
CREATE UNIQUE INDEX events_held_cycle ON events (permit_no, valid_until, kind, run_id) WHERE held = 1;
CREATE INDEX events_as_of ON events (as_of, permit_no);
-- release reads a held run's events.
CREATE INDEX events_held_run ON events (run_id) WHERE held = 1;

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: a correction is a new row');
END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: a correction is a new row');
END;

-- What `autosign release` did with each event of a held run: applied (its
-- permit change made and notice queued) or not (the permit's cycle had
-- changed since the run). Append-only as well.
CREATE TABLE event_releases (
    event_id    INTEGER PRIMARY KEY REFERENCES events (event_id),
    run_id      INTEGER NOT NULL REFERENCES runs (run_id),
    applied     INTEGER NOT NULL CHECK (applied IN (0, 1)),
    released_at TEXT NOT NULL
);
CREATE TRIGGER event_releases_no_update BEFORE UPDATE ON event_releases
BEGIN
    SELECT RAISE(ABORT, 'event_releases is append-only');
END;
CREATE TRIGGER event_releases_no_delete BEFORE DELETE ON event_releases
BEGIN
    SELECT RAISE(ABORT, 'event_releases is append-only');
END;

COMMIT;
PRAGMA foreign_keys = ON;
