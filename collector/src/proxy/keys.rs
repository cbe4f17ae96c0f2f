//! Write keys: read from HTTP Basic (`key:`, the Segment way), `X-Weir-Key`, `?key=` or
//! `writeKey` in the body, resolved against `[[proxy.keys]]` and charged to the key's
//! rate limit once per request.

use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use hyper::StatusCode;
use weir_proto::runtime::http as h;

use super::limits::{retry_after, too_many};
use super::Proxy;
use crate::http::Refusal;

/// A write key, resolved.
pub(super) struct Key {
    pub(super) value: String,
    pub(super) env: Arc<str>,
    pub(super) limiter: Option<governor::DefaultDirectRateLimiter>,
}

pub(super) fn basic_key(value: &str) -> Option<String> {
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let key = text.split(':').next()?;
    (!key.is_empty()).then(|| key.to_string())
}

/// `writeKey` of a JSON body: of the object, or of the first element of an array.
pub(super) fn body_key(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct WithKey {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    let text = std::str::from_utf8(body).ok()?.trim_start();
    if text.starts_with('[') {
        let v: Vec<WithKey> = serde_json::from_str(text).ok()?;
        v.into_iter().next()?.write_key
    } else {
        let first = text.lines().next()?;
        serde_json::from_str::<WithKey>(first).ok()?.write_key
    }
}

pub(super) fn query_key(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned())
}

/// The key given in the request head: HTTP Basic, `X-Weir-Key`, or `?key=`.
pub(super) fn head_key(parts: &hyper::http::request::Parts) -> Option<String> {
    parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_key)
        .or_else(|| {
            parts
                .headers
                .get("x-weir-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .or_else(|| query_key(parts.uri.query()))
}

/// Resolves the write key and charges its rate limit: once per request, whatever the
/// request holds.
pub(super) fn charge<'p>(proxy: &'p Proxy, key: Option<&str>) -> Result<&'p Key, Refusal> {
    let Some(key) = key else {
        return Err(Box::new(h::error(
            StatusCode::UNAUTHORIZED,
            "a write key is required: HTTP Basic (key as user), X-Weir-Key, ?key= or writeKey in the body",
        )));
    };
    let Some(key) = proxy.key(key) else {
        return Err(Box::new(h::error(StatusCode::UNAUTHORIZED, "unknown write key")));
    };
    if let Some(limiter) = &key.limiter {
        if let Err(n) = limiter.check() {
            metrics::counter!(crate::metrics::PROXY_LIMITED, "by" => "key").increment(1);
            return Err(Box::new(too_many("write key", retry_after(&n))));
        }
    }
    Ok(key)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn keys_from_basic_body_and_query() {
        // "wk_web:" in base64.
        assert_eq!(basic_key("Basic d2tfd2ViOg==").as_deref(), Some("wk_web"));
        assert_eq!(basic_key("Bearer x"), None);
        assert_eq!(body_key(br#"{"writeKey":"k1","event":"a"}"#).as_deref(), Some("k1"));
        assert_eq!(body_key(br#"[{"writeKey":"k2"},{"event":"b"}]"#).as_deref(), Some("k2"));
        assert_eq!(body_key(b"not json"), None);
        assert_eq!(query_key(Some("a=1&key=k3")).as_deref(), Some("k3"));
    }
}
