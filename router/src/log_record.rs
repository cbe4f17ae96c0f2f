//! What a router log record holds: one `weir.v1.EventBatch`, kept as the collector sent
//! it. A batch sent with `Content-Encoding: zstd` is stored compressed, so the log's disk
//! writes (and the intake's copy into the page cache) are the compressed size, about a
//! tenth of the events' (Kafka keeps producer-compressed batches the same way); a plain
//! batch is stored plain. Readers tell the two apart by zstd's frame magic, which no
//! `EventBatch` starts with: intake refuses a plain batch that does.
//!
//! Logs written before batches were kept compressed hold plain records only, and read
//! as before.

use bytes::Bytes;

/// The first four bytes of a zstd frame (RFC 8878, 3.1.1). As the start of an encoded
/// `EventBatch` it would be field 5 (unknown) with a varint: no collector writes that.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Whether `data` starts with a zstd frame.
pub fn is_zstd(data: &[u8]) -> bool {
    data.starts_with(&ZSTD_MAGIC)
}

/// Why a compressed batch could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decompress {
    /// It decompresses to more than the limit.
    TooLarge,
    /// It is not zstd (the decoder's words).
    Bad(String),
}

/// Decompresses a zstd body (one frame or several), refusing more than `limit` bytes
/// without allocating them.
///
/// A frame that says its size (collectors' do) is decompressed in one call into a buffer
/// of exactly that size, with this thread's reused context; anything else (no size, a
/// size that is wrong, more frames, damage) takes the streaming decoder, which words the
/// error.
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, Decompress> {
    use std::io::Read;
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(body) {
        if size > limit as u64 {
            return Err(Decompress::TooLarge);
        }
        if let Some(out) = decompress_sized(body, size as usize) {
            return Ok(out);
        }
    }
    let decoder = zstd::stream::read::Decoder::new(body).map_err(|e| Decompress::Bad(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len().saturating_mul(8).min(limit));
    match decoder.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(Decompress::TooLarge),
        Ok(_) => Ok(out),
        Err(e) => Err(Decompress::Bad(e.to_string())),
    }
}

thread_local! {
    static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// One-call decompression into `size` bytes; `None` when that fails for any reason.
fn decompress_sized(body: &[u8], size: usize) -> Option<Vec<u8>> {
    CONTEXT.with(|c| {
        let mut c = c.try_borrow_mut().ok()?;
        if c.is_none() {
            *c = Some(zstd::bulk::Decompressor::new().ok()?);
        }
        let mut out = Vec::with_capacity(size);
        let n = c.as_mut()?.decompress_to_buffer(body, &mut out).ok()?;
        (n == size).then_some(out)
    })
}

/// The encoded `EventBatch` a log record holds: the record itself when it is plain, or
/// what it decompresses to. Intake took it whole, under `router.max_batch_bytes`, which is
/// at most a record's largest size; that is the limit here too.
pub fn batch(record: Bytes) -> Result<Bytes, String> {
    if !is_zstd(&record) {
        return Ok(record);
    }
    match decompress(&record, weir_proto::record::MAX_RECORD_LEN) {
        Ok(b) => Ok(Bytes::from(b)),
        Err(Decompress::TooLarge) => Err(format!(
            "the compressed batch is larger than {} bytes decompressed",
            weir_proto::record::MAX_RECORD_LEN
        )),
        Err(Decompress::Bad(e)) => Err(format!("cannot decompress the batch (zstd): {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompression_stops_at_the_limit() {
        let big = zstd::bulk::compress(&vec![0u8; 1 << 20], 1).unwrap();
        assert!(is_zstd(&big));
        assert_eq!(decompress(&big, 1000), Err(Decompress::TooLarge));
        assert_eq!(decompress(&big, 1 << 20).ok().map(|b| b.len()), Some(1 << 20));
        assert!(matches!(decompress(b"not zstd", 1000), Err(Decompress::Bad(_))));
    }

    #[test]
    fn records_are_read_plain_or_compressed() {
        let plain = Bytes::from_static(b"\x1a\x02ab");
        assert_eq!(batch(plain.clone()).unwrap(), plain, "a plain record is the batch");
        let compressed = Bytes::from(zstd::bulk::compress(&plain, 3).unwrap());
        assert_eq!(batch(compressed.clone()).unwrap(), plain);
        // Two frames back to back, as a streaming compressor may write them.
        let mut two = compressed.to_vec();
        two.extend_from_slice(&compressed);
        assert_eq!(&batch(Bytes::from(two)).unwrap()[..], b"\x1a\x02ab\x1a\x02ab");
        // A frame whose header says less than it holds takes the streaming decoder.
        let big = vec![7u8; 5000];
        let mut lying = zstd::bulk::compress(&big, 1).unwrap();
        let sized = zstd::zstd_safe::get_frame_content_size(&lying).unwrap();
        assert_eq!(sized, Some(5000));
        lying.extend_from_slice(&zstd::bulk::compress(&big, 1).unwrap());
        assert_eq!(decompress(&lying, 1 << 20).unwrap().len(), 10_000);
        assert_eq!(decompress(&lying, 9_999), Err(Decompress::TooLarge));
        let mut torn = compressed.to_vec();
        torn.truncate(torn.len() - 2);
        let err = batch(Bytes::from(torn)).unwrap_err();
        assert!(err.contains("cannot decompress"), "{err}");
    }
}
