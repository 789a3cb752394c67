//! What 16 concurrent duplicates do to each idempotent layer, checked at the start of a run
//! (not timed): 16 requests with one key, each on its own connection, all asking the handler to
//! hold (header `x-bench-hold`), sent at once. Every request either answers at once (a
//! conflict, a replay) or enters the handler, which the app reports on its control stream
//! (see `app`); once all 16 are accounted for, the held ones are let go. For `peer-idempotent`
//! the peers binary makes 16 concurrent claims of one key on the `idempotent` store.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cells::Env;
use crate::http::{HttpServer, Kind, connect, post_order};
use crate::report::DuplicateCheck;

/// Requests with one key sent at once.
pub(crate) const DUPLICATES: u32 = 16;

/// Run every check this environment allows; a check that fails becomes a note, not an error.
pub(crate) async fn check(env: &Env, notes: &mut Vec<String>) -> Vec<DuplicateCheck> {
    let mut checks = Vec::new();
    for (name, server, kind) in env.storing_apps() {
        match http(name, server, &kind).await {
            Ok(check) => checks.push(check),
            Err(error) => notes.push(format!("the duplicate check of {name} failed: {error:#}")),
        }
    }
    if let Some(bin) = env.peers_bin() {
        let url = env.servers.single.url().to_owned();
        let bin = bin.clone();
        let outcome = tokio::task::block_in_place(|| {
            Command::new(&bin)
                .args(["duplicates", "--redis-url", &url])
                .output()
        });
        match outcome {
            Ok(output) if output.status.success() => {
                match serde_json::from_slice::<DuplicateCheck>(&output.stdout) {
                    Ok(check) => checks.push(check),
                    Err(error) => notes.push(format!(
                        "the duplicate check of peer-idempotent printed no figures: {error}"
                    )),
                }
            }
            Ok(output) => notes.push(format!(
                "the duplicate check of peer-idempotent failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(error) => notes.push(format!(
                "the duplicate check of peer-idempotent did not start: {error}"
            )),
        }
    }
    checks
}

/// `15 × 409` from the statuses the requests that did not run the handler got.
pub(crate) fn others(mut statuses: BTreeMap<u16, u32>, handler_runs: u32) -> String {
    // The requests that ran the handler answered 201 once let go.
    if let Some(created) = statuses.get_mut(&201) {
        *created = created.saturating_sub(handler_runs);
    }
    let parts: Vec<String> = statuses
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(status, n)| format!("{n} × {status}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

async fn http(name: &'static str, server: &HttpServer, kind: &Kind) -> Result<DuplicateCheck> {
    let key = format!("duplicates-{name}");
    let before = server.entered_count();
    let mut requests = Vec::new();
    for _ in 0..DUPLICATES {
        let mut sender = connect(server.addr()).await?;
        let key = key.clone();
        let cookie = kind.cookie().map(str::to_owned);
        requests.push(tokio::spawn(async move {
            post_order(&mut sender, &key, cookie.as_deref(), true).await
        }));
    }
    // Every request is accounted for once it answered or entered the handler.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answered = requests.iter().filter(|r| r.is_finished()).count() as u32;
        let entered = server.entered_count().saturating_sub(before);
        if answered + entered >= DUPLICATES {
            break;
        }
        if Instant::now() >= deadline {
            bail!("{answered} answered and {entered} in the handler after 10 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let handler_runs = server.entered_count().saturating_sub(before);
    // One wake-up per held request: a spare one would let the next held request through.
    for _ in 0..handler_runs {
        server.unhold()?;
    }
    let mut statuses = BTreeMap::new();
    for request in requests {
        let answer = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .map_err(|_| anyhow!("a duplicate did not finish"))?
            .context("a duplicate panicked")??;
        *statuses.entry(answer.status.as_u16()).or_insert(0) += 1;
    }
    Ok(DuplicateCheck {
        backend: name.to_owned(),
        sent: DUPLICATES,
        handler_runs,
        others: others(statuses, handler_runs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_others_are_what_did_not_run_the_handler() {
        let statuses = BTreeMap::from([(201, 1), (409, 15)]);
        assert_eq!(others(statuses, 1), "15 × 409");
        let statuses = BTreeMap::from([(201, 16)]);
        assert_eq!(others(statuses, 16), "none");
        let statuses = BTreeMap::from([(201, 4), (409, 12)]);
        assert_eq!(others(statuses, 1), "3 × 201, 12 × 409");
    }
}
