//! Validated table names: the only text spliced into the store's SQL.

use crate::SqlStoreError;

/// The default table name.
pub const DEFAULT_TABLE: &str = "idempotency_records";

/// A table name checked to be a plain identifier (optionally `schema.table` on Postgres), so it
/// can be spliced into SQL. Stored quoted (`"schema"."table"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    /// As given, unquoted (`idempotency_records`, `app.idempotency_records`).
    pub(crate) name: String,
    /// The bare table name, without a schema.
    pub(crate) bare: String,
    /// Quoted for SQL.
    pub(crate) quoted: String,
    /// The quoted companion table that records applied migrations.
    pub(crate) migrations_quoted: String,
    /// The quoted name of the expires-at index (unqualified: Postgres puts an index in its
    /// table's schema).
    pub(crate) index_quoted: String,
}

fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        // Room for the `_migrations` / `_expires_at` suffixes within Postgres' 63 bytes.
        && part.len() <= 48
}

impl Table {
    pub(crate) fn parse(name: &str, allow_schema: bool) -> Result<Self, SqlStoreError> {
        let invalid = || SqlStoreError::InvalidTableName {
            name: name.to_owned(),
        };
        let (schema, bare) = match name.split_once('.') {
            Some((schema, bare)) if allow_schema => (Some(schema), bare),
            Some(_) => return Err(invalid()),
            None => (None, name),
        };
        if !is_identifier(bare) || schema.is_some_and(|s| !is_identifier(s)) {
            return Err(invalid());
        }
        let qualify = |table: &str| match schema {
            Some(schema) => format!("\"{schema}\".\"{table}\""),
            None => format!("\"{table}\""),
        };
        Ok(Self {
            name: name.to_owned(),
            bare: bare.to_owned(),
            quoted: qualify(bare),
            migrations_quoted: qualify(&format!("{bare}_migrations")),
            index_quoted: format!("\"{bare}_expires_at\""),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_identifiers() {
        let t = Table::parse("idempotency_records", false).unwrap();
        assert_eq!(t.quoted, "\"idempotency_records\"");
        assert_eq!(t.migrations_quoted, "\"idempotency_records_migrations\"");
        let t = Table::parse("app.records", true).unwrap();
        assert_eq!(t.quoted, "\"app\".\"records\"");
        assert_eq!(t.index_quoted, "\"records_expires_at\"");
        for bad in [
            "",
            "1abc",
            "a-b",
            "a\"b",
            "a;drop",
            "a.b.c",
            "é",
            &"x".repeat(49),
        ] {
            assert!(Table::parse(bad, true).is_err(), "{bad:?}");
        }
        assert!(Table::parse("app.records", false).is_err());
    }
}
