//! Structural JSON scanning: where a string or value ends, with strings skipped by
//! `memchr`. [`skip_ws`], [`string_end`] and [`value_end`] validate nothing; the
//! `*_exact` functions check the common pieces (strings without escapes, numbers, `true`,
//! `false`, `null`) exactly as RFC 8259 has them, and say `None` for anything else. Their
//! callers check the glue between the pieces (brackets, colons, commas, whitespace) and
//! have serde_json validate every other piece, so what they accept is valid JSON;
//! anything irregular sends them to the full parser, whose error message is the one a
//! sender sees.

/// The first index at or after `i` that is not JSON whitespace.
pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The index after the closing quote of the string whose opening quote is at `i`.
pub fn string_end(b: &[u8], i: usize) -> Option<usize> {
    string_scan(b, i).map(|(end, _)| end)
}

/// The string whose opening quote is at `b[i]`: the index after its closing quote, and
/// whether it is plain (no escapes, no control characters: its value is exactly the
/// bytes between its quotes). Eight bytes at a time while none of them is a quote, a
/// backslash or a control character; past 64 bytes `memchr` skips to the next quote or
/// backslash.
pub fn string_scan(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut plain = true;
    loop {
        if j - i > 64 {
            let rest = b.get(j..)?;
            let q = memchr::memchr2(b'"', b'\\', rest)?;
            // No early exit: the loop is vectorised, and a control character is rare.
            plain &= !rest[..q].iter().fold(false, |seen, &c| seen | (c < 0x20));
            j += q;
        } else if let Some(word) = b.get(j..j + 8) {
            match special(u64::from_le_bytes(word.try_into().ok()?)) {
                0 => {
                    j += 8;
                    continue;
                }
                // The lowest flag is exact: the first byte to stop at.
                mask => j += mask.trailing_zeros() as usize / 8,
            }
        }
        match *b.get(j)? {
            b'"' => return Some((j + 1, plain)),
            b'\\' => {
                plain = false;
                j += 2;
            }
            c => {
                plain &= c >= 0x20;
                j += 1;
            }
        }
    }
}

/// Flags (the high bit of a byte) the bytes of `word` that are a quote, a backslash or
/// below 0x20, the bytes a string scan must stop at, without looking at each. The
/// lowest flag is always exact; flags above a flagged byte may be false.
fn special(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero exactly when its high bit is set in `zero(x)`.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    // Bytes under 0x20 (ASCII only: UTF-8 bytes have their own high bit set).
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\'))) | control
}

/// The index after the value that starts at `i`, when no more than `depth_left` brackets
/// open inside it. Strings and brackets are matched by count, not kind: serde_json
/// checks each piece afterwards.
pub fn value_end(b: &[u8], i: usize, depth_left: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => {
                        depth += 1;
                        if depth > depth_left {
                            return None;
                        }
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The index after the closing quote of the string at `b[i]` when it is plain: no
/// escapes and no control characters, so that its value is exactly the bytes between its
/// quotes. `None` for any other string (the caller asks serde_json) and for no string.
pub fn plain_string_exact(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    match string_scan(b, i)? {
        (end, true) => Some(end),
        (_, false) => None,
    }
}

/// The index after the JSON number at `b[i]`: `-`? (`0` | `[1-9][0-9]*`) (`.` digits)?
/// ([`eE`] [`+-`]? digits)?, and nothing else (no `+`, no leading zeros, no `1.`).
pub fn number_exact(b: &[u8], i: usize) -> Option<usize> {
    let digits = |mut j: usize| {
        while matches!(b.get(j), Some(b'0'..=b'9')) {
            j += 1;
        }
        j
    };
    let mut j = i + usize::from(b.get(i) == Some(&b'-'));
    j = match b.get(j)? {
        b'0' => j + 1,
        b'1'..=b'9' => digits(j + 1),
        _ => return None,
    };
    if b.get(j) == Some(&b'.') {
        let end = digits(j + 1);
        if end == j + 1 {
            return None;
        }
        j = end;
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let end = digits(j);
        if end == j {
            return None;
        }
        j = end;
    }
    Some(j)
}

/// The index after the scalar at `b[i]` when it is a plain string, a number, `true`,
/// `false` or `null`, each checked exactly; `None` for anything else (a string with
/// escapes, an object, an array, invalid JSON).
pub fn scalar_exact(b: &[u8], i: usize) -> Option<usize> {
    let literal = |word: &[u8]| b.get(i..)?.starts_with(word).then_some(i + word.len());
    match *b.get(i)? {
        b'"' => plain_string_exact(b, i),
        b'-' | b'0'..=b'9' => number_exact(b, i),
        b't' => literal(b"true"),
        b'f' => literal(b"false"),
        b'n' => literal(b"null"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_of_values() {
        let b = br#"{"a":"x\"}","b":[1,{"c":"]"}]} tail"#;
        assert_eq!(value_end(b, 0, 8), Some(b.len() - 5));
        assert_eq!(value_end(b, 0, 2), None, "three levels open inside");
        assert_eq!(string_end(br#""ab\\"x"#, 0), Some(6));
        assert_eq!(string_end(br#""ab\"#, 0), None);
        assert_eq!(value_end(b"12.5e3,", 0, 1), Some(6));
        assert_eq!(value_end(b"[1,2", 0, 4), None);
        assert_eq!(skip_ws(b" \t\r\nx", 0), 4);
        let long = format!("\"{}\\\"{}\"", "a".repeat(40), "b".repeat(40));
        assert_eq!(string_scan(long.as_bytes(), 0), Some((long.len(), false)));
        let long = format!("\"{}\u{1}{}\"", "a".repeat(40), "b".repeat(40));
        assert_eq!(string_scan(long.as_bytes(), 0), Some((long.len(), false)));
        assert_eq!(special(u64::from_le_bytes(*b"abc \xc3\xa9~\x7f")), 0);
        assert_eq!(special(u64::from_le_bytes(*b"abcdefg\"")).trailing_zeros() / 8, 7);
        assert_eq!(special(u64::from_le_bytes(*b"ab\\\x00efgh")).trailing_zeros() / 8, 2);
        let long = format!("\"{}\" tail", "é".repeat(40));
        assert_eq!(string_scan(long.as_bytes(), 0), Some((long.len() - 5, true)));
    }

    /// The plain byte-by-byte scan [`string_scan`] must agree with.
    fn string_scan_bytewise(b: &[u8]) -> Option<(usize, bool)> {
        let (mut j, mut plain) = (1, true);
        loop {
            match *b.get(j)? {
                b'"' => return Some((j + 1, plain)),
                b'\\' => {
                    plain = false;
                    j += 2;
                }
                c => {
                    plain &= c >= 0x20;
                    j += 1;
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_string_scan_agrees_with_a_byte_by_byte_one(
            body in proptest::collection::vec(proptest::sample::select(&b"ab \"\\\x01\x1f\x7f\xc3\xa9/"[..]), 0..150),
        ) {
            let mut s = vec![b'"'];
            s.extend(&body);
            proptest::prop_assert_eq!(string_scan(&s, 0), string_scan_bytewise(&s));
        }
    }

    #[test]
    fn exact_pieces_are_exactly_json() {
        for ok in ["0", "-0", "12", "-12.5", "1e9", "1E+9", "2.5e-3", "0.0"] {
            assert_eq!(number_exact(ok.as_bytes(), 0), Some(ok.len()), "{ok}");
        }
        for bad in ["+1", "-", "1.", ".5", "1e", "1e+", "-a"] {
            let end = number_exact(bad.as_bytes(), 0);
            assert!(end.is_none_or(|e| e < bad.len()), "{bad}: {end:?}");
        }
        assert_eq!(number_exact(b"012", 0), Some(1), "a leading zero ends the number");
        assert_eq!(plain_string_exact(br#""abc" x"#, 0), Some(5));
        assert_eq!(plain_string_exact(br#""a\"b""#, 0), None, "escapes go to serde_json");
        assert_eq!(plain_string_exact(b"\"a\tb\"", 0), None, "a raw tab is not JSON");
        assert_eq!(plain_string_exact(br#""abc"#, 0), None);
        assert_eq!(scalar_exact(b"true,", 0), Some(4));
        assert_eq!(scalar_exact(b"nul", 0), None);
        assert_eq!(scalar_exact(b"[1]", 0), None);
    }
}
