//! The request parsers on their own, for the fuzz targets in `fuzz/` (feature `fuzzing`). Not a
//! stable API: the functions return what the gateway would do with a request body, without a
//! Redis server.

use serde_json::Value as Json;

use crate::auth::Access;
use crate::command::{Command, check_allowed, command_from_json, command_from_path};

/// What the gateway made of one request: the commands it would run (as their arguments) and,
/// per command, the refusal for the read-write and the read-only token (`None`: allowed).
pub type Parsed = Vec<(Vec<Vec<u8>>, Option<String>, Option<String>)>;

fn describe(commands: Vec<Command>) -> Parsed {
    commands
        .into_iter()
        .map(|command| {
            let read_write = check_allowed(&command, Access::ReadWrite).err();
            let read_only = check_allowed(&command, Access::ReadOnly).err();
            (command.args().to_vec(), read_write, read_only)
        })
        .collect()
}

/// A `POST /` body: one JSON command array. `None` when refused as a bad request.
pub fn json_body(body: &[u8]) -> Option<Parsed> {
    let value: Json = serde_json::from_slice(body).ok()?;
    command_from_json(&value).ok().map(|c| describe(vec![c]))
}

/// A path-form request: path, optional body, optional query string.
pub fn path_form(path: &str, body: Option<&[u8]>, query: Option<&str>) -> Option<Parsed> {
    command_from_path(path, body, query)
        .ok()
        .map(|c| describe(vec![c]))
}

/// A `/pipeline` or `/multi-exec` body: a non-empty JSON array of command arrays, as
/// `server::parse_batch` reads it (without its `max_pipeline` bound, which is a count check).
pub fn batch_body(body: &[u8]) -> Option<Parsed> {
    let Json::Array(items) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    if items.is_empty() {
        return None;
    }
    let commands: Result<Vec<Command>, _> = items.iter().map(command_from_json).collect();
    commands.ok().map(describe)
}
