//! The collector's HTTP API: `POST /v1/events`, `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use weir_proto::runtime::http::{self as h, ReadError, Response};
use weir_proto::Catalog;

use crate::body::{self, BodyError};
use crate::ingest::{self, Source};
use crate::metrics as m;
use crate::spool::Spool;

/// What the handlers share.
pub struct State {
    /// The catalog events are validated against (swapped atomically on change).
    pub catalog: Arc<ArcSwap<Catalog>>,
    /// The durable spool.
    pub spool: Spool,
    /// Name stamped on events.
    pub name: String,
    /// Largest body, also decompressed.
    pub max_body_bytes: usize,
    /// Largest single event.
    pub max_event_bytes: usize,
    /// Budget of request bytes in memory, in KiB permits.
    pub inflight_kib: Arc<tokio::sync::Semaphore>,
    /// The whole budget, in KiB (one request never waits for more than all of it).
    pub inflight_total_kib: u32,
    /// Renders `/metrics`, when a recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// When (µs) the catalog was last confirmed current.
    pub catalog_checked_at: Arc<std::sync::atomic::AtomicI64>,
}

/// Routes one request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>, bound_env: Option<Arc<str>>) -> Response {
    let source = Source {
        bound_env: bound_env.as_deref(),
        ..Default::default()
    };
    let resp = match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/events") => events(&state, req, source).await,
        (_, "/v1/events") => {
            let mut r = h::error(StatusCode::METHOD_NOT_ALLOWED, "use POST /v1/events");
            r.headers_mut().insert("allow", HeaderValue::from_static("POST"));
            r
        }
        (&Method::GET, "/healthz") => h::text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(&state),
        (&Method::GET, "/metrics") => match &state.metrics {
            Some(handle) => {
                m::refresh_spool(&state.spool);
                let checked = state.catalog_checked_at.load(std::sync::atomic::Ordering::Relaxed);
                let age = (weir_proto::event::now_micros() - checked).max(0) as f64 / 1e6;
                metrics::gauge!(m::CATALOG_AGE).set(age);
                h::text(StatusCode::OK, handle.render())
            }
            None => h::text(StatusCode::OK, ""),
        },
        _ => h::error(
            StatusCode::NOT_FOUND,
            "no such endpoint: the collector serves POST /v1/events, GET /healthz, /readyz and /metrics",
        ),
    };
    m::requests(resp.status()).increment(1);
    resp
}

fn readyz(state: &State) -> Response {
    if !state.catalog.load().is_loaded() {
        return h::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no catalog yet (no router answered, no saved copy)\n",
        );
    }
    h::readyz(
        &[("spool", &state.spool.dir())],
        &format!(": catalog {}", state.catalog.load().revision),
    )
}

fn body_error(e: BodyError) -> Response {
    match e {
        BodyError::Malformed(msg) => h::error(StatusCode::BAD_REQUEST, msg),
        e @ BodyError::TooLarge(_) => h::error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        BodyError::Unsupported(msg) => h::error(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg),
    }
}

fn unavailable(msg: String) -> Response {
    h::retry_later(StatusCode::SERVICE_UNAVAILABLE, msg, 1)
}

/// KiB of the in-flight budget a request takes: its declared size, or the whole limit
/// when compressed or of unknown size (what it may grow to in memory).
fn budget_kib(req: &Request<Incoming>, limit: usize) -> u32 {
    let headers = req.headers();
    let encoded = headers
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let bytes = match declared {
        Some(n) if !encoded => n.min(limit),
        _ => limit,
    };
    // Held twice: the body, and the spool records built from it.
    (bytes.saturating_mul(2) / 1024 + 1).min(u32::MAX as usize) as u32
}

/// Takes the request's share of the in-flight memory budget (waiting while it is spent:
/// TCP backpressure), for a body of at most `limit` bytes.
pub(crate) async fn reserve<'a>(
    state: &'a State,
    req: &Request<Incoming>,
    limit: usize,
) -> Result<tokio::sync::SemaphorePermit<'a>, Response> {
    let want = budget_kib(req, limit).min(state.inflight_total_kib);
    state
        .inflight_kib
        .acquire_many(want)
        .await
        .map_err(|_| unavailable("the collector is shutting down".into()))
}

async fn events(state: &State, req: Request<Incoming>, source: Source<'_>) -> Response {
    let limit = state.max_body_bytes;
    let _budget = match reserve(state, &req, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (parts, raw) = match read(req, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let header = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    accept(
        state,
        header(hyper::header::CONTENT_TYPE),
        header(hyper::header::CONTENT_ENCODING),
        raw,
        source,
    )
    .await
}

/// Reads a body of at most `limit` bytes, or answers 413 / 408 / 400.
pub(crate) async fn read(
    req: Request<Incoming>,
    limit: usize,
) -> Result<(hyper::http::request::Parts, bytes::Bytes), Response> {
    h::read_body(req, limit).await.map_err(|e| match e {
        ReadError::TooLarge(n) => body_error(BodyError::TooLarge(n)),
        e @ ReadError::Timeout(_) => h::error(StatusCode::REQUEST_TIMEOUT, e.to_string()),
        ReadError::Io(msg) => h::error(StatusCode::BAD_REQUEST, msg),
    })
}

/// Decodes, validates and spools a request body already read; answers 202 with the
/// summary, or the error.
pub(crate) async fn accept(
    state: &State,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    raw: bytes::Bytes,
    source: Source<'_>,
) -> Response {
    match ingest_body(state, content_type, content_encoding, raw, source).await {
        Ok(summary) => summary.response(),
        Err(r) => r,
    }
}

/// Limits a listener applies to one request body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Largest body, also after decompression.
    pub body_bytes: usize,
    /// Most events in one request (413 beyond).
    pub events: usize,
}

/// [`accept`] without the answer: the summary once the kept events are spooled, or the
/// error response.
pub(crate) async fn ingest_body(
    state: &State,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    raw: bytes::Bytes,
    source: Source<'_>,
) -> Result<ingest::Summary, Response> {
    let limits = Limits {
        body_bytes: state.max_body_bytes,
        events: usize::MAX,
    };
    let ingested = prepare(state, content_type, content_encoding, raw, source, limits).map_err(|r| *r)?;
    spool(state, ingested).await
}

/// A refusal: the answer to send instead (boxed: a response is large).
pub(crate) type Refusal = Box<Response>;

/// Decodes and validates a body into spool records, without storing them.
pub(crate) fn prepare(
    state: &State,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    raw: bytes::Bytes,
    source: Source<'_>,
    limits: Limits,
) -> Result<ingest::Ingested, Refusal> {
    let refuse = |e| Box::new(body_error(e));
    let format = body::format(content_type).map_err(refuse)?;
    let decoded = body::decode(content_encoding, raw, limits.body_bytes).map_err(refuse)?;
    let items = body::split(&decoded, format).map_err(refuse)?;
    if items.len() > limits.events {
        return Err(Box::new(h::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} events in one request; at most {} (send the rest in another request)",
                items.len(),
                limits.events
            ),
        )));
    }
    let catalog = state.catalog.load();
    if !catalog.is_loaded() {
        return Err(Box::new(unavailable(
            "the collector has no catalog yet: no router answered and there is no saved copy".into(),
        )));
    }
    let now = weir_proto::event::now_micros();
    let ingested = ingest::ingest_limited(&catalog, &items, source, &state.name, now, state.max_event_bytes);
    if let Some(why) = &ingested.forbidden {
        return Err(Box::new(h::error(StatusCode::FORBIDDEN, why.clone())));
    }
    Ok(ingested)
}

/// Appends prepared records to the spool in one append (all or nothing) and answers
/// with the summary once they are durable.
pub(crate) async fn spool(state: &State, ingested: ingest::Ingested) -> Result<ingest::Summary, Response> {
    if ingested.records > 0 {
        if !state.spool.has_room(ingested.framed.len()) {
            return Err(unavailable(
                "the spool is full (spool_max_bytes): the router is not keeping up or is down; retry later".into(),
            ));
        }
        if let Err(e) = state.spool.append(ingested.framed).await {
            return Err(unavailable(format!("cannot write the spool: {e}")));
        }
    }
    m::record(&ingested.tally);
    Ok(ingested.summary)
}
