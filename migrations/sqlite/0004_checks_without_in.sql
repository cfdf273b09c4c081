-- Issue #2: the same CHECK constraints, written without IN lists.
--
-- SQLite evaluates `x IN ('a', 'b', 'c')` (three values or more) in a CHECK
-- by building a temporary B-tree of the list for every row it writes: the
-- permits import and the nightly run (which updates permits and queues a
-- notice per decision) spent ~5-8 % of their time opening and closing them.
-- A chain of `=` tests accepts exactly the same values and costs a few
-- comparisons. SQLite cannot alter a CHECK, so permits and notifications
-- are rebuilt (SQLite's "other kinds of table schema changes" procedure):
-- every row, column and notification_id is kept. Neither table is
-- referenced by a foreign key; notifications references runs, and its rows
-- are copied with their run_id, so foreign keys stay on.

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
    notification_id   INTEGER PRIMARY KEY AUTOINCREMENT,
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
