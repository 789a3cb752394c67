//! Turning requests into Redis commands.
//!
//! Two request forms carry a command: a JSON array (`["SET","k","v"]`, parsed by
//! [`crate::body`]) and a URL path (`/set/k/v`, with an optional raw body and query-string
//! arguments). Both become a [`Command`], a list of binary-safe arguments, which then passes
//! [`crate::policy::check_allowed`].

use percent_encoding::percent_decode;

use crate::error::GatewayError;
use crate::query::query_pairs;

/// One Redis command: the name followed by its arguments, each binary safe.
///
/// Stored compactly — every argument's bytes in one buffer plus one end offset per argument —
/// so a request of many tiny arguments costs about its own size in memory, not a heap
/// allocation per argument (see [`crate::body`] for the figures).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Command {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Command {
    /// A command from its arguments; the first is the name. Fails when empty.
    #[cfg(test)]
    pub(crate) fn new(args: Vec<Vec<u8>>) -> Result<Self, GatewayError> {
        let mut command = Self::default();
        for arg in args {
            command.push(&arg);
        }
        command.finish()
    }

    /// Appends one argument.
    pub(crate) fn push(&mut self, arg: &[u8]) {
        self.data.extend_from_slice(arg);
        self.ends.push(self.data.len());
    }

    /// An empty command with room for `bytes` of arguments and `args` arguments.
    pub(crate) fn with_capacity(bytes: usize, args: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(args),
        }
    }

    /// The command when it has at least a name, else the "empty command" error; the buffers
    /// are shrunk to their content (a batch holds many commands).
    pub(crate) fn finish(self) -> Result<Self, GatewayError> {
        let mut command = self.non_empty()?;
        command.data.shrink_to_fit();
        command.ends.shrink_to_fit();
        Ok(command)
    }

    /// The command when it has at least a name, else the "empty command" error; the buffers
    /// stay as they are (for a single command sized from its body, which bounds them).
    pub(crate) fn non_empty(self) -> Result<Self, GatewayError> {
        if self.ends.is_empty() {
            return Err(GatewayError::BadRequest("ERR empty command".into()));
        }
        Ok(self)
    }

    /// The number of arguments, the name included.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The argument at `index` (0 is the name).
    pub(crate) fn arg(&self, index: usize) -> Option<&[u8]> {
        let end = *self.ends.get(index)?;
        let start = match index {
            0 => 0,
            _ => *self.ends.get(index - 1)?,
        };
        self.data.get(start..end)
    }

    /// Every argument, the name first.
    pub(crate) fn args(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).filter_map(|index| self.arg(index))
    }

    /// Replaces the argument at `index` (used by the script translation; rare, so a rebuild).
    pub(crate) fn set_arg(&mut self, index: usize, value: &[u8]) {
        if index >= self.len() {
            return;
        }
        let mut rebuilt = Self::default();
        for (i, arg) in self.args().enumerate() {
            rebuilt.push(if i == index { value } else { arg });
        }
        *self = rebuilt;
    }

    /// The command name in upper case (lossy for non-UTF-8 names; such names never pass the
    /// policy, which checks the raw bytes first).
    pub(crate) fn name(&self) -> String {
        self.arg(0)
            .map(|name| String::from_utf8_lossy(name).to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// The argument at `index` upper-cased (for sub-command and option matching).
    pub(crate) fn arg_upper(&self, index: usize) -> Option<String> {
        self.arg(index)
            .map(|arg| String::from_utf8_lossy(arg).to_ascii_uppercase())
    }

    /// Whether the command runs a script or a function (the script time limit applies).
    pub(crate) fn is_script(&self) -> bool {
        matches!(
            self.name().as_str(),
            "EVAL" | "EVAL_RO" | "EVALSHA" | "EVALSHA_RO" | "FCALL" | "FCALL_RO"
        )
    }

    /// The command as a `redis` crate command.
    pub(crate) fn to_redis(&self) -> redis::Cmd {
        let mut cmd = redis::Cmd::new();
        for arg in self.args() {
            cmd.arg(arg);
        }
        cmd
    }
}

/// A path-form command: URL-decoded path segments, then the raw body (if any, non-empty),
/// then the query-string arguments (`_token` excluded).
///
/// A trailing slash is ignored. A query pair `key=value` adds `key` and `value`; a bare `key`
/// (or `key=`) adds only `key`.
pub(crate) fn command_from_path(
    path: &str,
    body: Option<&[u8]>,
    query: Option<&str>,
) -> Result<Command, GatewayError> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let mut command = Command::default();
    if !trimmed.is_empty() {
        for segment in trimmed.split('/') {
            let decoded: Vec<u8> = percent_decode(segment.as_bytes()).collect();
            command.push(&decoded);
        }
    }
    if let Some(body) = body.filter(|body| !body.is_empty()) {
        command.push(body);
    }
    if let Some(query) = query {
        for (key, value) in query_pairs(query) {
            if key.as_slice() == b"_token" {
                continue;
            }
            command.push(&key);
            if let Some(value) = value.filter(|value| !value.is_empty()) {
                command.push(&value);
            }
        }
    }
    command.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn strings(command: &Command) -> Vec<String> {
        command
            .args()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    #[test]
    fn compact_arguments() -> Result<(), GatewayError> {
        let mut command = Command::new(vec![b"set".to_vec(), b"".to_vec(), b"v".to_vec()])?;
        assert_eq!(command.len(), 3);
        assert_eq!(command.arg(1), Some(&b""[..]));
        assert_eq!(command.arg(3), None);
        command.set_arg(1, b"key");
        assert_eq!(strings(&command), ["set", "key", "v"]);
        assert!(Command::new(Vec::new()).is_err());
        Ok(())
    }

    #[test]
    fn path_arguments() -> Result<(), GatewayError> {
        let command = command_from_path(
            "/set/a%2Fb/x%20y",
            Some(b"body"),
            Some("EX=100&NX&_token=t&k=a+b%2B"),
        )?;
        assert_eq!(
            strings(&command),
            ["set", "a/b", "x y", "body", "EX", "100", "NX", "k", "a b+"]
        );
        assert_eq!(
            strings(&command_from_path("/ping/", Some(b""), None)?),
            ["ping"]
        );
        assert!(command_from_path("/", None, None).is_err());
        Ok(())
    }
}
