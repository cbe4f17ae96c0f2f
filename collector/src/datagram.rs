//! The unix datagram socket: the cheapest possible send. Each datagram is one JSON
//! event, a JSON array, or NDJSON lines; there is no reply. Rejected events and drops
//! are counted in metrics and logged at most once per 10 s.
//!
//! Datagrams waiting in the socket are read in bursts and appended to the spool as one
//! group, with up to 8 appends in flight, so one fsync covers thousands of datagrams.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixDatagram;
use tokio::sync::{watch, Semaphore};
use weir_proto::runtime::log_limit::LogLimit;

use crate::body::{self, Format};
use crate::http::State;
use crate::ingest::{self, Source};
use crate::metrics as m;

/// Largest datagram read (Linux caps unix datagrams near 208 KiB by default).
pub const MAX_DATAGRAM: usize = 256 << 10;
const BURST_BYTES: usize = 1 << 20;
const IN_FLIGHT: usize = 8;

/// Splits one datagram into events: a JSON object or array, else NDJSON.
fn split(data: &[u8]) -> Result<Vec<weir_proto::event::Incoming<'_>>, body::BodyError> {
    body::split(data, Format::Json).or_else(|_| body::split(data, Format::Ndjson))
}

/// Serves the datagram socket until `shutdown`; then waits for appends in flight.
pub async fn run(
    socket: UnixDatagram,
    state: Arc<State>,
    bound_env: Option<Arc<str>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let log = Arc::new(LogLimit::new(Duration::from_secs(10)));
    loop {
        let n = tokio::select! {
            r = socket.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "datagram receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        };
        let catalog = state.catalog.load();
        let now = weir_proto::event::now_micros();
        let source = Source {
            bound_env: bound_env.as_deref(),
            ..Default::default()
        };
        let mut group = ingest::Ingested::default();
        let take = |data: &[u8], group: &mut ingest::Ingested| match split(data) {
            Ok(items) => {
                let got = ingest::ingest_limited(&catalog, &items, source, &state.name, now, state.max_event_bytes);
                if got.summary.rejected > 0 {
                    if let (Some(held), Some(first)) = (log.allow(), got.summary.errors.first()) {
                        tracing::warn!(error = %first.error, rejected = got.summary.rejected, held_back = held, "datagram events rejected");
                    }
                }
                group.framed.extend_from_slice(&got.framed);
                group.records += got.records;
                group.tally.counts.extend(got.tally.counts);
            }
            Err(e) => {
                metrics::counter!(m::REJECTED, "env" => "_unknown", "event" => "_unknown").increment(1);
                metrics::counter!(m::RECEIVED, "env" => "_unknown", "event" => "_unknown").increment(1);
                if let Some(held) = log.allow() {
                    tracing::warn!(error = %e, held_back = held, "unreadable datagram dropped");
                }
            }
        };
        take(&buf[..n], &mut group);
        // Drain what else is waiting, without waiting.
        while group.framed.len() < BURST_BYTES {
            match socket.try_recv(&mut buf) {
                Ok(n) => take(&buf[..n], &mut group),
                Err(_) => break,
            }
        }
        if group.records == 0 {
            m::record(&group.tally);
            continue;
        }
        if !state.spool.has_room(group.framed.len()) {
            metrics::counter!(m::DATAGRAM_DROPPED, "reason" => "spool_full").increment(group.records as u64);
            if let Some(held) = log.allow() {
                tracing::warn!(
                    events = group.records,
                    held_back = held,
                    "spool full: datagram events dropped"
                );
            }
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let spool = state.spool.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let records = group.records;
            match spool.append(group.framed).await {
                Ok(_) => m::record(&group.tally),
                Err(e) => {
                    metrics::counter!(m::DATAGRAM_DROPPED, "reason" => "spool_error").increment(records as u64);
                    if let Some(held) = log.allow() {
                        tracing::error!(error = %e, events = records, held_back = held, "spool write failed: datagram events dropped");
                    }
                }
            }
            drop(permit);
        });
    }
    let _ = permits.acquire_many(IN_FLIGHT as u32).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_shapes() {
        assert_eq!(split(br#"{"a":1}"#).unwrap().len(), 1);
        assert_eq!(split(b"{\"a\":1}\n{\"b\":2}").unwrap().len(), 2);
        assert_eq!(split(br#"[{"a":1},{"b":2}]"#).unwrap().len(), 2);
        assert!(split(b"nope").is_err());
    }
}
