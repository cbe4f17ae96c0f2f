//! The Segment tracking API on the proxy (`/v1/track`, `/v1/batch`, ...): each message
//! becomes a weir event (see [`crate::segment`]).

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use weir_proto::runtime::http::{self as h, Response};

use super::keys::{charge, head_key};
use super::limits::limit_ip;
use super::{client_of, prepare, Head, Proxy};
use crate::http::State;

/// Segment's `(userId, anonymousId)` of a call.
pub(super) type Who = (Option<String>, Option<String>);

/// `track`, `page`, ... or `batch` for the Segment paths.
pub(super) fn segment_kind(path: &str) -> Option<&'static str> {
    let kind = path.strip_prefix("/v1/")?;
    crate::segment::TYPES
        .iter()
        .chain(&["batch"])
        .find(|t| **t == kind)
        .copied()
}

/// The Segment API: each message becomes a weir event (see [`crate::segment`]); the
/// answer is Segment's `200 {"success": true}`, or 400 naming what was refused.
pub(super) async fn segment_call(
    state: &State,
    proxy: &Proxy,
    peer: SocketAddr,
    kind: &str,
    req: Request<Incoming>,
) -> Response {
    let client = client_of(proxy, peer, req.headers());
    if let Some(r) = limit_ip(proxy, client) {
        return r;
    }
    // The proxy's own body limit, also after decompression (Segment's SDKs keep a batch
    // under 500 KB, the default 512 KiB admits it).
    let limit = proxy.limits.body_bytes;
    let _budget = match crate::http::reserve(state, &req, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (parts, raw) = match crate::http::read(req, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let header = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let body = match crate::body::decode(header(hyper::header::CONTENT_ENCODING), raw, limit) {
        Ok(b) => b,
        Err(e) => return h::error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let request = match crate::segment::parse(kind, &body, &state.catalog.load()) {
        Ok(r) => r,
        Err(e) => return h::error(StatusCode::BAD_REQUEST, e),
    };
    if request.calls.len() > proxy.limits.events {
        return h::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} calls in one batch; at most {}",
                request.calls.len(),
                proxy.limits.events
            ),
        );
    }
    let key = head_key(&parts).or(request.write_key);
    // The request is one unit: its key is charged once, and every call is spooled in one
    // append or none is.
    let key = match charge(proxy, key.as_deref()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    // Calls of one user share a context (the ids go into `context`).
    let mut groups: Vec<(Who, Vec<&str>)> = Vec::new();
    for call in &request.calls {
        let who = (call.user_id.clone(), call.anonymous_id.clone());
        match groups.iter_mut().find(|g| g.0 == who) {
            Some(g) => g.1.push(&call.event),
            None => groups.push((who, vec![&call.event])),
        }
    }
    let mut all = crate::ingest::Ingested::default();
    for ((user, anon), events) in &groups {
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if let Some(u) = user {
            extra.push(("user_id", u));
        }
        if let Some(a) = anon {
            extra.push(("anonymous_id", a));
        }
        let head = Head {
            client,
            user_agent: header(hyper::header::USER_AGENT),
            extra: &extra,
        };
        let ndjson = bytes::Bytes::from(events.join("\n"));
        match prepare(state, proxy, key, &head, Some("application/x-ndjson"), None, ndjson) {
            Ok(part) => all.merge(part),
            Err(r) => return *r,
        }
    }
    let summary = match crate::http::spool(state, all).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let errors: Vec<String> = if summary.rejected == 0 {
        Vec::new()
    } else {
        summary.errors.iter().map(|e| e.error.clone()).collect()
    };
    if errors.is_empty() {
        // Segment's SDKs read only `success`; a person reading the answer sees what was
        // kept flagged (a call the catalog does not know, a field of the wrong type).
        let mut body = serde_json::json!({"success": true});
        if summary.flagged > 0 {
            body["flagged"] = summary.flagged.into();
            body["errors"] = summary
                .errors
                .iter()
                .map(|e| e.error.clone())
                .collect::<Vec<_>>()
                .into();
        }
        h::json(StatusCode::OK, &body)
    } else {
        h::json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"success": false, "errors": errors}),
        )
    }
}
