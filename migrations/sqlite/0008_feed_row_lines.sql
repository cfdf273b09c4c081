-- Kept in step with PostgreSQL's migration 0008, which adds the line of
-- each feed row and of each permit's last import row, for `autosign
-- explain`. SQLite has recorded both since migration 0003 (`line` on
-- residence, social_insurance and civil_status; `import_line` on the
-- register, now permit_details): nothing changes here, and both backends
-- report the same schema version.
SELECT 1;
