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
    /// `fields` as (name, raw JSON value), in the order sent.
    pub fields: Vec<(Cow<'a, str>, &'a RawValue)>,
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
                let key_end = scan::string_end(b, j)?;
                let key: CowStr<'a> = serde_json::from_str(text.get(j..key_end)?).ok()?;
                j = scan::skip_ws(b, key_end);
                if b.get(j) != Some(&b':') {
                    return None;
                }
                j = scan::skip_ws(b, j + 1);
                let end = scan::value_end(b, j, depth_left - 1)?;
                ev.key(&key.0, text.get(j..end)?, false).ok()?;
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

    /// Records the envelope key `key` with the value `text`. `checked` says the full
    /// parser already found `text` valid JSON; when not, it is checked here, and
    /// invalid JSON is [`Irregular`] (the caller falls back to the full parser).
    fn key(&mut self, key: &str, text: &'a str, checked: bool) -> Result<(), Irregular> {
        let valid = |t: &str| checked || serde_json::from_str::<de::IgnoredAny>(t).is_ok();
        let string = |t: &'a str| serde_json::from_str::<CowStr<'a>>(t).ok().map(|s| s.0);
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
            "version" => match serde_json::from_str::<u64>(text) {
                Ok(v) if v >= 1 && v <= u32::MAX as u64 => self.version = Some(v as u32),
                _ if text == "null" => {}
                Ok(_) => return problem(self, "version: must be a positive integer".into()),
                Err(_) if valid(text) => return problem(self, "version: must be a positive integer".into()),
                Err(_) => return Err(Irregular),
            },
            "ts" => match serde_json::from_str::<&'a RawValue>(text) {
                Ok(value) => match parse_timestamp(value) {
                    Ok(ts) => self.ts = ts,
                    Err(e) => return problem(self, format!("ts: {e}")),
                },
                Err(_) if checked => return problem(self, "ts: not valid JSON".into()),
                Err(_) => return Err(Irregular),
            },
            "fields" => {
                if text != "null" {
                    let mut de = serde_json::Deserializer::from_str(text);
                    let mut fields = std::mem::take(&mut self.fields);
                    match de.deserialize_map(FieldsVisitor(&mut fields)).and_then(|()| de.end()) {
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
            if self.0.key(&key.0, value.get(), true).is_err() {
                return Err(de::Error::custom(format!("{}: not valid JSON", key.0)));
            }
        }
        Ok(())
    }
}

struct FieldsVisitor<'x, 'a>(&'x mut Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de, 'x> Visitor<'de> for FieldsVisitor<'x, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            self.0.push((key.0, value));
        }
        Ok(())
    }
}

/// Parses a stored `fields` JSON object into (name, raw value) pairs, borrowing from
/// `text`.
pub fn parse_fields(text: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, String> {
    let mut fields = Vec::new();
    parse_fields_into(text, &mut fields)?;
    Ok(fields)
}

/// [`parse_fields`] into a vector the caller reuses (cleared first).
pub fn parse_fields_into<'a>(text: &'a str, out: &mut Vec<(Cow<'a, str>, &'a RawValue)>) -> Result<(), String> {
    out.clear();
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(FieldsVisitor(out)).map_err(|e| e.to_string())
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
        assert_eq!(ev.fields[0].1.get(), "123");
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
