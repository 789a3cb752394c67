//! The KV REST gateway's request parsing, as the server does it now (`body::parse_command`,
//! `body::parse_batch`, `command::command_from_path`, then the name filter for both tokens):
//! JSON command bodies, path-form commands (path, body, query string), and pipeline /
//! transaction bodies with their command-count bound. Never panics; a JSON body and the same
//! command as a one-element batch parse alike; a batch accepted under a bound is accepted
//! identically without it, and one with more commands than the bound is refused.
#![no_main]

use kv_rest_gateway::fuzzing::{batch_body, json_body, path_form};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let single = json_body(rest);
            if let Some(single) = &single {
                // `[cmd]` as a pipeline holds the same command.
                let mut wrapped = b"[".to_vec();
                wrapped.extend_from_slice(rest);
                wrapped.push(b']');
                assert_eq!(batch_body(&wrapped, 1).as_ref(), Some(single));
            }
        }
        1 => {
            // The high bits of the mode byte choose the bound (`max_pipeline`), 1..=64.
            let bound = usize::from(mode >> 2) + 1;
            let unbounded = batch_body(rest, usize::MAX);
            let bounded = batch_body(rest, bound);
            match &unbounded {
                Some(all) if all.len() <= bound => assert_eq!(bounded.as_ref(), Some(all)),
                Some(_) => assert_eq!(bounded, None, "more than {bound} commands accepted"),
                None => assert_eq!(bounded, None),
            }
        }
        _ => {
            // path \xff body \xff query (each part optional)
            let mut parts = rest.splitn(3, |&b| b == 0xff);
            let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
            let body = parts.next();
            let query = parts.next().map(String::from_utf8_lossy);
            let _ = path_form(&path, body, query.as_deref());
        }
    }
});
