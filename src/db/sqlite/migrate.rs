//! Applying the SQLite migrations so that each one and its record in
//! `_sqlx_migrations` commit together.
//!
//! sqlx runs an ordinary migration and its record in one transaction. A
//! `-- no-transaction` migration it runs first and records after, in a
//! second statement; a process killed between the two leaves the schema
//! changed and the migration unrecorded, and the next start applies it
//! again. Migrations 2, 4 and 6 are of that kind, because
//! `PRAGMA foreign_keys` cannot change inside a transaction and their table
//! rebuilds need it off; each opens its own `BEGIN IMMEDIATE` and ends with
//! `COMMIT`. Applied again, migration 6 fails on its `ADD COLUMN` and the
//! database would not open until someone repaired it by hand.
//!
//! So those three are applied here: the text up to their `COMMIT`, then the
//! record, then the `COMMIT` and what follows it. The others go through
//! sqlx's own `apply`, in version order, and sqlx's `run` afterwards checks
//! what it always checks (checksums, versions this binary does not know)
//! and finds nothing left to apply.

use std::collections::HashMap;

use sqlx::migrate::{Migrate, MigrateError, Migration, Migrator};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Executor, SqlitePool};

use crate::error::Result;

/// The SQLite migrations compiled into the binary (one copy, for applying
/// them and for the health check's latest version).
pub(in crate::db) static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// For a migration that opens its own transaction: a table it creates.
/// Binaries before this module recorded such a migration after its
/// `COMMIT`; a database killed in between already has the table, and
/// holds the migration's whole change (it committed as one), so it is
/// recorded rather than applied again. Migration 4 is absent: it rebuilds
/// tables from themselves and applies twice to the same result.
const COMMITTED_WITH: &[(i64, &str)] = &[(2, "event_releases"), (6, "event_reverts")];

pub(super) async fn run(pool: &SqlitePool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let table = &*MIGRATOR.table_name;
    conn.ensure_migrations_table(table).await?;
    let applied: HashMap<i64, _> = conn
        .list_applied_migrations(table)
        .await?
        .into_iter()
        .map(|m| (m.version, m.checksum))
        .collect();
    for migration in MIGRATOR.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        match applied.get(&migration.version) {
            Some(checksum) if *checksum != migration.checksum => {
                return Err(MigrateError::VersionMismatch(migration.version).into());
            }
            Some(_) => {}
            None if migration.no_tx => apply_own_transaction(&mut conn, table, migration).await?,
            None => {
                conn.apply(table, migration).await?;
            }
        }
    }
    drop(conn);
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The text of a migration that opens its own transaction, split before
/// its `COMMIT`; `None` when it does not have the shape this relies on.
fn split_at_commit(sql: &str) -> Option<(&str, &str)> {
    let begin = sql.find("\nBEGIN IMMEDIATE;\n")?;
    let commit = sql.rfind("\nCOMMIT;\n")? + 1;
    (begin < commit).then(|| sql.split_at(commit))
}

async fn apply_own_transaction(
    conn: &mut SqliteConnection,
    table: &str,
    migration: &Migration,
) -> Result<()> {
    let version = migration.version;
    if let Some(&(_, made)) = COMMITTED_WITH.iter().find(|(v, _)| *v == version) {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        )
        .bind(made)
        .fetch_one(&mut *conn)
        .await?;
        if exists {
            tracing::warn!(
                version,
                "migration {version} was applied but not recorded (a process stopped between \
                 the two); recording it"
            );
            record(&mut *conn, table, migration).await?;
            return Ok(());
        }
    }
    let Some((body, commit)) = split_at_commit(migration.sql.as_str()) else {
        return Err(crate::error::Error::Runtime(anyhow::anyhow!(
            "migration {version} runs outside a transaction but does not open its own \
             (BEGIN IMMEDIATE ... COMMIT); refusing to apply it without its record"
        )));
    };
    let applied = async {
        conn.execute(sqlx::AssertSqlSafe(body))
            .await
            .map_err(|e| MigrateError::ExecuteMigration(e, version))?;
        record(&mut *conn, table, migration).await?;
        crate::faults::point("migrate.recorded");
        conn.execute(sqlx::AssertSqlSafe(commit))
            .await
            .map_err(|e| MigrateError::ExecuteMigration(e, version))?;
        crate::faults::point("migrate.committed");
        Ok::<_, MigrateError>(())
    }
    .await;
    if let Err(e) = applied {
        // The connection goes back to the pool: leave it outside any
        // transaction and with foreign keys on, as every other one is.
        let _ = conn.execute("ROLLBACK").await;
        let _ = conn.execute("PRAGMA foreign_keys = ON").await;
        return Err(e.into());
    }
    Ok(())
}

/// sqlx's own record of an applied migration (the row its `apply` writes;
/// `execution_time` -1 as sqlx writes it before it knows the time).
async fn record(
    conn: &mut SqliteConnection,
    table: &str,
    migration: &Migration,
) -> sqlx::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (version, description, success, checksum, execution_time) \
         VALUES (?1, ?2, TRUE, ?3, -1)"
    )))
    .bind(migration.version)
    .bind(&*migration.description)
    .bind(&*migration.checksum)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_outside_sqlx_transaction_opens_its_own_and_splits_before_its_commit() {
        let own: Vec<_> = MIGRATOR.iter().filter(|m| m.no_tx).collect();
        assert_eq!(own.iter().map(|m| m.version).collect::<Vec<_>>(), [2, 4, 6]);
        for m in own {
            let (body, commit) = split_at_commit(m.sql.as_str()).unwrap_or_else(|| {
                panic!("migration {} has no BEGIN IMMEDIATE ... COMMIT", m.version)
            });
            assert!(body.contains("BEGIN IMMEDIATE;"), "migration {}", m.version);
            assert!(!body.contains("\nCOMMIT;"), "migration {}", m.version);
            assert!(commit.starts_with("COMMIT;\n"), "migration {}", m.version);
            assert!(
                !commit.contains("CREATE") && !commit.contains("INSERT"),
                "migration {}: only the commit and the pragma follow it",
                m.version
            );
        }
        for (version, table) in COMMITTED_WITH {
            let m = MIGRATOR.iter().find(|m| m.version == *version).unwrap();
            assert!(
                m.sql.as_str().contains(&format!("CREATE TABLE {table} (")),
                "{version}"
            );
        }
    }

    #[test]
    fn a_text_without_its_own_transaction_is_not_split() {
        assert_eq!(split_at_commit("CREATE TABLE t (x);\n"), None);
        assert_eq!(split_at_commit("\nCOMMIT;\n\nBEGIN IMMEDIATE;\n"), None);
    }
}
