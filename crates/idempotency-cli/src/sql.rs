//! The keyspace of the SQL store (`IDEMPOTENCY_STORE=sql`): the rows of its records table, walked
//! in store-key order (keyset pagination, one bounded `SELECT` per step) and deleted through
//! the store's own `delete`. The same SQL text runs on Postgres and SQLite (`$n` parameters).

use idempotency::AnyStore;
use idempotency::sql::sqlx;

use crate::error::CliError;

/// The records table of an opened SQL store.
pub(crate) struct SqlNode {
    store: AnyStore,
    /// Quoted; on Postgres schema-qualified as the store's own statements name it.
    table: String,
}

/// One step of a walk: the store keys after `$3` that start with the `$1` characters `$2`.
///
/// On Postgres every function and operator is `pg_catalog`'s, written so (as the store's own
/// statements are, see `idempotency_sql`'s docs): a `=` or `>` of the same name in a schema
/// earlier in the connection's `search_path` would otherwise decide which keys a walk lists,
/// and so which records `purge` deletes. `ORDER BY` takes the type's default ordering, which
/// `search_path` does not change.
fn scan_sql(table: &str, postgres: bool) -> String {
    if postgres {
        format!(
            "SELECT store_key FROM {table} \
             WHERE pg_catalog.substr(store_key, 1, $1) OPERATOR(pg_catalog.=) $2 \
             AND store_key OPERATOR(pg_catalog.>) $3 ORDER BY store_key LIMIT $4"
        )
    } else {
        format!(
            "SELECT store_key FROM {table} WHERE substr(store_key, 1, $1) = $2 AND store_key > $3 \
             ORDER BY store_key LIMIT $4"
        )
    }
}

/// A cursor of a walk in progress: `k:` + the last store key returned (`"0"`: start or done,
/// as `SCAN`'s).
const CURSOR: &str = "k:";

impl SqlNode {
    /// The table of `store`, if it is the SQL store.
    pub(crate) fn of(store: &AnyStore) -> Option<Self> {
        let table = match (store.as_postgres(), store.as_sqlite()) {
            // Pinned to its schema when the store was built: the table the store uses, whatever
            // `search_path` finds first.
            (Some(pg), _) => pg.quoted_table().to_owned(),
            // The store checked the name (letters, digits, `_`).
            (_, Some(lite)) => format!("\"{}\"", lite.table()),
            _ => return None,
        };
        Some(Self {
            store: store.clone(),
            table,
        })
    }

    /// The next `count` store keys after `cursor` that start with the literal `prefix`, and the
    /// next cursor (`"0"` when this was the last step). Expired rows not purged yet are listed
    /// too (`delete` and `get` treat them as absent).
    pub(crate) async fn scan(
        &self,
        cursor: &str,
        prefix: &str,
        count: usize,
    ) -> Result<(String, Vec<String>), CliError> {
        let after = cursor.strip_prefix(CURSOR).unwrap_or("");
        let sql = scan_sql(&self.table, self.store.as_postgres().is_some());
        let length = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
        let limit = i64::try_from(count).unwrap_or(i64::MAX);
        let keys: Vec<String> = if let Some(pg) = self.store.as_postgres() {
            sqlx::query_scalar(&sql)
                .bind(length)
                .bind(prefix)
                .bind(after)
                .bind(limit)
                .fetch_all(pg.pool())
                .await
        } else if let Some(lite) = self.store.as_sqlite() {
            sqlx::query_scalar(&sql)
                .bind(length)
                .bind(prefix)
                .bind(after)
                .bind(limit)
                .fetch_all(lite.pool())
                .await
        } else {
            return Err(CliError::Keyspace("not the SQL store".into()));
        }
        .map_err(sql_error)?;
        let next = match keys.last() {
            Some(last) if keys.len() >= count => format!("{CURSOR}{last}"),
            _ => "0".to_owned(),
        };
        Ok((next, keys))
    }

    /// Delete `keys` with the store's `delete`; returns how many were live records.
    pub(crate) async fn delete(&self, keys: &[String]) -> Result<u64, CliError> {
        let mut live = 0;
        for key in keys {
            let store_key = idempotency::StoreKey::from_raw(key.clone());
            if idempotency::IdempotencyStore::delete(&self.store, &store_key).await? {
                live += 1;
            }
        }
        Ok(live)
    }

    /// The rows in the table (live or expired and not purged yet). On Postgres `count` is
    /// `pg_catalog`'s, as in [`scan_sql`]: a `count(*)` aggregate in a schema earlier in the
    /// connection's `search_path` would otherwise answer.
    pub(crate) async fn rows(&self) -> Result<u64, CliError> {
        let rows: i64 = if let Some(pg) = self.store.as_postgres() {
            let sql = format!("SELECT pg_catalog.count(*) FROM {}", self.table);
            sqlx::query_scalar(&sql).fetch_one(pg.pool()).await
        } else if let Some(lite) = self.store.as_sqlite() {
            let sql = format!("SELECT COUNT(*) FROM {}", self.table);
            sqlx::query_scalar(&sql).fetch_one(lite.pool()).await
        } else {
            return Err(CliError::Keyspace("not the SQL store".into()));
        }
        .map_err(sql_error)?;
        Ok(u64::try_from(rows).unwrap_or(0))
    }

    /// Delete every expired row with the store's `purge_expired`, in batches of `batch`.
    pub(crate) async fn purge_expired(&self, batch: u32) -> Result<u64, CliError> {
        let mut total = 0;
        loop {
            let deleted = if let Some(pg) = self.store.as_postgres() {
                pg.purge_expired(batch).await?
            } else if let Some(lite) = self.store.as_sqlite() {
                lite.purge_expired(batch).await?
            } else {
                return Err(CliError::Keyspace("not the SQL store".into()));
            };
            total += deleted;
            if deleted < u64::from(batch) {
                return Ok(total);
            }
        }
    }
}

fn sql_error(error: sqlx::Error) -> CliError {
    CliError::Keyspace(format!("database: {error}"))
}

/// The literal prefix of a `SCAN` pattern built by `glob_escape(prefix) + "*"`.
pub(crate) fn unglob(pattern: &str) -> String {
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                out.push(escaped);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unglob_undoes_glob_escape() {
        let prefix = "idempotency:a*b?[c]\\d:";
        assert_eq!(
            unglob(&format!("{}*", crate::keyspace::glob_escape(prefix))),
            prefix
        );
    }
}
