//! What the running components (collector, router, loader) share, one copy each: the
//! durable record log ([`wal`]) and the file layouts on disk ([`buffer`],
//! [`dead_letter`]), free-space checks ([`disk`]), HTTP serving and probes ([`http`]),
//! signals ([`signal`]), retry delays ([`backoff`]), rate-limited logging
//! ([`log_limit`]), the catalog directory watcher ([`catalog_watch`]) and, with the
//! `mongo` feature, the MongoDB buffer's hour markers (`mongo_hours`), and with `kafka`
//! what Kafka mode's producers and consumers share (`kafka`).

pub mod backoff;
pub mod buffer;
pub mod catalog_watch;
pub mod dead_letter;
pub mod disk;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod log_limit;
#[cfg(feature = "mongo")]
pub mod mongo_hours;
pub mod signal;
pub mod wal;
