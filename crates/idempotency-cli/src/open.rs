//! Opening the store the app's environment selects (`idempotency::plan_store`), as an operator's
//! tool (`StorePlan::open_existing`: nothing created or migrated, no background connection),
//! plus what the keyspace commands need: the backend's own client for `SCAN`.

use idempotency::sql::{SqlStoreError, sqlx};
use idempotency::{
    AnyStore, BackendKind, REDIS_CLUSTER_ENV_VAR, REST_ENV_PAIRS, StoreDescription, StoreError,
    StoreSelection, StoreSelectionError, plan_store,
};

use crate::error::CliError;
use crate::keyspace::{Keyspace, Node, Reply};
use crate::sql::SqlNode;

/// The opened store and the way to walk its keys.
pub(crate) struct Opened {
    pub(crate) store: AnyStore,
    pub(crate) keyspace: Keyspace,
}

impl Opened {
    /// The servers (or the SQL table) to walk.
    ///
    /// # Errors
    /// Connecting to a server failed.
    pub(crate) async fn nodes(&self) -> Result<Vec<Node>, CliError> {
        match self.keyspace {
            Keyspace::Sql => SqlNode::of(&self.store)
                .map(|node| vec![Node::Sql(Box::new(node))])
                .ok_or_else(|| CliError::Keyspace("the SQL store is not connected".into())),
            _ => self.keyspace.nodes().await,
        }
    }
}

/// Plan and open the store from `lookup` (the process environment in `main`).
///
/// # Errors
/// [`CliError::MemoryStore`] when the environment selects the memory store (nothing to inspect
/// from another process), the selection errors of `plan_store`, and
/// [`CliError::Unreachable`] when the server does not answer (the app would start and retry in
/// the background; an operator's command fails instead), [`CliError::NoRecordsTable`] when the
/// SQL database has no records table of the expected shape (the tool never creates or migrates
/// one: a mistyped `DATABASE_URL` must not read as "no record").
pub(crate) async fn open(lookup: impl Fn(&str) -> Option<String>) -> Result<Opened, CliError> {
    // This build has no memory store; every way the environment can lead to it (nothing
    // configured, `IDEMPOTENCY_STORE=memory`) gets the message that says why it is pointless.
    let plan = match plan_store(StoreSelection::RequireDistributed, &lookup) {
        Ok(plan) if plan.kind() == BackendKind::Memory => return Err(CliError::MemoryStore),
        Ok(plan) => plan,
        Err(
            StoreSelectionError::DistributedStoreRequired
            | StoreSelectionError::MemoryUnavailable
            | StoreSelectionError::FeatureDisabled {
                backend: BackendKind::Memory,
                ..
            },
        ) => return Err(CliError::MemoryStore),
        Err(other) => return Err(other.into()),
    };
    let description = plan.description().clone();
    let source = description.source();
    let variable = |name: Option<&str>| name.and_then(&lookup).filter(|v| !v.is_empty());
    let keyspace = match plan.kind() {
        BackendKind::Redis => Keyspace::redis(
            variable(source).ok_or_else(|| CliError::Usage("the Redis URL is not set".into()))?,
        ),
        BackendKind::RedisCluster => {
            let urls = variable(Some(source.unwrap_or(REDIS_CLUSTER_ENV_VAR)))
                .ok_or_else(|| CliError::Usage(format!("{REDIS_CLUSTER_ENV_VAR} is empty")))?;
            Keyspace::cluster(urls.split(',').map(|u| u.trim().to_owned()).collect())
        }
        BackendKind::KvRest => {
            let (url_var, token_var) = REST_ENV_PAIRS
                .iter()
                .find(|(url_var, _)| Some(*url_var) == source)
                .copied()
                .unwrap_or(REST_ENV_PAIRS[0]);
            let url = variable(Some(url_var))
                .ok_or_else(|| CliError::Usage(format!("{url_var} is not set")))?;
            let token = variable(Some(token_var))
                .ok_or_else(|| CliError::Usage(format!("{token_var} is not set")))?;
            Keyspace::rest(url, token)?
        }
        BackendKind::Sql => Keyspace::Sql,
        other => {
            return Err(CliError::Usage(format!(
                "the {other} store is not supported by this tool"
            )));
        }
    };
    // Not `open()`: that starts an app (creates a SQLite file, migrates the SQL table, connects
    // a silent server in the background with a start-up banner). An operator's tool opens what
    // exists, changes nothing and fails at once.
    let store = plan
        .open_existing()
        .await
        .map_err(|error| open_error(&description, error))?;
    // The KV REST store keeps no connection, so opening it asks nothing of the server: ask once
    // here, so that an endpoint that does not answer is "cannot reach the store" for every
    // command, as a Redis server that does not answer is.
    if !store.is_connected() {
        return Err(CliError::Unreachable(description.to_string()));
    }
    match keyspace.ping().await {
        Reply::Answered => {}
        Reply::NoAnswer => return Err(CliError::Unreachable(description.to_string())),
        // The token is configuration, as a URL is: exit 2, not a store failure.
        Reply::Refused(status) => {
            return Err(CliError::Refused {
                store: description.to_string(),
                status,
            });
        }
    }
    Ok(Opened { store, keyspace })
}

/// SQLite's primary result code `SQLITE_CANTOPEN`: the file does not exist (it is opened
/// without create-if-missing) or cannot be opened.
const SQLITE_CANTOPEN: &str = "14";

/// What went wrong opening the store, as the CLI tells it.
enum OpenFailure {
    Unreachable,
    NoDatabase,
    NoRecordsTable,
    Other,
}

/// The CLI's reading of a store that could not be opened: a server that does not answer
/// ([`CliError::Unreachable`]), a SQLite file that cannot be opened ([`CliError::NoDatabase`]),
/// a SQL database without the app's records table ([`CliError::NoRecordsTable`]), anything
/// else as the selection error it is.
fn open_error(description: &StoreDescription, error: StoreSelectionError) -> CliError {
    let StoreSelectionError::Open {
        description: _,
        source,
    } = error
    else {
        return error.into();
    };
    let failure = if source
        .downcast_ref::<StoreError>()
        .is_some_and(StoreError::is_transient)
    {
        OpenFailure::Unreachable
    } else if source
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|db| db.code())
        .is_some_and(|code| code == SQLITE_CANTOPEN)
    {
        OpenFailure::NoDatabase
    } else if matches!(
        source.downcast_ref::<SqlStoreError>(),
        Some(
            SqlStoreError::MissingTable { .. }
                | SqlStoreError::WrongShape { .. }
                | SqlStoreError::InvalidTableName { .. }
        )
    ) {
        OpenFailure::NoRecordsTable
    } else {
        OpenFailure::Other
    };
    let database = description.to_string();
    match failure {
        OpenFailure::Unreachable => CliError::Unreachable(database),
        OpenFailure::NoDatabase => CliError::NoDatabase { database, source },
        OpenFailure::NoRecordsTable => CliError::NoRecordsTable { database, source },
        OpenFailure::Other => CliError::Selection(StoreSelectionError::Open {
            description: description.clone(),
            source,
        }),
    }
}
