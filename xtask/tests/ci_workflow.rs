//! `.github/workflows/ci.yml` stays consistent with the workspace: the same xtask entry point as
//! `.ci/run`, the MSRV job on the workspace's `rust-version`, and that `rust-version` no lower
//! than what any locked dependency declares.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

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

fn workflow() -> Yaml {
    YamlLoader::load_from_str(&read(".github/workflows/ci.yml"))
        .expect("ci.yml is valid YAML")
        .remove(0)
}

/// Every `run:` script of a job, joined.
fn scripts(job: &Yaml) -> String {
    job["steps"]
        .as_vec()
        .expect("a job has steps")
        .iter()
        .filter_map(|step| step["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn workspace_rust_version() -> String {
    let manifest = read("Cargo.toml");
    let package = manifest
        .split("[workspace.package]")
        .nth(1)
        .expect("[workspace.package]");
    package
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|l| l.split('"').next())
        .expect("workspace rust-version")
        .to_owned()
}

fn version_tuple(version: &str) -> (u64, u64, u64) {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[test]
fn main_job_runs_the_same_entry_point_as_ci_run() {
    let ci_run = read(".ci/run");
    assert!(
        ci_run.contains("cargo xtask test"),
        ".ci/run runs cargo xtask test"
    );
    let doc = workflow();
    let test = &doc["jobs"]["test"];
    assert_eq!(test["runs-on"].as_str(), Some("ubuntu-latest"));
    let script = scripts(test);
    assert!(
        script.contains("cargo xtask test --testcontainers"),
        "the test job runs `cargo xtask test --testcontainers`: {script}"
    );
    assert!(
        read("xtask/src/main.rs").contains("\"--testcontainers\""),
        "xtask accepts --testcontainers"
    );
}

#[test]
fn msrv_job_uses_the_workspace_rust_version() {
    let doc = workflow();
    let msrv = &doc["jobs"]["msrv"];
    let toolchain = msrv["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .find_map(|step| step["with"]["toolchain"].as_str())
        .expect("the msrv job installs a pinned toolchain");
    assert_eq!(toolchain, workspace_rust_version());
    assert!(scripts(msrv).contains("cargo check --workspace --all-targets --all-features"));
}

#[test]
fn docs_job_denies_warnings_and_deny_runs_every_check() {
    let doc = workflow();
    let docs = &doc["jobs"]["docs"];
    assert_eq!(docs["env"]["RUSTDOCFLAGS"].as_str(), Some("-D warnings"));
    assert!(scripts(docs).contains("cargo doc --workspace --no-deps"));
    let checks: Vec<&str> = doc["jobs"]["deny"]["strategy"]["matrix"]["checks"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let all = checks.join(" ");
    for check in ["advisories", "bans", "licenses", "sources"] {
        assert!(all.contains(check), "cargo deny check {check} is not run");
    }
    assert!(root().join("deny.toml").exists());
}

/// The declared MSRV must be honest: at least the highest `rust-version` of any package in the
/// resolved graph (all features), or the MSRV job is bound to fail on the first dependency.
#[test]
fn rust_version_is_at_least_every_dependency_requirement() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--all-features"])
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ours = workspace_rust_version();
    let mut too_new = Vec::new();
    for package in metadata["packages"].as_array().unwrap() {
        if let Some(required) = package["rust_version"].as_str()
            && version_tuple(required) > version_tuple(&ours)
        {
            too_new.push(format!(
                "{} {} needs {required}",
                package["name"].as_str().unwrap(),
                package["version"].as_str().unwrap()
            ));
        }
    }
    assert!(
        too_new.is_empty(),
        "workspace rust-version {ours} is below: {too_new:?}"
    );
}
