-- Issue #2 (migration 0003 on SQLite makes its feed tables append-only and
-- keeps C6's prior permit values in the register). PostgreSQL keeps its
-- keyed feed tables: its imports upsert through staging tables by COPY,
-- and its runs look due holders up by key (docs/benchmarks-postgres.md).
-- The numbering stays the same on both backends.
COMMENT ON TABLE social_insurance IS 'one row per (id_number, month): a later row or import replaces the earlier one (R2)';
