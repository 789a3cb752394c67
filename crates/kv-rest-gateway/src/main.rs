//! The `kv-rest-gateway` binary: the KV REST protocol in front of a Redis server.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use idempotency_core::shutdown_signal;
use kv_rest_gateway::{
    DEFAULT_ACL_USER, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PIPELINE,
    DEFAULT_READ_ONLY_ACL_USER, GatewayConfig, Secret, ServerLimits, serve,
};
use tracing_subscriber::EnvFilter;

/// Serve the Upstash / Vercel KV REST API in front of a real Redis.
///
/// Every option can also come from the environment variable shown next to it.
#[derive(Parser)]
#[command(name = "kv-rest-gateway", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "KV_REST_GATEWAY_LISTEN", default_value = "127.0.0.1:8079")]
    listen: SocketAddr,

    /// Redis URL (redis://[user:password@]host:port[/db]). A user that may run ACL SETUSER
    /// (e.g. a local Redis's default user): the gateway creates its restricted users with it.
    /// Otherwise: the operator-prepared user of the read-write token (see SECURITY.md).
    #[arg(
        long,
        env = "KV_REST_GATEWAY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,

    /// Operator-prepared Redis user of the read-only token (redis://user:password@host:port),
    /// when the --redis-url user may not run ACL SETUSER.
    #[arg(
        long,
        env = "KV_REST_GATEWAY_READ_ONLY_REDIS_URL",
        hide_env_values = true
    )]
    read_only_redis_url: Option<String>,

    /// Name of the Redis ACL user the gateway creates for the read-write token.
    #[arg(long, env = "KV_REST_GATEWAY_ACL_USER", default_value = DEFAULT_ACL_USER)]
    acl_user: String,

    /// Name of the Redis ACL user the gateway creates for the read-only token.
    #[arg(long, env = "KV_REST_GATEWAY_READ_ONLY_ACL_USER", default_value = DEFAULT_READ_ONLY_ACL_USER)]
    read_only_acl_user: String,

    /// Read-write API token (clients send `Authorization: Bearer <token>`). Must not be empty;
    /// use at least 32 characters, e.g. `openssl rand -hex 32` (a shorter one is accepted with
    /// a warning, for development).
    #[arg(long, env = "KV_REST_GATEWAY_TOKEN", hide_env_values = true)]
    token: String,

    /// Optional read-only API token (read commands only, no SCAN/KEYS).
    #[arg(long, env = "KV_REST_GATEWAY_READ_ONLY_TOKEN", hide_env_values = true)]
    read_only_token: Option<String>,

    /// Maximum request body in bytes (larger bodies get HTTP 413).
    #[arg(long, env = "KV_REST_GATEWAY_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,

    /// Maximum commands per /pipeline or /multi-exec request.
    #[arg(long, env = "KV_REST_GATEWAY_MAX_PIPELINE", default_value_t = DEFAULT_MAX_PIPELINE)]
    max_pipeline: usize,

    /// Redis reply timeout in milliseconds.
    #[arg(
        long,
        env = "KV_REST_GATEWAY_REDIS_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    redis_timeout_ms: u64,

    /// Scripts running longer than this are stopped with SCRIPT KILL (milliseconds). Keep
    /// Redis's busy-reply-threshold at or below it.
    #[arg(
        long,
        env = "KV_REST_GATEWAY_SCRIPT_TIME_LIMIT_MS",
        default_value_t = 5_000
    )]
    script_time_limit_ms: u64,

    /// Time a client has to send a request's headers (milliseconds).
    #[arg(
        long,
        env = "KV_REST_GATEWAY_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    header_read_timeout_ms: u64,

    /// Time a client has to send a request's body (milliseconds).
    #[arg(
        long,
        env = "KV_REST_GATEWAY_BODY_READ_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    body_read_timeout_ms: u64,

    /// Idle keep-alive connections are closed after this long (milliseconds).
    #[arg(long, env = "KV_REST_GATEWAY_IDLE_TIMEOUT_MS", default_value_t = 5_000)]
    idle_timeout_ms: u64,

    /// Maximum HTTP connections open at once; more wait in the listen backlog.
    #[arg(long, env = "KV_REST_GATEWAY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: in a log file or a pipe they are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();

    let mut config = GatewayConfig::new(args.redis_url, Secret::new(args.token))
        .with_max_body_bytes(args.max_body_bytes)
        .with_max_pipeline(args.max_pipeline)
        .with_timeouts(
            kv_rest_gateway::DEFAULT_CONNECT_TIMEOUT,
            Duration::from_millis(args.redis_timeout_ms),
        )
        .with_acl_users(args.acl_user, args.read_only_acl_user)
        .with_script_time_limit(Duration::from_millis(args.script_time_limit_ms))
        .with_limits(ServerLimits {
            header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(args.body_read_timeout_ms),
            idle_timeout: Duration::from_millis(args.idle_timeout_ms),
            max_connections: args.max_connections,
        });
    if let Some(read_only) = args.read_only_token {
        config = config.with_read_only_token(read_only);
    }
    if let Some(url) = args.read_only_redis_url {
        config = config.with_read_only_redis_url(url);
    }

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, listen = %args.listen, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match serve(listener, config, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(error = %error, source = ?std::error::Error::source(&error), "gateway failed");
            ExitCode::FAILURE
        }
    }
}
