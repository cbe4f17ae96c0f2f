//! The `[loader]` section of the config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Loader settings. Paths left empty are derived from the data directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    /// Where Parquet lands (default `<data>/warehouse`).
    pub warehouse: Option<PathBuf>,
    /// Arrow Flight address (`weir loader serve`).
    pub flight: String,
    /// `/healthz`, `/readyz` and `/metrics` of `weir loader --config FILE`.
    pub listen: String,
    /// The router's hourly buffer to read (default `<data>/router/buffer`).
    pub buffer_dir: Option<PathBuf>,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Memory for one hour's index (about 64 bytes an event: 256 MiB indexes 4M events
    /// in memory); larger hours are indexed through spill files in the warehouse's
    /// `_staging`, so an hour of any size loads in bounded memory.
    pub index_memory_bytes: usize,
    /// How often `weir up` and `loader run --watch` look for closed hours.
    pub interval_secs: u64,
    /// Bearer token every Flight call must carry (`authorization: Bearer <token>`);
    /// none: open (fine on loopback).
    pub flight_token: Option<String>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            warehouse: None,
            flight: "127.0.0.1:8815".into(),
            listen: "127.0.0.1:8816".into(),
            buffer_dir: None,
            row_group_rows: 128 * 1024,
            index_memory_bytes: 256 << 20,
            interval_secs: 30,
            flight_token: None,
        }
    }
}
