//! Metric names of the router (`weir_router_*`).

/// Batches taken into the log.
pub const BATCHES: &str = "weir_router_batches_received_total";
/// Events taken into the log.
pub const EVENTS: &str = "weir_router_events_received_total";
/// Retried batches recognised by id and not stored again.
pub const DUPLICATE_BATCHES: &str = "weir_router_duplicate_batches_total";
/// Batches refused as unreadable.
pub const BAD_BATCHES: &str = "weir_router_bad_batches_total";
/// Bytes in the durable log.
pub const LOG_BYTES: &str = "weir_router_log_bytes";
/// Events written to the hourly buffer.
pub const BUFFERED: &str = "weir_router_buffer_events_total";
/// Events that arrived for an hour already closed (the hour will be reloaded).
pub const LATE: &str = "weir_router_buffer_late_events_total";
/// Hours closed.
pub const HOURS_CLOSED: &str = "weir_router_buffer_hours_closed_total";
/// Hours deleted after `retention_days`.
pub const HOURS_EXPIRED: &str = "weir_router_buffer_hours_expired_total";
/// Log records the buffer could not read (skipped, logged).
pub const POISON: &str = "weir_router_buffer_unreadable_batches_total";
/// Times the catalog was reloaded from its directory.
pub const CATALOG_RELOADS: &str = "weir_router_catalog_reloads_total";
