//! Events on the wire: [`EventView`] is a stored event by reference —
//! [`EventView::encode`] writes it straight into a spool buffer and [`EventView::decode`]
//! reads it back without copying; [`EventHead`] reads only what the loader's index
//! needs; [`batch`] reads and writes `weir.v1.EventBatch` around already-encoded events.

use bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

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

/// What the loader's index and the console's counts need of a stored event: decoded by
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
    /// See [`crate::pb::Event::env`].
    pub env: &'a str,
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
                (4, 2) => h.env = take_str(&mut buf)?,
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
}

/// `weir.v1.EventBatch` around events that are already encoded: the collector writes
/// batches from spooled bytes and the router checks and splits them, neither building
/// the message (nor any of its strings).
pub mod batch {
    use bytes::{BufMut, Bytes};
    use prost::encoding::{encode_key, encode_varint, WireType};

    use super::{skip_field, take_bytes, take_str, take_varint, EventView, ViewError};

    /// Writes an `EventBatch` (fields 1 batch_id, 2 collector, 3 events) around encoded
    /// events: byte for byte what prost gives for the same message.
    pub fn encode(batch_id: &str, collector: &str, events: &[Bytes]) -> Vec<u8> {
        let size: usize = events.iter().map(|e| e.len() + 6).sum::<usize>() + batch_id.len() + collector.len() + 8;
        let mut out = Vec::with_capacity(size);
        for (tag, s) in [(1u32, batch_id), (2, collector)] {
            if !s.is_empty() {
                encode_key(tag, WireType::LengthDelimited, &mut out);
                encode_varint(s.len() as u64, &mut out);
                out.put_slice(s.as_bytes());
            }
        }
        for e in events {
            encode_key(3, WireType::LengthDelimited, &mut out);
            encode_varint(e.len() as u64, &mut out);
            out.put_slice(e);
        }
        out
    }

    /// An encoded batch by reference.
    #[derive(Debug, Default)]
    pub struct BatchView<'a> {
        /// See [`crate::pb::EventBatch::batch_id`].
        pub batch_id: &'a str,
        /// See [`crate::pb::EventBatch::collector`].
        pub collector: &'a str,
        /// The encoded events, in order.
        pub events: Vec<&'a [u8]>,
    }

    impl<'a> BatchView<'a> {
        /// Reads a batch's framing (not its events; see [`BatchView::check_events`]).
        pub fn decode(mut buf: &'a [u8]) -> Result<BatchView<'a>, ViewError> {
            let mut v = BatchView::default();
            while !buf.is_empty() {
                let key = take_varint(&mut buf)?;
                match (key >> 3, key & 7) {
                    (1, 2) => v.batch_id = take_str(&mut buf)?,
                    (2, 2) => v.collector = take_str(&mut buf)?,
                    (3, 2) => v.events.push(take_bytes(&mut buf)?),
                    (_, wire) => skip_field(wire, &mut buf)?,
                }
            }
            Ok(v)
        }

        /// Decodes every event (zero-copy) and checks that collectors stamped it: the
        /// first that is unreadable or has no `id` or `received_at`, by index and reason.
        pub fn check_events(&self) -> Result<(), (usize, String)> {
            self.check_each(|_, _| {})
        }

        /// [`BatchView::check_events`], handing each event, decoded, to `each` (with its
        /// index) as it is checked: what a reader of the batch needs besides is taken in
        /// the same pass.
        pub fn check_each(&self, mut each: impl FnMut(usize, &EventView<'a>)) -> Result<(), (usize, String)> {
            for (i, e) in self.events.iter().enumerate() {
                match EventView::decode(e) {
                    Ok(v) if v.id.is_empty() || v.received_at == 0 => {
                        return Err((i, "it has no id or received_at: collectors stamp both".into()))
                    }
                    Ok(v) => each(i, &v),
                    Err(e) => return Err((i, e.to_string())),
                }
            }
            Ok(())
        }
    }

    /// The encoded events (field 3) of an encoded batch, as slices sharing its buffer.
    pub fn events(batch: &Bytes) -> Result<Vec<Bytes>, ViewError> {
        let view = BatchView::decode(batch)?;
        Ok(view.events.iter().map(|e| batch.slice_ref(e)).collect())
    }

    /// Reads only `received_at` (field 5) of an encoded event.
    pub fn received_at(mut event: &[u8]) -> Result<i64, ViewError> {
        let mut at = 0i64;
        while !event.is_empty() {
            let key = take_varint(&mut event)?;
            match (key >> 3, key & 7) {
                (5, 0) => at = take_varint(&mut event)? as i64,
                (_, wire) => skip_field(wire, &mut event)?,
            }
        }
        Ok(at)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pb;
    use prost::Message;
    /// An event with every field set.
    pub(crate) fn sample() -> pb::Event {
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
            (h.id, h.event, h.version, h.env, h.received_at, h.valid),
            (v.id, v.event, v.version, v.env, v.received_at, v.valid)
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
                    (h.id, h.event, h.version, h.env, h.received_at, h.valid),
                    (v.id, v.event, v.version, v.env, v.received_at, v.valid)
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
    fn batches_encode_like_prost_and_split_without_copying() {
        use bytes::Bytes;
        let events: Vec<pb::Event> = (0..3)
            .map(|i| pb::Event {
                id: format!("{i}"),
                received_at: 1000 + i,
                fields: Bytes::from_static(b"{}"),
                ..Default::default()
            })
            .collect();
        let msg = pb::EventBatch {
            batch_id: "b".into(),
            collector: "c".into(),
            events: events.clone(),
        };
        let encoded: Vec<Bytes> = events.iter().map(|e| Bytes::from(e.encode_to_vec())).collect();
        let bytes = Bytes::from(batch::encode("b", "c", &encoded));
        assert_eq!(bytes, msg.encode_to_vec());
        let split = batch::events(&bytes).unwrap();
        assert_eq!(split, encoded);
        assert_eq!(batch::received_at(&split[2]).unwrap(), 1002);
        let view = batch::BatchView::decode(&bytes).unwrap();
        assert_eq!((view.batch_id, view.collector, view.events.len()), ("b", "c", 3));
        assert!(view.check_events().is_ok());
        assert!(batch::events(&Bytes::from_static(&[0x1a, 0x7f, 1])).is_err());
        let unstamped = Bytes::from(pb::Event::default().encode_to_vec());
        let bad = batch::encode("", "", &[encoded[0].clone(), unstamped]);
        let err = batch::BatchView::decode(&bad).unwrap().check_events().unwrap_err();
        assert_eq!(err.0, 1);
    }
}
