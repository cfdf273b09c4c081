-- The feed tables hold one row per key, as on PostgreSQL: residence by
-- (id_number, visited_on), social_insurance by (id_number, month),
-- civil_status by id_number. R2 ("a later row or later import with the
-- same key replaces the earlier one") is settled when rows are written:
-- an import sorts its file by key and upserts in key order, so the
-- table's B-tree is walked once, forwards, whatever order the file came
-- in. A run looks its due holders up by key, so a night costs in
-- proportion to its due permits, not to the feeds' size.
--
-- WITHOUT ROWID: the key is the table's own B-tree (no second index to
-- keep). Existing rows keep the latest per key (the highest seq, what a
-- run read before), copied in key order: SQLite sorts them once, and the
-- new B-tree is written forwards.

CREATE TABLE residence_keyed (
    id_number  TEXT NOT NULL,
    visited_on TEXT NOT NULL,
    result     TEXT NOT NULL,
    address    TEXT NOT NULL DEFAULT '',
    officer_id TEXT NOT NULL DEFAULT '',
    import_id  INTEGER NOT NULL,
    line       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (id_number, visited_on)
) WITHOUT ROWID;
INSERT INTO residence_keyed
    (id_number, visited_on, result, address, officer_id, import_id, line)
    SELECT id_number, visited_on, result, address, officer_id, import_id, line
    FROM (SELECT *, row_number() OVER (PARTITION BY id_number, visited_on ORDER BY seq DESC) AS latest
          FROM residence)
    WHERE latest = 1 ORDER BY id_number, visited_on;
DROP TABLE residence;
ALTER TABLE residence_keyed RENAME TO residence;

CREATE TABLE social_insurance_keyed (
    id_number     TEXT NOT NULL,
    month         TEXT NOT NULL,
    status        TEXT NOT NULL,
    employer_uscc TEXT NOT NULL DEFAULT '',
    employer_name TEXT NOT NULL DEFAULT '',
    import_id     INTEGER NOT NULL,
    line          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (id_number, month)
) WITHOUT ROWID;
INSERT INTO social_insurance_keyed
    (id_number, month, status, employer_uscc, employer_name, import_id, line)
    SELECT id_number, month, status, employer_uscc, employer_name, import_id, line
    FROM (SELECT *, row_number() OVER (PARTITION BY id_number, month ORDER BY seq DESC) AS latest
          FROM social_insurance)
    WHERE latest = 1 ORDER BY id_number, month;
DROP TABLE social_insurance;
ALTER TABLE social_insurance_keyed RENAME TO social_insurance;

CREATE TABLE civil_status_keyed (
    id_number      TEXT NOT NULL PRIMARY KEY,
    marital_status TEXT NOT NULL,
    as_of          TEXT,
    import_id      INTEGER NOT NULL,
    line           INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO civil_status_keyed (id_number, marital_status, as_of, import_id, line)
    SELECT id_number, marital_status, as_of, import_id, line
    FROM (SELECT *, row_number() OVER (PARTITION BY id_number ORDER BY seq DESC) AS latest
          FROM civil_status)
    WHERE latest = 1 ORDER BY id_number;
DROP TABLE civil_status;
ALTER TABLE civil_status_keyed RENAME TO civil_status;
