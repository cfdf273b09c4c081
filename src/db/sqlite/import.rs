//! SQLite's imports of the register and the feeds: each batch written as
//! multi-row upserts, a full chunk's statement prepared once, and the
//! stored permits an import compares looked up by key (the backend's
//! module doc).

use std::collections::HashMap;

use super::super::rows::*;
use super::raw::{args, insert_chunk, raw_code, raw_date, with_raw, SqlDate, ROWS_PER_INSERT};
use super::SqliteImportTx;
use crate::error::Result;

const PERMIT_DETAILS_UPSERT: &str = "INSERT INTO permit_details (permit_no, id_number, name, phone,
    email, district_code, street_code, address, employer_uscc, si_status, marital_status, import_id,
    import_line, prior_valid_until, prior_status) VALUES ";
const PERMIT_DETAILS_ON_CONFLICT: &str = " ON CONFLICT (permit_no) DO UPDATE SET
    id_number = excluded.id_number, name = excluded.name, phone = excluded.phone,
    email = excluded.email, district_code = excluded.district_code,
    street_code = excluded.street_code, address = excluded.address,
    employer_uscc = excluded.employer_uscc, si_status = excluded.si_status,
    marital_status = excluded.marital_status, import_id = excluded.import_id,
    import_line = excluded.import_line, prior_valid_until = excluded.prior_valid_until,
    prior_status = excluded.prior_status";
const PERMIT_STATE_UPSERT: &str =
    "INSERT INTO permit_state (permit_no, valid_until, status) VALUES ";
const PERMIT_STATE_ON_CONFLICT: &str = " ON CONFLICT (permit_no) DO UPDATE SET
    valid_until = excluded.valid_until, status = excluded.status";

impl SqliteImportTx {
    pub async fn lookup_permits(
        &mut self,
        permit_nos: &[&str],
    ) -> Result<HashMap<String, PriorPermit>> {
        // The narrow half of the register holds all an import compares.
        with_raw(&mut self.tx, |c| {
            let mut stmt =
                c.prepare("SELECT valid_until, status FROM permit_state WHERE permit_no = ?1")?;
            let mut out = HashMap::with_capacity(permit_nos.len());
            for no in permit_nos {
                let mut rows = stmt.query([no])?;
                if let Some(r) = rows.next()? {
                    let prior = PriorPermit {
                        valid_until: raw_date(r, 0)?,
                        status: raw_code(r, 1)?,
                    };
                    out.insert(no.to_string(), prior);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Writes the rows with their import mark: the line, and the value
    /// from before this import (C6, read back by [`Self::lookup_permits`]).
    pub async fn upsert_permits(&mut self, rows: &[(PermitRow, ImportMark)]) -> Result<()> {
        let import_id = self.import_id;
        with_raw(&mut self.tx, |c| {
            // The register is two tables (migration 0005): the run rewrites
            // permit_state only. Multi-row upserts of up to ROWS_PER_INSERT
            // rows (a batch holds one row per permit_no: R2 is settled
            // before).
            let (mut full_details, mut full_state) = (None, None);
            for chunk in rows.chunks(ROWS_PER_INSERT) {
                insert_chunk(
                    c,
                    &mut full_details,
                    (PERMIT_DETAILS_UPSERT, 15, "", PERMIT_DETAILS_ON_CONFLICT),
                    chunk,
                    |out, (p, mark)| {
                        out.extend(args![
                            &p.permit_no,
                            &p.id_number,
                            &p.name,
                            &p.phone,
                            &p.email,
                            &p.district_code,
                            &p.street_code,
                            &p.address,
                            &p.employer_uscc,
                            p.si_status.code(),
                            p.marital_status.code(),
                            import_id,
                            mark.line as i64,
                            mark.prior.map(|x| SqlDate::new(x.valid_until)),
                            mark.prior.map(|x| x.status.code()),
                        ]);
                    },
                )?;
                insert_chunk(
                    c,
                    &mut full_state,
                    (PERMIT_STATE_UPSERT, 3, "", PERMIT_STATE_ON_CONFLICT),
                    chunk,
                    |out, (p, _)| {
                        out.extend(args![
                            &p.permit_no,
                            SqlDate::new(p.valid_until),
                            p.status.code()
                        ]);
                    },
                )?;
            }
            Ok(())
        })
        .await
    }

    pub async fn update_contacts(&mut self, rows: &[ContactUpdate]) -> Result<()> {
        let import_id = self.import_id;
        with_raw(&mut self.tx, |c| {
            let mut stmt = c.prepare(
                "UPDATE permit_details SET name = ?2, phone = ?3, email = ?4, import_id = ?5, import_line = ?6,
                 prior_valid_until = ?7, prior_status = ?8 WHERE permit_no = ?1",
            )?;
            for r in rows {
                stmt.execute(rusqlite::params![
                    r.permit_no,
                    r.name,
                    r.phone,
                    r.email,
                    import_id,
                    r.mark.line as i64,
                    r.mark.prior.map(|x| SqlDate::new(x.valid_until)),
                    r.mark.prior.map(|x| x.status.code()),
                ])?;
            }
            Ok(())
        })
        .await
    }

    pub async fn upsert_residence(&mut self, rows: &[ResidenceRow]) -> Result<()> {
        let head = "INSERT INTO residence (id_number, visited_on, result, address, officer_id, line, import_id) VALUES ";
        let on_conflict =
            " ON CONFLICT (id_number, visited_on) DO UPDATE SET result = excluded.result,
            address = excluded.address, officer_id = excluded.officer_id,
            import_id = excluded.import_id, line = excluded.line";
        self.upsert((head, 7, on_conflict), rows, |out, r| {
            out.extend(args![
                &r.id_number,
                SqlDate::new(r.visited_on),
                &r.result,
                &r.address,
                &r.officer_id,
                r.line as i64,
            ]);
        })
        .await
    }

    pub async fn upsert_social_insurance(&mut self, rows: &[SocialInsuranceRow]) -> Result<()> {
        let head = "INSERT INTO social_insurance (id_number, month, status, employer_uscc, employer_name, line, import_id) VALUES ";
        let on_conflict = " ON CONFLICT (id_number, month) DO UPDATE SET status = excluded.status,
            employer_uscc = excluded.employer_uscc, employer_name = excluded.employer_name,
            import_id = excluded.import_id, line = excluded.line";
        self.upsert((head, 7, on_conflict), rows, |out, r| {
            out.extend(args![
                &r.id_number,
                &r.month,
                &r.status,
                &r.employer_uscc,
                &r.employer_name,
                r.line as i64,
            ]);
        })
        .await
    }

    pub async fn upsert_civil_status(&mut self, rows: &[CivilStatusRow]) -> Result<()> {
        let head =
            "INSERT INTO civil_status (id_number, marital_status, as_of, line, import_id) VALUES ";
        let on_conflict =
            " ON CONFLICT (id_number) DO UPDATE SET marital_status = excluded.marital_status,
            as_of = excluded.as_of, import_id = excluded.import_id, line = excluded.line";
        self.upsert((head, 5, on_conflict), rows, |out, r| {
            out.extend(args![
                &r.id_number,
                &r.marital_status,
                r.as_of.map(SqlDate::new),
                r.line as i64,
            ]);
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn migration_11_keeps_the_latest_row_per_key_of_the_append_only_feed_tables() {
        // R2 as the run read the append-only tables: the highest seq per
        // key wins. The keyed tables keep exactly those rows.
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE residence (seq INTEGER PRIMARY KEY, id_number TEXT NOT NULL,
               visited_on TEXT NOT NULL, result TEXT NOT NULL, address TEXT NOT NULL DEFAULT '',
               officer_id TEXT NOT NULL DEFAULT '', import_id INTEGER NOT NULL,
               line INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE social_insurance (seq INTEGER PRIMARY KEY, id_number TEXT NOT NULL,
               month TEXT NOT NULL, status TEXT NOT NULL, employer_uscc TEXT NOT NULL DEFAULT '',
               employer_name TEXT NOT NULL DEFAULT '', import_id INTEGER NOT NULL,
               line INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE civil_status (seq INTEGER PRIMARY KEY, id_number TEXT NOT NULL,
               marital_status TEXT NOT NULL, as_of TEXT, import_id INTEGER NOT NULL,
               line INTEGER NOT NULL DEFAULT 0);
             INSERT INTO residence (id_number, visited_on, result, import_id, line) VALUES
               ('B', '2026-10-01', 'consistent', 1, 2), ('A', '2026-10-01', 'changed', 1, 3),
               ('B', '2026-10-01', 'not_found', 2, 2), ('B', '2026-10-02', 'consistent', 2, 3);
             INSERT INTO social_insurance (id_number, month, status, import_id, line) VALUES
               ('A', '2026-10', 'paid', 1, 2), ('A', '2026-10', 'stopped', 1, 9),
               ('A', '2026-09', 'paid', 1, 4);
             INSERT INTO civil_status (id_number, marital_status, import_id, line) VALUES
               ('A', 'single', 1, 2), ('A', 'married', 3, 2), ('B', 'divorced', 2, 7);",
        )
        .unwrap();
        c.execute_batch(include_str!(
            "../../../migrations/sqlite/0011_keyed_feeds.sql"
        ))
        .unwrap();
        let rows = |sql: &str| -> Vec<String> {
            let mut stmt = c.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            rows.map(Result::unwrap).collect()
        };
        assert_eq!(
            rows("SELECT id_number || visited_on || result || import_id FROM residence"),
            [
                "A2026-10-01changed1",
                "B2026-10-01not_found2",
                "B2026-10-02consistent2"
            ]
        );
        assert_eq!(
            rows("SELECT id_number || month || status || line FROM social_insurance"),
            ["A2026-09paid4", "A2026-10stopped9"]
        );
        assert_eq!(
            rows("SELECT id_number || marital_status || import_id FROM civil_status"),
            ["Amarried3", "Bdivorced2"]
        );
        // One row per key from now on.
        let again = c.execute(
            "INSERT INTO civil_status (id_number, marital_status, import_id) VALUES ('A', 'single', 4)",
            [],
        );
        assert!(again.is_err(), "the key is unique");
    }
}
