//! Lower-case hex for tokens and fingerprints, without intermediate strings: records are encoded
//! and decoded on every store round trip, and the generic `hex` iterators cost several times
//! more than these table loops (visible in callgrind profiles of `cargo xtask bench`).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Append the lower-case hex of `bytes` to `out`.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

/// The lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Exactly `2 * N` hex digits (either case) to `N` bytes.
pub(crate) fn from_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(to_hex(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
        assert_eq!(from_hex::<2>(b"9FA0"), Some([0x9f, 0xa0]));
        assert_eq!(from_hex::<2>(b"9fa"), None);
        assert_eq!(from_hex::<2>(b"9fa0a"), None);
        assert_eq!(from_hex::<2>(b"9fg0"), None);
        assert_eq!(from_hex::<1>(b"+1"), None);
    }

    proptest! {
        /// Same answers as the `hex` crate for any input.
        #[test]
        fn agrees_with_the_hex_crate(bytes in proptest::collection::vec(any::<u8>(), 0..40),
                                     text in "[0-9a-fA-Fg+ ]{0,34}") {
            prop_assert_eq!(to_hex(&bytes), hex::encode(&bytes));
            let mut theirs = [0u8; 16];
            let expected = hex::decode_to_slice(&text, &mut theirs).ok().map(|()| theirs);
            prop_assert_eq!(from_hex::<16>(text.as_bytes()), expected);
        }
    }
}
