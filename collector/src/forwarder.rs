//! Sends the spool to the routers as protobuf `EventBatch`es (zstd on the wire) and
//! frees spool segments only after a router's `BatchAck`. Retries with exponential
//! backoff and jitter while no router answers, failing over between routers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use tokio::sync::watch;
use weir_proto::pb::BatchAck;

use crate::metrics as m;
use crate::spool::Spool;

/// Forwarder settings.
#[derive(Clone, Debug)]
pub struct ForwarderOptions {
    /// Router base URLs, tried in order.
    pub routers: Vec<String>,
    /// Collector name sent with each batch.
    pub collector: String,
    /// Most events per batch.
    pub batch_max_events: usize,
    /// Longest a partial batch waits for more.
    pub batch_max_wait: Duration,
    /// How long to keep trying to drain after shutdown was asked for.
    pub drain_timeout: Duration,
}

/// Builds the wire bytes of an `EventBatch` from already-encoded events, without
/// decoding them.
pub fn encode_batch(batch_id: &str, collector: &str, events: &[Bytes]) -> Vec<u8> {
    let size: usize = events.iter().map(|e| e.len() + 6).sum::<usize>() + batch_id.len() + collector.len() + 8;
    let mut out = Vec::with_capacity(size);
    for (tag, s) in [(1u32, batch_id), (2, collector)] {
        encode_key(tag, WireType::LengthDelimited, &mut out);
        encode_varint(s.len() as u64, &mut out);
        out.extend_from_slice(s.as_bytes());
    }
    for e in events {
        encode_key(3, WireType::LengthDelimited, &mut out);
        encode_varint(e.len() as u64, &mut out);
        out.extend_from_slice(e);
    }
    out
}

/// Runs until shutdown is asked for and the spool is drained (or the drain timeout
/// passes; what is left stays in the spool for the next start).
pub async fn run(spool: Spool, opts: ForwarderOptions, mut shutdown: watch::Receiver<bool>) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let start = match spool.forwarded() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the forwarder cursor; resending the whole spool");
            spool.wal().first_position().unwrap_or_default()
        }
    };
    let mut reader = Some(spool.wal().reader(start));
    let mut durable = spool.wal().subscribe();
    let mut router_idx = 0usize;
    let mut deadline: Option<Instant> = None;
    loop {
        let stopping = *shutdown.borrow();
        if stopping && deadline.is_none() {
            deadline = Some(Instant::now() + opts.drain_timeout);
        }
        let from = reader.as_ref().map(|r| r.position()).unwrap_or_default();
        let (mut events, r) = read(reader.take(), opts.batch_max_events).await;
        reader = r;
        if reader.is_none() {
            return;
        }
        if events.is_empty() {
            if stopping {
                return;
            }
            tokio::select! {
                _ = durable.changed() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        if events.len() < opts.batch_max_events && !stopping {
            tokio::select! {
                _ = tokio::time::sleep(opts.batch_max_wait) => {}
                _ = shutdown.changed() => {}
            }
            let (more, r) = read(reader.take(), opts.batch_max_events - events.len()).await;
            reader = r;
            events.extend(more);
        }
        let Some(to) = reader.as_ref().map(|r| r.position()) else {
            return;
        };
        let batch_id = format!(
            "{}/{}.{}-{}.{}",
            spool.id(),
            from.segment,
            from.offset,
            to.segment,
            to.offset
        );
        let body = encode_batch(&batch_id, &opts.collector, &events);
        let body = match zstd::bulk::compress(&body, 1) {
            Ok(z) => Bytes::from(z),
            Err(e) => {
                tracing::error!(error = %e, "zstd failed; sending uncompressed");
                Bytes::from(body)
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let router = &opts.routers[router_idx % opts.routers.len()];
            let started = Instant::now();
            match send(&client, router, body.clone()).await {
                Ok(ack) => {
                    metrics::histogram!(m::FORWARD_LATENCY).record(started.elapsed().as_secs_f64());
                    metrics::counter!(m::FORWARDED_BATCHES).increment(1);
                    metrics::counter!(m::FORWARDED_EVENTS).increment(events.len() as u64);
                    if ack.batch_id != batch_id {
                        tracing::warn!(sent = %batch_id, acked = %ack.batch_id, "router acknowledged another batch id");
                    }
                    break;
                }
                Err(e) => {
                    metrics::counter!(m::FORWARD_RETRIES).increment(1);
                    tracing::warn!(router = %router, error = %e, retry_in_ms = backoff.as_millis() as u64, "forwarding failed; events stay in the spool");
                    router_idx += 1;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        tracing::warn!("drain timeout: leaving the rest of the spool for the next start");
                        return;
                    }
                    let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff + jitter) => {}
                        _ = shutdown.changed(), if deadline.is_none() => {
                            deadline = Some(Instant::now() + opts.drain_timeout);
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Err(e) = spool.acknowledge(to) {
            tracing::error!(error = %e, "cannot record the forwarder's progress; events may be sent again");
        }
        metrics::gauge!(m::SPOOL_BYTES).set(spool.wal().bytes() as f64);
        metrics::gauge!(m::SPOOL_SEGMENTS).set(spool.wal().segments() as f64);
    }
}

async fn read(
    reader: Option<weir_proto::wal::WalReader>,
    max: usize,
) -> (Vec<Bytes>, Option<weir_proto::wal::WalReader>) {
    let Some(mut reader) = reader else {
        return (Vec::new(), None);
    };
    let joined = tokio::task::spawn_blocking(move || {
        let r = reader.read(max, 16 << 20);
        (r, reader)
    })
    .await;
    match joined {
        Ok((Ok(events), reader)) => (events, Some(reader)),
        Ok((Err(e), reader)) => {
            tracing::error!(error = %e, "cannot read the spool; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            (Vec::new(), Some(reader))
        }
        Err(e) => {
            tracing::error!(error = %e, "spool reader stopped");
            (Vec::new(), None)
        }
    }
}

async fn send(client: &Client<HttpConnector, Full<Bytes>>, router: &str, body: Bytes) -> Result<BatchAck, String> {
    let url = format!("{}/v1/batches", router.trim_end_matches('/'));
    let req = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "zstd")
        .body(Full::new(body))
        .map_err(|e| format!("bad router URL {url:?}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| "router did not answer within 30 s".to_string())?
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .map_err(|_| "router answer timed out".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!(
            "router answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    BatchAck::decode(body).map_err(|e| format!("router sent an unreadable ack: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::pb::{Event, EventBatch};

    #[test]
    fn batch_encoding_matches_prost() {
        let events: Vec<Event> = (0..3)
            .map(|i| Event {
                id: format!("id-{i}"),
                event: "a.b".into(),
                version: 1,
                ..Default::default()
            })
            .collect();
        let encoded: Vec<Bytes> = events.iter().map(|e| Bytes::from(e.encode_to_vec())).collect();
        let got = EventBatch::decode(&encode_batch("b1", "node", &encoded)[..]).unwrap();
        assert_eq!(
            got,
            EventBatch {
                batch_id: "b1".into(),
                collector: "node".into(),
                events
            }
        );
    }
}
