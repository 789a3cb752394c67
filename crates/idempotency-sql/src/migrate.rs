//! Versioned, idempotent migrations. The SQL lives in `migrations/<database>/*.sql`, written for
//! the default table name and shown verbatim in the crate docs; the store substitutes its own
//! table name when it runs them.

use crate::table::Table;

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Monotonic version, recorded in the `<table>_migrations` table once applied.
    pub(crate) version: i64,
    /// `0001_create_records`: also the name error messages tell operators to apply.
    pub(crate) name: &'static str,
    /// The SQL for the default table name.
    pub(crate) postgres: &'static str,
    /// The SQL for the default table name.
    pub(crate) sqlite: &'static str,
}

/// Every migration, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_create_records",
        postgres: include_str!("../migrations/postgres/0001_create_records.sql"),
        sqlite: include_str!("../migrations/sqlite/0001_create_records.sql"),
    },
    Migration {
        version: 2,
        name: "0002_waiters",
        postgres: include_str!("../migrations/postgres/0002_waiters.sql"),
        sqlite: include_str!("../migrations/sqlite/0002_waiters.sql"),
    },
];

/// The first migration, which creates the table.
pub(crate) const FIRST: &str = "0001_create_records";

/// The last migration: the table must have the shape it leaves.
pub(crate) const CURRENT: &str = "0002_waiters";

/// The migration's SQL with the default names replaced by `table`'s.
pub(crate) fn for_table(sql: &str, table: &Table) -> String {
    sql.replace("\"idempotency_records_expires_at\"", &table.index_quoted)
        .replace("\"idempotency_records\"", &table.quoted)
}

/// The bookkeeping table, created first by `migrate()`. On Postgres `text` is written
/// `pg_catalog.text`, so that a type of that name in a schema earlier in `search_path` cannot
/// take its place (`BIGINT` is a keyword: always the built-in type).
pub(crate) fn bookkeeping(table: &Table, postgres: bool) -> String {
    let text = if postgres { "pg_catalog.text" } else { "TEXT" };
    format!(
        "CREATE TABLE IF NOT EXISTS {} (version BIGINT NOT NULL PRIMARY KEY, name {text} NOT NULL)",
        table.migrations_quoted
    )
}

/// The columns of the records table and their types as each database reports them
/// (Postgres `format_type`, SQLite `pragma_table_info`).
pub(crate) const SHAPE: &[(&str, &str, &str)] = &[
    ("store_key", "text", "TEXT"),
    ("state", "text", "TEXT"),
    ("token", "bytea", "BLOB"),
    ("fingerprint", "bytea", "BLOB"),
    ("created_at_ms", "bigint", "INTEGER"),
    ("completed_at_ms", "bigint", "INTEGER"),
    ("content_type", "text", "TEXT"),
    ("encoding", "smallint", "INTEGER"),
    ("body", "bytea", "BLOB"),
    ("expires_at", "timestamp with time zone", "INTEGER"),
    ("waiters", "boolean", "INTEGER"),
];

/// Columns added to an existing table by a later migration (`ALTER TABLE … ADD COLUMN`), with
/// that migration's version. Every other column of [`SHAPE`] is created by the first migration's
/// `CREATE TABLE IF NOT EXISTS`, which does nothing to a table that already exists.
pub(crate) const ADDED_LATER: &[(&str, i64)] = &[("waiters", 2)];

/// Whether `columns` (of an existing table) already has every column `version` adds, so its SQL
/// must not run again (SQLite's `ADD COLUMN` has no `IF NOT EXISTS`); it is only recorded.
pub(crate) fn already_applied(columns: &[(String, String)], version: i64) -> bool {
    let mut added = ADDED_LATER.iter().filter(|(_, v)| *v == version).peekable();
    added.peek().is_some() && added.all(|(name, _)| columns.iter().any(|(c, _)| c == name))
}

/// Check an existing table before running the pending migrations (`applied`: the versions
/// recorded as applied): `Some(detail)` when the migrations cannot give it the expected shape —
/// a column of another type, or a missing column that no pending migration adds. An absent table
/// (`columns` empty) is fine: the first migration creates it.
pub(crate) fn unmigratable(
    columns: &[(String, String)],
    postgres: bool,
    applied: &[i64],
) -> Option<String> {
    if columns.is_empty() {
        return None;
    }
    let mut problems = Vec::new();
    for (name, pg, lite) in SHAPE {
        let expected = if postgres { pg } else { lite };
        match columns.iter().find(|(c, _)| c == name) {
            Some((_, actual)) if !actual.eq_ignore_ascii_case(expected) => {
                problems.push(format!("column `{name}` is {actual}, expected {expected}"));
            }
            Some(_) => {}
            None => {
                let added = ADDED_LATER
                    .iter()
                    .any(|(c, version)| c == name && !applied.contains(version));
                if !added {
                    problems.push(format!("missing column `{name}`"));
                }
            }
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Compare the reported `(column, type)` list with [`SHAPE`]; `Some(detail)` when it differs.
pub(crate) fn shape_mismatch(columns: &[(String, String)], postgres: bool) -> Option<String> {
    let mut problems = Vec::new();
    for (name, pg, lite) in SHAPE {
        let expected = if postgres { pg } else { lite };
        match columns.iter().find(|(c, _)| c == name) {
            None => problems.push(format!("missing column `{name}`")),
            Some((_, actual)) if !actual.eq_ignore_ascii_case(expected) => {
                problems.push(format!("column `{name}` is {actual}, expected {expected}"));
            }
            Some(_) => {}
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_substituted_everywhere() {
        let table = Table::parse("app.records", true).unwrap();
        for m in MIGRATIONS {
            let sql = for_table(m.postgres, &table);
            assert!(!sql.contains("idempotency_records"), "{sql}");
            assert!(sql.contains("\"app\".\"records\""));
        }
        assert!(for_table(MIGRATIONS[0].postgres, &table).contains("\"records_expires_at\""));
        let table = Table::parse("t", false).unwrap();
        for m in MIGRATIONS {
            assert!(!for_table(m.sqlite, &table).contains("idempotency_records"));
        }
    }

    #[test]
    fn every_column_is_created_by_the_migrations() {
        for (name, ..) in SHAPE {
            let created = |sql: fn(&Migration) -> &str| {
                MIGRATIONS
                    .iter()
                    .any(|m| sql(m).contains(&format!("{name} ")))
            };
            assert!(created(|m| m.postgres), "{name}");
            assert!(created(|m| m.sqlite), "{name}");
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.name), Some(CURRENT));
    }

    #[test]
    fn unmigratable_tables_are_named_before_any_migration_runs() {
        let full: Vec<(String, String)> = SHAPE
            .iter()
            .map(|(n, _, lite)| ((*n).into(), (*lite).into()))
            .collect();
        assert_eq!(unmigratable(&[], false, &[]), None, "absent: created");
        assert_eq!(unmigratable(&full, false, &[]), None);
        let mut of_0001 = full.clone();
        of_0001.retain(|(n, _)| n != "waiters");
        assert_eq!(unmigratable(&of_0001, false, &[1]), None, "0002 adds it");
        assert_eq!(
            unmigratable(&of_0001, false, &[1, 2]).as_deref(),
            Some("missing column `waiters`"),
            "recorded as applied, yet missing"
        );
        let mut no_expiry = of_0001.clone();
        no_expiry.retain(|(n, _)| n != "expires_at");
        assert_eq!(
            unmigratable(&no_expiry, false, &[]).as_deref(),
            Some("missing column `expires_at`")
        );
        let mut wrong_type = full.clone();
        wrong_type[0].1 = "INTEGER".into();
        assert!(
            unmigratable(&wrong_type, false, &[])
                .is_some_and(|d| d.contains("`store_key` is INTEGER, expected TEXT"))
        );
        assert!(already_applied(&full, 2));
        assert!(!already_applied(&of_0001, 2));
        assert!(!already_applied(&full, 1), "0001 adds no column: it runs");
    }

    #[test]
    fn shape_differences_are_named() {
        let ok: Vec<(String, String)> = SHAPE
            .iter()
            .map(|(n, pg, _)| ((*n).into(), (*pg).into()))
            .collect();
        assert_eq!(shape_mismatch(&ok, true), None);
        let mut bad = ok.clone();
        bad.retain(|(n, _)| n != "body");
        bad[0].1 = "integer".into();
        let detail = shape_mismatch(&bad, true).unwrap();
        assert!(detail.contains("missing column `body`") && detail.contains("store_key"));
    }
}
