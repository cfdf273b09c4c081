-- Issue #2: feed rows are appended, not upserted into a key B-tree.
--
-- Each feed table becomes a rowid table in arrival order: `seq` (an alias
-- of the rowid, kept by VACUUM) grows with every row written, and an import
-- writes its rows in line order, so "a later row or later import with the
-- same key replaces the earlier one" (R2) is resolved when the rows are
-- read: the row with the highest seq per key wins. `line` is the row's line
-- in its file, for the duplicate-key warning (C6). No key index: a nightly
-- run reads each feed once, sequentially (src/reconcile/mod.rs).
--
-- Existing rows keep their order by import.

CREATE TABLE residence_rows (
    seq        INTEGER PRIMARY KEY,
    id_number  TEXT NOT NULL,
    visited_on TEXT NOT NULL,
    result     TEXT NOT NULL,
    address    TEXT NOT NULL DEFAULT '',
    officer_id TEXT NOT NULL DEFAULT '',
    import_id  INTEGER NOT NULL,
    line       INTEGER NOT NULL DEFAULT 0
);
INSERT INTO residence_rows (id_number, visited_on, result, address, officer_id, import_id)
    SELECT id_number, visited_on, result, address, officer_id, import_id
    FROM residence ORDER BY import_id, id_number, visited_on;
DROP TABLE residence;
ALTER TABLE residence_rows RENAME TO residence;

CREATE TABLE social_insurance_rows (
    seq           INTEGER PRIMARY KEY,
    id_number     TEXT NOT NULL,
    month         TEXT NOT NULL,
    status        TEXT NOT NULL,
    employer_uscc TEXT NOT NULL DEFAULT '',
    employer_name TEXT NOT NULL DEFAULT '',
    import_id     INTEGER NOT NULL,
    line          INTEGER NOT NULL DEFAULT 0
);
INSERT INTO social_insurance_rows (id_number, month, status, employer_uscc, employer_name, import_id)
    SELECT id_number, month, status, employer_uscc, employer_name, import_id
    FROM social_insurance ORDER BY import_id, id_number, month;
DROP TABLE social_insurance;
ALTER TABLE social_insurance_rows RENAME TO social_insurance;

CREATE TABLE civil_status_rows (
    seq            INTEGER PRIMARY KEY,
    id_number      TEXT NOT NULL,
    marital_status TEXT NOT NULL,
    as_of          TEXT,
    import_id      INTEGER NOT NULL,
    line           INTEGER NOT NULL DEFAULT 0
);
INSERT INTO civil_status_rows (id_number, marital_status, as_of, import_id)
    SELECT id_number, marital_status, as_of, import_id
    FROM civil_status ORDER BY import_id, id_number;
DROP TABLE civil_status;
ALTER TABLE civil_status_rows RENAME TO civil_status;

-- C6 without a per-key map in memory: when an import first writes a permit
-- it records, beside its line, the permit's valid_until and status from
-- before that import (NULL: the permit was new). A later line of the same
-- file finds them here (import_id is this import's) and compares with the
-- stored value, not with the earlier line's.
ALTER TABLE permits ADD COLUMN import_line INTEGER NOT NULL DEFAULT 0;
ALTER TABLE permits ADD COLUMN prior_valid_until TEXT;
ALTER TABLE permits ADD COLUMN prior_status TEXT;
