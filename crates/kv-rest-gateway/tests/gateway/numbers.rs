//! Issue 12 item 5: a number in a command body reaches Redis as exactly the text the client
//! sent, in the JSON, pipeline and transaction forms; and bounded batch parsing.

use serde_json::json;

use crate::common::TestGateway;

/// Number literals as raw JSON text (serde_json's `json!` would re-format them).
const NUMBERS: [&str; 12] = [
    "12345678901234567890123",
    "-12345678901234567890123",
    "-0",
    "0",
    "2.50",
    "1.000000000000000000001",
    "1e3",
    "1E+400",
    "-1.5e-400",
    "0.1e-2",
    "9007199254740993",
    "18446744073709551616",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_reach_redis_as_sent_in_every_form() {
    let gw = TestGateway::start().await;
    for (index, number) in NUMBERS.iter().enumerate() {
        // JSON form
        let body = format!(r#"["SET","n:{index}",{number}]"#);
        let set = gw
            .request(
                reqwest::Method::POST,
                "/",
                Some(crate::common::TOKEN),
                &[],
                Some(body.into_bytes()),
            )
            .await;
        assert_eq!(set.result(), "OK");
        assert_eq!(
            gw.cmd(json!(["GET", format!("n:{index}")])).await.result(),
            *number
        );
        // pipeline form
        let body = format!(r#"[["SET","p:{index}",{number}],["GET","p:{index}"]]"#);
        let piped = gw
            .request(
                reqwest::Method::POST,
                "/pipeline",
                Some(crate::common::TOKEN),
                &[],
                Some(body.into_bytes()),
            )
            .await;
        assert_eq!(piped.json[1]["result"], *number, "{piped:?}");
        // transaction form
        let body = format!(r#"[["SET","m:{index}",{number}],["GET","m:{index}"]]"#);
        let multi = gw
            .request(
                reqwest::Method::POST,
                "/multi-exec",
                Some(crate::common::TOKEN),
                &[],
                Some(body.into_bytes()),
            )
            .await;
        assert_eq!(multi.json[1]["result"], *number, "{multi:?}");
        // and Redis itself holds the text
        assert_eq!(
            gw.redis_cli(&["GET", &format!("m:{index}")]).trim(),
            *number
        );
    }
    // A number as an option value works as Redis reads it (EX 100).
    let body = br#"["SET","ttl",1,"EX",100]"#.to_vec();
    let reply = gw
        .request(
            reqwest::Method::POST,
            "/",
            Some(crate::common::TOKEN),
            &[],
            Some(body),
        )
        .await;
    assert_eq!(reply.result(), "OK");
    // Malformed numbers are JSON errors: 400, never a different value.
    for bad in ["01", "1.", ".5", "+1", "1e", "NaN", "Infinity", "0x10"] {
        let body = format!(r#"["SET","bad",{bad}]"#);
        let reply = gw
            .request(
                reqwest::Method::POST,
                "/",
                Some(crate::common::TOKEN),
                &[],
                Some(body.into_bytes()),
            )
            .await;
        assert!(reply.error(400).contains("JSON"), "{bad}: {reply:?}");
    }
    assert_eq!(gw.cmd(json!(["EXISTS", "bad"])).await.result(), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_batch_is_refused_while_parsing() {
    let gw = TestGateway::start().await;
    // 200 000 commands (about 3 MiB): refused at command 1001, whatever follows.
    let mut body = String::from("[");
    for index in 0..200_000 {
        if index > 0 {
            body.push(',');
        }
        body.push_str(r#"["SET","k","v"]"#);
    }
    body.push(']');
    for path in ["/pipeline", "/multi-exec"] {
        let reply = gw
            .request(
                reqwest::Method::POST,
                path,
                Some(crate::common::TOKEN),
                &[],
                Some(body.clone().into_bytes()),
            )
            .await;
        assert!(
            reply
                .error(400)
                .contains("too many commands: more than 1000"),
            "{reply:?}"
        );
    }
    assert_eq!(gw.cmd(json!(["EXISTS", "k"])).await.result(), 0);
    gw.shutdown().await;
}
