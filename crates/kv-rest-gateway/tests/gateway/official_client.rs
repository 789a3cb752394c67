//! The official JS client `@upstash/redis`, unchanged and with its default settings, against the
//! gateway (`official_client.mjs`).
//!
//! Needs `node` (18+) and `npm` on PATH; the package is installed once from the npm registry into
//! cargo's target tmp dir. Without `node` or `npm` the test prints why and passes (the only skip
//! in this suite); with them, any failure fails the test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::common::{RO_TOKEN, TOKEN, TestGateway};

/// Pinned so runs are reproducible; bump deliberately.
const PACKAGE: &str = "@upstash/redis@1.39.0";

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

async fn install_client() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("upstash-redis-js");
    let marker = dir.join("node_modules/@upstash/redis/package.json");
    let version = PACKAGE.rsplit('@').next().unwrap_or_default();
    let installed = std::fs::read_to_string(&marker)
        .is_ok_and(|manifest| manifest.contains(&format!("\"version\": \"{version}\"")));
    if !installed {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("package.json"),
            r#"{"private":true,"type":"module"}"#,
        )
        .unwrap();
        let install = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                PACKAGE,
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output();
        let output = tokio::time::timeout(Duration::from_secs(180), install)
            .await
            .expect("npm install timed out")
            .expect("running npm");
        assert!(
            output.status.success(),
            "npm install {PACKAGE} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_client_works_unchanged() {
    if !on_path("node") || !on_path("npm") {
        eprintln!(
            "SKIPPED official_js_client_works_unchanged: `node` and `npm` are needed on PATH \
             (Node 18+) to run the official @upstash/redis client against the gateway"
        );
        return;
    }
    let dir = install_client().await;
    let script = dir.join("official_client.mjs");
    std::fs::write(&script, include_str!("official_client.mjs")).unwrap();

    let gw = TestGateway::start().await;
    let run = Command::new("node")
        .arg(&script)
        .current_dir(&dir)
        .env("GATEWAY_URL", &gw.base)
        .env("GATEWAY_TOKEN", TOKEN)
        .env("GATEWAY_RO_TOKEN", RO_TOKEN)
        .env_remove("UPSTASH_REDIS_REST_URL")
        .env_remove("UPSTASH_REDIS_REST_TOKEN")
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("node timed out")
        .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("ok"),
        "official client checks failed:\n{stdout}\n{stderr}"
    );
    gw.shutdown().await;
}
