//! `idempotency-demo`: the shop API on 127.0.0.1:3000, store from the environment.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory as _, Parser};
use idempotency::{
    EnvSettings, Idempotency, StoreSelection, error_chain, store_from_env_with_timeout,
};
use idempotency_demo::{
    AppState, Database, ExecutionLog, LimitArgs, SlowWork, app, serve_with_limits, shutdown_signal,
};
use tracing_subscriber::EnvFilter;

/// A small shop API protected by the Idempotency-Key layer.
///
/// The idempotency store comes from the environment: UPSTASH_REDIS_REST_URL + _TOKEN or
/// KV_REST_API_URL + KV_REST_API_TOKEN (KV REST API), else REDIS_URL or KV_URL (Redis), else the
/// per-process memory store (with a warning); IDEMPOTENCY_STORE names one explicitly. Engine
/// settings: IDEMPOTENCY_RETENTION, IDEMPOTENCY_LEASE, IDEMPOTENCY_STORE_TIMEOUT (durations such
/// as 24h, 30s, 250ms), IDEMPOTENCY_FAILURE_POLICY (fail-closed, fail-open, fallback),
/// IDEMPOTENCY_WAIT_IN_PROGRESS; DISABLE_IDEMPOTENCY_CHECKS=true (or 1, yes) turns every check
/// off (the store is then not even opened), false/0/no/empty keeps them on, and any other value
/// stops start-up. A store that is down at start-up is connected in the
/// background; until then the failure policy answers.
#[derive(Parser)]
#[command(name = "idempotency-demo", version, about)]
struct Args {
    /// Address to listen on [default: 127.0.0.1:$PORT if PORT is set, else 127.0.0.1:3000].
    #[arg(long)]
    listen: Option<SocketAddr>,

    /// Bearer token allowed to read /api/internal/metrics/idempotency (closed when unset).
    #[arg(long, env = "DEMO_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// Refuse to start on the per-process memory store (no store configured → exit 1).
    #[arg(long, env = "DEMO_REQUIRE_DISTRIBUTED")]
    require_distributed: bool,

    /// Let a duplicate that arrives while the first attempt runs wait up to this long for its
    /// replay instead of getting 409 at once (0: answer 409 at once).
    #[arg(long, env = "DEMO_WAIT_IN_PROGRESS_MS", default_value_t = 0)]
    wait_in_progress_ms: u64,

    /// Simulated payment-provider call inside each mutating handler, before its write (ms).
    #[arg(long, env = "DEMO_WORK_MS", default_value_t = 0)]
    work_ms: u64,

    /// Simulated work after each mutating handler's write, before its response (ms).
    #[arg(long, env = "DEMO_AFTER_WRITE_MS", default_value_t = 0)]
    after_write_ms: u64,

    /// Append one JSON line per handler execution to this file (for fault-injection runs).
    #[arg(long, env = "DEMO_EXECUTION_LOG")]
    execution_log: Option<std::path::PathBuf>,

    /// HTTP server timeouts and connection limit.
    #[command(flatten)]
    limits: LimitArgs,
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("listen", &self.listen)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// The arguments, from the command line and the `DEMO_*` variables. A value clap refuses that
/// came from a variable is reported naming that variable (clap's own message names only the
/// flag, which an operator who set only the variable never typed); exit code 2 either way.
fn parse_args() -> Args {
    Args::try_parse().unwrap_or_else(|error| {
        match refused_variable(&error, |name| std::env::var(name).ok()) {
            Some(message) => {
                eprintln!("{message}");
                std::process::exit(2)
            }
            None => error.exit(),
        }
    })
}

/// `error: DEMO_WORK_MS="abc" is not usable: invalid value 'abc' for '--work-ms <WORK_MS>': …`
/// when `error` refuses a value that the flag's environment variable holds (as `lookup` reads
/// it), else `None`.
fn refused_variable(
    error: &clap::Error,
    lookup: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let (Some(ContextValue::String(flag)), Some(ContextValue::String(value))) = (
        error.get(ContextKind::InvalidArg),
        error.get(ContextKind::InvalidValue),
    ) else {
        return None;
    };
    let command = Args::command();
    let variable = command.get_arguments().find_map(|arg| {
        let long = format!("--{}", arg.get_long()?);
        let named = flag == &long || flag.starts_with(&format!("{long} "));
        let variable = arg.get_env()?.to_str()?;
        (named && lookup(variable).as_deref() == Some(value.as_str())).then_some(variable)
    })?;
    let rendered = error.render().to_string();
    let reason = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    Some(format!(
        "error: {variable}={value:?} is not usable: {reason} (the value comes from the \
         environment variable {variable}; fix or unset it)"
    ))
}

fn listen_address(args: &Args) -> Result<SocketAddr, String> {
    if let Some(listen) = args.listen {
        return Ok(listen);
    }
    match std::env::var("PORT") {
        Ok(port) if !port.trim().is_empty() => port
            .trim()
            .parse::<u16>()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|_| format!("PORT={port:?} is not a port number")),
        _ => Ok(SocketAddr::from(([127, 0, 0, 1], 3000))),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = parse_args();
    let listen = match listen_address(&args) {
        Ok(listen) => listen,
        Err(error) => {
            tracing::error!(%error, "cannot choose the listen address");
            return ExitCode::FAILURE;
        }
    };
    // Settings first: a typo in a variable stops start-up before anything is opened.
    let settings = match EnvSettings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!(%error, "invalid idempotency setting");
            return ExitCode::FAILURE;
        }
    };
    let selection = if args.require_distributed {
        StoreSelection::RequireDistributed
    } else {
        StoreSelection::AllowMemory
    };
    // The store's own per-operation budget is the engine's (`IDEMPOTENCY_STORE_TIMEOUT`), not
    // the store's 1 s default under a longer setting.
    let store =
        match store_from_env_with_timeout(selection, settings.store_timeout_or_default()).await {
            Ok(store) => store,
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "no idempotency store");
                return ExitCode::FAILURE;
            }
        };
    let description = store.description().to_string();
    let mut builder = Idempotency::builder(store);
    if args.wait_in_progress_ms > 0 {
        builder = builder.wait_for_in_progress(
            Duration::from_millis(args.wait_in_progress_ms),
            Duration::from_millis(20),
        );
    }
    // The environment's settings win over the flag above.
    let builder = settings.apply(builder);
    tracing::info!(settings = %settings, "idempotency settings");
    let engine = match builder.build() {
        Ok(engine) => engine,
        Err(error) => {
            tracing::error!(%error, "invalid engine configuration");
            return ExitCode::FAILURE;
        }
    };
    if args.admin_token.is_none() {
        tracing::info!("DEMO_ADMIN_TOKEN is not set: the metrics route answers 403 to everyone");
    }
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, %listen, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let url = listener
        .local_addr()
        .map_or_else(|_| listen.to_string(), |a| a.to_string());
    tracing::info!(store = %description, url = %format!("http://{url}"), "idempotency-demo listening");
    let execution_log = match args.execution_log.as_deref().map(ExecutionLog::open) {
        None => None,
        Some(Ok(log)) => Some(log),
        Some(Err(error)) => {
            tracing::error!(%error, "cannot open the execution log (DEMO_EXECUTION_LOG)");
            return ExitCode::FAILURE;
        }
    };
    let work = SlowWork::from_millis(args.work_ms, args.after_write_ms);
    if work != SlowWork::default() {
        tracing::info!(
            before_write_ms = args.work_ms,
            after_write_ms = args.after_write_ms,
            "simulated slow work in every mutating handler"
        );
    }
    let database_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty());
    let state = match database_url {
        None => {
            tracing::info!("DATABASE_URL is not set: the shop's data is kept in memory");
            AppState::with_work(engine, args.admin_token, work, execution_log)
        }
        Some(url) => match Database::connect(url.trim()).await {
            Ok(db) => {
                let store = engine.store();
                let transactional = match db {
                    // A SQL store still connecting in the background (the database was down at
                    // start) is the Postgres store once it answers: each write checks again.
                    Database::Postgres(_) => {
                        store.as_postgres().is_some()
                            || (store.kind() == idempotency::BackendKind::Sql
                                && !store.is_connected())
                    }
                    Database::Sqlite(_) => store.as_sqlite().is_some(),
                };
                if transactional {
                    tracing::info!(
                        database = db.kind(),
                        "shop data in DATABASE_URL; every idempotent request completes in the same transaction as its write"
                    );
                } else {
                    tracing::info!(database = db.kind(), store = %description, "shop data in DATABASE_URL; the idempotency records stay in their own store (IDEMPOTENCY_STORE=sql keeps them in the same database and transaction)");
                }
                AppState::with_database(engine, args.admin_token, work, execution_log, db)
            }
            Err(error) => {
                tracing::error!(%error, "cannot open the shop's database (DATABASE_URL)");
                return ExitCode::FAILURE;
            }
        },
    };
    match serve_with_limits(listener, app(state), args.limits.into(), shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(args: &[&str], env: &[(&str, &str)]) -> Option<String> {
        let error =
            Args::try_parse_from(std::iter::once("idempotency-demo").chain(args.iter().copied()))
                .err()?;
        refused_variable(&error, |name| {
            env.iter()
                .find(|(variable, _)| *variable == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn a_refused_value_from_a_variable_names_the_variable() {
        // What clap sees when only the variable is set: the value, as if given to the flag.
        let message = refused(&["--work-ms", "abc"], &[("DEMO_WORK_MS", "abc")]);
        let message = message.unwrap_or_default();
        assert!(
            message.starts_with("error: DEMO_WORK_MS=\"abc\" is not usable: invalid value 'abc' for '--work-ms <WORK_MS>'"),
            "{message}"
        );
    }

    #[test]
    fn a_refused_flag_without_its_variable_is_left_to_clap() {
        assert_eq!(refused(&["--work-ms", "abc"], &[]), None);
        assert_eq!(
            refused(&["--work-ms", "abc"], &[("DEMO_WORK_MS", "5")]),
            None
        );
        assert_eq!(refused(&["--bogus"], &[("DEMO_WORK_MS", "abc")]), None);
    }

    #[test]
    fn an_error_chain_is_one_line_without_repeats() {
        let inner = std::io::Error::other("connection refused");
        let outer = idempotency::StoreError::Unavailable {
            source: Box::new(inner),
        };
        assert_eq!(error_chain(&outer), "store unreachable: connection refused");
    }
}
