//! PostgreSQL's imports of the register and the feeds: each page COPYed
//! into a temporary staging table and upserted from there, or, loading a
//! table that was empty, COPYed straight into it (the backend's module
//! doc).

use std::collections::HashMap;

use sqlx::{Connection, PgConnection, Row};

use super::super::register::permit_columns;
use super::super::rows::*;
use super::copy::{copy_in, CopyText};
use super::PgDb;
use crate::error::Result;

/// Rows of one table upserted in one import above which the import
/// refreshes the table's planner statistics before committing, so the run
/// that follows an initial load does not plan against an empty table.
const ANALYZE_AFTER_ROWS: u64 = 10_000;

impl PgDb {
    pub async fn begin_import(
        &self,
        feed: &str,
        file_name: &str,
        sha256: &str,
        delivery: crate::feeds::Delivery,
        imported_at: &str,
    ) -> Result<PgImportTx> {
        let mut conn = self.detached().await?;
        sqlx::query("BEGIN").execute(&mut conn).await?;
        let import_id: i64 = sqlx::query_scalar(
            "INSERT INTO imports (import_id, feed, file_name, sha256, imported_at, delivery)
             SELECT coalesce(max(import_id), 0) + 1, $1, $2, $3, $4, $5 FROM imports
             RETURNING import_id",
        )
        .bind(feed)
        .bind(file_name)
        .bind(sha256)
        .bind(imported_at)
        .bind(delivery.as_str())
        .fetch_one(&mut conn)
        .await?;
        Ok(PgImportTx {
            conn,
            import_id,
            staged: Vec::new(),
            upserted: HashMap::new(),
            direct: HashMap::new(),
        })
    }
}

/// The staging tables an import COPYs into, one per target table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stage {
    Permits,
    Residence,
    SocialInsurance,
    CivilStatus,
}

impl Stage {
    fn table(self) -> &'static str {
        match self {
            Stage::Permits => "permits",
            Stage::Residence => "residence",
            Stage::SocialInsurance => "social_insurance",
            Stage::CivilStatus => "civil_status",
        }
    }

    /// Creates the staging table (dropped at commit or rollback).
    fn create(self) -> &'static str {
        match self {
            Stage::Permits => concat!(
                "CREATE TEMP TABLE stage_permits ON COMMIT DROP AS SELECT ",
                permit_columns!(),
                ", import_line, import_id FROM permits WITH NO DATA"
            ),
            Stage::Residence => "CREATE TEMP TABLE stage_residence ON COMMIT DROP AS
                SELECT id_number, visited_on, result, address, officer_id, line, import_id FROM residence WITH NO DATA",
            Stage::SocialInsurance => "CREATE TEMP TABLE stage_social_insurance ON COMMIT DROP AS
                SELECT id_number, month, status, employer_uscc, employer_name, line, import_id FROM social_insurance WITH NO DATA",
            Stage::CivilStatus => "CREATE TEMP TABLE stage_civil_status ON COMMIT DROP AS
                SELECT id_number, marital_status, as_of, line, import_id FROM civil_status WITH NO DATA",
        }
    }

    fn is_empty(self) -> &'static str {
        match self {
            Stage::Permits => "SELECT NOT EXISTS (SELECT 1 FROM permit_state)",
            Stage::Residence => "SELECT NOT EXISTS (SELECT 1 FROM residence)",
            Stage::SocialInsurance => "SELECT NOT EXISTS (SELECT 1 FROM social_insurance)",
            Stage::CivilStatus => "SELECT NOT EXISTS (SELECT 1 FROM civil_status)",
        }
    }

    /// COPY straight into the table (initial load, key new in the file);
    /// for the register, into `permit_details` ([`PERMIT_STATE_COPY`] takes
    /// the rest).
    fn copy_direct(self) -> &'static str {
        match self {
            Stage::Permits => {
                "COPY permit_details (permit_no, id_number, name, phone, email, district_code,
                   street_code, address, employer_uscc, si_status, marital_status, import_line,
                   import_id) FROM STDIN"
            }
            Stage::Residence => {
                "COPY residence (id_number, visited_on, result, address, officer_id, line, import_id) FROM STDIN"
            }
            Stage::SocialInsurance => {
                "COPY social_insurance (id_number, month, status, employer_uscc, employer_name, line, import_id) FROM STDIN"
            }
            Stage::CivilStatus => {
                "COPY civil_status (id_number, marital_status, as_of, line, import_id) FROM STDIN"
            }
        }
    }

    /// An initial load builds the primary key once, after the rows are in
    /// (a sort), instead of inserting a million keys one by one into it
    /// (measured at 1M permits: 18 s with the key, 4 s without it and then
    /// building it). Transactional: a refused import gets its key back.
    fn drop_key(self) -> &'static [&'static str] {
        match self {
            Stage::Permits => &[
                "ALTER TABLE permit_state DROP CONSTRAINT permit_state_pkey",
                "ALTER TABLE permit_details DROP CONSTRAINT permit_details_pkey",
            ],
            Stage::Residence => &["ALTER TABLE residence DROP CONSTRAINT residence_pkey"],
            Stage::SocialInsurance => {
                &["ALTER TABLE social_insurance DROP CONSTRAINT social_insurance_pkey"]
            }
            Stage::CivilStatus => &["ALTER TABLE civil_status DROP CONSTRAINT civil_status_pkey"],
        }
    }

    fn add_key(self) -> &'static [&'static str] {
        match self {
            Stage::Permits => &[
                "ALTER TABLE permit_state ADD CONSTRAINT permit_state_pkey PRIMARY KEY (permit_no)",
                "ALTER TABLE permit_details ADD CONSTRAINT permit_details_pkey PRIMARY KEY (permit_no)",
            ],
            Stage::Residence => &[
                "ALTER TABLE residence ADD CONSTRAINT residence_pkey PRIMARY KEY (id_number, visited_on)",
            ],
            Stage::SocialInsurance => &[
                "ALTER TABLE social_insurance ADD CONSTRAINT social_insurance_pkey PRIMARY KEY (id_number, month)",
            ],
            Stage::CivilStatus => {
                &["ALTER TABLE civil_status ADD CONSTRAINT civil_status_pkey PRIMARY KEY (id_number)"]
            }
        }
    }

    fn truncate(self) -> &'static str {
        match self {
            Stage::Permits => "TRUNCATE stage_permits",
            Stage::Residence => "TRUNCATE stage_residence",
            Stage::SocialInsurance => "TRUNCATE stage_social_insurance",
            Stage::CivilStatus => "TRUNCATE stage_civil_status",
        }
    }

    fn copy(self) -> &'static str {
        match self {
            Stage::Permits => concat!(
                "COPY stage_permits (",
                permit_columns!(),
                ", import_line, import_id) FROM STDIN"
            ),
            Stage::Residence => {
                "COPY stage_residence (id_number, visited_on, result, address, officer_id, line, import_id) FROM STDIN"
            }
            Stage::SocialInsurance => {
                "COPY stage_social_insurance (id_number, month, status, employer_uscc, employer_name, line, import_id) FROM STDIN"
            }
            Stage::CivilStatus => {
                "COPY stage_civil_status (id_number, marital_status, as_of, line, import_id) FROM STDIN"
            }
        }
    }

    /// Moves the staged rows into the table; a later row or import with
    /// the same key replaces the earlier one (R2). The feeds code keeps one
    /// row per key per batch: PostgreSQL refuses to touch a row twice in one
    /// statement.
    fn upsert(self) -> &'static [&'static str] {
        match self {
            Stage::Permits => &[
                "INSERT INTO permit_details (permit_no, id_number, name, phone, email, district_code,
                   street_code, address, employer_uscc, si_status, marital_status, import_line,
                   import_id)
                 SELECT permit_no, id_number, name, phone, email, district_code, street_code, address,
                   employer_uscc, si_status, marital_status, import_line, import_id FROM stage_permits
                 ON CONFLICT (permit_no) DO UPDATE SET id_number = excluded.id_number, name = excluded.name,
                  phone = excluded.phone, email = excluded.email, district_code = excluded.district_code,
                  street_code = excluded.street_code, address = excluded.address,
                  employer_uscc = excluded.employer_uscc, si_status = excluded.si_status,
                  marital_status = excluded.marital_status, import_id = excluded.import_id,
                  import_line = excluded.import_line",
                "INSERT INTO permit_state (permit_no, valid_until, status)
                 SELECT permit_no, valid_until, status FROM stage_permits
                 ON CONFLICT (permit_no) DO UPDATE SET valid_until = excluded.valid_until,
                  status = excluded.status",
            ],
            Stage::Residence => &[
                "INSERT INTO residence (id_number, visited_on, result, address, officer_id, line, import_id)
                 SELECT id_number, visited_on, result, address, officer_id, line, import_id FROM stage_residence
                 ON CONFLICT (id_number, visited_on) DO UPDATE SET result = excluded.result,
                  address = excluded.address, officer_id = excluded.officer_id, import_id = excluded.import_id,
                  line = excluded.line",
            ],
            Stage::SocialInsurance => &[
                "INSERT INTO social_insurance (id_number, month, status, employer_uscc, employer_name, line, import_id)
                 SELECT id_number, month, status, employer_uscc, employer_name, line, import_id FROM stage_social_insurance
                 ON CONFLICT (id_number, month) DO UPDATE SET status = excluded.status,
                  employer_uscc = excluded.employer_uscc, employer_name = excluded.employer_name,
                  import_id = excluded.import_id, line = excluded.line",
            ],
            Stage::CivilStatus => &[
                "INSERT INTO civil_status (id_number, marital_status, as_of, line, import_id)
                 SELECT id_number, marital_status, as_of, line, import_id FROM stage_civil_status
                 ON CONFLICT (id_number) DO UPDATE SET marital_status = excluded.marital_status,
                  as_of = excluded.as_of, import_id = excluded.import_id, line = excluded.line",
            ],
        }
    }

    fn analyze(self) -> &'static str {
        match self {
            Stage::Permits => "ANALYZE permit_state, permit_details",
            Stage::Residence => "ANALYZE residence",
            Stage::SocialInsurance => "ANALYZE social_insurance",
            Stage::CivilStatus => "ANALYZE civil_status",
        }
    }
}

/// The register's state half, during an initial load ([`Stage::copy_direct`]
/// takes its details).
const PERMIT_STATE_COPY: &str = "COPY permit_state (permit_no, valid_until, status) FROM STDIN";

/// One import's transaction, on a connection of its own (BEGIN … COMMIT;
/// dropped unfinished, the session ends and the server rolls back).
pub struct PgImportTx {
    conn: PgConnection,
    pub import_id: i64,
    staged: Vec<Stage>,
    upserted: HashMap<Stage, u64>,
    /// Per table: whether it was empty when this import began (an initial
    /// load: rows whose key is new in the file go straight in).
    direct: HashMap<Stage, bool>,
}

/// One page's COPY text, for the table itself or its staging table.
struct Page {
    stage: Stage,
    /// Straight into the table (an initial load), else staged and upserted.
    direct: bool,
    text: CopyText,
    rows: u64,
}

impl PgImportTx {
    /// The permits' current values only: PostgreSQL's import remembers
    /// what it wrote itself (C6).
    pub async fn lookup_permits(
        &mut self,
        permit_nos: &[&str],
    ) -> Result<HashMap<String, PriorPermit>> {
        let rows = sqlx::query(
            "SELECT permit_no, valid_until, status FROM permit_state WHERE permit_no = ANY($1)",
        )
        .bind(permit_nos)
        .fetch_all(&mut self.conn)
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let prior = PriorPermit {
                valid_until: r.try_get(1)?,
                status: r.try_get(2)?,
            };
            out.insert(r.try_get(0)?, prior);
        }
        Ok(out)
    }

    pub async fn register_is_empty(&mut self) -> Result<bool> {
        let any: Option<i32> = sqlx::query_scalar("SELECT 1 FROM permit_state LIMIT 1")
            .fetch_optional(&mut self.conn)
            .await?;
        Ok(any.is_none())
    }

    /// Whether rows of `stage`'s table go straight in with COPY: the table
    /// was empty when this import began (an initial load). Asked once per
    /// table; the job lock keeps other writers out meanwhile. The table's
    /// key is dropped until [`PgImportTx::commit`] builds it again (readers
    /// of that table wait for the import meanwhile: it had no rows).
    async fn direct(&mut self, stage: Stage) -> Result<bool> {
        if let Some(direct) = self.direct.get(&stage) {
            return Ok(*direct);
        }
        let empty: bool = sqlx::query_scalar(stage.is_empty())
            .fetch_one(&mut self.conn)
            .await?;
        if empty {
            for &statement in stage.drop_key() {
                sqlx::query(statement).execute(&mut self.conn).await?;
            }
        }
        self.direct.insert(stage, empty);
        Ok(empty)
    }

    /// Starts one page's COPY text for `stage`. Every row ends with the
    /// import's id, in the table or in the staging table alike.
    async fn page(&mut self, stage: Stage, rows: usize, row_bytes: usize) -> Result<Page> {
        Ok(Page {
            stage,
            direct: self.direct(stage).await?,
            text: CopyText::with_capacity(rows * row_bytes),
            rows: rows as u64,
        })
    }

    async fn copy(&mut self, statement: &'static str, data: CopyText) -> Result<()> {
        copy_in(&mut self.conn, statement, data.into_bytes()).await
    }

    /// Writes one page (one row per key, in key order: the import's
    /// external sort settles R2 within the file): COPY straight into the
    /// table during an initial load, else COPY into the stage's temporary
    /// table and upsert from there (R2: a later import replaces a stored
    /// row).
    async fn flush(&mut self, p: Page) -> Result<()> {
        let stage = p.stage;
        if p.direct {
            self.copy(stage.copy_direct(), p.text).await?;
        } else {
            if !self.staged.contains(&stage) {
                sqlx::query(stage.create()).execute(&mut self.conn).await?;
                self.staged.push(stage);
            } else {
                sqlx::query(stage.truncate())
                    .execute(&mut self.conn)
                    .await?;
            }
            self.copy(stage.copy(), p.text).await?;
            for &statement in stage.upsert() {
                sqlx::query(statement).execute(&mut self.conn).await?;
            }
        }
        *self.upserted.entry(stage).or_insert(0) += p.rows;
        Ok(())
    }

    pub async fn upsert_permits(&mut self, rows: &[(PermitRow, ImportMark)]) -> Result<()> {
        let mut page = self.page(Stage::Permits, rows.len(), 200).await?;
        if page.direct {
            // Straight into the register's two tables: its state here, its
            // details by `flush`.
            let mut state = CopyText::with_capacity(rows.len() * 32);
            for (p, mark) in rows {
                state
                    .text(&p.permit_no)
                    .date(p.valid_until)
                    .text(p.status.code())
                    .end_row();
                page.text
                    .text(&p.permit_no)
                    .text(&p.id_number)
                    .text(&p.name)
                    .opt_text(p.phone.as_deref())
                    .opt_text(p.email.as_deref())
                    .text(&p.district_code)
                    .text(&p.street_code)
                    .text(&p.address)
                    .text(&p.employer_uscc)
                    .text(p.si_status.code())
                    .text(p.marital_status.code())
                    .int(mark.line as i64)
                    .int(self.import_id)
                    .end_row();
            }
            self.copy(PERMIT_STATE_COPY, state).await?;
            return self.flush(page).await;
        }
        for (p, mark) in rows {
            page.text
                .text(&p.permit_no)
                .text(&p.id_number)
                .text(&p.name)
                .opt_text(p.phone.as_deref())
                .opt_text(p.email.as_deref())
                .text(&p.district_code)
                .text(&p.street_code)
                .text(&p.address)
                .date(p.valid_until)
                .text(p.status.code())
                .text(&p.employer_uscc)
                .text(p.si_status.code())
                .text(p.marital_status.code())
                .int(mark.line as i64)
                .int(self.import_id)
                .end_row();
        }
        self.flush(page).await
    }

    /// C5: a row for a cancelled permit updates its contact fields only.
    /// Rare (cancelled permits only), so arrays rather than a staging table;
    /// bounded by the list's first and last key, as the run's permit
    /// changes are (`apply_effects`), so that no plan walks the whole key.
    pub async fn update_contacts(&mut self, rows: &[ContactUpdate]) -> Result<()> {
        let nos: Vec<&str> = rows.iter().map(|r| r.permit_no.as_str()).collect();
        let Some((first, last)) = super::key_span(&nos) else {
            return Ok(());
        };
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let phones: Vec<Option<&str>> = rows.iter().map(|r| r.phone.as_deref()).collect();
        let emails: Vec<Option<&str>> = rows.iter().map(|r| r.email.as_deref()).collect();
        let lines: Vec<i64> = rows.iter().map(|r| r.mark.line as i64).collect();
        sqlx::query(
            "UPDATE permit_details p SET name = u.name, phone = u.phone, email = u.email, import_id = $5,
               import_line = u.line
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $6::bigint[])
                  AS u (permit_no, name, phone, email, line)
             WHERE p.permit_no = u.permit_no AND p.permit_no BETWEEN $7 AND $8",
        )
        .bind(&nos)
        .bind(&names)
        .bind(&phones)
        .bind(&emails)
        .bind(self.import_id)
        .bind(&lines)
        .bind(first)
        .bind(last)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    pub async fn upsert_residence(&mut self, rows: &[ResidenceRow]) -> Result<()> {
        let mut page = self.page(Stage::Residence, rows.len(), 80).await?;
        for r in rows {
            page.text
                .text(&r.id_number)
                .date(r.visited_on)
                .text(&r.result)
                .text(&r.address)
                .text(&r.officer_id)
                .int(r.line as i64)
                .int(self.import_id)
                .end_row();
        }
        self.flush(page).await
    }

    pub async fn upsert_social_insurance(&mut self, rows: &[SocialInsuranceRow]) -> Result<()> {
        let mut page = self.page(Stage::SocialInsurance, rows.len(), 80).await?;
        for r in rows {
            page.text
                .text(&r.id_number)
                .text(&r.month)
                .text(&r.status)
                .text(&r.employer_uscc)
                .text(&r.employer_name)
                .int(r.line as i64)
                .int(self.import_id)
                .end_row();
        }
        self.flush(page).await
    }

    pub async fn upsert_civil_status(&mut self, rows: &[CivilStatusRow]) -> Result<()> {
        let mut page = self.page(Stage::CivilStatus, rows.len(), 40).await?;
        for r in rows {
            page.text
                .text(&r.id_number)
                .text(&r.marital_status)
                .opt_date(r.as_of)
                .int(r.line as i64)
                .int(self.import_id)
                .end_row();
        }
        self.flush(page).await
    }

    pub async fn commit(mut self, counts: ImportCounts) -> Result<()> {
        sqlx::query(
            "UPDATE imports SET rows_read = $1, rows_imported = $2, rows_rejected = $3 WHERE import_id = $4",
        )
        .bind(counts.rows_read as i64)
        .bind(counts.rows_imported as i64)
        .bind(counts.rows_rejected as i64)
        .bind(self.import_id)
        .execute(&mut self.conn)
        .await?;
        // Initial loads: the key, built once the rows are in.
        for (stage, direct) in &self.direct {
            if *direct {
                for &statement in stage.add_key() {
                    sqlx::query(statement).execute(&mut self.conn).await?;
                }
            }
        }
        // ANALYZE inside the transaction samples its own new rows too.
        for (stage, n) in &self.upserted {
            if *n >= ANALYZE_AFTER_ROWS {
                sqlx::query(stage.analyze()).execute(&mut self.conn).await?;
                tracing::debug!(table = stage.table(), rows = n, "statistics refreshed");
            }
        }
        if let Some(d) = crate::faults::delay(crate::faults::Delay::PgImport) {
            tokio::time::sleep(d).await;
        }
        sqlx::query("COMMIT").execute(&mut self.conn).await?;
        let _ = self.conn.close().await;
        Ok(())
    }

    pub async fn rollback(mut self) -> Result<()> {
        sqlx::query("ROLLBACK").execute(&mut self.conn).await?;
        let _ = self.conn.close().await;
        Ok(())
    }
}
