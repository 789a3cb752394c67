//! breaker13: `inspect`'s printed `key argument` pasted back through bash and dash for more
//! awkward keys (`=`, `%`, `!`, `^`, globs, option look-alikes, a literal backslash-n), and
//! arguments the CLI must refuse (newlines, control bytes) with exit code 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{PREFIX, Run, json, run};
use idempotency::redis::RedisStore;
use idempotency::{
    Claim, Completed, Fingerprint, IdempotencyKey, IdempotencyStore, InProgress, LeaseToken, Scope,
    StoreKey, StoredOutcome, unix_millis_now,
};
use idempotency_testkit::fixtures::RedisServer;

/// The `Idempotency-Key` sf-string a client sends for the key `text`.
fn header_value(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', r"\\").replace('"', "\\\""))
}

/// Run `idempotency <command> alice <extra…> <pasted>` through `shell -c`, the pasted
/// words exactly as printed.
fn run_pasted(shell: &str, url: &str, command: &str, extra: &str, pasted: &str) -> Run {
    let output = Command::new(shell)
        .env_clear()
        .env("REDIS_URL", url)
        .arg("-c")
        .arg(format!("exec \"$0\" {command} alice {extra} {pasted}"))
        .arg(env!("CARGO_BIN_EXE_idempotency"))
        .stdin(Stdio::null())
        .output()
        .expect("run /bin/sh");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

struct Seeded {
    text: String,
    store_key: StoreKey,
    token: LeaseToken,
    completed: bool,
}

async fn seed(store: &RedisStore, text: &str, completed: bool) -> Seeded {
    let key = IdempotencyKey::from_header_value(header_value(text).as_bytes())
        .unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(key.as_str(), text);
    let store_key = StoreKey::derive(PREFIX, &Scope::new("alice"), &key);
    let claim = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of(text),
        created_at_ms: unix_millis_now(),
    };
    let claimed = store
        .try_claim(&store_key, &claim, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(matches!(claimed, Claim::Claimed), "{text:?} claimed twice");
    if completed {
        let record = Completed {
            token: claim.token,
            fingerprint: claim.fingerprint,
            created_at_ms: claim.created_at_ms,
            completed_at_ms: unix_millis_now(),
            outcome: StoredOutcome::new("ok", None),
        };
        store
            .complete(&store_key, &claim.token, &record, Duration::from_secs(3600))
            .await
            .unwrap();
    }
    Seeded {
        text: text.to_owned(),
        store_key,
        token: claim.token,
        completed,
    }
}

/// The words after the `key argument` label of `inspect`'s text output.
fn key_argument(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("key argument"))
        .map(|rest| rest.trim_start_matches(' ').to_owned())
        .unwrap_or_else(|| panic!("no key argument line in: {stdout}"))
}

/// Keys the table in `keyform_paste.rs` does not hold.
const MORE_KEYS: &[&str] = &[
    "=ls",
    "a=b",
    "%1",
    "!!",
    "a!b",
    "^x",
    "[a]",
    "?",
    "a*b",
    r"a\nb",
    "-",
    "--",
    "--key-form",
    "--json",
    "-- x",
    "'\\''",
    "\"",
    "a\"",
    " ",
    "   \"",
    "$(id)",
    "${x:-y}",
    "a#b",
    "#",
    "<x>",
    "a,b",
    "{}",
];

#[tokio::test(flavor = "multi_thread")]
async fn more_awkward_keys_paste_back_through_bash_and_dash() {
    let server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::connect(server.url()).await.unwrap();
    let url = server.url();
    let env = [("REDIS_URL", url)];
    for (i, text) in MORE_KEYS.iter().enumerate() {
        let record = seed(&store, text, i % 2 == 0).await;
        let shown = run(
            &env,
            &[
                "inspect",
                "alice",
                "--key-form",
                "header",
                &header_value(text),
            ],
        );
        assert_eq!(shown.code, 0, "{text:?}: {}", shown.all());
        let argument = key_argument(&shown.stdout);
        for shell in ["/usr/bin/bash", "/usr/bin/dash"] {
            let again = run_pasted(shell, url, "inspect", "--json", &argument);
            assert_eq!(
                again.code,
                0,
                "{shell}: {text:?} pasted as {argument}: {}",
                again.all()
            );
            let value = json(&again);
            assert_eq!(
                value["idempotency_key"], *text,
                "{shell}: {text:?} as {argument}"
            );
            assert_eq!(value["key"], record.store_key.as_str(), "{shell}: {text:?}");
        }
        let deleted = run_pasted("/usr/bin/bash", url, "delete", "--yes", &argument);
        assert_eq!(deleted.code, 0, "{text:?} as {argument}: {}", deleted.all());
        assert!(store.get(&record.store_key).await.unwrap().is_none());
        assert_eq!(
            (record.text.as_str(), record.completed),
            (*text, i % 2 == 0)
        );
        assert!(!record.token.to_hex().is_empty());
    }
}

/// Newlines and other control bytes in a KEY argument are refused (exit 2) in every form,
/// never read as a key or cut at the newline.
#[test]
fn keys_with_control_bytes_are_refused() {
    let env = [("REDIS_URL", "redis://127.0.0.1:1")];
    for key in [
        "a\nb",
        "a\rb",
        "\"a\nb\"",
        "a\u{7f}",
        "\u{1b}[2J",
        "a\u{0}b",
    ] {
        if key.contains('\u{0}') {
            continue; // not representable as a process argument
        }
        for form in [None, Some("stored"), Some("header")] {
            let mut args = vec!["inspect", "alice"];
            if let Some(form) = form {
                args.extend(["--key-form", form]);
            }
            args.extend(["--", key]);
            let refused = run(&env, &args);
            assert_eq!(refused.code, 2, "{key:?} {form:?}: {}", refused.all());
        }
    }
}
