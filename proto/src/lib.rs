//! weir's foundation: the protobuf wire contracts, the event model, the event catalog
//! and its code generators, the record framing — and, behind the default `runtime`
//! feature, what the running components share ([`runtime`]: the durable log, HTTP
//! serving, signals, backoff, rate-limited logging, the catalog watcher). A tool that only
//! checks catalogs or generates clients depends on weir-proto with
//! `default-features = false` and compiles no tokio or hyper.
#![warn(missing_docs)]

pub mod catalog;
pub mod codegen;
pub mod event;
pub mod record;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod secret;
pub mod text;

/// Generated protobuf messages of `weir.v1` (see `proto/weir/v1/weir.proto`).
#[allow(missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/weir.v1.rs"));
}

pub use catalog::Catalog;

/// A setting with a value no component can run with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSetting {
    /// The key, dotted (`router.max_batch_bytes`).
    pub key: String,
    /// What is wrong and what to set instead.
    pub message: String,
}

impl InvalidSetting {
    /// `key` is wrong: `message`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> InvalidSetting {
        InvalidSetting {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same, with its key inside the table `prefix`.
    pub fn within(self, prefix: &str) -> InvalidSetting {
        InvalidSetting {
            key: format!("{prefix}.{}", self.key),
            message: self.message,
        }
    }
}

/// Hours as weir names them: `2026-11-22T13` (UTC).
pub mod hour {
    use chrono::{DateTime, NaiveDateTime, Utc};

    /// Microseconds in an hour.
    pub const HOUR_MICROS: i64 = 3_600_000_000;

    /// The hour (as hours since the epoch) that a timestamp in µs falls in.
    pub fn of_micros(us: i64) -> i64 {
        us.div_euclid(HOUR_MICROS)
    }

    /// Formats an hour as `YYYYMMDDHH`, the buffer's file name.
    pub fn compact(hour: i64) -> String {
        start(hour).format("%Y%m%d%H").to_string()
    }

    /// Formats an hour as `2026-11-22T13`, the form the CLI takes.
    pub fn display(hour: i64) -> String {
        start(hour).format("%Y-%m-%dT%H").to_string()
    }

    /// The UTC date (`YYYY-MM-DD`) and hour (`HH`) of an hour, for partition paths.
    pub fn date_and_hour(hour: i64) -> (String, String) {
        let t = start(hour);
        (t.format("%Y-%m-%d").to_string(), t.format("%H").to_string())
    }

    /// The start of an hour.
    pub fn start(hour: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default()
    }

    /// Parses `YYYYMMDDHH`.
    pub fn parse_compact(s: &str) -> Option<i64> {
        if s.len() != 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let t = NaiveDateTime::parse_from_str(&format!("{s}0000"), "%Y%m%d%H%M%S").ok()?;
        Some(t.and_utc().timestamp().div_euclid(3600))
    }

    /// Parses `2026-11-22T13` (the CLI's form; `2026-11-22T13:00` is accepted too).
    pub fn parse(s: &str) -> Result<i64, String> {
        let base = s.strip_suffix(":00").unwrap_or(s);
        NaiveDateTime::parse_from_str(&format!("{base}:00:00"), "%Y-%m-%dT%H:%M:%S")
            .map(|t| t.and_utc().timestamp().div_euclid(3600))
            .map_err(|_| format!("{s:?} is not an hour like 2026-11-22T13"))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn hour_round_trips() {
            let h = super::parse("2026-11-22T13").unwrap();
            assert_eq!(super::display(h), "2026-11-22T13");
            assert_eq!(super::compact(h), "2026112213");
            assert_eq!(super::parse_compact("2026112213"), Some(h));
            assert_eq!(super::date_and_hour(h), ("2026-11-22".into(), "13".into()));
            assert!(super::parse("2026-11-22").is_err());
            assert_eq!(super::of_micros(-1), -1);
        }
    }
}
