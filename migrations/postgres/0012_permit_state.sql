-- The register split in two, as SQLite's has been since its migration 5:
-- one storage design on both backends.
--   permit_state   (permit_no, valid_until, status): what a run changes
--                  and what every night scans (the brake's count, the due
--                  permits, the candidates);
--   permit_details (everything else): what only an import changes;
-- and a view named `permits` joins them, so that every query that reads
-- a whole permit, and an operator's ad-hoc SQL, sees the same columns as
-- before. Writes through the view reach both tables (INSTEAD OF trigger);
-- autosign's own writes go to the tables.
--
-- Why on PostgreSQL too: a run changes the valid_until or status of many
-- permits (a first night about a quarter of the register). With the whole
-- row in one table each change wrote a new version of the whole row, the
-- first change of each page after a checkpoint logged the whole page, and
-- about half the changes found no room on their page and so also wrote a
-- new entry in the key's index. A row of the narrow table is about a
-- quarter of the whole row, and the room left in its pages (fillfactor 70:
-- about 40 new row versions a page) keeps a first night's changes on
-- their page, where they touch no index (HOT; at 1M permits 240,500 of the
-- first night's 240,501). The nightly scans read the narrow table.
--
-- Every row and value is kept. Applied in sqlx's transaction; on a large
-- register this rewrites it once.

CREATE TABLE permit_state (
    permit_no   TEXT COLLATE "C" PRIMARY KEY,
    valid_until DATE NOT NULL,
    status      TEXT COLLATE "C" NOT NULL
        CHECK (status IN ('active', 'suspended', 'cancelled'))
) WITH (fillfactor = 70);
INSERT INTO permit_state (permit_no, valid_until, status)
    SELECT permit_no, valid_until, status FROM permits ORDER BY permit_no;

CREATE TABLE permit_details (
    permit_no      TEXT COLLATE "C" PRIMARY KEY,
    id_number      TEXT COLLATE "C" NOT NULL,
    name           TEXT COLLATE "C" NOT NULL,
    phone          TEXT COLLATE "C",
    email          TEXT COLLATE "C",
    district_code  TEXT COLLATE "C" NOT NULL,
    street_code    TEXT COLLATE "C" NOT NULL,
    address        TEXT COLLATE "C" NOT NULL,
    employer_uscc  TEXT COLLATE "C" NOT NULL DEFAULT '',
    si_status      TEXT COLLATE "C" NOT NULL CHECK (si_status IN ('paying', 'not_paying')),
    marital_status TEXT COLLATE "C" NOT NULL,
    import_id      BIGINT NOT NULL,
    -- The line of the row that last wrote the permit (migration 8).
    import_line    BIGINT NOT NULL DEFAULT 0
);
INSERT INTO permit_details (permit_no, id_number, name, phone, email, district_code, street_code,
        address, employer_uscc, si_status, marital_status, import_id, import_line)
    SELECT permit_no, id_number, name, phone, email, district_code, street_code, address,
           employer_uscc, si_status, marital_status, import_id, import_line
    FROM permits ORDER BY permit_no;

DROP TABLE permits;

-- The register as one row per permit, with the columns of the old table.
CREATE VIEW permits AS
    SELECT d.permit_no, d.id_number, d.name, d.phone, d.email, d.district_code, d.street_code,
           d.address, s.valid_until, s.status, d.employer_uscc, d.si_status, d.marital_status,
           d.import_id, d.import_line
    FROM permit_details d JOIN permit_state s ON s.permit_no = d.permit_no;

CREATE FUNCTION permits_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO permit_details (permit_no, id_number, name, phone, email, district_code,
            street_code, address, employer_uscc, si_status, marital_status, import_id,
            import_line)
        VALUES (NEW.permit_no, NEW.id_number, NEW.name, NEW.phone, NEW.email, NEW.district_code,
            NEW.street_code, NEW.address, coalesce(NEW.employer_uscc, ''), NEW.si_status,
            NEW.marital_status, NEW.import_id, coalesce(NEW.import_line, 0));
        INSERT INTO permit_state (permit_no, valid_until, status)
        VALUES (NEW.permit_no, NEW.valid_until, NEW.status);
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.permit_no IS DISTINCT FROM OLD.permit_no THEN
            RAISE EXCEPTION 'permit_no cannot be changed';
        END IF;
        UPDATE permit_details SET id_number = NEW.id_number, name = NEW.name,
            phone = NEW.phone, email = NEW.email, district_code = NEW.district_code,
            street_code = NEW.street_code, address = NEW.address,
            employer_uscc = NEW.employer_uscc, si_status = NEW.si_status,
            marital_status = NEW.marital_status, import_id = NEW.import_id,
            import_line = NEW.import_line
        WHERE permit_no = OLD.permit_no;
        UPDATE permit_state SET valid_until = NEW.valid_until, status = NEW.status
        WHERE permit_no = OLD.permit_no;
        RETURN NEW;
    ELSE
        DELETE FROM permit_details WHERE permit_no = OLD.permit_no;
        DELETE FROM permit_state WHERE permit_no = OLD.permit_no;
        RETURN OLD;
    END IF;
END
$$;

CREATE TRIGGER permits_write INSTEAD OF INSERT OR UPDATE OR DELETE ON permits
    FOR EACH ROW EXECUTE FUNCTION permits_write();
