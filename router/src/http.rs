//! The router's HTTP API: `POST /v1/batches` from collectors, `/healthz`, `/readyz`,
//! `/metrics`, and the console's paths ([`crate::console`]).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use prost::Message;
use weir_proto::event::batch::BatchView;
use weir_proto::pb::BatchAck;
use weir_proto::record;
use weir_proto::runtime::http::{self as h, ReadError, Response};
use weir_proto::runtime::wal::Wal;

use crate::console::stats::BatchCounts;
use crate::console::tail::Head;
use crate::log_record::{self, decompress, Decompress};
use crate::metrics as m;
use crate::source::feed::{Entry, Feed, Grouping};

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

    /// Whether `id` was stored durably before.
    pub fn contains(&self, id: &str) -> bool {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.contains(id)
    }

    /// Records `id` (call it only once its batch is durable); false when it was already
    /// there.
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
}

/// Batch intake (HTTP mode): the log and what guards it.
pub struct Intake {
    /// The log consumers' cursors (a full backlog refuses intake).
    pub cursors: Arc<crate::cursors::LogCursors>,
    /// The durable log.
    pub wal: Wal,
    /// Where the log's consumers take what intake just appended.
    pub feed: Arc<Feed>,
    /// Recently stored batch ids.
    pub recent: RecentBatches,
    /// Largest accepted batch body (also decompressed).
    pub max_batch_bytes: usize,
    /// Free space kept on the log's and buffer's disks (`router.min_free_bytes`).
    pub reserve: weir_proto::runtime::disk::Reserve,
}

/// What the handlers share.
pub struct State {
    /// Batch intake; `None` in Kafka mode, where collectors produce to Kafka.
    pub intake: Option<Intake>,
    /// Bearer token required on `/v1/batches` and `/v1/catalog`, when set.
    pub token: Option<String>,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// The catalog served to collectors.
    pub catalog: Arc<arc_swap::ArcSwap<weir_proto::Catalog>>,
    /// The console (`/`, `/v1/tail`, `/v1/stats`).
    pub console: Arc<crate::console::Console>,
}

/// Routes one request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response {
    let path = req.uri().path();
    if matches!(path, "/v1/batches" | "/v1/catalog") && !authorized(state.token.as_deref(), &req) {
        return h::error(
            StatusCode::UNAUTHORIZED,
            "this router requires `Authorization: Bearer <token>` (set collector.router_token to router.token)",
        );
    }
    if let Some(r) = state.console.handle(&req) {
        return r;
    }
    match (req.method(), path) {
        (&Method::POST, "/v1/batches") => match &state.intake {
            Some(intake) => batches(intake, &state.console, req).await,
            // Retryable on purpose: a collector pointed here keeps its events spooled.
            None => h::retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "this router runs in Kafka mode and takes no batches: set [collector] kafka (the same brokers and topic as [router] kafka) instead of routers",
                30,
            ),
        },
        (&Method::GET, "/v1/catalog") => catalog(&state, &req),
        (&Method::GET, "/healthz") => h::text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match &state.intake {
            Some(i) => h::readyz(&[("log", i.wal.dir())], ""),
            None => h::readyz(&[], ""),
        },
        (&Method::GET, "/metrics") => {
            if let Some(i) = &state.intake {
                metrics::gauge!(m::LOG_BYTES).set(i.wal.bytes() as f64);
            }
            h::text(
                StatusCode::OK,
                state.metrics.as_ref().map(|m| m.render()).unwrap_or_default(),
            )
        }
        (&Method::POST, "/v1/console/login") => match h::read_body(req, 4096).await {
            Ok((_, form)) => state.console.login(&form),
            Err(e) => h::error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        _ => h::error(
            StatusCode::NOT_FOUND,
            "no such endpoint: the router serves the console at GET /, GET /v1/tail, /v1/stats, POST /v1/batches, GET /v1/catalog, /healthz, /readyz and /metrics",
        ),
    }
}

/// Whether `req` carries the bearer `token` (always, when none is set).
pub fn authorized<B>(token: Option<&str>, req: &Request<B>) -> bool {
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    weir_proto::secret::bearer_matches(token, header)
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

async fn batches(state: &Intake, console: &crate::console::Console, req: Request<Incoming>) -> Response {
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
    let raw = body;
    let body = if zstd {
        match decompress(&raw, limit) {
            Ok(b) => Bytes::from(b),
            Err(Decompress::TooLarge) => {
                return h::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("batch is larger than {limit} bytes decompressed (router.max_batch_bytes)"),
                )
            }
            Err(Decompress::Bad(e)) => return bad(format!("cannot decompress the batch (zstd): {e}")),
        }
    } else {
        raw.clone()
    };
    // What the log keeps (see `log_record`): the batch as sent when it came compressed in
    // standard zstd frames, else the plain batch, which must not look compressed.
    let stored = if zstd && log_record::is_zstd(&raw) {
        raw
    } else if log_record::is_zstd(&body) {
        return bad("not a weir.v1.EventBatch: it starts with zstd's frame magic (send compressed batches with `Content-Encoding: zstd`)".into());
    } else {
        body.clone()
    };
    // Checked in place: every event must be one the loader and recipients can read,
    // but none is decoded into owned strings.
    let batch = match BatchView::decode(&body) {
        Ok(b) => b,
        Err(e) => return bad(format!("not a weir.v1.EventBatch: {e}")),
    };
    // One decode of each event checks it, groups it for the log's consumers and counts
    // it for the console.
    let mut grouping = Grouping::default();
    let mut tally = BatchCounts::default();
    // Where each event's name, env and id are, for the console's tail filters.
    let watched = console.tail.watched();
    let mut heads = Vec::with_capacity(if watched { batch.events.len() } else { 0 });
    let checked = batch.check_each(|i, view| {
        grouping.add(i, view.event, view.valid);
        tally.add(view);
        if watched {
            heads.extend(batch.events.get(i).and_then(|raw| Head::of(&body, raw, view)));
        }
    });
    if let Err((i, why)) = checked {
        return bad(format!("event {i}: {why}"));
    }
    let count = batch.events.len() as u64;
    if state.cursors.is_full() {
        if let Some(name) = state.cursors.refresh() {
            metrics::counter!(m::BACKLOG_FULL).increment(1);
            return h::retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("recipient {name} has a full backlog (max_backlog_bytes); collectors keep spooling until it catches up"),
                5,
            );
        }
    }
    if state.reserve.low() {
        metrics::counter!(m::DISK_LOW).increment(1);
        return h::retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the router's disk is nearly full ({} bytes free, router.min_free_bytes is {}); collectors keep spooling; it takes events again once the log drains or space is freed",
                state.reserve.free(),
                state.reserve.min_free()
            ),
            5,
        );
    }
    // Only a batch whose first copy is durable is answered "duplicate": a retry of one
    // still being written (or whose write failed) is appended again, and the event ids
    // make the second copy harmless.
    if !batch.batch_id.is_empty() && state.recent.contains(batch.batch_id) {
        metrics::counter!(m::DUPLICATE_BATCHES).increment(1);
        return ack(&BatchAck {
            batch_id: batch.batch_id.to_string(),
            accepted: 0,
            duplicate: true,
        });
    }
    if count == 0 {
        return ack(&BatchAck {
            batch_id: batch.batch_id.to_string(),
            accepted: 0,
            duplicate: false,
        });
    }
    let mut framed = Vec::with_capacity(stored.len() + record::HEADER_LEN);
    record::encode_into(&mut framed, &stored);
    let (start, end) = match state.wal.append_span(framed).await {
        Ok(span) => span,
        Err(e) => {
            return h::retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot write the router log: {e}"),
                1,
            )
        }
    };
    let events = batch.events.iter().map(|e| body.slice_ref(e)).collect();
    state
        .feed
        .offer(Entry::checked(start, end, body.len(), events, grouping.finish()));
    if !batch.batch_id.is_empty() {
        state.recent.insert(batch.batch_id);
    }
    metrics::counter!(m::BATCHES).increment(1);
    metrics::counter!(m::EVENTS).increment(count);
    state.cursors.add_appended(count);
    console.observe_batch(&body, count, &tally, heads);
    ack(&BatchAck {
        batch_id: batch.batch_id.to_string(),
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
        assert!(r.contains("a") && !r.contains("b"));
    }

    #[test]
    fn bearer_tokens_come_from_the_authorization_header() {
        let req = |v: &str| Request::builder().header("authorization", v).body(()).unwrap();
        assert!(authorized(Some("t"), &req("Bearer t")));
        assert!(!authorized(Some("t"), &req("Basic t")));
    }
}
