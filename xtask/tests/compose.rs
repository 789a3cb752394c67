//! Structure of `docker-compose.yml`, its Dockerfiles and the README's promises about them,
//! checked without a Docker engine: the file is parsed as YAML and compared with what the
//! gateway's command line accepts, what the KV REST store reads from the environment, and what
//! the README's "Docker" section says.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn compose() -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read("docker-compose.yml"))
        .unwrap_or_else(|e| panic!("docker-compose.yml is not valid YAML: {e}"));
    assert_eq!(
        docs.len(),
        1,
        "docker-compose.yml must hold one YAML document"
    );
    docs.remove(0)
}

fn keys(map: &Yaml) -> BTreeSet<String> {
    map.as_hash()
        .unwrap_or_else(|| panic!("expected a mapping, found {map:?}"))
        .keys()
        .map(|k| k.as_str().expect("mapping keys are strings").to_owned())
        .collect()
}

fn string(value: &Yaml, what: &str) -> String {
    match value {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("{what}: expected a scalar, found {other:?}"),
    }
}

fn service<'a>(doc: &'a Yaml, name: &str) -> &'a Yaml {
    let service = &doc["services"][name];
    assert!(
        !service.is_badvalue(),
        "docker-compose.yml has no service `{name}`"
    );
    service
}

/// A service's `environment` as (name, value) pairs; the map form is required (it reads best
/// and cannot hide a typo like `KEY value`).
fn environment(service: &Yaml, name: &str) -> Vec<(String, String)> {
    let env = &service["environment"];
    let hash = env
        .as_hash()
        .unwrap_or_else(|| panic!("service `{name}`: `environment` must be a mapping"));
    hash.iter()
        .map(|(k, v)| {
            let key = k.as_str().expect("variable names are strings").to_owned();
            let value = string(v, &format!("{name}.environment.{key}"));
            (key, value)
        })
        .collect()
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `127.0.0.1:HOST:CONTAINER` entries of a service's `ports` as (host, container).
fn published_ports(service: &Yaml, name: &str) -> Vec<(u16, u16)> {
    let Some(ports) = service["ports"].as_vec() else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|p| {
            let text = string(p, &format!("{name}.ports"));
            let parts: Vec<&str> = text.split(':').collect();
            assert_eq!(
                parts.len(),
                3,
                "service `{name}`: port `{text}` must be `127.0.0.1:HOST:CONTAINER` \
                 (development tokens: never publish on every interface)"
            );
            assert_eq!(parts[0], "127.0.0.1", "service `{name}`: port `{text}`");
            (parts[1].parse().unwrap(), parts[2].parse().unwrap())
        })
        .collect()
}

/// `scheme://host:port...` → (host, port).
fn host_port(url: &str) -> (String, u16) {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("`{url}` is not a URL"));
    let authority = rest.split('/').next().unwrap();
    let authority = authority.rsplit('@').next().unwrap();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("`{url}` must name its port"));
    (host.to_owned(), port.parse().unwrap())
}

/// The values of every `env = "NAME"` in a source file (clap arguments).
fn clap_env_names(source: &str) -> BTreeSet<String> {
    source
        .split("env = \"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

/// The Dockerfile a service builds from, with its build context checked.
fn dockerfile_of(service: &Yaml, name: &str) -> (String, String) {
    let build = &service["build"];
    assert_eq!(
        build["context"].as_str(),
        Some("."),
        "service `{name}`: the build context is the workspace root (Cargo.lock lives there)"
    );
    let path = build["dockerfile"]
        .as_str()
        .unwrap_or_else(|| panic!("service `{name}`: build.dockerfile missing"))
        .to_owned();
    let text = read(&path);
    (path, text)
}

/// Multi-stage, a pinned distroless or slim runtime, non-root, and a locked release build of the
/// given package (or of `${PACKAGE}`, the build argument).
fn check_dockerfile(path: &str, text: &str, package_arg: &str) {
    let from_lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(
        from_lines.len() >= 2,
        "{path}: multi-stage build expected (a build stage and a runtime stage)"
    );
    let runtime = from_lines.last().unwrap();
    assert!(
        runtime.contains("distroless") || runtime.contains("-slim"),
        "{path}: small runtime image expected, found `{runtime}`"
    );
    let last_stage = text.rsplit("\nFROM ").next().unwrap();
    let user = last_stage
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .unwrap_or_else(|| panic!("{path}: the runtime stage must set a non-root USER"));
    assert!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "{path}: runtime user is `{user}`"
    );
    assert!(
        text.contains(&format!("cargo build --release --locked -p {package_arg}")),
        "{path}: expected `cargo build --release --locked -p {package_arg}`"
    );
}

fn workspace_packages() -> BTreeSet<String> {
    let manifest = read("Cargo.toml");
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|m| m.split(']').next())
        .expect("workspace members");
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|m| {
            let text = read(&format!("{m}/Cargo.toml"));
            text.lines()
                .find_map(|l| l.strip_prefix("name = \""))
                .and_then(|l| l.split('"').next())
                .unwrap_or_else(|| panic!("{m}/Cargo.toml has no package name"))
                .to_owned()
        })
        .collect()
}

#[test]
fn top_level_and_service_keys_are_known() {
    let doc = compose();
    let allowed_top = ["name", "services", "volumes", "networks"];
    for key in keys(&doc) {
        assert!(
            allowed_top.contains(&key.as_str()),
            "unknown top-level key `{key}`"
        );
    }
    let allowed_service = [
        "image",
        "build",
        "command",
        "environment",
        "ports",
        "volumes",
        "healthcheck",
        "depends_on",
        "restart",
    ];
    let services = keys(&doc["services"]);
    for name in &services {
        let this = service(&doc, name);
        for key in keys(this) {
            assert!(
                allowed_service.contains(&key.as_str()),
                "service `{name}`: unexpected key `{key}` (typo?)"
            );
        }
        assert!(
            !this["image"].is_badvalue() || !this["build"].is_badvalue(),
            "service `{name}` needs an image or a build"
        );
        if let Some(deps) = this["depends_on"].as_hash() {
            for (dep, spec) in deps {
                let dep = dep.as_str().unwrap();
                assert!(
                    services.contains(dep),
                    "`{name}` depends on unknown `{dep}`"
                );
                let condition = spec["condition"].as_str().unwrap_or("service_started");
                assert!(
                    [
                        "service_started",
                        "service_healthy",
                        "service_completed_successfully"
                    ]
                    .contains(&condition),
                    "`{name}` → `{dep}`: unknown condition `{condition}`"
                );
                if condition == "service_healthy" {
                    assert!(
                        !service(&doc, dep)["healthcheck"].is_badvalue(),
                        "`{name}` waits for `{dep}` to be healthy, but it has no healthcheck"
                    );
                }
            }
        }
        if let Some(volumes) = this["volumes"].as_vec() {
            let declared = keys(&doc["volumes"]);
            for volume in volumes {
                let volume = string(volume, "volume");
                let source = volume.split(':').next().unwrap();
                if !source.starts_with('.') && !source.starts_with('/') {
                    assert!(
                        declared.contains(source),
                        "volume `{source}` is not declared"
                    );
                }
            }
        }
    }
    for required in ["redis", "kv-rest-gateway", "demo"] {
        assert!(services.contains(required), "service `{required}` missing");
    }
}

#[test]
fn redis_is_7_persistent_and_never_evicts() {
    let doc = compose();
    let redis = service(&doc, "redis");
    let image = redis["image"].as_str().expect("redis image");
    assert!(
        image.starts_with("redis:7"),
        "Redis 7 expected (SET NX GET), found `{image}`"
    );
    let command: Vec<String> = redis["command"]
        .as_vec()
        .expect("redis command as a list")
        .iter()
        .map(|a| string(a, "redis.command"))
        .collect();
    let option = |name: &str| {
        command
            .iter()
            .position(|a| a == name)
            .and_then(|i| command.get(i + 1))
            .map(String::as_str)
    };
    assert_eq!(command.first().map(String::as_str), Some("redis-server"));
    assert_eq!(option("--appendonly"), Some("yes"), "AOF persistence on");
    // Every record has a TTL, so volatile-* policies evict live records as readily as
    // allkeys-*: only noeviction keeps them (DoctorWarning::EvictionPolicy).
    assert_eq!(option("--maxmemory-policy"), Some("noeviction"));
    let volumes = redis["volumes"].as_vec().expect("a volume for /data");
    assert!(
        volumes
            .iter()
            .any(|v| string(v, "volume").ends_with(":/data")),
        "Redis data (the AOF) must live in a volume"
    );
    assert_eq!(published_ports(redis, "redis"), vec![(6379, 6379)]);
}

#[test]
fn gateway_is_built_from_its_crate_and_configured_with_its_own_variables() {
    let doc = compose();
    let gateway = service(&doc, "kv-rest-gateway");
    let (path, text) = dockerfile_of(gateway, "kv-rest-gateway");
    assert_eq!(path, "crates/kv-rest-gateway/Dockerfile");
    check_dockerfile(&path, &text, "kv-rest-gateway");

    let known = clap_env_names(&read("crates/kv-rest-gateway/src/main.rs"));
    assert!(known.contains("KV_REST_GATEWAY_TOKEN"), "parsed {known:?}");
    let env = environment(gateway, "kv-rest-gateway");
    for (name, _) in &env {
        assert!(
            known.contains(name) || name == "RUST_LOG",
            "kv-rest-gateway does not read `{name}` (it reads {known:?})"
        );
    }
    let token = env_value(&env, "KV_REST_GATEWAY_TOKEN").expect("the gateway needs a token");
    assert!(!token.is_empty());
    let redis_url = env_value(&env, "KV_REST_GATEWAY_REDIS_URL").expect("Redis URL");
    let (host, port) = host_port(redis_url);
    assert_eq!((host.as_str(), port), ("redis", 6379));

    let listen = env_value(&env, "KV_REST_GATEWAY_LISTEN").expect("listen address");
    let (address, port) = listen.rsplit_once(':').unwrap();
    assert_eq!(
        address, "0.0.0.0",
        "inside a container, listen on all interfaces"
    );
    let port: u16 = port.parse().unwrap();
    assert_eq!(
        published_ports(gateway, "kv-rest-gateway"),
        vec![(8079, port)]
    );
}

#[test]
fn demo_uses_the_hosted_variable_names_and_reaches_the_gateway() {
    let doc = compose();
    let demo = service(&doc, "demo");
    let (path, text) = dockerfile_of(demo, "demo");
    check_dockerfile(&path, &text, "\"${PACKAGE}\"");
    let package = demo["build"]["args"]["PACKAGE"]
        .as_str()
        .expect("build.args.PACKAGE names the binary's package");
    assert_eq!(package, "idempotency-demo");
    let packages = workspace_packages();
    if root().join("crates/idempotency-demo/Cargo.toml").exists() {
        assert!(
            packages.contains(package),
            "`{package}` is not a workspace member ({packages:?})"
        );
    }

    // Every variable is one the demo reads: its own (clap `env = ...`), the store selection's
    // (the hosted services' names), or the log filter.
    let env = environment(demo, "demo");
    if let Ok(main) = std::fs::read_to_string(root().join("crates/idempotency-demo/src/main.rs")) {
        let own = clap_env_names(&main);
        let store_vars = [
            "UPSTASH_REDIS_REST_URL",
            "UPSTASH_REDIS_REST_TOKEN",
            "KV_REST_API_URL",
            "KV_REST_API_TOKEN",
            "REDIS_URL",
            "KV_URL",
        ];
        for (name, _) in &env {
            assert!(
                own.contains(name) || store_vars.contains(&name.as_str()) || name == "RUST_LOG",
                "idempotency-demo does not read `{name}` (its own variables: {own:?})"
            );
        }
    }

    // The pairs the KV REST store reads (its ENV_PAIRS), as Upstash and Vercel name them.
    // (`ENV_PAIRS` in idempotency-kv-rest is core's `KV_REST_ENV_PAIRS`, defined once.)
    let store_config = read("crates/idempotency-core/src/shared.rs");
    assert!(
        read("crates/idempotency-kv-rest/src/config.rs")
            .contains("pub const ENV_PAIRS: [(&str, &str); 2] = KV_REST_ENV_PAIRS;"),
        "idempotency-kv-rest no longer reads core's KV_REST_ENV_PAIRS"
    );
    let gateway_env = environment(service(&doc, "kv-rest-gateway"), "kv-rest-gateway");
    let pair = [
        ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN"),
        ("KV_REST_API_URL", "KV_REST_API_TOKEN"),
    ]
    .into_iter()
    .find(|(url, _)| env_value(&env, url).is_some());
    if let Some((url_var, token_var)) = pair {
        assert!(
            store_config.contains(&format!("(\"{url_var}\", \"{token_var}\")")),
            "idempotency-kv-rest does not read the pair {url_var} / {token_var}"
        );
        let url = env_value(&env, url_var).unwrap();
        let (host, port) = host_port(url);
        assert_eq!(
            host, "kv-rest-gateway",
            "{url_var} must point at the gateway service"
        );
        let listen = env_value(&gateway_env, "KV_REST_GATEWAY_LISTEN").unwrap();
        assert!(
            listen.ends_with(&format!(":{port}")),
            "{url_var} port vs {listen}"
        );
        assert_eq!(
            env_value(&env, token_var),
            env_value(&gateway_env, "KV_REST_GATEWAY_TOKEN"),
            "{token_var} must be the gateway's token"
        );
    } else {
        let url = env_value(&env, "REDIS_URL")
            .expect("the demo needs KV_REST_API_* / UPSTASH_REDIS_REST_* or REDIS_URL");
        assert_eq!(host_port(url), ("redis".to_owned(), 6379));
    }

    let command: Vec<String> = demo["command"]
        .as_vec()
        .expect("demo command as a list")
        .iter()
        .map(|a| string(a, "demo.command"))
        .collect();
    let listen = command
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| command.get(i + 1))
        .expect("--listen ADDR");
    let (address, port) = listen.rsplit_once(':').unwrap();
    assert_eq!(address, "0.0.0.0");
    assert_eq!(
        published_ports(demo, "demo"),
        vec![(3000, port.parse().unwrap())]
    );
}

/// Rows of the README's "Docker" table: `service`, `127.0.0.1:PORT`; and every variable the
/// section names must appear in the compose file.
#[test]
fn readme_docker_section_matches_the_file() {
    let readme = read("README.md");
    let section = readme
        .split("\n## Docker")
        .nth(1)
        .expect("README.md has a `## Docker` section")
        .split("\n## ")
        .next()
        .unwrap();
    let doc = compose();
    let compose_text = read("docker-compose.yml");
    let mut rows = 0;
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line
            .split('|')
            .map(|c| c.trim().trim_matches('`'))
            .collect();
        let (name, address) = (cells[1], cells[2]);
        let port: u16 = address
            .strip_prefix("127.0.0.1:")
            .unwrap_or_else(|| panic!("README row `{line}`: address `127.0.0.1:PORT` expected"))
            .parse()
            .unwrap();
        let published = published_ports(service(&doc, name), name);
        assert!(
            published.iter().any(|(host, _)| *host == port),
            "README promises `{name}` on port {port}; compose publishes {published:?}"
        );
        rows += 1;
    }
    assert!(
        rows >= 3,
        "README's Docker table lists the services ({rows} rows found)"
    );

    let variables: BTreeSet<&str> = section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| {
            t.len() > 3
                && t.contains('_')
                && t.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    assert!(
        !variables.is_empty(),
        "the Docker section names its variables"
    );
    for variable in variables {
        assert!(
            compose_text.contains(variable),
            "README's Docker section mentions `{variable}`, docker-compose.yml does not"
        );
    }
}

#[test]
fn docker_context_excludes_build_output() {
    let ignore = read(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "target/" || l.trim() == "target"),
        ".dockerignore must exclude target/"
    );
    assert!(ignore.lines().any(|l| l.trim().starts_with(".git")));
}
