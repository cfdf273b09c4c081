-- `[feeds.<feed>] delivery` (docs/operations.md, "The safety brake"): each
-- import records whether its feed comes as a snapshot (the whole content
-- for its period, so its row count is comparable with the previous
-- snapshot's) or as a delta (what changed since the last file). The
-- brake's row-drop check compares snapshot imports only, and never uses a
-- delta as the baseline of a later snapshot.
--
-- Imports recorded before this migration were all compared as snapshots:
-- they keep that meaning. Applied in sqlx's transaction; adding a column
-- with a constant default rewrites no row.
ALTER TABLE imports ADD COLUMN delivery TEXT NOT NULL DEFAULT 'snapshot'
    CHECK (delivery = 'snapshot' OR delivery = 'delta');
