//! Reading `EventBatch` bytes without decoding every event into owned messages.

use bytes::{Buf, Bytes};
use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};

/// An encoded batch or event that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        DecodeError(e.to_string())
    }
}

/// The encoded events (field 3) of an encoded `EventBatch`, as zero-copy slices.
pub fn events(batch: &Bytes) -> Result<Vec<Bytes>, DecodeError> {
    let mut buf = batch.clone();
    let mut out = Vec::new();
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf)?;
        if tag == 3 && wire == WireType::LengthDelimited {
            let len = decode_varint(&mut buf)? as usize;
            if len > buf.remaining() {
                return Err(DecodeError("event length past the end of the batch".into()));
            }
            out.push(buf.split_to(len));
        } else {
            skip_field(wire, tag, &mut buf, DecodeContext::default())?;
        }
    }
    Ok(out)
}

/// Reads only `received_at` (field 5) of an encoded `Event`.
pub fn received_at(event: &[u8]) -> Result<i64, DecodeError> {
    let mut buf = event;
    let mut at = 0i64;
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf)?;
        if tag == 5 && wire == WireType::Varint {
            at = decode_varint(&mut buf)? as i64;
        } else {
            skip_field(wire, tag, &mut buf, DecodeContext::default())?;
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use weir_proto::pb::{Event, EventBatch};

    #[test]
    fn splits_events_and_reads_received_at() {
        let batch = EventBatch {
            batch_id: "b".into(),
            collector: "c".into(),
            events: (0..3)
                .map(|i| Event {
                    id: format!("{i}"),
                    received_at: 1000 + i,
                    fields: Bytes::from_static(b"{}"),
                    ..Default::default()
                })
                .collect(),
        };
        let bytes = Bytes::from(batch.encode_to_vec());
        let evs = events(&bytes).unwrap();
        assert_eq!(evs.len(), 3);
        assert_eq!(received_at(&evs[2]).unwrap(), 1002);
        assert_eq!(Event::decode(evs[1].clone()).unwrap(), batch.events[1]);
        assert!(events(&Bytes::from_static(&[0x1a, 0x7f, 1])).is_err());
    }
}
