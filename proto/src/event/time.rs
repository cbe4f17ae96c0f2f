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

/// Appends `us` (microseconds since the epoch) to `out` exactly as [`format_micros`]
/// writes it, without allocating or interpreting a format string: what every event
/// rendered as JSON pays once or twice.
pub fn write_micros(out: &mut Vec<u8>, us: i64) {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    if !(0..=9999).contains(&year) {
        // Beyond four-digit years chrono writes a sign (or the plain number).
        out.extend_from_slice(format_micros(us).as_bytes());
        return;
    }
    let second_of_day = secs.rem_euclid(86_400);
    let mut buf = *b"0000-00-00T00:00:00.000000Z";
    let mut digits = |at: usize, width: usize, mut n: i64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    digits(0, 4, year);
    digits(5, 2, month);
    digits(8, 2, day);
    digits(11, 2, second_of_day / 3600);
    digits(14, 2, second_of_day / 60 % 60);
    digits(17, 2, second_of_day % 60);
    digits(20, 6, micros);
    out.extend_from_slice(&buf);
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 5000, ..Default::default() })]

        /// The allocation-free writer writes what chrono does, for any time at all.
        #[test]
        fn write_micros_writes_what_format_micros_does(us in proptest::prelude::any::<i64>(), near in -100_000_000_000_000_000i64..100_000_000_000_000_000) {
            for t in [us, near, near / 1_000_000] {
                let mut out = b"x".to_vec();
                write_micros(&mut out, t);
                let want = format_micros(t);
                proptest::prop_assert_eq!(&out[1..], want.as_bytes());
            }
        }
    }

    #[test]
    fn time_edges_are_written_as_chrono_writes_them() {
        for us in [
            0,
            -1,
            1,
            951_782_400_000_000,
            253_402_300_799_999_999,
            253_402_300_800_000_000,
            -62_167_219_200_000_000,
            -62_167_219_200_000_001,
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = Vec::new();
            write_micros(&mut out, us);
            assert_eq!(String::from_utf8(out).unwrap(), format_micros(us), "{us}");
        }
    }

    #[test]
    fn integer_timestamps() {
        assert_eq!(parse_timestamp("1700000000000000"), Ok(Some(1_700_000_000_000_000)));
        assert!(parse_timestamp("1.5").is_err());
        assert_eq!(parse_timestamp("null"), Ok(None));
        assert_eq!(format_micros(1_795_352_645_123_456), "2026-11-22T13:04:05.123456Z");
    }
}
