//! Event times and ids: RFC 3339 and integer-microsecond timestamps, and UUIDv7 ids.

use super::incoming::CowStr;

/// Parses a timestamp given (as valid JSON text) as an RFC 3339 string or integer
/// microseconds since the epoch. `null` is no timestamp.
pub fn parse_timestamp(text: &str) -> Result<Option<i64>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_timestamp("1700000000000000"), Ok(Some(1_700_000_000_000_000)));
        assert!(parse_timestamp("1.5").is_err());
        assert_eq!(parse_timestamp("null"), Ok(None));
        assert_eq!(format_micros(1_795_352_645_123_456), "2026-11-22T13:04:05.123456Z");
    }
}
