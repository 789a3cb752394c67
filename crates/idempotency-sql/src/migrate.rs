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
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) postgres: &'static str,
    /// The SQL for the default table name.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
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

/// The bookkeeping table, created first by `migrate()` (same SQL on both databases).
pub(crate) fn bookkeeping(table: &Table) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (version BIGINT NOT NULL PRIMARY KEY, name TEXT NOT NULL)",
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
