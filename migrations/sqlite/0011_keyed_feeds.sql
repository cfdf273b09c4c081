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
-- run read before): SQLite sorts them once by (key, seq descending) and
-- copies them in that order, the first row of each key kept and the
-- earlier ones after it ignored, so the new B-tree is written forwards.
-- OR IGNORE also means the statement can never stop half-way, so SQLite
-- keeps no statement journal for it: at 10M permits, with the database's
-- free pages reused, that journal grew past what the bundled SQLite
-- (statement journals spilled at 4 MiB, .cargo/config.toml) would take,
-- and the copy failed with "database or disk is full".

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
INSERT OR IGNORE INTO residence_keyed
    (id_number, visited_on, result, address, officer_id, import_id, line)
    SELECT id_number, visited_on, result, address, officer_id, import_id, line
    FROM residence ORDER BY id_number, visited_on, seq DESC;
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
INSERT OR IGNORE INTO social_insurance_keyed
    (id_number, month, status, employer_uscc, employer_name, import_id, line)
    SELECT id_number, month, status, employer_uscc, employer_name, import_id, line
    FROM social_insurance ORDER BY id_number, month, seq DESC;
DROP TABLE social_insurance;
ALTER TABLE social_insurance_keyed RENAME TO social_insurance;

CREATE TABLE civil_status_keyed (
    id_number      TEXT NOT NULL PRIMARY KEY,
    marital_status TEXT NOT NULL,
    as_of          TEXT,
    import_id      INTEGER NOT NULL,
    line           INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT OR IGNORE INTO civil_status_keyed (id_number, marital_status, as_of, import_id, line)
    SELECT id_number, marital_status, as_of, import_id, line
    FROM civil_status ORDER BY id_number, seq DESC;
DROP TABLE civil_status;
ALTER TABLE civil_status_keyed RENAME TO civil_status;
