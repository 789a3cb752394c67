//! Lower-case hex for tokens and fingerprints, without intermediate strings: records are encoded
//! and decoded on every store round trip, and the generic `hex` iterators cost several times
//! more than these table loops (visible in callgrind profiles of `cargo xtask bench`).

/// The two lower-case hex digits of every byte value: one table load per byte instead of two
/// nibble lookups.
static PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0x0f]];
        i += 1;
    }
    table
};

/// The digits of the first 32 bytes at most, written into `buf`; returns how many digits
/// (callers hand it chunks of 32 bytes).
fn hex_chunk(bytes: &[u8], buf: &mut [u8; 64]) -> usize {
    hex_into(bytes, buf);
    bytes.len().min(32) * 2
}

/// Append the lower-case hex of `bytes` to `out`.
///
/// Digits are written into a stack buffer and appended 64 at a time: `String::push` per digit
/// (a capacity check and a UTF-8 encoding each) cost ~3× more (`cargo xtask instructions`).
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(buf.len() / 2) {
        let len = hex_chunk(chunk, &mut buf);
        // Only ASCII digits were written: the check cannot fail.
        if let Ok(text) = std::str::from_utf8(&buf[..len]) {
            out.push_str(text);
        }
    }
}

/// Append the lower-case hex of `bytes` to a byte buffer (the record encoder's; no UTF-8
/// check per piece).
pub(crate) fn extend_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(buf.len() / 2) {
        let len = hex_chunk(chunk, &mut buf);
        out.extend_from_slice(&buf[..len]);
    }
}

/// The lower-case hex of `bytes` into `out` (which holds `2 * bytes.len()` digits; extra bytes
/// on either side are left alone).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(byte)]);
    }
}

/// The lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Not a hex digit, in [`NIBBLES`].
const INVALID: u8 = 0xff;

/// The value of each byte as a hex digit (either case), or [`INVALID`].
static NIBBLES: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 256 {
        let digit = i as u8;
        table[i] = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            b'A'..=b'F' => digit - b'A' + 10,
            _ => INVALID,
        };
        i += 1;
    }
    table
};

/// Exactly `2 * N` hex digits (either case) to `N` bytes.
pub(crate) fn from_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut invalid = 0u8;
    for (i, byte) in out.iter_mut().enumerate() {
        // In bounds: `text` holds exactly 2 * N digits.
        let (high, low) = (
            NIBBLES[usize::from(text[2 * i])],
            NIBBLES[usize::from(text[2 * i + 1])],
        );
        // Valid nibbles are below 16: any high bit set marks an invalid digit.
        invalid |= high | low;
        *byte = (high << 4) | (low & 0x0f);
    }
    (invalid & 0xf0 == 0).then_some(out)
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
        // Longer than one 64-digit chunk of push_hex.
        let long: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&long), hex::encode(&long));
        let mut into = String::from("x");
        push_hex(&mut into, &[0xab; 33]);
        assert_eq!(into, format!("x{}", "ab".repeat(33)));
        let mut bytes = b"y".to_vec();
        extend_hex(&mut bytes, &long);
        assert_eq!(bytes, format!("y{}", hex::encode(&long)).into_bytes());
    }

    proptest! {
        /// Same answers as the `hex` crate for any input.
        #[test]
        fn agrees_with_the_hex_crate(bytes in proptest::collection::vec(any::<u8>(), 0..80),
                                     text in "[0-9a-fA-Fg+ ]{0,34}") {
            prop_assert_eq!(to_hex(&bytes), hex::encode(&bytes));
            let mut extended = Vec::new();
            extend_hex(&mut extended, &bytes);
            prop_assert_eq!(extended, hex::encode(&bytes).into_bytes());
            let mut theirs = [0u8; 16];
            let expected = hex::decode_to_slice(&text, &mut theirs).ok().map(|()| theirs);
            prop_assert_eq!(from_hex::<16>(text.as_bytes()), expected);
        }
    }
}
