-- autosign schema, SQLite. Dates are TEXT 'YYYY-MM-DD', months 'YYYY-MM',
-- timestamps RFC 3339 with offset. Never edit an applied migration: add one.

-- One row per imported feed file (R2: re-import of the same content is a no-op).
CREATE TABLE imports (
    import_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    feed          TEXT NOT NULL,
    file_name     TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    rows_read     INTEGER NOT NULL DEFAULT 0,
    rows_imported INTEGER NOT NULL DEFAULT 0,
    rows_rejected INTEGER NOT NULL DEFAULT 0,
    imported_at   TEXT NOT NULL,
    UNIQUE (feed, sha256)
);

-- The permit register, clustered by permit_no: the nightly run reads it in
-- key order in one pass (no secondary index to maintain on import or when a
-- decision changes valid_until or status).
CREATE TABLE permits (
    permit_no      TEXT PRIMARY KEY,
    id_number      TEXT NOT NULL,
    name           TEXT NOT NULL,
    phone          TEXT,
    email          TEXT,
    district_code  TEXT NOT NULL,
    street_code    TEXT NOT NULL,
    address        TEXT NOT NULL,
    valid_until    TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'cancelled')),
    employer_uscc  TEXT NOT NULL DEFAULT '',
    si_status      TEXT NOT NULL CHECK (si_status IN ('paying', 'not_paying')),
    marital_status TEXT NOT NULL,
    import_id      INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE residence (
    id_number  TEXT NOT NULL,
    visited_on TEXT NOT NULL,
    result     TEXT NOT NULL,
    address    TEXT NOT NULL DEFAULT '',
    officer_id TEXT NOT NULL DEFAULT '',
    import_id  INTEGER NOT NULL,
    PRIMARY KEY (id_number, visited_on)
) WITHOUT ROWID;

CREATE TABLE social_insurance (
    id_number     TEXT NOT NULL,
    month         TEXT NOT NULL,
    status        TEXT NOT NULL,
    employer_uscc TEXT NOT NULL DEFAULT '',
    employer_name TEXT NOT NULL DEFAULT '',
    import_id     INTEGER NOT NULL,
    PRIMARY KEY (id_number, month)
) WITHOUT ROWID;

CREATE TABLE civil_status (
    id_number      TEXT PRIMARY KEY,
    marital_status TEXT NOT NULL,
    as_of          TEXT,
    import_id      INTEGER NOT NULL
) WITHOUT ROWID;

-- The run ledger: one row per as_of (a completed as_of is never redone).
CREATE TABLE runs (
    run_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    as_of       TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL CHECK (status IN ('running', 'completed')),
    attempts    INTEGER NOT NULL DEFAULT 1,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    pending     INTEGER NOT NULL DEFAULT 0
);

-- Decisions and lifecycle changes: the audit trail (R7, R9). One per
-- (permit, cycle, kind).
CREATE TABLE events (
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
    UNIQUE (permit_no, valid_until, kind)
);
CREATE INDEX events_as_of ON events (as_of, permit_no);

-- The transactional outbox (R8): one notice per (permit, cycle, kind),
-- written in the same transaction as its event.
CREATE TABLE notifications (
    notification_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id            INTEGER NOT NULL REFERENCES runs (run_id),
    as_of             TEXT NOT NULL,
    permit_no         TEXT NOT NULL,
    cycle_valid_until TEXT NOT NULL,
    kind              TEXT NOT NULL,
    channel           TEXT NOT NULL CHECK (channel IN ('sms', 'email', 'none')),
    recipient         TEXT NOT NULL DEFAULT '',
    message           TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed', 'dead', 'undeliverable')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   TEXT,
    last_error        TEXT,
    provider_ref      TEXT,
    created_at        TEXT NOT NULL,
    sent_at           TEXT,
    UNIQUE (permit_no, cycle_valid_until, kind)
);
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX notifications_as_of ON notifications (as_of, permit_no);
