-- The safety brake and an append-only audit trail (issue #6, items 4 and 6);
-- the same tables, keys and meaning as migrations/sqlite/0002_brake.sql.
--
-- - A run the brake stops is recorded with status 'held': its events are
--   written with held = true, nothing is applied to the permits and no
--   notice is queued. `autosign release` applies them (event_releases says
--   which) and marks the run 'completed'; `autosign discard` marks it
--   'discarded' and its events are void, so the same as_of may run again.
-- - events are append-only: triggers refuse any UPDATE or DELETE (and
--   TRUNCATE). Whether an event is applied, held, void or was not applied
--   at release is the state of its run and of event_releases, never of the
--   event row.

ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('running', 'completed', 'held', 'discarded'));
ALTER TABLE runs DROP CONSTRAINT runs_as_of_key;
-- One live run per as_of: a discarded run does not block running it again
-- (C8 applies to completed runs).
CREATE UNIQUE INDEX runs_as_of ON runs (as_of) WHERE status <> 'discarded';
-- Why the safety brake held this run (one line); NULL for a run it let
-- through. Set before the run writes its first event.
ALTER TABLE runs ADD COLUMN brake TEXT COLLATE "C";
-- The newest import this run saw (after its inbox): the row-count check
-- compares only imports newer than the last completed run's.
ALTER TABLE runs ADD COLUMN import_mark BIGINT;
ALTER TABLE runs ADD COLUMN released_at TEXT COLLATE "C";
ALTER TABLE runs ADD COLUMN discarded_at TEXT COLLATE "C";

-- true: written by a run the brake held (not applied when written).
ALTER TABLE events ADD COLUMN held BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE events DROP CONSTRAINT events_permit_no_valid_until_kind_key;
-- One applied event per (permit, cycle, kind), as before; held events are
-- unique within their run, so a discarded run's do not block fresh ones.
-- Both serve the decided-cycle probe (by permit_no, valid_until).
CREATE UNIQUE INDEX events_cycle ON events (permit_no, valid_until, kind) WHERE NOT held;
CREATE UNIQUE INDEX events_held_cycle ON events (permit_no, valid_until, kind, run_id) WHERE held;

CREATE FUNCTION autosign_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: a correction is a new row', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION autosign_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION autosign_append_only();

-- What `autosign release` did with each event of a held run: applied (its
-- permit change made and notice queued) or not (the permit's cycle had
-- changed since the run). Append-only as well.
CREATE TABLE event_releases (
    event_id    BIGINT PRIMARY KEY,
    run_id      BIGINT NOT NULL,
    applied     BOOLEAN NOT NULL,
    released_at TEXT COLLATE "C" NOT NULL
);
CREATE TRIGGER event_releases_append_only BEFORE UPDATE OR DELETE ON event_releases
    FOR EACH ROW EXECUTE FUNCTION autosign_append_only();
CREATE TRIGGER event_releases_no_truncate BEFORE TRUNCATE ON event_releases
    FOR EACH STATEMENT EXECUTE FUNCTION autosign_append_only();
