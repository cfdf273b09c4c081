-- `[feeds.<feed>] delivery`; the same column and meaning as
-- migrations/sqlite/0007_import_delivery.sql: each import records whether
-- its feed came as a snapshot or a delta, and the brake's row-drop check
-- compares snapshot imports only. Imports recorded before this migration
-- were all compared as snapshots and keep that meaning.
ALTER TABLE imports ADD COLUMN delivery TEXT COLLATE "C" NOT NULL DEFAULT 'snapshot'
    CHECK (delivery IN ('snapshot', 'delta'));
