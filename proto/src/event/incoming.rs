//! Events as sent: [`Incoming::parse`] reads one JSON event without copying — names
//! borrow from the request body and field values stay raw JSON until validation looks
//! at them.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::scan;
use super::time::parse_timestamp;

/// A string that borrows from the input when it has no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CowStr<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// One event as sent, before validation.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// The event's JSON exactly as sent.
    pub raw: &'a str,
    /// `event`, when it was a string.
    pub event: Option<Cow<'a, str>>,
    /// `version`, when it was a positive integer.
    pub version: Option<u32>,
    /// `env`, when it was a string.
    pub env: Option<Cow<'a, str>>,
    /// `id`, when it was a string.
    pub id: Option<Cow<'a, str>>,
    /// `ts` in microseconds since the epoch, when valid.
    pub ts: Option<i64>,
    /// `fields` as (name, raw JSON value: valid JSON, exactly as sent), in the order sent.
    pub fields: Vec<(Cow<'a, str>, &'a str)>,
    /// The `fields` object exactly as sent, when it was an object.
    pub fields_raw: Option<&'a str>,
    /// Problems with the envelope itself (wrong types, unknown keys), each naming the key.
    pub problems: Vec<String>,
}

/// Longest accepted `id`.
pub const MAX_ID_LEN: usize = 128;

impl<'a> Incoming<'a> {
    /// Reads one event. Fails only when the JSON is not an object; every other problem
    /// is recorded in `problems` so the validation policy can decide.
    pub fn parse(raw: &'a RawValue) -> Result<Incoming<'a>, String> {
        let text = raw.get();
        if !text.starts_with('{') {
            return Err("an event must be a JSON object".into());
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let mut ev = Incoming::empty(text);
        de.deserialize_map(EnvelopeVisitor(&mut ev))
            .map_err(|e| e.to_string())?;
        Ok(ev)
    }

    /// Reads the event whose JSON object starts at `text[i]`, with at most `depth_left`
    /// levels of nesting from its own brackets on, in one structural pass plus
    /// serde_json over each value (the full parser first checks the whole text, then
    /// each value again). Returns the event, as [`Incoming::parse`] reads it, and the
    /// index after it; `None` when anything is irregular (invalid JSON, too deep): the
    /// caller then uses the full parser, which says what is wrong.
    pub fn scan(text: &'a str, i: usize, depth_left: usize) -> Option<(Incoming<'a>, usize)> {
        let b = text.as_bytes();
        if b.get(i) != Some(&b'{') || depth_left == 0 {
            return None;
        }
        let mut ev = Incoming::empty("");
        let mut j = scan::skip_ws(b, i + 1);
        if b.get(j) != Some(&b'}') {
            loop {
                if b.get(j) != Some(&b'"') {
                    return None;
                }
                let (key, key_end) = string_at(text, j)?;
                j = scan::skip_ws(b, key_end);
                if b.get(j) != Some(&b':') {
                    return None;
                }
                j = scan::skip_ws(b, j + 1);
                // The fields object is read as its end is found (one pass over it).
                let fields = match (&*key, ev.fields_raw) {
                    ("fields", None) if b.get(j) == Some(&b'{') && depth_left >= 2 => {
                        fields_at(text, j, depth_left - 2, &mut ev.fields)
                    }
                    _ => None,
                };
                let end = match fields {
                    Some(end) => {
                        ev.fields_raw = text.get(j..end);
                        end
                    }
                    None => {
                        let (parsed, end) = match b.get(j) {
                            Some(b'"') => string_at(text, j).map(|(v, end)| (Some(v), end))?,
                            _ => (None, scan::value_end(b, j, depth_left - 1)?),
                        };
                        ev.key(&key, text.get(j..end)?, parsed, false).ok()?;
                        end
                    }
                };
                j = scan::skip_ws(b, end);
                match b.get(j)? {
                    b',' => j = scan::skip_ws(b, j + 1),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        ev.raw = text.get(i..=j)?;
        Some((ev, j + 1))
    }

    fn empty(raw: &'a str) -> Incoming<'a> {
        Incoming {
            raw,
            event: None,
            version: None,
            env: None,
            id: None,
            ts: None,
            fields: Vec::new(),
            fields_raw: None,
            problems: Vec::new(),
        }
    }

    /// Records the envelope key `key` with the value `text` (`parsed`: its value when the
    /// caller read it as a string already). `checked` says the full parser already found
    /// `text` valid JSON; when not, it is checked here, and invalid JSON is
    /// [`Irregular`] (the caller falls back to the full parser).
    fn key(&mut self, key: &str, text: &'a str, parsed: Option<Cow<'a, str>>, checked: bool) -> Result<(), Irregular> {
        let valid = |t: &str| checked || serde_json::from_str::<de::IgnoredAny>(t).is_ok();
        let mut parsed = parsed;
        let mut string = |t: &'a str| parsed.take().or_else(|| json_string(t));
        let problem = |ev: &mut Incoming<'a>, p: String| {
            ev.problems.push(p);
            Ok(())
        };
        match key {
            "event" | "env" => match string(text) {
                Some(s) if key == "event" => self.event = Some(s),
                Some(s) => self.env = Some(s),
                None if valid(text) => return problem(self, format!("{key}: must be a string")),
                None => return Err(Irregular),
            },
            "id" => match string(text) {
                Some(s) if !s.is_empty() && s.len() <= MAX_ID_LEN => self.id = Some(s),
                Some(_) => return problem(self, id_problem()),
                None if valid(text) => return problem(self, id_problem()),
                None => return Err(Irregular),
            },
            "version" => match json_u64(text) {
                Ok(v) if v >= 1 && v <= u32::MAX as u64 => self.version = Some(v as u32),
                _ if text == "null" => {}
                Ok(_) => return problem(self, "version: must be a positive integer".into()),
                Err(_) if valid(text) => return problem(self, "version: must be a positive integer".into()),
                Err(_) => return Err(Irregular),
            },
            "ts" => match serde_json::from_str::<&'a RawValue>(text) {
                Ok(value) => match parse_timestamp(value.get()) {
                    Ok(ts) => self.ts = ts,
                    Err(e) => return problem(self, format!("ts: {e}")),
                },
                Err(_) if checked => return problem(self, "ts: not valid JSON".into()),
                Err(_) => return Err(Irregular),
            },
            "fields" => {
                if text != "null" {
                    let mut fields = std::mem::take(&mut self.fields);
                    match parse_fields_into(text, &mut fields) {
                        Ok(()) => {
                            self.fields = fields;
                            self.fields_raw = Some(text);
                        }
                        Err(_) if checked || (!text.starts_with('{') && valid(text)) => {
                            return problem(self, "fields: must be a JSON object".into())
                        }
                        Err(_) => return Err(Irregular),
                    }
                }
            }
            // The proxy's write key may ride in the body (sendBeacon cannot set
            // headers); it is authentication, not event data.
            "writeKey" if valid(text) => {}
            other if valid(text) => {
                return problem(
                    self,
                    format!("{other}: unknown key (an event has event, version, env, id, ts and fields)"),
                )
            }
            _ => return Err(Irregular),
        }
        Ok(())
    }
}

/// JSON the fast scan does not take as is.
struct Irregular;

fn id_problem() -> String {
    format!("id: must be a non-empty string of at most {MAX_ID_LEN} bytes (a UUID is best)")
}

struct EnvelopeVisitor<'x, 'a>(&'x mut Incoming<'a>);

impl<'de, 'x> Visitor<'de> for EnvelopeVisitor<'x, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            // The parser checked the value: no key is irregular here.
            if self.0.key(&key.0, value.get(), None, true).is_err() {
                return Err(de::Error::custom(format!("{}: not valid JSON", key.0)));
            }
        }
        Ok(())
    }
}

/// A JSON string's value: borrowed when it has no escapes, from serde_json when it has;
/// `None` when `text` is not exactly one JSON string.
fn json_string(text: &str) -> Option<Cow<'_, str>> {
    match string_at(text, 0)? {
        (value, end) if end == text.len() => Some(value),
        _ => None,
    }
}

/// The value of the JSON string whose opening quote is at `text[i]`, and the index after
/// it; `None` when there is no valid string there.
fn string_at(text: &str, i: usize) -> Option<(Cow<'_, str>, usize)> {
    if text.as_bytes().get(i) != Some(&b'"') {
        return None;
    }
    match scan::string_scan(text.as_bytes(), i)? {
        (end, true) => Some((Cow::Borrowed(text.get(i + 1..end - 1)?), end)),
        (end, false) => {
            let value = serde_json::from_str::<CowStr<'_>>(text.get(i..end)?).ok()?;
            Some((value.0, end))
        }
    }
}

/// A JSON non-negative integer (plain digits read directly, anything else by serde_json,
/// which also says no to what is not one).
fn json_u64(text: &str) -> Result<u64, serde_json::Error> {
    let b = text.as_bytes();
    let plain = !b.is_empty() && b.len() <= 19 && b.iter().all(u8::is_ascii_digit) && (b[0] != b'0' || b.len() == 1);
    match plain.then(|| text.parse().ok()).flatten() {
        Some(v) => Ok(v),
        None => serde_json::from_str(text),
    }
}

/// Reads the `fields` object at `text[i]` in one pass, as it finds its end: strings,
/// numbers and literals are checked by [`scan`] exactly, anything else (escaped
/// strings, objects, arrays with at most `depth_left` levels) by serde_json. Returns the
/// index after the object; `None` when it needs the full parser (invalid JSON, too
/// deep), with `out` holding whatever was read so far.
fn fields_at<'a>(text: &'a str, i: usize, depth_left: usize, out: &mut Vec<(Cow<'a, str>, &'a str)>) -> Option<usize> {
    out.reserve(8);
    object_at(text, i, depth_left, |k, v| out.push((k, v)))
}

/// The object at `text[i]`, read in one pass as [`fields_at`] reads it, handing each
/// (key, raw value) to `each`; the index after it.
fn object_at<'a>(
    text: &'a str,
    i: usize,
    depth_left: usize,
    mut each: impl FnMut(Cow<'a, str>, &'a str),
) -> Option<usize> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut j = scan::skip_ws(b, i + 1);
    if b.get(j) == Some(&b'}') {
        return Some(j + 1);
    }
    loop {
        let (key, key_end) = string_at(text, j)?;
        j = scan::skip_ws(b, key_end);
        if b.get(j) != Some(&b':') {
            return None;
        }
        j = scan::skip_ws(b, j + 1);
        let end = match scan::scalar_exact(b, j) {
            Some(end) => end,
            None => {
                let end = scan::value_end(b, j, depth_left)?;
                serde_json::from_str::<de::IgnoredAny>(text.get(j..end)?).ok()?;
                end
            }
        };
        each(key, text.get(j..end)?);
        j = scan::skip_ws(b, end);
        match b.get(j)? {
            b',' => j = scan::skip_ws(b, j + 1),
            b'}' => return Some(j + 1),
            _ => return None,
        }
    }
}

/// [`fields_at`] over a whole text: the object and nothing but whitespace after it.
fn fields_scan<'a>(text: &'a str, out: &mut Vec<(Cow<'a, str>, &'a str)>) -> Option<()> {
    let end = fields_at(text, 0, 127, out)?;
    (scan::skip_ws(text.as_bytes(), end) == text.len()).then_some(())
}

/// Whether `text` is one JSON value (whitespace around it allowed), exactly as
/// serde_json reads it: an object in the one pass of [`fields_at`], anything else (or
/// anything that pass does not take) by serde_json.
pub fn is_json(text: &str) -> bool {
    object_at(text, 0, 127, |_, _| {}).is_some_and(|end| scan::skip_ws(text.as_bytes(), end) == text.len())
        || serde_json::from_str::<de::IgnoredAny>(text).is_ok()
}

struct FieldsVisitor<'x, 'a>(&'x mut Vec<(Cow<'a, str>, &'a str)>);

impl<'de, 'x> Visitor<'de> for FieldsVisitor<'x, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            self.0.push((key.0, value.get()));
        }
        Ok(())
    }
}

/// Parses a `fields` JSON object into (name, raw JSON value) pairs, borrowing from
/// `text`.
pub fn parse_fields(text: &str) -> Result<Vec<(Cow<'_, str>, &str)>, String> {
    let mut fields = Vec::new();
    parse_fields_into(text, &mut fields).map_err(|e| e.to_string())?;
    Ok(fields)
}

/// [`parse_fields`] into a vector the caller reuses (cleared first): the one-pass
/// [`fields_scan`], and serde_json (which says what is wrong) when it cannot.
pub fn parse_fields_into<'a>(text: &'a str, out: &mut Vec<(Cow<'a, str>, &'a str)>) -> Result<(), serde_json::Error> {
    out.clear();
    if fields_scan(text, out).is_some() {
        return Ok(());
    }
    out.clear();
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(FieldsVisitor(out)).and_then(|()| de.end())
}

impl Incoming<'_> {
    /// The `fields` JSON object to store: the object as sent (`{}` when absent). Stored
    /// as is, without re-serialising: a `null` value means absent everywhere.
    pub fn fields_json(&self) -> &[u8] {
        self.fields_raw.map_or(b"{}", |r| r.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn parses_envelope_and_borrows() {
        let r = raw(
            r#"{"event":"item.viewed","version":2,"env":"web","id":"abc","ts":"2026-11-22T13:04:05.123456Z","fields":{"item_id":123,"source":"search"}}"#,
        );
        let ev = Incoming::parse(&r).unwrap();
        assert!(matches!(ev.event, Some(Cow::Borrowed("item.viewed"))));
        assert_eq!(ev.version, Some(2));
        assert_eq!(ev.ts, Some(1_795_352_645_123_456));
        assert_eq!(ev.fields.len(), 2);
        assert_eq!(ev.fields[0].1, "123");
        assert!(ev.problems.is_empty());
    }

    #[test]
    fn envelope_problems_name_the_key() {
        let r = raw(r#"{"event":5,"version":0,"env":"web","ts":"yesterday","fields":[1],"colour":1,"id":""}"#);
        let ev = Incoming::parse(&r).unwrap();
        let p = ev.problems.join("\n");
        for key in ["event:", "version:", "ts:", "fields:", "colour:", "id:"] {
            assert!(p.contains(key), "{key} missing in {p}");
        }
        assert!(Incoming::parse(&raw("[1]")).is_err());
        assert!(Incoming::parse(&raw("3")).is_err());
    }

    #[test]
    fn fields_json_is_the_object_as_sent() {
        let r = raw(r#"{"event":"a","fields":{"a":1, "b":null,"c\"":"x"}}"#);
        let ev = Incoming::parse(&r).unwrap();
        assert_eq!(ev.fields_json(), br#"{"a":1, "b":null,"c\"":"x"}"#);
        assert_eq!(ev.fields.len(), 3);
        let none = raw(r#"{"event":"a"}"#);
        assert_eq!(Incoming::parse(&none).unwrap().fields_json(), b"{}");
        let bad = raw(r#"{"event":"a","fields":[1]}"#);
        assert_eq!(Incoming::parse(&bad).unwrap().fields_json(), b"{}");
    }
}

/// The one-pass readers of strings, integers and `fields` against serde_json, on
/// generated near-JSON: whatever the fast path takes, serde_json takes the same way.
#[cfg(test)]
mod agree {
    use super::*;
    use proptest::prelude::*;

    /// serde_json alone, as [`parse_fields_into`] falls back to.
    fn full<'a>(text: &'a str) -> Option<Vec<(Cow<'a, str>, &'a str)>> {
        let mut out = Vec::new();
        let mut de = serde_json::Deserializer::from_str(text);
        de.deserialize_map(FieldsVisitor(&mut out))
            .and_then(|()| de.end())
            .ok()?;
        Some(out)
    }

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?[0-9]{0,3}(\\.[0-9]{0,2})?([eE][-+]?[0-9]{0,2})?",
            "\"[a-z \\\\\"\t\u{1}é/]{0,6}\"",
            "\"[a-z]{0,6}",
            Just("true".to_string()),
            Just("false".to_string()),
            Just("null".to_string()),
            Just("nul".to_string()),
            Just("+1".to_string()),
            Just("[1,\"a\",{\"b\":null}]".to_string()),
            Just("{\"a\":[]}".to_string()),
            Just("[1,".to_string()),
            Just("{}".to_string()),
        ]
    }

    fn object() -> impl Strategy<Value = String> {
        let member = (piece(), "[ \n]?", "[:, ]?", piece(), "[ \t]?", "[,}]?")
            .prop_map(|(k, a, colon, v, b, sep)| format!("{k}{a}{colon}{v}{b}{sep}"));
        (proptest::collection::vec(member, 0..5), "[ ]?", "[}]?")
            .prop_map(|(members, ws, close)| format!("{{{ws}{}{close}", members.join(",")))
    }

    proptest! {
        #[test]
        fn fields_are_read_as_serde_json_reads_them(text in object()) {
            let mut fast = Vec::new();
            if fields_scan(&text, &mut fast).is_some() {
                prop_assert_eq!(Some(fast), full(&text), "{}", text);
            }
            let mut both = Vec::new();
            prop_assert_eq!(parse_fields_into(&text, &mut both).is_ok(), full(&text).is_some(), "{}", text);
            prop_assert_eq!(is_json(&text), serde_json::from_str::<de::IgnoredAny>(&text).is_ok(), "{}", text);
        }

        #[test]
        fn strings_and_versions_are_read_as_serde_json_reads_them(text in piece()) {
            let serde = serde_json::from_str::<CowStr<'_>>(&text).ok().map(|s| s.0);
            prop_assert_eq!(json_string(&text), serde, "{}", text);
            prop_assert_eq!(json_u64(&text).ok(), serde_json::from_str::<u64>(&text).ok(), "{}", text);
            prop_assert_eq!(is_json(&text), serde_json::from_str::<de::IgnoredAny>(&text).is_ok(), "{}", text);
            if let Some(end) = scan::scalar_exact(text.as_bytes(), 0) {
                if end == text.len() {
                    prop_assert!(serde_json::from_str::<de::IgnoredAny>(&text).is_ok(), "{}", text);
                }
            }
        }
    }
}
