//! The KV REST gateway's request parsing: JSON command bodies, path-form commands (path, body,
//! query string), and pipeline / transaction bodies. Never panics; a JSON body and the same
//! command as a one-element batch parse alike.
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
                assert_eq!(batch_body(&wrapped).as_ref(), Some(single));
            }
        }
        1 => {
            let _ = batch_body(rest);
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
