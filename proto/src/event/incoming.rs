//! Events as sent: [`Incoming::parse`] reads one JSON event without copying — names
//! borrow from the request body and field values stay raw JSON until validation looks
//! at them.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

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
    pub fields_raw: Option<&'a RawValue>,
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
        let mut ev = Incoming {
            raw: text,
            event: None,
            version: None,
            env: None,
            id: None,
            ts: None,
            fields: Vec::new(),
            fields_raw: None,
            problems: Vec::new(),
        };
        de.deserialize_map(EnvelopeVisitor(&mut ev))
            .map_err(|e| e.to_string())?;
        Ok(ev)
    }
}

struct EnvelopeVisitor<'x, 'a>(&'x mut Incoming<'a>);

impl<'de, 'x> Visitor<'de> for EnvelopeVisitor<'x, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        let ev = self.0;
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            let text = value.get();
            match key.0.as_ref() {
                "event" => match serde_json::from_str::<CowStr<'de>>(text) {
                    Ok(s) => ev.event = Some(s.0),
                    Err(_) => ev.problems.push("event: must be a string".into()),
                },
                "env" => match serde_json::from_str::<CowStr<'de>>(text) {
                    Ok(s) => ev.env = Some(s.0),
                    Err(_) => ev.problems.push("env: must be a string".into()),
                },
                "id" => match serde_json::from_str::<CowStr<'de>>(text) {
                    Ok(s) if !s.0.is_empty() && s.0.len() <= MAX_ID_LEN => ev.id = Some(s.0),
                    _ => ev.problems.push(format!(
                        "id: must be a non-empty string of at most {MAX_ID_LEN} bytes (a UUID is best)"
                    )),
                },
                "version" => match serde_json::from_str::<u64>(text) {
                    Ok(v) if v >= 1 && v <= u32::MAX as u64 => ev.version = Some(v as u32),
                    _ if text == "null" => {}
                    _ => ev.problems.push("version: must be a positive integer".into()),
                },
                "ts" => match parse_timestamp(value) {
                    Ok(ts) => ev.ts = ts,
                    Err(e) => ev.problems.push(format!("ts: {e}")),
                },
                "fields" => {
                    if text != "null" {
                        let mut de = serde_json::Deserializer::from_str(text);
                        let mut fields = std::mem::take(&mut ev.fields);
                        match de.deserialize_map(FieldsVisitor(&mut fields)) {
                            Ok(()) => {
                                ev.fields = fields;
                                ev.fields_raw = Some(value);
                            }
                            Err(_) => ev.problems.push("fields: must be a JSON object".into()),
                        }
                    }
                }
                // The proxy's write key may ride in the body (sendBeacon cannot set
                // headers); it is authentication, not event data.
                "writeKey" => {}
                other => ev.problems.push(format!(
                    "{other}: unknown key (an event has event, version, env, id, ts and fields)"
                )),
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
        self.fields_raw.map_or(b"{}", |r| r.get().as_bytes())
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
