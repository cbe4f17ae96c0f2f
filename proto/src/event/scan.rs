//! Structural JSON scanning: where a string or value ends, with strings skipped by
//! `memchr`. It validates nothing itself. Its callers check the glue between the pieces
//! it finds (brackets, colons, commas, whitespace) and have serde_json validate every
//! piece, so what they accept is valid JSON; anything irregular sends them to the full
//! parser, whose error message is the one a sender sees.

/// The first index at or after `i` that is not JSON whitespace.
pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The index after the closing quote of the string whose opening quote is at `i`.
pub fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[j] == b'"' {
            return Some(j + 1);
        }
        j += 2;
    }
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
    }
}
