//! Property tests of canonical-mode fingerprints, through [`fingerprint`] itself:
//! (a) a re-serialised body (keys shuffled, other whitespace, other number and string
//! spellings) keeps the fingerprint; (b) bodies whose numbers differ in value never share one
//! (beyond 2^53 and past 17 significant digits included); (c) a body with a repeated member
//! name never shares one with its deduplicated forms.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::fingerprint;
use crate::policy::JsonFingerprint;
use crate::settings::Settings;

/// A JSON value whose numbers are exactly the doubles they denote (integers within 2^53 and
/// finite doubles), so every spelling of it has one lossless canonical form.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        (-(1i64 << 53)..=(1i64 << 53)).prop_map(Json::Int),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Json::Float),
        "\\PC{0,8}".prop_map(Json::Str),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map("[a-zA-Z0-9_é\"\\\\]{0,6}", inner, 0..6)
                .prop_map(Json::Object),
        ]
    })
}

/// A small deterministic generator for the spelling choices (proptest supplies the seed).
struct Choices(u64);

impl Choices {
    fn next(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }

    fn space(&mut self, out: &mut String) {
        out.push_str(["", " ", "\n  ", "\t", "\r\n"][self.next(5) as usize]);
    }
}

/// A JSON string literal, some characters written as `\u` escapes.
fn string(s: &str, c: &mut Choices, out: &mut String) {
    out.push('"');
    for ch in s.chars() {
        if c.next(4) == 0 && (ch as u32) < 0x1_0000 {
            out.push_str(&format!("\\u{:04x}", ch as u32));
        } else {
            let quoted = serde_json::to_string(&ch.to_string()).unwrap();
            out.push_str(&quoted[1..quoted.len() - 1]);
        }
    }
    out.push('"');
}

/// One spelling of `value`: object members in a shuffled order, whitespace anywhere it is
/// allowed, numbers as `450`, `450.0`, `4500e-1`, `4.5E2`...
fn write(value: &Json, c: &mut Choices, out: &mut String) {
    c.space(out);
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Int(n) => match c.next(4) {
            0 => out.push_str(&n.to_string()),
            1 => out.push_str(&format!("{n}.0")),
            2 if *n != 0 => out.push_str(&format!("{n}0e-1")),
            2 => out.push_str("0.0e7"),
            _ => out.push_str(&format!("{n}E+0")),
        },
        // Every spelling denotes the decimal JCS writes (ECMAScript's shortest form): when two
        // shortest forms tie (`…269.2` and `…269.3` both round to one double), Rust's `{:e}`
        // may pick the other one, a different decimal value, which the lossless check rightly
        // refuses. So the digits come from `ryu_js` and only their spelling varies.
        Json::Float(f) => {
            let (negative, digits, exponent) = shortest(*f);
            let sign = if negative { "-" } else { "" };
            let (first, rest) = digits.split_at(1);
            match c.next(3) {
                0 => out.push_str(ryu_js::Buffer::new().format_finite(*f)),
                1 if rest.is_empty() => out.push_str(&format!("{sign}{first}e{exponent}")),
                1 => out.push_str(&format!("{sign}{first}.{rest}e{exponent}")),
                // A trailing zero in the fraction and an upper-case `E`: `4.50E2`, `1.0E2`.
                _ => out.push_str(&format!("{sign}{first}.{rest}0E{exponent}")),
            }
        }
        Json::Str(s) => string(s, c, out),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, c, out);
            }
            c.space(out);
            out.push(']');
        }
        Json::Object(members) => {
            let mut order: Vec<_> = members.iter().collect();
            for i in (1..order.len()).rev() {
                order.swap(i, c.next(i as u64 + 1) as usize);
            }
            out.push('{');
            for (i, (name, member)) in order.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                c.space(out);
                string(name, c, out);
                c.space(out);
                out.push(':');
                write(member, c, out);
            }
            c.space(out);
            out.push('}');
        }
    }
    c.space(out);
}

/// The sign, significant digits (no leading or trailing zeros; `"0"` for zero) and decimal
/// exponent of the first digit of `f`'s JCS form: `-1234.5` → `(true, "12345", 3)`.
fn shortest(f: f64) -> (bool, String, i64) {
    let text = ryu_js::Buffer::new().format_finite(f).to_owned();
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest.to_owned()),
        None => (false, text),
    };
    let (mantissa, exp) = match text.split_once('e') {
        Some((m, e)) => (
            m.to_owned(),
            e.trim_start_matches('+').parse::<i64>().unwrap(),
        ),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((&mantissa, ""));
    let all = format!("{int}{frac}");
    let Some(lead) = all.find(|ch| ch != '0') else {
        return (negative, "0".to_owned(), 0);
    };
    let digits = all[lead..].trim_end_matches('0').to_owned();
    // The first significant digit stands at 10^(int.len() - 1 - lead).
    let exponent = exp + int.len() as i64 - 1 - lead as i64;
    (negative, digits, exponent)
}

fn spell(value: &Json, seed: u64) -> String {
    let mut out = String::new();
    write(value, &mut Choices(seed | 1), &mut out);
    out
}

fn fp(body: &str) -> idempotency_core::Fingerprint {
    let settings = Settings {
        json: JsonFingerprint::Canonical,
        ..Settings::default()
    };
    let (parts, ()) = http::Request::post("/orders")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(())
        .unwrap()
        .into_parts();
    fingerprint(&parts, &Bytes::copy_from_slice(body.as_bytes()), &settings)
}

/// A decimal number text with `digits` as its significant digits, the point after `point` of
/// them, and an exponent.
fn number_text(digits: &str, point: usize, exponent: i32) -> String {
    let point = point.min(digits.len());
    let (int, frac) = digits.split_at(point);
    let int = if int.is_empty() { "0" } else { int };
    let mut text = int.to_owned();
    if !frac.is_empty() {
        text.push('.');
        text.push_str(frac);
    }
    if exponent != 0 {
        text.push_str(&format!("e{exponent}"));
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) Re-serialisation keeps the fingerprint, and the canonical form was used.
    #[test]
    fn reserialised_bodies_keep_their_fingerprint(
        value in json(),
        seeds in (any::<u64>(), any::<u64>()),
    ) {
        let (a, b) = (spell(&value, seeds.0), spell(&value, seeds.1));
        prop_assert!(super::canonical_json(a.as_bytes()).is_some(), "{}", a);
        prop_assert_eq!(fp(&a), fp(&b), "{} vs {}", a, b);
    }

    /// (b) Two bodies whose numbers differ in value never share a fingerprint: one digit
    /// changed or one digit more, up to 40 significant digits, anywhere in a document.
    #[test]
    fn bodies_with_different_numbers_differ(
        value in json(),
        digits in "[1-9][0-9]{0,39}",
        point in 0usize..41,
        exponent in -30i32..30,
        change in (any::<prop::sample::Index>(), 1u8..10, any::<bool>()),
        seed in any::<u64>(),
    ) {
        let (at, delta, append) = change;
        let other: String = if append {
            format!("{digits}{delta}")
        } else {
            let at = at.index(digits.len());
            digits
                .char_indices()
                .map(|(i, d)| {
                    if i == at {
                        // 1..=9 added mod 10: another digit; keep the first digit non-zero.
                        let next = (d as u8 - b'0' + delta) % 10;
                        char::from(b'0' + if i == 0 && next == 0 { 1 + delta % 9 } else { next })
                    } else {
                        d
                    }
                })
                .collect()
        };
        prop_assume!(other != digits);
        let (x, y) = (
            number_text(&digits, point, exponent),
            number_text(&other, point, exponent),
        );
        let rest = spell(&value, seed);
        let a = format!(r#"{{"rest":{rest},"price":{x}}}"#);
        let b = format!(r#"{{"price":{y},"rest":{rest}}}"#);
        prop_assert_ne!(fp(&a), fp(&b), "{} vs {}", a, b);
    }

    /// (b) Around 2^53 and in the 19–20 digit range, integers that differ never share one.
    #[test]
    fn large_integers_that_differ_differ(
        base in prop_oneof![
            Just(1u128 << 53),
            Just(12_345_678_901_234_567_890u128),
            Just(u128::from(u64::MAX)),
            (1u128 << 53)..(1u128 << 70),
        ],
        offsets in (-2000i64..2000, -2000i64..2000),
    ) {
        prop_assume!(offsets.0 != offsets.1);
        let n = |o: i64| base.checked_add_signed(i128::from(o)).unwrap();
        let a = format!(r#"{{"price":{}}}"#, n(offsets.0));
        let b = format!(r#"{{"price":{}}}"#, n(offsets.1));
        prop_assert_ne!(fp(&a), fp(&b), "{} vs {}", a, b);
    }

    /// (c) A repeated member name never fingerprints like either deduplicated body.
    #[test]
    fn duplicate_names_differ_from_deduplicated(
        members in prop::collection::btree_map("[a-z]{1,4}", json(), 1..5),
        pick in any::<prop::sample::Index>(),
        earlier in json(),
        seed in any::<u64>(),
    ) {
        let name = members.keys().nth(pick.index(members.len())).unwrap().clone();
        let mut c = Choices(seed | 1);
        // `{name: earlier, ...members}`: the name twice, `earlier` first.
        let mut dup = String::from("{");
        string(&name, &mut c, &mut dup);
        dup.push(':');
        write(&earlier, &mut c, &mut dup);
        for (n, v) in &members {
            dup.push(',');
            string(n, &mut c, &mut dup);
            dup.push(':');
            write(v, &mut c, &mut dup);
        }
        dup.push('}');
        let last_wins = spell(&Json::Object(members.clone()), seed);
        let mut first = members;
        first.insert(name, earlier);
        let first_wins = spell(&Json::Object(first), seed);
        prop_assert_eq!(super::canonical_json(dup.as_bytes()), None);
        prop_assert_ne!(fp(&dup), fp(&last_wins), "{} vs {}", dup, last_wins);
        prop_assert_ne!(fp(&dup), fp(&first_wins), "{} vs {}", dup, first_wins);
    }
}

#[test]
fn shortest_splits_the_jcs_form() {
    assert_eq!(shortest(-1234.5), (true, "12345".to_owned(), 3));
    assert_eq!(shortest(0.000_001), (false, "1".to_owned(), -6));
    assert_eq!(shortest(1e21), (false, "1".to_owned(), 21));
    assert_eq!(shortest(1.5e-7), (false, "15".to_owned(), -7));
    assert_eq!(shortest(0.0), (false, "0".to_owned(), 0));
    assert_eq!(shortest(100.0), (false, "1".to_owned(), 2));
}

/// The tie the property test once found: `1317502790981269.2` and `…269.3` are both shortest
/// forms of one double, but they are two decimal values. JCS writes `.2` (ECMAScript picks the
/// even digit); a body spelling that same decimal another way shares its fingerprint, one
/// spelling `.3` (another decimal) does not.
#[test]
fn a_shortest_form_tie_is_two_decimal_values() {
    assert_eq!(1_317_502_790_981_269.2_f64, 1_317_502_790_981_269.3_f64);
    assert_eq!(
        ryu_js::Buffer::new().format_finite(1_317_502_790_981_269.3),
        "1317502790981269.2"
    );
    let canonical = fp(r#"[{"a":1317502790981269.2}]"#);
    assert_eq!(fp(r#"[ {"a": 1.3175027909812692e15} ]"#), canonical);
    assert_eq!(fp(r#"[{"a":13175027909812692.0E-1}]"#), canonical);
    assert_ne!(fp(r#"[{"a":1317502790981269.3}]"#), canonical);
}
