//! One row of the records table, as read from either database, and its decoding into a
//! [`Record`]. Every column is read leniently (nullable, any length) so that a row edited by hand
//! into something that is not a record is reported as [`CorruptRecord`], never a panic.

use idempotency_core::{
    Bytes, Completed, CorruptRecord, Fingerprint, InProgress, LeaseToken, OutcomeEncoding, Record,
    StoredOutcome,
};

/// `state` of a running claim.
pub(crate) const IN_PROGRESS: &str = "in_progress";
/// `state` of a finished operation.
pub(crate) const COMPLETED: &str = "completed";

/// The columns every read selects, in this order.
pub(crate) const COLUMNS: &str =
    "state, token, fingerprint, created_at_ms, completed_at_ms, content_type, encoding, body";

/// The raw column values of one row.
#[derive(Debug, Default)]
pub(crate) struct RawRow {
    pub(crate) state: Option<String>,
    pub(crate) token: Option<Vec<u8>>,
    pub(crate) fingerprint: Option<Vec<u8>>,
    pub(crate) created_at_ms: Option<i64>,
    pub(crate) completed_at_ms: Option<i64>,
    pub(crate) content_type: Option<String>,
    pub(crate) encoding: Option<i64>,
    pub(crate) body: Option<Vec<u8>>,
}

/// The `encoding` column's value for an outcome encoding.
pub(crate) fn encoding_code(encoding: OutcomeEncoding) -> i16 {
    match encoding {
        OutcomeEncoding::Lz4 => 1,
        // Identity, and any encoding added later is stored as produced.
        _ => 0,
    }
}

/// Milliseconds as the `BIGINT` the table holds (saturating; these timestamps are informative).
pub(crate) fn millis_column(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn corrupt(what: &str) -> CorruptRecord {
    CorruptRecord::new(format!("idempotency row: {what}"))
}

fn millis(value: Option<i64>, column: &str) -> Result<u64, CorruptRecord> {
    value
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| corrupt(&format!("`{column}` is missing or negative")))
}

impl RawRow {
    /// Decode into a record.
    ///
    /// # Errors
    /// [`CorruptRecord`] for an unknown state, a token that is not 16 bytes, a fingerprint
    /// that is not 32, a missing timestamp or a completed row without a body or encoding.
    pub(crate) fn decode(self) -> Result<Record, CorruptRecord> {
        let token: [u8; 16] = self
            .token
            .as_deref()
            .and_then(|t| t.try_into().ok())
            .ok_or_else(|| corrupt("`token` is not 16 bytes"))?;
        let fingerprint: [u8; 32] = self
            .fingerprint
            .as_deref()
            .and_then(|f| f.try_into().ok())
            .ok_or_else(|| corrupt("`fingerprint` is not 32 bytes"))?;
        let token = LeaseToken::from_bytes(token);
        let fingerprint = Fingerprint::from_bytes(fingerprint);
        let created_at_ms = millis(self.created_at_ms, "created_at_ms")?;
        match self.state.as_deref() {
            Some(IN_PROGRESS) => Ok(Record::InProgress(InProgress {
                token,
                fingerprint,
                created_at_ms,
            })),
            Some(COMPLETED) => {
                let encoding = match self.encoding {
                    Some(0) => OutcomeEncoding::Identity,
                    Some(1) => OutcomeEncoding::Lz4,
                    _ => return Err(corrupt("`encoding` is not 0 (identity) or 1 (lz4)")),
                };
                let body = self
                    .body
                    .ok_or_else(|| corrupt("a completed row has no `body`"))?;
                Ok(Record::Completed(Completed {
                    token,
                    fingerprint,
                    created_at_ms,
                    completed_at_ms: millis(self.completed_at_ms, "completed_at_ms")?,
                    outcome: StoredOutcome {
                        body: Bytes::from(body),
                        content_type: self.content_type,
                        encoding,
                    },
                }))
            }
            Some(other) => Err(corrupt(&format!("unknown state {:?}", truncate(other)))),
            None => Err(corrupt("`state` is NULL")),
        }
    }
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> RawRow {
        RawRow {
            state: Some(IN_PROGRESS.into()),
            token: Some(vec![1; 16]),
            fingerprint: Some(vec![2; 32]),
            created_at_ms: Some(5),
            ..RawRow::default()
        }
    }

    #[test]
    fn decodes_both_states() {
        assert!(valid().decode().unwrap().is_in_progress());
        let done = RawRow {
            state: Some(COMPLETED.into()),
            completed_at_ms: Some(6),
            encoding: Some(0),
            body: Some(b"ok".to_vec()),
            content_type: Some("text/plain".into()),
            ..valid()
        };
        let Record::Completed(c) = done.decode().unwrap() else {
            panic!("completed")
        };
        assert_eq!(&c.outcome.body[..], b"ok");
    }

    #[test]
    fn invalid_rows_are_corrupt() {
        let cases = [
            RawRow {
                state: Some("definitely not a record".into()),
                ..valid()
            },
            RawRow {
                state: None,
                ..valid()
            },
            RawRow {
                token: Some(vec![1; 3]),
                ..valid()
            },
            RawRow {
                fingerprint: None,
                ..valid()
            },
            RawRow {
                created_at_ms: Some(-1),
                ..valid()
            },
            RawRow {
                state: Some(COMPLETED.into()),
                completed_at_ms: Some(1),
                encoding: Some(0),
                ..valid()
            },
            RawRow {
                state: Some(COMPLETED.into()),
                completed_at_ms: Some(1),
                encoding: Some(7),
                body: Some(vec![]),
                ..valid()
            },
        ];
        for row in cases {
            assert!(row.decode().is_err());
        }
    }
}
