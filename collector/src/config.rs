//! The `[collector]` section of the config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Collector settings. Paths left empty are derived from the data directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// TCP address of the HTTP API.
    pub listen: String,
    /// HTTP over a unix stream socket (default `<data>/collector.sock`).
    pub socket: Option<PathBuf>,
    /// Environment the unix stream socket binds: its senders may omit `env`, and
    /// may not send another.
    pub socket_env: Option<String>,
    /// Unix datagram socket, one JSON event or NDJSON per datagram (default
    /// `<data>/collector.dgram`).
    pub datagram: Option<PathBuf>,
    /// Environment the datagram socket binds.
    pub datagram_env: Option<String>,
    /// Routers to forward to, tried in order (failover).
    pub routers: Vec<String>,
    /// Kafka mode: produce every event to this topic instead of sending to `routers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<weir_proto::runtime::kafka::KafkaConfig>,
    /// The spool refuses new events (503) beyond this many bytes.
    pub spool_max_bytes: u64,
    /// Spool directory (default `<data>/collector/spool`).
    pub spool_dir: Option<PathBuf>,
    /// Where events every router refuses alone are kept, one NDJSON file a day (default
    /// `<data>/collector/dead-letters`).
    pub dead_letter_dir: Option<PathBuf>,
    /// Sent as `Authorization: Bearer <token>` to routers (and the catalog pull) when
    /// they set `[router] token`.
    pub router_token: Option<String>,
    /// Spool segment size; segments are deleted once the router has acknowledged them.
    pub spool_segment_bytes: u64,
    /// Name stamped on every event (default: `$NODE_NAME`, else the host name).
    pub name: Option<String>,
    /// Largest accepted request body, also after decompression.
    pub max_body_bytes: usize,
    /// Largest single event (its JSON); larger ones are rejected.
    pub max_event_bytes: usize,
    /// Request bodies held in memory at once, in bytes; past it, requests wait to be
    /// read (TCP backpressure), so memory stays bounded whatever the load.
    pub max_inflight_bytes: usize,
    /// Connections each listener serves at once.
    pub max_connections: usize,
    /// Most events in one batch to the router.
    pub batch_max_events: usize,
    /// Longest a partial batch waits for more events before it is sent.
    pub batch_max_wait_ms: u64,
    /// How long shutdown waits for the spool to drain to the router.
    pub drain_timeout_secs: u64,
    /// How often the catalog is pulled from the routers (when `catalog` is not a
    /// directory).
    pub catalog_poll_secs: u64,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: "127.0.0.1:8080".into(),
            socket: None,
            socket_env: None,
            datagram: None,
            datagram_env: None,
            routers: vec!["http://127.0.0.1:8081".into()],
            kafka: None,
            spool_max_bytes: 1 << 30,
            spool_dir: None,
            dead_letter_dir: None,
            router_token: None,
            spool_segment_bytes: 32 << 20,
            name: None,
            max_body_bytes: 5 << 20,
            max_event_bytes: crate::ingest::DEFAULT_MAX_EVENT_BYTES,
            max_inflight_bytes: 64 << 20,
            max_connections: weir_proto::runtime::http::DEFAULT_MAX_CONNECTIONS,
            batch_max_events: 1000,
            batch_max_wait_ms: 1,
            drain_timeout_secs: 30,
            catalog_poll_secs: 30,
        }
    }
}

impl CollectorConfig {
    /// Checks what deserialization cannot; the error names the key (`collector.kafka.topic`).
    pub fn validate(&self) -> Result<(), weir_proto::InvalidSetting> {
        if let Some(k) = &self.kafka {
            k.validate().map_err(|e| e.within("collector.kafka"))?;
        }
        Ok(())
    }

    /// The name stamped on events: the configured one, `$NODE_NAME`, or the host name.
    pub fn node_name(&self) -> String {
        if let Some(n) = self.name.as_ref().filter(|n| !n.is_empty()) {
            return n.clone();
        }
        if let Ok(n) = std::env::var("NODE_NAME") {
            if !n.is_empty() {
                return n;
            }
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "collector".into())
    }
}
