//! The CLI's errors and exit codes.

use idempotency::{KeyError, PrefixError, StoreError, StoreSelectionError};
use thiserror::Error;

/// Why a command failed. Messages name variables and keys, never a token or a password.
#[derive(Debug, Error)]
pub(crate) enum CliError {
    /// The memory store was selected: it lives inside one process, there is nothing to inspect.
    #[error(
        "no distributed store is configured (the environment selects the per-process memory \
         store, which only the app's own process can see): set what the app's environment sets: \
         REDIS_URL (or KV_URL), REDIS_CLUSTER_URLS, UPSTASH_REDIS_REST_URL + \
         UPSTASH_REDIS_REST_TOKEN (or KV_REST_API_URL + KV_REST_API_TOKEN), or \
         IDEMPOTENCY_STORE=sql with DATABASE_URL"
    )]
    MemoryStore,
    /// The environment does not select a usable store.
    #[error(transparent)]
    Selection(#[from] StoreSelectionError),
    /// The SQLite database file cannot be opened: it does not exist (the tool never creates
    /// one), or it or its directory is not accessible.
    #[error(
        "cannot open the SQLite database {database}: it does not exist or is not accessible; check \
         the path in DATABASE_URL (a relative path is read from the current directory, which may \
         not be the app's); this tool never creates a database"
    )]
    NoDatabase {
        /// The database, as the redacted store description.
        database: String,
        /// The database's error.
        source: idempotency::BoxError,
    },
    /// The SQL database has no records table of the shape the app's version writes: most likely
    /// `DATABASE_URL` names another database than the app's (or the app never started on it).
    /// The tool never creates or migrates the table: that is the app's `migrate()`.
    #[error(
        "the database {database} has no usable idempotency records table: is DATABASE_URL the \
         app's database? (this tool never creates or migrates the table; the app does, with \
         `migrate()` at start-up)"
    )]
    NoRecordsTable {
        /// The database, as the redacted store description.
        database: String,
        /// Which table, and what is wrong with it (an `idempotency::sql::SqlStoreError`).
        source: idempotency::BoxError,
    },
    /// The KV REST API answered the opening `PING` with 401 or 403: the token is wrong or
    /// lacks the rights (configuration, exit 2).
    #[error(
        "the store {store} refuses the token (HTTP {status}): check KV_REST_API_TOKEN or \
         UPSTASH_REDIS_REST_TOKEN"
    )]
    Refused {
        /// The store, as the redacted store description.
        store: String,
        /// The HTTP status (401 or 403).
        status: u16,
    },
    /// The store was configured but does not answer.
    #[error("cannot reach the store {0}: is it running, and is the URL right?")]
    Unreachable(String),
    /// A malformed idempotency key on the command line.
    #[error("invalid key: {0} (see `--help` for the accepted forms)")]
    Key(#[from] KeyError),
    /// A key argument read as the stored key text with a byte outside printable ASCII.
    #[error(
        "invalid key: byte 0x{byte:02x} at position {position} is not printable ASCII; give the \
         stored key text (printable ASCII, spaces allowed) or the Idempotency-Key header value \
         with --key-form header"
    )]
    KeyByte {
        /// The first offending byte.
        byte: u8,
        /// Its position in the argument.
        position: usize,
    },
    /// Without `--key-form`, a key argument valid both as the stored key text and as an
    /// `Idempotency-Key` header value, naming two different keys: never guessed.
    #[error(
        "ambiguous key argument `{argument}`: as the stored key text (what `inspect` shows) it is \
         the key `{stored}`, as an Idempotency-Key header value it is the key `{header}`; say \
         which with --key-form stored or --key-form header"
    )]
    AmbiguousKey {
        /// The argument as given.
        argument: String,
        /// The key it names as the stored key text.
        stored: String,
        /// The key it names as a header value.
        header: String,
    },
    /// Without `--key-form`, a key argument starting with `"` (read as a header value) that is
    /// not a valid header value.
    #[error(
        "invalid key: `{argument}` is read as an Idempotency-Key header value (it starts with \
         `\"`): {source}; if it is the stored key text, give --key-form stored"
    )]
    QuotedKey {
        /// The argument as given.
        argument: String,
        /// Why it is not a valid header value.
        source: KeyError,
    },
    /// A malformed `--key-prefix`.
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    /// Other bad input on the command line.
    #[error("{0}")]
    Usage(String),
    /// No record under the key.
    #[error(
        "no record under `{0}` (never claimed, expired after its lease or retention, or deleted)"
    )]
    NotFound(String),
    /// The key holds a value that is not an idempotency record: another program's value under
    /// the prefix, or a damaged record (exit 1, as other store content trouble).
    #[error(
        "`{key}` holds something that is not an idempotency record ({source}): another \
         program's value under the prefix, or a damaged record; `delete` removes it"
    )]
    NotARecord {
        /// The store key.
        key: String,
        /// What the decoder refused.
        source: idempotency::CorruptRecord,
    },
    /// The command needs a confirmation that could not be asked for.
    #[error("{0}: stdin is not a terminal, so pass --yes to confirm")]
    NeedsYes(&'static str),
    /// A store operation failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// Scanning or deleting keys failed.
    #[error("{0}")]
    Keyspace(String),
}

impl CliError {
    /// The process exit code: 2 for bad input and configuration (as clap's own usage errors),
    /// 3 for "no record", 1 for everything else.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::MemoryStore
            | Self::Selection(_)
            | Self::Key(_)
            | Self::KeyByte { .. }
            | Self::AmbiguousKey { .. }
            | Self::QuotedKey { .. }
            | Self::Prefix(_)
            | Self::Usage(_)
            | Self::NoDatabase { .. }
            | Self::NoRecordsTable { .. }
            | Self::Refused { .. }
            | Self::NeedsYes(_) => 2,
            Self::NotFound(_) => 3,
            Self::Unreachable(_) | Self::Store(_) | Self::Keyspace(_) | Self::NotARecord { .. } => {
                1
            }
        }
    }
}
