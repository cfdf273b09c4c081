-- `autosign explain` (docs/operations.md, "Why a permit got what it got")
-- names the row each piece of evidence came from: its import (file, time)
-- and its line in that file. SQLite has kept the line since migration
-- 0003 (its append-only feed tables, and permit_details.import_line);
-- PostgreSQL kept the import only. The same columns and meaning here:
--
-- - residence, social_insurance, civil_status: `line`, the row's physical
--   line in the file of its import (R2: a later row with the same key
--   replaces the row, line and import together);
-- - permits: `import_line`, the line of the row that last wrote the
--   permit (also for a contact-only update of a cancelled permit, C5).
--
-- 0 means not recorded: rows imported before this migration. Adding a
-- column with a constant default rewrites no row.
ALTER TABLE residence ADD COLUMN line BIGINT NOT NULL DEFAULT 0;
ALTER TABLE social_insurance ADD COLUMN line BIGINT NOT NULL DEFAULT 0;
ALTER TABLE civil_status ADD COLUMN line BIGINT NOT NULL DEFAULT 0;
ALTER TABLE permits ADD COLUMN import_line BIGINT NOT NULL DEFAULT 0;
