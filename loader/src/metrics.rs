//! The loader's metric names (`weir_loader_<name>_<unit>`).

/// Hours committed to the warehouse.
pub const HOURS_LOADED: &str = "weir_loader_hours_loaded_total";
/// Valid rows written.
pub const ROWS_WRITTEN: &str = "weir_loader_rows_written_total";
/// Rows written to `_invalid/`.
pub const INVALID_ROWS_WRITTEN: &str = "weir_loader_invalid_rows_written_total";
/// Load rounds that failed (retried next round).
pub const FAILURES: &str = "weir_loader_failures_total";
/// When a load round last succeeded (Unix seconds).
pub const LAST_SUCCESS: &str = "weir_loader_last_success_timestamp_seconds";
/// Catalog directory reloads.
pub const CATALOG_RELOADS: &str = "weir_loader_catalog_reloads_total";
/// Bytes of hour buffers that held no record (damage skipped over).
pub const DAMAGED_BYTES: &str = "weir_loader_damaged_bytes_total";
/// Records whose event could not be read.
pub const UNREADABLE_RECORDS: &str = "weir_loader_unreadable_records_total";
