//! The baseline: the plain `redis` crate sending exactly the commands `RedisStore` sends —
//! `SET key <in-progress record> NX PX <lease> GET`, then `EVALSHA` of the core's completion
//! script with the token, the completed record, the retention and the key's wake-up channel
//! (`RedisStore::connect` makes a store that notifies waiting duplicates) — with none of our code in
//! the loop (no engine, no codec, no timeouts). Records are made by splicing the token into a
//! template encoded once, so the server sees the same bytes and runs the same script branch,
//! while the client does as little as a hand-written client could.

use anyhow::{Context as _, Result, bail};
use idempotency_core::{Completed, InProgress, LeaseToken, Record, codec, lua, unix_millis_now};
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use crate::load::Worker;
use crate::scenario::{LEASE, RETENTION, Scenario, fingerprint, outcome};

/// A record text split around its token.
#[derive(Clone)]
struct Template {
    before: String,
    after: String,
}

impl Template {
    fn new(text: &str, token: &str) -> Self {
        let (before, after) = text.split_once(token).unwrap_or((text, ""));
        Self {
            before: before.to_owned(),
            after: after.to_owned(),
        }
    }

    fn with(&self, token: &str) -> String {
        let mut out = String::with_capacity(self.before.len() + token.len() + self.after.len());
        out.push_str(&self.before);
        out.push_str(token);
        out.push_str(&self.after);
        out
    }
}

/// Record texts encoded once by the real codec.
#[derive(Clone)]
pub(crate) struct Templates {
    in_progress: Template,
    completed: Template,
    script: Script,
}

impl Templates {
    pub(crate) fn new() -> Self {
        let token = LeaseToken::generate();
        let now = unix_millis_now();
        let claim = InProgress {
            token,
            fingerprint: fingerprint(),
            created_at_ms: now,
        };
        let done = Completed {
            token,
            fingerprint: claim.fingerprint,
            created_at_ms: now,
            completed_at_ms: now,
            outcome: outcome(),
        };
        let token = token.to_hex();
        Self {
            in_progress: Template::new(&codec::encode(&Record::InProgress(claim)), &token),
            completed: Template::new(&codec::encode(&Record::Completed(done)), &token),
            script: Script::new(lua::COMPLETE),
        }
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One raw client task (all tasks share one multiplexed connection, as the store does).
pub(crate) struct RawWorker {
    conn: ConnectionManager,
    templates: Templates,
    scenario: Scenario,
    prefix: String,
    task: u64,
    n: u64,
    fixed: String,
}

impl RawWorker {
    pub(crate) fn new(
        conn: ConnectionManager,
        templates: Templates,
        scenario: Scenario,
        prefix: String,
        task: u64,
        fixed: String,
    ) -> Self {
        Self {
            conn,
            templates,
            scenario,
            prefix,
            task,
            n: 0,
            fixed,
        }
    }

    async fn claim(&mut self, key: &str, token: &str) -> Result<Value> {
        let record = self.templates.in_progress.with(token);
        Ok(redis::cmd("SET")
            .arg(key)
            .arg(record)
            .arg("NX")
            .arg("PX")
            .arg(millis(LEASE))
            .arg("GET")
            .query_async(&mut self.conn)
            .await?)
    }

    async fn complete(&mut self, key: &str, token: &str) -> Result<()> {
        let record = self.templates.completed.with(token);
        let mut channel = String::with_capacity(lua::WAKE_CHANNEL_PREFIX.len() + key.len());
        channel.push_str(lua::WAKE_CHANNEL_PREFIX);
        channel.push_str(key);
        // Built directly, as `RedisStore` builds it (a `ScriptInvocation` copies every
        // argument twice); `prepare` loaded the script.
        let mut cmd = redis::Cmd::with_capacity(8, 200 + record.len() + 2 * key.len());
        cmd.arg("EVALSHA")
            .arg(self.templates.script.get_hash())
            .arg(1)
            .arg(key)
            .arg(token)
            .arg(record)
            .arg(millis(RETENTION))
            .arg(channel);
        let applied: i64 = cmd.query_async(&mut self.conn).await?;
        if applied != 1 {
            bail!("completion script answered {applied}");
        }
        Ok(())
    }

    /// 32 hex digits, unique per task and operation.
    fn token(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(32);
        for word in [self.task, self.n] {
            for shift in (0..16).rev() {
                out.push(char::from(DIGITS[((word >> (shift * 4)) & 0xf) as usize]));
            }
        }
        out
    }
}

impl Worker for RawWorker {
    async fn op(&mut self) -> Result<()> {
        let token = self.token();
        self.n += 1;
        match self.scenario {
            Scenario::Fresh => {
                let key = format!("{}{}", self.prefix, self.n);
                match self.claim(&key, &token).await? {
                    Value::Nil => self.complete(&key, &token).await,
                    other => bail!("fresh key held: {other:?}"),
                }
            }
            Scenario::Replay | Scenario::Conflict => {
                let key = std::mem::take(&mut self.fixed);
                let reply = self.claim(&key, &token).await;
                self.fixed = key;
                match reply? {
                    Value::BulkString(_) => Ok(()),
                    other => bail!("expected the existing record, got {other:?}"),
                }
            }
        }
    }
}

/// Put the fixed key in the state the scenario needs.
pub(crate) async fn prepare(
    conn: &ConnectionManager,
    templates: &Templates,
    scenario: Scenario,
    key: &str,
) -> Result<()> {
    // Loaded up front (as `RedisStore` does at connect): the completion is sent as a bare
    // `EVALSHA`.
    templates
        .script
        .load_async(&mut conn.clone())
        .await
        .context("loading the completion script")?;
    if scenario == Scenario::Fresh {
        return Ok(());
    }
    let mut worker = RawWorker::new(
        conn.clone(),
        templates.clone(),
        scenario,
        String::new(),
        u64::MAX,
        String::new(),
    );
    let token = worker.token();
    match worker.claim(key, &token).await.context("preparing")? {
        Value::Nil => {}
        other => bail!("the scenario key was held: {other:?}"),
    }
    if scenario == Scenario::Replay {
        worker.complete(key, &token).await?;
    }
    Ok(())
}
