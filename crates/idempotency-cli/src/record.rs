//! `inspect`, `release` and `delete`: one record, addressed as the app addresses it.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::{Duration, UNIX_EPOCH};

use idempotency::{
    AnyStore, Fenced, IdempotencyKey, IdempotencyStore, OutcomeEncoding, Record, Scope, StoreError,
    StoreKey,
};
use serde_json::json;

use crate::error::CliError;
use crate::key::{KeyForm, key_argument, parse_key};

/// The store key of `(scope, key)` under the engine's `prefix` (`StoreKey::derive`, as the
/// engine does), with the client key: `key` read by [`parse_key`] in `form`.
///
/// # Errors
/// A malformed prefix; the errors of [`parse_key`].
pub(crate) fn store_key(
    prefix: &str,
    scope: &str,
    key: &str,
    form: Option<KeyForm>,
) -> Result<(StoreKey, IdempotencyKey), CliError> {
    idempotency::validate_prefix(prefix)?;
    let key = parse_key(key, form)?;
    Ok((StoreKey::derive(prefix, &Scope::new(scope), &key), key))
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn left(ttl: Option<Duration>) -> String {
    match ttl {
        // Whole milliseconds: the store measures in ms.
        Some(ttl) => humantime::format_duration(Duration::from_millis(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        ))
        .to_string(),
        None => "unknown".into(),
    }
}

async fn read(store: &AnyStore, key: &StoreKey) -> Result<Record, CliError> {
    match store.get(key).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(CliError::NotFound(key.to_string())),
        Err(StoreError::Corrupt(source)) => Err(CliError::NotARecord {
            key: key.to_string(),
            source,
        }),
        Err(other) => Err(other.into()),
    }
}

/// `inspect`: print the record's state, time left, fingerprint, times and outcome, with the
/// client key `client_key` (stored text in JSON, and in text the argument that names it again:
/// see [`key_argument`]).
///
/// # Errors
/// No record, a value that is not a record (`StoreError::Corrupt`), store failures.
pub(crate) async fn inspect(
    store: &AnyStore,
    key: &StoreKey,
    client_key: &IdempotencyKey,
    as_json: bool,
) -> Result<(), CliError> {
    let record = read(store, key).await?;
    let argument = key_argument(client_key);
    let ttl = store.time_to_live(key).await?;
    let ttl_ms = ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| CliError::Keyspace(format!("writing to stdout: {e}"));
    match &record {
        Record::InProgress(r) => {
            if as_json {
                let value = json!({
                    "key": key.as_str(),
                    "idempotency_key": client_key.as_str(),
                    "state": "in_progress",
                    "lease_left_ms": ttl_ms,
                    "fingerprint": r.fingerprint.to_hex(),
                    "fencing_token": r.token.to_hex(),
                    "created_at": rfc3339(r.created_at_ms),
                    "created_at_ms": r.created_at_ms,
                });
                writeln!(out, "{value}").map_err(io)?;
            } else {
                writeln!(
                    out,
                    "key            {key}\nkey argument   {argument}\nstate          in progress\n\
                     lease left     {}\n\
                     fingerprint    {}\nfencing token  {}\ncreated        {}",
                    left(ttl),
                    r.fingerprint.to_hex(),
                    r.token.to_hex(),
                    rfc3339(r.created_at_ms),
                )
                .map_err(io)?;
            }
        }
        Record::Completed(r) => {
            let encoding = match r.outcome.encoding {
                OutcomeEncoding::Lz4 => "lz4",
                _ => "identity",
            };
            let content_type = r.outcome.content_type.as_deref();
            if as_json {
                let value = json!({
                    "key": key.as_str(),
                    "idempotency_key": client_key.as_str(),
                    "state": "completed",
                    "retention_left_ms": ttl_ms,
                    "fingerprint": r.fingerprint.to_hex(),
                    "fencing_token": r.token.to_hex(),
                    "created_at": rfc3339(r.created_at_ms),
                    "created_at_ms": r.created_at_ms,
                    "completed_at": rfc3339(r.completed_at_ms),
                    "completed_at_ms": r.completed_at_ms,
                    "outcome": {
                        "stored_bytes": r.outcome.body.len(),
                        "encoding": encoding,
                        "content_type": content_type,
                    },
                });
                writeln!(out, "{value}").map_err(io)?;
            } else {
                writeln!(
                    out,
                    "key             {key}\nkey argument    {argument}\nstate           completed\n\
                     retention left  {}\n\
                     fingerprint     {}\nfencing token   {}\ncreated         {}\n\
                     completed       {}\noutcome         {} bytes stored ({encoding}), {}",
                    left(ttl),
                    r.fingerprint.to_hex(),
                    r.token.to_hex(),
                    rfc3339(r.created_at_ms),
                    rfc3339(r.completed_at_ms),
                    r.outcome.body.len(),
                    content_type.map_or_else(
                        || "no content type".to_owned(),
                        |t| format!("content type {t}")
                    ),
                )
                .map_err(io)?;
            }
        }
    }
    Ok(())
}

/// Ask `question` on the terminal unless `yes`; refuse when stdin is not a terminal.
///
/// # Errors
/// [`CliError::NeedsYes`] without `--yes` on a non-terminal stdin.
pub(crate) fn confirm(what: &'static str, question: &str, yes: bool) -> Result<bool, CliError> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NeedsYes(what));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::Usage(format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// `release`: free a stuck claim (fenced by its own token, so a claim that completed or was
/// replaced meanwhile is left alone).
///
/// # Errors
/// No record; a completed record (use `delete`); store failures; no confirmation possible.
pub(crate) async fn release(store: &AnyStore, key: &StoreKey, yes: bool) -> Result<(), CliError> {
    let record = read(store, key).await?;
    let Record::InProgress(claim) = record else {
        return Err(CliError::Usage(format!(
            "`{key}` is completed, not in progress: nothing to release (`delete` removes it, \
             and the next request with this key runs again)"
        )));
    };
    let question = format!(
        "release the claim on `{key}` (created {})? A retry will then run the operation again, \
         even if the first attempt is still running",
        rfc3339(claim.created_at_ms)
    );
    if !confirm("release", &question, yes)? {
        println!("not released");
        return Ok(());
    }
    match store.release(key, &claim.token).await? {
        Fenced::Applied => {
            tracing::info!(key = %key, "claim released by an operator");
            println!("released {key}");
            Ok(())
        }
        Fenced::LeaseLost => Err(CliError::Usage(format!(
            "`{key}` changed meanwhile (completed, expired or claimed again): nothing released"
        ))),
    }
}

/// `delete`: remove the record whatever its state (also a value that is not a record).
///
/// # Errors
/// No record; store failures; no confirmation possible.
pub(crate) async fn delete(store: &AnyStore, key: &StoreKey, yes: bool) -> Result<(), CliError> {
    // A value that is not a record can be deleted too: that is the repair for it.
    let state = match store.get(key).await {
        Ok(Some(record)) if record.is_in_progress() => "in progress",
        Ok(Some(_)) => "completed",
        Ok(None) => return Err(CliError::NotFound(key.to_string())),
        Err(StoreError::Corrupt(_)) => "holding something that is not a record",
        Err(other) => return Err(other.into()),
    };
    let question = format!(
        "delete `{key}` ({state})? The next request with this key runs the operation again"
    );
    if !confirm("delete", &question, yes)? {
        println!("not deleted");
        return Ok(());
    }
    if store.delete(key).await? {
        tracing::info!(key = %key, "record deleted by an operator");
        println!("deleted {key}");
        Ok(())
    } else {
        Err(CliError::NotFound(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_key_is_the_engines() {
        let layer =
            IdempotencyKey::from_header_value(br#""a b""#).unwrap_or_else(|e| panic!("{e}"));
        let engine = StoreKey::derive("idempotency:", &Scope::new("alice"), &layer);
        for (arg, form) in [
            (r#""a b""#, Some(KeyForm::Header)),
            ("a b", Some(KeyForm::Stored)),
            ("a b", None),
        ] {
            let (cli, key) =
                store_key("idempotency:", "alice", arg, form).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(cli, engine, "{arg}");
            assert_eq!(key, layer, "{arg}");
        }
    }
}
