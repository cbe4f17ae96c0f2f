//! Metric names of the router (`weir_router_*`).

/// Runs of records the log's consumers took (label `from`): `memory`, as intake offered
/// them, or `disk`, read back, decompressed and decoded (a consumer that fell behind).
pub const LOG_READS: &str = "weir_router_log_reads_total";
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
/// Hours past `retention_days` kept because the loader has not committed all of them.
pub const HOURS_KEPT_UNLOADED: &str = "weir_router_buffer_hours_kept_unloaded";
/// Times a consumer's cursor could not be read and it started again from the oldest
/// retained record (duplicates, never loss).
pub const CURSOR_RESETS: &str = "weir_router_cursor_resets_total";
/// Times the catalog was reloaded from its directory.
pub const CATALOG_RELOADS: &str = "weir_router_catalog_reloads_total";
/// Events a recipient's server confirmed (label `recipient`).
pub const RECIPIENT_DELIVERED: &str = "weir_router_recipient_delivered_events_total";
/// Event deliveries that failed and will be tried again.
pub const RECIPIENT_RETRIED: &str = "weir_router_recipient_retried_events_total";
/// Messages RabbitMQ returned as unroutable (no queue bound; dead-lettered).
pub const RECIPIENT_UNROUTABLE: &str = "weir_router_recipient_unroutable_total";
/// Events put into the recipient's dead-letter store.
pub const RECIPIENT_DEAD: &str = "weir_router_recipient_dead_lettered_events_total";
/// Events of the log the recipient has not passed yet.
pub const RECIPIENT_BACKLOG_EVENTS: &str = "weir_router_recipient_backlog_events";
/// Events the recipient has not passed yet: in Kafka mode the sum over this router's
/// partitions of high watermark minus the group's committed offset (sum it over routers
/// for the group's lag); in HTTP mode the same as the backlog.
pub const RECIPIENT_LAG: &str = "weir_router_recipient_lag_events";
/// Bytes of the log the recipient has not passed yet (intake answers 503 past `max_backlog_bytes`).
pub const RECIPIENT_BACKLOG_BYTES: &str = "weir_router_recipient_backlog_bytes";
/// Age of the oldest event the recipient has not delivered yet (0 when caught up).
pub const RECIPIENT_BACKLOG_AGE: &str = "weir_router_recipient_backlog_oldest_age_seconds";
/// Time from `received_at` to the recipient's confirmation, sampled: one delivered event
/// in [`crate::recipients::runner::LATENCY_EVERY`].
pub const RECIPIENT_LATENCY: &str = "weir_router_recipient_delivery_latency_seconds";
/// 1 while the recipient's last delivery succeeded, 0 while it is failing.
pub const RECIPIENT_UP: &str = "weir_router_recipient_up";
/// Batches refused with 503 because a recipient's backlog is full.
pub const BACKLOG_FULL: &str = "weir_router_backlog_full_rejections_total";
/// Batches refused because free disk space was below `min_free_bytes`.
pub const DISK_LOW: &str = "weir_router_disk_low_rejections_total";
