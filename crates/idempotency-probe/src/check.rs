//! The five checks, each one or a few requests against the target.

use std::collections::BTreeSet;

use bytes::Bytes;
use reqwest::StatusCode;

use crate::{CheckResult, Probe};

/// Header a replay must carry.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// One answer, as far as the checks care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) replayed: bool,
    pub(crate) body: Bytes,
}

impl Answer {
    fn same_response(&self, other: &Answer) -> bool {
        self.status == other.status && self.body == other.body
    }

    fn brief(&self) -> String {
        format!("{} {}", self.status.as_u16(), snippet(&self.body))
    }
}

/// The body for a table cell: UTF-8 (lossy), one line, at most 60 characters.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 60 {
        format!("{}…", line.chars().take(60).collect::<String>())
    } else {
        line
    }
}

/// Where two bodies first differ, with a little context from each.
fn difference(a: &[u8], b: &[u8]) -> String {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let start = at.saturating_sub(16);
    let around = |body: &[u8]| {
        let end = (at + 16).min(body.len());
        let prefix = if start > 0 { "…" } else { "" };
        let suffix = if end < body.len() { "…" } else { "" };
        format!(
            "`{prefix}{}{suffix}`",
            snippet(&body[start.min(body.len())..end])
        )
    };
    format!(
        "bodies differ at byte {at}: {} then {}",
        around(a),
        around(b)
    )
}

/// At most this many different answers are spelled out in one table cell.
const TALLY_KINDS: usize = 3;

/// Identical answers counted once each, in the order first seen (`8 × 500 {…}`), at most
/// [`TALLY_KINDS`] of them spelled out: a cell stays one readable line whatever `--concurrency`
/// (3000 timed-out duplicates were 3000 copies of the same error, 43 KB on one line).
fn tally(answers: &[String]) -> String {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for answer in answers {
        match kinds.iter_mut().find(|(text, _)| *text == answer.as_str()) {
            Some((_, count)) => *count += 1,
            None => kinds.push((answer, 1)),
        }
    }
    let mut shown: Vec<String> = kinds
        .iter()
        .take(TALLY_KINDS)
        .map(|(text, count)| {
            if *count == 1 {
                (*text).to_owned()
            } else {
                format!("{count} × {text}")
            }
        })
        .collect();
    if kinds.len() > TALLY_KINDS {
        let rest: usize = kinds[TALLY_KINDS..].iter().map(|(_, count)| count).sum();
        shown.push(format!(
            "and {rest} more ({} other kinds)",
            kinds.len() - TALLY_KINDS
        ));
    }
    shown.join(", ")
}

/// Which key header, if any, a request sends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyUse<'a> {
    Key(&'a str),
    NoKey,
}

/// A fresh key: a random UUID (version 4, 122 random bits), as Stripe's clients send.
pub fn random_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn result(id: &'static str, name: &'static str, problems: Vec<String>, ok: String) -> CheckResult {
    CheckResult {
        id,
        name,
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            ok
        } else {
            problems.join("; ")
        },
    }
}

fn failed(id: &'static str, name: &'static str, detail: String) -> CheckResult {
    CheckResult {
        id,
        name,
        passed: false,
        detail,
    }
}

/// (a) A duplicate gets the identical response with `Idempotent-Replayed: true`. Returns the
/// first answer for (b) and the key for (d).
pub(crate) async fn duplicate(probe: &Probe, key: &str) -> (CheckResult, Option<Answer>) {
    const ID: &str = "a";
    const NAME: &str = "duplicate replays the first response";
    let first = match probe.send(KeyUse::Key(key), &probe.config.body).await {
        Ok(answer) => answer,
        Err(error) => return (failed(ID, NAME, error), None),
    };
    if !first.status.is_success() {
        let detail = format!("first request answered {}; expected 2xx", first.brief());
        return (failed(ID, NAME, detail), None);
    }
    let second = match probe.send(KeyUse::Key(key), &probe.config.body).await {
        Ok(answer) => answer,
        Err(error) => return (failed(ID, NAME, error), Some(first)),
    };
    let mut problems = Vec::new();
    if first.replayed {
        problems.push("the first request already said Idempotent-Replayed".to_owned());
    }
    if second.status != first.status {
        problems.push(format!(
            "status {} then {}",
            first.status.as_u16(),
            second.status.as_u16()
        ));
    }
    if second.body != first.body {
        problems.push(difference(&first.body, &second.body));
    }
    if !second.replayed {
        problems.push("no `Idempotent-Replayed: true` on the duplicate".to_owned());
    }
    let ok = format!(
        "{} twice, bodies identical ({} bytes), Idempotent-Replayed: true",
        first.status.as_u16(),
        first.body.len()
    );
    (result(ID, NAME, problems, ok), Some(first))
}

/// (b) The same request under a new key runs anew (2xx, not a replay).
pub(crate) async fn new_key(probe: &Probe, first: Option<&Answer>) -> CheckResult {
    const ID: &str = "b";
    const NAME: &str = "a new key executes anew";
    let key = random_key();
    let answer = match probe.send(KeyUse::Key(&key), &probe.config.body).await {
        Ok(answer) => answer,
        Err(error) => return failed(ID, NAME, error),
    };
    let mut problems = Vec::new();
    if !answer.status.is_success() {
        problems.push(format!("answered {}; expected 2xx", answer.brief()));
    }
    if answer.replayed {
        problems.push("answered with a replay (Idempotent-Replayed) for an unused key".to_owned());
    }
    let same = first.is_some_and(|f| f.body == answer.body);
    let ok = format!(
        "{}, not a replay{}",
        answer.status.as_u16(),
        if same {
            " (body equals the first key's: the handler may be deterministic)"
        } else {
            ", body differs from the first key's"
        }
    );
    result(ID, NAME, problems, ok)
}

/// (c) A request without the key header is refused with 400.
pub(crate) async fn missing_key(probe: &Probe) -> CheckResult {
    const ID: &str = "c";
    const NAME: &str = "a missing key gets 400";
    match probe.send(KeyUse::NoKey, &probe.config.body).await {
        Ok(answer) if answer.status == StatusCode::BAD_REQUEST => {
            result(ID, NAME, Vec::new(), "400".to_owned())
        }
        Ok(answer) => failed(
            ID,
            NAME,
            format!("answered {}; expected 400", answer.brief()),
        ),
        Err(error) => failed(ID, NAME, error),
    }
}

/// The request body changed in a way every fingerprint sees: a JSON object gets one more field;
/// anything else one more byte.
pub(crate) fn changed_body(body: &str) -> String {
    if let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(body) {
        map.insert(
            "idempotencyProbe".to_owned(),
            serde_json::Value::String(random_key()),
        );
        if let Ok(text) = serde_json::to_string(&map) {
            return text;
        }
    }
    format!("{body} ")
}

/// (d) The key of (a) with a different body is refused with 422.
pub(crate) async fn changed(probe: &Probe, key: &str) -> CheckResult {
    const ID: &str = "d";
    const NAME: &str = "a changed body under the same key gets 422";
    let body = changed_body(&probe.config.body);
    match probe.send(KeyUse::Key(key), &body).await {
        Ok(answer) if answer.status == StatusCode::UNPROCESSABLE_ENTITY => {
            result(ID, NAME, Vec::new(), "422".to_owned())
        }
        Ok(answer) => failed(
            ID,
            NAME,
            format!("answered {}; expected 422", answer.brief()),
        ),
        Err(error) => failed(ID, NAME, error),
    }
}

/// (e) N concurrent duplicates under a fresh key run once: one 2xx without the replay header,
/// every other answer a replay of it or 409; then one more duplicate is a replay.
pub(crate) async fn concurrent(probe: &Probe) -> CheckResult {
    const ID: &str = "e";
    const NAME: &str = "concurrent duplicates execute once";
    let key = random_key();
    let n = probe.config.concurrency.max(2);
    let sends = (0..n).map(|_| probe.send(KeyUse::Key(&key), &probe.config.body));
    let answers = futures::future::join_all(sends).await;
    let mut problems = Vec::new();
    let mut successes: Vec<&Answer> = Vec::new();
    let (mut executed, mut replays, mut conflicts) = (0usize, 0usize, 0usize);
    let mut unexpected = Vec::new();
    for answer in &answers {
        match answer {
            Ok(a) if a.status.is_success() => {
                successes.push(a);
                if a.replayed {
                    replays += 1;
                } else {
                    executed += 1;
                }
            }
            Ok(a) if a.status == StatusCode::CONFLICT => conflicts += 1,
            Ok(a) => unexpected.push(a.brief()),
            Err(error) => unexpected.push(error.clone()),
        }
    }
    if executed != 1 {
        problems.push(format!(
            "{executed} of {n} answers executed (2xx without Idempotent-Replayed); expected 1"
        ));
    }
    let distinct: BTreeSet<(u16, &[u8])> = successes
        .iter()
        .map(|a| (a.status.as_u16(), &a.body[..]))
        .collect();
    if distinct.len() > 1 {
        problems.push(format!(
            "{} different 2xx responses; expected one",
            distinct.len()
        ));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} answers neither 2xx nor 409: {}",
            unexpected.len(),
            tally(&unexpected)
        ));
    }
    let mut follow_up = String::new();
    if let Some(reference) = successes.first() {
        match probe.send(KeyUse::Key(&key), &probe.config.body).await {
            Ok(after) if after.replayed && after.same_response(reference) => {
                follow_up = "; a later duplicate replayed it".to_owned();
            }
            Ok(after) => problems.push(format!(
                "a later duplicate was not a replay of it: {}{}",
                after.brief(),
                if after.replayed {
                    ""
                } else {
                    " (no replay header)"
                }
            )),
            Err(error) => problems.push(error),
        }
    } else {
        problems.push("no 2xx answer at all".to_owned());
    }
    let ok = format!(
        "{n} at once: 1 executed, {replays} replays, {conflicts} × 409, 2xx bodies identical{follow_up}"
    );
    result(ID, NAME, problems, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_uuid_shaped_and_fresh() {
        let a = random_key();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, random_key());
    }

    #[test]
    fn differences_are_located() {
        let a = br#"{"data":{"name":"Tea","version":1},"meta":{}}"#;
        let b = br#"{"data":{"name":"Tea","version":2},"meta":{}}"#;
        let text = difference(a, b);
        assert!(text.starts_with("bodies differ at byte 32: `…"), "{text}");
        assert!(text.contains(r#""version":1"#), "{text}");
        assert!(text.contains(r#""version":2"#), "{text}");
        assert_eq!(
            difference(b"ab", b"abc"),
            "bodies differ at byte 2: `ab` then `abc`"
        );
    }

    #[test]
    fn repeated_answers_are_counted_not_repeated() {
        let timeout = "request failed: operation timed out".to_owned();
        let answers: Vec<String> = std::iter::repeat_n(timeout, 3000)
            .chain(["500 oops".to_owned()])
            .collect();
        assert_eq!(
            tally(&answers),
            "3000 × request failed: operation timed out, 500 oops"
        );
        let many: Vec<String> = (0..6).map(|i| format!("50{i}")).collect();
        assert_eq!(tally(&many), "500, 501, 502, and 3 more (3 other kinds)");
        assert_eq!(tally(&[]), "");
    }

    #[test]
    fn changed_bodies_differ() {
        let body = r#"{"name":"Tea","price":450}"#;
        let changed = changed_body(body);
        assert_ne!(changed, body);
        assert!(changed.contains("idempotencyProbe"));
        assert_eq!(changed_body("plain"), "plain ");
    }
}
