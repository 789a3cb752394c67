//! keyform: whatever `inspect` prints to name a key pastes back to that same record, for a
//! table of awkward keys (quotes, backslashes, spaces at the ends, shell metacharacters, a
//! leading `-`, and pairs of keys one of which reads as the other's header value). The pasted
//! words go through a real POSIX shell (`/bin/sh -c`), as an operator's paste does.

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

/// Stored key texts, each a key the HTTP layer stores for some header value.
fn awkward_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "order-1",
        "a",
        r#""a""#,
        r#""\"a\"""#,
        r#" "a""#,
        "a b",
        r#""a b""#,
        "  a  ",
        " ",
        r"\",
        r#"""#,
        r#""open"#,
        r"a\b",
        "it's",
        "'",
        "$HOME",
        "`id`",
        "*",
        "#x",
        "~x",
        "!x",
        "a;b|c&d>e",
        "{a,b}",
        "-k",
        "--yes",
        " -k",
    ]
    .map(str::to_owned)
    .to_vec();
    // 255 bytes with a quote at each end: valid stored text and a valid header value (whose
    // key, 253 `x`, is in the table too).
    keys.push(format!("\"{}\"", "x".repeat(253)));
    keys.push("x".repeat(253));
    keys
}

/// The `Idempotency-Key` sf-string a client sends for the key `text`.
fn header_value(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', r"\\").replace('"', "\\\""))
}

/// Run `idempotency <command> alice <extra…> <pasted>` through `/bin/sh -c`, the pasted
/// words exactly as printed.
fn run_pasted(url: &str, command: &str, extra: &str, pasted: &str) -> Run {
    let output = Command::new("/bin/sh")
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

#[tokio::test(flavor = "multi_thread")]
async fn what_inspect_prints_pastes_back_to_the_same_record() {
    let server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::connect(server.url()).await.unwrap();
    let url = server.url();
    let env = [("REDIS_URL", url)];
    let mut records = Vec::new();
    for (i, text) in awkward_keys().iter().enumerate() {
        records.push(seed(&store, text, i % 3 == 2).await);
    }

    let mut pasted = Vec::new();
    for record in &records {
        let text = record.text.as_str();
        // Named by the header value the client sent...
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

        // ... then by the printed words, pasted into a shell at the end of the command.
        let again = run_pasted(url, "inspect", "--json", &argument);
        assert_eq!(
            again.code,
            0,
            "{text:?} pasted as {argument}: {}",
            again.all()
        );
        let value = json(&again);
        assert_eq!(
            value["key"],
            record.store_key.as_str(),
            "{text:?} as {argument}"
        );
        assert_eq!(value["idempotency_key"], text, "{text:?} as {argument}");
        assert_eq!(value["fencing_token"], record.token.to_hex(), "{text:?}");

        // The JSON's `idempotency_key` with --key-form stored names it too (for scripts: after
        // `--`, last, so a key starting with `-` is not read as an option).
        let by_json = run(
            &env,
            &[
                "inspect",
                "alice",
                "--json",
                "--key-form",
                "stored",
                "--",
                value["idempotency_key"].as_str().unwrap(),
            ],
        );
        assert_eq!(
            json(&by_json)["fencing_token"],
            record.token.to_hex(),
            "{text:?}"
        );

        // The flag is shown exactly when the text alone would be refused as ambiguous or
        // malformed: a text starting with `"` (spaces before it aside).
        let quoted = text.trim_start_matches(' ').starts_with('"');
        assert_eq!(
            argument.starts_with("--key-form stored "),
            quoted,
            "{text:?} as {argument}"
        );
        pasted.push(argument);
    }

    // Release (in progress) or delete (every other one, and completed ones) each record by its
    // pasted words: exactly that record goes, every other stays.
    for (i, (record, argument)) in records.iter().zip(&pasted).enumerate() {
        let command = if record.completed || i % 2 == 0 {
            "delete"
        } else {
            "release"
        };
        let done = run_pasted(url, command, "--yes", argument);
        assert_eq!(done.code, 0, "{command} {argument}: {}", done.all());
        assert!(
            store.get(&record.store_key).await.unwrap().is_none(),
            "{command} {argument} left {}",
            record.store_key
        );
        for later in &records[i + 1..] {
            assert!(
                store.get(&later.store_key).await.unwrap().is_some(),
                "{command} {argument} (for {:?}) removed {}",
                record.text,
                later.store_key
            );
        }
    }
}
