//! The `Idempotency-Key` header value: an RFC 8941 Item whose value is a String (with optional
//! parameters, ignored), or the bare key Stripe-style clients send.
//!
//! One forward pass over the value: every loop consumes at least one byte or stops, nothing
//! recurses, and every index is checked (`get`), so the work is linear in the value's length
//! and no input panics. The `idempotency_key` fuzz target checks this parser against a model
//! written separately from the RFC text.

use super::{KeyError, MAX_KEY_LEN};

/// Whether `b` is HTTP optional whitespace (RFC 9110 §5.6.3: SP or HTAB).
fn ows(b: u8) -> bool {
    matches!(b, b' ' | b'\t')
}

/// The key named by a header value (see `IdempotencyKey::from_header_value`).
pub(super) fn parse(value: &[u8]) -> Result<String, KeyError> {
    let start = value.iter().position(|&b| !ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| !ows(b))
        .map_or(start, |i| i + 1);
    let trimmed = &value[start..end];
    if trimmed.first() != Some(&b'"') {
        return bare(trimmed, start);
    }
    let mut cursor = Cursor {
        bytes: trimmed,
        at: 0,
        offset: start,
    };
    let key = cursor.string()?;
    cursor.parameters()?;
    if let Some(rest) = cursor.rest() {
        // RFC 8941 §4.2 step 6: anything left after the Item fails parsing. A `,` (after
        // optional whitespace) starts a second list member: say so, it is the common mistake.
        let next = rest.iter().position(|&b| !ows(b)).unwrap_or(0);
        return Err(match rest.get(next) {
            Some(b',') => KeyError::SeveralKeys,
            _ => KeyError::AfterClosingQuote {
                position: cursor.position() + next,
            },
        });
    }
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong { len: key.len() });
    }
    Ok(key)
}

/// A bare key: visible ASCII, as [`super::IdempotencyKey::new`]; `start` is its position in
/// the header value (for error positions).
fn bare(trimmed: &[u8], start: usize) -> Result<String, KeyError> {
    match super::IdempotencyKey::validate(trimmed) {
        Ok(()) => Ok(super::ascii_text(trimmed)),
        // A bare key never holds whitespace, so a `,` beside whitespace in a refused value is
        // a list (`a, b`: two keys, or two header lines joined by HTTP), not a stray byte.
        Err(_) if looks_like_a_list(trimmed) => Err(KeyError::SeveralKeys),
        Err(KeyError::InvalidByte { byte, position }) => Err(KeyError::InvalidByte {
            byte,
            position: position + start,
        }),
        Err(other) => Err(other),
    }
}

/// Whether a `,` stands next to a space or tab (`a, b`, `a ,b`).
fn looks_like_a_list(value: &[u8]) -> bool {
    value
        .windows(2)
        .any(|pair| matches!(pair, [b',', w] | [w, b','] if ows(*w)))
}

/// A position in the trimmed header value, consumed front to back.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where `bytes` starts in the header value (leading whitespace), for error positions.
    offset: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn bump(&mut self) {
        self.at += 1;
    }

    /// Position of the next byte in the header value.
    fn position(&self) -> usize {
        self.offset + self.at
    }

    /// What is left, if anything.
    fn rest(&self) -> Option<&[u8]> {
        self.bytes.get(self.at..).filter(|rest| !rest.is_empty())
    }

    fn invalid_parameter(&self) -> KeyError {
        KeyError::InvalidParameter {
            position: self.position(),
        }
    }

    /// RFC 8941 §4.2.5, Parsing a String, at a `"`: the unescaped text.
    fn string(&mut self) -> Result<String, KeyError> {
        let mut out = String::with_capacity(self.bytes.len().min(MAX_KEY_LEN + 1));
        self.bump(); // the opening quote
        loop {
            let Some(b) = self.peek() else {
                return Err(KeyError::Unterminated);
            };
            match b {
                b'\\' => {
                    let backslash = self.position();
                    self.bump();
                    match self.peek() {
                        Some(e @ (b'"' | b'\\')) => {
                            out.push(e as char);
                            self.bump();
                        }
                        _ => {
                            return Err(KeyError::InvalidEscape {
                                position: backslash,
                            });
                        }
                    }
                }
                b'"' => {
                    self.bump();
                    return Ok(out);
                }
                0x20..=0x7e => {
                    out.push(b as char);
                    self.bump();
                }
                byte => {
                    return Err(KeyError::InvalidByte {
                        byte,
                        position: self.position(),
                    });
                }
            }
        }
    }

    /// RFC 8941 §4.2.3.2, Parsing Parameters: `*( ";" *SP key [ "=" bare-item ] )`, checked
    /// and dropped (the draft defines no parameter; see `from_header_value`).
    fn parameters(&mut self) -> Result<(), KeyError> {
        while self.peek() == Some(b';') {
            self.bump();
            while self.peek() == Some(b' ') {
                self.bump();
            }
            self.parameter_key()?;
            if self.peek() == Some(b'=') {
                self.bump();
                self.bare_item()?;
            }
        }
        Ok(())
    }

    /// RFC 8941 §4.2.3.3, Parsing a Key: `( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" /
    /// "." / "*" )`.
    fn parameter_key(&mut self) -> Result<(), KeyError> {
        match self.peek() {
            Some(b'a'..=b'z' | b'*') => self.bump(),
            _ => return Err(self.invalid_parameter()),
        }
        while let Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*') = self.peek() {
            self.bump();
        }
        Ok(())
    }

    /// RFC 8941 §4.2.3.1, Parsing a Bare Item, for a parameter's value (checked, not kept).
    /// RFC 9651's Date (`@`) and Display String (`%`) are not RFC 8941 items, which the draft
    /// references, so they fail here as in an RFC 8941 parser.
    fn bare_item(&mut self) -> Result<(), KeyError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => {
                // Same grammar as the key's own string; its errors are a parameter's here.
                let at = self.position();
                self.string()
                    .map(drop)
                    .map_err(|_| KeyError::InvalidParameter { position: at })
            }
            Some(b'A'..=b'Z' | b'a'..=b'z' | b'*') => {
                self.token();
                Ok(())
            }
            Some(b':') => self.byte_sequence(),
            Some(b'?') => self.boolean(),
            _ => Err(self.invalid_parameter()),
        }
    }

    /// RFC 8941 §4.2.4, Parsing an Integer or Decimal: at most 15 integer digits, or at most
    /// 12 digits, `.`, and 1 to 3 digits.
    fn number(&mut self) -> Result<(), KeyError> {
        if self.peek() == Some(b'-') {
            self.bump();
        }
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.invalid_parameter());
        }
        let (mut integer_digits, mut fraction_digits, mut decimal) = (0usize, 0usize, false);
        loop {
            match self.peek() {
                Some(b'0'..=b'9') => {
                    if decimal {
                        fraction_digits += 1;
                    } else {
                        integer_digits += 1;
                    }
                }
                Some(b'.') if !decimal => {
                    if integer_digits > 12 {
                        return Err(self.invalid_parameter());
                    }
                    decimal = true;
                }
                _ => break,
            }
            if (!decimal && integer_digits > 15) || (decimal && fraction_digits > 3) {
                return Err(self.invalid_parameter());
            }
            self.bump();
        }
        if decimal && fraction_digits == 0 {
            return Err(self.invalid_parameter());
        }
        Ok(())
    }

    /// RFC 8941 §4.2.6, Parsing a Token, after its first character (ALPHA or `*`, checked by
    /// the caller): `*( tchar / ":" / "/" )`.
    fn token(&mut self) {
        self.bump();
        while let Some(b) = self.peek() {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b);
            if !tchar {
                break;
            }
            self.bump();
        }
    }

    /// RFC 8941 §4.2.7, Parsing a Byte Sequence: `:` base64 `:`. The alphabet is checked and the
    /// content must decode; as the RFC asks ("SHOULD NOT fail"), missing `=` padding and
    /// non-zero pad bits are accepted.
    fn byte_sequence(&mut self) -> Result<(), KeyError> {
        self.bump(); // the opening `:`
        let (mut data, mut padding) = (0usize, 0usize);
        loop {
            match self.peek() {
                Some(b':') => break,
                Some(b'=') if padding < 2 => padding += 1,
                Some(b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/') if padding == 0 => {
                    data += 1;
                }
                _ => return Err(self.invalid_parameter()),
            }
            self.bump();
        }
        // A lone sextet cannot decode; padding only completes a 4-character group.
        let decodes = data % 4 != 1 && (padding == 0 || (data + padding) % 4 == 0);
        if !decodes {
            return Err(self.invalid_parameter());
        }
        self.bump(); // the closing `:`
        Ok(())
    }

    /// RFC 8941 §4.2.8, Parsing a Boolean: `?0` or `?1`.
    fn boolean(&mut self) -> Result<(), KeyError> {
        self.bump();
        match self.peek() {
            Some(b'0' | b'1') => {
                self.bump();
                Ok(())
            }
            _ => Err(self.invalid_parameter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(value: &str) -> Result<String, KeyError> {
        parse(value.as_bytes())
    }

    /// Lists, and two header lines as HTTP joins them, are one distinct error.
    #[test]
    fn several_keys_are_reported_as_such() {
        for value in [
            "t-1, t-2",
            "t-1 ,t-2",
            "t-1,\tt-2",
            "a, b, c",
            "a, \"b\"",
            r#""a", "b""#,
            r#""a","b""#,
            r#""a" , "b""#,
            r#""a";v=1, "b""#,
            r#""a", b"#,
            r#""a","#,
            "8e03978e-40d5-43e8-bc93-6894a57f9324, 8e03978e-40d5-43e8-bc93-6894a57f9324",
        ] {
            assert_eq!(key(value), Err(KeyError::SeveralKeys), "{value}");
        }
        // Not lists: a bare key may hold `,`; whitespace without a comma is a bad byte.
        assert_eq!(key("a,b").as_deref(), Ok("a,b"));
        assert_eq!(
            key("a b"),
            Err(KeyError::InvalidByte {
                byte: b' ',
                position: 1
            })
        );
        // Inside quotes a `, ` is text (RFC 8941: a string split over two lines is unpredictable).
        assert_eq!(key(r#""a, b""#).as_deref(), Ok("a, b"));
    }

    #[test]
    fn parameters_are_parsed_and_ignored() {
        for value in [
            r#""k";a=1"#,
            r#""k";a"#,
            r#""k"; a=1"#,
            r#""k";a=1;b=2"#,
            r#""k";a=1;a=2"#,
            r#""k";*x.y_z-9=?0"#,
            r#""k";a=?1"#,
            r#""k";a=-12.5"#,
            r#""k";a=123456789012345"#,
            r#""k";a=123456789012.123"#,
            r#""k";a="text with \"quotes\"""#,
            r#""k";a=tok/en:1*"#,
            r#""k";a=*"#,
            r#""k";a=:aGVsbG8=:"#,
            r#""k";a=:aGVsbG8:"#,
            r#""k";a=::"#,
            r#"  "k";a=1  "#,
        ] {
            assert_eq!(key(value).as_deref(), Ok("k"), "{value}");
        }
        assert_eq!(key(r#""a b";x"#).as_deref(), Ok("a b"));
    }

    #[test]
    fn malformed_parameters_are_refused_with_their_position() {
        for (value, position) in [
            (r#""k";"#, 4),
            (r#""k";A=1"#, 4),
            (r#""k";1=1"#, 4),
            (r#""k";a="#, 6),
            (r#""k";a=1234567890123456"#, 21),
            (r#""k";a=1234567890123.5"#, 19),
            (r#""k";a=1.2345"#, 11),
            (r#""k";a=1."#, 8),
            (r#""k";a=-"#, 7),
            (r#""k";a=?2"#, 7),
            (r#""k";a=?"#, 7),
            (r#""k";a=:a:"#, 8),
            (r#""k";a=:ab=c:"#, 10),
            (r#""k";a=:abc"#, 10),
            (r#""k";a=:a b:"#, 8),
            (r#""k";a="open"#, 6),
            (r#""k";a=@1659578233"#, 6),
            (r#""k";a=%"x""#, 6),
            (r#""k";a=(1)"#, 6),
        ] {
            assert_eq!(
                key(value),
                Err(KeyError::InvalidParameter { position }),
                "{value}"
            );
        }
    }

    #[test]
    fn text_after_the_item_is_refused() {
        assert_eq!(
            key(r#""k" x"#),
            Err(KeyError::AfterClosingQuote { position: 4 })
        );
        // Parameters follow the string at once (no whitespace before `;`).
        assert_eq!(
            key(r#""k" ;a=1"#),
            Err(KeyError::AfterClosingQuote { position: 4 })
        );
        assert_eq!(
            key(r#""k";a=1 x"#),
            Err(KeyError::AfterClosingQuote { position: 8 })
        );
        assert_eq!(
            key(r#""k";a=tok"en""#),
            Err(KeyError::AfterClosingQuote { position: 9 })
        );
    }

    #[test]
    fn the_key_limits_apply_to_the_string_alone() {
        assert_eq!(key(r#""";a=1"#), Err(KeyError::Empty));
        let long = format!("\"{}\";a=1", "k".repeat(256));
        assert_eq!(key(&long), Err(KeyError::TooLong { len: 256 }));
        // Long parameters do not count against the key.
        let params = format!("\"{}\";a=\"{}\"", "k".repeat(255), "p".repeat(4000));
        assert_eq!(key(&params).map(|k| k.len()), Ok(255));
    }

    use super::super::test_support::quote;

    /// A well-formed RFC 8941 parameter, serialised.
    fn parameter() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            Just(String::new()),
            (-999_999_999_999_999i64..=999_999_999_999_999).prop_map(|n| format!("={n}")),
            (-999_999_999_999i64..=999_999_999_999, 0u16..1000)
                .prop_map(|(i, f)| format!("={i}.{f}")),
            "[ -~]{0,20}".prop_map(|s| format!("={}", quote(&s))),
            "[A-Za-z*][A-Za-z0-9!#$%&'*+.^_`|~:/-]{0,10}".prop_map(|t| format!("={t}")),
            "([A-Za-z0-9+/]{4}){0,4}".prop_map(|b| format!("=:{b}:")),
            prop::bool::ANY.prop_map(|b| format!("=?{}", u8::from(b))),
        ];
        ("[a-z*][a-z0-9_.*-]{0,8}", " {0,2}", value)
            .prop_map(|(name, space, value)| format!(";{space}{name}{value}"))
    }

    proptest! {
        #[test]
        fn a_quoted_key_with_parameters_is_the_key_alone(
            k in "[ -~]{1,255}",
            params in prop::collection::vec(parameter(), 0..5),
        ) {
            let value = format!("{}{}", quote(&k), params.concat());
            prop_assert_eq!(key(&value), Ok(k));
        }

        #[test]
        fn two_joined_header_lines_are_several_keys(
            a in "[!#-+\\--~][!-+\\--~]{0,30}",
            b in "[!-~]{1,30}",
            quote_a in any::<bool>(),
            sep in prop_oneof![Just(", "), Just(" , "), Just(",\t")],
        ) {
            // `a` holds no `,` (bare) so the list is not read as one key with a comma.
            let first = if quote_a { quote(&a) } else { a.clone() };
            let value = format!("{first}{sep}{b}");
            prop_assert_eq!(key(&value), Err(KeyError::SeveralKeys));
        }

        #[test]
        fn parsing_never_panics(v in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&v);
        }
    }
}
