//! The engine: runs an operation at most once per `(scope, key)` on any store.
//!
//! Modules, lowest first (each imports only modules above it in this list): `stats`, `wall`
//! (the wall clock of new claims), `config`, `registry`, `background` (state of the
//! off-request-path work), `handle` (the engine handle and its store calls), `driver` (the
//! background task), `guard`, `begin` (what to do with a request), `builder`, `external`, `run`.

mod background;
mod begin;
mod builder;
mod config;
mod driver;
mod external;
mod guard;
mod handle;
mod registry;
mod run;
mod stats;
mod wall;

pub use begin::Begin;
pub use builder::IdempotencyBuilder;
#[allow(deprecated)]
pub use config::kill_switch_value;
pub use config::{
    Config, DISABLE_ENV_VAR, FailurePolicy, InProgressWait, KILL_SWITCH_ACCEPTED, parse_kill_switch,
};
pub use external::{CompletionParts, PendingCompletion};
pub use guard::{Guard, Unprotected};
pub use handle::Idempotency;
pub use run::{RUN_CONTENT_TYPE, RunError};
pub use stats::{StatsSnapshot, names as metric_names};
