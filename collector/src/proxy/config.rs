//! The `[proxy]` section: write keys, origins, limits, trusted proxies.

use serde::{Deserialize, Serialize};

/// One write key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Or the environment variable holding it (keeps secrets out of config files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// The environment every event sent with this key belongs to.
    pub env: String,
    /// Requests per second this key may send (and as large a burst); none = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

/// The `[proxy]` section of the config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Public listen address (`weir up` uses 127.0.0.1:8088).
    pub listen: String,
    /// Write keys.
    pub keys: Vec<KeyConfig>,
    /// Origins allowed to send from a browser (`https://shop.example`); `*` allows any.
    pub cors_origins: Vec<String>,
    /// Peers whose X-Forwarded-For is believed (load balancers): addresses or CIDRs.
    pub trusted_proxies: Vec<String>,
    /// Zero the host part of client addresses (IPv4 /24, IPv6 /48) for privacy.
    pub truncate_ip: bool,
    /// Largest request body, also after decompression.
    pub max_body_bytes: usize,
    /// Most events in one request (413 beyond).
    pub max_events: usize,
    /// Connections served at once (slow clients cannot exhaust descriptors).
    pub max_connections: usize,
    /// Requests per second one client address may send (and as large a burst); 0 = no
    /// limit.
    pub per_ip_rate: u32,
    /// A MaxMind-format database (GeoIP2/GeoLite2 City or Country `.mmdb`) for the
    /// `country` and `region` context entries; none = no such entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip: Option<std::path::PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:8088".into(),
            keys: Vec::new(),
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            truncate_ip: false,
            max_body_bytes: 512 << 10,
            max_events: 5000,
            max_connections: weir_proto::runtime::http::DEFAULT_MAX_CONNECTIONS,
            per_ip_rate: 0,
            geoip: None,
        }
    }
}
