//! Record framing shared by the spool, the router log and the hourly buffers.
//!
//! A record is `[len: u32 LE][crc32: u32 LE][payload: len bytes]`. The checksum covers
//! the payload, so a torn write at the tail of a file (a crash mid-append) is detected
//! and cut off instead of being read as data. Payloads are never empty: a zero length is
//! damage.

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
    // No writer frames an empty payload, and a zero-filled region (what some file
    // systems leave after a power loss) would otherwise read as empty records.
    if len == 0 || len > MAX_RECORD_LEN {
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

/// The offset of the next intact record in `buf` after a bad one at its start: the
/// first offset past 0 where a whole record with a matching checksum begins. `None` when
/// no intact record follows (the bad bytes run to the end: a torn tail).
///
/// A random match needs a plausible length *and* a CRC-32 hit, about one in 2^32 per
/// offset, so resyncing over damaged bytes does not invent records.
pub fn resync(buf: &[u8]) -> Option<usize> {
    (1..buf.len().saturating_sub(HEADER_LEN - 1)).find(|&at| matches!(decode(&buf[at..]), Decoded::Record(..)))
}

/// What a scan of a whole file of records found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Intact records.
    pub records: u64,
    /// Length of the intact prefix: where the first bad byte is (the file's length when
    /// every record is intact).
    pub valid_prefix: u64,
    /// Whether an intact record follows the first bad byte (damage in the middle, which
    /// readers skip with [`resync`]) rather than only a torn tail (which can be cut).
    pub intact_after: bool,
    /// Whether only zero bytes follow the intact prefix: space a log writer preallocated
    /// and had not written yet (or what some file systems leave after a power loss), not
    /// damage.
    pub zero_tail: bool,
}

/// Scans a file of records from the start, reading it once in bounded memory (one
/// record at a time), and says how much of it is intact.
pub fn scan(file: &std::fs::File) -> io::Result<Scan> {
    use std::io::{BufReader, Seek, SeekFrom};
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(0))?;
    let mut out = Scan::default();
    let mut header = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        if len - pos < HEADER_LEN as u64 {
            break;
        }
        reader.read_exact(&mut header)?;
        let n = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if n == 0 || n > MAX_RECORD_LEN || pos + (HEADER_LEN + n) as u64 > len {
            break;
        }
        payload.resize(n, 0);
        reader.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            break;
        }
        pos += (HEADER_LEN + n) as u64;
        out.records += 1;
    }
    out.valid_prefix = pos;
    if pos < len {
        // Read what follows the bad byte (at most one largest record: a torn write is
        // shorter than that, so more than that means damage in the middle).
        let rest = len - pos;
        if zeros(file, pos, len)? {
            out.zero_tail = true;
        } else if rest > (MAX_RECORD_LEN + HEADER_LEN) as u64 {
            out.intact_after = true;
        } else {
            use std::os::unix::fs::FileExt;
            let mut tail = vec![0u8; rest as usize];
            file.read_exact_at(&mut tail, pos)?;
            out.intact_after = resync(&tail).is_some();
        }
    }
    Ok(out)
}

/// Whether `file` holds only zero bytes from `from` to `to`, read in bounded chunks.
fn zeros(file: &std::fs::File, mut from: u64, to: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (to - from).min(1 << 16) as usize];
    while from < to {
        let n = ((to - from) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], from)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        from += n as u64;
    }
    Ok(true)
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
    fn resync_finds_the_next_intact_record_and_scan_tells_tail_from_middle() {
        let mut buf = Vec::new();
        encode_into(&mut buf, b"first");
        let good = buf.len();
        buf.extend_from_slice(b"\x05\x00garbage that is no record");
        let bad_end = buf.len();
        encode_into(&mut buf, b"second");
        assert_eq!(resync(&buf[good..]), Some(bad_end - good));
        assert_eq!(resync(&buf[good..bad_end]), None, "nothing intact after the damage");

        let tmp = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &tmp, &buf).unwrap();
        let s = scan(&tmp).unwrap();
        assert_eq!((s.records, s.valid_prefix, s.intact_after), (1, good as u64, true));

        let torn = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &torn, &buf[..bad_end + 5]).unwrap();
        let s = scan(&torn).unwrap();
        assert_eq!((s.records, s.valid_prefix, s.intact_after), (1, good as u64, false));

        let whole = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &whole, &buf[..good]).unwrap();
        assert_eq!(
            scan(&whole).unwrap(),
            Scan {
                records: 1,
                valid_prefix: good as u64,
                intact_after: false,
                zero_tail: false,
            }
        );

        // Preallocated space after the records is not damage; a torn record inside it is.
        let preallocated = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &preallocated, &buf[..good]).unwrap();
        preallocated.set_len(good as u64 + 200_000).unwrap();
        let s = scan(&preallocated).unwrap();
        assert_eq!(
            (s.valid_prefix, s.zero_tail, s.intact_after),
            (good as u64, true, false)
        );
        std::os::unix::fs::FileExt::write_all_at(&preallocated, &buf[good..bad_end + 5], good as u64).unwrap();
        let s = scan(&preallocated).unwrap();
        assert_eq!(
            (s.valid_prefix, s.zero_tail, s.intact_after),
            (good as u64, false, false)
        );
    }

    #[test]
    fn corrupt_payload_is_detected() {
        let mut buf = Vec::new();
        encode_into(&mut buf, b"hello");
        buf[9] ^= 0xff;
        assert_eq!(decode(&buf), Decoded::Corrupt);
        assert_eq!(decode(&[0u8; 64]), Decoded::Corrupt, "zeros are not empty records");
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 12]);
        assert_eq!(decode(&huge), Decoded::Corrupt);
    }
}
