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
        /// Topic exchange.
        exchange: String,
    },
    /// A MongoDB collection per template.
    Mongo {
        /// Connection string.
        url: String,
        /// Database.
        db: String,
        /// Collection template (`{event}`, `{event_ident}`).
        collection: String,
    },
    /// A Kafka topic per template.
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// Topic template (`{event}`, `{event_ident}`).
        #[serde(default = "default_topic")]
        topic: String,
    },
}

fn default_topic() -> String {
    "weir.{event}".into()
}

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
    /// Log segment size.
    pub log_segment_bytes: u64,
    /// Largest accepted batch body.
    pub max_batch_bytes: usize,
    /// How often the catalog directory is checked for changes.
    pub catalog_watch_secs: u64,
    /// Recipients by name.
    pub recipients: BTreeMap<String, RecipientConfig>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            listen: "127.0.0.1:8081".into(),
            buffer: BufferConfig::File { dir: None },
            retention_days: 3,
            grace_secs: 300,
            log_dir: None,
            log_segment_bytes: 64 << 20,
            max_batch_bytes: 64 << 20,
            catalog_watch_secs: 2,
            recipients: BTreeMap::new(),
        }
    }
}
