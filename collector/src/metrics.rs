//! Metric names of the collector (`weir_collector_*`).

use std::sync::Arc;

use crate::ingest::{Outcome, Tally};

/// Events received, by env and event.
pub const RECEIVED: &str = "weir_collector_events_received_total";
/// Events accepted (valid), by env and event.
pub const ACCEPTED: &str = "weir_collector_events_accepted_total";
/// Events kept flagged invalid, by env and event.
pub const FLAGGED: &str = "weir_collector_events_flagged_total";
/// Events refused, by env and event.
pub const REJECTED: &str = "weir_collector_events_rejected_total";
/// Events dropped (catalog `drop = true`, or spool full on datagrams), by env and event.
pub const DROPPED: &str = "weir_collector_events_dropped_total";
/// Datagram events dropped before the spool, by reason (`spool_full`, `spool_error`).
pub const DATAGRAM_DROPPED: &str = "weir_collector_datagram_dropped_total";
/// 1 for the catalog revision in use (0 for earlier ones).
pub const CATALOG_INFO: &str = "weir_collector_catalog_info";
/// Seconds since a router last confirmed the catalog in use (or since it was loaded).
pub const CATALOG_AGE: &str = "weir_collector_catalog_age_seconds";
/// HTTP requests, by status code.
pub const REQUESTS: &str = "weir_collector_http_requests_total";
/// Bytes in the spool.
pub const SPOOL_BYTES: &str = "weir_collector_spool_bytes";
/// Bytes in the spool not yet acknowledged by a router (the backlog).
pub const SPOOL_PENDING: &str = "weir_collector_spool_pending_bytes";
/// Segment files in the spool.
pub const SPOOL_SEGMENTS: &str = "weir_collector_spool_segments";
/// Batches the router acknowledged.
pub const FORWARDED_BATCHES: &str = "weir_collector_forwarded_batches_total";
/// Events the router acknowledged.
pub const FORWARDED_EVENTS: &str = "weir_collector_forwarded_events_total";
/// Failed forward attempts that will be retried.
pub const FORWARD_RETRIES: &str = "weir_collector_forward_retries_total";
/// Times a forwarder cursor could not be read and the spool was resent from its oldest
/// segment (duplicates, never loss).
pub const CURSOR_RESETS: &str = "weir_collector_cursor_resets_total";
/// Events every router refused alone, kept in the collector's dead-letter store.
pub const DEAD_LETTERED: &str = "weir_collector_dead_lettered_events_total";
/// Time from sending a batch to its acknowledgement.
pub const FORWARD_LATENCY: &str = "weir_collector_forward_latency_seconds";

/// The counters of one (env, event): made once, on its first event, and shared after.
#[derive(Debug)]
pub struct EventCounters {
    env: Box<str>,
    event: Box<str>,
    received: metrics::Counter,
    /// By [`Outcome`], in its order.
    outcomes: [metrics::Counter; 4],
}

impl EventCounters {
    fn new(env: &str, event: &str) -> EventCounters {
        let labels = [("env", env.to_string()), ("event", event.to_string())];
        EventCounters {
            env: env.into(),
            event: event.into(),
            received: metrics::counter!(RECEIVED, &labels),
            outcomes: [ACCEPTED, FLAGGED, REJECTED, DROPPED].map(|name| metrics::counter!(name, &labels)),
        }
    }

    /// Whether these are the counters of `env` and `event`.
    pub fn is(&self, env: &str, event: &str) -> bool {
        &*self.env == env && &*self.event == event
    }
}

type CounterMap = std::collections::HashMap<Box<str>, std::collections::HashMap<Box<str>, Arc<EventCounters>>>;

/// Every (env, event) counted so far: catalog names and `_unknown` only, so bounded by
/// the catalog. Read without a lock; a pair seen for the first time copies the map.
static COUNTERS: std::sync::LazyLock<arc_swap::ArcSwap<CounterMap>> = std::sync::LazyLock::new(Default::default);

/// The counters of `env` and `event`.
pub fn counters(env: &str, event: &str) -> Arc<EventCounters> {
    if let Some(c) = COUNTERS.load().get(env).and_then(|m| m.get(event)) {
        return c.clone();
    }
    let made = Arc::new(EventCounters::new(env, event));
    let mut kept = made.clone();
    COUNTERS.rcu(|current| {
        let mut next = CounterMap::clone(current);
        let slot = next
            .entry(env.into())
            .or_default()
            .entry(event.into())
            .or_insert_with(|| made.clone());
        kept = slot.clone();
        next
    });
    kept
}

/// Records a request's tally.
pub fn record(tally: &Tally) {
    for (counters, outcome, n) in &tally.counts {
        counters.received.increment(*n);
        let i = match outcome {
            Outcome::Accepted => 0,
            Outcome::Flagged => 1,
            Outcome::Rejected => 2,
            Outcome::Dropped => 3,
        };
        counters.outcomes[i].increment(*n);
    }
}

/// `weir_collector_http_requests_total` of a status code: one counter per code, made on
/// its first use (no label string built per request).
pub fn requests(code: hyper::StatusCode) -> metrics::Counter {
    static BY_CODE: [std::sync::OnceLock<metrics::Counter>; 500] = [const { std::sync::OnceLock::new() }; 500];
    let made = || metrics::counter!(REQUESTS, "code" => code.as_str().to_string());
    match BY_CODE.get(usize::from(code.as_u16()).wrapping_sub(100)) {
        Some(slot) => slot.get_or_init(made).clone(),
        None => made(),
    }
}

/// Updates the spool gauges.
pub fn refresh_spool(spool: &crate::spool::Spool) {
    metrics::gauge!(SPOOL_BYTES).set(spool.wal().bytes() as f64);
    metrics::gauge!(SPOOL_PENDING).set(spool.pending_bytes() as f64);
    metrics::gauge!(SPOOL_SEGMENTS).set(spool.wal().segments() as f64);
}

/// Proxy requests refused with 429 (label `by`: `key` or `ip`).
pub const PROXY_LIMITED: &str = "weir_proxy_rate_limited_requests_total";
/// When the GeoIP database in use was built (Unix seconds; 0 = none loaded).
pub const PROXY_GEOIP_BUILT: &str = "weir_proxy_geoip_build_timestamp_seconds";
