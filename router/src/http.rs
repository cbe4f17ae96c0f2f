//! The router's HTTP API: `POST /v1/batches` from collectors, `/healthz`, `/readyz`,
//! `/metrics`.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use prost::Message;
use weir_proto::http::{self as h, ReadError, Response};
use weir_proto::pb::{BatchAck, EventBatch};
use weir_proto::record;
use weir_proto::wal::Wal;

use crate::metrics as m;

/// Batch ids seen recently, so a batch retried after a lost ack is stored once.
pub struct RecentBatches {
    inner: Mutex<(HashSet<String>, VecDeque<String>)>,
    capacity: usize,
}

impl RecentBatches {
    /// Remembers up to `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        RecentBatches {
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
            capacity,
        }
    }

    /// Records `id`; false when it was already there.
    pub fn insert(&self, id: &str) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.contains(id) {
            return false;
        }
        g.0.insert(id.to_string());
        g.1.push_back(id.to_string());
        while g.1.len() > self.capacity {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
        true
    }

    /// Forgets `id` (its batch could not be stored).
    pub fn remove(&self, id: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.remove(id);
        g.1.retain(|x| x != id);
    }
}

/// What the handlers share.
pub struct State {
    /// The log consumers' cursors (a full backlog refuses intake).
    pub cursors: Arc<crate::cursors::LogCursors>,
    /// The durable log.
    pub wal: Wal,
    /// Recently stored batch ids.
    pub recent: RecentBatches,
    /// Largest accepted batch body (also decompressed).
    pub max_batch_bytes: usize,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// The catalog served to collectors.
    pub catalog: Arc<arc_swap::ArcSwap<weir_proto::Catalog>>,
}

/// Routes one request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/batches") => batches(&state, req).await,
        (&Method::GET, "/v1/catalog") => catalog(&state, &req),
        (&Method::GET, "/healthz") => h::text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let dir = state.wal.dir();
            let probe = dir.join(".readyz");
            match std::fs::write(&probe, b"ok") {
                Ok(()) => {
                    let _ = std::fs::remove_file(&probe);
                    h::text(StatusCode::OK, "ready\n")
                }
                Err(e) => h::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: log {} is not writable: {e}\n", dir.display()),
                ),
            }
        }
        (&Method::GET, "/metrics") => {
            metrics::gauge!(m::LOG_BYTES).set(state.wal.bytes() as f64);
            h::text(
                StatusCode::OK,
                state.metrics.as_ref().map(|m| m.render()).unwrap_or_default(),
            )
        }
        _ => h::error(
            StatusCode::NOT_FOUND,
            "no such endpoint: the router serves POST /v1/batches, GET /v1/catalog, /healthz, /readyz and /metrics",
        ),
    }
}

fn catalog(state: &State, req: &Request<Incoming>) -> Response {
    let catalog = state.catalog.load();
    let etag = format!("\"{}\"", catalog.revision);
    let matches = req
        .headers()
        .get(hyper::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if matches {
        h::bytes(StatusCode::NOT_MODIFIED, "application/json", Bytes::new())
    } else {
        h::bytes(StatusCode::OK, "application/json", Bytes::from(catalog.to_json()))
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(hyper::header::ETAG, v);
    }
    r
}

fn bad(msg: String) -> Response {
    metrics::counter!(m::BAD_BATCHES).increment(1);
    h::error(StatusCode::BAD_REQUEST, msg)
}

fn ack(ack: &BatchAck) -> Response {
    h::bytes(
        StatusCode::OK,
        "application/x-protobuf",
        Bytes::from(ack.encode_to_vec()),
    )
}

async fn batches(state: &State, req: Request<Incoming>) -> Response {
    let limit = state.max_batch_bytes;
    let (parts, body) = match h::read_body(req, limit).await {
        Ok(b) => b,
        Err(ReadError::TooLarge(n)) => {
            return h::error(StatusCode::PAYLOAD_TOO_LARGE, format!("batch is larger than {n} bytes"))
        }
        Err(e @ ReadError::Timeout(_)) => return h::error(StatusCode::REQUEST_TIMEOUT, e.to_string()),
        Err(ReadError::Io(e)) => return h::error(StatusCode::BAD_REQUEST, e),
    };
    let zstd = parts
        .headers
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"zstd"));
    let body = if zstd {
        match zstd::bulk::decompress(&body, limit) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                return bad(format!(
                    "cannot decompress the batch (zstd, at most {limit} bytes): {e}"
                ))
            }
        }
    } else {
        body
    };
    let batch = match EventBatch::decode(body.clone()) {
        Ok(b) => b,
        Err(e) => return bad(format!("not a weir.v1.EventBatch: {e}")),
    };
    if let Some((i, _)) = batch
        .events
        .iter()
        .enumerate()
        .find(|(_, e)| e.id.is_empty() || e.received_at == 0)
    {
        return bad(format!("event {i} has no id or received_at: collectors stamp both"));
    }
    let count = batch.events.len() as u64;
    if state.cursors.is_full() {
        if let Some(name) = state.cursors.refresh() {
            metrics::counter!(m::BACKLOG_FULL).increment(1);
            let mut r = h::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("recipient {name} has a full backlog (max_backlog_bytes); collectors keep spooling until it catches up"),
            );
            r.headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
    }
    if !batch.batch_id.is_empty() && !state.recent.insert(&batch.batch_id) {
        metrics::counter!(m::DUPLICATE_BATCHES).increment(1);
        return ack(&BatchAck {
            batch_id: batch.batch_id,
            accepted: 0,
            duplicate: true,
        });
    }
    let mut framed = Vec::with_capacity(body.len() + record::HEADER_LEN);
    record::encode_into(&mut framed, &body);
    if let Err(e) = state.wal.append(framed).await {
        state.recent.remove(&batch.batch_id);
        let mut r = h::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot write the router log: {e}"),
        );
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    metrics::counter!(m::BATCHES).increment(1);
    metrics::counter!(m::EVENTS).increment(count);
    state.cursors.add_appended(count);
    ack(&BatchAck {
        batch_id: batch.batch_id,
        accepted: count,
        duplicate: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_batches_forget_the_oldest() {
        let r = RecentBatches::new(2);
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        assert!(r.insert("b"));
        assert!(r.insert("c"));
        assert!(r.insert("a"), "a was evicted");
        r.remove("a");
        assert!(r.insert("a"));
    }
}
