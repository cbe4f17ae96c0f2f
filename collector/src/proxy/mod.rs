//! The proxy: the collector's ingestion with a public face, for browsers and mobile apps.
//! Same `POST /v1/events`, same spool and forwarding, plus:
//!
//! - write keys (`[[proxy.keys]]`): HTTP Basic `key:` (the Segment way), `X-Weir-Key`,
//!   `?key=`, or `writeKey` in the body (for `navigator.sendBeacon`, which cannot set
//!   headers). Missing or unknown key -> 401. A key binds its environment: an event naming
//!   another one refuses the request with 403, so frontend data never gets backend trust;
//! - CORS for the configured origins (preflight answered, credentials off);
//! - a smaller body limit (413) and the collector's read timeouts against slow clients;
//! - the client's address in each event's `context` (`ip`; X-Forwarded-For is honoured
//!   only from `trusted_proxies`, and `truncate_ip` zeroes the host part), and its
//!   `user_agent`.
//!
//! - rate limits per key (`rate`) and per client address (`per_ip_rate`), requests per
//!   second with as large a burst: past them 429 with Retry-After, and one abusive client
//!   never slows the others (a refused request costs one check, no body read).
//!
//! - the user agent parsed (woothee) into `ua_browser`, `ua_browser_version`, `ua_os`
//!   and `ua_device` (pc, smartphone, mobilephone, crawler, appliance), cached per
//!   distinct agent string so a repeated agent costs one map lookup.
//!
//! - `GET /v1/p.gif`: a 1x1 GIF taking one event in query parameters, for pages without
//!   JavaScript and e-mails: `key`, `event`, `version`, `id`, `ts`, and `f.<field>` per
//!   field (typed by the catalog: `f.item_id=7` is the int 7), or `fields` as JSON.
//!
//! - the Segment tracking API (`/v1/track`, `/v1/batch`, ...; see [`crate::segment`]).
//!
//! - `country` and `region` from a MaxMind-format database when `geoip` names one
//!   (see [`crate::geoip`]), looked up once per request on the client's full address
//!   (before `truncate_ip`).

mod addr;
mod config;
mod context;
mod keys;
mod limits;
mod pixel;
mod segment_api;

pub use addr::{client_ip, limiter_key, parse_hop, truncate, unmapped, Cidr};
pub use config::{KeyConfig, ProxyConfig};
pub use context::{cap, MAX_CONTEXT_VALUE_BYTES};
pub use pixel::pixel_event;

use crate::http::Refusal;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};

use weir_proto::runtime::http::{self as h, Response};
use weir_proto::InvalidSetting;

use crate::http::State;
use crate::ingest::Source;
use context::UaCache;
use keys::{body_key, charge, head_key, Key};
use limits::{limit_ip, quota};
use segment_api::{segment_call, segment_kind};

/// The proxy's settings, resolved (key values read from the environment).
pub struct Proxy {
    ua: UaCache,
    keys: Vec<Key>,
    per_ip: Option<governor::DefaultKeyedRateLimiter<IpAddr>>,
    origins: Vec<String>,
    trusted: Vec<Cidr>,
    truncate_ip: bool,
    limits: crate::http::Limits,
    geoip: Option<crate::geoip::GeoIp>,
    /// When per-address limiter state was last trimmed (ms since the proxy started).
    trimmed_at: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl Proxy {
    /// Resolves `cfg`; the error names the key.
    pub fn new(cfg: &ProxyConfig) -> Result<Proxy, InvalidSetting> {
        let mut keys = Vec::new();
        for (i, k) in cfg.keys.iter().enumerate() {
            let value = match (&k.key, &k.key_env) {
                (Some(v), None) => v.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    InvalidSetting::new(
                        format!("proxy.keys[{i}].key_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?,
                _ => {
                    return Err(InvalidSetting::new(
                        format!("proxy.keys[{i}]"),
                        "set exactly one of key and key_env",
                    ))
                }
            };
            if value.is_empty() {
                return Err(InvalidSetting::new(format!("proxy.keys[{i}]"), "the key is empty"));
            }
            keys.push(Key {
                value,
                env: Arc::from(k.env.as_str()),
                limiter: k.rate.and_then(quota).map(governor::RateLimiter::direct),
            });
        }
        let trusted = cfg
            .trusted_proxies
            .iter()
            .map(|s| Cidr::parse(s).map_err(|e| InvalidSetting::new("proxy.trusted_proxies", e)))
            .collect::<Result<_, _>>()?;
        let geoip = match &cfg.geoip {
            Some(path) => {
                Some(crate::geoip::GeoIp::open(path).map_err(|e| InvalidSetting::new("proxy.geoip", e.to_string()))?)
            }
            None => None,
        };
        let proxy = Proxy {
            ua: UaCache {
                parser: woothee::parser::Parser::new(),
                map: Default::default(),
            },
            keys,
            per_ip: quota(cfg.per_ip_rate).map(governor::RateLimiter::keyed),
            origins: cfg.cors_origins.clone(),
            trusted,
            truncate_ip: cfg.truncate_ip,
            limits: crate::http::Limits {
                body_bytes: cfg.max_body_bytes,
                events: cfg.max_events.max(1),
            },
            geoip,
            trimmed_at: Default::default(),
            started: std::time::Instant::now(),
        };
        proxy.geoip_gauge();
        Ok(proxy)
    }

    /// Loads the GeoIP database again if its file changed (blocking: reads the file).
    pub fn reload_geoip(&self) {
        if let Some(g) = &self.geoip {
            if g.reload_if_changed() {
                self.geoip_gauge();
            }
        }
    }

    fn geoip_gauge(&self) {
        if let Some(g) = &self.geoip {
            metrics::gauge!(crate::metrics::PROXY_GEOIP_BUILT).set(g.build_epoch() as f64);
        }
    }

    fn key(&self, key: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.value == key)
    }

    /// Forgets per-address limiter state of addresses not seen lately (bounded memory).
    pub fn housekeeping(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    fn allowed_origin(&self, origin: Option<&str>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.origins.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        self.origins
            .iter()
            .any(|o| o == origin)
            .then(|| HeaderValue::from_str(origin).ok())
            .flatten()
    }
}

fn with_cors(mut r: Response, origin: Option<&HeaderValue>) -> Response {
    if let Some(o) = origin {
        let h = r.headers_mut();
        h.insert("access-control-allow-origin", o.clone());
        h.insert("vary", HeaderValue::from_static("Origin"));
    }
    r
}

/// Routes one request to the proxy.
pub async fn handle(state: Arc<State>, proxy: Arc<Proxy>, req: Request<Incoming>) -> Response {
    let peer = req
        .extensions()
        .get::<h::Peer>()
        .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |p| p.0);
    let origin = proxy.allowed_origin(req.headers().get("origin").and_then(|v| v.to_str().ok()));
    match (req.method(), req.uri().path()) {
        (&Method::OPTIONS, "/v1/events") => {
            let mut r = h::bytes(StatusCode::NO_CONTENT, "text/plain", bytes::Bytes::new());
            if let Some(o) = &origin {
                let hs = r.headers_mut();
                hs.insert("access-control-allow-origin", o.clone());
                hs.insert(
                    "access-control-allow-methods",
                    HeaderValue::from_static("POST, OPTIONS"),
                );
                hs.insert(
                    "access-control-allow-headers",
                    HeaderValue::from_static("content-type, content-encoding, authorization, x-weir-key"),
                );
                hs.insert("access-control-max-age", HeaderValue::from_static("86400"));
                hs.insert("vary", HeaderValue::from_static("Origin"));
            }
            r
        }
        (&Method::POST, "/v1/events") => with_cors(events(&state, &proxy, peer, req).await, origin.as_ref()),
        (&Method::POST, path) if segment_kind(path).is_some() => {
            let kind = segment_kind(path).unwrap_or("track");
            with_cors(segment_call(&state, &proxy, peer, kind, req).await, origin.as_ref())
        }
        (&Method::GET, "/v1/p.gif") => with_cors(pixel::pixel(&state, &proxy, peer, req).await, origin.as_ref()),
        (&Method::GET, "/healthz") => h::text(StatusCode::OK, "ok\n"),
        _ => h::error(
            StatusCode::NOT_FOUND,
            "no such endpoint: the proxy serves POST /v1/events, GET /v1/p.gif, the Segment API (POST /v1/track, /v1/page, /v1/screen, /v1/identify, /v1/group, /v1/alias, /v1/batch) and GET /healthz",
        ),
    }
}

/// Checks the key, charges its limit once, and spools the body with the binding and
/// the context; answers 202 with the summary.
#[allow(clippy::too_many_arguments)]
async fn authorized(
    state: &State,
    proxy: &Proxy,
    client: IpAddr,
    key: Option<String>,
    user_agent: Option<&str>,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    raw: bytes::Bytes,
) -> Response {
    let head = Head {
        client,
        user_agent,
        extra: &[],
    };
    let result = async {
        let key = charge(proxy, key.as_deref()).map_err(|r| *r)?;
        let ingested = prepare(state, proxy, key, &head, content_type, content_encoding, raw).map_err(|r| *r)?;
        crate::http::spool(state, ingested).await
    };
    match result.await {
        Ok(summary) => summary.response(),
        Err(r) => r,
    }
}

/// Who sent a request.
struct Head<'a> {
    client: IpAddr,
    user_agent: Option<&'a str>,
    /// More context entries (Segment's user ids).
    extra: &'a [(&'a str, &'a str)],
}

/// Validates a body under the key's binding, with the request's context (every value
/// capped at [`MAX_CONTEXT_VALUE_BYTES`]), into spool records not yet stored.
fn prepare(
    state: &State,
    proxy: &Proxy,
    key: &Key,
    head: &Head<'_>,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    raw: bytes::Bytes,
) -> Result<crate::ingest::Ingested, Refusal> {
    let ip = if proxy.truncate_ip {
        truncate(head.client)
    } else {
        head.client
    }
    .to_string();
    let ua = cap(head.user_agent.unwrap_or(""), MAX_CONTEXT_VALUE_BYTES);
    let mut context: Vec<(&str, &str)> = vec![("ip", ip.as_str())];
    let geo = proxy.geoip.as_ref().map(|g| g.lookup(head.client)).unwrap_or_default();
    if let Some(c) = &geo.country {
        context.push(("country", c));
    }
    if let Some(r) = &geo.region {
        context.push(("region", r));
    }
    let parsed = (!ua.is_empty()).then(|| proxy.ua.parse(ua));
    if !ua.is_empty() {
        context.push(("user_agent", ua));
    }
    for (k, v) in parsed.iter().flat_map(|p| p.iter()) {
        context.push((k, v.as_str()));
    }
    context.extend(head.extra.iter().map(|(k, v)| (*k, cap(v, MAX_CONTEXT_VALUE_BYTES))));
    let source = Source {
        bound_env: Some(&key.env),
        strict_env: true,
        context: &context,
    };
    crate::http::prepare(state, content_type, content_encoding, raw, source, proxy.limits)
}

fn client_of(proxy: &Proxy, peer: SocketAddr, headers: &hyper::HeaderMap) -> IpAddr {
    let lines = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    client_ip(peer.ip(), lines, &proxy.trusted)
}

async fn events(state: &State, proxy: &Proxy, peer: SocketAddr, req: Request<Incoming>) -> Response {
    let client = client_of(proxy, peer, req.headers());
    if let Some(r) = limit_ip(proxy, client) {
        return r;
    }
    let _budget = match crate::http::reserve(state, &req, proxy.limits.body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (parts, raw) = match crate::http::read(req, proxy.limits.body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let header = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let encoded = header(hyper::header::CONTENT_ENCODING).is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
    let key = head_key(&parts).or_else(|| if encoded { None } else { body_key(&raw) });
    authorized(
        state,
        proxy,
        client,
        key,
        header(hyper::header::USER_AGENT),
        header(hyper::header::CONTENT_TYPE),
        header(hyper::header::CONTENT_ENCODING),
        raw,
    )
    .await
}
