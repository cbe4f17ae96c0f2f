//! Request bodies: decompression with a limit, and splitting into events.

use std::io::Read;

use serde_json::value::RawValue;

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
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        // curl -d sends form-urlencoded by default; a body that is not JSON still gets
        // a clear 400.
        "" | "application/json" | "text/plain" | "application/x-www-form-urlencoded" => Ok(Format::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Format::Ndjson),
        other => Err(BodyError::Unsupported(format!(
            "unsupported Content-Type {other:?}: send application/json or application/x-ndjson"
        ))),
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

/// Splits a body into one raw JSON value per event. Any structural problem refuses the
/// whole body, so nothing of a malformed request is stored.
pub fn split(body: &[u8], format: Format) -> Result<Vec<&RawValue>, BodyError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BodyError::Malformed(format!("body is not valid UTF-8 (byte {})", e.valid_up_to())))?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(BodyError::Malformed(
            "empty body: send a JSON event, a JSON array or NDJSON".into(),
        ));
    }
    check_depth(body)?;
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
