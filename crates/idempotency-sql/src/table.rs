//! Validated table names: the only text spliced into the store's SQL.

use crate::SqlStoreError;

/// The default table name.
pub const DEFAULT_TABLE: &str = "idempotency_records";

/// A table name checked to be a plain identifier (optionally `schema.table` on Postgres), so it
/// can be spliced into SQL. Stored quoted (`"schema"."table"`).
///
/// On Postgres a name given without a schema is pinned to the schema it resolves to when the
/// store is built or migrated ([`Table::in_schema`]), so that `search_path` cannot send later
/// statements to another table of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    /// As given, unquoted (`idempotency_records`, `app.idempotency_records`).
    pub(crate) name: String,
    /// The bare table name, without a schema.
    pub(crate) bare: String,
    /// The schema, unquoted: as given (`app` of `app.idempotency_records`), or as resolved
    /// ([`Table::in_schema`]); `None` for a name given without one and not resolved (SQLite).
    pub(crate) schema: Option<String>,
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
        Ok(Self::with(name, bare, schema))
    }

    /// This table pinned to `schema` (a schema name as the catalog holds it, any characters):
    /// `"schema"."table"` and `"schema"."table_migrations"`, with any `"` in the schema's name
    /// doubled. The configured name (`name`: the `LISTEN` channel, the migration lock's key,
    /// what `table()` answers), the bare name and the index name do not change.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn in_schema(&self, schema: &str) -> Self {
        Self::with(&self.name, &self.bare, Some(schema))
    }

    fn with(name: &str, bare: &str, schema: Option<&str>) -> Self {
        let qualify = |table: &str| match schema {
            Some(schema) => format!("{}.\"{table}\"", quote_identifier(schema)),
            None => format!("\"{table}\""),
        };
        Self {
            name: name.to_owned(),
            bare: bare.to_owned(),
            schema: schema.map(str::to_owned),
            quoted: qualify(bare),
            migrations_quoted: qualify(&format!("{bare}_migrations")),
            index_quoted: format!("\"{bare}_expires_at\""),
        }
    }
}

/// `identifier` as an SQL quoted identifier: in `"`, any `"` in it doubled.
fn quote_identifier(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
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

    #[test]
    fn a_resolved_schema_is_quoted_and_the_configured_name_kept() {
        let given = Table::parse("idempotency_records", true).unwrap();
        assert_eq!(given.schema, None);
        let t = given.in_schema("app");
        assert_eq!(t.name, "idempotency_records");
        assert_eq!(t.bare, "idempotency_records");
        assert_eq!(t.schema.as_deref(), Some("app"));
        assert_eq!(t.quoted, "\"app\".\"idempotency_records\"");
        assert_eq!(
            t.migrations_quoted,
            "\"app\".\"idempotency_records_migrations\""
        );
        assert_eq!(t.index_quoted, "\"idempotency_records_expires_at\"");
        // The catalog allows any character in a schema's name.
        let t = given.in_schema("My \"odd\".schema");
        assert_eq!(
            t.quoted,
            "\"My \"\"odd\"\".schema\".\"idempotency_records\""
        );
        let given = Table::parse("app.records", true).unwrap();
        assert_eq!(given.schema.as_deref(), Some("app"));
        let pinned = Table::parse("records", true).unwrap().in_schema("app");
        assert_eq!(pinned.quoted, given.quoted);
        assert_eq!(pinned.migrations_quoted, given.migrations_quoted);
    }
}
