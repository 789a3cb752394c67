//! Query strings: `application/x-www-form-urlencoded` pairs as bytes (path-form arguments and the
//! `_token` parameter are binary safe, so nothing here goes through `str`).

use percent_encoding::percent_decode;

/// Query-string pairs, decoded (`+` is a space, `%XX` escapes), in order; empty pieces skipped.
pub(crate) fn query_pairs(query: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    fn decode(text: &str) -> Vec<u8> {
        let spaced = text.replace('+', " ");
        percent_decode(spaced.as_bytes()).collect()
    }
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| match piece.split_once('=') {
            Some((key, value)) => (decode(key), Some(decode(value))),
            None => (decode(piece), None),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_decoded_in_order() {
        let pairs = query_pairs("EX=100&&NX&k=a+b%2B&e=&%FF=%00");
        assert_eq!(
            pairs,
            vec![
                (b"EX".to_vec(), Some(b"100".to_vec())),
                (b"NX".to_vec(), None),
                (b"k".to_vec(), Some(b"a b+".to_vec())),
                (b"e".to_vec(), Some(Vec::new())),
                (vec![0xff], Some(vec![0])),
            ]
        );
    }
}
