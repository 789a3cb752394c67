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
///
/// Eight digits at a time in one `u64` ([`eight_digits`]), then a byte at a time for the rest
/// (tokens and fingerprints have none): the table loop alone cost ~13 instructions per byte,
/// ~640 per record decoded (`cargo xtask instructions`, the conflict and replay paths).
pub(crate) fn from_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let (words, tail) = text.as_chunks::<8>();
    let (quads, tail_out) = out.as_chunks_mut::<4>();
    let mut wrong = 0u64;
    for (digits, quad) in words.iter().zip(quads) {
        let (value, not_hex) = eight_digits(u64::from_le_bytes(*digits));
        *quad = value.to_le_bytes();
        wrong |= not_hex;
    }
    let mut invalid = 0u8;
    for (pair, byte) in tail.chunks_exact(2).zip(tail_out) {
        let (high, low) = (NIBBLES[usize::from(pair[0])], NIBBLES[usize::from(pair[1])]);
        // Valid nibbles are below 16: any high bit set marks an invalid digit.
        invalid |= high | low;
        *byte = (high << 4) | (low & 0x0f);
    }
    (wrong == 0 && invalid & 0xf0 == 0).then_some(out)
}

/// `0x01` in every byte of a word.
pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte of a word.
pub(crate) const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Per byte of `word` (every byte below `0x80`): `0x80` where the byte is `>= n`, else 0. No
/// borrow crosses bytes: each byte is at least `0x80` before `n < 0x80` is subtracted.
pub(crate) const fn at_least(word: u64, n: u8) -> u64 {
    ((word | HIGHS) - ONES * n as u64) & HIGHS
}

/// Eight hex digits (either case; the first digit in the lowest byte, as
/// `u64::from_le_bytes` loads them) to the four bytes they spell (the first byte lowest, for
/// `u32::to_le_bytes`), and a mask that is 0 exactly when all eight were hex digits (the
/// value is garbage if not). Branch-free.
fn eight_digits(word: u64) -> (u32, u64) {
    // `| 0x20` folds `A-F` onto `a-f`; no other ASCII byte lands in `a-f` (it sets no 0x40).
    let folded = word | (ONES * 0x20);
    let digit = at_least(word, b'0') & !at_least(word, b'9' + 1);
    let letter = at_least(folded, b'a') & !at_least(folded, b'f' + 1);
    // A byte from 0x80 up, or one that is neither a digit nor a letter.
    let not_hex = (word & HIGHS) | ((digit | letter) ^ HIGHS);
    // A digit's value is its low nibble; a letter's is its low nibble + 9 (`a`/`A` = 1 + 9).
    let nibbles = (word & (ONES * 0x0f)) + (letter >> 7) * 9;
    // Byte 2i is the high nibble of output byte i, byte 2i + 1 its low nibble.
    let pairs = ((nibbles << 4) | (nibbles >> 8)) & 0x00ff_00ff_00ff_00ff;
    let quads = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    // Truncation intended: the four bytes were gathered into the low 32 bits.
    let value = (quads | (quads >> 16)) as u32;
    (value, not_hex)
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
        let mut bytes = vec![b'y'; 1 + 2 * long.len() + 1];
        hex_into(&long, &mut bytes[1..]);
        assert_eq!(bytes, format!("y{}y", hex::encode(&long)).into_bytes());
    }

    proptest! {
        /// Same answers as the `hex` crate for any input.
        #[test]
        fn agrees_with_the_hex_crate(bytes in proptest::collection::vec(any::<u8>(), 0..80),
                                     text in "[0-9a-fA-Fg+ ]{0,34}") {
            prop_assert_eq!(to_hex(&bytes), hex::encode(&bytes));
            let mut into = vec![0u8; 2 * bytes.len()];
            hex_into(&bytes, &mut into);
            prop_assert_eq!(into, hex::encode(&bytes).into_bytes());
            let mut theirs = [0u8; 16];
            let expected = hex::decode_to_slice(&text, &mut theirs).ok().map(|()| theirs);
            prop_assert_eq!(from_hex::<16>(text.as_bytes()), expected);
            // Every width the word-at-a-time loop and its byte-at-a-time tail can meet.
            let mut theirs = [0u8; 5];
            let expected = hex::decode_to_slice(&text, &mut theirs).ok().map(|()| theirs);
            prop_assert_eq!(from_hex::<5>(text.as_bytes()), expected);
        }

        /// Every byte value in every position of a word: 32 digits of which one is arbitrary.
        #[test]
        fn one_odd_byte_anywhere(at in 0usize..32, odd in any::<u8>(), bytes in any::<[u8; 16]>()) {
            let mut text = hex::encode(bytes).into_bytes();
            text[at] = odd;
            let mut theirs = [0u8; 16];
            let expected = hex::decode_to_slice(&text, &mut theirs).ok().map(|()| theirs);
            prop_assert_eq!(from_hex::<16>(&text), expected);
            let upper = hex::encode_upper(bytes);
            prop_assert_eq!(from_hex::<16>(upper.as_bytes()), Some(bytes));
        }
    }
}

/// breaker6: exhaustive checks of the word-at-a-time decoder against the `hex` crate.
#[cfg(test)]
mod breaker6 {
    use super::*;

    fn theirs<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        hex::decode_to_slice(text, &mut out).ok().map(|()| out)
    }

    /// Every byte value at every position of one word, one word plus a tail, and two words
    /// plus a tail, the other digits valid in both cases.
    #[test]
    fn every_byte_value_at_every_position() {
        fn check<const N: usize>() {
            let bytes: Vec<u8> = (0..N)
                .map(|i| (i as u8).wrapping_mul(0x3b) ^ 0xa5)
                .collect();
            for base in [hex::encode(&bytes), hex::encode_upper(&bytes)] {
                for at in 0..2 * N {
                    for odd in 0..=255u8 {
                        let mut text = base.clone().into_bytes();
                        text[at] = odd;
                        assert_eq!(from_hex::<N>(&text), theirs::<N>(&text), "{at} {odd:#x}");
                    }
                }
            }
        }
        check::<1>();
        check::<3>();
        check::<4>();
        check::<5>();
        check::<11>();
        check::<16>();
        check::<32>();
    }

    /// Every pair of byte values in one 8-digit word (all 65 536 pairs at three position pairs):
    /// two invalid bytes never cancel out in the mask, and a high byte never passes as a digit.
    #[test]
    fn every_pair_of_byte_values_in_a_word() {
        for (i, j) in [(0, 1), (3, 4), (6, 7)] {
            for a in 0..=255u8 {
                for b in 0..=255u8 {
                    let mut text = *b"9fA0c3E1";
                    text[i] = a;
                    text[j] = b;
                    assert_eq!(
                        from_hex::<4>(&text),
                        theirs::<4>(&text),
                        "{i}:{a:#x} {j}:{b:#x}"
                    );
                }
            }
        }
    }

    /// Odd and wrong lengths are refused for every width.
    #[test]
    fn wrong_lengths() {
        let text = "0123456789abcdefABCDEF0123456789abcdef0123456789abcdef0123456789ab";
        for len in 0..text.len() {
            let t = &text.as_bytes()[..len];
            assert_eq!(from_hex::<16>(t), theirs::<16>(t), "{len}");
            assert_eq!(from_hex::<32>(t), theirs::<32>(t), "{len}");
            assert_eq!(from_hex::<5>(t), theirs::<5>(t), "{len}");
        }
    }
}
