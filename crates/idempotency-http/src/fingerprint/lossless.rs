//! The RFC 8785 (JCS) form of a JSON body, but only when it is **lossless** for that body.
//!
//! JCS writes every number as the shortest ECMAScript form of an IEEE 754 double, and it is
//! defined over I-JSON (RFC 7493), whose object member names are unique. A body outside those
//! rules would be canonicalised into something that means another request:
//! `9007199254740993` and `9007199254740992` both become `9007199254740992` (one double), and
//! `{"name":"Bronze","name":"Silver"}` becomes `{"name":"Silver"}` (the parser keeps the last
//! name). For a fingerprint that is the dangerous direction: a changed request would be replayed
//! the first answer instead of getting `422`. So [`canonical`] refuses such a body, and the
//! caller fingerprints its bytes instead.
//!
//! How: the body is parsed once with serde_json into a [`Value`] through a visitor that refuses
//! a repeated member name, and, beside the parser, a scanner walks the same text and hands out
//! each number token in document order (serde_json visits numbers in that order too). Each
//! parsed number is written as JCS will write it (`ryu-js`, the formatter `serde_jcs` uses) and
//! the decimal value of that text is compared with the decimal value of the token. Equal values
//! are the only ones that pass, so `450`, `450.0` and `4.5e2` (one value) still fingerprint
//! alike, as RFC 8785 §3.2.2.3 intends, while `0.10000000000000001` (not the value `0.1` that
//! JCS writes) does not pass.

use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a body has no lossless canonical form (the fingerprint then takes its bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a JSON text (RFC 8259), invalid UTF-8 included, or nested deeper than serde_json's
    /// recursion limit (128).
    NotJson,
    /// An object has a member name twice (after unescaping): not I-JSON (RFC 7493 §2.3).
    DuplicateName,
    /// A number whose canonical form would denote another value (beyond 2^53, more than 17
    /// significant digits, under- or overflow).
    InexactNumber,
}

impl Refusal {
    /// A label for logs and the fallback counter.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::DuplicateName => "duplicate_name",
            Self::InexactNumber => "inexact_number",
        }
    }
}

/// The JCS form of `body`, or why there is no lossless one.
pub(crate) fn canonical(body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let mut check = Check {
        tokens: NumberTokens { text: body, pos: 0 },
        buffer: ryu_js::Buffer::new(),
        refusal: None,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de
        .deserialize_any(Seed(&mut check))
        .and_then(|value| de.end().map(|()| value));
    let value = match parsed {
        Ok(value) => value,
        Err(_) => return Err(check.refusal.unwrap_or(Refusal::NotJson)),
    };
    // The scanner and the parser saw the same numbers, or the check proved nothing. They agree
    // on every valid JSON text; this guards against a future parser that does not.
    if check.tokens.next().is_some() {
        return Err(Refusal::InexactNumber);
    }
    // Only a non-finite number can fail here, and the visitor never builds one.
    serde_jcs::to_vec(&value).map_err(|_| Refusal::InexactNumber)
}

/// The state shared by the visitors of one body.
struct Check<'a> {
    tokens: NumberTokens<'a>,
    buffer: ryu_js::Buffer,
    refusal: Option<Refusal>,
}

impl Check<'_> {
    /// The next number token must denote exactly `parsed` as JCS writes it.
    fn number<E: de::Error>(&mut self, parsed: f64) -> Result<(), E> {
        let token = self.tokens.next();
        let exact = parsed.is_finite()
            && token.is_some_and(|token| match short_integer(token) {
                // Fast path: below 10^15 < 2^53 every integer is a double, and JCS writes it
                // with its own digits; only the parser's value needs checking.
                #[allow(clippy::cast_precision_loss)]
                Some(n) => n as f64 == parsed,
                None => same_value(token, self.buffer.format_finite(parsed).as_bytes()),
            });
        if exact {
            Ok(())
        } else {
            self.refusal = Some(Refusal::InexactNumber);
            Err(E::custom("number without an exact canonical form"))
        }
    }
}

/// Builds a [`Value`] like serde_json's own, refusing repeated member names and numbers that
/// JCS would change.
struct Seed<'c, 'a>(&'c mut Check<'a>);

impl<'de> DeserializeSeed<'de> for Seed<'_, '_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    // `as f64` is exactly what serde_jcs does with an integer (round to nearest), so the check
    // sees the double that will be written.
    #[allow(clippy::cast_precision_loss)]
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        self.0.number(value as f64)?;
        Ok(Value::Number(value.into()))
    }

    #[allow(clippy::cast_precision_loss)]
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        self.0.number(value as f64)?;
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        self.0.number(value)?;
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Seed(&mut *self.0))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value_seed(Seed(&mut *self.0))?;
            // Names compare after unescaping: `"a"` and `"\u0061"` are one name.
            if members.insert(name, value).is_some() {
                self.0.refusal = Some(Refusal::DuplicateName);
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(members))
    }
}

/// The number tokens of a JSON text, in document order; strings are skipped (with their
/// escapes), `true`/`false`/`null` and punctuation hold no digit or `-`. Meant for a text the
/// parser accepts; on any other it yields something, never panics.
struct NumberTokens<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for NumberTokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            match *self.text.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    loop {
                        let rest = self.text.get(self.pos..)?;
                        let at = memchr::memchr2(b'"', b'\\', rest)?;
                        match rest.get(at)? {
                            // The escaped byte is never the closing quote (`\"`).
                            b'\\' => self.pos += at + 2,
                            _ => {
                                self.pos += at + 1;
                                break;
                            }
                        }
                    }
                }
                b'-' | b'0'..=b'9' => {
                    let start = self.pos;
                    let len = self
                        .text
                        .get(start..)?
                        .iter()
                        .take_while(|b| is_number_byte(**b))
                        .count();
                    self.pos = start + len;
                    return self.text.get(start..self.pos);
                }
                _ => self.pos += 1,
            }
        }
    }
}

/// The value of an integer token of at most 15 digits (`-?[0-9]{1,15}`), else `None`.
fn short_integer(token: &[u8]) -> Option<i64> {
    let (negative, digits) = match token.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, token),
    };
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    Some(if negative { -n } else { n })
}

fn is_number_byte(byte: u8) -> bool {
    matches!(byte, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
}

/// A JSON number's text (RFC 8259 §6), split up; also reads what ryu-js writes (`1e+21`).
struct Decimal<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    /// The written exponent; `None` beyond ±2^63 (a value no double is near, unless the
    /// digits are all zeros).
    exponent: Option<i64>,
}

/// Splits `text` after its leading ASCII digits.
fn digits(text: &[u8]) -> (&[u8], &[u8]) {
    let len = text.iter().take_while(|b| b.is_ascii_digit()).count();
    text.split_at_checked(len).unwrap_or((text, &[]))
}

impl<'a> Decimal<'a> {
    fn parse(text: &'a [u8]) -> Option<Self> {
        let (negative, rest) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let (int, rest) = digits(rest);
        if int.is_empty() {
            return None;
        }
        let (frac, rest) = match rest.split_first() {
            Some((b'.', rest)) => {
                let (frac, rest) = digits(rest);
                if frac.is_empty() {
                    return None;
                }
                (frac, rest)
            }
            _ => (&[][..], rest),
        };
        let (exponent, rest) = match rest.split_first() {
            Some((b'e' | b'E', rest)) => {
                let (negative, rest) = match rest.split_first() {
                    Some((b'-', rest)) => (true, rest),
                    Some((b'+', rest)) => (false, rest),
                    _ => (false, rest),
                };
                let (written, rest) = digits(rest);
                if written.is_empty() {
                    return None;
                }
                let magnitude = written.iter().try_fold(0i64, |acc, d| {
                    acc.checked_mul(10)?.checked_add(i64::from(d - b'0'))
                });
                (magnitude.map(|m| if negative { -m } else { m }), rest)
            }
            _ => (Some(0), rest),
        };
        rest.is_empty().then_some(Self {
            negative,
            int,
            frac,
            exponent,
        })
    }

    fn all_digits(&self) -> impl DoubleEndedIterator<Item = u8> + Clone + '_ {
        self.int.iter().chain(self.frac).copied()
    }

    /// The value in a comparable form.
    fn normal(&self) -> Normal {
        let total = self.int.len() + self.frac.len();
        let lead = self.all_digits().take_while(|d| *d == b'0').count();
        if lead == total {
            return Normal::Zero;
        }
        let trail = self.all_digits().rev().take_while(|d| *d == b'0').count();
        let point = self.exponent.and_then(|exponent| {
            i64::try_from(self.int.len())
                .ok()?
                .checked_sub(i64::try_from(lead).ok()?)?
                .checked_add(exponent)
        });
        match point {
            Some(point) => Normal::Digits {
                lead,
                count: total - lead - trail,
                point,
            },
            None => Normal::Unbounded,
        }
    }
}

/// A decimal value for comparison.
enum Normal {
    /// Zero, of either sign (JCS writes `-0` as `0`).
    Zero,
    /// `0.d1d2… × 10^point`: the significant digits start at `lead` of the written digits,
    /// `count` of them (no trailing zeros).
    Digits {
        lead: usize,
        count: usize,
        point: i64,
    },
    /// A non-zero value with an exponent beyond ±2^63: equal to nothing.
    Unbounded,
}

/// Whether two JSON number texts denote the same decimal value (`-0` and `0` included).
/// A text that is not a JSON number equals nothing.
fn same_value(a: &[u8], b: &[u8]) -> bool {
    let (Some(a), Some(b)) = (Decimal::parse(a), Decimal::parse(b)) else {
        return false;
    };
    match (a.normal(), b.normal()) {
        (Normal::Zero, Normal::Zero) => true,
        (
            Normal::Digits {
                lead: a_lead,
                count: a_count,
                point: a_point,
            },
            Normal::Digits {
                lead: b_lead,
                count: b_count,
                point: b_point,
            },
        ) => {
            a.negative == b.negative
                && a_point == b_point
                && a_count == b_count
                && a.all_digits()
                    .skip(a_lead)
                    .take(a_count)
                    .eq(b.all_digits().skip(b_lead).take(b_count))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
