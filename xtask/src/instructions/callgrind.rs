//! Reading a callgrind output file: the program's total and the inclusive cost of one function.
//!
//! The format (valgrind's "Callgrind Format Specification"): `fn=` opens the cost lines of a
//! function; a cost line is its position column(s) then its event counts (trailing zeros may be
//! left out); `cfn=` names a callee and the `calls=` line after it is followed by one cost line,
//! the inclusive cost of those calls. Names may be compressed: `fn=(12) name` defines id 12,
//! a later `fn=(12)` or `cfn=(12)` refers to it (`fn` and `cfn` share one table).

use std::collections::HashMap;
use std::io::BufRead;

/// What one callgrind output file says about one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Instructions (`Ir`) of the whole program.
    pub(crate) total: u64,
    /// Instructions inside the function and everything it called (its inclusive cost).
    pub(crate) inclusive: u64,
}

/// Read `reader` (a callgrind output file with an `Ir` event) and count the instructions of
/// the whole program and the inclusive cost of the function called exactly `function` (a
/// function calling itself is not counted twice).
pub(crate) fn read(reader: impl BufRead, function: &str) -> Result<Counts, String> {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut positions = 1usize;
    let mut ir_index: Option<usize> = None;
    let mut summary: Option<u64> = None;
    let mut totals: Option<u64> = None;
    let mut inclusive = 0u64;
    // Whether the cost lines being read are the function's own.
    let mut inside = false;
    // Whether the callee of the current `cfn=` is the function itself.
    let mut callee_is_it = false;
    // The next cost line is the inclusive cost of a call (it follows `calls=`).
    let mut call_cost = false;
    for (number, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("reading callgrind output: {e}"))?;
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("fn=") {
            inside = resolve(&mut names, rest) == function;
            call_cost = false;
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            callee_is_it = resolve(&mut names, rest) == function;
        } else if line.starts_with("calls=") {
            call_cost = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '*')) {
            let Some(ir_index) = ir_index else {
                return Err(format!("line {}: a cost line before `events:`", number + 1));
            };
            let is_call = std::mem::take(&mut call_cost);
            if inside && !(is_call && callee_is_it) {
                let cost = line
                    .split_whitespace()
                    .nth(positions + ir_index)
                    .map_or(Ok(0), str::parse::<u64>)
                    .map_err(|e| format!("line {}: `{line}`: {e}", number + 1))?;
                inclusive += cost;
            }
        } else if let Some(rest) = line.strip_prefix("positions:") {
            positions = rest.split_whitespace().count();
        } else if let Some(rest) = line.strip_prefix("events:") {
            ir_index = rest.split_whitespace().position(|event| event == "Ir");
            if ir_index.is_none() {
                return Err(format!("no `Ir` event in `{line}`"));
            }
        } else if let Some(rest) = line.strip_prefix("summary:") {
            summary = Some(first_count(rest, ir_index)?);
        } else if let Some(rest) = line.strip_prefix("totals:") {
            *totals.get_or_insert(0) += first_count(rest, ir_index)?;
        }
    }
    let total = summary
        .or(totals)
        .ok_or("no `summary:` or `totals:` line in the callgrind output")?;
    Ok(Counts { total, inclusive })
}

/// The `Ir` count of a `summary:` / `totals:` line.
fn first_count(rest: &str, ir_index: Option<usize>) -> Result<u64, String> {
    rest.split_whitespace()
        .nth(ir_index.unwrap_or(0))
        .ok_or_else(|| format!("empty total `{rest}`"))?
        .parse()
        .map_err(|e| format!("total `{rest}`: {e}"))
}

/// The name a `fn=` / `cfn=` value stands for, recording a compressed name's definition.
fn resolve(names: &mut HashMap<String, String>, value: &str) -> String {
    let Some(rest) = value.strip_prefix('(') else {
        return value.to_owned();
    };
    let Some((id, name)) = rest.split_once(')') else {
        return value.to_owned();
    };
    let name = name.trim();
    if name.is_empty() {
        names.get(id).cloned().unwrap_or_default()
    } else {
        names.insert(id.to_owned(), name.to_owned());
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed callgrind file: `compress256` costs 100 itself and calls `soft::compress`
    /// (400) and itself (50, not counted again); `update` calls it for 550 inclusive; `main`
    /// refers to it by its compressed name only.
    const FIXTURE: &str = "# callgrind format\n\
version: 1\n\
creator: callgrind-3.19.0\n\
positions: line\n\
events: Ir\n\
summary: 10000\n\
\n\
ob=(1) /bin/app\n\
fl=(1) src/main.rs\n\
fn=(1) main\n\
1 2000\n\
cfn=(2) sha2::sha256::update\n\
calls=1 0\n\
5 600\n\
+2 30\n\
\n\
fn=(2)\n\
10 50\n\
cfn=(3) sha2::sha256::compress256\n\
calls=3 0\n\
11 550\n\
\n\
fn=(3)\n\
20 60\n\
+1 40\n\
cfn=(4) sha2::sha256::soft::compress\n\
calls=3 0\n\
22 400\n\
cfn=(3)\n\
calls=1 0\n\
23 50\n\
* \n\
\n\
fn=(4)\n\
30 400\n\
\n\
totals: 10000\n";

    #[test]
    fn counts_the_total_and_a_functions_inclusive_cost() {
        let counts = read(FIXTURE.as_bytes(), "sha2::sha256::compress256").unwrap();
        assert_eq!(
            counts,
            Counts {
                total: 10_000,
                inclusive: 500
            }
        );
        let update = read(FIXTURE.as_bytes(), "sha2::sha256::update").unwrap();
        assert_eq!(update.inclusive, 600);
        let absent = read(FIXTURE.as_bytes(), "no::such::function").unwrap();
        assert_eq!(absent.inclusive, 0);
    }

    #[test]
    fn reads_several_positions_and_events() {
        let text = "positions: instr line\nevents: Dr Ir\n\
                    fn=f\n0x10 3 7 11\n+1 * 1\ntotals: 99 12\n";
        assert_eq!(
            read(text.as_bytes(), "f").unwrap(),
            Counts {
                total: 12,
                inclusive: 11
            }
        );
    }

    #[test]
    fn refuses_a_file_it_cannot_count() {
        assert!(read("positions: line\nevents: Ir\n".as_bytes(), "f").is_err());
        assert!(read("events: Dr\nsummary: 1\n".as_bytes(), "f").is_err());
        assert!(read("fn=f\n1 2\nsummary: 3\n".as_bytes(), "f").is_err());
    }
}
