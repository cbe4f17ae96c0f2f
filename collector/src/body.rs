//! Request bodies: decompression with a limit, and splitting into events.

use std::io::Read;

use serde_json::value::RawValue;
use weir_proto::event::{scan, Incoming};

/// Why a body was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// 400: the body is not what the API takes.
    #[error("{0}")]
    Malformed(String),
    /// 413: the body, or what it decompresses to, is over the limit.
    #[error("body is larger than {0} bytes (after decompression); send smaller batches")]
    TooLarge(usize),
    /// 415: an encoding or content type the API does not take.
    #[error("{0}")]
    Unsupported(String),
}

/// The body's format, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON event or a JSON array of events.
    Json,
    /// One JSON event per line.
    Ndjson,
}

/// Picks the format from a `Content-Type` header value.
pub fn format(content_type: Option<&str>) -> Result<Format, BodyError> {
    let Some(ct) = content_type else {
        return Ok(Format::Json);
    };
    let mime = ct.split(';').next().unwrap_or("").trim();
    let is = |names: &[&str]| names.iter().any(|n| mime.eq_ignore_ascii_case(n));
    // curl -d sends form-urlencoded by default; a body that is not JSON still gets a clear
    // 400.
    if is(&[
        "",
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
    ]) {
        Ok(Format::Json)
    } else if is(&["application/x-ndjson", "application/ndjson", "application/jsonl"]) {
        Ok(Format::Ndjson)
    } else {
        Err(BodyError::Unsupported(format!(
            "unsupported Content-Type {:?}: send application/json or application/x-ndjson",
            mime.to_ascii_lowercase()
        )))
    }
}

/// Undoes `Content-Encoding` (none, identity, gzip, zstd), refusing output over `limit`.
pub fn decode(encoding: Option<&str>, body: bytes::Bytes, limit: usize) -> Result<bytes::Bytes, BodyError> {
    let enc = encoding.map(|e| e.trim().to_ascii_lowercase());
    let mut out = Vec::new();
    let read = match enc.as_deref() {
        None | Some("") | Some("identity") => return Ok(body),
        Some("gzip") | Some("x-gzip") => flate2::read::MultiGzDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        Some("zstd") => match zstd::stream::read::Decoder::new(&body[..]) {
            Ok(d) => d.take(limit as u64 + 1).read_to_end(&mut out),
            Err(e) => Err(e),
        },
        Some(other) => {
            return Err(BodyError::Unsupported(format!(
                "unsupported Content-Encoding {other:?}: send gzip, zstd or none"
            )))
        }
    };
    match read {
        Ok(_) if out.len() > limit => Err(BodyError::TooLarge(limit)),
        Ok(_) => Ok(out.into()),
        Err(e) => Err(BodyError::Malformed(format!("cannot decompress the body: {e}"))),
    }
}

/// Deepest JSON nesting accepted (an event is an object of fields; arrays of scalars add
/// one level): anything deeper is refused before it is parsed.
pub const MAX_DEPTH: usize = 64;

/// Checks the nesting depth of JSON text in one pass, without recursion. Strings are
/// skipped with `memchr` (they are most of the bytes), so the cost is in the structure.
fn check_depth(text: &[u8]) -> Result<(), BodyError> {
    let mut depth = 0usize;
    let mut i = 0usize;
    while i < text.len() {
        match text[i] {
            b'"' => {
                // Skip to the closing quote, past escaped characters.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &text[i..]) {
                        Some(off) if text[i + off] == b'\\' => {
                            i += off + 2;
                            if i >= text.len() {
                                return Ok(()); // ends inside a string: the JSON parser says so
                            }
                        }
                        Some(off) => {
                            i += off;
                            break;
                        }
                        None => return Ok(()), // unterminated: the JSON parser says so
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(BodyError::Malformed(format!(
                        "JSON is nested deeper than {MAX_DEPTH} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Splits a body into its events, read. Any structural problem refuses the whole body,
/// so nothing of a malformed request is stored.
///
/// A well-formed body is read in one structural pass, with serde_json checking each value
/// ([`Incoming::scan`]); anything the pass does not take as is goes to the full parser,
/// which reads what is valid and words the error of what is not.
pub fn split(body: &[u8], format: Format) -> Result<Vec<Incoming<'_>>, BodyError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BodyError::Malformed(format!("body is not valid UTF-8 (byte {})", e.valid_up_to())))?;
    match scan_events(text, format) {
        Some(events) => Ok(events),
        None => split_full(text, format),
    }
}

/// [`split`] by the full parser alone.
fn split_full(text: &str, format: Format) -> Result<Vec<Incoming<'_>>, BodyError> {
    split_raw(text, format)?
        .into_iter()
        .enumerate()
        .map(|(i, raw)| Incoming::parse(raw).map_err(|e| BodyError::Malformed(format!("event {i}: {e}"))))
        .collect()
}

/// The fast read of [`split`]: `None` unless the body is valid JSON of the format, with
/// every event an object nested at most [`MAX_DEPTH`] deep.
fn scan_events(text: &str, format: Format) -> Option<Vec<Incoming<'_>>> {
    let b = text.as_bytes();
    let end_of = |j: usize| scan::skip_ws(b, j) == b.len();
    match format {
        Format::Json => {
            let i = scan::skip_ws(b, 0);
            match *b.get(i)? {
                b'[' => {
                    let mut events = Vec::new();
                    let mut j = scan::skip_ws(b, i + 1);
                    if b.get(j) == Some(&b']') {
                        return end_of(j + 1).then_some(events);
                    }
                    loop {
                        let (ev, end) = Incoming::scan(text, j, MAX_DEPTH - 1)?;
                        events.push(ev);
                        j = scan::skip_ws(b, end);
                        match *b.get(j)? {
                            b',' => j = scan::skip_ws(b, j + 1),
                            b']' => return end_of(j + 1).then_some(events),
                            _ => return None,
                        }
                    }
                }
                _ => {
                    let (ev, end) = Incoming::scan(text, i, MAX_DEPTH)?;
                    end_of(end).then(|| vec![ev])
                }
            }
        }
        Format::Ndjson => {
            let mut events = Vec::new();
            for line in text.split('\n') {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let (ev, end) = Incoming::scan(line, 0, MAX_DEPTH)?;
                if end != line.len() {
                    return None;
                }
                events.push(ev);
            }
            (!events.is_empty()).then_some(events)
        }
    }
}

/// The full parser's split into one raw JSON value per event, with its error messages.
fn split_raw(text: &str, format: Format) -> Result<Vec<&RawValue>, BodyError> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(BodyError::Malformed(
            "empty body: send a JSON event, a JSON array or NDJSON".into(),
        ));
    }
    check_depth(text.as_bytes())?;
    match format {
        Format::Json if trimmed.starts_with('[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|e| BodyError::Malformed(format!("invalid JSON: {e}")))?;
            check_objects(&items, "element")?;
            Ok(items)
        }
        Format::Json => {
            let item: &RawValue =
                serde_json::from_str(text).map_err(|e| BodyError::Malformed(format!("invalid JSON: {e}")))?;
            check_objects(std::slice::from_ref(&item), "body")?;
            Ok(vec![item])
        }
        Format::Ndjson => {
            let mut items = Vec::new();
            for (i, line) in text.split('\n').enumerate() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let item: &RawValue = serde_json::from_str(line)
                    .map_err(|e| BodyError::Malformed(format!("line {}: invalid JSON: {e}", i + 1)))?;
                if !item.get().starts_with('{') {
                    return Err(BodyError::Malformed(format!(
                        "line {}: an event must be a JSON object",
                        i + 1
                    )));
                }
                items.push(item);
            }
            if items.is_empty() {
                return Err(BodyError::Malformed("empty body: no events in the NDJSON".into()));
            }
            Ok(items)
        }
    }
}

fn check_objects(items: &[&RawValue], what: &str) -> Result<(), BodyError> {
    for (i, item) in items.iter().enumerate() {
        if !item.get().starts_with('{') {
            return Err(BodyError::Malformed(if what == "body" {
                "the body must be a JSON object (one event) or an array of objects".into()
            } else {
                format!("{what} {i}: an event must be a JSON object")
            }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_typical_body_is_read_by_the_fast_path() {
        let body = weir_proto::catalog::demo_body(100);
        let fast = scan_events(&body, Format::Json).expect("the fast path takes it");
        assert_eq!(
            format!("{fast:?}"),
            format!("{:?}", split_full(&body, Format::Json).unwrap())
        );
    }

    #[test]
    fn splits_each_shape() {
        assert_eq!(split(br#"{"a":1}"#, Format::Json).unwrap().len(), 1);
        assert_eq!(split(br#" [{"a":1},{"b":2}] "#, Format::Json).unwrap().len(), 2);
        assert_eq!(split(b"{\"a\":1}\n\n{\"b\":2}\n", Format::Ndjson).unwrap().len(), 2);
        assert_eq!(split(b"[]", Format::Json).unwrap().len(), 0);
    }

    #[test]
    fn refuses_malformed_bodies() {
        let cases: &[(&[u8], Format, &str)] = &[
            (b"", Format::Json, "empty body"),
            (b"   ", Format::Json, "empty body"),
            (b"not json", Format::Json, "invalid JSON"),
            (b"42", Format::Json, "must be a JSON object"),
            (b"[1]", Format::Json, "element 0: an event must be a JSON object"),
            (b"{\"a\":1}\n{oops\n", Format::Ndjson, "line 2: invalid JSON"),
            (
                b"{\"a\":1}\n[1]\n",
                Format::Ndjson,
                "line 2: an event must be a JSON object",
            ),
            (b"\xff\xfe", Format::Json, "not valid UTF-8"),
        ];
        for (body, f, want) in cases {
            let err = split(body, *f).unwrap_err().to_string();
            assert!(err.contains(want), "{body:?}: {err}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(matches!(
            split(deep.as_bytes(), Format::Json),
            Err(BodyError::Malformed(_))
        ));
    }

    #[test]
    fn nesting_depth_is_limited_without_recursion() {
        // Brackets inside strings (escaped quotes included) do not count.
        let ok = format!(r#"{{"a":"[[[[\"{{{{","b":{}1{}}}"#, "[".repeat(62), "]".repeat(62));
        assert!(split(ok.as_bytes(), Format::Json).is_ok(), "{ok}");
        let too_deep = format!(r#"{{"b":{}1{}}}"#, "[".repeat(64), "]".repeat(64));
        assert_eq!(
            split(too_deep.as_bytes(), Format::Json).unwrap_err().to_string(),
            "JSON is nested deeper than 64 levels"
        );
        // A million levels: refused, no stack involved.
        assert!(check_depth("[".repeat(1_000_000).as_bytes()).is_err());
        // Bodies that end inside a string or right after an escape are left to the parser.
        for tail in [&b"\"\\"[..], b"\"", b"\"ab\\", b"[\"\\\""] {
            assert!(check_depth(tail).is_ok(), "{tail:?}");
            assert!(split(tail, Format::Json).is_err());
        }
    }

    /// A body of `n` events, each with a few envelope keys and fields drawn from `pick`.
    fn body_of(pick: &[u8], format: Format) -> String {
        const VALUES: &[&str] = &[
            r#""s""#,
            "12",
            "-0.5e3",
            "true",
            "null",
            r#"[1,"x",{"k":[]}]"#,
            r#"{"a":{"b":1}}"#,
            r#""q\"u\\o\u00e9""#,
            r#""é ☃""#,
            "[]",
            "{}",
        ];
        const KEYS: &[&str] = &["event", "version", "env", "id", "ts", "fields", "colour", "writeKey"];
        let mut events = Vec::new();
        for chunk in pick.chunks(6) {
            let mut keys = Vec::new();
            for (k, &p) in chunk.iter().enumerate() {
                let key = KEYS[(p as usize + k) % KEYS.len()];
                let value = match key {
                    "fields" => format!(
                        r#"{{"f{p}": {}, "g" :{}}}"#,
                        VALUES[p as usize % VALUES.len()],
                        VALUES[(p as usize / 3) % VALUES.len()]
                    ),
                    "ts" if p % 2 == 0 => r#""2026-11-22T13:04:05Z""#.into(),
                    "version" if p % 2 == 0 => "2".into(),
                    _ => VALUES[p as usize % VALUES.len()].into(),
                };
                keys.push(format!(r#""{key}":{value}"#));
            }
            events.push(format!(
                "{{{}}}",
                keys.join(if chunk[0] % 3 == 0 { " , " } else { "," })
            ));
        }
        match format {
            Format::Json => format!("[{}]", events.join(",\n ")),
            Format::Ndjson => events.join("\n"),
        }
    }

    proptest::proptest! {
        /// The fast read takes a well-formed body, and whatever it takes of a damaged one
        /// it reads exactly as the full parser does; what it does not take, the full
        /// parser decides.
        #[test]
        fn the_fast_read_agrees_with_the_full_parser(
            pick in proptest::collection::vec(0u8..=255, 1..40),
            ndjson in proptest::bool::ANY,
            damage in proptest::option::of((0usize..4000, 0usize..12)),
        ) {
            let format = if ndjson { Format::Ndjson } else { Format::Json };
            let mut body = body_of(&pick, format).into_bytes();
            let whole = body.clone();
            let whole = std::str::from_utf8(&whole).unwrap();
            proptest::prop_assert!(scan_events(whole, format).is_some(), "{whole}");
            if let Some((at, what)) = damage {
                let at = at % (body.len() + 1);
                let insert = [b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b' ', b'x', b'1', 0xff][what];
                if at.is_multiple_of(2) && at < body.len() {
                    body.remove(at);
                } else {
                    body.insert(at, insert);
                }
            }
            let Ok(text) = std::str::from_utf8(&body) else { return Ok(()) };
            if let Some(fast) = scan_events(text, format) {
                let full = split_full(text, format);
                proptest::prop_assert!(full.is_ok(), "fast took what the parser refuses: {text}: {:?}", full.err());
                let full = full.unwrap();
                proptest::prop_assert_eq!(format!("{fast:?}"), format!("{full:?}"), "{}", text);
            }
        }
    }

    #[test]
    fn decompression_is_limited() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b' '; 1 << 20]).unwrap();
        let bomb = bytes::Bytes::from(gz.finish().unwrap());
        assert_eq!(decode(Some("gzip"), bomb.clone(), 1000), Err(BodyError::TooLarge(1000)));
        assert_eq!(decode(Some("gzip"), bomb, 2 << 20).unwrap().len(), 1 << 20);
        let z = bytes::Bytes::from(zstd::encode_all(&b"{\"a\":1}"[..], 1).unwrap());
        assert_eq!(&decode(Some("zstd"), z, 100).unwrap()[..], b"{\"a\":1}");
        assert!(matches!(
            decode(Some("br"), bytes::Bytes::new(), 10),
            Err(BodyError::Unsupported(_))
        ));
        assert!(matches!(
            decode(Some("gzip"), bytes::Bytes::from_static(b"nope"), 10),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            format(Some("application/xml")),
            Err(BodyError::Unsupported(_))
        ));
        assert_eq!(format(Some("application/x-ndjson; charset=utf-8")), Ok(Format::Ndjson));
        assert_eq!(format(Some("application/x-www-form-urlencoded")), Ok(Format::Json));
    }
}
