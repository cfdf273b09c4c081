-- Issue #2: the register split in two, so that the nightly run rewrites a
-- narrow table instead of the wide one.
--
-- The first night after go-live changes the valid_until or status of a
-- quarter of the register, spread over every page: with the whole row in
-- one table, SQLite rewrote the whole register (222 MB at 1M permits)
-- through the WAL and again at the checkpoint. Now
--   permit_state   (permit_no, valid_until, status): what a run changes;
--   permit_details (everything else): what only an import changes;
-- both clustered by permit_no, and a view named `permits` joins them, so
-- that every query that reads a permit (and an operator's ad-hoc SQL) sees
-- the same columns as before. Writes through the view go to the two tables
-- (INSTEAD OF triggers); autosign's own hot paths write the tables.
--
-- Every row and value is kept. Applied in sqlx's transaction.

CREATE TABLE permit_state (
    permit_no   TEXT PRIMARY KEY,
    valid_until TEXT NOT NULL,
    status      TEXT NOT NULL
        CHECK (status = 'active' OR status = 'suspended' OR status = 'cancelled')
) WITHOUT ROWID;
INSERT INTO permit_state SELECT permit_no, valid_until, status FROM permits ORDER BY permit_no;

CREATE TABLE permit_details (
    permit_no         TEXT PRIMARY KEY,
    id_number         TEXT NOT NULL,
    name              TEXT NOT NULL,
    phone             TEXT,
    email             TEXT,
    district_code     TEXT NOT NULL,
    street_code       TEXT NOT NULL,
    address           TEXT NOT NULL,
    employer_uscc     TEXT NOT NULL DEFAULT '',
    si_status         TEXT NOT NULL CHECK (si_status = 'paying' OR si_status = 'not_paying'),
    marital_status    TEXT NOT NULL,
    import_id         INTEGER NOT NULL,
    import_line       INTEGER NOT NULL DEFAULT 0,
    -- The permit's valid_until and status from before the import that
    -- last wrote it (import_id), read back by a later batch of that import.
    prior_valid_until TEXT,
    prior_status      TEXT
) WITHOUT ROWID;
INSERT INTO permit_details
    SELECT permit_no, id_number, name, phone, email, district_code, street_code, address,
           employer_uscc, si_status, marital_status, import_id, import_line,
           prior_valid_until, prior_status
    FROM permits ORDER BY permit_no;

DROP TABLE permits;

-- The register as one row per permit, with the columns of the old table.
CREATE VIEW permits AS
    SELECT d.permit_no, d.id_number, d.name, d.phone, d.email, d.district_code, d.street_code,
           d.address, s.valid_until, s.status, d.employer_uscc, d.si_status, d.marital_status,
           d.import_id, d.import_line, d.prior_valid_until, d.prior_status
    FROM permit_details d JOIN permit_state s ON s.permit_no = d.permit_no;

CREATE TRIGGER permits_insert INSTEAD OF INSERT ON permits
BEGIN
    INSERT INTO permit_details (permit_no, id_number, name, phone, email, district_code,
        street_code, address, employer_uscc, si_status, marital_status, import_id, import_line,
        prior_valid_until, prior_status)
    VALUES (NEW.permit_no, NEW.id_number, NEW.name, NEW.phone, NEW.email, NEW.district_code,
        NEW.street_code, NEW.address, coalesce(NEW.employer_uscc, ''), NEW.si_status,
        NEW.marital_status, NEW.import_id, coalesce(NEW.import_line, 0), NEW.prior_valid_until,
        NEW.prior_status);
    INSERT INTO permit_state (permit_no, valid_until, status)
    VALUES (NEW.permit_no, NEW.valid_until, NEW.status);
END;

CREATE TRIGGER permits_update INSTEAD OF UPDATE ON permits
BEGIN
    SELECT RAISE(ABORT, 'permit_no cannot be changed') WHERE NEW.permit_no IS NOT OLD.permit_no;
    UPDATE permit_details SET id_number = NEW.id_number, name = NEW.name, phone = NEW.phone,
        email = NEW.email, district_code = NEW.district_code, street_code = NEW.street_code,
        address = NEW.address, employer_uscc = NEW.employer_uscc, si_status = NEW.si_status,
        marital_status = NEW.marital_status, import_id = NEW.import_id,
        import_line = NEW.import_line, prior_valid_until = NEW.prior_valid_until,
        prior_status = NEW.prior_status
    WHERE permit_no = OLD.permit_no;
    UPDATE permit_state SET valid_until = NEW.valid_until, status = NEW.status
    WHERE permit_no = OLD.permit_no;
END;

CREATE TRIGGER permits_delete INSTEAD OF DELETE ON permits
BEGIN
    DELETE FROM permit_details WHERE permit_no = OLD.permit_no;
    DELETE FROM permit_state WHERE permit_no = OLD.permit_no;
END;
