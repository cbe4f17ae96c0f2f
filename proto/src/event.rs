//! Events as sent (JSON) and as stored (the protobuf [`crate::pb::Event`]).
//!
//! [`Incoming::parse`] reads one sent event without copying: names borrow from the
//! request body and field values stay raw JSON until validation looks at them.
//! [`EventView`] is a stored event by reference: [`EventView::encode`] writes it straight
//! into a spool buffer and [`EventView::decode`] reads it back without copying.

use std::borrow::Cow;
use std::fmt;

use bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

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

/// Parses a timestamp given as RFC 3339 text or integer microseconds since the epoch.
/// `null` is no timestamp.
pub fn parse_timestamp(value: &RawValue) -> Result<Option<i64>, String> {
    let text = value.get();
    if text == "null" {
        return Ok(None);
    }
    if text.starts_with('"') {
        let s: CowStr<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        return parse_rfc3339_micros(&s.0).map(Some);
    }
    if !text.contains(['.', 'e', 'E']) {
        if let Ok(us) = text.parse::<i64>() {
            return Ok(Some(us));
        }
    }
    Err("must be RFC 3339 text (2026-11-22T13:04:05.123456Z) or integer microseconds since the epoch".into())
}

/// Parses RFC 3339 text into microseconds since the epoch.
pub fn parse_rfc3339_micros(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros())
        .map_err(|e| format!("{s:?} is not RFC 3339 ({e})"))
}

/// Formats microseconds since the epoch as RFC 3339 UTC with microseconds.
pub fn format_micros(us: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => us.to_string(),
    }
}

/// A UUIDv7 (RFC 9562: 48-bit Unix milliseconds, then random bits) written as 36
/// lowercase hex-and-dash characters into `out`. Random bits come from a fast
/// thread-local generator, not a syscall per id: ids must be unique, not secret.
pub fn uuid_v7(now_micros: i64, out: &mut [u8; 36]) -> &str {
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    let millis = (now_micros / 1000).max(0) as u64;
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    id.hyphenated().encode_lower(out)
}

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn put_bytes(tag: u32, data: &[u8], buf: &mut impl BufMut) {
    if !data.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(data.len() as u64, buf);
        buf.put_slice(data);
    }
}

fn bytes_len(tag: u32, data: &[u8]) -> usize {
    if data.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag) + encoded_len_varint(data.len() as u64) + data.len()
    }
}

impl EventView<'_> {
    /// Appends the protobuf encoding of this event to `buf`: exactly the bytes prost
    /// gives for the same [`crate::pb::Event`], without building the message.
    pub fn encode(&self, buf: &mut impl BufMut) {
        put_bytes(1, self.id.as_bytes(), buf);
        put_bytes(2, self.event.as_bytes(), buf);
        if self.version != 0 {
            encode_key(3, WireType::Varint, buf);
            encode_varint(self.version as u64, buf);
        }
        put_bytes(4, self.env.as_bytes(), buf);
        if self.received_at != 0 {
            encode_key(5, WireType::Varint, buf);
            encode_varint(self.received_at as u64, buf);
        }
        if let Some(ts) = self.client_ts {
            encode_key(6, WireType::Varint, buf);
            encode_varint(ts as u64, buf);
        }
        put_bytes(7, self.collector.as_bytes(), buf);
        put_bytes(8, self.fields, buf);
        if self.valid {
            encode_key(9, WireType::Varint, buf);
            encode_varint(1, buf);
        }
        for e in &self.errors {
            encode_key(10, WireType::LengthDelimited, buf);
            encode_varint(e.len() as u64, buf);
            buf.put_slice(e.as_bytes());
        }
        put_bytes(11, self.raw, buf);
        for (k, v) in &self.context {
            let entry_len = bytes_len(1, k.as_bytes()) + bytes_len(2, v.as_bytes());
            encode_key(12, WireType::LengthDelimited, buf);
            encode_varint(entry_len as u64, buf);
            put_bytes(1, k.as_bytes(), buf);
            put_bytes(2, v.as_bytes(), buf);
        }
    }
}

impl Incoming<'_> {
    /// The `fields` JSON object to store: the object as sent (`{}` when absent). Stored
    /// as is, without re-serialising: a `null` value means absent everywhere.
    pub fn fields_json(&self) -> &[u8] {
        self.fields_raw.map_or(b"{}", |r| r.get().as_bytes())
    }
}

/// A stored event by reference: every string borrows, from a request body when the
/// collector encodes it, or from the encoded bytes when the loader decodes it, so no
/// event is ever allocated on either path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventView<'a> {
    /// See [`crate::pb::Event::id`].
    pub id: &'a str,
    /// See [`crate::pb::Event::event`].
    pub event: &'a str,
    /// See [`crate::pb::Event::version`].
    pub version: u32,
    /// See [`crate::pb::Event::env`].
    pub env: &'a str,
    /// See [`crate::pb::Event::received_at`].
    pub received_at: i64,
    /// See [`crate::pb::Event::client_ts`].
    pub client_ts: Option<i64>,
    /// See [`crate::pb::Event::collector`].
    pub collector: &'a str,
    /// See [`crate::pb::Event::fields`].
    pub fields: &'a [u8],
    /// See [`crate::pb::Event::valid`].
    pub valid: bool,
    /// See [`crate::pb::Event::errors`].
    pub errors: Vec<&'a str>,
    /// See [`crate::pb::Event::raw`].
    pub raw: &'a [u8],
    /// See [`crate::pb::Event::context`], in wire order.
    pub context: Vec<(&'a str, &'a str)>,
}

/// Why encoded bytes are not a stored event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a weir.v1.Event: {0}")]
pub struct ViewError(&'static str);

#[inline(always)]
fn take_varint(buf: &mut &[u8]) -> Result<u64, ViewError> {
    // One byte (tags, most lengths): no loop.
    if let Some(&b) = buf.first() {
        if b < 0x80 {
            *buf = &buf[1..];
            return Ok(u64::from(b));
        }
    }
    prost::encoding::decode_varint(buf).map_err(|_| ViewError("bad varint"))
}

#[inline(always)]
fn take_bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ViewError> {
    let len = take_varint(buf)? as usize;
    if len > buf.len() {
        return Err(ViewError("length past the end"));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

/// Skips a field of wire type `wire` that is not read (as prost skips unknown fields).
#[inline(always)]
fn skip_field(wire: u64, buf: &mut &[u8]) -> Result<(), ViewError> {
    match wire {
        0 => {
            take_varint(buf)?;
        }
        1 => *buf = buf.get(8..).ok_or(ViewError("truncated"))?,
        2 => {
            take_bytes(buf)?;
        }
        5 => *buf = buf.get(4..).ok_or(ViewError("truncated"))?,
        _ => return Err(ViewError("unsupported wire type")),
    }
    Ok(())
}

#[inline(always)]
fn take_str<'a>(buf: &mut &'a [u8]) -> Result<&'a str, ViewError> {
    std::str::from_utf8(take_bytes(buf)?).map_err(|_| ViewError("string is not UTF-8"))
}

/// What the loader's index needs of a stored event: decoded by
/// [`EventHead::decode`], which walks the message but reads only these fields (the
/// rest is skipped by length, unchecked), several times faster than a full
/// [`EventView::decode`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventHead<'a> {
    /// See [`crate::pb::Event::id`].
    pub id: &'a str,
    /// See [`crate::pb::Event::event`].
    pub event: &'a str,
    /// See [`crate::pb::Event::version`].
    pub version: u32,
    /// See [`crate::pb::Event::received_at`].
    pub received_at: i64,
    /// See [`crate::pb::Event::valid`].
    pub valid: bool,
}

impl<'a> EventHead<'a> {
    /// Decodes the head of an encoded [`crate::pb::Event`]. Fails where
    /// [`EventView::decode`] fails on the message's framing; strings it skips are not
    /// checked for UTF-8.
    pub fn decode(mut buf: &'a [u8]) -> Result<EventHead<'a>, ViewError> {
        let mut h = EventHead::default();
        while !buf.is_empty() {
            let key = take_varint(&mut buf)?;
            match (key >> 3, key & 7) {
                (1, 2) => h.id = take_str(&mut buf)?,
                (2, 2) => h.event = take_str(&mut buf)?,
                (3, 0) => h.version = take_varint(&mut buf)? as u32,
                (5, 0) => h.received_at = take_varint(&mut buf)? as i64,
                (9, 0) => h.valid = take_varint(&mut buf)? != 0,
                (_, wire) => skip_field(wire, &mut buf)?,
            }
        }
        Ok(h)
    }
}

impl<'a> EventView<'a> {
    /// Decodes an encoded [`crate::pb::Event`]; unknown fields are skipped, as prost does.
    pub fn decode(mut buf: &'a [u8]) -> Result<EventView<'a>, ViewError> {
        let mut v = EventView::default();
        while !buf.is_empty() {
            let key = take_varint(&mut buf)?;
            let (tag, wire) = (key >> 3, key & 7);
            match (tag, wire) {
                (1, 2) => v.id = take_str(&mut buf)?,
                (2, 2) => v.event = take_str(&mut buf)?,
                (3, 0) => v.version = take_varint(&mut buf)? as u32,
                (4, 2) => v.env = take_str(&mut buf)?,
                (5, 0) => v.received_at = take_varint(&mut buf)? as i64,
                (6, 0) => v.client_ts = Some(take_varint(&mut buf)? as i64),
                (7, 2) => v.collector = take_str(&mut buf)?,
                (8, 2) => v.fields = take_bytes(&mut buf)?,
                (9, 0) => v.valid = take_varint(&mut buf)? != 0,
                (10, 2) => v.errors.push(take_str(&mut buf)?),
                (11, 2) => v.raw = take_bytes(&mut buf)?,
                (12, 2) => {
                    let mut entry = take_bytes(&mut buf)?;
                    let (mut k, mut val) = ("", "");
                    while !entry.is_empty() {
                        match take_varint(&mut entry)? {
                            0x0a => k = take_str(&mut entry)?,
                            0x12 => val = take_str(&mut entry)?,
                            _ => return Err(ViewError("bad context entry")),
                        }
                    }
                    v.context.push((k, val));
                }
                (_, wire) => skip_field(wire, &mut buf)?,
            }
        }
        Ok(v)
    }

    /// Appends the event's stored JSON form (DESIGN.md "Event, as stored and routed"):
    /// `id, event, version, env, received_at, client_ts, collector, fields, valid, errors`,
    /// plus `context` when present and `raw` for an event kept invalid whose body was not
    /// an object. Times are RFC 3339 with microseconds, UTC.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        fn string(out: &mut Vec<u8>, s: &str) {
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        }
        out.extend_from_slice(b"{\"id\":");
        string(out, self.id);
        out.extend_from_slice(b",\"event\":");
        string(out, self.event);
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(self.version.to_string().as_bytes());
        out.extend_from_slice(b",\"env\":");
        string(out, self.env);
        out.extend_from_slice(b",\"received_at\":\"");
        out.extend_from_slice(format_micros(self.received_at).as_bytes());
        out.extend_from_slice(b"\",\"client_ts\":");
        match self.client_ts {
            Some(ts) => {
                out.push(b'"');
                out.extend_from_slice(format_micros(ts).as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"collector\":");
        string(out, self.collector);
        out.extend_from_slice(b",\"fields\":");
        // `fields` is the object exactly as the sender wrote it (validated JSON); an
        // event kept invalid may carry something else, which is then sent as a string.
        match std::str::from_utf8(self.fields) {
            Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() && !text.is_empty() => {
                out.extend_from_slice(self.fields)
            }
            Ok(text) if !text.is_empty() => string(out, text),
            _ => out.extend_from_slice(b"{}"),
        }
        out.extend_from_slice(if self.valid {
            b",\"valid\":true"
        } else {
            b",\"valid\":false"
        });
        out.extend_from_slice(b",\"errors\":[");
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, e);
        }
        out.push(b']');
        if !self.context.is_empty() {
            out.extend_from_slice(b",\"context\":{");
            for (i, (k, v)) in self.context.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, k);
                out.push(b':');
                string(out, v);
            }
            out.push(b'}');
        }
        if !self.raw.is_empty() {
            out.extend_from_slice(b",\"raw\":");
            string(out, &String::from_utf8_lossy(self.raw));
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use prost::Message;

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
    fn uuid_v7_is_time_ordered_and_unique() {
        let mut a = [0u8; 36];
        let mut b = [0u8; 36];
        let first = uuid_v7(1_795_352_645_000_000, &mut a).to_string();
        let second = uuid_v7(1_795_352_645_001_000, &mut b).to_string();
        let parsed = uuid::Uuid::parse_str(&first).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(parsed.get_timestamp().unwrap().to_unix().0, 1_795_352_645);
        assert!(first < second, "ids sort by time");
        let many: std::collections::HashSet<String> = (0..10_000)
            .map(|_| uuid_v7(1_795_352_645_000_000, &mut a).to_string())
            .collect();
        assert_eq!(many.len(), 10_000);
    }

    #[test]
    fn integer_timestamps() {
        assert_eq!(
            parse_timestamp(&raw("1700000000000000")),
            Ok(Some(1_700_000_000_000_000))
        );
        assert!(parse_timestamp(&raw("1.5")).is_err());
        assert_eq!(parse_timestamp(&raw("null")), Ok(None));
        assert_eq!(format_micros(1_795_352_645_123_456), "2026-11-22T13:04:05.123456Z");
    }

    /// An event with every field set.
    fn sample() -> pb::Event {
        pb::Event {
            id: "0192".into(),
            event: "item.viewed".into(),
            version: 2,
            env: "web".into(),
            received_at: 1_795_352_645_123_456,
            client_ts: Some(-5),
            collector: "node-1".into(),
            fields: bytes::Bytes::from_static(br#"{"a":1}"#),
            valid: false,
            errors: Vec::new(),
            raw: bytes::Bytes::from_static(b"{}"),
            context: [("ip".to_string(), "10.0.0.1".to_string())].into_iter().collect(),
        }
    }

    #[test]
    fn view_encodes_like_prost() {
        let errors = vec!["item_id: missing required field".to_string()];
        let r = EventView {
            id: "0192",
            event: "item.viewed",
            version: 2,
            env: "web",
            received_at: 1_795_352_645_123_456,
            client_ts: Some(-5),
            collector: "node-1",
            fields: br#"{"a":1}"#,
            valid: false,
            errors: vec!["item_id: missing required field"],
            raw: b"{}",
            context: vec![("ip", "10.0.0.1")],
        };
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(
            EventView::decode(&buf).unwrap(),
            r,
            "decode reads back what encode wrote"
        );
        let decoded = pb::Event::decode(&buf[..]).unwrap();
        let want = pb::Event { errors, ..sample() };
        assert_eq!(decoded, want);
        assert_eq!(buf, want.encode_to_vec());
    }

    #[test]
    fn view_decodes_what_prost_encodes() {
        let e = pb::Event {
            errors: vec!["a: x".into(), "b: y".into()],
            ..sample()
        };
        let buf = e.encode_to_vec();
        let v = EventView::decode(&buf).unwrap();
        assert_eq!((v.id, v.event, v.version, v.env), ("0192", "item.viewed", 2, "web"));
        assert_eq!(
            (v.received_at, v.client_ts, v.collector),
            (1_795_352_645_123_456, Some(-5), "node-1")
        );
        assert_eq!((v.fields, v.valid, v.raw), (&br#"{"a":1}"#[..], false, &b"{}"[..]));
        assert_eq!(v.errors, vec!["a: x", "b: y"]);
        assert_eq!(v.context, vec![("ip", "10.0.0.1")]);
        assert_eq!(
            EventView::decode(&pb::Event::default().encode_to_vec()).unwrap(),
            EventView::default()
        );
        assert!(EventView::decode(&buf[..buf.len() - 3]).is_err());
        assert!(
            EventView::decode(&[0x0a, 0x02, 0xff, 0xfe]).is_err(),
            "invalid UTF-8 is refused"
        );
    }

    #[test]
    fn head_is_what_the_view_says() {
        let buf = sample().encode_to_vec();
        let v = EventView::decode(&buf).unwrap();
        let h = EventHead::decode(&buf).unwrap();
        assert_eq!(
            (h.id, h.event, h.version, h.received_at, h.valid),
            (v.id, v.event, v.version, v.received_at, v.valid)
        );
        assert!(EventHead::decode(&buf[..buf.len() - 3]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 3000, ..Default::default() })]

        /// Arbitrary bytes never panic either decoder, and where the full decoder reads
        /// an event the head decoder reads the same head.
        #[test]
        fn head_and_view_agree_on_arbitrary_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let head = EventHead::decode(&data);
            if let Ok(v) = EventView::decode(&data) {
                let h = head.expect("the head decodes wherever the view does");
                proptest::prop_assert_eq!(
                    (h.id, h.event, h.version, h.received_at, h.valid),
                    (v.id, v.event, v.version, v.received_at, v.valid)
                );
            }
        }

        /// Real events with arbitrary contents decode to the same head.
        #[test]
        fn head_of_arbitrary_events(id in "\\PC{0,40}", name in "[a-z.]{0,20}", version in 0u32..1000, at in proptest::prelude::any::<i64>(), valid in proptest::prelude::any::<bool>(), fields in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let e = pb::Event { id: id.clone(), event: name.clone(), version, received_at: at, valid, fields: fields.into(), ..sample() };
            let buf = e.encode_to_vec();
            let h = EventHead::decode(&buf).unwrap();
            proptest::prop_assert_eq!((h.id, h.event, h.version, h.received_at, h.valid), (id.as_str(), name.as_str(), version, at, valid));
        }
    }

    #[test]
    fn stored_json_form_round_trips_through_serde() {
        let ev = sample();
        let bytes = ev.encode_to_vec();
        let view = EventView::decode(&bytes).unwrap();
        let mut out = Vec::new();
        view.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], ev.id.as_str());
        assert_eq!(v["event"], ev.event.as_str());
        assert_eq!(v["version"], ev.version);
        assert_eq!(v["received_at"], format_micros(ev.received_at));
        assert_eq!(v["valid"], ev.valid);
        let fields: serde_json::Value = serde_json::from_slice(&ev.fields).unwrap();
        assert_eq!(v["fields"], fields);
        assert_eq!(v["errors"].as_array().unwrap().len(), ev.errors.len());
        let weird = EventView {
            id: "q\"uote",
            fields: b"not json",
            ..Default::default()
        };
        out.clear();
        weird.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "q\"uote");
        assert_eq!(v["fields"], "not json");
        assert_eq!(v["client_ts"], serde_json::Value::Null);
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
