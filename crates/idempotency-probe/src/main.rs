//! `idempotency-probe`: check a deployed endpoint's `Idempotency-Key` behaviour.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use idempotency_probe::{ProbeConfig, ProbeError, run};

/// Check that an endpoint honours Idempotency-Key: duplicates replay the first response, new
/// keys run, a missing key gets 400, a reused key with another body 422, and concurrent
/// duplicates run once. Sends real requests with side effects.
///
/// Exit status: 0 every check passed, 1 a check failed, 2 the probe could not run (bad
/// arguments, the endpoint could not be reached at all: every request failed to connect, or
/// every request got 401, or every one 403: pass credentials with -H, or every one 407: a
/// proxy wants credentials). Refusals need two answers: a first refused request is confirmed
/// by one more before giving up; mixed refusals (401 and 403) are reported as failed checks.
#[derive(Parser)]
#[command(name = "idempotency-probe", version, about)]
struct Args {
    /// The endpoint, e.g. http://127.0.0.1:3000/api/products/p1.
    #[arg(long)]
    url: String,

    /// HTTP method.
    #[arg(long, short = 'X', default_value = "POST")]
    method: String,

    /// Request body (JSON unless a Content-Type header says otherwise).
    #[arg(long, short = 'd', default_value = "{}")]
    body: String,

    /// Extra header for every request, `Name: value` (repeatable), e.g. -H 'Authorization: Bearer alice'.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,

    /// Concurrent duplicates for the concurrency check (2 to 1000: each is a connection of its
    /// own; thousands queue in the client and the kernel, far past --timeout-ms).
    #[arg(long, default_value_t = 8,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
              .range(2..=idempotency_probe::MAX_CONCURRENCY as u64))]
    concurrency: usize,

    /// Name of the key header.
    #[arg(long, default_value = "Idempotency-Key")]
    key_header: String,

    /// Timeout of each request, in milliseconds (at least 1).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,

    /// Also measure latency: N requests under fresh keys and N duplicates, one at a time;
    /// p50/p95/p99 of each, checked against --budget-ms (N at least 1).
    #[arg(long, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    latency: Option<usize>,

    /// The p95 latency budget in milliseconds for --latency (the production guide's 10 ms).
    #[arg(long, default_value_t = 10.0, requires = "latency")]
    budget_ms: f64,

    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn config(args: &Args) -> Result<ProbeConfig, ProbeError> {
    let mut config = ProbeConfig::new(&args.url, &args.body)
        .method(&args.method)?
        .key_header(&args.key_header)?
        .concurrency(args.concurrency)
        .timeout(Duration::from_millis(args.timeout_ms));
    config = config.headers(args.headers.iter().map(String::as_str))?;
    if let Some(requests) = args.latency {
        let budget = Duration::try_from_secs_f64(args.budget_ms / 1000.0)
            .ok()
            .filter(|b| !b.is_zero())
            .ok_or(ProbeError::InvalidBudget(args.budget_ms))?;
        config = config.latency(requests, budget);
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let report = match config(&args) {
        Ok(config) => run(&config).await,
        Err(error) => Err(error),
    };
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            eprintln!("idempotency-probe: {error}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!("{:#}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
