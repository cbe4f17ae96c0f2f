//! What the running components (collector, router, loader) share, one copy each: the
//! durable record log ([`wal`]) and the file layouts on disk ([`buffer`],
//! [`dead_letter`]), free-space checks ([`disk`]), HTTP serving and probes ([`http`]),
//! signals ([`signal`]), retry delays ([`backoff`]), rate-limited logging
//! ([`log_limit`]) and the catalog directory watcher ([`catalog_watch`]).

pub mod backoff;
pub mod buffer;
pub mod catalog_watch;
pub mod dead_letter;
pub mod disk;
pub mod http;
pub mod log_limit;
pub mod signal;
pub mod wal;
