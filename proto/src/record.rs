//! Record framing shared by the spool, the router log and the hourly buffers.
//!
//! A record is `[len: u32 LE][crc32: u32 LE][payload: len bytes]`. The checksum covers
//! the payload, so a torn write at the tail of a file (a crash mid-append) is detected
//! and cut off instead of being read as data.

use std::io::{self, Read};

/// Bytes of framing before each payload.
pub const HEADER_LEN: usize = 8;

/// Largest payload a record may carry (64 MiB); anything larger is treated as corruption.
pub const MAX_RECORD_LEN: usize = 64 << 20;

/// Appends one framed record holding `payload` to `out`.
pub fn encode_into(out: &mut Vec<u8>, payload: &[u8]) {
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends a framed record whose payload is produced by `write` into `out` in place,
/// avoiding a temporary buffer per record.
pub fn encode_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    write(out);
    let len = out.len() - start - HEADER_LEN;
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Outcome of decoding the record at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, intact record and the number of bytes it took.
    Record(&'a [u8], usize),
    /// The buffer ends before the record does (a torn tail, or more to read).
    Incomplete,
    /// The header or checksum is wrong: the bytes are not a record.
    Corrupt,
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < HEADER_LEN {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_RECORD_LEN {
        return Decoded::Corrupt;
    }
    if buf.len() < HEADER_LEN + len {
        return Decoded::Incomplete;
    }
    let payload = &buf[HEADER_LEN..HEADER_LEN + len];
    if crc32fast::hash(payload) != crc {
        return Decoded::Corrupt;
    }
    Decoded::Record(payload, HEADER_LEN + len)
}

/// Reads a whole file of records. Returns the payloads of the intact prefix and the
/// byte length of that prefix; anything after it (a torn or corrupt tail) is ignored.
pub fn read_all(reader: &mut impl Read) -> io::Result<(Vec<bytes::Bytes>, u64)> {
    let mut data = Vec::new();
    reader.read_to_end(&mut data)?;
    let data = bytes::Bytes::from(data);
    let mut records = Vec::new();
    let mut pos = 0usize;
    while let Decoded::Record(_, used) = decode(&data[pos..]) {
        records.push(data.slice(pos + HEADER_LEN..pos + used));
        pos += used;
    }
    Ok((records, pos as u64))
}

/// Iterates the intact records at the front of a byte slice.
pub fn iter(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0usize;
    std::iter::from_fn(move || match decode(&buf[pos..]) {
        Decoded::Record(payload, used) => {
            pos += used;
            Some(payload)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_tail() {
        let mut buf = Vec::new();
        encode_into(&mut buf, b"hello");
        encode_with(&mut buf, |out| out.extend_from_slice(b"world!"));
        let whole = buf.len();
        encode_into(&mut buf, b"torn");
        buf.truncate(buf.len() - 2);
        let got: Vec<&[u8]> = iter(&buf).collect();
        assert_eq!(got, vec![&b"hello"[..], &b"world!"[..]]);
        let (records, valid) = read_all(&mut &buf[..]).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(valid as usize, whole);
    }

    #[test]
    fn corrupt_payload_is_detected() {
        let mut buf = Vec::new();
        encode_into(&mut buf, b"hello");
        buf[9] ^= 0xff;
        assert_eq!(decode(&buf), Decoded::Corrupt);
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 12]);
        assert_eq!(decode(&huge), Decoded::Corrupt);
    }
}
