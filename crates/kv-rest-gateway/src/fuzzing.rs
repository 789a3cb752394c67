//! The request parsers on their own, for the fuzz targets in `fuzz/` (feature `fuzzing`). Not a
//! stable API: the functions return what the gateway would do with a request body, without a
//! Redis server.

use crate::auth::Access;
use crate::body::{parse_batch, parse_command};
use crate::command::{Command, command_from_path};
use crate::policy::check_allowed;

/// What the gateway made of one request: the commands it would run (as their arguments) and,
/// per command, the refusal for the read-write and the read-only token (`None`: allowed).
pub type Parsed = Vec<(Vec<Vec<u8>>, Option<String>, Option<String>)>;

fn describe(commands: Vec<Command>) -> Parsed {
    commands
        .into_iter()
        .map(|command| {
            let read_write = check_allowed(&command, Access::ReadWrite)
                .err()
                .map(|refusal| refusal.message().to_owned());
            let read_only = check_allowed(&command, Access::ReadOnly)
                .err()
                .map(|refusal| refusal.message().to_owned());
            (
                command.args().map(<[u8]>::to_vec).collect(),
                read_write,
                read_only,
            )
        })
        .collect()
}

/// A `POST /` body: one JSON command array, as the server parses it. `None` when refused as a
/// bad request.
pub fn json_body(body: &[u8]) -> Option<Parsed> {
    parse_command(body).ok().map(|c| describe(vec![c]))
}

/// A path-form request: path, optional body, optional query string.
pub fn path_form(path: &str, body: Option<&[u8]>, query: Option<&str>) -> Option<Parsed> {
    command_from_path(path, body, query)
        .ok()
        .map(|c| describe(vec![c]))
}

/// A `/pipeline` or `/multi-exec` body (both parse alike), as the server parses it with the
/// `max_pipeline` bound `max_commands`. `None` when refused as a bad request.
pub fn batch_body(body: &[u8], max_commands: usize) -> Option<Parsed> {
    parse_batch(body, max_commands).ok().map(describe)
}
