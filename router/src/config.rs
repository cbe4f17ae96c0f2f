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

/// A recipient the catalog's `recipients` can name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RecipientConfig {
    /// A RabbitMQ topic exchange; routing key = event name.
    Rabbitmq {
        /// AMQP URL.
        url: String,
        /// Durable topic exchange (declared when missing).
        #[serde(default = "default_exchange")]
        exchange: String,
        /// Larger messages are dead-lettered instead of sent (RabbitMQ's own default
        /// limit is 128 MiB).
        #[serde(default = "default_max_message")]
        max_message_bytes: usize,
        /// Once this much of the router log waits for this recipient, intake answers 503
        /// (collectors keep spooling) until it catches up.
        #[serde(default = "default_max_backlog")]
        max_backlog_bytes: u64,
        /// Most events sent to the server in one go.
        #[serde(default = "default_batch_events")]
        batch_events: usize,
    },
    /// A MongoDB collection per template.
    Mongo {
        /// Connection string.
        url: String,
        /// Database.
        db: String,
        /// Collection template (`{event}`, `{event_ident}`).
        collection: String,
        /// Once this much of the router log waits for this recipient, intake answers 503
        /// (collectors keep spooling) until it catches up.
        #[serde(default = "default_max_backlog")]
        max_backlog_bytes: u64,
        /// Most events sent to the server in one go.
        #[serde(default = "default_batch_events")]
        batch_events: usize,
    },
    /// A Kafka topic per template.
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// Topic template (`{event}`, `{event_ident}`).
        #[serde(default = "default_topic")]
        topic: String,
        /// Extra librdkafka producer settings (`"queue.buffering.max.ms" = "10"`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        options: BTreeMap<String, String>,
        /// Once this much of the router log waits for this recipient, intake answers 503
        /// (collectors keep spooling) until it catches up.
        #[serde(default = "default_max_backlog")]
        max_backlog_bytes: u64,
        /// Most events sent to the server in one go.
        #[serde(default = "default_batch_events")]
        batch_events: usize,
    },
}

impl RecipientConfig {
    /// `(max_backlog_bytes, batch_events)`, which every kind has.
    pub fn limits(&self) -> (u64, usize) {
        match self {
            RecipientConfig::Rabbitmq {
                max_backlog_bytes,
                batch_events,
                ..
            }
            | RecipientConfig::Mongo {
                max_backlog_bytes,
                batch_events,
                ..
            }
            | RecipientConfig::Kafka {
                max_backlog_bytes,
                batch_events,
                ..
            } => (*max_backlog_bytes, *batch_events),
        }
    }

    /// The kind, as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            RecipientConfig::Rabbitmq { .. } => "rabbitmq",
            RecipientConfig::Mongo { .. } => "mongo",
            RecipientConfig::Kafka { .. } => "kafka",
        }
    }

    /// Checks what deserialization cannot: templates and limits. The error names the key
    /// within the recipient's table.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let template = match self {
            RecipientConfig::Mongo { collection, .. } => Some(("collection", collection)),
            RecipientConfig::Kafka { topic, .. } => Some(("topic", topic)),
            RecipientConfig::Rabbitmq { .. } => None,
        };
        if let Some((key, t)) = template {
            crate::recipients::check_template(t).map_err(|e| InvalidSetting::new(key, e))?;
        }
        if self.limits().1 == 0 {
            return Err(InvalidSetting::new("batch_events", "must be at least 1"));
        }
        Ok(())
    }
}

fn default_max_backlog() -> u64 {
    4 << 30
}

fn default_batch_events() -> usize {
    500
}

fn default_exchange() -> String {
    "weir.events".into()
}

fn default_max_message() -> usize {
    128 << 20
}

fn default_topic() -> String {
    "weir.{event}".into()
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
