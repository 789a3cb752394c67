//! # idempotency-probe
//!
//! Checks that a deployed endpoint honours `Idempotency-Key` (DESIGN §5, the IETF draft and
//! Stripe's behaviour), from the outside, with real requests:
//!
//! | check | requests | passes when |
//! |---|---|---|
//! | a | the request twice under a fresh key | 2xx, then the identical status and body with `Idempotent-Replayed: true` |
//! | b | the request under another fresh key | 2xx without the replay header (it ran again) |
//! | c | the request without the key header | 400 |
//! | d | (a)'s key with a changed body | 422 |
//! | e | N copies at once under a fresh key, then one more | exactly one executed (2xx, no replay header), the others replays of it or 409, all 2xx identical; the last one a replay |
//! | f | with `--latency N`: N requests under fresh keys, then N duplicates of one, one at a time | p95 of both within the budget (default 10 ms, the production guide's figure for cache lookups); p50 / p95 / p99 reported |
//!
//! Every check sends real requests with side effects (that is the point): aim it at an
//! endpoint where a few extra writes do no harm.
//!
//! ```no_run
//! # async fn demo() -> Result<(), idempotency_probe::ProbeError> {
//! use idempotency_probe::{ProbeConfig, run};
//! let config = ProbeConfig::new("http://127.0.0.1:3000/api/products/p1", r#"{"name":"Tea","price":450}"#)
//!     .method("PUT")?
//!     .header("Authorization: Bearer alice")?;
//! let report = run(&config).await?;
//! print!("{}", report.table());
//! assert!(report.passed());
//! # Ok(()) }
//! ```
//!
//! The binary: `idempotency-probe --url URL --method PUT --body JSON [-H 'K: V']...
//! [--concurrency N] [--latency N [--budget-ms MS]] [--json]`; exit status 0 when every check passes, 1 when one fails, 2 when
//! the probe could not run (bad arguments, [`ProbeError::Unreachable`]: no request could
//! connect, [`ProbeError::Unauthorized`]: every request got 401, or every one 403, or
//! [`ProbeError::ProxyAuthenticationRequired`]: every one 407).
//!
//! ## When refusals mean "cannot run"
//!
//! The probe gives up for want of credentials only on evidence from at least two requests:
//! every answer is the same refusal — all `401 Unauthorized`, all `403 Forbidden`, or all
//! `407 Proxy Authentication Required` — and there are at least two of them. Check (a) stops at
//! its first refused request, so when that is all the probe has seen it sends one confirming
//! request (the same request under a fresh key, not part of any check) before deciding. When
//! the confirming request is answered otherwise (a flaky auth proxy, an endpoint that refuses
//! once), the checks run and report what they saw: (a) fails naming the refusal. A mix of
//! refusals (401 and 403, say) is not one answer repeated: the checks run and are reported
//! (exit 1), each failing check naming the status it got. After check (e) the same rule is
//! applied to every answer of the run.

#![deny(missing_docs)]

mod check;
mod latency;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method};
use serde::Serialize;
use thiserror::Error;

pub use check::{REPLAYED_HEADER, random_key};
pub use latency::{LatencyReport, Percentiles};

/// Why the probe could not run at all (a failing check is a [`ProbeReport`] value instead).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// `-H` was not `Name: value`, or the name or value is not valid in HTTP. The message
    /// says which header argument and what is wrong with it, never the value (header lines
    /// often carry credentials): only a valid header name is shown.
    #[error("invalid header{}: {reason}; expected `Name: value`", header_where(*.argument, .name.as_deref()))]
    InvalidHeader {
        /// The header argument's position among the header lines given (1-based; `-H` number
        /// N), when added with [`ProbeConfig::headers`].
        argument: Option<usize>,
        /// The header's name, when it is a valid one (the value was not).
        name: Option<String>,
        /// What is wrong.
        reason: &'static str,
    },
    /// Not an HTTP method.
    #[error("invalid method {0:?}")]
    InvalidMethod(String),
    /// Not an http(s) URL.
    #[error("invalid URL {0:?}: expected http:// or https://")]
    InvalidUrl(String),
    /// An http(s) URL that does not parse: no host, a port out of range, a malformed address.
    #[error("invalid URL {url:?}: {reason}; expected e.g. http://127.0.0.1:3000/api/orders")]
    MalformedUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it (the URL parser's words: `empty host`, `invalid port number`).
        reason: String,
    },
    /// The latency budget is not a positive number of milliseconds.
    #[error("invalid latency budget {0} ms: expected a positive number")]
    InvalidBudget(f64),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    /// Every request was answered `401 Unauthorized` (or every one `403 Forbidden`), at least
    /// two of them: the endpoint wants credentials the probe was not given, so no check could
    /// reach the idempotency layer behind them. (A single refusal is confirmed by a second
    /// request first; a mix of 401 and 403 is reported as checks: see the crate docs.)
    #[error(
        "cannot run: every request got {status} from {url} ({requests} sent); the endpoint needs \
         credentials: pass them with -H (e.g. -H 'Authorization: Bearer …')"
    )]
    Unauthorized {
        /// The probed URL.
        url: String,
        /// The status every request got (`401 Unauthorized` or `403 Forbidden`).
        status: reqwest::StatusCode,
        /// How many requests were answered with it.
        requests: usize,
    },
    /// Every request was answered `407 Proxy Authentication Required`, at least two of them: a
    /// proxy between the probe and the endpoint wants credentials, so no request reached the
    /// endpoint at all.
    #[error(
        "cannot run: every request got 407 Proxy Authentication Required on the way to {url} \
         ({requests} sent); a proxy between the probe and the endpoint wants credentials, no \
         request reached the endpoint: give the proxy's credentials (in HTTP_PROXY / HTTPS_PROXY \
         as http://user:password@proxy:port, or -H 'Proxy-Authorization: …')"
    )]
    ProxyAuthenticationRequired {
        /// The probed URL.
        url: String,
        /// How many requests were answered 407.
        requests: usize,
    },
    /// No request reached the endpoint: every one failed to connect (connection refused, DNS,
    /// connect timeout), so no check could say anything about its behaviour.
    #[error(
        "cannot reach {url}: {detail}; no check could run (is the server running, and is the \
         URL right?)"
    )]
    Unreachable {
        /// The probed URL.
        url: String,
        /// The first connection failure, with its causes.
        detail: String,
    },
}

/// The most concurrent duplicates check (e) sends (`--concurrency`): each is a connection of
/// its own, and thousands queue in the client and the kernel far past the request timeout (30 000
/// took 112 s with `--timeout-ms 3000`).
pub const MAX_CONCURRENCY: usize = 1000;

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    url: String,
    method: Method,
    body: String,
    headers: HeaderMap,
    key_header: HeaderName,
    concurrency: usize,
    timeout: Duration,
    latency: Option<(usize, Duration)>,
}

impl ProbeConfig {
    /// Probe `POST url` with `body` (`Content-Type: application/json` unless a header says
    /// otherwise), 8 concurrent duplicates, a 10 s timeout per request.
    pub fn new(url: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            method: Method::POST,
            body: body.into(),
            headers: HeaderMap::new(),
            key_header: HeaderName::from_static("idempotency-key"),
            concurrency: 8,
            timeout: Duration::from_secs(10),
            latency: None,
        }
    }

    /// The HTTP method (`PUT`, `POST`, `PATCH`...).
    ///
    /// # Errors
    /// [`ProbeError::InvalidMethod`].
    pub fn method(mut self, method: &str) -> Result<Self, ProbeError> {
        self.method = Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| ProbeError::InvalidMethod(method.to_owned()))?;
        Ok(self)
    }

    /// Add a header to every request, written as `Name: value` (as curl's `-H`).
    ///
    /// # Errors
    /// [`ProbeError::InvalidHeader`] saying what is wrong (no `:`, not a valid name, not a valid
    /// value), naming the header only when its name is valid, never showing the value.
    pub fn header(mut self, line: &str) -> Result<Self, ProbeError> {
        let invalid = |name: Option<&HeaderName>, reason| ProbeError::InvalidHeader {
            argument: None,
            name: name.map(|n| n.as_str().to_owned()),
            reason,
        };
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(None, "no `:` between a name and a value"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            invalid(
                None,
                "the text before the first `:` is not a valid header name",
            )
        })?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| invalid(Some(&name), "the value is not a valid header value"))?;
        self.headers.append(name, value);
        Ok(self)
    }

    /// Add several headers, as repeated `-H` arguments: [`header`](Self::header) for each line.
    ///
    /// # Errors
    /// As [`header`](Self::header), with the line's position (1-based) in
    /// [`ProbeError::InvalidHeader`]'s `argument`.
    pub fn headers<'a>(
        mut self,
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ProbeError> {
        for (index, line) in lines.into_iter().enumerate() {
            self = self.header(line).map_err(|error| match error {
                ProbeError::InvalidHeader { name, reason, .. } => ProbeError::InvalidHeader {
                    argument: Some(index + 1),
                    name,
                    reason,
                },
                other => other,
            })?;
        }
        Ok(self)
    }

    /// How many duplicates check (e) sends at once (default 8, clamped to
    /// 2..=[`MAX_CONCURRENCY`]).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.clamp(2, MAX_CONCURRENCY);
        self
    }

    /// The key header (default `Idempotency-Key`).
    ///
    /// # Errors
    /// [`ProbeError::InvalidHeader`].
    pub fn key_header(mut self, name: &str) -> Result<Self, ProbeError> {
        self.key_header = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            ProbeError::InvalidHeader {
                argument: None,
                name: None,
                reason: "the key header's name is not a valid header name",
            }
        })?;
        Ok(self)
    }

    /// Also run check (f): `requests` fresh requests and `requests` replays, one at a time,
    /// whose p95 must each be within `budget_p95` (the production guide's budget is 10 ms).
    /// Off by default; `requests` is at least 1.
    #[must_use]
    pub fn latency(mut self, requests: usize, budget_p95: Duration) -> Self {
        self.latency = Some((requests.max(1), budget_p95));
        self
    }

    /// Time budget of each request (default 10 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Where [`ProbeError::InvalidHeader`] is: ` (-H argument 2, name `authorization`)`,
/// ` (-H argument 2)`, ` (name `authorization`)` or nothing.
fn header_where(argument: Option<usize>, name: Option<&str>) -> String {
    let parts: Vec<String> = argument
        .map(|n| format!("-H argument {n}"))
        .into_iter()
        .chain(name.map(|name| format!("name `{name}`")))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// `a` to `e`.
    pub id: &'static str,
    /// What is checked.
    pub name: &'static str,
    /// Whether the endpoint behaved.
    pub passed: bool,
    /// What was seen.
    pub detail: String,
}

/// Every check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// The probed URL.
    pub url: String,
    /// The method used.
    pub method: String,
    /// Whether every check passed.
    pub passed: bool,
    /// The checks, in order.
    pub checks: Vec<CheckResult>,
    /// The latency figures, when check (f) ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyReport>,
}

impl ProbeReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.passed
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// A plain-text table, one row per check, and a summary line.
    pub fn table(&self) -> String {
        let name_width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!("idempotency-probe: {} {}\n\n", self.method, self.url);
        out.push_str(&format!("   {:<name_width$}  result  detail\n", "check"));
        for check in &self.checks {
            out.push_str(&format!(
                "{}  {:<name_width$}  {:<6}  {}\n",
                check.id,
                check.name,
                if check.passed { "PASS" } else { "FAIL" },
                check.detail
            ));
        }
        let failed = self.failures().count();
        out.push_str(&format!(
            "\n{} checks: {} passed, {} failed\n",
            self.checks.len(),
            self.checks.len() - failed,
            failed
        ));
        out
    }

    /// The report as JSON (`{url, method, passed, checks: [{id, name, passed, detail}]}`, plus
    /// `latency: {fresh, replay: {count, p50_ms, p95_ms, p99_ms, max_ms}, budget_p95_ms}` when
    /// check (f) ran).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// A configured client.
pub(crate) struct Probe {
    client: Client,
    pub(crate) config: ProbeConfig,
    /// Requests that got an HTTP response (whatever its status).
    answered: AtomicUsize,
    /// The first failure to connect, to report when nothing ever answered.
    first_connect_error: Mutex<Option<String>>,
    /// Answers `401 Unauthorized`.
    unauthorized: AtomicUsize,
    /// Answers `403 Forbidden`.
    forbidden: AtomicUsize,
    /// Answers `407 Proxy Authentication Required`.
    proxy_refused: AtomicUsize,
}

/// How many answers, all the same refusal, make "cannot run": one more than check (a) can
/// see before it stops, so a single refusal is never enough.
const REFUSALS_FOR_CANNOT_RUN: usize = 2;

impl Probe {
    /// [`ProbeError::Unreachable`] when no request has been answered yet and one failed to
    /// connect.
    fn reachable(&self) -> Result<(), ProbeError> {
        if self.answered.load(Ordering::Relaxed) > 0 {
            return Ok(());
        }
        let first = self.first_connect_error.lock().ok().and_then(|f| f.clone());
        match first {
            Some(detail) => Err(ProbeError::Unreachable {
                url: self.config.url.clone(),
                detail,
            }),
            None => Ok(()),
        }
    }

    /// The refusal status every answer so far got (401, 403 or 407), when there is one: no
    /// answer yet, an answer that is no refusal, or refusals that differ give `None`.
    fn refusal(&self) -> Option<(reqwest::StatusCode, usize)> {
        let answered = self.answered.load(Ordering::Relaxed);
        if answered == 0 {
            return None;
        }
        [
            (&self.unauthorized, reqwest::StatusCode::UNAUTHORIZED),
            (&self.forbidden, reqwest::StatusCode::FORBIDDEN),
            (
                &self.proxy_refused,
                reqwest::StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ),
        ]
        .into_iter()
        .find(|(count, _)| count.load(Ordering::Relaxed) == answered)
        .map(|(_, status)| (status, answered))
    }

    /// [`ProbeError::Unauthorized`] (401 or 403) or [`ProbeError::ProxyAuthenticationRequired`]
    /// (407) when at least [`REFUSALS_FOR_CANNOT_RUN`] requests were answered and every answer
    /// was that same refusal: the checks would only report the authentication layer, each as a
    /// failure of its own. Fewer answers, or mixed ones, are left to the checks.
    fn authorized(&self) -> Result<(), ProbeError> {
        let Some((status, requests)) = self.refusal() else {
            return Ok(());
        };
        if requests < REFUSALS_FOR_CANNOT_RUN {
            return Ok(());
        }
        let url = self.config.url.clone();
        Err(
            if status == reqwest::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                ProbeError::ProxyAuthenticationRequired { url, requests }
            } else {
                ProbeError::Unauthorized {
                    url,
                    status,
                    requests,
                }
            },
        )
    }

    /// When every answer so far is one refusal but fewer than [`REFUSALS_FOR_CANNOT_RUN`]
    /// (check (a) stops at its first), send the configured request again under a fresh key, so
    /// that [`authorized`](Self::authorized) decides on a second answer. Its answer feeds only
    /// the counters, never a check; a transport failure is left to the checks that follow.
    async fn confirm_refusal(&self) {
        while self
            .refusal()
            .is_some_and(|(_, requests)| requests < REFUSALS_FOR_CANNOT_RUN)
        {
            let key = random_key();
            if self
                .send(check::KeyUse::Key(&key), &self.config.body)
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// One request; a transport failure becomes the message the table shows.
    pub(crate) async fn send(
        &self,
        key: check::KeyUse<'_>,
        body: &str,
    ) -> Result<check::Answer, String> {
        let mut request = self
            .client
            .request(self.config.method.clone(), &self.config.url)
            .headers(self.config.headers.clone())
            .body(body.to_owned());
        if !self.config.headers.contains_key(CONTENT_TYPE) {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let check::KeyUse::Key(key) = key {
            request = request.header(self.config.key_header.clone(), key);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let text = error_chain(&e);
                if e.is_connect() {
                    // A poisoned lock only loses the note, never the check's own message.
                    if let Ok(mut first) = self.first_connect_error.lock() {
                        first.get_or_insert_with(|| text.clone());
                    }
                }
                return Err(format!("request failed: {text}"));
            }
        };
        let status = response.status();
        // Counted before `answered`, so a reader never sees more answers than refusals while
        // every answer so far is one.
        if status == reqwest::StatusCode::UNAUTHORIZED {
            self.unauthorized.fetch_add(1, Ordering::Relaxed);
        } else if status == reqwest::StatusCode::FORBIDDEN {
            self.forbidden.fetch_add(1, Ordering::Relaxed);
        } else if status == reqwest::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            self.proxy_refused.fetch_add(1, Ordering::Relaxed);
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        let replayed = response
            .headers()
            .get(REPLAYED_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let body: Bytes = response
            .bytes()
            .await
            .map_err(|e| format!("reading the response failed: {}", error_chain(&e)))?;
        Ok(check::Answer {
            status,
            replayed,
            body,
        })
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An `http://` or `https://` URL (scheme in any case) that parses, with a host: anything else
/// is an argument error before any request, never five failed checks.
fn check_url(url: &str) -> Result<(), ProbeError> {
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("http" | "https")) {
        return Err(ProbeError::InvalidUrl(url.to_owned()));
    }
    let malformed = |reason: String| ProbeError::MalformedUrl {
        url: url.to_owned(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| malformed(e.to_string()))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(malformed("empty host".to_owned()));
    }
    Ok(())
}

/// Run every check against the configured endpoint, in order (a, b, c, d, e).
///
/// # Errors
/// [`ProbeError`] when the probe cannot run: bad URL ([`ProbeError::InvalidUrl`],
/// [`ProbeError::MalformedUrl`]), no HTTP client, or
/// [`ProbeError::Unreachable`] when no request got an answer and they failed to connect
/// (connection refused, DNS, connect timeout), [`ProbeError::Unauthorized`] when at least two
/// requests were answered and every answer was 401 (or every one 403): credentials missing or
/// refused, [`ProbeError::ProxyAuthenticationRequired`] when likewise every answer was 407: a
/// proxy wants credentials. A first refusal is confirmed by one more request before deciding;
/// mixed refusals (401 and 403) are reported as checks (see the crate docs). Failing checks,
/// and failures after the endpoint answered once (a timeout, a dropped connection), are
/// reported in the [`ProbeReport`].
pub async fn run(config: &ProbeConfig) -> Result<ProbeReport, ProbeError> {
    check_url(&config.url)?;
    let client = Client::builder()
        .timeout(config.timeout)
        .build()
        .map_err(ProbeError::Client)?;
    let probe = Probe {
        client,
        config: config.clone(),
        answered: AtomicUsize::new(0),
        first_connect_error: Mutex::new(None),
        unauthorized: AtomicUsize::new(0),
        forbidden: AtomicUsize::new(0),
        proxy_refused: AtomicUsize::new(0),
    };
    let key = random_key();
    let (a, first) = check::duplicate(&probe, &key).await;
    // Check (a)'s first request could not connect: the endpoint is not there, and the other
    // checks would only repeat that (each after its own timeout).
    probe.reachable()?;
    // (a) stops at its first refused request: one refusal is no evidence yet (a flaky auth
    // proxy, an endpoint that refuses once), so confirm it with a second request; two of the
    // same refusal and nothing else mean every other request would be refused too.
    probe.confirm_refusal().await;
    probe.authorized()?;
    let b = check::new_key(&probe, first.as_ref()).await;
    let c = check::missing_key(&probe).await;
    let d = check::changed(&probe, &key).await;
    let e = check::concurrent(&probe).await;
    probe.reachable()?;
    probe.authorized()?;
    let mut checks = vec![a, b, c, d, e];
    let mut latency = None;
    if let Some((requests, budget)) = config.latency {
        let (f, report) = latency::check(&probe, requests, budget).await;
        checks.push(f);
        latency = report;
    }
    Ok(ProbeReport {
        url: config.url.clone(),
        method: config.method.to_string(),
        passed: checks.iter().all(|c| c.passed),
        checks,
        latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_a_host_or_with_a_bad_port_are_argument_errors() {
        for url in [
            "http://",
            "https://",
            "http://:3000/x",
            "http://127.0.0.1:99999/x",
            "http://[::1/x",
        ] {
            assert!(
                matches!(check_url(url), Err(ProbeError::MalformedUrl { .. })),
                "{url}: {:?}",
                check_url(url)
            );
        }
        for url in ["ftp://127.0.0.1/x", "nope", "http:127.0.0.1/x"] {
            assert!(
                matches!(check_url(url), Err(ProbeError::InvalidUrl(_))),
                "{url}"
            );
        }
        for url in [
            "http://127.0.0.1:3000/api/products/tea",
            "HTTPS://example.test/x?y=1",
            "http://[::1]:8080/",
        ] {
            assert!(check_url(url).is_ok(), "{url}: {:?}", check_url(url));
        }
    }

    #[test]
    fn header_lines_parse_and_errors_hide_values() {
        let config = ProbeConfig::new("http://x", "{}")
            .header("Authorization: Bearer alice")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.headers["authorization"], "Bearer alice");
        let error = ProbeConfig::new("http://x", "{}")
            .header("Authorization Bearer secret")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!error.contains("secret"), "{error}");
        assert!(ProbeConfig::new("http://x", "{}").method("P UT").is_err());
    }

    #[test]
    fn a_malformed_header_line_is_named_by_position_and_valid_name_never_by_value() {
        let accept = "Accept: text/plain";
        for (lines, expected) in [
            (
                [accept, "Authorization: Bearer s3cret\u{7}"],
                "(-H argument 2, name `authorization`)",
            ),
            ([accept, "Bearer s3cret"], "(-H argument 2)"),
            (["Bearer s3cret: x", accept], "(-H argument 1)"),
        ] {
            let error = ProbeConfig::new("http://x", "{}")
                .headers(lines)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.starts_with(&format!("invalid header {expected}")),
                "{error}"
            );
            assert!(!error.contains("s3cret"), "{error}");
            assert!(!error.contains("<redacted>"), "{error}");
        }
        let no_colon = ProbeConfig::new("http://x", "{}")
            .headers(["NoColon"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            no_colon,
            "invalid header (-H argument 1): no `:` between a name and a value; \
             expected `Name: value`"
        );
    }
}
