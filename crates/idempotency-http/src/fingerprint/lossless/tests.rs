#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

fn tokens(text: &str) -> Vec<&str> {
    NumberTokens {
        text: text.as_bytes(),
        pos: 0,
    }
    .map(|t| std::str::from_utf8(t).unwrap())
    .collect()
}

#[test]
fn scanner_finds_numbers_outside_strings_only() {
    assert_eq!(
        tokens(r#"{"a1": -1.5e+3, "b\"2": [0, "3", true, null, 4E-2], "c\\": 5}"#),
        ["-1.5e+3", "0", "4E-2", "5"]
    );
    assert_eq!(tokens(r#""-12\\" 7"#), ["7"]);
    assert_eq!(
        tokens("12345678901234567890123"),
        ["12345678901234567890123"]
    );
    // Not JSON: something, but no panic.
    assert_eq!(tokens(r#""unterminated \"#), Vec::<&str>::new());
    assert_eq!(tokens("-"), ["-"]);
}

#[test]
fn decimal_values_compare_by_value() {
    for (a, b) in [
        ("450", "450.0"),
        ("450", "4.5e2"),
        ("450", "4.50E+2"),
        ("450", "45000e-2"),
        ("0.001", "1e-3"),
        ("0", "-0"),
        ("0", "0.000e99"),
        ("0", "0e99999999999999999999999"),
        ("-0.0", "0"),
        ("1e+21", "1000000000000000000000"),
        ("-1.25", "-125e-2"),
        ("0.1", "0.10"),
    ] {
        assert!(same_value(a.as_bytes(), b.as_bytes()), "{a} = {b}");
        assert!(same_value(b.as_bytes(), a.as_bytes()), "{b} = {a}");
    }
    for (a, b) in [
        ("9007199254740993", "9007199254740992"),
        ("12345678901234567890", "12345678901234567000"),
        ("1", "-1"),
        ("1", "10"),
        ("0.1", "0.10000000000000001"),
        ("1e5", "1e-5"),
        ("1e99999999999999999999999", "1e9223372036854775807"),
        ("1e99999999999999999999999", "1e99999999999999999999999"),
        ("1e-99999999999999999999999", "0"),
        ("1", "0"),
        ("1", "1x"),
        ("1.", "1"),
        ("", ""),
        ("-", "-"),
        ("1e", "1"),
    ] {
        if a == b {
            assert!(
                !same_value(a.as_bytes(), b.as_bytes()),
                "{a} is not a number"
            );
        } else {
            assert!(!same_value(a.as_bytes(), b.as_bytes()), "{a} != {b}");
            assert!(!same_value(b.as_bytes(), a.as_bytes()), "{b} != {a}");
        }
    }
}

#[test]
fn canonical_refuses_lossy_bodies() {
    let ok = |body: &str| String::from_utf8(canonical(body.as_bytes()).unwrap()).unwrap();
    assert_eq!(
        ok(r#"{"price": 4.5e2, "name": "Tea", "n": -0}"#),
        r#"{"n":0,"name":"Tea","price":450}"#
    );
    assert_eq!(ok("9007199254740992"), "9007199254740992");
    assert_eq!(ok("[1e21, 1E-7, 0.1]"), "[1e+21,1e-7,0.1]");
    for (body, why) in [
        (r#"{"price":9007199254740993}"#, Refusal::InexactNumber),
        (r#"{"p":12345678901234567890}"#, Refusal::InexactNumber),
        (r#"{"p":-9007199254740993}"#, Refusal::InexactNumber),
        (r#"[0.10000000000000001]"#, Refusal::InexactNumber),
        (r#"[1e-400]"#, Refusal::InexactNumber),
        (
            r#"[1.00000000000000000000000000001]"#,
            Refusal::InexactNumber,
        ),
        (
            r#"{"name":"Bronze","price":100,"name":"Silver"}"#,
            Refusal::DuplicateName,
        ),
        (r#"{"a":{"x":1,"\u0078":1}}"#, Refusal::DuplicateName),
        (r#"[{"a":1},{"a":1,"a":1}]"#, Refusal::DuplicateName),
        (r#"{"name":"#, Refusal::NotJson),
        (r#"[1e400]"#, Refusal::NotJson),
        ("{} x", Refusal::NotJson),
        ("\u{feff}{}", Refusal::NotJson),
    ] {
        assert_eq!(canonical(body.as_bytes()), Err(why), "{body}");
    }
    // Invalid UTF-8 (a Latin-1 `é` inside a string) is not JSON.
    assert_eq!(canonical(b"{\"n\":\"caf\xe9\"}"), Err(Refusal::NotJson));
    // Nesting past serde_json's recursion limit (128) is refused, not a stack overflow.
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(canonical(deep.as_bytes()), Err(Refusal::NotJson));
    let ok_deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    assert_eq!(ok(&ok_deep), ok_deep);
    // Same names in different objects are fine.
    assert_eq!(ok(r#"[{"a":1},{"a":2}]"#), r#"[{"a":1},{"a":2}]"#);
}

proptest! {
    /// The formatter the check uses writes exactly what serde_jcs writes (they must be one
    /// ryu-js version), and every finite double's canonical text passes the check.
    #[test]
    fn check_agrees_with_serde_jcs(bits in any::<u64>()) {
        let value = f64::from_bits(bits);
        prop_assume!(value.is_finite());
        let jcs = serde_jcs::to_vec(&value).unwrap();
        let mut buffer = ryu_js::Buffer::new();
        prop_assert_eq!(buffer.format_finite(value).as_bytes(), &jcs[..]);
        prop_assert_eq!(canonical(&jcs), Ok(jcs.clone()));
    }

    /// Integers below 10^21 (which ES6 writes without an exponent): the check passes exactly
    /// when JCS writes the integer's own digits, and always up to 2^53.
    #[test]
    fn integers_pass_exactly_when_jcs_writes_them(
        n in prop_oneof![
            -999_999_999_999_999_999_999i128..1_000_000_000_000_000_000_000,
            -9_007_199_254_741_992i128..-9_007_199_254_739_992,
            9_007_199_254_739_992i128..9_007_199_254_741_992,
            -1_000_000i128..1_000_000,
        ],
    ) {
        let text = n.to_string();
        #[allow(clippy::cast_precision_loss)]
        let jcs = serde_jcs::to_vec(&(n as f64)).unwrap();
        let ok = canonical(text.as_bytes()).is_ok();
        prop_assert_eq!(ok, jcs == text.as_bytes(), "{}", text);
        if n.unsigned_abs() <= 1 << 53 {
            prop_assert!(ok, "{}", text);
        }
    }

    /// A decimal string with the same value in another spelling compares equal; one digit off,
    /// unequal.
    #[test]
    fn spellings_of_one_value_compare_equal(
        digits in "[1-9][0-9]{0,30}",
        point in 0usize..32,
        exponent in -40i64..40,
        zeros in 0usize..4,
    ) {
        let point = point.min(digits.len());
        let (int, frac) = digits.split_at(point);
        let int = if int.is_empty() { "0" } else { int };
        let frac = format!("{frac}{}", "0".repeat(zeros));
        let a = if frac.is_empty() {
            format!("{int}e{exponent}")
        } else {
            format!("{int}.{frac}e{exponent}")
        };
        let shifted = i64::try_from(point).unwrap() - i64::try_from(digits.len()).unwrap() + exponent;
        let b = format!("{digits}e{shifted}");
        prop_assert!(same_value(a.as_bytes(), b.as_bytes()), "{} = {}", a, b);
        let mut changed = digits.clone().into_bytes();
        let last = changed.len() - 1;
        changed[last] = if changed[last] == b'9' { b'8' } else { changed[last] + 1 };
        let c = format!("{}e{shifted}", String::from_utf8(changed).unwrap());
        prop_assert!(!same_value(a.as_bytes(), c.as_bytes()), "{} != {}", a, c);
    }
}
