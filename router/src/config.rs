//! The `[router]` section of the config.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the hourly buffers live.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BufferConfig {
    /// Files under the data directory (the embedded default).
    File {
        /// Directory (default `<data>/router/buffer`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dir: Option<PathBuf>,
    },
    /// MongoDB collections `buffer_YYYYMMDDHH`.
    Mongo {
        /// Connection string.
        url: String,
        /// Database.
        db: String,
    },
}

impl BufferConfig {
    /// `"file buffer"` or `"mongo buffer"`, as the console lists it.
    pub fn kind(&self) -> &'static str {
        match self {
            BufferConfig::File { .. } => "file buffer",
            BufferConfig::Mongo { .. } => "mongo buffer",
        }
    }
}

/// Declares the recipient kinds: one line each, `Variant => module::Config`, where the
/// module in `router/src/recipients/` implements [`crate::recipients::Kind`] for its
/// `Config`. The `kind` key is the module's name.
macro_rules! recipient_kinds {
    ($($variant:ident => $module:ident::$config:ident),* $(,)?) => {
        /// A recipient the catalog's `recipients` can name.
        #[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
        #[serde(tag = "kind", rename_all = "lowercase")]
        pub enum RecipientConfig {
            $(
                #[doc = concat!("`kind = \"", stringify!($module), "\"`")]
                $variant(crate::recipients::$module::$config),
            )*
        }

        impl RecipientConfig {
            /// The kind's behaviour.
            pub fn as_kind(&self) -> &dyn crate::recipients::Kind {
                match self {
                    $(RecipientConfig::$variant(c) => c,)*
                }
            }

            /// The kind, as written in the config.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(RecipientConfig::$variant(_) => stringify!($module),)*
                }
            }
        }
    };
}

recipient_kinds! {
    Rabbitmq => rabbitmq::Config,
    Mongo => mongo::Config,
    Kafka => kafka::Config,
}

impl RecipientConfig {
    /// `(max_backlog_bytes, batch_events)`, which every kind has.
    pub fn limits(&self) -> (u64, usize) {
        self.as_kind().limits()
    }

    /// Checks what deserialization cannot: templates and limits. The error names the key
    /// within the recipient's table.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.as_kind().validate()?;
        if self.limits().1 == 0 {
            return Err(InvalidSetting::new("batch_events", "must be at least 1"));
        }
        Ok(())
    }
}

pub use weir_proto::InvalidSetting;

/// Router settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// TCP address for collectors (`POST /v1/batches`) and metrics.
    pub listen: String,
    /// Hourly buffer backend.
    pub buffer: BufferConfig,
    /// Days buffers are kept for replay.
    pub retention_days: u32,
    /// An hour closes this many seconds after it ends.
    pub grace_secs: u64,
    /// Durable log directory (default `<data>/router/log`).
    pub log_dir: Option<PathBuf>,
    /// Dead-letter store (default `<data>/router/dead-letters`).
    pub dead_letter_dir: Option<PathBuf>,
    /// Log segment size.
    pub log_segment_bytes: u64,
    /// Largest accepted batch body.
    pub max_batch_bytes: usize,
    /// How often the catalog directory is checked for changes.
    pub catalog_watch_secs: u64,
    /// How long shutdown waits for recipients to catch up before leaving the rest in the
    /// log for the next start.
    pub drain_secs: u64,
    /// Bearer token collectors (and the console) must send; none on loopback.
    pub token: Option<String>,
    /// Connections the listener serves at once.
    pub max_connections: usize,
    /// Intake answers 503 while the filesystem of the log or the file buffer has less
    /// free space than this, so the log's consumers always have room to move what it
    /// holds (0: no check).
    pub min_free_bytes: u64,
    /// Kafka mode: consume this topic (one group per recipient) instead of taking
    /// batches into a local log. Needs the MongoDB buffer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<weir_proto::runtime::kafka::KafkaConfig>,
    /// Paths of the stored event (`context.ip`, `fields.email`) the console's tail shows
    /// as `"***"`.
    pub tail_redact: Vec<String>,
    /// Console tail streams (`GET /v1/tail`) served at once; more get 503.
    pub tail_max_subscribers: usize,
    /// Events one tail stream shows a second at most (1 s bursts); what passes its filter
    /// beyond that is counted in its `event: dropped` messages, so a stream read as fast
    /// as it goes costs the router a bounded amount of rendering.
    pub tail_max_events_per_second: u32,
    /// Recipients by name.
    pub recipients: BTreeMap<String, RecipientConfig>,
}

impl RouterConfig {
    /// Checks ranges deserialization cannot, and every recipient; the error names the
    /// key (`router.max_batch_bytes`).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let max_record = weir_proto::record::MAX_RECORD_LEN;
        if self.max_batch_bytes == 0 || self.max_batch_bytes > max_record {
            return Err(InvalidSetting::new(
                "router.max_batch_bytes",
                format!(
                    "{} is out of range; it must be 1..={max_record} (64 MiB, the log's largest record)",
                    self.max_batch_bytes
                ),
            ));
        }
        if self.retention_days < 1 {
            return Err(InvalidSetting::new(
                "router.retention_days",
                "must be at least 1 (hours are kept for replay until the loader has committed them)",
            ));
        }
        if self.log_segment_bytes < 4096 {
            return Err(InvalidSetting::new(
                "router.log_segment_bytes",
                format!(
                    "{} is too small; use at least 4096 (default 67108864)",
                    self.log_segment_bytes
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.tail_max_events_per_second) {
            return Err(InvalidSetting::new(
                "router.tail_max_events_per_second",
                format!(
                    "{} is out of range; it must be 1..=1000000 (default 1000)",
                    self.tail_max_events_per_second
                ),
            ));
        }
        if let Some(k) = &self.kafka {
            k.validate().map_err(|e| e.within("router.kafka"))?;
            if let BufferConfig::File { .. } = self.buffer {
                return Err(InvalidSetting::new(
                    "router.buffer",
                    "Kafka mode (router.kafka) needs the MongoDB buffer, which every router shares: set buffer = { kind = \"mongo\", url = \"mongodb://...\", db = \"weir\" }",
                ));
            }
        }
        for (name, r) in &self.recipients {
            r.validate()
                .map_err(|e| e.within(&format!("router.recipients.{name}")))?;
        }
        Ok(())
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            listen: "127.0.0.1:8081".into(),
            buffer: BufferConfig::File { dir: None },
            retention_days: 3,
            grace_secs: 300,
            log_dir: None,
            dead_letter_dir: None,
            log_segment_bytes: 64 << 20,
            max_batch_bytes: 64 << 20,
            catalog_watch_secs: 2,
            drain_secs: 10,
            token: None,
            max_connections: weir_proto::runtime::http::DEFAULT_MAX_CONNECTIONS,
            min_free_bytes: 256 << 20,
            kafka: None,
            tail_redact: vec!["context.ip".into()],
            tail_max_subscribers: 32,
            tail_max_events_per_second: 1000,
            recipients: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_name_the_whole_key() {
        let mut cfg = RouterConfig::default();
        cfg.recipients.insert(
            "stream".into(),
            serde_json::from_str(r#"{"kind": "kafka", "brokers": "b", "batch_events": 0}"#).unwrap(),
        );
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.key, "router.recipients.stream.batch_events");
        assert_eq!(
            e.to_string(),
            "router.recipients.stream.batch_events: must be at least 1"
        );
        cfg.recipients.clear();
        cfg.retention_days = 0;
        assert_eq!(cfg.validate().unwrap_err().key, "router.retention_days");
    }
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn each_kind_parses_from_its_table_and_refuses_unknown_keys() {
        let r: RecipientConfig = serde_json::from_str(r#"{"kind": "rabbitmq", "url": "amqp://x"}"#).unwrap();
        assert_eq!((r.kind(), r.limits()), ("rabbitmq", (4 << 30, 500)));
        let m: RecipientConfig =
            serde_json::from_str(r#"{"kind": "mongo", "url": "u", "db": "d", "collection": "{event_ident}"}"#).unwrap();
        assert_eq!(m.kind(), "mongo");
        let e = serde_json::from_str::<RecipientConfig>(r#"{"kind": "kafka", "brokers": "b", "topik": "t"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("topik"), "{e}");
        let e = serde_json::from_str::<RecipientConfig>(r#"{"kind": "mqtt"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt"), "{e}");
        let bad: RecipientConfig =
            serde_json::from_str(r#"{"kind": "kafka", "brokers": "b", "topic": "{nope}"}"#).unwrap();
        assert_eq!(bad.validate().unwrap_err().key, "topic");
    }
}
